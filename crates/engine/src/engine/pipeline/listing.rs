//! The keys a job moves, in key order: its explicit keys, or listings of its range (SPEC §2, I4).

use std::borrow::Cow;
use std::sync::Arc;

use ferry_checkpoint::Progress;
use ferry_types::{KeyRange, ObjectKey, ObjectSelection};
use futures_util::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use ferry_store::{BoxStream, ObjectMeta, Store};

use super::JobCtx;

/// Keys of the plan, lazily, in key order; already-done keys are left out (I4).
/// `after`: only keys after this one (a listing started again after a transient error).
pub(super) fn key_stream(
    ctx: &JobCtx,
    progress: &Progress,
    after: Option<&ObjectKey>,
) -> KeyStream {
    if let Some(failed) = &ctx.retry_keys {
        // Failed keys may lie under the watermark: they are not filtered by `is_done`.
        return Box::pin(futures_util::stream::iter(
            failed.clone().into_iter().map(size_unknown),
        ));
    }
    let progress = Arc::new(progress.clone());
    let stream: KeyStream = match &ctx.plan.objects {
        ObjectSelection::Keys(keys) => {
            let mut keys = keys.clone();
            keys.sort();
            keys.dedup();
            Box::pin(futures_util::stream::iter(
                keys.into_iter().map(size_unknown),
            ))
        }
        ObjectSelection::Prefix(prefix) => listed_keys(ctx, &progress, &unbounded(prefix), after),
        ObjectSelection::Range(range) => listed_keys(ctx, &progress, range, after),
    };
    Box::pin(stream.try_filter(move |listed| std::future::ready(!progress.is_done(&listed.key))))
}

/// A key to move, in a job's key order.
#[derive(Debug)]
pub(super) struct Listed {
    pub(super) key: ObjectKey,
    /// Its size, when a listing of the source gave it.
    pub(super) size: Option<u64>,
}

/// `key`, its size unknown (explicit keys, and keys a crashed run left journaled).
fn size_unknown(key: ObjectKey) -> Result<Listed> {
    Ok(Listed { key, size: None })
}

/// The range a listed selection covers (a prefix: every key of it); `None` for explicit keys.
pub(crate) fn listed_range(objects: &ObjectSelection) -> Option<Cow<'_, KeyRange>> {
    match objects {
        ObjectSelection::Keys(_) => None,
        ObjectSelection::Prefix(prefix) => Some(Cow::Owned(unbounded(prefix))),
        ObjectSelection::Range(range) => Some(Cow::Borrowed(range)),
    }
}

/// A prefix selection as a range: every key of the prefix.
pub(super) fn unbounded(prefix: &str) -> KeyRange {
    KeyRange {
        prefix: prefix.to_owned(),
        after: None,
        until: None,
    }
}

/// The keys of a listed selection (`range`) after `after` (when given), in key order: the
/// source's listing, the keys a crashed run flipped, and those it had begun to copy
/// (`copying`, the record's copy intents).
/// The sizes of the source's keys that are not done yet are added to the job's listed bytes
/// (its total, once the listing ends).
pub(super) fn listed_keys(
    ctx: &JobCtx,
    progress: &Arc<Progress>,
    range: &KeyRange,
    after: Option<&ObjectKey>,
) -> KeyStream {
    let copying = &progress.copying;
    let source = sized_keys(ctx, progress, range, after);
    if ctx.committed.is_empty() && copying.is_empty() {
        return source;
    }
    // A crashed run may have cleaned a source it had not yet recorded done: such a key is
    // only on the target now, journaled as flipped, and must still be recorded (I4). And a
    // key it had begun to copy may be gone from the source since, its copy left on the
    // target: taken up again, it ends skipped and its copy removed (I3, I8).
    let mut extra: Vec<&ObjectKey> = ctx.committed.keys().chain(copying.iter()).collect();
    extra.sort();
    extra.dedup();
    let flipped: Vec<Result<Listed>> = extra
        .into_iter()
        .filter(|key| range.contains(key))
        .filter(|key| after.is_none_or(|after| *key > after))
        .cloned()
        .map(size_unknown)
        .collect();
    merge_keys(source, Box::pin(futures_util::stream::iter(flipped)))
}

/// The source's keys in `range` after `after` that are not done, in key order, each counted
/// by its listed size in the job's `listed_bytes`. (A listing started again after a transient
/// error may count a key the merge had read ahead twice: a total off by an object, at worst.)
fn sized_keys(
    ctx: &JobCtx,
    progress: &Arc<Progress>,
    range: &KeyRange,
    after: Option<&ObjectKey>,
) -> KeyStream {
    let progress = Arc::clone(progress);
    sized_range(ctx, range, after, move |key| !progress.is_done(key))
}

/// The source's keys in `range` after `after` that `keep` accepts, in key order, each counted
/// by its listed size in the job's `listed_bytes`: the first listing's keys and a drain's
/// re-listings' alike make up the job's total.
pub(super) fn sized_range(
    ctx: &JobCtx,
    range: &KeyRange,
    after: Option<&ObjectKey>,
    keep: impl Fn(&ObjectKey) -> bool + Send + 'static,
) -> KeyStream {
    let shared = Arc::clone(&ctx.shared);
    Box::pin(
        list_metas(&*ctx.source, range, after).try_filter_map(move |meta| {
            let keep = keep(&meta.key);
            if keep {
                shared
                    .listed_bytes
                    .fetch_add(meta.size, std::sync::atomic::Ordering::Relaxed);
            }
            std::future::ready(Ok(keep.then_some(Listed {
                key: meta.key,
                size: Some(meta.size),
            })))
        }),
    )
}

/// The keys of `store` in `range` and after `after` (when given), in key order. The listing
/// starts after the later of the two lower bounds and stops at the first key past
/// `range.until`: the rest of the store is not listed.
pub(super) fn list_range(
    store: &dyn Store,
    range: &KeyRange,
    after: Option<&ObjectKey>,
) -> BoxStream<'static, Result<ObjectKey>> {
    Box::pin(list_metas(store, range, after).map_ok(|meta| meta.key))
}

/// [`list_range`], with each key's metadata.
pub(crate) fn list_metas(
    store: &dyn Store,
    range: &KeyRange,
    after: Option<&ObjectKey>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    let start = match (range.after.as_ref(), after) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let metas = store.list(&range.prefix, start).map_err(Error::from);
    match range.until.clone() {
        None => Box::pin(metas),
        Some(until) => {
            Box::pin(metas.try_take_while(move |meta| std::future::ready(Ok(meta.key <= until))))
        }
    }
}

pub(super) type KeyStream = BoxStream<'static, Result<Listed>>;

/// The union of two key-ordered streams, in key order, each key once (with the size `a`
/// gave, when both have it). An error ends it.
pub(super) fn merge_keys(a: KeyStream, b: KeyStream) -> KeyStream {
    let a = a.fuse();
    let b = b.fuse();
    let state = (a, b, None::<Listed>, None::<Listed>, false);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut a, mut b, mut pa, mut pb, failed)| async move {
            if failed {
                return None;
            }
            if pa.is_none() {
                match a.next().await {
                    Some(Ok(key)) => pa = Some(key),
                    Some(Err(err)) => return Some((Err(err), (a, b, pa, pb, true))),
                    None => {}
                }
            }
            if pb.is_none() {
                match b.next().await {
                    Some(Ok(key)) => pb = Some(key),
                    Some(Err(err)) => return Some((Err(err), (a, b, pa, pb, true))),
                    None => {}
                }
            }
            let key = match (pa.take(), pb.take()) {
                (None, None) => return None,
                (Some(x), None) => x,
                (None, Some(y)) => y,
                (Some(x), Some(y)) => match x.key.cmp(&y.key) {
                    std::cmp::Ordering::Less => {
                        pb = Some(y);
                        x
                    }
                    std::cmp::Ordering::Greater => {
                        pa = Some(x);
                        y
                    }
                    std::cmp::Ordering::Equal => x,
                },
            };
            Some((Ok(key), (a, b, pa, pb, false)))
        },
    ))
}
