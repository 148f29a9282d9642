//! The job runner: [`Engine`], its builder and [`JobHandle`].
//!
//! An engine holds the storage nodes (`NodeId → Arc<dyn Store>`), the checkpoint store, the
//! forwarding table and a global throttle. [`Engine::start`] runs one migration plan as a job
//! on a background task and returns a [`JobHandle`] to watch, pause, throttle, cancel and
//! wait for it. See the crate docs for what is implemented so far.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_checkpoint::{CheckpointStore, Checkpointer, JobRecord};
use ferry_forwarding::{Route, Table};
use ferry_throttle::Throttle;
use ferry_types::{
    CleanupPolicy, JobId, JobKind, JobSnapshot, JobStatus, MigrationPlan, NodeId, ObjectKey,
    ObjectSelection,
};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use crate::error::{BoxError, Error, Result};
use ferry_store::Store;

mod adaptive;
mod check;
mod job;
mod metered;
pub mod metrics;
mod pipeline;
mod recent;

pub use self::job::{CancelReport, JobHandle, ObjectEvent};

/// The commit hook: called for each object with its target node, after the object was
/// flipped to its target and the checkpoint commit synced the target, and before its source
/// is deleted (under every cleanup policy, `Never` included). The storage system updates its placement map
/// there. An error keeps the source: the object is recorded failed with that error and stays
/// forwarded to its target copy (reads keep working).
///
/// Reads in flight across the flip: a read that asked `route_read` just before the flip was
/// sent to the source and may still be reading it when the hook runs. With
/// [`CleanupPolicy::AfterVerify`](ferry_types::CleanupPolicy) the source is deleted as soon
/// as the hook returns, so the hook must wait for such reads to end (SPEC I2): readers take
/// a [`ReadGuard`](ferry_forwarding::ReadGuard) ([`Table::read`](ferry_forwarding::Table::read)
/// or [`read_with`](ferry_forwarding::Table::read_with)) and hold it until the node answered,
/// and the hook, after placing the key on `target` (e.g. in a
/// [`Placement`](ferry_forwarding::Placement), which outlives the table's TTL), awaits
/// [`Table::drain_reads`](ferry_forwarding::Table::drain_reads). The `ferry` facade's first
/// example is that request path, complete. With `AfterGrace` the grace period covers reads
/// shorter than it; with `Never` nothing is deleted.
pub type CommitHook =
    Arc<dyn Fn(&ObjectKey, NodeId) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// The hook, with a `Debug` that says only whether there is one.
#[derive(Clone)]
pub(crate) struct Hook(pub(crate) CommitHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitHook")
    }
}

/// Runs migration jobs between the storage nodes it was built with.
///
/// Cheap to clone: clones share the nodes, the checkpoint store, the table and the throttle.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

#[derive(Debug)]
pub(crate) struct EngineInner {
    pub(crate) nodes: HashMap<NodeId, Arc<dyn Store>>,
    pub(crate) checkpoints: Arc<dyn CheckpointStore>,
    pub(crate) table: Table,
    pub(crate) global: Throttle,
    pub(crate) hook: Option<Hook>,
    /// The jobs running in this engine, by id.
    pub(crate) live: Mutex<HashMap<JobId, Arc<job::JobShared>>>,
    /// Which objects are copied in parts.
    pub(crate) parts: Parts,
}

/// Which objects are copied in parts that a crash does not lose ([`EngineBuilder::parts`]):
/// those larger than `above` bytes, to targets that take uploads in parts
/// (`Store::create_upload`: directories and S3, GCS, Azure). The checkpoint records each
/// part as it is stored, so a resumed job sends only the parts missing, then verifies the
/// whole object. Parts are `size` bytes (more for objects that would need over 10,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// Objects larger than this go in parts (default 1 GiB; `u64::MAX`: none).
    pub above: u64,
    /// The size of a part (default 16 MiB; S3 takes no part under 5 MiB but the last).
    pub size: u64,
    /// How many parts of one object are being stored at once (default 2, at least 1): an
    /// object store receives a part while the next one is read. Each holds up to a part in
    /// memory in an object store's adapter.
    pub in_flight: usize,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            above: 1 << 30,
            size: 16 << 20,
            in_flight: 2,
        }
    }
}

/// Builds an [`Engine`]: [`Engine::builder`].
#[derive(Debug, Default)]
pub struct EngineBuilder {
    nodes: HashMap<NodeId, Arc<dyn Store>>,
    checkpoints: Option<Arc<dyn CheckpointStore>>,
    table: Option<Table>,
    global: Option<Throttle>,
    hook: Option<Hook>,
    parts: Parts,
}

impl EngineBuilder {
    /// Adds (or replaces) a storage node.
    #[must_use]
    pub fn node(mut self, id: NodeId, store: Arc<dyn Store>) -> Self {
        self.nodes.insert(id, store);
        self
    }

    /// The checkpoint store jobs are recorded in (required).
    #[must_use]
    pub fn checkpoint_store(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.checkpoints = Some(store);
        self
    }

    /// The forwarding table the storage system routes through (default: a new table with the
    /// default configuration). The engine keeps a clone; clones share the table.
    #[must_use]
    pub fn forwarding(mut self, table: Table) -> Self {
        self.table = Some(table);
        self
    }

    /// The throttle every job's throttle sits within (default: unlimited).
    #[must_use]
    pub fn global_throttle(mut self, throttle: Throttle) -> Self {
        self.global = Some(throttle);
        self
    }

    /// Which objects are copied in parts that a crash does not lose (default
    /// [`Parts::default`]: over 1 GiB, in parts of 16 MiB).
    #[must_use]
    pub fn parts(mut self, parts: Parts) -> Self {
        self.parts = parts;
        self
    }

    /// The commit hook every job calls for each object after its flip and before its source
    /// is deleted (see [`CommitHook`]; default: none).
    #[must_use]
    pub fn commit_hook(
        mut self,
        hook: impl Fn(&ObjectKey, NodeId) -> BoxFuture<'static, Result<(), BoxError>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.hook = Some(Hook(Arc::new(hook)));
        self
    }

    /// Builds the engine.
    ///
    /// # Errors
    /// [`Error::MissingPart`] when no checkpoint store was given.
    pub fn build(self) -> Result<Engine> {
        let checkpoints = self.checkpoints.ok_or(Error::MissingPart {
            missing: "checkpoint_store",
        })?;
        metrics::describe();
        // Every node is reached through a wrapper that records its operations' latency and
        // errors (`ferry_store_op_duration_seconds`, labelled `node` and `op`).
        let nodes = self
            .nodes
            .into_iter()
            .map(|(id, store)| {
                let metered: Arc<dyn Store> = Arc::new(metered::Metered::new(id, store));
                (id, metered)
            })
            .collect();
        Ok(Engine {
            inner: Arc::new(EngineInner {
                nodes,
                checkpoints,
                table: self.table.unwrap_or_default(),
                global: self.global.unwrap_or_else(Throttle::unlimited),
                hook: self.hook,
                live: Mutex::new(HashMap::new()),
                parts: self.parts,
            }),
        })
    }
}

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

impl Engine {
    /// A builder with no node, no checkpoint store, a default table and no global limit.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The forwarding table (a clone shares it): what the storage system routes reads and
    /// writes through while jobs run.
    pub fn forwarding(&self) -> &Table {
        &self.inner.table
    }

    /// The store of `node`, if the engine has one.
    pub fn node(&self, node: &NodeId) -> Option<&Arc<dyn Store>> {
        self.inner.nodes.get(node)
    }

    /// Starts (or resumes) the job of `plan` on a background task.
    ///
    /// The plan is validated and its nodes looked up. Without an id the job gets a fresh one.
    /// When the checkpoint store already has a record of that id that is not finished, the
    /// job resumes from its checkpoint: objects recorded done are not copied again (SPEC I4).
    /// A resumed job runs at the rate its record holds, which is the rate last set with
    /// [`JobHandle::set_rate`] (or the first plan's), whatever `plan` says: call `set_rate`
    /// on the new handle to change it. The job's lease is acquired before anything moves (I6).
    ///
    /// # Errors
    /// [`Error::Plan`] for an invalid plan, [`Error::UnknownNode`] for a node the engine does
    /// not have, [`Error::JobFinished`] for the id of a finished job, [`Error::Checkpoint`]
    /// when the record cannot be created, loaded or acquired (e.g. another owner holds it),
    /// [`Error::Throttle`] when the job's throttle cannot be built.
    ///
    /// # Panics
    /// When called outside a tokio runtime (the job runs on a spawned task).
    ///
    /// # Cancel safety
    /// A dropped call may leave the job's record created and its lease held by this process.
    pub async fn start(&self, plan: MigrationPlan) -> Result<JobHandle> {
        self.start_inner(plan, Mode::Start { paused: false }).await
    }

    /// Runs the failed objects of a job that ended [`JobStatus::CompletedWithErrors`] again,
    /// on a background task, as a new run of the same job (status `CompletedWithErrors` →
    /// `Running`, under a new lease, I6).
    ///
    /// Exactly the keys of the record's `failed` map run again, through the whole pipeline
    /// (an object left forwarded by a failed commit hook only has its hook and cleanup
    /// left). Each one that succeeds is removed from `failed` and counted done; one that
    /// fails again stays in `failed` with its new attempts and error. The job then ends
    /// `Completed` or again `CompletedWithErrors`, and its snapshot's `total_objects` is the
    /// job's whole count, so done + failed == total (skipped objects are counted in done).
    ///
    /// # Errors
    /// [`Error::NotRetryable`] when the job has no record or did not end
    /// `CompletedWithErrors`; otherwise as [`start`](Engine::start).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub async fn retry_failed(&self, job: &JobId) -> Result<JobHandle> {
        let loaded = self.inner.checkpoints.load(job).await?;
        let Some(loaded) = loaded else {
            return Err(Error::NotRetryable {
                job: job.clone(),
                status: None,
            });
        };
        if loaded.record.status != JobStatus::CompletedWithErrors {
            return Err(Error::NotRetryable {
                job: job.clone(),
                status: Some(loaded.record.status),
            });
        }
        let plan = loaded.record.plan.with_id(job.clone());
        self.start_inner(plan, Mode::Retry).await
    }

    /// Where a read of `key` is served now: the forwarding table's lookup
    /// ([`Table::route_read`]).
    pub fn route(&self, key: &str) -> Route {
        self.inner.table.route_read(key)
    }

    /// The jobs known to the checkpoint store, as snapshots, optionally only those with the
    /// status `filter`. A job running in this engine is described by its live snapshot;
    /// the others by their record (status, done, skipped and failed counts; no rates, no
    /// bytes copied). A job whose process crashed shows the status its record last had.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when the store cannot list or load a record.
    pub async fn jobs(&self, filter: Option<JobStatus>) -> Result<Vec<JobSnapshot>> {
        let store = &self.inner.checkpoints;
        let mut ids = store.list().await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let live = self.inner.live.lock().get(&id).cloned();
            let snap = match live {
                Some(shared) => shared.snapshot(),
                None => match store.load(&id).await? {
                    Some(loaded) => snapshot_of_record(&loaded.record),
                    None => continue,
                },
            };
            if filter.is_none_or(|status| status == snap.status) {
                out.push(snap);
            }
        }
        Ok(out)
    }

    /// Stops every job running in this engine where it is, and returns once their runners
    /// ended: copies park at their next chunk boundary (as for a pause), what is verified is
    /// committed, and each job's checkpoint is saved with the status it had (`Running`, or
    /// `Paused` if it was paused) and its lease released. Their handles' `wait` then returns
    /// [`Error::ShutDown`]. Copies in flight are left on the target with their copy intents
    /// saved, and their forwarding entries are removed (the keys are served from the source);
    /// keys already forwarded stay forwarded. [`Engine::recover`], in this process or the
    /// next, takes every such job up again.
    ///
    /// What else ends a job: dropping its [`JobHandle`] does not (the job runs on, detached),
    /// nor does dropping the engine (jobs hold what they need). Dropping the tokio runtime
    /// drops the runners where they are, as a crash does: `recover` copes with that too, but
    /// redoes more.
    ///
    /// # Cancel safety
    /// Cancel safe: the jobs stop anyway; only the wait is dropped.
    pub async fn shutdown(&self) {
        let live: Vec<_> = self.inner.live.lock().values().cloned().collect();
        for shared in &live {
            shared.shut_down();
        }
        for shared in &live {
            shared.ended().await;
        }
    }

    /// Resumes every unfinished job of the checkpoint store (status `Pending`, `Running`,
    /// `Paused` or `Completing`) that is not already running in this engine, as [`start`](Engine::start)
    /// with its stored plan does: from its checkpoint, under a new lease (I6). A job recorded
    /// `Paused` is resumed paused: nothing moves until [`JobHandle::resume`]. Of every other
    /// job (finished: failed, cancelled, completed with errors), the flips it committed and
    /// did not finish are forwarded again, so their keys go on being served by the target
    /// (SPEC I8).
    ///
    /// # Errors
    /// The first error of listing, loading or starting a job (jobs started before it go on
    /// running; their handles are dropped).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub async fn recover(&self) -> Result<Vec<JobHandle>> {
        let store = &self.inner.checkpoints;
        let mut ids = store.list().await?;
        ids.sort();
        let mut handles = Vec::new();
        for id in ids {
            if self.inner.live.lock().contains_key(&id) {
                continue;
            }
            let Some(loaded) = store.load(&id).await? else {
                continue;
            };
            let status = loaded.record.status;
            // `Pending`: created, then stopped before its first save.
            if !matches!(
                status,
                JobStatus::Pending | JobStatus::Running | JobStatus::Paused | JobStatus::Completing
            ) {
                // A finished job runs no more, but a flip it committed is never forgotten
                // (I8): a key whose commit did not finish (its hook failed, the job failed
                // or was cancelled before it) is served by its target until that commit is
                // finished (`retry_failed`) or the key moves again.
                let plan = loaded.record.plan.with_id(id);
                for (key, flip) in &loaded.record.progress.flips {
                    if flip.committed {
                        pipeline::forward(&self.inner.table, &plan, key);
                    }
                }
                continue;
            }
            let plan = loaded.record.plan.with_id(id);
            let paused = status == JobStatus::Paused;
            handles.push(self.start_inner(plan, Mode::Start { paused }).await?);
        }
        Ok(handles)
    }

    async fn start_inner(&self, plan: MigrationPlan, mode: Mode) -> Result<JobHandle> {
        let retrying = mode == Mode::Retry;
        let paused = mode == Mode::Start { paused: true };
        // A check moves nothing: it has no flips to settle, nothing forwarded to reload and
        // no preexisting target keys to set aside.
        let checking = plan.kind == JobKind::Check;
        plan.validate()?;
        self.check_ttl(&plan)?;
        let source = self.store_of(&plan.source)?;
        let target = self.store_of(&plan.target)?;
        let id = match &plan.id {
            Some(id) => id.clone(),
            None => fresh_job_id()?,
        };
        let plan = plan.with_id(id.clone());
        let store = &self.inner.checkpoints;
        let resumed = match store.load(&id).await? {
            None => {
                store.create(&id, &plan).await?;
                false
            }
            Some(loaded) => {
                let status = loaded.record.status;
                let retryable = retrying && status == JobStatus::CompletedWithErrors;
                if !retryable && (status.is_terminal() || status == JobStatus::CompletedWithErrors)
                {
                    return Err(Error::JobFinished { job: id, status });
                }
                true
            }
        };
        let acquired = store.acquire(&id).await?;
        for warning in &acquired.warnings {
            tracing::warn!(job = %id, "{warning}");
        }
        // The record may have changed between the load and the acquire: another process
        // (a worker sharing the checkpoint store) may have finished the job meanwhile.
        let status = acquired.record.status;
        if !retrying && (status.is_terminal() || status == JobStatus::CompletedWithErrors) {
            let _ = store.release(&acquired.lease).await;
            return Err(Error::JobFinished { job: id, status });
        }
        if retrying && acquired.record.status != JobStatus::CompletedWithErrors {
            let _ = store.release(&acquired.lease).await;
            return Err(Error::NotRetryable {
                job: id,
                status: Some(acquired.record.status),
            });
        }
        // Objects the stopped run had flipped route to their target again (I2): first the
        // flip journal is settled, then the objects recorded done are reloaded.
        let mut journal_updates = Vec::new();
        let mut committed = std::collections::BTreeMap::new();
        if resumed && !checking {
            let table = &self.inner.table;
            let progress = &acquired.record.progress;
            // Both steps only read, forward and remove copies the journal disowns: run again
            // after a transient store error, as the plan's retry policy allows.
            let reload = || async {
                let (updates, flipped) =
                    pipeline::resolve_flips(table, &plan, &*source, &*target, &progress.flips)
                        .await?;
                if !retrying {
                    pipeline::reload_forwarded(table, &plan, &*target, progress).await?;
                }
                Ok::<_, Error>((updates, flipped))
            };
            // Before the job's metrics exist: its retries here are not counted.
            let uncounted = ::metrics::Counter::noop();
            let reloaded =
                pipeline::retrying(&plan.options.retry, "resume", reload, || false, &uncounted)
                    .await
                    .map_err(|(_, err)| err);
            match reloaded {
                Ok((updates, flipped)) => (journal_updates, committed) = (updates, flipped),
                Err(err) => {
                    let _ = store.release(&acquired.lease).await;
                    return Err(err);
                }
            }
        }
        // A resumed job goes on at the rate its record holds: the plan's, or the one
        // `JobHandle::set_rate` saved since.
        let mut plan = plan;
        if resumed {
            plan.options.rate = acquired.record.plan.options.rate;
            plan.options.adaptive = acquired.record.plan.options.adaptive;
        }
        let mut throttle = Throttle::builder()
            .rate(plan.options.rate)
            .chunk_size(plan.options.chunk_size)
            .within(&self.inner.global)
            .metric_label("job", id.as_str());
        if let Some(burst) = plan.options.burst {
            throttle = throttle.burst(burst);
        }
        let throttle = match throttle.build() {
            Ok(throttle) => throttle,
            Err(err) => {
                let _ = store.release(&acquired.lease).await;
                return Err(err.into());
            }
        };
        let mut progress = acquired.record.progress;
        let mut settled = !journal_updates.is_empty();
        if !retrying && !checking && pipeline::untouched(&progress) {
            // What the target holds of the selection before the job copies anything is not
            // the job's: a resume must never forward it (I3). Saved before anything moves.
            match pipeline::preexisting(&plan, &*target).await {
                Ok(found) => {
                    settled |= found != progress.preexisting;
                    progress.preexisting = found;
                }
                Err(err) => {
                    let _ = store.release(&acquired.lease).await;
                    return Err(err);
                }
            }
        }
        for update in journal_updates {
            progress.apply(update);
        }
        let checkpointer = Arc::new(Checkpointer::new(
            Arc::clone(store),
            acquired.lease,
            progress.clone(),
            JobStatus::Running,
            plan.options.checkpoint,
        ));
        if settled && !retrying {
            // The settled journal is saved before anything moves: a crash of this run must
            // not settle the same intents again against stores this run changed.
            checkpointer.flush().await?;
        }
        let retry_keys: Option<Vec<ObjectKey>> =
            retrying.then(|| progress.failed.keys().cloned().collect());
        if retrying {
            // CompletedWithErrors → Running, saved before anything moves.
            checkpointer.flush().await?;
        }
        let total_objects = match (&plan.objects, &retry_keys) {
            // Every object of the job finished before: the total is what was recorded.
            (_, Some(failed)) => Some(progress.done_objects + failed.len() as u64),
            (ObjectSelection::Keys(keys), None) => Some(keys.len() as u64),
            _ => None,
        };
        let shared = job::JobShared::new(
            &plan,
            id.clone(),
            throttle,
            total_objects,
            &progress,
            &checkpointer,
        );
        if paused {
            // Said at once, not when the runner first looks: a handle of a job recovered
            // paused shows it paused from the start.
            shared.paused.send_replace(true);
            shared.publish(|s| s.status = JobStatus::Paused);
        }
        self.inner.live.lock().insert(id, Arc::clone(&shared));
        // The job's target, timed for its adaptive rate (a pass-through while it is fixed).
        let target = adaptive::Observed::wrap(
            target,
            Arc::clone(&shared.governor),
            plan.options.chunk_size,
        );
        if checking {
            let ctx = check::CheckCtx {
                engine: Arc::clone(&self.inner),
                plan,
                source,
                target,
                shared,
                checkpointer,
                retry_keys,
            };
            return Ok(check::spawn(ctx, progress));
        }
        let ctx = pipeline::JobCtx {
            engine: Arc::clone(&self.inner),
            plan,
            source,
            target,
            shared: Arc::clone(&shared),
            resumed,
            retry_keys,
            failed_before: progress
                .failed
                .iter()
                .map(|(key, failure)| (key.clone(), failure.kind))
                .collect(),
            left: Arc::new(parking_lot::Mutex::new(
                progress.failed.keys().cloned().collect(),
            )),
            checkpointer,
            committed,
        };
        let span = tracing::info_span!(
            "job",
            job = %ctx.plan.id.as_ref().map_or("", |id| id.as_str()),
            source = %ctx.plan.source,
            target = %ctx.plan.target,
            retry = retrying,
        );
        span.in_scope(|| tracing::debug!(resumed = ctx.resumed, paused, "job started"));
        let run = pipeline::run(Arc::new(ctx), progress);
        let task = tokio::spawn(tracing::Instrument::instrument(run, span));
        Ok(JobHandle::new(shared, task))
    }

    /// Refuses a grace period the forwarding entries would not outlive: an entry expires a
    /// TTL after its flip, and a key's cleanup runs at the first commit after its grace
    /// period; were the entry gone by then, reads and writes would go to the source before
    /// the hook ran, and a write acknowledged through the flip would be lost (I2, I3).
    fn check_ttl(&self, plan: &MigrationPlan) -> Result<()> {
        let CleanupPolicy::AfterGrace(grace) = plan.options.cleanup else {
            return Ok(());
        };
        let ttl = self.inner.table.default_ttl();
        let needed = grace.saturating_add(plan.options.checkpoint.every);
        if needed >= ttl {
            return Err(Error::Plan(ferry_types::Error::InvalidPlan {
                field: "options.cleanup",
                reason: format!(
                    "a grace period of {grace:?} plus the checkpoint interval of {:?} is not \
                     shorter than the forwarding table's entry TTL of {ttl:?}: entries would \
                     expire before their cleanup; shorten the grace period or lengthen the TTL",
                    plan.options.checkpoint.every
                ),
            }));
        }
        Ok(())
    }

    fn store_of(&self, node: &NodeId) -> Result<Arc<dyn Store>> {
        self.inner
            .nodes
            .get(node)
            .cloned()
            .ok_or_else(|| Error::UnknownNode { node: *node })
    }
}

/// How [`Engine::start_inner`] starts a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A new job, or the rest of an unfinished one (`paused`: resumed paused).
    Start { paused: bool },
    /// The failed objects of a job that ended `CompletedWithErrors`.
    Retry,
}

/// A snapshot of a job that is not running here, from its record.
fn snapshot_of_record(record: &JobRecord) -> JobSnapshot {
    let plan = &record.plan;
    let mut snap = JobSnapshot::new(record.job.clone(), plan.source, plan.target);
    snap.status = record.status;
    let progress = &record.progress;
    snap.total_objects = match &plan.objects {
        ObjectSelection::Keys(keys) => Some(keys.len() as u64),
        // A listed job's total is known once it finished: every object ended done or failed.
        _ if matches!(
            record.status,
            JobStatus::Completed | JobStatus::CompletedWithErrors
        ) =>
        {
            Some(progress.done_objects + progress.failed.len() as u64)
        }
        _ => None,
    };
    snap.done_objects = progress.done_objects;
    snap.done_bytes = progress.done_bytes;
    snap.skipped_objects = progress.skipped_objects;
    snap.failed_objects = progress.failed.len() as u64;
    snap.changed_objects = progress.changed_objects();
    snap
}

fn fresh_job_id() -> Result<JobId> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
    Ok(JobId::new(format!("job-{nanos}-{n}"))?)
}
