//! Resume after a crash: a new engine on the same checkpoint store and stores.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use ferry_checkpoint::{CheckpointStore, FileStore};
use ferry_engine::Op;
use ferry_engine::store::{FaultyStore, MemStore};
use ferry_forwarding::Table;
use ferry_types::{
    ByteSize, CheckpointInterval, CleanupPolicy, JobId, JobStatus, ObjectSelection, Rate,
};

use crate::util::*;

#[tokio::test(start_paused = true)]
async fn i4_resume_after_a_crash_redoes_little_and_finishes_every_object_once() {
    const N: usize = 80;
    const CONCURRENCY: usize = 4;
    const INTERVAL: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let source = filled(N);
    let target = FaultyStore::new(MemStore::new());
    let plan = plan("crash-me", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(CONCURRENCY).unwrap())
        .with_rate(Rate::bytes_per_sec(1024).unwrap())
        .with_chunk_size(ByteSize::b(16))
        .with_cleanup(CleanupPolicy::AfterVerify)
        .with_checkpoint(CheckpointInterval {
            objects: INTERVAL,
            every: Duration::from_secs(3600),
        });

    // First run: crash once some batches were recorded.
    {
        let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
        let engine = engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            &Table::default(),
            checkpoints,
        );
        let handle = engine.start(plan.clone()).await.unwrap();
        while handle.snapshot().done_objects < 25 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.crash_for_tests().await;
    }
    assert!(target.calls(Op::Put) < N as u64, "the crash came mid-job");

    // Second run, as after a restart: a new engine, a new (empty) forwarding table.
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let recorded = checkpoints
        .load(&JobId::new("crash-me").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record
        .progress
        .done_objects;
    assert!(
        recorded >= 20,
        "batches were recorded before the crash: {recorded}"
    );
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        Arc::clone(&checkpoints),
    );
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);

    // Every object is on the target, and the sources are gone (I1 held all along).
    for i in 0..N {
        assert_eq!(target.inner().bytes(key(i).as_str()).unwrap(), content(i));
    }
    assert!(source.is_empty());
    // Done exactly once: the record counts each object once.
    let record = checkpoints
        .load(&JobId::new("crash-me").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.progress.done_objects, N as u64);
    for i in 0..N {
        assert!(record.progress.is_done(&key(i)));
    }
    assert!(
        record.progress.done_above.len() <= CONCURRENCY,
        "the watermark keeps the done set small: {}",
        record.progress.done_above.len()
    );
    // Re-done: every object needs one put; the puts beyond that were copies re-done after
    // the crash, at most what was in flight plus one interval.
    let redone = target.calls(Op::Put) - N as u64;
    assert!(
        redone <= CONCURRENCY as u64 + INTERVAL,
        "re-copied {redone} objects (recorded {recorded}, puts {})",
        target.calls(Op::Put)
    );
}
