//! Two jobs over the same keys: entries of the forwarding table belong to the job that
//! registered them (SPEC I8: only that job changes or removes them).

use std::sync::Arc;
use std::time::Duration;

use ferry_forwarding::{Route, Table};
use ferry_types::{ByteSize, CleanupPolicy, JobId, JobStatus, ObjectSelection, Rate};

use crate::util::*;

/// Hole E of the engine-wing review: a second job that met a key the first one was copying
/// removed the first job's entry and registered its own; the first job's end of the move
/// then removed whatever entry was there (the second job's, already forwarded and cleaned):
/// reads went to a source that no longer held the key, and the "vanished" source made the
/// first job delete the only copy left. Now the second job fails that object with
/// `AlreadyMoving` naming the first, touches nothing of its entry, and the first job moves
/// the key as if alone.
#[tokio::test(start_paused = true)]
async fn i8_a_job_never_takes_over_or_removes_another_jobs_entry() {
    // 4 KiB at 4 B/s: the first job's copy takes over a quarter of an hour.
    let source = ferry_store::MemStore::with_chunk_size(16);
    let k = key(0);
    source.insert(k.clone(), vec![7u8; 4096]);
    let content = source.bytes(k.as_str()).unwrap();
    let target = ferry_store::MemStore::new();
    let table = Table::default();
    let checkpoints = mem_checkpoints();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        Arc::clone(&checkpoints),
    );
    let slow = plan("one", ObjectSelection::keys([k.clone()]))
        .with_rate(Rate::bytes_per_sec(4).unwrap())
        .with_chunk_size(ByteSize::b(4))
        .with_cleanup(CleanupPolicy::AfterVerify);
    let one = engine.start(slow).await.unwrap();
    while one.snapshot().bytes_copied == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let fast =
        plan("two", ObjectSelection::keys([k.clone()])).with_cleanup(CleanupPolicy::AfterVerify);
    let two = engine.start(fast).await.unwrap().wait().await.unwrap();
    assert_eq!(two.status, JobStatus::CompletedWithErrors, "{two:?}");
    let record = checkpoints
        .load(&JobId::new("two").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    let failure = &record.progress.failed[&k];
    assert_eq!(failure.kind, ferry_types::FailureKind::AlreadyMoving);
    let reason = &failure.last_error;
    assert!(reason.contains("already moving (job one)"), "{reason}");
    // The first job's move went on undisturbed.
    assert_eq!(
        table.get(k.as_str()).unwrap().owner,
        Some(JobId::new("one").unwrap())
    );
    assert_eq!(table.route_read(k.as_str()), Route::Source);
    assert_eq!(source.bytes(k.as_str()).unwrap(), content);
    let one = one.wait().await.unwrap();
    assert_eq!(one.status, JobStatus::Completed, "{one:?}");
    assert_eq!(table.route_read(k.as_str()), Route::Target(b()));
    assert_eq!(
        target.bytes(k.as_str()).unwrap(),
        content,
        "the key was never lost"
    );
    assert!(source.is_empty());
}

/// A chained move given up: job one moved a key a → b and waits out its grace period before
/// its commit (its entry forwarded, the source still on a); job two moves the same key on,
/// b → c, and is cancelled mid-copy. Its rollback removed the whole entry, so reads went back
/// to a, which job one's cleanup then emptied. Now the rollback undoes only job two's move:
/// the key is forwarded to b again, job one's entry, and job one finishes as if alone (I2).
#[tokio::test(start_paused = true)]
async fn i2_a_cancelled_chained_move_leaves_the_key_forwarded_to_the_first_target() {
    let k = key(0);
    let (a_store, b_store) = (
        ferry_store::MemStore::new(),
        ferry_store::MemStore::with_chunk_size(16),
    );
    a_store.insert(k.clone(), vec![7u8; 4096]);
    let c_store = ferry_store::MemStore::new();
    let c = ferry_types::NodeId::new("c").unwrap();
    let table = Table::default();
    let engine = ferry_engine::Engine::builder()
        .node(a(), Arc::new(a_store.clone()))
        .node(b(), Arc::new(b_store.clone()))
        .node(c, Arc::new(c_store.clone()))
        .checkpoint_store(mem_checkpoints())
        .forwarding(table.clone())
        .build()
        .unwrap();
    let grace = Duration::from_secs(60);
    let first = plan("one", ObjectSelection::keys([k.clone()]))
        .with_cleanup(CleanupPolicy::AfterGrace(grace));
    let one = engine.start(first).await.unwrap();
    while table.route_read(k.as_str()) != Route::Target(b()) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Job two moves the key on from b, slowly, and is cancelled mid-copy.
    let second = ferry_types::MigrationPlan::new(b(), c, ObjectSelection::keys([k.clone()]))
        .with_id(JobId::new("two").unwrap())
        .with_rate(Rate::bytes_per_sec(16).unwrap())
        .with_chunk_size(ByteSize::b(16));
    let two = engine.start(second).await.unwrap();
    while two.snapshot().bytes_copied == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        table.get(k.as_str()).unwrap().owner,
        Some(JobId::new("two").unwrap())
    );
    two.cancel().await.unwrap();
    let info = table.get(k.as_str()).unwrap();
    assert_eq!(info.owner, Some(JobId::new("one").unwrap()));
    assert_eq!(table.route_read(k.as_str()), Route::Target(b()));
    // Job one's grace period ends, its source goes; reads keep finding the key on b.
    let one = one.wait().await.unwrap();
    assert_eq!(one.status, JobStatus::Completed);
    assert!(a_store.bytes(k.as_str()).is_none());
    assert_eq!(table.route_read(k.as_str()), Route::Target(b()));
    assert_eq!(b_store.bytes(k.as_str()).as_deref(), Some(&[7u8; 4096][..]));
}
