//! Where a job, and each object inside it, stands.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The state of one object inside a job (SPEC §2).
///
/// The happy path is `Pending → Copying → Copied → Verified → Forwarded → Cleaned → Done`.
/// [`ObjectState::can_move_to`] allows exactly these moves:
///
/// | from | to |
/// |---|---|
/// | `Pending` | `Copying`, `Failed`, `Skipped` |
/// | `Copying` | `Copied`, `Pending` (copy restarts), `Failed`, `Skipped` |
/// | `Copied` | `Verified`, `Pending` (verification failed, copy again), `Failed`, `Skipped` |
/// | `Verified` | `Forwarded` (the flip), `Pending` (flip refused: a write raced the copy), `Failed`, `Skipped` |
/// | `Forwarded` | `Cleaned`, `Done` (cleanup policy `never`), `Failed` |
/// | `Cleaned` | `Done`, `Failed` |
/// | `Failed` | `Pending` (retry-failed, failed before the flip, or after it because the source changed, once the flip is rolled back), `Forwarded` (retry-failed, failed after the flip: only cleanup is retried) |
/// | `Done`, `Skipped` | nothing |
///
/// `Skipped` means the source vanished while the object was being copied (SPEC I3): it ends
/// absent on both sides. Once the key is forwarded the target holds it, so `Skipped` is no
/// longer possible. `Verified → Done` is not allowed: an object is done only after it was
/// forwarded. An object that failed after the flip must not go back to `Pending`: copying the
/// source again could overwrite writes the target received since the flip. The one
/// exception is a source changed outside the table after the flip: its retry rolls the flip
/// back only when the target still holds exactly the flipped copy.
///
/// Serde uses snake-case names: `"pending"`, `{"failed": {"attempts": 3, "last_error": "…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectState {
    /// Waiting to be copied.
    Pending,
    /// Being copied to the target.
    Copying,
    /// Copied; not yet checked.
    Copied,
    /// The target's copy matches the source per the job's verify mode.
    Verified,
    /// Reads and writes go to the target now.
    Forwarded,
    /// The source copy was deleted.
    Cleaned,
    /// Finished and recorded in the checkpoint.
    Done,
    /// Gave up after `attempts` attempts.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// The last error, as text.
        last_error: String,
    },
    /// The source vanished during the copy; the key is absent on both sides.
    Skipped,
}

impl ObjectState {
    /// The state's name in snake case, e.g. `"forwarded"`.
    pub const fn name(&self) -> &'static str {
        match self {
            ObjectState::Pending => "pending",
            ObjectState::Copying => "copying",
            ObjectState::Copied => "copied",
            ObjectState::Verified => "verified",
            ObjectState::Forwarded => "forwarded",
            ObjectState::Cleaned => "cleaned",
            ObjectState::Done => "done",
            ObjectState::Failed { .. } => "failed",
            ObjectState::Skipped => "skipped",
        }
    }

    /// Whether nothing more happens to the object in this run of the job: `Done`, `Skipped`
    /// or `Failed`.
    ///
    /// `Failed` is terminal for the run, but `retry-failed` may re-queue the object later
    /// (`Failed → Pending` or `Failed → Forwarded`).
    pub const fn is_terminal(&self) -> bool {
        matches!(
            self,
            ObjectState::Done | ObjectState::Skipped | ObjectState::Failed { .. }
        )
    }

    /// Whether the protocol allows moving from `self` to `next`; see the table on
    /// [`ObjectState`]. Staying in the same state is not a move and returns `false`.
    pub fn can_move_to(&self, next: &ObjectState) -> bool {
        use ObjectState::*;
        matches!(
            (self, next),
            (Pending, Copying)
                | (Copying, Copied)
                | (Copied, Verified)
                | (Verified, Forwarded)
                | (Forwarded, Cleaned)
                | (Forwarded, Done)
                | (Cleaned, Done)
                | (Copying | Copied | Verified, Pending)
                | (Pending | Copying | Copied | Verified, Skipped)
                | (
                    Pending | Copying | Copied | Verified | Forwarded | Cleaned,
                    Failed { .. }
                )
                | (Failed { .. }, Pending | Forwarded)
        )
    }
}

impl fmt::Display for ObjectState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectState::Failed {
                attempts,
                last_error,
            } => write!(f, "failed after {attempts} attempts: {last_error}"),
            other => f.pad(other.name()),
        }
    }
}

/// The status of a whole job (SPEC §6).
///
/// Moves allowed by [`JobStatus::can_move_to`]:
///
/// | from | to |
/// |---|---|
/// | `Pending` | `Running`, `Paused`, `Cancelled`, `Failed` |
/// | `Running` | `Paused`, `Completing`, `Failed`, `Cancelled` |
/// | `Paused` | `Running`, `Cancelled`, `Failed` |
/// | `Completing` | `Completed`, `CompletedWithErrors`, `Failed`, `Cancelled`, `Running` (resumed after its process stopped while completing) |
/// | `CompletedWithErrors` | `Running` (retry-failed) |
/// | `Failed` | `Running` (resume after fixing the cause) |
/// | `Completed`, `Cancelled` | nothing: terminal |
///
/// Text form (`Display`, `FromStr`): kebab case, e.g. `completed-with-errors`; parsing also
/// accepts snake case and any letter case. Serde uses snake case: `"completed_with_errors"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, not started.
    Pending,
    /// Moving objects.
    Running,
    /// Stopped by the user; resumable.
    Paused,
    /// Every object was handed out; waiting for the last ones and the final checkpoint.
    Completing,
    /// Every object done or skipped.
    Completed,
    /// Finished, but some objects failed; `retry-failed` runs them again.
    CompletedWithErrors,
    /// Stopped by an error that is not about one object (e.g. the checkpoint store failed);
    /// resumable once the cause is fixed.
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Paused,
        JobStatus::Completing,
        JobStatus::Completed,
        JobStatus::CompletedWithErrors,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The kebab-case text form, e.g. `"completed-with-errors"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Completing => "completing",
            JobStatus::Completed => "completed",
            JobStatus::CompletedWithErrors => "completed-with-errors",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job can never change again: `Completed` or `Cancelled`.
    pub const fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Cancelled)
    }

    /// Whether the job stopped for good or until someone acts: `Completed`,
    /// `CompletedWithErrors`, `Failed` or `Cancelled`.
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed
                | JobStatus::CompletedWithErrors
                | JobStatus::Failed
                | JobStatus::Cancelled
        )
    }

    /// Whether work is in flight: `Running` or `Completing`.
    pub const fn is_active(self) -> bool {
        matches!(self, JobStatus::Running | JobStatus::Completing)
    }

    /// Whether a job may move from `self` to `next`; see the table on [`JobStatus`]. Staying
    /// in the same status is not a move and returns `false`.
    pub const fn can_move_to(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Pending, Running | Paused | Cancelled | Failed)
                | (Running, Paused | Completing | Failed | Cancelled)
                | (Paused, Running | Cancelled | Failed)
                | (
                    Completing,
                    Completed | CompletedWithErrors | Failed | Cancelled | Running
                )
                | (CompletedWithErrors, Running)
                | (Failed, Running)
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<JobStatus> {
        let wanted = text.trim().replace('_', "-");
        JobStatus::ALL
            .into_iter()
            .find(|status| wanted.eq_ignore_ascii_case(status.as_str()))
            .ok_or_else(|| Error::InvalidValue {
                what: "job status",
                text: text.to_owned(),
                expected: "pending, running, paused, completing, completed, \
                           completed-with-errors, failed or cancelled",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;
    use proptest::prelude::*;

    #[test]
    fn job_status_transition_table() {
        let allowed: &[(JobStatus, &[JobStatus])] = &[
            (Pending, &[Running, Paused, Cancelled, Failed]),
            (Running, &[Paused, Completing, Failed, Cancelled]),
            (Paused, &[Running, Cancelled, Failed]),
            (
                Completing,
                &[Completed, CompletedWithErrors, Failed, Cancelled, Running],
            ),
            (Completed, &[]),
            (CompletedWithErrors, &[Running]),
            (Failed, &[Running]),
            (Cancelled, &[]),
        ];
        for &(from, targets) in allowed {
            for to in JobStatus::ALL {
                assert_eq!(
                    from.can_move_to(to),
                    targets.contains(&to),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn job_status_predicates() {
        let terminal: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal, [Completed, Cancelled]);
        let finished: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_finished())
            .collect();
        assert_eq!(
            finished,
            [Completed, CompletedWithErrors, Failed, Cancelled]
        );
        let active: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect();
        assert_eq!(active, [Running, Completing]);
    }

    #[test]
    fn job_status_text_and_serde_forms() {
        for status in JobStatus::ALL {
            assert_eq!(status.to_string().parse::<JobStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str().replace('-', "_")));
            assert_eq!(serde_json::from_str::<JobStatus>(&json).unwrap(), status);
            let bin = postcard::to_allocvec(&status).unwrap();
            assert_eq!(postcard::from_bytes::<JobStatus>(&bin).unwrap(), status);
        }
        assert_eq!(
            "completed_with_errors".parse::<JobStatus>(),
            Ok(CompletedWithErrors)
        );
        assert_eq!("RUNNING".parse::<JobStatus>(), Ok(Running));
        let err = "done".parse::<JobStatus>().unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidValue {
                what: "job status",
                ..
            }
        ));
        assert!(err.to_string().contains("\"done\""), "{err}");
    }

    fn failed() -> ObjectState {
        ObjectState::Failed {
            attempts: 3,
            last_error: "timeout".into(),
        }
    }

    #[test]
    fn object_state_transition_table() {
        use ObjectState as S;
        let all = [
            S::Pending,
            S::Copying,
            S::Copied,
            S::Verified,
            S::Forwarded,
            S::Cleaned,
            S::Done,
            failed(),
            S::Skipped,
        ];
        let allowed: &[(&str, &[&str])] = &[
            ("pending", &["copying", "failed", "skipped"]),
            ("copying", &["copied", "pending", "failed", "skipped"]),
            ("copied", &["verified", "pending", "failed", "skipped"]),
            ("verified", &["forwarded", "pending", "failed", "skipped"]),
            ("forwarded", &["cleaned", "done", "failed"]),
            ("cleaned", &["done", "failed"]),
            ("done", &[]),
            ("failed", &["pending", "forwarded"]),
            ("skipped", &[]),
        ];
        for (from, (name, targets)) in all.iter().zip(allowed) {
            assert_eq!(from.name(), *name);
            for to in &all {
                assert_eq!(
                    from.can_move_to(to),
                    targets.contains(&to.name()),
                    "{from} -> {to}"
                );
            }
        }
        assert!(
            !S::Verified.can_move_to(&S::Done),
            "done only after the flip"
        );
        let terminal: Vec<_> = all
            .iter()
            .filter(|s| s.is_terminal())
            .map(S::name)
            .collect();
        assert_eq!(terminal, ["done", "failed", "skipped"]);
    }

    #[test]
    fn object_state_serde_and_display() {
        let json = serde_json::to_string(&failed()).unwrap();
        assert_eq!(json, r#"{"failed":{"attempts":3,"last_error":"timeout"}}"#);
        assert_eq!(
            serde_json::from_str::<ObjectState>(&json).unwrap(),
            failed()
        );
        assert_eq!(
            serde_json::to_string(&ObjectState::Copying).unwrap(),
            "\"copying\""
        );
        let bin = postcard::to_allocvec(&failed()).unwrap();
        assert_eq!(postcard::from_bytes::<ObjectState>(&bin).unwrap(), failed());
        assert_eq!(failed().to_string(), "failed after 3 attempts: timeout");
        assert_eq!(ObjectState::Cleaned.to_string(), "cleaned");
    }

    proptest! {
        #[test]
        fn job_status_never_leaves_completed_or_cancelled(
            start in 0usize..8,
            attempts in proptest::collection::vec(0usize..8, 0..64),
        ) {
            let mut status = JobStatus::ALL[start];
            let mut terminal_seen: Option<JobStatus> = None;
            for index in attempts {
                let next = JobStatus::ALL[index];
                prop_assert!(!status.can_move_to(status), "{} moves to itself", status);
                if status.can_move_to(next) {
                    status = next;
                }
                if let Some(terminal) = terminal_seen {
                    prop_assert_eq!(status, terminal);
                }
                if status.is_terminal() {
                    terminal_seen = Some(status);
                }
            }
        }

        #[test]
        fn job_status_walks_from_pending_stay_consistent(
            attempts in proptest::collection::vec(0usize..8, 0..64),
        ) {
            // From Pending, a job only reaches Completed or CompletedWithErrors via Completing.
            let mut previous = Pending;
            for index in attempts {
                let next = JobStatus::ALL[index];
                if previous.can_move_to(next) {
                    if matches!(next, Completed | CompletedWithErrors) {
                        prop_assert_eq!(previous, Completing);
                    }
                    previous = next;
                }
            }
        }
    }
}
