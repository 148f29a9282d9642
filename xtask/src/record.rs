//! The end-to-end comparisons of SPEC §8 as recorded runs: alternating pairs, one result file
//! per run under `docs/bench/`, and the tables generated from every result file.
//!
//! A case compares A (Ferry) with B (its peer) in `--pairs N` alternating pairs (A B, B A, …);
//! a third command may run beside them in each pair, reported but not compared. Each pair
//! gives one ratio (A's time ÷ B's, or B's ÷ A's for a throughput target); a run's figure is
//! the median of its pair ratios with their spread, and its target is met only when that
//! median meets it. `cargo xtask bench tables` regenerates every `<!-- generated: NAME begin
//! -->` … `<!-- generated: NAME end -->` block of [`GENERATED_IN`] from all result files;
//! every run is kept.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ab_bench::git;
use crate::cli_bench::{env_dir, median, target_dir};
use crate::serve_bench::tools::output;

/// The files whose generated blocks `bench tables` rewrites, from the workspace root.
const GENERATED_IN: &[&str] = &[
    "docs/benchmarks.md",
    "crates/cli/README.md",
    "crates/object-store/README.md",
];

/// Fewer pairs than this is a trial, never a recorded run (SPEC §8).
const MIN_PAIRS: usize = 5;

/// Pairs when `--pairs` is not given: an even number, so each side runs first as often as
/// the other (on these machines the run after the harness's own cleanup can differ from the
/// one after the other tool: docs/benchmarks.md, the 10k and 1 GiB cases).
const DEFAULT_PAIRS: usize = 6;

/// Which way a pair's ratio is taken.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Ratio {
    /// A's time ÷ B's time: below 1 is Ferry faster.
    Time,
    /// A's throughput ÷ B's (B's time ÷ A's time): above 1 is Ferry faster.
    Throughput,
}

impl Ratio {
    pub(crate) fn of(self, pair: &Pair) -> f64 {
        match self {
            Ratio::Time => pair.a.secs / pair.b.secs,
            Ratio::Throughput => pair.b.secs / pair.a.secs,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Ratio::Time => "A's time ÷ B's",
            Ratio::Throughput => "A's throughput ÷ B's",
        }
    }
}

/// The target on the median pair ratio.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    pub(crate) fn met(self, median: f64) -> bool {
        match self {
            Target::AtMost(limit) => median <= limit,
            Target::AtLeast(limit) => median >= limit,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AtMost(limit) => write!(f, "≤ {limit}×"),
            Target::AtLeast(limit) => write!(f, "≥ {limit}×"),
        }
    }
}

/// A comparison of SPEC §8: what `cargo xtask bench NAME` runs.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) a: &'static str,
    pub(crate) b: &'static str,
    /// Run in each pair beside A and B, reported, not compared.
    pub(crate) beside: Option<&'static str>,
    pub(crate) ratio: Ratio,
    pub(crate) target: Target,
}

/// Every case, in the order of the status table.
pub(crate) const CASES: &[Case] = &[
    Case {
        name: "cli-10k",
        what: "`ferry migrate` dir → dir, 10k × 64 KiB, checksum verify, copies durable",
        a: "ferry migrate --verify checksum",
        b: "rclone copy --checksum --transfers 16",
        beside: None,
        ratio: Ratio::Time,
        target: Target::AtMost(0.85),
    },
    Case {
        name: "cli-1g",
        what: "`ferry migrate` dir → dir, one 1 GiB file, checksum verify, durable",
        a: "ferry migrate --verify checksum",
        b: "cp + sync -f",
        beside: Some("cp"),
        ratio: Ratio::Throughput,
        target: Target::AtLeast(1.05),
    },
    Case {
        name: "check",
        what: "`ferry check`, 10k × 64 KiB, identical trees",
        a: "ferry check",
        b: "rclone check --checksum --checkers 16",
        beside: None,
        ratio: Ratio::Time,
        target: Target::AtMost(1.0),
    },
    Case {
        name: "s3-10k",
        what: "`ferry migrate` dir → S3, 10k × 64 KiB",
        a: "ferry migrate --verify checksum",
        b: "rclone copy --checksum --transfers 16",
        beside: None,
        ratio: Ratio::Time,
        target: Target::AtMost(1.0),
    },
    Case {
        name: "s3-1g",
        what: "`ferry migrate` dir → S3, one 1 GiB object",
        a: "ferry migrate --verify checksum",
        b: "rclone copy --checksum --transfers 16",
        beside: None,
        ratio: Ratio::Time,
        target: Target::AtMost(1.0),
    },
    Case {
        name: "s3s3-10k",
        what: "`ferry migrate` S3 → S3, 10k × 64 KiB",
        a: "ferry migrate --verify checksum",
        b: "rclone copy --checksum --transfers 16",
        beside: None,
        ratio: Ratio::Time,
        target: Target::AtMost(1.0),
    },
    Case {
        name: "s3s3-1g",
        what: "`ferry migrate` S3 → S3, one 1 GiB object",
        a: "ferry migrate --verify checksum",
        b: "rclone copy --checksum --transfers 16",
        beside: None,
        ratio: Ratio::Time,
        target: Target::AtMost(1.0),
    },
    Case {
        name: "engine",
        what: "engine MemStore → MemStore, 100k × 4 KiB, checksum verify, cleanup",
        a: "ferry_job",
        b: "plain_loop (get/put/delete)",
        beside: None,
        ratio: Ratio::Throughput,
        target: Target::AtLeast(0.8),
    },
];

pub(crate) fn case(name: &str) -> Result<&'static Case, String> {
    CASES
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("no bench case `{name}`"))
}

/// `--pairs N` and `--dry`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Options {
    pub(crate) pairs: usize,
    /// A trial: prints the result, writes nothing under `docs/`.
    pub(crate) dry: bool,
}

pub(crate) fn parse_options(args: &[String]) -> Result<Options, String> {
    const USAGE: &str = "usage: cargo xtask bench CASE [--pairs N (≥ 5)] [--dry]";
    let mut options = Options {
        pairs: DEFAULT_PAIRS,
        dry: false,
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--dry" => options.dry = true,
            "--pairs" => {
                options.pairs = rest
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or(USAGE)?;
            }
            _ => return Err(USAGE.to_owned()),
        }
    }
    if options.pairs < MIN_PAIRS && !options.dry {
        return Err(format!(
            "a recorded run takes at least {MIN_PAIRS} pairs (SPEC §8); add --dry for a trial"
        ));
    }
    Ok(options)
}

/// One timed command: wall seconds and peak RSS.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Run {
    pub(crate) secs: f64,
    #[serde(default)]
    pub(crate) rss_kib: u64,
}

impl From<(f64, u64)> for Run {
    fn from((secs, rss_kib): (f64, u64)) -> Self {
        Run { secs, rss_kib }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Pair {
    /// Whether A ran before B in this pair.
    pub(crate) a_first: bool,
    pub(crate) a: Run,
    pub(crate) b: Run,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) beside: Option<Run>,
    pub(crate) ratio: f64,
}

/// Which command of a pair to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Side {
    A,
    B,
    Beside,
}

/// `pairs` alternating pairs (A B, B A, …), the command beside them (if the case has one)
/// first in each pair; `after_pair` runs, untimed, after each.
pub(crate) fn run_pairs(
    case: &Case,
    pairs: usize,
    mut run: impl FnMut(Side) -> Result<Run, String>,
    mut after_pair: impl FnMut() -> Result<(), String>,
) -> Result<Vec<Pair>, String> {
    let mut out = Vec::new();
    for i in 0..pairs {
        let beside = match case.beside {
            Some(_) => Some(run(Side::Beside)?),
            None => None,
        };
        let a_first = i % 2 == 0;
        let (a, b) = if a_first {
            let a = run(Side::A)?;
            (a, run(Side::B)?)
        } else {
            let b = run(Side::B)?;
            (run(Side::A)?, b)
        };
        let mut pair = Pair {
            a_first,
            a,
            b,
            beside,
            ratio: 0.0,
        };
        pair.ratio = case.ratio.of(&pair);
        eprintln!(
            "xtask: {} pair {}: A {:.2} s, B {:.2} s: {:.2}×",
            case.name,
            i + 1,
            a.secs,
            b.secs,
            pair.ratio
        );
        out.push(pair);
        after_pair()?;
    }
    Ok(out)
}

/// The median of `ratios` and their spread (lowest, highest).
pub(crate) fn summarize(ratios: &[f64]) -> (f64, f64, f64) {
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let mut sorted = ratios.to_vec();
    (median(&mut sorted), lo, hi)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Machine {
    /// `nproc`.
    pub(crate) nproc: String,
    /// `uname -r`.
    pub(crate) kernel: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute figures before the first pair and after the last.
    pub(crate) load_before: String,
    pub(crate) load_after: String,
}

/// One run of a case: the content of a result file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) case: String,
    pub(crate) what: String,
    /// The command that made this run.
    pub(crate) command: String,
    pub(crate) commit: String,
    /// Uncommitted changes, when it started, to tracked files that can change what is measured
    /// (any but Markdown and result files: see [`measured`]).
    pub(crate) dirty: bool,
    /// Every tracked file with uncommitted changes when it started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) changed: Vec<String>,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`, when the first pair started.
    pub(crate) started: String,
    pub(crate) machine: Machine,
    /// The commands of A, B and the one beside them, as run in the first pair.
    pub(crate) a: String,
    pub(crate) b: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) beside: Option<String>,
    pub(crate) ratio: Ratio,
    pub(crate) target: Target,
    pub(crate) pairs: Vec<Pair>,
    pub(crate) median_ratio: f64,
    pub(crate) min_ratio: f64,
    pub(crate) max_ratio: f64,
    pub(crate) met: bool,
    /// Anything else measured in the run, in a sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) notes: Vec<String>,
}

/// What a case knows before its first pair.
pub(crate) struct Start {
    started: String,
    load_before: String,
    commit: String,
    changed: Vec<String>,
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn start() -> Result<Start, String> {
    let root = env_dir()?.join("..");
    Ok(Start {
        started: output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"], &root),
        load_before: load_average(),
        commit: git(&root, &["rev-parse", "--short", "HEAD"])?,
        changed: git(&root, &["status", "--porcelain", "--untracked-files=no"])?
            .lines()
            .map(|l| l.get(3..).unwrap_or(l).to_owned())
            .collect(),
    })
}

/// Whether an uncommitted change to `path` can change what a run measures: not for the
/// Markdown files and result files that the runs before it regenerate.
fn measured(path: &str) -> bool {
    !(path.ends_with(".md") || path.starts_with("docs/bench/"))
}

/// The commands a case ran: A's, B's, and the one beside them.
pub(crate) struct Commands {
    pub(crate) a: String,
    pub(crate) b: String,
    pub(crate) beside: Option<String>,
}

/// Makes the run's record from its pairs; prints it; unless `options.dry`, writes it to
/// `docs/bench/CASE-COMMIT-DATETIME.json` and regenerates the tables.
pub(crate) fn finish(
    case: &Case,
    options: Options,
    start: Start,
    commands: Commands,
    pairs: Vec<Pair>,
    notes: Vec<String>,
) -> Result<(), String> {
    let root = env_dir()?.join("..");
    let ratios: Vec<f64> = pairs.iter().map(|p| p.ratio).collect();
    let (median_ratio, min_ratio, max_ratio) = summarize(&ratios);
    let record = Record {
        case: case.name.to_owned(),
        what: case.what.to_owned(),
        command: format!(
            "cargo xtask bench {} --pairs {}{}",
            case.name,
            options.pairs,
            if options.dry { " --dry" } else { "" }
        ),
        commit: start.commit,
        dirty: start.changed.iter().any(|path| measured(path)),
        changed: start.changed,
        started: start.started,
        machine: Machine {
            nproc: output("nproc", &[], &root),
            kernel: output("uname", &["-r"], &root),
            load_before: start.load_before,
            load_after: load_average(),
        },
        a: relative(&commands.a)?,
        b: relative(&commands.b)?,
        beside: commands.beside.as_deref().map(relative).transpose()?,
        ratio: case.ratio,
        target: case.target,
        pairs,
        median_ratio,
        min_ratio,
        max_ratio,
        met: case.target.met(median_ratio),
        notes,
    };
    let json = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
    println!("{}", run_table(case, std::slice::from_ref(&record)));
    if options.dry {
        println!("{json}");
        eprintln!("xtask: a trial (--dry): nothing written under docs/");
        return Ok(());
    }
    let dir = root.join("docs/bench");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stamp: String = record
        .started
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let file = dir.join(format!("{}-{}-{stamp}.json", case.name, record.commit));
    fs::write(&file, json + "\n").map_err(|e| format!("{}: {e}", file.display()))?;
    eprintln!("xtask: wrote {}", file.display());
    tables()
}

/// `command` with the target directory written `target` (the files record no local path).
fn relative(command: &str) -> Result<String, String> {
    let target = target_dir()?;
    let target = fs::canonicalize(&target).unwrap_or(target);
    Ok(command.replace(&*target.to_string_lossy(), "target"))
}

/// Every result file under `docs/bench/` (`*.json`), oldest first.
fn load_records(dir: &Path) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for file in files {
        let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let record: Record =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        records.push(record);
    }
    records.sort_by(|x, y| x.started.cmp(&y.started));
    Ok(records)
}

/// `cargo xtask bench tables`: regenerates every generated block of [`GENERATED_IN`].
pub(crate) fn tables() -> Result<(), String> {
    let root = env_dir()?.join("..");
    let records = load_records(&root.join("docs/bench"))?;
    for name in GENERATED_IN {
        let path = root.join(name);
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let new = replace_blocks(&text, |block| render(block, &records))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if new != text {
            fs::write(&path, new).map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("xtask: regenerated the tables of {name}");
        }
    }
    Ok(())
}

/// A block's content: `status [CASE…]` (the summary of those cases, or of all) or `CASE`
/// (every run of it).
fn render(block: &str, records: &[Record]) -> Result<String, String> {
    let mut words = block.split_whitespace();
    match words.next() {
        Some("status") => {
            let names: Vec<&str> = words.collect();
            let cases: Vec<&Case> = if names.is_empty() {
                CASES.iter().collect()
            } else {
                names.iter().map(|n| case(n)).collect::<Result<_, _>>()?
            };
            Ok(status_table(&cases, records))
        }
        Some(name) => {
            let case = case(name)?;
            let runs: Vec<Record> = records
                .iter()
                .filter(|r| r.case == case.name)
                .cloned()
                .collect();
            Ok(run_table(case, &runs))
        }
        None => Err("a generated block without a name".to_owned()),
    }
}

fn ratio_cell(r: &Record) -> String {
    format!(
        "{:.2}× ({:.2}–{:.2})",
        r.median_ratio, r.min_ratio, r.max_ratio
    )
}

/// How many of `runs` met the target, as "k of n runs".
fn met_count(runs: &[&Record]) -> String {
    let met = runs.iter().filter(|r| r.met).count();
    if runs.is_empty() {
        return "—".to_owned();
    }
    format!(
        "{met} of {} run{}",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    )
}

/// One row per case: its target, the last run's median pair ratio and how many runs met it.
fn status_table(cases: &[&Case], records: &[Record]) -> String {
    let mut out = String::from(
        "| what | A vs B | target (median pair ratio) | last run: median (spread) | met in |\n|---|---|---|---|---|\n",
    );
    for case in cases {
        let runs: Vec<&Record> = records.iter().filter(|r| r.case == case.name).collect();
        let last = match runs.last() {
            Some(r) => format!(
                "{}, `{}`: **{}** {}",
                &r.started[..r.started.len().min(10)],
                r.commit,
                ratio_cell(r),
                if r.met { "✔" } else { "✘" }
            ),
            None => format!("no recorded run (`cargo xtask bench {}`)", case.name),
        };
        let _ = writeln!(
            out,
            "| {} | {} vs {} | {} ({}) | {last} | {} |",
            case.what,
            case.a,
            case.b,
            case.target,
            case.ratio.describe(),
            met_count(&runs)
        );
    }
    out
}

/// Every run of a case, one row each, and how many met the target.
fn run_table(case: &Case, runs: &[Record]) -> String {
    if runs.is_empty() {
        return format!("No recorded run yet: `cargo xtask bench {}`.\n", case.name);
    }
    let beside = case.beside.map_or(String::new(), |b| format!(" {b} s |"));
    let mut out = format!(
        "| run (UTC) | commit | load before → after | pairs | A s (median) | B s (median) |{beside} A peak RSS | ratio: median (min–max) | {} |\n|---|---|---|---|---|---|{}---|---|---|\n",
        case.target,
        if case.beside.is_some() { "---|" } else { "" }
    );
    for r in runs {
        let secs = |f: fn(&Pair) -> Option<Run>| {
            let mut v: Vec<f64> = r
                .pairs
                .iter()
                .filter_map(|p| f(p).map(|x| x.secs))
                .collect();
            if v.is_empty() {
                "—".to_owned()
            } else {
                format!("{:.2}", median(&mut v))
            }
        };
        let rss = r.pairs.iter().map(|p| p.a.rss_kib).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {} | `{}`{} | {} → {} | {} | {} | {} |{} {} | {} | {} |",
            r.started.replace('T', " ").trim_end_matches('Z'),
            r.commit,
            if r.dirty { " (dirty)" } else { "" },
            r.machine.load_before,
            r.machine.load_after,
            r.pairs.len(),
            secs(|p| Some(p.a)),
            secs(|p| Some(p.b)),
            if case.beside.is_some() {
                format!(" {} |", secs(|p| p.beside))
            } else {
                String::new()
            },
            if rss == 0 {
                "—".to_owned()
            } else {
                format!("{} MiB", rss / 1024)
            },
            ratio_cell(r),
            if r.met { "met ✔" } else { "not met ✘" },
        );
    }
    for r in runs {
        for note in &r.notes {
            let _ = writeln!(
                out,
                "\n{} `{}`: {note}.",
                r.started.replace('T', " ").trim_end_matches('Z'),
                r.commit
            );
        }
    }
    let all: Vec<&Record> = runs.iter().collect();
    let _ = writeln!(
        out,
        "\nA: {}; B: {}{}. Ratio per pair: {}; target {} on the median pair ratio, met in {}. \
         Every pair in `docs/bench/{}-*.json`.",
        case.a,
        case.b,
        case.beside.map_or(String::new(), |b| format!(
            "; beside them, not compared: {b}"
        )),
        case.ratio.describe(),
        case.target,
        met_count(&all),
        case.name
    );
    out
}

const MARK: &str = "<!-- generated: ";

/// `text` with the content of each `<!-- generated: NAME begin -->` … `<!-- generated: NAME
/// end -->` block replaced by `render(NAME)`, on lines of its own between the markers; every
/// byte outside the blocks is kept.
pub(crate) fn replace_blocks(
    text: &str,
    render: impl Fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let close = after
            .find(" -->")
            .ok_or("a generated marker without ` -->`")?;
        let Some(name) = after[..close].strip_suffix(" begin") else {
            return Err(format!("`{MARK}{} -->` without its begin", &after[..close]));
        };
        let begin_end = at + MARK.len() + close + " -->".len();
        let end_marker = format!("{MARK}{name} end -->");
        let end = rest[begin_end..]
            .find(&end_marker)
            .ok_or_else(|| format!("no `{end_marker}`"))?
            + begin_end;
        let mut content = render(name)?;
        if !content.ends_with('\n') {
            content.push('\n');
        }
        out.push_str(&rest[..begin_end]);
        out.push('\n');
        out.push_str(&content);
        rest = &rest[end..];
        out.push_str(&rest[..end_marker.len()]);
        rest = &rest[end_marker.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secs: f64) -> Run {
        Run { secs, rss_kib: 0 }
    }

    #[test]
    fn summary_is_the_median_and_the_spread_of_the_ratios() {
        assert_eq!(summarize(&[0.9, 0.7, 1.2, 0.8, 1.0]), (0.9, 0.7, 1.2));
        assert_eq!(summarize(&[2.0, 1.0, 4.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn a_time_ratio_is_a_over_b_and_a_throughput_ratio_b_over_a() {
        let pair = Pair {
            a_first: true,
            a: run(2.0),
            b: run(4.0),
            beside: None,
            ratio: 0.0,
        };
        assert_eq!(Ratio::Time.of(&pair), 0.5);
        assert_eq!(Ratio::Throughput.of(&pair), 2.0);
    }

    #[test]
    fn a_target_is_met_only_by_a_median_on_its_side() {
        assert!(Target::AtMost(0.85).met(0.85));
        assert!(!Target::AtMost(0.85).met(0.86));
        assert!(Target::AtLeast(1.05).met(1.05));
        assert!(!Target::AtLeast(1.05).met(1.04));
    }

    #[test]
    fn pairs_alternate_and_the_command_beside_runs_first() {
        let mut order = Vec::new();
        let pairs = run_pairs(
            case("cli-1g").unwrap(),
            3,
            |side| {
                order.push(side);
                Ok(run(match side {
                    Side::A => 1.0,
                    Side::B => 2.0,
                    Side::Beside => 0.5,
                }))
            },
            || Ok(()),
        )
        .unwrap();
        use Side::*;
        assert_eq!(order, [Beside, A, B, Beside, B, A, Beside, A, B]);
        assert!(pairs.iter().all(|p| p.ratio == 2.0));
        assert_eq!(
            pairs.iter().map(|p| p.a_first).collect::<Vec<_>>(),
            [true, false, true]
        );
    }

    #[test]
    fn only_changes_outside_markdown_and_results_make_a_run_dirty() {
        assert!(!measured("docs/benchmarks.md"));
        assert!(!measured("docs/bench/cli-10k-abc-20261204T140000Z.json"));
        assert!(measured("crates/store/src/dir.rs"));
        assert!(measured("Cargo.lock"));
    }

    #[test]
    fn fewer_than_five_pairs_is_refused_unless_dry() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse_options(&args(&["--pairs", "4"])).is_err());
        assert_eq!(
            parse_options(&args(&["--pairs", "1", "--dry"])),
            Ok(Options {
                pairs: 1,
                dry: true
            })
        );
        assert_eq!(parse_options(&args(&["--pairs", "5"])).unwrap().pairs, 5);
        // By default an even number: each side goes first as often.
        assert_eq!(parse_options(&args(&[])).unwrap().pairs % 2, 0);
    }

    #[test]
    fn replacing_blocks_keeps_every_other_byte() {
        let text = "head\r\n<!-- generated: a begin -->\nold\n<!-- generated: a end -->tail \n\
                    mid<!-- generated: status x begin --><!-- generated: status x end -->\nend";
        let new = replace_blocks(text, |name| Ok(format!("[{name}]"))).unwrap();
        assert_eq!(
            new,
            "head\r\n<!-- generated: a begin -->\n[a]\n<!-- generated: a end -->tail \n\
             mid<!-- generated: status x begin -->\n[status x]\n<!-- generated: status x end -->\nend"
        );
        // Generating again changes nothing.
        assert_eq!(
            replace_blocks(&new, |name| Ok(format!("[{name}]"))).unwrap(),
            new
        );
        assert_eq!(
            replace_blocks("no blocks\n", |_| Ok(String::new())).unwrap(),
            "no blocks\n"
        );
        assert!(replace_blocks("<!-- generated: a begin -->", |_| Ok(String::new())).is_err());
    }

    #[test]
    fn a_run_counts_as_met_by_its_median_only() {
        let case = case("cli-10k").unwrap();
        let record = |median_ratio: f64, met: bool| Record {
            case: case.name.to_owned(),
            what: String::new(),
            command: String::new(),
            commit: "abc".to_owned(),
            dirty: false,
            changed: Vec::new(),
            started: "2026-12-04T14:00:00Z".to_owned(),
            machine: Machine {
                nproc: "2".to_owned(),
                kernel: String::new(),
                load_before: String::new(),
                load_after: String::new(),
            },
            a: String::new(),
            b: String::new(),
            beside: None,
            ratio: Ratio::Time,
            target: case.target,
            pairs: Vec::new(),
            median_ratio,
            min_ratio: 0.5,
            max_ratio: 1.5,
            met,
            notes: Vec::new(),
        };
        let table = run_table(case, &[record(0.8, true), record(0.9, false)]);
        assert!(table.contains("met in 1 of 2 runs"), "{table}");
        assert!(table.contains("0.80× (0.50–1.50) | met ✔"), "{table}");
        assert!(table.contains("0.90× (0.50–1.50) | not met ✘"), "{table}");
    }
}
