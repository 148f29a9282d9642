//! The engine's own lifecycle (issue #15): `Engine::shutdown` stops every job where it is,
//! with its checkpoint saved, and `recover` finishes what it stopped.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use ferry_checkpoint::{CheckpointStore, FileStore};
use ferry_engine::Error;
use ferry_forwarding::{EntryState, Table};
use ferry_store::MemStore;
use ferry_types::{JobId, JobStatus, ObjectSelection};

use crate::util::*;

/// Two jobs, one running and one paused, stopped by `shutdown` part way: it returns with
/// both runners gone (nothing more reaches the target), each record saved with the status
/// its job had, no key left `Copying` in the table, and their handles say `ShutDown`. A new
/// engine's `recover` then finishes both, the paused one once resumed, every object moved
/// exactly once (I4) with its content (I1).
#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_job_with_its_checkpoint_saved_and_recover_finishes_them() {
    const N: usize = 20;
    let source = filled(N);
    let target = MemStore::new();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints =
        || -> Arc<dyn CheckpointStore> { Arc::new(FileStore::open(dir.path()).unwrap()) };
    let slow = |id: &str, keys: std::ops::Range<usize>| {
        slowed(plan(id, ObjectSelection::Keys(keys.map(key).collect())))
            .with_concurrency(NonZeroUsize::new(2).unwrap())
    };
    let table = Table::default();
    let first = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        checkpoints(),
    );
    let running = first.start(slow("running", 0..N / 2)).await.unwrap();
    let paused = first.start(slow("paused", N / 2..N)).await.unwrap();
    while running.snapshot().done_objects < 3 || paused.snapshot().done_objects < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    paused.pause().await;
    assert_eq!(paused.snapshot().status, JobStatus::Paused);

    first.shutdown().await;
    let on_target = target.len();
    let stopped_at = [
        running.snapshot().done_objects,
        paused.snapshot().done_objects,
    ];
    assert!(
        stopped_at.iter().all(|&done| done < (N / 2) as u64),
        "{stopped_at:?}"
    );
    // The runners are gone: time passes and nothing more is copied.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(target.len(), on_target);
    assert!(matches!(running.wait().await, Err(Error::ShutDown { .. })));
    assert!(matches!(paused.wait().await, Err(Error::ShutDown { .. })));
    for i in 0..N {
        let state = table.get(key(i).as_str()).map(|info| info.state);
        assert!(
            matches!(state, None | Some(EntryState::Forwarded)),
            "key {i} is left {state:?}"
        );
    }
    let store = checkpoints();
    for (id, status) in [
        ("running", JobStatus::Running),
        ("paused", JobStatus::Paused),
    ] {
        let loaded = store.load(&JobId::new(id).unwrap()).await.unwrap().unwrap();
        assert_eq!(loaded.record.status, status, "{id}");
    }

    // A restarted process: a new table, a new engine, the same stores.
    let table = Table::default();
    let second = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        checkpoints(),
    );
    let mut handles = second.recover().await.unwrap();
    assert_eq!(handles.len(), 2);
    handles.sort_by(|a, b| a.id().as_str().cmp(b.id().as_str()));
    let (paused, running) = (handles.remove(0), handles.remove(0));
    assert_eq!(paused.snapshot().status, JobStatus::Paused);
    paused.resume();
    for handle in [running, paused] {
        let snap = handle.wait().await.unwrap();
        assert_eq!(snap.status, JobStatus::Completed);
        assert_eq!(snap.done_objects, (N / 2) as u64, "each object done once");
    }
    for i in 0..N {
        assert_eq!(
            target.bytes(key(i).as_str()).as_deref(),
            Some(&content(i)[..]),
            "key {i}"
        );
    }
}
