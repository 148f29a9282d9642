//! One job as `ferry status` and `ferry list` show it: a typed record, printed as JSON with
//! `--json` or as text.

use std::fmt::Write as _;
use std::time::Duration;

use ferry::checkpoint::{Failure, Progress};
use ferry::types::{FailureKind, JobKind, JobStatus, ObjectKey, format_duration};
use serde::Serialize;

use crate::cli::CheckpointKind;
use crate::location::Location;
use crate::progress::{LiveSnapshot, size};
use crate::state::JobMeta;

/// A failed object as the JSON outputs list it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FailedObject {
    pub(crate) key: ObjectKey,
    pub(crate) attempts: u32,
    pub(crate) error: String,
    /// What kind of failure it was (`disk_full`, `permission_denied`, `transient`, …).
    pub(crate) kind: FailureKind,
}

impl FailedObject {
    pub(crate) fn new(key: &ObjectKey, failure: &Failure) -> FailedObject {
        FailedObject {
            key: key.clone(),
            attempts: failure.attempts,
            error: failure.last_error.clone(),
            kind: failure.kind,
        }
    }
}

/// One job's status: live from its process, or from its checkpoint record.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct JobView {
    pub(crate) id: String,
    /// `migrate` or `check`.
    pub(crate) kind: JobKind,
    pub(crate) status: JobStatus,
    pub(crate) live: bool,
    pub(crate) source: Location,
    pub(crate) target: Location,
    pub(crate) checkpoint: CheckpointKind,
    pub(crate) done_objects: u64,
    pub(crate) done_bytes: u64,
    /// Objects whose source vanished during the copy.
    pub(crate) skipped_objects: u64,
    /// Links and special files skipped at the last scan.
    pub(crate) not_regular_skipped: u64,
    pub(crate) failed_objects: u64,
    /// Of the failed objects, those whose source kept changing during the move.
    pub(crate) changed_objects: u64,
    #[serde(flatten)]
    pub(crate) detail: Detail,
}

/// What only a live job, or only a record, tells.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum Detail {
    /// The running process's figures and its id (`null` when it did not say).
    Live {
        snapshot: Box<LiveSnapshot>,
        pid: Option<u32>,
    },
    /// Every failed object of the record.
    Record { failed: Vec<FailedObject> },
}

impl JobView {
    /// A job running in another process, from its answer on the control socket.
    pub(crate) fn live(meta: &JobMeta, snapshot: LiveSnapshot, pid: Option<u32>) -> JobView {
        let snap = &snapshot.snapshot;
        JobView {
            id: meta.id.clone(),
            kind: meta.kind,
            status: snap.status,
            live: true,
            source: meta.source.clone(),
            target: meta.target.clone(),
            checkpoint: meta.checkpoint,
            done_objects: snap.done_objects,
            done_bytes: snap.done_bytes,
            skipped_objects: snap.skipped_objects,
            not_regular_skipped: meta.not_regular_skipped,
            failed_objects: snap.failed_objects,
            changed_objects: snap.changed_objects,
            detail: Detail::Live {
                snapshot: Box::new(snapshot),
                pid,
            },
        }
    }

    /// A stopped or finished job, from its checkpoint record.
    pub(crate) fn record(meta: &JobMeta, status: JobStatus, progress: &Progress) -> JobView {
        JobView {
            id: meta.id.clone(),
            kind: meta.kind,
            status,
            live: false,
            source: meta.source.clone(),
            target: meta.target.clone(),
            checkpoint: meta.checkpoint,
            done_objects: progress.done_objects,
            done_bytes: progress.done_bytes,
            skipped_objects: progress.skipped_objects,
            not_regular_skipped: meta.not_regular_skipped,
            failed_objects: progress.failed.len() as u64,
            changed_objects: progress.changed_objects(),
            detail: Detail::Record {
                failed: progress
                    .failed
                    .iter()
                    .map(|(key, failure)| FailedObject::new(key, failure))
                    .collect(),
            },
        }
    }

    /// How many failed objects `ferry status` lists before "and N more".
    const FAILED_SHOWN: usize = 20;

    /// The text of `ferry status`.
    pub(crate) fn human(&self) -> String {
        let mut out = String::new();
        let live = if self.live {
            " (running in this machine's process)"
        } else {
            ""
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "job:       {}{}", self.id, kind_note(self.kind));
        let _ = writeln!(out, "status:    {}{live}", self.status);
        let _ = writeln!(out, "source:    {}", self.source);
        let _ = writeln!(out, "target:    {}", self.target);
        let _ = writeln!(
            out,
            "done:      {} objects, {}",
            self.done_objects,
            size(self.done_bytes)
        );
        let _ = writeln!(
            out,
            "skipped:   {} (source vanished), {} (links and special files)",
            self.skipped_objects, self.not_regular_skipped
        );
        let _ = match (self.kind, self.changed_objects) {
            (JobKind::Check, _) => writeln!(out, "differ:    {}", self.failed_objects),
            (_, 0) => writeln!(out, "failed:    {}", self.failed_objects),
            (_, changed) => writeln!(
                out,
                "failed:    {} ({changed} of them: the source changed during the move)",
                self.failed_objects
            ),
        };
        match &self.detail {
            Detail::Live { snapshot, .. } => {
                let snap = &snapshot.snapshot;
                let auto = if snap.adaptive_rate {
                    "auto (follows DST's health): "
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "rate:      {auto}{} limit, {}/s now",
                    snap.effective_rate,
                    size(snap.throughput),
                );
                if let Some(eta) = snapshot.eta_secs {
                    let _ = writeln!(
                        out,
                        "eta:       {}",
                        format_duration(Duration::from_secs(eta))
                    );
                }
            }
            Detail::Record { failed } => {
                let what = match self.kind {
                    JobKind::Check => "differs",
                    _ => "failed",
                };
                for f in failed.iter().take(Self::FAILED_SHOWN) {
                    let _ = writeln!(out, "  {what} {}: {}", f.key.as_str(), f.error);
                }
                if failed.len() > Self::FAILED_SHOWN {
                    let _ = writeln!(
                        out,
                        "  … and {} more (--json lists them all)",
                        failed.len() - Self::FAILED_SHOWN
                    );
                }
            }
        }
        out
    }

    /// The header of `ferry list`, above [`JobView::list_row`]s.
    pub(crate) fn list_header() -> String {
        format!(
            "{:<24} {:<22} {:>9} {:>7}  SRC → DST",
            "ID", "STATUS", "DONE", "FAILED"
        )
    }

    /// One line of `ferry list`.
    pub(crate) fn list_row(&self) -> String {
        let status = if self.live {
            format!("{} (live)", self.status)
        } else {
            self.status.to_string()
        };
        format!(
            "{:<24} {:<22} {:>9} {:>7}  {} → {}",
            self.id, status, self.done_objects, self.failed_objects, self.source, self.target,
        )
    }
}

/// How a job's kind is noted beside its id: nothing for a migration.
fn kind_note(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Check => " (check: differences are its failed objects)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ferry::types::{JobId, JobSnapshot, NodeId};

    use super::*;
    use crate::progress::Totals;

    fn meta() -> JobMeta {
        let mut meta = JobMeta::new(
            &JobId::new("j").unwrap(),
            Location::Local(PathBuf::from("/srv/a")),
            Location::Bucket("s3://b/p".to_owned()),
            CheckpointKind::Sled,
        );
        meta.not_regular_skipped = 2;
        meta
    }

    #[test]
    fn a_live_view_has_the_snapshot_and_pid_and_no_failed_list() {
        let mut snap = JobSnapshot::new(
            JobId::new("j").unwrap(),
            NodeId::new("src").unwrap(),
            NodeId::new("dst").unwrap(),
        );
        snap.status = JobStatus::CompletedWithErrors;
        snap.done_objects = 5;
        snap.failed_objects = 1;
        let snapshot = LiveSnapshot::new(
            snap,
            Totals {
                objects: Some(6),
                bytes: Some(0),
            },
        );
        let view = JobView::live(&meta(), snapshot, Some(42));
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["status"], "completed_with_errors");
        assert_eq!(json["live"], true);
        assert_eq!(json["source"], "/srv/a");
        assert_eq!(json["target"], "s3://b/p");
        assert_eq!(json["checkpoint"], "sled");
        assert_eq!(json["done_objects"], 5);
        assert_eq!(json["not_regular_skipped"], 2);
        assert_eq!(json["pid"], 42);
        assert_eq!(json["snapshot"]["total_objects"], 6);
        assert_eq!(json["snapshot"]["eta_secs"], 0);
        assert_eq!(json["snapshot"]["source"], "src");
        assert!(json.get("failed").is_none(), "{json}");
        let text = view.human();
        assert!(
            text.contains("status:    completed-with-errors (running"),
            "{text}"
        );
        assert!(text.contains("rate:      unlimited limit"), "{text}");
        assert!(
            view.list_row().contains("completed-with-errors (live)"),
            "{}",
            view.list_row()
        );
    }

    #[test]
    fn an_auto_rate_shows_as_auto_in_the_view_the_json_and_the_progress_line() {
        let mut snap = JobSnapshot::new(
            JobId::new("j").unwrap(),
            NodeId::new("src").unwrap(),
            NodeId::new("dst").unwrap(),
        );
        snap.status = JobStatus::Running;
        snap.effective_rate = "37MiB/s".parse().unwrap();
        snap.throughput = 30 << 20;
        let fixed = crate::progress::line(&snap, Totals::default());
        assert!(!fixed.contains("auto"), "{fixed}");
        snap.adaptive_rate = true;
        let line = crate::progress::line(&snap, Totals::default());
        assert!(line.contains("30.0MiB/s (auto 37MiB/s)"), "{line}");
        let view = JobView::live(&meta(), LiveSnapshot::new(snap, Totals::default()), None);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["snapshot"]["adaptive_rate"], true);
        assert_eq!(json["snapshot"]["effective_rate"], "37MiB/s");
        let text = view.human();
        assert!(
            text.contains("rate:      auto (follows DST's health): 37MiB/s limit, 30.0MiB/s now"),
            "{text}"
        );
    }

    #[test]
    fn a_record_view_lists_its_failed_objects_and_has_no_snapshot() {
        let mut progress = Progress {
            done_objects: 3,
            ..Progress::default()
        };
        for n in 0..25 {
            progress.failed.insert(
                ObjectKey::new(format!("k{n:02}")).unwrap(),
                Failure {
                    attempts: 4,
                    last_error: "permission denied".to_owned(),
                    kind: FailureKind::PermissionDenied,
                },
            );
        }
        let view = JobView::record(&meta(), JobStatus::CompletedWithErrors, &progress);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["live"], false);
        assert_eq!(json["failed_objects"], 25);
        assert_eq!(json["failed"][0]["key"], "k00");
        assert_eq!(json["failed"][0]["attempts"], 4);
        assert_eq!(json["failed"][0]["error"], "permission denied");
        assert!(json.get("snapshot").is_none() && json.get("pid").is_none());
        let text = view.human();
        assert!(text.contains("  failed k19: permission denied\n"), "{text}");
        assert!(!text.contains("k20"), "{text}");
        assert!(text.contains("… and 5 more"), "{text}");
    }
}
