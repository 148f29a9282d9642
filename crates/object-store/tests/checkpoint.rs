//! Checkpoint records in a bucket (`ObjectRecords` under `LeasedStore`) on a real S3 server:
//! `s3s-fs` in this process on loopback, one server for this test binary, a prefix per test.
//! The checkpoint conformance suite of `ferry-checkpoint` runs over it unchanged, and the
//! conditional writes that fence a stale worker (SPEC I6) are checked on the wire.
// Tests stop on the first unexpected error: unwrap and expect say where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod records;
#[path = "../../checkpoint/tests/suite/mod.rs"]
mod suite;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use ferry_checkpoint::{CheckpointStore, Error, LeasedStore};
use ferry_object_store::ObjectRecords;
use ferry_object_store::object_store::ObjectStore;
use ferry_object_store::object_store::prefix::PrefixStore;
use ferry_object_store::test_server::{ACCESS_KEY, S3Server, SECRET_KEY};

static SERVER: LazyLock<S3Server> =
    LazyLock::new(|| S3Server::start(&["state"]).expect("the S3 test server starts"));

/// Records under a prefix of the shared server's bucket that no other test uses.
fn records() -> ObjectRecords {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let s3 = SERVER
        .s3("state", ACCESS_KEY, SECRET_KEY)
        .build()
        .expect("the client builds");
    let store: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(s3, format!("run-{n}")));
    ObjectRecords::new(store, &format!("s3://state/run-{n}"))
}

suite::conformance!(leased_s3, |dir| ferry_checkpoint::LeasedStore::new(
    Arc::new(crate::records())
));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_are_enforced_by_the_server() {
    records::conditional_writes_are_enforced(&records()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i6_two_workers_one_bucket_the_stale_one_is_fenced() {
    records::i6_the_stale_worker_is_fenced(Arc::new(records())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_error_naming_the_record() {
    let s3 = SERVER
        .s3("state", ACCESS_KEY, "not-the-secret")
        .build()
        .unwrap();
    let records = ObjectRecords::new(Arc::new(s3), "s3://state/");
    let store = LeasedStore::new(Arc::new(records));
    let err = store.load(&records::job()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Remote { op: "read", .. }), "{err:?}");
    assert!(text.contains("s3://state/jobs/job-1"), "{text}");
    assert!(text.contains("credentials"), "{text}");
}
