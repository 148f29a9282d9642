//! A point-in-time view of a job, for monitoring.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::serde_text;
use crate::ids::{JobId, NodeId};
use crate::size::Rate;
use crate::status::JobStatus;

/// Where a job stands: the record behind progress bars, `ferry status` and job listings.
///
/// Plain data, cheap to clone and send; the engine publishes a fresh one as the job runs.
///
/// ```
/// use std::time::Duration;
/// use ferry_types::{JobId, JobSnapshot, NodeId};
/// # fn main() -> Result<(), ferry_types::Error> {
/// let mut snap = JobSnapshot::new(JobId::new("j")?, NodeId::new("a")?, NodeId::new("b")?);
/// snap.total_bytes = Some(1000);
/// snap.done_bytes = 250;
/// assert_eq!(snap.remaining_bytes(), Some(750));
/// assert_eq!(snap.fraction_done(), Some(0.25));
/// assert_eq!(JobSnapshot::estimate_eta(750, 250), Some(Duration::from_secs(3)));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSnapshot {
    /// The job.
    pub id: JobId,
    /// Its status.
    pub status: JobStatus,
    /// The node objects move from.
    pub source: NodeId,
    /// The node objects move to.
    pub target: NodeId,
    /// Objects in the job; `None` while a lazy listing of the source is still running.
    pub total_objects: Option<u64>,
    /// Bytes in the job; `None` while a lazy listing of the source is still running.
    pub total_bytes: Option<u64>,
    /// Objects done (forwarded, cleaned up as the policy says, and recorded).
    pub done_objects: u64,
    /// Bytes of the objects done.
    pub done_bytes: u64,
    /// Objects that failed (for a check job: the keys that differ).
    pub failed_objects: u64,
    /// Of the failed objects, those left because their source kept changing after its copy
    /// (more often than the plan's `max_changes`): the target holds an older content.
    #[serde(default)]
    pub changed_objects: u64,
    /// Objects skipped because the source vanished during the copy; counted in
    /// `done_objects` too.
    pub skipped_objects: u64,
    /// Objects being worked on now.
    pub in_flight: u64,
    /// Bytes written to the target so far, retries included.
    pub bytes_copied: u64,
    /// Recent throughput, bytes per second.
    pub throughput: u64,
    /// Recent objects finished per second.
    pub objects_per_sec: u64,
    /// The rate limit in force for this job (the tighter of the job's and a shared one).
    pub effective_rate: Rate,
    /// Whether the job's own rate follows its target's health (`--rate auto`): then
    /// `effective_rate` is the rate its controller set last.
    #[serde(default)]
    pub adaptive_rate: bool,
    /// Time since this run of the job started (pauses included).
    #[serde(with = "serde_text")]
    pub elapsed: Duration,
    /// Estimated time to finish; `None` when unknown (no total yet, or no throughput).
    #[serde(with = "serde_text::option")]
    pub eta: Option<Duration>,
}

impl JobSnapshot {
    /// A snapshot of a job that has not started: status `Pending`, no totals, all counters
    /// zero, unlimited rate.
    pub fn new(id: JobId, source: NodeId, target: NodeId) -> JobSnapshot {
        JobSnapshot {
            id,
            status: JobStatus::Pending,
            source,
            target,
            total_objects: None,
            total_bytes: None,
            done_objects: 0,
            done_bytes: 0,
            failed_objects: 0,
            changed_objects: 0,
            skipped_objects: 0,
            in_flight: 0,
            bytes_copied: 0,
            throughput: 0,
            objects_per_sec: 0,
            effective_rate: Rate::Unlimited,
            adaptive_rate: false,
            elapsed: Duration::ZERO,
            eta: None,
        }
    }

    /// Bytes left to move, or `None` while the total is unknown. Never negative: a total that
    /// was overtaken (objects grew during the job) counts as zero left.
    pub fn remaining_bytes(&self) -> Option<u64> {
        self.total_bytes
            .map(|total| total.saturating_sub(self.done_bytes))
    }

    /// Progress in `[0, 1]`, or `None` while the totals are unknown.
    ///
    /// By bytes done when the total size is not zero; otherwise by objects finished (done,
    /// which counts the skipped ones, or failed) out of the total; a job with nothing to do is
    /// fully done.
    pub fn fraction_done(&self) -> Option<f64> {
        let total_bytes = self.total_bytes?;
        let fraction = if total_bytes > 0 {
            self.done_bytes as f64 / total_bytes as f64
        } else {
            let total_objects = self.total_objects?;
            if total_objects == 0 {
                1.0
            } else {
                let finished = self.done_objects.saturating_add(self.failed_objects);
                finished as f64 / total_objects as f64
            }
        };
        Some(fraction.clamp(0.0, 1.0))
    }

    /// Time to move `remaining_bytes` at `throughput` bytes per second, rounded up to the
    /// millisecond; `None` when `throughput` is zero. Pure, so it can be tested and reused by
    /// anyone who keeps their own counters.
    pub fn estimate_eta(remaining_bytes: u64, throughput: u64) -> Option<Duration> {
        if throughput == 0 {
            return None;
        }
        let millis = (u128::from(remaining_bytes) * 1000).div_ceil(u128::from(throughput));
        Some(Duration::from_millis(
            u64::try_from(millis).unwrap_or(u64::MAX),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snapshot() -> JobSnapshot {
        JobSnapshot::new(
            JobId::new("job-1").unwrap(),
            NodeId::new("a").unwrap(),
            NodeId::new("b").unwrap(),
        )
    }

    fn full_snapshot() -> JobSnapshot {
        JobSnapshot {
            status: JobStatus::Running,
            total_objects: Some(10_000),
            total_bytes: Some(655_360_000),
            done_objects: 4_000,
            done_bytes: 262_144_000,
            failed_objects: 3,
            skipped_objects: 1,
            in_flight: 16,
            bytes_copied: 270_000_000,
            throughput: 52_428_800,
            objects_per_sec: 800,
            effective_rate: Rate::bytes_per_sec(50 << 20).unwrap(),
            elapsed: Duration::from_millis(5_123),
            eta: Some(Duration::from_millis(7_500)),
            ..snapshot()
        }
    }

    #[test]
    fn snapshot_round_trips_through_json_and_postcard() {
        for snap in [snapshot(), full_snapshot()] {
            let json = serde_json::to_string(&snap).unwrap();
            assert_eq!(serde_json::from_str::<JobSnapshot>(&json).unwrap(), snap);
            let bin = postcard::to_allocvec(&snap).unwrap();
            assert_eq!(postcard::from_bytes::<JobSnapshot>(&bin).unwrap(), snap);
        }
        let json = serde_json::to_value(full_snapshot()).unwrap();
        assert_eq!(json["status"], "running");
        assert_eq!(json["effective_rate"], "50MiB/s");
        assert_eq!(json["elapsed"], "5123ms");
        assert_eq!(json["eta"], "7500ms");
        assert_eq!(
            serde_json::to_value(snapshot()).unwrap()["eta"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn remaining_and_fraction_follow_the_totals() {
        let mut snap = snapshot();
        assert_eq!(snap.remaining_bytes(), None);
        assert_eq!(snap.fraction_done(), None);
        snap.total_bytes = Some(100);
        snap.done_bytes = 40;
        assert_eq!(snap.remaining_bytes(), Some(60));
        assert_eq!(snap.fraction_done(), Some(0.4));
        snap.done_bytes = 150;
        assert_eq!(snap.remaining_bytes(), Some(0));
        assert_eq!(snap.fraction_done(), Some(1.0));

        snap.total_bytes = Some(0);
        assert_eq!(snap.fraction_done(), None, "object total still unknown");
        snap.total_objects = Some(4);
        // Two done, one of them skipped (counted in `done_objects` already): half done.
        snap.done_objects = 2;
        snap.skipped_objects = 1;
        assert_eq!(snap.fraction_done(), Some(0.5));
        snap.total_objects = Some(0);
        assert_eq!(snap.fraction_done(), Some(1.0));
    }

    #[test]
    fn estimate_eta_divides_and_rounds_up() {
        assert_eq!(JobSnapshot::estimate_eta(100, 0), None);
        assert_eq!(JobSnapshot::estimate_eta(0, 10), Some(Duration::ZERO));
        assert_eq!(
            JobSnapshot::estimate_eta(1000, 100),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            JobSnapshot::estimate_eta(1, 3),
            Some(Duration::from_millis(334))
        );
        assert_eq!(
            JobSnapshot::estimate_eta(u64::MAX, 1),
            Some(Duration::from_millis(u64::MAX))
        );
    }

    proptest! {
        #[test]
        fn eta_times_throughput_covers_the_remaining_bytes(remaining in any::<u64>(), throughput in 1u64..u64::MAX) {
            let eta = JobSnapshot::estimate_eta(remaining, throughput).unwrap();
            let covered = eta.as_millis() * u128::from(throughput);
            let wanted = u128::from(remaining) * 1000;
            if eta < Duration::from_millis(u64::MAX) {
                prop_assert!(covered >= wanted);
                prop_assert!(covered < wanted + u128::from(throughput));
            }
        }

        #[test]
        fn fraction_done_stays_within_zero_and_one(
            total in proptest::option::of(any::<u64>()),
            done in any::<u64>(),
            objects in proptest::option::of(any::<u64>()),
            finished in any::<u64>(),
        ) {
            let snap = JobSnapshot {
                total_bytes: total,
                done_bytes: done,
                total_objects: objects,
                done_objects: finished,
                ..snapshot()
            };
            if let Some(fraction) = snap.fraction_done() {
                prop_assert!((0.0..=1.0).contains(&fraction));
            }
        }
    }
}
