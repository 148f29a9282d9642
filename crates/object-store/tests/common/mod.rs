//! The engine's store conformance checks (a copy of the part of
//! `crates/engine/tests/stores/conformance.rs` that applies), shared by the test files that
//! run them against `ObjectStoreAdapter`: `conformance.rs` (`memory://`, `file://`) and
//! `s3.rs` (`s3://` on the in-process server).

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ferry_engine::store::{ByteStream, Store, body_from_bytes};
use ferry_engine::{Error, ErrorKind};
use ferry_object_store::{DEFAULT_PART_SIZE, DEFAULT_UPLOAD_CONCURRENCY};
use ferry_types::{ObjectKey, ObjectMeta};
use futures_util::{StreamExt, TryStreamExt};

pub(crate) const MIB: usize = 1 << 20;

/// Whether the backend keeps contents in memory (then a put necessarily holds the whole
/// object, and the bounded-memory check on put does not apply).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holds {
    Memory,
    Disk,
}

/// What a backend's versions change with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Versions {
    /// Every write gives a new version, even of the same bytes.
    PerWrite,
    /// The version is the content's: S3's ETag of a single-part object is its MD5, so
    /// writing the same bytes again keeps it (the engine's check before a delete, I1, then
    /// compares equal content, which is what it protects).
    PerContent,
}

/// Whether a backend's listings carry the versions `head` gives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listed {
    /// They do (S3, GCS, Azure, object_store's local and in-memory stores).
    Versions,
    /// They do not: s3s-fs (0.14) lists no ETags, so the adapter makes a version of the
    /// modification time and size, which `head` (with the ETag) does not give.
    NoVersions,
}

pub(crate) async fn suite(store: &dyn Store, holds: Holds, versions: Versions, listed: Listed) {
    round_trip_with_multi_chunk_and_empty_objects(store).await;
    get_of_absent_key_is_not_found(store).await;
    overwrite_changes_version(store, versions).await;
    delete_absent_is_ok_false(store).await;
    list_is_in_key_order_with_prefix_and_start_after(store, listed).await;
    failed_body_leaves_previous_object(store).await;
    sync_after_puts_and_deletes_succeeds(store).await;
    i7_streams_64_mib_in_bounded_chunks(store, holds).await;
}

pub(crate) fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

pub(crate) async fn put(store: &dyn Store, k: &str, data: &[u8]) -> ObjectMeta {
    let body = body_from_bytes(Bytes::copy_from_slice(data), 3);
    store.put(&key(k), body).await.unwrap()
}

pub(crate) async fn read(store: &dyn Store, k: &str) -> Option<Vec<u8>> {
    match store.get(&key(k)).await {
        Ok(object) => {
            let chunks: Vec<Bytes> = object.checked_body().try_collect().await.unwrap();
            Some(chunks.concat())
        }
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("get {k}: {e}"),
    }
}

pub(crate) async fn keys(store: &dyn Store, prefix: &str, after: Option<&str>) -> Vec<String> {
    let after = after.map(key);
    store
        .list(prefix, after.as_ref())
        .map(|m| m.unwrap().key.as_str().to_owned())
        .collect()
        .await
}

/// Counts the bytes of the chunk buffers alive, and the most that were alive at once (in
/// bytes, not chunks: a body from an HTTP backend comes in chunks far smaller than 1 MiB).
#[derive(Clone, Default)]
pub(crate) struct LiveChunks {
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

pub(crate) struct Tracked {
    data: Bytes,
    live: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(self.data.len(), Ordering::SeqCst);
    }
}

impl LiveChunks {
    fn track(&self, data: Bytes) -> Bytes {
        let now = self.live.fetch_add(data.len(), Ordering::SeqCst) + data.len();
        self.peak.fetch_max(now, Ordering::SeqCst);
        Bytes::from_owner(Tracked {
            data,
            live: Arc::clone(&self.live),
        })
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn generate(&self, n: usize, size: usize) -> ByteStream {
        let this = self.clone();
        Box::pin(
            futures_util::stream::iter(0..n)
                .map(move |i| Ok(this.track(Bytes::from(vec![i as u8; size])))),
        )
    }
}

pub(crate) async fn round_trip_with_multi_chunk_and_empty_objects(store: &dyn Store) {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let k = key("rt/multi");
    let meta = store
        .put(&k, body_from_bytes(Bytes::from(data.clone()), 777))
        .await
        .unwrap();
    assert_eq!(meta.key, k);
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(store.head(&k).await.unwrap(), Some(meta.clone()));
    let object = store.get(&k).await.unwrap();
    assert_eq!(object.meta, meta, "get's meta describes what it reads");
    let chunks: Vec<Bytes> = object.checked_body().try_collect().await.unwrap();
    assert_eq!(chunks.concat(), data);

    let empty = key("rt/empty");
    let body: ByteStream = Box::pin(futures_util::stream::empty());
    let meta = store.put(&empty, body).await.unwrap();
    assert_eq!(meta.size, 0);
    assert_eq!(store.head(&empty).await.unwrap().map(|m| m.size), Some(0));
    assert_eq!(read(store, "rt/empty").await, Some(Vec::new()));
    let body: ByteStream = Box::pin(futures_util::stream::iter(
        [b"ab".as_slice(), b"", b"cd"].map(|c| Ok(Bytes::from_static(c))),
    ));
    store.put(&key("rt/gap"), body).await.unwrap();
    assert_eq!(read(store, "rt/gap").await.unwrap(), b"abcd");
}

pub(crate) async fn get_of_absent_key_is_not_found(store: &dyn Store) {
    let err = store.get(&key("absent/x")).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { key } if key.as_str() == "absent/x"),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(store.head(&key("absent/x")).await.unwrap(), None);
}

pub(crate) async fn overwrite_changes_version(store: &dyn Store, versions: Versions) {
    let first = put(store, "ow/k", b"one").await;
    let second = put(store, "ow/k", b"one").await;
    match versions {
        Versions::PerWrite => assert_ne!(
            first.version, second.version,
            "same bytes, new write, new version"
        ),
        Versions::PerContent => assert_eq!(
            first.version, second.version,
            "same bytes, same ETag (their MD5)"
        ),
    }
    let third = put(store, "ow/k", b"three").await;
    assert_ne!(second.version, third.version);
    assert_eq!(store.head(&key("ow/k")).await.unwrap(), Some(third));
    assert_eq!(read(store, "ow/k").await.unwrap(), b"three");
}

pub(crate) async fn delete_absent_is_ok_false(store: &dyn Store) {
    assert!(!store.delete(&key("del/never")).await.unwrap());
    put(store, "del/k", b"x").await;
    assert!(store.delete(&key("del/k")).await.unwrap());
    assert!(
        !store.delete(&key("del/k")).await.unwrap(),
        "idempotent (I4)"
    );
    assert_eq!(store.head(&key("del/k")).await.unwrap(), None);
    assert!(store.get(&key("del/k")).await.unwrap_err().is_not_found());
}

pub(crate) async fn list_is_in_key_order_with_prefix_and_start_after(
    store: &dyn Store,
    listed: Listed,
) {
    // Nested "directories", and names that sort around '/' (0x2f): '-' (0x2d), '.' (0x2e),
    // '0' (0x30).
    let names = [
        "ls/a/c/d",
        "ls/a.txt",
        "ls/photos/2",
        "ls/a-c",
        "ls/a/b",
        "ls/a0",
        "ls/b/x",
        "ls/photos/10",
        "ls/photos/1",
        "ls/photosx",
        "ls/a/c/e/f",
    ];
    for name in names {
        put(store, name, name.as_bytes()).await;
    }
    let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    assert_eq!(keys(store, "ls/", None).await, sorted);
    let metas: Vec<_> = store.list("ls/", None).try_collect().await.unwrap();
    for meta in metas {
        assert_eq!(meta.size, meta.key.as_str().len() as u64);
        let head = store.head(&meta.key).await.unwrap().unwrap();
        match listed {
            Listed::Versions => assert_eq!(head, meta),
            Listed::NoVersions => {
                assert_eq!((&head.key, head.size), (&meta.key, meta.size));
            }
        }
    }
    assert_eq!(
        keys(store, "ls/photos/", None).await,
        ["ls/photos/1", "ls/photos/10", "ls/photos/2"]
    );
    assert_eq!(
        keys(store, "ls/photos", Some("ls/photos/10")).await,
        ["ls/photos/2", "ls/photosx"]
    );
    assert_eq!(
        keys(store, "ls/", Some("ls/a/b")).await,
        sorted
            .iter()
            .filter(|k| k.as_str() > "ls/a/b")
            .cloned()
            .collect::<Vec<_>>()
    );
    assert_eq!(
        keys(store, "ls/a", Some("ls/a/c/d")).await,
        ["ls/a/c/e/f", "ls/a0"]
    );
    assert_eq!(keys(store, "ls/b", Some("ls/a")).await, ["ls/b/x"]);
    assert!(keys(store, "ls/", Some("ls/zzz")).await.is_empty());
    assert!(keys(store, "ls/nothing", None).await.is_empty());
    assert!(keys(store, "nowhere/at/all/", None).await.is_empty());
    assert_eq!(
        keys(store, "ls/a/c/", None).await,
        ["ls/a/c/d", "ls/a/c/e/f"]
    );
    // The whole store, from the root.
    assert_eq!(
        keys(store, "", Some("ls/photosw")).await,
        ["ls/photosx", "ow/k", "rt/empty", "rt/gap", "rt/multi"]
    );
    for i in 0..600 {
        put(store, &format!("many/{i:04}"), b"").await;
    }
    let many = keys(store, "many/", Some("many/0099")).await;
    assert_eq!(many.len(), 500);
    assert!(many.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(many[0], "many/0100");
}

pub(crate) fn failing_body(good: Vec<Bytes>) -> ByteStream {
    Box::pin(futures_util::stream::iter(good.into_iter().map(Ok)).chain(
        futures_util::stream::iter([Err(Error::Transient {
            op: ferry_engine::Op::Get,
            key: None,
            source: "source went away".into(),
        })]),
    ))
}

pub(crate) async fn failed_body_leaves_previous_object(store: &dyn Store) {
    put(store, "fail/k", b"old").await;
    // Within one part (a single put) and past it (a multipart upload, aborted).
    for good in [
        vec![Bytes::from_static(b"new-part")],
        vec![Bytes::from(vec![7u8; MIB]); DEFAULT_PART_SIZE / MIB + 2],
    ] {
        let err = store
            .put(&key("fail/k"), failing_body(good))
            .await
            .unwrap_err();
        assert!(
            err.is_transient(),
            "the body's error is the put's error: {err}"
        );
        assert_eq!(read(store, "fail/k").await.unwrap(), b"old");
        assert_eq!(
            keys(store, "fail/", None).await,
            ["fail/k"],
            "no partial object listed"
        );
    }
}

pub(crate) async fn sync_after_puts_and_deletes_succeeds(store: &dyn Store) {
    put(store, "sync/a", b"a").await;
    put(store, "sync/b/c", b"c").await;
    store.delete(&key("sync/a")).await.unwrap();
    store.sync().await.unwrap();
    store.sync().await.unwrap();
    assert_eq!(keys(store, "sync/", None).await, ["sync/b/c"]);
}

/// I7: 64 MiB through put (a multipart upload) and get in chunks of at most 1 MiB; a put
/// holds at most about part size × (upload concurrency + 1) of its body at once.
pub(crate) async fn i7_streams_64_mib_in_bounded_chunks(store: &dyn Store, holds: Holds) {
    // A part and a chunk (a part may share a chunk with the next), times the parts buffered
    // and in flight, and the chunk being handed over; chunks are at most 1 MiB.
    let bound = (DEFAULT_PART_SIZE + MIB) * (DEFAULT_UPLOAD_CONCURRENCY + 1) + MIB;
    let live = LiveChunks::default();
    let meta = store
        .put(&key("i7/big"), live.generate(64, MIB))
        .await
        .unwrap();
    assert_eq!(meta.size, 64 * MIB as u64);
    assert_eq!(
        store.head(&key("i7/big")).await.unwrap(),
        Some(meta.clone())
    );
    if holds == Holds::Disk {
        assert!(
            live.peak() <= bound,
            "put held {} bytes at once",
            live.peak()
        );
        assert_eq!(live.live(), 0, "put dropped every chunk");
    }
    // get → put, counting the chunks alive between the two.
    let object = store.get(&key("i7/big")).await.unwrap();
    let piped = LiveChunks::default();
    let p = piped.clone();
    let body: ByteStream = Box::pin(object.checked_body().map(move |chunk| {
        let chunk = chunk?;
        assert!(chunk.len() <= MIB, "a chunk of {} bytes", chunk.len());
        Ok(p.track(chunk))
    }));
    let copy = store.put(&key("i7/copy"), body).await.unwrap();
    assert_eq!(copy.size, meta.size);
    if holds == Holds::Disk {
        assert!(
            piped.peak() <= bound,
            "get→put held {} bytes at once",
            piped.peak()
        );
    }
    // The copy reads back whole, in chunks of at most 1 MiB, each of one original chunk.
    let mut body = store.get(&key("i7/copy")).await.unwrap().checked_body();
    let (mut max_chunk, mut total, mut offset) = (0, 0usize, 0usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        max_chunk = max_chunk.max(chunk.len());
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(*b, ((offset + i) / MIB) as u8, "byte {}", offset + i);
        }
        offset += chunk.len();
        total += chunk.len();
    }
    assert!(max_chunk <= MIB, "a chunk of {max_chunk} bytes");
    assert_eq!(total, 64 * MIB);
    store.delete(&key("i7/big")).await.unwrap();
    store.delete(&key("i7/copy")).await.unwrap();
}
