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
//! Before each measurement: `sync` (a gateway's PUT syncs the file system, and must not pay
//! for the other server's writes) and a wait until no `rustc` runs on the machine (other
//! builds share the cores); a pair during which a build started is measured again. Every pair
//! goes to `docs/bench/serve-<commit>.md` (a new file per run); the Markdown tables for
//! `docs/benchmarks.md` go to stdout.

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cli_bench::{env_dir, median, sh, write_file};

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

/// What `s3_load` printed for one measurement.
#[derive(Clone, Copy)]
struct Sample {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    req_per_s: f64,
    mib_per_s: f64,
    errors: u64,
}

impl Sample {
    fn cell(&self) -> String {
        let errors = if self.errors > 0 {
            format!(", **{} errors**", self.errors)
        } else {
            String::new()
        };
        format!(
            "{:.2} / {:.2} / {:.1} ms, {:.0} req/s, {:.1} MiB/s{errors}",
            self.p50_ms, self.p99_ms, self.max_ms, self.req_per_s, self.mib_per_s
        )
    }
}

/// The built binaries and the settings of every measurement.
struct Bench {
    ferry: PathBuf,
    load: PathBuf,
    settings: Settings,
    work: PathBuf,
}

impl Bench {
    /// One measurement of `case` against `endpoint`, after a `sync` and once no build runs.
    fn measure(&self, endpoint: &str, case: &Case) -> Result<Sample, String> {
        sh("sync")?;
        wait_for_quiet();
        let out = Command::new(&self.load)
            .args(["--endpoint", endpoint, "--bucket", BUCKET, "--op", case.op])
            .args(["--size", case.size, "--keys", case.keys])
            .args(["--concurrency", &self.settings.concurrency.to_string()])
            .args(["--duration", &format!("{}s", self.settings.seconds)])
            .args(["--warmup", WARMUP])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("{}: {e}", self.load.display()))?;
        let line = String::from_utf8_lossy(&out.stdout);
        let number = |name: &str| {
            field(&line, name).ok_or_else(|| format!("s3_load printed no {name}: {line:?}"))
        };
        let sample = Sample {
            p50_ms: number("p50_us")? / 1000.0,
            p99_ms: number("p99_us")? / 1000.0,
            max_ms: number("max_us")? / 1000.0,
            req_per_s: number("req_per_s")?,
            mib_per_s: number("mib_per_s")?,
            errors: number("errors")? as u64,
        };
        if sample.errors > 0 {
            eprintln!(
                "xtask: {} against {endpoint}: {} failed requests",
                case.name, sample.errors
            );
        }
        Ok(sample)
    }

    /// Writes the key set of `case` through `endpoint` (`s3_load --op fill`).
    fn fill(&self, endpoint: &str, case: &Case) -> Result<(), String> {
        let status = Command::new(&self.load)
            .args(["--endpoint", endpoint, "--bucket", BUCKET, "--op", "fill"])
            .args([
                "--size",
                case.size,
                "--keys",
                case.keys,
                "--concurrency",
                "8",
            ])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("{}: {e}", self.load.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("filling {} failed: {status}", case.keys))
        }
    }

    /// `ferry` with `FERRY_STATE=state` and `args`; its stdout.
    fn ferry(&self, state: &Path, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.ferry)
            .args(args)
            .env("FERRY_STATE", state)
            .output()
            .map_err(|e| format!("{}: {e}", self.ferry.display()))?;
        if !out.status.success() {
            return Err(format!(
                "ferry {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The job's status and bytes done, from `ferry status ID --json`.
    fn job(&self, state: &Path, id: &str) -> Result<(String, u64), String> {
        let json = self.ferry(state, &["status", id, "--json"])?;
        let status = text_field(&json, "status").ok_or_else(|| format!("status: {json}"))?;
        let done = field(&json, "done_bytes").unwrap_or(0.0) as u64;
        Ok((status, done))
    }

    /// Waits until job `id` is completed.
    fn wait_completed(&self, state: &Path, id: &str) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let (status, _) = self.job(state, id)?;
            match status.as_str() {
                "completed" => return Ok(()),
                "failed" | "cancelled" | "completed_with_errors" => {
                    return Err(format!("job {id}: {status}"));
                }
                _ if start.elapsed() > Duration::from_secs(120) => {
                    return Err(format!("job {id} still {status} after 2 minutes"));
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Starts `ferry serve SRC DST` for bucket `bench` on a free port, with the job's state
    /// in `state` and its output in `log`.
    fn serve(
        &self,
        src: &Path,
        dst: &Path,
        id: &str,
        state: &Path,
        extra: &[&str],
    ) -> Result<Gateway, String> {
        let log_path = self.work.join(format!("{id}.log"));
        let log =
            fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut child = Command::new(&self.ferry)
            .arg("serve")
            .args([src, dst])
            .args(["--id", id, "--listen", "127.0.0.1:0", "--bucket", BUCKET])
            .args(extra)
            .env("FERRY_STATE", state)
            .env("FERRY_ACCESS_KEY_ID", ACCESS_KEY)
            .env("FERRY_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone().map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.ferry.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads the URL line, then keeps the pipe drained into the log.
        std::thread::spawn(move || {
            let mut log = log;
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("http://")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.trim().to_owned());
                } else {
                    let _ = writeln!(log, "{line}");
                }
            }
        });
        let mut gateway = Gateway {
            child,
            url: String::new(),
        };
        gateway.url = rx.recv_timeout(Duration::from_secs(120)).map_err(|_| {
            format!(
                "ferry serve {id} printed no URL (see {})",
                log_path.display()
            )
        })?;
        eprintln!("xtask: ferry serve {id} at {}", gateway.url);
        Ok(gateway)
    }
}

/// A `ferry serve` process: SIGTERM when dropped, SIGKILL if it has not exited 30 s later.
struct Gateway {
    child: Child,
    url: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    eprintln!("xtask: ferry serve at {} exited: {status}", self.url);
                    return;
                }
                Ok(None) if start.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    eprintln!(
                        "xtask: ferry serve at {} ignored SIGTERM; killing it",
                        self.url
                    );
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}

/// The `s3_server` example over a directory; stops (leaving it) when its input closes.
struct Direct {
    child: Child,
    endpoint: String,
}

impl Drop for Direct {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn start_direct(binary: &Path, root: &Path) -> Result<Direct, String> {
    let mut child = Command::new(binary)
        .arg("--root")
        .arg(root)
        .arg(BUCKET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut endpoint = None;
    for line in BufReader::new(stdout).lines().take(6) {
        let line = line.map_err(|e| format!("s3_server: {e}"))?;
        if let Some(url) = line.strip_prefix("export AWS_ENDPOINT=") {
            endpoint = Some(url.to_owned());
        }
    }
    let endpoint = endpoint.ok_or("s3_server printed no endpoint")?;
    Ok(Direct { child, endpoint })
}

/// How many `rustc` processes run on the machine now.
fn builds() -> usize {
    Command::new("pgrep")
        .args(["-c", "rustc"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (at most an hour) until no `rustc` runs: a build shares the cores with the servers.
fn wait_for_quiet() {
    let start = Instant::now();
    let mut told = false;
    while builds() > 0 && start.elapsed() < Duration::from_secs(3600) {
        if !told {
            eprintln!("xtask: waiting for the builds running on this machine to end");
            told = true;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Runs `pair` until no build ran during it (at most [`RETRIES`] more times); the result and
/// how many times it was measured again.
fn quiet_pair<T>(mut pair: impl FnMut() -> Result<T, String>) -> Result<(T, usize), String> {
    let mut again = 0;
    loop {
        wait_for_quiet();
        let result = pair()?;
        if builds() == 0 || again == RETRIES {
            return Ok((result, again));
        }
        eprintln!("xtask: a build started during the pair; measuring it again");
        again += 1;
    }
}

/// The number after `"name":` in a JSON text (whitespace allowed), or `None`.
fn field(json: &str, name: &str) -> Option<f64> {
    let at = json.find(&format!("\"{name}\""))? + name.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The string after `"name":` in a JSON text, or `None`.
fn text_field(json: &str, name: &str) -> Option<String> {
    let at = json.find(&format!("\"{name}\""))? + name.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// The median of `ratios` and their spread (lowest–highest).
fn summarize(ratios: &[f64]) -> (f64, f64, f64) {
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let mut sorted = ratios.to_vec();
    (median(&mut sorted), lo, hi)
}

fn median_of(samples: &[Sample], metric: impl Fn(&Sample) -> f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(metric).collect();
    median(&mut values)
}

fn output(cmd: &str, args: &[&str], dir: &Path) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let settings = parse(args)?;
    let root = env_dir()?.join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => root.join("target"),
    };
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
    let direct = start_direct(&server_bin, &direct_root)?;
    eprintln!("xtask: direct s3s-fs server at {}", direct.endpoint);
    // The GET keys, written through the direct server (which then knows their ETags, as it
    // knows those of the objects it is given).
    for case in CASES.iter().filter(|c| c.op == "get") {
        bench.fill(&direct.endpoint, case)?;
    }
    let idle_state = work.join("state-idle");
    let idle = bench.serve(&empty, &dir_d, "bench-idle", &idle_state, &[])?;
    bench.wait_completed(&idle_state, "bench-idle")?;

    // Direct vs gateway.
    let mut report = String::new();
    let mut table = String::new();
    let s = &bench.settings;
    let _ = writeln!(
        report,
        "# `ferry serve` vs the direct S3 server, commit {commit}{}\n\n\
         Run of {started}. Machine: {machine}. Command: `cargo xtask bench serve --pairs {} \
         --seconds {} --concurrency {}`.\n\n\
         Each measurement: `s3_load` (one Tokio thread, object_store's S3 client, \
         `UNSIGNED-PAYLOAD`), {} requests in flight for {} s after a {WARMUP} warmup; \
         p50 / p99 / max latency, requests and MiB per second. A `sync` before each. PUTs write \
         fresh keys (deleted after the measurement); GETs read {{g4k-: 1024 × 4 KiB, g1m-: \
         128 × 1 MiB}} round robin, in the page cache.\n\n\
         ## Direct vs gateway (idle)\n\n\
         Direct: `s3_server --root DIR bench` (s3s-fs, one thread; it does not fsync). Gateway: \
         `ferry serve EMPTY DIR/bench --bucket bench`, its job completed. Same directory.\n\n\
         | case | pair | order | direct p50 / p99 / max | gateway p50 / p99 / max | gateway ÷ direct p50 |\n\
         |---|---|---|---|---|---|",
        if dirty { " (uncommitted changes)" } else { "" },
        s.pairs,
        s.seconds,
        s.concurrency,
        s.concurrency,
        s.seconds,
    );
    let _ = writeln!(
        table,
        "| case | direct p50 / p99 | gateway p50 / p99 | direct req/s (MiB/s) | gateway req/s (MiB/s) | gateway ÷ direct p50, median (spread) | p99 ratio | throughput ratio |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for case in CASES {
        let mut direct_samples = Vec::new();
        let mut gateway_samples = Vec::new();
        let mut ratios = Vec::new();
        for pair in 0..s.pairs {
            let gateway_first = pair % 2 == 1;
            let ((d, g), again) = quiet_pair(|| {
                if gateway_first {
                    let g = bench.measure(&idle.url, case)?;
                    Ok((bench.measure(&direct.endpoint, case)?, g))
                } else {
                    let d = bench.measure(&direct.endpoint, case)?;
                    Ok((d, bench.measure(&idle.url, case)?))
                }
            })?;
            let ratio = g.p50_ms / d.p50_ms;
            eprintln!(
                "xtask: {} pair {}: direct {:.2} ms, gateway {:.2} ms p50: {ratio:.2}×",
                case.name,
                pair + 1,
                d.p50_ms,
                g.p50_ms
            );
            let _ = writeln!(
                report,
                "| {} | {} | {}{} | {} | {} | {ratio:.2}× |",
                case.name,
                pair + 1,
                if gateway_first {
                    "gateway, direct"
                } else {
                    "direct, gateway"
                },
                if again > 0 {
                    format!(" (measured {} times: a build ran)", again + 1)
                } else {
                    String::new()
                },
                d.cell(),
                g.cell()
            );
            direct_samples.push(d);
            gateway_samples.push(g);
            ratios.push(ratio);
        }
        let (mid, lo, hi) = summarize(&ratios);
        let p99_ratios: Vec<f64> = direct_samples
            .iter()
            .zip(&gateway_samples)
            .map(|(d, g)| g.p99_ms / d.p99_ms)
            .collect();
        let rps_ratios: Vec<f64> = direct_samples
            .iter()
            .zip(&gateway_samples)
            .map(|(d, g)| g.req_per_s / d.req_per_s)
            .collect();
        let (p99_mid, p99_lo, p99_hi) = summarize(&p99_ratios);
        let (rps_mid, rps_lo, rps_hi) = summarize(&rps_ratios);
        let _ = writeln!(
            table,
            "| {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.0} ({:.1}) | {:.0} ({:.1}) | **{mid:.2}×** ({lo:.2}–{hi:.2}) | {p99_mid:.2}× ({p99_lo:.2}–{p99_hi:.2}) | {rps_mid:.2}× ({rps_lo:.2}–{rps_hi:.2}) |",
            case.name,
            median_of(&direct_samples, |x| x.p50_ms),
            median_of(&direct_samples, |x| x.p99_ms),
            median_of(&gateway_samples, |x| x.p50_ms),
            median_of(&gateway_samples, |x| x.p99_ms),
            median_of(&direct_samples, |x| x.req_per_s),
            median_of(&direct_samples, |x| x.mib_per_s),
            median_of(&gateway_samples, |x| x.req_per_s),
            median_of(&gateway_samples, |x| x.mib_per_s),
        );
        eprintln!(
            "xtask: {}: gateway ÷ direct p50, median {mid:.2}× ({lo:.2}–{hi:.2})",
            case.name
        );
    }
    drop(direct);

    // During a move vs idle.
    let move_src = work.join("move-src");
    let move_dst = work.join("move-dst");
    let move_state = work.join("state-move");
    let planned = CASES.len() as u64 * s.pairs as u64 * (s.seconds + 4);
    let move_bytes = planned * MOVE_RATE_BYTES * 3 / 2;
    let files = move_bytes / MOVE_FILE as u64 + 1;
    eprintln!(
        "xtask: writing the tree to move: {files} × 64 KiB (about {} s at {MOVE_RATE}/s, with margin)",
        move_bytes / MOVE_RATE_BYTES
    );
    for i in 0..files {
        write_file(
            &move_src.join(format!("a-fill-{i:07}")),
            MOVE_FILE,
            i + 1_000_000,
        )?;
    }
    // The GET keys too, sorting after the filler: still on SRC (or moving) when read.
    sh(&format!(
        "cp {d}/g4k-* {d}/g1m-* {}/ && sync",
        move_src.display(),
        d = dir_d.display()
    ))?;
    let moving = bench.serve(
        &move_src,
        &move_dst,
        "bench-move",
        &move_state,
        &["--rate", MOVE_RATE, "--cleanup", "after-verify"],
    )?;
    let paused = Cell::new(false);
    let set_paused = |pause: bool| -> Result<(), String> {
        if pause != paused.get() {
            let verb = if pause { "pause" } else { "resume" };
            bench.ferry(&move_state, &[verb, "bench-move"])?;
            paused.set(pause);
            // In-flight copies finish (or restart) within the measurement's warmup.
        }
        Ok(())
    };
    let _ = writeln!(
        report,
        "\n## Gateway p99 during a move vs idle\n\n\
         During: `ferry serve SRC DST --rate {MOVE_RATE} --cleanup after-verify --bucket bench`, \
         SRC {files} × 64 KiB files then the GET keys (sorting last), its job running. Idle: the \
         gateway above (job completed), the moving job paused (`ferry pause`) meanwhile. \
         \"Moved\": the moving job's bytes done during the measurement.\n\n\
         | case | pair | order | idle p50 / p99 / max | during p50 / p99 / max | moved | during ÷ idle p99 |\n\
         |---|---|---|---|---|---|---|"
    );
    let mut move_table = String::new();
    let _ = writeln!(
        move_table,
        "| case | idle p50 / p99 | during p50 / p99 | idle req/s | during req/s | moved per measurement | during ÷ idle p99, median (spread) |\n\
         |---|---|---|---|---|---|---|"
    );
    let mut move_ended = false;
    for case in CASES {
        let mut idle_samples = Vec::new();
        let mut during_samples = Vec::new();
        let mut ratios = Vec::new();
        let mut moved_all = Vec::new();
        for pair in 0..s.pairs {
            let during_first = pair % 2 == 0;
            let during = || -> Result<(Sample, u64, String), String> {
                set_paused(false)?;
                let (_, before) = bench.job(&move_state, "bench-move")?;
                let sample = bench.measure(&moving.url, case)?;
                let (status, after) = bench.job(&move_state, "bench-move")?;
                Ok((sample, after.saturating_sub(before), status))
            };
            let ((i, (d, moved, status)), again) = quiet_pair(|| {
                if during_first {
                    let d = during()?;
                    set_paused(true)?;
                    Ok((bench.measure(&idle.url, case)?, d))
                } else {
                    set_paused(true)?;
                    let i = bench.measure(&idle.url, case)?;
                    Ok((i, during()?))
                }
            })?;
            if status != "running" {
                move_ended = true;
                eprintln!("xtask: the moving job is {status} after a measurement during it");
            }
            let ratio = d.p99_ms / i.p99_ms;
            eprintln!(
                "xtask: {} pair {}: idle {:.2} ms, during {:.2} ms p99 ({:.0} MiB moved): {ratio:.2}×",
                case.name,
                pair + 1,
                i.p99_ms,
                d.p99_ms,
                moved as f64 / f64::from(1u32 << 20)
            );
            let _ = writeln!(
                report,
                "| {} | {} | {}{} | {} | {} | {:.0} MiB{} | {ratio:.2}× |",
                case.name,
                pair + 1,
                if during_first {
                    "during, idle"
                } else {
                    "idle, during"
                },
                if again > 0 {
                    format!(" (measured {} times: a build ran)", again + 1)
                } else {
                    String::new()
                },
                i.cell(),
                d.cell(),
                moved as f64 / f64::from(1u32 << 20),
                if status == "running" {
                    String::new()
                } else {
                    format!(", job then {status}")
                },
            );
            idle_samples.push(i);
            during_samples.push(d);
            ratios.push(ratio);
            moved_all.push(moved as f64 / f64::from(1u32 << 20));
        }
        let (mid, lo, hi) = summarize(&ratios);
        let (moved_lo, moved_hi) = moved_all
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), m| (lo.min(*m), hi.max(*m)));
        let _ = writeln!(
            move_table,
            "| {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.0} | {:.0} | {moved_lo:.0}–{moved_hi:.0} MiB | **{mid:.2}×** ({lo:.2}–{hi:.2}) |",
            case.name,
            median_of(&idle_samples, |x| x.p50_ms),
            median_of(&idle_samples, |x| x.p99_ms),
            median_of(&during_samples, |x| x.p50_ms),
            median_of(&during_samples, |x| x.p99_ms),
            median_of(&idle_samples, |x| x.req_per_s),
            median_of(&during_samples, |x| x.req_per_s),
        );
        eprintln!(
            "xtask: {}: during ÷ idle p99, median {mid:.2}× ({lo:.2}–{hi:.2})",
            case.name
        );
    }
    let (final_status, _) = bench.job(&move_state, "bench-move")?;
    drop(moving);
    drop(idle);

    let _ = writeln!(
        report,
        "\nThe moving job at the end: {final_status}.{}\n\n## Summary\n\n\
         Medians over the pairs; ratios: median of the per-pair ratios (lowest–highest). \
         Targets (SPEC §8): gateway ÷ direct p50 ≤ 1.25×; during ÷ idle p99 ≤ 2×.\n\n\
         {table}\n{move_table}",
        if move_ended {
            " **The move ended before the last measurement during it: those pairs measured no \
             move.**"
        } else {
            ""
        }
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
