//! Running one job in this process: progress, the control socket, Ctrl-C, the end summary
//! and the exit code.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ferry::checkpoint::{CheckpointStore, Failure};
use ferry::store::{DirStore, Store};
use ferry::types::{
    FailureKind, JobId, JobKind, JobSnapshot, JobStatus, MigrationPlan, NodeId, ObjectKey,
    format_duration,
};
use ferry::{Engine, JobHandle};
use ferry_object_store::ObjectStoreAdapter;
use serde::Serialize;
use serde_json::json;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::control::{self, Command, JobInfo, Reply};
use crate::error::{
    CliError, EXIT_ERROR, EXIT_FAILED_OBJECTS, EXIT_INTERRUPTED, EXIT_OK, Explain, fail,
};
use crate::location::Location;
use crate::progress::{Display, LiveSnapshot, Totals, size};
use crate::state::{JobMeta, State, shell_quote};
use crate::view::FailedObject;

/// The node ids of SRC and DST in a CLI job's plan (the sidecar maps them to directories).
pub(crate) fn nodes() -> Result<(NodeId, NodeId)> {
    Ok((NodeId::new("src")?, NodeId::new("dst")?))
}

/// SIGINT and SIGTERM, registered before the job starts so that none is lost.
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    pub(crate) fn register() -> Result<Signals> {
        let explain = || {
            (
                "cannot install the Ctrl-C handler".to_owned(),
                "this is a bug or an exotic platform; please report it".to_owned(),
            )
        };
        Ok(Signals {
            int: signal(SignalKind::interrupt()).explain(explain)?,
            term: signal(SignalKind::terminate()).explain(explain)?,
        })
    }

    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// What to check when a bucket cannot be reached.
pub(crate) const BUCKET_HINT: &str = "check the bucket name and the credentials: \
     AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (and AWS_ENDPOINT for an \
     S3-compatible server) for s3://; GOOGLE_SERVICE_ACCOUNT for gs://; AZURE_STORAGE_ACCOUNT_NAME \
     and AZURE_STORAGE_ACCOUNT_KEY for az://";

/// The store at `location`: a directory store, or an object-store adapter configured from
/// the environment.
pub(crate) async fn open_store(side: &'static str, location: &Location) -> Result<Arc<dyn Store>> {
    open_with(side, location, false).await
}

/// Whether a job that copies writes a directory DST past the page cache (`--cached-writes`
/// turns it off).
static DIRECT_WRITES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Sets what [`open_destination`] does, from the command line.
pub(crate) fn set_direct_writes(direct: bool) {
    DIRECT_WRITES.store(direct, std::sync::atomic::Ordering::Relaxed);
}

/// The destination of a job that copies (`migrate`, `resume`, `worker`): as
/// [`open_store`], a directory written past the page cache (`DirStore::with_direct_writes`)
/// unless `--cached-writes` says otherwise: the copies cost no copy into page-cache pages and
/// evict nothing the machine's readers use. `ferry serve` keeps the page cache: its clients
/// write there too and read back.
pub(crate) async fn open_destination(location: &Location) -> Result<Arc<dyn Store>> {
    let direct = DIRECT_WRITES.load(std::sync::atomic::Ordering::Relaxed);
    open_with("destination", location, direct).await
}

async fn open_with(
    side: &'static str,
    location: &Location,
    direct_writes: bool,
) -> Result<Arc<dyn Store>> {
    match location {
        Location::Local(path) => {
            let store = DirStore::open(path).await.explain(|| {
                (
                    format!("cannot open the {side} directory {}", path.display()),
                    format!("check that the {side} exists and is readable"),
                )
            })?;
            Ok(Arc::new(store.with_direct_writes(direct_writes)))
        }
        Location::Bucket(url) => {
            let store = ObjectStoreAdapter::from_url(url).explain(|| {
                (
                    format!("cannot open the {side} {url}"),
                    BUCKET_HINT.to_owned(),
                )
            })?;
            Ok(Arc::new(store))
        }
    }
}

/// Which objects the engines of this process copy in parts (`--parts-above`, `--part-size`).
static PARTS: std::sync::OnceLock<ferry::engine::Parts> = std::sync::OnceLock::new();

/// Sets what [`parts`] answers, once, from the command line.
pub(crate) fn set_parts(parts: ferry::engine::Parts) {
    let _ = PARTS.set(parts);
}

/// Which objects the engines of this process copy in parts.
pub(crate) fn parts() -> ferry::engine::Parts {
    PARTS.get().copied().unwrap_or_default()
}

/// An engine over a job's two stores, as the nodes of [`nodes`], and a checkpoint store.
pub(crate) fn engine_over(
    source: Arc<dyn Store>,
    target: Arc<dyn Store>,
    checkpoints: Arc<dyn CheckpointStore>,
) -> Result<Engine> {
    let (src, dst) = nodes()?;
    let engine = Engine::builder()
        .node(src, source)
        .node(dst, target)
        .checkpoint_store(checkpoints)
        .parts(parts())
        .build()?;
    crate::exporter::watch_table(engine.forwarding());
    Ok(engine)
}

/// Explains an engine error about job `id` in the user's terms.
pub(crate) fn explain_engine(
    err: ferry::engine::Error,
    id: &JobId,
    state: &State,
) -> anyhow::Error {
    use ferry::checkpoint::Error as Ck;
    use ferry::engine::Error as En;
    let flag = state.flag();
    let (message, hint) = match &err {
        En::JobFinished { status, .. } if *status == JobStatus::CompletedWithErrors => (
            format!("job {id} already ran to the end, with failed objects"),
            format!("`ferry {flag}retry-failed {id}` runs the failed ones again"),
        ),
        En::JobFinished { status, .. } => (
            format!("job {id} is already {status}: nothing to resume"),
            format!("`ferry {flag}status {id}` shows it; `ferry {flag}forget {id}` removes it"),
        ),
        En::NotRetryable { status, .. } => (
            format!(
                "job {id} has no failed objects to retry (status {})",
                status.map_or("unknown".to_owned(), |s| s.to_string())
            ),
            format!("`ferry {flag}status {id}` shows it"),
        ),
        En::Checkpoint(Ck::Locked { .. }) => (
            format!("job {id} is being run by another process"),
            format!("`ferry {flag}status {id}` shows it; wait for it, or stop that process first"),
        ),
        En::Checkpoint(Ck::Corrupt { path, .. }) => (
            format!("the checkpoint of job {id} is corrupt: {}", path.display()),
            "restore the file from a backup; ferry never treats a corrupt checkpoint as \
             'start over'"
                .to_owned(),
        ),
        _ => (
            format!("job {id} could not run"),
            format!("fix the cause below, then `ferry {flag}resume {id}`"),
        ),
    };
    anyhow::Error::new(err).context(CliError {
        code: EXIT_ERROR,
        message,
        hint: Some(hint),
    })
}

/// A job to run in this process (`migrate`, `resume`, `retry-failed`): its sidecar, an engine
/// over its two stores and its checkpoint store, and the Ctrl-C handler. [`RunCtx::start`] or
/// [`RunCtx::retry_failed`] starts it; [`run`] serves its control socket and shows its progress
/// until it ends.
pub(crate) struct RunCtx<'a> {
    state: &'a State,
    meta: JobMeta,
    id: JobId,
    engine: Engine,
    checkpoints: Arc<dyn CheckpointStore>,
    signals: Signals,
}

impl<'a> RunCtx<'a> {
    /// Opens the job `id` whose sidecar is `meta`: its source, its destination, then its
    /// checkpoint store. `signals` were registered before anything started, so that no Ctrl-C
    /// is lost.
    pub(crate) async fn open(
        state: &'a State,
        id: JobId,
        meta: JobMeta,
        signals: Signals,
    ) -> Result<RunCtx<'a>> {
        let source = open_store("source", &meta.source).await?;
        let target = open_destination(&meta.target).await?;
        let checkpoints = state.checkpoints(meta.checkpoint)?;
        let engine = engine_over(source, target, Arc::clone(&checkpoints))?;
        Ok(RunCtx {
            state,
            meta,
            id,
            engine,
            checkpoints,
            signals,
        })
    }

    pub(crate) fn meta(&self) -> &JobMeta {
        &self.meta
    }

    pub(crate) fn checkpoints(&self) -> &dyn CheckpointStore {
        &*self.checkpoints
    }

    /// Starts the job from `plan` (a new job, or a stopped one from its checkpoint).
    pub(crate) async fn start(&self, plan: MigrationPlan) -> Result<JobHandle> {
        self.engine
            .start(plan)
            .await
            .map_err(|e| explain_engine(e, &self.id, self.state))
    }

    /// Starts the failed objects of the finished job again.
    pub(crate) async fn retry_failed(&self) -> Result<JobHandle> {
        self.engine
            .retry_failed(&self.id)
            .await
            .map_err(|e| explain_engine(e, &self.id, self.state))
    }
}

/// Runs the job `ctx` started as `handle` to its end (or to Ctrl-C) and returns the exit code.
/// `totals` are the job's size as far as the command knows it, for the progress display.
pub(crate) async fn run(
    ctx: RunCtx<'_>,
    handle: JobHandle,
    mut display: Display,
    totals: Totals,
) -> Result<u8> {
    let RunCtx {
        state,
        meta,
        id,
        // Kept until the job has ended.
        engine: _engine,
        checkpoints,
        mut signals,
    } = ctx;
    let meta = &meta;
    let (requests_tx, mut requests) = mpsc::channel::<control::Request>(16);
    let socket_path = state.socket_path(&id);
    let server = control::serve(&socket_path, requests_tx)?;
    let info = JobInfo {
        id: id.clone(),
        source: meta.source.clone(),
        target: meta.target.clone(),
        pid: std::process::id(),
        total_objects: totals.objects,
        total_bytes: totals.bytes,
    };
    display.event(json!({
        "event": "started",
        "id": id.as_str(),
        "source": meta.source,
        "target": meta.target,
        "total_objects": totals.objects,
        "total_bytes": totals.bytes,
        "socket": socket_path,
        "pid": std::process::id(),
    }));
    display.say(&format!(
        "ferry: job {id}: {} → {}{}",
        meta.source,
        meta.target,
        match (totals.objects, totals.bytes) {
            (Some(n), Some(b)) => format!(" ({n} objects, {})", size(b)),
            _ => String::new(),
        }
    ));

    let mut watch = handle.watch();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut handle = Some(handle);
    let mut cancelled = None;
    while let Some(h) = handle.as_ref() {
        if watch.borrow_and_update().status.is_finished() {
            break;
        }
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tick.tick() => display.progress(&h.snapshot(), totals, false),
            () = signals.recv() => {
                return interrupt(h, &id, state, &display, &mut signals).await;
            }
            Some((command, reply)) = requests.recv() => {
                if let Some(report) = answer(command, reply, &mut handle, &info, totals, &display).await {
                    cancelled = Some(report);
                }
            }
        }
    }
    display.finish();
    server.drain().await;
    let flag = state.flag();
    let result = match (cancelled, handle) {
        (Some(report), _) => report.map(|r| {
            r.snapshot.unwrap_or_else(|| {
                let (s, d) = (meta_node(true), meta_node(false));
                let mut snap = JobSnapshot::new(id.clone(), s, d);
                snap.status = JobStatus::Cancelled;
                snap
            })
        }),
        (None, Some(h)) => h.wait().await,
        (None, None) => {
            return Err(fail(
                format!("job {id} ended without a result"),
                format!("`ferry {flag}status {id}` shows its record"),
            ));
        }
    };
    let snap = match result {
        Ok(snap) => snap,
        Err(err) => {
            let kind = err.failure_kind();
            let text = format!("{:#}", anyhow::Error::new(err));
            let hint = if kind == FailureKind::DiskFull {
                format!(
                    "the destination's disk is full: free space under {}, then `ferry {flag}resume {id}`",
                    meta.target
                )
            } else {
                format!(
                    "fix the cause, then `ferry {flag}resume {id}` continues from the checkpoint"
                )
            };
            display.event(json!({"event": "failed", "id": id.as_str(), "error": text}));
            return Err(fail(format!("job {id} stopped: {text}"), hint));
        }
    };
    let failed = load_failed(&*checkpoints, &id).await;
    if meta.kind == JobKind::Check {
        return Ok(crate::check::report(&display, &id, &snap, &failed));
    }
    summary(&display, &id, meta, &snap, totals, &failed, state);
    Ok(match snap.status {
        JobStatus::Completed => EXIT_OK,
        JobStatus::CompletedWithErrors => EXIT_FAILED_OBJECTS,
        JobStatus::Cancelled => {
            if !display.is_json() {
                eprintln!(
                    "ferry: job {id} was cancelled; files already copied stay in {}",
                    meta.target
                );
            }
            EXIT_ERROR
        }
        _ => EXIT_ERROR,
    })
}

/// Answers one control-socket request about the running job `handle` (`ferry status`,
/// `pause`, `resume`, `set-rate`, `cancel` from another shell). A cancel takes the handle and
/// returns its report.
pub(crate) async fn answer(
    command: Command,
    reply: tokio::sync::oneshot::Sender<Reply>,
    handle: &mut Option<JobHandle>,
    info: &JobInfo,
    totals: Totals,
    display: &Display,
) -> Option<ferry::engine::Result<ferry::engine::CancelReport>> {
    let id = &info.id;
    let answer = |snap: JobSnapshot| Reply::done(LiveSnapshot::new(snap, totals), info.clone());
    let Some(h) = handle.as_ref() else {
        let _ = reply.send(Reply::refused(format!("job {id} is not running")));
        return None;
    };
    match command {
        Command::Status => {
            let _ = reply.send(answer(h.snapshot()));
        }
        Command::Pause => {
            h.pause().await;
            display.say(&format!("ferry: job {id} paused from the control socket"));
            display.event(json!({"event": "paused", "id": id.as_str()}));
            let _ = reply.send(answer(h.snapshot()));
        }
        Command::Resume => {
            h.resume();
            display.say(&format!("ferry: job {id} resumed from the control socket"));
            display.event(json!({"event": "resumed", "id": id.as_str()}));
            let _ = reply.send(answer(h.snapshot()));
        }
        Command::SetRate(rate) => {
            h.set_rate_setting(rate);
            display.say(&format!("ferry: job {id}: rate set to {rate}"));
            display.event(json!({"event": "rate", "id": id.as_str(), "rate": rate.to_string()}));
            let _ = reply.send(answer(h.snapshot()));
        }
        Command::Cancel => {
            let h = handle.take()?;
            let report = h.cancel().await;
            let snap = report.as_ref().ok().and_then(|r| r.snapshot.clone());
            let _ = reply.send(Reply {
                ok: report.is_ok(),
                error: report.as_ref().err().map(|e| e.to_string()),
                snapshot: snap.map(|s| LiveSnapshot::new(s, totals)),
                info: Some(info.clone()),
            });
            return Some(report);
        }
    }
    None
}

fn meta_node(source: bool) -> NodeId {
    let name = if source { "src" } else { "dst" };
    NodeId::new(name).unwrap_or_else(|_| unreachable!("'{name}' is a valid node id"))
}

/// Ctrl-C: pause (copies park, a checkpoint is saved), print how to resume, exit 130. A
/// second Ctrl-C while pausing exits at once (the checkpoint is atomic; temp files of the
/// copies in flight are removed when the destination is next opened).
async fn interrupt(
    handle: &JobHandle,
    id: &JobId,
    state: &State,
    display: &Display,
    signals: &mut Signals,
) -> Result<u8> {
    display.finish();
    let command = format!("ferry {}resume {}", state.flag(), shell_quote(id.as_str()));
    eprintln!(
        "ferry: interrupted: pausing job {id} and saving its checkpoint (Ctrl-C again to exit at once)"
    );
    tokio::select! {
        () = handle.pause() => {}
        () = signals.recv() => {
            eprintln!("ferry: exiting at once; job {id} resumes from its last checkpoint:\n  {command}");
            display.event(json!({"event": "interrupted", "id": id.as_str(), "saved": false, "resume": command}));
            return Ok(EXIT_INTERRUPTED);
        }
    }
    let snap = handle.snapshot();
    eprintln!(
        "ferry: job {id} paused and saved ({} objects done). Resume it with:\n  {command}",
        snap.done_objects
    );
    display.event(json!({"event": "interrupted", "id": id.as_str(), "saved": true, "resume": command, "done_objects": snap.done_objects}));
    Ok(EXIT_INTERRUPTED)
}

/// The failed objects of the job's record (empty when it cannot be read).
pub(crate) async fn load_failed(
    checkpoints: &dyn CheckpointStore,
    id: &JobId,
) -> Vec<(ObjectKey, Failure)> {
    match checkpoints.load(id).await {
        Ok(Some(loaded)) => loaded.record.progress.failed.into_iter().collect(),
        _ => Vec::new(),
    }
}

/// How many failed objects are listed in full before "and N more".
const FAILED_SHOWN: usize = 20;

fn summary(
    display: &Display,
    id: &JobId,
    meta: &JobMeta,
    snap: &JobSnapshot,
    totals: Totals,
    failed: &[(ObjectKey, Failure)],
    state: &State,
) {
    let flag = state.flag();
    if display.is_json() {
        display.event(DoneEvent {
            event: "done",
            not_regular_skipped: meta.not_regular_skipped,
            failed: failed
                .iter()
                .map(|(key, failure)| FailedObject::new(key, failure))
                .collect(),
            snapshot: LiveSnapshot::new(snap.clone(), totals),
        });
        return;
    }
    if !display.is_quiet() {
        let secs = snap.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            size((snap.bytes_copied as f64 / secs) as u64)
        } else {
            size(0)
        };
        println!(
            "ferry: job {id} {}: {} objects ({}) in {} ({rate}/s), {} skipped, {} failed, {} changed during the move",
            snap.status,
            snap.done_objects,
            size(snap.done_bytes),
            format_duration(Duration::from_millis(snap.elapsed.as_millis() as u64)),
            snap.skipped_objects + meta.not_regular_skipped,
            snap.failed_objects - snap.changed_objects.min(snap.failed_objects),
            snap.changed_objects,
        );
    }
    if !failed.is_empty() {
        // Failed objects are shown even with --quiet: the exit code alone does not say which.
        let mut out = format!("ferry: {} objects of job {id} failed:\n", failed.len());
        for (key, failure) in failed.iter().take(FAILED_SHOWN) {
            out.push_str(&format!(
                "  {}: {} ({} attempts)\n",
                key.as_str(),
                failure.last_error,
                failure.attempts
            ));
        }
        if failed.len() > FAILED_SHOWN {
            out.push_str(&format!(
                "  … and {} more (`ferry {flag}status {id} --json` lists them all)\n",
                failed.len() - FAILED_SHOWN
            ));
        }
        let any = |kind| failed.iter().any(|(_, f)| f.kind == kind);
        let fix = if failed
            .iter()
            .all(|(_, f)| f.kind == FailureKind::SourceChanged)
        {
            format!(
                "another program kept writing these files in {} while they moved: DST may hold an \
                 older content; stop the writers",
                meta.source
            )
        } else if any(FailureKind::DiskFull) {
            format!(
                "the destination's disk is full: free space under {}",
                meta.target
            )
        } else if any(FailureKind::PermissionDenied) {
            "fix the permissions of the files listed (ferry must read them in SRC and write DST)"
                .to_owned()
        } else {
            "fix the cause shown for each file".to_owned()
        };
        out.push_str(&format!(
            "  hint: {fix}, then `ferry {flag}retry-failed {id}`\n"
        ));
        eprint!("{out}");
    }
}

/// The last `--json` event of a run: the job's figures (its `id`, and its nodes as `source`
/// and `target`), how many entries the scan skipped, and every failed object.
#[derive(Debug, Serialize)]
struct DoneEvent {
    event: &'static str,
    not_regular_skipped: u64,
    failed: Vec<FailedObject>,
    #[serde(flatten)]
    snapshot: LiveSnapshot,
}
