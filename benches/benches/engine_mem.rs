//! The engine's own overhead (SPEC §8: ≥ 200k objects/s on 2 cores): jobs moving objects
//! MemStore → MemStore with checksum verify and cleanup after verify, checkpoints in memory,
//! the forwarding table and a throttle in the path, on a 2-worker tokio runtime. The peer is a
//! plain loop doing the same store calls with no engine (get → put → delete, as many at once
//! as the job's concurrency): the ratio is the engine's overhead.
//!
//! Run: `cargo bench -p ferry-benches --bench engine_mem`.
// Benches stop on the first unexpected error: expect says where.
// criterion_group! defines a `pub fn` that cannot take a doc comment.
#![allow(clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_store::{MemStore, Store};
use ferry_types::ObjectKey;
use futures_util::StreamExt;

mod common;

use common::{filled, keys, run_job};

const CONCURRENCY: usize = 16;

/// The same store calls with no engine: get → put → delete, `CONCURRENCY` at a time.
fn run_plain(runtime: &tokio::runtime::Runtime, keys: &[ObjectKey], size: usize) -> Duration {
    let source = Arc::new(filled(keys, size));
    let target = Arc::new(MemStore::new());
    runtime.block_on(async {
        let start = Instant::now();
        futures_util::stream::iter(keys)
            .for_each_concurrent(CONCURRENCY, |key| {
                let (source, target) = (source.clone(), target.clone());
                async move {
                    let object = source.get(key).await.expect("get");
                    target.put(key, object.body).await.expect("put");
                    source.delete(key).await.expect("delete");
                }
            })
            .await;
        let took = start.elapsed();
        assert_eq!(target.len(), keys.len());
        took
    })
}

fn engine_mem(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut round = 0;
    for (name, objects, size) in [
        ("4KiB_x_100k", 100_000, 4 << 10),
        ("1MiB_x_200", 200, 1 << 20),
    ] {
        let keys = keys(objects);
        let mut group = c.benchmark_group(format!("engine_memstore/{name}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(15));
        if size >= 1 << 20 {
            group.throughput(Throughput::Bytes((objects * size) as u64));
        } else {
            group.throughput(Throughput::Elements(objects as u64));
        }
        group.bench_function("ferry_job", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        round += 1;
                        run_job(&runtime, &keys, size, round)
                    })
                    .sum()
            })
        });
        group.bench_function("plain_loop", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run_plain(&runtime, &keys, size)).sum())
        });
        group.finish();
    }
}

criterion_group!(benches, engine_mem);
criterion_main!(benches);
