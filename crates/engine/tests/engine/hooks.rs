//! The commit hook (SPEC §6): called after the flip and before the source is deleted (I1, I2).

use std::sync::Arc;

use ferry_checkpoint::CheckpointStore;
use ferry_engine::Engine;
use ferry_engine::store::{MemStore, Store};
use ferry_forwarding::{Route, Table};
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
