//! One lock stripe: a `hashbrown` table of entries behind a `parking_lot` lock, its deadline
//! index, and the counters and wake-ups of writes that the lock does not cover.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

use hashbrown::HashTable;
use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::EntryState;
use crate::entry::Entry;
use crate::filter::Filter;

/// Slots per shard counting writes to keys that had no live entry when they began.
const UNTRACKED_SLOTS: usize = 64;

pub(crate) struct Shard {
    pub(crate) map: RwLock<ShardMap>,
    /// This shard's place in the table, which names its words of the filter.
    index: usize,
    /// Writes in flight for keys that had no live entry when they began, by slot.
    untracked: Box<[AtomicU32]>,
    /// Entries in this shard in state `Fenced`.
    pub(crate) fenced: AtomicUsize,
    /// Woken when a fenced entry is flipped, unfenced or removed.
    pub(crate) fence_lifted: Notify,
    /// Woken when writes drain from a fenced entry.
    pub(crate) drained: Notify,
}

/// What a shard's lock protects.
pub(crate) struct ShardMap {
    pub(crate) entries: HashTable<Entry>,
    /// Forwarded entries by deadline: [`Entry::deadline`], `(expires_at, incarnation, hash)`.
    pub(crate) expiry: BTreeSet<(u64, u64, u64)>,
    next_incarnation: u64,
    removed_since_rebuild: usize,
}

/// The one lookup of a key: its entry has the key's full hash and the key's bytes. Every
/// path that looks a key up goes through [`ShardMap::find`] or [`ShardMap::find_mut`].
#[inline(always)]
fn is_key(hash: u64, key: &str) -> impl Fn(&Entry) -> bool + '_ {
    move |e| e.hash == hash && e.key.is(key)
}

impl ShardMap {
    /// The entry of `key` (whose hash is `hash`), live or expired.
    #[inline(always)]
    pub(crate) fn find(&self, hash: u64, key: &str) -> Option<&Entry> {
        self.entries.find(hash, is_key(hash, key))
    }

    /// [`ShardMap::find`], for changing the entry.
    #[inline]
    pub(crate) fn find_mut(&mut self, hash: u64, key: &str) -> Option<&mut Entry> {
        self.entries.find_mut(hash, is_key(hash, key))
    }

    /// The entry of `key` if it is live at `now`.
    #[inline(always)]
    pub(crate) fn find_live(&self, hash: u64, key: &str, now: u64) -> Option<&Entry> {
        self.find(hash, key).filter(|e| e.live(now))
    }

    /// [`ShardMap::find_live`], for changing the entry.
    #[inline]
    pub(crate) fn find_live_mut(&mut self, hash: u64, key: &str, now: u64) -> Option<&mut Entry> {
        self.find_mut(hash, key).filter(|e| e.live(now))
    }

    /// The entry with this hash and incarnation (what tickets and the expiry index hold),
    /// whatever its key: incarnations are unique in a shard.
    #[inline]
    pub(crate) fn find_incarnation(&self, hash: u64, incarnation: u64) -> Option<&Entry> {
        self.entries
            .find(hash, |e| e.hash == hash && e.incarnation == incarnation)
    }

    /// Inserts `entry` (whose key has no entry here) with a new incarnation, setting its bits
    /// in the table's `filter` first, so a read that misses them is ordered before the insert.
    pub(crate) fn insert(&mut self, filter: &Filter, mut entry: Entry) {
        entry.incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        if entry.state == EntryState::Forwarded {
            self.expiry.insert(entry.deadline());
        }
        filter.insert(entry.hash);
        self.entries.insert_unique(entry.hash, entry, |e| e.hash);
    }
}

impl Shard {
    /// The empty shard `index` of a table.
    pub(crate) fn new(index: usize) -> Shard {
        Shard {
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
        }
    }

    /// The slot counting untracked writes of the key with this hash (bits 12.., apart from
    /// the shard index and hashbrown's bits).
    #[inline]
    pub(crate) fn untracked(&self, hash: u64) -> &AtomicU32 {
        &self.untracked[((hash >> 12) as usize) & (UNTRACKED_SLOTS - 1)]
    }

    /// Removes the entry with this hash and incarnation, if present. Writes in flight on it
    /// move to the untracked slot, where their tickets will find them.
    pub(crate) fn remove_entry(
        &self,
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
            self.untracked(hash).fetch_add(in_flight, Relaxed);
        }
        if entry.state == EntryState::Forwarded {
            map.expiry.remove(&entry.deadline());
        }
        if entry.state == EntryState::Fenced {
            self.fenced.fetch_sub(1, Relaxed);
            self.fence_lifted.notify_waiters();
            self.drained.notify_waiters();
        }
        map.removed_since_rebuild += 1;
        Some(entry)
    }

    /// Recomputes this shard's words of `filter` (of a table of `shards` shards) from its
    /// entries, dropping the bits of removed keys, once removals exceed its live entries.
    /// Runs under the write lock (the `&mut ShardMap`), so no insert races it.
    pub(crate) fn maybe_rebuild_filter(&self, map: &mut ShardMap, filter: &Filter, shards: usize) {
        if map.removed_since_rebuild >= map.entries.len().max(1024) {
            filter.rebuild(self.index, shards, map.entries.iter().map(|e| e.hash));
            map.removed_since_rebuild = 0;
        }
    }
}
