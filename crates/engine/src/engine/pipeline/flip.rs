//! The flip: the one step of FORWARD that changes where a key is served (SPEC I2, I3). The
//! batch ([`flip_verified`](super::commit::flip_verified)), a fenced hot key
//! ([`fenced_flip`](super::object::fenced_flip)) and recovery ([`forward`](super::forward)) all
//! flip through [`flip`], and journal what it did as [`Flip::journal`] says, so a flip is
//! made, refused and journaled the same way on every path.

use ferry_checkpoint::ProgressUpdate;
use ferry_forwarding::{Conflict, Table};
use ferry_types::ObjectKey;

/// What a flip did.
#[derive(Debug)]
pub(super) enum Flip {
    /// Made: the target serves the key.
    Made,
    /// Refused by a write since `observed`, or one still in flight: the source serves the
    /// key, and the object is copied again (I3).
    Again(Conflict),
    /// Refused for another reason (no entry, or one not in a state to flip): the object
    /// fails with this cause.
    Refused(Conflict),
}

impl Flip {
    /// What the job's flip journal records of this flip of `key`: committed when made, void
    /// when refused by a write (a failure voids its intent with the failure).
    pub(super) fn journal(&self, key: &ObjectKey) -> Option<ProgressUpdate> {
        let key = key.clone();
        match self {
            Flip::Made => Some(ProgressUpdate::FlipCommitted { key }),
            Flip::Again(_) => Some(ProgressUpdate::FlipDropped { key }),
            Flip::Refused(_) => None,
        }
    }
}

/// Flips `key` to its entry's target if no write reached it since the generation
/// `observed` was read, before its copy began (I3).
///
/// The flip's intent must be durable before the call, and its copy synced (I2): after a
/// crash, the journal tells which flips may have been made. The caller records
/// [`Flip::journal`] (a resumed job settling its record before its checkpointer runs records
/// its outcome with the rest of what it settles).
pub(super) fn flip(table: &Table, key: &ObjectKey, observed: u64) -> Flip {
    match table.try_flip(key.as_str(), observed) {
        Ok(()) => Flip::Made,
        Err(cause @ (Conflict::WritesSinceCopyBegan { .. } | Conflict::WritesInFlight { .. })) => {
            Flip::Again(cause)
        }
        Err(cause) => Flip::Refused(cause),
    }
}
