//! The conformance suite (`suite.rs`), run against every built-in store: what the `Store`
//! trait promises.

use std::sync::Arc;

use bytes::Bytes;
use ferry_store::Checksum;
use ferry_store::{FaultyStore, MemStore, Store, body_from_bytes};

use crate::suite::{Expect, Holds, Listed, MIB, Parts, Reads, Versions, key, suite};

/// The built-in stores: every write a new version, listings with head's versions; a put
/// writes each chunk as it comes (a part is a chunk, none left in flight: at most 3 MiB of a
/// body of 1 MiB chunks held at once), a get reads whole chunks.
const BUILT_IN: Expect = Expect {
    holds: Holds::Disk,
    versions: Versions::PerWrite,
    listed: Listed::Versions,
    parts: Parts {
        size: MIB,
        in_flight: 0,
    },
    reads: Reads::WholeChunks,
};

/// `MemStore` keeps contents in memory.
const IN_MEMORY: Expect = Expect {
    holds: Holds::Memory,
    ..BUILT_IN
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_store_conforms() {
    suite(Arc::new(MemStore::new()), IN_MEMORY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_store_without_checksums_conforms() {
    suite(Arc::new(MemStore::new().without_checksums()), IN_MEMORY).await;
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
    suite(Arc::new(FaultyStore::new(MemStore::new())), IN_MEMORY).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_store_conforms() {
    use ferry_store::{DirStore, SyncStrategy};
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
            // Writes past the page cache in two of the four: unnamed and named temp files.
            let direct = named == (strategy == SyncStrategy::PerFileFsync);
            suite(Arc::new(store.with_direct_writes(direct)), BUILT_IN).await;
        }
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_dir_store_without_faults_conforms() {
    use ferry_store::DirStore;
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path()).await.unwrap();
    suite(Arc::new(FaultyStore::new(store)), BUILT_IN).await;
}

/// An upload in parts outlives the store's process (here: a second `open`, which removes the
/// temp files of puts but keeps uploads), holds what its parts wrote, and continues; an id
/// that this store never made (a path, another prefix) is "not found", never a path.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_store_upload_survives_reopen_and_refuses_foreign_ids() {
    use ferry_store::{DirStore, UploadId, body_from_bytes};
    let dir = tempfile::tempdir().unwrap();
    let k = key("a/b/huge.bin");
    let first = DirStore::open(dir.path()).await.unwrap();
    let upload = first.create_upload(&k).await.unwrap().unwrap();
    let one = first
        .put_part(
            &k,
            &upload,
            1,
            0,
            body_from_bytes(Bytes::from(vec![1u8; 3000]), 1024),
        )
        .await
        .unwrap();
    // A part written and never recorded by the run that stopped.
    first
        .put_part(
            &k,
            &upload,
            2,
            3000,
            body_from_bytes(Bytes::from(vec![7u8; 500]), 1024),
        )
        .await
        .unwrap();
    drop(first);

    let second = DirStore::open(dir.path()).await.unwrap();
    let two = second
        .put_part(
            &k,
            &upload,
            2,
            3000,
            body_from_bytes(Bytes::from(vec![2u8; 100]), 1024),
        )
        .await
        .unwrap();
    let meta = second
        .complete_upload(&k, &upload, &[one, two])
        .await
        .unwrap();
    assert_eq!(
        meta.size, 3100,
        "the longer part written before the crash was cut"
    );
    let data = std::fs::read(dir.path().join("a/b/huge.bin")).unwrap();
    assert_eq!(&data[..3000], &[1u8; 3000][..]);
    assert_eq!(&data[3000..], &[2u8; 100][..]);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("a/b")).unwrap().collect();
    assert_eq!(left.len(), 1, "the upload's file was renamed into place");
    let late = body_from_bytes(Bytes::from_static(b"late"), 1024);
    let err = second
        .put_part(&k, &upload, 3, 3100, late)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "a part of a completed upload: {err}");

    for foreign in [
        "../../etc/passwd",
        ".ferry-tmp-up-../x",
        "huge.bin",
        ".ferry-tmp-1234",
    ] {
        let id = UploadId::new(foreign);
        let body = body_from_bytes(Bytes::from_static(b"x"), 1);
        let err = second.put_part(&k, &id, 1, 0, body).await.unwrap_err();
        assert!(err.is_not_found(), "{foreign}: {err}");
        second.abort_upload(&k, &id).await.unwrap();
    }
    assert_eq!(
        std::fs::read(dir.path().join("a/b/huge.bin")).unwrap(),
        data
    );
}
