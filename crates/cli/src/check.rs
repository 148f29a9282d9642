//! `ferry check SRC DST`: compare two trees (directories or buckets) without changing either,
//! as a check job of the engine: checkpointed, throttled, resumable, with progress like
//! `migrate`. Each difference is a failed object of the job's record, so `status`, `resume`
//! and `retry-failed` work on it too.

use anyhow::Result;
use clap::Args;
use ferry::checkpoint::Failure;
use ferry::types::{
    CleanupPolicy, FailureKind, JobId, JobKind, JobSnapshot, JobStatus, MigrationPlan, ObjectKey,
    ObjectSelection, PlanOptions, format_duration,
};
use serde::Serialize;

use crate::cli::{CheckpointKind, OutputArgs, SelectArgs};
use crate::error::{EXIT_ERROR, EXIT_FAILED_OBJECTS, EXIT_OK, fail};
use crate::location::Location;
use crate::progress::{Display, Totals, size};
use crate::run::{self, RunCtx, Signals};
use crate::state::{JobMeta, State};

/// Exit code of a check whose trees differ.
pub(crate) const EXIT_DIFFERENT: u8 = 1;

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The source: a directory or a bucket URL.
    #[arg(value_name = "SRC")]
    pub(crate) source: Location,
    /// The destination to compare with it: a directory or a bucket URL.
    #[arg(value_name = "DST")]
    pub(crate) target: Location,
    /// The job id [default: generated]; letters, digits, '.', '_', '-'.
    #[arg(long)]
    pub(crate) id: Option<String>,
    #[command(flatten)]
    pub(crate) select: SelectArgs,
    /// How many files are compared at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub(crate) concurrency: u16,
    /// Where the check's checkpoint is kept.
    #[arg(long, value_enum, default_value_t = CheckpointKind::File)]
    pub(crate) checkpoint: CheckpointKind,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
    #[command(flatten)]
    pub(crate) metrics: crate::exporter::MetricsArgs,
}

/// Runs `ferry check`: a new check job, to its end or to Ctrl-C.
pub(crate) async fn check(state: &State, args: CheckArgs) -> Result<u8> {
    let signals = Signals::register()?;
    let ends = crate::scan::endpoints(&args.source, &args.target, Some(state.root()))?;
    match &ends.target {
        Location::Local(dir) if !ends.target_exists => {
            return Err(fail(
                format!("the destination {} does not exist", dir.display()),
                "give the directory to compare SRC with",
            ));
        }
        Location::Local(_) => {}
        // A wrong bucket or wrong credentials: an error before any job is recorded.
        bucket => crate::scan::probe_bucket("destination", bucket).await?,
    }
    let id = crate::commands::new_job_id(state, args.id.as_deref(), 'c')?;
    let display = Display::new(args.output);
    let found = crate::scan::survey(&ends.source, &args.select.prefix).await?;
    // Links and special files are compared on neither side; those of SRC are named.
    crate::commands::report_skipped(&display, &found);
    let mut meta = JobMeta::new(
        &id,
        ends.source.clone(),
        ends.target.clone(),
        args.checkpoint,
    );
    meta.kind = JobKind::Check;
    meta.not_regular_skipped = found.skipped.len() as u64;
    let (src, dst) = run::nodes()?;
    let options = PlanOptions {
        cleanup: CleanupPolicy::Never,
        concurrency: std::num::NonZeroUsize::new(usize::from(args.concurrency))
            .unwrap_or(std::num::NonZeroUsize::MIN),
        rate: args.select.rate.rate(),
        adaptive: crate::cli::adaptive(args.select.rate, args.select.max_latency),
        ..PlanOptions::default()
    };
    let plan = MigrationPlan::new(src, dst, ObjectSelection::prefix(&args.select.prefix))
        .with_id(id.clone())
        .with_options(options)
        .with_kind(JobKind::Check);
    state.save_meta(&meta)?;
    let ctx = RunCtx::open(state, id, meta, signals).await?;
    let handle = ctx.start(plan).await?;
    run::run(ctx, handle, display, totals(found.bytes)).await
}

/// What the progress display knows of a check before it ends: the bytes of SRC (the keys
/// compared are those of both sides, so their count is known only at the end).
pub(crate) fn totals(source_bytes: u64) -> Totals {
    Totals {
        objects: None,
        bytes: Some(source_bytes),
    }
}

/// One difference (or a file that could not be compared) as the output names it.
#[derive(Debug, Serialize)]
struct Difference<'a> {
    path: &'a str,
    /// `missing_on_target`, `extra_on_target`, `differs`, or the kind of the error that kept
    /// the file from being compared (`permission_denied`, `transient`, …).
    kind: FailureKind,
    /// `size 10 vs 12`, `content, by blake3`, or the error.
    detail: &'a str,
}

/// The counts of a check's end.
#[derive(Debug, Default, Serialize)]
struct Counts {
    /// Files compared (matching, differing or not readable).
    compared: u64,
    matching: u64,
    missing_on_target: u64,
    extra_on_target: u64,
    different: u64,
    /// Files that could not be compared (read errors).
    errors: u64,
}

/// The last `--json` line of a check.
#[derive(Debug, Serialize)]
struct CheckResult<'a> {
    event: &'static str,
    kind: JobKind,
    id: &'a str,
    status: JobStatus,
    /// Whether the trees match: no difference and no file left uncompared.
    matched: bool,
    #[serde(flatten)]
    counts: Counts,
    bytes_read: u64,
    elapsed_secs: f64,
    differences: Vec<Difference<'a>>,
}

/// Prints a finished check (`failed`: the differences its record holds) and returns its exit
/// code: 0 when the trees match, [`EXIT_DIFFERENT`] when they differ, 3 when they do not
/// differ but some files could not be read, 1 for a cancelled check.
pub(crate) fn report(
    display: &Display,
    id: &JobId,
    snap: &JobSnapshot,
    failed: &[(ObjectKey, Failure)],
) -> u8 {
    let mut counts = Counts {
        compared: snap.done_objects.saturating_sub(snap.skipped_objects) + failed.len() as u64,
        matching: snap.done_objects.saturating_sub(snap.skipped_objects),
        ..Counts::default()
    };
    for (_, failure) in failed {
        match failure.kind {
            FailureKind::MissingOnTarget => counts.missing_on_target += 1,
            FailureKind::ExtraOnTarget => counts.extra_on_target += 1,
            FailureKind::Differs => counts.different += 1,
            _ => counts.errors += 1,
        }
    }
    let differing = counts.missing_on_target + counts.extra_on_target + counts.different;
    let code = match snap.status {
        JobStatus::Completed | JobStatus::CompletedWithErrors if differing > 0 => EXIT_DIFFERENT,
        JobStatus::CompletedWithErrors => EXIT_FAILED_OBJECTS,
        JobStatus::Completed => EXIT_OK,
        _ => EXIT_ERROR,
    };
    let differences = failed.iter().map(|(key, failure)| Difference {
        path: key.as_str(),
        kind: failure.kind,
        detail: &failure.last_error,
    });
    if display.is_json() {
        display.event(CheckResult {
            event: "done",
            kind: JobKind::Check,
            id: id.as_str(),
            status: snap.status,
            matched: code == EXIT_OK,
            counts,
            bytes_read: snap.bytes_copied,
            elapsed_secs: snap.elapsed.as_secs_f64(),
            differences: differences.collect(),
        });
        return code;
    }
    // The differences are the check's answer: printed even with --quiet.
    for difference in differences {
        println!("{}", line(&difference));
    }
    if snap.status == JobStatus::Cancelled {
        eprintln!("ferry: check {id} was cancelled: the trees were compared only in part");
    } else if !display.is_quiet() {
        let took = format_duration(std::time::Duration::from_millis(
            snap.elapsed.as_millis() as u64
        ));
        let verdict = match code {
            EXIT_OK => "the trees match".to_owned(),
            EXIT_DIFFERENT => format!(
                "{differing} differences: {} missing on DST, {} extra on DST, {} different",
                counts.missing_on_target, counts.extra_on_target, counts.different
            ),
            _ => "no difference found, but some files could not be compared".to_owned(),
        };
        let errors = match counts.errors {
            0 => String::new(),
            n => format!(", {n} could not be read"),
        };
        println!(
            "ferry: check {id}: {verdict} ({} files compared, {} matching{errors}; {} read in {took})",
            counts.compared,
            counts.matching,
            size(snap.bytes_copied),
        );
    }
    code
}

/// `missing on DST: path`, `extra on DST: path`, `different: path (size 10 vs 12)`, or
/// `error: path: the error`.
fn line(difference: &Difference<'_>) -> String {
    let path = difference.path;
    match difference.kind {
        FailureKind::MissingOnTarget => format!("missing on DST: {path}"),
        FailureKind::ExtraOnTarget => format!("extra on DST: {path}"),
        FailureKind::Differs => format!("different: {path} ({})", difference.detail),
        _ => format!("error: {path}: {}", difference.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_difference_has_its_line() {
        let cases = [
            (FailureKind::MissingOnTarget, "", "missing on DST: a/b"),
            (FailureKind::ExtraOnTarget, "", "extra on DST: a/b"),
            (
                FailureKind::Differs,
                "size 10 vs 12",
                "different: a/b (size 10 vs 12)",
            ),
            (
                FailureKind::PermissionDenied,
                "permission denied",
                "error: a/b: permission denied",
            ),
        ];
        for (kind, detail, expected) in cases {
            let difference = Difference {
                path: "a/b",
                kind,
                detail,
            };
            assert_eq!(line(&difference), expected);
        }
    }
}
