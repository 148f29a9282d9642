//! Timed leases over conditional writes (`LeasedStore`): what two workers on two machines,
//! sharing one set of records, may and may not do (SPEC I6).
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use ferry_checkpoint::{
    BoxFuture, CheckpointStore, Clock, Condition, Error, LeasedStore, MemoryRecords, Progress,
    SharedRecords, Versioned, Warning, Written,
};
use ferry_types::{JobId, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};

fn job() -> JobId {
    JobId::new("shared-job").unwrap()
}

fn plan() -> MigrationPlan {
    MigrationPlan::new(
        NodeId::new("src").unwrap(),
        NodeId::new("dst").unwrap(),
        ObjectSelection::all(),
    )
}

fn progress(n: u64) -> Progress {
    let mut p = Progress::default();
    p.advance_watermark(ObjectKey::new(format!("k/{n:06}")).unwrap());
    p.done_objects = n;
    p
}

/// A wall clock the test moves by hand.
fn manual_clock() -> (Clock, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(1_700_000_000_000));
    let read = Arc::clone(&now);
    (Arc::new(move || read.load(Ordering::SeqCst)), now)
}

fn worker(records: &Arc<MemoryRecords>, name: &str, clock: &Clock) -> LeasedStore {
    LeasedStore::builder(Arc::clone(records) as Arc<dyn SharedRecords>)
        .holder(name)
        .lease(Duration::from_secs(30))
        .clock(Arc::clone(clock))
        .build()
}

#[tokio::test]
async fn i6_a_live_lease_refuses_a_second_worker_and_a_run_out_one_is_taken_over() -> Result<()> {
    let records = Arc::new(MemoryRecords::new());
    let (clock, now) = manual_clock();
    let a = worker(&records, "worker a", &clock);
    let b = worker(&records, "worker b", &clock);
    a.create(&job(), &plan()).await?;
    let old = a.acquire(&job()).await?.lease;
    a.save(&old, JobStatus::Running, progress(10).into())
        .await?;

    now.fetch_add(29_000, Ordering::SeqCst);
    match b.acquire(&job()).await {
        Err(Error::Locked { holder, .. }) => {
            assert!(holder.contains("worker a"), "{holder}");
            assert!(holder.contains("epoch 1"), "{holder}");
        }
        other => panic!("a live lease was not respected: {other:?}"),
    }
    assert!(matches!(b.delete(&job()).await, Err(Error::Locked { .. })));

    // Worker a stops renewing (hung, partitioned): one lease length later b takes over.
    now.fetch_add(2_000, Ordering::SeqCst);
    let taken = b.acquire(&job()).await?;
    assert_eq!(taken.lease.epoch(), 2);
    assert_eq!(
        taken.record.progress,
        progress(10),
        "b resumes from a's checkpoint"
    );
    assert!(
        matches!(&taken.warnings[..], [Warning::TookOver { previous, expired_ms_ago: 1_000 }] if previous == "worker a"),
        "{:?}",
        taken.warnings
    );

    // Worker a comes back: each of its writes is refused, and leaves no trace.
    match a.save(&old, JobStatus::Running, progress(99).into()).await {
        Err(Error::StaleEpoch {
            epoch: 1,
            current: 2,
            ..
        }) => {}
        other => panic!("the stale worker's save was not refused: {other:?}"),
    }
    // And stays refused as stale: the lease is lost, not merely unknown.
    for refused in [
        a.save(&old, JobStatus::Running, progress(98).into())
            .await
            .map(|_| ()),
        a.renew(&old).await,
        a.release(&old).await,
    ] {
        assert!(
            matches!(refused, Err(Error::StaleEpoch { current: 2, .. })),
            "{refused:?}"
        );
    }
    let record = b.load(&job()).await?.expect("exists").record;
    assert_eq!((record.epoch, &record.progress), (2, &progress(10)));
    let (_, holder) = b.load_held(&job()).await?.expect("exists");
    let holder = holder.expect("held");
    assert_eq!(holder.holder, "worker b");

    b.save(&taken.lease, JobStatus::Running, progress(20).into())
        .await?;
    assert_eq!(
        a.load(&job()).await?.expect("exists").record.progress,
        progress(20)
    );
    Ok(())
}

#[tokio::test]
async fn i6_a_save_extends_the_lease() -> Result<()> {
    let records = Arc::new(MemoryRecords::new());
    let (clock, now) = manual_clock();
    let a = worker(&records, "worker a", &clock);
    let b = worker(&records, "worker b", &clock);
    a.create(&job(), &plan()).await?;
    let lease = a.acquire(&job()).await?.lease;
    for n in 0..4 {
        now.fetch_add(20_000, Ordering::SeqCst);
        a.save(&lease, JobStatus::Running, progress(n).into())
            .await?;
    }
    // 80 s after the acquire, but 0 s after the last save.
    assert!(matches!(b.acquire(&job()).await, Err(Error::Locked { .. })));
    now.fetch_add(31_000, Ordering::SeqCst);
    assert_eq!(b.acquire(&job()).await?.lease.epoch(), 2);
    Ok(())
}

/// The test's wall clock follows tokio's (paused) clock.
fn tokio_clock() -> Clock {
    let start = tokio::time::Instant::now();
    Arc::new(move || 1_700_000_000_000 + u64::try_from(start.elapsed().as_millis()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn i6_a_live_holder_keeps_its_job_by_renewing_and_loses_it_when_it_dies() -> Result<()> {
    let records = Arc::new(MemoryRecords::new());
    let clock = tokio_clock();
    let a = worker(&records, "worker a", &clock);
    let b = worker(&records, "worker b", &clock);
    a.create(&job(), &plan()).await?;
    let _lease = a.acquire(&job()).await?.lease;

    // Five lease lengths with no save: the renewal task keeps the job a's.
    tokio::time::sleep(Duration::from_secs(150)).await;
    match b.acquire(&job()).await {
        Err(Error::Locked { holder, .. }) => assert!(holder.contains("worker a"), "{holder}"),
        other => panic!("a's renewals did not keep its lease: {other:?}"),
    }

    // Worker a dies: its renewals stop, and one lease length later b takes the job over.
    drop(a);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let taken = b.acquire(&job()).await?;
    assert_eq!(taken.lease.epoch(), 2);
    assert!(matches!(&taken.warnings[..], [Warning::TookOver { .. }]));
    Ok(())
}

/// Records whose first `n` reads wait for each other: every acquirer reads the same version
/// before any of them writes. Later reads (a loser reading again) pass at once.
#[derive(Debug)]
struct Lockstep {
    inner: MemoryRecords,
    reads: AtomicU64,
    first: u64,
    barrier: tokio::sync::Barrier,
}

impl SharedRecords for Lockstep {
    fn place(&self, job: &JobId) -> String {
        self.inner.place(job)
    }

    fn read<'a>(
        &'a self,
        job: &'a JobId,
    ) -> BoxFuture<'a, ferry_checkpoint::Result<Option<Versioned>>> {
        Box::pin(async move {
            let read = self.inner.read(job).await;
            if self.reads.fetch_add(1, Ordering::SeqCst) < self.first {
                self.barrier.wait().await;
            }
            read
        })
    }

    fn write<'a>(
        &'a self,
        job: &'a JobId,
        bytes: Vec<u8>,
        condition: Condition,
    ) -> BoxFuture<'a, ferry_checkpoint::Result<Written>> {
        self.inner.write(job, bytes, condition)
    }

    fn remove<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, ferry_checkpoint::Result<bool>> {
        self.inner.remove(job)
    }

    fn jobs(&self) -> BoxFuture<'_, ferry_checkpoint::Result<Vec<JobId>>> {
        self.inner.jobs()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i6_of_workers_that_read_the_same_version_exactly_one_acquires() -> Result<()> {
    const WORKERS: u64 = 6;
    let records = Arc::new(Lockstep {
        inner: MemoryRecords::new(),
        reads: AtomicU64::new(0),
        first: WORKERS,
        barrier: tokio::sync::Barrier::new(WORKERS as usize),
    });
    // A create reads nothing: it writes on the condition that there is no record.
    let creator = LeasedStore::new(Arc::clone(&records) as Arc<dyn SharedRecords>);
    creator.create(&job(), &plan()).await?;
    assert!(matches!(
        creator.create(&job(), &plan()).await,
        Err(Error::AlreadyExists { .. })
    ));
    let mut tasks = Vec::new();
    for n in 0..WORKERS {
        let store = LeasedStore::builder(Arc::clone(&records) as Arc<dyn SharedRecords>)
            .holder(format!("worker {n}"))
            .build();
        tasks.push(tokio::spawn(async move {
            let acquired = store.acquire(&job()).await.map(|a| a.lease.epoch());
            (acquired, store)
        }));
    }
    let mut won = Vec::new();
    let mut stores = Vec::new();
    for task in tasks {
        let (acquired, store) = task.await?;
        match acquired {
            Ok(epoch) => won.push(epoch),
            Err(Error::Locked { .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
        stores.push(store);
    }
    assert_eq!(won, [1], "exactly one owner, at epoch 1");
    assert_eq!(creator.load(&job()).await?.expect("exists").record.epoch, 1);
    Ok(())
}

#[tokio::test]
async fn i5_a_corrupt_shared_record_is_an_error_naming_its_place() -> Result<()> {
    let records = Arc::new(MemoryRecords::new());
    let store = LeasedStore::new(Arc::clone(&records) as Arc<dyn SharedRecords>);
    store.create(&job(), &plan()).await?;
    let (mut bytes, tag) = records.read(&job()).await?.expect("created");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    records
        .write(&job(), bytes, Condition::Matches(tag))
        .await?;
    for err in [
        store.load(&job()).await.map(|_| ()).unwrap_err(),
        store.acquire(&job()).await.map(|_| ()).unwrap_err(),
    ] {
        match err {
            Error::Corrupt { path, .. } => {
                assert_eq!(path, std::path::Path::new("memory/jobs/shared-job"));
            }
            other => panic!("not reported as corrupt: {other}"),
        }
    }
    Ok(())
}

/// Records that a test can cut off from this process (a network partition).
#[derive(Debug, Default)]
struct Partitionable {
    inner: MemoryRecords,
    cut: std::sync::atomic::AtomicBool,
}

impl Partitionable {
    fn check(&self) -> ferry_checkpoint::Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(Error::Remote {
                op: "write",
                place: "memory/jobs/shared-job".into(),
                source: "the network is down".into(),
            });
        }
        Ok(())
    }
}

impl SharedRecords for Partitionable {
    fn place(&self, job: &JobId) -> String {
        self.inner.place(job)
    }

    fn read<'a>(
        &'a self,
        job: &'a JobId,
    ) -> BoxFuture<'a, ferry_checkpoint::Result<Option<Versioned>>> {
        Box::pin(async move {
            self.check()?;
            self.inner.read(job).await
        })
    }

    fn write<'a>(
        &'a self,
        job: &'a JobId,
        bytes: Vec<u8>,
        condition: Condition,
    ) -> BoxFuture<'a, ferry_checkpoint::Result<Written>> {
        Box::pin(async move {
            self.check()?;
            self.inner.write(job, bytes, condition).await
        })
    }

    fn remove<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, ferry_checkpoint::Result<bool>> {
        self.inner.remove(job)
    }

    fn jobs(&self) -> BoxFuture<'_, ferry_checkpoint::Result<Vec<JobId>>> {
        self.inner.jobs()
    }
}

#[tokio::test(start_paused = true)]
async fn i6_a_holder_cut_off_past_its_lease_stops_by_itself_even_when_the_store_comes_back()
-> Result<()> {
    let records = Arc::new(Partitionable::default());
    let clock = tokio_clock();
    let a = LeasedStore::builder(Arc::clone(&records) as Arc<dyn SharedRecords>)
        .holder("worker a")
        .lease(Duration::from_secs(30))
        .clock(Arc::clone(&clock))
        .build();
    a.create(&job(), &plan()).await?;
    let lease = a.acquire(&job()).await?.lease;

    // Cut off: the renewals fail. Within nine tenths of the lease the holder still owns it.
    records.cut.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(26)).await;
    records.cut.store(false, Ordering::SeqCst);
    a.save(&lease, JobStatus::Running, progress(1).into())
        .await?;

    // Cut off again, for longer: past nine tenths of a lease since that save, the holder
    // refuses its own writes, even with the store back and nobody having taken over.
    records.cut.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(28)).await;
    records.cut.store(false, Ordering::SeqCst);
    for refused in [
        a.save(&lease, JobStatus::Running, progress(2).into())
            .await
            .map(|_| ()),
        a.renew(&lease).await,
    ] {
        assert!(
            matches!(refused, Err(Error::LeaseLost { epoch: 1, .. })),
            "{refused:?}"
        );
    }
    assert_eq!(
        a.load(&job()).await?.expect("exists").record.progress,
        progress(1),
        "nothing saved after the lease was lost"
    );
    // Once the lease has run out everywhere, another worker takes the job over, or the same
    // one, under a new epoch: a lost lease does not keep the job locked in this process.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(a.acquire(&job()).await?.lease.epoch(), 2);
    Ok(())
}
