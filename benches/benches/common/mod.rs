//! What the engine benches share: the MemStore → MemStore job they time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_checkpoint::MemoryStore;
use ferry_engine::Engine;
use ferry_forwarding::Table;
use ferry_store::MemStore;
use ferry_types::{
    CleanupPolicy, JobId, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection, VerifyMode,
};

/// `objects` keys, `obj/000000` on.
pub(crate) fn keys(objects: usize) -> Vec<ObjectKey> {
    (0..objects)
        .map(|i| ObjectKey::new(format!("obj/{i:06}")).expect("valid"))
        .collect()
}

/// A MemStore holding `keys`, each `size` bytes.
pub(crate) fn filled(keys: &[ObjectKey], size: usize) -> MemStore {
    let source = MemStore::new();
    let body = vec![7u8; size];
    for key in keys {
        source.insert(key.clone(), body.clone());
    }
    source
}

/// One job moving `keys` (`size` bytes each) MemStore → MemStore, checksum verify, cleanup
/// after verify, checkpoints in memory; its time from start to completion.
pub(crate) fn run_job(
    runtime: &tokio::runtime::Runtime,
    keys: &[ObjectKey],
    size: usize,
    round: u64,
) -> Duration {
    let (a, b) = (
        NodeId::new("a").expect("valid"),
        NodeId::new("b").expect("valid"),
    );
    let source = filled(keys, size);
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
            .with_verify(VerifyMode::Checksum)
            .with_cleanup(CleanupPolicy::AfterVerify);
        let start = Instant::now();
        let handle = engine.start(plan).await.expect("start");
        let snapshot = handle.wait().await.expect("job");
        let took = start.elapsed();
        assert_eq!(snapshot.status, JobStatus::Completed);
        assert_eq!(snapshot.done_objects, keys.len() as u64);
        took
    })
}
