//! Resume after a crash: a new engine on the same checkpoint store and stores.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use ferry_checkpoint::{CheckpointStore, FileStore};
use ferry_engine::Op;
use ferry_forwarding::Table;
use ferry_store::{FaultyStore, MemStore};
use ferry_types::{
    ByteSize, CheckpointInterval, CleanupPolicy, JobId, JobStatus, ObjectSelection, Rate,
};

use crate::util::*;

#[tokio::test(start_paused = true)]
async fn i4_resume_after_a_crash_redoes_little_and_finishes_every_object_once() {
    const N: usize = 80;
    const CONCURRENCY: usize = 4;
    const INTERVAL: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let source = filled(N);
    let target = FaultyStore::new(MemStore::new());
    let plan = plan("crash-me", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(CONCURRENCY).unwrap())
        .with_rate(Rate::bytes_per_sec(1024).unwrap())
        .with_chunk_size(ByteSize::b(16))
        .with_cleanup(CleanupPolicy::AfterVerify)
        .with_checkpoint(CheckpointInterval {
            objects: INTERVAL,
            every: Duration::from_secs(3600),
        });

    // First run: crash once some batches were recorded.
    {
        let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
        let engine = engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            &Table::default(),
            checkpoints,
        );
        crash_when_done(&engine, plan.clone(), 25).await;
    }
    assert!(target.calls(Op::Put) < N as u64, "the crash came mid-job");

    // Second run, as after a restart: a new engine, a new (empty) forwarding table.
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let recorded = checkpoints
        .load(&JobId::new("crash-me").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record
        .progress
        .done_objects;
    assert!(
        recorded >= 20,
        "batches were recorded before the crash: {recorded}"
    );
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        Arc::clone(&checkpoints),
    );
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    // The resumed listing knows the whole job's total: done before plus listed now.
    assert_eq!(snap.total_objects, Some(N as u64));
    assert_eq!(snap.done_objects, N as u64);

    // Every object is on the target, and the sources are gone (I1 held all along).
    for i in 0..N {
        assert_eq!(target.inner().bytes(key(i).as_str()).unwrap(), content(i));
    }
    assert!(source.is_empty());
    // Done exactly once: the record counts each object once.
    let record = checkpoints
        .load(&JobId::new("crash-me").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.progress.done_objects, N as u64);
    for i in 0..N {
        assert!(record.progress.is_done(&key(i)));
    }
    assert!(
        record.progress.done_above.len() <= CONCURRENCY,
        "the watermark keeps the done set small: {}",
        record.progress.done_above.len()
    );
    // Re-done: every object needs one put; the puts beyond that were copies re-done after
    // the crash, at most what was in flight plus one interval.
    let redone = target.calls(Op::Put) - N as u64;
    assert!(
        redone <= CONCURRENCY as u64 + INTERVAL,
        "re-copied {redone} objects (recorded {recorded}, puts {})",
        target.calls(Op::Put)
    );
}

#[tokio::test(start_paused = true)]
async fn i4_recover_resumes_unfinished_jobs_and_each_object_is_done_once() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let source = filled(N);
    let target = MemStore::new();
    let finished = filled(3);
    let slow = plan("recover-me", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(2).unwrap())
        .with_rate(Rate::bytes_per_sec(1024).unwrap())
        .with_chunk_size(ByteSize::b(16))
        .with_cleanup(CleanupPolicy::AfterVerify)
        .with_checkpoint(CheckpointInterval {
            objects: 5,
            every: Duration::from_secs(3600),
        });

    // First process: one job finishes, one crashes mid-way, one is paused then crashes.
    {
        let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
        let engine = engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            &Table::default(),
            Arc::clone(&checkpoints),
        );
        let other = ferry_engine::Engine::builder()
            .node(a(), Arc::new(finished.clone()))
            .node(b(), Arc::new(MemStore::new()))
            .checkpoint_store(checkpoints)
            .build()
            .unwrap();
        let done = other.start(plan("finished", ObjectSelection::all())).await;
        done.unwrap().wait().await.unwrap();
        crash_when_done(&engine, slow, 10).await;
    }
    assert!(!source.is_empty(), "the crash came mid-job");

    // Second process: a new engine over the same stores recovers the unfinished job only.
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &Table::default(),
        Arc::clone(&checkpoints),
    );
    let handles = engine.recover().await.unwrap();
    let ids: Vec<_> = handles.iter().map(|h| h.id().as_str().to_owned()).collect();
    assert_eq!(ids, ["recover-me"], "only the unfinished job is resumed");
    assert!(
        engine.recover().await.unwrap().is_empty(),
        "a job already running here is not started twice"
    );
    let handle = handles.into_iter().next().unwrap();
    handle.set_rate(Rate::Unlimited);
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert!(source.is_empty());
    for i in 0..N {
        assert_eq!(target.bytes(key(i).as_str()).unwrap(), content(i));
    }
    let record = checkpoints
        .load(&JobId::new("recover-me").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(
        record.progress.done_objects, N as u64,
        "each object done once"
    );
    assert!(engine.recover().await.unwrap().is_empty(), "nothing left");
}

#[tokio::test(start_paused = true)]
async fn recover_keeps_a_paused_job_paused_until_resumed() {
    const N: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let source = filled(N);
    let target = MemStore::new();
    let slow = plan("paused-crash", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(2).unwrap())
        .with_rate(Rate::bytes_per_sec(512).unwrap())
        .with_chunk_size(ByteSize::b(16));
    {
        let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
        let engine = engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            &Table::default(),
            checkpoints,
        );
        let handle = engine.start(slow).await.unwrap();
        while handle.snapshot().bytes_copied == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.pause().await;
        handle.crash_for_tests().await;
    }
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &Table::default(),
        checkpoints,
    );
    let handle = engine.recover().await.unwrap().into_iter().next().unwrap();
    let mut watch = handle.watch();
    watch
        .wait_for(|s| s.status == JobStatus::Paused)
        .await
        .unwrap();
    let copied = handle.snapshot().bytes_copied;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(handle.snapshot().bytes_copied, copied, "nothing moves");
    assert_eq!(handle.snapshot().status, JobStatus::Paused);
    handle.resume();
    handle.set_rate(Rate::Unlimited);
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, N as u64);
}

/// Every key of the plan routes, through the forwarding table, to a node holding it.
fn assert_reads_route_to_a_holder(
    table: &Table,
    source: &MemStore,
    target: &MemStore,
    n: usize,
    when: &str,
) {
    for i in 0..n {
        let k = key(i);
        let holder = match table.route_read(k.as_str()) {
            ferry_forwarding::Route::Source => source.bytes(k.as_str()),
            ferry_forwarding::Route::Target(node) if node == b() => target.bytes(k.as_str()),
            other => panic!("{when}: {k:?} routes to {other:?}"),
        };
        assert_eq!(
            holder.as_deref(),
            Some(&content(i)[..]),
            "{when}: a read of {k:?} goes to a node without it (I2)"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn i2_after_recover_every_read_routes_to_a_node_holding_the_object() {
    const N: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let source = filled(N);
    let target = MemStore::new();
    let slow = plan("i2-recover", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(4).unwrap())
        .with_rate(Rate::bytes_per_sec(1024).unwrap())
        .with_chunk_size(ByteSize::b(16))
        .with_cleanup(CleanupPolicy::AfterVerify)
        .with_checkpoint(CheckpointInterval {
            objects: 7,
            every: Duration::from_secs(3600),
        });
    {
        let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
        let table = Table::default();
        let engine = engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            &table,
            checkpoints,
        );
        let handle = engine.start(slow).await.unwrap();
        while handle.snapshot().done_objects < 15 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // While it ran, the table routed every read to a holder.
        assert_reads_route_to_a_holder(&table, &source, &target, N, "before the crash");
        handle.crash_for_tests().await;
    }
    let moved = (0..N)
        .filter(|&i| source.bytes(key(i).as_str()).is_none())
        .count();
    assert!(
        moved >= 15,
        "objects were moved and cleaned before the crash: {moved}"
    );
    assert!(moved < N, "the crash came mid-job");

    // A restart: a new, empty table. Without a reload the moved objects would route to the
    // source, which no longer has them.
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        checkpoints,
    );
    let handle = engine.recover().await.unwrap().into_iter().next().unwrap();
    assert_reads_route_to_a_holder(&table, &source, &target, N, "right after recover");
    assert!(table.len() >= moved, "the moved objects were reloaded");
    // And at every step of the resumed run.
    while !handle.snapshot().status.is_finished() {
        assert_reads_route_to_a_holder(&table, &source, &target, N, "during the resumed run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert!(source.is_empty());
    assert_reads_route_to_a_holder(&table, &source, &target, N, "at the end");
}

/// Regression (found by the crash loop): a key recorded failed before its flip, under the
/// watermark (failed keys count as finished for it), with a copy left on the target. A
/// restart must not forward it to that copy, which was never verified as current: reads
/// stay on the source, which serves it (I2, I3).
#[tokio::test]
async fn i3_resume_does_not_forward_a_failed_key_to_its_stale_copy() {
    let source = filled(3);
    let target = MemStore::new();
    // The stale copy: an older content than the source's.
    target.insert(key(0), "stale");
    let checkpoints = mem_checkpoints();
    let plan = plan("failed-under-watermark", ObjectSelection::all());
    let job = JobId::new("failed-under-watermark").unwrap();
    checkpoints.create(&job, &plan).await.unwrap();
    let lease = checkpoints.acquire(&job).await.unwrap().lease;
    let mut progress = ferry_checkpoint::Progress::default();
    progress.mark_failed(
        key(0),
        5,
        "verification failed".into(),
        ferry_types::FailureKind::Verify,
    );
    progress.mark_done(key(1), 8);
    progress.advance_watermark(key(1));
    checkpoints
        .save(&lease, JobStatus::Running, progress.into())
        .await
        .unwrap();
    checkpoints.release(&lease).await.unwrap();

    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        checkpoints,
    );
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
    assert_eq!(
        table.route_read(key(0).as_str()),
        ferry_forwarding::Route::Source,
        "the failed key's reads stay on the source"
    );
    assert_eq!(source.bytes(key(0).as_str()).unwrap(), content(0));
}

/// A checkpoint store whose next `load` answers with a record read earlier: what a process
/// sees when another one, sharing the store, finishes the job between its load and its
/// acquire.
#[derive(Debug)]
struct StaleLoad {
    inner: Arc<dyn CheckpointStore>,
    stale: parking_lot::Mutex<Option<ferry_checkpoint::JobRecord>>,
}

impl CheckpointStore for StaleLoad {
    fn create<'a>(
        &'a self,
        job: &'a JobId,
        plan: &'a ferry_types::MigrationPlan,
    ) -> ferry_checkpoint::BoxFuture<'a, ferry_checkpoint::Result<ferry_checkpoint::JobRecord>>
    {
        self.inner.create(job, plan)
    }

    fn load<'a>(
        &'a self,
        job: &'a JobId,
    ) -> ferry_checkpoint::BoxFuture<'a, ferry_checkpoint::Result<Option<ferry_checkpoint::Loaded>>>
    {
        match self.stale.lock().take() {
            Some(record) => Box::pin(async move {
                Ok(Some(ferry_checkpoint::Loaded {
                    record,
                    warnings: Vec::new(),
                }))
            }),
            None => self.inner.load(job),
        }
    }

    fn list(&self) -> ferry_checkpoint::BoxFuture<'_, ferry_checkpoint::Result<Vec<JobId>>> {
        self.inner.list()
    }

    fn delete<'a>(
        &'a self,
        job: &'a JobId,
    ) -> ferry_checkpoint::BoxFuture<'a, ferry_checkpoint::Result<bool>> {
        self.inner.delete(job)
    }

    fn acquire<'a>(
        &'a self,
        job: &'a JobId,
    ) -> ferry_checkpoint::BoxFuture<'a, ferry_checkpoint::Result<ferry_checkpoint::Acquired>> {
        self.inner.acquire(job)
    }

    fn renew<'a>(
        &'a self,
        lease: &'a ferry_checkpoint::Lease,
    ) -> ferry_checkpoint::BoxFuture<'a, ferry_checkpoint::Result<()>> {
        self.inner.renew(lease)
    }

    fn release<'a>(
        &'a self,
        lease: &'a ferry_checkpoint::Lease,
    ) -> ferry_checkpoint::BoxFuture<'a, ferry_checkpoint::Result<()>> {
        self.inner.release(lease)
    }

    fn save<'a>(
        &'a self,
        lease: &'a ferry_checkpoint::Lease,
        status: JobStatus,
        progress: Arc<ferry_checkpoint::Progress>,
    ) -> ferry_checkpoint::BoxFuture<'a, ferry_checkpoint::Result<u64>> {
        self.inner.save(lease, status, progress)
    }
}

#[tokio::test]
async fn i6_a_job_finished_by_another_process_between_load_and_acquire_is_not_run_again() {
    let source = filled(8);
    let target = MemStore::new();
    let checkpoints = Arc::new(StaleLoad {
        inner: mem_checkpoints(),
        stale: parking_lot::Mutex::new(None),
    });
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &Table::new(Default::default()),
        Arc::clone(&checkpoints) as Arc<dyn CheckpointStore>,
    );
    let job = JobId::new("finished-elsewhere").unwrap();
    let plan = plan("finished-elsewhere", ObjectSelection::all());
    // The record as a process saw it before the job ran elsewhere: pending.
    checkpoints.inner.create(&job, &plan).await.unwrap();
    let pending = checkpoints.inner.load(&job).await.unwrap().unwrap().record;
    let done = engine
        .start(plan.clone())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);

    *checkpoints.stale.lock() = Some(pending);
    match engine.start(plan).await {
        Err(ferry_engine::Error::JobFinished {
            status: JobStatus::Completed,
            ..
        }) => {}
        Err(other) => panic!("unexpected error: {other}"),
        Ok(handle) => panic!(
            "a finished job ran again, and ended {:?}",
            handle.wait().await.map(|s| s.status)
        ),
    }
    // The record is as the finishing run left it, and nobody holds the job.
    let record = checkpoints.inner.load(&job).await.unwrap().unwrap().record;
    assert_eq!(record.status, JobStatus::Completed);
    let lease = checkpoints.inner.acquire(&job).await.unwrap().lease;
    checkpoints.inner.release(&lease).await.unwrap();
}

/// Hole I of the engine-wing review: keys copied and verified but not flipped when the
/// engine died, then deleted by a client on the source, were never listed by the recovered
/// run: the target kept their copies and the table their `Copying` entries, for ever. A copy
/// intent is durable before each copy begins, so the recovered run takes every such key up
/// again: a key gone from the source ends skipped, its copy and its entry removed (I3, I8).
#[tokio::test(start_paused = true)]
async fn i8_recover_removes_the_copies_of_keys_deleted_after_a_crash() {
    const N: usize = 20;
    let source = slow_last_read(N);
    let target = MemStore::new();
    let table = Table::default();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints =
        || -> Arc<dyn CheckpointStore> { Arc::new(FileStore::open(dir.path()).unwrap()) };
    let start = |checkpoints| {
        engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            &table,
            checkpoints,
        )
    };
    // No commit before the crash: every object is copied and verified, none flipped.
    let plan = plan("crash-before-flips", ObjectSelection::all())
        .with_cleanup(CleanupPolicy::AfterVerify)
        .with_checkpoint(CheckpointInterval {
            objects: 1000,
            every: Duration::from_secs(3600),
        });
    let handle = start(checkpoints()).start(plan).await.unwrap();
    while target.len() < N - 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handle.crash_for_tests().await;
    // A client deletes every other key: not flipped, they route to the source.
    for i in (0..N).step_by(2) {
        let ticket = table.begin_write(key(i).as_str()).await.unwrap();
        assert_eq!(ticket.route(), ferry_forwarding::Route::Source);
        ferry_store::Store::delete(source.inner(), &key(i))
            .await
            .unwrap();
    }
    // The process restarts its engine (the table is the storage system's: it stays).
    let handles = start(checkpoints()).recover().await.unwrap();
    let snap = handles.into_iter().next().unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed, "{snap:?}");
    for i in 0..N {
        let k = key(i);
        if i % 2 == 0 {
            assert!(target.bytes(k.as_str()).is_none(), "{k:?}: copy left");
            assert!(table.get(k.as_str()).is_none(), "{k:?}: entry left");
            assert!(source.inner().bytes(k.as_str()).is_none());
        } else {
            assert_eq!(target.bytes(k.as_str()).unwrap(), content(i));
            assert_eq!(
                table.route_read(k.as_str()),
                ferry_forwarding::Route::Target(b())
            );
        }
    }
    assert_eq!(snap.skipped_objects, (N / 2) as u64);
}

/// Hole B of the engine-wing review, the case a cancel made: a cancelled job left its copies
/// on the target; a key then deleted on the source was never listed by the next job, so the
/// watermark passed it, and that job's resume forwarded it to the stale copy: the deleted
/// key read back. A cancel now removes the copies it rolls back, so a resume finds none to
/// forward (I3: no resurrection).
#[tokio::test(start_paused = true)]
async fn i3_a_resume_never_forwards_a_deleted_key_to_a_cancelled_jobs_copy() {
    const N: usize = 10;
    let source = slow_last_read(N);
    let target = MemStore::new();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints =
        || -> Arc<dyn CheckpointStore> { Arc::new(FileStore::open(dir.path()).unwrap()) };
    let quiet = CheckpointInterval {
        objects: 1000,
        every: Duration::from_secs(3600),
    };
    {
        let table = Table::default();
        let engine = engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            &table,
            checkpoints(),
        );
        let first = plan("first", ObjectSelection::all())
            .with_cleanup(CleanupPolicy::AfterVerify)
            .with_checkpoint(quiet);
        let handle = engine.start(first).await.unwrap();
        while target.len() < N - 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        handle.cancel().await.unwrap();
    }
    // A client deletes key 3 (no job moves it: it routes to the source).
    ferry_store::Store::delete(source.inner(), &key(3))
        .await
        .unwrap();
    // A second job moves the rest, crashes past key 3, and resumes after a restart.
    let second = slowed(plan("second", ObjectSelection::all()))
        .with_cleanup(CleanupPolicy::Never)
        .with_concurrency(NonZeroUsize::new(1).unwrap());
    // An engine of a process (re)started with a new, empty table.
    let started = |table: &Table| {
        engine(
            Arc::new(source.inner().clone()),
            Arc::new(target.clone()),
            table,
            checkpoints(),
        )
    };
    crash_when_done(&started(&Table::default()), second.clone(), 5).await;
    let table = Table::default();
    let handle = started(&table).start(second).await.unwrap();
    assert_eq!(
        table.route_read(key(3).as_str()),
        ferry_forwarding::Route::Source,
        "the deleted key is not forwarded to a stale copy"
    );
    assert!(target.bytes(key(3).as_str()).is_none());
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(
        table.route_read(key(3).as_str()),
        ferry_forwarding::Route::Source
    );
}

/// Issue #15, hole B: a target that already held keys of the selection before the job began.
/// A resume forwarded every key the target held at or below the watermark, so a stale copy
/// of a key the source no longer has (here key 3) was served as if the job had moved it. A
/// job now records, before it copies anything, the keys the target holds of its selection,
/// and a resume forwards none of those it did not copy over (I3); one it did copy over (key
/// 2, also on the source) is the job's and routes to the target.
#[tokio::test(start_paused = true)]
async fn i3_a_resume_never_forwards_a_key_the_target_held_before_the_job() {
    const N: usize = 10;
    let source = filled(N);
    ferry_store::Store::delete(&source, &key(3)).await.unwrap();
    let target = MemStore::new();
    target.insert(key(3), "a stale copy of a deleted key");
    target.insert(key(2), "an old version the job overwrites");
    let dir = tempfile::tempdir().unwrap();
    let started = |table: &Table| {
        let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
        engine(
            Arc::new(source.clone()),
            Arc::new(target.clone()),
            table,
            checkpoints,
        )
    };
    let job = slowed(plan("merge", ObjectSelection::all()))
        .with_cleanup(CleanupPolicy::Never)
        .with_concurrency(NonZeroUsize::new(1).unwrap());
    // The crash comes after the watermark passed keys 2 and 3.
    crash_when_done(&started(&Table::default()), job.clone(), 5).await;
    let table = Table::default();
    let handle = started(&table).start(job).await.unwrap();
    let route = |i| table.route_read(key(i).as_str());
    assert_eq!(
        route(3),
        ferry_forwarding::Route::Source,
        "a key the target held before the job is not forwarded to it"
    );
    assert_eq!(route(2), ferry_forwarding::Route::Target(b()));
    assert_eq!(route(1), ferry_forwarding::Route::Target(b()));
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(route(3), ferry_forwarding::Route::Source);
    assert_eq!(
        target.bytes(key(2).as_str()).as_deref(),
        Some(&content(2)[..])
    );
}
