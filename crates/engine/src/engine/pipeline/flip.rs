//! The flip: the one step of FORWARD that changes where a key is served (SPEC I2, I3). The
//! batch ([`flip_verified`](super::commit::flip_verified)), a fenced hot key
//! ([`fenced_flip`](super::object::fenced_flip)) and recovery ([`forward`](super::forward)) all
//! flip through [`flip`], so a flip is made, refused and journaled the same way on every path.

use ferry_checkpoint::{Checkpointer, ProgressUpdate};
use ferry_forwarding::{Conflict, Table};
use ferry_types::ObjectKey;

/// What a flip did.
#[derive(Debug)]
pub(super) enum Flip {
    /// Made: the target serves the key; its commit is journaled (durable at the next save).
    Made,
    /// Refused by a write since `observed`, or one still in flight: the source serves the
    /// key, the intent is journaled void, and the object is copied again (I3).
    Again(Conflict),
    /// Refused for another reason (no entry, or one not in a state to flip): the object
    /// fails with this cause.
    Refused(Conflict),
}

/// Flips `key` to its entry's target if no write reached it since the generation
/// `observed` was read, before its copy began (I3), and journals the outcome in `journal`
/// (none while a resumed job settles its record before its checkpointer runs: the caller
/// records it then).
///
/// The flip's intent must be durable before the call, and its copy synced (I2): after a
/// crash, the journal tells which flips may have been made.
pub(super) fn flip(
    table: &Table,
    journal: Option<&Checkpointer>,
    key: &ObjectKey,
    observed: u64,
) -> Flip {
    let (flip, update) = match table.try_flip(key.as_str(), observed) {
        Ok(()) => (
            Flip::Made,
            ProgressUpdate::FlipCommitted { key: key.clone() },
        ),
        Err(cause @ (Conflict::WritesSinceCopyBegan { .. } | Conflict::WritesInFlight { .. })) => (
            Flip::Again(cause),
            ProgressUpdate::FlipDropped { key: key.clone() },
        ),
        Err(cause) => return Flip::Refused(cause),
    };
    if let Some(journal) = journal {
        journal.record(update);
    }
    flip
}
