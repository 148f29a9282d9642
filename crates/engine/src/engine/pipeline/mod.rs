//! The job's runner and the per-object pipeline COPY → VERIFY → FORWARD → CLEANUP (SPEC §2).
//!
//! One object's life, step by step, and the module each step lives in. The states are the
//! public `ObjectState`s; which moves between them are allowed is written once, in
//! `ObjectState::can_move_to`, and the events every run reports are checked against it (the
//! model tests). Inside the runner, an object's task ([`object::process`]) returns an
//! [`Outcome`] (where the object stands when its task ends) to the drive loop
//! ([`drive::drive`]), which hands it to the next commit ([`commit`]). Objects the listing
//! says fit in one chunk run several to a task (each its own future; the job's concurrency
//! counts objects, not tasks), larger ones and explicit keys one to a task. Every flip, whichever
//! path makes it (the batch, a fenced hot key, recovery), goes through [`flip::flip`].
//!
//! | from → to | what happens | module |
//! |---|---|---|
//! | `Pending` → `Copying` | the copy intent is durable; the key is registered in the table (owned by the job) and its generation read | `drive`, `object` |
//! | `Copying` → `Copied` → `Verified` | streamed through the throttle, hashed (I7); verified by size or checksum | `copy`, `verify` |
//! | `Verified` → `Forwarded` | at the next commit: the target synced, the flip intent journaled, the flip, the flip committed (I2, I3); a refused flip goes back to `Pending`, and after `max_flip_attempts` the key is fenced and flipped on its own | `commit`, `object`, `flip` |
//! | `Forwarded` → `Cleaned` → `Done` | the grace period, the commit hook, the source re-checked and deleted (I1), recorded done after a sync (I4) | `cleanup`, `commit` |
//! | → `Skipped`, `Failed`, rolled back | the source vanished; an error the retry policy did not outlive; a cancel before the flip (entry and copy removed, I8) | `copy`, `retry`, `cleanup` |
//!
//! The keys come from [`listing`] (in key order, lazily, re-listed for a drain); a resumed
//! job first settles its flip journal and forwards again what the stopped run had moved
//! ([`recovery`]).

use std::sync::Arc;

use std::collections::BTreeMap;

use ferry_checkpoint::{Checkpointer, Progress};
use ferry_types::{JobSnapshot, MigrationPlan, ObjectKey};
use parking_lot::Mutex;

use super::EngineInner;
use super::job::{JobShared, Live, finish};
use crate::error::{Error, Result};
use ferry_store::{Store, Version};

mod cleanup;
mod commit;
mod copy;
mod drive;
mod flip;
mod listing;
mod object;
mod parts;
mod recovery;
mod retry;
mod verify;

use copy::Copied;
pub(crate) use copy::Streaming;
use drive::drive;
pub(crate) use listing::{list_metas, listed_range};
pub(crate) use recovery::{forward, preexisting, reload_forwarded, resolve_flips, untouched};
pub(crate) use retry::retrying;

pub(crate) struct JobCtx {
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) plan: MigrationPlan,
    pub(crate) source: Arc<dyn Store>,
    pub(crate) target: Arc<dyn Store>,
    pub(crate) shared: Arc<JobShared>,
    /// The job had a record before this run: an object whose source is gone but whose target
    /// copy exists may have been moved and cleaned by the run that crashed.
    pub(crate) resumed: bool,
    /// A `retry_failed` run: exactly these keys (the record's failed ones) run again.
    pub(crate) retry_keys: Option<Vec<ObjectKey>>,
    /// Keys recorded failed when this run began: counted in the snapshot's `failed_objects`
    /// already, so one that succeeds now leaves that count and one that fails again is not
    /// counted twice; with the kind each was recorded with (`changed_objects` counts those of
    /// kind `SourceChanged`).
    pub(crate) failed_before: std::collections::HashMap<ObjectKey, ferry_types::FailureKind>,
    /// Keys the run leaves on the source by design (failed, or changed since their copy):
    /// re-listings leave them out ([`Passes`](drive::Passes)).
    pub(crate) left: Arc<Mutex<std::collections::HashSet<ObjectKey>>>,
    /// The job's checkpoint, shared with the object tasks: they journal flips in it.
    pub(crate) checkpointer: Arc<Checkpointer>,
    /// The flips an earlier run made and did not record done (the committed entries of the
    /// record's flip journal, after [`resolve_flips`]), with the digest of their copy.
    pub(crate) committed: BTreeMap<ObjectKey, [u8; 32]>,
}

/// What a cleanup may compare the source against before deleting it (I1).
#[derive(Debug, Clone)]
enum CopiedFrom {
    /// This run copied this source version.
    Version(Version),
    /// An earlier run copied bytes with this BLAKE3 digest (from its flip journal).
    Digest([u8; 32]),
    /// An earlier run copied it; what it copied is not known.
    Unknown,
}

/// What made an object's copy run again in this run: refused flips (a write through the
/// table raced the copy; `max_flip_attempts` of them fence the key) and changes of its
/// source outside the table (`max_changes` of them and the object fails with
/// `SourceChanged`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tries {
    pub(super) refused: u32,
    pub(super) changes: u32,
}

/// How one object ended in this run (or its task: a verified object is flipped by the
/// commit).
#[derive(Debug)]
enum Outcome {
    /// Copied and verified; the commit flips it after the target sync.
    Verified {
        key: ObjectKey,
        /// The key's forwarding generation read before the copy opened the source.
        observed: u64,
        copied: Copied,
        /// Flips of this key refused and changes of its source seen so far in this run.
        tries: Tries,
    },
    Done {
        key: ObjectKey,
        bytes: u64,
    },
    /// Flipped (and past the grace period): its hook and cleanup run at the next commit,
    /// after the target sync.
    Forwarded {
        key: ObjectKey,
        /// What was copied, for the source check before delete.
        copied: CopiedFrom,
        bytes: u64,
        /// Whether the policy deletes the source.
        delete: bool,
    },
    Skipped {
        key: ObjectKey,
    },
    Failed {
        key: ObjectKey,
        attempts: u32,
        error: Error,
    },
    /// Stopped by cancel before its flip; its entry was removed.
    RolledBack {
        key: ObjectKey,
    },
}

impl Outcome {
    fn key(&self) -> &ObjectKey {
        match self {
            Outcome::Verified { key, .. }
            | Outcome::Done { key, .. }
            | Outcome::Forwarded { key, .. }
            | Outcome::Skipped { key }
            | Outcome::Failed { key, .. }
            | Outcome::RolledBack { key } => key,
        }
    }
}

/// Runs the job to its end.
pub(crate) async fn run(ctx: Arc<JobCtx>, progress: Progress) -> Result<JobSnapshot> {
    let _live = Live {
        engine: &ctx.engine,
        shared: &ctx.shared,
    };
    let checkpointer = &*ctx.checkpointer;
    let result = drive(&ctx, checkpointer, &progress).await;
    finish(&ctx.engine, &ctx.shared, checkpointer, result).await
}
