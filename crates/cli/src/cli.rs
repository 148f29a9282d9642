//! The command line: every subcommand and flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry::types::{AdaptiveRate, ByteSize, CleanupPolicy, Rate, RateSetting, VerifyMode};

use crate::location::Location;

/// Move a directory tree to a new place while the old one stays in use: copy, verify and
/// forward every file, throttled, checkpointed, pausable and resumable.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 done, 1 error, 2 usage, 3 completed with failed objects, \
                        130 interrupted (paused and saved: `ferry resume ID`). `ferry check`: 0 \
                        the trees match, 1 they differ (or an error)."
)]
pub(crate) struct Cli {
    /// More logs on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,

    /// The state directory: job records, checkpoints, control sockets
    /// [default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry]. For `submit` and `worker`,
    /// the URL of a bucket all workers reach: s3://bucket/ferry-state.
    #[arg(long, global = true, env = "FERRY_STATE", value_name = "DIR|URL")]
    pub(crate) state: Option<PathBuf>,

    /// Objects larger than this are copied in parts that a crash or a stop does not lose: a
    /// resumed job sends only the parts not yet stored (to directories and S3, GCS, Azure).
    #[arg(
        long,
        global = true,
        env = "FERRY_PARTS_ABOVE",
        value_name = "SIZE",
        default_value = "1GiB"
    )]
    pub(crate) parts_above: ByteSize,

    /// The size of those parts (at least 5MiB for S3 but in tests; more when an object would
    /// need over 10,000).
    #[arg(
        long,
        global = true,
        env = "FERRY_PART_SIZE",
        value_name = "SIZE",
        default_value = "16MiB"
    )]
    pub(crate) part_size: ByteSize,

    /// Write a directory DST through the page cache, as most programs do, instead of past it
    /// (O_DIRECT, the default where the file system takes it): for destinations where
    /// uncached writes are slow, such as NFS mounts.
    #[arg(long, global = true, env = "FERRY_CACHED_WRITES")]
    pub(crate) cached_writes: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Whether the command asked for no output but errors.
    pub(crate) fn quiet_logs(&self) -> bool {
        match &self.command {
            Command::Migrate(m) => m.output.quiet,
            Command::Resume(r) => r.output.quiet,
            Command::RetryFailed(r) => r.output.quiet,
            Command::Check(c) => c.output.quiet,
            _ => false,
        }
    }

    /// `--metrics-addr` and `--metrics-linger`, on the commands that take them, and whether
    /// the command is quiet (`-q`).
    pub(crate) fn metrics(&self) -> (crate::exporter::MetricsArgs, bool) {
        let args = match &self.command {
            Command::Migrate(m) => &m.metrics,
            Command::Resume(r) => &r.metrics,
            Command::Check(c) => &c.metrics,
            Command::Serve(s) => &s.metrics,
            Command::Worker(w) => &w.metrics,
            _ => return (crate::exporter::MetricsArgs::default(), false),
        };
        (args.clone(), self.quiet_logs())
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Copy every regular file of SRC to DST (verified, checkpointed); symlinks are skipped.
    Migrate(MigrateArgs),
    /// Compare SRC and DST without changing either: name each file missing on DST, extra on
    /// DST or different (size, then content). Exit codes: 0 the trees match, 1 they differ
    /// (or an error stopped the check), 3 no difference but some files could not be read, 2
    /// usage, 130 interrupted (saved: `ferry resume ID`).
    Check(crate::check::CheckArgs),
    /// Resume a job: a live paused one (through its control socket) or a stopped one from its
    /// checkpoint, run to the end with the options it was started with.
    Resume(ResumeArgs),
    /// Pause a running job (from another shell); `ferry resume ID` continues it.
    Pause(IdArg),
    /// Change a running job's bandwidth limit (e.g. 10MiB, unlimited, auto, auto:200MiB).
    SetRate(SetRateArgs),
    /// Show one job, or every job.
    Status(StatusArgs),
    /// List the jobs of the state directory.
    List(ListArgs),
    /// Cancel a job: running or stopped. Files already copied stay in DST.
    Cancel(IdArg),
    /// Run the failed objects of a job that completed with errors again.
    RetryFailed(RetryArgs),
    /// Move SRC to DST while serving the S3 API for one bucket over both: unmodified S3
    /// clients (boto3, the aws CLI, rclone, SDKs) keep reading, writing, listing and deleting
    /// while the objects move, and when the move completes everything is served from DST.
    Serve(crate::serve::ServeArgs),
    /// Delete a finished or stopped job's record from the state directory.
    Forget(IdArg),
    /// Dry run: what `migrate` would move and how long it takes at the rate. Writes nothing.
    Plan(PlanArgs),
    /// Split a job into key ranges in a shared state bucket (--state s3://bucket/prefix), for
    /// `ferry worker`s on many machines. Nothing moves yet.
    Submit(SubmitArgs),
    /// Claim ranges of the jobs in a shared state bucket and run them, taking over the ranges
    /// of workers whose lease ran out, until every range is finished.
    Worker(WorkerArgs),
    /// A self-contained run showing no failed reads and no lost writes while objects move
    /// under concurrent readers and writers, with a pause, a rate change and a crash.
    Demo(DemoArgs),
}

impl Command {
    /// The subcommand as typed.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Command::Migrate(_) => "migrate",
            Command::Check(_) => "check",
            Command::Resume(_) => "resume",
            Command::Pause(_) => "pause",
            Command::SetRate(_) => "set-rate",
            Command::Status(_) => "status",
            Command::List(_) => "list",
            Command::Cancel(_) => "cancel",
            Command::RetryFailed(_) => "retry-failed",
            Command::Serve(_) => "serve",
            Command::Forget(_) => "forget",
            Command::Plan(_) => "plan",
            Command::Submit(_) => "submit",
            Command::Worker(_) => "worker",
            Command::Demo(_) => "demo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CheckpointKind {
    /// A directory of crash-safe record files (default).
    File,
    /// A sled 0.34 database.
    Sled,
    /// A redb database.
    Redb,
}

impl CheckpointKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::File => "file",
            CheckpointKind::Sled => "sled",
            CheckpointKind::Redb => "redb",
        }
    }
}

#[derive(Debug, Args, Clone, Copy, Default)]
pub(crate) struct OutputArgs {
    /// Print nothing but errors (and how to resume after Ctrl-C).
    #[arg(short, long, conflicts_with = "json")]
    pub(crate) quiet: bool,
    /// Machine-readable output: one JSON object per line on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The source directory.
    #[arg(value_name = "SRC")]
    pub(crate) source: Location,
    /// The destination directory (created when missing).
    #[arg(value_name = "DST")]
    pub(crate) target: Location,
    /// The job id [default: generated]; letters, digits, '.', '_', '-'.
    #[arg(long)]
    pub(crate) id: Option<String>,
    #[command(flatten)]
    pub(crate) select: SelectArgs,
    #[command(flatten)]
    pub(crate) job: JobArgs,
    /// Where the job's checkpoint is kept.
    #[arg(long, value_enum, default_value_t = CheckpointKind::File)]
    pub(crate) checkpoint: CheckpointKind,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
    #[command(flatten)]
    pub(crate) metrics: crate::exporter::MetricsArgs,
}

/// How a job moves each object: `migrate` and `submit` take the same.
#[derive(Debug, Args, Clone)]
pub(crate) struct JobArgs {
    /// How many files move at once (per range, for `submit`).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub(crate) concurrency: u16,
    /// How each copy is checked before it counts as moved.
    #[arg(long, default_value = "checksum", value_parser = parse_verify)]
    pub(crate) verify: VerifyMode,
    /// When source files are deleted: never, after-verify, or grace=DURATION (e.g. grace=30s).
    #[arg(long, default_value = "never", value_parser = parse_cleanup)]
    pub(crate) cleanup: CleanupPolicy,
    /// How many times a file that another program changes in SRC after its copy is copied
    /// again; a file still changing after that is counted "changed", kept in SRC, and makes
    /// the exit code 3 (`retry-failed` moves it once the writers stop).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub(crate) max_changes: u32,
}

impl JobArgs {
    /// The plan options these flags and `select`'s rate give.
    pub(crate) fn options(&self, select: &SelectArgs) -> ferry::types::PlanOptions {
        ferry::types::PlanOptions {
            verify: self.verify,
            cleanup: self.cleanup,
            concurrency: std::num::NonZeroUsize::new(usize::from(self.concurrency))
                .unwrap_or(std::num::NonZeroUsize::MIN),
            rate: select.rate.rate(),
            adaptive: adaptive(select.rate, select.max_latency),
            max_changes: self.max_changes,
            ..ferry::types::PlanOptions::default()
        }
    }
}

#[derive(Debug, Args, Clone)]
pub(crate) struct SelectArgs {
    /// Only files whose path (relative to SRC, '/'-separated) starts with this.
    #[arg(long, default_value = "")]
    pub(crate) prefix: String,
    /// Bandwidth limit, e.g. 50MiB, 1.5GB/s, unlimited; or `auto` (optionally with a
    /// ceiling, auto:200MiB): the rate follows DST's health, backing off when its latency
    /// passes --max-latency or it answers "slow down".
    #[arg(long, default_value = "unlimited", value_parser = parse_rate_setting)]
    pub(crate) rate: RateSetting,
    /// With --rate auto: DST's operation latency (p90 over the last second) above which the
    /// rate backs off [default: 250ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_max_latency)]
    pub(crate) max_latency: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct ResumeArgs {
    /// The job id (`ferry list` shows them).
    pub(crate) id: String,
    /// Run at this rate from now on (saved in the job's record, as `set-rate` saves it):
    /// e.g. 10MiB, unlimited, auto, auto:200MiB.
    #[arg(long, value_parser = parse_rate_setting)]
    pub(crate) rate: Option<RateSetting>,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
    #[command(flatten)]
    pub(crate) metrics: crate::exporter::MetricsArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RetryArgs {
    /// The job id.
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct IdArg {
    /// The job id (`ferry list` shows them).
    pub(crate) id: String,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SetRateArgs {
    /// The job id.
    pub(crate) id: String,
    /// The new limit, e.g. 10MiB, 1.5GB/s, unlimited; or auto, auto:200MiB (the rate follows
    /// DST's health, from the rate in force, with the job's --max-latency or its default).
    #[arg(value_parser = parse_rate_setting)]
    pub(crate) rate: RateSetting,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The job id; every job when omitted.
    pub(crate) id: Option<String>,
    /// Machine-readable output (one JSON document).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Machine-readable output (one JSON array).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// The source directory.
    #[arg(value_name = "SRC")]
    pub(crate) source: Location,
    /// The destination directory.
    #[arg(value_name = "DST")]
    pub(crate) target: Location,
    #[command(flatten)]
    pub(crate) select: SelectArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many objects the source node holds at the start.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(10..=10_000_000))]
    pub(crate) objects: u32,
    /// About how long the migration runs, in seconds (sets the initial rate).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub(crate) seconds: u32,
    /// Machine-readable summary.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The source: a directory every worker reaches at this path, or a bucket URL.
    #[arg(value_name = "SRC")]
    pub(crate) source: Location,
    /// The destination: a directory every worker reaches at this path, or a bucket URL.
    #[arg(value_name = "DST")]
    pub(crate) target: Location,
    /// The job's id, which workers and `--id` name it by.
    #[arg(long)]
    pub(crate) id: String,
    /// How many key ranges to split the job into (about equal object counts): at most this
    /// many workers work on it at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) ranges: u32,
    #[command(flatten)]
    pub(crate) select: SelectArgs,
    #[command(flatten)]
    pub(crate) job: JobArgs,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Work on this job only (default: every job in the shared state).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// How long a claimed range stays this worker's without a renewal: after a crash, another
    /// worker takes the range over this long after the last renewal. At least 3s; keep it
    /// well above the clock offset between machines.
    #[arg(long, default_value = "30s", value_parser = parse_lease)]
    pub(crate) lease: std::time::Duration,
    #[command(flatten)]
    pub(crate) metrics: crate::exporter::MetricsArgs,
}

fn parse_lease(text: &str) -> Result<std::time::Duration, String> {
    let lease = ferry::types::parse_duration(text).map_err(|e| e.to_string())?;
    if lease < std::time::Duration::from_secs(3) {
        return Err(format!("a lease of {text} is too short: give at least 3s"));
    }
    Ok(lease)
}

pub(crate) fn parse_rate_setting(text: &str) -> Result<RateSetting, String> {
    text.parse::<RateSetting>().map_err(|e| e.to_string())
}

pub(crate) fn parse_max_latency(text: &str) -> Result<std::time::Duration, String> {
    let latency = ferry::types::parse_duration(text).map_err(|e| e.to_string())?;
    if latency.is_zero() {
        return Err("a max latency of 0 would count every operation as slow".into());
    }
    Ok(latency)
}

/// The adaptive rate `--rate` and `--max-latency` ask for: `None` for a fixed rate.
pub(crate) fn adaptive(
    rate: RateSetting,
    max_latency: Option<std::time::Duration>,
) -> Option<AdaptiveRate> {
    rate.is_auto().then(|| AdaptiveRate {
        max_latency: max_latency.unwrap_or(AdaptiveRate::DEFAULT_MAX_LATENCY),
        ..AdaptiveRate::default()
    })
}

/// The fixed rate a plan is estimated at: the rate, or an adaptive rate's ceiling.
pub(crate) fn estimate_rate(rate: RateSetting) -> Rate {
    rate.rate()
}

pub(crate) fn parse_verify(text: &str) -> Result<VerifyMode, String> {
    text.parse::<VerifyMode>().map_err(|e| e.to_string())
}

pub(crate) fn parse_cleanup(text: &str) -> Result<CleanupPolicy, String> {
    text.parse::<CleanupPolicy>().map_err(|e| e.to_string())
}
