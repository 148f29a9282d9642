//! `Checkpointer`: progress recorded in memory, saved in batches by a background task.

use std::sync::Arc;
use std::time::Duration;

use ferry_types::{CheckpointInterval, JobId, JobStatus, ObjectKey, PlanOptions};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::CheckpointStore;
use crate::error::{Error, Result};
use crate::record::{Lease, Progress, ProgressUpdate, UploadRecord};

/// What the last successful save of a [`Checkpointer`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Saved {
    /// Saves done by this checkpointer.
    pub saves: u64,
    /// The record's generation after the last save (0 before the first).
    pub generation: u64,
    /// `done_objects` as saved.
    pub done_objects: u64,
    /// `done_bytes` as saved.
    pub done_bytes: u64,
    /// How many changes had been recorded when the last save began: every one of them is
    /// durable.
    pub records: u64,
}

/// Batches a running job's progress and saves it every N finished objects or T seconds,
/// whichever comes first ([`CheckpointInterval`]), and whenever asked ([`flush`]).
///
/// [`record`](Checkpointer::record) only updates memory under a short lock, so recording
/// never waits for a disk. Saves run on a background task, one at a time, in order; the
/// stores do their blocking I/O on tokio's blocking threads (`spawn_blocking`), so the async
/// workers never wait for an fsync. After a crash, resume re-does at most the objects in
/// flight plus one interval (I4).
///
/// A failed save stops the background saves: the job must stop, since its progress can no
/// longer be made durable, and [`flush`] reports the failure as [`Error::Background`].
///
/// Time comes from [`tokio::time`], so tests run on a paused clock. Dropping the
/// checkpointer stops its task without a last save: call [`close`](Checkpointer::close).
///
/// [`flush`]: Checkpointer::flush
#[derive(Debug)]
pub struct Checkpointer {
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedSender<Cmd>,
    saved: watch::Receiver<Saved>,
    task: Mutex<Option<JoinHandle<()>>>,
    lease: Lease,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    objects: u64,
    every: Duration,
    /// The failure that stopped the saves, for [`Checkpointer::record_durable`] waiters.
    failed: Mutex<Option<Arc<Error>>>,
}

#[derive(Debug)]
struct State {
    /// Shared with the save under way, if any: a change copies it only while that save
    /// still holds it (each save used to copy the whole record: 3% of a MemStore → MemStore
    /// job's time).
    progress: Arc<Progress>,
    status: JobStatus,
    /// Objects finished since the last save began.
    unsaved: u64,
    /// When the first change since the last save was recorded.
    dirty_since: Option<Instant>,
    /// Changes recorded so far.
    records: u64,
    /// A caller waits for its change to be durable: save now.
    urgent: bool,
    /// Plan options to save with the next save ([`Checkpointer::set_options`]).
    options: Option<PlanOptions>,
}

#[derive(Debug)]
enum Cmd {
    Flush(oneshot::Sender<Result<u64>>),
    Close(oneshot::Sender<Result<u64>>),
}

impl Checkpointer {
    /// Starts checkpointing the job of `lease` in `store`, from `progress` (the progress of
    /// the acquired record) with `status`.
    ///
    /// # Panics
    /// When called outside a tokio runtime: it spawns its background task.
    pub fn new(
        store: Arc<dyn CheckpointStore>,
        lease: Lease,
        progress: Progress,
        status: JobStatus,
        interval: CheckpointInterval,
    ) -> Checkpointer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                progress: Arc::new(progress),
                status,
                unsaved: 0,
                dirty_since: None,
                records: 0,
                urgent: false,
                options: None,
            }),
            wake: Notify::new(),
            objects: interval.objects.max(1),
            every: interval.every.max(Duration::from_millis(1)),
            failed: Mutex::new(None),
        });
        let (cmds, rx) = mpsc::unbounded_channel();
        let (saved_tx, saved) = watch::channel(Saved::default());
        let task = tokio::spawn(run(Arc::clone(&shared), store, lease.clone(), rx, saved_tx));
        Checkpointer {
            shared,
            cmds,
            saved,
            task: Mutex::new(Some(task)),
            lease,
        }
    }

    /// Records one change in memory; a save follows when the interval is due. Cheap: a
    /// short lock, no I/O, no await. Returns the change's sequence number (see
    /// [`Saved::records`]).
    pub fn record(&self, update: ProgressUpdate) -> u64 {
        let (wake, seq) = self.apply(update, false);
        if wake {
            self.shared.wake.notify_one();
        }
        seq
    }

    /// Records several changes at once, as [`record`](Checkpointer::record) does each, under
    /// one lock: a save holds all of them or none. Returns the sequence number of the last
    /// (or of the last change recorded before, when `updates` is empty).
    pub fn record_many(&self, updates: impl IntoIterator<Item = ProgressUpdate>) -> u64 {
        let mut state = self.shared.state.lock();
        let (mut wake, before) = (false, state.records);
        for update in updates {
            wake |= Self::apply_locked(&mut state, update, self.shared.objects);
        }
        let seq = state.records;
        if seq != before && state.dirty_since.is_none() {
            state.dirty_since = Some(Instant::now());
            wake = true;
        }
        drop(state);
        if wake {
            self.shared.wake.notify_one();
        }
        seq
    }

    /// Asks for a save as soon as the one under way (if any) ends, without waiting for it:
    /// [`saved`](Checkpointer::saved) tells when the changes recorded so far are durable
    /// (`Saved::records` reaches the number [`record`](Checkpointer::record) returned). A
    /// failed save also changes `saved`, without moving `records`: call this again to learn
    /// of it.
    ///
    /// # Errors
    /// [`Error::Background`] when a save failed: nothing recorded will be saved any more.
    pub fn save_soon(&self) -> Result<()> {
        if let Some(e) = self.shared.failed.lock().as_ref() {
            return Err(background(&self.lease.job, e));
        }
        let mut state = self.shared.state.lock();
        if state.dirty_since.is_some() && !state.urgent {
            state.urgent = true;
            drop(state);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Records one change and waits until a save that includes it is durable; returns the
    /// record's generation then. Changes recorded by concurrent callers while a save runs
    /// are saved together by the next one (a group commit), so N waiters cost about one
    /// save, not N. The engine journals a flip this way before making it (SPEC I2, I3).
    ///
    /// # Errors
    /// [`Error::Background`] when the save failed (or an earlier one did).
    ///
    /// # Cancel safety
    /// Cancel safe: the change stays recorded and is saved with the next save.
    pub async fn record_durable(&self, update: ProgressUpdate) -> Result<u64> {
        let (_, seq) = self.apply(update, true);
        self.shared.wake.notify_one();
        let mut saved = self.saved.clone();
        loop {
            {
                let s = saved.borrow_and_update();
                if s.records >= seq {
                    return Ok(s.generation);
                }
            }
            if let Some(e) = self.shared.failed.lock().as_ref() {
                return Err(background(&self.lease.job, e));
            }
            saved.changed().await.map_err(|_| self.gone())?;
        }
    }

    /// Applies `update` in memory; returns whether the saver should wake, and the change's
    /// sequence number.
    fn apply(&self, update: ProgressUpdate, urgent: bool) -> (bool, u64) {
        let mut state = self.shared.state.lock();
        let due = Self::apply_locked(&mut state, update, self.shared.objects);
        state.urgent |= urgent;
        let first = state.dirty_since.is_none();
        if first {
            state.dirty_since = Some(Instant::now());
        }
        (first || due, state.records)
    }

    /// Applies `update` to the locked state; returns whether it made a save due by the
    /// interval's count of objects.
    fn apply_locked(state: &mut State, update: ProgressUpdate, objects: u64) -> bool {
        let finishes = update.finishes_object();
        Arc::make_mut(&mut state.progress).apply(update);
        state.records += 1;
        if finishes {
            state.unsaved += 1;
        }
        finishes && state.unsaved == objects
    }

    /// The upload in parts of `key` recorded so far (in memory: saved or about to be), if
    /// any.
    pub fn upload(&self, key: &ObjectKey) -> Option<UploadRecord> {
        self.shared.state.lock().progress.uploads.get(key).cloned()
    }

    /// Whether an upload in parts of `key` is recorded (without copying its record).
    pub fn has_upload(&self, key: &ObjectKey) -> bool {
        self.shared.state.lock().progress.uploads.contains_key(key)
    }

    /// Sets the status saved with the next save (call [`flush`](Checkpointer::flush) to save
    /// it now, e.g. at pause).
    pub fn set_status(&self, status: JobStatus) {
        let mut state = self.shared.state.lock();
        state.status = status;
        if state.dirty_since.is_none() {
            state.dirty_since = Some(Instant::now());
            drop(state);
            self.shared.wake.notify_one();
        }
    }

    /// Sets the plan options saved with the job's record
    /// ([`CheckpointStore::save_with_options`]), e.g. a rate the user changed while the job
    /// runs, so that a resumed run goes on with them. The save is asked for at once, as
    /// [`save_soon`](Checkpointer::save_soon) does; [`saved`](Checkpointer::saved) tells when
    /// it is durable.
    pub fn set_options(&self, options: PlanOptions) {
        let mut state = self.shared.state.lock();
        state.options = Some(options);
        state.urgent = true;
        if state.dirty_since.is_none() {
            state.dirty_since = Some(Instant::now());
        }
        drop(state);
        self.shared.wake.notify_one();
    }

    /// The progress as recorded so far (saved or not).
    pub fn progress(&self) -> Progress {
        Progress::clone(&self.shared.state.lock().progress)
    }

    /// The lease the saves carry.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// What the last successful save wrote, and a way to wait for the next one.
    pub fn saved(&self) -> watch::Receiver<Saved> {
        self.saved.clone()
    }

    /// Saves now, whatever the interval, and waits until the save is durable; returns the
    /// record's generation.
    ///
    /// # Errors
    /// [`Error::Background`] with the cause when this save or an earlier one failed.
    ///
    /// # Cancel safety
    /// Cancel safe: the save goes on if the future is dropped, and saves stay in order.
    pub async fn flush(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Flush(tx))?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Saves a last time, stops the background task and returns the lease (to
    /// [`release`](CheckpointStore::release) it, or to start a new checkpointer). It takes
    /// `&self` so that a checkpointer shared by tasks (in an `Arc`) can be closed; changes
    /// recorded after it are not saved, and a later `flush` or `close` is an error.
    ///
    /// # Errors
    /// As [`flush`](Checkpointer::flush).
    ///
    /// # Cancel safety
    /// Cancel safe: the last save and the task's end go on if the future is dropped.
    pub async fn close(&self) -> Result<Lease> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Close(tx))?;
        let result = rx.await.map_err(|_| self.gone())?;
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        result.map(|_| self.lease.clone())
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        self.cmds.send(cmd).map_err(|_| self.gone())
    }

    fn gone(&self) -> Error {
        Error::Background {
            job: self.lease.job.clone(),
            source: Arc::new(Error::NotOwner {
                job: self.lease.job.clone(),
                epoch: self.lease.epoch,
            }),
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().take() {
            task.abort();
        }
    }
}

fn background(job: &JobId, e: &Arc<Error>) -> Error {
    Error::Background {
        job: job.clone(),
        source: Arc::clone(e),
    }
}

async fn run(
    shared: Arc<Shared>,
    store: Arc<dyn CheckpointStore>,
    lease: Lease,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    saved: watch::Sender<Saved>,
) {
    let mut failed: Option<Arc<Error>> = None;
    let save = async |failed: &mut Option<Arc<Error>>| -> Result<u64> {
        if let Some(e) = failed {
            return Err(background(&lease.job, e));
        }
        let (status, progress, records, options) = {
            let mut state = shared.state.lock();
            state.unsaved = 0;
            state.dirty_since = None;
            state.urgent = false;
            let options = state.options.take();
            (
                state.status,
                Arc::clone(&state.progress),
                state.records,
                options,
            )
        };
        let (objects, bytes) = (progress.done_objects, progress.done_bytes);
        let saved_now = match &options {
            Some(options) => {
                store
                    .save_with_options(&lease, status, progress, options)
                    .await
            }
            None => store.save(&lease, status, progress).await,
        };
        match saved_now {
            Ok(generation) => {
                saved.send_modify(|s| {
                    s.saves += 1;
                    s.generation = generation;
                    s.done_objects = objects;
                    s.done_bytes = bytes;
                    s.records = records;
                });
                Ok(generation)
            }
            Err(e) => {
                let e = Arc::new(e);
                *failed = Some(Arc::clone(&e));
                *shared.failed.lock() = Some(Arc::clone(&e));
                // Wake the `record_durable` waiters: they find the failure.
                saved.send_modify(|_| {});
                Err(background(&lease.job, &e))
            }
        }
    };
    loop {
        let deadline = shared.state.lock().dirty_since.map(|t| t + shared.every);
        tokio::select! {
            biased;
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Flush(reply)) => {
                    let _ = reply.send(save(&mut failed).await);
                    continue;
                }
                Some(Cmd::Close(reply)) => {
                    let _ = reply.send(save(&mut failed).await);
                    return;
                }
                None => return,
            },
            () = shared.wake.notified() => {}
            () = sleep_until(deadline), if deadline.is_some() => {}
        }
        let due = {
            let mut state = shared.state.lock();
            if failed.is_some() {
                // Nothing more is saved; forget the deadline so the loop sleeps.
                state.dirty_since = None;
                state.unsaved = 0;
                false
            } else {
                state.urgent
                    || state.unsaved >= shared.objects
                    || state
                        .dirty_since
                        .is_some_and(|t| Instant::now() >= t + shared.every)
            }
        };
        if due {
            let _ = save(&mut failed).await;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use ferry_types::{MigrationPlan, NodeId, ObjectKey, ObjectSelection};

    use super::*;
    use crate::MemoryStore;

    fn done(n: u64) -> ProgressUpdate {
        ProgressUpdate::Done {
            key: ObjectKey::new(format!("k{n:04}")).unwrap(),
            bytes: 10,
        }
    }

    async fn setup(
        interval: CheckpointInterval,
    ) -> (Arc<dyn CheckpointStore>, JobId, Checkpointer) {
        let store: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
        let job = JobId::new("j").unwrap();
        let plan = MigrationPlan::new(
            NodeId::new("a").unwrap(),
            NodeId::new("b").unwrap(),
            ObjectSelection::all(),
        );
        store.create(&job, &plan).await.unwrap();
        let acquired = store.acquire(&job).await.unwrap();
        let cp = Checkpointer::new(
            Arc::clone(&store),
            acquired.lease,
            acquired.record.progress,
            JobStatus::Running,
            interval,
        );
        (store, job, cp)
    }

    #[tokio::test(start_paused = true)]
    async fn i4_saves_after_n_objects_or_t_seconds_whichever_first() {
        let interval = CheckpointInterval {
            objects: 3,
            every: Duration::from_secs(10),
        };
        let (store, job, cp) = setup(interval).await;
        let mut saved = cp.saved();
        let t0 = Instant::now();
        cp.record(done(1));
        cp.record(done(2));
        // Two objects are below N: the save comes at T.
        let s = *saved.wait_for(|s| s.saves == 1).await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(10));
        assert_eq!(s.done_objects, 2);
        // N objects: saved at once, no time passes.
        let t1 = Instant::now();
        for n in 3..6 {
            cp.record(done(n));
        }
        let s = *saved.wait_for(|s| s.saves == 2).await.unwrap();
        assert_eq!(Instant::now(), t1);
        assert_eq!(s.done_objects, 5);
        let record = store.load(&job).await.unwrap().unwrap().record;
        assert_eq!(record.progress.done_objects, 5);
        assert_eq!(record.generation, s.generation);
    }

    #[tokio::test(start_paused = true)]
    async fn record_many_is_saved_whole_and_counts_toward_the_interval() {
        let interval = CheckpointInterval {
            objects: 3,
            every: Duration::from_secs(10),
        };
        let (store, job, cp) = setup(interval).await;
        let mut saved = cp.saved();
        assert_eq!(cp.record_many([]), 0, "nothing recorded, nothing to save");
        let t0 = Instant::now();
        // Four objects at once pass N: saved at once, all four, with their sequence numbers.
        assert_eq!(cp.record_many((1..5).map(done)), 4);
        let s = *saved.wait_for(|s| s.saves == 1).await.unwrap();
        assert_eq!(Instant::now(), t0);
        assert_eq!((s.done_objects, s.records), (4, 4));
        assert_eq!(cp.record(done(5)), 5);
        // One more object is below N: it waits for T.
        let s = *saved.wait_for(|s| s.saves == 2).await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(10));
        assert_eq!(s.done_objects, 5);
        let record = store.load(&job).await.unwrap().unwrap().record;
        assert_eq!(record.progress.done_objects, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn flush_saves_now_and_close_saves_the_last_status() {
        let (store, job, cp) = setup(CheckpointInterval {
            objects: 1000,
            every: Duration::from_secs(3600),
        })
        .await;
        let t0 = Instant::now();
        cp.record(done(1));
        cp.record(ProgressUpdate::Watermark(ObjectKey::new("k0001").unwrap()));
        let generation = cp.flush().await.unwrap();
        assert_eq!(Instant::now(), t0);
        let record = store.load(&job).await.unwrap().unwrap().record;
        assert_eq!(record.generation, generation);
        assert!(record.progress.is_done(&ObjectKey::new("k0001").unwrap()));
        assert!(record.progress.done_above.is_empty());

        cp.set_status(JobStatus::Paused);
        let lease = cp.close().await.unwrap();
        assert_eq!(
            store.load(&job).await.unwrap().unwrap().record.status,
            JobStatus::Paused
        );
        store.release(&lease).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn record_durable_waits_for_a_save_and_groups_concurrent_callers() {
        let (store, job, cp) = setup(CheckpointInterval {
            objects: 1000,
            every: Duration::from_secs(3600),
        })
        .await;
        let t0 = Instant::now();
        let intent = |n: u64| ProgressUpdate::FlipIntent {
            key: ObjectKey::new(format!("k{n:04}")).unwrap(),
            digest: [n as u8; 32],
        };
        // 32 concurrent callers: each returns only once its change is in a durable record,
        // and they share saves (at most one running plus one queued behind it).
        let generations =
            futures_util::future::join_all((0..32).map(|n| cp.record_durable(intent(n)))).await;
        assert_eq!(Instant::now(), t0, "no waiting for the interval");
        let saves = cp.saved().borrow().saves;
        assert!((1..=2).contains(&saves), "{saves} saves for 32 callers");
        let record = store.load(&job).await.unwrap().unwrap().record;
        assert_eq!(record.progress.flips.len(), 32);
        for generation in generations {
            assert!(generation.unwrap() <= record.generation);
        }
        // A later caller is not satisfied by an earlier save.
        cp.record_durable(ProgressUpdate::FlipCommitted {
            key: ObjectKey::new("k0000").unwrap(),
        })
        .await
        .unwrap();
        let record = store.load(&job).await.unwrap().unwrap().record;
        assert!(record.progress.flips[&ObjectKey::new("k0000").unwrap()].committed);
    }

    #[tokio::test(start_paused = true)]
    async fn set_options_saves_the_plan_options_at_once_and_keeps_them() {
        let (store, job, cp) = setup(CheckpointInterval {
            objects: 1000,
            every: Duration::from_secs(3600),
        })
        .await;
        let t0 = Instant::now();
        let mut options = store.load(&job).await.unwrap().unwrap().record.plan.options;
        options.rate = "64KiB/s".parse().unwrap();
        cp.set_options(options.clone());
        let mut saved = cp.saved();
        saved.wait_for(|s| s.saves == 1).await.unwrap();
        assert_eq!(Instant::now(), t0, "no waiting for the interval");
        let record = store.load(&job).await.unwrap().unwrap().record;
        assert_eq!(record.plan.options, options);
        // Later saves keep them.
        cp.record(done(1));
        cp.flush().await.unwrap();
        let record = store.load(&job).await.unwrap().unwrap().record;
        assert_eq!(record.plan.options, options);
        assert_eq!(record.progress.done_objects, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn record_durable_reports_a_failed_save() {
        let (store, job, cp) = setup(CheckpointInterval::default()).await;
        store.release(cp.lease()).await.unwrap();
        let _new = store.acquire(&job).await.unwrap();
        let err = cp
            .record_durable(ProgressUpdate::FlipDropped {
                key: ObjectKey::new("k").unwrap(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Background { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn i6_failed_save_stops_saving_and_is_reported_by_flush() {
        let (store, job, cp) = setup(CheckpointInterval {
            objects: 1,
            every: Duration::from_secs(1),
        })
        .await;
        // Another engine takes the job over behind the checkpointer's back.
        store.release(cp.lease()).await.unwrap();
        let _new = store.acquire(&job).await.unwrap();
        cp.record(done(1));
        match cp.flush().await {
            Err(Error::Background { source, .. }) => {
                assert!(
                    matches!(*source, Error::NotOwner { .. } | Error::StaleEpoch { .. }),
                    "{source}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Later changes are not saved, and every flush reports the failure.
        cp.record(done(2));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(cp.flush().await, Err(Error::Background { .. })));
        assert_eq!(cp.saved().borrow().saves, 0);
        assert_eq!(
            store
                .load(&job)
                .await
                .unwrap()
                .unwrap()
                .record
                .progress
                .done_objects,
            0
        );
    }
}
