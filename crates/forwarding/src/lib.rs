//! Routing overlay for keys that are moving between storage nodes.
//!
//! A storage system that rebalances, drains a node or moves to another backend asks this
//! table, on every read and write of a key, where that key lives right now. While the
//! migration engine copies a key the table sends reads and writes to the source and counts the
//! writes; the engine's flip moves the key to its target atomically, and is refused if a
//! write could have been missed by the copy. This is what keeps a migration zero-downtime:
//! reads never fail because of it (SPEC I2) and no acknowledged write is lost (I3).
//!
//! It is not a cache and not a placement map: it knows nothing about how objects are stored,
//! holds entries only for keys that are moving or recently moved, and forgets them after a
//! TTL (by then the caller's own placement says where they are; [`Placement`] is a small one
//! for callers that have none).
//!
//! # Example: the request path
//! ```
//! use ferry_forwarding::{Config, Route, Table};
//! use ferry_types::{NodeId, ObjectKey};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let table = Table::new(Config::default());
//! let (a, b) = (NodeId::new("node-a")?, NodeId::new("node-b")?);
//! let key = ObjectKey::new("photos/cat.jpg")?;
//!
//! // The storage system, on a read: where is the key now?
//! assert_eq!(table.route_read("photos/cat.jpg"), Route::Source);
//!
//! // The engine starts moving the key and notes the generation as its copy begins.
//! table.register(&key, a, b)?;
//! let observed = table.generation("photos/cat.jpg").ok_or("registered above")?;
//!
//! // A write arrives during the copy: it goes to the source and moves the generation.
//! let ticket = table.try_begin_write("photos/cat.jpg")?;
//! assert_eq!(ticket.route(), Route::Source);
//! // ... write to the node the ticket names, then acknowledge ...
//! drop(ticket);
//!
//! // The copy may have missed that write: the flip is refused and the engine copies again.
//! assert!(table.try_flip("photos/cat.jpg", observed).is_err());
//! let observed = table.generation("photos/cat.jpg").ok_or("still moving")?;
//! // ... copy again ...
//! table.try_flip("photos/cat.jpg", observed)?;
//! assert_eq!(table.route_read("photos/cat.jpg"), Route::Target(b));
//! # Ok(()) }
//! ```
//!
//! # The protocol, precisely
//! - Every write goes through a [`WriteTicket`] ([`Table::try_begin_write`], or the async
//!   [`Table::begin_write`] that waits through a fence). The ticket names where to write; the
//!   write is in flight until the ticket is dropped, which must happen after the node
//!   acknowledged it. A write's start and its end both add one to the key's generation.
//! - The engine registers the key ([`Table::register`], state `Copying`), reads
//!   [`Table::generation`] *before* its copy reads the source, copies, then calls
//!   [`Table::try_flip`] with that generation. The flip succeeds only if the generation did not
//!   move and no write is in flight: every write that overlapped the copy either started or
//!   ended inside it (the generation moved) or is still running (in flight). A write that began
//!   before the key was registered is counted in a per-shard slot and refuses the flip too.
//! - After a few refused flips (the engine's choice; SPEC says 3) the engine calls
//!   [`Table::fence`]: new writers wait, [`Table::wait_drained`] returns once the writes in
//!   flight ended, with the generation to use; the engine copies once more and flips, which no
//!   write can refuse now. Waiting writers then get tickets for the target. [`Table::unfence`]
//!   (or [`Table::remove`]) lets them proceed to the source instead; a writer that waits longer
//!   than [`Config::fence_timeout`] gets [`Error::FenceTimeout`].
//! - A read that routed to the source just before the flip may still be reading it when the
//!   engine deletes the source copy. Where sources are deleted, reads go through
//!   [`Table::read`]: a [`ReadGuard`] that routes as [`Table::route_read`] does and counts the
//!   read until it is dropped, after the node answered. The commit hook (which the engine
//!   calls after the flip and before the delete) awaits [`Table::drain_reads`]: it returns
//!   once every read of the key that began before it has ended; reads that begin meanwhile
//!   route to the target and do not hold it back.
//! - The commit hook also moves the key in the caller's placement (for example
//!   [`Placement::set`]) before it drains: once the entry expires the table answers
//!   [`Route::Source`] again, and only the placement knows the key is on its target.
//!   [`Table::read_with`] resolves a counted read's route through a [`Placement`]; the
//!   [`Placement`] docs show the whole hook.
//! - A flipped entry routes to the target until its TTL (default 24 h, from the flip, or
//!   restarted with [`Table::set_ttl`] after cleanup) runs out; then it is absent at once, and
//!   the sweeper frees it later. Moving entries never expire.
//!
//! # Design
//! - **Lock striping.** A power-of-two number of shards, each a
//!   `CachePadded<parking_lot::RwLock<_>>` around a `hashbrown::HashTable`, so the key is
//!   hashed once and the hash reused for the shard, the inner table and the filter. The shard
//!   index is taken from bits 32.. of the hash, which hashbrown uses neither for bucket indexes
//!   (low bits) nor for its control tags (top 7 bits). No call holds two shard locks and no
//!   guard is handed out.
//! - **Hasher.** Keys come from clients, so the hash is seeded at random per table:
//!   `foldhash::quality::RandomState` (the hasher hashbrown itself defaults to; fast on short
//!   strings, with a per-instance seed and a final avalanche that makes the high bits used for
//!   the shard index as good as the low ones). `ahash` would do too; FxHash is unseeded. The
//!   key's bytes go in as one `write`, without the `0xff` terminator `Hash for str` adds
//!   (which only separates values hashed one after another): one multiply less on the path
//!   from the key to the filter word.
//! - **Miss fast path.** A presence filter: a blocked Bloom filter, three bits per key in one
//!   `AtomicU64` word, 8 bits per expected entry ([`Config::expected_entries`]), one array
//!   for the table whose word index is hash bits 32.. (so its low bits are the shard index and
//!   each shard owns its words). A read whose bits are not all set returns [`Route::Source`]
//!   without touching the lock, which a plain read lock (an atomic read-modify-write on a
//!   shared cache line) would cost; `route_read` is inlined into its caller, so such a miss is
//!   a hash, a counter bump and one load. Bits are set under the shard's write lock before
//!   the entry is inserted; a read that misses them is ordered before that insert. Removal
//!   leaves bits set (a false positive only costs the locked lookup) until the shard's words
//!   are rebuilt from its entries, in place, once removals exceed its live entries.
//! - **Counters.** Lookups and hits are counted in 64 per-thread cache-padded stripes with a
//!   plain load and store, so the read path has no shared atomic read-modify-write.
//! - **Expiry order.** Each shard keeps its forwarded entries in a `BTreeSet` ordered by
//!   deadline, so a sweep visits only expired entries, never the live ones. The sweeper (a
//!   std thread, no runtime needed) collects up to [`Config::sweep_batch`] expired entries
//!   under the read lock, removes them under a short write lock re-checking each deadline,
//!   and moves on shard by shard. It holds a `Weak` between sweeps and stops when the last
//!   [`Table`] clone is dropped ([`SweeperHandle`] shows it).
//! - **Counted reads.** Per shard, two read counters and an epoch bit, as SRCU has: a read
//!   adds one to the counter the epoch names; a drain waits for the other counter to empty,
//!   flips the epoch and waits for the first, so reads that begin after it count apart. A
//!   read costs [`Table::route_read`] plus two uncontended atomic read-modify-writes.
//! - **Metrics.** Through the `metrics` facade (no exporter here), with no label:
//!   [`Table::record_metrics`] publishes the live entries (`ferry_forwarding_entries`) and
//!   the [`Stats`] as counters, and the sweeper publishes them after each pass and counts its
//!   sweeps; writers that waited behind a fence record the wait. The read path records nothing
//!   itself (its stripes are the counters), so it costs the same whatever recorder is
//!   installed. Names: the constants of [`metrics`].
//! - **Time.** TTLs use an injected [`Clock`]: the system's monotonic clock, or a
//!   [`ManualClock`] in tests. The read path reads it only on hits of forwarded entries. The
//!   fence timeout is a `tokio::time` timeout, so it follows a paused tokio clock.
//!
//! # Testing
//! A proptest state machine checks the table against a `HashMap` model step by step; a stress
//! test runs real reader, writer and engine threads over a simulated two-node store and checks
//! that no read fails (I2) and no acknowledged write is lost (I3); an exhaustive test runs every
//! interleaving of a write's steps with a flip's. There is no loom model: the table's locks are
//! `parking_lot`'s, which loom cannot instrument, and swapping every primitive behind a
//! `cfg(loom)` would test a different table; the exhaustive interleaving test covers the
//! ticket/flip/fence steps instead (each step is one critical section). Read drains are
//! polled by hand to check which reads they wait for, and a multi-thread run checks that no
//! read routed to the source outlives a drain that began after it. A recording recorder checks
//! that reads publish nothing and `record_metrics` and sweeps publish the table's figures.
//!
//! # Feature flags
//! None. Snapshots are always serializable with `serde`.

mod clock;
mod config;
mod entry;
mod error;
mod filter;
pub mod metrics;
mod placement;
mod read;
mod shard;
mod snapshot;
mod sweep;
mod table;
mod types;

pub use clock::{Clock, ManualClock};
pub use config::Config;
pub use error::{Error, Result};
pub use placement::{Placement, PlacementSnapshot};
pub use read::ReadGuard;
pub use snapshot::{EntrySnapshot, TableSnapshot};
pub use sweep::SweeperHandle;
pub use table::{Table, WriteTicket};
pub use types::{Conflict, EntryInfo, EntryState, Fenced, Registration, Route, Stats};

#[cfg(test)]
mod tests;
