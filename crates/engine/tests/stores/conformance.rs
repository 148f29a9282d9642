//! One suite, run against every built-in store: what the `Store` trait promises.

use std::sync::Arc;

use bytes::Bytes;
use ferry_engine::store::{ByteStream, FaultyStore, MemStore, Store, body_from_bytes};
use ferry_engine::{Error, ErrorKind};
use ferry_types::Checksum;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::util::{LiveChunks, key, keys, put, read};

/// Whether the store keeps object contents in memory (then a put necessarily holds the
/// whole object, and the I7 check on put does not apply).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holds {
    Memory,
    Disk,
}

async fn suite(store: Arc<dyn Store>, holds: Holds) {
    round_trip_with_multi_chunk_and_empty_objects(&*store).await;
    get_of_absent_key_is_not_found(&*store).await;
    overwrite_changes_version(&*store).await;
    delete_absent_is_ok_false(&*store).await;
    list_is_in_key_order_with_prefix_and_start_after(&*store).await;
    failed_body_leaves_previous_object(&*store).await;
    sync_after_puts_and_deletes_succeeds(&*store).await;
    concurrent_reader_never_sees_partial_object(Arc::clone(&store)).await;
    i7_streams_64_mib_in_bounded_chunks(&*store, holds).await;
    reported_checksum_is_the_contents(&*store).await;
}

/// A store may report a checksum (`ObjectMeta::checksum`); checksum verification then trusts
/// it instead of reading the object back, so when there is one it must be the content's, from
/// every call that returns metadata, and follow an overwrite.
async fn reported_checksum_is_the_contents(store: &dyn Store) {
    let k = key("sum/a");
    for data in [b"first".as_slice(), b"second, longer content", b""] {
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
                    assert_eq!(sum, *blake3::hash(data).as_bytes(), "{call} of {data:?}")
                }
                Some(other) => panic!("{call}: unexpected checksum {other}"),
            }
        }
    }
    store.delete(&k).await.unwrap();
}

async fn round_trip_with_multi_chunk_and_empty_objects(store: &dyn Store) {
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
    // An empty chunk in the middle is no end of stream.
    let body: ByteStream = Box::pin(futures_util::stream::iter(
        [b"ab".as_slice(), b"", b"cd"].map(|c| Ok(Bytes::from_static(c))),
    ));
    store.put(&key("rt/gap"), body).await.unwrap();
    assert_eq!(read(store, "rt/gap").await.unwrap(), b"abcd");
}

async fn get_of_absent_key_is_not_found(store: &dyn Store) {
    let err = store.get(&key("absent/x")).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { key } if key.as_str() == "absent/x"),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(store.head(&key("absent/x")).await.unwrap(), None);
}

async fn overwrite_changes_version(store: &dyn Store) {
    let first = put(store, "ow/k", b"one").await;
    let second = put(store, "ow/k", b"one").await;
    assert_ne!(
        first.version, second.version,
        "same bytes, new write, new version"
    );
    let third = put(store, "ow/k", b"three").await;
    assert_ne!(second.version, third.version);
    assert_eq!(store.head(&key("ow/k")).await.unwrap(), Some(third));
    assert_eq!(read(store, "ow/k").await.unwrap(), b"three");
}

async fn delete_absent_is_ok_false(store: &dyn Store) {
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

async fn list_is_in_key_order_with_prefix_and_start_after(store: &dyn Store) {
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
    // The listing carries sizes and versions.
    let metas: Vec<_> = store.list("ls/", None).try_collect().await.unwrap();
    for meta in metas {
        assert_eq!(meta.size, meta.key.as_str().len() as u64);
        assert_eq!(store.head(&meta.key).await.unwrap(), Some(meta));
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
    // A prefix that ends inside a segment.
    assert_eq!(
        keys(store, "ls/a/c/", None).await,
        ["ls/a/c/d", "ls/a/c/e/f"]
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

async fn failed_body_leaves_previous_object(store: &dyn Store) {
    put(store, "fail/k", b"old").await;
    let body: ByteStream = Box::pin(futures_util::stream::iter([
        Ok(Bytes::from_static(b"new-part")),
        Err(Error::Transient {
            op: ferry_engine::Op::Get,
            key: None,
            source: "source went away".into(),
        }),
    ]));
    let err = store.put(&key("fail/k"), body).await.unwrap_err();
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

async fn sync_after_puts_and_deletes_succeeds(store: &dyn Store) {
    put(store, "sync/a", b"a").await;
    put(store, "sync/b/c", b"c").await;
    store.delete(&key("sync/a")).await.unwrap();
    store.sync().await.unwrap();
    store.sync().await.unwrap(); // nothing new: still fine
    assert_eq!(keys(store, "sync/", None).await, ["sync/b/c"]);
}

/// A reader that looks while a put is half-way (the writer's body waits for it between two
/// chunks) sees the previous object whole, never a part of the new one.
async fn concurrent_reader_never_sees_partial_object(store: Arc<dyn Store>) {
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

/// I7: 64 MiB through put and get in 1 MiB chunks; never more than a few chunks alive.
async fn i7_streams_64_mib_in_bounded_chunks(store: &dyn Store, holds: Holds) {
    const MIB: usize = 1 << 20;
    let live = LiveChunks::default();
    let meta = store
        .put(&key("i7/big"), live.generate(64, MIB))
        .await
        .unwrap();
    assert_eq!(meta.size, 64 * MIB as u64);
    if holds == Holds::Disk {
        assert!(live.peak() <= 3, "put held {} chunks at once", live.peak());
        assert_eq!(live.live(), 0, "put dropped every chunk");
    }
    // get → put, through a wrapper that counts the chunks alive between the two.
    let object = store.get(&key("i7/big")).await.unwrap();
    let piped = LiveChunks::default();
    let p = piped.clone();
    let mut max_chunk = 0;
    let mut count = 0usize;
    let body: ByteStream = Box::pin(object.checked_body().map(move |chunk| {
        let chunk = chunk?;
        assert!(chunk.len() <= MIB, "a chunk of {} bytes", chunk.len());
        Ok(p.track(chunk))
    }));
    let copy = store.put(&key("i7/copy"), body).await.unwrap();
    assert_eq!(copy.size, meta.size);
    if holds == Holds::Disk {
        assert!(
            piped.peak() <= 3,
            "get→put held {} chunks at once",
            piped.peak()
        );
    }
    let mut body = store.get(&key("i7/copy")).await.unwrap().checked_body();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        max_chunk = max_chunk.max(chunk.len());
        assert!(chunk.iter().all(|&b| b == chunk[0]));
        count += 1;
    }
    assert_eq!(max_chunk, MIB);
    assert_eq!(count, 64);
    store.delete(&key("i7/big")).await.unwrap();
    store.delete(&key("i7/copy")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_store_conforms() {
    suite(Arc::new(MemStore::new()), Holds::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_store_without_checksums_conforms() {
    suite(Arc::new(MemStore::new().without_checksums()), Holds::Memory).await;
}

#[tokio::test]
async fn mem_store_reports_blake3_unless_told_not_to() {
    let k = key("sum/b");
    let with = MemStore::new();
    let meta = with
        .put(&k, body_from_bytes(Bytes::from_static(b"xyz"), 2))
        .await
        .unwrap();
    assert_eq!(
        meta.checksum,
        Some(Checksum::Blake3(*blake3::hash(b"xyz").as_bytes()))
    );
    let without = MemStore::new().without_checksums();
    let meta = without
        .put(&k, body_from_bytes(Bytes::from_static(b"xyz"), 2))
        .await
        .unwrap();
    assert_eq!(meta.checksum, None);
    assert_eq!(without.head(&k).await.unwrap().unwrap().checksum, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_store_without_faults_conforms() {
    suite(Arc::new(FaultyStore::new(MemStore::new())), Holds::Memory).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_store_conforms() {
    use ferry_engine::store::{DirStore, SyncStrategy};
    for strategy in [SyncStrategy::Syncfs, SyncStrategy::PerFileFsync] {
        for named in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = DirStore::open(dir.path())
                .await
                .unwrap()
                .with_sync_strategy(strategy);
            if named {
                store = store.with_named_temp_files();
            }
            suite(Arc::new(store), Holds::Disk).await;
        }
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_dir_store_without_faults_conforms() {
    use ferry_engine::store::DirStore;
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path()).await.unwrap();
    suite(Arc::new(FaultyStore::new(store)), Holds::Disk).await;
}
