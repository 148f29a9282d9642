//! Checks of `ObjectRecords` that every S3 server the tests know runs: the in-process one
//! (`checkpoint.rs`) and moto (`external_s3.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_checkpoint::{
    CheckpointStore, Condition, Error, LeasedStore, SharedRecords, Tag, Written,
};
use ferry_object_store::ObjectRecords;
use ferry_types::{JobId, MigrationPlan, NodeId, ObjectSelection};

pub(crate) fn job() -> JobId {
    JobId::new("job-1").unwrap()
}

/// The server enforces `If-None-Match: *` and `If-Match` on PUT, as `ObjectRecords` uses
/// them.
pub(crate) async fn conditional_writes_are_enforced(records: &ObjectRecords) {
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

/// Two workers share the records: the second takes the job over once the first one's lease
/// ran out, and the first one's save is refused (I6).
pub(crate) async fn i6_the_stale_worker_is_fenced(records: Arc<ObjectRecords>) {
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
            ferry_checkpoint::Progress::default().into(),
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
        ferry_checkpoint::Progress::default().into(),
    )
    .await
    .unwrap();
}
