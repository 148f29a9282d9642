//! `ferry serve`: an S3 gateway in front of a live move, so that unmodified S3 clients keep
//! reading, writing, listing and deleting while the objects move underneath.
//!
//! The job runs as `migrate` runs it (throttle, checkpoint, control socket); the gateway is
//! its storage system's request path ([`gateway`]), `s3s` its HTTP and S3 protocol ([`s3`]),
//! multipart parts wait in the state directory ([`uploads`]).

mod etags;
mod gateway;
mod s3;
mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use ferry::engine::Error as EngineError;
use ferry::forwarding::{Config, Table};
use ferry::types::{
    CleanupPolicy, JobId, JobKind, JobSnapshot, JobStatus, MigrationPlan, ObjectSelection,
    PlanOptions, RateSetting, VerifyMode,
};
use ferry::{Engine, JobHandle};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::cli::{
    CheckpointKind, OutputArgs, parse_cleanup, parse_max_latency, parse_rate_setting, parse_verify,
};
use crate::control::{self, JobInfo};
use crate::error::{EXIT_ERROR, EXIT_INTERRUPTED, Explain, fail, usage};
use crate::location::Location;
use crate::progress::{Display, Totals};
use crate::run::{self, Signals, explain_engine, open_store};
use crate::scan;
use crate::state::{JobMeta, State, shell_quote};

use self::etags::MultipartTags;
use self::gateway::Gateway;
use self::s3::GatewayS3;
use self::uploads::Uploads;

/// The environment variables holding the key pair clients sign with.
const ACCESS_KEY_VAR: &str = "FERRY_ACCESS_KEY_ID";
const SECRET_KEY_VAR: &str = "FERRY_SECRET_ACCESS_KEY";

/// How long requests in flight may take to finish once a stop was asked.
const DRAIN_REQUESTS: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The source: a directory or a bucket URL (s3://, gs://, az://).
    #[arg(value_name = "SRC")]
    source: Location,
    /// The destination: a directory (created when missing) or a bucket URL.
    #[arg(value_name = "DST")]
    target: Location,
    /// The job's id; `ferry serve` with the id of an unfinished job resumes it.
    #[arg(long)]
    id: String,
    /// Where to accept S3 requests; port 0 picks a free one. Keep it on loopback unless
    /// the network in between is trusted: requests are signed, not encrypted.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The bucket name clients use (path-style: http://ADDR/NAME/key).
    #[arg(long, value_name = "NAME")]
    bucket: String,
    /// Serve without checking signatures: anyone who reaches ADDR may read, write and
    /// delete. Only for a trusted machine; FERRY_ACCESS_KEY_ID / FERRY_SECRET_ACCESS_KEY
    /// are ignored.
    #[arg(long)]
    anonymous: bool,
    /// Bandwidth limit of the move, e.g. 50MiB, unlimited, or auto / auto:200MiB to follow
    /// DST's health (default: unlimited, or the rate the job had when it resumes). Requests
    /// of clients are not throttled.
    #[arg(long, value_parser = parse_rate_setting)]
    rate: Option<RateSetting>,
    /// With --rate auto: DST's operation latency (p90 over the last second) above which the
    /// move backs off [default: 250ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_max_latency)]
    max_latency: Option<std::time::Duration>,
    /// How many objects move at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    concurrency: u16,
    /// How each copy is checked before it counts as moved.
    #[arg(long, default_value = "checksum", value_parser = parse_verify)]
    verify: VerifyMode,
    /// When SRC copies are deleted: after-verify, or grace=DURATION (e.g. grace=30s).
    #[arg(long, default_value = "after-verify", value_parser = parse_cleanup)]
    cleanup: CleanupPolicy,
    /// How many times an object that changes in SRC after its copy is copied again.
    #[arg(long, default_value_t = 3, value_name = "N")]
    max_changes: u32,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    pub(crate) metrics: crate::exporter::MetricsArgs,
}

pub(crate) async fn serve(state: &State, args: ServeArgs) -> Result<u8> {
    let signals = Signals::register()?;
    if matches!(args.cleanup, CleanupPolicy::Never) {
        return Err(usage(
            "`ferry serve` moves the objects: --cleanup never would keep two live copies of \
             every object, and writes to one would not reach the other",
            "use --cleanup after-verify (the default) or grace=DURATION; `ferry migrate \
             --cleanup never` copies without moving",
        ));
    }
    let credentials = credentials(args.anonymous)?;
    if !s3s::path::check_bucket_name(&args.bucket) {
        return Err(usage(
            format!("{:?} is not a valid S3 bucket name", args.bucket),
            "use 3 to 63 lowercase letters, digits, '-' and '.'",
        ));
    }
    let id = State::job_id(&args.id)?;
    let (meta, plan) = if state.has_meta(&id) {
        let meta = state.load_meta(&id)?;
        // The job moves what it was created for: other SRC or DST under its id is a mistake.
        if let Ok(ends) = scan::endpoints(&args.source, &args.target, Some(state.root()))
            && (ends.source != meta.source || ends.target != meta.target)
        {
            return Err(usage(
                format!(
                    "job {id} moves {} → {}, not {} → {}",
                    meta.source, meta.target, ends.source, ends.target
                ),
                "give the job's own SRC and DST, or another --id for a new job",
            ));
        }
        (meta, None)
    } else {
        let (meta, plan) = new_job(state, &id, &args).await?;
        (meta, Some(plan))
    };
    let source = open_store("source", &meta.source).await?;
    let target = open_store("destination", &meta.target).await?;
    let checkpoints = state.checkpoints(meta.checkpoint)?;
    let table = Table::new(Config::default());
    let (src, dst) = run::nodes()?;
    let drain = table.clone();
    let engine = Engine::builder()
        .node(src, Arc::clone(&source))
        .node(dst, Arc::clone(&target))
        .checkpoint_store(Arc::clone(&checkpoints))
        .forwarding(table.clone())
        .parts(run::parts())
        // The request path counts its reads: none that routed to SRC before the flip is
        // still running when the SRC copy is deleted (SPEC I2).
        .commit_hook(move |key, _| {
            let table = drain.clone();
            let key = key.as_str().to_owned();
            Box::pin(async move {
                table.drain_reads(&key).await;
                Ok(())
            })
        })
        .build()?;
    crate::exporter::watch_table(engine.forwarding());
    let plan = match plan {
        Some(plan) => {
            state.save_meta(&meta)?;
            plan
        }
        None => {
            let loaded = checkpoints.load(&id).await?.ok_or_else(|| {
                fail(
                    format!("job {id} has no record in {}", state.root().display()),
                    format!(
                        "`ferry {}forget {id}` removes what is left of it",
                        state.flag()
                    ),
                )
            })?;
            let plan = loaded.record.plan;
            if plan.kind != JobKind::Migrate || plan.options.cleanup == CleanupPolicy::Never {
                return Err(usage(
                    format!(
                        "job {id} was not made by `ferry serve`: it is a check, or a migration \
                         that keeps SRC (--cleanup never)"
                    ),
                    format!(
                        "`ferry {}resume {id}` runs it as it was made; serve a new job with \
                         another --id",
                        state.flag()
                    ),
                ));
            }
            plan.with_id(id.clone())
        }
    };
    let display = Display::new(args.output);
    let (handle, settled) = match engine.start(plan).await {
        Ok(handle) => {
            if let Some(rate) = args.rate {
                handle.set_rate_setting(rate);
            }
            (Some(handle), false)
        }
        Err(EngineError::JobFinished { status, .. }) => {
            let completed = matches!(
                status,
                JobStatus::Completed | JobStatus::CompletedWithErrors
            );
            display.say(&format!(
                "ferry: job {id} is already {status}; serving {}",
                if completed {
                    "everything from DST"
                } else {
                    "SRC and DST as it left them"
                }
            ));
            (None, completed)
        }
        Err(e) => return Err(explain_engine(e, &id, state)),
    };
    let records = staging_dir(state, &id).join("multipart-etags");
    let multipart = MultipartTags::open(records.clone()).explain(|| {
        (
            format!(
                "cannot open the gateway's ETag records {}",
                records.display()
            ),
            "check the permissions of the state directory; a damaged file can be removed \
             (objects completed from multipart uploads then report the MD5 of their content)"
                .to_owned(),
        )
    })?;
    let gateway = Arc::new(Gateway::new(source, target, table, multipart));
    let uploads = Uploads::open(staging_dir(state, &id).join("uploads")).explain(|| {
        (
            format!(
                "cannot create the upload staging directory under {}",
                state.root().display()
            ),
            "check the permissions of the state directory".to_owned(),
        )
    })?;
    let service = {
        let s3 = GatewayS3 {
            bucket: args.bucket.clone(),
            gateway: Arc::clone(&gateway),
            uploads,
            started: std::time::SystemTime::now(),
        };
        let mut builder = S3ServiceBuilder::new(s3);
        if let Some((access, secret)) = credentials {
            builder.set_auth(SimpleAuth::from_single(access, secret));
        }
        builder.build()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .explain(|| {
            (
                format!("cannot listen on {}", args.listen),
                "pick another --listen address (port 0 picks a free port)".to_owned(),
            )
        })?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut server = Server {
        stop: stop_tx,
        task: Some(tokio::spawn(accept(listener, service, stop_rx))),
    };
    // The line scripts wait for: the gateway accepts requests from now on.
    println!("{url}");
    display.say(&format!(
        "ferry: job {id}: {} → {} served as bucket {:?} at {url}",
        meta.source, meta.target, args.bucket
    ));
    display
        .event(json!({"event": "serving", "id": id.as_str(), "url": url, "bucket": args.bucket}));
    let resume = format!(
        "ferry {}serve {} {} --id {} --bucket {} --listen {}",
        state.flag(),
        shell_quote(&meta.source.to_string()),
        shell_quote(&meta.target.to_string()),
        shell_quote(id.as_str()),
        args.bucket,
        args.listen,
    );
    let mut drainer = None;
    if settled {
        drainer = Some(spawn_drain(&gateway, &display, &id));
    }
    let code = run_job(
        state,
        &id,
        &meta,
        handle,
        &gateway,
        display,
        signals,
        &mut drainer,
        &mut server,
        &resume,
    )
    .await;
    server.stop().await;
    if let Some(task) = drainer {
        task.abort();
    }
    engine.shutdown().await;
    code
}

/// Where job `id`'s gateway keeps what it stages (multipart parts).
pub(crate) fn staging_dir(state: &State, id: &JobId) -> std::path::PathBuf {
    state.root().join("serve").join(id.as_str())
}

/// The HTTP side of the gateway.
struct Server {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Stops accepting connections and waits for the requests in flight (at most
    /// [`DRAIN_REQUESTS`]).
    async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// The key pair from the environment, or `None` with `--anonymous`.
fn credentials(anonymous: bool) -> Result<Option<(String, String)>> {
    if anonymous {
        return Ok(None);
    }
    match (
        std::env::var(ACCESS_KEY_VAR).ok().filter(|v| !v.is_empty()),
        std::env::var(SECRET_KEY_VAR).ok().filter(|v| !v.is_empty()),
    ) {
        (Some(access), Some(secret)) => Ok(Some((access, secret))),
        _ => Err(usage(
            format!(
                "`ferry serve` needs the key pair clients sign with: set {ACCESS_KEY_VAR} and {SECRET_KEY_VAR}"
            ),
            "or pass --anonymous to accept unsigned requests (anyone who reaches the address may \
             read, write and delete)",
        )),
    }
}

/// A new job's sidecar and plan.
async fn new_job(state: &State, id: &JobId, args: &ServeArgs) -> Result<(JobMeta, MigrationPlan)> {
    let ends = scan::endpoints(&args.source, &args.target, Some(state.root()))?;
    scan::prepare_target(&ends).await?;
    let meta = JobMeta::new(id, ends.source, ends.target, CheckpointKind::File);
    let (src, dst) = run::nodes()?;
    let options = PlanOptions {
        verify: args.verify,
        cleanup: args.cleanup,
        concurrency: std::num::NonZeroUsize::new(usize::from(args.concurrency))
            .unwrap_or(std::num::NonZeroUsize::MIN),
        rate: args.rate.unwrap_or_default().rate(),
        adaptive: crate::cli::adaptive(args.rate.unwrap_or_default(), args.max_latency),
        max_changes: args.max_changes,
        ..PlanOptions::default()
    };
    let plan = MigrationPlan::new(src, dst, ObjectSelection::prefix(""))
        .with_id(id.clone())
        .with_options(options);
    Ok((meta, plan))
}

/// Accepts connections until `stop`, then lets the requests in flight finish (at most
/// [`DRAIN_REQUESTS`]).
async fn accept(
    listener: tokio::net::TcpListener,
    service: S3Service,
    mut stop: watch::Receiver<bool>,
) {
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let socket = match accepted {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let connection = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_REQUESTS, graceful.shutdown()).await;
}

/// Settles the gateway, then moves what SRC still holds to DST.
fn spawn_drain(
    gateway: &Arc<Gateway>,
    display: &Display,
    id: &JobId,
) -> tokio::task::JoinHandle<()> {
    let gateway = Arc::clone(gateway);
    let quiet = display.is_quiet() || display.is_json();
    let id = id.clone();
    tokio::spawn(async move {
        gateway.settle().await;
        match gateway.drain_source().await {
            Ok(moved) => {
                if !quiet {
                    eprintln!(
                        "ferry: job {id}: SRC drained ({moved} objects written during the move \
                         moved after it); serving everything from DST"
                    );
                }
            }
            Err(e) => eprintln!(
                "ferry: job {id}: objects left on SRC could not be moved: {}; they are served \
                 from SRC, and the next `ferry serve` moves them",
                crate::error::chain(&e)
            ),
        }
    })
}

/// Runs the job (when there is one) and the control socket until a signal: returns the exit
/// code. When the job completes the gateway settles and goes on serving.
#[allow(clippy::too_many_arguments)]
async fn run_job(
    state: &State,
    id: &JobId,
    meta: &JobMeta,
    mut handle: Option<JobHandle>,
    gateway: &Arc<Gateway>,
    mut display: Display,
    mut signals: Signals,
    drainer: &mut Option<tokio::task::JoinHandle<()>>,
    server: &mut Server,
    resume: &str,
) -> Result<u8> {
    let (requests_tx, mut requests) = mpsc::channel::<control::Request>(16);
    let socket_path = state.socket_path(id);
    let control_server = control::serve(&socket_path, requests_tx)?;
    let totals = Totals::default();
    let info = JobInfo {
        id: id.clone(),
        source: meta.source.clone(),
        target: meta.target.clone(),
        pid: std::process::id(),
        total_objects: None,
        total_bytes: None,
    };
    let mut watch = handle.as_ref().map(JobHandle::watch);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let finished = watch
            .as_mut()
            .map(|w| w.borrow_and_update().clone())
            .filter(|s| s.status.is_finished());
        if let Some(snap) = finished {
            watch = None;
            display.finish();
            let ended = handle.take();
            let snap = match ended {
                Some(h) => h.wait().await.unwrap_or(snap),
                None => snap,
            };
            job_ended(&display, id, &snap);
            if matches!(
                snap.status,
                JobStatus::Completed | JobStatus::CompletedWithErrors
            ) && drainer.is_none()
            {
                *drainer = Some(spawn_drain(gateway, &display, id));
            }
        }
        tokio::select! {
            changed = async {
                match watch.as_mut() {
                    Some(w) => w.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if !changed {
                    watch = None;
                }
            }
            _ = tick.tick(), if handle.is_some() => {
                if let Some(h) = handle.as_ref() {
                    display.progress(&h.snapshot(), totals, false);
                }
            }
            () = signals.recv() => {
                display.finish();
                eprintln!("ferry: stopping: no new requests; finishing those in flight and saving job {id}");
                server.stop().await;
                control_server.drain().await;
                match handle.as_ref() {
                    Some(h) => {
                        h.pause().await;
                        eprintln!("ferry: job {id} saved; serve it again (and resume the move) with:\n  {resume}");
                    }
                    None => eprintln!("ferry: stopped; serve it again with:\n  {resume}"),
                }
                display.event(json!({"event": "interrupted", "id": id.as_str(), "saved": true}));
                return Ok(EXIT_INTERRUPTED);
            }
            Some((command, reply)) = requests.recv() => {
                if let Some(report) = run::answer(command, reply, &mut handle, &info, totals, &display).await {
                    watch = None;
                    match report {
                        Ok(_) => display.say(&format!(
                            "ferry: job {id} cancelled; the gateway serves SRC and DST as the job left them"
                        )),
                        Err(e) => {
                            eprintln!("ferry: job {id}: cancel failed: {}", crate::error::chain(&e));
                            return Ok(EXIT_ERROR);
                        }
                    }
                }
            }
        }
    }
}

fn job_ended(display: &Display, id: &JobId, snap: &JobSnapshot) {
    display.event(json!({
        "event": "job-ended",
        "id": id.as_str(),
        "status": snap.status.to_string(),
        "done_objects": snap.done_objects,
        "failed_objects": snap.failed_objects,
    }));
    display.say(&format!(
        "ferry: job {id} {}: {} objects moved, {} failed; the gateway goes on serving",
        snap.status, snap.done_objects, snap.failed_objects
    ));
}
