//! FORWARD at a commit: the flip intents journaled, the flips, their outcome saved; then each
//! forwarded object's hook and cleanup (SPEC I1, I2, I3).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_checkpoint::{Checkpointer, ProgressUpdate};
use ferry_types::{CleanupPolicy, FailureKind, ObjectKey, ObjectState};
use futures_util::StreamExt;

use crate::error::{Error, Result};

use super::cleanup::{cleanup, finish_cleanup, rolled_back};
use super::flip::{Flip, flip};
use super::object::changed_again;
use super::retry::{error_chain, with_retry};
use super::{CopiedFrom, JobCtx, Outcome, Tries};

/// What a commit leaves to the drive loop, which owns the dispatch order and the task set:
/// applied when the commit ends ([`Commits`](super::drive::Commits)).
#[derive(Debug, Default)]
pub(super) struct Committed {
    /// Keys recorded finished (done, skipped or failed): the watermark may pass them.
    pub(super) finished: Vec<ObjectKey>,
    /// Keys whose flip was refused, or whose source changed before it, voided durably:
    /// copied again, with the refused flips and changes of each so far.
    pub(super) again: Vec<(ObjectKey, Tries)>,
    /// Keys flipped, committed durably, whose grace period is waited out on the task set
    /// before their cleanup: with what was copied and its size.
    pub(super) grace: Vec<(ObjectKey, CopiedFrom, u64)>,
}

/// The commit of a batch whose copies the target has made durable (one `sync` for the
/// whole batch, by [`Commits`](super::drive::Commits)): flips the verified objects,
/// journaled (the intents saved before the flips, the outcome after them: SPEC I2, I3);
/// finishes the forwarded objects (commit hook, version re-check, source delete: never
/// before a completed target sync, I1); then records the finished objects (sync before
/// record: an object recorded done is on the target durably, I1/I4). It runs on a task of
/// its own while the pipeline goes on copying: what it leaves to the drive loop (the keys
/// recorded finished, refused flips to copy again, grace periods to wait out) comes back in
/// [`Committed`], after everything it recorded.
pub(super) async fn commit_synced(ctx: &Arc<JobCtx>, batch: Vec<Outcome>) -> Result<Committed> {
    let checkpointer = &*ctx.checkpointer;
    let mut committed = Committed::default();
    let (verified, mut batch): (Vec<Outcome>, Vec<Outcome>) = batch
        .into_iter()
        .partition(|o| matches!(o, Outcome::Verified { .. }));
    // The flips of the batch are committed, durably, before any of its sources goes: after
    // a crash, a journaled key whose source is gone was cleaned, not deleted by a user. The
    // keys forwarded so far were flipped by their own task (fenced hot keys, keys flipped by
    // an earlier run); `flip_verified` commits its own flips, and its save carries these too.
    let committed_flips: Vec<ProgressUpdate> = batch
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Forwarded { key, .. } => {
                Some(ProgressUpdate::FlipCommitted { key: key.clone() })
            }
            _ => None,
        })
        .collect();
    let flipped = !committed_flips.is_empty();
    checkpointer.record_many(committed_flips);
    let saved = flip_verified(ctx, checkpointer, verified, &mut batch, &mut committed).await?;
    if flipped && !saved {
        checkpointer.flush().await?;
    }
    let batch: Vec<Outcome> = futures_util::stream::iter(batch)
        .map(|outcome| async move {
            match outcome {
                Outcome::Forwarded {
                    key,
                    copied,
                    bytes,
                    delete,
                } => finish_cleanup(ctx, key, copied, bytes, delete).await,
                other => other,
            }
        })
        .buffered(ctx.plan.options.concurrency.get())
        .collect()
        .await;
    let shared = &ctx.shared;
    // The snapshot's counters move once for the whole batch.
    let (mut done, mut done_bytes, mut skipped, mut failed, mut unfailed) = (0, 0, 0, 0, 0);
    // Changes of `changed_objects`: up for a key that fails with `SourceChanged`, down for
    // one recorded so before that finishes now, or fails for another reason.
    let mut changed: i64 = 0;
    let was_changed = |key: &ObjectKey| {
        i64::from(ctx.failed_before.get(key) == Some(&FailureKind::SourceChanged))
    };
    let mut records = Vec::with_capacity(batch.len());
    for outcome in batch {
        match outcome {
            Outcome::Done { key, bytes } => {
                shared.emit(&key, ObjectState::Done);
                committed.finished.push(key.clone());
                unfailed += u64::from(ctx.failed_before.contains_key(&key));
                changed -= was_changed(&key);
                records.push(ProgressUpdate::Done { key, bytes });
                done += 1;
                done_bytes += bytes;
            }
            Outcome::Skipped { key } => {
                shared.emit(&key, ObjectState::Skipped);
                committed.finished.push(key.clone());
                unfailed += u64::from(ctx.failed_before.contains_key(&key));
                changed -= was_changed(&key);
                records.push(ProgressUpdate::Skipped { key });
                done += 1;
                skipped += 1;
            }
            Outcome::Failed {
                key,
                attempts,
                error,
            } => {
                let kind = error.failure_kind();
                let error = error_chain(&error);
                tracing::warn!(key = %key.as_str(), attempts, error = %error, "object failed");
                shared.emit(
                    &key,
                    ObjectState::Failed {
                        attempts,
                        last_error: error.clone(),
                    },
                );
                committed.finished.push(key.clone());
                ctx.left.lock().insert(key.clone());
                failed += u64::from(!ctx.failed_before.contains_key(&key));
                changed += i64::from(kind == FailureKind::SourceChanged) - was_changed(&key);
                records.push(ProgressUpdate::Failed {
                    key,
                    attempts,
                    error,
                    kind,
                });
            }
            // Forwarded ones were finished above; verified ones were flipped.
            Outcome::RolledBack { .. } | Outcome::Forwarded { .. } | Outcome::Verified { .. } => {}
        }
    }
    checkpointer.record_many(records);
    shared.metrics.bytes_done(done_bytes);
    if done + failed + unfailed > 0 || changed != 0 {
        shared.publish(|s| {
            s.done_objects += done;
            s.done_bytes += done_bytes;
            s.skipped_objects += skipped;
            s.failed_objects = (s.failed_objects + failed).saturating_sub(unfailed);
            s.changed_objects = s.changed_objects.saturating_add_signed(changed);
        });
    }
    Ok(committed)
}

/// The FORWARD step of a batch of verified objects, after the target sync: journals the
/// intents and saves them, flips each key (the generation check, I3), then saves which
/// flips were made (committed) and which were refused (void) before anything else happens
/// to them. Flipped objects go on to their cleanup (`out`, or `committed.grace` for a grace
/// period); refused ones are copied again (`committed.again`). After a cancel nothing is
/// flipped: the objects are rolled back. Returns whether it saved the checkpoint (then
/// everything recorded before the call is durable too).
pub(super) async fn flip_verified(
    ctx: &Arc<JobCtx>,
    checkpointer: &Checkpointer,
    verified: Vec<Outcome>,
    out: &mut Vec<Outcome>,
    committed: &mut Committed,
) -> Result<bool> {
    if verified.is_empty() {
        return Ok(false);
    }
    let shared = &ctx.shared;
    let table = &ctx.engine.table;
    if shared.is_cancelled() {
        for outcome in verified {
            if let Outcome::Verified { key, .. } = outcome {
                shared.emit(&key, ObjectState::Pending);
                out.push(rolled_back(ctx, key, true).await);
            }
        }
        return Ok(false);
    }
    checkpointer.record_many(verified.iter().filter_map(|outcome| match outcome {
        Outcome::Verified { key, copied, .. } => Some(ProgressUpdate::FlipIntent {
            key: key.clone(),
            digest: copied.digest,
        }),
        _ => None,
    }));
    checkpointer.flush().await?;
    // Each source still holds the version copied: one changed outside the table since its
    // copy (a program writing the source directly) is not flipped, which would serve an
    // older content from the target, but copied again, up to `max_changes` times.
    let copied: Vec<_> = verified
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Verified { key, copied, .. } => Some((key.clone(), copied.version.clone())),
            _ => None,
        })
        .collect();
    let unchanged: Vec<_> = futures_util::stream::iter(copied)
        .map(|(key, version)| async move {
            with_retry(ctx, "head", || ctx.source.head(&key))
                .await
                .map(|meta| meta.is_some_and(|meta| meta.version == version))
        })
        .buffered(ctx.plan.options.concurrency.get())
        .collect()
        .await;
    let mut flipped = Vec::new();
    let mut again = Vec::new();
    let mut journal = Vec::with_capacity(verified.len());
    for (outcome, unchanged) in verified.into_iter().zip(unchanged) {
        let Outcome::Verified {
            key,
            observed,
            copied,
            mut tries,
        } = outcome
        else {
            continue;
        };
        // A source written through the table moved the key's generation too: that is not a
        // change from outside, and the flip below is refused for it (copied again, fenced
        // after `max_flip_attempts`), as for any write that raced the copy (I3).
        let outside =
            |unchanged: bool| !unchanged && table.generation(key.as_str()) == Some(observed);
        match unchanged.map(outside) {
            Ok(false) => {}
            Ok(true) => match changed_again(ctx, &key, &mut tries, "before its flip") {
                Ok(()) => {
                    journal.push(ProgressUpdate::FlipDropped { key: key.clone() });
                    shared.emit(&key, ObjectState::Pending);
                    again.push((key, tries));
                    continue;
                }
                Err(error) => {
                    table.remove_owned(key.as_str(), &shared.id);
                    out.push(Outcome::Failed {
                        key,
                        attempts: tries.changes,
                        error,
                    });
                    continue;
                }
            },
            Err((attempts, error)) => {
                table.remove_owned(key.as_str(), &shared.id);
                out.push(Outcome::Failed {
                    key,
                    attempts,
                    error,
                });
                continue;
            }
        }
        let flipped_now = flip(table, &key, observed);
        journal.extend(flipped_now.journal(&key));
        match flipped_now {
            Flip::Made => {
                shared.forwarded.fetch_add(1, Ordering::Relaxed);
                shared.emit(&key, ObjectState::Forwarded);
                flipped.push((key, copied));
            }
            Flip::Again(_) => {
                shared.metrics.flips_refused.increment(1);
                shared.emit(&key, ObjectState::Pending);
                tries.refused += 1;
                again.push((key, tries));
            }
            Flip::Refused(cause) => {
                table.remove_owned(key.as_str(), &shared.id);
                out.push(Outcome::Failed {
                    key: key.clone(),
                    attempts: tries.refused + 1,
                    error: Error::FlipRefused { key, cause },
                });
            }
        }
    }
    // Committed and void flips are durable before any source is deleted and before any
    // key is copied again.
    checkpointer.record_many(journal);
    checkpointer.flush().await?;
    committed.again = again;
    let grace = matches!(ctx.plan.options.cleanup, CleanupPolicy::AfterGrace(_));
    for (key, copied) in flipped {
        let from = CopiedFrom::Version(copied.version);
        if grace {
            committed.grace.push((key, from, copied.bytes));
        } else {
            out.push(cleanup(ctx, key, from, copied.bytes).await);
        }
    }
    Ok(true)
}

/// Calls the engine's commit hook, if any, for `key`.
pub(super) async fn commit_hook(ctx: &JobCtx, key: &ObjectKey) -> Result<()> {
    match &ctx.engine.hook {
        None => Ok(()),
        Some(hook) => (hook.0)(key, ctx.plan.target)
            .await
            .map_err(|source| Error::CommitHook {
                key: key.clone(),
                source,
            }),
    }
}
