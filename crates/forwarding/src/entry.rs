//! One key's entry: its inline key, its state and the transitions a flip and a chained
//! registration make.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ferry_types::{JobId, NodeId, ObjectKey};

use crate::{Conflict, EntryInfo, EntryState, Error, Registration, Result, Route};

/// The deadline of an entry that does not expire (a moving one).
pub(crate) const NEVER: u64 = u64::MAX;

/// Laid out by hand (`repr(C)`): what a read looks at comes first (hash, deadline, state,
/// target, then the key, of which a short one is read only in its first bytes), what only
/// writes and registration use comes last.
#[repr(C)]
pub(crate) struct Entry {
    pub(crate) hash: u64,
    pub(crate) expires_at: u64,
    pub(crate) state: EntryState,
    /// True when `copy_from` differs from `source` (a chained move is copying).
    pub(crate) chained: bool,
    /// Set when writes without an entry were in flight in this key's slot at registration;
    /// cleared once the slot was seen empty.
    pub(crate) maybe_untracked: bool,
    pub(crate) in_flight: AtomicU32,
    pub(crate) target: NodeId,
    pub(crate) key: KeyBuf,
    pub(crate) generation: AtomicU64,
    pub(crate) incarnation: u64,
    /// What the read and write paths do not look at, out of line: a smaller bucket is most of
    /// what a hit saves once the table outgrows the caches.
    pub(crate) cold: Box<Cold>,
}

/// The longest key kept inline in an entry. Most object keys are shorter; 61-byte keys
/// measured 0.68–0.80× dashmap on hits with 38 inline bytes, 1.1–1.9× with 70 (README).
const INLINE_KEY: usize = 70;
#[cfg(test)]
pub(crate) const INLINE_KEY_FOR_TESTS: usize = INLINE_KEY;

/// An entry's key: inline when short, so a lookup compares it in the bucket instead of
/// following a pointer to it (that pointer chase was the largest part of a hit); a shared
/// [`ObjectKey`] otherwise.
pub(crate) enum KeyBuf {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Shared(ObjectKey),
}

impl KeyBuf {
    pub(crate) fn new(key: &ObjectKey) -> KeyBuf {
        let text = key.as_str().as_bytes();
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                bytes[..text.len()].copy_from_slice(text);
                KeyBuf::Inline { len, bytes }
            }
            _ => KeyBuf::Shared(key.clone()),
        }
    }

    #[inline]
    pub(crate) fn is(&self, key: &str) -> bool {
        self.as_bytes() == key.as_bytes()
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            KeyBuf::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyBuf::Shared(key) => key.as_str().as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Copied from a `str` whole, in `KeyBuf::new`, so it is UTF-8.
            #[allow(clippy::expect_used)]
            KeyBuf::Inline { .. } => {
                std::str::from_utf8(self.as_bytes()).expect("an inline key is a whole str")
            }
            KeyBuf::Shared(key) => key.as_str(),
        }
    }

    pub(crate) fn to_key(&self) -> ObjectKey {
        match self {
            KeyBuf::Inline { .. } => ObjectKey::new(self.as_str())
                .unwrap_or_else(|_| unreachable!("copied from a valid ObjectKey")),
            KeyBuf::Shared(key) => key.clone(),
        }
    }
}

/// The fields of an [`Entry`] that only registration, chains, TTL changes and snapshots use.
pub(crate) struct Cold {
    pub(crate) hops: u32,
    pub(crate) ttl: u64,
    pub(crate) source: NodeId,
    pub(crate) copy_from: NodeId,
    /// The job that registered the entry (its last move), if it was registered for one.
    pub(crate) owner: Option<JobId>,
    /// While a chained move copies (B→C of a key forwarded A→B), the forwarded entry it
    /// replaced: the move's owner removing it (a cancel, a failure) puts that back, so the
    /// key keeps routing to B for the job that moved it there.
    pub(crate) before: Option<Box<Forwarded>>,
}

/// A forwarded entry's routing, kept while a chained move copies away from its target.
#[derive(Debug)]
pub(crate) struct Forwarded {
    target: NodeId,
    copy_from: NodeId,
    hops: u32,
    owner: Option<JobId>,
    expires_at: u64,
}

impl Entry {
    /// A fresh move of `key` from `source` to `target`, in state `Copying`.
    pub(crate) fn copying(
        key: &ObjectKey,
        hash: u64,
        source: NodeId,
        target: NodeId,
        ttl: u64,
        owner: Option<&JobId>,
    ) -> Entry {
        Entry {
            hash,
            key: KeyBuf::new(key),
            state: EntryState::Copying,
            chained: false,
            maybe_untracked: false,
            in_flight: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            incarnation: 0,
            expires_at: NEVER,
            target,
            cold: Box::new(Cold {
                hops: 1,
                ttl,
                source,
                copy_from: source,
                owner: owner.cloned(),
                before: None,
            }),
        }
    }

    /// Whether the entry counts at `now`: moving, or forwarded and not expired.
    #[inline]
    pub(crate) fn live(&self, now: u64) -> bool {
        self.state != EntryState::Forwarded || self.expires_at > now
    }

    /// Where reads and writes of the key go while the entry is live.
    #[inline]
    pub(crate) fn route(&self) -> Route {
        match self.state {
            EntryState::Forwarded => Route::Target(self.target),
            _ if self.chained => Route::Target(self.cold.copy_from),
            _ => Route::Source,
        }
    }

    /// The entry's deadline as the shard's expiry index records it.
    pub(crate) fn deadline(&self) -> (u64, u64, u64) {
        (self.expires_at, self.incarnation, self.hash)
    }

    pub(crate) fn info(&self, now: u64) -> EntryInfo {
        EntryInfo {
            key: self.key.to_key(),
            source: self.cold.source,
            copy_from: self.cold.copy_from,
            target: self.target,
            state: self.state,
            generation: self.generation.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            hops: self.cold.hops,
            ttl: Duration::from_nanos(self.cold.ttl),
            expires_in: (self.state == EntryState::Forwarded)
                .then(|| Duration::from_nanos(self.expires_at.saturating_sub(now))),
            owner: self.cold.owner.clone(),
        }
    }

    /// Chain collapse, under the shard's write lock: the live entry A→B (forwarded) becomes
    /// the move B→C (`Copying`, reads still going to B), which its flip makes A→C. The caller
    /// removes the old deadline from the expiry index.
    pub(crate) fn chain(
        &mut self,
        source: NodeId,
        target: NodeId,
        owner: Option<&JobId>,
        max_hops: u32,
    ) -> Result<Registration> {
        let key = || self.key.as_str().to_owned();
        match self.state {
            EntryState::Copying | EntryState::Fenced => {
                return Err(Error::AlreadyMoving {
                    key: key(),
                    owner: self.cold.owner.clone(),
                });
            }
            EntryState::Forwarded => {}
        }
        if source != self.target {
            return Err(Error::WrongSource {
                key: key(),
                expected: self.target,
                given: source,
            });
        }
        if target == self.cold.source {
            return Err(Error::Cycle { key: key(), target });
        }
        let hops = self.cold.hops.saturating_add(1);
        if hops > max_hops {
            return Err(Error::TooManyHops {
                key: key(),
                hops,
                max: max_hops,
            });
        }
        self.cold.before = Some(Box::new(Forwarded {
            target: self.target,
            copy_from: self.cold.copy_from,
            hops: self.cold.hops,
            owner: self.cold.owner.take(),
            expires_at: self.expires_at,
        }));
        self.state = EntryState::Copying;
        self.chained = true;
        self.cold.copy_from = source;
        self.target = target;
        self.cold.hops = hops;
        self.cold.owner = owner.cloned();
        self.expires_at = NEVER;
        Ok(Registration {
            generation: self.generation.load(Relaxed),
            hops,
            source: self.cold.source,
            copy_from: source,
        })
    }

    /// The flip itself, under the shard's write lock: `Copying` or `Fenced` to `Forwarded`
    /// with a deadline `ttl` from `now`, if no write could have been missed by the copy.
    /// `untracked` is the key's slot of writes that began without an entry. Returns whether
    /// the entry was fenced.
    pub(crate) fn flip(
        &mut self,
        observed: u64,
        untracked: u32,
        now: u64,
    ) -> Result<bool, Conflict> {
        if self.state == EntryState::Forwarded {
            return Err(Conflict::NotMoving { state: self.state });
        }
        let in_flight = self.in_flight.load(Relaxed);
        if in_flight > 0 {
            return Err(Conflict::WritesInFlight {
                count: u64::from(in_flight),
            });
        }
        if self.maybe_untracked {
            if untracked > 0 {
                return Err(Conflict::WritesInFlight {
                    count: u64::from(untracked),
                });
            }
            // Every write that began before registration has ended (and bumped the
            // generation); later writes are counted on the entry.
            self.maybe_untracked = false;
        }
        let current = self.generation.load(Relaxed);
        if current != observed {
            return Err(Conflict::WritesSinceCopyBegan { observed, current });
        }
        let was_fenced = self.state == EntryState::Fenced;
        self.state = EntryState::Forwarded;
        self.chained = false;
        self.cold.before = None;
        self.expires_at = now.saturating_add(self.cold.ttl);
        Ok(was_fenced)
    }

    /// Undoes a chained move that has not flipped, under the shard's write lock: the entry is
    /// forwarded again as it was before [`Entry::chain`], with its owner and deadline. Returns
    /// whether there was a chained move to undo (the caller removes the entry otherwise, and
    /// lifts a fence and puts the deadline back in the expiry index when it was one).
    pub(crate) fn unchain(&mut self) -> bool {
        if self.state == EntryState::Forwarded {
            return false;
        }
        let Some(before) = self.cold.before.take() else {
            return false;
        };
        self.state = EntryState::Forwarded;
        self.chained = false;
        self.target = before.target;
        self.cold.copy_from = before.copy_from;
        self.cold.hops = before.hops;
        self.cold.owner = before.owner;
        self.expires_at = before.expires_at;
        true
    }
}
