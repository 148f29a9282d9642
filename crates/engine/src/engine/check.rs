//! The runner of a check job ([`JobKind::Check`](ferry_types::JobKind::Check)): compares
//! the two sides of a plan and writes, forwards and deletes nothing.
//!
//! Both sides are listed in key order and merged (an explicit key list is looked up with
//! `head` on both sides instead); each key is then judged by [`compare`]: only on the source
//! → missing on the target; only on the target → extra on the target; sizes differ →
//! differs; else the stores' checksums when both reported one of the same algorithm, or
//! BLAKE3 of both contents, streamed a chunk at a time through the job's throttle (I7).
//! Up to `concurrency` keys are compared at once.
//!
//! A key that matches is recorded done, one that differs failed (with
//! [`FailureKind::MissingOnTarget`], [`ExtraOnTarget`](FailureKind::ExtraOnTarget) or
//! [`Differs`](FailureKind::Differs)), one absent on both sides (an explicit key, or one
//! that vanished meanwhile) skipped; the watermark moves in key order over the keys judged,
//! so a resumed check starts after it and compares again only the keys that were in flight
//! (I4). Pause, cancel and shutdown act as on a migrate job; a cancelled or shut-down check
//! drops its compares in flight (they wrote nothing).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use ferry_checkpoint::{Checkpointer, Progress, ProgressUpdate};
use ferry_store::{BoxStream, ObjectMeta, Store};
use ferry_types::{
    FailureKind, JobSnapshot, JobStatus, KeyRange, MigrationPlan, ObjectKey, ObjectSelection,
    ObjectState,
};
use futures_util::{StreamExt, TryStreamExt};
use tokio::task::JoinSet;

use super::EngineInner;
use super::job::{JobHandle, JobShared, Live, finish};
use super::pipeline::{Streaming, list_metas, listed_range, retrying};
use crate::error::{Error, Result, chain};

/// How far, in keys per compare slot, dispatch may run past a key that holds the watermark
/// (as the migrate pipeline's window): the record's done set above the watermark stays
/// bounded, and a resume compares again at most that many keys.
const LAG_PER_SLOT: usize = 16;

/// What a check job's runner needs.
pub(crate) struct CheckCtx {
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) plan: MigrationPlan,
    pub(crate) source: Arc<dyn Store>,
    pub(crate) target: Arc<dyn Store>,
    pub(crate) shared: Arc<JobShared>,
    pub(crate) checkpointer: Arc<Checkpointer>,
    /// A `retry_failed` run: exactly these keys (the differences found before) are compared
    /// again.
    pub(crate) retry_keys: Option<Vec<ObjectKey>>,
}

/// One key and what the listings said of it (`Head`: look it up on both sides).
#[derive(Debug)]
enum Sides {
    Listed(Option<ObjectMeta>, Option<ObjectMeta>),
    Head,
}

/// How one key compared.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Same size and content (`bytes`: its size).
    Same { bytes: u64 },
    /// Absent on both sides.
    Absent,
    /// A difference, of `kind`, said in `what` (`missing on target`, `size 10 vs 12`, …).
    Differs { kind: FailureKind, what: String },
}

/// A compare's end: the key and its verdict, or the error it gave up on (with attempts).
type Judged = (ObjectKey, std::result::Result<Verdict, (u32, Error)>);

/// Runs the check of `ctx` on a background task, from `progress` (its record's).
pub(crate) fn spawn(ctx: CheckCtx, progress: Progress) -> JobHandle {
    let span = tracing::info_span!(
        "job",
        job = %ctx.shared.id,
        source = %ctx.plan.source,
        target = %ctx.plan.target,
        retry = ctx.retry_keys.is_some(),
        kind = "check",
    );
    let shared = Arc::clone(&ctx.shared);
    let task = tokio::spawn(tracing::Instrument::instrument(
        run(Arc::new(ctx), progress),
        span,
    ));
    JobHandle::new(shared, task)
}

/// Runs the check to its end.
async fn run(ctx: Arc<CheckCtx>, progress: Progress) -> Result<JobSnapshot> {
    let _live = Live {
        engine: &ctx.engine,
        shared: &ctx.shared,
    };
    let result = drive(&ctx, &progress).await;
    finish(&ctx.engine, &ctx.shared, &ctx.checkpointer, result).await
}

/// The loop: keys dispatched in key order to at most `concurrency` compares, their verdicts
/// recorded as they end, the watermark moved over the keys judged; pause, cancel, shutdown.
async fn drive(ctx: &Arc<CheckCtx>, progress: &Progress) -> Result<()> {
    let shared = &ctx.shared;
    let checkpointer = &*ctx.checkpointer;
    let concurrency = ctx.plan.options.concurrency.get();
    let window = concurrency * LAG_PER_SLOT;
    let retry = &ctx.plan.options.retry;
    let mut keys = pairs(ctx, progress, None);
    let mut last_key: Option<ObjectKey> = None;
    let mut list_attempts = 0u32;
    let mut exhausted = false;
    let mut set: JoinSet<Judged> = JoinSet::new();
    let mut order = Order::default();
    let mut paused_rx = shared.paused.subscribe();
    let mut cancelled_rx = shared.cancelled.subscribe();
    let mut was_paused = false;
    // Keys given to compares by this run, and how many of them were recorded failed before
    // it (counted already): a listed check's total is known once its listing ends.
    let (mut given, mut given_again) = (0u64, 0u64);
    let failed_before: HashSet<ObjectKey> = progress.failed.keys().cloned().collect();
    loop {
        let paused = *paused_rx.borrow_and_update();
        cancelled_rx.borrow_and_update();
        if shared.is_shutting_down() {
            // Compares wrote nothing: those in flight are dropped and run again on resume.
            set.abort_all();
            while set.join_next().await.is_some() {}
            checkpointer.set_status(if was_paused {
                JobStatus::Paused
            } else {
                JobStatus::Running
            });
            checkpointer.flush().await?;
            return Err(Error::ShutDown {
                job: shared.id.clone(),
            });
        }
        if shared.is_cancelled() {
            set.abort_all();
            while set.join_next().await.is_some() {}
            checkpointer.flush().await?;
            return Ok(());
        }
        if paused && !was_paused {
            checkpointer.set_status(JobStatus::Paused);
            checkpointer.flush().await?;
            shared.publish(|s| s.status = JobStatus::Paused);
            was_paused = true;
        } else if !paused && was_paused {
            checkpointer.set_status(JobStatus::Running);
            checkpointer.flush().await?;
            shared.publish(|s| s.status = JobStatus::Running);
            was_paused = false;
        }
        while !paused && !exhausted && set.len() < concurrency && !order.lagging(window) {
            match keys.next().await {
                Some(Ok((key, sides))) => {
                    list_attempts = 0;
                    last_key = Some(key.clone());
                    given += 1;
                    given_again += u64::from(failed_before.contains(&key));
                    order.dispatched.push_back(key.clone());
                    order.flying.insert(key.clone());
                    shared.enter_flight();
                    let (ctx, span) = (
                        Arc::clone(ctx),
                        tracing::debug_span!("compare", key = %key.as_str()),
                    );
                    set.spawn(tracing::Instrument::instrument(
                        async move {
                            let verdict = judge(&ctx, &key, sides).await;
                            (key, verdict)
                        },
                        span,
                    ));
                }
                Some(Err(err)) if err.is_transient() && retry.should_retry(list_attempts + 1) => {
                    list_attempts += 1;
                    tracing::warn!(what = "list", attempt = list_attempts, error = %chain(&err), "transient error, retrying");
                    tokio::time::sleep(retry.backoff(list_attempts, 0.5)).await;
                    // Only a listing fails: list again after the last key given.
                    keys = pairs(ctx, progress, last_key.as_ref());
                }
                Some(Err(err)) => {
                    set.abort_all();
                    while set.join_next().await.is_some() {}
                    checkpointer.flush().await?;
                    return Err(err);
                }
                None => {
                    exhausted = true;
                    if ctx.retry_keys.is_none()
                        && !matches!(ctx.plan.objects, ObjectSelection::Keys(_))
                    {
                        let before = progress.done_objects + failed_before.len() as u64;
                        let total = before + given - given_again;
                        shared.publish(|s| s.total_objects = Some(total));
                    }
                }
            }
        }
        if exhausted && set.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = set.join_next() => {
                let ended = std::iter::once(joined)
                    .chain(std::iter::from_fn(|| set.try_join_next()))
                    .take(concurrency);
                for joined in ended {
                    shared.leave_flight();
                    let Ok((key, verdict)) = joined else {
                        return Err(Error::RunnerGone { job: shared.id.clone() });
                    };
                    if let Err((_, Error::Cancelled { .. })) = verdict {
                        // Stopped by the cancel, not judged: a resume compares it again.
                        continue;
                    }
                    record(ctx, &failed_before, &key, verdict);
                    order.flying.remove(&key);
                    order.finished.insert(key);
                }
                if let Some(watermark) = order.advance() && ctx.retry_keys.is_none() {
                    checkpointer.record(ProgressUpdate::Watermark(watermark));
                }
            }
            _ = paused_rx.changed() => {}
            _ = cancelled_rx.changed() => {}
        }
    }
    checkpointer.flush().await?;
    Ok(())
}

/// Records one key's verdict in the checkpoint and the snapshot, and sends its event.
fn record(
    ctx: &CheckCtx,
    failed_before: &HashSet<ObjectKey>,
    key: &ObjectKey,
    verdict: std::result::Result<Verdict, (u32, Error)>,
) {
    let shared = &ctx.shared;
    let was_failed = failed_before.contains(key);
    let (update, state) = match verdict {
        Ok(Verdict::Same { bytes }) => (
            ProgressUpdate::Done {
                key: key.clone(),
                bytes,
            },
            ObjectState::Done,
        ),
        Ok(Verdict::Absent) => (
            ProgressUpdate::Skipped { key: key.clone() },
            ObjectState::Skipped,
        ),
        Ok(Verdict::Differs { kind, what }) => failed(key, 1, what, kind),
        Err((attempts, err)) => failed(key, attempts, chain(&err), err.failure_kind()),
    };
    let (done, bytes, skipped, differs) = match &update {
        ProgressUpdate::Done { bytes, .. } => (1, *bytes, 0, false),
        ProgressUpdate::Skipped { .. } => (1, 0, 1, false),
        _ => (0, 0, 0, true),
    };
    ctx.checkpointer.record(update);
    shared.metrics.bytes_done(bytes);
    shared.emit(key, state);
    shared.publish(|s| {
        s.done_objects += done;
        s.done_bytes += bytes;
        s.skipped_objects += skipped;
        match (differs, was_failed) {
            (true, false) => s.failed_objects += 1,
            (false, true) => s.failed_objects = s.failed_objects.saturating_sub(1),
            _ => {}
        }
    });
}

fn failed(
    key: &ObjectKey,
    attempts: u32,
    error: String,
    kind: FailureKind,
) -> (ProgressUpdate, ObjectState) {
    let state = ObjectState::Failed {
        attempts,
        last_error: error.clone(),
    };
    let update = ProgressUpdate::Failed {
        key: key.clone(),
        attempts,
        error,
        kind,
    };
    (update, state)
}

/// The keys dispatched in key order and not yet under the watermark.
#[derive(Default)]
struct Order {
    dispatched: VecDeque<ObjectKey>,
    flying: HashSet<ObjectKey>,
    finished: HashSet<ObjectKey>,
}

impl Order {
    /// Whether dispatch must wait: `window` keys are past the watermark and the oldest is
    /// still being compared.
    fn lagging(&self, window: usize) -> bool {
        self.dispatched.len() >= window
            && self
                .dispatched
                .front()
                .is_some_and(|oldest| self.flying.contains(oldest))
    }

    /// Takes the finished keys at the front off; the last of them is the new watermark.
    fn advance(&mut self) -> Option<ObjectKey> {
        let mut watermark = None;
        while let Some(front) = self.dispatched.front() {
            if !self.finished.remove(front) {
                break;
            }
            watermark = self.dispatched.pop_front();
        }
        watermark
    }
}

/// Compares `key`, retrying transient store errors as the plan allows.
async fn judge(
    ctx: &CheckCtx,
    key: &ObjectKey,
    sides: Sides,
) -> std::result::Result<Verdict, (u32, Error)> {
    let sides = &sides;
    retrying(
        &ctx.plan.options.retry,
        "compare",
        || compare(ctx, key, sides),
        || ctx.shared.is_cancelled(),
        &ctx.shared.metrics.retries,
    )
    .await
}

/// One key's verdict: by presence, by size, by the stores' checksums, else by content.
async fn compare(ctx: &CheckCtx, key: &ObjectKey, sides: &Sides) -> Result<Verdict> {
    let (source, target) = match sides {
        Sides::Listed(source, target) => (source.clone(), target.clone()),
        Sides::Head => tokio::try_join!(ctx.source.head(key), ctx.target.head(key))?,
    };
    let (source, target) = match (source, target) {
        (None, None) => return Ok(Verdict::Absent),
        (Some(_), None) => return Ok(missing()),
        (None, Some(_)) => return Ok(extra()),
        (Some(source), Some(target)) => (source, target),
    };
    if source.size != target.size {
        return Ok(Verdict::Differs {
            kind: FailureKind::Differs,
            what: format!("size {} vs {}", source.size, target.size),
        });
    }
    if let (Some(a), Some(b)) = (&source.checksum, &target.checksum)
        && a.algorithm() == b.algorithm()
    {
        return Ok(match a == b {
            true => Verdict::Same { bytes: source.size },
            false => content_differs(a.algorithm()),
        });
    }
    let shared = &*ctx.shared;
    let (source, target) = tokio::try_join!(
        digest(shared, &*ctx.source, key),
        digest(shared, &*ctx.target, key)
    )?;
    Ok(match (source, target) {
        (None, None) => Verdict::Absent,
        (Some(_), None) => missing(),
        (None, Some(_)) => extra(),
        (Some(a), Some(b)) if a.0 != b.0 => Verdict::Differs {
            kind: FailureKind::Differs,
            what: format!("size {} vs {}", a.0, b.0),
        },
        (Some(a), Some(b)) if a.1 != b.1 => content_differs("blake3"),
        (Some(a), Some(_)) => Verdict::Same { bytes: a.0 },
    })
}

fn missing() -> Verdict {
    Verdict::Differs {
        kind: FailureKind::MissingOnTarget,
        what: "missing on target".to_owned(),
    }
}

fn extra() -> Verdict {
    Verdict::Differs {
        kind: FailureKind::ExtraOnTarget,
        what: "extra on target".to_owned(),
    }
}

fn content_differs(algorithm: &str) -> Verdict {
    Verdict::Differs {
        kind: FailureKind::Differs,
        what: format!("content, by {algorithm}"),
    }
}

/// The size and BLAKE3 of `key` on `store`, read a chunk at a time through the job's
/// throttle, parking at each chunk boundary while the job is paused (I7); `None` when the
/// store has no such object.
async fn digest(
    shared: &JobShared,
    store: &dyn Store,
    key: &ObjectKey,
) -> Result<Option<(u64, blake3::Hash)>> {
    let _streaming = Streaming::enter(shared);
    shared.chunk_boundary().await?;
    let object = match store.get(key).await {
        Ok(object) => object,
        Err(err) if err.is_not_found() => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let mut body = object.checked_body();
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        shared.throttle.acquire(chunk.len() as u64).await;
        size += chunk.len() as u64;
        hasher.update(&chunk);
        shared.copied_bytes(chunk.len() as u64);
        shared.chunk_boundary().await?;
    }
    Ok(Some((size, hasher.finalize())))
}

type Pairs = BoxStream<'static, Result<(ObjectKey, Sides)>>;

/// The keys to compare, in key order, those recorded done left out (I4).
fn pairs(ctx: &CheckCtx, progress: &Progress, after: Option<&ObjectKey>) -> Pairs {
    if let Some(keys) = &ctx.retry_keys {
        // Differences found before may lie under the watermark: not filtered by `is_done`.
        let keys = keys.clone().into_iter().map(|key| Ok((key, Sides::Head)));
        return Box::pin(futures_util::stream::iter(keys));
    }
    let progress = Arc::new(progress.clone());
    let done = Arc::clone(&progress);
    let pairs: Pairs = match &ctx.plan.objects {
        ObjectSelection::Keys(keys) => {
            let mut keys = keys.clone();
            keys.sort();
            keys.dedup();
            let keys = keys.into_iter().map(|key| Ok((key, Sides::Head)));
            Box::pin(futures_util::stream::iter(keys))
        }
        objects => match listed_range(objects) {
            Some(range) => merged(ctx, &range, progress.watermark.as_ref(), after),
            // Only explicit keys have no range, and they are above.
            None => Box::pin(futures_util::stream::empty()),
        },
    };
    Box::pin(pairs.try_filter(move |(key, _)| std::future::ready(!done.is_done(key))))
}

/// Both sides' listings of `range` after the later of the watermark and `after` (and of the
/// range's own bound), merged by key.
fn merged(
    ctx: &CheckCtx,
    range: &KeyRange,
    watermark: Option<&ObjectKey>,
    after: Option<&ObjectKey>,
) -> Pairs {
    let start = watermark.max(after);
    let source = list_metas(&*ctx.source, range, start);
    let target = list_metas(&*ctx.target, range, start);
    merge(source, target)
}

type Metas = futures_util::stream::Fuse<BoxStream<'static, Result<ObjectMeta>>>;

/// Two key-ordered listings merged into one stream of keys with what each side has. An
/// error ends it.
fn merge(
    source: BoxStream<'static, Result<ObjectMeta>>,
    target: BoxStream<'static, Result<ObjectMeta>>,
) -> Pairs {
    struct State {
        source: Metas,
        target: Metas,
        next_source: Option<ObjectMeta>,
        next_target: Option<ObjectMeta>,
        failed: bool,
    }
    async fn pull(stream: &mut Metas, slot: &mut Option<ObjectMeta>) -> Result<()> {
        if slot.is_none()
            && let Some(meta) = stream.next().await
        {
            *slot = Some(meta?);
        }
        Ok(())
    }
    let state = State {
        source: source.fuse(),
        target: target.fuse(),
        next_source: None,
        next_target: None,
        failed: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        let pulled = async {
            pull(&mut st.source, &mut st.next_source).await?;
            pull(&mut st.target, &mut st.next_target).await
        };
        if let Err(err) = pulled.await {
            st.failed = true;
            return Some((Err(err), st));
        }
        let order = match (&st.next_source, &st.next_target) {
            (None, None) => return None,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(s), Some(t)) => s.key.cmp(&t.key),
        };
        let (source, target) = match order {
            std::cmp::Ordering::Less => (st.next_source.take(), None),
            std::cmp::Ordering::Greater => (None, st.next_target.take()),
            std::cmp::Ordering::Equal => (st.next_source.take(), st.next_target.take()),
        };
        let key = source.as_ref().or(target.as_ref())?.key.clone();
        Some((Ok((key, Sides::Listed(source, target))), st))
    }))
}
