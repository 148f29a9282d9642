//! HTTP for the cloud backends: a request fails when the server makes no progress for a while,
//! counted only while Ferry waits on it, never because a whole request outlasted a fixed time.
//!
//! object_store's client bounds each request as a whole (30 s by default, body included), and
//! reqwest's read timeout runs on between reads too. A copy under a throttle holds a GET's body
//! open for as long as its bytes take at the job's rate: at 150 KiB/s a 5 MiB object takes 34 s
//! and its GET failed, then its retry asked for a range past the end. Here the answer's head must
//! come within the limit, and each frame of the body within the limit of being asked for: time
//! the reader spends elsewhere (waiting on the throttle, on a pause) is not the server's.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService, ReqwestConnector,
};

/// How long a server may leave a request without progress while Ferry waits on it, by default.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(30);

/// An object_store [`HttpConnector`] whose requests fail (as timeouts, which object_store
/// retries) only when the server makes no progress for `limit` while they are waited on: the
/// answer's head within `limit` of sending, each frame of the body within `limit` of being
/// asked for. A reader that stops reading for a while (a throttled copy) does not make its
/// request fail. `ObjectStoreAdapter::from_url` uses it for `s3://`, `gs://` and `az://`; a
/// store built by hand takes it with the builder's `with_http_connector`.
///
/// The other client options (proxy, certificates, connect timeout) are object_store's; only
/// the whole-request timeout is replaced.
#[derive(Debug, Clone, Copy)]
pub struct StallTimeout {
    limit: Duration,
}

impl StallTimeout {
    /// Requests fail after `limit` without progress while waited on.
    pub fn new(limit: Duration) -> StallTimeout {
        StallTimeout { limit }
    }
}

impl Default for StallTimeout {
    fn default() -> StallTimeout {
        StallTimeout::new(DEFAULT_STALL_LIMIT)
    }
}

impl HttpConnector for StallTimeout {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner =
            ReqwestConnector::default().connect(&options.clone().with_timeout_disabled())?;
        Ok(HttpClient::new(Stalls {
            inner,
            limit: self.limit,
        }))
    }
}

#[derive(Debug)]
struct Stalls {
    inner: HttpClient,
    limit: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("the server made no progress for {0:?}")]
struct Stalled(Duration);

#[async_trait::async_trait]
impl HttpService for Stalls {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let answer = tokio::time::timeout(self.limit, self.inner.execute(req))
            .await
            .map_err(|_| HttpError::new(HttpErrorKind::Timeout, Stalled(self.limit)))??;
        let (parts, body) = answer.into_parts();
        let body = HttpResponseBody::new(StallBody {
            inner: body,
            limit: self.limit,
            wait: None,
        });
        Ok(HttpResponse::from_parts(parts, body))
    }
}

/// A body whose frames must each come within `limit` of being asked for.
struct StallBody {
    inner: HttpResponseBody,
    limit: Duration,
    /// Runs from the first poll that found no frame; none between frames, so time the reader
    /// spends elsewhere does not count.
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for StallBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.wait = None;
            return Poll::Ready(frame);
        }
        let limit = this.limit;
        let wait = this
            .wait
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.wait = None;
                Poll::Ready(Some(Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    Stalled(limit),
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
