//! The engine's own overhead per object (SPEC §8: ≥ 200k objects/s on 2 cores): a job moving
//! 4 KiB objects MemStore → MemStore, checksum verify, cleanup after verify, checkpoints in
//! memory, on a 2-worker tokio runtime. No peer: the figure is objects per second.
//!
//! Run: `cargo bench -p ferry-benches --bench engine_mem`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_checkpoint::MemoryStore;
use ferry_engine::Engine;
use ferry_engine::store::MemStore;
use ferry_forwarding::Table;
use ferry_types::{
    CleanupPolicy, JobId, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection, VerifyMode,
};

const OBJECTS: usize = 20_000;
const SIZE: usize = 4096;

fn run_job(runtime: &tokio::runtime::Runtime, verify: VerifyMode, round: u64) -> Duration {
    let (a, b) = (
        NodeId::new("a").expect("valid"),
        NodeId::new("b").expect("valid"),
    );
    let source = MemStore::new();
    let body = vec![7u8; SIZE];
    for i in 0..OBJECTS {
        source.insert(
            ObjectKey::new(format!("obj/{i:06}")).expect("valid"),
            body.clone(),
        );
    }
    runtime.block_on(async {
        let engine = Engine::builder()
            .node(a, Arc::new(source))
            .node(b, Arc::new(MemStore::new()))
            .checkpoint_store(Arc::new(MemoryStore::new()))
            .forwarding(Table::default())
            .build()
            .expect("engine");
        let plan = MigrationPlan::new(a, b, ObjectSelection::all())
            .with_id(JobId::new(format!("bench-{round}")).expect("valid"))
            .with_verify(verify)
            .with_cleanup(CleanupPolicy::AfterVerify);
        let start = Instant::now();
        let handle = engine.start(plan).await.expect("start");
        let snapshot = handle.wait().await.expect("job");
        let took = start.elapsed();
        assert_eq!(snapshot.status, JobStatus::Completed);
        assert_eq!(snapshot.done_objects, OBJECTS as u64);
        took
    })
}

fn engine_mem(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("engine_memstore_4KiB");
    group.sample_size(10);
    group.throughput(Throughput::Elements(OBJECTS as u64));
    let mut round = 0;
    for (name, verify) in [
        ("checksum", VerifyMode::Checksum),
        ("size", VerifyMode::Size),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        round += 1;
                        run_job(&runtime, verify, round)
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, engine_mem);
criterion_main!(benches);
