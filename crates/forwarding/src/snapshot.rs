//! Saving and restoring the table's entries.

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use ferry_types::{JobId, NodeId, ObjectKey};
use serde::{Deserialize, Serialize};

use crate::clock::duration_nanos;
use crate::entry::{Cold, Entry, KeyBuf, NEVER};
use crate::{Config, EntryState, Error, Result, Table};

/// The entries of a [`Table`] as plain, serializable data, so a restarted process can reload
/// its forwarding state (the engine persists it beside its checkpoint).
///
/// Deadlines are stored as the time left (`expires_in`), since the table's monotonic clock
/// means nothing in another process. Writes in flight are not stored: they ended with the
/// process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TableSnapshot {
    /// Format version of this struct; 1.
    pub version: u32,
    /// One record per live entry.
    pub entries: Vec<EntrySnapshot>,
}

/// One entry of a [`TableSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EntrySnapshot {
    /// The key.
    pub key: ObjectKey,
    /// The key's home: the source of its first move.
    pub source: NodeId,
    /// Where the current copy reads from (the source, or the previous target of a chain).
    pub copy_from: NodeId,
    /// Where the key goes (or went).
    pub target: NodeId,
    /// The state; `Fenced` entries are saved as `Copying` (a fence does not outlive its
    /// process: its waiters are gone).
    pub state: EntryState,
    /// The generation.
    pub generation: u64,
    /// Moves recorded.
    pub hops: u32,
    /// The entry's TTL.
    pub ttl: Duration,
    /// For a forwarded entry, the time left before it expires.
    pub expires_in: Option<Duration>,
    /// The job that registered the entry, if any (absent in snapshots from before owners).
    #[serde(default)]
    pub owner: Option<JobId>,
}

impl TableSnapshot {
    /// The format version this crate writes.
    pub const VERSION: u32 = 1;
}

impl Table {
    /// The live entries, one shard at a time (each shard's read lock is held while its
    /// entries are copied; the snapshot is consistent per key, not across keys).
    pub fn snapshot(&self) -> TableSnapshot {
        let mut entries = Vec::new();
        self.for_each_entry(|entry, now| {
            let state = match entry.state {
                EntryState::Fenced => EntryState::Copying,
                state => state,
            };
            entries.push(EntrySnapshot {
                key: entry.key.to_key(),
                source: entry.cold.source,
                copy_from: entry.cold.copy_from,
                target: entry.target,
                state,
                generation: entry.generation.load(std::sync::atomic::Ordering::Relaxed),
                hops: entry.cold.hops,
                ttl: Duration::from_nanos(entry.cold.ttl),
                expires_in: (entry.state == EntryState::Forwarded)
                    .then(|| Duration::from_nanos(entry.expires_at.saturating_sub(now))),
                owner: entry.cold.owner.clone(),
            });
        });
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        TableSnapshot {
            version: TableSnapshot::VERSION,
            entries,
        }
    }

    /// Builds a table from `config` and loads `snapshot` into it. Moving entries come back as
    /// `Copying` with no write in flight; forwarded ones with the time they had left; a later
    /// record for the same key replaces an earlier one.
    ///
    /// # Errors
    ///
    /// [`Error::SameSourceAndTarget`] for a record whose source (or copy source) is its
    /// target, [`Error::TooManyHops`] for one with 0 hops or more than `config.max_hops`.
    pub fn restore(config: Config, snapshot: TableSnapshot) -> Result<Table> {
        let max_hops = config.max_hops;
        let table = Table::new(config);
        let now = table.inner.clock.now();
        for record in snapshot.entries {
            if record.source == record.target || record.copy_from == record.target {
                return Err(Error::SameSourceAndTarget {
                    key: record.key.as_str().to_owned(),
                    node: record.target,
                });
            }
            if record.hops == 0 || record.hops > max_hops {
                return Err(Error::TooManyHops {
                    key: record.key.as_str().to_owned(),
                    hops: record.hops,
                    max: max_hops,
                });
            }
            let forwarded = record.state == EntryState::Forwarded;
            let ttl = duration_nanos(record.ttl);
            let expires_at = if forwarded {
                now.saturating_add(duration_nanos(record.expires_in.unwrap_or(record.ttl)))
            } else {
                NEVER
            };
            table.insert_restored(Entry {
                hash: 0,
                key: KeyBuf::new(&record.key),
                state: if forwarded {
                    EntryState::Forwarded
                } else {
                    EntryState::Copying
                },
                chained: !forwarded && record.copy_from != record.source,
                maybe_untracked: false,
                in_flight: AtomicU32::new(0),
                generation: AtomicU64::new(record.generation),
                incarnation: 0,
                expires_at,
                target: record.target,
                cold: Box::new(Cold {
                    hops: record.hops,
                    ttl,
                    source: record.source,
                    copy_from: record.copy_from,
                    owner: record.owner,
                    // A chained move restored from a snapshot cannot be undone: its removal
                    // removes the entry.
                    before: None,
                }),
            });
        }
        Ok(table)
    }
}
