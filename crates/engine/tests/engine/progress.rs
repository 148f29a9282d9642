//! Progress that means what it says: a job's rates are this run's, over the last seconds;
//! its totals and ETA are known as soon as they can be; a rate the user set outlives a
//! crash; the throttle's burst at a low rate is bounded by the rate, and a recovered job keeps
//! the burst its plan set (SPEC §3, §6).

use std::sync::Arc;
use std::time::Duration;

use ferry_checkpoint::{CheckpointStore, FileStore};
use ferry_engine::Engine;
use ferry_forwarding::Table;
use ferry_store::MemStore;
use ferry_types::{
    ByteSize, JobId, JobSnapshot, JobStatus, MigrationPlan, ObjectSelection, ObjectState, Rate,
};
use tokio::sync::broadcast::error::TryRecvError;

use crate::util::*;

const KIB: u64 = 1024;

/// A source of `n` objects of `size` bytes each.
fn uniform(n: usize, size: usize) -> MemStore {
    let store = MemStore::new();
    for i in 0..n {
        store.insert(key(i), vec![i as u8; size]);
    }
    store
}

fn rate(bytes_per_sec: u64) -> Rate {
    Rate::bytes_per_sec(bytes_per_sec).unwrap()
}

fn all_keys(n: usize) -> ObjectSelection {
    ObjectSelection::keys((0..n).map(key))
}

/// An engine of a new process: `source` → `target`, checkpoints in `dir`, a new table.
fn process(source: &MemStore, target: &MemStore, dir: &tempfile::TempDir) -> Engine {
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &Table::default(),
        checkpoints,
    )
}

/// Crashes `handle`'s job, then recovers it in a new process (a new engine over the same
/// stores and checkpoint directory) and returns its handle there.
async fn crash_and_recover(
    handle: ferry_engine::JobHandle,
    source: &MemStore,
    target: &MemStore,
    dir: &tempfile::TempDir,
) -> ferry_engine::JobHandle {
    handle.crash_for_tests().await;
    process(source, target, dir)
        .recover()
        .await
        .unwrap()
        .pop()
        .unwrap()
}

/// Waits until a published snapshot of the job satisfies `f`, and returns it.
async fn until(
    handle: &ferry_engine::JobHandle,
    f: impl FnMut(&JobSnapshot) -> bool,
) -> JobSnapshot {
    handle.watch().wait_for(f).await.unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn rates_of_a_resumed_job_count_this_runs_work_only() {
    const N: usize = 400;
    let (source, target) = (uniform(N, KIB as usize), MemStore::new());
    let dir = tempfile::tempdir().unwrap();
    // A listed job, so that its bytes are known once its listing ends too.
    let plan = plan("resumed", ObjectSelection::prefix("obj/")).with_rate(rate(64 * KIB));
    let handle = process(&source, &target, &dir).start(plan).await.unwrap();
    until(&handle, |s| s.done_objects >= 300).await;
    let handle = crash_and_recover(handle, &source, &target, &dir).await;
    let restored = handle.snapshot().done_objects;
    assert!(restored >= 200, "{restored} objects restored");
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, N as u64);
    // This run was shorter than the rates' window: they are its averages, of its own work.
    let secs = snap.elapsed.as_secs_f64();
    assert!(secs > 0.0 && secs < 10.0, "{:?}", snap.elapsed);
    let objects = (snap.done_objects - restored) as f64 / secs;
    assert!(
        (snap.objects_per_sec as f64 - objects).abs() <= 1.0,
        "{} objects/s, this run did {objects:.1}/s ({restored} restored, in {secs:.2} s)",
        snap.objects_per_sec
    );
    let bytes = snap.bytes_copied as f64 / secs;
    assert!(
        (snap.throughput as f64 - bytes).abs() <= 1.0,
        "{} B/s, this run copied {bytes:.0} B/s",
        snap.throughput
    );
    // The bytes restored and those listed by this run make the job's total.
    assert_eq!(snap.total_bytes, Some(N as u64 * KIB));
    assert_eq!(snap.done_bytes, N as u64 * KIB);
}

#[tokio::test(start_paused = true)]
async fn throughput_after_a_rate_change_is_the_new_rate_not_the_average() {
    const N: usize = 4000;
    let (source, target, table) = (uniform(N, KIB as usize), MemStore::new(), Table::default());
    let engine = mem_engine(&source, &target, &table);
    let plan = plan("fast-then-slow", all_keys(N)).with_rate(rate(256 * KIB));
    let handle = engine.start(plan).await.unwrap();
    let fast = until(&handle, |s| s.done_objects >= 2000).await;
    handle.set_rate(rate(16 * KIB));
    // Thirty seconds at the slow rate: longer than the window, once the throttle's debt
    // (the fast rate's burst, 256 KiB, paid at the slow rate: about 15 s) is paid.
    let at = fast.elapsed + Duration::from_secs(30);
    let snap = until(&handle, |s| s.elapsed >= at || s.status.is_finished()).await;
    assert!(!snap.status.is_finished(), "{:?}", snap.status);
    let slow = 16.0 * KIB as f64;
    let average = snap.bytes_copied as f64 / snap.elapsed.as_secs_f64();
    assert!(
        average > 2.0 * slow,
        "the average since the start is {average:.0} B/s"
    );
    assert!(
        (snap.throughput as f64 - slow).abs() <= 0.15 * slow,
        "{} B/s at a rate of {slow} B/s (average {average:.0} B/s)",
        snap.throughput
    );
    assert!(
        (14..=18).contains(&snap.objects_per_sec),
        "{} objects/s at 16 objects/s",
        snap.objects_per_sec
    );
    assert_eq!(snap.effective_rate, rate(16 * KIB));
    handle.cancel().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_listed_job_knows_its_bytes_and_eta_once_its_listing_ends() {
    const N: usize = 200;
    let (source, target, table) = (filled(N), MemStore::new(), Table::default());
    let total: u64 = (0..N).map(|i| content(i).len() as u64).sum();
    let engine = mem_engine(&source, &target, &table);
    let plan = plan("listed", ObjectSelection::prefix("obj/")).with_rate(rate(2 * KIB));
    let handle = engine.start(plan).await.unwrap();
    let snap = until(&handle, |s| s.total_objects.is_some()).await;
    assert!(!snap.status.is_finished(), "{:?}", snap.status);
    assert_eq!(snap.total_objects, Some(N as u64));
    assert_eq!(snap.total_bytes, Some(total));
    assert!(snap.throughput > 0);
    let left = snap.remaining_bytes().unwrap();
    assert!(left > 0);
    let eta = snap.eta.expect("an ETA once the total is known");
    let want = left as f64 / snap.throughput as f64;
    assert!(
        (eta.as_secs_f64() - want).abs() <= 0.01 * want + 0.01,
        "ETA {eta:?} for {left} B at {} B/s",
        snap.throughput
    );
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.total_bytes, Some(total));
    assert_eq!(snap.done_bytes, total);
    assert_eq!(snap.eta, Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn a_job_of_explicit_keys_has_an_eta_by_objects() {
    const N: usize = 200;
    let (source, target, table) = (uniform(N, KIB as usize), MemStore::new(), Table::default());
    let engine = mem_engine(&source, &target, &table);
    let plan = plan("keys-eta", all_keys(N)).with_rate(rate(16 * KIB));
    let handle = engine.start(plan).await.unwrap();
    // Past the first burst, at 16 objects a second.
    let snap = until(&handle, |s| {
        s.elapsed >= Duration::from_secs(4) || s.status.is_finished()
    })
    .await;
    assert!(!snap.status.is_finished(), "{:?}", snap.status);
    assert_eq!(snap.total_bytes, None, "the keys' sizes are not known");
    let left = N as u64 - snap.done_objects - snap.failed_objects;
    let eta = snap.eta.expect("an ETA from the objects left");
    let want = left as f64 / 16.0;
    assert!(
        (eta.as_secs_f64() - want).abs() <= 0.25 * want,
        "ETA {eta:?} for {left} objects at 16 objects/s"
    );
    handle.cancel().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_rate_set_while_running_survives_a_crash() {
    const N: usize = 400;
    let (source, target) = (uniform(N, KIB as usize), MemStore::new());
    let dir = tempfile::tempdir().unwrap();
    let job = JobId::new("set-rate").unwrap();
    let plan = plan(job.as_str(), all_keys(N)).with_rate(rate(64 * KIB));
    let handle = process(&source, &target, &dir)
        .start(plan.clone())
        .await
        .unwrap();
    let checkpoints = FileStore::open(dir.path()).unwrap();
    until(&handle, |s| s.done_objects >= 50).await;
    let slow = rate(16 * KIB);
    handle.set_rate(slow);
    // The record holds the new rate at once, without waiting for the checkpoint interval.
    let at = tokio::time::Instant::now();
    let mut saved = false;
    for _ in 0..1000 {
        let record = checkpoints.load(&job).await.unwrap().unwrap().record;
        if record.plan.options.rate == slow {
            saved = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(saved, "the new rate was not saved");
    assert_eq!(tokio::time::Instant::now(), at);
    let handle = crash_and_recover(handle, &source, &target, &dir).await;
    assert_eq!(handle.snapshot().effective_rate, slow);
    handle.crash_for_tests().await;
    // Started again with the first plan, the job still goes on at the rate last set.
    let handle = process(&source, &target, &dir).start(plan).await.unwrap();
    assert_eq!(handle.snapshot().effective_rate, slow);
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
}

/// Bytes of the objects copied within the job's first second.
async fn copied_in_the_first_second(plan: MigrationPlan, n: usize, size: u64) -> u64 {
    let (source, target, table) = (uniform(n, size as usize), MemStore::new(), Table::default());
    let engine = mem_engine(&source, &target, &table);
    // A current-thread runtime: the runner does not run before this test awaits, so the
    // receiver exists before the first transition.
    let handle = engine.start(plan).await.unwrap();
    copied_by(handle, size, Duration::from_secs(1)).await
}

/// Bytes of the objects of `size` bytes the job copied within `within` of this run's start.
/// Subscribes at once: call it before the test awaits anything after starting the job.
async fn copied_by(handle: ferry_engine::JobHandle, size: u64, within: Duration) -> u64 {
    let mut events = handle.events();
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    let mut copied = 0;
    loop {
        match events.try_recv() {
            Ok(event) => {
                if event.state == ObjectState::Copied && event.at <= within {
                    copied += size;
                }
            }
            Err(TryRecvError::Closed | TryRecvError::Empty) => break,
            Err(err) => panic!("{err}"),
        }
    }
    copied
}

#[tokio::test(start_paused = true)]
async fn at_a_low_rate_the_first_second_copies_at_most_the_rate_and_the_burst() {
    const N: usize = 400;
    let low = 64 * KIB;
    // The default burst, bounded by the rate (one second of it, not a 1 MiB chunk).
    let default_burst = plan("low-rate", all_keys(N)).with_rate(rate(low));
    let copied = copied_in_the_first_second(default_burst, N, KIB).await;
    assert!(
        copied <= low + low,
        "{copied} B copied in the first second at {low} B/s"
    );
    assert!(copied >= low, "{copied} B: the rate was not delivered");
    // A burst set on the plan.
    let burst = 8 * KIB;
    let set_burst = plan("low-rate-burst", all_keys(N))
        .with_rate(rate(low))
        .with_burst(ByteSize(burst));
    let copied = copied_in_the_first_second(set_burst, N, KIB).await;
    assert!(
        copied <= low + burst,
        "{copied} B copied in the first second at {low} B/s with a burst of {burst} B"
    );
}

#[tokio::test(start_paused = true)]
async fn a_recovered_job_runs_with_the_burst_its_plan_set() {
    const N: usize = 400;
    let (low, burst) = (64 * KIB, 8 * KIB);
    let (source, target) = (uniform(N, KIB as usize), MemStore::new());
    let dir = tempfile::tempdir().unwrap();
    let plan = plan("recovered-burst", all_keys(N))
        .with_rate(rate(low))
        .with_burst(ByteSize(burst));
    let handle = process(&source, &target, &dir).start(plan).await.unwrap();
    until(&handle, |s| s.done_objects >= 100).await;
    // A new process knows the job from its record alone.
    let handle = crash_and_recover(handle, &source, &target, &dir).await;
    // The recovered throttle starts full: the plan's burst passes at once, no more (the
    // default burst at this rate is a second of it, 64 KiB).
    let copied = copied_by(handle, KIB, Duration::ZERO).await;
    assert_eq!(
        copied, burst,
        "{copied} B copied at the start of the recovered run"
    );
}
