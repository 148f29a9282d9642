//! Errors of `ferry-checkpoint`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_types::{JobId, JobStatus};

/// What can go wrong in a checkpoint store.
///
/// `path` fields name the file that holds the record; for the database backends they name
/// the database file followed by the table and the job (`state.redb/jobs/<job>`), and for
/// [`MemoryStore`](crate::MemoryStore) `memory/jobs/<job>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed.
    #[error("could not {op} {}: check the disk, its free space and the permissions", path.display())]
    Io {
        /// What was being done: `write`, `fsync`, `rename`, `read`, ….
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A record failed its checks: wrong magic, bad CRC32C, short read, undecodable payload.
    ///
    /// Never treated as "no record": resuming from nothing would redo or skip work.
    #[error(
        "checkpoint record {} is corrupt ({reason}): restore it from a backup or delete it to \
         start the job over",
        path.display()
    )]
    Corrupt {
        /// The file (or backend key) holding the record.
        path: PathBuf,
        /// What is wrong with it.
        reason: CorruptReason,
    },

    /// A record was written by a newer format version than this build reads.
    #[error(
        "checkpoint record {} has format version {found}, this build reads up to {supported}: \
         upgrade ferry",
        path.display()
    )]
    UnsupportedVersion {
        /// The file (or backend key) holding the record.
        path: PathBuf,
        /// The version in the record.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },

    /// The job has no record in this store.
    #[error("no checkpoint record for job `{job}`: create the job first")]
    NotFound {
        /// The job.
        job: JobId,
    },

    /// A job with this id already has a record.
    #[error("job `{job}` already has a checkpoint record: resume it or delete it first")]
    AlreadyExists {
        /// The job.
        job: JobId,
    },

    /// Another owner holds the job (SPEC I6).
    #[error("job `{job}` is owned by {holder}: stop that engine first, or let it finish")]
    Locked {
        /// The job.
        job: JobId,
        /// Who holds it, as far as known: `pid 4242 on host-a (epoch 7)`.
        holder: String,
    },

    /// A lease from an older owner epoch was used: another engine took the job over since
    /// (SPEC I6). The holder of the stale lease must stop working on the job.
    #[error(
        "lease of job `{job}` is stale (epoch {epoch}, the job is at epoch {current}): another \
         engine owns the job now; stop working on it"
    )]
    StaleEpoch {
        /// The job.
        job: JobId,
        /// The epoch of the lease that was used.
        epoch: u64,
        /// The job's current owner epoch.
        current: u64,
    },

    /// A timed lease ran out by this process's own clock before it could be renewed (the
    /// shared store was unreachable): another process may own the job now, so this one must
    /// stop working on it (I6). The job is taken over, or acquired again, once the lease has
    /// run out everywhere.
    #[error(
        "the lease of job `{job}` (epoch {epoch}) ran out before it could be renewed: another \
         worker may own the job now; stop working on it"
    )]
    LeaseLost {
        /// The job.
        job: JobId,
        /// The epoch of the lease.
        epoch: u64,
    },

    /// A lease that was released (or never acquired from this store) was used.
    #[error("job `{job}` is not owned through this store (epoch {epoch}): acquire it first")]
    NotOwner {
        /// The job.
        job: JobId,
        /// The epoch of the lease that was used.
        epoch: u64,
    },

    /// The save asked for a status change the job lifecycle does not allow.
    #[error("job `{job}` cannot move from status {from} to {to}")]
    InvalidTransition {
        /// The job.
        job: JobId,
        /// The status on record.
        from: JobStatus,
        /// The status asked for.
        to: JobStatus,
    },

    /// `create` was given a plan whose id names another job.
    #[error("plan id `{plan_id}` does not match job `{job}`: create the job under the plan's id")]
    PlanIdMismatch {
        /// The job being created.
        job: JobId,
        /// The id in the plan.
        plan_id: JobId,
    },

    /// A record could not be encoded (it is larger than the envelope's 4 GiB limit).
    #[error("checkpoint record of job `{job}` could not be encoded: {reason}")]
    Encode {
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
    },

    /// An earlier fsync failed, so nothing this store wrote since can be trusted to be on
    /// disk; every call fails from then on (no silent retry, see `docs/design.md`).
    #[error(
        "checkpoint store {} is poisoned by an earlier failed fsync ({cause}): restart the \
         process and resume from the last checkpoint",
        dir.display()
    )]
    Poisoned {
        /// The store's directory.
        dir: PathBuf,
        /// The failure that poisoned it.
        cause: String,
    },

    /// A background save of a [`Checkpointer`](crate::Checkpointer) failed earlier; the job
    /// must stop and resume from its last checkpoint.
    #[error("an earlier checkpoint save of job `{job}` failed: stop the job and resume it")]
    Background {
        /// The job.
        job: JobId,
        /// The failure.
        #[source]
        source: Arc<Error>,
    },

    /// A request to the shared store behind a [`LeasedStore`](crate::LeasedStore) failed (an
    /// object store: network, credentials, permissions, or no conditional-write support).
    #[error(
        "could not {op} {place}: check the endpoint, the credentials and the network (and, \
         for writes, that the store supports conditional writes)"
    )]
    Remote {
        /// What was being done: `read`, `write`, `list`, `delete`.
        op: &'static str,
        /// The record's place, e.g. `s3://bucket/ferry-state/jobs/ID`.
        place: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The blocking task that did the I/O panicked or was cancelled.
    #[error("the checkpoint I/O task of job `{job}` did not finish")]
    Task {
        /// The job (or `-` for store-wide work).
        job: String,
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },

    /// The sled database failed.
    #[cfg(feature = "sled")]
    #[error("sled database {} failed", path.display())]
    Sled {
        /// The database directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sled::Error,
    },

    /// The redb database failed.
    #[cfg(feature = "redb")]
    #[error("redb database {} failed", path.display())]
    Redb {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<redb::Error>,
    },
}

/// Why a record is corrupt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptReason {
    /// Fewer bytes than the envelope header or than its payload length says.
    Truncated {
        /// Bytes expected.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// More bytes than the header's payload length says.
    TrailingBytes {
        /// Bytes expected.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// The file does not start with the checkpoint magic.
    BadMagic([u8; 4]),
    /// The CRC32C does not match the bytes.
    ChecksumMismatch {
        /// The checksum stored in the header.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// A header field holds a value no version uses (a zero version, an unknown record kind).
    BadHeader(String),
    /// The checksum matched but the payload did not decode.
    Payload(String),
    /// The record belongs to another job than the one asked for (a renamed file).
    WrongJob {
        /// The job asked for.
        expected: JobId,
        /// The job in the record.
        found: JobId,
    },
}

impl fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptReason::Truncated { expected, found } => {
                write!(f, "short read: {found} of {expected} bytes")
            }
            CorruptReason::TrailingBytes { expected, found } => {
                write!(f, "{found} bytes where the header says {expected}")
            }
            CorruptReason::BadMagic(magic) => write!(f, "bad magic {magic:02x?}"),
            CorruptReason::ChecksumMismatch { stored, computed } => write!(
                f,
                "crc32c mismatch: stored {stored:08x}, computed {computed:08x}"
            ),
            CorruptReason::BadHeader(what) => write!(f, "bad header: {what}"),
            CorruptReason::Payload(what) => write!(f, "undecodable payload: {what}"),
            CorruptReason::WrongJob { expected, found } => {
                write!(
                    f,
                    "record of job `{found}` where job `{expected}` was expected"
                )
            }
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn task(job: &JobId, source: tokio::task::JoinError) -> Error {
        Error::Task {
            job: job.to_string(),
            source,
        }
    }
}
