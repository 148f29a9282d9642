//! Jobs shared by many machines. `ferry submit` splits a job into key ranges whose records
//! live in a bucket (`--state s3://bucket/ferry-state`); `ferry worker` processes on any
//! number of machines claim ranges one at a time with timed leases, run them, and take over a
//! range whose worker died once its lease runs out. A worker that was cut off and comes back
//! finds its next checkpoint save refused and stops (SPEC I6; docs/design.md §5).
//!
//! ```text
//! <state>/jobs/<ID>.r<N>    a range's checkpoint record (ferry-checkpoint's LeasedStore)
//! <state>/meta/jobs/<ID>    the job: SRC, DST and its ranges (JSON, written once)
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ferry::checkpoint::{CheckpointStore, Condition, LeasedStore, SharedRecords, Written};
use ferry::engine::{Engine, JobHandle};
use ferry::types::{JobId, JobStatus, MigrationPlan, ObjectKey, ObjectSelection};
use ferry_object_store::ObjectRecords;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::cli::{SubmitArgs, WorkerArgs};
use crate::error::{EXIT_FAILED_OBJECTS, EXIT_INTERRUPTED, EXIT_OK, Explain, chain, fail, usage};
use crate::location::Location;
use crate::progress::{Totals, line, size};
use crate::run::{self, BUCKET_HINT, Signals};
use crate::scan;
use crate::state::State;

/// The format of a shared job's description; bumped on an incompatible change.
const SHARED_VERSION: u32 = 1;

/// A job as `ferry submit` wrote it for the workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SharedJob {
    version: u32,
    id: String,
    source: Location,
    target: Location,
    /// The ids of its ranges' records, in key order.
    ranges: Vec<String>,
    /// The source's objects and bytes when it was submitted.
    objects: u64,
    bytes: u64,
}

/// The bucket URL `--state` names, when it names one (not a directory).
pub(crate) fn bucket_state(state: &Path) -> Option<String> {
    match state.to_string_lossy().parse::<Location>() {
        Ok(Location::Bucket(url)) => Some(url),
        _ => None,
    }
}

/// The shared state: range records under timed leases, and the jobs' descriptions.
struct Shared {
    url: String,
    ranges: Arc<LeasedStore>,
    jobs: ObjectRecords,
}

impl Shared {
    fn open(state: Option<&Path>, lease: Duration) -> Result<Shared> {
        let hint = "jobs shared by workers on many machines keep their state in a bucket they \
                    all reach: --state s3://bucket/ferry-state (or gs://…, az://…)";
        let Some(state) = state else {
            return Err(usage(
                "this command needs --state with the URL of a bucket",
                hint,
            ));
        };
        let Some(url) = bucket_state(state) else {
            return Err(usage(
                format!("--state {} is not a bucket URL", state.display()),
                hint,
            ));
        };
        let open = |url: String| {
            ObjectRecords::from_url(&url).explain(|| {
                (
                    format!("cannot open the shared state {url}"),
                    BUCKET_HINT.to_owned(),
                )
            })
        };
        let ranges = LeasedStore::builder(Arc::new(open(url.clone())?))
            .lease(lease)
            .build();
        Ok(Shared {
            jobs: open(format!("{url}/meta"))?,
            ranges: Arc::new(ranges),
            url,
        })
    }

    fn unreachable(&self, what: &str) -> impl FnOnce() -> (String, String) {
        let message = format!("cannot {what} in the shared state {}", self.url);
        move || (message, BUCKET_HINT.to_owned())
    }

    /// The job `id` names, or every job of the shared state.
    async fn job_ids(&self, id: Option<&str>) -> Result<Vec<JobId>> {
        match id {
            Some(id) => Ok(vec![State::job_id(id)?]),
            None => self
                .jobs
                .jobs()
                .await
                .explain(self.unreachable("list jobs")),
        }
    }

    /// The job `id`, which must exist.
    async fn existing_job(&self, id: &JobId) -> Result<SharedJob> {
        self.job(id).await?.ok_or_else(|| {
            fail(
                format!("there is no job {id} in {}", self.url),
                format!(
                    "check the id (`ferry list --state {}` shows the jobs there), or submit \
                     the job first",
                    self.url
                ),
            )
        })
    }

    async fn job(&self, id: &JobId) -> Result<Option<SharedJob>> {
        let Some((bytes, _)) = self
            .jobs
            .read(id)
            .await
            .explain(self.unreachable("read job"))?
        else {
            return Ok(None);
        };
        let place = self.jobs.place(id);
        let job: SharedJob = serde_json::from_slice(&bytes).explain(|| {
            (
                format!("the job description {place} is not valid"),
                "it was not written by `ferry submit`, or by a newer ferry".to_owned(),
            )
        })?;
        if job.version > SHARED_VERSION {
            return Err(fail(
                format!("the job description {place} has version {}", job.version),
                format!("this ferry reads up to version {SHARED_VERSION}: upgrade it"),
            ));
        }
        Ok(Some(job))
    }
}

/// `ferry submit`: splits the job into ranges and records them in the shared state. Nothing
/// moves: workers do that.
pub(crate) async fn submit(state: Option<&Path>, args: SubmitArgs) -> Result<u8> {
    let shared = Shared::open(state, ferry::checkpoint::DEFAULT_LEASE)?;
    let ends = scan::endpoints(&args.source, &args.target, None)?;
    let id = State::job_id(&args.id)?;
    if shared.job(&id).await?.is_some() {
        return Err(usage(
            format!("a job {id} already exists in {}", shared.url),
            "run `ferry worker` to finish it, or pick another --id",
        ));
    }
    let prefix = &args.select.prefix;
    let found = scan::survey(&ends.source, prefix).await?;
    match &ends.target {
        Location::Local(dir) => std::fs::create_dir_all(dir).explain(|| {
            (
                format!("cannot create the destination directory {}", dir.display()),
                "check the permissions of its parent directory".to_owned(),
            )
        })?,
        bucket => scan::probe_bucket("destination", bucket).await?,
    }
    let source = run::open_store("source", &ends.source).await?;
    let wanted = u64::from(args.ranges).min(found.objects.max(1));
    let bounds = split_points(&*source, prefix, found.objects, wanted).await?;
    let mut after: Option<ObjectKey> = None;
    let mut ranges = Vec::new();
    for n in 0..=bounds.len() {
        let until = bounds.get(n).cloned();
        ranges.push((
            JobId::new(format!("{id}.r{n:03}"))?,
            after.clone(),
            until.clone(),
        ));
        after = until;
    }
    let job = SharedJob {
        version: SHARED_VERSION,
        id: id.as_str().to_owned(),
        source: ends.source.clone(),
        target: ends.target.clone(),
        ranges: ranges
            .iter()
            .map(|(r, _, _)| r.as_str().to_owned())
            .collect(),
        objects: found.objects,
        bytes: found.bytes,
    };
    let bytes = serde_json::to_vec_pretty(&job)?;
    let written = shared
        .jobs
        .write(&id, bytes, Condition::Absent)
        .await
        .explain(shared.unreachable("write the job"))?;
    if written == Written::Conflict {
        return Err(usage(
            format!(
                "a job {id} was just submitted to {} by someone else",
                shared.url
            ),
            "pick another --id",
        ));
    }
    let (src, dst) = run::nodes()?;
    let options = args.job.options(&args.select);
    for (range, after, until) in &ranges {
        let plan = MigrationPlan::new(
            src,
            dst,
            ObjectSelection::range(prefix.clone(), after.clone(), until.clone()),
        )
        .with_id(range.clone())
        .with_options(options.clone());
        shared
            .ranges
            .create(range, &plan)
            .await
            .explain(shared.unreachable("create the ranges"))?;
    }
    println!(
        "submitted job {id}: {} objects, {} in {} ranges, to {}",
        found.objects,
        size(found.bytes),
        ranges.len(),
        shared.url
    );
    println!(
        "run on each machine: ferry worker --state {}",
        crate::state::shell_quote(&shared.url)
    );
    Ok(EXIT_OK)
}

/// The upper bounds of `ranges` ranges of about equal object counts: every
/// `objects / ranges`-th key of a listing (one fewer than `ranges`).
async fn split_points(
    source: &dyn ferry::store::Store,
    prefix: &str,
    objects: u64,
    ranges: u64,
) -> Result<Vec<ObjectKey>> {
    let mut bounds = Vec::new();
    if ranges <= 1 {
        return Ok(bounds);
    }
    let mut next = 1;
    let mut listed = source.list(prefix, None);
    let mut seen = 0u64;
    while let Some(meta) = listed.try_next().await.explain(|| {
        (
            "cannot list the source to split the job".to_owned(),
            "check that the source is readable".to_owned(),
        )
    })? {
        seen += 1;
        if next < ranges && seen == next * objects / ranges {
            bounds.push(meta.key);
            next += 1;
        }
    }
    Ok(bounds)
}

/// `ferry worker`: claims ranges one at a time and runs them, until every range of the
/// job(s) is finished; then exits 0, or 3 if objects failed.
pub(crate) async fn worker(state: Option<&Path>, args: WorkerArgs) -> Result<u8> {
    let shared = Shared::open(state, args.lease)?;
    let mut signals = Signals::register()?;
    let poll = (args.lease / 3).max(Duration::from_millis(500));
    let mut engines: HashMap<String, Engine> = HashMap::new();
    let mut said_waiting = HashSet::new();
    loop {
        let ids = shared.job_ids(args.id.as_deref()).await?;
        if ids.is_empty() {
            return Err(fail(
                format!("there is no job in {}", shared.url),
                "submit one first: ferry submit SRC DST --state URL --id ID",
            ));
        }
        let (mut open, mut ran, mut failed, mut done) = (0, false, 0u64, 0u64);
        let mut stopped = Vec::new();
        for id in &ids {
            let job = shared.existing_job(id).await?;
            for range in &job.ranges {
                let range = JobId::new(range.as_str())?;
                let Some(loaded) = shared
                    .ranges
                    .load(&range)
                    .await
                    .explain(shared.unreachable("read a range"))?
                else {
                    return Err(fail(
                        format!("range {range} of job {id} has no record in {}", shared.url),
                        "its submit was cut short: submit the job again under another id",
                    ));
                };
                let record = loaded.record;
                if record.status == JobStatus::Cancelled {
                    stopped.push(range.to_string());
                    continue;
                }
                // A range that failed as a whole (its store unreachable for longer than the
                // retries, say) runs again from its checkpoint, once per worker run.
                if record.status.is_finished() && record.status != JobStatus::Failed {
                    done += record.progress.done_objects;
                    failed += record.progress.failed.len() as u64;
                    continue;
                }
                open += 1;
                let engine = match engines.get(id.as_str()) {
                    Some(engine) => engine,
                    None => {
                        let engine = build_engine(&shared, &job).await?;
                        engines.entry(id.as_str().to_owned()).or_insert(engine)
                    }
                };
                match engine.start(record.plan.clone()).await {
                    Ok(handle) => {
                        ran = true;
                        said_waiting.remove(&range);
                        eprintln!("ferry worker: running range {range} of job {id}");
                        if let Some(code) = run_range(handle, &range, &mut signals).await? {
                            return Ok(code);
                        }
                    }
                    Err(ferry::engine::Error::Checkpoint(ferry::checkpoint::Error::Locked {
                        holder,
                        ..
                    })) => {
                        if said_waiting.insert(range.clone()) {
                            eprintln!(
                                "ferry worker: range {range} is held by {holder}; waiting for it \
                                 to finish or for its lease to run out"
                            );
                        }
                    }
                    Err(ferry::engine::Error::JobFinished { .. }) => {}
                    Err(err) => {
                        return Err(fail(
                            format!("cannot run range {range} of job {id}: {err}"),
                            BUCKET_HINT,
                        ));
                    }
                }
            }
        }
        if open == 0 && !stopped.is_empty() {
            return Err(fail(
                format!(
                    "every range has ended, but these were cancelled: {}",
                    stopped.join(", ")
                ),
                "the other ranges' objects are moved; submit the cancelled ranges' keys as a \
                 new job to move them",
            ));
        }
        if open == 0 {
            println!("ferry worker: every range is finished: {done} objects done, {failed} failed");
            return Ok(if failed > 0 {
                EXIT_FAILED_OBJECTS
            } else {
                EXIT_OK
            });
        }
        if !ran {
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = signals.recv() => return Ok(EXIT_INTERRUPTED),
            }
        }
    }
}

/// An engine over the job's two stores, with the shared range records as its checkpoints.
async fn build_engine(shared: &Shared, job: &SharedJob) -> Result<Engine> {
    let source = run::open_store("source", &job.source).await?;
    let target = run::open_destination(&job.target).await?;
    run::engine_over(
        source,
        target,
        Arc::clone(&shared.ranges) as Arc<dyn CheckpointStore>,
    )
}

/// Runs one range to its end with a progress line every few seconds. `Some(exit code)` when
/// the worker must stop: interrupted, or the range was taken over by another worker.
async fn run_range(handle: JobHandle, range: &JobId, signals: &mut Signals) -> Result<Option<u8>> {
    let mut watch = handle.watch();
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    ticker.tick().await;
    loop {
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_err() || watch.borrow_and_update().status.is_finished() {
                    break;
                }
            }
            _ = ticker.tick() => {
                let snap = handle.snapshot();
                eprintln!("ferry worker: {range}: {}", line(&snap, Totals::default()));
            }
            () = signals.recv() => {
                eprintln!(
                    "ferry worker: interrupted: pausing range {range} and saving its checkpoint; \
                     another worker takes it over when its lease runs out"
                );
                handle.pause().await;
                return Ok(Some(EXIT_INTERRUPTED));
            }
        }
    }
    match handle.wait().await {
        Ok(snap) => {
            eprintln!("ferry worker: {range}: {}", line(&snap, Totals::default()));
            if snap.status == JobStatus::Failed {
                return Err(fail(
                    format!("range {range} failed"),
                    "see the log above (-v for more); `ferry worker` runs it again from its \
                     checkpoint",
                ));
            }
            Ok(None)
        }
        Err(err) if taken_over(&err) => Err(fail(
            format!("range {range} was taken over by another worker; this worker stops"),
            "its lease ran out (it was stopped, or cut off from the bucket) and its checkpoint \
             saves are refused; the other worker finishes the range",
        )),
        Err(err) => Err(fail(
            format!("range {range} stopped: {}", chain(&err)),
            BUCKET_HINT,
        )),
    }
}

/// Whether `err` says that another worker owns the range now (a stale or released lease),
/// however deep in its chain of causes.
fn taken_over(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        // A checkpointer's background failure holds its cause in an `Arc`.
        let checkpoint = err.downcast_ref::<ferry::checkpoint::Error>().or_else(|| {
            err.downcast_ref::<Arc<ferry::checkpoint::Error>>()
                .map(|e| &**e)
        });
        if let Some(
            ferry::checkpoint::Error::StaleEpoch { .. }
            | ferry::checkpoint::Error::NotOwner { .. }
            | ferry::checkpoint::Error::LeaseLost { .. },
        ) = checkpoint
        {
            return true;
        }
        cause = err.source();
    }
    false
}

/// A shared job as `ferry status --state URL` shows it.
#[derive(Debug, Serialize)]
struct SharedJobView {
    id: String,
    status: SharedStatus,
    source: Location,
    target: Location,
    /// The source's objects and bytes when the job was submitted.
    total_objects: u64,
    total_bytes: u64,
    done_objects: u64,
    done_bytes: u64,
    failed_objects: u64,
    ranges: Vec<RangeView>,
}

/// Where a shared job stands, from its ranges' records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum SharedStatus {
    /// A range has no record (its submit was cut short).
    Incomplete,
    Completed,
    /// A range failed as a whole; a worker runs it again.
    Failed,
    CompletedWithErrors,
    /// A worker holds a range.
    Running,
    WaitingForWorkers,
}

impl SharedStatus {
    fn of(ranges: &[RangeView]) -> SharedStatus {
        let statuses: Vec<JobStatus> = ranges
            .iter()
            .filter_map(|r| match r.status {
                RangeStatus::Missing => None,
                RangeStatus::Record(status) => Some(status),
            })
            .collect();
        if statuses.len() < ranges.len() {
            SharedStatus::Incomplete
        } else if statuses.iter().all(|s| *s == JobStatus::Completed) {
            SharedStatus::Completed
        } else if statuses.contains(&JobStatus::Failed) {
            SharedStatus::Failed
        } else if statuses.iter().all(|s| s.is_finished()) {
            SharedStatus::CompletedWithErrors
        } else if ranges
            .iter()
            .any(|r| r.record.as_ref().is_some_and(|r| r.holder.is_some()))
        {
            SharedStatus::Running
        } else {
            SharedStatus::WaitingForWorkers
        }
    }
}

impl std::fmt::Display for SharedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SharedStatus::Incomplete => "incomplete",
            SharedStatus::Completed => "completed",
            SharedStatus::Failed => "failed",
            SharedStatus::CompletedWithErrors => "completed with errors",
            SharedStatus::Running => "running",
            SharedStatus::WaitingForWorkers => "waiting for workers",
        })
    }
}

/// One range of a shared job.
#[derive(Debug, Serialize)]
struct RangeView {
    id: JobId,
    status: RangeStatus,
    /// `None` when the range has no record.
    #[serde(flatten)]
    record: Option<RangeFigures>,
}

/// A range's status: its record's, in the text form (`completed-with-errors`), or `missing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeStatus {
    Missing,
    Record(JobStatus),
}

impl RangeStatus {
    fn as_str(self) -> &'static str {
        match self {
            RangeStatus::Missing => "missing",
            RangeStatus::Record(status) => status.as_str(),
        }
    }
}

impl Serialize for RangeStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What a range's record and lease say.
#[derive(Debug, Serialize)]
struct RangeFigures {
    done_objects: u64,
    done_bytes: u64,
    failed_objects: u64,
    epoch: u64,
    /// The worker holding the range while its lease runs.
    holder: Option<String>,
    lease_ends_in_ms: Option<u64>,
}

impl SharedJobView {
    fn human(&self) -> String {
        let mut out = format!(
            "job {}: {} — {}/{} objects, {}/{}, {} failed; {} → {}\n",
            self.id,
            self.status,
            self.done_objects,
            self.total_objects,
            size(self.done_bytes),
            size(self.total_bytes),
            self.failed_objects,
            self.source,
            self.target,
        );
        for range in &self.ranges {
            let (id, status) = (range.id.as_str(), range.status.as_str());
            let Some(figures) = &range.record else {
                out.push_str(&format!("  {id:<16} {status:<22} no record\n"));
                continue;
            };
            let held = match &figures.holder {
                Some(holder) => format!(
                    ", held by {holder} (lease ends in {:.1} s)",
                    figures.lease_ends_in_ms.unwrap_or(0) as f64 / 1000.0
                ),
                None => String::new(),
            };
            out.push_str(&format!(
                "  {id:<16} {status:<22} {} done, {} failed{held}\n",
                figures.done_objects, figures.failed_objects,
            ));
        }
        out
    }
}

/// `ferry status [ID]` and `ferry list` over a bucket state: each job with its ranges, their
/// status, progress and holders.
pub(crate) async fn status(url: &str, id: Option<String>, json: bool) -> Result<u8> {
    let shared = Shared::open(Some(Path::new(url)), ferry::checkpoint::DEFAULT_LEASE)?;
    let ids = shared.job_ids(id.as_deref()).await?;
    let now = ferry::checkpoint::system_clock()();
    let mut all = Vec::new();
    for id in &ids {
        let job = shared.existing_job(id).await?;
        let mut ranges = Vec::new();
        let (mut done, mut bytes, mut failed) = (0u64, 0u64, 0u64);
        for range in &job.ranges {
            let range = JobId::new(range.as_str())?;
            let loaded = shared
                .ranges
                .load_held(&range)
                .await
                .explain(shared.unreachable("read a range"))?;
            let Some((record, holder)) = loaded else {
                ranges.push(RangeView {
                    id: range,
                    status: RangeStatus::Missing,
                    record: None,
                });
                continue;
            };
            let holder = holder.filter(|h| h.until_ms > now);
            done += record.progress.done_objects;
            bytes += record.progress.done_bytes;
            failed += record.progress.failed.len() as u64;
            ranges.push(RangeView {
                id: range,
                status: RangeStatus::Record(record.status),
                record: Some(RangeFigures {
                    done_objects: record.progress.done_objects,
                    done_bytes: record.progress.done_bytes,
                    failed_objects: record.progress.failed.len() as u64,
                    epoch: record.epoch,
                    lease_ends_in_ms: holder.as_ref().map(|h| h.until_ms - now),
                    holder: holder.map(|h| h.holder),
                }),
            });
        }
        all.push(SharedJobView {
            status: SharedStatus::of(&ranges),
            id: job.id,
            source: job.source,
            target: job.target,
            total_objects: job.objects,
            total_bytes: job.bytes,
            done_objects: done,
            done_bytes: bytes,
            failed_objects: failed,
            ranges,
        });
    }
    if json {
        let text = match id {
            Some(_) => serde_json::to_string_pretty(&all.pop())?,
            None => serde_json::to_string_pretty(&all)?,
        };
        println!("{text}");
        return Ok(EXIT_OK);
    }
    if all.is_empty() {
        println!("no jobs in {}", shared.url);
    }
    for job in &all {
        print!("{}", job.human());
    }
    Ok(EXIT_OK)
}
