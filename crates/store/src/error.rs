//! Errors of `ferry-store`: what went wrong in a store operation, and how to react to it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use ferry_types::ObjectKey;

/// A boxed error from below a store (a network client, an injected fault…).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The store operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`Store::head`](crate::Store::head).
    Head,
    /// [`Store::get`](crate::Store::get), or reading its body.
    Get,
    /// [`Store::put`](crate::Store::put), or reading the body it was given.
    Put,
    /// [`Store::delete`](crate::Store::delete).
    Delete,
    /// [`Store::list`](crate::Store::list).
    List,
    /// [`Store::sync`](crate::Store::sync).
    Sync,
    /// Opening a store (e.g. [`DirStore::open`](crate::DirStore::open)).
    Open,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Head => "head",
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Sync => "sync",
            Op::Open => "open",
        })
    }
}

/// How a caller should react to an [`Error`]: the classification SPEC §6 asks of stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object does not exist (an expected outcome for `get`; `head` and `delete` report
    /// absence as a value instead).
    NotFound,
    /// Trying again later may succeed: a timeout, an interrupted or truncated transfer.
    Transient,
    /// Trying again will fail the same way: an invalid key, a refused path, a full or
    /// read-only disk, a bug.
    Permanent,
}

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object does not exist.
    #[error("object {:?} not found", key.as_str())]
    NotFound {
        /// The key that was asked for.
        key: ObjectKey,
    },
    /// The store cannot hold this key (e.g. [`DirStore`](crate::DirStore) refuses `..`
    /// segments). Checked before anything is touched.
    #[error("invalid key {:?} for this store: {reason}", key.as_str())]
    InvalidKey {
        /// The refused key.
        key: ObjectKey,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A path on the way to a key is a symbolic link, or not a directory: the directory store
    /// never follows a link, so it never leaves its root.
    #[error("refused to {op} {:?}: {path:?} is a symbolic link or not a directory", key.as_str())]
    UnsafePath {
        /// The operation.
        op: Op,
        /// The key.
        key: ObjectKey,
        /// The offending path, relative to the store's root.
        path: PathBuf,
    },
    /// A body ended before (or ran past) the size its object announced: a truncated transfer,
    /// never to be stored as a short object.
    #[error("body of {:?} has {got} bytes where {expected} were announced", key.as_str())]
    Truncated {
        /// The object.
        key: ObjectKey,
        /// The size the object's metadata announced.
        expected: u64,
        /// The bytes the body delivered (or had delivered when it ran past `expected`).
        got: u64,
    },
    /// A failure that may go away when retried.
    #[error("transient failure in {op}{}", fmt_key(key.as_ref()))]
    Transient {
        /// The operation.
        op: Op,
        /// The key, when the operation had one.
        key: Option<ObjectKey>,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The store is overloaded: it asked the caller to slow down (HTTP 429 or 503, S3
    /// `SlowDown`) or did not answer in time. Transient: retry later, and send less (see
    /// [`Error::is_overload`]).
    #[error("store overloaded in {op}{}", fmt_key(key.as_ref()))]
    Busy {
        /// The operation.
        op: Op,
        /// The key, when the operation had one.
        key: Option<ObjectKey>,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// An upload in parts is gone (aborted, completed, or cleaned up by the store), or a
    /// part no longer matches its tag: its parts must be sent again under a new upload.
    #[error("upload {upload:?} of {:?} not found", key.as_str())]
    UploadNotFound {
        /// The object the upload was for.
        key: ObjectKey,
        /// The store's id of the upload.
        upload: String,
    },
    /// A failure that will not go away when retried.
    #[error("permanent failure in {op}{}", fmt_key(key.as_ref()))]
    Permanent {
        /// The operation.
        op: Op,
        /// The key, when the operation had one.
        key: Option<ObjectKey>,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// An I/O error on a file of a directory store; classified by its
    /// [`io::ErrorKind`](std::io::ErrorKind) (see [`Error::kind`]).
    #[error("i/o error in {op} on {path:?}")]
    Io {
        /// The operation.
        op: Op,
        /// The file or directory, relative to the store's root when it is inside it.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An earlier `sync` of this directory store failed: the writes it covered may never
    /// reach the disk, and the kernel reports such a failure only once, so no later sync of
    /// the store can vouch for them. Every sync after the first failure fails with this
    /// (as PostgreSQL treats a failed fsync); reopen the store and copy again.
    #[error(
        "store at {root:?} is poisoned: an earlier sync failed, so its writes may not be durable"
    )]
    SyncPoisoned {
        /// The store's root directory.
        root: PathBuf,
    },
}

fn fmt_key(key: Option<&ObjectKey>) -> String {
    key.map(|k| format!(" of {:?}", k.as_str()))
        .unwrap_or_default()
}

impl Error {
    /// How to react to this error: give up on the object, retry it, or treat it as absent.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            // Absent, as a missing object is: not retried as it is, started over.
            Error::UploadNotFound { .. } => ErrorKind::NotFound,
            Error::Transient { .. } | Error::Truncated { .. } | Error::Busy { .. } => {
                ErrorKind::Transient
            }
            Error::InvalidKey { .. } | Error::UnsafePath { .. } | Error::Permanent { .. } => {
                ErrorKind::Permanent
            }
            Error::Io { source, .. } => io_kind(source),
            Error::SyncPoisoned { .. } => ErrorKind::Permanent,
        }
    }

    /// Whether retrying may succeed: `self.kind() == ErrorKind::Transient`.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// Whether the store says it is overloaded: an [`Error::Busy`], or a timeout (an I/O
    /// error of kind `TimedOut`, wherever it is in the chain of causes). A rate that follows
    /// the store's health backs off on these; they are [transient](Error::is_transient) too.
    pub fn is_overload(&self) -> bool {
        match self {
            Error::Busy { .. } => true,
            Error::Io { source, .. } => source.kind() == io::ErrorKind::TimedOut,
            Error::Transient { source, .. } => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**source);
                while let Some(err) = cause {
                    match err.downcast_ref::<io::Error>() {
                        Some(io) if io.kind() == io::ErrorKind::TimedOut => return true,
                        // An I/O error wrapping another names it as its payload, not as
                        // its source.
                        Some(io) if io.get_ref().is_some() => {
                            cause = io.get_ref().map(|inner| inner as _);
                        }
                        _ => cause = err.source(),
                    }
                }
                false
            }
            _ => false,
        }
    }

    /// Whether the object was absent: `self.kind() == ErrorKind::NotFound`.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    pub(crate) fn io(op: Op, path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

fn io_kind(err: &io::Error) -> ErrorKind {
    use io::ErrorKind as K;
    match err.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::Interrupted
        | K::TimedOut
        | K::WouldBlock
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::ResourceBusy => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::new("a/b").unwrap()
    }

    #[test]
    fn errors_are_classified_for_retry() {
        let cases: Vec<(Error, ErrorKind)> = vec![
            (Error::NotFound { key: key() }, ErrorKind::NotFound),
            (
                Error::Truncated {
                    key: key(),
                    expected: 2,
                    got: 1,
                },
                ErrorKind::Transient,
            ),
            (
                Error::InvalidKey {
                    key: key(),
                    reason: "x",
                },
                ErrorKind::Permanent,
            ),
            (
                Error::io(Op::Get, "a", io::Error::from(io::ErrorKind::TimedOut)),
                ErrorKind::Transient,
            ),
            (
                Error::io(
                    Op::Put,
                    "a",
                    io::Error::from(io::ErrorKind::PermissionDenied),
                ),
                ErrorKind::Permanent,
            ),
            (
                Error::io(Op::Get, "a", io::Error::from(io::ErrorKind::NotFound)),
                ErrorKind::NotFound,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(err.is_transient(), kind == ErrorKind::Transient);
        }
    }

    #[test]
    fn overloads_are_busy_errors_and_timeouts_and_are_transient() {
        let timeout = || io::Error::from(io::ErrorKind::TimedOut);
        let cases: Vec<(Error, bool)> = vec![
            (
                Error::Busy {
                    op: Op::Put,
                    key: Some(key()),
                    source: "503 SlowDown".into(),
                },
                true,
            ),
            (Error::io(Op::Put, "a", timeout()), true),
            (
                Error::Transient {
                    op: Op::Get,
                    key: None,
                    source: Box::new(io::Error::other(timeout())),
                },
                true,
            ),
            (
                Error::Transient {
                    op: Op::Get,
                    key: None,
                    source: "connection reset".into(),
                },
                false,
            ),
            (
                Error::io(
                    Op::Put,
                    "a",
                    io::Error::from(io::ErrorKind::ConnectionReset),
                ),
                false,
            ),
            (Error::NotFound { key: key() }, false),
        ];
        for (err, overload) in cases {
            assert_eq!(err.is_overload(), overload, "{err:?}");
            if overload {
                assert!(err.is_transient(), "{err:?}");
            }
        }
        let busy = Error::Busy {
            op: Op::Put,
            key: Some(key()),
            source: "x".into(),
        };
        assert_eq!(busy.to_string(), "store overloaded in put of \"a/b\"");
    }

    #[test]
    fn messages_name_the_key_and_are_lowercase() {
        let err = Error::Transient {
            op: Op::Put,
            key: Some(key()),
            source: "boom".into(),
        };
        assert_eq!(err.to_string(), "transient failure in put of \"a/b\"");
        let err = Error::InvalidKey {
            key: key(),
            reason: "has an empty segment",
        };
        assert!(err.to_string().starts_with("invalid key \"a/b\""));
    }
}
