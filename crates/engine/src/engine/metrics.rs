//! The engine's metrics: their names, and the handles a job records through.
//!
//! Everything goes through the `metrics` facade: with no recorder installed each handle is a
//! no-op, and an embedder that installs one (the `ferry` command installs a Prometheus one)
//! sees the figures below. Handles are registered once per job (labels: `job`) or per store
//! (labels: `node`, `op`), so a recording site is one atomic operation, never a lookup.
//! `docs/metrics.md` is the reference table; the names are a public contract (dashboards
//! rely on them), so they are written once, here.

use ::metrics::{Counter, Gauge, Histogram, Unit};
use ferry_types::{JobId, ObjectState, Rate};

/// Objects finished and recorded done by this process (skipped ones included).
pub const OBJECTS_DONE: &str = "ferry_objects_done_total";
/// Bytes of the objects recorded done.
pub const BYTES_DONE: &str = "ferry_bytes_done_total";
/// Objects whose copy reached the target (a copy that runs again counts again).
pub const OBJECTS_COPIED: &str = "ferry_objects_copied_total";
/// Bytes streamed from source to target (a check: bytes read to compare).
pub const BYTES_COPIED: &str = "ferry_bytes_copied_total";
/// Objects whose target copy was verified.
pub const OBJECTS_VERIFIED: &str = "ferry_objects_verified_total";
/// Objects flipped to their target (flips made).
pub const OBJECTS_FORWARDED: &str = "ferry_objects_forwarded_total";
/// Objects whose source copy was deleted.
pub const OBJECTS_CLEANED: &str = "ferry_objects_cleaned_total";
/// Objects skipped: their source vanished.
pub const OBJECTS_SKIPPED: &str = "ferry_objects_skipped_total";
/// Objects that failed (recorded failed).
pub const OBJECTS_FAILED: &str = "ferry_objects_failed_total";
/// Store operations run again after a transient error.
pub const RETRIES: &str = "ferry_retries_total";
/// Flips refused because a write raced the copy (the object is copied again).
pub const FLIPS_REFUSED: &str = "ferry_flips_refused_total";
/// Hot keys fenced to be flipped on their own.
pub const FENCES: &str = "ferry_fences_total";
/// How long a fenced key waited for its writes in flight to drain.
pub const FENCE_WAIT: &str = "ferry_fence_wait_seconds";
/// Objects being worked on now.
pub const OBJECTS_IN_FLIGHT: &str = "ferry_objects_in_flight";
/// The job's effective rate limit (0: unlimited).
pub const RATE: &str = "ferry_rate_bytes_per_second";
/// The job's recent throughput.
pub const THROUGHPUT: &str = "ferry_throughput_bytes_per_second";
/// One store operation's latency, by `node` and `op`.
pub const STORE_OP_DURATION: &str = "ferry_store_op_duration_seconds";
/// Store operations that returned an error, by `node` and `op`.
pub const STORE_OP_ERRORS: &str = "ferry_store_op_errors_total";

/// Describes the engine's metrics (their help text and unit) to the recorder installed now.
/// The engine calls it when it is built; an embedder that installs its recorder later may
/// call it again.
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        OBJECTS_DONE,
        "Objects finished and recorded done (skipped ones included)"
    );
    describe_counter!(
        BYTES_DONE,
        Unit::Bytes,
        "Bytes of the objects recorded done"
    );
    describe_counter!(OBJECTS_COPIED, "Objects whose copy reached the target");
    describe_counter!(
        BYTES_COPIED,
        Unit::Bytes,
        "Bytes streamed from source to target"
    );
    describe_counter!(OBJECTS_VERIFIED, "Objects whose target copy was verified");
    describe_counter!(OBJECTS_FORWARDED, "Objects flipped to their target");
    describe_counter!(OBJECTS_CLEANED, "Objects whose source copy was deleted");
    describe_counter!(OBJECTS_SKIPPED, "Objects whose source vanished");
    describe_counter!(OBJECTS_FAILED, "Objects recorded failed");
    describe_counter!(RETRIES, "Operations run again after a transient error");
    describe_counter!(
        FLIPS_REFUSED,
        "Flips refused because a write raced the copy"
    );
    describe_counter!(FENCES, "Hot keys fenced to be flipped on their own");
    describe_histogram!(
        FENCE_WAIT,
        Unit::Seconds,
        "Time a fenced key waited for its writes in flight"
    );
    describe_gauge!(OBJECTS_IN_FLIGHT, "Objects being worked on now");
    describe_gauge!(
        RATE,
        "The job's effective rate limit in bytes/s (0: unlimited)"
    );
    describe_gauge!(
        THROUGHPUT,
        "The job's throughput in bytes/s over the last seconds"
    );
    describe_histogram!(
        STORE_OP_DURATION,
        Unit::Seconds,
        "Latency of one store operation"
    );
    describe_counter!(STORE_OP_ERRORS, "Store operations that returned an error");
}

/// A job's metric handles, registered once when the job starts (labels: `job`).
#[derive(Debug)]
pub(crate) struct JobMetrics {
    done: Counter,
    bytes_done: Counter,
    copied: Counter,
    pub(crate) bytes_copied: Counter,
    verified: Counter,
    forwarded: Counter,
    cleaned: Counter,
    skipped: Counter,
    failed: Counter,
    pub(crate) retries: Counter,
    pub(crate) flips_refused: Counter,
    pub(crate) fences: Counter,
    pub(crate) fence_wait: Histogram,
    pub(crate) in_flight: Gauge,
    rate: Gauge,
    throughput: Gauge,
}

impl JobMetrics {
    pub(crate) fn new(job: &JobId) -> JobMetrics {
        let labels = [("job", job.as_str().to_owned())];
        JobMetrics {
            done: ::metrics::counter!(OBJECTS_DONE, &labels),
            bytes_done: ::metrics::counter!(BYTES_DONE, &labels),
            copied: ::metrics::counter!(OBJECTS_COPIED, &labels),
            bytes_copied: ::metrics::counter!(BYTES_COPIED, &labels),
            verified: ::metrics::counter!(OBJECTS_VERIFIED, &labels),
            forwarded: ::metrics::counter!(OBJECTS_FORWARDED, &labels),
            cleaned: ::metrics::counter!(OBJECTS_CLEANED, &labels),
            skipped: ::metrics::counter!(OBJECTS_SKIPPED, &labels),
            failed: ::metrics::counter!(OBJECTS_FAILED, &labels),
            retries: ::metrics::counter!(RETRIES, &labels),
            flips_refused: ::metrics::counter!(FLIPS_REFUSED, &labels),
            fences: ::metrics::counter!(FENCES, &labels),
            fence_wait: ::metrics::histogram!(FENCE_WAIT, &labels),
            in_flight: ::metrics::gauge!(OBJECTS_IN_FLIGHT, &labels),
            rate: ::metrics::gauge!(RATE, &labels),
            throughput: ::metrics::gauge!(THROUGHPUT, &labels),
        }
    }

    /// Counts an object's move to `state` (every move goes through
    /// [`JobShared::emit`](super::job::JobShared::emit)). A skipped object is counted done
    /// too, as the job's snapshot counts it.
    pub(crate) fn moved(&self, state: &ObjectState) {
        match state {
            ObjectState::Copied => self.copied.increment(1),
            ObjectState::Verified => self.verified.increment(1),
            ObjectState::Forwarded => self.forwarded.increment(1),
            ObjectState::Cleaned => self.cleaned.increment(1),
            ObjectState::Done => self.done.increment(1),
            ObjectState::Skipped => {
                self.skipped.increment(1);
                self.done.increment(1);
            }
            ObjectState::Failed { .. } => self.failed.increment(1),
            _ => {}
        }
    }

    /// Counts the bytes of objects recorded done.
    pub(crate) fn bytes_done(&self, bytes: u64) {
        self.bytes_done.increment(bytes);
    }

    /// Sets the rate gauges: the effective limit (0 when unlimited) and the throughput.
    pub(crate) fn rates(&self, limit: Rate, throughput: u64) {
        self.rate.set(limit.as_bytes_per_sec().unwrap_or(0) as f64);
        self.throughput.set(throughput as f64);
    }
}
