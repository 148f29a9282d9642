//! The store logic shared by the key-value backends (memory, sled, redb): each job's record
//! is one value, in the envelope, updated by an atomic read-modify-write of the backend.
//!
//! Ownership: these backends are opened by one process at a time (sled and redb lock their
//! database file; a `MemoryStore` lives in one process), so who holds a job is kept in memory
//! next to the database, and the owner epoch in the record fences stale leases (I6).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_types::{JobId, JobStatus, MigrationPlan, PlanOptions};
use parking_lot::Mutex;

use crate::envelope;
use crate::error::{CorruptReason, Error, Result};
use crate::record::{Acquired, JobRecord, JobRecordRef, Lease, Loaded, Progress};
use crate::{BoxFuture, CheckpointStore};

/// One backend: bytes per job, with an atomic read-modify-write.
pub(crate) trait Kv: Send + Sync + 'static {
    /// Where the job's record lives, for error messages.
    fn place(&self, job: &JobId) -> PathBuf;

    /// The job's record bytes.
    fn get(&self, job: &JobId) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;

    /// Runs `f` on the current bytes and stores what it returns (if `Some`), atomically and
    /// durably before the future completes.
    fn update<R, F>(&self, job: &JobId, f: F) -> impl Future<Output = Result<R>> + Send
    where
        R: Send + 'static,
        F: FnOnce(Option<&[u8]>) -> Result<(Option<Vec<u8>>, R)> + Send + 'static;

    /// Removes the job's record; whether there was one.
    fn remove(&self, job: &JobId) -> impl Future<Output = Result<bool>> + Send;

    /// Every job with a record, sorted.
    fn jobs(&self) -> impl Future<Output = Result<Vec<JobId>>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    Acquiring,
    Held(u64),
}

/// A [`CheckpointStore`] over a [`Kv`] backend.
pub(crate) struct KvStore<K> {
    kv: K,
    held: Arc<Mutex<HashMap<JobId, Holding>>>,
}

impl<K> std::fmt::Debug for KvStore<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("held", &self.held.lock().len())
            .finish_non_exhaustive()
    }
}

/// Removes an `Acquiring` reservation when an acquire fails or is dropped.
struct Reservation {
    held: Arc<Mutex<HashMap<JobId, Holding>>>,
    job: JobId,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            let mut held = self.held.lock();
            if held.get(&self.job) == Some(&Holding::Acquiring) {
                held.remove(&self.job);
            }
        }
    }
}

pub(crate) fn this_process() -> String {
    format!("this process (pid {})", std::process::id())
}

pub(crate) fn decode_at(place: &Path, job: &JobId, bytes: &[u8]) -> Result<JobRecord> {
    let record = envelope::decode(bytes).map_err(|e| e.at(place))?;
    of_job(place, job, record)
}

/// `record`, checked to be `job`'s: a record under another job's name is corrupt.
pub(crate) fn of_job(place: &Path, job: &JobId, record: JobRecord) -> Result<JobRecord> {
    check_job(place, job, &record.job)?;
    Ok(record)
}

/// A record at `place` that says it is `found`'s, where `job`'s belongs, is corrupt.
fn check_job(place: &Path, job: &JobId, found: &JobId) -> Result<()> {
    if found != job {
        return Err(Error::Corrupt {
            path: place.to_path_buf(),
            reason: CorruptReason::WrongJob {
                expected: job.clone(),
                found: found.clone(),
            },
        });
    }
    Ok(())
}

/// The record of a new job, checked.
pub(crate) fn new_record(job: &JobId, plan: &MigrationPlan) -> Result<JobRecord> {
    if let Some(plan_id) = &plan.id
        && plan_id != job
    {
        return Err(Error::PlanIdMismatch {
            job: job.clone(),
            plan_id: plan_id.clone(),
        });
    }
    let mut plan = plan.clone();
    plan.id = Some(job.clone());
    Ok(JobRecord {
        epoch: 0,
        generation: 1,
        job: job.clone(),
        plan,
        status: JobStatus::Pending,
        progress: Progress::default(),
    })
}

pub(crate) fn check_transition(job: &JobId, from: JobStatus, to: JobStatus) -> Result<()> {
    if from == to || from.can_move_to(to) {
        Ok(())
    } else {
        Err(Error::InvalidTransition {
            job: job.clone(),
            from,
            to,
        })
    }
}

impl<K: Kv> KvStore<K> {
    pub(crate) fn new(kv: K) -> KvStore<K> {
        KvStore {
            kv,
            held: Arc::default(),
        }
    }

    pub(crate) fn kv(&self) -> &K {
        &self.kv
    }

    /// The epoch this store holds `lease.job` at, checked against the lease.
    fn check_held(&self, lease: &Lease) -> Result<()> {
        match self.held.lock().get(&lease.job) {
            Some(Holding::Held(epoch)) if *epoch == lease.epoch => Ok(()),
            Some(Holding::Held(epoch)) if *epoch > lease.epoch => Err(Error::StaleEpoch {
                job: lease.job.clone(),
                epoch: lease.epoch,
                current: *epoch,
            }),
            _ => Err(Error::NotOwner {
                job: lease.job.clone(),
                epoch: lease.epoch,
            }),
        }
    }

    async fn create(&self, job: &JobId, plan: &MigrationPlan) -> Result<JobRecord> {
        let record = new_record(job, plan)?;
        let bytes = envelope::encode(&record)?;
        let id = job.clone();
        self.kv
            .update(job, move |current| match current {
                Some(_) => Err(Error::AlreadyExists { job: id }),
                None => Ok((Some(bytes), ())),
            })
            .await?;
        Ok(record)
    }

    async fn load(&self, job: &JobId) -> Result<Option<Loaded>> {
        let Some(bytes) = self.kv.get(job).await? else {
            return Ok(None);
        };
        let record = decode_at(&self.kv.place(job), job, &bytes)?;
        Ok(Some(Loaded {
            record,
            warnings: Vec::new(),
        }))
    }

    async fn delete(&self, job: &JobId) -> Result<bool> {
        if self.held.lock().contains_key(job) {
            return Err(Error::Locked {
                job: job.clone(),
                holder: this_process(),
            });
        }
        self.kv.remove(job).await
    }

    async fn acquire(&self, job: &JobId) -> Result<Acquired> {
        let mut reservation = {
            let mut held = self.held.lock();
            if let Some(holding) = held.get(job) {
                let holder = match holding {
                    Holding::Held(epoch) => format!("{} (epoch {epoch})", this_process()),
                    Holding::Acquiring => this_process(),
                };
                return Err(Error::Locked {
                    job: job.clone(),
                    holder,
                });
            }
            held.insert(job.clone(), Holding::Acquiring);
            Reservation {
                held: Arc::clone(&self.held),
                job: job.clone(),
                armed: true,
            }
        };
        let place = self.kv.place(job);
        let id = job.clone();
        let record = self
            .kv
            .update(job, move |current| {
                let Some(bytes) = current else {
                    return Err(Error::NotFound { job: id });
                };
                let mut record = decode_at(&place, &id, bytes)?;
                record.epoch += 1;
                record.generation += 1;
                let bytes = envelope::encode(&record)?;
                Ok((Some(bytes), record))
            })
            .await?;
        self.held
            .lock()
            .insert(job.clone(), Holding::Held(record.epoch));
        reservation.armed = false;
        Ok(Acquired {
            lease: Lease {
                job: job.clone(),
                epoch: record.epoch,
            },
            record,
            warnings: Vec::new(),
        })
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        self.check_held(lease)?;
        let Some(bytes) = self.kv.get(&lease.job).await? else {
            return Err(Error::NotFound {
                job: lease.job.clone(),
            });
        };
        let record = decode_at(&self.kv.place(&lease.job), &lease.job, &bytes)?;
        if record.epoch != lease.epoch {
            return Err(Error::StaleEpoch {
                job: lease.job.clone(),
                epoch: lease.epoch,
                current: record.epoch,
            });
        }
        Ok(())
    }

    fn release(&self, lease: &Lease) -> Result<()> {
        self.check_held(lease)?;
        self.held.lock().remove(&lease.job);
        Ok(())
    }

    /// Saves the status and progress, and the plan's options when given.
    async fn save(
        &self,
        lease: &Lease,
        status: JobStatus,
        progress: Arc<Progress>,
        options: Option<PlanOptions>,
    ) -> Result<u64> {
        self.check_held(lease)?;
        let place = self.kv.place(&lease.job);
        let lease = lease.clone();
        let job = lease.job.clone();
        self.kv
            .update(&job, move |current| {
                let Some(bytes) = current else {
                    return Err(Error::NotFound { job: lease.job });
                };
                // Only the head: the progress is replaced whole.
                let record = envelope::decode_head(bytes).map_err(|e| e.at(&place))?;
                check_job(&place, &lease.job, &record.job)?;
                if record.epoch != lease.epoch {
                    return Err(Error::StaleEpoch {
                        job: lease.job,
                        epoch: lease.epoch,
                        current: record.epoch,
                    });
                }
                check_transition(&lease.job, record.status, status)?;
                let generation = record.generation + 1;
                let plan = options.map(|options| MigrationPlan {
                    options,
                    ..record.plan.clone()
                });
                let bytes = envelope::encode_ref(&JobRecordRef {
                    epoch: record.epoch,
                    generation,
                    job: &record.job,
                    plan: plan.as_ref().unwrap_or(&record.plan),
                    status,
                    progress: &progress,
                })?;
                Ok((Some(bytes), generation))
            })
            .await
    }
}

impl<K: Kv> CheckpointStore for KvStore<K> {
    fn create<'a>(
        &'a self,
        job: &'a JobId,
        plan: &'a MigrationPlan,
    ) -> BoxFuture<'a, Result<JobRecord>> {
        Box::pin(KvStore::create(self, job, plan))
    }

    fn load<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Option<Loaded>>> {
        Box::pin(KvStore::load(self, job))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<JobId>>> {
        Box::pin(self.kv.jobs())
    }

    fn delete<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<bool>> {
        Box::pin(KvStore::delete(self, job))
    }

    fn acquire<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Acquired>> {
        Box::pin(KvStore::acquire(self, job))
    }

    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        Box::pin(KvStore::renew(self, lease))
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { KvStore::release(self, lease) })
    }

    fn save<'a>(
        &'a self,
        lease: &'a Lease,
        status: JobStatus,
        progress: Arc<Progress>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(KvStore::save(self, lease, status, progress, None))
    }

    fn save_with_options<'a>(
        &'a self,
        lease: &'a Lease,
        status: JobStatus,
        progress: Arc<Progress>,
        options: &'a PlanOptions,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(KvStore::save(
            self,
            lease,
            status,
            progress,
            Some(options.clone()),
        ))
    }
}
