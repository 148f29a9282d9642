//! The table's figures, published through the `metrics` facade.
//!
//! Nothing here runs on the read path: `route_read` keeps counting in its per-thread stripes,
//! and `record` publishes the sums (and the live entries) when asked
//! ([`Table::record_metrics`](crate::Table::record_metrics), before a scrape) and after each
//! sweeper pass. Table-wide figures carry no label: a table may serve many jobs.

use metrics::{counter, gauge, histogram};

use crate::table::Inner;

/// Live entries.
pub const ENTRIES: &str = "ferry_forwarding_entries";
/// Lookups: `route_read` and `read` calls.
pub const LOOKUPS: &str = "ferry_forwarding_lookups_total";
/// Lookups that found a live entry.
pub const HITS: &str = "ferry_forwarding_hits_total";
/// Keys registered.
pub const REGISTRATIONS: &str = "ferry_forwarding_registrations_total";
/// Flips made.
pub const FLIPS: &str = "ferry_forwarding_flips_total";
/// Flips refused with a `Conflict`.
pub const FLIPS_REFUSED: &str = "ferry_forwarding_flips_refused_total";
/// Keys fenced.
pub const FENCES: &str = "ferry_forwarding_fences_total";
/// Time a writer waited behind a fence (`begin_write`), when it had to wait.
pub const FENCE_WAIT: &str = "ferry_forwarding_fence_wait_seconds";
/// Expired entries removed by sweeps.
pub const EXPIRED: &str = "ferry_forwarding_expired_total";
/// Sweeps of the whole table (the sweeper's passes and `sweep_now` calls).
pub const SWEEPS: &str = "ferry_forwarding_sweeps_total";

/// Publishes the table's live entries and its counters.
pub(crate) fn record(inner: &Inner) {
    gauge!(ENTRIES).set(inner.len() as f64);
    let stats = inner.stats();
    counter!(LOOKUPS).absolute(stats.lookups);
    counter!(HITS).absolute(stats.hits);
    counter!(REGISTRATIONS).absolute(stats.registrations);
    counter!(FLIPS).absolute(stats.flips);
    counter!(FLIPS_REFUSED).absolute(stats.flips_refused);
    counter!(FENCES).absolute(stats.fences);
    counter!(EXPIRED).absolute(stats.expired);
}

/// Counts one sweep of the whole table.
pub(crate) fn swept() {
    counter!(SWEEPS).increment(1);
}

/// Records how long a writer waited behind a fence.
pub(crate) fn fence_waited(waited: std::time::Duration) {
    histogram!(FENCE_WAIT).record(waited.as_secs_f64());
}
