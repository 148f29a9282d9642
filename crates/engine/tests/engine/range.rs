//! Key-range selections: a job split by key range into jobs run by different workers, each
//! moving its own keys only, each listing only its share of the source (SPEC I4: resume
//! never skips; I2: reads route to a holder).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_checkpoint::{CheckpointStore, FileStore, MemoryStore, ProgressUpdate};
use ferry_forwarding::{Route, Table};
use ferry_store::ObjectMeta;
use ferry_store::{
    BoxFuture, BoxStream, FaultyStore, InjectedFault, MemStore, MetaStream, Object, Store,
};
use ferry_store::{Error, Op, Result as StoreResult};
use ferry_types::{
    ByteSize, CheckpointInterval, CleanupPolicy, JobId, JobStatus, ObjectKey, ObjectSelection, Rate,
};
use futures_util::{StreamExt, TryStreamExt};

use crate::util::*;

/// Asserts that exactly the keys `moved` (of `0..n`) were moved: on the target only, read
/// there; every other key is untouched: on the source only, read there.
fn assert_moved_exactly(
    table: &Table,
    source: &MemStore,
    target: &MemStore,
    n: usize,
    moved: &[usize],
    when: &str,
) {
    for i in 0..n {
        let k = key(i);
        let (on_source, on_target) = (source.bytes(k.as_str()), target.bytes(k.as_str()));
        let route = table.route_read(k.as_str());
        if moved.contains(&i) {
            assert_eq!(on_target.as_deref(), Some(&content(i)[..]), "{when}: {k:?}");
            assert_eq!(on_source, None, "{when}: {k:?} was cleaned");
            assert_eq!(route, Route::Target(b()), "{when}: {k:?} is forwarded");
        } else {
            assert_eq!(on_source.as_deref(), Some(&content(i)[..]), "{when}: {k:?}");
            assert_eq!(
                on_target, None,
                "{when}: {k:?} is outside every range run yet"
            );
            assert_eq!(route, Route::Source, "{when}: {k:?} is not forwarded");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn three_ranges_as_three_jobs_move_every_key_once_each_job_only_its_own() {
    const N: usize = 10;
    let source = filled(N);
    // Keys just outside the prefix, before and after it in key order: no range takes them.
    let outside = [
        ObjectKey::new("obi/9").unwrap(),
        ObjectKey::new("obk/0").unwrap(),
    ];
    for k in &outside {
        source.insert(k.clone(), "not in the prefix");
    }
    let target = FaultyStore::new(MemStore::new());
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        mem_checkpoints(),
    );
    let (k3, k6) = (key(3), key(6));
    // The middle range first, then the last, then the first: each job's lower bound is what
    // keeps it off the keys before it, which are still on the source.
    let jobs = [
        ("range-k3-k6", Some(k3.clone()), Some(k6.clone()), 4..7),
        ("range-k6-end", Some(k6), None, 7..10),
        ("range-start-k3", None, Some(k3), 0..4),
    ];
    let mut moved = Vec::new();
    for (id, after, until, share) in jobs {
        let plan = plan(id, ObjectSelection::range("obj/", after, until))
            .with_cleanup(CleanupPolicy::AfterVerify);
        let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
        assert_eq!(snap.status, JobStatus::Completed, "{id}");
        assert_eq!(snap.done_objects, share.len() as u64, "{id}");
        assert_eq!(snap.total_objects, Some(share.len() as u64), "{id}");
        moved.extend(share);
        assert_moved_exactly(&table, &source, target.inner(), N, &moved, id);
        for k in &outside {
            assert!(source.bytes(k.as_str()).is_some(), "{id}: {k:?}");
            assert!(target.inner().bytes(k.as_str()).is_none(), "{id}: {k:?}");
        }
    }
    assert_eq!(
        target.calls(Op::Put),
        N as u64,
        "every key was copied exactly once"
    );
}

#[tokio::test(start_paused = true)]
async fn i2_i4_a_range_job_resumed_after_a_crash_moves_only_its_range() {
    const N: usize = 60;
    // The range (key 9, key 49]: keys 10 to 49.
    let share: Vec<usize> = (10..50).collect();
    let dir = tempfile::tempdir().unwrap();
    let source = filled(N);
    let target = FaultyStore::new(MemStore::new());
    // The target holds other versions of keys before the range (as if another worker were
    // moving them): the resumed job must not route reads to them, although the watermark
    // passes them.
    for i in 0..5 {
        target
            .inner()
            .insert(key(i), "another job's, not a copy of the source");
    }
    let plan = plan(
        "range-crash",
        ObjectSelection::range("obj/", Some(key(9)), Some(key(49))),
    )
    .with_concurrency(NonZeroUsize::new(4).unwrap())
    .with_rate(Rate::bytes_per_sec(1024).unwrap())
    .with_chunk_size(ByteSize::b(16))
    .with_cleanup(CleanupPolicy::AfterVerify)
    .with_checkpoint(CheckpointInterval {
        objects: 5,
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
        crash_when_done(&engine, plan.clone(), 10).await;
    }
    let left = share
        .iter()
        .filter(|&&i| source.bytes(key(i).as_str()).is_some())
        .count();
    assert!(left > 0, "the crash came mid-job");

    // A restart: a new engine, a new (empty) forwarding table.
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        Arc::clone(&checkpoints),
    );
    let handle = engine.recover().await.unwrap().pop().unwrap();
    for i in (0..10).chain(50..N) {
        assert_eq!(
            table.route_read(key(i).as_str()),
            Route::Source,
            "right after recover: {:?} is outside the range, its reads stay on the source",
            key(i)
        );
    }
    handle.set_rate(Rate::Unlimited);
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, share.len() as u64);
    assert_eq!(snap.total_objects, Some(share.len() as u64));
    let record = checkpoints
        .load(&JobId::new("range-crash").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(record.progress.done_objects, share.len() as u64);

    for i in 0..N {
        let k = key(i);
        let route = table.route_read(k.as_str());
        if share.contains(&i) {
            assert_eq!(target.inner().bytes(k.as_str()).unwrap(), content(i));
            assert!(source.bytes(k.as_str()).is_none(), "{k:?} was cleaned");
            assert_eq!(route, Route::Target(b()), "{k:?}");
        } else {
            assert_eq!(source.bytes(k.as_str()).unwrap(), content(i), "{k:?}");
            assert_eq!(route, Route::Source, "{k:?}");
            let want: Option<&[u8]> = (i < 5).then_some(b"another job's, not a copy of the source");
            assert_eq!(target.inner().bytes(k.as_str()).as_deref(), want, "{k:?}");
        }
    }
}

/// The merge of journaled flips into the listing (I4) applies to ranges: a key a crashed run
/// flipped and cleaned before recording it is on the target only, and is still recorded.
#[tokio::test(start_paused = true)]
async fn i4_a_range_job_records_a_key_its_crashed_run_flipped_and_cleaned() {
    const N: usize = 20;
    let share: Vec<usize> = (6..15).collect();
    let source = filled(N);
    let target = MemStore::new();
    // Key 8 was copied, flipped (committed in the journal) and cleaned; the crash came
    // before it was recorded done.
    source.delete(&key(8)).await.unwrap();
    target.insert(key(8), content(8));
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let job = JobId::new("range-journal").unwrap();
    let plan = plan(
        "range-journal",
        ObjectSelection::range("obj/", Some(key(5)), Some(key(14))),
    )
    .with_cleanup(CleanupPolicy::AfterVerify);
    checkpoints.create(&job, &plan).await.unwrap();
    let acquired = checkpoints.acquire(&job).await.unwrap();
    let mut progress = acquired.record.progress;
    progress.apply(ProgressUpdate::FlipIntent {
        key: key(8),
        digest: *blake3::hash(&content(8)).as_bytes(),
    });
    progress.apply(ProgressUpdate::FlipCommitted { key: key(8) });
    checkpoints
        .save(&acquired.lease, JobStatus::Running, progress.into())
        .await
        .unwrap();
    checkpoints.release(&acquired.lease).await.unwrap();

    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        checkpoints,
    );
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(
        snap.done_objects,
        share.len() as u64,
        "the cleaned key is recorded too"
    );
    assert_moved_exactly(&table, &source, &target, N, &share, "at the end");
}

/// A source that counts the keys its listings produce, records where each listing started,
/// and can end its next listing with a transient error after some keys.
#[derive(Debug, Clone, Default)]
struct Watched {
    inner: MemStore,
    state: Arc<Mutex<Listings>>,
}

#[derive(Debug, Default)]
struct Listings {
    /// Keys produced by every listing so far.
    listed: u64,
    /// The `start_after` of each listing, in order.
    starts: Vec<Option<ObjectKey>>,
    /// Fail the next listing after this many keys.
    fail_after: Option<usize>,
}

impl Watched {
    fn listed(&self) -> u64 {
        self.state.lock().unwrap().listed
    }

    fn starts(&self) -> Vec<Option<ObjectKey>> {
        self.state.lock().unwrap().starts.clone()
    }
}

impl Store for Watched {
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
        self.inner.put(key, body)
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, StoreResult<bool>> {
        self.inner.delete(key)
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        let fail_after = {
            let mut state = self.state.lock().unwrap();
            state.starts.push(start_after.cloned());
            state.fail_after.take()
        };
        let state = Arc::clone(&self.state);
        let listing = self
            .inner
            .list(prefix, start_after)
            .inspect_ok(move |_| state.lock().unwrap().listed += 1);
        match fail_after {
            None => Box::pin(listing),
            Some(n) => Box::pin(listing.take(n).chain(futures_util::stream::once(
                std::future::ready(Err(Error::Transient {
                    op: Op::List,
                    key: None,
                    source: Box::new(InjectedFault),
                })),
            ))),
        }
    }

    fn sync(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.inner.sync()
    }
}

/// Runs a range job over a source of `n` keys; returns the source and the final target.
async fn run_watched(
    n: usize,
    id: &str,
    after: Option<usize>,
    until: Option<usize>,
    fail_after: Option<usize>,
) -> (Watched, MemStore) {
    let source = Watched {
        inner: filled(n),
        ..Watched::default()
    };
    source.state.lock().unwrap().fail_after = fail_after;
    let target = MemStore::new();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &Table::default(),
        mem_checkpoints(),
    );
    let plan = plan(
        id,
        ObjectSelection::range("obj/", after.map(key), until.map(key)),
    )
    .with_concurrency(NonZeroUsize::new(2).unwrap());
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed, "{id}");
    let share = until.map_or(n, |u| u + 1) - after.map_or(0, |a| a + 1);
    assert_eq!(snap.done_objects, share as u64, "{id}");
    assert_eq!(target.len(), share, "{id}: the keys of the range, no other");
    (source, target)
}

#[tokio::test(start_paused = true)]
async fn a_range_lists_from_after_and_stops_at_until_not_the_whole_source() {
    const N: usize = 1000;
    // Ending early: the listing stops at the first key past `until`.
    let (source, _) = run_watched(N, "range-head", None, Some(9), None).await;
    assert_eq!(source.starts(), [None]);
    let listed = source.listed();
    assert!(
        listed <= 11,
        "listed {listed} keys of {N} for a range of 10: the whole source was listed"
    );

    // Starting late: the listing starts after `after`, not at the prefix's first key.
    let (source, _) = run_watched(N, "range-middle", Some(500), Some(509), None).await;
    assert_eq!(source.starts(), [Some(key(500))]);
    let listed = source.listed();
    assert!(listed <= 10, "listed {listed} keys for a range of 9");
}

#[tokio::test(start_paused = true)]
async fn a_range_listing_retried_after_a_transient_error_goes_on_after_the_last_key() {
    // The first listing fails after 5 keys (101 to 105): the next one starts after key 105,
    // the later of the range's `after` (key 100) and the last key given, so no key is
    // listed, and moved, twice.
    let (source, target) = run_watched(200, "range-retry", Some(100), Some(120), Some(5)).await;
    assert_eq!(source.starts(), [Some(key(100)), Some(key(105))]);
    for i in 101..=120 {
        assert_eq!(target.bytes(key(i).as_str()).unwrap(), content(i));
    }
}
