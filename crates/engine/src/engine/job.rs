//! [`JobHandle`] and the state a job's runner shares with it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ferry_checkpoint::{Checkpointer, Progress};
use ferry_throttle::Throttle;
use ferry_throttle::adaptive::AdaptiveThrottle;
use ferry_types::{
    JobId, JobSnapshot, JobStatus, MigrationPlan, ObjectKey, ObjectState, PlanOptions, Rate,
    RateSetting,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use super::metrics::JobMetrics;
use super::recent::{Rates, Recent};
use crate::error::{Error, Result};

/// What [`JobHandle::cancel`] rolled back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CancelReport {
    /// Keys whose copy was interrupted: their forwarding entry was removed, so they are
    /// served from the source as before the job.
    pub rolled_back: Vec<ObjectKey>,
    /// Objects that were already forwarded when the job was cancelled; they stay forwarded.
    pub forwarded: u64,
    /// Forwarded objects whose grace period the cancel cut short: their commit finished (the
    /// commit hook ran, the target serves them) and their source copy was kept, not deleted
    /// before its grace period ended.
    pub sources_kept: Vec<ObjectKey>,
    /// The job's snapshot at the end.
    pub snapshot: Option<JobSnapshot>,
}

/// One per-object transition of a job, sent on [`JobHandle::events`] (for audit logs).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectEvent {
    /// The object.
    pub key: ObjectKey,
    /// The state it moved to.
    pub state: ObjectState,
    /// When, as the time since the job's runner started (this run).
    pub at: std::time::Duration,
}

/// How many events a receiver may fall behind before it lags (loses the oldest).
const EVENTS_CAPACITY: usize = 4096;

/// A count that tasks raise and lower and others wait to see at zero: cheaper on the hot
/// path than a `watch` (two atomic operations, a wake-up only on reaching zero).
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    count: AtomicUsize,
    zero: Notify,
}

impl Gauge {
    pub(crate) fn add(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn sub(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.zero.notify_waiters();
        }
    }

    /// Returns once the count is zero.
    pub(crate) async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drop to zero after it still wakes us.
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
pub(crate) struct JobShared {
    pub(crate) id: JobId,
    pub(crate) throttle: Throttle,
    /// The job's throttle behind its adaptive controller (enabled with `--rate auto`).
    pub(crate) governor: Arc<AdaptiveThrottle>,
    pub(crate) paused: watch::Sender<bool>,
    pub(crate) cancelled: watch::Sender<bool>,
    /// [`Engine::shutdown`](crate::Engine::shutdown) asked the job to stop where it is.
    pub(crate) shutdown: watch::Sender<bool>,
    /// The runner ended (or was dropped).
    pub(crate) ended: watch::Sender<bool>,
    /// Copies currently moving chunks (not parked): `pause` waits for zero.
    pub(crate) streaming: Gauge,
    /// Objects waiting out their grace period before cleanup: they hold no copy slot.
    pub(crate) grace_waiting: watch::Sender<usize>,
    pub(crate) snapshot: watch::Sender<JobSnapshot>,
    pub(crate) bytes_copied: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) rolled_back: Mutex<Vec<ObjectKey>>,
    /// Forwarded keys whose grace period a cancel cut short: committed, source kept.
    pub(crate) kept: Mutex<Vec<ObjectKey>>,
    /// The job is stopping because of an error, not a cancel.
    pub(crate) failing: std::sync::atomic::AtomicBool,
    pub(crate) forwarded: AtomicU64,
    pub(crate) started: tokio::time::Instant,
    pub(crate) events: broadcast::Sender<ObjectEvent>,
    /// Someone subscribed to `events` (it stays set): until then an event is not sent, and
    /// the channel's lock (which `receiver_count` takes) is not taken for it.
    listened: std::sync::atomic::AtomicBool,
    /// The job's metric handles (label `job`).
    pub(crate) metrics: JobMetrics,
    /// Objects recorded done before this run (restored from the checkpoint): not this
    /// run's work, so not in its rates.
    done_before: u64,
    /// Bytes done before this run, for the total of a listed job.
    bytes_before: u64,
    /// Sizes of the keys this run's listings gave the pipeline (as listed).
    pub(crate) listed_bytes: AtomicU64,
    /// This run's rates over the last few seconds.
    recent: Mutex<Recent>,
    /// The plan's options as in force (a rate set since the start included), and the
    /// checkpointer that saves them with the job's record. Weak: a crashed runner's
    /// checkpointer must go with it, not live on in a handle.
    options: Mutex<PlanOptions>,
    checkpointer: Weak<Checkpointer>,
}

impl JobShared {
    pub(crate) fn new(
        plan: &MigrationPlan,
        id: JobId,
        throttle: Throttle,
        total_objects: Option<u64>,
        progress: &Progress,
        checkpointer: &Arc<Checkpointer>,
    ) -> Arc<JobShared> {
        let started = tokio::time::Instant::now();
        let mut snapshot = JobSnapshot::new(id.clone(), plan.source, plan.target);
        snapshot.status = JobStatus::Running;
        snapshot.total_objects = total_objects;
        snapshot.done_objects = progress.done_objects;
        snapshot.done_bytes = progress.done_bytes;
        snapshot.skipped_objects = progress.skipped_objects;
        snapshot.failed_objects = progress.failed.len() as u64;
        snapshot.changed_objects = progress.changed_objects();
        let governor = super::adaptive::governor(&plan.options, throttle.clone());
        snapshot.effective_rate = throttle.effective_rate();
        snapshot.adaptive_rate = governor.is_enabled();
        let metrics = JobMetrics::new(&id);
        metrics.rates(snapshot.effective_rate, 0);
        Arc::new(JobShared {
            id,
            throttle,
            governor,
            paused: watch::Sender::new(false),
            cancelled: watch::Sender::new(false),
            shutdown: watch::Sender::new(false),
            ended: watch::Sender::new(false),
            streaming: Gauge::default(),
            grace_waiting: watch::Sender::new(0),
            snapshot: watch::Sender::new(snapshot),
            bytes_copied: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            rolled_back: Mutex::new(Vec::new()),
            kept: Mutex::new(Vec::new()),
            failing: std::sync::atomic::AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            started,
            events: broadcast::Sender::new(EVENTS_CAPACITY),
            listened: std::sync::atomic::AtomicBool::new(false),
            metrics,
            done_before: progress.done_objects,
            bytes_before: progress.done_bytes,
            listed_bytes: AtomicU64::new(0),
            recent: Mutex::new(Recent::new(started)),
            options: Mutex::new(plan.options.clone()),
            checkpointer: Arc::downgrade(checkpointer),
        })
    }

    /// Changes the job's rate at once and has it saved in the job's record (soon, not
    /// waited for), so that a recovered run goes on at it.
    pub(crate) fn set_rate(&self, setting: RateSetting) {
        let options = {
            let mut options = self.options.lock();
            options.set_rate_setting(setting);
            match (setting, &options.adaptive) {
                (RateSetting::Auto { ceiling }, Some(adaptive)) => {
                    let start = self.throttle.rate();
                    self.governor
                        .enable(super::adaptive::config(adaptive, ceiling, Some(start)));
                }
                _ => self.governor.set_fixed(setting.rate()),
            }
            options.clone()
        };
        if let Some(checkpointer) = self.checkpointer.upgrade() {
            checkpointer.set_options(options);
        }
        self.publish(|_| {});
    }

    /// The bytes of a listed job once its listing ended: done before this run, and those
    /// this run was given. (Failed objects of an earlier run that are not listed again are
    /// left out: their sizes are not recorded; neither are they in `done_bytes`.)
    pub(crate) fn listed_total_bytes(&self) -> u64 {
        self.bytes_before
            .saturating_add(self.listed_bytes.load(Ordering::Relaxed))
    }

    /// Counts `bytes` streamed by a copy (or read by a check).
    pub(crate) fn copied_bytes(&self, bytes: u64) {
        self.bytes_copied.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.bytes_copied.increment(bytes);
    }

    /// An object starts being worked on.
    pub(crate) fn enter_flight(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.increment(1.0);
    }

    /// An object is no longer worked on.
    pub(crate) fn leave_flight(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_flight.decrement(1.0);
    }

    /// Sends an event, if anyone listens, and counts the move in the job's metrics.
    pub(crate) fn emit(&self, key: &ObjectKey, state: ObjectState) {
        tracing::debug!(key = %key.as_str(), state = ?state, "object transition");
        self.metrics.moved(&state);
        if self.listened.load(Ordering::SeqCst) && self.events.receiver_count() > 0 {
            let _ = self.events.send(ObjectEvent {
                key: key.clone(),
                state,
                at: self.started.elapsed(),
            });
        }
    }

    /// A receiver of the job's events from now on.
    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<ObjectEvent> {
        // Set first: an event that found it unset was sent before the subscription.
        self.listened.store(true, Ordering::SeqCst);
        self.events.subscribe()
    }

    /// The job's state now, with the live counters (and, while it runs, its rates and ETA
    /// as of now).
    pub(crate) fn snapshot(&self) -> JobSnapshot {
        let mut snap = self.snapshot.borrow().clone();
        snap.bytes_copied = self.bytes_copied.load(Ordering::Relaxed);
        snap.in_flight = self.in_flight.load(Ordering::Relaxed);
        if !snap.status.is_finished() {
            self.measure(&mut snap);
        }
        snap
    }

    /// Publishes a new snapshot, changed by `f`, with the live counters filled in.
    pub(crate) fn publish(&self, f: impl FnOnce(&mut JobSnapshot)) {
        self.snapshot.send_modify(|snap| {
            f(snap);
            snap.bytes_copied = self.bytes_copied.load(Ordering::Relaxed);
            snap.in_flight = self.in_flight.load(Ordering::Relaxed);
            self.measure(snap);
        });
    }

    /// Fills in the effective rate, the elapsed time, this run's recent rates and the ETA.
    ///
    /// The rates count this run's work only: bytes it copied, and objects it finished (not
    /// those restored from the checkpoint), over the last [`WINDOW`](super::recent::WINDOW).
    fn measure(&self, snap: &mut JobSnapshot) {
        let now = tokio::time::Instant::now();
        snap.effective_rate = self.throttle.effective_rate();
        snap.adaptive_rate = self.governor.is_enabled();
        snap.elapsed = now.saturating_duration_since(self.started);
        let objects = snap.done_objects.saturating_sub(self.done_before);
        let rates = self.recent.lock().update(now, snap.bytes_copied, objects);
        snap.throughput = rates.bytes as u64;
        snap.objects_per_sec = rates.objects as u64;
        snap.eta = eta(snap, rates);
        self.metrics.rates(snap.effective_rate, snap.throughput);
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// `Err(Cancelled)` when the job is cancelled: a chunk boundary that never parks.
    pub(crate) fn cancel_point(&self) -> Result<()> {
        match self.is_cancelled() {
            true => Err(self.cancelled_error()),
            false => Ok(()),
        }
    }

    /// Parks while the job is paused, at a chunk boundary. Returns `Err(Cancelled)` when the
    /// job is cancelled (also while parked). The caller is counted in `streaming` before
    /// and after; while parked it is not.
    pub(crate) async fn chunk_boundary(&self) -> Result<()> {
        self.cancel_point()?;
        if !*self.paused.borrow() {
            return Ok(());
        }
        self.streaming.sub();
        let mut paused = self.paused.subscribe();
        let mut cancelled = self.cancelled.subscribe();
        let outcome = tokio::select! {
            _ = paused.wait_for(|p| !*p) => Ok(()),
            _ = cancelled.wait_for(|c| *c) => Err(self.cancelled_error()),
        };
        self.streaming.add();
        outcome
    }

    /// Asks the job to stop for [`Engine::shutdown`](crate::Engine::shutdown): its copies
    /// park at their next chunk boundary, as for a pause, and the runner saves and stops.
    pub(crate) fn shut_down(&self) {
        self.shutdown.send_replace(true);
        self.paused.send_replace(true);
    }

    /// Whether [`JobShared::shut_down`] was called.
    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Returns once the runner ended.
    pub(crate) async fn ended(&self) {
        let _ = self.ended.subscribe().wait_for(|ended| *ended).await;
    }

    /// Stops the job because of an error (not a cancel): cancels it, marked as failing.
    pub(crate) fn stop_failing(&self) {
        self.failing.store(true, Ordering::Release);
        self.cancelled.send_replace(true);
    }

    /// Whether the job is stopping because of an error ([`JobShared::stop_failing`]).
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub(crate) fn cancelled_error(&self) -> Error {
        Error::Cancelled {
            job: self.id.clone(),
        }
    }
}

/// The time left at `rates`: by bytes once the job's bytes are known, else by objects once
/// its objects are; `None` while neither is known or nothing moves.
fn eta(snap: &JobSnapshot, rates: Rates) -> Option<Duration> {
    let (left, rate) = match (snap.remaining_bytes(), snap.total_objects) {
        (Some(left), _) => (left, rates.bytes),
        (None, Some(total)) => {
            let finished = snap.done_objects.saturating_add(snap.failed_objects);
            (total.saturating_sub(finished), rates.objects)
        }
        (None, None) => return None,
    };
    if left == 0 {
        return Some(Duration::ZERO);
    }
    if rate <= 0.0 {
        return None;
    }
    let millis = (left as f64 / rate * 1000.0).ceil();
    Some(Duration::from_millis(millis.min(u64::MAX as f64) as u64))
}

/// Follows one object's states and sends each move as an event.
pub(crate) struct Tracker<'a> {
    shared: &'a JobShared,
    key: &'a ObjectKey,
    last: Mutex<ObjectState>,
    /// A copy of this run wrote the target (the object reached `Copied` at least once).
    wrote: std::sync::atomic::AtomicBool,
}

impl<'a> Tracker<'a> {
    pub(crate) fn new(shared: &'a JobShared, key: &'a ObjectKey) -> Self {
        Tracker {
            shared,
            key,
            last: Mutex::new(ObjectState::Pending),
            wrote: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Notes that an earlier task of this run wrote the target.
    pub(crate) fn wrote_before(&self) {
        self.wrote.store(true, Ordering::Relaxed);
    }

    /// Whether a copy of this run wrote the target.
    pub(crate) fn wrote(&self) -> bool {
        self.wrote.load(Ordering::Relaxed)
    }

    /// Moves to `state` (staying put sends nothing; a copy that starts over goes through
    /// `Pending` first).
    pub(crate) fn to(&self, state: ObjectState) {
        let mut last = self.last.lock();
        if *last == state {
            return;
        }
        if state == ObjectState::Copied {
            self.wrote.store(true, Ordering::Relaxed);
        }
        if state == ObjectState::Copying
            && matches!(*last, ObjectState::Copied | ObjectState::Verified)
        {
            self.shared.emit(self.key, ObjectState::Pending);
        }
        self.shared.emit(self.key, state.clone());
        *last = state;
    }
}

/// A running job: watch it, pause, resume, throttle or cancel it, wait for its end.
///
/// Dropping the handle does not stop the job: it runs on, detached, to its end (its
/// snapshots stay visible through [`Engine::jobs`](crate::Engine::jobs)). To stop jobs where
/// they are, with their checkpoints saved, call [`Engine::shutdown`](crate::Engine::shutdown).
#[derive(Debug)]
pub struct JobHandle {
    shared: Arc<JobShared>,
    task: JoinHandle<Result<JobSnapshot>>,
}

impl JobHandle {
    pub(crate) fn new(shared: Arc<JobShared>, task: JoinHandle<Result<JobSnapshot>>) -> Self {
        JobHandle { shared, task }
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.shared.id
    }

    /// The job's state now, as plain data.
    pub fn snapshot(&self) -> JobSnapshot {
        self.shared.snapshot()
    }

    /// A receiver of the job's per-object transitions from now on ([`ObjectEvent`]): for one
    /// object, `Copying`, `Copied`, `Verified`, `Forwarded`, `Cleaned` (when its source was
    /// deleted), then `Done` once it is recorded; or `Failed`, `Skipped`; `Pending` when a
    /// copy starts over (a refused flip, a failed verify, a cancel). Each move satisfies
    /// [`ObjectState::can_move_to`] except for objects a crashed run had already moved
    /// (on resume they may start at `Forwarded` or go straight to `Done`).
    ///
    /// Broadcast semantics: every receiver sees every event sent after it subscribed, but a
    /// receiver more than a few thousand events behind lags: its next `recv` returns
    /// [`RecvError::Lagged`](broadcast::error::RecvError::Lagged) with how many it lost, and
    /// it goes on from the oldest event still kept. The job never waits for receivers.
    pub fn events(&self) -> broadcast::Receiver<ObjectEvent> {
        self.shared.subscribe_events()
    }

    /// A receiver of snapshots, updated as objects finish and the status changes.
    pub fn watch(&self) -> watch::Receiver<JobSnapshot> {
        self.shared.snapshot.subscribe()
    }

    /// Changes the job's bandwidth limit at once (within the engine's global limit), and
    /// saves it in the job's record with the next checkpoint, which is asked for at once:
    /// a run recovered after a crash or a shutdown ([`Engine::recover`](crate::Engine::recover),
    /// or [`Engine::start`](crate::Engine::start) with the job's id) goes on at this rate.
    pub fn set_rate(&self, rate: Rate) {
        self.shared.set_rate(RateSetting::Fixed(rate));
    }

    /// Sets the job's rate as [`set_rate`](JobHandle::set_rate) does, or makes it follow the
    /// target's health ([`RateSetting::Auto`], with the plan's
    /// [`AdaptiveRate`](ferry_types::AdaptiveRate) options or the defaults), starting from
    /// the rate in force. Saved in the job's record the same way.
    pub fn set_rate_setting(&self, setting: RateSetting) {
        self.shared.set_rate(setting);
    }

    /// Pauses the job: no new object starts, copies in flight park at their next chunk
    /// boundary, and a checkpoint is saved. Returns once every copy is parked and the status
    /// is [`JobStatus::Paused`] (or the job ended). Objects past their copy (verifying,
    /// cleaning up) finish their step.
    ///
    /// # Cancel safety
    /// Cancel safe: the pause happens anyway; only the wait is dropped.
    pub async fn pause(&self) {
        self.shared.paused.send_replace(true);
        self.shared.streaming.wait_zero().await;
        let mut snap = self.shared.snapshot.subscribe();
        let _ = snap
            .wait_for(|s| s.status == JobStatus::Paused || s.status.is_finished())
            .await;
    }

    /// Resumes a paused job.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Cancels the job: no new object starts, copies in flight stop and their forwarding
    /// entries (`Copying`) are removed, so those keys are served from the source as before,
    /// and the copies this run wrote for them are removed from the target; objects already
    /// forwarded stay forwarded (reads go to their complete target copy), and those waiting
    /// out a grace period finish their commit (the commit hook runs) with their source kept.
    /// Waits for the job to end and reports what was rolled back and kept.
    ///
    /// # Errors
    /// As [`wait`](JobHandle::wait).
    ///
    /// # Cancel safety
    /// Cancel safe: the job is cancelled anyway; only the wait is dropped.
    pub async fn cancel(self) -> Result<CancelReport> {
        self.shared.cancelled.send_replace(true);
        let shared = Arc::clone(&self.shared);
        let snapshot = self.wait().await?;
        let rolled_back = std::mem::take(&mut *shared.rolled_back.lock());
        let sources_kept = std::mem::take(&mut *shared.kept.lock());
        Ok(CancelReport {
            rolled_back,
            sources_kept,
            forwarded: shared.forwarded.load(Ordering::Relaxed),
            snapshot: Some(snapshot),
        })
    }

    /// Waits for the job to end and returns its last snapshot.
    ///
    /// # Errors
    /// The error that stopped the job (the checkpoint store or a store's `sync` failed, the
    /// listing failed); failed objects are not errors of the job (its status is then
    /// [`JobStatus::CompletedWithErrors`]). [`Error::RunnerGone`] when the runner panicked.
    /// [`Error::ShutDown`] when [`Engine::shutdown`](crate::Engine::shutdown) stopped it
    /// (unfinished: [`Engine::recover`](crate::Engine::recover) takes it up again).
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future detaches the job (it goes on running).
    pub async fn wait(self) -> Result<JobSnapshot> {
        match self.task.await {
            Ok(result) => result,
            Err(_) => Err(Error::RunnerGone {
                job: self.shared.id.clone(),
            }),
        }
    }

    /// Stops the job abruptly, as a crash would: the runner and its copies are dropped where
    /// they are, with no last checkpoint and no cleanup. For crash tests only.
    #[doc(hidden)]
    pub async fn crash_for_tests(self) {
        self.task.abort();
        let _ = self.task.await;
        // The runner's object tasks were aborted with it; they are dropped (and with them
        // the job's context and checkpointer) when the runtime next runs them. (A checkpoint
        // save already on a blocking thread finishes on its own.)
        for _ in 0..10_000 {
            if Arc::strong_count(&self.shared) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Removes a job from the engine's live jobs when its runner ends (or is dropped), whatever
/// the job's kind.
pub(crate) struct Live<'a> {
    pub(crate) engine: &'a super::EngineInner,
    pub(crate) shared: &'a Arc<JobShared>,
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        let shared = self.shared;
        shared.ended.send_replace(true);
        let mut live = self.engine.live.lock();
        if live
            .get(&shared.id)
            .is_some_and(|other| Arc::ptr_eq(other, shared))
        {
            live.remove(&shared.id);
        }
    }
}

/// The end of a job's runner, whatever its kind, given what its drive loop returned: a
/// shutdown saves the record with the status it had and gives up the lease (a restart takes
/// the job up at once); otherwise the status follows (failed, cancelled, completed with or
/// without errors: `Completing` is saved first), the record is closed, the lease released,
/// and the final snapshot published.
///
/// # Errors
///
/// The drive loop's error, or the checkpoint store's when the last saves fail.
pub(crate) async fn finish(
    engine: &super::EngineInner,
    shared: &JobShared,
    checkpointer: &Checkpointer,
    result: crate::error::Result<()>,
) -> crate::error::Result<JobSnapshot> {
    use crate::error::Error;
    if let Err(Error::ShutDown { .. }) = &result {
        if let Ok(lease) = checkpointer.close().await {
            let _ = engine.checkpoints.release(&lease).await;
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
    let released = match checkpointer.close().await {
        Ok(lease) => engine
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
        Err(err) => tracing::warn!(error = %crate::error::chain(err), "job failed"),
        Ok(()) => tracing::debug!(status = ?final_status, "job ended"),
    }
    shared.publish(|s| s.status = final_status);
    result?;
    released?;
    Ok(shared.snapshot.borrow().clone())
}
