//! The store conformance checks against a second, independent S3 implementation: the server
//! at `FERRY_TEST_S3_ENDPOINT` (any credentials accepted). `.ci/run` starts `moto_server`
//! (moto, from PyPI, installed by `scripts/moto-s3.sh`) and runs this with the variable set;
//! without it the tests have nothing to talk to and say so. Checkpoint records
//! (`ObjectRecords`) are checked there too: moto enforces `If-Match` / `If-None-Match` on PUT.
// Tests stop on the first unexpected error: unwrap and expect say where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod records;

use std::io::{Read, Write};
use std::sync::Arc;

use common::{ADAPTER, Expect, Versions, put, suite};
use ferry_object_store::object_store::aws::AmazonS3Builder;
use ferry_object_store::{Listing, ObjectStoreAdapter};

const ENDPOINT: &str = "FERRY_TEST_S3_ENDPOINT";

/// Creates `bucket` with an unsigned `PUT /bucket` (moto does not check signatures).
fn create_bucket(endpoint: &str, bucket: &str) {
    let host = endpoint
        .strip_prefix("http://")
        .expect("an http:// endpoint")
        .trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(host).expect("the S3 server is up");
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "creating bucket {bucket}: {reply}"
    );
}

fn adapter(endpoint: &str, bucket: &str, prefix: &str) -> ObjectStoreAdapter {
    let s3 = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_bucket_name(bucket)
        .with_access_key_id("ferry-test")
        .with_secret_access_key("ferry-test")
        .build()
        .unwrap();
    let store: std::sync::Arc<dyn ferry_object_store::object_store::ObjectStore> =
        if prefix.is_empty() {
            std::sync::Arc::new(s3)
        } else {
            std::sync::Arc::new(ferry_object_store::object_store::prefix::PrefixStore::new(
                s3, prefix,
            ))
        };
    ObjectStoreAdapter::new(store, Listing::Sorted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_s3_server_conforms() {
    let Ok(endpoint) = std::env::var(ENDPOINT) else {
        eprintln!("{ENDPOINT} is not set: no second S3 server to test against (see .ci/run)");
        return;
    };
    let bucket = format!("ferry-{}", std::process::id());
    create_bucket(&endpoint, &bucket);
    for prefix in ["", "some/prefix"] {
        let store = adapter(&endpoint, &bucket, prefix);
        // A real S3 lists ETags, so listed versions match `head`'s.
        let expect = Expect {
            versions: Versions::PerContent,
            ..ADAPTER
        };
        suite(Arc::new(store), expect).await;
    }
    // Keys under a prefix stay relative to it and do not leak into the bare bucket's view.
    let bare = adapter(&endpoint, &bucket, "");
    put(&adapter(&endpoint, &bucket, "p"), "k", b"x").await;
    assert!(common::read(&bare, "p/k").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_s3_server_enforces_the_conditional_writes_of_checkpoint_records() {
    let Ok(endpoint) = std::env::var(ENDPOINT) else {
        eprintln!("{ENDPOINT} is not set: no second S3 server to test against (see .ci/run)");
        return;
    };
    let bucket = format!("ferry-records-{}", std::process::id());
    create_bucket(&endpoint, &bucket);
    let s3 = |prefix: &str| {
        let client = AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region("us-east-1")
            .with_bucket_name(&bucket)
            .with_access_key_id("ferry-test")
            .with_secret_access_key("ferry-test")
            .build()
            .unwrap();
        let store: std::sync::Arc<dyn ferry_object_store::object_store::ObjectStore> =
            std::sync::Arc::new(ferry_object_store::object_store::prefix::PrefixStore::new(
                client, prefix,
            ));
        ferry_object_store::ObjectRecords::new(store, &format!("s3://{bucket}/{prefix}"))
    };
    records::conditional_writes_are_enforced(&s3("writes")).await;
    records::i6_the_stale_worker_is_fenced(std::sync::Arc::new(s3("fenced"))).await;
}
