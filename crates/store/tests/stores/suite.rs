//! The store conformance suite: what the `Store` trait promises, one set of checks for every
//! store.
//!
//! It lives with the engine's store tests, which run it against the built-in stores
//! (`conformance.rs`), and `ferry-object-store`'s tests include this file by path
//! (`tests/common/mod.rs`) to run it against `ObjectStoreAdapter` over each backend. So it uses
//! only what the tests of both crates have: `ferry-engine`, `ferry-types`, `bytes`,
//! `futures-util` and tokio's `rt`, `sync` and `macros`. Where stores may differ, an [`Expect`]
//! says what the one under test does; every other check applies to all alike.

// Each test binary that includes this file uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ferry_store::{ByteStream, Store, body_from_bytes};
use ferry_store::{Checksum, DeleteIf, ObjectMeta};
use ferry_store::{Error, ErrorKind};
use ferry_types::ObjectKey;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

pub(crate) const MIB: usize = 1 << 20;

/// What the suite expects of a store where stores may differ.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expect {
    pub(crate) holds: Holds,
    pub(crate) versions: Versions,
    pub(crate) listed: Listed,
    pub(crate) parts: Parts,
    pub(crate) reads: Reads,
}

/// Whether the store keeps object contents in memory (then a put necessarily holds the whole
/// object, and the bounds on what a put holds do not apply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holds {
    Memory,
    Disk,
}

/// What a store's versions change with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Versions {
    /// Every write gives a new version, even of the same bytes.
    PerWrite,
    /// The version is the content's: S3's ETag of a single-part object is its MD5, so writing
    /// the same bytes again keeps it (the engine's check before a delete, I1, then compares
    /// equal content, which is what it protects).
    PerContent,
}

/// Whether a store's listings carry the versions `head` gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listed {
    /// They do (the built-in stores, S3, GCS, Azure, object_store's local and in-memory
    /// stores).
    Versions,
    /// They do not: s3s-fs (0.14) lists no ETags, so the adapter makes a version of the
    /// modification time and size, which `head` (with the ETag) does not give.
    NoVersions,
}

/// How a put writes a body out: in parts of `size` bytes (a longer body takes several: a
/// multipart upload, which a failing body aborts), with up to `in_flight` of them still being
/// written while the next one fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Parts {
    pub(crate) size: usize,
    pub(crate) in_flight: usize,
}

impl Parts {
    /// The most bytes of a body in chunks of at most 1 MiB that a put (or a get piped into a
    /// put) may hold at once (I7): the part being filled and those in flight, each with a chunk
    /// it may share with the next, and the chunk being handed over.
    pub(crate) fn bound(self) -> usize {
        (self.size + MIB) * (self.in_flight + 1) + MIB
    }
}

/// The chunks a `get` gives a body in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reads {
    /// Whole chunks of 1 MiB, the last one shorter: the store splits what it holds, or reads a
    /// file, a chunk at a time.
    WholeChunks,
    /// Chunks of at most 1 MiB, as the backend sends them (an HTTP body comes in far smaller
    /// ones).
    UpToAChunk,
}

impl Reads {
    /// Checks the length of a chunk of a body whose length is a multiple of 1 MiB.
    fn check(self, len: usize) {
        match self {
            Reads::WholeChunks => assert_eq!(len, MIB, "a chunk of {len} bytes"),
            Reads::UpToAChunk => assert!(len <= MIB, "a chunk of {len} bytes"),
        }
    }
}

/// Runs every check against `store`, which must be empty.
pub(crate) async fn suite(store: Arc<dyn Store>, expect: Expect) {
    round_trip_with_multi_chunk_and_empty_objects(&*store).await;
    get_of_absent_key_is_not_found(&*store).await;
    get_range_delivers_exactly_the_range(&*store).await;
    overwrite_changes_version(&*store, expect.versions).await;
    delete_absent_is_ok_false(&*store).await;
    i1_delete_if_deletes_only_the_version_given(&*store).await;
    // Before anything else is stored: it lists the whole store.
    list_is_in_key_order_with_prefix_and_start_after(&*store, expect.listed).await;
    failed_body_leaves_previous_object(&*store, expect.parts).await;
    sync_after_puts_and_deletes_succeeds(&*store).await;
    concurrent_reader_never_sees_partial_object(Arc::clone(&store)).await;
    i7_streams_64_mib_in_bounded_chunks(&*store, expect).await;
    reported_checksum_is_the_contents(&*store).await;
    uploads_in_parts_show_nothing_until_completed(&*store).await;
}

pub(crate) fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

/// Puts `data` under `k`; returns the metadata as `head` reports it after the put (see
/// [`as_head_reports`]).
pub(crate) async fn put(store: &dyn Store, k: &str, data: &[u8]) -> ObjectMeta {
    let body = body_from_bytes(Bytes::copy_from_slice(data), 3);
    let put = store.put(&key(k), body).await.unwrap();
    match store.head(&key(k)).await.unwrap() {
        Some(head) => as_head_reports(put, &head),
        None => put,
    }
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

/// Counts the bytes of the chunk buffers alive (made and not yet dropped by whoever holds
/// them), and the most that were alive at once: bytes, not chunks, as a body from an HTTP
/// backend comes in chunks far smaller than 1 MiB.
#[derive(Clone, Default)]
pub(crate) struct LiveChunks {
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

struct Tracked {
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
    /// `data` as a chunk whose buffer is counted until the last reference to it drops.
    pub(crate) fn track(&self, data: Bytes) -> Bytes {
        let now = self.live.fetch_add(data.len(), Ordering::SeqCst) + data.len();
        self.peak.fetch_max(now, Ordering::SeqCst);
        Bytes::from_owner(Tracked {
            data,
            live: Arc::clone(&self.live),
        })
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// A body of `n` chunks of `size` bytes (chunk `i` filled with `i as u8`), made lazily.
    pub(crate) fn generate(&self, n: usize, size: usize) -> ByteStream {
        let this = self.clone();
        Box::pin(
            futures_util::stream::iter(0..n)
                .map(move |i| Ok(this.track(Bytes::from(vec![i as u8; size])))),
        )
    }
}

/// What a put reported (`put`), as a `head` that reports no checksum (`head`) describes it: a
/// put may report the checksum of what it wrote where `head` and `get` report none (a
/// directory store: its file may be written in place later).
fn as_head_reports(put: ObjectMeta, head: &ObjectMeta) -> ObjectMeta {
    if head.checksum.is_none() {
        ObjectMeta {
            checksum: None,
            ..put
        }
    } else {
        put
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
    let head = store.head(&k).await.unwrap().unwrap();
    let meta = as_head_reports(meta, &head);
    assert_eq!(head, meta);
    let object = store.get(&k).await.unwrap();
    assert_eq!(object.meta, meta, "get's meta describes what it reads");
    // When it was written, as the store tells it: now, give or take clock skew and the
    // second granularity of an HTTP date.
    let Some(written) = store.head(&k).await.unwrap().and_then(|m| m.modified) else {
        panic!("every built-in store reports when an object was written")
    };
    let now = std::time::SystemTime::now();
    let skew = std::time::Duration::from_secs(300);
    assert!(
        written <= now + skew && written + skew >= now,
        "{written:?} is not about now ({now:?})"
    );
    let chunks: Vec<Bytes> = object.checked_body().try_collect().await.unwrap();
    assert_eq!(chunks.concat(), data);

    let empty = key("rt/empty");
    let body: ByteStream = Box::pin(futures_util::stream::empty());
    let meta = store.put(&empty, body).await.unwrap();
    assert_eq!(meta.size, 0);
    assert_eq!(store.head(&empty).await.unwrap().map(|m| m.size), Some(0));
    assert_eq!(read(store, "rt/empty").await, Some(Vec::new()));
    // An empty chunk in the middle is no end of stream.
    let body: ByteStream = Box::pin(futures_util::stream::iter(
        [b"ab".as_slice(), b"", b"cd"].map(|c| Ok(Bytes::from_static(c))),
    ));
    store.put(&key("rt/gap"), body).await.unwrap();
    assert_eq!(read(store, "rt/gap").await.unwrap(), b"abcd");
}

pub(crate) async fn get_range_delivers_exactly_the_range(store: &dyn Store) {
    let data: Vec<u8> = (0..(3 * MIB + 123)).map(|i| (i % 251) as u8).collect();
    let written = put(store, "range/x", &data).await;
    let size = data.len() as u64;
    for (start, end) in [
        (0, u64::MAX),
        (0, 1),
        (5, 17),
        (MIB as u64 - 1, MIB as u64 + 1),
        (2 * MIB as u64 + 7, u64::MAX),
        (size - 1, size),
        (size - 10, size + 1000),
        (size, u64::MAX),
        (size + 5, u64::MAX),
    ] {
        let object = store.get_range(&key("range/x"), start, end).await.unwrap();
        assert_eq!(object.meta.size, size, "meta describes the whole object");
        assert_eq!(object.meta.version, written.version);
        let got: Vec<Bytes> = object.body.try_collect().await.unwrap();
        let got = got.concat();
        let (lo, hi) = (start.min(size) as usize, end.min(size) as usize);
        assert_eq!(got.len(), hi.saturating_sub(lo), "range {start}..{end}");
        assert!(
            got == data[lo..hi.max(lo)],
            "range {start}..{end}: other bytes"
        );
    }
    let err = store
        .get_range(&key("range/absent"), 1, 2)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    store.delete(&key("range/x")).await.unwrap();
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
    let head = store.head(&key("ow/k")).await.unwrap().unwrap();
    assert_eq!(head, as_head_reports(third, &head));
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

/// `delete_if` deletes the version it is given, keeps any other (naming it), and says when
/// there is nothing (SPEC I1: a write made since the copy is never deleted with the source).
pub(crate) async fn i1_delete_if_deletes_only_the_version_given(store: &dyn Store) {
    let k = key("delif/k");
    let old = put(store, "delif/k", b"copied").await;
    let new = put(store, "delif/k", b"written since").await;
    assert_eq!(
        store.delete_if(&k, &old.version).await.unwrap(),
        DeleteIf::Changed(new.clone())
    );
    assert_eq!(
        read(store, "delif/k").await.unwrap(),
        b"written since",
        "kept"
    );
    assert_eq!(
        store.delete_if(&k, &new.version).await.unwrap(),
        DeleteIf::Deleted
    );
    assert_eq!(store.head(&k).await.unwrap(), None);
    assert_eq!(
        store.delete_if(&k, &new.version).await.unwrap(),
        DeleteIf::Absent
    );
}

/// Listings in key order, with a prefix and `start_after`. Run on a store that holds only
/// what the checks before it left: it lists the whole store too.
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
    // The listing carries sizes and, where the store lists them, head's versions.
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
    // start_after before the prefix, and after everything.
    assert_eq!(keys(store, "ls/b", Some("ls/a")).await, ["ls/b/x"]);
    assert!(keys(store, "ls/", Some("ls/zzz")).await.is_empty());
    assert!(keys(store, "ls/nothing", None).await.is_empty());
    assert!(keys(store, "nowhere/at/all/", None).await.is_empty());
    // A prefix that ends inside a segment.
    assert_eq!(
        keys(store, "ls/a/c/", None).await,
        ["ls/a/c/d", "ls/a/c/e/f"]
    );
    // The whole store, from the root.
    assert_eq!(
        keys(store, "", Some("ls/photosw")).await,
        ["ls/photosx", "ow/k", "rt/empty", "rt/gap", "rt/multi"]
    );
    // Many objects: more than a listing batch, still in order.
    for i in 0..600 {
        put(store, &format!("many/{i:04}"), b"").await;
    }
    let many = keys(store, "many/", Some("many/0099")).await;
    assert_eq!(many.len(), 500);
    assert!(many.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(many[0], "many/0100");
}

/// A body of the chunks `good`, then a transient error.
pub(crate) fn failing_body(good: Vec<Bytes>) -> ByteStream {
    Box::pin(futures_util::stream::iter(good.into_iter().map(Ok)).chain(
        futures_util::stream::iter([Err(Error::Transient {
            op: ferry_store::Op::Get,
            key: None,
            source: "source went away".into(),
        })]),
    ))
}

pub(crate) async fn failed_body_leaves_previous_object(store: &dyn Store, parts: Parts) {
    put(store, "fail/k", b"old").await;
    // Within one part (a single put) and past it (a multipart upload, aborted).
    for good in [
        vec![Bytes::from_static(b"new-part")],
        vec![Bytes::from(vec![7u8; MIB]); parts.size / MIB + 2],
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
    store.sync().await.unwrap(); // nothing new: still fine
    assert_eq!(keys(store, "sync/", None).await, ["sync/b/c"]);
}

/// A reader that looks while a put is half-way (the writer's body waits for it between two
/// chunks) sees the previous object whole, never a part of the new one.
pub(crate) async fn concurrent_reader_never_sees_partial_object(store: Arc<dyn Store>) {
    const CHUNK: usize = 64 << 10;
    const CHUNKS: usize = 16;
    let k = key("conc/big");
    let (to_reader, mut at_reader) = mpsc::channel::<()>(1);
    let (to_writer, at_writer) = mpsc::channel::<()>(1);
    let at_writer = Arc::new(tokio::sync::Mutex::new(at_writer));
    let writer = {
        let store = Arc::clone(&store);
        let k = k.clone();
        tokio::spawn(async move {
            for round in 0..6u8 {
                let to_reader = to_reader.clone();
                let at_writer = Arc::clone(&at_writer);
                // Chunk 0, then wait for the reader to look, then the rest.
                let body: ByteStream =
                    Box::pin(futures_util::stream::iter(0..CHUNKS).then(move |i| {
                        let to_reader = to_reader.clone();
                        let at_writer = Arc::clone(&at_writer);
                        async move {
                            if i == 1 {
                                to_reader.send(()).await.unwrap();
                                at_writer.lock().await.recv().await.unwrap();
                            }
                            Ok(Bytes::from(vec![b'a' + round; CHUNK]))
                        }
                    }));
                store.put(&k, body).await.unwrap();
            }
        })
    };
    for round in 0..6u8 {
        at_reader.recv().await.unwrap();
        let seen = read(&*store, "conc/big").await;
        if round == 0 {
            assert_eq!(seen, None, "the first object is not there until whole");
        } else {
            let seen = seen.unwrap();
            assert_eq!(seen.len(), CHUNK * CHUNKS, "round {round}: whole size");
            assert!(
                seen.iter().all(|&b| b == b'a' + round - 1),
                "the previous object"
            );
        }
        assert_eq!(
            keys(&*store, "conc/", None).await.len(),
            usize::from(round > 0)
        );
        to_writer.send(()).await.unwrap();
    }
    writer.await.unwrap();
    assert!(
        read(&*store, "conc/big")
            .await
            .unwrap()
            .iter()
            .all(|&b| b == b'f')
    );
}

/// Checks that `chunk`, read at `offset` of a body made by [`LiveChunks::generate`] with
/// chunks of 1 MiB, holds byte `i / MIB` at each offset `i`.
fn assert_generated(chunk: &[u8], offset: usize) {
    let mut at = 0;
    while at < chunk.len() {
        let pos = offset + at;
        let end = (at + MIB - pos % MIB).min(chunk.len());
        let run = &chunk[at..end];
        let want = (pos / MIB) as u8;
        // Every byte of the run is its first (compared as slices: fast unoptimized too).
        assert!(
            run[0] == want && run[1..] == run[..run.len() - 1],
            "bytes {pos}..{} are not all {want}",
            offset + end
        );
        at = end;
    }
}

/// I7: 64 MiB through put (a multipart upload, where there are parts) and get, in chunks of
/// at most 1 MiB; a put, and a get piped into a put, hold at most `Parts::bound` bytes of the
/// body at once (3 MiB for a store that writes each chunk as it comes): far from the whole
/// object, unless the store keeps it in memory.
pub(crate) async fn i7_streams_64_mib_in_bounded_chunks(store: &dyn Store, expect: Expect) {
    let bound = expect.parts.bound();
    let live = LiveChunks::default();
    let meta = store
        .put(&key("i7/big"), live.generate(64, MIB))
        .await
        .unwrap();
    assert_eq!(meta.size, 64 * MIB as u64);
    let head = store.head(&key("i7/big")).await.unwrap().unwrap();
    assert_eq!(head, as_head_reports(meta.clone(), &head));
    if expect.holds == Holds::Disk {
        assert!(
            live.peak() <= bound,
            "put held {} bytes at once",
            live.peak()
        );
        assert_eq!(live.live(), 0, "put dropped every chunk");
    }
    // get → put, through a wrapper that counts the bytes alive between the two.
    let object = store.get(&key("i7/big")).await.unwrap();
    let piped = LiveChunks::default();
    let p = piped.clone();
    let reads = expect.reads;
    let body: ByteStream = Box::pin(object.checked_body().map(move |chunk| {
        let chunk = chunk?;
        reads.check(chunk.len());
        Ok(p.track(chunk))
    }));
    let copy = store.put(&key("i7/copy"), body).await.unwrap();
    assert_eq!(copy.size, meta.size);
    if expect.holds == Holds::Disk {
        assert!(
            piped.peak() <= bound,
            "get→put held {} bytes at once",
            piped.peak()
        );
    }
    // The copy reads back whole, each byte from its original chunk.
    let mut body = store.get(&key("i7/copy")).await.unwrap().checked_body();
    let mut offset = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        reads.check(chunk.len());
        assert_generated(&chunk, offset);
        offset += chunk.len();
    }
    assert_eq!(offset, 64 * MIB);
    store.delete(&key("i7/big")).await.unwrap();
    store.delete(&key("i7/copy")).await.unwrap();
}

/// BLAKE3 of the contents `reported_checksum_is_the_contents` writes: known answers, so the
/// suite needs no hasher.
const BLAKE3_OF: [(&[u8], &str); 3] = [
    (
        b"first",
        "22896bcbc3d1c76a0b90c4c3523dbea532ad63196fafdbd52cced52200d3dae4",
    ),
    (
        b"second, longer content",
        "291fd9d48f6340517eb9ebb0ab024018eaad470ed9aa137961046d8c115a6cd2",
    ),
    (
        b"",
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    ),
];

/// A store may report a checksum (`ObjectMeta::checksum`); checksum verification then trusts
/// it instead of reading the object back, so when there is one it must be the content's, from
/// every call that returns metadata, and follow an overwrite.
pub(crate) async fn reported_checksum_is_the_contents(store: &dyn Store) {
    let k = key("sum/a");
    for (data, blake3) in BLAKE3_OF {
        let put = store
            .put(&k, body_from_bytes(Bytes::copy_from_slice(data), 7))
            .await
            .unwrap();
        let head = store.head(&k).await.unwrap().unwrap();
        let got = store.get(&k).await.unwrap().meta;
        let listed = store
            .list("sum/", None)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .pop()
            .unwrap();
        for (call, meta) in [("put", put), ("head", head), ("get", got), ("list", listed)] {
            match meta.checksum {
                None => {}
                Some(Checksum::Blake3(sum)) => {
                    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
                    assert_eq!(hex, blake3, "{call} of {data:?}");
                }
                Some(other) => panic!("{call}: unexpected checksum {other}"),
            }
        }
    }
    store.delete(&k).await.unwrap();
}

/// An upload in parts (for a store that takes them): nothing is visible until it completes,
/// a part sent again replaces the first, the completed object is the parts in order, and
/// nothing sent to an upload completed or aborted shows.
pub(crate) async fn uploads_in_parts_show_nothing_until_completed(store: &dyn Store) {
    let k = key("uploads/big.bin");
    let Some(upload) = store.create_upload(&k).await.unwrap() else {
        return; // the store takes no uploads in parts: `put` alone
    };
    // Parts of 5 MiB, the least S3 takes for any part but the last.
    let size = 5 * MIB;
    let part =
        |n: u8, len: usize| Bytes::from((0..len).map(|i| n ^ (i % 251) as u8).collect::<Vec<u8>>());
    let parts = [part(1, size), part(2, size), part(3, 1000)];
    let mut tags = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let number = i as u32 + 1;
        let body = body_from_bytes(data.clone(), MIB);
        tags.push(
            store
                .put_part(&k, &upload, number, (i * size) as u64, body)
                .await
                .unwrap(),
        );
    }
    // Part 2 again, different bytes first, then the right ones: the last one sent counts.
    let wrong = body_from_bytes(part(9, size), MIB);
    store
        .put_part(&k, &upload, 2, size as u64, wrong)
        .await
        .unwrap();
    let body = body_from_bytes(parts[1].clone(), MIB);
    tags[1] = store
        .put_part(&k, &upload, 2, size as u64, body)
        .await
        .unwrap();
    assert!(
        store.head(&k).await.unwrap().is_none(),
        "visible before completed"
    );
    assert!(
        keys(store, "uploads/", None).await.is_empty(),
        "an upload's parts are listed"
    );
    let meta = store.complete_upload(&k, &upload, &tags).await.unwrap();
    let whole: Vec<u8> = parts.concat();
    assert_eq!(meta.size, whole.len() as u64);
    assert_eq!(
        read(store, "uploads/big.bin").await.as_deref(),
        Some(&whole[..])
    );
    assert_eq!(keys(store, "uploads/", None).await, ["uploads/big.bin"]);
    // A part sent to a completed upload fails for good (S3's `NoSuchUpload`; s3s-fs answers
    // 403), or (Azure, whose blocks are staged per blob, uncommitted until a commit) is
    // stored where nothing sees it: either way the object stays as completed.
    let again = body_from_bytes(parts[2].clone(), MIB);
    if let Err(err) = store.put_part(&k, &upload, 3, 2 * size as u64, again).await {
        assert_ne!(
            err.kind(),
            ErrorKind::Transient,
            "a part of a completed upload: {err:?}"
        );
    }
    assert_eq!(
        read(store, "uploads/big.bin").await.as_deref(),
        Some(&whole[..])
    );

    // Aborted: aborting again is fine (or, s3s-fs's 403, an error never retried), and the
    // parts never show.
    let other = store.create_upload(&k).await.unwrap().unwrap();
    let body = body_from_bytes(parts[0].clone(), MIB);
    store.put_part(&k, &other, 1, 0, body).await.unwrap();
    store.abort_upload(&k, &other).await.unwrap();
    if let Err(err) = store.abort_upload(&k, &other).await {
        assert_ne!(err.kind(), ErrorKind::Transient, "a second abort: {err:?}");
    }
    let body = body_from_bytes(parts[0].clone(), MIB);
    if let Err(err) = store.put_part(&k, &other, 1, 0, body).await {
        assert_ne!(
            err.kind(),
            ErrorKind::Transient,
            "a part of an aborted upload: {err:?}"
        );
    }
    assert_eq!(
        read(store, "uploads/big.bin").await.as_deref(),
        Some(&whole[..]),
        "an abort touched the object"
    );
    assert!(store.delete(&k).await.unwrap());
}
