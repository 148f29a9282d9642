//! `Engine::retry_failed`: the failed objects of a job that ended `CompletedWithErrors` run
//! again, and only they (I1 for their sources; exact counts at the end).

use std::num::NonZeroUsize;
use std::sync::Arc;

use ferry_engine::{Error, Op};
use ferry_forwarding::{Route, Table};
use ferry_store::{Fault, FaultyStore, MemStore, Trigger};
use ferry_types::{CleanupPolicy, JobId, JobStatus, ObjectSelection};

use crate::util::*;

#[tokio::test(start_paused = true)]
async fn retry_failed_runs_exactly_the_failed_objects_then_completes() {
    const N: usize = 10;
    let source = filled(N);
    let target = FaultyStore::new(MemStore::new());
    // With one object at a time, the 4th put is key 3's: a permanent fault fails it.
    target.inject(Op::Put, Trigger::Call(4), Fault::Permanent);
    let table = Table::default();
    let checkpoints = mem_checkpoints();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        Arc::clone(&checkpoints),
    );
    let id = JobId::new("retry-me").unwrap();
    let plan = plan("retry-me", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(1).unwrap())
        .with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine
        .start(plan.clone())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
    assert_eq!((snap.done_objects, snap.failed_objects), (9, 1));
    assert_eq!(source.len(), 1, "the failed object's source is kept");
    assert!(target.inner().bytes(key(3).as_str()).is_none());
    let record = checkpoints.load(&id).await.unwrap().unwrap().record;
    assert_eq!(record.progress.failed.keys().collect::<Vec<_>>(), [&key(3)]);

    // Starting it again is refused: it is finished; only retry_failed runs it.
    assert!(matches!(
        engine.start(plan).await,
        Err(Error::JobFinished { .. })
    ));

    target.clear_faults();
    let puts_before = target.calls(Op::Put);
    let handle = engine.retry_failed(&id).await.unwrap();
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(
        target.calls(Op::Put) - puts_before,
        1,
        "only the failed object ran"
    );
    assert_eq!(snap.failed_objects, 0);
    assert_eq!(snap.done_objects, N as u64);
    assert_eq!(
        snap.done_objects + snap.failed_objects,
        snap.total_objects.unwrap(),
        "done + failed (+ skipped, counted in done) == total"
    );
    assert_eq!(target.inner().bytes(key(3).as_str()).unwrap(), content(3));
    assert!(source.is_empty(), "its source was cleaned (AfterVerify)");
    assert_eq!(table.route_read(key(3).as_str()), Route::Target(b()));

    let record = checkpoints.load(&id).await.unwrap().unwrap().record;
    assert_eq!(record.status, JobStatus::Completed);
    assert!(record.progress.failed.is_empty(), "removed from failed");
    assert_eq!(record.progress.done_objects, N as u64);
    assert!(record.progress.is_done(&key(3)));
}

#[tokio::test(start_paused = true)]
async fn retry_failed_keeps_an_object_that_fails_again_failed_and_counts_it_once() {
    let source = filled(4);
    let target = FaultyStore::new(MemStore::new());
    target.inject(Op::Put, Trigger::Call(2), Fault::Permanent);
    let checkpoints = mem_checkpoints();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &Table::default(),
        Arc::clone(&checkpoints),
    );
    let id = JobId::new("fails-twice").unwrap();
    let plan = plan("fails-twice", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(1).unwrap())
        .with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);

    // Still faulty: the 5th put (the retry's only one) fails too.
    target.inject(Op::Put, Trigger::Call(5), Fault::Permanent);
    let snap = engine
        .retry_failed(&id)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
    assert_eq!((snap.done_objects, snap.failed_objects), (3, 1));
    assert_eq!(snap.total_objects, Some(4));
    let record = checkpoints.load(&id).await.unwrap().unwrap().record;
    assert_eq!(record.status, JobStatus::CompletedWithErrors);
    assert_eq!(record.progress.failed.len(), 1);
    assert!(record.progress.failed.contains_key(&key(1)));
    assert_eq!(
        source.bytes(key(1).as_str()).unwrap(),
        content(1),
        "source kept"
    );
}

#[tokio::test]
async fn retry_failed_refuses_a_job_without_failures_or_record() {
    let source = filled(3);
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(MemStore::new()),
        &Table::default(),
        mem_checkpoints(),
    );
    let none = engine.retry_failed(&JobId::new("nope").unwrap()).await;
    assert!(matches!(
        none,
        Err(Error::NotRetryable { status: None, .. })
    ));
    let snap = engine
        .start(plan("clean", ObjectSelection::all()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    let done = engine.retry_failed(&JobId::new("clean").unwrap()).await;
    assert!(matches!(
        done,
        Err(Error::NotRetryable {
            status: Some(JobStatus::Completed),
            ..
        })
    ));
}
