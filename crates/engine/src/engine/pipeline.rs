//! The job's runner and the per-object pipeline COPY → VERIFY → FORWARD → CLEANUP (SPEC §2).

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use std::collections::BTreeMap;

use ferry_checkpoint::{Checkpointer, FlipRecord, Progress, ProgressUpdate};
use ferry_forwarding::{Conflict, EntryState};
use ferry_types::{
    CleanupPolicy, JobSnapshot, JobStatus, KeyRange, MigrationPlan, ObjectKey, ObjectSelection,
    ObjectState, VerifyMode,
};
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tokio::task::JoinSet;

use super::EngineInner;
use super::job::{JobShared, Tracker};
use crate::error::{Error, Result};
use ferry_store::{BoxStream, ByteStream, Checksum, ObjectMeta, Store, Version};

pub(crate) struct JobCtx {
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) plan: MigrationPlan,
    pub(crate) source: Arc<dyn Store>,
    pub(crate) target: Arc<dyn Store>,
    pub(crate) shared: Arc<JobShared>,
    /// The job had a record before this run: an object whose source is gone but whose target
    /// copy exists may have been moved and cleaned by the run that crashed.
    pub(crate) resumed: bool,
    /// A `retry_failed` run: exactly these keys (the record's failed ones) run again.
    pub(crate) retry_keys: Option<Vec<ObjectKey>>,
    /// Keys recorded failed when this run began: counted in the snapshot's `failed_objects`
    /// already, so one that succeeds now leaves that count and one that fails again is not
    /// counted twice.
    pub(crate) failed_before: std::collections::HashSet<ObjectKey>,
    /// Keys the run leaves on the source by design (failed, or changed since their copy):
    /// re-listings leave them out ([`Passes`]).
    pub(crate) left: Arc<Mutex<std::collections::HashSet<ObjectKey>>>,
    /// The job's checkpoint, shared with the object tasks: they journal flips in it.
    pub(crate) checkpointer: Arc<Checkpointer>,
    /// The flips an earlier run made and did not record done (the committed entries of the
    /// record's flip journal, after [`resolve_flips`]), with the digest of their copy.
    pub(crate) committed: BTreeMap<ObjectKey, [u8; 32]>,
}

/// What a cleanup may compare the source against before deleting it (I1).
#[derive(Debug, Clone)]
enum CopiedFrom {
    /// This run copied this source version.
    Version(Version),
    /// An earlier run copied bytes with this BLAKE3 digest (from its flip journal).
    Digest([u8; 32]),
    /// An earlier run copied it; what it copied is not known.
    Unknown,
}

/// How one object ended in this run (or its task: a verified object is flipped by the
/// commit).
#[derive(Debug)]
enum Outcome {
    /// Copied and verified; the commit flips it after the target sync.
    Verified {
        key: ObjectKey,
        /// The key's forwarding generation read before the copy opened the source.
        observed: u64,
        copied: Copied,
        /// Flips of this key refused so far in this run.
        refused: u32,
    },
    Done {
        key: ObjectKey,
        bytes: u64,
    },
    /// Flipped (and past the grace period): its hook and cleanup run at the next commit,
    /// after the target sync.
    Forwarded {
        key: ObjectKey,
        /// What was copied, for the source check before delete.
        copied: CopiedFrom,
        bytes: u64,
        /// Whether the policy deletes the source.
        delete: bool,
    },
    Skipped {
        key: ObjectKey,
    },
    Failed {
        key: ObjectKey,
        attempts: u32,
        error: Error,
    },
    /// Stopped by cancel before its flip; its entry was removed.
    RolledBack {
        key: ObjectKey,
    },
}

impl Outcome {
    fn key(&self) -> &ObjectKey {
        match self {
            Outcome::Verified { key, .. }
            | Outcome::Done { key, .. }
            | Outcome::Forwarded { key, .. }
            | Outcome::Skipped { key }
            | Outcome::Failed { key, .. }
            | Outcome::RolledBack { key } => key,
        }
    }
}

/// Runs the job to its end.
pub(crate) async fn run(ctx: Arc<JobCtx>, progress: Progress) -> Result<JobSnapshot> {
    let _live = Live(&ctx);
    let checkpointer = &*ctx.checkpointer;
    let result = drive(&ctx, checkpointer, &progress).await;
    let shared = &ctx.shared;
    if let Err(Error::ShutDown { .. }) = &result {
        // Saved with the status it had; the lease is given up so that a restart (or another
        // process) takes the job up at once.
        if let Ok(lease) = checkpointer.close().await {
            let _ = ctx.engine.checkpoints.release(&lease).await;
        }
        tracing::debug!("job stopped by the engine's shutdown");
        return Err(Error::ShutDown {
            job: shared.id.clone(),
        });
    }
    let status = match &result {
        Err(_) => JobStatus::Failed,
        Ok(()) if shared.is_cancelled() => JobStatus::Cancelled,
        Ok(()) if shared.snapshot.borrow().failed_objects > 0 => JobStatus::CompletedWithErrors,
        Ok(()) => JobStatus::Completed,
    };
    if matches!(
        status,
        JobStatus::Completed | JobStatus::CompletedWithErrors
    ) {
        checkpointer.set_status(JobStatus::Completing);
        shared.publish(|s| s.status = JobStatus::Completing);
        if let Err(err) = checkpointer.flush().await {
            let _ = checkpointer.close().await;
            shared.publish(|s| s.status = JobStatus::Failed);
            return Err(err.into());
        }
    }
    checkpointer.set_status(status);
    let closed = checkpointer.close().await;
    let released = match closed {
        Ok(lease) => ctx
            .engine
            .checkpoints
            .release(&lease)
            .await
            .map_err(Error::from),
        Err(err) => Err(Error::from(err)),
    };
    let final_status = if result.is_ok() && released.is_err() {
        JobStatus::Failed
    } else {
        status
    };
    match &result {
        Err(err) => tracing::warn!(error = %error_chain(err), "job failed"),
        Ok(()) => tracing::debug!(status = ?final_status, "job ended"),
    }
    shared.publish(|s| s.status = final_status);
    result?;
    released?;
    Ok(shared.snapshot.borrow().clone())
}

/// Removes the job from the engine's live jobs when the runner ends (or is dropped).
struct Live<'a>(&'a JobCtx);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        let shared = &self.0.shared;
        shared.ended.send_replace(true);
        let mut live = self.0.engine.live.lock();
        if live
            .get(&shared.id)
            .is_some_and(|other| Arc::ptr_eq(other, shared))
        {
            live.remove(&shared.id);
        }
    }
}

/// Keys of the plan, lazily, in key order; already-done keys are left out (I4).
/// `after`: only keys after this one (a listing started again after a transient error).
fn key_stream(
    ctx: &JobCtx,
    progress: &Progress,
    after: Option<&ObjectKey>,
) -> BoxStream<'static, Result<ObjectKey>> {
    if let Some(failed) = &ctx.retry_keys {
        // Failed keys may lie under the watermark: they are not filtered by `is_done`.
        return Box::pin(futures_util::stream::iter(
            failed.clone().into_iter().map(Ok),
        ));
    }
    let progress = progress.clone();
    let stream: KeyStream = match &ctx.plan.objects {
        ObjectSelection::Keys(keys) => {
            let mut keys = keys.clone();
            keys.sort();
            keys.dedup();
            Box::pin(futures_util::stream::iter(keys.into_iter().map(Ok)))
        }
        ObjectSelection::Prefix(prefix) => {
            listed_keys(ctx, &progress.copying, &unbounded(prefix), after)
        }
        ObjectSelection::Range(range) => listed_keys(ctx, &progress.copying, range, after),
    };
    Box::pin(stream.try_filter(move |key| std::future::ready(!progress.is_done(key))))
}

/// The range a listed selection covers (a prefix: every key of it); `None` for explicit keys.
fn listed_range(objects: &ObjectSelection) -> Option<Cow<'_, KeyRange>> {
    match objects {
        ObjectSelection::Keys(_) => None,
        ObjectSelection::Prefix(prefix) => Some(Cow::Owned(unbounded(prefix))),
        ObjectSelection::Range(range) => Some(Cow::Borrowed(range)),
    }
}

/// A prefix selection as a range: every key of the prefix.
fn unbounded(prefix: &str) -> KeyRange {
    KeyRange {
        prefix: prefix.to_owned(),
        after: None,
        until: None,
    }
}

/// The keys of a listed selection (`range`) after `after` (when given), in key order: the
/// source's listing, the keys a crashed run flipped, and those it had begun to copy
/// (`copying`, the record's copy intents).
fn listed_keys(
    ctx: &JobCtx,
    copying: &std::collections::BTreeSet<ObjectKey>,
    range: &KeyRange,
    after: Option<&ObjectKey>,
) -> KeyStream {
    let source = list_range(&*ctx.source, range, after);
    if ctx.committed.is_empty() && copying.is_empty() {
        return source;
    }
    // A crashed run may have cleaned a source it had not yet recorded done: such a key is
    // only on the target now, journaled as flipped, and must still be recorded (I4). And a
    // key it had begun to copy may be gone from the source since, its copy left on the
    // target: taken up again, it ends skipped and its copy removed (I3, I8).
    let mut extra: Vec<&ObjectKey> = ctx.committed.keys().chain(copying.iter()).collect();
    extra.sort();
    extra.dedup();
    let flipped: Vec<Result<ObjectKey>> = extra
        .into_iter()
        .filter(|key| range.contains(key))
        .filter(|key| after.is_none_or(|after| *key > after))
        .cloned()
        .map(Ok)
        .collect();
    merge_keys(source, Box::pin(futures_util::stream::iter(flipped)))
}

/// The keys of `store` in `range` and after `after` (when given), in key order. The listing
/// starts after the later of the two lower bounds and stops at the first key past
/// `range.until`: the rest of the store is not listed.
fn list_range(store: &dyn Store, range: &KeyRange, after: Option<&ObjectKey>) -> KeyStream {
    let start = match (range.after.as_ref(), after) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let keys = store
        .list(&range.prefix, start)
        .map_ok(|meta| meta.key)
        .map_err(Error::from);
    match range.until.clone() {
        None => Box::pin(keys),
        Some(until) => {
            Box::pin(keys.try_take_while(move |key| std::future::ready(Ok(*key <= until))))
        }
    }
}

type KeyStream = BoxStream<'static, Result<ObjectKey>>;

/// The union of two key-ordered streams, in key order, each key once. An error ends it.
fn merge_keys(a: KeyStream, b: KeyStream) -> KeyStream {
    let a = a.fuse();
    let b = b.fuse();
    let state = (a, b, None::<ObjectKey>, None::<ObjectKey>, false);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut a, mut b, mut pa, mut pb, failed)| async move {
            if failed {
                return None;
            }
            if pa.is_none() {
                match a.next().await {
                    Some(Ok(key)) => pa = Some(key),
                    Some(Err(err)) => return Some((Err(err), (a, b, pa, pb, true))),
                    None => {}
                }
            }
            if pb.is_none() {
                match b.next().await {
                    Some(Ok(key)) => pb = Some(key),
                    Some(Err(err)) => return Some((Err(err), (a, b, pa, pb, true))),
                    None => {}
                }
            }
            let key = match (pa.take(), pb.take()) {
                (None, None) => return None,
                (Some(x), None) => x,
                (None, Some(y)) => y,
                (Some(x), Some(y)) => match x.cmp(&y) {
                    std::cmp::Ordering::Less => {
                        pb = Some(y);
                        x
                    }
                    std::cmp::Ordering::Greater => {
                        pa = Some(x);
                        y
                    }
                    std::cmp::Ordering::Equal => x,
                },
            };
            Some((Ok(key), (a, b, pa, pb, false)))
        },
    ))
}

/// Objects waiting out a grace period hold no copy slot, but each is a parked task: at most
/// this many times `concurrency` of them wait at once, which bounds memory (I7) and the
/// done set above the watermark.
const GRACE_SLOTS: usize = 64;

/// How far, in keys per copy slot, dispatch may run past an object that holds the watermark.
/// The record's done set above the watermark then holds at most about
/// `concurrency × LAG_PER_SLOT` keys (plus those waiting out a grace period), however long
/// one object takes, and a crash still re-does only the objects in flight (I4).
const LAG_PER_SLOT: usize = 16;

async fn drive(ctx: &Arc<JobCtx>, checkpointer: &Checkpointer, progress: &Progress) -> Result<()> {
    let shared = &ctx.shared;
    let concurrency = ctx.plan.options.concurrency.get();
    let mut grace_rx = shared.grace_waiting.subscribe();
    let interval = ctx.plan.options.checkpoint;
    let mut passes = Passes::new(ctx);
    let mut keys = passes.stream(ctx, progress, None);
    // The last key the stream gave, and the listing's transient failures in a row.
    let mut last_key: Option<ObjectKey> = None;
    let mut list_attempts = 0u32;
    let mut set: JoinSet<Outcome> = JoinSet::new();
    let mut commits = Commits {
        ctx,
        checkpointer,
        pending: Vec::new(),
        syncing: None,
        order: Order::default(),
        tick_missed: false,
    };
    let mut exhausted = false;
    // Keys listed and not yet dispatched, with the sequence number of their copy intent;
    // whether the current pass's listing ended.
    let mut ahead: std::collections::VecDeque<(ObjectKey, u64)> = Default::default();
    // Twice the watermark's window: a save is asked for when a quarter of it is left
    // covered. (Every save writes the intents: a longer lookahead makes each save dearer; a
    // lookahead of 8,000 keys halved the MemStore → MemStore throughput, 512 cost ~20%.)
    let lookahead = 2 * concurrency * LAG_PER_SLOT;
    let mut listing_over = false;
    let mut saved_rx = checkpointer.saved();
    let mut paused_rx = shared.paused.subscribe();
    let mut cancelled_rx = shared.cancelled.subscribe();
    let mut ticker = tokio::time::interval(interval.every.max(std::time::Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fatal: Option<Error> = None;
    let mut was_paused = false;
    // Keys given to the pipeline by this run, and how many of them were recorded failed
    // before it: a listed job's total is known once its listing ends.
    let (mut dispatched, mut failed_again) = (0u64, 0u64);
    loop {
        let paused = *paused_rx.borrow_and_update();
        cancelled_rx.borrow_and_update();
        let stopping = shared.is_cancelled() || fatal.is_some();
        if shared.is_shutting_down() && !stopping {
            return shut_down(&mut commits, &mut set, ahead, was_paused).await;
        }
        if paused && !was_paused && !stopping {
            // Pause: save what is finished, then say so.
            if let Err(err) = commits.all(&mut set).await {
                fatal = Some(err);
                shared.stop_failing();
                continue;
            }
            checkpointer.set_status(JobStatus::Paused);
            if let Err(err) = checkpointer.flush().await {
                fatal = Some(err.into());
                shared.stop_failing();
                continue;
            }
            tracing::debug!("job paused");
            shared.publish(|s| s.status = JobStatus::Paused);
            was_paused = true;
        } else if !paused && was_paused {
            checkpointer.set_status(JobStatus::Running);
            if let Err(err) = checkpointer.flush().await {
                fatal = Some(err.into());
                shared.stop_failing();
            }
            tracing::debug!("job resumed");
            shared.publish(|s| s.status = JobStatus::Running);
            was_paused = false;
        }
        let waiting = (*grace_rx.borrow_and_update()).min(concurrency * (GRACE_SLOTS - 1));
        // One slow object holds the watermark; the others may run this far past it, no
        // further: the record's done set above the watermark stays bounded (I4).
        let window = concurrency * LAG_PER_SLOT + waiting;
        // Keys are listed ahead of dispatch and their copy intents recorded; a key is
        // dispatched once its intent is durable (SPEC I8: after a crash, every copy the run
        // may have left on the target is known). Saves are asked for ahead of need.
        while !paused
            && !stopping
            && !exhausted
            && !listing_over
            && !passes.listed
            && ahead.len() < lookahead
        {
            match keys.next().await {
                Some(Ok(key)) => {
                    list_attempts = 0;
                    last_key = Some(key.clone());
                    let seq = checkpointer.record(ProgressUpdate::CopyIntent { key: key.clone() });
                    ahead.push_back((key, seq));
                }
                Some(Err(err))
                    if err.is_transient()
                        && ctx.plan.options.retry.should_retry(list_attempts + 1) =>
                {
                    // List again after the last key given, once the backoff is waited out.
                    list_attempts += 1;
                    tracing::warn!(what = "list", attempt = list_attempts, error = %error_chain(&err), "transient error, retrying");
                    let retry = &ctx.plan.options.retry;
                    tokio::time::sleep(retry.backoff(list_attempts, jitter_unit(list_attempts)))
                        .await;
                    keys = passes.stream(ctx, progress, last_key.as_ref());
                }
                Some(Err(err)) => {
                    fatal = Some(err);
                    shared.stop_failing();
                    break;
                }
                None => listing_over = true,
            }
        }
        let durable = saved_rx.borrow_and_update().records;
        let mut ready = ahead.partition_point(|(_, seq)| *seq <= durable);
        if !stopping
            && ready < ahead.len()
            && ready <= lookahead / 4
            && let Err(err) = checkpointer.save_soon()
        {
            // The saves stopped: no intent will be durable, nothing more may start.
            fatal.get_or_insert(err.into());
            shared.stop_failing();
            continue;
        }
        while ready > 0
            && !paused
            && !stopping
            && set.len() < concurrency + waiting
            && !commits.order.lagging(window)
        {
            let Some((key, _)) = ahead.pop_front() else {
                break;
            };
            ready -= 1;
            dispatched += 1;
            failed_again += u64::from(ctx.failed_before.contains(&key));
            commits.order.dispatched.push_back(key.clone());
            spawn_process(ctx, &mut set, &mut commits.order, key, 0);
        }
        if listing_over && ahead.is_empty() && !exhausted && !passes.listed {
            if passes.relist {
                // This pass is listed to its end; the next one starts once it settles.
                passes.listed = true;
            } else {
                exhausted = true;
                passes.total(ctx, progress, dispatched - failed_again);
            }
        }
        let stopping = shared.is_cancelled() || fatal.is_some();
        if passes.listed && set.is_empty() && !stopping && !paused {
            // The pass is listed and nothing of it is in flight: its sources are cleaned
            // once its last objects commit; then the selection is listed again for keys
            // created behind the listing (SPEC I8), or the job is done.
            if let Err(err) = commits.all(&mut set).await {
                fatal.get_or_insert(err);
                shared.stop_failing();
                continue;
            }
            if !set.is_empty() {
                // Refused flips copy again, grace periods run: this pass is not over.
                continue;
            }
            passes.total(ctx, progress, dispatched - failed_again);
            if passes.next(dispatched) {
                last_key = None;
                listing_over = false;
                keys = passes.stream(ctx, progress, None);
            } else {
                exhausted = true;
            }
            continue;
        }
        if set.is_empty() && ((exhausted && !paused) || stopping) {
            // Flip what is verified; a refused flip (copied again) or a grace period keeps
            // the job going.
            if let Err(err) = commits.all(&mut set).await {
                fatal.get_or_insert(err);
                shared.stop_failing();
            }
            if set.is_empty() {
                break;
            }
            continue;
        }
        // (A paused job stays `Paused` while its last objects wait.)
        if exhausted && !stopping && !paused {
            shared.publish(|s| s.status = JobStatus::Completing);
        }
        tokio::select! {
            Some(joined) = set.join_next() => {
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                match joined {
                    Ok(outcome) => {
                        commits.order.flying.remove(outcome.key());
                        commits.pending.push(outcome);
                    }
                    Err(_) => {
                        // A per-object task panicked: stop the job; its key stays unfinished.
                        fatal.get_or_insert(Error::RunnerGone { job: shared.id.clone() });
                        shared.stop_failing();
                    }
                }
                if commits.pending.len() as u64 >= interval.objects
                    && let Err(err) = commits.start(&mut set).await
                {
                    fatal.get_or_insert(err);
                    shared.stop_failing();
                }
            }
            synced = async {
                match commits.syncing.as_mut() {
                    Some(under_way) => under_way.sync.as_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Err(err) = commits.after_sync(synced, &mut set).await {
                    fatal.get_or_insert(err);
                    shared.stop_failing();
                }
            }
            _ = ticker.tick() => {
                if let Err(err) = commits.tick(&mut set).await {
                    fatal.get_or_insert(err);
                    shared.stop_failing();
                }
            }
            _ = saved_rx.changed(), if !ahead.is_empty() => {}
            _ = paused_rx.changed() => {}
            _ = cancelled_rx.changed() => {}
            _ = grace_rx.changed() => {}
        }
    }
    // Keys listed but never dispatched (a cancel or an error stopped the job): no copy.
    for (key, _) in ahead {
        checkpointer.record(ProgressUpdate::CopyDropped { key });
    }
    checkpointer.flush().await?;
    match fatal {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Stops the job for [`Engine::shutdown`](crate::Engine::shutdown): once its copies are
/// parked at a chunk boundary (as for a pause), what is verified is committed, the object
/// tasks are dropped where they are (their copy intents are durable: a recovered run takes
/// them up, I8), the `Copying` entries they held are removed (their keys are served from the
/// source as before; forwarded ones stay), and the checkpoint is saved with the status the
/// job had. Ends with [`Error::ShutDown`].
async fn shut_down(
    commits: &mut Commits<'_>,
    set: &mut JoinSet<Outcome>,
    ahead: std::collections::VecDeque<(ObjectKey, u64)>,
    was_paused: bool,
) -> Result<()> {
    let ctx = commits.ctx;
    let shared = &ctx.shared;
    shared.streaming.wait_zero().await;
    commits.all(set).await?;
    set.abort_all();
    while set.join_next().await.is_some() {}
    let table = &ctx.engine.table;
    for key in commits.order.flying.drain() {
        let moving = table
            .get(key.as_str())
            .is_some_and(|info| matches!(info.state, EntryState::Copying | EntryState::Fenced));
        if moving {
            table.remove_owned(key.as_str(), &shared.id);
        }
    }
    for (key, _) in ahead {
        ctx.checkpointer.record(ProgressUpdate::CopyDropped { key });
    }
    let status = if was_paused {
        JobStatus::Paused
    } else {
        JobStatus::Running
    };
    ctx.checkpointer.set_status(status);
    ctx.checkpointer.flush().await?;
    Err(Error::ShutDown {
        job: shared.id.clone(),
    })
}

/// Listings of the selection after the first, for keys created in it behind the listing
/// while the job ran (a drain must leave nothing of its selection on the source, SPEC I8):
/// when a job's cleanup deletes sources, the selection is listed again once a pass has
/// settled, until a pass finds nothing to move, at most `MAX_RELISTS` times. A key still on
/// the source at the end of a pass was moved and kept (its source changed, or it failed) or
/// is new: the kept and failed ones are left out of later passes.
struct Passes {
    /// Whether later passes are listed at all: listed selections whose cleanup deletes.
    relist: bool,
    /// Re-listings made so far.
    made: u32,
    /// The current pass is listed to its end.
    listed: bool,
    /// `dispatched` when the current pass began.
    dispatched_before: u64,
}

/// Re-listings after the first pass, at most: writers that keep creating keys in the
/// selection faster than the job moves them would otherwise keep it running for ever.
const MAX_RELISTS: u32 = 8;

impl Passes {
    fn new(ctx: &JobCtx) -> Passes {
        let deletes = !matches!(ctx.plan.options.cleanup, CleanupPolicy::Never);
        let listed = !matches!(ctx.plan.objects, ObjectSelection::Keys(_));
        Passes {
            relist: deletes && listed && ctx.retry_keys.is_none(),
            made: 0,
            listed: false,
            dispatched_before: 0,
        }
    }

    /// The keys of the current pass (after `after`, when a transient error cut it short).
    fn stream(&self, ctx: &JobCtx, progress: &Progress, after: Option<&ObjectKey>) -> KeyStream {
        if self.made == 0 {
            return key_stream(ctx, progress, after);
        }
        let Some(range) = listed_range(&ctx.plan.objects) else {
            // Explicit keys are listed once (`relist` is false for them).
            return Box::pin(futures_util::stream::empty());
        };
        // Every key still on the source, but those kept there by design (failed, or changed
        // since their copy), whatever the watermark says: a new key may sort below it.
        let left = Arc::clone(&ctx.left);
        Box::pin(
            list_range(&*ctx.source, &range, after)
                .try_filter(move |key| std::future::ready(!left.lock().contains(key))),
        )
    }

    /// The pass settled: whether to list again (the pass moved something, and re-listings
    /// are left). `dispatched`: keys given to the pipeline by this run so far.
    fn next(&mut self, dispatched: u64) -> bool {
        let found = dispatched > self.dispatched_before || self.made == 0;
        self.listed = false;
        if !found || self.made >= MAX_RELISTS {
            if found {
                tracing::warn!(
                    relists = self.made,
                    "keys are still being created in the selection; those created after the last listing stay on the source"
                );
            }
            return false;
        }
        self.made += 1;
        self.dispatched_before = dispatched;
        true
    }

    /// Publishes the job's total once a listing ended: done (skipped included) and failed
    /// before this run, plus `given` (the keys this run was given, counting a failed key
    /// given again once).
    fn total(&self, ctx: &JobCtx, progress: &Progress, given: u64) {
        // Explicit keys and retry runs know their total from the start.
        if matches!(ctx.plan.objects, ObjectSelection::Keys(_)) || ctx.retry_keys.is_some() {
            return;
        }
        let before = progress.done_objects + ctx.failed_before.len() as u64;
        ctx.shared
            .publish(|s| s.total_objects = Some(before + given));
    }
}

/// Starts the pipeline of `key` on the job's task set.
fn spawn_process(
    ctx: &Arc<JobCtx>,
    set: &mut JoinSet<Outcome>,
    order: &mut Order,
    key: ObjectKey,
    refused: u32,
) {
    order.flying.insert(key.clone());
    ctx.shared.in_flight.fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!("object", key = %key.as_str());
    let ctx = Arc::clone(ctx);
    set.spawn(tracing::Instrument::instrument(
        async move { process(&ctx, key, refused).await },
        span,
    ));
}

/// The commits of a job's finished objects: the batch being gathered, the one whose target
/// sync is under way while the pipeline goes on copying, and the dispatch order the watermark
/// follows. One commit at a time, batches in dispatch order.
struct Commits<'a> {
    ctx: &'a Arc<JobCtx>,
    checkpointer: &'a Checkpointer,
    /// Finished objects not yet in a commit.
    pending: Vec<Outcome>,
    /// The batch whose target sync is under way, if any.
    syncing: Option<Syncing<'a>>,
    order: Order,
    /// The ticker fired while a sync was under way: the commit after it is due at once.
    tick_missed: bool,
}

impl Order {
    /// Whether dispatch must wait: `window` keys or more are past the watermark and the
    /// oldest of them is still on the task set, so the keys finishing after it would pile up
    /// in the record's done set above the watermark. (When the oldest has finished, the
    /// next commit moves the watermark past it: dispatch goes on while a commit syncs.)
    fn lagging(&self, window: usize) -> bool {
        self.dispatched.len() >= window
            && self
                .dispatched
                .front()
                .is_some_and(|oldest| self.flying.contains(oldest))
    }
}

impl<'a> Commits<'a> {
    /// Starts committing `pending`, unless a commit is under way (its end starts the next
    /// one): a batch that needs the target synced is left in `syncing` while its sync runs;
    /// any other batch is committed at once.
    async fn start(&mut self, set: &mut JoinSet<Outcome>) -> Result<()> {
        if self.syncing.is_some() || self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        if needs_sync(&batch) {
            self.syncing = Some(Syncing {
                batch,
                sync: Box::pin(sync_target(self.ctx)),
            });
            return Ok(());
        }
        commit_synced(self.ctx, self.checkpointer, batch, &mut self.order, set).await
    }

    /// The checkpoint interval's tick: a commit now, or right after the one under way.
    async fn tick(&mut self, set: &mut JoinSet<Outcome>) -> Result<()> {
        self.tick_missed = self.syncing.is_some();
        self.start(set).await
    }

    /// The batch under way got its sync (`synced`): commits it, then starts the next commit
    /// if one is due (a batch finished meanwhile, or a tick passed).
    async fn after_sync(&mut self, synced: Result<()>, set: &mut JoinSet<Outcome>) -> Result<()> {
        let Some(Syncing { batch, .. }) = self.syncing.take() else {
            unreachable!("only a sync under way completes");
        };
        synced?;
        commit_synced(self.ctx, self.checkpointer, batch, &mut self.order, set).await?;
        let due = std::mem::take(&mut self.tick_missed)
            || self.pending.len() as u64 >= self.ctx.plan.options.checkpoint.objects;
        if due {
            self.start(set).await?;
        }
        Ok(())
    }

    /// Commits everything finished: the batch whose sync is under way, then `pending`, in
    /// that order (the watermark moves in dispatch order).
    async fn all(&mut self, set: &mut JoinSet<Outcome>) -> Result<()> {
        if let Some(Syncing { batch, sync }) = self.syncing.take() {
            sync.await?;
            commit_synced(self.ctx, self.checkpointer, batch, &mut self.order, set).await?;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        if needs_sync(&batch) {
            sync_target(self.ctx).await?;
        }
        commit_synced(self.ctx, self.checkpointer, batch, &mut self.order, set).await
    }
}

/// Whether committing `batch` needs the target synced first: it holds copies to flip, or
/// flips made whose cleanups follow.
fn needs_sync(batch: &[Outcome]) -> bool {
    batch.iter().any(|o| {
        matches!(
            o,
            Outcome::Done { .. } | Outcome::Forwarded { .. } | Outcome::Verified { .. }
        )
    })
}

/// The target's sync barrier, retried per the plan.
async fn sync_target(ctx: &JobCtx) -> Result<()> {
    sync_with_retry(ctx).await.map_err(|(_, err)| err)
}

/// A batch whose target sync is under way while the pipeline goes on copying: the sync
/// waits for the disk, and the objects after the batch need not wait for it.
struct Syncing<'a> {
    batch: Vec<Outcome>,
    sync: std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>,
}

/// The commit of a batch whose copies the target has made durable (one `sync` for the
/// whole batch, by [`Commits`]): flips the verified objects,
/// journaled (the intents saved before the flips, the outcome after them: SPEC I2, I3);
/// finishes the forwarded objects (commit hook, version re-check, source delete: never
/// before a completed target sync, I1); then records the finished objects (sync before
/// record: an object recorded done is on the target durably, I1/I4). A refused flip sends
/// its object back to copy again, and a grace period is waited out on the task set: both
/// come back in a later batch.
async fn commit_synced(
    ctx: &Arc<JobCtx>,
    checkpointer: &Checkpointer,
    batch: Vec<Outcome>,
    order: &mut Order,
    set: &mut JoinSet<Outcome>,
) -> Result<()> {
    let (verified, mut batch): (Vec<Outcome>, Vec<Outcome>) = batch
        .into_iter()
        .partition(|o| matches!(o, Outcome::Verified { .. }));
    // The flips of the batch are committed, durably, before any of its sources goes: after
    // a crash, a journaled key whose source is gone was cleaned, not deleted by a user. The
    // keys forwarded so far were flipped by their own task (fenced hot keys, keys flipped by
    // an earlier run); `flip_verified` commits its own flips, and its save carries these too.
    let mut flipped = false;
    for outcome in &batch {
        if let Outcome::Forwarded { key, .. } = outcome {
            checkpointer.record(ProgressUpdate::FlipCommitted { key: key.clone() });
            flipped = true;
        }
    }
    let saved = flip_verified(ctx, checkpointer, verified, &mut batch, order, set).await?;
    if flipped && !saved {
        checkpointer.flush().await?;
    }
    let batch: Vec<Outcome> = futures_util::stream::iter(batch)
        .map(|outcome| async move {
            match outcome {
                Outcome::Forwarded {
                    key,
                    copied,
                    bytes,
                    delete,
                } => finish_cleanup(ctx, key, copied, bytes, delete).await,
                other => other,
            }
        })
        .buffered(ctx.plan.options.concurrency.get())
        .collect()
        .await;
    let shared = &ctx.shared;
    // The snapshot's counters move once for the whole batch.
    let (mut done, mut done_bytes, mut skipped, mut failed, mut unfailed) = (0, 0, 0, 0, 0);
    for outcome in batch {
        match outcome {
            Outcome::Done { key, bytes } => {
                shared.emit(&key, ObjectState::Done);
                order.finished.insert(key.clone());
                unfailed += u64::from(ctx.failed_before.contains(&key));
                checkpointer.record(ProgressUpdate::Done { key, bytes });
                done += 1;
                done_bytes += bytes;
            }
            Outcome::Skipped { key } => {
                shared.emit(&key, ObjectState::Skipped);
                order.finished.insert(key.clone());
                unfailed += u64::from(ctx.failed_before.contains(&key));
                checkpointer.record(ProgressUpdate::Skipped { key });
                done += 1;
                skipped += 1;
            }
            Outcome::Failed {
                key,
                attempts,
                error,
            } => {
                let error = error_chain(&error);
                tracing::warn!(key = %key.as_str(), attempts, error = %error, "object failed");
                shared.emit(
                    &key,
                    ObjectState::Failed {
                        attempts,
                        last_error: error.clone(),
                    },
                );
                order.finished.insert(key.clone());
                ctx.left.lock().insert(key.clone());
                failed += u64::from(!ctx.failed_before.contains(&key));
                checkpointer.record(ProgressUpdate::Failed {
                    key,
                    attempts,
                    error,
                });
            }
            // Forwarded ones were finished above; verified ones were flipped.
            Outcome::RolledBack { .. } | Outcome::Forwarded { .. } | Outcome::Verified { .. } => {}
        }
    }
    if done + failed + unfailed > 0 {
        shared.publish(|s| {
            s.done_objects += done;
            s.done_bytes += done_bytes;
            s.skipped_objects += skipped;
            s.failed_objects = (s.failed_objects + failed).saturating_sub(unfailed);
        });
    }
    // Every key up to the watermark is recorded finished, so the record's done set stays
    // bounded by what is in flight (keys are dispatched in key order).
    let mut watermark = None;
    while let Some(front) = order.dispatched.front() {
        if !order.finished.remove(front) {
            break;
        }
        watermark = order.dispatched.pop_front();
    }
    // A retry run's keys are not a prefix of the job's key order: the watermark stays.
    if let Some(key) = watermark.filter(|_| ctx.retry_keys.is_none()) {
        checkpointer.record(ProgressUpdate::Watermark(key));
    }
    Ok(())
}

/// The FORWARD step of a batch of verified objects, after the target sync: journals the
/// intents and saves them, flips each key (the generation check, I3), then saves which
/// flips were made (committed) and which were refused (void) before anything else happens
/// to them. Flipped objects go on to their cleanup (`out`, or the task set for a grace
/// period); refused ones are copied again on the task set. After a cancel nothing is
/// flipped: the objects are rolled back. Returns whether it saved the checkpoint (then
/// everything recorded before the call is durable too).
async fn flip_verified(
    ctx: &Arc<JobCtx>,
    checkpointer: &Checkpointer,
    verified: Vec<Outcome>,
    out: &mut Vec<Outcome>,
    order: &mut Order,
    set: &mut JoinSet<Outcome>,
) -> Result<bool> {
    if verified.is_empty() {
        return Ok(false);
    }
    let shared = &ctx.shared;
    let table = &ctx.engine.table;
    if shared.is_cancelled() {
        for outcome in verified {
            if let Outcome::Verified { key, .. } = outcome {
                shared.emit(&key, ObjectState::Pending);
                out.push(rolled_back(ctx, key, true).await);
            }
        }
        return Ok(false);
    }
    for outcome in &verified {
        if let Outcome::Verified { key, copied, .. } = outcome {
            checkpointer.record(ProgressUpdate::FlipIntent {
                key: key.clone(),
                digest: copied.digest,
            });
        }
    }
    checkpointer.flush().await?;
    let mut flipped = Vec::new();
    let mut again = Vec::new();
    for outcome in verified {
        let Outcome::Verified {
            key,
            observed,
            copied,
            refused,
        } = outcome
        else {
            continue;
        };
        match table.try_flip(key.as_str(), observed) {
            Ok(()) => {
                shared.forwarded.fetch_add(1, Ordering::Relaxed);
                shared.emit(&key, ObjectState::Forwarded);
                checkpointer.record(ProgressUpdate::FlipCommitted { key: key.clone() });
                flipped.push((key, copied));
            }
            Err(Conflict::WritesSinceCopyBegan { .. } | Conflict::WritesInFlight { .. }) => {
                // A write since the copy began: the copy runs again (I3).
                checkpointer.record(ProgressUpdate::FlipDropped { key: key.clone() });
                shared.emit(&key, ObjectState::Pending);
                again.push((key, refused + 1));
            }
            Err(cause) => {
                table.remove_owned(key.as_str(), &shared.id);
                out.push(Outcome::Failed {
                    key: key.clone(),
                    attempts: refused + 1,
                    error: Error::FlipRefused {
                        key: key.clone(),
                        cause,
                    },
                });
            }
        }
    }
    // Committed and void flips are durable before any source is deleted and before any
    // key is copied again.
    checkpointer.flush().await?;
    for (key, refused) in again {
        spawn_process(ctx, set, order, key, refused);
    }
    let grace = matches!(ctx.plan.options.cleanup, CleanupPolicy::AfterGrace(_));
    for (key, copied) in flipped {
        let from = CopiedFrom::Version(copied.version);
        if grace {
            order.flying.insert(key.clone());
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let ctx = Arc::clone(ctx);
            let span = tracing::debug_span!("object", key = %key.as_str());
            set.spawn(tracing::Instrument::instrument(
                async move { cleanup(&ctx, key, from, copied.bytes).await },
                span,
            ));
        } else {
            out.push(cleanup(ctx, key, from, copied.bytes).await);
        }
    }
    Ok(true)
}

/// The keys dispatched in key order and not yet under the watermark, and which of them are
/// recorded finished.
#[derive(Default)]
struct Order {
    dispatched: std::collections::VecDeque<ObjectKey>,
    /// Keys whose task is on the task set (copying, or waiting out a grace period).
    flying: std::collections::HashSet<ObjectKey>,
    finished: std::collections::HashSet<ObjectKey>,
}

/// The error and its causes, as the one line the checkpoint record keeps.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn jitter_unit(attempt: u32) -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `op` until it succeeds, fails permanently or the retry policy is spent (or the job is
/// cancelled: a copy stops at once). The error comes with the attempts made.
async fn with_retry<'a, T, E, F>(
    ctx: &'a JobCtx,
    what: &'static str,
    op: impl FnMut() -> F,
) -> Result<T, (u32, Error)>
where
    F: std::future::Future<Output = Result<T, E>> + 'a,
    E: Into<Error>,
{
    retrying(ctx, what, op, || ctx.shared.is_cancelled()).await
}

/// The target's `sync`, retried as [`with_retry`] retries, through a cancel: a cancelled job
/// still commits what it flipped and rolls back the rest, and a sync that failed once more
/// would fail the whole job instead. Only a job stopping on an error gives up at once.
async fn sync_with_retry(ctx: &JobCtx) -> Result<(), (u32, Error)> {
    retrying(
        ctx,
        "sync",
        || ctx.target.sync(),
        || ctx.shared.is_failing(),
    )
    .await
}

async fn retrying<'a, T, E, F>(
    ctx: &'a JobCtx,
    what: &'static str,
    mut op: impl FnMut() -> F,
    give_up: impl Fn() -> bool,
) -> Result<T, (u32, Error)>
where
    F: std::future::Future<Output = Result<T, E>> + 'a,
    E: Into<Error>,
{
    let retry = &ctx.plan.options.retry;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match op().await.map_err(Into::into) {
            Ok(value) => return Ok(value),
            Err(err) if err.is_transient() && retry.should_retry(attempts) => {
                tracing::warn!(what, attempt = attempts, error = %error_chain(&err), "transient error, retrying");
                if give_up() {
                    return Err((attempts, err));
                }
                tokio::time::sleep(retry.backoff(attempts, jitter_unit(attempts))).await;
            }
            Err(err) => return Err((attempts, err)),
        }
    }
}

/// What one copy read and wrote.
#[derive(Debug)]
struct Copied {
    version: Version,
    bytes: u64,
    /// BLAKE3 of the bytes written to the target.
    digest: [u8; 32],
}

enum CopyResult {
    Copied(Copied),
    /// The source had no such object when the copy opened it.
    Vanished,
    /// The source's content changed during the copy and the key's generation moved since
    /// it began: a client wrote it through the table. Not an error: like a refused flip,
    /// the copy runs again (I3).
    SourceWritten,
}

/// Counts the caller among the copies moving chunks, for as long as it lives.
struct Streaming<'a>(&'a JobShared);

impl<'a> Streaming<'a> {
    fn enter(shared: &'a JobShared) -> Self {
        shared.streaming.add();
        Streaming(shared)
    }
}

/// Counts an object waiting out its grace period in `JobShared::grace_waiting` while alive.
struct GraceWait<'a>(&'a JobShared);

impl<'a> GraceWait<'a> {
    fn enter(shared: &'a JobShared) -> GraceWait<'a> {
        shared.grace_waiting.send_modify(|n| *n += 1);
        GraceWait(shared)
    }
}

impl Drop for GraceWait<'_> {
    fn drop(&mut self) {
        self.0
            .grace_waiting
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        self.0.streaming.sub();
    }
}

/// COPY then VERIFY, once: streams source → target chunk by chunk through the job's
/// throttle, hashing while streaming (I7), then checks the target per the verify mode.
///
/// `observed`: the key's generation read before the copy began, when a write to the source
/// through the table may happen meanwhile (not under a fence); a source that no longer
/// matches the copy then counts as written ([`CopyResult::SourceWritten`]) when the
/// generation moved, and as a verify error when it did not.
async fn copy_once(
    ctx: &JobCtx,
    key: &ObjectKey,
    track: &Tracker<'_>,
    observed: Option<u64>,
) -> Result<CopyResult> {
    let shared = &*ctx.shared;
    track.to(ObjectState::Copying);
    let object = match ctx.source.get(key).await {
        Ok(object) => object,
        Err(err) if err.is_not_found() => return Ok(CopyResult::Vanished),
        Err(err) => return Err(err.into()),
    };
    let version = object.meta.version.clone();
    let source_said = reported_blake3(&object.meta);
    let ahead = object.meta.size > ctx.plan.options.chunk_size.as_u64();
    let body = object.checked_body();
    let body = if ahead { read_ahead(body) } else { body };
    let state = Mutex::new((blake3::Hasher::new(), 0u64));
    // Why the body stopped short, when the job did (a cancel): the put sees a store error,
    // the copy returns this one.
    let stopped: Mutex<Option<Error>> = Mutex::new(None);
    let stopped = &stopped;
    let streaming = Streaming::enter(shared);
    // Under a fence (no `observed` generation) the copy neither parks at a pause nor waits
    // for the throttle: writers wait for as long as it runs, so it runs at full speed and
    // its bytes are paid to the throttle once the fence is lifted.
    let fenced = observed.is_none();
    let throttled =
        futures_util::stream::unfold((body, &state), move |(mut body, state)| async move {
            let boundary = if fenced {
                shared.cancel_point()
            } else {
                shared.chunk_boundary().await
            };
            if let Err(err) = boundary {
                *stopped.lock() = Some(err);
                let err = ferry_store::Error::Permanent {
                    op: ferry_store::Op::Put,
                    key: None,
                    source: "the copy was stopped by its job".into(),
                };
                return Some((Err(err), (body, state)));
            }
            let chunk: Bytes = match body.next().await? {
                Ok(chunk) => chunk,
                Err(err) => return Some((Err(err), (body, state))),
            };
            if !fenced {
                shared.throttle.acquire(chunk.len() as u64).await;
            }
            {
                let mut guard = state.lock();
                guard.0.update(&chunk);
                guard.1 += chunk.len() as u64;
            }
            shared
                .bytes_copied
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Some((Ok(chunk), (body, state)))
        });
    let put = ctx.target.put(key, Box::pin(throttled)).await;
    drop(streaming);
    if let Some(err) = stopped.lock().take() {
        return Err(err);
    }
    let target_said = reported_blake3(&put?);
    track.to(ObjectState::Copied);
    let (hash, bytes) = {
        let guard = state.lock();
        (guard.0.finalize(), guard.1)
    };
    match ctx.plan.options.verify {
        VerifyMode::None => {}
        VerifyMode::Size => {
            let size = ctx.target.head(key).await?.map(|m| m.size);
            if size != Some(bytes) {
                return Err(Error::VerifyMismatch {
                    key: key.clone(),
                    what: "size",
                });
            }
        }
        VerifyMode::Checksum => {
            // The target must hold what was copied (absent counts as a mismatch too), and what
            // was copied must be what the source holds: a read that silently changed a byte
            // on its way would otherwise be verified against itself, and the intact source
            // deleted (I1). Both are re-read at once, except where the store reported the
            // BLAKE3 of what it holds (`ObjectMeta::checksum`: the source with the version
            // read, the target with the put): its word stands in for a second read.
            let (on_target, on_source) = digests(ctx, key, bytes, target_said, source_said).await;
            if on_source?.is_none_or(|(size, source_hash)| size != bytes || source_hash != hash) {
                let table = &ctx.engine.table;
                if observed.is_some_and(|g| table.generation(key.as_str()) != Some(g)) {
                    return Ok(CopyResult::SourceWritten);
                }
                return Err(Error::VerifyMismatch {
                    key: key.clone(),
                    what: "source checksum",
                });
            }
            let (read, target_hash) = on_target?.ok_or_else(|| Error::VerifyMismatch {
                key: key.clone(),
                what: "target copy missing",
            })?;
            if read != bytes {
                return Err(Error::VerifyMismatch {
                    key: key.clone(),
                    what: "size",
                });
            }
            if target_hash != hash {
                return Err(Error::VerifyMismatch {
                    key: key.clone(),
                    what: "checksum",
                });
            }
        }
    }
    track.to(ObjectState::Verified);
    Ok(CopyResult::Copied(Copied {
        version,
        bytes,
        digest: *hash.as_bytes(),
    }))
}

/// The pipeline of one object, up to `Verified` (the commit flips it), or to its end for a
/// key flipped by an earlier run, or (after `max_flip_attempts` refused flips, `refused`
/// counting them) through a fenced flip of its own.
async fn process(ctx: &JobCtx, key: ObjectKey, refused: u32) -> Outcome {
    let track_key = key.clone();
    let track = Tracker::new(&ctx.shared, &track_key);
    if refused > 0 {
        // Copied again after a refused flip: the earlier copy is on the target.
        track.wrote_before();
    }
    let track = &track;
    let table = &ctx.engine.table;
    let (source, target) = (ctx.plan.source, ctx.plan.target);
    let job = &ctx.shared.id;
    let fail = |attempts, error| {
        // Only this job's entry: another job's is never touched (I8).
        table.remove_owned(track_key.as_str(), job);
        Outcome::Failed {
            key: track_key.clone(),
            attempts,
            error,
        }
    };
    // A key copied again after a refused flip has its entry already.
    let registered = if refused == 0 {
        table.register_for(&key, source, target, job).map(|_| ())
    } else {
        Ok(())
    };
    if let Err(err) = registered {
        match table.get(key.as_str()) {
            // Left by a run of this job that stopped mid-copy: start the move afresh.
            Some(info)
                if matches!(info.state, EntryState::Copying | EntryState::Fenced)
                    && info.owner.as_ref() == Some(job)
                    && info.copy_from == source
                    && info.target == target =>
            {
                table.remove_owned(key.as_str(), job);
                if let Err(err) = table.register_for(&key, source, target, job) {
                    return fail(1, err.into());
                }
            }
            // Flipped by a run of this job that stopped before recording it done: the target
            // holds the object and serves it; only the cleanup is left.
            Some(info)
                if info.state == EntryState::Forwarded
                    && info.owner.as_ref() == Some(job)
                    && info.target == target =>
            {
                ctx.shared.forwarded.fetch_add(1, Ordering::Relaxed);
                let journaled = ctx.committed.get(&key).copied();
                // On failure the entry stays: the target serves the key (I2).
                let failed = |error| Outcome::Failed {
                    key: key.clone(),
                    attempts: 1,
                    error,
                };
                let bytes = match ctx.target.head(&key).await {
                    Ok(Some(meta)) => meta.size,
                    // Deleted through the table after its journaled flip: nothing to move.
                    Ok(None) if journaled.is_some() => 0,
                    Ok(None) => {
                        return failed(ferry_store::Error::NotFound { key: key.clone() }.into());
                    }
                    Err(err) => return failed(err.into()),
                };
                track.to(ObjectState::Forwarded);
                let copied = journaled.map_or(CopiedFrom::Unknown, CopiedFrom::Digest);
                return cleanup(ctx, key.clone(), copied, bytes).await;
            }
            _ => return fail(1, err.into()),
        }
    }
    let max_flips = ctx.plan.options.max_flip_attempts;
    let mut refused = refused;
    while refused < max_flips {
        // The generation is read BEFORE the copy opens the source (I3).
        let Some(observed) = table.generation(key.as_str()) else {
            let cause = Conflict::NotFound;
            return fail(refused + 1, Error::FlipRefused { key, cause });
        };
        match copy_step(ctx, &key, track, &fail, Some(observed)).await {
            Ok(Some(copied)) => {
                return Outcome::Verified {
                    key,
                    observed,
                    copied,
                    refused,
                };
            }
            // Written during the copy: its flip would be refused; copy again, and count it
            // as refused, so a key written this often is fenced like any hot key.
            Ok(None) => refused += 1,
            Err(outcome) => return outcome,
        }
    }
    // A hot key: its flips were refused `max_flip_attempts` times. Fence its writers and
    // flip it here; never fenced while paused, never for longer than `fence_timeout`.
    if ctx.shared.chunk_boundary().await.is_err() {
        // Cancelled (the only error of a chunk boundary) before the fence.
        track.to(ObjectState::Pending);
        return rolled_back(ctx, key, true).await;
    }
    let fence_timeout = ctx.plan.options.fence_timeout;
    let fenced = tokio::time::timeout(
        fence_timeout,
        fenced_flip(ctx, &key, track, &fail, &mut refused),
    )
    .await;
    let copied = match fenced {
        Ok(Ok(copied)) => copied,
        Ok(Err(outcome)) => return outcome,
        Err(_elapsed) => {
            // Writers go back to the source (`fail` removes the entry, which lifts the
            // fence); an intent journaled meanwhile is void with the failure (I3).
            return fail(
                refused + 1,
                Error::HotKey {
                    key: key.clone(),
                    timeout: fence_timeout,
                },
            );
        }
    };
    // The fenced copy did not wait for the throttle: its bytes are paid now, unfenced.
    ctx.shared.throttle.acquire(copied.bytes).await;
    ctx.shared.forwarded.fetch_add(1, Ordering::Relaxed);
    track.to(ObjectState::Forwarded);
    cleanup(ctx, key, CopiedFrom::Version(copied.version), copied.bytes).await
}

/// The FORWARD step of a hot key, on its own: fences its writers, waits for the writes in
/// flight, copies once more (neither parked by a pause nor held back by the throttle, so the
/// fence lasts as long as the copy itself), syncs the target, journals the intent and flips.
/// The caller bounds it with the plan's `fence_timeout`.
async fn fenced_flip(
    ctx: &JobCtx,
    key: &ObjectKey,
    track: &Tracker<'_>,
    fail: &impl Fn(u32, Error) -> Outcome,
    refused: &mut u32,
) -> Result<Copied, Outcome> {
    let table = &ctx.engine.table;
    let max_flips = ctx.plan.options.max_flip_attempts;
    if let Err(err) = table.fence(key.as_str()) {
        return Err(fail(*refused, err.into()));
    }
    loop {
        let observed = match table.wait_drained(key.as_str()).await {
            Ok(generation) => generation,
            Err(err) => return Err(fail(*refused + 1, err.into())),
        };
        // Fenced: no write reaches the source, so a changed source is a verify error.
        let copied = match copy_step(ctx, key, track, fail, None).await? {
            Some(copied) => copied,
            None => unreachable!("only a copy given a generation reports a written source"),
        };
        if let Err((attempts, err)) = sync_with_retry(ctx).await {
            return Err(fail(attempts, err));
        }
        let intent = ProgressUpdate::FlipIntent {
            key: key.clone(),
            digest: copied.digest,
        };
        if let Err(err) = ctx.checkpointer.record_durable(intent).await {
            return Err(fail(*refused + 1, err.into()));
        }
        match table.try_flip(key.as_str(), observed) {
            Ok(()) => return Ok(copied),
            Err(
                cause @ (Conflict::WritesSinceCopyBegan { .. } | Conflict::WritesInFlight { .. }),
            ) => {
                *refused += 1;
                // The intent is void, durably, before the next copy writes the target.
                let dropped = ProgressUpdate::FlipDropped { key: key.clone() };
                if let Err(err) = ctx.checkpointer.record_durable(dropped).await {
                    return Err(fail(*refused, err.into()));
                }
                if *refused > max_flips + 2 {
                    let key = key.clone();
                    return Err(fail(*refused, Error::FlipRefused { key, cause }));
                }
            }
            Err(cause) => {
                let key = key.clone();
                return Err(fail(*refused + 1, Error::FlipRefused { key, cause }));
            }
        }
    }
}

/// COPY and VERIFY with retries; a vanished source, a spent retry policy or a cancel end the
/// object (the `Err` outcome).
async fn copy_step(
    ctx: &JobCtx,
    key: &ObjectKey,
    track: &Tracker<'_>,
    fail: &impl Fn(u32, Error) -> Outcome,
    observed: Option<u64>,
) -> Result<Option<Copied>, Outcome> {
    let table = &ctx.engine.table;
    let copied = match with_retry(ctx, "copy", || copy_once(ctx, key, track, observed)).await {
        Ok(CopyResult::Copied(copied)) => copied,
        Ok(CopyResult::SourceWritten) => {
            track.to(ObjectState::Pending);
            return Ok(None);
        }
        Ok(CopyResult::Vanished) => {
            table.remove_owned(key.as_str(), &ctx.shared.id);
            // Absent on both sides, never resurrected (I3). (A key an earlier run moved
            // and cleaned is journaled and does not come here.)
            return Err(
                match with_retry(ctx, "delete", || ctx.target.delete(key)).await {
                    Ok(_) => Outcome::Skipped { key: key.clone() },
                    Err((attempts, err)) => fail(attempts, err),
                },
            );
        }
        Err((attempts, err)) => {
            if ctx.shared.is_cancelled() {
                track.to(ObjectState::Pending);
                return Err(rolled_back(ctx, key.clone(), track.wrote()).await);
            }
            return Err(fail(attempts, err));
        }
    };
    if ctx.shared.is_cancelled() {
        track.to(ObjectState::Pending);
        return Err(rolled_back(ctx, key.clone(), true).await);
    }
    Ok(Some(copied))
}

/// Calls the engine's commit hook, if any, for `key`.
async fn commit_hook(ctx: &JobCtx, key: &ObjectKey) -> Result<()> {
    match &ctx.engine.hook {
        None => Ok(()),
        Some(hook) => (hook.0)(key, ctx.plan.target)
            .await
            .map_err(|source| Error::CommitHook {
                key: key.clone(),
                source,
            }),
    }
}

/// Rolls back the move of `key`, stopped by a cancel before its flip: its entry goes (reads
/// and writes stay on the source), and so does the copy this run wrote on the target
/// (`wrote`), so that nothing the job copied outlives it unaccounted (SPEC I8). A copy that
/// cannot be removed keeps its copy intent in the record.
async fn rolled_back(ctx: &JobCtx, key: ObjectKey, wrote: bool) -> Outcome {
    ctx.engine.table.remove_owned(key.as_str(), &ctx.shared.id);
    let removed = if ctx.shared.is_failing() {
        // A job stopping on an error may have lost its lease to another process moving the
        // same keys: it touches no store then, and its intents stay for the next run.
        false
    } else if !wrote {
        true
    } else {
        match ctx.target.delete(&key).await {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(key = %key.as_str(), error = %error_chain(&err), "the rolled-back copy could not be removed from the target");
                false
            }
        }
    };
    if removed {
        ctx.checkpointer
            .record(ProgressUpdate::CopyDropped { key: key.clone() });
    }
    ctx.shared.rolled_back.lock().push(key.clone());
    Outcome::RolledBack { key }
}

/// CLEANUP per the policy, first half: waits out the grace period; the rest (commit hook,
/// version re-check, delete) runs at the next commit, after the target sync
/// ([`finish_cleanup`]).
async fn cleanup(ctx: &JobCtx, key: ObjectKey, copied: CopiedFrom, bytes: u64) -> Outcome {
    let grace = match ctx.plan.options.cleanup {
        CleanupPolicy::Never => {
            return Outcome::Forwarded {
                key,
                copied,
                bytes,
                delete: false,
            };
        }
        CleanupPolicy::AfterVerify => None,
        CleanupPolicy::AfterGrace(grace) => Some(grace),
    };
    if let Some(grace) = grace {
        let mut cancelled = ctx.shared.cancelled.subscribe();
        let _waiting = GraceWait::enter(&ctx.shared);
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            _ = cancelled.wait_for(|c| *c) => {
                // Cancelled during the grace period: the flip is committed and writes may
                // have reached the target through it, so it is never left half-done (I8).
                // The commit finishes (the hook runs: the placement serves the target) and
                // the source is kept, its grace period cut short.
                ctx.shared.kept.lock().push(key.clone());
                return Outcome::Forwarded {
                    key,
                    copied,
                    bytes,
                    delete: false,
                };
            }
        }
    }
    Outcome::Forwarded {
        key,
        copied,
        bytes,
        delete: true,
    }
}

/// CLEANUP, second half, called by the commit once the target sync completed: calls the
/// commit hook, then (when the policy deletes) deletes the source only if it still has the
/// version that was copied (I1). A failing hook keeps the source and fails the object (it
/// stays forwarded). When an earlier run made the copy, the source is deleted only if it
/// hashes to the digest that run journaled, or (no journal entry) to the target's content;
/// else it is kept.
async fn finish_cleanup(
    ctx: &JobCtx,
    key: ObjectKey,
    copied: CopiedFrom,
    bytes: u64,
    delete: bool,
) -> Outcome {
    // The hook runs after the flip and the sync, before the source goes.
    if let Err(error) = commit_hook(ctx, &key).await {
        return Outcome::Failed {
            key,
            attempts: 1,
            error,
        };
    }
    if !delete {
        return Outcome::Done { key, bytes };
    }
    let head = match with_retry(ctx, "head", || ctx.source.head(&key)).await {
        Ok(head) => head,
        Err((attempts, error)) => {
            return Outcome::Failed {
                key,
                attempts,
                error,
            };
        }
    };
    let Some(meta) = head else {
        return Outcome::Done { key, bytes };
    };
    let same = match &copied {
        // The source changed since it was copied (a write outside the table): keep it.
        CopiedFrom::Version(version) => Ok(*version == meta.version),
        CopiedFrom::Digest(expected) => {
            with_retry(ctx, "compare", || async {
                let source = digest(&*ctx.source, &key).await?;
                Ok::<_, Error>(source.is_some_and(|(_, hash)| hash.as_bytes() == expected))
            })
            .await
        }
        CopiedFrom::Unknown => with_retry(ctx, "compare", || same_content(ctx, &key)).await,
    };
    match same {
        Ok(true) => {}
        // Not provably the same bytes: never delete what may be the only copy (I1).
        Ok(false) => {
            tracing::warn!(
                key = %key.as_str(),
                "source kept: it changed since it was copied (a write outside the forwarding table)"
            );
            ctx.left.lock().insert(key.clone());
            return Outcome::Done { key, bytes };
        }
        Err((attempts, error)) => {
            return Outcome::Failed {
                key,
                attempts,
                error,
            };
        }
    }
    match with_retry(ctx, "delete", || ctx.source.delete(&key)).await {
        Ok(_) => {
            ctx.shared.emit(&key, ObjectState::Cleaned);
            Outcome::Done { key, bytes }
        }
        Err((attempts, error)) => Outcome::Failed {
            key,
            attempts,
            error,
        },
    }
}

/// Whether the source and the target hold the same bytes under `key` (both streamed through
/// blake3, a chunk at a time). A side without the object is "not the same".
async fn same_content(ctx: &JobCtx, key: &ObjectKey) -> Result<bool> {
    let source = digest(&*ctx.source, key).await?;
    let target = digest(&*ctx.target, key).await?;
    Ok(source.is_some() && source == target)
}

/// `body`, read one chunk ahead by a task of its own: the store reads the next chunk while
/// the caller hashes and writes this one (memory: two chunks per copy, I7). The task stops
/// when the stream is dropped.
fn read_ahead(mut body: ByteStream) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        while let Some(chunk) = body.next().await {
            let end = chunk.is_err();
            if tx.send(chunk).await.is_err() || end {
                break;
            }
        }
    });
    let stop = AbortOnDrop(reader);
    Box::pin(futures_util::stream::unfold(
        (rx, stop),
        |(mut rx, stop)| async move { rx.recv().await.map(|chunk| (chunk, (rx, stop))) },
    ))
}

/// Aborts the task when dropped.
struct AbortOnDrop<T = ()>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// The task's output, `None` when the runtime cancelled it (shutting down); a panic in
    /// it is resumed here.
    async fn join(mut self) -> Option<T> {
        match (&mut self.0).await {
            Ok(output) => Some(output),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => None,
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The size and BLAKE3 a store reported for an object, if it reported a BLAKE3.
fn reported_blake3(meta: &ObjectMeta) -> Option<(u64, blake3::Hash)> {
    match meta.checksum {
        Some(Checksum::Blake3(hash)) => Some((meta.size, blake3::Hash::from_bytes(hash))),
        _ => None,
    }
}

/// Objects at least this large are re-read by two tasks at once at verify, so the two
/// sides hash on two cores (smaller ones gain less than a task costs).
const PARALLEL_VERIFY_BYTES: u64 = 8 << 20;

type Digest = Result<Option<(u64, blake3::Hash)>>;

/// [`digest_unless_said`] of the target and the source of `key` (of `bytes` bytes), at once.
async fn digests(
    ctx: &JobCtx,
    key: &ObjectKey,
    bytes: u64,
    target_said: Option<(u64, blake3::Hash)>,
    source_said: Option<(u64, blake3::Hash)>,
) -> (Digest, Digest) {
    if bytes < PARALLEL_VERIFY_BYTES || (target_said.is_some() && source_said.is_some()) {
        return tokio::join!(
            digest_unless_said(&*ctx.target, key, target_said),
            digest_unless_said(&*ctx.source, key, source_said)
        );
    }
    let spawn = |store: &Arc<dyn Store>, said| {
        let (store, key) = (Arc::clone(store), key.clone());
        AbortOnDrop::<Digest>(tokio::spawn(async move {
            digest_unless_said(&*store, &key, said).await
        }))
    };
    let (target, source) = (
        spawn(&ctx.target, target_said),
        spawn(&ctx.source, source_said),
    );
    let gone = || -> Digest {
        Err(Error::RunnerGone {
            job: ctx.shared.id.clone(),
        })
    };
    let (target, source) = tokio::join!(target.join(), source.join());
    (target.unwrap_or_else(gone), source.unwrap_or_else(gone))
}

/// `said` when the store reported it, else [`digest`].
async fn digest_unless_said(
    store: &dyn Store,
    key: &ObjectKey,
    said: Option<(u64, blake3::Hash)>,
) -> Result<Option<(u64, blake3::Hash)>> {
    match said {
        Some(said) => Ok(Some(said)),
        // Boxed: its hasher and stream would otherwise take room in every object's task.
        None => Box::pin(digest(store, key)).await,
    }
}

/// The size and blake3 hash of `key` on `store`, streamed a chunk at a time (I7); `None` when
/// the store has no such object. A body shorter or longer than its metadata is an error.
async fn digest(store: &dyn Store, key: &ObjectKey) -> Result<Option<(u64, blake3::Hash)>> {
    let object = match store.get(key).await {
        Ok(object) => object,
        Err(err) if err.is_not_found() => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    // Objects of a chunk or two gain nothing from reading ahead.
    let ahead = object.meta.size > 2 << 20;
    let mut body = object.checked_body();
    if ahead {
        body = read_ahead(body);
    }
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(Some((size, hasher.finalize())))
}

/// On resume, before the runner starts: settles the record's flip journal (SPEC I2, I3).
///
/// A committed entry was flipped: it is registered and flipped to the target again. An
/// intent (journaled, then maybe flipped) is settled by what the stores hold against the
/// digest of the copy it announced. The copy was synced before the intent was saved, the
/// engine never writes a journaled key's target while its intent stands, and after a flip
/// no write reaches the source, so:
/// - the target holds other bytes, or nothing: only a client write or delete routed through
///   the flip does that, so the flip was made and the target serves the key;
/// - the target holds the copy and so does the source: both serve the same bytes; the
///   target does, as if flipped;
/// - the target holds the copy and the source changed: the flip was refused (a write since
///   the copy), the source serves the key;
/// - the target holds the copy and the source is gone: the flip was refused by a delete:
///   the copy is deleted too, absent on both sides, never resurrected.
///
/// Returns the changes to record (every intent becomes committed or dropped) and the
/// committed flips with their digests.
pub(crate) async fn resolve_flips(
    table: &ferry_forwarding::Table,
    plan: &MigrationPlan,
    source: &dyn Store,
    target: &dyn Store,
    journal: &BTreeMap<ObjectKey, FlipRecord>,
) -> Result<(Vec<ProgressUpdate>, BTreeMap<ObjectKey, [u8; 32]>)> {
    let mut updates = Vec::new();
    let mut committed = BTreeMap::new();
    for (key, flip) in journal {
        let to_target = if flip.committed {
            true
        } else {
            let copy = |found: Option<(u64, blake3::Hash)>| {
                found.map(|(_, hash)| *hash.as_bytes() == flip.digest)
            };
            match copy(digest(target, key).await?) {
                // Changed or deleted through the flip.
                Some(false) | None => true,
                Some(true) => match copy(digest(source, key).await?) {
                    Some(same) => same,
                    None => {
                        target.delete(key).await?;
                        false
                    }
                },
            }
        };
        if to_target {
            forward(table, plan, key);
            committed.insert(key.clone(), flip.digest);
            updates.push(ProgressUpdate::FlipCommitted { key: key.clone() });
        } else {
            updates.push(ProgressUpdate::FlipDropped { key: key.clone() });
        }
    }
    Ok((updates, committed))
}

/// Recorded done, and not as failed.
/// Whether `key` was moved by the job as far as its record tells: done, not failed, and not
/// a key the target held before the job that the job never copied over.
fn done_not_failed(progress: &Progress, key: &ObjectKey) -> bool {
    progress.is_done(key)
        && !progress.failed.contains_key(key)
        && !progress.preexisting.contains(key)
}

/// Whether the record says nothing happened yet: no object done, failed, flipped or being
/// copied. The target then holds nothing of the job's.
pub(crate) fn untouched(progress: &Progress) -> bool {
    progress.watermark.is_none()
        && progress.done_above.is_empty()
        && progress.done_objects == 0
        && progress.failed.is_empty()
        && progress.flips.is_empty()
        && progress.copying.is_empty()
}

/// The keys of the plan's selection that `target` holds: before the job touched it, these
/// are not the job's (see `Progress::preexisting`).
pub(crate) async fn preexisting(
    plan: &MigrationPlan,
    target: &dyn Store,
) -> Result<std::collections::BTreeSet<ObjectKey>> {
    let mut found = std::collections::BTreeSet::new();
    match listed_range(&plan.objects) {
        Some(range) => {
            let mut on_target = list_range(target, &range, None);
            while let Some(key) = on_target.try_next().await? {
                found.insert(key);
            }
        }
        None => {
            if let ObjectSelection::Keys(keys) = &plan.objects {
                let mut heads = futures_util::stream::iter(keys)
                    .map(
                        |key| async move { Ok::<_, Error>(target.head(key).await?.map(|m| m.key)) },
                    )
                    .buffered(16);
                while let Some(key) = heads.try_next().await? {
                    found.extend(key);
                }
            }
        }
    }
    Ok(found)
}

/// Registers `key` and flips it to the plan's target; whether it was (a key the table
/// already has an entry for is left as it is).
pub(crate) fn forward(
    table: &ferry_forwarding::Table,
    plan: &MigrationPlan,
    key: &ObjectKey,
) -> bool {
    let Some(job) = plan.id.as_ref() else {
        return false;
    };
    table
        .register_for(key, plan.source, plan.target, job)
        .is_ok()
        && table
            .generation(key.as_str())
            .is_some_and(|generation| table.try_flip(key.as_str(), generation).is_ok())
}

/// On resume, before the runner starts: reloads into the forwarding table the objects a run
/// that stopped had moved and recorded done, so that reads go on being served by the target
/// after a restart (I2): a key recorded done that the target holds was flipped (skipped keys
/// are absent from the target). Keys are found in the target's key-ordered listing (prefix
/// and range plans; a range plan lists only its range) or with `head` (explicit keys), a key
/// at a time; a key the table already has an entry for is left as it is. Keys not recorded
/// done are settled by the flip journal ([`resolve_flips`]). Returns how many entries were
/// loaded.
///
/// A key recorded failed is not loaded even under the watermark (which failed keys pass):
/// its copy on the target, if any, was never flipped, and may be stale.
pub(crate) async fn reload_forwarded(
    table: &ferry_forwarding::Table,
    plan: &MigrationPlan,
    target: &dyn Store,
    progress: &Progress,
) -> Result<u64> {
    let mut loaded = 0;
    let Some(range) = listed_range(&plan.objects) else {
        if let ObjectSelection::Keys(keys) = &plan.objects {
            for key in keys {
                if done_not_failed(progress, key)
                    && target.head(key).await?.is_some()
                    && forward(table, plan, key)
                {
                    loaded += 1;
                }
            }
        }
        return Ok(loaded);
    };
    // Only the keys of the range: a key of the target outside it is another job's.
    let mut on_target = list_range(target, &range, None);
    while let Some(key) = on_target.try_next().await? {
        if done_not_failed(progress, &key) && forward(table, plan, &key) {
            loaded += 1;
        }
    }
    Ok(loaded)
}
