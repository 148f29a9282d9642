//! The table: its shared state, the read path, write tickets, registration, flips, fences,
//! removal and sweeps.

use std::cell::Cell;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use ferry_types::{JobId, NodeId, ObjectKey};

use crate::clock::duration_nanos;
use crate::entry::Entry;
use crate::filter::Filter;
use crate::read::ReadStripe;
use crate::shard::{Shard, ShardMap};
use crate::sweep::SweeperHandle;
use crate::{
    Clock, Config, Conflict, EntryInfo, EntryState, Error, Fenced, Registration, Result, Route,
    Stats,
};

const STRIPES: usize = 64;
/// Presence filter bits per expected entry: at 1M entries, 1 MiB, about a core's L2. Twice
/// as many (0.8% false positives instead of 3.6%) measured no faster: the larger filter's
/// loads cost what the fewer locked lookups save (README).
const FILTER_BITS: usize = 8;

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

/// What the clones of a [`Table`], its tickets and its sweeper share.
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
    fence_timeout: Duration,
    sweep_batch: usize,
    stripes: Box<[CachePadded<Stripe>; STRIPES]>,
    counters: Counters,
    /// Reads in flight through [`ReadGuard`](crate::ReadGuard)s, one stripe per shard.
    reads: Box<[CachePadded<ReadStripe>]>,
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
    /// See [`Table::len`].
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

    /// See [`Table::stats`].
    pub(crate) fn stats(&self) -> Stats {
        let (lookups, hits) = self.stripes.iter().fold((0, 0), |(l, h), s| {
            (l + s.lookups.load(Relaxed), h + s.hits.load(Relaxed))
        });
        let counters = &self.counters;
        Stats {
            lookups,
            hits,
            registrations: counters.registrations.load(Relaxed),
            flips: counters.flips.load(Relaxed),
            flips_refused: counters.flips_refused.load(Relaxed),
            fences: counters.fences.load(Relaxed),
            expired: counters.expired.load(Relaxed),
        }
    }

    fn new(config: &Config) -> Inner {
        let shards = config.shards.clamp(1, 4096).next_power_of_two();
        // FILTER_BITS per expected entry, in 64-bit words: a power of two, at least two per
        // shard, at most 2^25 (256 MiB).
        let words = (config.expected_entries.saturating_mul(FILTER_BITS) / 64)
            .next_power_of_two()
            .clamp(2 * shards, 1 << 25);
        Inner {
            hasher: foldhash::quality::RandomState::default(),
            filter: Filter::new(words),
            shards: (0..shards)
                .map(|index| CachePadded::new(Shard::new(index)))
                .collect(),
            shard_mask: (shards - 1) as u64,
            clock: config.clock.clone(),
            default_ttl: duration_nanos(config.default_ttl),
            max_hops: config.max_hops,
            fence_timeout: config.fence_timeout,
            sweep_batch: config.sweep_batch.max(1),
            stripes: Box::new(std::array::from_fn(|_| CachePadded::default())),
            counters: Counters::default(),
            reads: (0..shards)
                .map(|_| CachePadded::new(ReadStripe::default()))
                .collect(),
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

    /// The read stripe of a hash: the one of its shard.
    #[inline]
    pub(crate) fn read_stripe(&self, hash: u64) -> &ReadStripe {
        &self.reads[((hash >> 32) & self.shard_mask) as usize]
    }

    fn maybe_rebuild_filter(&self, shard: &Shard, map: &mut ShardMap) {
        shard.maybe_rebuild_filter(map, &self.filter, self.shards.len());
    }

    /// Ends a write begun by a ticket: `incarnation` is its entry's, or 0 when it had none.
    fn end_write(&self, hash: u64, incarnation: u64) {
        let shard = self.shard(hash);
        let map = shard.map.read();
        if incarnation != 0
            && let Some(entry) = map.find_incarnation(hash, incarnation)
        {
            entry.generation.fetch_add(1, Relaxed);
            let before = entry.in_flight.fetch_sub(1, Relaxed);
            if before == 1 && entry.state == EntryState::Fenced {
                shard.drained.notify_waiters();
            }
            return;
        }
        // Untracked, or the entry was removed and its in-flight count moved to the slot.
        let before = shard.untracked(hash).fetch_sub(1, Relaxed);
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
                    .find_incarnation(hash, incarnation)
                    .is_some_and(|e| e.state == EntryState::Forwarded && e.expires_at == deadline);
                if still_due {
                    shard.remove_entry(&mut map, hash, incarnation);
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
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Default for Table {
    fn default() -> Table {
        Table::new(Config::default())
    }
}

/// The error of a call that needs a live entry for `key`.
fn not_found(key: &str) -> Error {
    Error::NotFound {
        key: key.to_owned(),
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
    //
    // Inlined into the caller (`always`: left to itself the compiler keeps it out of line,
    // and the call's register saves and restores lengthen every miss; measured 15–25%):
    // a miss then is the key's hash, a counter bump and one filter word.
    #[inline(always)]
    pub fn route_read(&self, key: &str) -> Route {
        // Relaxed is enough: a register that completed before this read (happens-before)
        // set the filter bits earlier in each word's modification order, so coherence makes
        // them visible; a register still in progress may be missed, and then this read is
        // ordered before it.
        self.route_hashed(key, self.inner.hash(key), Relaxed)
    }

    /// [`Table::route_read`] for a key already hashed, loading the filter word with
    /// `filter_order` (`SeqCst` for a counted read, see [`crate::read`]).
    #[inline(always)]
    pub(crate) fn route_hashed(&self, key: &str, hash: u64, filter_order: Ordering) -> Route {
        let inner = &*self.inner;
        let stripe = &inner.stripes[stripe_index()];
        bump(&stripe.lookups);
        if !inner.filter.may_contain_ordered(hash, filter_order) {
            return Route::Source;
        }
        let map = inner.shard(hash).map.read();
        let Some(entry) = map.find(hash, key) else {
            return Route::Source;
        };
        // Not `find_live`: the clock is read only for forwarded entries.
        if entry.state == EntryState::Forwarded && entry.expires_at <= inner.clock.now() {
            return Route::Source;
        }
        bump(&stripe.hits);
        entry.route()
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
        self.register_as(key, source, target, None)
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
        self.register_as(key, source, target, Some(owner))
    }

    fn register_as(
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
        let inner = &*self.inner;
        let hash = inner.hash(key.as_str());
        let shard = inner.shard(hash);
        let untracked = shard.untracked(hash);
        let mut guard = shard.map.write();
        let map = &mut *guard;
        let now = inner.clock.now();
        if let Some(entry) = map.find_mut(hash, key.as_str()) {
            if entry.live(now) {
                let deadline = entry.deadline();
                let registration = entry.chain(source, target, owner, inner.max_hops)?;
                entry.maybe_untracked |= untracked.load(Relaxed) > 0;
                map.expiry.remove(&deadline);
                inner.counters.registrations.fetch_add(1, Relaxed);
                return Ok(registration);
            }
            // An expired entry counts as absent: replace it.
            let incarnation = entry.incarnation;
            shard.remove_entry(map, hash, incarnation);
        }
        if inner.max_hops == 0 {
            return Err(Error::TooManyHops {
                key: key.as_str().to_owned(),
                hops: 1,
                max: 0,
            });
        }
        let mut entry = Entry::copying(key, hash, source, target, inner.default_ttl, owner);
        entry.maybe_untracked = untracked.load(Relaxed) > 0;
        map.insert(&inner.filter, entry);
        inner.counters.registrations.fetch_add(1, Relaxed);
        Ok(Registration {
            generation: 0,
            hops: 1,
            source,
            copy_from: source,
        })
    }

    /// Inserts a restored entry (see [`crate::snapshot`]); replaces an existing one.
    pub(crate) fn insert_restored(&self, mut entry: Entry) {
        let inner = &*self.inner;
        let hash = inner.hash(entry.key.as_str());
        entry.hash = hash;
        let shard = inner.shard(hash);
        let mut map = shard.map.write();
        if let Some(incarnation) = map.find(hash, entry.key.as_str()).map(|e| e.incarnation) {
            shard.remove_entry(&mut map, hash, incarnation);
        }
        map.insert(&inner.filter, entry);
    }

    /// Runs `f` on `key`'s live entry (and the time) under its shard's read lock.
    fn with_live<T>(&self, key: &str, f: impl FnOnce(&Entry, u64) -> T) -> Option<T> {
        let hash = self.inner.hash(key);
        let map = self.inner.shard(hash).map.read();
        let now = self.inner.clock.now();
        map.find_live(hash, key, now).map(|entry| f(entry, now))
    }

    /// Runs `f` on `key`'s live entry and its shard under the shard's write lock.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without a live entry; else what `f` returns.
    fn with_live_mut<T>(
        &self,
        key: &str,
        f: impl FnOnce(&Shard, &mut Entry) -> Result<T>,
    ) -> Result<T> {
        let inner = &*self.inner;
        let hash = inner.hash(key);
        let shard = inner.shard(hash);
        let mut map = shard.map.write();
        let now = inner.clock.now();
        let entry = map
            .find_live_mut(hash, key, now)
            .ok_or_else(|| not_found(key))?;
        f(shard, entry)
    }

    /// The generation of `key`'s live entry: the engine reads it when its copy begins and
    /// passes it to [`Table::try_flip`]. `None` when the key has no live entry.
    pub fn generation(&self, key: &str) -> Option<u64> {
        self.with_live(key, |entry, _| entry.generation.load(Relaxed))
    }

    /// A copy of `key`'s live entry.
    pub fn get(&self, key: &str) -> Option<EntryInfo> {
        self.with_live(key, |entry, now| entry.info(now))
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
        let inner = &*self.inner;
        let hash = inner.hash(key);
        let shard = inner.shard(hash);
        let map = shard.map.read();
        let now = inner.clock.now();
        // Tickets change only atomics, under the read lock: writers of one shard do not
        // serialize, and a flip (write lock) sees a stable count.
        match map.find_live(hash, key, now) {
            Some(entry) if entry.state == EntryState::Fenced => Err(Fenced),
            Some(entry) => {
                entry.in_flight.fetch_add(1, Relaxed);
                entry.generation.fetch_add(1, Relaxed);
                Ok(WriteTicket {
                    inner,
                    hash,
                    incarnation: entry.incarnation,
                    route: entry.route(),
                })
            }
            None => {
                shard.untracked(hash).fetch_add(1, Relaxed);
                Ok(WriteTicket {
                    inner,
                    hash,
                    incarnation: 0,
                    route: Route::Source,
                })
            }
        }
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
        if let Ok(ticket) = self.try_begin_write(key) {
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
                match self.try_begin_write(key) {
                    Ok(ticket) => return ticket,
                    Err(Fenced) => notified.await,
                }
            }
        };
        let waited = tokio::time::timeout(self.inner.fence_timeout, wait).await;
        crate::metrics::fence_waited(started.elapsed());
        waited.map_err(|_| Error::FenceTimeout {
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
        let inner = &*self.inner;
        let hash = inner.hash(key);
        let shard = inner.shard(hash);
        let untracked = shard.untracked(hash).load(Relaxed);
        let mut guard = shard.map.write();
        let map = &mut *guard;
        let now = inner.clock.now();
        let flipped = match map.find_live_mut(hash, key, now) {
            None => Err(Conflict::NotFound),
            Some(entry) => entry
                .flip(observed, untracked, now)
                .map(|was_fenced| (was_fenced, entry.deadline())),
        };
        let outcome = flipped.map(|(was_fenced, deadline)| {
            map.expiry.insert(deadline);
            if was_fenced {
                shard.fenced.fetch_sub(1, Relaxed);
                shard.fence_lifted.notify_waiters();
            }
        });
        match outcome {
            Ok(()) => inner.counters.flips.fetch_add(1, Relaxed),
            Err(_) => inner.counters.flips_refused.fetch_add(1, Relaxed),
        };
        outcome
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
        self.with_live_mut(key, |shard, entry| match entry.state {
            EntryState::Copying => {
                entry.state = EntryState::Fenced;
                shard.fenced.fetch_add(1, Relaxed);
                self.inner.counters.fences.fetch_add(1, Relaxed);
                Ok(())
            }
            EntryState::Fenced => Ok(()),
            state @ EntryState::Forwarded => Err(Error::NotMoving {
                key: key.to_owned(),
                state,
            }),
        })
    }

    /// Lifts the fence of `key` (back to `Copying`); waiting writers proceed to the source.
    /// Unfencing a `Copying` key does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without a live entry; [`Error::NotMoving`] when forwarded.
    pub fn unfence(&self, key: &str) -> Result<()> {
        self.with_live_mut(key, |shard, entry| match entry.state {
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
        })
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
        if let Some(generation) = self.drained_generation(key, hash)? {
            return Ok(generation);
        }
        let started = tokio::time::Instant::now();
        let shard = self.inner.shard(hash);
        let wait = async {
            loop {
                let notified = shard.drained.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                match self.drained_generation(key, hash) {
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

    /// Whether a fenced key has drained: `Ok(Some(generation))` when it has, `Ok(None)` while
    /// writes are still in flight.
    fn drained_generation(&self, key: &str, hash: u64) -> Result<Option<u64>> {
        let shard = self.inner.shard(hash);
        let map = shard.map.read();
        let now = self.inner.clock.now();
        let entry = map
            .find_live(hash, key, now)
            .ok_or_else(|| not_found(key))?;
        if entry.state != EntryState::Fenced {
            return Err(Error::NotMoving {
                key: key.to_owned(),
                state: entry.state,
            });
        }
        let untracked = shard.untracked(hash).load(Relaxed);
        let drained =
            entry.in_flight.load(Relaxed) == 0 && !(entry.maybe_untracked && untracked > 0);
        Ok(drained.then(|| entry.generation.load(Relaxed)))
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
        let inner = &*self.inner;
        let hash = inner.hash(key);
        let mut guard = inner.shard(hash).map.write();
        let map = &mut *guard;
        let now = inner.clock.now();
        let entry = map
            .find_live_mut(hash, key, now)
            .ok_or_else(|| not_found(key))?;
        entry.cold.ttl = duration_nanos(ttl);
        if entry.state == EntryState::Forwarded {
            let old = entry.deadline();
            entry.expires_at = now.saturating_add(entry.cold.ttl);
            let new = entry.deadline();
            map.expiry.remove(&old);
            map.expiry.insert(new);
        }
        Ok(())
    }

    /// Removes `key`'s entry (in any state); returns whether a live one was there. Writers
    /// waiting on its fence proceed to the source.
    pub fn remove(&self, key: &str) -> bool {
        self.remove_as(key, None)
    }

    /// Removes `key`'s entry only if the job `owner` registered it ([`Table::register_for`]);
    /// returns whether a live one was removed. Another job's entry is left as it is. A
    /// chained move (B→C of a key forwarded A→B) that has not flipped is undone rather than
    /// removed: the key is forwarded to B again, owned by the job that moved it there, with
    /// its deadline (a cancelled second move never sends reads back to A, which the first
    /// job's cleanup may already have emptied).
    pub fn remove_owned(&self, key: &str, owner: &JobId) -> bool {
        self.remove_as(key, Some(owner))
    }

    /// Removes `key`'s entry; with `owner`, only an entry that job registered.
    fn remove_as(&self, key: &str, owner: Option<&JobId>) -> bool {
        let inner = &*self.inner;
        let hash = inner.hash(key);
        let shard = inner.shard(hash);
        let mut map = shard.map.write();
        let now = inner.clock.now();
        let Some((live, incarnation)) = map
            .find(hash, key)
            .filter(|e| owner.is_none_or(|owner| e.cold.owner.as_ref() == Some(owner)))
            .map(|e| (e.live(now), e.incarnation))
        else {
            return false;
        };
        if owner.is_some()
            && let Some(entry) = map.find_mut(hash, key)
        {
            let fenced = entry.state == EntryState::Fenced;
            if entry.unchain() {
                let deadline = entry.deadline();
                map.expiry.insert(deadline);
                if fenced {
                    shard.fenced.fetch_sub(1, Relaxed);
                    shard.fence_lifted.notify_waiters();
                    shard.drained.notify_waiters();
                }
                return live;
            }
        }
        shard.remove_entry(&mut map, hash, incarnation);
        inner.maybe_rebuild_filter(shard, &mut map);
        live
    }

    /// Removes every entry whose source (the key's home, A in A→B→C) is `node`; returns how
    /// many live entries were removed. Works one shard at a time, in bounded batches.
    pub fn remove_by_source(&self, node: NodeId) -> usize {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let mut removed = 0;
        for shard in inner.shards.iter() {
            let victims: Vec<(u64, u64, bool)> = {
                let map = shard.map.read();
                map.entries
                    .iter()
                    .filter(|e| e.cold.source == node)
                    .map(|e| (e.hash, e.incarnation, e.live(now)))
                    .collect()
            };
            for batch in victims.chunks(inner.sweep_batch) {
                let mut map = shard.map.write();
                for &(hash, incarnation, live) in batch {
                    if shard.remove_entry(&mut map, hash, incarnation).is_some() && live {
                        removed += 1;
                    }
                }
                inner.maybe_rebuild_filter(shard, &mut map);
            }
        }
        removed
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

    /// Records the table's figures through the `metrics` facade now: its live entries
    /// (`ferry_forwarding_entries`) and its [`Stats`] as counters (see the crate docs). The
    /// read path counts in plain per-thread stripes whatever recorder is installed; this
    /// publishes those counts, so call it before a scrape. The sweeper thread calls it after
    /// each pass. Takes each shard's read lock in turn, as [`len`](Table::len) does.
    pub fn record_metrics(&self) {
        crate::metrics::record(&self.inner);
    }

    /// Removes every expired entry now, one shard at a time; returns how many.
    pub fn sweep_now(&self) -> usize {
        let now = self.inner.clock.now();
        let removed = (0..self.inner.shards.len())
            .map(|index| self.inner.sweep_shard(index, now, false))
            .sum();
        crate::metrics::swept();
        removed
    }

    /// A handle on the background sweeper thread, to watch it stop; `None` without one.
    pub fn sweeper(&self) -> Option<SweeperHandle> {
        self.sweeper.clone()
    }

    /// Calls `f` on every live entry with the time, one shard's read lock at a time.
    pub(crate) fn for_each_entry(&self, mut f: impl FnMut(&Entry, u64)) {
        let now = self.inner.clock.now();
        for shard in self.inner.shards.iter() {
            let map = shard.map.read();
            for entry in map.entries.iter().filter(|e| e.live(now)) {
                f(entry, now);
            }
        }
    }
}
