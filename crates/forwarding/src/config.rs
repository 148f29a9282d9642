//! How a [`Table`](crate::Table) is built.

use std::time::Duration;

use crate::Clock;

/// Settings of a [`Table`](crate::Table). Start from [`Config::default`] and change what you
/// need with the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use ferry_forwarding::{Config, Table};
/// let table = Table::new(
///     Config::default()
///         .with_expected_entries(100_000)
///         .with_default_ttl(Duration::from_secs(3600)),
/// );
/// assert!(table.is_empty());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Number of lock stripes. Rounded up to a power of two and clamped to `1..=4096`.
    /// Default: 4 × the available parallelism, at least 64.
    pub shards: usize,
    /// How many entries the table is sized for. It sets the size of the presence filter
    /// (8 bits per expected entry, rounded up to a power of two) that lets a read of a key
    /// that is not in the table skip the shard lock. More entries than this still work;
    /// misses then fall back to the lock more often. Default: 65 536 (64 KiB of filter).
    pub expected_entries: usize,
    /// Time an entry stays after its flip before it expires (SPEC §4: 24 h).
    pub default_ttl: Duration,
    /// Longest chain of moves one entry may record (A→B→C is 2 hops). Default: 8.
    pub max_hops: u32,
    /// How long [`Table::begin_write`](crate::Table::begin_write) and
    /// [`Table::wait_drained`](crate::Table::wait_drained) wait on a fenced key. Default: 5 s.
    pub fence_timeout: Duration,
    /// How often the background sweeper removes expired entries; `None` runs no sweeper
    /// thread (call [`Table::sweep_now`](crate::Table::sweep_now) yourself). Expired entries
    /// count as absent at once either way; the sweeper only frees their memory. Default: 1 s.
    pub sweep_interval: Option<Duration>,
    /// Most entries removed under one hold of a shard's write lock, which bounds how long a
    /// reader can wait behind the sweeper. Default: 64 (about 10 µs of removals).
    pub sweep_batch: usize,
    /// The time source for TTLs. Default: [`Clock::system`].
    pub clock: Clock,
}

impl Default for Config {
    fn default() -> Config {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            shards: (4 * cores).max(64),
            expected_entries: 1 << 16,
            default_ttl: Duration::from_secs(24 * 3600),
            max_hops: 8,
            fence_timeout: Duration::from_secs(5),
            sweep_interval: Some(Duration::from_secs(1)),
            sweep_batch: 64,
            clock: Clock::system(),
        }
    }
}

impl Config {
    /// Sets [`Config::shards`].
    pub fn with_shards(mut self, shards: usize) -> Config {
        self.shards = shards;
        self
    }

    /// Sets [`Config::expected_entries`].
    pub fn with_expected_entries(mut self, entries: usize) -> Config {
        self.expected_entries = entries;
        self
    }

    /// Sets [`Config::default_ttl`].
    pub fn with_default_ttl(mut self, ttl: Duration) -> Config {
        self.default_ttl = ttl;
        self
    }

    /// Sets [`Config::max_hops`].
    pub fn with_max_hops(mut self, max_hops: u32) -> Config {
        self.max_hops = max_hops;
        self
    }

    /// Sets [`Config::fence_timeout`].
    pub fn with_fence_timeout(mut self, timeout: Duration) -> Config {
        self.fence_timeout = timeout;
        self
    }

    /// Sets [`Config::sweep_interval`].
    pub fn with_sweep_interval(mut self, interval: Option<Duration>) -> Config {
        self.sweep_interval = interval;
        self
    }

    /// Sets [`Config::sweep_batch`] (at least 1).
    pub fn with_sweep_batch(mut self, batch: usize) -> Config {
        self.sweep_batch = batch.max(1);
        self
    }

    /// Sets [`Config::clock`].
    pub fn with_clock(mut self, clock: impl Into<Clock>) -> Config {
        self.clock = clock.into();
        self
    }
}
