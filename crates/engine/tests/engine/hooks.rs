//! The commit hook (SPEC §6): called after the flip and before the source is deleted (I1, I2).

use std::sync::Arc;

use ferry_checkpoint::CheckpointStore;
use ferry_engine::Engine;
use ferry_forwarding::{Route, Table};
use ferry_store::{MemStore, Store};
use ferry_types::{
    CleanupPolicy, JobId, JobStatus, NodeId, ObjectKey, ObjectSelection, ObjectState,
};
use parking_lot::Mutex;

use crate::util::*;

/// What the hook saw for one key: the target it was given, whether the source still had the
/// object, and where reads of the key went at that moment.
type Seen = Arc<Mutex<Vec<(ObjectKey, NodeId, bool, Route)>>>;

fn engine_with_hook(
    source: &MemStore,
    target: &MemStore,
    table: &Table,
    checkpoints: Arc<dyn CheckpointStore>,
    seen: &Seen,
    fail_on: Option<ObjectKey>,
) -> Engine {
    let (hook_source, hook_table, seen) = (source.clone(), table.clone(), Arc::clone(seen));
    Engine::builder()
        .node(a(), Arc::new(source.clone()) as Arc<dyn Store>)
        .node(b(), Arc::new(target.clone()) as Arc<dyn Store>)
        .checkpoint_store(checkpoints)
        .forwarding(table.clone())
        .commit_hook(move |key, node| {
            let exists = hook_source.bytes(key.as_str()).is_some();
            let route = hook_table.route_read(key.as_str());
            seen.lock().push((key.clone(), node, exists, route));
            let fail = fail_on.as_ref() == Some(key);
            Box::pin(async move {
                if fail {
                    Err("placement map refused".into())
                } else {
                    Ok(())
                }
            })
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn i1_commit_hook_sees_every_key_flipped_and_before_its_source_is_deleted() {
    const N: usize = 40;
    let (source, target, table) = (filled(N), MemStore::new(), Table::default());
    let seen: Seen = Arc::default();
    let engine = engine_with_hook(&source, &target, &table, mem_checkpoints(), &seen, None);
    let plan = plan("hook-all", ObjectSelection::all()).with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert!(source.is_empty());
    let mut seen = seen.lock().clone();
    seen.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(seen.len(), N, "the hook is called once per object");
    for (i, (k, node, exists, route)) in seen.into_iter().enumerate() {
        assert_eq!(k, key(i));
        assert_eq!(node, b(), "the hook is given the target");
        assert!(exists, "{k:?}: the source was deleted before the hook ran");
        assert_eq!(
            route,
            Route::Target(b()),
            "{k:?}: the hook ran before the flip"
        );
    }
}

#[tokio::test]
async fn i2_a_failing_commit_hook_keeps_the_source_and_fails_the_object_still_forwarded() {
    const N: usize = 10;
    let (source, target, table) = (filled(N), MemStore::new(), Table::default());
    let checkpoints = mem_checkpoints();
    let seen: Seen = Arc::default();
    let engine = engine_with_hook(
        &source,
        &target,
        &table,
        Arc::clone(&checkpoints),
        &seen,
        Some(key(3)),
    );
    let plan = plan("hook-fails", ObjectSelection::all()).with_cleanup(CleanupPolicy::AfterVerify);
    let handle = engine.start(plan).await.unwrap();
    let mut events = handle.events();
    let snap = handle.wait().await.unwrap();
    let mut states = Vec::new();
    while let Ok(event) = events.try_recv() {
        if event.key == key(3) {
            states.push(event.state);
        }
    }
    assert!(
        matches!(
            &states[..],
            [.., ObjectState::Forwarded, ObjectState::Failed { last_error, .. }]
                if last_error.contains("commit hook")
        ),
        "the object goes from Forwarded to Failed, never Cleaned: {states:?}"
    );
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
    assert_eq!(snap.failed_objects, 1);
    assert_eq!(snap.done_objects, N as u64 - 1);
    // The source of the failed object is kept; every other source is gone.
    assert_eq!(source.len(), 1);
    assert_eq!(source.bytes(key(3).as_str()).unwrap(), content(3));
    // Reads keep working: the key stays forwarded to its complete target copy.
    assert_eq!(table.route_read(key(3).as_str()), Route::Target(b()));
    assert_eq!(target.bytes(key(3).as_str()).unwrap(), content(3));
    let record = checkpoints
        .load(&JobId::new("hook-fails").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    let failure = &record.progress.failed[&key(3)];
    assert_eq!(failure.kind, ferry_types::FailureKind::CommitHook);
    assert!(
        failure.last_error.contains("commit hook") && failure.last_error.contains("refused"),
        "{}",
        failure.last_error
    );
}

#[tokio::test]
async fn commit_hook_runs_under_cleanup_never_and_nothing_is_deleted() {
    const N: usize = 5;
    let (source, target, table) = (filled(N), MemStore::new(), Table::default());
    let seen: Seen = Arc::default();
    let engine = engine_with_hook(&source, &target, &table, mem_checkpoints(), &seen, None);
    let plan = plan("hook-never", ObjectSelection::all()).with_cleanup(CleanupPolicy::Never);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(seen.lock().len(), N);
    assert_eq!(source.len(), N);
}

/// Hole A of the engine-wing review: a cancel during the grace period used to leave the
/// flipped objects half-done: forwarded, journaled as committed, never handed to the commit
/// hook, and the job `Cancelled`, so no run would ever finish them. A write acknowledged
/// through the flip lives only on the target; once the entry went (a restart, or its TTL),
/// the placement still named the source and the write read back stale. Now the cancel
/// finishes their commit: the hook runs, the source is kept (its grace period was cut
/// short) and reported, and the record holds no half-done flip (I8).
#[tokio::test(start_paused = true)]
async fn i8_a_cancel_during_the_grace_period_finishes_the_commit_of_every_flip() {
    const N: usize = 6;
    let (source, target, table) = (filled(N), MemStore::new(), Table::default());
    let checkpoints = mem_checkpoints();
    let seen: Seen = Arc::default();
    let engine = engine_with_hook(
        &source,
        &target,
        &table,
        Arc::clone(&checkpoints),
        &seen,
        None,
    );
    let grace = std::time::Duration::from_secs(3600);
    let plan =
        plan("grace-cancel", ObjectSelection::all()).with_cleanup(CleanupPolicy::AfterGrace(grace));
    let handle = engine.start(plan).await.unwrap();
    while (0..N).any(|i| table.route_read(key(i).as_str()) != Route::Target(b())) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // A client writes key 0 through the flip: the write lands on the target only.
    {
        let ticket = table.begin_write(key(0).as_str()).await.unwrap();
        assert_eq!(ticket.route(), Route::Target(b()));
        target.insert(key(0), "v2");
    }
    let report = handle.cancel().await.unwrap();
    let mut kept = report.sources_kept.clone();
    kept.sort();
    assert_eq!(kept, (0..N).map(key).collect::<Vec<_>>(), "{report:?}");
    // Every flipped key's commit finished: the placement learned the target.
    let mut hooked: Vec<ObjectKey> = seen.lock().iter().map(|s| s.0.clone()).collect();
    hooked.sort();
    assert_eq!(hooked, (0..N).map(key).collect::<Vec<_>>());
    assert_eq!(
        source.len(),
        N,
        "no source went before its grace period ended"
    );
    let record = checkpoints
        .load(&JobId::new("grace-cancel").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(record.status, JobStatus::Cancelled);
    assert!(
        record.progress.flips.is_empty(),
        "no flip is left half-done: {:?}",
        record.progress.flips
    );
    assert_eq!(target.bytes(key(0).as_str()).unwrap(), "v2".as_bytes());
}

/// Hole A, second half: a flip committed by a job that then ended `CompletedWithErrors`
/// (its commit hook failed) stays served by the target, and a write acknowledged through it
/// lives there only. A restart must forward it again although the job is finished: the
/// recovered table routes it to the target, never to the stale source (I8).
#[tokio::test]
async fn i8_recover_forwards_again_the_committed_flips_of_finished_jobs() {
    const N: usize = 4;
    let (source, target) = (filled(N), MemStore::new());
    let checkpoints = mem_checkpoints();
    let seen: Seen = Arc::default();
    {
        let table = Table::default();
        let engine = engine_with_hook(
            &source,
            &target,
            &table,
            Arc::clone(&checkpoints),
            &seen,
            Some(key(2)),
        );
        let plan = plan("hook-fails-restart", ObjectSelection::all())
            .with_cleanup(CleanupPolicy::AfterVerify);
        let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
        assert_eq!(snap.status, JobStatus::CompletedWithErrors);
        let ticket = table.begin_write(key(2).as_str()).await.unwrap();
        assert_eq!(ticket.route(), Route::Target(b()));
        target.insert(key(2), "v2");
    }
    // A restart: a new, empty table.
    let table = Table::default();
    let engine = engine_with_hook(&source, &target, &table, checkpoints, &seen, Some(key(2)));
    assert!(engine.recover().await.unwrap().is_empty(), "nothing to run");
    assert_eq!(table.route_read(key(2).as_str()), Route::Target(b()));
    assert_eq!(target.bytes(key(2).as_str()).unwrap(), "v2".as_bytes());
    assert_eq!(source.bytes(key(2).as_str()).unwrap(), content(2), "stale");
}
