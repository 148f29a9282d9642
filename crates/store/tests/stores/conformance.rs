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
            suite(Arc::new(store), BUILT_IN).await;
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
