//! Checkpoint records in a bucket (`ObjectRecords` under `LeasedStore`) on a real S3 server:
//! `s3s-fs` in this process on loopback, one server for this test binary, a prefix per test.
//! The checkpoint conformance suite of `ferry-checkpoint` runs over it unchanged, and the
//! conditional writes that fence a stale worker (SPEC I6) are checked on the wire.

#[path = "../../checkpoint/tests/suite/mod.rs"]
mod suite;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use ferry_checkpoint::{
    CheckpointStore, Condition, Error, LeasedStore, SharedRecords, Tag, Written,
};
use ferry_object_store::ObjectRecords;
use ferry_object_store::object_store::ObjectStore;
use ferry_object_store::object_store::prefix::PrefixStore;
use ferry_object_store::test_server::{ACCESS_KEY, S3Server, SECRET_KEY};
use ferry_types::{JobId, MigrationPlan, NodeId, ObjectSelection};

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

fn job() -> JobId {
    JobId::new("job-1").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_are_enforced_by_the_server() {
    let records = records();
    let first = match records
        .write(&job(), b"one".to_vec(), Condition::Absent)
        .await
        .unwrap()
    {
        Written::Done(tag) => tag,
        Written::Conflict => panic!("create of a new record refused"),
    };
    // If-None-Match: * on an existing object.
    assert_eq!(
        records
            .write(&job(), b"two".to_vec(), Condition::Absent)
            .await
            .unwrap(),
        Written::Conflict
    );
    let (bytes, tag) = records.read(&job()).await.unwrap().expect("written");
    assert_eq!((bytes.as_slice(), &tag), (&b"one"[..], &first));
    let second = match records
        .write(&job(), b"two".to_vec(), Condition::Matches(tag.clone()))
        .await
        .unwrap()
    {
        Written::Done(tag) => tag,
        Written::Conflict => panic!("write at the current version refused"),
    };
    assert_ne!(second, first);
    // If-Match with the version it replaced: a stale writer.
    assert_eq!(
        records
            .write(&job(), b"three".to_vec(), Condition::Matches(first))
            .await
            .unwrap(),
        Written::Conflict
    );
    assert_eq!(
        records
            .write(
                &JobId::new("absent").unwrap(),
                b"x".to_vec(),
                Condition::Matches(Tag("\"0\"".into()))
            )
            .await
            .unwrap(),
        Written::Conflict
    );
    let (bytes, _) = records.read(&job()).await.unwrap().expect("written");
    assert_eq!(bytes, b"two");
    assert_eq!(records.jobs().await.unwrap(), vec![job()]);
    assert!(records.remove(&job()).await.unwrap());
    assert!(!records.remove(&job()).await.unwrap());
    assert!(records.read(&job()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i6_two_workers_one_bucket_the_stale_one_is_fenced() {
    let records = Arc::new(records());
    let now = Arc::new(std::sync::atomic::AtomicU64::new(1_700_000_000_000));
    let clock = {
        let now = Arc::clone(&now);
        Arc::new(move || now.load(Ordering::SeqCst)) as ferry_checkpoint::Clock
    };
    let worker = |name: &str| {
        LeasedStore::builder(Arc::clone(&records) as Arc<dyn SharedRecords>)
            .holder(name)
            .clock(Arc::clone(&clock))
            .build()
    };
    let (a, b) = (worker("worker a"), worker("worker b"));
    let plan = MigrationPlan::new(
        NodeId::new("src").unwrap(),
        NodeId::new("dst").unwrap(),
        ObjectSelection::all(),
    );
    a.create(&job(), &plan).await.unwrap();
    let stale = a.acquire(&job()).await.unwrap().lease;
    assert!(matches!(b.acquire(&job()).await, Err(Error::Locked { .. })));
    now.fetch_add(31_000, Ordering::SeqCst);
    let fresh = b.acquire(&job()).await.unwrap().lease;
    let saved = a
        .save(
            &stale,
            ferry_types::JobStatus::Running,
            ferry_checkpoint::Progress::default(),
        )
        .await;
    assert!(
        matches!(
            saved,
            Err(Error::StaleEpoch {
                epoch: 1,
                current: 2,
                ..
            })
        ),
        "{saved:?}"
    );
    b.save(
        &fresh,
        ferry_types::JobStatus::Running,
        ferry_checkpoint::Progress::default(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_error_naming_the_record() {
    let s3 = SERVER
        .s3("state", ACCESS_KEY, "not-the-secret")
        .build()
        .unwrap();
    let records = ObjectRecords::new(Arc::new(s3), "s3://state/");
    let store = LeasedStore::new(Arc::new(records));
    let err = store.load(&job()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Remote { op: "read", .. }), "{err:?}");
    assert!(text.contains("s3://state/jobs/job-1"), "{text}");
    assert!(text.contains("credentials"), "{text}");
}
