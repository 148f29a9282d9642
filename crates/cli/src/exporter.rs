//! `--metrics-addr`: the libraries' metrics served in the Prometheus text format.
//!
//! The engine, the forwarding table and the throttle record through the `metrics` facade;
//! this installs `metrics-exporter-prometheus`'s recorder as the process's recorder and serves
//! `GET /metrics` from its handle. The exporter's own HTTP listener (its `http-listener`
//! feature) is not used: it would bring a second server stack (and TLS for its push gateway
//! by default) beside the hyper this crate already runs for `ferry serve`, and it neither
//! reports the address it bound (port 0) nor lets a busy address fail before the job starts.
//! Here the listener is bound first (a bad or busy address is an error naming it, before
//! anything moves), and a scrape publishes the forwarding table's figures just before the
//! page is rendered, so the read path records nothing per call.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use clap::Args;
use ferry::forwarding::Table;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::fail;

/// Histogram buckets, in seconds, for every histogram (store operations, fence and throttle
/// waits): 100 µs to 10 s, about three per decade, so a p99 of a local disk's operation and
/// of an object store's both fall between two buckets.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often histogram samples are folded into their buckets between scrapes, so memory
/// stays bounded however rarely the page is read.
const UPKEEP: Duration = Duration::from_secs(5);

/// How long the last scrapes in flight may take to be sent when the command ends.
const DRAIN: Duration = Duration::from_secs(2);

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `--metrics-addr` and `--metrics-linger`, on the commands that run jobs.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics while the command runs, e.g.
    /// 127.0.0.1:9464 (port 0: a free port, printed on stderr).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Once the job has ended, keep serving metrics until one scrape has read its final
    /// figures, for at most this long (e.g. 30s: two Prometheus scrape intervals).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "0s",
        value_parser = parse_linger,
        requires = "metrics_addr"
    )]
    pub(crate) metrics_linger: Duration,
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let mut addrs = text.to_socket_addrs().map_err(|e| {
        format!("{text} is not an address to serve metrics on ({e}); give HOST:PORT, e.g. 127.0.0.1:9464")
    })?;
    addrs.next().ok_or_else(|| {
        format!("{text} resolves to no address; give HOST:PORT, e.g. 127.0.0.1:9464")
    })
}

fn parse_linger(text: &str) -> Result<Duration, String> {
    ferry::types::parse_duration(text).map_err(|e| e.to_string())
}

/// The forwarding table whose figures a scrape publishes: the one of the engine built last
/// (table-wide figures carry no label, so one table is published).
static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// Makes `table` the one a scrape publishes the figures of.
pub(crate) fn watch_table(table: &Table) {
    *TABLE.lock().unwrap_or_else(PoisonError::into_inner) = Some(table.clone());
}

/// What the server's connections share.
struct Shared {
    handle: PrometheusHandle,
    /// Scrapes begun, numbered from 1.
    begun: AtomicU64,
    /// The highest number of a scrape whose page was rendered.
    rendered: watch::Sender<u64>,
}

/// The running metrics server; [`Exporter::finish`] ends it.
pub(crate) struct Exporter {
    shared: Arc<Shared>,
    linger: Duration,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    upkeep: JoinHandle<()>,
}

impl Exporter {
    /// Binds `args.metrics_addr`, installs the Prometheus recorder and serves `/metrics` on
    /// a task of its own; `None` without `--metrics-addr`. Says where on stderr unless
    /// `quiet`.
    ///
    /// # Errors
    /// When the address cannot be bound (busy, not this machine's, a privileged port), naming
    /// it; when a recorder is already installed.
    pub(crate) async fn start(args: &MetricsArgs, quiet: bool) -> Result<Option<Exporter>> {
        let Some(addr) = args.metrics_addr else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            fail(
                format!("cannot serve metrics on {addr}: {e}"),
                "give --metrics-addr a free address of this machine (port 0 picks a free port)",
            )
        })?;
        let bound = listener.local_addr().unwrap_or(addr);
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .map_err(|e| fail(format!("cannot set up metrics: {e}"), "report this bug"))?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|e| {
            fail(
                format!("cannot install the metrics recorder: {e}"),
                "report this bug",
            )
        })?;
        // Describes the engine's metrics to the recorder just installed (HELP lines).
        ferry::engine::metrics::describe();
        let shared = Arc::new(Shared {
            handle: handle.clone(),
            begun: AtomicU64::new(0),
            rendered: watch::Sender::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(accept(listener, Arc::clone(&shared), stopped));
        let upkeep = tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
        if !quiet {
            eprintln!("ferry: metrics at http://{bound}/metrics");
        }
        Ok(Some(Exporter {
            shared,
            linger: args.metrics_linger,
            stop,
            server,
            upkeep,
        }))
    }

    /// Ends the server once the command has ended: with `--metrics-linger`, first waits (at
    /// most that long) for a scrape that began after the end, so the final figures are read;
    /// then lets the scrapes in flight finish. `interrupted` (Ctrl-C) skips the wait.
    pub(crate) async fn finish(self, interrupted: bool) {
        if !interrupted && !self.linger.is_zero() {
            let after = self.shared.begun.load(Ordering::SeqCst);
            let mut rendered = self.shared.rendered.subscribe();
            let _ = tokio::time::timeout(self.linger, rendered.wait_for(|&n| n > after)).await;
        }
        self.stop.send_replace(true);
        let _ = self.server.await;
        self.upkeep.abort();
    }
}

/// Accepts connections until `stop`, then lets the scrapes in flight finish (at most
/// [`DRAIN`]).
async fn accept(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let http = hyper::server::conn::http1::Builder::new();
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else {
                    // Out of file descriptors and the like: a scrape fails, the job goes on;
                    // wait a little rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let shared = Arc::clone(&shared);
                let service = hyper::service::service_fn(move |request| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, Infallible>(respond(&request, &shared)) }
                });
                let connection = graceful.watch(http.serve_connection(TokioIo::new(socket), service));
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
}

/// `GET /metrics`: the page; anything else: 404 or 405 with a line saying what is served.
fn respond(request: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "ferry serves its metrics at /metrics\n".to_owned(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".to_owned());
    }
    let scrape = shared.begun.fetch_add(1, Ordering::SeqCst) + 1;
    let table = TABLE.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(table) = table {
        table.record_metrics();
    }
    let page = shared.handle.render();
    shared.rendered.send_modify(|n| *n = (*n).max(scrape));
    let mut response = reply(StatusCode::OK, page);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(TEXT_FORMAT),
    );
    response
}
