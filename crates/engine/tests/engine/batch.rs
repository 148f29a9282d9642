//! Grouped durability: one target sync per commit serves a whole batch of cleanups (SPEC §6),
//! and no source is deleted before a completed target sync (I1).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::Op;
use ferry_engine::store::{FaultyStore, MemStore};
use ferry_forwarding::Table;
use ferry_types::{CheckpointInterval, CleanupPolicy, JobStatus, ObjectSelection};

use crate::util::*;

#[tokio::test(start_paused = true)]
async fn i1_cleanup_deletes_are_batched_behind_one_sync_per_commit() {
    const N: usize = 200;
    const INTERVAL: u64 = 50;
    let source = filled(N);
    let target = FaultyStore::new(MemStore::new());
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        mem_checkpoints(),
    );
    let plan = plan("batched", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(8).unwrap())
        .with_cleanup(CleanupPolicy::AfterVerify)
        .with_checkpoint(CheckpointInterval {
            objects: INTERVAL,
            every: Duration::from_secs(3600),
        });
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert!(source.is_empty());
    let syncs = target.calls(Op::Sync);
    assert!(
        syncs <= N as u64 / INTERVAL + 2,
        "one sync per commit, not per object: {syncs} syncs for {N} objects"
    );
    // I1: every source deleted had its target copy synced first, so a power cut of the
    // target right now loses no object.
    target.power_cut().await.unwrap();
    for i in 0..N {
        assert_eq!(target.inner().bytes(key(i).as_str()).unwrap(), content(i));
    }
}

#[tokio::test(start_paused = true)]
async fn i1_a_failed_commit_sync_deletes_no_source() {
    const N: usize = 20;
    let source = filled(N);
    let target = FaultyStore::new(MemStore::new());
    target.inject(
        Op::Sync,
        ferry_engine::store::Trigger::Always,
        ferry_engine::store::Fault::Permanent,
    );
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &Table::default(),
        mem_checkpoints(),
    );
    let plan = plan("sync-fails", ObjectSelection::all()).with_cleanup(CleanupPolicy::AfterVerify);
    let result = engine.start(plan).await.unwrap().wait().await;
    assert!(result.is_err(), "the job fails when the target cannot sync");
    assert_eq!(
        source.len(),
        N,
        "no source deleted without a completed sync"
    );
}
