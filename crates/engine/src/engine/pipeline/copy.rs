//! COPY (and VERIFY): one object streamed from source to target through the throttle, hashed as it
//! goes (I7), then verified.

use std::sync::Arc;

use bytes::Bytes;

use ferry_types::{ObjectKey, ObjectState, VerifyMode};
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::super::job::{JobShared, Tracker};
use crate::error::{Error, Result};
use ferry_store::{ByteStream, Version};

use super::cleanup::rolled_back;
use super::retry::with_retry;
use super::verify::{
    PARALLEL_VERIFY_BYTES, digest, digest_unless_said, digests, reads_source_again, reported_blake3,
};
use super::{JobCtx, Outcome};

/// What one copy read and wrote.
#[derive(Debug)]
pub(super) struct Copied {
    pub(super) version: Version,
    pub(super) bytes: u64,
    /// BLAKE3 of the bytes written to the target.
    pub(super) digest: [u8; 32],
}

pub(super) enum CopyResult {
    Copied(Copied),
    /// The source had no such object when the copy opened it.
    Vanished,
    /// The source's content changed during the copy and the key's generation moved since
    /// it began: a client wrote it through the table. Not an error: like a refused flip,
    /// the copy runs again (I3).
    SourceWritten,
    /// The source's content changed during the copy and its version with it, while the
    /// key's generation did not move: a program wrote (or deleted) it outside the table.
    /// The copy runs again, up to the plan's `max_changes`.
    SourceChanged,
}

/// How a copy knows the BLAKE3 of what it streamed.
pub(super) enum StreamHash {
    /// Hashed chunk by chunk as they pass. (Boxed: a hasher is about 1.9 KB, and it would
    /// make every copy's future that much larger, moved at each spawn, hashing or not.)
    Hashing(Box<blake3::Hasher>),
    /// Not hashed: the source reported the BLAKE3 of the version read, and checksum verify
    /// holds the target to it.
    Said(blake3::Hash),
    /// Not hashed: the target reports the BLAKE3 of what its `put` stored, and checksum
    /// verify holds it to a second read of the source.
    Target,
}

/// What one copy step ended with, when the object goes on.
pub(super) enum Step {
    /// Copied and verified.
    Copied(Copied),
    /// Written through the table during the copy: copy again (a refused flip).
    Written,
    /// Changed outside the table during the copy: copy again (a change).
    Changed,
}

/// Counts the caller among the copies moving chunks, for as long as it lives.
pub(crate) struct Streaming<'a>(&'a JobShared);

impl<'a> Streaming<'a> {
    pub(crate) fn enter(shared: &'a JobShared) -> Self {
        shared.streaming.add();
        Streaming(shared)
    }
}

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        self.0.streaming.sub();
    }
}

/// COPY then VERIFY, once: streams source → target chunk by chunk through the job's
/// throttle, hashing while streaming (I7), then checks the target per the verify mode.
///
/// `observed`: the key's generation read before the copy began, when a write to the source
/// through the table may happen meanwhile (not under a fence); a source that no longer
/// matches the copy then counts as written ([`CopyResult::SourceWritten`]) when the
/// generation moved, and as a verify error when it did not.
pub(super) async fn copy_once(
    ctx: &JobCtx,
    key: &ObjectKey,
    track: &Tracker<'_>,
    observed: Option<u64>,
) -> Result<CopyResult> {
    let shared = &*ctx.shared;
    track.to(ObjectState::Copying);
    let object = match ctx.source.get(key).await {
        Ok(object) => object,
        Err(err) if err.is_not_found() => return Ok(CopyResult::Vanished),
        Err(err) => return Err(err.into()),
    };
    // In parts: objects over the engine's threshold, and any that an earlier run (perhaps
    // with another threshold) began to upload in parts.
    let size = object.meta.size;
    let in_parts = size > ctx.engine.parts.above
        || (size > ctx.plan.options.chunk_size.as_u64() && ctx.checkpointer.has_upload(key));
    let object = if in_parts {
        match Box::pin(super::parts::copy_in_parts(
            ctx, key, track, observed, object,
        ))
        .await?
        {
            super::parts::InParts::Done(result) => return Ok(result),
            super::parts::InParts::NotTaken(object) => object,
        }
    } else {
        object
    };
    let version = object.meta.version.clone();
    let mut source_said = reported_blake3(&object.meta);
    // The verify compares what was streamed with a second read of a source that reported
    // no checksum (I1: never deleted on the word of the read that made the copy). For a
    // large object that read runs beside the copy rather than after it (two chunks more in
    // memory for it, I7; a 1 GiB file dir → dir 0.78 s → 0.70 s).
    let reread = (source_said.is_none()
        && object.meta.size >= PARALLEL_VERIFY_BYTES
        && reads_source_again(&ctx.plan.options))
    .then(|| {
        let (source, key) = (Arc::clone(&ctx.source), key.clone());
        AbortOnDrop(tokio::spawn(async move { digest(&*source, &key).await }))
    });
    let ahead = object.meta.size > ctx.plan.options.chunk_size.as_u64();
    let body = object.checked_body();
    let body = if ahead { read_ahead(body) } else { body };
    // Under checksum verify, a source that reported the BLAKE3 of the version read is
    // compared with the target's BLAKE3 directly: hashing the stream too would only prove
    // the same thing twice (the target is checked against the source's word either way).
    let checksum = ctx.plan.options.verify == VerifyMode::Checksum;
    let stream_hash = match source_said {
        Some((_, said)) if checksum => StreamHash::Said(said),
        // The source is read again beside the copy and the target hashes what it stores:
        // the target's word is compared with the second read, one hash of the object fewer.
        None if checksum && reread.is_some() && ctx.target.put_reports_blake3() => {
            StreamHash::Target
        }
        _ => StreamHash::Hashing(Box::new(blake3::Hasher::new())),
    };
    let hash_stream = matches!(stream_hash, StreamHash::Hashing(_));
    let state = Mutex::new((stream_hash, 0u64));
    // Why the body stopped short, when the job did (a cancel): the put sees a store error,
    // the copy returns this one.
    let stopped: Mutex<Option<Error>> = Mutex::new(None);
    let stopped = &stopped;
    let streaming = Streaming::enter(shared);
    // Under a fence (no `observed` generation) the copy neither parks at a pause nor waits
    // for the throttle: writers wait for as long as it runs, so it runs at full speed and
    // its bytes are paid to the throttle once the fence is lifted.
    let fenced = observed.is_none();
    let throttled = throttled(shared, body, &state, stopped, fenced);
    let put = ctx.target.put(key, throttled).await;
    drop(streaming);
    if let Some(err) = stopped.lock().take() {
        return Err(err);
    }
    let target_said = reported_blake3(&put?);
    track.to(ObjectState::Copied);
    if matches!(state.lock().0, StreamHash::Target) {
        // The target's word for what it was given, or (a store that said it would report
        // and did not) what a read of it finds.
        let stored = match target_said {
            Some((_, hash)) => Some(hash),
            None => Box::pin(digest(&*ctx.target, key))
                .await?
                .map(|(_, hash)| hash),
        };
        let Some(stored) = stored else {
            return Err(Error::VerifyMismatch {
                key: key.clone(),
                what: "target copy missing",
            });
        };
        state.lock().0 = StreamHash::Said(stored);
    }
    if let Some(reread) = reread {
        // What the second read found stands for the source's word; a read that failed (or
        // found no object) leaves the verify to read the source itself, as for any other.
        if let Some(Ok(Some(found))) = reread.join().await {
            source_said = Some(found);
        }
    }
    let streamed = {
        let guard = state.lock();
        Streamed {
            bytes: guard.1,
            // What the source said it holds stands for what was streamed when the stream
            // was not hashed; the target is held to it.
            hash: guard.0.finalize(),
            hashed: hash_stream,
        }
    };
    let verify = ctx.plan.options.verify;
    verified(
        ctx,
        key,
        track,
        observed,
        version,
        streamed,
        verify,
        (target_said, source_said),
    )
    .await
}

impl StreamHash {
    /// The BLAKE3 of the stream: hashed, or as the source said.
    pub(super) fn finalize(&self) -> blake3::Hash {
        match self {
            StreamHash::Hashing(hasher) => hasher.finalize(),
            StreamHash::Said(said) => *said,
            StreamHash::Target => unreachable!("replaced by the target's word after the put"),
        }
    }
}

/// What a copy streamed to the target: its length and BLAKE3.
#[derive(Debug, Clone, Copy)]
pub(super) struct Streamed {
    pub(super) bytes: u64,
    pub(super) hash: blake3::Hash,
    /// Whether `hash` was computed from the stream (else it is the source's word for it).
    pub(super) hashed: bool,
}

/// The size and BLAKE3 the target reported for the copy and the source for the version read,
/// when they did.
pub(super) type Said = (Option<(u64, blake3::Hash)>, Option<(u64, blake3::Hash)>);

/// VERIFY of a copy of `key` (from the source's `version`) that streamed `streamed`, per
/// `verify`: the target must hold what was streamed, and what was streamed must be what the
/// source holds.
#[allow(clippy::too_many_arguments)]
pub(super) async fn verified(
    ctx: &JobCtx,
    key: &ObjectKey,
    track: &Tracker<'_>,
    observed: Option<u64>,
    version: Version,
    streamed: Streamed,
    verify: VerifyMode,
    (target_said, source_said): Said,
) -> Result<CopyResult> {
    let Streamed {
        bytes,
        hash,
        hashed: hash_stream,
    } = streamed;
    let streamed = |said: Option<(u64, blake3::Hash)>| said == Some((bytes, hash));
    match verify {
        VerifyMode::None | VerifyMode::Size => {
            if verify == VerifyMode::Size {
                let size = ctx.target.head(key).await?.map(|m| m.size);
                if size != Some(bytes) {
                    return Err(Error::VerifyMismatch {
                        key: key.clone(),
                        what: "size",
                    });
                }
            }
            // What was streamed is checked against the source itself wherever the store
            // reported its checksum (free), and always before a cleanup may delete it: a
            // source is never deleted on the word of the one read that made the copy (I1).
            if source_said.is_some() || reads_source_again(&ctx.plan.options) {
                let on_source = digest_unless_said(&*ctx.source, key, source_said).await?;
                if !streamed(on_source) {
                    return Box::pin(source_differs(ctx, key, observed, &version)).await;
                }
            }
        }
        VerifyMode::Checksum => {
            // The target must hold what was copied (absent counts as a mismatch too), and what
            // was copied must be what the source holds: a read that silently changed a byte
            // on its way would otherwise be verified against itself, and the intact source
            // deleted (I1). Both are re-read at once, except where the store reported the
            // BLAKE3 of what it holds (`ObjectMeta::checksum`: the source with the version
            // read, the target with the put): its word stands in for a second read.
            let (on_target, on_source) = match (target_said, source_said) {
                (Some(target), Some(source)) => (Ok(Some(target)), Ok(Some(source))),
                // Boxed: re-reads take room in the task's future, which every copy moves.
                _ => Box::pin(digests(ctx, key, bytes, target_said, source_said)).await,
            };
            if !streamed(on_source?) {
                return Box::pin(source_differs(ctx, key, observed, &version)).await;
            }
            let (read, target_hash) = on_target?.ok_or_else(|| Error::VerifyMismatch {
                key: key.clone(),
                what: "target copy missing",
            })?;
            if read != bytes {
                return Err(Error::VerifyMismatch {
                    key: key.clone(),
                    what: "size",
                });
            }
            if target_hash != hash {
                if !hash_stream && target_said.is_some() {
                    // The target hashed what it was given: the stream differed from what
                    // the source said it holds, as a hashed stream would have shown.
                    return Box::pin(source_differs(ctx, key, observed, &version)).await;
                }
                return Err(Error::VerifyMismatch {
                    key: key.clone(),
                    what: "checksum",
                });
            }
        }
    }
    track.to(ObjectState::Verified);
    Ok(CopyResult::Copied(Copied {
        version,
        bytes,
        digest: *hash.as_bytes(),
    }))
}

/// `body` as a copy sends it: each chunk waits at the job's chunk boundary (pause, cancel)
/// and for the throttle (unless `fenced`: writers wait on the copy, which then runs at full
/// speed), then is hashed and counted in `state`. When the job stops the copy, the body ends
/// with a store error and the job's reason is left in `stopped`.
pub(super) fn throttled<'s>(
    shared: &'s JobShared,
    body: ByteStream,
    state: &'s Mutex<(StreamHash, u64)>,
    stopped: &'s Mutex<Option<Error>>,
    fenced: bool,
) -> futures_util::stream::BoxStream<'s, ferry_store::Result<Bytes>> {
    Box::pin(futures_util::stream::unfold(
        (body, state),
        move |(mut body, state)| async move {
            let boundary = if fenced {
                shared.cancel_point()
            } else {
                shared.chunk_boundary().await
            };
            if let Err(err) = boundary {
                *stopped.lock() = Some(err);
                let err = ferry_store::Error::Permanent {
                    op: ferry_store::Op::Put,
                    key: None,
                    source: "the copy was stopped by its job".into(),
                };
                return Some((Err(err), (body, state)));
            }
            let chunk: Bytes = match body.next().await? {
                Ok(chunk) => chunk,
                Err(err) => return Some((Err(err), (body, state))),
            };
            if !fenced {
                shared.throttle.acquire(chunk.len() as u64).await;
            }
            {
                let mut guard = state.lock();
                if let StreamHash::Hashing(hasher) = &mut guard.0 {
                    hasher.update(&chunk);
                }
                guard.1 += chunk.len() as u64;
            }
            shared.copied_bytes(chunk.len() as u64);
            Some((Ok(chunk), (body, state)))
        },
    ))
}

/// The source no longer matches what the copy streamed from it (`version`): written through
/// the table when the key's generation moved since `observed`; else changed outside the table
/// when its version moved (or it is gone); else the source read differently twice with the
/// same version, which no write explains: a verify error (retried; never deleted on it).
pub(super) async fn source_differs(
    ctx: &JobCtx,
    key: &ObjectKey,
    observed: Option<u64>,
    version: &Version,
) -> Result<CopyResult> {
    let table = &ctx.engine.table;
    if observed.is_some_and(|g| table.generation(key.as_str()) != Some(g)) {
        return Ok(CopyResult::SourceWritten);
    }
    match ctx.source.head(key).await? {
        Some(meta) if meta.version == *version => Err(Error::VerifyMismatch {
            key: key.clone(),
            what: "source checksum",
        }),
        _ => Ok(CopyResult::SourceChanged),
    }
}

/// COPY and VERIFY with retries; a vanished source, a spent retry policy or a cancel end the
/// object (the `Err` outcome).
pub(super) async fn copy_step(
    ctx: &JobCtx,
    key: &ObjectKey,
    track: &Tracker<'_>,
    fail: &impl Fn(u32, Error) -> Outcome,
    observed: Option<u64>,
) -> Result<Step, Outcome> {
    let table = &ctx.engine.table;
    let copied = match with_retry(ctx, "copy", || copy_once(ctx, key, track, observed)).await {
        Ok(CopyResult::Copied(copied)) => copied,
        Ok(CopyResult::SourceWritten) => {
            track.to(ObjectState::Pending);
            return Ok(Step::Written);
        }
        Ok(CopyResult::SourceChanged) => {
            track.to(ObjectState::Pending);
            return Ok(Step::Changed);
        }
        Ok(CopyResult::Vanished) => {
            // Absent on both sides, never resurrected (I3). (A key an earlier run moved
            // and cleaned is journaled and does not come here.) The copy goes before the
            // entry: an embedder whose reads fall back to the target when the source lacks
            // a key (one moved and cleaned up) must not find this copy meanwhile.
            let deleted = Box::pin(with_retry(ctx, "delete", || ctx.target.delete(key))).await;
            table.remove_owned(key.as_str(), &ctx.shared.id);
            return Err(match deleted {
                Ok(_) => Outcome::Skipped { key: key.clone() },
                Err((attempts, err)) => fail(attempts, err),
            });
        }
        Err((attempts, err)) => {
            if ctx.shared.is_cancelled() {
                track.to(ObjectState::Pending);
                return Err(Box::pin(rolled_back(ctx, key.clone(), track.wrote())).await);
            }
            return Err(fail(attempts, err));
        }
    };
    if ctx.shared.is_cancelled() {
        track.to(ObjectState::Pending);
        return Err(Box::pin(rolled_back(ctx, key.clone(), true)).await);
    }
    Ok(Step::Copied(copied))
}

/// `body`, read one chunk ahead by a task of its own: the store reads the next chunk while
/// the caller hashes and writes this one (memory: two chunks per copy, I7). The task stops
/// when the stream is dropped.
pub(super) fn read_ahead(mut body: ByteStream) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        while let Some(chunk) = body.next().await {
            let end = chunk.is_err();
            if tx.send(chunk).await.is_err() || end {
                break;
            }
        }
    });
    let stop = AbortOnDrop(reader);
    Box::pin(futures_util::stream::unfold(
        (rx, stop),
        |(mut rx, stop)| async move { rx.recv().await.map(|chunk| (chunk, (rx, stop))) },
    ))
}

/// Aborts the task when dropped.
pub(super) struct AbortOnDrop<T = ()>(pub(super) tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// The task's output, `None` when the runtime cancelled it (shutting down); a panic in
    /// it is resumed here.
    pub(super) async fn join(mut self) -> Option<T> {
        match (&mut self.0).await {
            Ok(output) => Some(output),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => None,
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
