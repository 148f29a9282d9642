//! Why an object failed, as a kind programs match instead of error text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an object failed: the kind a program matches (a CLI's hint, a retry decision, a
/// dashboard), next to the message a person reads. Stored in the checkpoint record with each
/// failed object.
///
/// ```
/// use ferry_types::FailureKind;
/// assert_eq!(FailureKind::DiskFull.to_string(), "disk_full");
/// assert_eq!(serde_json::to_string(&FailureKind::DiskFull).unwrap(), "\"disk_full\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// A store kept failing with errors that may go away (timeouts, resets, truncated
    /// transfers) until the retry policy was spent: retrying later may succeed.
    Transient,
    /// A store refused the operation for good: an invalid key, a path it will not follow, a
    /// read-only file system.
    Permanent,
    /// The target has no space left (`ENOSPC`) or the quota is spent (`EDQUOT`).
    DiskFull,
    /// A store denied access (`EACCES`, `EPERM`).
    PermissionDenied,
    /// The copy did not verify against the source (size or checksum).
    Verify,
    /// Another job is moving the key (its forwarding entry belongs to that job).
    AlreadyMoving,
    /// The key was written so often that even its fenced copy outlasted the plan's
    /// `fence_timeout`.
    HotKey,
    /// The forwarding table refused the flip for good.
    FlipRefused,
    /// The storage system's commit hook failed: the source is kept, the target serves the key.
    CommitHook,
    /// Anything else; the message says what (records written before failure kinds existed
    /// load with this kind).
    Other,
    /// The source kept changing after its copy (a program writing it outside the forwarding
    /// table) more often than the plan's `max_changes`: the target holds an older content, the
    /// source is kept. Retry once the writers have stopped.
    SourceChanged,
    /// A check job found the key on the source and not on the target.
    MissingOnTarget,
    /// A check job found the key on the target and not on the source.
    ExtraOnTarget,
    /// A check job found the key on both sides with different sizes or content.
    Differs,
}

impl FailureKind {
    /// The kind's name, as serde writes it: `"disk_full"`, `"transient"`, …
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Permanent => "permanent",
            FailureKind::DiskFull => "disk_full",
            FailureKind::PermissionDenied => "permission_denied",
            FailureKind::Verify => "verify",
            FailureKind::AlreadyMoving => "already_moving",
            FailureKind::HotKey => "hot_key",
            FailureKind::FlipRefused => "flip_refused",
            FailureKind::CommitHook => "commit_hook",
            FailureKind::Other => "other",
            FailureKind::SourceChanged => "source_changed",
            FailureKind::MissingOnTarget => "missing_on_target",
            FailureKind::ExtraOnTarget => "extra_on_target",
            FailureKind::Differs => "differs",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_serde_name() {
        for kind in [
            FailureKind::Transient,
            FailureKind::Permanent,
            FailureKind::DiskFull,
            FailureKind::PermissionDenied,
            FailureKind::Verify,
            FailureKind::AlreadyMoving,
            FailureKind::HotKey,
            FailureKind::FlipRefused,
            FailureKind::CommitHook,
            FailureKind::Other,
            FailureKind::SourceChanged,
            FailureKind::MissingOnTarget,
            FailureKind::ExtraOnTarget,
            FailureKind::Differs,
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<FailureKind>(&json).unwrap(), kind);
        }
    }
}
