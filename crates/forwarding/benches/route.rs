//! `route_read` against `dashmap` 6 `get` on the same keys and hasher (SPEC §8), the counted
//! `read` beside them, and reader latency while the sweeper removes 10% of 1M entries.
//!
//! Run: `cargo bench -p ferry-forwarding --bench route`.
// Benches stop on the first unexpected error: unwrap says where. The sweep's reader latency
// is printed beside criterion's figures. criterion_group! defines a `pub fn` that cannot take
// a doc comment.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use ferry_forwarding::{Config, ManualClock, Route, Table};
use ferry_types::{NodeId, ObjectKey};

const QUERIES: usize = 1 << 16;

fn present_key(i: usize) -> String {
    format!("bucket-{:04}/object-{i:08}", i % 1000)
}

/// A 61-byte key, like the paths object stores often hold (within the table's 70 inline
/// bytes; dashmap follows a pointer for every key).
fn long_key(i: usize) -> String {
    format!(
        "tenant-0042/bucket-{:04}/2026/11/26/objects/object-{i:08}.bin",
        i % 1000
    )
}

fn absent_key(i: usize) -> String {
    format!("bucket-{:04}/missing-{i:08}", i % 1000)
}

/// A cheap deterministic shuffle, so queries hit the table in random order (cache misses
/// included), the same for both peers.
fn scatter(i: usize, n: usize) -> usize {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7) % n
}

struct Fixture {
    table: Table,
    dash: DashMap<String, NodeId, foldhash::quality::RandomState>,
    hits: Vec<String>,
    misses: Vec<String>,
}

fn fixture(n: usize) -> Fixture {
    fixture_with(n, present_key)
}

fn fixture_with(n: usize, present_key: fn(usize) -> String) -> Fixture {
    let (a, b) = (
        NodeId::new("node-a").unwrap(),
        NodeId::new("node-b").unwrap(),
    );
    let table = Table::new(
        Config::default()
            .with_expected_entries(n)
            .with_sweep_interval(None),
    );
    let dash = DashMap::with_capacity_and_hasher(n, foldhash::quality::RandomState::default());
    for i in 0..n {
        let k = present_key(i);
        table.register(&ObjectKey::new(&k).unwrap(), a, b).unwrap();
        table.try_flip(&k, 0).unwrap();
        dash.insert(k, b);
    }
    let hits = (0..QUERIES).map(|i| present_key(scatter(i, n))).collect();
    let misses = (0..QUERIES).map(|i| absent_key(scatter(i, n))).collect();
    Fixture {
        table,
        dash,
        hits,
        misses,
    }
}

/// Runs `lookup` over `keys` on `threads` threads, `iters` lookups each; returns the wall time.
fn run_threads(
    threads: usize,
    iters: u64,
    keys: &[String],
    lookup: &(dyn Fn(&str) + Sync),
) -> Duration {
    let barrier = Barrier::new(threads);
    let times: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in (t * 7919..).take(iters as usize) {
                        lookup(&keys[i & (QUERIES - 1)]);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    times.into_iter().max().unwrap_or_default()
}

/// Hits on 61-byte keys, one thread.
fn route_read_long(c: &mut Criterion) {
    for n in [100_000, 1_000_000] {
        let f = fixture_with(n, long_key);
        let mut group = c.benchmark_group(format!("route_read_hit_long_keys/{n}/1t"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("ferry", |b| {
            b.iter_custom(|iters| {
                run_threads(1, iters, &f.hits, &|k| {
                    black_box(f.table.route_read(k));
                })
            })
        });
        group.bench_function("dashmap", |b| {
            b.iter_custom(|iters| {
                run_threads(1, iters, &f.hits, &|k| {
                    black_box(f.dash.get(k).map(|e| *e.value()));
                })
            })
        });
        group.finish();
    }
}

fn route_read(c: &mut Criterion) {
    for n in [100_000, 1_000_000] {
        let f = fixture(n);
        for (kind, keys) in [("miss", &f.misses), ("hit", &f.hits)] {
            for threads in [1, 2] {
                let mut group = c.benchmark_group(format!("route_read_{kind}/{n}/{threads}t"));
                group.throughput(Throughput::Elements(threads as u64));
                group.bench_function("ferry", |b| {
                    b.iter_custom(|iters| {
                        run_threads(threads, iters, keys, &|k| {
                            black_box(f.table.route_read(k));
                        })
                    })
                });
                group.bench_function("dashmap", |b| {
                    b.iter_custom(|iters| {
                        run_threads(threads, iters, keys, &|k| {
                            black_box(f.dash.get(k).map(|e| *e.value()));
                        })
                    })
                });
                // The counted read (`Table::read`, the guard dropped at once) beside the
                // plain one: what a caller that drains reads pays per read.
                group.bench_function("read_guard", |b| {
                    b.iter_custom(|iters| {
                        run_threads(threads, iters, keys, &|k| {
                            black_box(f.table.read(k).route());
                        })
                    })
                });
                group.finish();
            }
        }
    }
}

fn p99(mut samples: Vec<u64>) -> u64 {
    samples.sort_unstable();
    samples[samples.len() * 99 / 100]
}

/// Reader latency while the sweeper removes 100k expired entries out of 1M, against the same
/// reader with no sweep. Printed, not a criterion measurement:
/// criterion reports means of batches, and the question is the tail of single reads.
fn sweep(_c: &mut Criterion) {
    const N: usize = 1_000_000;
    let (a, b) = (
        NodeId::new("node-a").unwrap(),
        NodeId::new("node-b").unwrap(),
    );
    let clock = ManualClock::new();
    // The background sweeper, as a storage system runs it; it finds nothing to do until the
    // clock moves.
    let table = Table::new(
        Config::default()
            .with_expected_entries(N)
            .with_clock(clock.clone())
            .with_default_ttl(Duration::from_secs(3600))
            .with_sweep_interval(Some(Duration::from_millis(5))),
    );
    let keys: Vec<String> = (0..N).map(present_key).collect();
    for (i, k) in keys.iter().enumerate() {
        table.register(&ObjectKey::new(k).unwrap(), a, b).unwrap();
        table.try_flip(k, 0).unwrap();
        if i % 10 == 0 {
            table.set_ttl(k, Duration::from_secs(1)).unwrap();
        }
    }
    // Reads of live keys (odd indexes; every tenth from 0 expires), timed one by one, until
    // `max` reads or until `stop` says so.
    let reader = |stop: &dyn Fn() -> bool, max: usize| {
        let mut samples = Vec::with_capacity(max);
        let mut i = 0;
        while samples.len() < max && !(i % 1024 == 0 && stop()) {
            let k = &keys[scatter(i, N) | 1];
            let start = Instant::now();
            let route = table.route_read(k);
            samples.push(start.elapsed().as_nanos() as u64);
            assert!(matches!(route, Route::Target(_)));
            i += 1;
        }
        samples
    };
    let baseline = reader(&|| false, 2_000_000);
    let expired_before = table.stats().expired;
    clock.advance(Duration::from_secs(2));
    let start = Instant::now();
    let during = reader(
        &|| table.stats().expired - expired_before >= (N / 10) as u64,
        50_000_000,
    );
    let sweep_time = start.elapsed();
    let swept = table.stats().expired - expired_before;
    let (p_base, p_during) = (p99(baseline), p99(during.clone()));
    println!(
        "sweep: {swept} expired of {N} removed by the background sweeper in {sweep_time:?}; reader p99 {p_during} ns during the sweep ({} reads) vs {p_base} ns without: ratio {:.2}",
        during.len(),
        p_during as f64 / p_base as f64
    );
}

criterion_group!(benches, route_read, route_read_long, sweep);
criterion_main!(benches);
