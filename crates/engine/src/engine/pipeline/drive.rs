//! The drive loop: dispatch within the watermark's window, commits in batches behind one target
//! sync (each on a task of its own, while dispatch goes on), pause, cancel, shutdown and the
//! re-listings of a drain.

use std::sync::Arc;

use ferry_checkpoint::{Checkpointer, Progress, ProgressUpdate};
use ferry_types::{CleanupPolicy, JobStatus, ObjectKey, ObjectSelection};
use futures_util::StreamExt;
use tokio::task::JoinSet;

use crate::error::{Error, Result};

use super::super::job::JobShared;
use super::cleanup::cleanup;
use super::commit::{Committed, commit_synced};
use super::listing::{KeyStream, Listed, key_stream, listed_range, sized_range};
use super::object::process;
use super::retry::{error_chain, jitter_unit, sync_with_retry};
use super::{JobCtx, Outcome, Tries};

/// Objects waiting out a grace period hold no copy slot, but each is a parked task: at most
/// this many times `concurrency` of them wait at once, which bounds memory (I7) and the
/// done set above the watermark.
pub(super) const GRACE_SLOTS: usize = 64;

/// How far, in keys per copy slot, dispatch may run past an object that holds the watermark.
/// The record's done set above the watermark then holds at most about
/// `concurrency × LAG_PER_SLOT` keys (plus those waiting out a grace period), however long
/// one object takes, and a crash still re-does only the objects in flight (I4).
pub(super) const LAG_PER_SLOT: usize = 16;

pub(super) async fn drive(
    ctx: &Arc<JobCtx>,
    checkpointer: &Checkpointer,
    progress: &Progress,
) -> Result<()> {
    let shared = &ctx.shared;
    let concurrency = ctx.plan.options.concurrency.get();
    let mut grace_rx = shared.grace_waiting.subscribe();
    let interval = ctx.plan.options.checkpoint;
    let mut passes = Passes::new(ctx);
    let mut keys = passes.stream(ctx, progress, None);
    // The last key the stream gave, and the listing's transient failures in a row.
    let mut last_key: Option<ObjectKey> = None;
    let mut list_attempts = 0u32;
    let mut set: JoinSet<Ended> = JoinSet::new();
    let mut commits = Commits {
        ctx,
        checkpointer,
        pending: Vec::new(),
        running: JoinSet::new(),
        order: Order::default(),
        tick_missed: false,
    };
    let mut exhausted = false;
    // Keys listed and not yet dispatched, with the sequence number of their copy intent;
    // whether the current pass's listing ended.
    let mut ahead: std::collections::VecDeque<(Listed, u64)> = Default::default();
    // Objects that fit in one chunk run several to a task (`batch` keys at most).
    let batch = batch_len(concurrency);
    let small = ctx.plan.options.chunk_size.as_u64();
    // Four times the watermark's window: a save is asked for when a quarter of it is left
    // covered. (Every save writes the intents: a longer lookahead makes each save dearer; a
    // lookahead of 8,000 keys halved the MemStore → MemStore throughput. Since the intents
    // are a hash set, 1,024 keys does better than 512: 0.282 → 0.275 s per 100k objects.)
    let lookahead = 4 * concurrency * LAG_PER_SLOT;
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
        // may have left on the target is known). Saves are asked for ahead of need. The
        // intents of one fill are recorded together, and a fill waits until half the
        // lookahead is dispatched: one record of hundreds of intents rather than one of a
        // few at every turn of the loop (0.302 → 0.287 s per 100k objects, MemStore →
        // MemStore).
        let mut listed = Vec::new();
        let fill = ahead.len() <= lookahead / 2;
        while fill
            && !paused
            && !stopping
            && !exhausted
            && !listing_over
            && !passes.listed
            && ahead.len() + listed.len() < lookahead
        {
            match keys.next().await {
                Some(Ok(next)) => {
                    list_attempts = 0;
                    last_key = Some(next.key.clone());
                    listed.push(next);
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
        if !listed.is_empty() {
            let seq =
                checkpointer.record_many(listed.iter().map(|next| ProgressUpdate::CopyIntent {
                    key: next.key.clone(),
                }));
            ahead.extend(listed.into_iter().map(|next| (next, seq)));
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
        // Keys of objects known to fit in one chunk, gathered for one task.
        let mut small_keys = Vec::new();
        while ready > 0
            && !paused
            && !stopping
            && commits.order.flying.len() + small_keys.len() < concurrency + waiting
            && !commits.order.lagging(window)
        {
            let Some((next, _)) = ahead.pop_front() else {
                break;
            };
            ready -= 1;
            dispatched += 1;
            let key = next.key;
            failed_again += u64::from(ctx.failed_before.contains_key(&key));
            commits.order.dispatched.push_back(key.clone());
            if next.size.is_some_and(|size| size <= small) && batch > 1 {
                small_keys.push(key);
                if small_keys.len() == batch {
                    let keys = std::mem::take(&mut small_keys);
                    spawn_batch(ctx, &mut set, &mut commits.order, keys);
                }
            } else {
                spawn_process(ctx, &mut set, &mut commits.order, key, Tries::default());
            }
        }
        spawn_batch(ctx, &mut set, &mut commits.order, small_keys);
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
                // The tasks that ended meanwhile are taken too (up to a slot's worth): one
                // turn of the loop per object would cost more than the objects.
                let ended = std::iter::once(joined)
                    .chain(std::iter::from_fn(|| set.try_join_next()))
                    .take(concurrency);
                for result in ended {
                    match result {
                        Ok(ended) => {
                            for outcome in ended.into_outcomes() {
                                commits.order.land(shared, outcome.key());
                                commits.pending.push(outcome);
                            }
                        }
                        Err(_) => {
                            // A per-object task panicked: stop the job; its key stays
                            // unfinished.
                            fatal.get_or_insert(Error::RunnerGone { job: shared.id.clone() });
                            shared.stop_failing();
                        }
                    }
                }
                if commits.pending.len() as u64 >= interval.objects {
                    commits.start();
                }
            }
            Some(ended) = commits.running.join_next() => {
                if let Err(err) = commits.ended(ended, &mut set) {
                    fatal.get_or_insert(err);
                    shared.stop_failing();
                }
            }
            _ = ticker.tick() => commits.tick(),
            _ = saved_rx.changed(), if !ahead.is_empty() => {}
            _ = paused_rx.changed() => {}
            _ = cancelled_rx.changed() => {}
            _ = grace_rx.changed() => {}
        }
    }
    // Keys listed but never dispatched (a cancel or an error stopped the job): no copy.
    for (next, _) in ahead {
        checkpointer.record(ProgressUpdate::CopyDropped { key: next.key });
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
pub(super) async fn shut_down(
    commits: &mut Commits<'_>,
    set: &mut JoinSet<Ended>,
    ahead: std::collections::VecDeque<(Listed, u64)>,
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
            .is_some_and(|info| info.state.is_moving());
        if moving {
            table.remove_owned(key.as_str(), &shared.id);
        }
    }
    for (next, _) in ahead {
        ctx.checkpointer
            .record(ProgressUpdate::CopyDropped { key: next.key });
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
pub(super) struct Passes {
    /// Whether later passes are listed at all: listed selections whose cleanup deletes.
    pub(super) relist: bool,
    /// Re-listings made so far.
    pub(super) made: u32,
    /// The current pass is listed to its end.
    pub(super) listed: bool,
    /// `dispatched` when the current pass began.
    pub(super) dispatched_before: u64,
}

/// Re-listings after the first pass, at most: writers that keep creating keys in the
/// selection faster than the job moves them would otherwise keep it running for ever.
pub(super) const MAX_RELISTS: u32 = 8;

impl Passes {
    pub(super) fn new(ctx: &JobCtx) -> Passes {
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
    pub(super) fn stream(
        &self,
        ctx: &JobCtx,
        progress: &Progress,
        after: Option<&ObjectKey>,
    ) -> KeyStream {
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
        sized_range(ctx, &range, after, move |key| !left.lock().contains(key))
    }

    /// The pass settled: whether to list again (the pass moved something, and re-listings
    /// are left). `dispatched`: keys given to the pipeline by this run so far.
    pub(super) fn next(&mut self, dispatched: u64) -> bool {
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
    /// given again once); and its bytes, as listed.
    pub(super) fn total(&self, ctx: &JobCtx, progress: &Progress, given: u64) {
        // Explicit keys and retry runs know their total from the start.
        if matches!(ctx.plan.objects, ObjectSelection::Keys(_)) || ctx.retry_keys.is_some() {
            return;
        }
        let before = progress.done_objects + ctx.failed_before.len() as u64;
        let bytes = ctx.shared.listed_total_bytes();
        ctx.shared.publish(|s| {
            s.total_objects = Some(before + given);
            s.total_bytes = Some(bytes);
        });
    }
}

/// Starts the pipeline of `key` on the job's task set.
fn spawn_process(
    ctx: &Arc<JobCtx>,
    set: &mut JoinSet<Ended>,
    order: &mut Order,
    key: ObjectKey,
    tries: Tries,
) {
    spawn_object(ctx, set, order, key, move |ctx, key| async move {
        process(&ctx, key, tries).await
    });
}

/// Objects that fit in one chunk are run this many to a task at most: one spawn and one join
/// for several objects, whose own work (a few store calls from memory, for a fast store) may
/// cost less than a task's. Each object of a task still runs as its own future (a slow one
/// does not hold the others' progress back), but the task ends with its last one, so the
/// slots of the others stay taken until then: for about one chunk's time, longer when that
/// object's copy is retried after a transient error. Larger objects get a task each.
const MAX_BATCH: usize = 8;

/// How many small objects one task runs: at most [`MAX_BATCH`] and half the job's
/// concurrency, so that at least two tasks share the objects in flight (the runtime's
/// workers share out tasks, not the objects within one).
pub(super) fn batch_len(concurrency: usize) -> usize {
    (concurrency / 2).clamp(1, MAX_BATCH)
}

/// What one task of the job's task set ended with: the outcome of its object, or of each of
/// its objects.
pub(super) enum Ended {
    One(Outcome),
    Batch(Vec<Outcome>),
}

impl Ended {
    fn into_outcomes(self) -> impl Iterator<Item = Outcome> {
        let (one, batch) = match self {
            Ended::One(outcome) => (Some(outcome), Vec::new()),
            Ended::Batch(outcomes) => (None, outcomes),
        };
        one.into_iter().chain(batch)
    }
}

/// Starts the pipelines of `keys` (objects that fit in one chunk) on one task of the job's
/// task set, each as its own future; one key gets a task of its own.
fn spawn_batch(
    ctx: &Arc<JobCtx>,
    set: &mut JoinSet<Ended>,
    order: &mut Order,
    mut keys: Vec<ObjectKey>,
) {
    if keys.len() <= 1 {
        if let Some(key) = keys.pop() {
            spawn_process(ctx, set, order, key, Tries::default());
        }
        return;
    }
    for key in &keys {
        order.take_off(&ctx.shared, key);
    }
    let ctx = Arc::clone(ctx);
    set.spawn(async move {
        let objects = keys.into_iter().map(|key| {
            let span = tracing::debug_span!("object", key = %key.as_str());
            tracing::Instrument::instrument(process(&ctx, key, Tries::default()), span)
        });
        Ended::Batch(futures_util::future::join_all(objects).await)
    });
}

/// Starts `task` (the pipeline of `key`, or its wait for the grace period) on the job's task
/// set: the key counts as in flight until the drive loop takes its outcome.
fn spawn_object<F>(
    ctx: &Arc<JobCtx>,
    set: &mut JoinSet<Ended>,
    order: &mut Order,
    key: ObjectKey,
    task: impl FnOnce(Arc<JobCtx>, ObjectKey) -> F,
) where
    F: std::future::Future<Output = Outcome> + Send + 'static,
{
    order.take_off(&ctx.shared, &key);
    let span = tracing::debug_span!("object", key = %key.as_str());
    let task = task(Arc::clone(ctx), key);
    set.spawn(tracing::Instrument::instrument(
        async move { Ended::One(task.await) },
        span,
    ));
}

/// The commits of a job's finished objects: the batch being gathered, the one under way (its
/// target sync, then [`commit_synced`], on a task of its own while the pipeline goes on
/// copying), and the dispatch order the watermark follows. One commit at a time, batches in
/// dispatch order.
pub(super) struct Commits<'a> {
    pub(super) ctx: &'a Arc<JobCtx>,
    pub(super) checkpointer: &'a Checkpointer,
    /// Finished objects not yet in a commit.
    pub(super) pending: Vec<Outcome>,
    /// The commit under way, if any. Its task ends with the runner (a `JoinSet` aborts its
    /// tasks when dropped), as after a crash.
    pub(super) running: JoinSet<Result<Committed>>,
    pub(super) order: Order,
    /// The ticker fired while a commit was under way: the commit after it is due at once.
    pub(super) tick_missed: bool,
}

impl Order {
    /// `key`'s task is on the task set: the key counts as in flight (here and in the job's
    /// gauge) until [`Order::land`].
    fn take_off(&mut self, shared: &JobShared, key: &ObjectKey) {
        self.flying.insert(key.clone());
        shared.enter_flight();
    }

    /// The drive loop took `key`'s outcome: no longer in flight.
    fn land(&mut self, shared: &JobShared, key: &ObjectKey) {
        self.flying.remove(key);
        shared.leave_flight();
    }

    /// Whether dispatch must wait: `window` keys or more are past the watermark and the
    /// oldest of them is still on the task set, so the keys finishing after it would pile up
    /// in the record's done set above the watermark. (When the oldest has finished, the
    /// next commit moves the watermark past it: dispatch goes on while a commit syncs.)
    pub(super) fn lagging(&self, window: usize) -> bool {
        self.dispatched.len() >= window
            && self
                .dispatched
                .front()
                .is_some_and(|oldest| self.flying.contains(oldest))
    }
}

impl Commits<'_> {
    /// Starts committing `pending` on a task of its own, unless a commit is under way (its
    /// end starts the next one when due): the target is synced first when the batch holds
    /// copies to flip or flips to clean up.
    pub(super) fn start(&mut self) {
        if !self.running.is_empty() || self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let ctx = Arc::clone(self.ctx);
        self.running
            .spawn(tracing::Instrument::in_current_span(async move {
                if needs_sync(&batch) {
                    sync_target(&ctx).await?;
                }
                commit_synced(&ctx, batch).await
            }));
    }

    /// The checkpoint interval's tick: a commit now, or right after the one under way.
    pub(super) fn tick(&mut self) {
        self.tick_missed = !self.running.is_empty();
        self.start();
    }

    /// The commit under way ended (`ended`): applies what it left, then starts the next
    /// commit if one is due (a batch finished meanwhile, or a tick passed).
    pub(super) fn ended(
        &mut self,
        ended: std::result::Result<Result<Committed>, tokio::task::JoinError>,
        set: &mut JoinSet<Ended>,
    ) -> Result<()> {
        self.apply(ended, set)?;
        let due = std::mem::take(&mut self.tick_missed)
            || self.pending.len() as u64 >= self.ctx.plan.options.checkpoint.objects;
        if due {
            self.start();
        }
        Ok(())
    }

    /// Commits everything finished: the batch under way, then `pending`, in that order (the
    /// watermark moves in dispatch order).
    pub(super) async fn all(&mut self, set: &mut JoinSet<Ended>) -> Result<()> {
        if let Some(ended) = self.running.join_next().await {
            self.apply(ended, set)?;
        }
        self.start();
        match self.running.join_next().await {
            Some(ended) => self.apply(ended, set),
            None => Ok(()),
        }
    }

    /// Applies what a commit left: the keys it recorded finished move the watermark; refused
    /// flips are copied again and grace periods waited out, on the task set.
    fn apply(
        &mut self,
        ended: std::result::Result<Result<Committed>, tokio::task::JoinError>,
        set: &mut JoinSet<Ended>,
    ) -> Result<()> {
        let ctx = self.ctx;
        let committed = ended.map_err(|_| Error::RunnerGone {
            job: ctx.shared.id.clone(),
        })??;
        let order = &mut self.order;
        order.finished.extend(committed.finished);
        // Every key up to the watermark is recorded finished, so the record's done set
        // stays bounded by what is in flight (keys are dispatched in key order).
        let mut watermark = None;
        while let Some(front) = order.dispatched.front() {
            if !order.finished.remove(front) {
                break;
            }
            watermark = order.dispatched.pop_front();
        }
        // A retry run's keys are not a prefix of the job's key order: the watermark stays.
        if let Some(key) = watermark.filter(|_| ctx.retry_keys.is_none()) {
            self.checkpointer.record(ProgressUpdate::Watermark(key));
        }
        for (key, tries) in committed.again {
            spawn_process(ctx, set, order, key, tries);
        }
        for (key, from, bytes) in committed.grace {
            spawn_object(ctx, set, order, key, move |ctx, key| async move {
                cleanup(&ctx, key, from, bytes).await
            });
        }
        Ok(())
    }
}

/// Whether committing `batch` needs the target synced first: it holds copies to flip, or
/// flips made whose cleanups follow.
pub(super) fn needs_sync(batch: &[Outcome]) -> bool {
    batch.iter().any(|o| {
        matches!(
            o,
            Outcome::Done { .. } | Outcome::Forwarded { .. } | Outcome::Verified { .. }
        )
    })
}

/// The target's sync barrier, retried per the plan.
pub(super) async fn sync_target(ctx: &JobCtx) -> Result<()> {
    sync_with_retry(ctx).await.map_err(|(_, err)| err)
}

/// The keys dispatched in key order and not yet under the watermark, and which of them are
/// recorded finished.
#[derive(Default)]
pub(super) struct Order {
    pub(super) dispatched: std::collections::VecDeque<ObjectKey>,
    /// Keys whose task is on the task set (copying, or waiting out a grace period).
    pub(super) flying: std::collections::HashSet<ObjectKey, ferry_checkpoint::KeyHasher>,
    pub(super) finished: std::collections::HashSet<ObjectKey, ferry_checkpoint::KeyHasher>,
}
