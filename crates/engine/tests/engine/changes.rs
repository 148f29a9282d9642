//! Sources that change outside the forwarding table during a move (issue #16): a program
//! writing the source directly, which the table never sees. A change seen after a copy (at
//! verify, before the flip, before the delete) is copied again up to `max_changes` times;
//! what still changes after that is counted (`changed_objects`), recorded failed with kind
//! `source_changed`, its source kept (I1); and `retry_failed` moves it once the writers stop,
//! so the move ends with the newest content on the target (I3: no write lost).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_checkpoint::CheckpointStore;
use ferry_engine::Engine;
use ferry_forwarding::{Route, Table};
use ferry_store::{BoxFuture, MemStore, MetaStream, Object, Store};
use ferry_types::{CleanupPolicy, FailureKind, JobId, JobStatus, ObjectKey, ObjectSelection};
use parking_lot::Mutex;

use crate::util::*;

const N: usize = 8;
/// A cleanup after a grace period.
const GRACE: CleanupPolicy = CleanupPolicy::AfterGrace(std::time::Duration::from_secs(30));

/// A source another program writes behind the engine's back: after each read of a key it
/// has been told to change (while `writing`), it stores a new content for it, as an editor
/// saving a file does. Every content it wrote is in `ledger`, the newest last.
#[derive(Debug, Clone)]
struct Rewritten {
    inner: MemStore,
    /// Changes left per key (`u32::MAX`: for as long as `writing`).
    left: Arc<Mutex<HashMap<ObjectKey, u32>>>,
    writing: Arc<AtomicBool>,
    ledger: Arc<Mutex<HashMap<ObjectKey, Vec<Vec<u8>>>>>,
}

impl Rewritten {
    fn new(inner: MemStore) -> Rewritten {
        Rewritten {
            inner,
            left: Arc::default(),
            writing: Arc::new(AtomicBool::new(true)),
            ledger: Arc::default(),
        }
    }

    /// The next `times` reads of `key` each change it.
    fn change(&self, key: ObjectKey, times: u32) {
        self.left.lock().insert(key, times);
    }

    /// Writes a new content of `key` now, outside the table.
    fn rewrite(&self, key: &ObjectKey) -> Vec<u8> {
        let mut ledger = self.ledger.lock();
        let versions = ledger.entry(key.clone()).or_default();
        let data = format!("{} rewritten {} times", key.as_str(), versions.len() + 1).into_bytes();
        versions.push(data.clone());
        self.inner.insert(key.clone(), data.clone());
        data
    }

    /// The newest content of `key`: the last one written, else the first.
    fn newest(&self, i: usize) -> Vec<u8> {
        let ledger = self.ledger.lock();
        ledger
            .get(&key(i))
            .and_then(|v| v.last().cloned())
            .unwrap_or_else(|| content(i))
    }

    fn stop_writing(&self) {
        self.writing.store(false, Ordering::SeqCst);
    }
}

impl Store for Rewritten {
    fn head<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, ferry_store::Result<Option<ferry_store::ObjectMeta>>> {
        self.inner.head(key)
    }
    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, ferry_store::Result<Object>> {
        Box::pin(async move {
            // The read is opened (its bytes are what it was), then the program writes.
            let object = self.inner.get(key).await?;
            let change = self.writing.load(Ordering::SeqCst) && {
                let mut left = self.left.lock();
                match left.get_mut(key) {
                    Some(n) if *n > 0 => {
                        *n = n.saturating_sub(u32::from(*n != u32::MAX));
                        true
                    }
                    _ => false,
                }
            };
            if change {
                self.rewrite(key);
            }
            Ok(object)
        })
    }
    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: ferry_store::BoxStream<'a, ferry_store::Result<bytes::Bytes>>,
    ) -> BoxFuture<'a, ferry_store::Result<ferry_store::ObjectMeta>> {
        self.inner.put(key, body)
    }
    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, ferry_store::Result<bool>> {
        self.inner.delete(key)
    }
    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        self.inner.list(prefix, start_after)
    }
    fn sync(&self) -> BoxFuture<'_, ferry_store::Result<()>> {
        self.inner.sync()
    }
}

/// `retry_failed` of `id`, run to its end.
async fn retry(engine: &Engine, id: &JobId) -> ferry_types::JobSnapshot {
    engine.retry_failed(id).await.unwrap().wait().await.unwrap()
}

/// The source (reporting checksums or not, as a directory) and an empty target.
fn stores(reported: bool) -> (Rewritten, MemStore) {
    if reported {
        (Rewritten::new(filled(N)), MemStore::new())
    } else {
        (
            Rewritten::new(fill(MemStore::with_chunk_size(16).without_checksums(), N)),
            MemStore::new().without_checksums(),
        )
    }
}

async fn failed_kinds(
    checkpoints: &Arc<dyn CheckpointStore>,
    job: &str,
) -> Vec<(ObjectKey, FailureKind, String)> {
    let id = JobId::new(job).unwrap();
    let record = checkpoints.load(&id).await.unwrap().unwrap().record;
    record
        .progress
        .failed
        .into_iter()
        .map(|(k, f)| (k, f.kind, f.last_error))
        .collect()
}

/// I3 for a finished move: every key's newest content is on the target and the table
/// serves it from there; with a cleanup, the source holds nothing.
fn assert_moved_newest(source: &Rewritten, target: &MemStore, table: &Table, cleans: bool) {
    for i in 0..N {
        let k = key(i);
        assert_eq!(
            target.bytes(k.as_str()).as_deref(),
            Some(&source.newest(i)[..]),
            "{k:?}: the target does not hold the newest content"
        );
        assert_eq!(table.route_read(k.as_str()), Route::Target(b()), "{k:?}");
        if cleans {
            assert!(source.inner.bytes(k.as_str()).is_none(), "{k:?} left");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn i3_a_source_changed_during_its_copy_is_copied_again_and_the_newest_content_moves() {
    for reported in [true, false] {
        for cleanup in [CleanupPolicy::Never, CleanupPolicy::AfterVerify] {
            let label = format!("reported {reported}, {cleanup:?}");
            let (source, target) = stores(reported);
            for i in 0..N {
                // Each key changes after its first two reads: within `max_changes` (3).
                source.change(key(i), 2);
            }
            let table = Table::default();
            let engine = engine(
                Arc::new(source.clone()),
                Arc::new(target.clone()),
                &table,
                mem_checkpoints(),
            );
            let plan = plan("changing", ObjectSelection::all()).with_cleanup(cleanup);
            let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
            assert_eq!(snap.status, JobStatus::Completed, "{label}: {snap:?}");
            assert_eq!((snap.failed_objects, snap.changed_objects), (0, 0));
            assert_moved_newest(&source, &target, &table, cleanup != CleanupPolicy::Never);
            for i in 0..N {
                assert_eq!(source.ledger.lock()[&key(i)].len(), 2, "{label}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn i1_a_source_that_keeps_changing_is_counted_and_kept_and_retry_moves_it_once_it_stops() {
    for reported in [true, false] {
        let (source, target) = stores(reported);
        let changing = [1, 4, 6];
        for i in changing {
            source.change(key(i), u32::MAX);
        }
        let table = Table::default();
        let checkpoints = mem_checkpoints();
        let engine = engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            &table,
            Arc::clone(&checkpoints),
        );
        let plan = plan("still-changing", ObjectSelection::all())
            .with_cleanup(CleanupPolicy::AfterVerify)
            .with_max_changes(2);
        let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
        assert_eq!(snap.status, JobStatus::CompletedWithErrors, "{snap:?}");
        assert_eq!(snap.changed_objects, 3, "{snap:?}");
        assert_eq!(snap.failed_objects, 3, "{snap:?}");
        assert_eq!(snap.done_objects, (N - 3) as u64);
        let failed = failed_kinds(&checkpoints, "still-changing").await;
        assert_eq!(failed.len(), 3);
        for (k, kind, error) in &failed {
            assert_eq!(*kind, FailureKind::SourceChanged, "{k:?}: {error}");
            assert!(
                error.contains("changed outside the forwarding table"),
                "{error}"
            );
        }
        for i in 0..N {
            let k = key(i);
            if changing.contains(&i) {
                // I1: kept, with the newest content; the copy made 1 + max_changes times.
                assert_eq!(
                    source.inner.bytes(k.as_str()).as_deref(),
                    Some(&source.newest(i)[..]),
                    "{k:?}"
                );
                assert_eq!(table.route_read(k.as_str()), Route::Source, "{k:?}");
            } else {
                assert!(source.inner.bytes(k.as_str()).is_none(), "{k:?}");
            }
        }
        // The writers stop; the failed ones move.
        source.stop_writing();
        let id = JobId::new("still-changing").unwrap();
        let snap = retry(&engine, &id).await;
        assert_eq!(snap.status, JobStatus::Completed, "{snap:?}");
        assert_eq!((snap.failed_objects, snap.changed_objects), (0, 0));
        assert_moved_newest(&source, &target, &table, true);
    }
}

/// An engine whose commit hook (after the flip, before the cleanup) lets the program write
/// the keys in `after_flip` once: a change seen only by the re-check before the delete.
fn engine_changing_after_flip(
    source: &Rewritten,
    target: &MemStore,
    table: &Table,
    checkpoints: &Arc<dyn CheckpointStore>,
    after_flip: Vec<ObjectKey>,
    deleted_after_flip: Vec<ObjectKey>,
) -> Engine {
    let hook_source = source.clone();
    let once = Arc::new(Mutex::new(after_flip));
    let deleting = Arc::new(Mutex::new(deleted_after_flip));
    Engine::builder()
        .node(a(), Arc::new(source.clone()) as Arc<dyn Store>)
        .node(b(), Arc::new(target.clone()) as Arc<dyn Store>)
        .checkpoint_store(Arc::clone(checkpoints))
        .forwarding(table.clone())
        .commit_hook(move |key, _| {
            let mut once = once.lock();
            if let Some(at) = once.iter().position(|k| k == key) {
                once.remove(at);
                hook_source.rewrite(key);
            }
            let delete = {
                let mut deleting = deleting.lock();
                let at = deleting.iter().position(|k| k == key);
                at.map(|at| deleting.remove(at))
            };
            let inner = hook_source.inner.clone();
            Box::pin(async move {
                if let Some(key) = delete {
                    inner.delete(&key).await?;
                }
                Ok(())
            })
        })
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn i3_a_source_changed_after_its_flip_is_counted_and_retry_moves_the_newest_content() {
    for reported in [true, false] {
        for cleanup in [CleanupPolicy::AfterVerify, GRACE] {
            let label = format!("reported {reported}, {cleanup:?}");
            let (source, target) = stores(reported);
            let table = Table::default();
            let checkpoints = mem_checkpoints();
            let engine = engine_changing_after_flip(
                &source,
                &target,
                &table,
                &checkpoints,
                vec![key(2), key(5)],
                vec![],
            );
            let plan = plan("after-flip", ObjectSelection::all()).with_cleanup(cleanup);
            let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
            assert_eq!(
                snap.status,
                JobStatus::CompletedWithErrors,
                "{label}: {snap:?}"
            );
            assert_eq!(snap.changed_objects, 2, "{label}: {snap:?}");
            let failed = failed_kinds(&checkpoints, "after-flip").await;
            assert_eq!(
                failed
                    .iter()
                    .map(|f| (f.0.clone(), f.1))
                    .collect::<Vec<_>>(),
                vec![
                    (key(2), FailureKind::SourceChanged),
                    (key(5), FailureKind::SourceChanged)
                ],
                "{label}"
            );
            assert!(failed[0].2.contains("after its flip"), "{}", failed[0].2);
            for i in [2, 5] {
                // Kept (I1), newer than the target's copy, which the table still serves.
                assert_eq!(
                    source.inner.bytes(key(i).as_str()).as_deref(),
                    Some(&source.newest(i)[..]),
                    "{label}"
                );
                assert_eq!(
                    target.bytes(key(i).as_str()).as_deref(),
                    Some(&content(i)[..])
                );
                assert_eq!(table.route_read(key(i).as_str()), Route::Target(b()));
            }
            let id = JobId::new("after-flip").unwrap();
            let snap = retry(&engine, &id).await;
            assert_eq!(snap.status, JobStatus::Completed, "{label}: {snap:?}");
            assert_eq!(
                (snap.failed_objects, snap.changed_objects),
                (0, 0),
                "{label}"
            );
            assert_moved_newest(&source, &target, &table, true);
            let record = checkpoints.load(&id).await.unwrap().unwrap().record;
            assert!(record.progress.flips.is_empty(), "{label}: {record:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn i3_when_both_sides_changed_after_the_flip_retry_overwrites_neither() {
    let (source, target) = stores(true);
    let table = Table::default();
    let checkpoints = mem_checkpoints();
    let engine =
        engine_changing_after_flip(&source, &target, &table, &checkpoints, vec![key(3)], vec![]);
    let plan = plan("both", ObjectSelection::all()).with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.changed_objects, 1, "{snap:?}");
    // A client writes the key through the table, which sends it to the target.
    let ticket = table.begin_write(key(3).as_str()).await.unwrap();
    assert_eq!(ticket.route(), Route::Target(b()));
    target.insert(key(3), b"written through the table".to_vec());
    drop(ticket);
    let id = JobId::new("both").unwrap();
    let snap = retry(&engine, &id).await;
    assert_eq!(snap.status, JobStatus::CompletedWithErrors, "{snap:?}");
    assert_eq!(snap.changed_objects, 1);
    let failed = failed_kinds(&checkpoints, "both").await;
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].2.contains("the target changed"),
        "{}",
        failed[0].2
    );
    // Neither write is lost: the table's on the target, which serves it; the program's on
    // the source.
    assert_eq!(
        target.bytes(key(3).as_str()).as_deref(),
        Some(&b"written through the table"[..])
    );
    assert_eq!(table.route_read(key(3).as_str()), Route::Target(b()));
    assert_eq!(
        source.inner.bytes(key(3).as_str()).as_deref(),
        Some(&source.newest(3)[..])
    );
}

#[tokio::test(start_paused = true)]
async fn i3_a_source_deleted_after_its_flip_is_counted_and_retry_deletes_the_stale_copy() {
    for cleanup in [CleanupPolicy::AfterVerify, GRACE] {
        let (source, target) = stores(false);
        let table = Table::default();
        let checkpoints = mem_checkpoints();
        let engine = engine_changing_after_flip(
            &source,
            &target,
            &table,
            &checkpoints,
            vec![],
            vec![key(6)],
        );
        let plan = plan("deleted", ObjectSelection::all()).with_cleanup(cleanup);
        let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
        assert_eq!(snap.changed_objects, 1, "{cleanup:?}: {snap:?}");
        let failed = failed_kinds(&checkpoints, "deleted").await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, key(6));
        assert!(
            failed[0].2.contains("after its flip (deleted)"),
            "{}",
            failed[0].2
        );
        // The target still serves the copy; nothing is lost that the program did not delete.
        assert_eq!(
            target.bytes(key(6).as_str()).as_deref(),
            Some(&content(6)[..])
        );
        let id = JobId::new("deleted").unwrap();
        let snap = retry(&engine, &id).await;
        assert_eq!(snap.status, JobStatus::Completed, "{cleanup:?}: {snap:?}");
        assert_eq!(snap.skipped_objects, 1, "{snap:?}");
        // No resurrection: absent on both sides, and reads go where it is absent.
        assert!(target.bytes(key(6).as_str()).is_none(), "{cleanup:?}");
        assert!(source.inner.bytes(key(6).as_str()).is_none(), "{cleanup:?}");
        assert_eq!(table.route_read(key(6).as_str()), Route::Source);
    }
}
