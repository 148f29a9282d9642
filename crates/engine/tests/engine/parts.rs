//! Copies in parts (SPEC I4 inside one object): a job stopped in the middle of a large
//! object is taken up at the first part its checkpoint does not record, and the object is
//! verified whole; a changed source or a cancel abandons the upload on the target.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry_checkpoint::{CheckpointStore, FileStore};
use ferry_engine::{Engine, Parts};
use ferry_forwarding::Table;
use ferry_store::{
    BoxFuture, BoxStream, MemStore, MetaStream, Object, ObjectMeta, PartTag, Result, Store,
    UploadId,
};
use ferry_types::{
    ByteSize, CheckpointInterval, JobId, JobStatus, ObjectKey, ObjectSelection, Rate,
};
use futures_util::StreamExt;

use crate::util::*;

const MIB: u64 = 1 << 20;
/// The object: 10 parts of 1 MiB.
const SIZE: u64 = 10 * MIB;

/// A target that counts the bytes it receives, by puts and by parts.
#[derive(Debug, Clone)]
struct Counted {
    inner: MemStore,
    received: Arc<AtomicU64>,
}

impl Counted {
    fn new() -> Counted {
        Counted {
            inner: MemStore::new(),
            received: Arc::default(),
        }
    }

    fn counting<'a>(&self, body: BoxStream<'a, Result<Bytes>>) -> BoxStream<'a, Result<Bytes>> {
        let received = Arc::clone(&self.received);
        Box::pin(body.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }))
    }
}

impl Store for Counted {
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        self.inner.head(key)
    }
    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Object>> {
        self.inner.get(key)
    }
    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        self.inner.put(key, self.counting(body))
    }
    fn create_upload<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<UploadId>>> {
        self.inner.create_upload(key)
    }
    fn put_part<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        part: u32,
        offset: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<PartTag>> {
        self.inner
            .put_part(key, upload, part, offset, self.counting(body))
    }
    fn complete_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        parts: &'a [PartTag],
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        self.inner.complete_upload(key, upload, parts)
    }
    fn abort_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.abort_upload(key, upload)
    }
    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<bool>> {
        self.inner.delete(key)
    }
    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        self.inner.list(prefix, start_after)
    }
    fn sync(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.sync()
    }
}

fn huge() -> ObjectKey {
    ObjectKey::new("videos/huge.bin").unwrap()
}

fn data(seed: u8) -> Bytes {
    Bytes::from(
        (0..SIZE)
            .map(|i| (i % 251) as u8 ^ seed ^ (i >> 20) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn parts_engine(
    source: &MemStore,
    target: &Counted,
    checkpoints: Arc<dyn CheckpointStore>,
) -> Engine {
    Engine::builder()
        .node(a(), Arc::new(source.clone()))
        .node(b(), Arc::new(target.clone()))
        .checkpoint_store(checkpoints)
        .forwarding(Table::default())
        .parts(Parts {
            above: 4 * MIB,
            size: MIB,
            ..Parts::default()
        })
        .build()
        .unwrap()
}

/// 1 MiB/s in chunks of 256 KiB: one part a second, on the paused clock.
fn slow_plan() -> ferry_types::MigrationPlan {
    plan("huge", ObjectSelection::Keys(vec![huge()]))
        .with_rate(Rate::bytes_per_sec(MIB).unwrap())
        .with_chunk_size(ByteSize::kib(256))
        .with_checkpoint(CheckpointInterval {
            objects: 1,
            every: Duration::from_secs(3600),
        })
}

/// The parts of `huge()` the saved checkpoint records.
async fn recorded_parts(store: &dyn CheckpointStore) -> usize {
    let id = JobId::new("huge").unwrap();
    store
        .load(&id)
        .await
        .unwrap()
        .and_then(|loaded| {
            loaded
                .record
                .progress
                .uploads
                .get(&huge())
                .map(|u| u.parts.len())
        })
        .unwrap_or(0)
}

/// Runs the job on an engine over `source`, `target` and checkpoints in `dir` until its saved
/// checkpoint records `parts` parts, then crashes it and drops the engine (the process dies:
/// its checkpoint store's lock goes with it). Returns the parts recorded at the crash.
async fn crash_after_parts(
    source: &MemStore,
    target: &Counted,
    dir: &std::path::Path,
    parts: usize,
) -> usize {
    let first = parts_engine(source, target, Arc::new(FileStore::open(dir).unwrap()));
    let handle = first.start(slow_plan()).await.unwrap();
    let reader = FileStore::open(dir).unwrap();
    while recorded_parts(&reader).await < parts {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.crash_for_tests().await;
    drop(first);
    recorded_parts(&reader).await
}

/// Runs the job on a new engine (a restarted process) to its end; its last snapshot.
async fn run_to_end(
    source: &MemStore,
    target: &Counted,
    checkpoints: Arc<dyn CheckpointStore>,
) -> ferry_types::JobSnapshot {
    let engine = parts_engine(source, target, checkpoints);
    let handle = engine.start(slow_plan()).await.unwrap();
    handle.wait().await.unwrap()
}

/// I4 inside one object: a job crashed (no final save) with 6 of 10 parts recorded is taken
/// up by a new engine at part 7: it sends at most the 4 parts missing and one part again,
/// verifies the whole object, and leaves no upload behind. A run that ignored the record
/// would send all 10 MiB again.
#[tokio::test(start_paused = true)]
async fn i4_a_crashed_copy_in_parts_resumes_at_the_first_part_not_recorded() {
    let source = MemStore::with_chunk_size(256 << 10);
    let content = data(1);
    source.insert(huge(), content.clone());
    let target = Counted::new();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints =
        || -> Arc<dyn CheckpointStore> { Arc::new(FileStore::open(dir.path()).unwrap()) };
    let recorded = crash_after_parts(&source, &target, dir.path(), 6).await as u64;
    let sent_before = target.received.load(Ordering::Relaxed);
    assert!(sent_before < SIZE, "the first run finished: {sent_before}");
    assert!(target.inner.head(&huge()).await.unwrap().is_none());
    assert_eq!(target.inner.uploads(), 1);

    let snapshot = run_to_end(&source, &target, checkpoints()).await;
    assert_eq!(snapshot.status, JobStatus::Completed, "{snapshot:?}");
    let sent_again = target.received.load(Ordering::Relaxed) - sent_before;
    assert!(
        sent_again <= SIZE - recorded * MIB + MIB,
        "{sent_again} bytes sent again with {recorded} parts recorded"
    );
    assert_eq!(
        target.inner.bytes(huge().as_str()).unwrap(),
        content,
        "I1: the whole object"
    );
    assert_eq!(
        target.inner.uploads(),
        0,
        "I8: an upload left on the target"
    );
    assert_eq!(recorded_parts(&*checkpoints()).await, 0);
}

/// A source changed between the runs: the recorded parts are of another version, so the
/// upload is aborted and the new content copied whole; nothing of the old one is left.
#[tokio::test(start_paused = true)]
async fn i1_parts_of_an_older_source_version_are_abandoned_not_completed() {
    let source = MemStore::with_chunk_size(256 << 10);
    source.insert(huge(), data(1));
    let target = Counted::new();
    let dir = tempfile::tempdir().unwrap();
    crash_after_parts(&source, &target, dir.path(), 3).await;

    let changed = data(2);
    source.insert(huge(), changed.clone());
    let checkpoints = Arc::new(FileStore::open(dir.path()).unwrap());
    let snapshot = run_to_end(&source, &target, checkpoints).await;
    assert_eq!(snapshot.status, JobStatus::Completed, "{snapshot:?}");
    assert_eq!(target.inner.bytes(huge().as_str()).unwrap(), changed);
    assert_eq!(target.inner.uploads(), 0, "the old upload was not aborted");
}

/// I8: a cancel in the middle of a copy in parts aborts its upload: nothing of it stays on
/// the target, and the record names none.
#[tokio::test(start_paused = true)]
async fn i8_a_cancelled_copy_in_parts_aborts_its_upload() {
    let source = MemStore::with_chunk_size(256 << 10);
    source.insert(huge(), data(3));
    let target = Counted::new();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let engine = parts_engine(&source, &target, Arc::clone(&checkpoints));
    let handle = engine.start(slow_plan()).await.unwrap();
    while target.inner.uploads() == 0 || target.received.load(Ordering::Relaxed) < 3 * MIB {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = handle.cancel().await.unwrap();
    assert_eq!(report.snapshot.unwrap().status, JobStatus::Cancelled);
    assert_eq!(target.inner.uploads(), 0, "the upload outlived the cancel");
    assert!(target.inner.head(&huge()).await.unwrap().is_none());
    assert_eq!(recorded_parts(&*checkpoints).await, 0);
    let id = JobId::new("huge").unwrap();
    let loaded = checkpoints.load(&id).await.unwrap().unwrap();
    assert!(loaded.record.progress.uploads.is_empty());
}

/// An upload the target no longer has (a lifecycle rule removed it while the job was
/// stopped) is not an error of the object: its parts are sent again under a new upload.
#[tokio::test(start_paused = true)]
async fn an_upload_the_target_lost_while_stopped_is_started_again() {
    let source = MemStore::with_chunk_size(256 << 10);
    let content = data(4);
    source.insert(huge(), content.clone());
    let target = Counted::new();
    let dir = tempfile::tempdir().unwrap();
    crash_after_parts(&source, &target, dir.path(), 4).await;
    let checkpoints = FileStore::open(dir.path()).unwrap();
    let loaded = checkpoints
        .load(&JobId::new("huge").unwrap())
        .await
        .unwrap()
        .unwrap();
    let upload = &loaded.record.progress.uploads[&huge()].upload;
    target
        .inner
        .abort_upload(&huge(), &UploadId::new(upload.clone()))
        .await
        .unwrap();
    assert_eq!(target.inner.uploads(), 0);

    let snapshot = run_to_end(&source, &target, Arc::new(checkpoints)).await;
    assert_eq!(snapshot.status, JobStatus::Completed, "{snapshot:?}");
    assert_eq!(snapshot.failed_objects, 0);
    assert_eq!(target.inner.bytes(huge().as_str()).unwrap(), content);
    assert_eq!(target.inner.uploads(), 0);
}
