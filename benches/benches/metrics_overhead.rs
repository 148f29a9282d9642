//! What recording metrics costs on the hot paths (issue 18: within the noise), each measured
//! in one group with and without a recorder: `route_read` (hits and misses, 1M entries, one
//! thread) and the engine's MemStore → MemStore job (100k × 4 KiB, checksum verify, cleanup
//! after verify, as `engine_mem`).
//!
//! The recorder is `metrics-exporter-prometheus`'s, as `ferry --metrics-addr` installs it
//! (same buckets), behind a switch: metric handles are registered when a table, an engine or
//! a job is made, so what is made while the switch is off records into no-op handles (no
//! recorder), and what is made while it is on records into Prometheus's. Histogram samples
//! are folded into buckets between iterations, off the clock, as the exporter's upkeep does.
//!
//! On a shared machine the groups' figures drift with the load between the two variants'
//! runs; with `FERRY_METRICS_PAIRS=N` the bench also runs N alternating pairs of each (A B,
//! B A, …) and prints the median of the per-pair ratios with their spread, as SPEC §8's
//! end-to-end comparisons do.
//!
//! Run: `cargo bench -p ferry-benches --bench metrics_overhead`.
// Benches stop on the first unexpected error: expect says where. The paired ratios are
// printed beside criterion's figures. criterion_group! defines a `pub fn` that cannot take a
// doc comment.
#![allow(clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_forwarding::{Config, Table};
use ferry_types::{NodeId, ObjectKey};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

mod common;

use common::run_job;

/// The buckets `ferry --metrics-addr` sets.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A recorder that hands out Prometheus handles while on, no-op handles while off.
struct Switch {
    on: AtomicBool,
    inner: PrometheusRecorder,
}

impl Recorder for Switch {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match self.on.load(Ordering::SeqCst) {
            true => self.inner.register_counter(key, metadata),
            false => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match self.on.load(Ordering::SeqCst) {
            true => self.inner.register_gauge(key, metadata),
            false => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        match self.on.load(Ordering::SeqCst) {
            true => self.inner.register_histogram(key, metadata),
            false => Histogram::noop(),
        }
    }
}

/// Installs the switch (off) as the global recorder; returns it and the Prometheus handle.
fn install() -> (&'static Switch, PrometheusHandle) {
    let inner = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .expect("buckets")
        .build_recorder();
    let handle = inner.handle();
    let switch: &'static Switch = Box::leak(Box::new(Switch {
        on: AtomicBool::new(false),
        inner,
    }));
    metrics::set_global_recorder(switch).expect("the only recorder");
    (switch, handle)
}

/// The two variants of each group, in the order they run.
const VARIANTS: [(&str, bool); 2] = [("no_recorder", false), ("prometheus_recorder", true)];

const QUERIES: usize = 1 << 16;
const ENTRIES: usize = 1_000_000;

fn scatter(i: usize, n: usize) -> usize {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7) % n
}

/// A table of `ENTRIES` forwarded keys, as `route.rs` builds it (its sweeper on, as in a
/// process that serves metrics: it publishes the table's figures after each pass).
fn table() -> Table {
    let (a, b) = (
        NodeId::new("node-a").expect("valid"),
        NodeId::new("node-b").expect("valid"),
    );
    let table = Table::new(Config::default().with_expected_entries(ENTRIES));
    for i in 0..ENTRIES {
        let key = format!("bucket-{:04}/object-{i:08}", i % 1000);
        table
            .register(&ObjectKey::new(&key).expect("valid"), a, b)
            .expect("register");
        table.try_flip(&key, 0).expect("flip");
    }
    table
}

fn route_read(c: &mut Criterion, switch: &Switch, handle: &PrometheusHandle) {
    let hits: Vec<String> = (0..QUERIES)
        .map(|i| {
            let i = scatter(i, ENTRIES);
            format!("bucket-{:04}/object-{i:08}", i % 1000)
        })
        .collect();
    let misses: Vec<String> = (0..QUERIES)
        .map(|i| {
            let i = scatter(i, ENTRIES);
            format!("bucket-{:04}/missing-{i:08}", i % 1000)
        })
        .collect();
    // One table for both variants: the table registers no handle when it is made (it
    // publishes by name, at sweeps and scrapes), so the switch alone decides whether its
    // figures go to Prometheus, and both variants read the same memory.
    let table = table();
    for (kind, keys) in [("hit", &hits), ("miss", &misses)] {
        let mut group = c.benchmark_group(format!("metrics_overhead/route_read_{kind}/1M/1t"));
        group.throughput(Throughput::Elements(1));
        for (name, on) in &VARIANTS {
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    switch.on.store(*on, Ordering::SeqCst);
                    let start = Instant::now();
                    for i in (0..).take(iters as usize) {
                        black_box(table.route_read(&keys[i & (QUERIES - 1)]));
                    }
                    let took = start.elapsed();
                    // A scrape, off the clock.
                    table.record_metrics();
                    black_box(handle.render().len());
                    switch.on.store(false, Ordering::SeqCst);
                    took
                })
            });
        }
        group.finish();
    }
}

fn engine_mem(c: &mut Criterion, switch: &Switch, handle: &PrometheusHandle) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let objects = 100_000;
    let keys = common::keys(objects);
    let mut round = 0;
    let mut group = c.benchmark_group("metrics_overhead/engine_memstore/4KiB_x_100k");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(objects as u64));
    for (name, on) in VARIANTS {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    switch.on.store(on, Ordering::SeqCst);
                    took += run_job(&runtime, &keys, 4 << 10, round);
                    switch.on.store(false, Ordering::SeqCst);
                    // The exporter's upkeep and a scrape, off the clock.
                    handle.run_upkeep();
                    black_box(handle.render().len());
                }
                took
            })
        });
    }
    group.finish();
}

/// The median of `ratios` and their range.
fn summary(mut ratios: Vec<f64>) -> String {
    ratios.sort_by(f64::total_cmp);
    let median = match ratios.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => ratios[n / 2],
        n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
    };
    format!(
        "median {median:.3} ({:.3}–{:.3}, {} pairs)",
        ratios.first().copied().unwrap_or(f64::NAN),
        ratios.last().copied().unwrap_or(f64::NAN),
        ratios.len()
    )
}

/// `pairs` alternating pairs of `run(false)` and `run(true)`: the ratios with / without.
fn paired(pairs: usize, mut run: impl FnMut(bool) -> Duration) -> Vec<f64> {
    (0..pairs)
        .map(|pair| {
            let order = if pair % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut took = [Duration::ZERO; 2];
            for on in order {
                took[usize::from(on)] = run(on);
            }
            took[1].as_secs_f64() / took[0].as_secs_f64()
        })
        .collect()
}

fn paired_ratios(pairs: usize, switch: &Switch, handle: &PrometheusHandle) {
    // route_read hits, 1M lookups per run, on one table (as in `route_read`).
    let table = table();
    let keys: Vec<String> = (0..QUERIES)
        .map(|i| {
            let i = scatter(i, ENTRIES);
            format!("bucket-{:04}/object-{i:08}", i % 1000)
        })
        .collect();
    let ratios = paired(pairs, |on| {
        switch.on.store(on, Ordering::SeqCst);
        let start = Instant::now();
        for i in 0..1_000_000 {
            black_box(table.route_read(&keys[i & (QUERIES - 1)]));
        }
        let took = start.elapsed();
        // A scrape, off the clock.
        table.record_metrics();
        black_box(handle.render().len());
        switch.on.store(false, Ordering::SeqCst);
        took
    });
    println!(
        "paired route_read_hit/1M/1t, prometheus_recorder / no_recorder: {}",
        summary(ratios)
    );
    drop(table);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let keys = common::keys(100_000);
    let mut round = 1_000_000;
    let ratios = paired(pairs, |on| {
        round += 1;
        switch.on.store(on, Ordering::SeqCst);
        let took = run_job(&runtime, &keys, 4 << 10, round);
        switch.on.store(false, Ordering::SeqCst);
        handle.run_upkeep();
        took
    });
    println!(
        "paired engine_memstore/4KiB_x_100k, prometheus_recorder / no_recorder: {}",
        summary(ratios)
    );
}

fn benches(c: &mut Criterion) {
    let (switch, handle) = install();
    route_read(c, switch, &handle);
    engine_mem(c, switch, &handle);
    let pairs = std::env::var("FERRY_METRICS_PAIRS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if pairs > 0 {
        paired_ratios(pairs, switch, &handle);
    }
}

criterion_group!(metrics_overhead, benches);
criterion_main!(metrics_overhead);
