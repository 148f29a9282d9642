//! Transient errors retried with the plan's backoff and jitter; the error chain a record keeps.

use std::hash::{BuildHasher, Hasher};

use ferry_types::RetryPolicy;

use crate::error::{Error, Result};

use super::JobCtx;

pub(super) use crate::error::chain as error_chain;

pub(super) fn jitter_unit(attempt: u32) -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `op` until it succeeds, fails permanently or the retry policy is spent (or the job is
/// cancelled: a copy stops at once). The error comes with the attempts made.
pub(super) async fn with_retry<'a, T, E, F>(
    ctx: &'a JobCtx,
    what: &'static str,
    op: impl FnMut() -> F,
) -> Result<T, (u32, Error)>
where
    F: std::future::Future<Output = Result<T, E>> + 'a,
    E: Into<Error>,
{
    let retry = &ctx.plan.options.retry;
    let retried = &ctx.shared.metrics.retries;
    retrying(retry, what, op, || ctx.shared.is_cancelled(), retried).await
}

/// The target's `sync`, retried as [`with_retry`] retries, through a cancel: a cancelled job
/// still commits what it flipped and rolls back the rest, and a sync that failed once more
/// would fail the whole job instead. Only a job stopping on an error gives up at once.
pub(super) async fn sync_with_retry(ctx: &JobCtx) -> Result<(), (u32, Error)> {
    retrying(
        &ctx.plan.options.retry,
        "sync",
        || ctx.target.sync(),
        || ctx.shared.is_failing(),
        &ctx.shared.metrics.retries,
    )
    .await
}

/// Runs `op` as `retry` allows: again after each transient error, until it succeeds, fails
/// otherwise, the policy is spent or `give_up` says so, counting each new attempt in
/// `retried`. The error comes with the attempts made.
pub(crate) async fn retrying<'a, T, E, F>(
    retry: &RetryPolicy,
    what: &'static str,
    mut op: impl FnMut() -> F,
    give_up: impl Fn() -> bool,
    retried: &metrics::Counter,
) -> Result<T, (u32, Error)>
where
    F: std::future::Future<Output = Result<T, E>> + 'a,
    E: Into<Error>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match op().await.map_err(Into::into) {
            Ok(value) => return Ok(value),
            Err(err) if err.is_transient() && retry.should_retry(attempts) => {
                tracing::warn!(what, attempt = attempts, error = %error_chain(&err), "transient error, retrying");
                if give_up() {
                    return Err((attempts, err));
                }
                // Boxed: a timer takes room in every caller's future, retrying or not.
                Box::pin(tokio::time::sleep(
                    retry.backoff(attempts, jitter_unit(attempts)),
                ))
                .await;
                retried.increment(1);
            }
            Err(err) => return Err((attempts, err)),
        }
    }
}
