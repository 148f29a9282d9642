//! CLEANUP: the grace period, the commit hook, the source re-checked and deleted (I1); and the
//! rollback of a cancelled copy.

use ferry_checkpoint::ProgressUpdate;
use ferry_store::{DeleteIf, Version};
use ferry_types::{CleanupPolicy, ObjectKey, ObjectState};

use super::super::job::JobShared;
use crate::error::Error;

use super::commit::commit_hook;
use super::retry::{error_chain, with_retry};
use super::verify::{digest, same_content};
use super::{CopiedFrom, JobCtx, Outcome};

/// Counts an object waiting out its grace period in `JobShared::grace_waiting` while alive.
pub(super) struct GraceWait<'a>(pub(super) &'a JobShared);

impl<'a> GraceWait<'a> {
    pub(super) fn enter(shared: &'a JobShared) -> GraceWait<'a> {
        shared.grace_waiting.send_modify(|n| *n += 1);
        GraceWait(shared)
    }
}

impl Drop for GraceWait<'_> {
    fn drop(&mut self) {
        self.0
            .grace_waiting
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Rolls back the move of `key`, stopped by a cancel before its flip: its entry goes (reads
/// and writes stay on the source), and so does the copy this run wrote on the target
/// (`wrote`), so that nothing the job copied outlives it unaccounted (SPEC I8). A copy that
/// cannot be removed keeps its copy intent in the record.
pub(super) async fn rolled_back(ctx: &JobCtx, key: ObjectKey, wrote: bool) -> Outcome {
    let removed = if ctx.shared.is_failing() {
        // A job stopping on an error may have lost its lease to another process moving the
        // same keys: it touches no store then, and its intents stay for the next run.
        false
    } else if let Some(record) = ctx.checkpointer.upload(&key) {
        // An upload in parts under way: nothing is on the target under the key yet.
        Box::pin(super::parts::abort(ctx, &key, &record)).await;
        !wrote || ctx.target.delete(&key).await.is_ok()
    } else if !wrote {
        true
    } else {
        match ctx.target.delete(&key).await {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(key = %key.as_str(), error = %error_chain(&err), "the rolled-back copy could not be removed from the target");
                false
            }
        }
    };
    // The entry goes after the copy: an embedder whose reads fall back to the target when
    // the source lacks a key (one moved and cleaned up) must not find this copy meanwhile.
    ctx.engine.table.remove_owned(key.as_str(), &ctx.shared.id);
    if removed {
        ctx.checkpointer
            .record(ProgressUpdate::CopyDropped { key: key.clone() });
    }
    ctx.shared.rolled_back.lock().push(key.clone());
    Outcome::RolledBack { key }
}

/// CLEANUP per the policy, first half: waits out the grace period; the rest (commit hook,
/// version re-check, delete) runs at the next commit, after the target sync
/// ([`finish_cleanup`]).
pub(super) async fn cleanup(
    ctx: &JobCtx,
    key: ObjectKey,
    copied: CopiedFrom,
    bytes: u64,
) -> Outcome {
    let grace = match ctx.plan.options.cleanup {
        CleanupPolicy::Never => {
            return Outcome::Forwarded {
                key,
                copied,
                bytes,
                delete: false,
            };
        }
        CleanupPolicy::AfterVerify => None,
        CleanupPolicy::AfterGrace(grace) => Some(grace),
    };
    if let Some(grace) = grace {
        let mut cancelled = ctx.shared.cancelled.subscribe();
        let _waiting = GraceWait::enter(&ctx.shared);
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            _ = cancelled.wait_for(|c| *c) => {
                // Cancelled during the grace period: the flip is committed and writes may
                // have reached the target through it, so it is never left half-done (I8).
                // The commit finishes (the hook runs: the placement serves the target) and
                // the source is kept, its grace period cut short.
                ctx.shared.kept.lock().push(key.clone());
                return Outcome::Forwarded {
                    key,
                    copied,
                    bytes,
                    delete: false,
                };
            }
        }
    }
    Outcome::Forwarded {
        key,
        copied,
        bytes,
        delete: true,
    }
}

/// CLEANUP, second half, called by the commit once the target sync completed: calls the
/// commit hook, then (when the policy deletes) deletes the source only if it still has the
/// version that was copied (I1). A failing hook keeps the source and fails the object (it
/// stays forwarded). When an earlier run made the copy, the source is deleted only if it
/// hashes to the digest that run journaled, or (no journal entry) to the target's content;
/// else it is kept.
pub(super) async fn finish_cleanup(
    ctx: &JobCtx,
    key: ObjectKey,
    copied: CopiedFrom,
    bytes: u64,
    delete: bool,
) -> Outcome {
    // The hook runs after the flip and the sync, before the source goes.
    if let Err(error) = commit_hook(ctx, &key).await {
        return Outcome::Failed {
            key,
            attempts: 1,
            error,
        };
    }
    if !delete {
        // The source stays where it is: a change after the flip is a change after the move
        // (the one before the flip was looked for by the commit).
        return Outcome::Done { key, bytes };
    }
    match &copied {
        CopiedFrom::Version(version) => delete_copied(ctx, key, version, bytes).await,
        // Boxed: a copy made by an earlier run is rare, and the source's digest (its hasher
        // and stream) would otherwise take room in every cleanup's future, which the
        // commit's concurrent cleanups copy onto the heap one by one.
        CopiedFrom::Digest(expected) => {
            Box::pin(delete_matching(ctx, key, Some(expected), bytes)).await
        }
        CopiedFrom::Unknown => Box::pin(delete_matching(ctx, key, None, bytes)).await,
    }
}

/// Deletes the source of `key`, which this run copied at `version`, only if the store still
/// has that version, in one step where it can (`Store::delete_if`).
async fn delete_copied(ctx: &JobCtx, key: ObjectKey, version: &Version, bytes: u64) -> Outcome {
    let mut first = true;
    let key_ref = &key;
    let deleted = with_retry(ctx, "delete", || {
        let was_first = std::mem::replace(&mut first, false);
        async move {
            let found = ctx.source.delete_if(key_ref, version).await?;
            Ok::<_, Error>((found, was_first))
        }
    })
    .await;
    match deleted {
        Ok((DeleteIf::Deleted, _)) | Ok((DeleteIf::Absent, false)) => {
            // (Absent after a failed attempt: that attempt may have deleted it.)
            ctx.shared.emit(&key, ObjectState::Cleaned);
            Outcome::Done { key, bytes }
        }
        // Not there at the first look, and this run has not deleted it: a program did,
        // outside the table, and the target serves a copy of what it deleted.
        Ok((DeleteIf::Absent, true)) => changed_after_flip(key, "after its flip (deleted)"),
        // Another version: never delete what may be the only copy of it (I1).
        Ok(_) => changed_after_flip(key, "after its flip"),
        Err((attempts, error)) => Outcome::Failed {
            key,
            attempts,
            error,
        },
    }
}

/// Deletes the source of `key`, which an earlier run copied, only if it hashes to the
/// digest that run journaled (`expected`) or, with none, to the target's content.
async fn delete_matching(
    ctx: &JobCtx,
    key: ObjectKey,
    expected: Option<&[u8; 32]>,
    bytes: u64,
) -> Outcome {
    let head = match with_retry(ctx, "head", || ctx.source.head(&key)).await {
        Ok(head) => head,
        Err((attempts, error)) => {
            return Outcome::Failed {
                key,
                attempts,
                error,
            };
        }
    };
    // The earlier run may have cleaned the source up before it stopped.
    if head.is_none() {
        return Outcome::Done { key, bytes };
    }
    let same = match expected {
        Some(expected) => {
            with_retry(ctx, "compare", || async {
                let source = digest(&*ctx.source, &key).await?;
                Ok::<_, Error>(source.is_some_and(|(_, hash)| hash.as_bytes() == expected))
            })
            .await
        }
        None => with_retry(ctx, "compare", || same_content(ctx, &key)).await,
    };
    match same {
        Ok(true) => {}
        // Not provably the same bytes: never delete what may be the only copy (I1), and
        // say that the target serves an older content.
        Ok(false) => return changed_after_flip(key, "after its flip"),
        Err((attempts, error)) => {
            return Outcome::Failed {
                key,
                attempts,
                error,
            };
        }
    }
    match with_retry(ctx, "delete", || ctx.source.delete(&key)).await {
        Ok(_) => {
            ctx.shared.emit(&key, ObjectState::Cleaned);
            Outcome::Done { key, bytes }
        }
        Err((attempts, error)) => Outcome::Failed {
            key,
            attempts,
            error,
        },
    }
}

/// The object whose source changed outside the table after its flip: it fails with
/// `SourceChanged`, its source kept and its entry left forwarded (the target serves the
/// copy); a `retry_failed` run copies it again once the writers have stopped.
fn changed_after_flip(key: ObjectKey, when: &'static str) -> Outcome {
    let error = Error::SourceChanged {
        key: key.clone(),
        changes: 1,
        when,
    };
    Outcome::Failed {
        key,
        attempts: 1,
        error,
    }
}
