//! The keys a job moves, in key order: its explicit keys, or listings of its range (SPEC §2, I4).

use std::borrow::Cow;

use ferry_checkpoint::Progress;
use ferry_types::{KeyRange, ObjectKey, ObjectSelection};
use futures_util::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use ferry_store::{BoxStream, Store};

use super::JobCtx;

/// Keys of the plan, lazily, in key order; already-done keys are left out (I4).
/// `after`: only keys after this one (a listing started again after a transient error).
pub(super) fn key_stream(
    ctx: &JobCtx,
    progress: &Progress,
    after: Option<&ObjectKey>,
) -> BoxStream<'static, Result<ObjectKey>> {
    if let Some(failed) = &ctx.retry_keys {
        // Failed keys may lie under the watermark: they are not filtered by `is_done`.
        return Box::pin(futures_util::stream::iter(
            failed.clone().into_iter().map(Ok),
        ));
    }
    let progress = progress.clone();
    let stream: KeyStream = match &ctx.plan.objects {
        ObjectSelection::Keys(keys) => {
            let mut keys = keys.clone();
            keys.sort();
            keys.dedup();
            Box::pin(futures_util::stream::iter(keys.into_iter().map(Ok)))
        }
        ObjectSelection::Prefix(prefix) => {
            listed_keys(ctx, &progress.copying, &unbounded(prefix), after)
        }
        ObjectSelection::Range(range) => listed_keys(ctx, &progress.copying, range, after),
    };
    Box::pin(stream.try_filter(move |key| std::future::ready(!progress.is_done(key))))
}

/// The range a listed selection covers (a prefix: every key of it); `None` for explicit keys.
pub(super) fn listed_range(objects: &ObjectSelection) -> Option<Cow<'_, KeyRange>> {
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
pub(super) fn listed_keys(
    ctx: &JobCtx,
    copying: &std::collections::BTreeSet<ObjectKey>,
    range: &KeyRange,
    after: Option<&ObjectKey>,
) -> KeyStream {
    let source = list_range(&*ctx.source, range, after);
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
    let flipped: Vec<Result<ObjectKey>> = extra
        .into_iter()
        .filter(|key| range.contains(key))
        .filter(|key| after.is_none_or(|after| *key > after))
        .cloned()
        .map(Ok)
        .collect();
    merge_keys(source, Box::pin(futures_util::stream::iter(flipped)))
}

/// The keys of `store` in `range` and after `after` (when given), in key order. The listing
/// starts after the later of the two lower bounds and stops at the first key past
/// `range.until`: the rest of the store is not listed.
pub(super) fn list_range(
    store: &dyn Store,
    range: &KeyRange,
    after: Option<&ObjectKey>,
) -> KeyStream {
    let start = match (range.after.as_ref(), after) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let keys = store
        .list(&range.prefix, start)
        .map_ok(|meta| meta.key)
        .map_err(Error::from);
    match range.until.clone() {
        None => Box::pin(keys),
        Some(until) => {
            Box::pin(keys.try_take_while(move |key| std::future::ready(Ok(*key <= until))))
        }
    }
}

pub(super) type KeyStream = BoxStream<'static, Result<ObjectKey>>;

/// The union of two key-ordered streams, in key order, each key once. An error ends it.
pub(super) fn merge_keys(a: KeyStream, b: KeyStream) -> KeyStream {
    let a = a.fuse();
    let b = b.fuse();
    let state = (a, b, None::<ObjectKey>, None::<ObjectKey>, false);
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
                (Some(x), Some(y)) => match x.cmp(&y) {
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
