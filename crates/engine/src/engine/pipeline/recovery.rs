//! What a resumed job does before its runner starts: settle the flip journal against the stores,
//! and forward again the keys the stopped run had moved (I2, I3).

use std::collections::{BTreeMap, HashMap};

use ferry_checkpoint::{FlipRecord, KeyHasher, Progress, ProgressUpdate};
use ferry_types::{MigrationPlan, ObjectKey, ObjectSelection};
use futures_util::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use ferry_store::{BoxStream, Store};

use super::flip::{Flip, flip};
use super::listing::{list_range, listed_range};
use super::retry::retrying;
use super::verify::digest;

/// `op`, run again after each transient error as the plan's retry policy allows: each store
/// call of a resume on its own, so that a journal of many keys is not settled only when all
/// its calls succeed in one pass. (Before the job's metrics exist: not counted.)
async fn retried<'a, T, E, F>(plan: &MigrationPlan, op: impl FnMut() -> F) -> Result<T>
where
    F: std::future::Future<Output = Result<T, E>> + 'a,
    E: Into<Error>,
{
    let uncounted = metrics::Counter::noop();
    retrying(&plan.options.retry, "resume", op, || false, &uncounted)
        .await
        .map_err(|(_, err)| err)
}

/// On resume, before the runner starts: settles the record's flip journal (SPEC I2, I3).
///
/// A committed entry was flipped: it is registered and flipped to the target again. An
/// intent (journaled, then maybe flipped) is settled by what the stores hold against the
/// digest of the copy it announced. The copy was synced before the intent was saved, the
/// engine never writes a journaled key's target while its intent stands, and after a flip
/// no write reaches the source, so:
/// - the target holds other bytes, or nothing: only a client write or delete routed through
///   the flip does that, so the flip was made and the target serves the key;
/// - the target holds the copy and so does the source: both serve the same bytes; the
///   target does, as if flipped;
/// - the target holds the copy and the source changed: the flip was refused (a write since
///   the copy), the source serves the key;
/// - the target holds the copy and the source is gone: the flip was refused by a delete:
///   the copy is deleted too, absent on both sides, never resurrected.
///
/// Returns the changes to record (every intent becomes committed or dropped) and the
/// committed flips with their digests.
pub(crate) async fn resolve_flips(
    table: &ferry_forwarding::Table,
    plan: &MigrationPlan,
    source: &dyn Store,
    target: &dyn Store,
    journal: &HashMap<ObjectKey, FlipRecord, KeyHasher>,
) -> Result<(Vec<ProgressUpdate>, BTreeMap<ObjectKey, [u8; 32]>)> {
    let mut updates = Vec::new();
    let mut committed = BTreeMap::new();
    // In key order, as the journal was before it was a hash map (each key is settled on
    // its own: the order only makes runs repeatable).
    let mut journal: Vec<_> = journal.iter().collect();
    journal.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (key, flip) in journal {
        let to_target = if flip.committed {
            true
        } else {
            let copy = |found: Option<(u64, blake3::Hash)>| {
                found.map(|(_, hash)| *hash.as_bytes() == flip.digest)
            };
            match copy(retried(plan, || digest(target, key)).await?) {
                // Changed or deleted through the flip.
                Some(false) | None => true,
                Some(true) => match copy(retried(plan, || digest(source, key)).await?) {
                    Some(same) => same,
                    None => {
                        retried(plan, || target.delete(key)).await?;
                        false
                    }
                },
            }
        };
        if to_target {
            forward(table, plan, key);
            committed.insert(key.clone(), flip.digest);
            updates.push(ProgressUpdate::FlipCommitted { key: key.clone() });
        } else {
            updates.push(ProgressUpdate::FlipDropped { key: key.clone() });
        }
    }
    Ok((updates, committed))
}

/// Recorded done, and not as failed.
/// Whether `key` was moved by the job as far as its record tells: done, not failed, and not
/// a key the target held before the job that the job never copied over.
pub(super) fn done_not_failed(progress: &Progress, key: &ObjectKey) -> bool {
    progress.is_done(key)
        && !progress.failed.contains_key(key)
        && !progress.preexisting.contains(key)
}

/// Whether the record says nothing happened yet: no object done, failed, flipped or being
/// copied. The target then holds nothing of the job's.
pub(crate) fn untouched(progress: &Progress) -> bool {
    progress.watermark.is_none()
        && progress.done_above.is_empty()
        && progress.done_objects == 0
        && progress.failed.is_empty()
        && progress.flips.is_empty()
        && progress.copying.is_empty()
}

/// The keys of the plan's selection that `target` holds: before the job touched it, these
/// are not the job's (see `Progress::preexisting`).
pub(crate) async fn preexisting(
    plan: &MigrationPlan,
    target: &dyn Store,
) -> Result<std::collections::BTreeSet<ObjectKey>> {
    held_by(plan, target, |_| true).try_collect().await
}

/// The keys of `plan`'s selection that `target` holds, among those `wanted` accepts: its
/// range listed (only the range: a key of the target outside it is another job's), or its
/// explicit keys looked up, 16 at a time.
fn held_by<'a>(
    plan: &'a MigrationPlan,
    target: &'a dyn Store,
    wanted: impl Fn(&ObjectKey) -> bool + Send + 'a,
) -> BoxStream<'a, Result<ObjectKey>> {
    match (listed_range(&plan.objects), &plan.objects) {
        (Some(range), _) => Box::pin(
            list_range(target, &range, None).try_filter(move |key| std::future::ready(wanted(key))),
        ),
        (None, ObjectSelection::Keys(keys)) => {
            Box::pin(
                futures_util::stream::iter(keys)
                    .filter(move |key| std::future::ready(wanted(key)))
                    .map(move |key| async move {
                        Ok::<_, Error>(target.head(key).await?.map(|m| m.key))
                    })
                    .buffered(16)
                    .try_filter_map(|key| std::future::ready(Ok(key))),
            )
        }
        (None, _) => Box::pin(futures_util::stream::empty()),
    }
}

/// Registers `key` and flips it to the plan's target ([`flip`], unjournaled: the caller
/// records what a resumed run settles); whether it was (a key the table already has an
/// entry for is left as it is).
pub(crate) fn forward(
    table: &ferry_forwarding::Table,
    plan: &MigrationPlan,
    key: &ObjectKey,
) -> bool {
    let Some(job) = plan.id.as_ref() else {
        return false;
    };
    // A write racing the registration refuses the flip, as it would any other.
    table
        .register_for(key, plan.source, plan.target, job)
        .is_ok()
        && table
            .generation(key.as_str())
            .is_some_and(|generation| matches!(flip(table, key, generation), Flip::Made))
}

/// On resume, before the runner starts: reloads into the forwarding table the objects a run
/// that stopped had moved and recorded done, so that reads go on being served by the target
/// after a restart (I2): a key recorded done that the target holds was flipped (skipped keys
/// are absent from the target). Keys are found in the target's key-ordered listing (prefix
/// and range plans; a range plan lists only its range) or with `head` (explicit keys), a key
/// at a time; a key the table already has an entry for is left as it is. Keys not recorded
/// done are settled by the flip journal ([`resolve_flips`]). Returns how many entries were
/// loaded.
///
/// A key recorded failed is not loaded even under the watermark (which failed keys pass):
/// its copy on the target, if any, was never flipped, and may be stale.
pub(crate) async fn reload_forwarded(
    table: &ferry_forwarding::Table,
    plan: &MigrationPlan,
    target: &dyn Store,
    progress: &Progress,
) -> Result<u64> {
    let mut loaded = 0;
    let mut held = held_by(plan, target, |key| done_not_failed(progress, key));
    while let Some(key) = held.try_next().await? {
        if forward(table, plan, &key) {
            loaded += 1;
        }
    }
    Ok(loaded)
}
