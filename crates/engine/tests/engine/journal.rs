//! The flip journal: after a crash, every key routes to the node that holds its latest
//! content, and resume neither loses a write made through a flip nor resurrects a delete
//! (SPEC I2, I3).

use std::sync::Arc;
use std::time::Duration;

use ferry_checkpoint::{CheckpointStore, FileStore, FlipRecord, MemoryStore, ProgressUpdate};
use ferry_engine::{Engine, ObjectEvent};
use ferry_forwarding::{Route, Table};
use ferry_store::{MemStore, Store, body_from_bytes};
use ferry_types::{
    CheckpointInterval, CleanupPolicy, JobId, JobStatus, ObjectKey, ObjectSelection, ObjectState,
};

use crate::util::*;

fn k() -> ObjectKey {
    ObjectKey::new("obj/k").unwrap()
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// Where a read of the key goes, and what it finds there.
fn read(table: &Table, source: &MemStore, target: &MemStore) -> (Route, Option<Vec<u8>>) {
    let route = table.route_read(k().as_str());
    let found = match route {
        Route::Source => source.bytes(k().as_str()),
        Route::Target(node) => {
            assert_eq!(node, b());
            target.bytes(k().as_str())
        }
    };
    (route, found.map(|b| b.to_vec()))
}

/// One journal state after a crash, and what recovery must make of it.
struct Case {
    name: &'static str,
    committed: bool,
    source: Option<&'static str>,
    target: Option<&'static str>,
    /// Right after `recover`: the route and the content a read finds.
    route: Route,
    read: Option<&'static str>,
    /// At the end of the resumed job (cleanup after verify): the target's content, and
    /// whether the source still holds the key.
    end_target: Option<&'static str>,
}

#[tokio::test(start_paused = true)]
async fn i2_i3_recovery_settles_every_journal_state() {
    // The crashed run copied "v1" (the journaled digest). "v2" is a later write: on the
    // target only through the flip, on the source only before it.
    let target_route = Route::Target(b());
    let cases = [
        Case {
            name: "committed, both hold the copy",
            committed: true,
            source: Some("v1"),
            target: Some("v1"),
            route: target_route,
            read: Some("v1"),
            end_target: Some("v1"),
        },
        Case {
            name: "committed, source already cleaned",
            committed: true,
            source: None,
            target: Some("v1"),
            route: target_route,
            read: Some("v1"),
            end_target: Some("v1"),
        },
        Case {
            name: "committed, written through the flip",
            committed: true,
            source: Some("v1"),
            target: Some("v2"),
            route: target_route,
            read: Some("v2"),
            end_target: Some("v2"),
        },
        Case {
            name: "committed, deleted through the flip",
            committed: true,
            source: Some("v1"),
            target: None,
            route: target_route,
            read: None,
            end_target: None,
        },
        Case {
            name: "intent, written through the flip",
            committed: false,
            source: Some("v1"),
            target: Some("v2"),
            route: target_route,
            read: Some("v2"),
            end_target: Some("v2"),
        },
        Case {
            name: "intent, flip refused by a write to the source",
            committed: false,
            source: Some("v2"),
            target: Some("v1"),
            route: Route::Source,
            read: Some("v2"),
            end_target: Some("v2"),
        },
        Case {
            name: "intent, flip refused by a delete on the source",
            committed: false,
            source: None,
            target: Some("v1"),
            route: Route::Source,
            read: None,
            end_target: None,
        },
        Case {
            name: "intent, nothing written since the copy",
            committed: false,
            source: Some("v1"),
            target: Some("v1"),
            route: target_route,
            read: Some("v1"),
            end_target: Some("v1"),
        },
        Case {
            name: "intent, deleted through the flip",
            committed: false,
            source: Some("v1"),
            target: None,
            route: target_route,
            read: None,
            end_target: None,
        },
        Case {
            name: "intent, absent on both sides",
            committed: false,
            source: None,
            target: None,
            route: target_route,
            read: None,
            end_target: None,
        },
    ];
    for case in cases {
        let name = case.name;
        let (source, target) = (MemStore::new(), MemStore::new());
        if let Some(v) = case.source {
            source.insert(k(), v);
        }
        if let Some(v) = case.target {
            target.insert(k(), v);
        }
        // The record a crashed run left: the key journaled, the job paused (so that recovery
        // can be observed before the resumed run moves anything).
        let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
        let job = JobId::new("journal").unwrap();
        let plan = plan("journal", ObjectSelection::Keys(vec![k()]))
            .with_cleanup(CleanupPolicy::AfterVerify);
        checkpoints.create(&job, &plan).await.unwrap();
        let acquired = checkpoints.acquire(&job).await.unwrap();
        let mut progress = acquired.record.progress;
        progress.apply(ProgressUpdate::FlipIntent {
            key: k(),
            digest: digest(b"v1"),
        });
        if case.committed {
            progress.apply(ProgressUpdate::FlipCommitted { key: k() });
        }
        checkpoints
            .save(&acquired.lease, JobStatus::Paused, progress.into())
            .await
            .unwrap();
        checkpoints.release(&acquired.lease).await.unwrap();

        let table = Table::default();
        let engine = engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            &table,
            Arc::clone(&checkpoints),
        );
        let handle = engine.recover().await.unwrap().pop().unwrap();
        assert_eq!(
            read(&table, &source, &target),
            (case.route, case.read.map(|v| v.as_bytes().to_vec())),
            "{name}: right after recover"
        );
        // The settled journal is saved before anything moves: no intent is left.
        let record = checkpoints.load(&job).await.unwrap().unwrap().record;
        assert!(
            record
                .progress
                .flips
                .values()
                .all(|f: &FlipRecord| f.committed),
            "{name}: {:?}",
            record.progress.flips
        );
        handle.resume();
        let snap = handle.wait().await.unwrap();
        assert_eq!(snap.status, JobStatus::Completed, "{name}");
        assert_eq!(snap.done_objects, 1, "{name}");
        assert_eq!(
            target.bytes(k().as_str()).map(|b| b.to_vec()),
            case.end_target.map(|v| v.as_bytes().to_vec()),
            "{name}: the target at the end"
        );
        assert!(source.is_empty(), "{name}: the source was cleaned");
        let record = checkpoints.load(&job).await.unwrap().unwrap().record;
        assert!(record.progress.flips.is_empty(), "{name}: journal emptied");
    }
}

/// Waits until the key reaches `state` in the job's events.
async fn wait_for(events: &mut tokio::sync::broadcast::Receiver<ObjectEvent>, state: ObjectState) {
    loop {
        let event = events.recv().await.unwrap();
        if event.key == k() && event.state == state {
            return;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn i3_a_write_through_the_flip_survives_a_crash_before_the_cleanup() {
    let (source, target) = (MemStore::new(), MemStore::new());
    source.insert(k(), "v1");
    // A file store, reopened after the crash as a restarted process would.
    let dir = tempfile::tempdir().unwrap();
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    // The key flips at the first commit, then waits out an hour of grace before its cleanup.
    let plan = plan("write-after-flip", ObjectSelection::Keys(vec![k()]))
        .with_cleanup(CleanupPolicy::AfterGrace(Duration::from_secs(3600)))
        .with_checkpoint(CheckpointInterval {
            objects: 1,
            every: Duration::from_secs(3600),
        });
    {
        let table = Table::default();
        let engine = engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            &table,
            Arc::clone(&checkpoints),
        );
        let handle = engine.start(plan.clone()).await.unwrap();
        let mut events = handle.events();
        wait_for(&mut events, ObjectState::Forwarded).await;
        // A client writes through the table: the ticket sends it to the target.
        let ticket = table.begin_write(k().as_str()).await.unwrap();
        assert_eq!(ticket.route(), Route::Target(b()));
        target
            .put(&k(), body_from_bytes("v2".into(), 16))
            .await
            .unwrap();
        drop(ticket);
        // Crash once the flip is saved as committed (the save runs on a blocking thread: a
        // crash during it would leave this process holding the store's lock a moment).
        let job = JobId::new("write-after-flip").unwrap();
        let mut committed = false;
        for _ in 0..100_000 {
            let record = checkpoints.load(&job).await.unwrap().unwrap().record;
            if record.progress.flips.get(&k()).is_some_and(|f| f.committed) {
                committed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(committed, "the flip was saved as committed");
        handle.crash_for_tests().await;
    }
    assert_eq!(
        source.bytes(k().as_str()).as_deref(),
        Some(&b"v1"[..]),
        "the crash came before the cleanup"
    );

    // Restart: a new, empty table.
    drop(checkpoints);
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let table = Table::default();
    let engine: Engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        checkpoints,
    );
    let handle = recover_after_crash(&engine).await.pop().unwrap();
    assert_eq!(
        read(&table, &source, &target),
        (Route::Target(b()), Some(b"v2".to_vec())),
        "the acknowledged write is what reads see after recover"
    );
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(
        target.bytes(k().as_str()).as_deref(),
        Some(&b"v2"[..]),
        "not overwritten by a copy of the stale source (no lost write)"
    );
    assert!(source.is_empty());
}

/// A resume settles each journaled flip with its own store calls, each retried after a
/// transient error: with every other read of the target failing, a journal of many keys is
/// settled all the same (retrying the whole settling instead, no pass got past its second
/// key).
#[tokio::test(start_paused = true)]
async fn recover_retries_each_call_of_a_long_journal_not_the_whole_journal() {
    let keys: Vec<ObjectKey> = (0..6)
        .map(|i| ObjectKey::new(format!("obj/{i}")).unwrap())
        .collect();
    let (source, target) = (MemStore::new(), MemStore::new());
    for key in &keys {
        source.insert(key.clone(), "v1");
        target.insert(key.clone(), "v1");
    }
    let faulty = ferry_store::FaultyStore::new(target.clone());
    for call in (2..200).step_by(2) {
        faulty.inject(
            ferry_store::Op::Get,
            ferry_store::Trigger::Call(call),
            ferry_store::Fault::Transient,
        );
    }
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let job = JobId::new("long-journal").unwrap();
    let plan = plan("long-journal", ObjectSelection::Keys(keys.clone()))
        .with_cleanup(CleanupPolicy::AfterVerify);
    checkpoints.create(&job, &plan).await.unwrap();
    let acquired = checkpoints.acquire(&job).await.unwrap();
    let mut progress = acquired.record.progress;
    for key in &keys {
        progress.apply(ProgressUpdate::FlipIntent {
            key: key.clone(),
            digest: digest(b"v1"),
        });
    }
    checkpoints
        .save(&acquired.lease, JobStatus::Paused, progress.into())
        .await
        .unwrap();
    checkpoints.release(&acquired.lease).await.unwrap();
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(faulty),
        &table,
        Arc::clone(&checkpoints),
    );
    let handles = match engine.recover().await {
        Ok(handles) => handles,
        Err(err) => panic!("recover: {err}"),
    };
    assert_eq!(handles.len(), 1);
    // Both sides hold the copy: every intent settles as flipped.
    for key in &keys {
        assert!(
            matches!(table.route_read(key.as_str()), Route::Target(_)),
            "{key:?}"
        );
    }
    let record = checkpoints.load(&job).await.unwrap().unwrap().record;
    assert!(record.progress.flips.values().all(|f| f.committed));
}
