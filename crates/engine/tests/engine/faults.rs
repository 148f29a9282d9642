//! The fault matrix (issue #7): every store operation the pipeline uses × every fault kind
//! [`FaultyStore`] offers that applies to it × trigger (the first call only, or every call) ×
//! cleanup policy, each a small job on `MemStore`-backed faulty stores on a paused clock,
//! checked when it ends:
//!
//! - (a) the outcome: `Completed` when the fault is retried away, `CompletedWithErrors` with
//!   the failed objects recorded with their attempts and a reason naming the operation, or
//!   `Failed` for job-level faults (listing, target sync, checkpoint save), then no source
//!   deleted, and a restart with the fault gone resumes and completes;
//! - (b) I1: no source is deleted whose target copy is not identical (bytes compared);
//! - (c) I3: no object recorded done has other bytes on the target; I2: every key routes to a
//!   node that holds its bytes;
//! - (d) done + failed == total, in the snapshot and in the record.
//!
//! Every run ends with a power cut of the target ([`FaultyStore::power_cut`]: what was not
//! synced is lost), so (b) and (c) are checked against what is durable, not what is cached.
//!
//! A source `get` that silently corrupts bytes (`CorruptGet`) is caught wherever the store
//! reports a checksum (in every verify mode), and by a second read of the source before any
//! cleanup deletes it (issue #16). Known limitation, asserted as observed (not as wished): on
//! a store that reports no checksum, a source whose *every* read is corrupted alike is not
//! caught (the second read agrees with the first; nothing else knows the object), and
//! without a cleanup verify `none` and `size` never look at the bytes (nothing is deleted).
//! Rows marked "was a bug" found a broken invariant, since fixed; see docs/reliability.md,
//! "Fault matrix".
//!
//! Run: `cargo test -p ferry-engine --test engine faults`.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry_checkpoint::{
    Acquired, BoxFuture as CkFuture, CheckpointStore, FileStore, JobRecord, Lease, Loaded, Progress,
};
use ferry_engine::{Engine, Error, Op};
use ferry_forwarding::{Route, Table};
use ferry_store::{
    BoxFuture, BoxStream, Fault, FaultyStore, MemStore, MetaStream, Object, Store, Trigger,
};
use ferry_types::{
    CleanupPolicy, FailureKind, JobId, JobSnapshot, JobStatus, MigrationPlan, ObjectKey,
    ObjectSelection, VerifyMode,
};
use futures_util::StreamExt;

use crate::util::*;

/// Objects per job.
const N: usize = 4;
/// A long latency: far beyond any retry backoff, skipped by the paused clock.
const LONG: Duration = Duration::from_secs(30);
/// Attempts the test plan's retry policy makes (`util::plan`).
const MAX_ATTEMPTS: u32 = 5;
const JOB: &str = "faults";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Source,
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum When {
    /// `Trigger::Call(1)`: the first call of the operation only.
    First,
    /// `Trigger::Always`.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// `Completed`; every object moved.
    Completed,
    /// `CompletedWithErrors`: `failed` objects failed after `attempts` attempts, each with a
    /// recorded reason containing `reason`.
    Errors {
        failed: usize,
        attempts: u32,
        /// The kind each failure is recorded with.
        kind: FailureKind,
        reason: &'static str,
    },
    /// `Failed` (job-level fault) with an error containing `reason`; no source deleted; a
    /// restart with the fault gone completes.
    Failed { reason: &'static str },
    /// Known limitation: `Completed`, and `corrupted` objects are recorded done with
    /// corrupted bytes on the target (with cleanup, their sources deleted).
    Undetected { corrupted: usize },
}

#[derive(Debug, Clone, Copy)]
struct Row {
    side: Side,
    op: Op,
    fault: Fault,
    when: When,
    verify: VerifyMode,
    /// Only `AfterVerify` (the operation is only called when cleanup deletes), else both.
    after_verify_only: bool,
    /// An extra key in the plan that the source does not hold: its copy finds the source
    /// gone and deletes the target's (the only target `delete` of the pipeline).
    ghost: bool,
    /// A target that fills up after this many bytes (puts fail with ENOSPC).
    disk_full: Option<u64>,
    /// Stores that report each object's BLAKE3 (`MemStore`'s default), so checksum verify
    /// reads nothing back; else stores that report none (like a directory), so it re-reads
    /// both sides and the faults of those reads are tried too.
    reported: bool,
    /// Only the source reports its BLAKE3 (the target, like a directory, reports none):
    /// checksum verify holds the target's re-read to the source's word.
    source_reported: bool,
    expect: Expect,
    /// What cleanup `Never` gives instead of `expect`, where the two differ.
    never: Option<Expect>,
}

fn row(side: Side, op: Op, fault: Fault, when: When, expect: Expect) -> Row {
    Row {
        side,
        op,
        fault,
        when,
        verify: VerifyMode::Checksum,
        after_verify_only: false,
        ghost: false,
        disk_full: None,
        reported: false,
        source_reported: false,
        expect,
        never: None,
    }
}

impl Row {
    fn verify(mut self, verify: VerifyMode) -> Row {
        self.verify = verify;
        self
    }
    fn after_verify_only(mut self) -> Row {
        self.after_verify_only = true;
        self
    }
    fn ghost(mut self) -> Row {
        self.ghost = true;
        self
    }
    fn reported(mut self) -> Row {
        self.reported = true;
        self
    }
    fn source_reported(mut self) -> Row {
        self.source_reported = true;
        self
    }
    /// Under cleanup `Never`, expect `expect` instead.
    fn never(mut self, expect: Expect) -> Row {
        self.never = Some(expect);
        self
    }
    fn expect(&self, cleanup: CleanupPolicy) -> Expect {
        match (cleanup, self.never) {
            (CleanupPolicy::Never, Some(expect)) => expect,
            _ => self.expect,
        }
    }
}

/// The source holding `N` objects and an empty target, reporting checksums or not (or only
/// the source).
fn stores(reported: bool, source_reported: bool) -> (MemStore, MemStore) {
    let (source, target) = (MemStore::with_chunk_size(16), MemStore::new());
    if reported {
        (fill(source, N), target)
    } else if source_reported {
        (fill(source, N), target.without_checksums())
    } else {
        (
            fill(source.without_checksums(), N),
            target.without_checksums(),
        )
    }
}

use Expect::*;
use Side::{Source as S, Target as T};
use When::{Always, First};

const fn errors(failed: usize, attempts: u32, kind: FailureKind, reason: &'static str) -> Expect {
    Errors {
        failed,
        attempts,
        kind,
        reason,
    }
}

fn ghost_key() -> ObjectKey {
    ObjectKey::new("obj/99999").unwrap()
}

/// A target that refuses puts past `capacity` bytes with ENOSPC (`StorageFull`) as a
/// permanent error, mid-body, as a full disk does; nothing of the refused put is stored.
#[derive(Debug)]
struct DiskFull {
    inner: FaultyStore<MemStore>,
    capacity: u64,
    used: Arc<AtomicU64>,
}

impl Store for DiskFull {
    fn head<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, ferry_store::Result<Option<ferry_store::ObjectMeta>>> {
        self.inner.head(key)
    }
    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, ferry_store::Result<Object>> {
        self.inner.get(key)
    }
    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, ferry_store::Result<Bytes>>,
    ) -> BoxFuture<'a, ferry_store::Result<ferry_store::ObjectMeta>> {
        let used = Arc::clone(&self.used);
        let capacity = self.capacity;
        let start = used.load(Ordering::SeqCst);
        let written = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&written);
        let key2 = key.clone();
        let body = body.map(move |chunk| {
            let chunk = chunk?;
            let n = counted.fetch_add(chunk.len() as u64, Ordering::SeqCst) + chunk.len() as u64;
            if start + n > capacity {
                return Err(ferry_store::Error::Permanent {
                    op: Op::Put,
                    key: Some(key2.clone()),
                    source: Box::new(std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        "No space left on device (ENOSPC)",
                    )),
                });
            }
            Ok(chunk)
        });
        Box::pin(async move {
            let meta = self.inner.put(key, Box::pin(body)).await?;
            used.fetch_add(written.load(Ordering::SeqCst), Ordering::SeqCst);
            Ok(meta)
        })
    }
    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, ferry_store::Result<bool>> {
        self.inner.delete(key)
    }
    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        self.inner.list(prefix, start_after)
    }
    fn sync(&self) -> BoxFuture<'_, ferry_store::Result<()>> {
        self.inner.sync()
    }
}

/// Runs a job to its end; a hang is caught on the paused clock (a virtual day).
async fn run(engine: &Engine, plan: MigrationPlan) -> Result<JobSnapshot, Error> {
    let handle = engine
        .start(plan)
        .await
        .unwrap_or_else(|e| panic!("start: {}", chain(&e)));
    tokio::time::timeout(Duration::from_secs(86_400), handle.wait())
        .await
        .expect("hang: the job did not end within a virtual day")
}

fn the_plan(row: &Row, cleanup: CleanupPolicy) -> MigrationPlan {
    let selection = if row.ghost {
        ObjectSelection::keys((0..N).map(key).chain([ghost_key()]))
    } else {
        ObjectSelection::all()
    };
    plan(JOB, selection)
        .with_verify(row.verify)
        .with_cleanup(cleanup)
        // A full disk fills in key order with one object at a time.
        .with_concurrency(NonZeroUsize::new(if row.disk_full.is_some() { 1 } else { 2 }).unwrap())
}

fn cleanups(row: &Row) -> &'static [CleanupPolicy] {
    if row.after_verify_only {
        &[CleanupPolicy::AfterVerify]
    } else {
        &[CleanupPolicy::Never, CleanupPolicy::AfterVerify]
    }
}

async fn check_row(row: Row) {
    for &cleanup in cleanups(&row) {
        check_case(&row, cleanup).await;
    }
}

async fn check_case(row: &Row, cleanup: CleanupPolicy) {
    let label = format!("{row:?}, cleanup {cleanup:?}");
    let (source, target) = stores(row.reported, row.source_reported);
    let (source, target) = (FaultyStore::new(source), FaultyStore::new(target));
    let faulty = match row.side {
        Side::Source => &source,
        Side::Target => &target,
    };
    let trigger = match row.when {
        When::First => Trigger::Call(1),
        When::Always => Trigger::Always,
    };
    if row.disk_full.is_none() {
        faulty.inject(row.op, trigger, row.fault);
    }
    let table = Table::default();
    let checkpoints = mem_checkpoints();
    let target_store: Arc<dyn Store> = match row.disk_full {
        Some(capacity) => Arc::new(DiskFull {
            inner: target.clone(),
            capacity,
            used: Arc::default(),
        }),
        None => Arc::new(target.clone()),
    };
    let engine = engine(
        Arc::new(source.clone()),
        target_store,
        &table,
        Arc::clone(&checkpoints),
    );
    let plan = the_plan(row, cleanup);
    let total = N + usize::from(row.ghost);
    let started = tokio::time::Instant::now();
    let result = run(&engine, plan.clone()).await;
    assert!(
        faulty.calls(row.op) > 0,
        "{label}: the fault was never reached"
    );
    if row.disk_full.is_some() {
        assert!(started.elapsed() < LONG);
    }
    if matches!(row.fault, Fault::Latency(_)) {
        assert!(
            started.elapsed() >= LONG,
            "{label}: the latency was skipped"
        );
    }
    // What was not synced is lost.
    target.power_cut().await.unwrap();
    let id = JobId::new(JOB).unwrap();
    let load = || async { checkpoints.load(&id).await.unwrap().unwrap().record };

    let expect = row.expect(cleanup);
    let snapshot = match expect {
        Failed { reason } => {
            let err = result.expect_err(&label);
            let text = chain(&err);
            assert!(text.contains(reason), "{label}: error {text:?}");
            assert_eq!(load().await.status, JobStatus::Failed, "{label}");
            assert_eq!(
                source.inner().len(),
                N,
                "{label}: a failed job deleted a source"
            );
            check_stores(row, &source, &target, &table, &load().await, &label, 0);
            // Restart with the fault gone: the job resumes and completes.
            faulty.clear_faults();
            let snap = run(&engine, plan).await.unwrap_or_else(|e| {
                panic!("{label}: restart: {}", chain(&e));
            });
            target.power_cut().await.unwrap();
            assert_eq!(snap.status, JobStatus::Completed, "{label}: restart");
            snap
        }
        _ => result.unwrap_or_else(|e| panic!("{label}: job failed: {}", chain(&e))),
    };
    let record = load().await;
    assert_eq!(record.status, snapshot.status, "{label}");
    let mut corrupted = 0;
    match expect {
        Completed | Failed { .. } => {
            assert_eq!(
                snapshot.status,
                JobStatus::Completed,
                "{label}: {snapshot:?}"
            );
            assert!(record.progress.failed.is_empty(), "{label}: {record:?}");
        }
        Errors {
            failed,
            attempts,
            kind,
            reason,
        } => {
            assert_eq!(
                snapshot.status,
                JobStatus::CompletedWithErrors,
                "{label}: {snapshot:?}"
            );
            assert_eq!(record.progress.failed.len(), failed, "{label}: {record:?}");
            for (key, failure) in &record.progress.failed {
                assert_eq!(failure.attempts, attempts, "{label}: {key:?}: {failure:?}");
                assert_eq!(failure.kind, kind, "{label}: {key:?}: {failure:?}");
                assert!(
                    failure.last_error.contains(reason),
                    "{label}: {key:?}: reason {:?} does not name {reason:?}",
                    failure.last_error
                );
                // A failed object keeps its source (I1).
                if *key != ghost_key() {
                    let i: usize = key.as_str()[4..].parse().unwrap();
                    assert_eq!(
                        source.inner().bytes(key.as_str()).as_deref(),
                        Some(&content(i)[..]),
                        "{label}: failed {key:?} lost its source"
                    );
                }
            }
        }
        Undetected { corrupted: n } => {
            assert_eq!(
                snapshot.status,
                JobStatus::Completed,
                "{label}: {snapshot:?}"
            );
            corrupted = n;
        }
    }
    check_stores(row, &source, &target, &table, &record, &label, corrupted);
    // (d) done + failed == total, skipped counted in done; a job that went through its
    // listing knows its total.
    if matches!(
        snapshot.status,
        JobStatus::Completed | JobStatus::CompletedWithErrors
    ) {
        assert_eq!(snapshot.total_objects, Some(total as u64), "{label}");
    }
    assert_eq!(
        snapshot.done_objects + snapshot.failed_objects,
        total as u64,
        "{label}: {snapshot:?}"
    );
    assert_eq!(
        record.progress.done_objects + record.progress.failed.len() as u64,
        total as u64,
        "{label}: {record:?}"
    );
    if row.ghost {
        assert_eq!(snapshot.skipped_objects + snapshot.failed_objects, 1);
    }
}

/// I1, I2, I3 against the (power-cut) stores; `corrupted`: how many objects the known
/// limitation lets through with corrupted bytes, recorded done.
fn check_stores(
    row: &Row,
    source: &FaultyStore<MemStore>,
    target: &FaultyStore<MemStore>,
    table: &Table,
    record: &JobRecord,
    label: &str,
    corrupted: usize,
) {
    let (source, target) = (source.inner(), target.inner());
    let mut wrong = 0;
    // Failed keys count as finished for the watermark (`is_done`), not as done.
    let done =
        |k: &ObjectKey| record.progress.is_done(k) && !record.progress.failed.contains_key(k);
    for i in 0..N {
        let k = key(i);
        let want = content(i);
        let on_target = target.bytes(k.as_str());
        let on_source = source.bytes(k.as_str());
        if on_target.as_deref().is_some_and(|b| b != &want[..]) && done(&k) {
            // (c) recorded done with other bytes: only the known limitation does this.
            wrong += 1;
            assert!(corrupted > 0, "{label}: I3: {k:?} done with wrong bytes");
            // With cleanup the intact source is deleted: the only correct copy is gone.
            // Without, it stays (and keeps serving until the flip, not after).
            if plan_cleans(record) {
                assert!(on_source.is_none(), "{label}: {k:?} source kept");
            } else {
                assert_eq!(on_source.as_deref(), Some(&want[..]), "{label}: {k:?}");
            }
            continue;
        }
        // (b) I1: a deleted source has an identical, durable target copy.
        if on_source.is_none() {
            assert_eq!(
                on_target.as_deref(),
                Some(&want[..]),
                "{label}: I1: source of {k:?} deleted without an identical target copy"
            );
        } else {
            assert_eq!(
                on_source.as_deref(),
                Some(&want[..]),
                "{label}: source {k:?}"
            );
        }
        // (c) I3: done means the target holds the bytes.
        if done(&k) {
            assert_eq!(
                on_target.as_deref(),
                Some(&want[..]),
                "{label}: I3: {k:?} recorded done without its bytes on the target"
            );
        }
        // I2: the key routes to a node holding it.
        let served = match table.route_read(k.as_str()) {
            Route::Target(_) => on_target,
            _ => on_source,
        };
        assert_eq!(
            served.as_deref(),
            Some(&want[..]),
            "{label}: I2: {k:?} routed to a node without it"
        );
    }
    assert_eq!(wrong, corrupted, "{label}: corrupted objects recorded done");
    if row.ghost {
        assert!(source.bytes(ghost_key().as_str()).is_none(), "{label}");
        // The ghost is absent on the target, or failed (its target delete failed, nothing
        // was ever written there either).
        assert!(target.bytes(ghost_key().as_str()).is_none(), "{label}");
    }
}

fn plan_cleans(record: &JobRecord) -> bool {
    record.plan.options.cleanup != CleanupPolicy::Never
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One `#[tokio::test]` per row of the matrix (each runs its cleanup policies).
macro_rules! matrix {
    ($( $(#[$attr:meta])* $name:ident => $row:expr; )*) => {
        $(
            $(#[$attr])*
            #[tokio::test(start_paused = true)]
            async fn $name() {
                check_row($row).await;
            }
        )*
    };
}

const TRUNC: Fault = Fault::TruncateGet { after: 5 };
const FAIL_AFTER: Fault = Fault::FailGetAfter { after: 5 };
const CORRUPT: Fault = Fault::CorruptGet { at: 3 };
const TRANSIENT: Fault = Fault::Transient;
const PERMANENT: Fault = Fault::Permanent;
const SLOW: Fault = Fault::Latency(LONG);

matrix! {
    // ---- source get (COPY) ----
    source_get_transient_first => row(S, Op::Get, TRANSIENT, First, Completed);
    source_get_transient_always => row(S, Op::Get, TRANSIENT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Transient, "transient failure in get"));
    source_get_permanent_first => row(S, Op::Get, PERMANENT, First, errors(1, 1, FailureKind::Permanent, "permanent failure in get"));
    source_get_permanent_always => row(S, Op::Get, PERMANENT, Always, errors(N, 1, FailureKind::Permanent, "permanent failure in get"));
    source_get_latency_first => row(S, Op::Get, SLOW, First, Completed);
    source_get_latency_always => row(S, Op::Get, SLOW, Always, Completed);
    source_get_truncated_first => row(S, Op::Get, TRUNC, First, Completed);
    source_get_truncated_always => row(S, Op::Get, TRUNC, Always, errors(N, MAX_ATTEMPTS, FailureKind::Transient, "bytes where"));
    source_get_fail_mid_body_first => row(S, Op::Get, FAIL_AFTER, First, Completed);
    source_get_fail_mid_body_always => row(S, Op::Get, FAIL_AFTER, Always, errors(N, MAX_ATTEMPTS, FailureKind::Transient, "transient failure in get"));
    // Was a bug (found by this matrix): verify=checksum compared the target only with the bytes streamed from the source.
    source_get_corrupt_first_checksum => row(S, Op::Get, CORRUPT, First, Completed);
    // Issue #16: a source is never deleted on the word of the one read that made the copy.
    // Verify `size` or `none` with a cleanup that deletes re-reads the source and compares it
    // with what was streamed: a read corrupted once is caught and copied again. Without a
    // cleanup nothing is deleted and nothing is re-read: the corrupted copy is recorded done,
    // the intact source kept, as the user asked of those modes.
    source_get_corrupt_first_size => row(S, Op::Get, CORRUPT, First, Completed).verify(VerifyMode::Size).never(Undetected { corrupted: 1 });
    source_get_corrupt_first_none => row(S, Op::Get, CORRUPT, First, Completed).verify(VerifyMode::None).never(Undetected { corrupted: 1 });
    // Known limitation: a source whose every read returns the same wrong bytes, on a store
    // that reports no checksum (a directory), cannot be told from its content: the second
    // read agrees with the first. Only a checksum the store keeps catches it (the `reported`
    // rows below).
    source_get_corrupt_always_checksum => row(S, Op::Get, CORRUPT, Always, Undetected { corrupted: N });
    source_get_corrupt_always_size => row(S, Op::Get, CORRUPT, Always, Undetected { corrupted: N }).verify(VerifyMode::Size);
    source_get_corrupt_always_none => row(S, Op::Get, CORRUPT, Always, Undetected { corrupted: N }).verify(VerifyMode::None);
    // Where the store reports a checksum, what was streamed is checked against it in every
    // verify mode, for free: the corrupted reads are caught, the object failed, its source
    // kept, whatever the cleanup.
    source_get_corrupt_first_size_reported => row(S, Op::Get, CORRUPT, First, Completed).verify(VerifyMode::Size).reported();
    source_get_corrupt_always_size_reported => row(S, Op::Get, CORRUPT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Verify, "source checksum")).verify(VerifyMode::Size).reported();
    source_get_corrupt_first_none_reported => row(S, Op::Get, CORRUPT, First, Completed).verify(VerifyMode::None).reported();
    source_get_corrupt_always_none_reported => row(S, Op::Get, CORRUPT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Verify, "source checksum")).verify(VerifyMode::None).reported();
    // With checksums reported by the stores, verify reads nothing back and compares the
    // stream with the source's checksum: a source that corrupts every read is caught.
    source_get_corrupt_first_checksum_reported => row(S, Op::Get, CORRUPT, First, Completed).reported();
    source_get_corrupt_always_checksum_reported => row(S, Op::Get, CORRUPT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Verify, "source checksum")).reported();
    source_get_transient_first_reported => row(S, Op::Get, TRANSIENT, First, Completed).reported();
    // A source that reports its BLAKE3 and a target that reports none: the stream is not
    // hashed, the target's re-read is held to the source's word. A corrupted read is caught
    // there (the target holds other bytes) and copied again; one corrupted every time fails.
    source_get_corrupt_first_checksum_source_reported => row(S, Op::Get, CORRUPT, First, Completed).source_reported();
    source_get_corrupt_always_checksum_source_reported => row(S, Op::Get, CORRUPT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Verify, "checksum")).source_reported();
    target_get_corrupt_first_checksum_source_reported => row(T, Op::Get, CORRUPT, First, Completed).source_reported();
    target_put_transient_first_reported => row(T, Op::Put, TRANSIENT, First, Completed).reported();

    // ---- source list (the key stream) ----
    // Was a bug (found by this matrix): a transient listing error failed the whole job.
    source_list_transient_first => row(S, Op::List, TRANSIENT, First, Completed);
    source_list_transient_always => row(S, Op::List, TRANSIENT, Always, Failed { reason: "transient failure in list" });
    source_list_permanent_first => row(S, Op::List, PERMANENT, First, Failed { reason: "permanent failure in list" });
    source_list_permanent_always => row(S, Op::List, PERMANENT, Always, Failed { reason: "permanent failure in list" });
    source_list_latency_first => row(S, Op::List, SLOW, First, Completed);
    source_list_latency_always => row(S, Op::List, SLOW, Always, Completed);

    // ---- source head (CLEANUP: the version re-check before the delete) ----
    source_head_transient_first => row(S, Op::Head, TRANSIENT, First, Completed).after_verify_only();
    source_head_transient_always => row(S, Op::Head, TRANSIENT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Transient, "transient failure in head")).after_verify_only();
    source_head_permanent_first => row(S, Op::Head, PERMANENT, First, errors(1, 1, FailureKind::Permanent, "permanent failure in head")).after_verify_only();
    source_head_permanent_always => row(S, Op::Head, PERMANENT, Always, errors(N, 1, FailureKind::Permanent, "permanent failure in head")).after_verify_only();
    source_head_latency_first => row(S, Op::Head, SLOW, First, Completed).after_verify_only();
    source_head_latency_always => row(S, Op::Head, SLOW, Always, Completed).after_verify_only();

    // ---- source delete (CLEANUP) ----
    source_delete_transient_first => row(S, Op::Delete, TRANSIENT, First, Completed).after_verify_only();
    source_delete_transient_always => row(S, Op::Delete, TRANSIENT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Transient, "transient failure in delete")).after_verify_only();
    source_delete_permanent_first => row(S, Op::Delete, PERMANENT, First, errors(1, 1, FailureKind::Permanent, "permanent failure in delete")).after_verify_only();
    source_delete_permanent_always => row(S, Op::Delete, PERMANENT, Always, errors(N, 1, FailureKind::Permanent, "permanent failure in delete")).after_verify_only();
    source_delete_latency_first => row(S, Op::Delete, SLOW, First, Completed).after_verify_only();
    source_delete_latency_always => row(S, Op::Delete, SLOW, Always, Completed).after_verify_only();

    // ---- target put (COPY) ----
    target_put_transient_first => row(T, Op::Put, TRANSIENT, First, Completed);
    target_put_transient_always => row(T, Op::Put, TRANSIENT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Transient, "transient failure in put"));
    target_put_permanent_first => row(T, Op::Put, PERMANENT, First, errors(1, 1, FailureKind::Permanent, "permanent failure in put"));
    target_put_permanent_always => row(T, Op::Put, PERMANENT, Always, errors(N, 1, FailureKind::Permanent, "permanent failure in put"));
    target_put_latency_first => row(T, Op::Put, SLOW, First, Completed);
    target_put_latency_always => row(T, Op::Put, SLOW, Always, Completed);

    // ---- target head (VERIFY, verify=size) ----
    target_head_transient_first => row(T, Op::Head, TRANSIENT, First, Completed).verify(VerifyMode::Size);
    target_head_transient_always => row(T, Op::Head, TRANSIENT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Transient, "transient failure in head")).verify(VerifyMode::Size);
    target_head_permanent_first => row(T, Op::Head, PERMANENT, First, errors(1, 1, FailureKind::Permanent, "permanent failure in head")).verify(VerifyMode::Size);
    target_head_permanent_always => row(T, Op::Head, PERMANENT, Always, errors(N, 1, FailureKind::Permanent, "permanent failure in head")).verify(VerifyMode::Size);
    target_head_latency_first => row(T, Op::Head, SLOW, First, Completed).verify(VerifyMode::Size);
    target_head_latency_always => row(T, Op::Head, SLOW, Always, Completed).verify(VerifyMode::Size);

    // ---- target get (VERIFY, verify=checksum: the target re-read) ----
    target_get_transient_first => row(T, Op::Get, TRANSIENT, First, Completed);
    target_get_transient_always => row(T, Op::Get, TRANSIENT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Transient, "transient failure in get"));
    target_get_permanent_first => row(T, Op::Get, PERMANENT, First, errors(1, 1, FailureKind::Permanent, "permanent failure in get"));
    target_get_permanent_always => row(T, Op::Get, PERMANENT, Always, errors(N, 1, FailureKind::Permanent, "permanent failure in get"));
    target_get_latency_first => row(T, Op::Get, SLOW, First, Completed);
    target_get_latency_always => row(T, Op::Get, SLOW, Always, Completed);
    target_get_truncated_first => row(T, Op::Get, TRUNC, First, Completed);
    target_get_truncated_always => row(T, Op::Get, TRUNC, Always, errors(N, MAX_ATTEMPTS, FailureKind::Transient, "bytes where"));
    target_get_fail_mid_body_first => row(T, Op::Get, FAIL_AFTER, First, Completed);
    target_get_fail_mid_body_always => row(T, Op::Get, FAIL_AFTER, Always, errors(N, MAX_ATTEMPTS, FailureKind::Transient, "transient failure in get"));
    target_get_corrupt_first => row(T, Op::Get, CORRUPT, First, Completed);
    target_get_corrupt_always => row(T, Op::Get, CORRUPT, Always, errors(N, MAX_ATTEMPTS, FailureKind::Verify, "failed: checksum"));

    // ---- target sync (the commit's durability barrier: job-level) ----
    target_sync_transient_first => row(T, Op::Sync, TRANSIENT, First, Completed);
    target_sync_transient_always => row(T, Op::Sync, TRANSIENT, Always, Failed { reason: "transient failure in sync" });
    target_sync_permanent_first => row(T, Op::Sync, PERMANENT, First, Failed { reason: "permanent failure in sync" });
    target_sync_permanent_always => row(T, Op::Sync, PERMANENT, Always, Failed { reason: "permanent failure in sync" });
    target_sync_latency_first => row(T, Op::Sync, SLOW, First, Completed);
    target_sync_latency_always => row(T, Op::Sync, SLOW, Always, Completed);

    // ---- target delete (a source gone at copy time: absent on both sides, Skipped) ----
    target_delete_transient_first => row(T, Op::Delete, TRANSIENT, First, Completed).ghost();
    target_delete_transient_always => row(T, Op::Delete, TRANSIENT, Always, errors(1, MAX_ATTEMPTS, FailureKind::Transient, "transient failure in delete")).ghost();
    target_delete_permanent_first => row(T, Op::Delete, PERMANENT, First, errors(1, 1, FailureKind::Permanent, "permanent failure in delete")).ghost();
    target_delete_permanent_always => row(T, Op::Delete, PERMANENT, Always, errors(1, 1, FailureKind::Permanent, "permanent failure in delete")).ghost();
    target_delete_latency_first => row(T, Op::Delete, SLOW, First, Completed).ghost();
    target_delete_latency_always => row(T, Op::Delete, SLOW, Always, Completed).ghost();
}

/// ENOSPC: `FaultyStore` has no such fault, so a wrapper ([`DiskFull`]) fails puts past a
/// byte budget with a permanent `StorageFull` I/O error, mid-body: the first two objects fit,
/// the other two fail, their sources kept.
#[tokio::test(start_paused = true)]
async fn target_put_enospc_disk_full() {
    let capacity = (content(0).len() + content(1).len()) as u64;
    let mut row = row(
        T,
        Op::Put,
        PERMANENT,
        Always,
        errors(N - 2, 1, FailureKind::DiskFull, "No space left on device"),
    );
    row.disk_full = Some(capacity);
    check_row(row).await;
}

/// The checkpoint store's I/O. `FileStore`'s fault-injecting `Io` (`crates/checkpoint/src/
/// file/io.rs`) is `pub(crate)` and `#[cfg(test)]`: not reachable from here. So a wrapper
/// over the public [`CheckpointStore`] trait around a real `FileStore` (a temporary
/// directory) fails saves with the I/O error a full disk gives.
#[derive(Debug)]
struct FailingSaves {
    inner: FileStore,
    /// Saves so far.
    saves: AtomicU64,
    /// Fail save number `at` (1-based)…
    at: AtomicU64,
    /// …and every later one (a full disk) rather than that one only.
    sticky: bool,
    /// The source's delete calls when the first save failed.
    deletes_at_failure: AtomicU64,
    source: FaultyStore<MemStore>,
}

impl CheckpointStore for FailingSaves {
    fn create<'a>(
        &'a self,
        job: &'a JobId,
        plan: &'a MigrationPlan,
    ) -> CkFuture<'a, ferry_checkpoint::Result<JobRecord>> {
        self.inner.create(job, plan)
    }
    fn load<'a>(
        &'a self,
        job: &'a JobId,
    ) -> CkFuture<'a, ferry_checkpoint::Result<Option<Loaded>>> {
        self.inner.load(job)
    }
    fn list(&self) -> CkFuture<'_, ferry_checkpoint::Result<Vec<JobId>>> {
        self.inner.list()
    }
    fn delete<'a>(&'a self, job: &'a JobId) -> CkFuture<'a, ferry_checkpoint::Result<bool>> {
        self.inner.delete(job)
    }
    fn acquire<'a>(&'a self, job: &'a JobId) -> CkFuture<'a, ferry_checkpoint::Result<Acquired>> {
        self.inner.acquire(job)
    }
    fn renew<'a>(&'a self, lease: &'a Lease) -> CkFuture<'a, ferry_checkpoint::Result<()>> {
        self.inner.renew(lease)
    }
    fn release<'a>(&'a self, lease: &'a Lease) -> CkFuture<'a, ferry_checkpoint::Result<()>> {
        self.inner.release(lease)
    }
    fn save<'a>(
        &'a self,
        lease: &'a Lease,
        status: JobStatus,
        progress: Arc<Progress>,
    ) -> CkFuture<'a, ferry_checkpoint::Result<u64>> {
        let n = self.saves.fetch_add(1, Ordering::SeqCst) + 1;
        let at = self.at.load(Ordering::SeqCst);
        if n == at || (self.sticky && n > at) {
            if n == at {
                self.deletes_at_failure
                    .store(self.source.calls(Op::Delete), Ordering::SeqCst);
            }
            let path = self.inner.record_paths(lease.job())[0].clone();
            return Box::pin(async move {
                Err(ferry_checkpoint::Error::Io {
                    op: "write",
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        "No space left on device (ENOSPC)",
                    ),
                })
            });
        }
        self.inner.save(lease, status, progress)
    }
}

/// Runs a clean job through `FailingSaves` with save `at` failing (`u64::MAX`: none);
/// returns the number of saves made by the first run.
async fn checkpoint_case(at: u64, sticky: bool) -> u64 {
    let label = format!("checkpoint save {at} fails (sticky: {sticky})");
    let dir = tempfile::tempdir().unwrap();
    let source = FaultyStore::new(filled(N));
    let target = FaultyStore::new(MemStore::new());
    let checkpoints = Arc::new(FailingSaves {
        inner: FileStore::open(dir.path()).unwrap(),
        saves: AtomicU64::new(0),
        at: AtomicU64::new(at),
        sticky,
        deletes_at_failure: AtomicU64::new(u64::MAX),
        source: source.clone(),
    });
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        Arc::clone(&checkpoints) as Arc<dyn CheckpointStore>,
    );
    let row = row(S, Op::Get, TRANSIENT, First, Completed);
    let plan = the_plan(&row, CleanupPolicy::AfterVerify);
    let result = run(&engine, plan.clone()).await;
    let saves = checkpoints.saves.load(Ordering::SeqCst);
    if at == u64::MAX {
        assert_eq!(result.unwrap().status, JobStatus::Completed);
        return saves;
    }
    let err = result.expect_err(&label);
    assert!(
        chain(&err).contains("No space left"),
        "{label}: {}",
        chain(&err)
    );
    // Nothing deleted after the failed save.
    assert_eq!(
        source.calls(Op::Delete),
        checkpoints.deletes_at_failure.load(Ordering::SeqCst),
        "{label}: a source was deleted after the checkpoint save failed"
    );
    target.power_cut().await.unwrap();
    let record = checkpoints
        .load(&JobId::new(JOB).unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    check_stores(&row, &source, &target, &table, &record, &label, 0);
    // The disk has room again: the process restarts (engine and `FileStore` dropped, their
    // file locks with them; the forwarding table is the storage system's and outlives the
    // engine), and `start` with the job's id resumes it and completes. (In the same process
    // the job stays `Locked`: the failed run could not release its lease.)
    drop(engine);
    drop(checkpoints);
    let checkpoints = Arc::new(FailingSaves {
        inner: FileStore::open(dir.path()).unwrap(),
        saves: AtomicU64::new(0),
        at: AtomicU64::new(u64::MAX),
        sticky,
        deletes_at_failure: AtomicU64::new(u64::MAX),
        source: source.clone(),
    });
    let engine = self::engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        Arc::clone(&checkpoints) as Arc<dyn CheckpointStore>,
    );
    let snap = run(&engine, plan)
        .await
        .unwrap_or_else(|e| panic!("{label}: restart: {}", chain(&e)));
    assert_eq!(snap.status, JobStatus::Completed, "{label}");
    target.power_cut().await.unwrap();
    let record = checkpoints
        .load(&JobId::new(JOB).unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    check_stores(&row, &source, &target, &table, &record, &label, 0);
    assert!(source.inner().is_empty(), "{label}: every source cleaned");
    assert_eq!(record.progress.done_objects, N as u64, "{label}");
    saves
}

/// A checkpoint save fails at each save of the job in turn, once or for good (a full disk):
/// the job fails, nothing is deleted after the failure, a restart resumes and completes.
#[tokio::test(start_paused = true)]
async fn checkpoint_save_fails_at_every_save_of_a_job() {
    let saves = checkpoint_case(u64::MAX, false).await;
    assert_eq!(saves, LAST_SAVE, "the saves of a clean run");
    // The last one (`Completing` → `Completed`) is the next test (was a bug).
    for at in 1..saves {
        for sticky in [false, true] {
            checkpoint_case(at, sticky).await;
        }
    }
}

/// The saves a clean run of the matrix's job makes (the first makes its first copy intents
/// durable); the last records `Completed`.
const LAST_SAVE: u64 = 6;

// Was a bug (found by this matrix): a job whose last save failed stayed `Completing` and could not be resumed.
#[tokio::test(start_paused = true)]
async fn checkpoint_last_save_fails_then_restart_resumes() {
    for sticky in [false, true] {
        checkpoint_case(LAST_SAVE, sticky).await;
    }
}
