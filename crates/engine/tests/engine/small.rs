//! Objects that fit in one chunk run several to a task: the job's concurrency still bounds the
//! objects in flight (not the tasks), and an object larger than a chunk runs on its own, so
//! a slow one never holds the small objects listed beside it.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ferry_forwarding::Table;
use ferry_store::{BoxFuture, BoxStream, MemStore, MetaStream, Object, ObjectMeta, Result, Store};
use ferry_types::{ByteSize, CleanupPolicy, JobStatus, ObjectKey, ObjectSelection};
use tokio::sync::Semaphore;

use crate::util::*;

/// A source whose reads of `held` keys (all keys when `hold_all`) wait for a permit, and
/// which counts the reads under way: started and not yet let through.
#[derive(Debug)]
struct Held {
    inner: MemStore,
    held: HashSet<ObjectKey>,
    hold_all: bool,
    permits: Semaphore,
    reading: AtomicUsize,
    most: AtomicUsize,
}

impl Held {
    fn new(inner: MemStore, held: HashSet<ObjectKey>, hold_all: bool) -> Held {
        Held {
            inner,
            held,
            hold_all,
            permits: Semaphore::new(0),
            reading: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        }
    }
}

impl Store for Held {
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        self.inner.head(key)
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Object>> {
        Box::pin(async move {
            if self.hold_all || self.held.contains(key) {
                let now = self.reading.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                self.permits.acquire().await.unwrap().forget();
                self.reading.fetch_sub(1, Ordering::SeqCst);
            }
            self.inner.get(key).await
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        self.inner.put(key, body)
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

/// An engine moving `source` to a new `MemStore` (returned beside it).
fn held_engine(source: &Arc<Held>) -> (ferry_engine::Engine, MemStore) {
    let target = MemStore::new();
    let engine = engine(
        Arc::clone(source) as Arc<dyn Store>,
        Arc::new(target.clone()),
        &Table::default(),
        mem_checkpoints(),
    );
    (engine, target)
}

/// Waits (on the paused clock, which moves only when every task is idle) until `done`, an
/// hour of that clock at most.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..720_000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("not reached in an hour");
}

#[tokio::test(start_paused = true)]
async fn small_objects_share_tasks_but_never_exceed_the_concurrency() {
    const N: usize = 40;
    let source = Arc::new(Held::new(filled(N), HashSet::new(), true));
    let (engine, target) = held_engine(&source);
    // Every object fits in one chunk; four at once: two tasks of two.
    let plan = plan("small", ObjectSelection::prefix("obj/"))
        .with_chunk_size(ByteSize::kib(64))
        .with_concurrency(NonZeroUsize::new(4).unwrap())
        .with_cleanup(CleanupPolicy::AfterVerify);
    let handle = engine.start(plan).await.unwrap();
    // Every slot is taken before a read is let through.
    until(|| source.reading.load(Ordering::SeqCst) >= 4).await;
    for released in 0..N {
        // Once every task is idle (the paused clock moved), no read beyond the concurrency
        // has started, and some read waits for the next permit.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let reading = source.reading.load(Ordering::SeqCst);
        assert!(
            (1..=4).contains(&reading),
            "{reading} reads after {released}"
        );
        source.permits.add_permits(1);
    }
    let snapshot = handle.wait().await.unwrap();
    assert_eq!(snapshot.status, JobStatus::Completed);
    assert_eq!(snapshot.done_objects, N as u64);
    assert_eq!(
        source.most.load(Ordering::SeqCst),
        4,
        "at most the concurrency"
    );
    assert_eq!(target.len(), N);
}

#[tokio::test(start_paused = true)]
async fn a_large_object_held_up_holds_none_of_the_small_ones() {
    const N: usize = 12;
    let inner = MemStore::new();
    // Key 1 is larger than a chunk (16 B); the others fit in one.
    for i in 0..N {
        let size = if i == 1 { 64 } else { 8 };
        inner.insert(key(i), vec![i as u8; size]);
    }
    let held = HashSet::from([key(1)]);
    let source = Arc::new(Held::new(inner, held, false));
    let (engine, target) = held_engine(&source);
    let plan = plan("large", ObjectSelection::prefix("obj/"))
        .with_chunk_size(ByteSize::b(16))
        .with_concurrency(NonZeroUsize::new(4).unwrap())
        .with_checkpoint(ferry_types::CheckpointInterval {
            objects: 1,
            every: std::time::Duration::from_millis(10),
        });
    let handle = engine.start(plan).await.unwrap();
    // Every small object is done while the large one's read waits: none of them shared its
    // task (it would have ended only with the large one).
    until(|| handle.snapshot().done_objects == (N - 1) as u64).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(handle.snapshot().done_objects, (N - 1) as u64);
    assert_eq!(source.reading.load(Ordering::SeqCst), 1);
    source.permits.add_permits(1);
    let snapshot = handle.wait().await.unwrap();
    assert_eq!(snapshot.status, JobStatus::Completed);
    assert_eq!(snapshot.done_objects, N as u64);
    assert_eq!(target.bytes(key(1).as_str()).map(|b| b.len()), Some(64));
}
