//! The table's public value types: routes, states, flip outcomes, entry copies and counters.

use std::fmt;
use std::time::Duration;

use ferry_types::{JobId, NodeId, ObjectKey};
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::{Table, WriteTicket};

/// Where a read (or a write, see [`WriteTicket::route`]) of a key must go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Serve the key where the caller's own placement puts it: the key is not moving, its
    /// first move is still being copied, or its entry expired. The table does not know the
    /// home of keys it has no entry for, so this variant carries no node.
    Source,
    /// Serve the key from this node: the key was forwarded there, or (for a chained move
    /// B→C of a key already forwarded A→B) it is still being copied away from there.
    Target(NodeId),
}

/// The state of an entry. A key with no entry (or an expired one) is simply not moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryState {
    /// The engine is copying the key; reads and writes go to the source, writes are counted.
    Copying,
    /// Like `Copying`, but new writers wait (the fence) so the copy can finish on a hot key.
    Fenced,
    /// The key was flipped: reads and writes go to the target until the entry expires.
    Forwarded,
}

impl EntryState {
    /// Whether the key is moving (`Copying` or `Fenced`): not flipped yet, so what its target
    /// holds is not the key's content.
    pub fn is_moving(self) -> bool {
        matches!(self, EntryState::Copying | EntryState::Fenced)
    }
}

/// Why [`Table::try_flip`] refused to flip a key. A refused flip is an expected outcome, not
/// an error: the engine copies the key again (or fences it) and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conflict {
    /// A write started or ended since the engine observed the generation: the copy may miss it.
    WritesSinceCopyBegan {
        /// The generation the engine observed when its copy began.
        observed: u64,
        /// The generation now.
        current: u64,
    },
    /// Writes to the key are in flight; flipping now could strand them on the source.
    WritesInFlight {
        /// Writes in flight (for writes that began before the key was registered, the count
        /// of such writes in the key's slot, which may include other keys).
        count: u64,
    },
    /// The key is not moving: it is already forwarded.
    NotMoving {
        /// The entry's state.
        state: EntryState,
    },
    /// The key has no live entry (it was removed, or never registered).
    NotFound,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::WritesSinceCopyBegan { observed, current } => write!(
                f,
                "writes since the copy began (generation {observed} is now {current})"
            ),
            Conflict::WritesInFlight { count } => write!(f, "{count} writes in flight"),
            Conflict::NotMoving { state } => write!(f, "key is not moving (it is {state:?})"),
            Conflict::NotFound => f.write_str("key is not in the table"),
        }
    }
}

/// A refused flip can be passed up with `?` where a caller treats it as a failure.
impl std::error::Error for Conflict {}

/// Returned by [`Table::try_begin_write`] when the key is fenced: wait with
/// [`Table::begin_write`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced;

impl fmt::Display for Fenced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("key is fenced")
    }
}

impl std::error::Error for Fenced {}

/// What [`Table::register`] recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The entry's generation now; observe it again with [`Table::generation`] when the copy
    /// begins.
    pub generation: u64,
    /// Moves the entry records, this one included (1 for a fresh move).
    pub hops: u32,
    /// The key's home: the source of its first move (A in a chain A→B→C).
    pub source: NodeId,
    /// Where the data is read from while this move copies (the source, or the previous target
    /// in a chain).
    pub copy_from: NodeId,
}

/// A copy of one entry, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The key.
    pub key: ObjectKey,
    /// The key's home: the source of its first move.
    pub source: NodeId,
    /// Where the current copy reads from: `source`, or the previous target in a chain.
    pub copy_from: NodeId,
    /// Where the key goes (or went).
    pub target: NodeId,
    /// The entry's state.
    pub state: EntryState,
    /// Write starts and ends counted since the entry was created.
    pub generation: u64,
    /// Writes in flight through tickets.
    pub in_flight: u32,
    /// Moves recorded (A→B→C is 2).
    pub hops: u32,
    /// The entry's TTL, counted from its flip (or from [`Table::set_ttl`]).
    pub ttl: Duration,
    /// Time left before a forwarded entry expires; `None` while the key is moving.
    pub expires_in: Option<Duration>,
    /// The job that registered the entry's last move ([`Table::register_for`]); `None` for
    /// an entry registered without one.
    pub owner: Option<JobId>,
}

/// Counters of a table since it was built.
///
/// `lookups` and `hits` are counted in 64 stripes with plain loads and stores (no atomic
/// read-modify-write on the read path). Threads get stripes round-robin in the order they first
/// read; the counts are exact unless two threads running at the same time share a stripe
/// (more than 64 reader threads, or a long-lived process that spawned many), and then may miss
/// a few increments: they are monitoring figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls to [`Table::route_read`] and [`Table::read`].
    pub lookups: u64,
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Successful [`Table::register`] calls.
    pub registrations: u64,
    /// Successful flips.
    pub flips: u64,
    /// Flips refused with a [`Conflict`].
    pub flips_refused: u64,
    /// Keys fenced.
    pub fences: u64,
    /// Expired entries removed by sweeps.
    pub expired: u64,
}
