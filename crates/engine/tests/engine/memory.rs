//! I7, bounded memory: objects far larger than anything the engine may hold stream from a
//! generating store into a hashing sink; only a few chunks are ever alive at once.
//!
//! Both tests run by default: two objects of 128 MiB two at a time, and one object of
//! 4 GiB (1 MiB chunks; about 1.5 s even in a debug build: chunks are filled with one byte
//! and hashed with BLAKE3's SIMD code). Peak memory is measured as the chunk buffers alive
//! at once, counted with `Bytes::from_owner`, not as the process's RSS.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ferry_forwarding::Table;
use ferry_store::{BoxFuture, BoxStream, MetaStream, Object, Store};
use ferry_store::{Error, Result};
use ferry_store::{ObjectMeta, Version};
use ferry_types::{ByteSize, CleanupPolicy, JobStatus, ObjectKey, ObjectSelection, VerifyMode};
use futures_util::StreamExt;
use parking_lot::Mutex;

use crate::util::*;

const MIB: usize = 1 << 20;

/// Counts the chunk buffers alive (made and not yet dropped), and the most alive at once.
#[derive(Debug, Clone, Default)]
struct Alive {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

struct Counted {
    data: Vec<u8>,
    now: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Alive {
    fn chunk(&self, fill: u8, size: usize) -> Bytes {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Bytes::from_owner(Counted {
            data: vec![fill; size],
            now: Arc::clone(&self.now),
        })
    }
}

/// A source whose objects are made up chunk by chunk as they are read, never held.
#[derive(Debug)]
struct Generating {
    /// Key → chunks of 1 MiB; removed on delete.
    objects: Mutex<BTreeMap<ObjectKey, usize>>,
    alive: Alive,
}

impl Generating {
    fn meta(key: &ObjectKey, chunks: usize) -> ObjectMeta {
        ObjectMeta {
            key: key.clone(),
            size: (chunks * MIB) as u64,
            version: Version::new("v1"),
            checksum: None,
            modified: None,
        }
    }
}

impl Store for Generating {
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        let found = self.objects.lock().get(key).map(|&n| Self::meta(key, n));
        Box::pin(async move { Ok(found) })
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Object>> {
        let found = self.objects.lock().get(key).copied();
        let alive = self.alive.clone();
        Box::pin(async move {
            let n = found.ok_or_else(|| Error::NotFound { key: key.clone() })?;
            let body = futures_util::stream::iter(0..n).map(move |i| Ok(alive.chunk(i as u8, MIB)));
            Ok(Object {
                meta: Self::meta(key, n),
                body: Box::pin(body),
            })
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        _body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(async move {
            Err(Error::Permanent {
                op: ferry_engine::Op::Put,
                key: Some(key.clone()),
                source: "read-only".into(),
            })
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<bool>> {
        let removed = self.objects.lock().remove(key).is_some();
        Box::pin(async move { Ok(removed) })
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        let metas: Vec<_> = self
            .objects
            .lock()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with(prefix) && start_after.is_none_or(|s| *k > s))
            .map(|(k, &n)| Ok(Self::meta(k, n)))
            .collect();
        Box::pin(futures_util::stream::iter(metas))
    }

    fn sync(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// A target that hashes what is put and keeps only the size and the hash.
#[derive(Debug, Default)]
struct HashingSink {
    objects: Mutex<BTreeMap<ObjectKey, (ObjectMeta, blake3::Hash, usize)>>,
}

impl Store for HashingSink {
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        let found = self.objects.lock().get(key).map(|o| o.0.clone());
        Box::pin(async move { Ok(found) })
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Object>> {
        Box::pin(async move { Err(Error::NotFound { key: key.clone() }) })
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        mut body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(async move {
            let mut hasher = blake3::Hasher::new();
            let (mut size, mut chunks) = (0u64, 0usize);
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                chunks += 1;
            } // each chunk dropped here
            let meta = ObjectMeta {
                key: key.clone(),
                size,
                version: Version::new(format!("h{chunks}")),
                checksum: None,
                modified: None,
            };
            self.objects
                .lock()
                .insert(key.clone(), (meta.clone(), hasher.finalize(), chunks));
            Ok(meta)
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<bool>> {
        let removed = self.objects.lock().remove(key).is_some();
        Box::pin(async move { Ok(removed) })
    }

    fn list(&self, _prefix: &str, _start_after: Option<&ObjectKey>) -> MetaStream {
        Box::pin(futures_util::stream::empty())
    }

    fn sync(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Moves `objects` objects of `chunks` MiB each, `concurrency` at a time, and checks that at
/// most a few chunks per copy were ever alive.
async fn bounded_memory(objects: usize, chunks: usize, concurrency: usize) {
    let alive = Alive::default();
    let source = Arc::new(Generating {
        objects: Mutex::new((0..objects).map(|i| (key(i), chunks)).collect()),
        alive: alive.clone(),
    });
    let sink = Arc::new(HashingSink::default());
    let engine = engine(
        Arc::clone(&source) as Arc<dyn Store>,
        Arc::clone(&sink) as Arc<dyn Store>,
        &Table::default(),
        mem_checkpoints(),
    );
    let plan = plan("i7-bounded", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(concurrency).unwrap())
        .with_chunk_size(ByteSize::b(MIB as u64))
        .with_verify(VerifyMode::Size)
        .with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, objects as u64);
    assert_eq!(snap.done_bytes, (objects * chunks * MIB) as u64);
    for i in 0..objects {
        let got = sink.objects.lock().get(&key(i)).map(|o| (o.0.size, o.2));
        assert_eq!(
            got,
            Some(((chunks * MIB) as u64, chunks)),
            "{:?} whole",
            key(i)
        );
    }
    assert!(source.objects.lock().is_empty(), "sources cleaned up");
    assert_eq!(alive.now.load(Ordering::SeqCst), 0, "every chunk dropped");
    // Per copy: the chunk read ahead, the one in hand and the one the put holds; and, for
    // an object of 8 MiB or more from a source that reports no checksum, its second read
    // beside the copy (verify, I1): the chunk it reads ahead and the one it hashes.
    let peak = alive.peak.load(Ordering::SeqCst);
    assert!(
        peak <= concurrency * 5,
        "at most a few chunks per copy alive at once (I7): {peak} with concurrency {concurrency}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i7_two_large_objects_stream_with_a_few_chunks_alive() {
    bounded_memory(2, 128, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i7_a_4_gib_object_streams_with_a_few_chunks_alive() {
    bounded_memory(1, 4096, 16).await;
}
