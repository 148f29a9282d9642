//! [`Metered`]: the store wrapper the engine puts around each of its nodes, recording each
//! operation's latency ([`STORE_OP_DURATION`]) and errors ([`STORE_OP_ERRORS`]), labelled
//! `node` and `op`.
//!
//! The handles are registered once, when the engine is built, so an operation costs two
//! clock reads (`quanta`, a few ns each) and one histogram record. What is timed: `head`,
//! `delete`, `delete_if` and `sync` whole; `get` and `get_range` until the object is open
//! (its body streams at the reader's pace); `put` whole, body included (so throttled bytes
//! count in its time); `list` until its first item (or its end).

use std::sync::Arc;

use bytes::Bytes;
use ferry_store::{
    DeleteIf, MetaStream, Object, ObjectMeta, PartTag, Result, Store, UploadId, Version,
};
use ferry_types::{NodeId, ObjectKey};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use metrics::{Counter, Histogram};

use super::metrics::{STORE_OP_DURATION, STORE_OP_ERRORS};

/// One operation's handles.
#[derive(Debug, Clone)]
struct OpMetrics {
    duration: Histogram,
    errors: Counter,
}

impl OpMetrics {
    fn new(node: &str, op: &'static str) -> OpMetrics {
        let labels = [("node", node.to_owned()), ("op", op.to_owned())];
        OpMetrics {
            duration: metrics::histogram!(STORE_OP_DURATION, &labels),
            errors: metrics::counter!(STORE_OP_ERRORS, &labels),
        }
    }

    /// Records one operation that began at `started` and ended with `ok`.
    fn done(&self, started: quanta::Instant, ok: bool) {
        self.duration.record(started.elapsed().as_secs_f64());
        if !ok {
            self.errors.increment(1);
        }
    }

    /// Times `op`.
    async fn time<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let started = quanta::Instant::now();
        let result = op.await;
        self.done(started, result.is_ok());
        result
    }
}

/// A [`Store`] that records the latency and errors of each operation of `inner`.
#[derive(Debug)]
pub(crate) struct Metered {
    inner: Arc<dyn Store>,
    head: OpMetrics,
    get: OpMetrics,
    put: OpMetrics,
    delete: OpMetrics,
    list: OpMetrics,
    sync: OpMetrics,
}

impl Metered {
    pub(crate) fn new(node: NodeId, inner: Arc<dyn Store>) -> Metered {
        let node = node.to_string();
        Metered {
            inner,
            head: OpMetrics::new(&node, "head"),
            get: OpMetrics::new(&node, "get"),
            put: OpMetrics::new(&node, "put"),
            delete: OpMetrics::new(&node, "delete"),
            list: OpMetrics::new(&node, "list"),
            sync: OpMetrics::new(&node, "sync"),
        }
    }
}

impl Store for Metered {
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        Box::pin(self.head.time(self.inner.head(key)))
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Object>> {
        Box::pin(self.get.time(self.inner.get(key)))
    }

    fn get_range<'a>(
        &'a self,
        key: &'a ObjectKey,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<Object>> {
        Box::pin(self.get.time(self.inner.get_range(key, start, end)))
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(self.put.time(self.inner.put(key, body)))
    }

    fn create_upload<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<UploadId>>> {
        Box::pin(self.put.time(self.inner.create_upload(key)))
    }

    fn put_part<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        part: u32,
        offset: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<PartTag>> {
        Box::pin(
            self.put
                .time(self.inner.put_part(key, upload, part, offset, body)),
        )
    }

    fn complete_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        parts: &'a [PartTag],
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(
            self.put
                .time(self.inner.complete_upload(key, upload, parts)),
        )
    }

    fn abort_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.delete.time(self.inner.abort_upload(key, upload)))
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.delete.time(self.inner.delete(key)))
    }

    fn delete_if<'a>(
        &'a self,
        key: &'a ObjectKey,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<DeleteIf>> {
        Box::pin(self.delete.time(self.inner.delete_if(key, version)))
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        let list = self.list.clone();
        let mut started = Some(quanta::Instant::now());
        let stream = self.inner.list(prefix, start_after).inspect(move |item| {
            if let Some(started) = started.take() {
                list.done(started, item.is_ok());
            } else if item.is_err() {
                list.errors.increment(1);
            }
        });
        Box::pin(stream)
    }

    fn sync(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.sync.time(self.inner.sync()))
    }

    fn put_reports_blake3(&self) -> bool {
        self.inner.put_reports_blake3()
    }
}
