//! The lock-striped table: shards, entries, reads, tickets, flips and fences.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use ferry_types::{JobId, NodeId, ObjectKey};
use hashbrown::HashTable;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::clock::duration_nanos;
use crate::filter::Filter;
use crate::sweep::SweeperHandle;
use crate::{Clock, Config, Error, Result};

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
    /// Calls to [`Table::route_read`].
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

pub(crate) const NEVER: u64 = u64::MAX;
const UNTRACKED_SLOTS: usize = 64;
const STRIPES: usize = 64;
/// Presence filter bits per expected entry: at 1M entries, 1 MiB, about a core's L2. Twice
/// as many (0.8% false positives instead of 3.6%) measured no faster: the larger filter's
/// loads cost what the fewer locked lookups save (README).
const FILTER_BITS: usize = 8;

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
}

impl Entry {
    #[inline]
    fn live(&self, now: u64) -> bool {
        self.state != EntryState::Forwarded || self.expires_at > now
    }

    #[inline]
    fn route(&self) -> Route {
        match self.state {
            EntryState::Forwarded => Route::Target(self.target),
            _ if self.chained => Route::Target(self.cold.copy_from),
            _ => Route::Source,
        }
    }

    fn info(&self, now: u64) -> EntryInfo {
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
}

pub(crate) struct ShardMap {
    pub(crate) entries: HashTable<Entry>,
    /// Forwarded entries by deadline: `(expires_at, incarnation, hash)`.
    pub(crate) expiry: BTreeSet<(u64, u64, u64)>,
    next_incarnation: u64,
    removed_since_rebuild: usize,
}

pub(crate) struct Shard {
    pub(crate) map: RwLock<ShardMap>,
    /// This shard's place in the table, which names its words of the filter.
    index: usize,
    /// Writes in flight for keys that had no live entry when they began, by slot.
    untracked: Box<[AtomicU32]>,
    /// Entries in this shard in state `Fenced`.
    fenced: AtomicUsize,
    /// Woken when a fenced entry is flipped, unfenced or removed.
    fence_lifted: Notify,
    /// Woken when writes drain from a fenced entry.
    drained: Notify,
}

#[derive(Default)]
struct Stripe {
    lookups: AtomicU64,
    hits: AtomicU64,
}

#[derive(Default)]
struct Counters {
    registrations: AtomicU64,
    flips: AtomicU64,
    flips_refused: AtomicU64,
    fences: AtomicU64,
    expired: AtomicU64,
}

pub(crate) struct Inner {
    hasher: foldhash::quality::RandomState,
    /// Presence filter of the whole table, read without a lock; a shard's keys set bits only
    /// in the shard's own words, under its write lock (see [`Filter`]).
    filter: Filter,
    pub(crate) shards: Box<[CachePadded<Shard>]>,
    shard_mask: u64,
    pub(crate) clock: Clock,
    default_ttl: u64,
    max_hops: u32,
    pub(crate) fence_timeout: Duration,
    pub(crate) sweep_batch: usize,
    stripes: Box<[CachePadded<Stripe>; STRIPES]>,
    counters: Counters,
    pub(crate) sweeper: OnceLock<std::thread::Thread>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wake the sweeper so it sees the table is gone and exits now, not after its interval.
        if let Some(thread) = self.sweeper.get() {
            thread.unpark();
        }
    }
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

#[inline]
fn stripe_index() -> usize {
    STRIPE.with(|s| {
        let mut index = s.get();
        if index == usize::MAX {
            index = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
            s.set(index);
        }
        // Already below STRIPES; the mask says so to the compiler (no bounds check).
        index & (STRIPES - 1)
    })
}

/// Adds one with a plain load and store: the stripe belongs to this thread (see [`Stats`]).
#[inline]
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
}

impl Inner {
    fn new(config: &Config) -> Inner {
        let shards = config.shards.clamp(1, 4096).next_power_of_two();
        // FILTER_BITS per expected entry, in 64-bit words: a power of two, at least two per
        // shard, at most 2^25 (256 MiB).
        let words = (config.expected_entries.saturating_mul(FILTER_BITS) / 64)
            .next_power_of_two()
            .clamp(2 * shards, 1 << 25);
        let shard_vec = (0..shards)
            .map(|index| {
                CachePadded::new(Shard {
                    index,
                    map: RwLock::new(ShardMap {
                        entries: HashTable::new(),
                        expiry: BTreeSet::new(),
                        next_incarnation: 1,
                        removed_since_rebuild: 0,
                    }),
                    untracked: (0..UNTRACKED_SLOTS).map(|_| AtomicU32::new(0)).collect(),
                    fenced: AtomicUsize::new(0),
                    fence_lifted: Notify::new(),
                    drained: Notify::new(),
                })
            })
            .collect();
        Inner {
            hasher: foldhash::quality::RandomState::default(),
            filter: Filter::new(words),
            shards: shard_vec,
            shard_mask: (shards - 1) as u64,
            clock: config.clock.clone(),
            default_ttl: duration_nanos(config.default_ttl),
            max_hops: config.max_hops,
            fence_timeout: config.fence_timeout,
            sweep_batch: config.sweep_batch.max(1),
            stripes: Box::new(std::array::from_fn(|_| CachePadded::default())),
            counters: Counters::default(),
            sweeper: OnceLock::new(),
        }
    }

    /// The key's bytes through the table's seeded `foldhash::quality` hasher. Written as one
    /// `write` rather than `hash_one(key)`: `Hash for str` also writes a `0xff` terminator
    /// (one more multiply on the read path's critical chain), which only matters when
    /// several values are hashed one after another; a key is hashed alone.
    #[inline]
    pub(crate) fn hash(&self, key: &str) -> u64 {
        use std::hash::Hasher;
        let mut hasher = self.hasher.build_hasher();
        hasher.write(key.as_bytes());
        hasher.finish()
    }

    /// The shard of a hash: bits 32.. of the 64-bit hash. hashbrown takes bucket indexes from
    /// the low bits and its 7-bit control tags from the top bits (57..64), so the shard index
    /// is independent of both and every shard's inner table sees well-spread hashes.
    #[inline]
    pub(crate) fn shard(&self, hash: u64) -> &Shard {
        &self.shards[((hash >> 32) & self.shard_mask) as usize]
    }

    #[inline]
    fn untracked_slot(hash: u64) -> usize {
        ((hash >> 12) as usize) & (UNTRACKED_SLOTS - 1)
    }

    /// Inlined into the caller (`always`: left to itself the compiler keeps it out of line,
    /// and the call's register saves and restores lengthen every miss; measured 15–25%):
    /// a miss then is the key's hash, a counter bump and one filter word.
    #[inline(always)]
    pub(crate) fn route_read(&self, key: &str) -> Route {
        let hash = self.hash(key);
        let stripe = &self.stripes[stripe_index()];
        bump(&stripe.lookups);
        // Relaxed is enough: a register that completed before this read (happens-before)
        // set these bits earlier in each word's modification order, so coherence makes them
        // visible; a register still in progress may be missed, and then this read is
        // ordered before it.
        if !self.filter.may_contain(hash) {
            return Route::Source;
        }
        let shard = self.shard(hash);
        let map = shard.map.read();
        let Some(entry) = map.entries.find(hash, |e| e.hash == hash && e.key.is(key)) else {
            return Route::Source;
        };
        if entry.state == EntryState::Forwarded && entry.expires_at <= self.clock.now() {
            return Route::Source;
        }
        bump(&stripe.hits);
        entry.route()
    }

    /// Recomputes a shard's words of the filter from its entries, dropping the bits of removed
    /// keys. Runs under the write lock (the `&mut ShardMap`), so no insert races it.
    fn rebuild_filter(&self, shard: &Shard, map: &mut ShardMap) {
        self.filter.rebuild(
            shard.index,
            self.shards.len(),
            map.entries.iter().map(|e| e.hash),
        );
        map.removed_since_rebuild = 0;
    }

    fn maybe_rebuild_filter(&self, shard: &Shard, map: &mut ShardMap) {
        if map.removed_since_rebuild >= map.entries.len().max(1024) {
            self.rebuild_filter(shard, map);
        }
    }

    /// Removes the entry with this hash and incarnation, if present. Writes in flight on it
    /// move to the untracked slot, where their tickets will find them.
    pub(crate) fn remove_entry(
        &self,
        shard: &Shard,
        map: &mut ShardMap,
        hash: u64,
        incarnation: u64,
    ) -> Option<Entry> {
        let found = map
            .entries
            .find_entry(hash, |e| e.hash == hash && e.incarnation == incarnation)
            .ok()?;
        let (entry, _) = found.remove();
        let in_flight = entry.in_flight.load(Relaxed);
        if in_flight > 0 {
            shard.untracked[Self::untracked_slot(hash)].fetch_add(in_flight, Relaxed);
        }
        if entry.state == EntryState::Forwarded {
            map.expiry
                .remove(&(entry.expires_at, entry.incarnation, hash));
        }
        if entry.state == EntryState::Fenced {
            shard.fenced.fetch_sub(1, Relaxed);
            shard.fence_lifted.notify_waiters();
            shard.drained.notify_waiters();
        }
        map.removed_since_rebuild += 1;
        Some(entry)
    }

    fn find_live<'m>(map: &'m ShardMap, hash: u64, key: &str, now: u64) -> Option<&'m Entry> {
        map.entries
            .find(hash, |e| e.hash == hash && e.key.is(key))
            .filter(|e| e.live(now))
    }

    fn find_live_mut<'m>(
        map: &'m mut ShardMap,
        hash: u64,
        key: &str,
        now: u64,
    ) -> Option<&'m mut Entry> {
        map.entries
            .find_mut(hash, |e| e.hash == hash && e.key.is(key))
            .filter(|e| e.live(now))
    }

    pub(crate) fn register(
        &self,
        key: &ObjectKey,
        source: NodeId,
        target: NodeId,
        owner: Option<&JobId>,
    ) -> Result<Registration> {
        if source == target {
            return Err(Error::SameSourceAndTarget {
                key: key.as_str().to_owned(),
                node: source,
            });
        }
        let hash = self.hash(key.as_str());
        let shard = self.shard(hash);
        let untracked = &shard.untracked[Self::untracked_slot(hash)];
        let mut map = shard.map.write();
        let now = self.clock.now();
        let existing = map
            .entries
            .find(hash, |e| e.hash == hash && e.key.is(key.as_str()))
            .map(|e| (e.live(now), e.incarnation));
        match existing {
            Some((true, incarnation)) => {
                let max_hops = self.max_hops;
                let ShardMap {
                    entries, expiry, ..
                } = &mut *map;
                let entry = entries
                    .find_mut(hash, |e| e.hash == hash && e.incarnation == incarnation)
                    .ok_or_else(|| Error::NotFound {
                        key: key.as_str().to_owned(),
                    })?;
                match entry.state {
                    EntryState::Copying | EntryState::Fenced => {
                        return Err(Error::AlreadyMoving {
                            key: key.as_str().to_owned(),
                            owner: entry.cold.owner.clone(),
                        });
                    }
                    EntryState::Forwarded => {}
                }
                if source != entry.target {
                    return Err(Error::WrongSource {
                        key: key.as_str().to_owned(),
                        expected: entry.target,
                        given: source,
                    });
                }
                if target == entry.cold.source {
                    return Err(Error::Cycle {
                        key: key.as_str().to_owned(),
                        target,
                    });
                }
                let hops = entry.cold.hops.saturating_add(1);
                if hops > max_hops {
                    return Err(Error::TooManyHops {
                        key: key.as_str().to_owned(),
                        hops,
                        max: max_hops,
                    });
                }
                // Chain collapse: A→B forwarded, now B→C copying; after the flip, A→C.
                expiry.remove(&(entry.expires_at, entry.incarnation, hash));
                entry.state = EntryState::Copying;
                entry.chained = true;
                entry.cold.copy_from = source;
                entry.target = target;
                entry.cold.hops = hops;
                entry.cold.owner = owner.cloned();
                entry.expires_at = NEVER;
                entry.maybe_untracked |= untracked.load(Relaxed) > 0;
                self.counters.registrations.fetch_add(1, Relaxed);
                return Ok(Registration {
                    generation: entry.generation.load(Relaxed),
                    hops,
                    source: entry.cold.source,
                    copy_from: source,
                });
            }
            Some((false, incarnation)) => {
                // An expired entry counts as absent: replace it.
                self.remove_entry(shard, &mut map, hash, incarnation);
            }
            None => {}
        }
        if self.max_hops == 0 {
            return Err(Error::TooManyHops {
                key: key.as_str().to_owned(),
                hops: 1,
                max: 0,
            });
        }
        let incarnation = map.next_incarnation;
        map.next_incarnation += 1;
        let entry = Entry {
            hash,
            key: KeyBuf::new(key),
            state: EntryState::Copying,
            chained: false,
            maybe_untracked: untracked.load(Relaxed) > 0,
            in_flight: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            incarnation,
            expires_at: NEVER,
            target,
            cold: Box::new(Cold {
                hops: 1,
                ttl: self.default_ttl,
                source,
                copy_from: source,
                owner: owner.cloned(),
            }),
        };
        self.filter.insert(hash);
        map.entries.insert_unique(hash, entry, |e| e.hash);
        self.counters.registrations.fetch_add(1, Relaxed);
        Ok(Registration {
            generation: 0,
            hops: 1,
            source,
            copy_from: source,
        })
    }

    /// Inserts a restored entry (see [`crate::snapshot`]); replaces an existing one.
    pub(crate) fn insert_restored(&self, mut entry: Entry) {
        let hash = self.hash(entry.key.as_str());
        entry.hash = hash;
        let shard = self.shard(hash);
        let mut map = shard.map.write();
        if let Some(incarnation) = map
            .entries
            .find(hash, |e| e.hash == hash && e.key.is(entry.key.as_str()))
            .map(|e| e.incarnation)
        {
            self.remove_entry(shard, &mut map, hash, incarnation);
        }
        entry.incarnation = map.next_incarnation;
        map.next_incarnation += 1;
        if entry.state == EntryState::Forwarded {
            map.expiry
                .insert((entry.expires_at, entry.incarnation, hash));
        }
        self.filter.insert(hash);
        map.entries.insert_unique(hash, entry, |e| e.hash);
    }

    pub(crate) fn try_begin_write(&self, key: &str) -> Result<WriteTicket<'_>, Fenced> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let map = shard.map.read();
        let now = self.clock.now();
        // Tickets change only atomics, under the read lock: writers of one shard do not
        // serialize, and a flip (write lock) sees a stable count.
        match Self::find_live(&map, hash, key, now) {
            Some(entry) if entry.state == EntryState::Fenced => Err(Fenced),
            Some(entry) => {
                entry.in_flight.fetch_add(1, Relaxed);
                entry.generation.fetch_add(1, Relaxed);
                Ok(WriteTicket {
                    inner: self,
                    hash,
                    incarnation: entry.incarnation,
                    route: entry.route(),
                })
            }
            None => {
                shard.untracked[Self::untracked_slot(hash)].fetch_add(1, Relaxed);
                Ok(WriteTicket {
                    inner: self,
                    hash,
                    incarnation: 0,
                    route: Route::Source,
                })
            }
        }
    }

    fn end_write(&self, hash: u64, incarnation: u64) {
        let shard = self.shard(hash);
        let map = shard.map.read();
        if incarnation != 0
            && let Some(entry) = map
                .entries
                .find(hash, |e| e.hash == hash && e.incarnation == incarnation)
        {
            entry.generation.fetch_add(1, Relaxed);
            let before = entry.in_flight.fetch_sub(1, Relaxed);
            if before == 1 && entry.state == EntryState::Fenced {
                shard.drained.notify_waiters();
            }
            return;
        }
        // Untracked, or the entry was removed and its in-flight count moved to the slot.
        let before = shard.untracked[Self::untracked_slot(hash)].fetch_sub(1, Relaxed);
        // An entry registered for this key while the write was in flight must see it end:
        // bump every entry with the same 64-bit hash (another key with an equal hash only
        // gets a spurious conflict).
        for entry in map.entries.iter_hash(hash) {
            if entry.hash == hash {
                entry.generation.fetch_add(1, Relaxed);
            }
        }
        if before == 1 && shard.fenced.load(Relaxed) > 0 {
            shard.drained.notify_waiters();
        }
    }

    pub(crate) fn generation(&self, key: &str) -> Option<u64> {
        let hash = self.hash(key);
        let map = self.shard(hash).map.read();
        Self::find_live(&map, hash, key, self.clock.now()).map(|e| e.generation.load(Relaxed))
    }

    pub(crate) fn get(&self, key: &str) -> Option<EntryInfo> {
        let hash = self.hash(key);
        let map = self.shard(hash).map.read();
        let now = self.clock.now();
        Self::find_live(&map, hash, key, now).map(|e| e.info(now))
    }

    pub(crate) fn try_flip(&self, key: &str, observed: u64) -> Result<(), Conflict> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let untracked = shard.untracked[Self::untracked_slot(hash)].load(Relaxed);
        let mut map = shard.map.write();
        let now = self.clock.now();
        let ShardMap {
            entries, expiry, ..
        } = &mut *map;
        let outcome = match Self::find_live_mut_in(entries, hash, key, now) {
            None => Err(Conflict::NotFound),
            Some(entry) => Self::flip_entry(entry, observed, untracked, now).map(|was_fenced| {
                expiry.insert((entry.expires_at, entry.incarnation, hash));
                if was_fenced {
                    shard.fenced.fetch_sub(1, Relaxed);
                    shard.fence_lifted.notify_waiters();
                }
            }),
        };
        match outcome {
            Ok(()) => self.counters.flips.fetch_add(1, Relaxed),
            Err(_) => self.counters.flips_refused.fetch_add(1, Relaxed),
        };
        outcome
    }

    fn find_live_mut_in<'m>(
        entries: &'m mut HashTable<Entry>,
        hash: u64,
        key: &str,
        now: u64,
    ) -> Option<&'m mut Entry> {
        entries
            .find_mut(hash, |e| e.hash == hash && e.key.is(key))
            .filter(|e| e.live(now))
    }

    /// The flip itself, under the shard's write lock. Returns whether the entry was fenced.
    fn flip_entry(
        entry: &mut Entry,
        observed: u64,
        untracked: u32,
        now: u64,
    ) -> Result<bool, Conflict> {
        if entry.state == EntryState::Forwarded {
            return Err(Conflict::NotMoving { state: entry.state });
        }
        let in_flight = entry.in_flight.load(Relaxed);
        if in_flight > 0 {
            return Err(Conflict::WritesInFlight {
                count: u64::from(in_flight),
            });
        }
        if entry.maybe_untracked {
            if untracked > 0 {
                return Err(Conflict::WritesInFlight {
                    count: u64::from(untracked),
                });
            }
            // Every write that began before registration has ended (and bumped the
            // generation); later writes are counted on the entry.
            entry.maybe_untracked = false;
        }
        let current = entry.generation.load(Relaxed);
        if current != observed {
            return Err(Conflict::WritesSinceCopyBegan { observed, current });
        }
        let was_fenced = entry.state == EntryState::Fenced;
        entry.state = EntryState::Forwarded;
        entry.chained = false;
        entry.expires_at = now.saturating_add(entry.cold.ttl);
        Ok(was_fenced)
    }

    pub(crate) fn fence(&self, key: &str) -> Result<()> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let mut map = shard.map.write();
        let now = self.clock.now();
        let entry =
            Self::find_live_mut(&mut map, hash, key, now).ok_or_else(|| Error::NotFound {
                key: key.to_owned(),
            })?;
        match entry.state {
            EntryState::Copying => {
                entry.state = EntryState::Fenced;
                shard.fenced.fetch_add(1, Relaxed);
                self.counters.fences.fetch_add(1, Relaxed);
                Ok(())
            }
            EntryState::Fenced => Ok(()),
            state @ EntryState::Forwarded => Err(Error::NotMoving {
                key: key.to_owned(),
                state,
            }),
        }
    }

    pub(crate) fn unfence(&self, key: &str) -> Result<()> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let mut map = shard.map.write();
        let now = self.clock.now();
        let entry =
            Self::find_live_mut(&mut map, hash, key, now).ok_or_else(|| Error::NotFound {
                key: key.to_owned(),
            })?;
        match entry.state {
            EntryState::Fenced => {
                entry.state = EntryState::Copying;
                shard.fenced.fetch_sub(1, Relaxed);
                shard.fence_lifted.notify_waiters();
                shard.drained.notify_waiters();
                Ok(())
            }
            EntryState::Copying => Ok(()),
            state @ EntryState::Forwarded => Err(Error::NotMoving {
                key: key.to_owned(),
                state,
            }),
        }
    }

    /// Whether a fenced key has drained: `Ok(Some(generation))` when it has, `Ok(None)` while
    /// writes are still in flight.
    fn drained_generation(&self, key: &str, hash: u64) -> Result<Option<u64>> {
        let shard = self.shard(hash);
        let map = shard.map.read();
        let now = self.clock.now();
        let entry = Self::find_live(&map, hash, key, now).ok_or_else(|| Error::NotFound {
            key: key.to_owned(),
        })?;
        if entry.state != EntryState::Fenced {
            return Err(Error::NotMoving {
                key: key.to_owned(),
                state: entry.state,
            });
        }
        let untracked = shard.untracked[Self::untracked_slot(hash)].load(Relaxed);
        let drained =
            entry.in_flight.load(Relaxed) == 0 && !(entry.maybe_untracked && untracked > 0);
        Ok(drained.then(|| entry.generation.load(Relaxed)))
    }

    /// Removes `key`'s entry; with `owner`, only an entry that job registered.
    pub(crate) fn remove(&self, key: &str, owner: Option<&JobId>) -> bool {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let mut map = shard.map.write();
        let now = self.clock.now();
        let Some((live, incarnation)) = map
            .entries
            .find(hash, |e| e.hash == hash && e.key.is(key))
            .filter(|e| owner.is_none_or(|owner| e.cold.owner.as_ref() == Some(owner)))
            .map(|e| (e.live(now), e.incarnation))
        else {
            return false;
        };
        self.remove_entry(shard, &mut map, hash, incarnation);
        self.maybe_rebuild_filter(shard, &mut map);
        live
    }

    pub(crate) fn remove_by_source(&self, node: NodeId) -> usize {
        let now = self.clock.now();
        let mut removed = 0;
        for shard in self.shards.iter() {
            let victims: Vec<(u64, u64, bool)> = {
                let map = shard.map.read();
                map.entries
                    .iter()
                    .filter(|e| e.cold.source == node)
                    .map(|e| (e.hash, e.incarnation, e.live(now)))
                    .collect()
            };
            for batch in victims.chunks(self.sweep_batch) {
                let mut map = shard.map.write();
                for &(hash, incarnation, live) in batch {
                    if self
                        .remove_entry(shard, &mut map, hash, incarnation)
                        .is_some()
                        && live
                    {
                        removed += 1;
                    }
                }
                self.maybe_rebuild_filter(shard, &mut map);
            }
        }
        removed
    }

    pub(crate) fn set_ttl(&self, key: &str, ttl: Duration) -> Result<()> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let mut map = shard.map.write();
        let now = self.clock.now();
        let ShardMap {
            entries, expiry, ..
        } = &mut *map;
        let entry =
            Self::find_live_mut_in(entries, hash, key, now).ok_or_else(|| Error::NotFound {
                key: key.to_owned(),
            })?;
        entry.cold.ttl = duration_nanos(ttl);
        if entry.state == EntryState::Forwarded {
            expiry.remove(&(entry.expires_at, entry.incarnation, hash));
            entry.expires_at = now.saturating_add(entry.cold.ttl);
            expiry.insert((entry.expires_at, entry.incarnation, hash));
        }
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        let now = self.clock.now();
        self.shards
            .iter()
            .map(|shard| {
                let map = shard.map.read();
                let expired = map.expiry.range(..=(now, u64::MAX, u64::MAX)).count();
                map.entries.len() - expired
            })
            .sum()
    }

    /// Removes the expired entries of one shard, in batches of `sweep_batch` under the write
    /// lock, each batch first collected under the read lock. Returns how many were removed.
    ///
    /// With `pace`, it rests after each batch for as long as the batch held the lock (at
    /// least the OS's shortest sleep), so the shard is write-locked at most half the time and
    /// readers of the whole table rarely meet the sweeper.
    pub(crate) fn sweep_shard(&self, index: usize, now: u64, pace: bool) -> usize {
        let shard = &self.shards[index];
        let mut removed = 0;
        loop {
            let batch: Vec<(u64, u64, u64)> = {
                let map = shard.map.read();
                map.expiry
                    .range(..=(now, u64::MAX, u64::MAX))
                    .take(self.sweep_batch)
                    .copied()
                    .collect()
            };
            if batch.is_empty() {
                break;
            }
            let held = std::time::Instant::now();
            let mut map = shard.map.write();
            for &(deadline, incarnation, hash) in &batch {
                // Re-check under the write lock: the TTL may have been extended meanwhile.
                let still_due = map
                    .entries
                    .find(hash, |e| e.hash == hash && e.incarnation == incarnation)
                    .is_some_and(|e| e.state == EntryState::Forwarded && e.expires_at == deadline);
                if still_due {
                    self.remove_entry(shard, &mut map, hash, incarnation);
                    removed += 1;
                } else {
                    map.expiry.remove(&(deadline, incarnation, hash));
                }
            }
            self.maybe_rebuild_filter(shard, &mut map);
            drop(map);
            if pace {
                std::thread::sleep(held.elapsed());
            }
        }
        self.counters.expired.fetch_add(removed as u64, Relaxed);
        removed
    }

    pub(crate) fn sweep_all(&self) -> usize {
        let now = self.clock.now();
        (0..self.shards.len())
            .map(|index| self.sweep_shard(index, now, false))
            .sum()
    }

    pub(crate) fn for_each_entry(&self, mut f: impl FnMut(&Entry, u64)) {
        let now = self.clock.now();
        for shard in self.shards.iter() {
            let map = shard.map.read();
            for entry in map.entries.iter().filter(|e| e.live(now)) {
                f(entry, now);
            }
        }
    }

    fn stats(&self) -> Stats {
        let (lookups, hits) = self.stripes.iter().fold((0, 0), |(l, h), s| {
            (l + s.lookups.load(Relaxed), h + s.hits.load(Relaxed))
        });
        Stats {
            lookups,
            hits,
            registrations: self.counters.registrations.load(Relaxed),
            flips: self.counters.flips.load(Relaxed),
            flips_refused: self.counters.flips_refused.load(Relaxed),
            fences: self.counters.fences.load(Relaxed),
            expired: self.counters.expired.load(Relaxed),
        }
    }
}

/// Proof that a write to one key is in flight; tells the writer where to write.
///
/// Hold it while writing and drop it once the write is acknowledged by the node (RAII). While
/// the key is moving, the ticket is counted on the key's entry: [`Table::try_flip`] refuses to
/// flip while any ticket is alive, and both the start and the end of a write move the key's
/// generation, so a flip whose copy began before a write started or ended is refused too.
///
/// The ticket borrows the table and holds no lock.
#[must_use = "the write is counted until the ticket is dropped"]
pub struct WriteTicket<'t> {
    inner: &'t Inner,
    hash: u64,
    /// The entry's incarnation, or 0 when the key had no live entry.
    incarnation: u64,
    route: Route,
}

impl WriteTicket<'_> {
    /// Where to write: [`Route::Source`] while the key is not moving or its copy runs (the copy
    /// will run again), [`Route::Target`] once it was flipped (or while a chained move copies
    /// away from that node).
    pub fn route(&self) -> Route {
        self.route
    }
}

impl fmt::Debug for WriteTicket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteTicket")
            .field("route", &self.route)
            .field("tracked", &(self.incarnation != 0))
            .finish()
    }
}

impl Drop for WriteTicket<'_> {
    fn drop(&mut self) {
        self.inner.end_write(self.hash, self.incarnation);
    }
}

/// The forwarding table: where each key that is moving (or has moved) between storage nodes
/// must be read and written now.
///
/// Cloning is cheap and shares the table; the background sweeper stops when the last clone is
/// dropped. See the [crate docs](crate) for the protocol.
#[derive(Clone)]
pub struct Table {
    pub(crate) inner: Arc<Inner>,
    sweeper: Option<SweeperHandle>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("shards", &self.inner.shards.len())
            .field("stats", &self.inner.stats())
            .finish_non_exhaustive()
    }
}

impl Default for Table {
    fn default() -> Table {
        Table::new(Config::default())
    }
}

impl Table {
    /// Builds an empty table and, when [`Config::sweep_interval`] is set, starts its sweeper
    /// thread. If the thread cannot be spawned the table works without it (expired entries
    /// still route as absent; call [`Table::sweep_now`] to free them), and
    /// [`Table::sweeper`] returns `None`.
    pub fn new(config: Config) -> Table {
        let inner = Arc::new(Inner::new(&config));
        let sweeper = config
            .sweep_interval
            .and_then(|interval| crate::sweep::spawn(&inner, interval));
        Table { inner, sweeper }
    }

    /// Where a read of `key` must go now. The hot path of every read: no allocation, no lock
    /// for most keys that are not in the table, one shared (read) lock otherwise. An expired
    /// entry routes as absent at once, before any sweep.
    #[inline(always)]
    pub fn route_read(&self, key: &str) -> Route {
        self.inner.route_read(key)
    }

    /// Records that `key` starts moving from `source` to `target` (state `Copying`).
    ///
    /// If the key is already forwarded (A→B, not expired), `source` must be B and the entry
    /// becomes a chained move: reads keep going to B while B→C copies, and the flip makes the
    /// entry A→C with one more hop.
    ///
    /// # Errors
    ///
    /// [`Error::SameSourceAndTarget`] when `source == target`; [`Error::AlreadyMoving`] when the
    /// key is `Copying` or `Fenced`; [`Error::WrongSource`] when it is forwarded to another node
    /// than `source`; [`Error::Cycle`] when `target` is the node it was first moved away from;
    /// [`Error::TooManyHops`] beyond [`Config::max_hops`].
    pub fn register(
        &self,
        key: &ObjectKey,
        source: NodeId,
        target: NodeId,
    ) -> Result<Registration> {
        self.inner.register(key, source, target, None)
    }

    /// [`Table::register`] on behalf of the job `owner`: the entry records it, so that only
    /// that job changes or removes it ([`Table::remove_owned`]); another job that meets the
    /// entry while the key moves gets [`Error::AlreadyMoving`] naming `owner`. A chained
    /// move of a forwarded key passes the entry to its new owner.
    ///
    /// # Errors
    ///
    /// As [`Table::register`].
    pub fn register_for(
        &self,
        key: &ObjectKey,
        source: NodeId,
        target: NodeId,
        owner: &JobId,
    ) -> Result<Registration> {
        self.inner.register(key, source, target, Some(owner))
    }

    /// The generation of `key`'s live entry: the engine reads it when its copy begins and
    /// passes it to [`Table::try_flip`]. `None` when the key has no live entry.
    pub fn generation(&self, key: &str) -> Option<u64> {
        self.inner.generation(key)
    }

    /// A copy of `key`'s live entry.
    pub fn get(&self, key: &str) -> Option<EntryInfo> {
        self.inner.get(key)
    }

    /// Starts a write of `key` without waiting: a ticket that says where to write, or
    /// [`Fenced`] when the key is fenced (then use [`Table::begin_write`]).
    ///
    /// Every write must go through a ticket, also for keys that are not moving: a write that
    /// began before its key was registered is what the ticket lets the flip see.
    ///
    /// # Errors
    ///
    /// [`Fenced`] when the key is fenced.
    pub fn try_begin_write(&self, key: &str) -> Result<WriteTicket<'_>, Fenced> {
        self.inner.try_begin_write(key)
    }

    /// Starts a write of `key`, waiting while the key is fenced until it is flipped (the
    /// ticket then routes to the target), unfenced or removed (to the source).
    ///
    /// # Errors
    ///
    /// [`Error::FenceTimeout`] when the key stays fenced longer than
    /// [`Config::fence_timeout`].
    ///
    /// # Panics
    ///
    /// When the key is fenced and the call runs outside a tokio runtime with the time driver
    /// enabled (it waits with `tokio::time::timeout`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a ticket is only created in the poll that returns it, so dropping the
    /// future leaves no write counted.
    pub async fn begin_write(&self, key: &str) -> Result<WriteTicket<'_>> {
        if let Ok(ticket) = self.inner.try_begin_write(key) {
            return Ok(ticket);
        }
        let started = tokio::time::Instant::now();
        let shard = self.inner.shard(self.inner.hash(key));
        let wait = async {
            loop {
                let notified = shard.fence_lifted.notified();
                let mut notified = std::pin::pin!(notified);
                // Register for the wake-up before checking, so a flip between the check and
                // the await is not missed.
                notified.as_mut().enable();
                match self.inner.try_begin_write(key) {
                    Ok(ticket) => return ticket,
                    Err(Fenced) => notified.await,
                }
            }
        };
        tokio::time::timeout(self.inner.fence_timeout, wait)
            .await
            .map_err(|_| Error::FenceTimeout {
                key: key.to_owned(),
                waited: started.elapsed(),
            })
    }

    /// Flips `key` from `Copying` (or `Fenced`) to `Forwarded`, atomically, if no write started
    /// or ended since the engine observed `observed` with [`Table::generation`] and none is in
    /// flight. A flipped entry expires after its TTL (default [`Config::default_ttl`]).
    ///
    /// # Errors
    ///
    /// The refusal, as a [`Conflict`] value: the engine copies again and retries, or fences.
    pub fn try_flip(&self, key: &str, observed: u64) -> Result<(), Conflict> {
        self.inner.try_flip(key, observed)
    }

    /// Fences a `Copying` key: new writers wait (see [`Table::begin_write`]), writes in flight
    /// drain. Fencing a fenced key does nothing. Then: [`Table::wait_drained`], copy again,
    /// [`Table::try_flip`] with the drained generation (it cannot be refused by a write now),
    /// or [`Table::unfence`].
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without a live entry; [`Error::NotMoving`] when forwarded.
    pub fn fence(&self, key: &str) -> Result<()> {
        self.inner.fence(key)
    }

    /// Lifts the fence of `key` (back to `Copying`); waiting writers proceed to the source.
    /// Unfencing a `Copying` key does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without a live entry; [`Error::NotMoving`] when forwarded.
    pub fn unfence(&self, key: &str) -> Result<()> {
        self.inner.unfence(key)
    }

    /// Waits until no write is in flight on the fenced `key` and returns its generation, to
    /// pass to [`Table::try_flip`] after the final copy.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without a live entry, [`Error::NotMoving`] when the key is not
    /// fenced (also when it is unfenced while waiting), [`Error::FenceTimeout`] after
    /// [`Config::fence_timeout`].
    ///
    /// # Panics
    ///
    /// When it has to wait outside a tokio runtime with the time driver enabled.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it changes nothing.
    pub async fn wait_drained(&self, key: &str) -> Result<u64> {
        let hash = self.inner.hash(key);
        if let Some(generation) = self.inner.drained_generation(key, hash)? {
            return Ok(generation);
        }
        let started = tokio::time::Instant::now();
        let shard = self.inner.shard(hash);
        let wait = async {
            loop {
                let notified = shard.drained.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                match self.inner.drained_generation(key, hash) {
                    Ok(Some(generation)) => return Ok(generation),
                    Ok(None) => notified.await,
                    Err(error) => return Err(error),
                }
            }
        };
        tokio::time::timeout(self.inner.fence_timeout, wait)
            .await
            .map_err(|_| Error::FenceTimeout {
                key: key.to_owned(),
                waited: started.elapsed(),
            })?
    }

    /// The TTL new entries get ([`Config::default_ttl`]), counted from their flip.
    pub fn default_ttl(&self) -> Duration {
        Duration::from_nanos(self.inner.default_ttl)
    }

    /// Sets the TTL of `key`'s entry. For a forwarded entry the TTL restarts now (use it to
    /// count the TTL from cleanup); for a moving one it applies from the flip.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without a live entry.
    pub fn set_ttl(&self, key: &str, ttl: Duration) -> Result<()> {
        self.inner.set_ttl(key, ttl)
    }

    /// Removes `key`'s entry (in any state); returns whether a live one was there. Writers
    /// waiting on its fence proceed to the source.
    pub fn remove(&self, key: &str) -> bool {
        self.inner.remove(key, None)
    }

    /// Removes `key`'s entry only if the job `owner` registered it ([`Table::register_for`]);
    /// returns whether a live one was removed. Another job's entry is left as it is.
    pub fn remove_owned(&self, key: &str, owner: &JobId) -> bool {
        self.inner.remove(key, Some(owner))
    }

    /// Removes every entry whose source (the key's home, A in A→B→C) is `node`; returns how
    /// many live entries were removed. Works one shard at a time, in bounded batches.
    pub fn remove_by_source(&self, node: NodeId) -> usize {
        self.inner.remove_by_source(node)
    }

    /// Live entries (expired ones not yet swept are not counted). Takes each shard's read lock
    /// in turn: a figure for monitoring, not for the hot path.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the table has no live entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table's counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Removes every expired entry now, one shard at a time; returns how many.
    pub fn sweep_now(&self) -> usize {
        self.inner.sweep_all()
    }

    /// A handle on the background sweeper thread, to watch it stop; `None` without one.
    pub fn sweeper(&self) -> Option<SweeperHandle> {
        self.sweeper.clone()
    }
}
