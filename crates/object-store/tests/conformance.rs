//! The store conformance suite (`common`) run against `ObjectStoreAdapter` over `memory://`
//! and over `file://` in a temp dir, and URL errors.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{ADAPTER, Expect, Holds, Reads, keys, put, suite};
use ferry_object_store::ObjectStoreAdapter;

/// `memory://`: contents in memory, split into whole chunks by a get.
const MEMORY: Expect = Expect {
    holds: Holds::Memory,
    reads: Reads::WholeChunks,
    ..ADAPTER
};

/// `file://`: a local file, read a chunk at a time by a get.
const FILE: Expect = Expect {
    reads: Reads::WholeChunks,
    ..ADAPTER
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_url_conforms() {
    let store = ObjectStoreAdapter::from_url("memory://").unwrap();
    suite(Arc::new(store), MEMORY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_url_with_a_prefix_conforms_and_keys_stay_relative() {
    let store = ObjectStoreAdapter::from_url("memory://some/prefix/").unwrap();
    suite(Arc::new(store), MEMORY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_url_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = ObjectStoreAdapter::from_url(&url).unwrap();
    suite(Arc::new(store), FILE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_url_prefix_is_a_subdirectory_and_keys_stay_relative() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/sub/dir", dir.path().display());
    let store = ObjectStoreAdapter::from_url(&url).unwrap();
    put(&store, "x/y", b"data").await;
    assert_eq!(
        std::fs::read(dir.path().join("sub/dir/x/y")).unwrap(),
        b"data"
    );
    assert_eq!(keys(&store, "", None).await, ["x/y"]);
}

#[test]
fn url_errors_name_the_problem() {
    let err = ObjectStoreAdapter::from_url("ftp://host/x").unwrap_err();
    assert!(
        matches!(&err, ferry_object_store::Error::UnknownScheme { scheme, .. } if scheme == "ftp"),
        "{err}"
    );
    for (url, feature, on) in [
        ("s3://bucket/prefix", "aws", cfg!(feature = "aws")),
        ("gs://bucket/prefix", "gcp", cfg!(feature = "gcp")),
        ("az://container/prefix", "azure", cfg!(feature = "azure")),
    ] {
        if on {
            continue;
        }
        let err = ObjectStoreAdapter::from_url(url).unwrap_err();
        assert!(
            matches!(&err, ferry_object_store::Error::FeatureDisabled { feature: f, .. } if *f == feature),
            "{url}: {err}"
        );
        assert!(
            err.to_string().contains(&format!("`{feature}`")),
            "the message names the feature: {err}"
        );
    }
    let err = ObjectStoreAdapter::from_url("file://relative/path").unwrap_err();
    assert!(
        matches!(err, ferry_object_store::Error::InvalidUrl { .. }),
        "{err}"
    );
}
