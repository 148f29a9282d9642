//! The store conformance suite (`common`) run against `ObjectStoreAdapter` over
//! `s3://bucket` and `s3://bucket/prefix` on a real S3 server: `s3s-fs` in this process on
//! loopback (`ferry_object_store::test_server`), started and stopped by each test. Wrong credentials give a
//! permanent error that names the operation and the key.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{ADAPTER, Expect, Listed, Versions, key, keys, put, read, suite};
use ferry_object_store::ObjectStoreAdapter;
use ferry_object_store::test_server::{self as s3_server, ACCESS_KEY, S3Server, SECRET_KEY};
use ferry_store::Store;
use ferry_store::{Error, ErrorKind, Op};
use futures_util::StreamExt;

/// s3s-fs: ETags are content MD5s, and listings carry none.
const S3S_FS: Expect = Expect {
    versions: Versions::PerContent,
    listed: Listed::NoVersions,
    ..ADAPTER
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bucket_conforms() {
    let server = S3Server::start(&["bucket"]).unwrap();
    let store = server.adapter("bucket", "").unwrap();
    // The adapter holds a put's body in parts on the client side, as for a file: the bound
    // on live bytes applies.
    suite(Arc::new(store), S3S_FS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bucket_with_a_prefix_conforms_and_keys_stay_relative() {
    let server = S3Server::start(&["bucket"]).unwrap();
    let store = server.adapter("bucket", "some/prefix").unwrap();
    suite(Arc::new(store.clone()), S3S_FS).await;
    put(&store, "x/y", b"data").await;
    assert_eq!(keys(&store, "x/", None).await, ["x/y"]);
    // The object is in the bucket under the prefix, and only there.
    let bare = server.adapter("bucket", "").unwrap();
    assert_eq!(read(&bare, "some/prefix/x/y").await.unwrap(), b"data");
    assert_eq!(
        std::fs::read(server.root().join("bucket/some/prefix/x/y")).unwrap(),
        b"data"
    );
    assert_eq!(keys(&bare, "x/", None).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dir_serves_the_files_already_there_and_leaves_the_directory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bucket/a")).unwrap();
    std::fs::write(root.path().join("bucket/a/b"), b"already there").unwrap();
    {
        let server = S3Server::serve_dir(root.path()).unwrap();
        assert_eq!(server.root(), root.path());
        let store = server.adapter("bucket", "").unwrap();
        assert_eq!(read(&store, "a/b").await.unwrap(), b"already there");
        put(&store, "c", b"new").await;
        assert_eq!(keys(&store, "", None).await, ["a/b", "c"]);
    }
    // Stopped: the files stay, the new object is a plain file in the bucket's directory.
    assert_eq!(
        std::fs::read(root.path().join("bucket/a/b")).unwrap(),
        b"already there"
    );
    assert_eq!(std::fs::read(root.path().join("bucket/c")).unwrap(), b"new");
    let file = tempfile::NamedTempFile::new().unwrap();
    assert!(
        S3Server::serve_dir(file.path()).is_err(),
        "a file is no root"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dir_fsync_answers_puts_as_serve_dir_does() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("bucket")).unwrap();
    let server = S3Server::serve_dir_fsync(root.path()).unwrap();
    let store = server.adapter("bucket", "").unwrap();
    // Keys whose request paths are percent-encoded: the file synced is the object's.
    for key in ["plain", "dir/with space+plus", "caf\u{e9}"] {
        put(&store, key, key.as_bytes()).await;
        assert_eq!(read(&store, key).await.unwrap(), key.as_bytes());
        assert_eq!(
            std::fs::read(root.path().join("bucket").join(key)).unwrap(),
            key.as_bytes()
        );
    }
    assert!(S3Server::serve_dir_fsync(&root.path().join("missing")).is_err());
}

/// `err` and its sources, as a person reading a log sees them.
fn chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Checks `err` is a permanent failure of `op` whose message names `key` (when the
/// operation has one), and whose causes say the server refused it (HTTP 403) for the
/// bucket's URL.
fn assert_permanent(err: &Error, op: Op, key: Option<&str>) {
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err} ({err:?})");
    assert!(
        matches!(err, Error::Permanent { op: o, .. } if *o == op),
        "not a permanent {op:?}: {err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&op.to_string()), "{message:?} names {op}");
    if let Some(key) = key {
        assert!(message.contains(key), "{message:?} names {key:?}");
    }
    let chain = chain(err);
    assert!(chain.contains("403"), "{chain:?} gives the status");
    assert!(chain.contains("/bucket"), "{chain:?} names the bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_permanent_error() {
    let server = S3Server::start(&["bucket"]).unwrap();
    put(&server.adapter("bucket", "p").unwrap(), "there", b"x").await;
    for (access, secret) in [
        (ACCESS_KEY, "not-the-secret"),
        ("not-the-access-key", SECRET_KEY),
    ] {
        let store = server.adapter_with("bucket", "p", access, secret).unwrap();
        let err = store
            .put(
                &key("a/k"),
                ferry_store::body_from_bytes(bytes::Bytes::from_static(b"data"), 2),
            )
            .await
            .unwrap_err();
        assert_permanent(&err, Op::Put, Some("a/k"));
        let err = store.get(&key("there")).await.map(|_| ()).unwrap_err();
        assert_permanent(&err, Op::Get, Some("there"));
        let err = store.head(&key("there")).await.unwrap_err();
        assert_permanent(&err, Op::Head, Some("there"));
        let err = store.delete(&key("there")).await.unwrap_err();
        assert_permanent(&err, Op::Delete, Some("there"));
        let mut listing = store.list("", None);
        let err = listing.next().await.unwrap().unwrap_err();
        assert_permanent(&err, Op::List, None);
        if access == ACCESS_KEY {
            // What a person sees (`--nocapture`).
            println!("{}", chain(&err));
        }
    }
    // Nothing was written or deleted.
    let store = server.adapter("bucket", "p").unwrap();
    assert_eq!(keys(&store, "", None).await, ["there"]);
}

/// Set in the child process of `s3_url_is_configured_from_the_environment`.
const CHILD: &str = "FERRY_OBJECT_STORE_S3_ENV_CHILD";

/// `from_url("s3://…")` as a user runs it: configured by `AWS_*` variables only. The test
/// runs itself again as a child process with them set (a test cannot set its own
/// environment safely), against the server started here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_url_is_configured_from_the_environment() {
    if std::env::var_os(CHILD).is_some() {
        let store = ObjectStoreAdapter::from_url("s3://bucket/from/env").unwrap();
        put(&store, "k", b"through the environment").await;
        assert_eq!(keys(&store, "", None).await, ["k"]);
        return;
    }
    let server = S3Server::start(&["bucket"]).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args([
        "--exact",
        "s3_url_is_configured_from_the_environment",
        "--test-threads=1",
    ]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            child.env_remove(name);
        }
    }
    let output = child
        .env(CHILD, "1")
        .env("AWS_ENDPOINT", server.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", s3_server::REGION)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the child test failed: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let bare = server.adapter("bucket", "").unwrap();
    assert_eq!(
        read(&bare, "from/env/k").await.unwrap(),
        b"through the environment"
    );
}

/// A put reports the BLAKE3 of what it sent when the server's ETag confirms it stored exactly
/// that, single-part and multipart (three parts, the last short), so a checksum verify need
/// not read the object back; `head` reports none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_the_etag_confirms_reports_the_blake3_of_what_was_sent() {
    let server = S3Server::start(&["bucket"]).unwrap();
    let store = server
        .adapter("bucket", "")
        .unwrap()
        .with_part_size(5 << 20);
    let data: Vec<u8> = (0..(11u32 << 20) + 17).map(|i| (i % 251) as u8).collect();
    for len in [0, 3, 1 << 20, data.len()] {
        let body =
            ferry_store::body_from_bytes(bytes::Bytes::copy_from_slice(&data[..len]), 1 << 20);
        let meta = store.put(&key("sum/x"), body).await.unwrap();
        assert_eq!(
            meta.checksum,
            Some(ferry_store::Checksum::Blake3(
                *blake3::hash(&data[..len]).as_bytes()
            )),
            "{len} bytes"
        );
        assert_eq!(
            store.head(&key("sum/x")).await.unwrap().unwrap().checksum,
            None
        );
        assert_eq!(read(&store, "sum/x").await.unwrap(), &data[..len]);
    }
}

/// A local file's ETag is no MD5: nothing confirms what was sent, no checksum is reported.
#[tokio::test]
async fn a_put_to_local_files_reports_no_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = ObjectStoreAdapter::from_url(&url).unwrap();
    let body = ferry_store::body_from_bytes(bytes::Bytes::from_static(b"data"), 2);
    let meta = store.put(&key("a/b"), body).await.unwrap();
    assert_eq!(meta.checksum, None);
}
