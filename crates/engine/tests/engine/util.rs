use std::sync::Arc;

use ferry_checkpoint::{CheckpointStore, MemoryStore};
use ferry_engine::Engine;
use ferry_forwarding::Table;
use ferry_store::{MemStore, Store};
use ferry_types::{
    ByteSize, CheckpointInterval, JobId, MigrationPlan, NodeId, ObjectKey, ObjectSelection, Rate,
    RetryPolicy,
};

pub(crate) fn a() -> NodeId {
    NodeId::new("a").unwrap()
}

pub(crate) fn b() -> NodeId {
    NodeId::new("b").unwrap()
}

pub(crate) fn key(i: usize) -> ObjectKey {
    ObjectKey::new(format!("obj/{i:05}")).unwrap()
}

pub(crate) fn content(i: usize) -> Vec<u8> {
    format!("object number {i} ").repeat(1 + i % 7).into_bytes()
}

/// A source with `n` small objects.
pub(crate) fn filled(n: usize) -> MemStore {
    fill(MemStore::with_chunk_size(16), n)
}

/// `store` with `n` small objects added.
pub(crate) fn fill(store: MemStore, n: usize) -> MemStore {
    for i in 0..n {
        store.insert(key(i), content(i));
    }
    store
}

pub(crate) fn engine(
    source: Arc<dyn Store>,
    target: Arc<dyn Store>,
    table: &Table,
    checkpoints: Arc<dyn CheckpointStore>,
) -> Engine {
    Engine::builder()
        .node(a(), source)
        .node(b(), target)
        .checkpoint_store(checkpoints)
        .forwarding(table.clone())
        .build()
        .unwrap()
}

/// An engine moving `source` → `target` (nodes a → b), checkpoints in memory.
pub(crate) fn mem_engine(source: &MemStore, target: &MemStore, table: &Table) -> Engine {
    engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        table,
        mem_checkpoints(),
    )
}

pub(crate) fn mem_checkpoints() -> Arc<dyn CheckpointStore> {
    Arc::new(MemoryStore::new())
}

pub(crate) fn plan(id: &str, objects: ObjectSelection) -> MigrationPlan {
    let retry = RetryPolicy {
        max_attempts: 5,
        initial_backoff: std::time::Duration::from_millis(1),
        max_backoff: std::time::Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    MigrationPlan::new(a(), b(), objects)
        .with_id(JobId::new(id).unwrap())
        .with_retry(retry)
        .with_checkpoint(CheckpointInterval {
            objects: 50,
            every: std::time::Duration::from_millis(50),
        })
}

/// `plan`, slowed so that a test can stop its job between any two objects: 64 B/s in chunks
/// of 16 B, and a save after every object.
pub(crate) fn slowed(plan: MigrationPlan) -> MigrationPlan {
    plan.with_rate(Rate::bytes_per_sec(64).unwrap())
        .with_chunk_size(ByteSize::b(16))
        .with_checkpoint(CheckpointInterval {
            objects: 1,
            every: std::time::Duration::from_secs(3600),
        })
}

/// Starts `plan` on `engine`, and crashes the job (no final save) once `done` objects are
/// recorded done. On a paused clock the wait between looks costs nothing.
pub(crate) async fn crash_when_done(engine: &Engine, plan: MigrationPlan, done: u64) {
    let handle = engine.start(plan).await.unwrap();
    while handle.snapshot().done_objects < done {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    handle.crash_for_tests().await;
}

/// A source of `n` small objects whose `n`-th read takes an hour: a job over it holds still
/// with every other object copied and verified, and nothing flipped until it commits.
pub(crate) fn slow_last_read(n: usize) -> ferry_store::FaultyStore<MemStore> {
    let source = ferry_store::FaultyStore::new(filled(n));
    source.inject(
        ferry_engine::Op::Get,
        ferry_store::Trigger::Call(n as u64),
        ferry_store::Fault::Latency(std::time::Duration::from_secs(3600)),
    );
    source
}

/// `recover`, as a restarted process runs it. A save of the crashed run may still be
/// finishing on a blocking thread of this (test) process, holding the job's OS lock until it
/// does: `Locked` is retried until that save ends (a real restart never sees it: the kernel
/// released the lock with the process).
pub(crate) async fn recover_after_crash(engine: &Engine) -> Vec<ferry_engine::JobHandle> {
    for _ in 0..1_000_000 {
        match engine.recover().await {
            Ok(handles) => return handles,
            Err(ferry_engine::Error::Checkpoint(ferry_checkpoint::Error::Locked { .. })) => {
                tokio::task::yield_now().await;
            }
            Err(err) => panic!("recover: {err}"),
        }
    }
    panic!("the crashed run's save never ended");
}
