//! The adaptive rate's engine side: the job's target, timed, reporting to the job's
//! [`AdaptiveThrottle`].
//!
//! [`Observed`] wraps the target store of a job. While the job's rate is adaptive, every
//! `head`, `get`, `get_range`, `put`, `delete` and `delete_if` reports its latency and
//! whether the store said it was overloaded ([`ferry_store::Error::is_overload`]); `sync`
//! reports its overloads only (its time grows with the batch it makes durable); the bytes a
//! `put` is given count as sent. A `put`'s latency leaves out the time it waited for its
//! body (source reads, the throttle), and a put of several chunks counts per chunk: the
//! latency of a 1 GiB object and of a 1 MiB one compare. While the rate is fixed the wrapper
//! passes every call through.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use ferry_store::{
    BoxFuture, BoxStream, Bytes, DeleteIf, MetaStream, Object, ObjectMeta, PartTag, Store, Stream,
    UploadId, Version,
};
use ferry_throttle::Throttle;
use ferry_throttle::adaptive::{AdaptiveThrottle, Config, Observation, Outcome};
use ferry_types::{AdaptiveRate, ByteSize, ObjectKey, PlanOptions, Rate};
use tokio::time::Instant;

/// The job's throttle behind its adaptive controller, enabled when `options` say `auto`.
pub(crate) fn governor(options: &PlanOptions, throttle: Throttle) -> Arc<AdaptiveThrottle> {
    let governor = Arc::new(AdaptiveThrottle::new(throttle));
    if let Some(adaptive) = &options.adaptive {
        governor.enable(config(adaptive, options.rate, None));
    }
    governor
}

/// The controller's configuration for a plan's adaptive rate under `ceiling`, starting at
/// `start` (the rate in force when a job switches to `auto`) or the default.
pub(crate) fn config(adaptive: &AdaptiveRate, ceiling: Rate, start: Option<Rate>) -> Config {
    let config = Config::new(adaptive.max_latency, adaptive.floor.as_u64(), ceiling);
    match start.and_then(|rate| rate.as_bytes_per_sec()) {
        Some(start) => config.initial(start),
        None => config,
    }
}

/// A job's target store, timed for its adaptive rate; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Observed {
    inner: Arc<dyn Store>,
    governor: Arc<AdaptiveThrottle>,
    chunk: u64,
}

impl Observed {
    /// Wraps `inner`; puts count one operation per `chunk` bytes.
    pub(crate) fn wrap(
        inner: Arc<dyn Store>,
        governor: Arc<AdaptiveThrottle>,
        chunk: ByteSize,
    ) -> Arc<dyn Store> {
        Arc::new(Observed {
            inner,
            governor,
            chunk: chunk.as_u64().max(1),
        })
    }

    /// Runs `op`, and reports it when the rate is adaptive.
    async fn timed<T>(
        &self,
        op: impl Future<Output = ferry_store::Result<T>>,
    ) -> ferry_store::Result<T> {
        if !self.governor.is_enabled() {
            return op.await;
        }
        let started = Instant::now();
        let result = op.await;
        self.report(started, started.elapsed(), outcome(&result));
        result
    }

    fn report(&self, started: Instant, latency: Duration, outcome: Outcome) {
        self.governor
            .observe(Observation::new(started, latency, outcome));
    }
}

fn outcome<T>(result: &ferry_store::Result<T>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(err) if err.is_overload() => Outcome::Overloaded,
        // An answer, and a quick one: the store is not struggling.
        Err(err) if err.is_not_found() => Outcome::Ok,
        Err(_) => Outcome::Failed,
    }
}

impl Observed {
    /// Runs `send` (a put, or a part of an upload) with `body` metered, and reports its time
    /// per chunk without the time the store spent waiting for the body (the throttle's).
    fn sending<'a, T: Send + 'a>(
        &'a self,
        body: BoxStream<'a, ferry_store::Result<Bytes>>,
        send: impl FnOnce(
            BoxStream<'a, ferry_store::Result<Bytes>>,
        ) -> BoxFuture<'a, ferry_store::Result<T>>
        + Send
        + 'a,
    ) -> BoxFuture<'a, ferry_store::Result<T>> {
        Box::pin(async move {
            let counts = Arc::new(BodyCounts::default());
            let body = Box::pin(Metered {
                inner: body,
                counts: Arc::clone(&counts),
                governor: Arc::clone(&self.governor),
                since: None,
            });
            let started = Instant::now();
            let result = send(body).await;
            let waited = Duration::from_nanos(counts.waited_nanos.load(Ordering::Relaxed));
            let own = started.elapsed().saturating_sub(waited);
            let chunks = counts
                .bytes
                .load(Ordering::Relaxed)
                .div_ceil(self.chunk)
                .max(1);
            let per_chunk = own / u32::try_from(chunks).unwrap_or(u32::MAX);
            self.report(started, per_chunk, outcome(&result));
            result
        })
    }
}

impl Store for Observed {
    fn head<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, ferry_store::Result<Option<ObjectMeta>>> {
        Box::pin(self.timed(self.inner.head(key)))
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, ferry_store::Result<Object>> {
        Box::pin(self.timed(self.inner.get(key)))
    }

    fn get_range<'a>(
        &'a self,
        key: &'a ObjectKey,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, ferry_store::Result<Object>> {
        Box::pin(self.timed(self.inner.get_range(key, start, end)))
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, ferry_store::Result<Bytes>>,
    ) -> BoxFuture<'a, ferry_store::Result<ObjectMeta>> {
        if !self.governor.is_enabled() {
            return self.inner.put(key, body);
        }
        self.sending(body, move |body| self.inner.put(key, body))
    }

    fn create_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, ferry_store::Result<Option<UploadId>>> {
        Box::pin(self.timed(self.inner.create_upload(key)))
    }

    fn put_part<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        part: u32,
        offset: u64,
        body: BoxStream<'a, ferry_store::Result<Bytes>>,
    ) -> BoxFuture<'a, ferry_store::Result<PartTag>> {
        if !self.governor.is_enabled() {
            return self.inner.put_part(key, upload, part, offset, body);
        }
        self.sending(body, move |body| {
            self.inner.put_part(key, upload, part, offset, body)
        })
    }

    fn complete_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        parts: &'a [PartTag],
    ) -> BoxFuture<'a, ferry_store::Result<ObjectMeta>> {
        Box::pin(self.timed(self.inner.complete_upload(key, upload, parts)))
    }

    fn abort_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
    ) -> BoxFuture<'a, ferry_store::Result<()>> {
        Box::pin(self.timed(self.inner.abort_upload(key, upload)))
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, ferry_store::Result<bool>> {
        Box::pin(self.timed(self.inner.delete(key)))
    }

    fn delete_if<'a>(
        &'a self,
        key: &'a ObjectKey,
        version: &'a Version,
    ) -> BoxFuture<'a, ferry_store::Result<DeleteIf>> {
        Box::pin(self.timed(self.inner.delete_if(key, version)))
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        self.inner.list(prefix, start_after)
    }

    fn put_reports_blake3(&self) -> bool {
        self.inner.put_reports_blake3()
    }

    fn sync(&self) -> BoxFuture<'_, ferry_store::Result<()>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.sync().await;
            if self.governor.is_enabled() && outcome(&result) == Outcome::Overloaded {
                self.report(started, started.elapsed(), Outcome::Overloaded);
            }
            result
        })
    }
}

/// What a put's body saw: the bytes it gave and the time it kept the store waiting.
#[derive(Default)]
struct BodyCounts {
    bytes: AtomicU64,
    waited_nanos: AtomicU64,
}

/// A put's body, counting its bytes (sent, for the controller) and the time the store spent
/// waiting for them (inside `poll_next`, or between a `Pending` and the next item).
struct Metered<'a> {
    inner: BoxStream<'a, ferry_store::Result<Bytes>>,
    counts: Arc<BodyCounts>,
    governor: Arc<AdaptiveThrottle>,
    /// When the store began waiting for the item not yet given.
    since: Option<Instant>,
}

impl Stream for Metered<'_> {
    type Item = ferry_store::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let item = self.inner.as_mut().poll_next(cx);
        if item.is_ready() {
            self.since = None;
            let waited = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.counts
                .waited_nanos
                .fetch_add(waited, Ordering::Relaxed);
            if let Poll::Ready(Some(Ok(chunk))) = &item {
                let len = chunk.len() as u64;
                self.counts.bytes.fetch_add(len, Ordering::Relaxed);
                self.governor.sent(len);
            }
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
