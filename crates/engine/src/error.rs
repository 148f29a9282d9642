//! Errors of `ferry-engine`.

pub use ferry_store::{BoxError, ErrorKind, Op};
use ferry_types::{FailureKind, JobId, JobStatus, NodeId, ObjectKey};

/// What can go wrong in the engine: a store's error, or one of the runner's own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A store operation failed (its own [`ErrorKind`] says whether to retry).
    #[error(transparent)]
    Store(#[from] ferry_store::Error),
    /// A plan names a node the engine was not built with.
    #[error("unknown node {node}: the engine has no store for it")]
    UnknownNode {
        /// The node the plan named.
        node: NodeId,
    },
    /// The engine builder lacks a required part.
    #[error("engine builder: {missing} is required")]
    MissingPart {
        /// What is missing (e.g. `"checkpoint_store"`).
        missing: &'static str,
    },
    /// `start` was given the id of a job that already finished.
    #[error("job {job} already finished with status {status}")]
    JobFinished {
        /// The job.
        job: JobId,
        /// Its final status.
        status: JobStatus,
    },
    /// [`Engine::retry_failed`](crate::Engine::retry_failed) was given a job that did not end
    /// `CompletedWithErrors` (`status` is `None` when the job has no record).
    #[error("job {job} has no failed objects to retry (status {status:?})")]
    NotRetryable {
        /// The job.
        job: JobId,
        /// Its status, if it has a record.
        status: Option<JobStatus>,
    },
    /// The job was cancelled (what an in-flight copy ends with when the job is cancelled).
    #[error("job {job} was cancelled")]
    Cancelled {
        /// The job.
        job: JobId,
    },
    /// Verification found the target copy different from what was read from the source.
    #[error("verification of {:?} failed: {what}", key.as_str())]
    VerifyMismatch {
        /// The object.
        key: ObjectKey,
        /// What differed (size or checksum).
        what: &'static str,
    },
    /// The source kept changing after its copy (a program writing it outside the forwarding
    /// table), more often than the plan's `max_changes`: the source is kept, the target may
    /// hold an older content. `ferry retry-failed` (or `Engine::retry_failed`) moves it once
    /// the writers have stopped.
    #[error("the source of {:?} changed outside the forwarding table {when}; it is kept, and the target may hold an older content: retry once the writers have stopped", key.as_str())]
    SourceChanged {
        /// The object.
        key: ObjectKey,
        /// The changes this run saw (each but the last was copied again).
        changes: u32,
        /// When the last change was seen (e.g. `"before its flip"`).
        when: &'static str,
    },
    /// A key written so often that its flips kept being refused could not be moved under a
    /// fence either: the fenced copy, sync and flip took longer than the plan's
    /// `fence_timeout`. The fence was lifted (writers go on to the source) and the source kept.
    #[error("key {:?} is written too often to move: its fenced copy took longer than {timeout:?}", key.as_str())]
    HotKey {
        /// The key.
        key: ObjectKey,
        /// The plan's `fence_timeout`.
        timeout: std::time::Duration,
    },
    /// The forwarding table refused to flip a key to its target for good: its entry is gone
    /// or not moving, or writes kept refusing the flip even under a fence.
    #[error("the flip of {:?} to its target was refused", key.as_str())]
    FlipRefused {
        /// The key.
        key: ObjectKey,
        /// The table's reason.
        #[source]
        cause: ferry_forwarding::Conflict,
    },
    /// The job was stopped unfinished by [`Engine::shutdown`](crate::Engine::shutdown): its
    /// checkpoint is saved with the status it had (running or paused), and
    /// [`Engine::recover`](crate::Engine::recover) (or `start` with its id) takes it up again.
    #[error("job {job} was stopped by the engine's shutdown; recover resumes it")]
    ShutDown {
        /// The job.
        job: JobId,
    },
    /// The job's runner task ended abnormally (panicked or was aborted).
    #[error("the runner of job {job} ended abnormally")]
    RunnerGone {
        /// The job.
        job: JobId,
    },
    /// The plan is invalid.
    #[error("invalid plan")]
    Plan(#[from] ferry_types::Error),
    /// The checkpoint store failed.
    #[error("checkpoint store failed")]
    Checkpoint(#[from] ferry_checkpoint::Error),
    /// The forwarding table refused an operation.
    #[error("forwarding table refused an operation")]
    Forwarding(#[from] ferry_forwarding::Error),
    /// The job's throttle could not be built.
    #[error("throttle could not be built")]
    Throttle(#[from] ferry_throttle::Error),
    /// The commit hook failed for an object: its source was kept (the object stays
    /// forwarded to its target copy).
    #[error("commit hook failed for {:?}", key.as_str())]
    CommitHook {
        /// The object.
        key: ObjectKey,
        /// The hook's error.
        source: BoxError,
    },
}

impl Error {
    /// How to react to this error: give up on the object, retry it, or treat it as absent.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store(err) => err.kind(),
            Error::VerifyMismatch { .. } => ErrorKind::Transient,
            Error::Forwarding(ferry_forwarding::Error::FenceTimeout { .. }) => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        }
    }

    /// Whether retrying may succeed: `self.kind() == ErrorKind::Transient`.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// Whether the object was absent: `self.kind() == ErrorKind::NotFound`.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// What kind of failure this is, for the checkpoint record and for programs that act
    /// on it (a hint to free disk space, to fix permissions): never found by matching text.
    /// A full disk or a denied access is recognised from the `io::Error` anywhere in the
    /// error's chain (a directory store's, or one under an object-store client's error).
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            Error::Store(err) => {
                if let Some(kind) = io_failure(err) {
                    return kind;
                }
                match err.kind() {
                    ErrorKind::Transient => FailureKind::Transient,
                    ErrorKind::Permanent => FailureKind::Permanent,
                    _ => FailureKind::Other,
                }
            }
            Error::VerifyMismatch { .. } => FailureKind::Verify,
            Error::HotKey { .. } => FailureKind::HotKey,
            Error::SourceChanged { .. } => FailureKind::SourceChanged,
            Error::FlipRefused { .. } => FailureKind::FlipRefused,
            Error::CommitHook { .. } => FailureKind::CommitHook,
            Error::Forwarding(ferry_forwarding::Error::AlreadyMoving { .. }) => {
                FailureKind::AlreadyMoving
            }
            _ => FailureKind::Other,
        }
    }

    /// The store's error, when this is one.
    pub fn as_store(&self) -> Option<&ferry_store::Error> {
        match self {
            Error::Store(err) => Some(err),
            _ => None,
        }
    }
}

/// The kind of the first `io::Error` in `err`'s chain that says the disk is full or access
/// was denied.
fn io_failure(err: &(dyn std::error::Error + 'static)) -> Option<FailureKind> {
    use std::io::ErrorKind as K;
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                K::StorageFull | K::QuotaExceeded => return Some(FailureKind::DiskFull),
                K::PermissionDenied => return Some(FailureKind::PermissionDenied),
                _ => {}
            }
        }
        next = err.source();
    }
    None
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error and its causes, as the one line the checkpoint record keeps and logs show.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
