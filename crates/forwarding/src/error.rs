//! The error type of this crate.

use std::time::Duration;

use ferry_types::{JobId, NodeId};

use crate::EntryState;

/// `Result` with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when a caller asks the [`Table`](crate::Table) for something it cannot do.
///
/// Expected outcomes are not errors: a key that is not in the table routes to
/// [`Route::Source`](crate::Route::Source), a refused flip is a [`Conflict`](crate::Conflict)
/// value and a fenced key is [`Fenced`](crate::Fenced).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A move was registered with the same node as source and target.
    #[error("cannot move key {key:?} from node {node} to itself")]
    SameSourceAndTarget {
        /// The key.
        key: String,
        /// The node named as both source and target.
        node: NodeId,
    },
    /// The move would send a forwarded key back to the node it came from.
    #[error(
        "moving key {key:?} to node {target} would close a cycle: it was forwarded away from there"
    )]
    Cycle {
        /// The key.
        key: String,
        /// The node the key was first moved away from, named again as the target.
        target: NodeId,
    },
    /// The move would make the chain of moves longer than `Config::max_hops`.
    #[error("moving key {key:?} again would make {hops} hops, more than the limit of {max}")]
    TooManyHops {
        /// The key.
        key: String,
        /// The hops the entry would have.
        hops: u32,
        /// The configured limit.
        max: u32,
    },
    /// The key is already being copied (`Copying` or `Fenced`).
    #[error("key {key:?} is already moving{}", owner.as_ref().map(|job| format!(" (job {job})")).unwrap_or_default())]
    AlreadyMoving {
        /// The key.
        key: String,
        /// The job moving it, when it was registered for one.
        owner: Option<JobId>,
    },
    /// A forwarded key was registered to move from a node that does not hold it.
    #[error("key {key:?} is served by node {expected}, not by node {given}")]
    WrongSource {
        /// The key.
        key: String,
        /// Where the key is served now (the target of its forwarded entry).
        expected: NodeId,
        /// The source the caller named.
        given: NodeId,
    },
    /// The key has no live entry in the table.
    #[error("key {key:?} is not in the forwarding table")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The operation needs a moving key (`Copying` or `Fenced`) but the key is in another state.
    #[error("key {key:?} is not moving (it is {state:?})")]
    NotMoving {
        /// The key.
        key: String,
        /// The state the entry is in.
        state: EntryState,
    },
    /// A fenced key was neither flipped nor unfenced within the fence timeout.
    #[error("key {key:?} stayed fenced for {waited:?}, longer than the fence timeout")]
    FenceTimeout {
        /// The key.
        key: String,
        /// How long the caller waited.
        waited: Duration,
    },
}
