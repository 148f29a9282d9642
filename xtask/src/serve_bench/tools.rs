//! The processes and measurements of `bench serve`: the `s3_load` runs, the servers, the
//! `ferry` commands, and waiting for the machine to be quiet.

use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{ACCESS_KEY, BUCKET, Case, RETRIES, SECRET_KEY, Settings, WARMUP};
use crate::cli_bench::sh;

/// What `s3_load` printed for one measurement.
#[derive(Clone, Copy)]
pub(super) struct Sample {
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    pub(super) req_per_s: f64,
    pub(super) mib_per_s: f64,
    pub(super) errors: u64,
}

impl Sample {
    pub(super) fn cell(&self) -> String {
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
pub(super) struct Bench {
    pub(super) ferry: PathBuf,
    pub(super) load: PathBuf,
    pub(super) settings: Settings,
    /// Where the gateways' logs go.
    pub(super) work: PathBuf,
}

impl Bench {
    /// One measurement of `case` against `endpoint`, after a `sync` and once no build runs.
    pub(super) fn measure(&self, endpoint: &str, case: &Case) -> Result<Sample, String> {
        sh("sync")?;
        wait_for_builds();
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
    pub(super) fn fill(&self, endpoint: &str, case: &Case) -> Result<(), String> {
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
    pub(super) fn ferry(&self, state: &Path, args: &[&str]) -> Result<String, String> {
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
    pub(super) fn job(&self, state: &Path, id: &str) -> Result<(String, u64), String> {
        let json = self.ferry(state, &["status", id, "--json"])?;
        let status = text_field(&json, "status").ok_or_else(|| format!("status: {json}"))?;
        let done = field(&json, "done_bytes").unwrap_or(0.0) as u64;
        Ok((status, done))
    }

    /// Waits until job `id` is completed.
    pub(super) fn wait_completed(&self, state: &Path, id: &str) -> Result<(), String> {
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
    pub(super) fn serve(
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
            .args([
                "--id",
                id,
                "--listen",
                "127.0.0.1:0",
                "--bucket",
                BUCKET,
                "-q",
            ])
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
pub(super) struct Gateway {
    child: Child,
    pub(super) url: String,
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
pub(super) struct Direct {
    child: Child,
    pub(super) endpoint: String,
}

impl Drop for Direct {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

pub(super) fn start_direct(binary: &Path, root: &Path, fsync: bool) -> Result<Direct, String> {
    let mut child = Command::new(binary)
        .arg("--root")
        .arg(root)
        .args(fsync.then_some("--fsync"))
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
fn wait_for_builds() {
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

/// The share of the machine's CPU time that was busy over the next second (`/proc/stat`);
/// 0 where it cannot be read.
fn busy() -> f64 {
    fn sample() -> Option<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
        let total: u64 = cpu.iter().take(8).sum();
        let idle = cpu.get(3)? + cpu.get(4).copied().unwrap_or(0);
        Some((total, idle))
    }
    let Some((total0, idle0)) = sample() else {
        return 0.0;
    };
    std::thread::sleep(Duration::from_secs(1));
    let Some((total1, idle1)) = sample() else {
        return 0.0;
    };
    let total = total1.saturating_sub(total0).max(1);
    1.0 - idle1.saturating_sub(idle0) as f64 / total as f64
}

/// Waits until no `rustc` runs and the machine is idle (under [`QUIET_BUSY`] of its CPU
/// busy; at most [`QUIET_WAIT`], then goes on). Returns the share busy when it gave up.
fn wait_for_quiet() -> Option<f64> {
    wait_for_builds();
    let start = Instant::now();
    let mut told = false;
    loop {
        let busy = busy();
        if busy < QUIET_BUSY {
            return None;
        }
        if start.elapsed() > QUIET_WAIT {
            eprintln!(
                "xtask: the machine stayed {:.0}% busy for {} minutes; measuring anyway",
                busy * 100.0,
                QUIET_WAIT.as_secs() / 60
            );
            return Some(busy);
        }
        if !told {
            eprintln!(
                "xtask: waiting for the machine to be idle ({:.0}% busy)",
                busy * 100.0
            );
            told = true;
        }
        std::thread::sleep(Duration::from_secs(4));
    }
}

/// Under this share of CPU busy (other than the bench's idle servers) the machine is quiet.
const QUIET_BUSY: f64 = 0.15;
/// How long a pair waits for the machine to be quiet.
const QUIET_WAIT: Duration = Duration::from_secs(20 * 60);

/// How a pair was measured: how many times again (a build started during it), and how busy
/// the machine was before it when it did not get quiet.
#[derive(Clone, Copy, Default)]
pub(super) struct Conditions {
    again: usize,
    busy: Option<f64>,
}

impl Conditions {
    /// A note for the pair's row; empty when nothing happened.
    pub(super) fn note(&self) -> String {
        let mut note = String::new();
        if self.again > 0 {
            note.push_str(&format!(
                " (measured {} times: a build ran)",
                self.again + 1
            ));
        }
        if let Some(busy) = self.busy {
            note.push_str(&format!(" (machine {:.0}% busy before)", busy * 100.0));
        }
        note
    }
}

/// Runs `pair` once the machine is quiet, again when a build started during it (at most
/// [`RETRIES`] more times); the result and how it was measured. `idle` runs first each time:
/// it makes the bench's own processes idle (the quiet check counts them too).
pub(super) fn quiet_pair<T>(
    mut idle: impl FnMut() -> Result<(), String>,
    mut pair: impl FnMut() -> Result<T, String>,
) -> Result<(T, Conditions), String> {
    let mut conditions = Conditions::default();
    loop {
        idle()?;
        conditions.busy = wait_for_quiet();
        let result = pair()?;
        if builds() == 0 || conditions.again == RETRIES {
            return Ok((result, conditions));
        }
        eprintln!("xtask: a build started during the pair; measuring it again");
        conditions.again += 1;
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

pub(crate) fn output(cmd: &str, args: &[&str], dir: &Path) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
