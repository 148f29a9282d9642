//! Timed leases over a store with conditional writes: the checkpoint backend for job records
//! that processes on many machines share, such as a bucket (SPEC I6 across machines).
//!
//! Each job is one record ([`KIND_LEASED_JOB`](crate::envelope::KIND_LEASED_JOB)): the lease
//! holder and the end of its lease, then the job record with its owner epoch. Every change is
//! a conditional write on the version the change was computed from (`If-Match` on an object's
//! ETag; `If-None-Match: *` to create), so of two processes that read the same version only
//! one can write the next; the other re-reads and sees what changed. From that:
//!
//! - [`acquire`](CheckpointStore::acquire) is refused with [`Error::Locked`] while the lease
//!   has not ended by the caller's clock; once it has, the acquire bumps the epoch and takes
//!   the job over (the previous holder is named in a [`Warning::TookOver`]).
//! - Every save, renewal and release of the holder checks that the record still has its epoch;
//!   if another process took the job over, the write is refused with [`Error::StaleEpoch`]
//!   and the stale holder must stop (I6). A save also extends the lease.
//! - A task renews each held lease every third of its length, so a live holder keeps its job
//!   while the engine is idle; a holder that dies, hangs or loses the network stops renewing
//!   and its job is taken over one lease length later.
//! - A holder that cannot renew stops by itself: nine tenths of a lease after the start of
//!   its last successful write (by its monotonic clock), every save, renewal and release is
//!   refused with [`Error::LeaseLost`] before it reaches the store, so a worker cut off by a
//!   partition saves (and, since the engine deletes only after a save, deletes) nothing once
//!   another worker could have taken its job over.
//!
//! Clocks: a lease's end is written by its holder's clock and read by the others'. Two
//! machines whose clocks differ by `d` can overlap by `d`: keep clocks synchronised (NTP) and
//! the lease well above the worst offset (the default is 30 s).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ferry_types::{JobId, JobStatus, MigrationPlan, PlanOptions};
use parking_lot::Mutex;

use crate::envelope;
use crate::error::{Error, Result};
use crate::kv::{check_transition, new_record, of_job};
use crate::record::{Acquired, JobRecord, Lease, LeaseHolder, Loaded, Progress, Warning};
use crate::{BoxFuture, CheckpointStore};

/// The version of a stored record that a conditional write names (an object's ETag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(pub String);

/// A record's bytes and the version they were read at.
pub type Versioned = (Vec<u8>, Tag);

/// What a conditional write requires of the record it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// There is no record (`If-None-Match: *`).
    Absent,
    /// The record is at this version (`If-Match`).
    Matches(Tag),
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written; the record's new version.
    Done(Tag),
    /// The condition did not hold: someone else wrote or removed the record since it was read.
    Conflict,
}

/// Records, one per job, with conditional writes: what a [`LeasedStore`] needs of the shared
/// store under it. `ferry-object-store` implements it over S3, GCS and Azure;
/// [`MemoryRecords`] is one in memory.
///
/// A write must be atomic and durable when it returns, and its condition checked atomically
/// with it: of two writes conditioned on the same version, at most one succeeds.
pub trait SharedRecords: Send + Sync + fmt::Debug + 'static {
    /// Where `job`'s record lives, for messages: `s3://bucket/ferry-state/jobs/ID`.
    fn place(&self, job: &JobId) -> String;

    /// The record's bytes and version, `None` when there is none.
    ///
    /// # Errors
    /// [`Error::Remote`] when the store cannot be read.
    fn read<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Option<Versioned>>>;

    /// Writes the record if `condition` holds.
    ///
    /// # Errors
    /// [`Error::Remote`] when the store cannot be written; a failed condition is
    /// [`Written::Conflict`], not an error.
    fn write<'a>(
        &'a self,
        job: &'a JobId,
        bytes: Vec<u8>,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Written>>;

    /// Removes the record; whether there was one.
    ///
    /// # Errors
    /// [`Error::Remote`] when the store cannot be written.
    fn remove<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<bool>>;

    /// Every job with a record, sorted.
    ///
    /// # Errors
    /// [`Error::Remote`] when the store cannot be listed.
    fn jobs(&self) -> BoxFuture<'_, Result<Vec<JobId>>>;
}

/// [`SharedRecords`] in memory, for tests: conditional writes under one lock.
#[derive(Debug, Default)]
pub struct MemoryRecords {
    records: Mutex<Versions>,
}

/// The records of a [`MemoryRecords`] and the last version handed out.
#[derive(Debug, Default)]
struct Versions {
    last: u64,
    records: std::collections::BTreeMap<JobId, (Vec<u8>, u64)>,
}

impl MemoryRecords {
    /// No records.
    pub fn new() -> MemoryRecords {
        MemoryRecords::default()
    }
}

impl SharedRecords for MemoryRecords {
    fn place(&self, job: &JobId) -> String {
        format!("memory/jobs/{job}")
    }

    fn read<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Option<Versioned>>> {
        let found = self
            .records
            .lock()
            .records
            .get(job)
            .map(|(bytes, version)| (bytes.clone(), Tag(version.to_string())));
        Box::pin(async move { Ok(found) })
    }

    fn write<'a>(
        &'a self,
        job: &'a JobId,
        bytes: Vec<u8>,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Written>> {
        let mut guard = self.records.lock();
        let Versions { last, records } = &mut *guard;
        let current = records
            .get(job)
            .map(|(_, version)| Tag(version.to_string()));
        let holds = match &condition {
            Condition::Absent => current.is_none(),
            Condition::Matches(tag) => current.as_ref() == Some(tag),
        };
        let written = if holds {
            *last += 1;
            records.insert(job.clone(), (bytes, *last));
            Written::Done(Tag(last.to_string()))
        } else {
            Written::Conflict
        };
        drop(guard);
        Box::pin(async move { Ok(written) })
    }

    fn remove<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<bool>> {
        let removed = self.records.lock().records.remove(job).is_some();
        Box::pin(async move { Ok(removed) })
    }

    fn jobs(&self) -> BoxFuture<'_, Result<Vec<JobId>>> {
        let jobs = self.records.lock().records.keys().cloned().collect();
        Box::pin(async move { Ok(jobs) })
    }
}

/// The wall clock a [`LeasedStore`] reads: milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default()
    })
}

/// How a process names itself in a lease: `pid 4242 on host-a`.
pub fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unknown host".to_owned());
    format!("pid {} on {host}", std::process::id())
}

/// The default lease length.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How many times an update re-reads a record that changed under it before giving up.
const ATTEMPTS: usize = 16;

/// A [`CheckpointStore`] over [`SharedRecords`], with timed leases (see the module docs).
///
/// # Example
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use ferry_checkpoint::{CheckpointStore, Error, LeasedStore, MemoryRecords};
/// use ferry_types::{JobId, MigrationPlan, NodeId, ObjectSelection};
///
/// // Two workers sharing one set of records (a bucket, in real use).
/// let records = Arc::new(MemoryRecords::new());
/// let a = LeasedStore::builder(records.clone()).holder("worker a").build();
/// let b = LeasedStore::builder(records)
///     .holder("worker b")
///     .lease(Duration::from_secs(10))
///     .build();
///
/// let job = JobId::new("drain-7")?;
/// let plan = MigrationPlan::new(NodeId::new("a")?, NodeId::new("b")?, ObjectSelection::all());
/// a.create(&job, &plan).await?;
/// let lease = a.acquire(&job).await?.lease;
/// assert!(matches!(b.acquire(&job).await, Err(Error::Locked { .. })));
/// a.release(&lease).await?;
/// assert_eq!(b.acquire(&job).await?.lease.epoch(), 2);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LeasedStore {
    inner: Arc<Inner>,
}

struct Inner {
    records: Arc<dyn SharedRecords>,
    lease: Duration,
    holder: String,
    clock: Clock,
    held: Mutex<HashMap<JobId, Held>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasedStore")
            .field("records", &self.records)
            .field("lease", &self.lease)
            .field("holder", &self.holder)
            .field("held", &self.held.lock().len())
            .finish_non_exhaustive()
    }
}

/// A job this store holds.
struct Held {
    epoch: u64,
    /// The epoch another process took the job over at, once a write found it: the lease is
    /// lost, and every later use of it is refused with [`Error::StaleEpoch`].
    taken_at: Option<u64>,
    /// Until when the lease is surely this process's by its own monotonic clock: the start of
    /// the last write that extended it, plus the lease, less a tenth for clock drift. Past
    /// it, every use of the lease is refused with [`Error::LeaseLost`], so a worker cut off
    /// from the store stops before anyone can take its job over.
    sure_until: tokio::time::Instant,
    /// Serialises this process's writes of the job (saves and renewals), so they never
    /// conflict with each other.
    gate: Arc<tokio::sync::Mutex<()>>,
    renewer: Option<tokio::task::AbortHandle>,
}

impl Held {
    /// Whether this process no longer owns the job: another took it over, or the lease ran
    /// out unrenewed by this process's clock.
    fn is_lost(&self) -> bool {
        self.taken_at.is_some() || tokio::time::Instant::now() >= self.sure_until
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for held in self.held.get_mut().values() {
            if let Some(renewer) = &held.renewer {
                renewer.abort();
            }
        }
    }
}

impl LeasedStore {
    /// A store over `records`, with leases of [`DEFAULT_LEASE`], named by
    /// [`default_holder`], on the system clock.
    pub fn new(records: Arc<dyn SharedRecords>) -> LeasedStore {
        LeasedStore::builder(records).build()
    }

    /// A store over `records`, configured by the builder.
    pub fn builder(records: Arc<dyn SharedRecords>) -> LeasedStoreBuilder {
        LeasedStoreBuilder {
            records,
            lease: DEFAULT_LEASE,
            holder: default_holder(),
            clock: system_clock(),
        }
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// `job`'s record and who holds its lease and until when, as stored, in one read; `None`
    /// when there is no such job. A lease whose end has passed is returned too: compare it
    /// with the clock.
    ///
    /// # Errors
    /// The read errors of [`load`](CheckpointStore::load).
    pub async fn load_held(&self, job: &JobId) -> Result<Option<(JobRecord, Option<LeaseHolder>)>> {
        Ok(self
            .inner
            .read(job)
            .await?
            .map(|(holder, record, _)| (record, holder)))
    }
}

/// Configures a [`LeasedStore`].
pub struct LeasedStoreBuilder {
    records: Arc<dyn SharedRecords>,
    lease: Duration,
    holder: String,
    clock: Clock,
}

impl fmt::Debug for LeasedStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasedStoreBuilder")
            .field("records", &self.records)
            .field("lease", &self.lease)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl LeasedStoreBuilder {
    /// How long a lease lasts unless renewed (renewals come every third of it). At least
    /// three seconds; the default is [`DEFAULT_LEASE`].
    pub fn lease(mut self, lease: Duration) -> LeasedStoreBuilder {
        self.lease = lease.max(Duration::from_secs(3));
        self
    }

    /// How this process names itself in leases and in [`Error::Locked`]; the default is
    /// [`default_holder`].
    pub fn holder(mut self, holder: impl Into<String>) -> LeasedStoreBuilder {
        self.holder = holder.into();
        self
    }

    /// The wall clock leases are measured on (tests use a fake one); the default is
    /// [`system_clock`].
    pub fn clock(mut self, clock: Clock) -> LeasedStoreBuilder {
        self.clock = clock;
        self
    }

    /// The store.
    pub fn build(self) -> LeasedStore {
        LeasedStore {
            inner: Arc::new(Inner {
                records: self.records,
                lease: self.lease,
                holder: self.holder,
                clock: self.clock,
                held: Mutex::default(),
            }),
        }
    }
}

impl Inner {
    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn until(&self) -> u64 {
        let lease = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        self.now().saturating_add(lease)
    }

    async fn read(&self, job: &JobId) -> Result<Option<(Option<LeaseHolder>, JobRecord, Tag)>> {
        let Some((bytes, tag)) = self.records.read(job).await? else {
            return Ok(None);
        };
        let place = std::path::PathBuf::from(self.records.place(job));
        let (holder, record) = envelope::decode_leased(&bytes).map_err(|e| e.at(&place))?;
        Ok(Some((holder, of_job(&place, job, record)?, tag)))
    }

    /// The gate of the job, checked against the lease.
    fn gate(&self, lease: &Lease) -> Result<Arc<tokio::sync::Mutex<()>>> {
        match self.held.lock().get(&lease.job) {
            Some(Held {
                epoch,
                taken_at: Some(current),
                ..
            }) if *epoch == lease.epoch => Err(Error::StaleEpoch {
                job: lease.job.clone(),
                epoch: lease.epoch,
                current: *current,
            }),
            Some(held) if held.epoch == lease.epoch => {
                if tokio::time::Instant::now() >= held.sure_until {
                    return Err(Error::LeaseLost {
                        job: lease.job.clone(),
                        epoch: lease.epoch,
                    });
                }
                Ok(Arc::clone(&held.gate))
            }
            Some(held) if held.epoch > lease.epoch => Err(Error::StaleEpoch {
                job: lease.job.clone(),
                epoch: lease.epoch,
                current: held.epoch,
            }),
            _ => Err(Error::NotOwner {
                job: lease.job.clone(),
                epoch: lease.epoch,
            }),
        }
    }

    /// Forgets a job this process no longer holds at `epoch`.
    fn forget(&self, job: &JobId, epoch: u64) {
        let mut held = self.held.lock();
        if held.get(job).is_some_and(|h| h.epoch == epoch)
            && let Some(gone) = held.remove(job)
            && let Some(renewer) = gone.renewer
        {
            renewer.abort();
        }
    }

    /// How long after a write's start the lease it extended is surely this process's.
    fn sure_for(&self) -> Duration {
        self.lease - self.lease / 10
    }

    /// Records that a write started at `started` extended `lease`.
    fn extended(&self, lease: &Lease, started: tokio::time::Instant) {
        if let Some(held) = self.held.lock().get_mut(&lease.job)
            && held.epoch == lease.epoch
        {
            held.sure_until = held.sure_until.max(started + self.sure_for());
        }
    }

    /// Marks the lease of `job` at `epoch` lost to the owner at `current`, and stops renewing
    /// it.
    fn taken_over(&self, job: &JobId, epoch: u64, current: u64) {
        let mut held = self.held.lock();
        if let Some(held) = held.get_mut(job)
            && held.epoch == epoch
        {
            held.taken_at = Some(current);
            if let Some(renewer) = held.renewer.take() {
                renewer.abort();
            }
        }
    }

    /// Changes the held job's record with `f`, which may also change the lease (which
    /// otherwise is extended), by a conditional write on the version it read.
    async fn update_held<R>(
        &self,
        lease: &Lease,
        mut f: impl FnMut(&mut JobRecord, &mut Option<LeaseHolder>) -> Result<R>,
    ) -> Result<R> {
        let gate = self.gate(lease)?;
        let _writing = gate.lock().await;
        for _ in 0..ATTEMPTS {
            // Released or taken over while this write waited at the gate?
            self.gate(lease)?;
            let Some((holder, mut record, tag)) = self.read(&lease.job).await? else {
                self.forget(&lease.job, lease.epoch);
                return Err(Error::NotFound {
                    job: lease.job.clone(),
                });
            };
            if record.epoch != lease.epoch {
                self.taken_over(&lease.job, lease.epoch, record.epoch);
                return Err(Error::StaleEpoch {
                    job: lease.job.clone(),
                    epoch: lease.epoch,
                    current: record.epoch,
                });
            }
            if holder.is_none() {
                self.forget(&lease.job, lease.epoch);
                return Err(Error::NotOwner {
                    job: lease.job.clone(),
                    epoch: lease.epoch,
                });
            }
            let started = tokio::time::Instant::now();
            let mut holder = Some(LeaseHolder {
                holder: self.holder.clone(),
                until_ms: self.until(),
            });
            let out = f(&mut record, &mut holder)?;
            let bytes = envelope::encode_leased(&holder, &record.as_ref())?;
            match self
                .records
                .write(&lease.job, bytes, Condition::Matches(tag))
                .await?
            {
                Written::Done(_) => {
                    self.extended(lease, started);
                    return Ok(out);
                }
                // Someone wrote since the read (an acquire after our lease ran out, or a
                // write of ours whose reply was lost): read again and see.
                Written::Conflict => continue,
            }
        }
        Err(changed_under_every_attempt(
            "write",
            self.records.place(&lease.job),
        ))
    }

    /// Saves the status and progress, and the plan's options when given.
    async fn save(
        &self,
        lease: &Lease,
        status: JobStatus,
        progress: Arc<Progress>,
        options: Option<&PlanOptions>,
    ) -> Result<u64> {
        self.update_held(lease, |record, _| {
            check_transition(&lease.job, record.status, status)?;
            record.status = status;
            record.progress = Progress::clone(&progress);
            if let Some(options) = options {
                record.plan.options = options.clone();
            }
            record.generation += 1;
            Ok(record.generation)
        })
        .await
    }

    async fn acquire(self: &Arc<Self>, job: &JobId) -> Result<Acquired> {
        {
            let mut held = self.held.lock();
            match held.get(job) {
                // Lost (taken over, or run out unrenewed): this process may own it again,
                // under a new epoch, once the store says nobody else does.
                Some(lost) if lost.is_lost() => {
                    held.remove(job);
                }
                Some(held) => {
                    return Err(Error::Locked {
                        job: job.clone(),
                        holder: format!("{} (epoch {}, this process)", self.holder, held.epoch),
                    });
                }
                None => {}
            }
        }
        for _ in 0..ATTEMPTS {
            let Some((holder, mut record, tag)) = self.read(job).await? else {
                return Err(Error::NotFound { job: job.clone() });
            };
            let now = self.now();
            let mut warnings = Vec::new();
            if let Some(previous) = holder {
                if previous.until_ms > now {
                    return Err(Error::Locked {
                        job: job.clone(),
                        holder: format!(
                            "{} (epoch {}, lease ends in {:.1} s unless renewed)",
                            previous.holder,
                            record.epoch,
                            (previous.until_ms - now) as f64 / 1000.0
                        ),
                    });
                }
                warnings.push(Warning::TookOver {
                    previous: previous.holder,
                    expired_ms_ago: now - previous.until_ms,
                });
            }
            record.epoch += 1;
            record.generation += 1;
            let started = tokio::time::Instant::now();
            let holder = Some(LeaseHolder {
                holder: self.holder.clone(),
                until_ms: self.until(),
            });
            let bytes = envelope::encode_leased(&holder, &record.as_ref())?;
            match self
                .records
                .write(job, bytes, Condition::Matches(tag))
                .await?
            {
                Written::Done(_) => {
                    let lease = Lease {
                        job: job.clone(),
                        epoch: record.epoch,
                    };
                    let renewer = self.spawn_renewer(lease.clone());
                    self.held.lock().insert(
                        job.clone(),
                        Held {
                            epoch: record.epoch,
                            taken_at: None,
                            sure_until: started + self.sure_for(),
                            gate: Arc::default(),
                            renewer,
                        },
                    );
                    return Ok(Acquired {
                        lease,
                        record,
                        warnings,
                    });
                }
                Written::Conflict => continue,
            }
        }
        Err(changed_under_every_attempt(
            "write",
            self.records.place(job),
        ))
    }

    /// Renews `lease` every third of the lease length until it is released or lost. The
    /// task holds the store weakly: dropping the store stops it.
    fn spawn_renewer(self: &Arc<Self>, lease: Lease) -> Option<tokio::task::AbortHandle> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let store: Weak<Inner> = Arc::downgrade(self);
        let every = self.lease / 3;
        let task = runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(store) = store.upgrade() else { return };
                match store.update_held(&lease, |_, _| Ok(())).await {
                    Ok(()) => {}
                    Err(
                        Error::StaleEpoch { .. }
                        | Error::NotOwner { .. }
                        | Error::NotFound { .. }
                        | Error::LeaseLost { .. },
                    ) => {
                        return;
                    }
                    // The store is unreachable: try again; if it stays so, the lease runs out
                    // and the next save of the holder is refused.
                    Err(_) => {}
                }
            }
        });
        Some(task.abort_handle())
    }

    async fn delete(&self, job: &JobId) -> Result<bool> {
        if let Some(held) = self.held.lock().get(job)
            && !held.is_lost()
        {
            return Err(Error::Locked {
                job: job.clone(),
                holder: format!("{} (epoch {}, this process)", self.holder, held.epoch),
            });
        }
        let Some((holder, record, _)) = self.read(job).await? else {
            return Ok(false);
        };
        let now = self.now();
        if let Some(holder) = holder
            && holder.until_ms > now
        {
            return Err(Error::Locked {
                job: job.clone(),
                holder: format!("{} (epoch {})", holder.holder, record.epoch),
            });
        }
        self.records.remove(job).await
    }
}

fn changed_under_every_attempt(op: &'static str, place: String) -> Error {
    Error::Remote {
        op,
        place,
        source: format!("the record changed under each of {ATTEMPTS} attempts").into(),
    }
}

impl CheckpointStore for LeasedStore {
    fn create<'a>(
        &'a self,
        job: &'a JobId,
        plan: &'a MigrationPlan,
    ) -> BoxFuture<'a, Result<JobRecord>> {
        Box::pin(async move {
            let record = new_record(job, plan)?;
            let bytes = envelope::encode_leased(&None, &record.as_ref())?;
            match self
                .inner
                .records
                .write(job, bytes, Condition::Absent)
                .await?
            {
                Written::Done(_) => Ok(record),
                Written::Conflict => Err(Error::AlreadyExists { job: job.clone() }),
            }
        })
    }

    fn load<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Option<Loaded>>> {
        Box::pin(async move {
            Ok(self.inner.read(job).await?.map(|(_, record, _)| Loaded {
                record,
                warnings: Vec::new(),
            }))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<JobId>>> {
        self.inner.records.jobs()
    }

    fn delete<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.inner.delete(job))
    }

    fn acquire<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Acquired>> {
        Box::pin(self.inner.acquire(job))
    }

    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.update_held(lease, |_, _| Ok(())))
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner
                .update_held(lease, |_, holder| {
                    *holder = None;
                    Ok(())
                })
                .await?;
            self.inner.forget(&lease.job, lease.epoch);
            Ok(())
        })
    }

    fn save<'a>(
        &'a self,
        lease: &'a Lease,
        status: JobStatus,
        progress: Arc<Progress>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.inner.save(lease, status, progress, None))
    }

    fn save_with_options<'a>(
        &'a self,
        lease: &'a Lease,
        status: JobStatus,
        progress: Arc<Progress>,
        options: &'a PlanOptions,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.inner.save(lease, status, progress, Some(options)))
    }
}
