//! Where keys live when the table has no entry for them: the embedder's placement map.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use crossbeam_utils::CachePadded;
use ferry_types::{NodeId, ObjectKey};
use hashbrown::HashTable;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::{ReadGuard, Route, Table};

/// Shards of a placement map.
const SHARDS: usize = 64;

/// Which node holds each key: a default node, and the keys placed elsewhere.
///
/// The table answers [`Route::Source`] for a key it has no live entry for, which means "where
/// your own placement puts it"; forwarded entries expire after the table's TTL, so from then
/// on only the placement knows that a moved key lives on its target. A commit hook that
/// forgot to move the key here would send reads to the old node after the TTL. This is a
/// small concurrent map for embedders that have no placement map of their own:
/// [`Placement::resolve`] turns a [`Route`] into a node, and [`Table::read_with`] does both
/// for a counted read.
///
/// Keys placed on the default node take no room ([`Placement::set`] forgets them). Save it
/// with [`Placement::snapshot`] (serializable) and load it with [`Placement::restore`].
///
/// It is lock-striped like the table: 64 cache-padded `parking_lot::RwLock`s around
/// `hashbrown` tables, keys hashed once with a per-map seeded `foldhash`. One lock would be
/// simpler, but every read that the table sends to [`Route::Source`] (most reads) looks the
/// key up here, and a single reader-writer lock's count is one cache line that every reader
/// thread writes to.
///
/// # Example: the commit hook
/// ```
/// use std::time::Duration;
/// use ferry_forwarding::{Placement, Route, Table};
/// use ferry_types::{NodeId, ObjectKey};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let table = Table::default();
/// let (a, b) = (NodeId::new("node-a")?, NodeId::new("node-b")?);
/// let placement = Placement::new(a); // every key is on node-a unless placed elsewhere
/// let key = ObjectKey::new("photos/cat.jpg")?;
///
/// // The read path: the table's route, resolved through the placement, counted until the
/// // guard is dropped.
/// let (node, guard) = table.read_with("photos/cat.jpg", &placement);
/// assert_eq!(node, a);
/// // ... read from `node` ...
/// drop(guard);
///
/// // The engine moves the key from a to b, flips it, then calls the commit hook before it
/// // deletes the source copy. The hook places the key on the target and drains the reads
/// // that routed to the source before the flip.
/// async fn commit_hook(table: &Table, placement: &Placement, key: &ObjectKey, target: NodeId) {
///     placement.set(key, target);
///     table.drain_reads(key.as_str()).await;
/// }
/// table.register(&key, a, b)?;
/// let observed = table.generation("photos/cat.jpg").ok_or("registered above")?;
/// // ... copy ...
/// table.try_flip("photos/cat.jpg", observed)?;
/// commit_hook(&table, &placement, &key, b).await;
/// assert_eq!(table.read_with("photos/cat.jpg", &placement).0, b);
///
/// // The entry expires (here at once: a TTL of zero). The table forgets the move, the
/// // placement does not.
/// table.set_ttl("photos/cat.jpg", Duration::ZERO)?;
/// assert_eq!(table.route_read("photos/cat.jpg"), Route::Source);
/// assert_eq!(table.read_with("photos/cat.jpg", &placement).0, b);
/// # Ok(()) }
/// ```
pub struct Placement {
    default: NodeId,
    hasher: foldhash::quality::RandomState,
    shards: Box<[CachePadded<RwLock<HashTable<Placed>>>]>,
}

/// A key placed off the default node, with its hash (kept so a growing table does not hash
/// the key again).
struct Placed {
    hash: u64,
    key: ObjectKey,
    node: NodeId,
}

impl Placement {
    /// An empty placement: every key is on `default`.
    pub fn new(default: NodeId) -> Placement {
        Placement {
            default,
            hasher: foldhash::quality::RandomState::default(),
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(RwLock::new(HashTable::new())))
                .collect(),
        }
    }

    /// The node of every key not placed elsewhere.
    pub fn default_node(&self) -> NodeId {
        self.default
    }

    fn hash(&self, key: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(key.as_bytes());
        hasher.finish()
    }

    /// The shard of a hash: bits 32.., as in the table, apart from the low bits hashbrown
    /// takes bucket indexes from and the top 7 it takes its tags from.
    fn shard(&self, hash: u64) -> &RwLock<HashTable<Placed>> {
        &self.shards[(hash >> 32) as usize & (SHARDS - 1)]
    }

    /// Places `key` on `node` (placing it on the default node forgets it).
    pub fn set(&self, key: &ObjectKey, node: NodeId) {
        if node == self.default {
            self.remove(key.as_str());
            return;
        }
        let hash = self.hash(key.as_str());
        let mut shard = self.shard(hash).write();
        match shard.find_mut(hash, |p| p.hash == hash && p.key == *key) {
            Some(placed) => placed.node = node,
            None => {
                shard.insert_unique(
                    hash,
                    Placed {
                        hash,
                        key: key.clone(),
                        node,
                    },
                    |p| p.hash,
                );
            }
        }
    }

    /// Forgets where `key` was placed (it is on the default node again); returns the node it
    /// was placed on, if any.
    pub fn remove(&self, key: &str) -> Option<NodeId> {
        let hash = self.hash(key);
        let mut shard = self.shard(hash).write();
        let found = shard
            .find_entry(hash, |p| p.hash == hash && p.key.as_str() == key)
            .ok()?;
        let (placed, _) = found.remove();
        Some(placed.node)
    }

    /// The node that holds `key`.
    pub fn node_of(&self, key: &str) -> NodeId {
        let hash = self.hash(key);
        self.shard(hash)
            .read()
            .find(hash, |p| p.hash == hash && p.key.as_str() == key)
            .map_or(self.default, |p| p.node)
    }

    /// The node a read or write of `key` goes to: the table's target, or this placement's
    /// node for [`Route::Source`].
    pub fn resolve(&self, key: &str, route: Route) -> NodeId {
        match route {
            Route::Target(node) => node,
            Route::Source => self.node_of(key),
        }
    }

    /// Keys placed off the default node.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }

    /// Whether every key is on the default node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The placement as plain, serializable data (one shard's read lock at a time: consistent
    /// per key, not across keys).
    pub fn snapshot(&self) -> PlacementSnapshot {
        let mut nodes = BTreeMap::new();
        for shard in self.shards.iter() {
            for placed in shard.read().iter() {
                nodes.insert(placed.key.clone(), placed.node);
            }
        }
        PlacementSnapshot {
            version: PlacementSnapshot::VERSION,
            default: self.default,
            nodes,
        }
    }

    /// A placement holding `snapshot` (keys recorded on the default node are left out).
    pub fn restore(snapshot: PlacementSnapshot) -> Placement {
        let placement = Placement::new(snapshot.default);
        for (key, node) in &snapshot.nodes {
            placement.set(key, *node);
        }
        placement
    }
}

impl fmt::Debug for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Placement")
            .field("default", &self.default)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// A [`Placement`] as plain data, to persist it (with any serde format) and restore it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlacementSnapshot {
    /// Format version of this struct; 1.
    pub version: u32,
    /// The node of every key not in `nodes`.
    pub default: NodeId,
    /// The keys placed elsewhere, by key.
    pub nodes: BTreeMap<ObjectKey, NodeId>,
}

impl PlacementSnapshot {
    /// The format version this crate writes.
    pub const VERSION: u32 = 1;
}

impl Table {
    /// A counted read of `key` ([`Table::read`]) and the node to read from: the table's
    /// target, or where `placement` puts the key when the table answers [`Route::Source`].
    ///
    /// See [`Placement`] for the commit hook that keeps the two in step.
    pub fn read_with(&self, key: &str, placement: &Placement) -> (NodeId, ReadGuard<'_>) {
        let guard = self.read(key);
        (placement.resolve(key, guard.route()), guard)
    }
}
