//! `Engine::route` (the forwarding lookup) and `Engine::jobs` (the jobs of the checkpoint store).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use ferry_forwarding::{Route, Table};
use ferry_store::MemStore;
use ferry_types::{ByteSize, CleanupPolicy, JobId, JobStatus, ObjectSelection, Rate};

use crate::util::*;

#[tokio::test]
async fn route_answers_source_before_and_target_after_the_move() {
    let (source, target, table) = (filled(5), MemStore::new(), Table::default());
    let engine = mem_engine(&source, &target, &table);
    assert_eq!(engine.route(key(0).as_str()), Route::Source);
    let plan =
        plan("route", ObjectSelection::prefix("obj/0000")).with_cleanup(CleanupPolicy::AfterVerify);
    engine.start(plan).await.unwrap().wait().await.unwrap();
    for i in 0..5 {
        assert_eq!(engine.route(key(i).as_str()), Route::Target(b()));
        assert_eq!(
            engine.route(key(i).as_str()),
            table.route_read(key(i).as_str())
        );
    }
    assert_eq!(engine.route("not/moved"), Route::Source);
}

#[tokio::test(start_paused = true)]
async fn jobs_lists_finished_jobs_from_records_and_running_ones_live_with_a_status_filter() {
    const N: usize = 30;
    let checkpoints = mem_checkpoints();
    let (source, target, table) = (filled(N), MemStore::new(), Table::default());
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        Arc::clone(&checkpoints),
    );
    assert!(engine.jobs(None).await.unwrap().is_empty());

    // A finished job: only the first ten keys.
    let keys: Vec<_> = (0..10).map(key).collect();
    let done = engine
        .start(plan("jobs-done", ObjectSelection::Keys(keys)))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);

    // A job that is paused, running in this engine.
    let slow = plan("jobs-paused", ObjectSelection::prefix("obj/0001"))
        .with_concurrency(NonZeroUsize::new(2).unwrap())
        .with_rate(Rate::bytes_per_sec(256).unwrap())
        .with_chunk_size(ByteSize::b(16));
    let handle = engine.start(slow).await.unwrap();
    while handle.snapshot().bytes_copied == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.pause().await;

    let all = engine.jobs(None).await.unwrap();
    let ids: Vec<_> = all.iter().map(|s| s.id.as_str().to_owned()).collect();
    assert_eq!(ids, ["jobs-done", "jobs-paused"]);
    let finished = &all[0];
    assert_eq!(finished.status, JobStatus::Completed);
    assert_eq!(finished.done_objects, 10);
    assert_eq!(finished.total_objects, Some(10));
    assert_eq!((finished.source, finished.target), (a(), b()));
    let live = &all[1];
    assert_eq!(live.status, JobStatus::Paused);
    assert!(
        live.bytes_copied > 0,
        "a running job is described by its live snapshot"
    );

    let paused = engine.jobs(Some(JobStatus::Paused)).await.unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].id, JobId::new("jobs-paused").unwrap());
    let completed = engine.jobs(Some(JobStatus::Completed)).await.unwrap();
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].id, JobId::new("jobs-done").unwrap());
    assert!(
        engine
            .jobs(Some(JobStatus::Failed))
            .await
            .unwrap()
            .is_empty()
    );

    handle.resume();
    handle.set_rate(Rate::Unlimited);
    handle.wait().await.unwrap();
    let completed = engine.jobs(Some(JobStatus::Completed)).await.unwrap();
    assert_eq!(
        completed.len(),
        2,
        "the finished job is read from its record"
    );
    assert_eq!(completed[1].done_objects, 10);
}
