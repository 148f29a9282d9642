//! Durable job records and progress for migrations that must survive a crash at any byte.
//!
//! A [`CheckpointStore`] keeps, per job, the plan, the status and the progress (a watermark
//! under which every object is done, the few done objects above it, counters, the failed
//! objects) together with an owner epoch. A job is run by one owner at a time:
//! [`acquire`](CheckpointStore::acquire) bumps the epoch durably and returns a [`Lease`], and
//! a save carrying an older epoch is refused with [`Error::StaleEpoch`] (SPEC I6). Every
//! record is stored in one [`envelope`] (magic, format version, length, CRC32C, postcard
//! payload), so a torn or corrupt record is reported as [`Error::Corrupt`] naming the file,
//! never mistaken for "nothing done yet" (I5). The [`Checkpointer`] batches progress updates
//! in memory and saves every N objects or T seconds, off the async worker threads.
//!
//! Backends: [`FileStore`] (a directory; the default), `SledStore` and `RedbStore` (behind
//! features), [`MemoryStore`] (tests, embedding), and [`LeasedStore`]: timed leases over any
//! store with conditional writes ([`SharedRecords`]), for records that processes on many
//! machines share (`ferry-object-store` puts them in a bucket). All pass one conformance
//! suite.
//!
//! It is not a general key-value store, and it knows nothing about objects or how they move:
//! the engine decides what is done and when to save.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ferry_checkpoint::{CheckpointStore, Checkpointer, FileStore, ProgressUpdate};
//! use ferry_types::{CheckpointInterval, JobId, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};
//!
//! let dir = tempfile::tempdir()?;
//! let store: Arc<dyn CheckpointStore> = Arc::new(FileStore::open(dir.path())?);
//! let job = JobId::new("drain-7")?;
//! let plan = MigrationPlan::new(NodeId::new("a")?, NodeId::new("b")?, ObjectSelection::all());
//! store.create(&job, &plan).await?;
//!
//! // Own the job, then record progress; saves are batched and kept off the async workers.
//! let acquired = store.acquire(&job).await?;
//! let checkpointer = Checkpointer::new(
//!     Arc::clone(&store),
//!     acquired.lease,
//!     acquired.record.progress,
//!     JobStatus::Running,
//!     CheckpointInterval::default(),
//! );
//! checkpointer.record(ProgressUpdate::Done { key: ObjectKey::new("a/1")?, bytes: 4096 });
//! checkpointer.flush().await?; // at pause, cancel and finish
//! let lease = checkpointer.close().await?;
//! store.release(&lease).await?;
//!
//! let loaded = store.load(&job).await?.expect("the job was created");
//! assert_eq!(loaded.record.progress.done_objects, 1);
//! assert_eq!(loaded.record.epoch, 1);
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! - `sled`: `SledStore`, on sled 0.34.7 (pinned; read its durability caveats).
//! - `redb`: `RedbStore`, on redb 4.

mod checkpointer;
pub mod envelope;
mod error;
mod file;
mod kv;
mod leased;
mod memory;
mod record;
#[cfg(feature = "redb")]
mod redb_store;
#[cfg(feature = "sled")]
mod sled_store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ferry_types::{JobId, JobStatus, MigrationPlan, PlanOptions};

pub use crate::checkpointer::{Checkpointer, Saved};
pub use crate::error::{CorruptReason, Error, Result};
pub use crate::file::{FileStore, FileSync};
pub use crate::leased::{
    Clock, Condition, DEFAULT_LEASE, LeasedStore, LeasedStoreBuilder, MemoryRecords, SharedRecords,
    Tag, Versioned, Written, default_holder, system_clock,
};
pub use crate::memory::MemoryStore;
pub use crate::record::{
    Acquired, Failure, FlipRecord, JobRecord, KeyHasher, Lease, LeaseHolder, Loaded, Progress,
    ProgressUpdate, UploadRecord, Warning,
};
#[cfg(feature = "redb")]
pub use crate::redb_store::RedbStore;
#[cfg(feature = "sled")]
pub use crate::sled_store::SledStore;

/// A boxed `Send` future: what [`CheckpointStore`]'s methods return.
///
/// The trait returns boxed futures rather than using `async fn` so that it stays
/// dyn-compatible (`Arc<dyn CheckpointStore>`): an `async fn` in a trait is not. Writing the
/// box by hand costs what the `async-trait` crate would generate, without a proc-macro
/// dependency, and keeps the signatures readable in the docs.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Durable job records: create, load, list, delete, own and save progress.
///
/// Every backend stores each record in the [`envelope`] and passes the same conformance
/// suite (`tests/conformance.rs`). A save returns only once the record is durable.
///
/// # Ownership (SPEC I6)
/// [`acquire`](CheckpointStore::acquire) makes the caller the job's one owner and increments
/// the job's owner epoch durably; [`save`](CheckpointStore::save) requires the lease of the
/// current epoch; [`release`](CheckpointStore::release) gives the job up. A second acquire
/// while the job is held fails at once with [`Error::Locked`] naming the holder. How a
/// backend learns that a holder died is its own: [`FileStore`] uses an OS file lock that the
/// kernel drops with the process, the database backends are opened by one process at a time.
///
/// # Cancel safety
/// A dropped future of any method leaves the record as it was or as the call would have left
/// it, never in between (I5); a dropped save may still complete. A dropped
/// [`acquire`](CheckpointStore::acquire) may have bumped the epoch without handing out the
/// lease; [`FileStore`] then keeps the job held until the store is dropped.
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// Creates the record of a new job: status [`JobStatus::Pending`], no progress, epoch 0.
    /// The stored plan's `id` is set to `job`.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the job has a record, [`Error::PlanIdMismatch`] when
    /// `plan.id` names another job, [`Error::Locked`] when another process is creating or
    /// running it, and I/O errors.
    fn create<'a>(
        &'a self,
        job: &'a JobId,
        plan: &'a MigrationPlan,
    ) -> BoxFuture<'a, Result<JobRecord>>;

    /// The job's record, `None` when it has none. Needs no lease.
    ///
    /// # Errors
    /// [`Error::Corrupt`] (naming the file) when no readable generation of the record is left,
    /// [`Error::UnsupportedVersion`], and I/O errors. A corrupt record is never `Ok(None)`.
    fn load<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Option<Loaded>>>;

    /// Every job with a record, sorted by id.
    ///
    /// # Errors
    /// I/O errors.
    fn list(&self) -> BoxFuture<'_, Result<Vec<JobId>>>;

    /// Deletes the job's record; whether there was one. The job must not be held.
    ///
    /// # Errors
    /// [`Error::Locked`] when an owner holds the job (release it first), and I/O errors.
    fn delete<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<bool>>;

    /// Makes the caller the job's owner: increments the owner epoch durably and returns the
    /// lease with the record as of now.
    ///
    /// # Errors
    /// [`Error::Locked`] naming the holder when the job is held, [`Error::NotFound`], the
    /// read errors of [`load`](CheckpointStore::load), and I/O errors.
    fn acquire<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Acquired>>;

    /// Confirms that `lease` is still the job's current ownership (and, for a backend with
    /// timed leases, extends it). Call it before irreversible steps such as deleting a source.
    ///
    /// # Errors
    /// [`Error::StaleEpoch`] when another owner took the job over, [`Error::NotOwner`] when the
    /// lease was released, and I/O errors.
    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>>;

    /// Gives the job up. The epoch stays; the next acquire increments it.
    ///
    /// # Errors
    /// [`Error::StaleEpoch`] or [`Error::NotOwner`] when `lease` is not the current ownership.
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>>;

    /// Saves the job's status and progress, durably before the future completes, and
    /// returns the record's new generation. The progress is shared, not copied: a
    /// [`Checkpointer`] hands over the one it keeps, and copies it only if a change comes
    /// while the save still holds it (`Arc::make_mut`).
    ///
    /// # Errors
    /// [`Error::StaleEpoch`] when `lease` is older than the job's epoch (I6),
    /// [`Error::NotOwner`] when it was released, [`Error::InvalidTransition`] for a status
    /// change the lifecycle forbids, [`Error::Poisoned`] after a failed fsync, and I/O errors.
    fn save<'a>(
        &'a self,
        lease: &'a Lease,
        status: JobStatus,
        progress: Arc<Progress>,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Saves as [`save`](CheckpointStore::save) does, and replaces the stored plan's options
    /// with `options`: a running job's tunables changed (its rate, by the user), and a
    /// resumed run must go on with them. What the plan moves (source, target, objects) and
    /// the record's layout stay as they are.
    ///
    /// The default implementation calls `save` and keeps the stored options, so a wrapper
    /// that intercepts `save` goes on working, but loses such changes unless it forwards
    /// this method too; every store of this crate implements it.
    ///
    /// # Errors
    /// As [`save`](CheckpointStore::save).
    fn save_with_options<'a>(
        &'a self,
        lease: &'a Lease,
        status: JobStatus,
        progress: Arc<Progress>,
        options: &'a PlanOptions,
    ) -> BoxFuture<'a, Result<u64>> {
        let _ = options;
        self.save(lease, status, progress)
    }
}

/// Implements [`CheckpointStore`] for a newtype whose `inner` field is an `Arc` of a store.
macro_rules! delegate_store {
    ($ty:ty) => {
        impl $crate::CheckpointStore for $ty {
            fn create<'a>(
                &'a self,
                job: &'a ::ferry_types::JobId,
                plan: &'a ::ferry_types::MigrationPlan,
            ) -> $crate::BoxFuture<'a, $crate::Result<$crate::JobRecord>> {
                self.inner.create(job, plan)
            }

            fn load<'a>(
                &'a self,
                job: &'a ::ferry_types::JobId,
            ) -> $crate::BoxFuture<'a, $crate::Result<Option<$crate::Loaded>>> {
                self.inner.load(job)
            }

            fn list(&self) -> $crate::BoxFuture<'_, $crate::Result<Vec<::ferry_types::JobId>>> {
                self.inner.list()
            }

            fn delete<'a>(
                &'a self,
                job: &'a ::ferry_types::JobId,
            ) -> $crate::BoxFuture<'a, $crate::Result<bool>> {
                self.inner.delete(job)
            }

            fn acquire<'a>(
                &'a self,
                job: &'a ::ferry_types::JobId,
            ) -> $crate::BoxFuture<'a, $crate::Result<$crate::Acquired>> {
                self.inner.acquire(job)
            }

            fn renew<'a>(
                &'a self,
                lease: &'a $crate::Lease,
            ) -> $crate::BoxFuture<'a, $crate::Result<()>> {
                self.inner.renew(lease)
            }

            fn release<'a>(
                &'a self,
                lease: &'a $crate::Lease,
            ) -> $crate::BoxFuture<'a, $crate::Result<()>> {
                self.inner.release(lease)
            }

            fn save<'a>(
                &'a self,
                lease: &'a $crate::Lease,
                status: ::ferry_types::JobStatus,
                progress: ::std::sync::Arc<$crate::Progress>,
            ) -> $crate::BoxFuture<'a, $crate::Result<u64>> {
                self.inner.save(lease, status, progress)
            }

            fn save_with_options<'a>(
                &'a self,
                lease: &'a $crate::Lease,
                status: ::ferry_types::JobStatus,
                progress: ::std::sync::Arc<$crate::Progress>,
                options: &'a ::ferry_types::PlanOptions,
            ) -> $crate::BoxFuture<'a, $crate::Result<u64>> {
                self.inner
                    .save_with_options(lease, status, progress, options)
            }
        }
    };
}
pub(crate) use delegate_store;
