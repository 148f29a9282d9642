//! One function per subcommand.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use ferry::checkpoint::{CheckpointStore, Error as CkError};
use ferry::types::{JobId, JobStatus, MigrationPlan, ObjectSelection, format_duration};
use serde_json::json;

use crate::cli::{
    Cli, Command, IdArg, ListArgs, MigrateArgs, PlanArgs, ResumeArgs, RetryArgs, SetRateArgs,
    StatusArgs,
};
use crate::control::{self, Reply};
use crate::error::{EXIT_ERROR, EXIT_OK, Explain, fail, usage};
use crate::progress::{Display, Totals, size};
use crate::run::{self, RunCtx, Signals, explain_engine};
use crate::scan::{self, Scan};
use crate::state::{JobMeta, State};
use crate::view::JobView;

pub(crate) async fn dispatch(cli: Cli) -> Result<u8> {
    // The metrics server is up before anything moves: a busy address stops the command
    // first. It serves until the command ends (and, with --metrics-linger, a last scrape).
    let (metrics, quiet) = cli.metrics();
    let exporter = crate::exporter::Exporter::start(&metrics, quiet).await?;
    let outcome = run_command(cli).await;
    if let Some(exporter) = exporter {
        let interrupted = matches!(outcome, Ok(crate::error::EXIT_INTERRUPTED));
        exporter.finish(interrupted).await;
    }
    outcome
}

async fn run_command(cli: Cli) -> Result<u8> {
    let command = match cli.command {
        Command::Demo(args) => return crate::demo::run(args).await,
        Command::Submit(args) => return crate::worker::submit(cli.state.as_deref(), args).await,
        Command::Worker(args) => return crate::worker::worker(cli.state.as_deref(), args).await,
        command => command,
    };
    if let Some(url) = cli.state.as_deref().and_then(crate::worker::bucket_state) {
        return match command {
            Command::Status(args) => crate::worker::status(&url, args.id, args.json).await,
            Command::List(args) => crate::worker::status(&url, None, args.json).await,
            _ => Err(usage(
                format!(
                    "--state {url} is a bucket: `ferry {}` keeps its jobs in a state directory \
                     on this machine",
                    command.name()
                ),
                "a bucket state is for `ferry submit`, `worker`, `status` and `list`; give this \
                 command --state DIR, or no --state",
            )),
        };
    }
    let state = State::open(cli.state.as_deref())?;
    match command {
        Command::Migrate(args) => migrate(&state, args).await,
        Command::Check(args) => crate::check::check(&state, args).await,
        Command::Resume(args) => resume(&state, args).await,
        Command::Pause(args) => pause(&state, args).await,
        Command::SetRate(args) => set_rate(&state, args).await,
        Command::Status(args) => status(&state, args).await,
        Command::List(args) => list(&state, args).await,
        Command::Cancel(args) => cancel(&state, args).await,
        Command::RetryFailed(args) => retry_failed(&state, args).await,
        Command::Serve(args) => crate::serve::serve(&state, args).await,
        Command::Forget(args) => forget(&state, args).await,
        Command::Plan(args) => plan(&state, args).await,
        Command::Demo(_) | Command::Submit(_) | Command::Worker(_) => {
            unreachable!("handled before the state directory is opened")
        }
    }
}

/// Prints each skipped entry as a notice (stderr) or a JSON event.
pub(crate) fn report_skipped(display: &Display, scan: &Scan) {
    for entry in &scan.skipped {
        if display.is_json() {
            display.event(json!({"event": "skipped", "path": entry.path, "reason": entry.reason}));
        } else if !display.is_quiet() {
            eprintln!("ferry: skipping {}: {}", entry.path, entry.reason);
        }
    }
}

/// The id of a new job: `given` (`--id`), or one made from the clock and the process id,
/// starting with `letter` (`m` for a migration, `c` for a check). Refused (exit 2) when the
/// state directory already has a job of that id.
pub(crate) fn new_job_id(state: &State, given: Option<&str>, letter: char) -> Result<JobId> {
    let id = match given {
        Some(id) => State::job_id(id)?,
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let tag = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
            JobId::new(format!("{letter}{}-{tag:04x}", now.as_secs()))?
        }
    };
    if state.has_meta(&id) {
        return Err(usage(
            format!(
                "a job {id} already exists in the state directory {}",
                state.root().display()
            ),
            format!(
                "`ferry {f}resume {id}` continues it; `ferry {f}forget {id}` removes it; or pick \
                 another --id",
                f = state.flag()
            ),
        ));
    }
    Ok(id)
}

async fn migrate(state: &State, args: MigrateArgs) -> Result<u8> {
    let signals = Signals::register()?;
    let ends = scan::endpoints(&args.source, &args.target, Some(state.root()))?;
    let id = new_job_id(state, args.id.as_deref(), 'm')?;
    let display = Display::new(args.output);
    let found = scan::survey(&ends.source, &args.select.prefix).await?;
    report_skipped(&display, &found);
    scan::prepare_target(&ends).await?;
    let mut meta = JobMeta::new(
        &id,
        ends.source.clone(),
        ends.target.clone(),
        args.checkpoint,
    );
    meta.not_regular_skipped = found.skipped.len() as u64;
    let (src, dst) = run::nodes()?;
    let options = args.job.options(&args.select);
    let plan = MigrationPlan::new(src, dst, ObjectSelection::prefix(&args.select.prefix))
        .with_id(id.clone())
        .with_options(options);
    state.save_meta(&meta)?;
    let ctx = RunCtx::open(state, id, meta, signals).await?;
    let handle = ctx.start(plan).await?;
    run::run(ctx, handle, display, scanned(&found)).await
}

async fn resume(state: &State, args: ResumeArgs) -> Result<u8> {
    let id = State::job_id(&args.id)?;
    let signals = Signals::register()?;
    // A live paused job: resume it in its process.
    if let Some(reply) = control::send(&state.socket_path(&id), &control::Command::Resume).await? {
        check_reply(&reply, &id)?;
        if let Some(rate) = args.rate {
            let reply =
                control::send(&state.socket_path(&id), &control::Command::SetRate(rate)).await?;
            if let Some(reply) = reply {
                check_reply(&reply, &id)?;
            }
        }
        if args.output.json {
            println!(
                "{}",
                json!({"event": "resumed", "id": id.as_str(), "live": true})
            );
        } else if !args.output.quiet {
            println!("ferry: job {id} resumed in its running process");
        }
        return Ok(EXIT_OK);
    }
    let (ctx, loaded) = open_recorded(state, &id, signals).await?;
    if loaded.record.status == JobStatus::Completed {
        if !args.output.quiet {
            println!("ferry: job {id} is already completed: nothing to resume");
        }
        return Ok(EXIT_OK);
    }
    let display = Display::new(args.output);
    let found = scan::survey(&ctx.meta().source, prefix_of(&loaded.record.plan)).await?;
    report_skipped(&display, &found);
    let totals = match loaded.record.plan.kind {
        ferry::types::JobKind::Check => crate::check::totals(found.bytes),
        _ => scanned(&found),
    };
    let handle = ctx.start(loaded.record.plan.with_id(id)).await?;
    if let Some(rate) = args.rate {
        handle.set_rate_setting(rate);
    }
    run::run(ctx, handle, display, totals).await
}

/// The totals of a job from the scan of its source.
fn scanned(found: &Scan) -> Totals {
    Totals {
        objects: Some(found.objects),
        bytes: Some(found.bytes),
    }
}

/// A job of the state directory that no process runs, opened to run in this one, with its
/// checkpoint record.
async fn open_recorded<'a>(
    state: &'a State,
    id: &JobId,
    signals: Signals,
) -> Result<(RunCtx<'a>, ferry::checkpoint::Loaded)> {
    let meta = state.load_meta(id)?;
    let ctx = RunCtx::open(state, id.clone(), meta, signals).await?;
    let loaded = load_record(ctx.checkpoints(), id, state).await?;
    Ok((ctx, loaded))
}

fn prefix_of(plan: &MigrationPlan) -> &str {
    match &plan.objects {
        ObjectSelection::Prefix(prefix) => prefix,
        ObjectSelection::Range(range) => &range.prefix,
        ObjectSelection::Keys(_) => "",
    }
}

async fn retry_failed(state: &State, args: RetryArgs) -> Result<u8> {
    let id = State::job_id(&args.id)?;
    let signals = Signals::register()?;
    if control::send(&state.socket_path(&id), &control::Command::Status)
        .await?
        .is_some()
    {
        return Err(fail(
            format!("job {id} is running"),
            "wait for it to end; `retry-failed` runs the failed objects of a finished job",
        ));
    }
    let (ctx, loaded) = open_recorded(state, &id, signals).await?;
    let failed = loaded.record.progress.failed.len() as u64;
    let handle = ctx.retry_failed().await?;
    let display = Display::new(args.output);
    let totals = Totals {
        objects: Some(loaded.record.progress.done_objects + failed),
        bytes: None,
    };
    run::run(ctx, handle, display, totals).await
}

/// The job's checkpoint record; errors name the job and, for a corrupt one, the file.
async fn load_record(
    checkpoints: &dyn CheckpointStore,
    id: &JobId,
    state: &State,
) -> Result<ferry::checkpoint::Loaded> {
    let flag = state.flag();
    match checkpoints.load(id).await {
        Ok(Some(loaded)) => Ok(loaded),
        Ok(None) => Err(fail(
            format!(
                "job {id} has no checkpoint record in {} (its state file is there)",
                state.root().display()
            ),
            format!(
                "the job was never started or its record was removed: `ferry {flag}forget {id}` \
                 clears it, then migrate again"
            ),
        )),
        Err(err) => {
            let (message, hint) = match &err {
                CkError::Corrupt { path, .. } => (
                    format!("the checkpoint of job {id} is corrupt: {}", path.display()),
                    "restore the file from a backup (ferry never treats a corrupt checkpoint as \
                     'start over'), or `ferry forget` the job and migrate again"
                        .to_owned(),
                ),
                _ => (
                    format!("cannot read the checkpoint of job {id}"),
                    "check the state directory".to_owned(),
                ),
            };
            Err(anyhow::Error::new(err).context(crate::error::CliError {
                code: EXIT_ERROR,
                message,
                hint: Some(hint),
            }))
        }
    }
}

fn check_reply(reply: &Reply, id: &JobId) -> Result<()> {
    if reply.ok {
        Ok(())
    } else {
        Err(fail(
            format!(
                "job {id} refused: {}",
                reply.error.as_deref().unwrap_or("no reason given")
            ),
            "",
        ))
    }
}

/// Sends a command to a live job; an error saying it is not running otherwise.
async fn live(state: &State, id: &JobId, command: control::Command) -> Result<Reply> {
    let path = state.socket_path(id);
    match control::send(&path, &command).await? {
        Some(reply) => {
            check_reply(&reply, id)?;
            Ok(reply)
        }
        None => {
            let flag = state.flag();
            let known = state.has_meta(id);
            Err(fail(
                if known {
                    format!(
                        "job {id} is not running (no process serves {})",
                        path.display()
                    )
                } else {
                    format!(
                        "no job {id} in the state directory {}",
                        state.root().display()
                    )
                },
                if known {
                    format!("`ferry {flag}resume {id}` runs it; `ferry {flag}status {id}` shows it")
                } else {
                    format!("`ferry {flag}list` shows the jobs")
                },
            ))
        }
    }
}

async fn pause(state: &State, args: IdArg) -> Result<u8> {
    let id = State::job_id(&args.id)?;
    let reply = live(state, &id, control::Command::Pause).await?;
    if args.json {
        println!("{}", serde_json::to_string(&reply)?);
    } else {
        let done = reply
            .snapshot
            .as_ref()
            .map_or(0, |s| s.snapshot.done_objects);
        println!(
            "ferry: job {id} paused ({done} objects done); `ferry {}resume {id}` continues it",
            state.flag()
        );
    }
    Ok(EXIT_OK)
}

async fn set_rate(state: &State, args: SetRateArgs) -> Result<u8> {
    let id = State::job_id(&args.id)?;
    let reply = live(state, &id, control::Command::SetRate(args.rate)).await?;
    if args.json {
        println!("{}", serde_json::to_string(&reply)?);
    } else {
        println!("ferry: job {id}: rate set to {}", args.rate);
    }
    Ok(EXIT_OK)
}

/// One job's status: live from its process, or from its record.
async fn job_status(
    state: &State,
    id: &JobId,
    stores: &mut BTreeMap<&'static str, std::sync::Arc<dyn CheckpointStore>>,
) -> Result<JobView> {
    let meta = state.load_meta(id)?;
    if let Some(reply) = control::send(&state.socket_path(id), &control::Command::Status).await?
        && reply.ok
    {
        let Some(snapshot) = reply.snapshot else {
            return Err(fail(
                format!("job {id}'s process answered its status without figures"),
                "is the process on its control socket another version of ferry?",
            ));
        };
        return Ok(JobView::live(
            &meta,
            snapshot,
            reply.info.map(|info| info.pid),
        ));
    }
    let store = match stores.get(meta.checkpoint.as_str()) {
        Some(store) => store.clone(),
        None => {
            let store = state.checkpoints(meta.checkpoint)?;
            stores.insert(meta.checkpoint.as_str(), store.clone());
            store
        }
    };
    let loaded = load_record(&*store, id, state).await?;
    Ok(JobView::record(
        &meta,
        loaded.record.status,
        &loaded.record.progress,
    ))
}

async fn status(state: &State, args: StatusArgs) -> Result<u8> {
    let mut stores = BTreeMap::new();
    match &args.id {
        Some(id) => {
            let id = State::job_id(id)?;
            let view = job_status(state, &id, &mut stores).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", view.human());
            }
        }
        None => {
            let mut all = Vec::new();
            for id in state.job_ids()? {
                all.push(job_status(state, &id, &mut stores).await?);
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no jobs in {}", state.root().display());
            } else {
                for view in &all {
                    println!("{}", view.human());
                }
            }
        }
    }
    Ok(EXIT_OK)
}

async fn list(state: &State, args: ListArgs) -> Result<u8> {
    let mut stores = BTreeMap::new();
    let mut rows = Vec::new();
    for id in state.job_ids()? {
        rows.push(job_status(state, &id, &mut stores).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(EXIT_OK);
    }
    if rows.is_empty() {
        println!("no jobs in {}", state.root().display());
        return Ok(EXIT_OK);
    }
    println!("{}", JobView::list_header());
    for row in rows {
        println!("{}", row.list_row());
    }
    Ok(EXIT_OK)
}

async fn cancel(state: &State, args: IdArg) -> Result<u8> {
    let id = State::job_id(&args.id)?;
    let flag = state.flag();
    if let Some(reply) = control::send(&state.socket_path(&id), &control::Command::Cancel).await? {
        check_reply(&reply, &id)?;
        if args.json {
            println!("{}", serde_json::to_string(&reply)?);
        } else {
            println!("ferry: job {id} cancelled in its running process; files already copied stay");
        }
        return Ok(EXIT_OK);
    }
    let meta = state.load_meta(&id)?;
    let checkpoints = state.checkpoints(meta.checkpoint)?;
    let loaded = load_record(&*checkpoints, &id, state).await?;
    let status = loaded.record.status;
    if status.is_terminal() || status == JobStatus::CompletedWithErrors {
        return Err(fail(
            format!("job {id} is already {status}: nothing to cancel"),
            format!("`ferry {flag}forget {id}` removes its record"),
        ));
    }
    let acquired = checkpoints
        .acquire(&id)
        .await
        .map_err(|e| explain_engine(ferry::engine::Error::Checkpoint(e), &id, state))?;
    let lease = acquired.lease;
    let mut progress = acquired.record.progress;
    // Uploads in parts the job left unfinished are abandoned with it (SPEC I8).
    let not_aborted = abort_uploads(&meta, &progress).await;
    progress
        .uploads
        .retain(|key, _| not_aborted.iter().any(|k| k == key));
    let progress = std::sync::Arc::new(progress);
    let save = async || -> Result<(), CkError> {
        if status == JobStatus::Failed {
            // Failed → Cancelled is not a move of the lifecycle; Failed → Running is.
            checkpoints
                .save(&lease, JobStatus::Running, std::sync::Arc::clone(&progress))
                .await?;
        }
        checkpoints
            .save(
                &lease,
                JobStatus::Cancelled,
                std::sync::Arc::clone(&progress),
            )
            .await?;
        Ok(())
    };
    let saved = save().await;
    let _ = checkpoints.release(&lease).await;
    saved.explain(|| {
        (
            format!("cannot record job {id} as cancelled"),
            "check the state directory".to_owned(),
        )
    })?;
    if args.json {
        println!(
            "{}",
            json!({"ok": true, "id": id.as_str(), "status": "cancelled", "live": false})
        );
    } else {
        println!(
            "ferry: job {id} cancelled ({} objects had moved; they stay in {})",
            progress.done_objects, meta.target
        );
    }
    Ok(EXIT_OK)
}

/// Aborts the uploads in parts `progress` records on the job's destination; returns the
/// keys whose upload could not be aborted (each named in a warning on stderr).
async fn abort_uploads(
    meta: &JobMeta,
    progress: &ferry::checkpoint::Progress,
) -> Vec<ferry::types::ObjectKey> {
    if progress.uploads.is_empty() {
        return Vec::new();
    }
    let target = match run::open_store("destination", &meta.target).await {
        Ok(target) => target,
        Err(err) => {
            eprintln!(
                "ferry: warning: {} unfinished uploads in parts left on {}: {err:#}",
                progress.uploads.len(),
                meta.target
            );
            return progress.uploads.keys().cloned().collect();
        }
    };
    let mut failed = Vec::new();
    for (key, record) in &progress.uploads {
        let upload = ferry::store::UploadId::new(record.upload.clone());
        if let Err(err) = target.abort_upload(key, &upload).await {
            eprintln!(
                "ferry: warning: the unfinished upload of {} on {} could not be aborted: {err}",
                key.as_str(),
                meta.target
            );
            failed.push(key.clone());
        }
    }
    failed
}

async fn forget(state: &State, args: IdArg) -> Result<u8> {
    let id = State::job_id(&args.id)?;
    if control::send(&state.socket_path(&id), &control::Command::Status)
        .await?
        .is_some()
    {
        return Err(fail(
            format!("job {id} is running"),
            format!(
                "`ferry {f}cancel {id}` or `ferry {f}pause {id}` it first, or wait for its end",
                f = state.flag()
            ),
        ));
    }
    // The sidecar may be corrupt: forget must still work, with the file backend by default.
    let meta = match state.load_meta(&id) {
        Ok(meta) => Some(meta),
        Err(_) if state.has_meta(&id) => None,
        Err(err) => return Err(err),
    };
    let kind = meta.as_ref().map(|meta| meta.checkpoint);
    let mut removed = false;
    // The uploads in parts the job left unfinished go with it (SPEC I8).
    if let (Some(kind), Some(meta)) = (kind, &meta)
        && let Ok(Some(loaded)) = state.checkpoints(kind)?.load(&id).await
    {
        abort_uploads(meta, &loaded.record.progress).await;
    }
    for kind in kind.map_or_else(|| vec![crate::cli::CheckpointKind::File], |k| vec![k]) {
        let store = state.checkpoints(kind)?;
        removed |= store
            .delete(&id)
            .await
            .map_err(|e| explain_engine(ferry::engine::Error::Checkpoint(e), &id, state))?;
    }
    state.remove_meta(&id)?;
    let _ = std::fs::remove_file(state.socket_path(&id));
    // `ferry serve`'s multipart uploads never completed.
    let _ = std::fs::remove_dir_all(crate::serve::staging_dir(state, &id));
    if args.json {
        println!(
            "{}",
            json!({"ok": true, "id": id.as_str(), "record_removed": removed})
        );
    } else {
        println!("ferry: forgot job {id} (the files in SRC and DST are untouched)");
    }
    Ok(EXIT_OK)
}

async fn plan(state: &State, args: PlanArgs) -> Result<u8> {
    let ends = scan::endpoints(&args.source, &args.target, Some(state.root()))?;
    let found = scan::survey(&ends.source, &args.select.prefix).await?;
    let secs = crate::cli::estimate_rate(args.select.rate)
        .as_bytes_per_sec()
        .map(|r| found.bytes as f64 / r as f64);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "source": ends.source,
                "target": ends.target,
                "target_exists": ends.target_exists,
                "prefix": args.select.prefix,
                "objects": found.objects,
                "bytes": found.bytes,
                "largest": found.largest,
                "rate": args.select.rate.to_string(),
                "seconds_at_rate": secs,
                "skipped": found.skipped.iter().map(|s| json!({"path": s.path, "reason": s.reason})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(EXIT_OK);
    }
    for entry in &found.skipped {
        println!("would skip {}: {}", entry.path, entry.reason);
    }
    println!(
        "would move {} objects ({}, largest {}) from {} to {}{}",
        found.objects,
        size(found.bytes),
        size(found.largest),
        ends.source,
        ends.target,
        if ends.target_exists { "" } else { " (created)" }
    );
    match secs {
        Some(secs) => println!(
            "at {}: about {}{}",
            args.select.rate,
            format_duration(Duration::from_secs(secs.ceil() as u64)),
            if args.select.rate.is_auto() {
                " at the ceiling (auto follows DST's health: longer if it backs off)"
            } else {
                ""
            }
        ),
        None if args.select.rate.is_auto() => {
            println!("rate: auto (follows DST's health; pass --rate auto:CEILING to estimate)")
        }
        None => println!("rate: unlimited (the disks decide; pass --rate to estimate the time)"),
    }
    Ok(EXIT_OK)
}
