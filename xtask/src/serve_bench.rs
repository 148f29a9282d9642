//! `cargo xtask bench serve [--pairs N] [--seconds S] [--concurrency C]`: `ferry serve`
//! against the S3 server it is compared with (SPEC §8), in the same run.
//!
//! - **Direct vs gateway.** The `s3_server` example (s3s-fs) serves directory `D` as bucket
//!   `bench`; `ferry serve EMPTY D --bucket bench`, whose job has nothing to move, serves the
//!   same directory. The `s3_load` example measures GET and PUT of 4 KiB and 1 MiB objects
//!   against each, in alternating pairs; per pair, the ratio gateway ÷ direct of the p50.
//!   Target: median ≤ 1.25×.
//! - **During a move vs idle.** A second `ferry serve` moves a tree (64 KiB files, `--rate`,
//!   `--cleanup after-verify`) whose copies of the GET keys sort last, so that they are still
//!   moving when read; its p99 while its job runs is paired with the idle gateway's, the moving
//!   job paused (`ferry pause`) while the idle one is measured, so that the idle figure is not
//!   the move's too. Target: median of during ÷ idle p99 ≤ 2×.
//!
//! The machine is shared: before each pair the bench waits until no `rustc` runs and the CPU
//! is under 15% busy (at most 20 minutes; the pair's row says so when it gave up); before each
//! measurement, a `sync` (a gateway's PUT syncs the file system, and must not pay for another
//! server's writes) and no `rustc`; a pair during which a build started is measured again.
//! Every pair goes to `docs/bench/serve-<commit>.md` (a new file per run); the Markdown tables
//! for `docs/benchmarks.md` go to stdout.

pub(crate) mod tools;

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use self::tools::{Bench, Gateway, Sample, output, quiet_pair, start_direct};
use crate::cli_bench::{env_dir, median, sh, write_file};
use crate::record::summarize;

/// The credentials of the `s3_server` example, given to `ferry serve` too.
const ACCESS_KEY: &str = "ferry-test-access-key";
const SECRET_KEY: &str = "ferry-test-secret-key";
const BUCKET: &str = "bench";
/// Requests started in the first second of a measurement are not counted.
const WARMUP: &str = "1s";
/// The moving job's rate, and the size of its files.
const MOVE_RATE: &str = "16MiB";
const MOVE_RATE_BYTES: u64 = 16 << 20;
const MOVE_FILE: usize = 64 << 10;
/// How often a pair is measured again when a build started during it.
const RETRIES: usize = 3;

/// One load: an operation on one object size.
struct Case {
    name: &'static str,
    op: &'static str,
    size: &'static str,
    /// The key set: `PREFIX:N` (GETs read it, written before; PUTs write fresh keys under
    /// `PREFIX`).
    keys: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "GET 4 KiB",
        op: "get",
        size: "4KiB",
        keys: "g4k-:1024",
    },
    Case {
        name: "GET 1 MiB",
        op: "get",
        size: "1MiB",
        keys: "g1m-:128",
    },
    Case {
        name: "PUT 4 KiB",
        op: "put",
        size: "4KiB",
        keys: "p4k-:0",
    },
    Case {
        name: "PUT 1 MiB",
        op: "put",
        size: "1MiB",
        keys: "p1m-:0",
    },
];

struct Settings {
    pairs: usize,
    seconds: u64,
    concurrency: usize,
}

fn parse(args: &[String]) -> Result<Settings, String> {
    const USAGE: &str =
        "usage: cargo xtask bench serve [--pairs N (≥ 5)] [--seconds S] [--concurrency C]";
    let mut settings = Settings {
        pairs: 5,
        seconds: 5,
        concurrency: 4,
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value: u64 = rest
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .ok_or(USAGE)?;
        match flag.as_str() {
            "--pairs" => settings.pairs = usize::try_from(value).map_err(|_| USAGE)?,
            "--seconds" => settings.seconds = value,
            "--concurrency" => settings.concurrency = usize::try_from(value).map_err(|_| USAGE)?,
            _ => return Err(USAGE.to_owned()),
        }
    }
    if settings.pairs < 5 {
        eprintln!("xtask: fewer than 5 pairs: a trial, not a result (SPEC §8)");
    }
    Ok(settings)
}

fn median_of(samples: &[Sample], metric: impl Fn(&Sample) -> f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(metric).collect();
    median(&mut values)
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let settings = parse(args)?;
    let root = env_dir()?.join("..");
    let target = crate::cli_bench::target_dir()?;
    crate::cargo(&["build", "--release", "-p", "ferry-cli"], &[])?;
    crate::cargo(
        &[
            "build",
            "--release",
            "-p",
            "ferry-object-store",
            "--features",
            "test-server",
            "--example",
            "s3_server",
            "--example",
            "s3_load",
        ],
        &[],
    )?;
    let release = target.join("release");
    let canonical = |p: PathBuf| fs::canonicalize(&p).map_err(|e| format!("{}: {e}", p.display()));
    let work = target.join("serve-bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let work = canonical(work)?;
    let bench = Bench {
        ferry: canonical(release.join("ferry"))?,
        load: canonical(release.join("examples/s3_load"))?,
        settings,
        work: work.clone(),
    };
    let server_bin = canonical(release.join("examples/s3_server"))?;

    let commit = output("git", &["rev-parse", "--short", "HEAD"], &root);
    let dirty = !output(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        &root,
    )
    .is_empty();
    let machine = format!(
        "{} CPUs (`nproc`), Linux {} (`uname -r`)",
        output("nproc", &[], &root),
        output("uname", &["-r"], &root)
    );
    let started = output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &root);

    // D: the directory both serve. The direct server's root holds only it (s3s-fs keeps its
    // metadata beside the buckets, not in them).
    let direct_root = work.join("direct");
    let dir_d = direct_root.join(BUCKET);
    let empty = work.join("empty");
    for dir in [&dir_d, &empty] {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let direct = start_direct(&server_bin, &direct_root, false)?;
    let fsynced = start_direct(&server_bin, &direct_root, true)?;
    eprintln!(
        "xtask: direct s3s-fs server at {}, with --fsync at {}",
        direct.endpoint, fsynced.endpoint
    );
    // The GET keys, written through the direct server (which then knows their ETags, as it
    // knows those of the objects it is given).
    for case in CASES.iter().filter(|c| c.op == "get") {
        bench.fill(&direct.endpoint, case)?;
    }
    let idle_state = work.join("state-idle");
    let idle = bench.serve(&empty, &dir_d, "bench-idle", &idle_state, &[])?;
    bench.wait_completed(&idle_state, "bench-idle")?;

    let s = &bench.settings;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# `ferry serve` vs the direct S3 server, commit {commit}{}\n\n\
         Run of {started}. Machine: {machine}. Command: `cargo xtask bench serve --pairs {} \
         --seconds {} --concurrency {}`.\n\n\
         Each measurement: `s3_load` (one Tokio thread, object_store's S3 client, \
         `UNSIGNED-PAYLOAD`), {} requests in flight for {} s after a {WARMUP} warmup; \
         p50 / p99 / max latency (ms), requests and MiB per second. A `sync` before each. PUTs \
         write fresh keys (deleted after the measurement); GETs read g4k-: 1024 × 4 KiB or \
         g1m-: 128 × 1 MiB round robin, in the page cache, written through the direct server \
         before the gateway started.",
        if dirty { " (uncommitted changes)" } else { "" },
        s.pairs,
        s.seconds,
        s.concurrency,
        s.concurrency,
        s.seconds,
    );
    let servers = Servers {
        direct: &direct.endpoint,
        fsynced: &fsynced.endpoint,
        idle: &idle.url,
    };
    let table = direct_vs_gateway(&bench, &servers, &mut report)?;
    drop(direct);
    drop(fsynced);

    // The tree the second gateway moves: 64 KiB files, then the GET keys (sorting after the
    // filler, so still on SRC, or moving, when read).
    let move_src = work.join("move-src");
    let planned = CASES.len() as u64 * s.pairs as u64 * (s.seconds + 4);
    let files = planned * MOVE_RATE_BYTES * 3 / 2 / MOVE_FILE as u64 + 1;
    eprintln!("xtask: writing the tree to move: {files} × 64 KiB");
    for i in 0..files {
        write_file(
            &move_src.join(format!("a-fill-{i:07}")),
            MOVE_FILE,
            i + 1_000_000,
        )?;
    }
    sh(&format!(
        "cp {d}/g4k-* {d}/g1m-* {}/ && sync",
        move_src.display(),
        d = dir_d.display()
    ))?;
    let move_state = work.join("state-move");
    let moving = bench.serve(
        &move_src,
        &work.join("move-dst"),
        "bench-move",
        &move_state,
        &["--rate", MOVE_RATE, "--cleanup", "after-verify"],
    )?;
    let _ = writeln!(
        report,
        "\n## Gateway p99 during a move vs idle\n\n\
         During: `ferry serve SRC DST --rate {MOVE_RATE} --cleanup after-verify --bucket bench`, \
         SRC {files} × 64 KiB files then the GET keys (sorting last), its job running. Idle: the \
         gateway above (job completed), the moving job paused (`ferry pause`) meanwhile. \
         Moved: the moving job's bytes done during the measurement (its status before and \
         after), and while it was paused."
    );
    let move_table = during_vs_idle(&bench, &moving, &move_state, &idle.url, &mut report)?;
    drop(moving);
    drop(idle);

    let _ = writeln!(
        report,
        "\n## Summary\n\n\
         Medians over the pairs; ratios: median of the per-pair ratios (lowest–highest). \
         Targets (SPEC §8): gateway ÷ direct p50 ≤ 1.25×; during ÷ idle p99 ≤ 2×.\n\n\
         {table}\n{move_table}"
    );
    let dir = root.join("docs/bench");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut file = dir.join(format!("serve-{commit}.md"));
    let mut n = 1;
    while file.exists() {
        n += 1;
        file = dir.join(format!("serve-{commit}-{n}.md"));
    }
    fs::write(&file, &report).map_err(|e| format!("{}: {e}", file.display()))?;
    println!(
        "Run of {started}, commit `{commit}`{}, {machine}; `cargo xtask bench serve --pairs {} \
         --seconds {} --concurrency {}`; every pair in `docs/bench/{}`.\n\n{table}\n{move_table}",
        if dirty { " (uncommitted changes)" } else { "" },
        s.pairs,
        s.seconds,
        s.concurrency,
        file.file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
    );
    eprintln!("xtask: wrote {}", file.display());
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// The endpoints of the first part.
struct Servers<'a> {
    direct: &'a str,
    fsynced: &'a str,
    idle: &'a str,
}

/// Direct vs gateway, every case in alternating pairs (for PUTs, the fsynced direct server
/// at either end of each pair as a reference); every pair into `report`; returns the summary
/// table.
fn direct_vs_gateway(
    bench: &Bench,
    servers: &Servers<'_>,
    report: &mut String,
) -> Result<String, String> {
    let _ = writeln!(
        report,
        "\n## Direct vs gateway (idle)\n\n\
         Direct: `s3_server --root DIR bench` (s3s-fs, one thread; it never fsyncs). Gateway: \
         `ferry serve EMPTY DIR/bench --bucket bench`, its job completed. Same directory. For \
         PUTs, a reference: `s3_server --root DIR --fsync bench`, which fsyncs each PUT's file \
         and directory before answering (the gateway syncs before it acknowledges).\n\n\
         | case | pair | order | direct | gateway | direct --fsync | gateway ÷ direct p50 |\n\
         |---|---|---|---|---|---|---|"
    );
    let mut table = String::from(
        "| case | direct p50 / p99 ms | gateway p50 / p99 ms | direct req/s (MiB/s) | gateway req/s (MiB/s) | gateway ÷ direct p50 | p99 ratio | req/s ratio | direct --fsync p50 / p99 ms, gateway ÷ it (p50) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for case in CASES {
        let put = case.op == "put";
        let (mut direct, mut gateway, mut fsynced) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..bench.settings.pairs {
            let gateway_first = pair % 2 == 1;
            let ((d, g, f), conditions) = quiet_pair(
                || Ok(()),
                || {
                    let reference = |f: &mut Option<Sample>| -> Result<(), String> {
                        if put {
                            *f = Some(bench.measure(servers.fsynced, case)?);
                        }
                        Ok(())
                    };
                    let mut f = None;
                    if gateway_first {
                        reference(&mut f)?;
                        let g = bench.measure(servers.idle, case)?;
                        Ok((bench.measure(servers.direct, case)?, g, f))
                    } else {
                        let d = bench.measure(servers.direct, case)?;
                        let g = bench.measure(servers.idle, case)?;
                        reference(&mut f)?;
                        Ok((d, g, f))
                    }
                },
            )?;
            let ratio = g.p50_ms / d.p50_ms;
            eprintln!(
                "xtask: {} pair {}: direct {:.2} ms, gateway {:.2} ms p50: {ratio:.2}×",
                case.name,
                pair + 1,
                d.p50_ms,
                g.p50_ms
            );
            let order = match (gateway_first, put) {
                (false, false) => "direct, gateway",
                (true, false) => "gateway, direct",
                (false, true) => "direct, gateway, --fsync",
                (true, true) => "--fsync, gateway, direct",
            };
            let _ = writeln!(
                report,
                "| {} | {} | {order}{} | {} | {} | {} | {ratio:.2}× |",
                case.name,
                pair + 1,
                conditions.note(),
                d.cell(),
                g.cell(),
                f.map_or_else(|| "—".to_owned(), |f| f.cell()),
            );
            direct.push(d);
            gateway.push(g);
            fsynced.extend(f);
        }
        let ratio = |metric: fn(&Sample) -> f64, of: &[Sample]| {
            let ratios: Vec<f64> = of
                .iter()
                .zip(&gateway)
                .map(|(d, g)| metric(g) / metric(d))
                .collect();
            let (mid, lo, hi) = summarize(&ratios);
            (mid, format!("{mid:.2}× ({lo:.2}–{hi:.2})"))
        };
        let (p50_mid, p50) = ratio(|x| x.p50_ms, &direct);
        let reference = if fsynced.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "{:.2} / {:.2}, {}",
                median_of(&fsynced, |x| x.p50_ms),
                median_of(&fsynced, |x| x.p99_ms),
                ratio(|x| x.p50_ms, &fsynced).1
            )
        };
        let _ = writeln!(
            table,
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} ({:.1}) | {:.0} ({:.1}) | **{p50}** | {} | {} | {reference} |",
            case.name,
            median_of(&direct, |x| x.p50_ms),
            median_of(&direct, |x| x.p99_ms),
            median_of(&gateway, |x| x.p50_ms),
            median_of(&gateway, |x| x.p99_ms),
            median_of(&direct, |x| x.req_per_s),
            median_of(&direct, |x| x.mib_per_s),
            median_of(&gateway, |x| x.req_per_s),
            median_of(&gateway, |x| x.mib_per_s),
            ratio(|x| x.p99_ms, &direct).1,
            ratio(|x| x.req_per_s, &direct).1,
        );
        eprintln!(
            "xtask: {}: gateway ÷ direct p50, median {p50_mid:.2}×",
            case.name
        );
    }
    Ok(table)
}

/// The moving gateway while its job runs vs the idle one (the moving job paused), every
/// case in alternating pairs; every pair into `report`; returns the summary table.
fn during_vs_idle(
    bench: &Bench,
    moving: &Gateway,
    state: &Path,
    idle: &str,
    report: &mut String,
) -> Result<String, String> {
    let _ = writeln!(
        report,
        "\n| case | pair | order | idle | during | moved during | moved during idle (paused) | during ÷ idle p99 |\n\
         |---|---|---|---|---|---|---|---|"
    );
    let mut table = String::from(
        "| case | idle p50 / p99 ms | during p50 / p99 ms | idle req/s | during req/s | moved per measurement | during ÷ idle p99 | during ÷ idle p50 |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let paused = Cell::new(false);
    let set_paused = |pause: bool| -> Result<(), String> {
        if pause != paused.get() {
            let verb = if pause { "pause" } else { "resume" };
            bench.ferry(state, &[verb, "bench-move"])?;
            paused.set(pause);
            // In-flight copies finish (or restart) within the measurement's warmup.
        }
        Ok(())
    };
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let mut ended = None;
    for case in CASES {
        let (mut idles, mut durings, mut moved_all) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..bench.settings.pairs {
            let during_first = pair % 2 == 0;
            // A measurement and the moving job's bytes done meanwhile (and its status after).
            let measured = |url: &str| -> Result<(Sample, u64, String), String> {
                let (_, before) = bench.job(state, "bench-move")?;
                let sample = bench.measure(url, case)?;
                let (status, after) = bench.job(state, "bench-move")?;
                Ok((sample, after.saturating_sub(before), status))
            };
            let during = || {
                set_paused(false)?;
                measured(&moving.url)
            };
            let idle_run = || {
                set_paused(true)?;
                measured(idle)
            };
            let (((i, moved_paused, _), (d, moved, status)), conditions) = quiet_pair(
                || set_paused(true),
                || {
                    if during_first {
                        let d = during()?;
                        Ok((idle_run()?, d))
                    } else {
                        let i = idle_run()?;
                        Ok((i, during()?))
                    }
                },
            )?;
            if status != "running" && ended.is_none() {
                eprintln!("xtask: the moving job is {status} after a measurement during it");
                ended = Some(format!("{} pair {}", case.name, pair + 1));
            }
            let ratio = d.p99_ms / i.p99_ms;
            eprintln!(
                "xtask: {} pair {}: idle {:.2} ms, during {:.2} ms p99 ({:.0} MiB moved): {ratio:.2}×",
                case.name,
                pair + 1,
                i.p99_ms,
                d.p99_ms,
                mib(moved)
            );
            let _ = writeln!(
                report,
                "| {} | {} | {}{} | {} | {} | {:.0} MiB{} | {:.1} MiB | {ratio:.2}× |",
                case.name,
                pair + 1,
                if during_first {
                    "during, idle"
                } else {
                    "idle, during"
                },
                conditions.note(),
                i.cell(),
                d.cell(),
                mib(moved),
                if status == "running" {
                    String::new()
                } else {
                    format!(", job then {status}")
                },
                mib(moved_paused),
            );
            idles.push(i);
            durings.push(d);
            moved_all.push(mib(moved));
        }
        let ratio = |metric: fn(&Sample) -> f64| {
            let ratios: Vec<f64> = idles
                .iter()
                .zip(&durings)
                .map(|(i, d)| metric(d) / metric(i))
                .collect();
            let (mid, lo, hi) = summarize(&ratios);
            format!("{mid:.2}× ({lo:.2}–{hi:.2})")
        };
        let (_, moved_lo, moved_hi) = summarize(&moved_all);
        let p99 = ratio(|x| x.p99_ms);
        let _ = writeln!(
            table,
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {:.0} | {moved_lo:.0}–{moved_hi:.0} MiB | **{p99}** | {} |",
            case.name,
            median_of(&idles, |x| x.p50_ms),
            median_of(&idles, |x| x.p99_ms),
            median_of(&durings, |x| x.p50_ms),
            median_of(&durings, |x| x.p99_ms),
            median_of(&idles, |x| x.req_per_s),
            median_of(&durings, |x| x.req_per_s),
            ratio(|x| x.p50_ms),
        );
        eprintln!("xtask: {}: during ÷ idle p99 {p99}", case.name);
    }
    let _ = writeln!(
        report,
        "\n{}",
        match &ended {
            Some(when) => format!(
                "**The moving job ended during the measurements (first seen after {when}): \
                 the later pairs measured no move.**"
            ),
            None => "The moving job was running after every measurement during it.".to_owned(),
        }
    );
    Ok(table)
}
