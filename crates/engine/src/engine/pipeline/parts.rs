//! COPY in parts: an object larger than [`Parts::above`](crate::Parts) goes to a target that
//! takes uploads in parts (`Store::create_upload`) part by part, each part's tag recorded in
//! the checkpoint as soon as the part is stored, so that a run stopped in the middle (a crash,
//! a shutdown, an error) is taken up by the next one at the first part not recorded (SPEC I4
//! inside one object). Every part reads its own range of the source, at the version the copy
//! began with; a copy that continued an earlier one verifies the whole object by reading both
//! sides again, whatever the job's verify mode.

use bytes::Bytes;
use ferry_checkpoint::{ProgressUpdate, UploadRecord};
use ferry_store::{BoxStream, Object, PartTag, UploadId, Version};
use ferry_types::{ObjectKey, ObjectState, VerifyMode};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::super::job::Tracker;
use super::JobCtx;
use super::copy::{
    CopyResult, StreamHash, Streamed, Streaming, read_ahead, source_differs, throttled, verified,
};
use super::retry::error_chain;
use super::verify::{digest, reported_blake3};
use crate::error::{Error, Result};

/// What [`copy_in_parts`] did with the object it was given.
pub(super) enum InParts {
    /// Copied (or found changed, vanished…), as a whole copy would say.
    Done(CopyResult),
    /// The target takes no uploads in parts: the object, still open, goes by `put`.
    NotTaken(Object),
}

/// The most parts of one upload (S3's limit).
const MAX_PARTS: u64 = 10_000;

/// The part size for an object of `size` bytes: `wanted`, or more to stay within
/// [`MAX_PARTS`], a whole number of `chunk`s.
fn part_size_for(size: u64, wanted: u64, chunk: u64) -> u64 {
    let chunk = chunk.max(1);
    let least = size.div_ceil(MAX_PARTS).max(wanted).max(1);
    least.div_ceil(chunk) * chunk
}

/// Abandons the upload of `key` recorded in `record` (best effort: a failure is logged, and
/// the record goes either way: a store's own cleanup, such as an S3 lifecycle rule, is the
/// last resort for an upload whose abort failed).
pub(super) async fn abort(ctx: &JobCtx, key: &ObjectKey, record: &UploadRecord) {
    let upload = UploadId::new(record.upload.clone());
    if let Err(err) = ctx.target.abort_upload(key, &upload).await {
        tracing::warn!(key = %key.as_str(), upload = %record.upload, error = %error_chain(&err), "an abandoned upload could not be aborted");
    }
    ctx.checkpointer
        .record(ProgressUpdate::UploadEnded { key: key.clone() });
}

/// COPY (and VERIFY) of `object` in parts, continuing the upload the checkpoint records for
/// `key` when it was made from the same source version.
pub(super) async fn copy_in_parts(
    ctx: &JobCtx,
    key: &ObjectKey,
    track: &Tracker<'_>,
    observed: Option<u64>,
    object: Object,
) -> Result<InParts> {
    let size = object.meta.size;
    let version = object.meta.version.clone();
    let source_said = reported_blake3(&object.meta);
    let mut object = Some(object);
    // At most twice: a recorded upload the target no longer has is started again, once.
    for fresh in [false, true] {
        let recorded = if fresh {
            None
        } else {
            ctx.checkpointer.upload(key)
        };
        let recorded = match recorded {
            Some(record) if record.version == version.as_str() && record.part_size > 0 => {
                Some(record)
            }
            Some(stale) => {
                // Parts of another version of the source: worthless.
                abort(ctx, key, &stale).await;
                None
            }
            None => None,
        };
        let (upload, part_size, tags) = match &recorded {
            Some(record) => (
                UploadId::new(record.upload.clone()),
                record.part_size,
                record.parts.iter().cloned().map(PartTag::new).collect(),
            ),
            None => {
                let Some(upload) = ctx.target.create_upload(key).await? else {
                    let object = object.take().ok_or(Error::RunnerGone {
                        job: ctx.shared.id.clone(),
                    })?;
                    return Ok(InParts::NotTaken(object));
                };
                let chunk = ctx.plan.options.chunk_size.as_u64();
                let part_size = part_size_for(size, ctx.engine.parts.size, chunk);
                // Durable before the first part: an upload is never left on the target
                // without a record that names it (SPEC I8).
                ctx.checkpointer
                    .record_durable(ProgressUpdate::UploadStarted {
                        key: key.clone(),
                        upload: upload.as_str().to_owned(),
                        version: version.as_str().to_owned(),
                        part_size,
                    })
                    .await?;
                (upload, part_size, Vec::new())
            }
        };
        let upload = Upload {
            id: upload,
            size,
            part_size,
        };
        let sent = send_parts(ctx, key, observed, &version, object.take(), &upload, tags).await;
        let upload = upload.id;
        let (tags, streamed) = match sent {
            Ok(Sent::All { tags, streamed }) => (tags, streamed),
            Ok(Sent::Changed) => {
                let record = ctx.checkpointer.upload(key);
                if let Some(record) = record {
                    abort(ctx, key, &record).await;
                }
                return source_differs(ctx, key, observed, &version)
                    .await
                    .map(InParts::Done);
            }
            Ok(Sent::Vanished) => {
                if let Some(record) = ctx.checkpointer.upload(key) {
                    abort(ctx, key, &record).await;
                }
                return Ok(InParts::Done(CopyResult::Vanished));
            }
            Err(err) if recorded.is_some() && !fresh && gone(&err) => {
                tracing::info!(key = %key.as_str(), error = %error_chain(&err), "the recorded upload is gone: its parts are sent again");
                if let Some(record) = recorded {
                    abort(ctx, key, &record).await;
                }
                object = None;
                continue;
            }
            Err(err) => return Err(err),
        };
        let completed = ctx.target.complete_upload(key, &upload, &tags).await;
        let meta = match completed {
            Ok(meta) => meta,
            Err(err) if gone_store(&err) => {
                // The parts are not what the record says (or a run that stopped right after
                // completing it left the record): abandoned, and all sent again, once.
                if let Some(record) = ctx.checkpointer.upload(key) {
                    abort(ctx, key, &record).await;
                }
                if recorded.is_some() && !fresh {
                    tracing::info!(key = %key.as_str(), error = %error_chain(&err), "the recorded upload cannot be completed: its parts are sent again");
                    object = None;
                    continue;
                }
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        };
        ctx.checkpointer
            .record(ProgressUpdate::UploadEnded { key: key.clone() });
        track.to(ObjectState::Copied);
        let target_said = reported_blake3(&meta);
        return match streamed {
            // Streamed from the first byte in order: verified as a whole copy is.
            Some(streamed) => {
                let verify = ctx.plan.options.verify;
                let said = (target_said, source_said);
                verified(ctx, key, track, observed, version, streamed, verify, said).await
            }
            // Continued: the whole source is read again, and the target checked against it.
            None => {
                let Some((bytes, hash)) = digest(&*ctx.source, key).await? else {
                    return Ok(InParts::Done(CopyResult::SourceChanged));
                };
                let streamed = Streamed {
                    bytes,
                    hash,
                    hashed: true,
                };
                let said = (target_said, Some((bytes, hash)));
                verified(
                    ctx,
                    key,
                    track,
                    observed,
                    version,
                    streamed,
                    VerifyMode::Checksum,
                    said,
                )
                .await
            }
        }
        .map(InParts::Done);
    }
    Err(Error::RunnerGone {
        job: ctx.shared.id.clone(),
    })
}

/// Whether `err` says the recorded upload cannot be continued: gone, or refused for good.
fn gone(err: &Error) -> bool {
    match err {
        Error::Store(err) => gone_store(err),
        _ => false,
    }
}

fn gone_store(err: &ferry_store::Error) -> bool {
    matches!(err, ferry_store::Error::UploadNotFound { .. })
        || err.kind() == ferry_store::ErrorKind::Permanent
}

/// How sending the parts ended.
enum Sent {
    /// Every part is stored: their tags, and what was streamed when it was the whole object
    /// from its first byte.
    All {
        tags: Vec<PartTag>,
        streamed: Option<Streamed>,
    },
    /// The source's version is no longer the one the parts were read from.
    Changed,
    /// The source is gone.
    Vanished,
}

/// An upload in parts: its id, the object's size and the size of its parts.
struct Upload {
    id: UploadId,
    size: u64,
    part_size: u64,
}

impl Upload {
    fn parts(&self) -> u32 {
        u32::try_from(self.size.div_ceil(self.part_size).max(1)).unwrap_or(u32::MAX)
    }

    /// Where part `part` (from 1) starts, and its length.
    fn part(&self, part: u32) -> (u64, u64) {
        let start = u64::from(part - 1) * self.part_size;
        (start, self.part_size.min(self.size - start))
    }
}

/// Sends the parts after those in `tags`, recording each one's tag as it is stored, in order.
///
/// The source is read once from the first part missing (`object` when that is the first
/// part, else a ranged read), in order, through the throttle and hashed as it goes; the
/// stream is cut into parts, and the next part starts as soon as the one before has taken
/// its last byte, with up to `Parts::in_flight` of them being stored at once (an object
/// store sends a part while the next one is read).
#[allow(clippy::too_many_arguments)]
async fn send_parts(
    ctx: &JobCtx,
    key: &ObjectKey,
    observed: Option<u64>,
    version: &Version,
    object: Option<Object>,
    upload: &Upload,
    mut tags: Vec<PartTag>,
) -> Result<Sent> {
    let shared = &*ctx.shared;
    let count = upload.parts();
    let first = u32::try_from(tags.len()).unwrap_or(u32::MAX) + 1;
    if first > count {
        return Ok(Sent::All {
            tags,
            streamed: None,
        });
    }
    let from = upload.part(first).0;
    let piece = match object {
        Some(object) if from == 0 => object,
        _ => match ctx.source.get_range(key, from, upload.size).await {
            Ok(piece) => piece,
            Err(err) if err.is_not_found() => return Ok(Sent::Vanished),
            Err(err) => return Err(err.into()),
        },
    };
    if piece.meta.version != *version || piece.meta.size != upload.size {
        return Ok(Sent::Changed);
    }
    let state = Mutex::new((StreamHash::Hashing(Box::new(blake3::Hasher::new())), 0u64));
    let stopped: Mutex<Option<Error>> = Mutex::new(None);
    let _streaming = Streaming::enter(shared);
    let fenced = observed.is_none();
    let body = read_ahead(ferry_store::checked(
        key.clone(),
        upload.size - from,
        piece.body,
    ));
    let mut body = Some(Rest {
        body: throttled(shared, body, &state, &stopped, fenced),
        carry: None,
    });
    let in_flight = ctx.engine.parts.in_flight.max(1);
    let mut sending = futures_util::stream::FuturesOrdered::new();
    let mut handed_back: Option<oneshot::Receiver<Rest<'_>>> = None;
    let mut next = first;
    loop {
        if next <= count
            && sending.len() < in_flight
            && let Some(rest) = body.take()
        {
            let (start, len) = upload.part(next);
            let (back, returned) = oneshot::channel();
            let part_body = cut(rest, len, back);
            let part = next;
            sending.push_back(async move {
                let stored = ctx
                    .target
                    .put_part(key, &upload.id, part, start, part_body)
                    .await;
                (part, stored)
            });
            handed_back = Some(returned);
            next += 1;
            continue;
        }
        if sending.is_empty() && handed_back.is_none() {
            break;
        }
        tokio::select! {
            Some((part, stored)) = sending.next() => {
                if let Some(err) = stopped.lock().take() {
                    return Err(err);
                }
                let tag = stored?;
                ctx.checkpointer.record(ProgressUpdate::UploadPart {
                    key: key.clone(),
                    part,
                    tag: tag.as_str().to_owned(),
                });
                // Saved soon, not waited for: a crash re-sends the parts not saved yet.
                ctx.checkpointer.save_soon()?;
                tags.push(tag);
            }
            returned = async {
                match handed_back.as_mut() {
                    Some(returned) => returned.await.ok(),
                    None => std::future::pending().await,
                }
            }, if handed_back.is_some() => {
                handed_back = None;
                // A part that did not take its whole length hands nothing back: its put
                // fails, and says why.
                body = returned;
            }
        }
    }
    if tags.len() != count as usize {
        // A part took less than its length without failing: the source's stream ended
        // early, which `exactly` reports; never complete an upload short of parts.
        return Err(ferry_store::Error::Truncated {
            key: key.clone(),
            expected: upload.size,
            got: u64::try_from(tags.len()).unwrap_or(u64::MAX) * upload.part_size,
        }
        .into());
    }
    let streamed = (first == 1).then(|| {
        let guard = state.lock();
        Streamed {
            bytes: guard.1,
            hash: guard.0.finalize(),
            hashed: true,
        }
    });
    Ok(Sent::All { tags, streamed })
}

/// The rest of the source's stream, and the bytes of a chunk that crossed into it.
struct Rest<'s> {
    body: BoxStream<'s, ferry_store::Result<Bytes>>,
    carry: Option<Bytes>,
}

/// A part: the first `len` bytes of `rest` (a chunk that crosses its end is split); the rest
/// is handed back through `back` once the part has taken its last byte.
fn cut<'s>(
    rest: Rest<'s>,
    len: u64,
    back: oneshot::Sender<Rest<'s>>,
) -> BoxStream<'s, ferry_store::Result<Bytes>> {
    Box::pin(futures_util::stream::unfold(
        (Some(rest), len, Some(back)),
        |(rest, left, back)| async move {
            let mut rest = rest?;
            if left == 0 {
                if let Some(back) = back {
                    let _ = back.send(rest);
                }
                return None;
            }
            let chunk = match rest.carry.take() {
                Some(chunk) => chunk,
                None => match rest.body.next().await {
                    Some(Ok(chunk)) => chunk,
                    // An error ends the part (and the copy); the end of the body before the
                    // part's end too (the source's size is checked: it cannot happen).
                    Some(Err(err)) => return Some((Err(err), (None, 0, None))),
                    None => return None,
                },
            };
            let mut chunk = chunk;
            if chunk.len() as u64 > left {
                rest.carry = Some(chunk.split_off(left as usize));
            }
            let left = left - chunk.len() as u64;
            Some((Ok(chunk), (Some(rest), left, back)))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_whole_chunks_and_never_more_than_s3_takes() {
        const MIB: u64 = 1 << 20;
        assert_eq!(part_size_for(50 << 30, 16 * MIB, MIB), 16 * MIB);
        // 500 GiB in 16 MiB parts would be 32,000 parts.
        let big = part_size_for(500 << 30, 16 * MIB, MIB);
        assert!((500u64 << 30).div_ceil(big) <= MAX_PARTS);
        assert_eq!(big % MIB, 0);
        assert_eq!(part_size_for(10, 0, MIB), MIB);
    }
}
