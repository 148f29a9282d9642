//! Grouped durability: one target sync per commit serves a whole batch of cleanups (SPEC §6),
//! and no source is deleted before a completed target sync (I1).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_engine::Op;
use ferry_forwarding::Table;
use ferry_store::ObjectMeta;
use ferry_store::Result as StoreResult;
use ferry_store::{BoxFuture, BoxStream, FaultyStore, MemStore, MetaStream, Object, Store};
use ferry_types::{CheckpointInterval, CleanupPolicy, JobStatus, ObjectKey, ObjectSelection};

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
        ferry_store::Trigger::Always,
        ferry_store::Fault::Permanent,
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

/// A store whose `sync` waits until the test opens its gate, and that counts its puts.
#[derive(Debug)]
struct GatedSync {
    inner: MemStore,
    open: tokio::sync::watch::Sender<bool>,
    syncs: tokio::sync::watch::Sender<u64>,
    puts: tokio::sync::watch::Sender<u64>,
}

impl GatedSync {
    fn new(inner: MemStore) -> GatedSync {
        GatedSync {
            inner,
            open: tokio::sync::watch::Sender::new(false),
            syncs: tokio::sync::watch::Sender::new(0),
            puts: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Store for GatedSync {
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, StoreResult<Option<ObjectMeta>>> {
        self.inner.head(key)
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, StoreResult<Object>> {
        self.inner.get(key)
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, StoreResult<Bytes>>,
    ) -> BoxFuture<'a, StoreResult<ObjectMeta>> {
        Box::pin(async move {
            let meta = self.inner.put(key, body).await?;
            self.puts.send_modify(|n| *n += 1);
            Ok(meta)
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, StoreResult<bool>> {
        self.inner.delete(key)
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        self.inner.list(prefix, start_after)
    }

    fn sync(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.syncs.send_modify(|n| *n += 1);
            let mut open = self.open.subscribe();
            let _ = open.wait_for(|open| *open).await;
            self.inner.sync().await
        })
    }
}

#[tokio::test(start_paused = true)]
async fn copies_go_on_while_a_commit_waits_for_its_target_sync() {
    const N: usize = 200;
    const INTERVAL: u64 = 20;
    let source = filled(N);
    let target = Arc::new(GatedSync::new(MemStore::new()));
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::clone(&target) as Arc<dyn Store>,
        &table,
        mem_checkpoints(),
    );
    let plan = plan("sync-overlap", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(4).unwrap())
        .with_cleanup(CleanupPolicy::AfterVerify)
        .with_checkpoint(CheckpointInterval {
            objects: INTERVAL,
            every: Duration::from_secs(3600),
        });
    let job = engine.start(plan).await.unwrap();
    let _ = target.syncs.subscribe().wait_for(|n| *n >= 1).await;
    let at_sync = *target.puts.borrow();
    // The first commit's sync is held. Copies must go on meanwhile: if the pipeline waited
    // for the sync, the runtime would go idle and the paused clock would end this wait.
    let mut puts = target.puts.subscribe();
    let copied_on = tokio::time::timeout(Duration::from_secs(600), async {
        puts.wait_for(|n| *n >= at_sync + 3 * INTERVAL)
            .await
            .map(|_| ())
    })
    .await;
    assert!(
        copied_on.is_ok(),
        "copies stalled behind the commit's sync at {at_sync} puts"
    );
    // One sync at a time, and no source deleted before a sync completed (I1).
    assert_eq!(*target.syncs.borrow(), 1);
    assert_eq!(source.len(), N);
    target.open.send_replace(true);
    let snap = job.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, N as u64);
    assert!(source.is_empty());
    for i in 0..N {
        assert_eq!(target.inner.bytes(key(i).as_str()).unwrap(), content(i));
    }
}

#[tokio::test(start_paused = true)]
async fn a_tick_that_passes_during_a_sync_commits_right_after_it() {
    const N: usize = 20;
    let start = tokio::time::Instant::now();
    // One object every 300 ms (the source's reads wait that long, concurrency 1).
    let source = FaultyStore::new(filled(N));
    source.inject(
        Op::Get,
        ferry_store::Trigger::Always,
        ferry_store::Fault::Latency(Duration::from_millis(300)),
    );
    let target = Arc::new(GatedSync::new(MemStore::new()));
    let table = Table::default();
    let engine = engine(
        Arc::new(source),
        Arc::clone(&target) as Arc<dyn Store>,
        &table,
        mem_checkpoints(),
    );
    let plan = plan("tick-during-sync", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(1).unwrap())
        .with_checkpoint(CheckpointInterval {
            objects: 1_000_000,
            every: Duration::from_secs(1),
        });
    let job = engine.start(plan).await.unwrap();
    // The tick at 1 s starts the first sync, held; the tick at 2 s passes during it.
    let _ = target.syncs.subscribe().wait_for(|n| *n >= 1).await;
    tokio::time::sleep_until(start + Duration::from_millis(2500)).await;
    target.open.send_replace(true);
    // The commit the 2 s tick asked for follows the sync at once, not at the 3 s tick.
    let mut syncs = target.syncs.subscribe();
    let next = tokio::time::timeout_at(start + Duration::from_millis(2900), async {
        syncs.wait_for(|n| *n >= 2).await.map(|_| ())
    })
    .await;
    assert!(
        next.is_ok(),
        "the missed tick's commit waited for the next tick"
    );
    let snap = job.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, N as u64);
}

/// Hole C of the engine-wing review: dispatch was limited by the tasks running, not by how
/// far the watermark lagged, so one slow object held the watermark while every other object
/// landed in the record's done set above it (2,000 keys, four at a time, the first read
/// slow: 1,999 entries, every save rewriting them all). Dispatch now stays within a window
/// of the watermark: the done set stays within `16 × concurrency`, and the job still ends
/// with every object done (I4).
#[tokio::test(start_paused = true)]
async fn i4_one_slow_object_never_grows_the_done_set_past_the_window() {
    const N: usize = 2000;
    let source = FaultyStore::new(filled(N));
    // The first read (key 0's copy) takes a minute.
    source.inject(
        Op::Get,
        ferry_store::Trigger::Call(1),
        ferry_store::Fault::Latency(Duration::from_secs(60)),
    );
    let target = MemStore::new();
    let checkpoints = mem_checkpoints();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &Table::default(),
        Arc::clone(&checkpoints),
    );
    let plan = plan("lagging-watermark", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(4).unwrap())
        .with_checkpoint(CheckpointInterval {
            objects: 10,
            every: Duration::from_millis(10),
        });
    let handle = engine.start(plan).await.unwrap();
    let id = handle.id().clone();
    let mut largest = 0;
    while !handle.snapshot().status.is_finished() {
        if let Some(loaded) = checkpoints.load(&id).await.unwrap() {
            largest = largest.max(loaded.record.progress.done_above.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, N as u64);
    assert!(largest > 0, "the slow object held the watermark");
    assert!(
        largest <= 16 * 4,
        "the done set above the watermark grew to {largest} keys"
    );
}
