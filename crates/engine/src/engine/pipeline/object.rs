//! One object's task, from its registration to `Verified` (the batch flips it) or to its own fenced
//! flip on a hot key.

use std::sync::atomic::Ordering;

use ferry_checkpoint::ProgressUpdate;
use ferry_forwarding::{Conflict, EntryState};
use ferry_types::{FailureKind, ObjectKey, ObjectState};

use super::super::job::Tracker;
use crate::error::{Error, Result};

use super::cleanup::{cleanup, rolled_back};
use super::copy::{Copied, Step, copy_step};
use super::flip::{Flip, flip};
use super::retry::{sync_with_retry, with_retry};
use super::verify;
use super::{CopiedFrom, JobCtx, Outcome, Tries};

/// The pipeline of one object, up to `Verified` (the commit flips it), or to its end for a
/// key flipped by an earlier run, or (after `max_flip_attempts` refused flips, `tries`
/// counting them) through a fenced flip of its own. A source changed outside the table
/// during the copy is copied again, up to `max_changes` times (`tries` counts those too).
pub(super) async fn process(ctx: &JobCtx, key: ObjectKey, tries: Tries) -> Outcome {
    let track_key = key.clone();
    let track = Tracker::new(&ctx.shared, &track_key);
    if tries.refused > 0 || tries.changes > 0 {
        // Copied again after a refused flip or a change: the earlier copy is on the target.
        track.wrote_before();
    }
    let track = &track;
    let table = &ctx.engine.table;
    let (source, target) = (ctx.plan.source, ctx.plan.target);
    let job = &ctx.shared.id;
    let fail = |attempts, error| {
        // Only this job's entry: another job's is never touched (I8).
        table.remove_owned(track_key.as_str(), job);
        Outcome::Failed {
            key: track_key.clone(),
            attempts,
            error,
        }
    };
    if ctx.failed_before.get(&key) == Some(&FailureKind::SourceChanged) {
        // Retried after its source changed past its flip: moved again from the start, once
        // the flip is rolled back (only if the target still holds the flipped copy).
        if let Err(error) = Box::pin(unflip(ctx, &key)).await {
            return Outcome::Failed {
                key,
                attempts: 1,
                error,
            };
        }
    }
    // A key copied again after a refused flip or a change has its entry already.
    // The generation a fresh registration reports is the key's generation before the copy
    // opens the source (I3), as a read of it would be: the first copy uses it.
    let mut registered_at = None;
    let registered = if tries.refused == 0 && tries.changes == 0 {
        table
            .register_for(&key, source, target, job)
            .map(|registration| registered_at = Some(registration.generation))
    } else {
        Ok(())
    };
    if let Err(err) = registered {
        match table.get(key.as_str()) {
            // Left by a run of this job that stopped mid-copy: start the move afresh.
            Some(info)
                if info.state.is_moving()
                    && info.owner.as_ref() == Some(job)
                    && info.copy_from == source
                    && info.target == target =>
            {
                table.remove_owned(key.as_str(), job);
                if let Err(err) = table.register_for(&key, source, target, job) {
                    return fail(1, err.into());
                }
            }
            // Flipped by a run of this job that stopped before recording it done: the target
            // holds the object and serves it; only the cleanup is left.
            Some(info)
                if info.state == EntryState::Forwarded
                    && info.owner.as_ref() == Some(job)
                    && info.target == target =>
            {
                // Boxed, as the other paths most objects never take: a task's future is as
                // large as its largest path, and moved whole when it is spawned.
                return Box::pin(cleanup_forwarded(ctx, key, track)).await;
            }
            _ => return fail(1, err.into()),
        }
    }
    let max_flips = ctx.plan.options.max_flip_attempts;
    let mut tries = tries;
    while tries.refused < max_flips {
        // The generation is read BEFORE the copy opens the source (I3).
        let observed = registered_at
            .take()
            .or_else(|| table.generation(key.as_str()));
        let Some(observed) = observed else {
            let cause = Conflict::NotFound;
            return fail(tries.refused + 1, Error::FlipRefused { key, cause });
        };
        match copy_step(ctx, &key, track, &fail, Some(observed)).await {
            Ok(Step::Copied(copied)) => {
                return Outcome::Verified {
                    key,
                    observed,
                    copied,
                    tries,
                };
            }
            // Written during the copy: its flip would be refused; copy again, and count it
            // as refused, so a key written this often is fenced like any hot key.
            Ok(Step::Written) => tries.refused += 1,
            Ok(Step::Changed) => {
                if let Err(error) = changed_again(ctx, &key, &mut tries, "during its copy") {
                    return fail(tries.changes, error);
                }
            }
            Err(outcome) => return outcome,
        }
    }
    Box::pin(hot_key(ctx, key, track, &fail, tries)).await
}

/// The cleanup of a key flipped by a run of this job that stopped before recording it done:
/// the target holds the object and serves it; only the cleanup is left.
async fn cleanup_forwarded(ctx: &JobCtx, key: ObjectKey, track: &Tracker<'_>) -> Outcome {
    ctx.shared.forwarded.fetch_add(1, Ordering::Relaxed);
    let journaled = ctx.committed.get(&key).copied();
    // On failure the entry stays: the target serves the key (I2).
    let failed = |error| Outcome::Failed {
        key: key.clone(),
        attempts: 1,
        error,
    };
    let bytes = match ctx.target.head(&key).await {
        Ok(Some(meta)) => meta.size,
        // Deleted through the table after its journaled flip: nothing to move.
        Ok(None) if journaled.is_some() => 0,
        Ok(None) => {
            return failed(ferry_store::Error::NotFound { key: key.clone() }.into());
        }
        Err(err) => return failed(err.into()),
    };
    track.to(ObjectState::Forwarded);
    let copied = journaled.map_or(CopiedFrom::Unknown, CopiedFrom::Digest);
    cleanup(ctx, key, copied, bytes).await
}

/// A hot key: its flips were refused `max_flip_attempts` times. Fences its writers and flips
/// it here; never fenced while paused, never for longer than `fence_timeout`.
async fn hot_key(
    ctx: &JobCtx,
    key: ObjectKey,
    track: &Tracker<'_>,
    fail: &impl Fn(u32, Error) -> Outcome,
    mut tries: Tries,
) -> Outcome {
    let mut refused = tries.refused;
    if ctx.shared.chunk_boundary().await.is_err() {
        // Cancelled (the only error of a chunk boundary) before the fence.
        track.to(ObjectState::Pending);
        return rolled_back(ctx, key, true).await;
    }
    let fence_timeout = ctx.plan.options.fence_timeout;
    let fenced = tokio::time::timeout(
        fence_timeout,
        fenced_flip(ctx, &key, track, fail, &mut refused, &mut tries.changes),
    )
    .await;
    let copied = match fenced {
        Ok(Ok(copied)) => copied,
        Ok(Err(outcome)) => return outcome,
        Err(_elapsed) => {
            // Writers go back to the source (`fail` removes the entry, which lifts the
            // fence); an intent journaled meanwhile is void with the failure (I3).
            return fail(
                refused + 1,
                Error::HotKey {
                    key: key.clone(),
                    timeout: fence_timeout,
                },
            );
        }
    };
    // The fenced copy did not wait for the throttle: its bytes are paid now, unfenced.
    ctx.shared.throttle.acquire(copied.bytes).await;
    ctx.shared.forwarded.fetch_add(1, Ordering::Relaxed);
    track.to(ObjectState::Forwarded);
    cleanup(ctx, key, CopiedFrom::Version(copied.version), copied.bytes).await
}

/// The FORWARD step of a hot key, on its own: fences its writers, waits for the writes in
/// flight, copies once more (neither parked by a pause nor held back by the throttle, so the
/// fence lasts as long as the copy itself), syncs the target, journals the intent and flips.
/// The caller bounds it with the plan's `fence_timeout`.
pub(super) async fn fenced_flip(
    ctx: &JobCtx,
    key: &ObjectKey,
    track: &Tracker<'_>,
    fail: &impl Fn(u32, Error) -> Outcome,
    refused: &mut u32,
    changes: &mut u32,
) -> Result<Copied, Outcome> {
    let table = &ctx.engine.table;
    let max_flips = ctx.plan.options.max_flip_attempts;
    if let Err(err) = table.fence(key.as_str()) {
        return Err(fail(*refused, err.into()));
    }
    let metrics = &ctx.shared.metrics;
    metrics.fences.increment(1);
    loop {
        let waiting = tokio::time::Instant::now();
        let drained = table.wait_drained(key.as_str()).await;
        metrics.fence_wait.record(waiting.elapsed().as_secs_f64());
        let observed = match drained {
            Ok(generation) => generation,
            Err(err) => return Err(fail(*refused + 1, err.into())),
        };
        // Fenced: no write through the table reaches the source; one from outside it may.
        let copied = match copy_step(ctx, key, track, fail, None).await? {
            Step::Copied(copied) => copied,
            Step::Changed => {
                let mut tries = Tries {
                    refused: *refused,
                    changes: *changes,
                };
                let changed = changed_again(ctx, key, &mut tries, "during its fenced copy");
                *changes = tries.changes;
                match changed {
                    Ok(()) => continue,
                    Err(error) => return Err(fail(*changes, error)),
                }
            }
            Step::Written => {
                unreachable!("only a copy given a generation reports a write through the table")
            }
        };
        if let Err((attempts, err)) = sync_with_retry(ctx).await {
            return Err(fail(attempts, err));
        }
        let intent = ProgressUpdate::FlipIntent {
            key: key.clone(),
            digest: copied.digest,
        };
        if let Err(err) = ctx.checkpointer.record_durable(intent).await {
            return Err(fail(*refused + 1, err.into()));
        }
        let flipped = flip(table, key, observed);
        if let Some(update) = flipped.journal(key) {
            ctx.checkpointer.record(update);
        }
        match flipped {
            Flip::Made => return Ok(copied),
            Flip::Again(cause) => {
                metrics.flips_refused.increment(1);
                *refused += 1;
                // The intent is void, durably, before the next copy writes the target.
                if let Err(err) = ctx.checkpointer.flush().await {
                    return Err(fail(*refused, err.into()));
                }
                if *refused > max_flips + 2 {
                    let key = key.clone();
                    return Err(fail(*refused, Error::FlipRefused { key, cause }));
                }
            }
            Flip::Refused(cause) => {
                let key = key.clone();
                return Err(fail(*refused + 1, Error::FlipRefused { key, cause }));
            }
        }
    }
}

/// Counts one more change of `key`'s source outside the table (seen `when`): `Ok` when the
/// plan's `max_changes` allows another copy, else the error the object fails with (its
/// source kept).
pub(super) fn changed_again(
    ctx: &JobCtx,
    key: &ObjectKey,
    tries: &mut Tries,
    when: &'static str,
) -> Result<()> {
    tries.changes += 1;
    if tries.changes <= ctx.plan.options.max_changes {
        tracing::debug!(key = %key.as_str(), changes = tries.changes, when, "source changed outside the table: copied again");
        return Ok(());
    }
    Err(Error::SourceChanged {
        key: key.clone(),
        changes: tries.changes,
        when,
    })
}

/// Undoes the committed flip of `key`, whose source changed outside the table after it (a
/// retry of such an object): when the table forwards the key for this job and the target
/// still holds exactly the copy the flip journal names, the rollback is journaled durably,
/// then the entry removed: reads go to the source again, which holds the newest content,
/// and the object is moved from the start. A key not forwarded by this job has nothing to
/// undo.
///
/// # Errors
///
/// `SourceChanged` when the target no longer holds the flipped copy (a write reached it
/// through the table since the flip: neither side is overwritten) or the journal does not
/// say what was flipped; a store or checkpoint error.
async fn unflip(ctx: &JobCtx, key: &ObjectKey) -> Result<()> {
    let table = &ctx.engine.table;
    let forwarded = table.get(key.as_str()).is_some_and(|info| {
        info.state == EntryState::Forwarded
            && info.owner.as_ref() == Some(&ctx.shared.id)
            && info.target == ctx.plan.target
    });
    if !forwarded {
        return Ok(());
    }
    let both_changed = || Error::SourceChanged {
        key: key.clone(),
        changes: 1,
        when: "after its flip, and the target changed since the flip too (neither is overwritten)",
    };
    let Some(flipped) = ctx.committed.get(key) else {
        return Err(both_changed());
    };
    let on_target = with_retry(ctx, "compare", || verify::digest(&*ctx.target, key))
        .await
        .map_err(|(_, error)| error)?;
    if on_target.is_none_or(|(_, hash)| hash.as_bytes() != flipped) {
        return Err(both_changed());
    }
    let rollback = ProgressUpdate::FlipRolledBack { key: key.clone() };
    ctx.checkpointer.record_durable(rollback).await?;
    table.remove_owned(key.as_str(), &ctx.shared.id);
    Ok(())
}
