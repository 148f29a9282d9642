//! Digests of what a store holds, for verify and for the source check before a delete.

use std::sync::Arc;

use ferry_types::{CleanupPolicy, ObjectKey, PlanOptions, VerifyMode};
use futures_util::StreamExt;

use crate::error::{Error, Result};
use ferry_store::{Checksum, ObjectMeta, Store};

use super::JobCtx;
use super::copy::{AbortOnDrop, read_ahead};

/// Whether the source and the target hold the same bytes under `key` (both streamed through
/// blake3, a chunk at a time). A side without the object is "not the same".
pub(super) async fn same_content(ctx: &JobCtx, key: &ObjectKey) -> Result<bool> {
    let source = digest(&*ctx.source, key).await?;
    let target = digest(&*ctx.target, key).await?;
    Ok(source.is_some() && source == target)
}

/// The size and BLAKE3 a store reported for an object, if it reported a BLAKE3.
pub(super) fn reported_blake3(meta: &ObjectMeta) -> Option<(u64, blake3::Hash)> {
    match meta.checksum {
        Some(Checksum::Blake3(hash)) => Some((meta.size, blake3::Hash::from_bytes(hash))),
        _ => None,
    }
}

/// Objects at least this large are re-read by two tasks at once at verify, so the two
/// sides hash on two cores (smaller ones gain less than a task costs).
pub(super) const PARALLEL_VERIFY_BYTES: u64 = 8 << 20;

pub(super) type Digest = Result<Option<(u64, blake3::Hash)>>;

/// Whether the verify of a copy made under `options` reads again a source that reported no
/// checksum: always under checksum verify, and before any cleanup may delete it (I1: never
/// on the word of the one read that made the copy).
pub(super) fn reads_source_again(options: &PlanOptions) -> bool {
    options.verify == VerifyMode::Checksum || options.cleanup != CleanupPolicy::Never
}

/// [`digest_unless_said`] of the target and the source of `key` (of `bytes` bytes), at once:
/// the caller has not the word of both for them.
pub(super) async fn digests(
    ctx: &JobCtx,
    key: &ObjectKey,
    bytes: u64,
    target_said: Option<(u64, blake3::Hash)>,
    source_said: Option<(u64, blake3::Hash)>,
) -> (Digest, Digest) {
    if bytes < PARALLEL_VERIFY_BYTES {
        return tokio::join!(
            digest_unless_said(&*ctx.target, key, target_said),
            digest_unless_said(&*ctx.source, key, source_said)
        );
    }
    let spawn = |store: &Arc<dyn Store>, said| {
        let (store, key) = (Arc::clone(store), key.clone());
        AbortOnDrop::<Digest>(tokio::spawn(async move {
            digest_unless_said(&*store, &key, said).await
        }))
    };
    let (target, source) = (
        spawn(&ctx.target, target_said),
        spawn(&ctx.source, source_said),
    );
    let gone = || -> Digest {
        Err(Error::RunnerGone {
            job: ctx.shared.id.clone(),
        })
    };
    let (target, source) = tokio::join!(target.join(), source.join());
    (target.unwrap_or_else(gone), source.unwrap_or_else(gone))
}

/// `said` when the store reported it, else [`digest`].
pub(super) async fn digest_unless_said(
    store: &dyn Store,
    key: &ObjectKey,
    said: Option<(u64, blake3::Hash)>,
) -> Result<Option<(u64, blake3::Hash)>> {
    match said {
        Some(said) => Ok(Some(said)),
        // Boxed: its hasher and stream would otherwise take room in every object's task.
        None => Box::pin(digest(store, key)).await,
    }
}

/// The size and blake3 hash of `key` on `store`, streamed a chunk at a time (I7); `None` when
/// the store has no such object. A body shorter or longer than its metadata is an error.
pub(super) async fn digest(
    store: &dyn Store,
    key: &ObjectKey,
) -> Result<Option<(u64, blake3::Hash)>> {
    let object = match store.get(key).await {
        Ok(object) => object,
        Err(err) if err.is_not_found() => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    // Objects of a chunk or two gain nothing from reading ahead.
    let ahead = object.meta.size > 2 << 20;
    let mut body = object.checked_body();
    if ahead {
        body = read_ahead(body);
    }
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(Some((size, hasher.finalize())))
}
