//! `cargo xtask bench cli-10k | cli-1g | check` (`cli`: the three): the `ferry` binary
//! against its peers, in alternating pairs, each run recorded under `docs/bench/` (see
//! [`crate::record`]).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::record::{self, Commands, Options, Run, Side};

const SMALL_FILES: usize = 10_000;
const SMALL_SIZE: usize = 64 << 10;
const BIG_SIZE: usize = 1 << 30;

/// The cases `bench cli` runs, in order.
pub(crate) const CLI_CASES: &[&str] = &["cli-10k", "cli-1g", "check"];

/// The target directory: `CARGO_TARGET_DIR`, or the workspace's `target/`.
pub(crate) fn target_dir() -> Result<PathBuf, String> {
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => env_dir()?.join("../target"),
    })
}

/// When the harness last deleted files (an old work directory, a pair's copies).
static LAST_DELETE: Mutex<Option<Instant>> = Mutex::new(None);

/// How long ext4 keeps a deleted inode from being reused when its inode table block is clean.
const INODE_RECENCY: Duration = Duration::from_secs(61);

/// Notes that the harness just deleted files (see [`settle_deletes`]).
pub(crate) fn deleted_now() {
    if let Ok(mut last) = LAST_DELETE.lock() {
        *last = Some(Instant::now());
    }
}

/// Waits, once before a case's timed runs, until the inodes the harness deleted are old
/// enough not to cost the runs anything. ext4 without a journal (this project's machines: no
/// jbd2) skips, when it allocates an inode, every free inode deleted in the last 60 s (300 s
/// while its inode table block is dirty), looking each one's block up: after a clear of 20k
/// files, the next run's creates spent about a third of their samples in `recently_deleted`
/// and `find_get_block_common`, in profiles of ferry and of rclone alike, so the run of each
/// pair that came first after a clear paid for it (the ratios of the pairs that ran ferry
/// first were 1.1–2.7×, of those that ran rclone first 0.7–1.0×).
fn settle_deletes() -> Result<(), String> {
    sh("sync")?;
    let last = LAST_DELETE.lock().ok().and_then(|last| *last);
    if let Some(at) = last {
        let left = INODE_RECENCY.saturating_sub(at.elapsed());
        if !left.is_zero() {
            eprintln!(
                "xtask: waiting {} s for the inodes the harness deleted to age (ext4 skips inodes deleted in the last minute)",
                left.as_secs()
            );
            std::thread::sleep(left);
        }
    }
    Ok(())
}

/// The release `ferry` binary, built, and an empty work directory under the target dir.
fn setup() -> Result<(PathBuf, PathBuf), String> {
    ensure_rclone()?;
    super::cargo(&["build", "--release", "-p", "ferry-cli"], &[])?;
    let target = target_dir()?;
    let ferry = target.join("release/ferry");
    let ferry = fs::canonicalize(&ferry).map_err(|e| format!("{}: {e}", ferry.display()))?;
    let work = target.join("cli-bench");
    if fs::remove_dir_all(&work).is_ok() {
        deleted_now();
    }
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    Ok((ferry, work))
}

/// `cargo xtask bench NAME [--pairs N] [--dry]` for the cases of this file (`cli`: each of
/// [`CLI_CASES`]).
pub(crate) fn run(name: &str, options: Options) -> Result<(), String> {
    let names = if name == "cli" {
        CLI_CASES
    } else {
        &[name][..]
    };
    let (ferry, work) = setup()?;
    let (small, big) = write_trees(
        &work,
        names.iter().any(|n| *n != "cli-1g"),
        names.contains(&"cli-1g"),
    )?;
    for name in names {
        let mut bench = Bench {
            ferry: ferry.clone(),
            work: work.clone(),
            keep: vec![small.clone(), big.clone()],
            runs: 0,
        };
        match *name {
            "cli-10k" => bench.migrate_10k(&small, options)?,
            "cli-1g" => bench.migrate_1g(&big, options)?,
            "check" => bench.check(&small, options)?,
            other => return Err(format!("no cli bench case `{other}`")),
        }
    }
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// When a case deletes the copies its runs made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clear {
    AfterEachPair,
    AtTheEnd,
}

/// The binary, the work directory and what in it outlives a pair.
struct Bench {
    ferry: PathBuf,
    work: PathBuf,
    keep: Vec<PathBuf>,
    runs: u32,
}

impl Bench {
    /// A fresh destination and state directory for the next timed run, after a `sync`.
    /// Every timed run writes into fresh ones: on ext4 mounted with `discard`, a deletion's
    /// discards land in a later journal commit, so a run that fsyncs (ferry, `sync -f`) after
    /// a delete would pay for it while rclone, which never fsyncs, would not.
    fn fresh(&mut self) -> Result<(PathBuf, PathBuf), String> {
        self.runs += 1;
        sh("sync")?;
        Ok((
            self.work.join(format!("dst-{}", self.runs)),
            self.work.join(format!("state-{}", self.runs)),
        ))
    }

    fn migrate(&self, src: &Path, (dst, state): &(PathBuf, PathBuf), extra: &str) -> String {
        format!(
            "{} --state {} migrate {} {} -q {extra}",
            self.ferry.display(),
            state.display(),
            src.display(),
            dst.display()
        )
    }

    /// After each pair: its copies deleted, their discards made now, untimed.
    fn clear(&self) -> Result<(), String> {
        clear_runs(&self.work, &self.keep)
    }

    /// The case's pairs, each run timed into a fresh destination ([`Bench::fresh`]) with the
    /// command `command` gives for its side, after the harness's own deletes have aged
    /// ([`settle_deletes`]). With `Clear::AfterEachPair` a pair's copies are deleted after it
    /// (large files: few inodes, much disk); with `Clear::AtTheEnd` every copy is kept until
    /// the last pair (many small files: no run allocates inodes next to thousands deleted a
    /// moment before).
    fn pairs(
        &mut self,
        case: &record::Case,
        options: Options,
        clear: Clear,
        command: impl Fn(&Bench, Side, &(PathBuf, PathBuf)) -> String,
    ) -> Result<Vec<record::Pair>, String> {
        settle_deletes()?;
        let this = std::cell::RefCell::new(self);
        let pairs = record::run_pairs(
            case,
            options.pairs,
            |side| {
                let mut bench = this.borrow_mut();
                let to = bench.fresh()?;
                timed(&command(&bench, side, &to)).map(Run::from)
            },
            || match clear {
                Clear::AfterEachPair => this.borrow().clear(),
                Clear::AtTheEnd => Ok(()),
            },
        )?;
        if clear == Clear::AtTheEnd {
            this.borrow().clear()?;
        }
        Ok(pairs)
    }

    /// 10k × 64 KiB, checksum verify, vs `rclone copy --checksum`.
    fn migrate_10k(&mut self, small: &Path, options: Options) -> Result<(), String> {
        let case = record::case("cli-10k")?;
        let rclone = |(dst, _): &(PathBuf, PathBuf)| {
            format!(
                "rclone copy --checksum --transfers 16 {} {}",
                small.display(),
                dst.display()
            )
        };
        let example = (PathBuf::from("DST"), PathBuf::from("STATE"));
        let commands = Commands {
            a: self.migrate(small, &example, "--verify checksum"),
            b: rclone(&example),
            beside: None,
        };
        let start = record::start()?;
        let pairs = self.pairs(
            case,
            options,
            Clear::AtTheEnd,
            |bench, side, to| match side {
                Side::A => bench.migrate(small, to, "--verify checksum"),
                _ => rclone(to),
            },
        )?;
        record::finish(case, options, start, commands, pairs, Vec::new())
    }

    /// One 1 GiB file vs `cp` + `sync -f` (durable), plain `cp` beside them; then one run
    /// with `--rate 50MiB` (a note).
    fn migrate_1g(&mut self, big: &Path, options: Options) -> Result<(), String> {
        let case = record::case("cli-1g")?;
        let cp = |(dst, _): &(PathBuf, PathBuf)| {
            format!(
                "mkdir -p {d} && cp {}/one.bin {d}/one.bin",
                big.display(),
                d = dst.display()
            )
        };
        let cp_sync =
            |to: &(PathBuf, PathBuf)| format!("{} && sync -f {}/one.bin", cp(to), to.0.display());
        let example = (PathBuf::from("DST"), PathBuf::from("STATE"));
        let commands = Commands {
            a: self.migrate(big, &example, "--verify checksum"),
            b: cp_sync(&example),
            beside: Some(cp(&example)),
        };
        let start = record::start()?;
        let pairs = self.pairs(
            case,
            options,
            Clear::AfterEachPair,
            |bench, side, to| match side {
                Side::A => bench.migrate(big, to, "--verify checksum"),
                Side::B => cp_sync(to),
                Side::Beside => cp(to),
            },
        )?;
        // The rate limit: 1 GiB at 50 MiB/s (one large file, so the disk is not the limit).
        let to = self.fresh()?;
        let (t_rate, _) = timed(&self.migrate(big, &to, "--rate 50MiB"))?;
        self.clear()?;
        let achieved = BIG_SIZE as f64 / t_rate / f64::from(1u32 << 20);
        let notes = vec![format!(
            "`--rate 50MiB`, one 1 GiB file, one run after the pairs: {t_rate:.2} s, {achieved:.2} MiB/s ({:+.2}% off; target within 2%)",
            (achieved / 50.0 - 1.0) * 100.0
        )];
        record::finish(case, options, start, commands, pairs, notes)
    }

    /// `ferry check` vs `rclone check --checksum` of `small` against an identical copy of
    /// it. Both read both trees from the page cache (the copy was just written, one untimed
    /// run of each comes first, and the first run of each pair warms it for the second).
    fn check(&mut self, small: &Path, options: Options) -> Result<(), String> {
        let case = record::case("check")?;
        let copy = self.work.join("small-copy");
        sh(&format!("cp -r {} {}", small.display(), copy.display()))?;
        sh("sync")?;
        self.keep.push(copy.clone());
        let ferry = |state: &Path| {
            format!(
                "{} --state {} check {} {} -q",
                self.ferry.display(),
                state.display(),
                small.display(),
                copy.display()
            )
        };
        let rclone = format!(
            "rclone check --checksum --checkers 16 -q {} {}",
            small.display(),
            copy.display()
        );
        let commands = Commands {
            a: ferry(Path::new("STATE")),
            b: rclone.clone(),
            beside: None,
        };
        let mut runs = 0;
        let mut state = || {
            runs += 1;
            self.work.join(format!("check-state-{runs}"))
        };
        timed(&ferry(&state()))?;
        timed(&rclone)?;
        let start = record::start()?;
        let pairs = record::run_pairs(
            case,
            options.pairs,
            |side| {
                let cmd = match side {
                    Side::A => ferry(&state()),
                    _ => rclone.clone(),
                };
                timed(&cmd).map(Run::from)
            },
            || Ok(()),
        )?;
        record::finish(case, options, start, commands, pairs, Vec::new())
    }
}

/// Deletes everything in `work` but `keep`, then syncs and discards (`fstrim`, where
/// allowed), untimed, so that no timed run pays for another's deletes.
pub(crate) fn clear_runs(work: &Path, keep: &[PathBuf]) -> Result<(), String> {
    for dir in fs::read_dir(work).map_err(|e| e.to_string())? {
        let path = dir.map_err(|e| e.to_string())?.path();
        if !keep.contains(&path) {
            fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            deleted_now();
        }
    }
    sh("sync")?;
    let _ = sh(&format!("fstrim {} 2>/dev/null", work.display()));
    Ok(())
}

/// Writes the bench data under `work`, the parts asked for: `small/` (10k × 64 KiB files in
/// 100 directories) and `big/one.bin` (1 GiB), then syncs. Returns the two directories.
pub(crate) fn write_trees(
    work: &Path,
    with_small: bool,
    with_big: bool,
) -> Result<(PathBuf, PathBuf), String> {
    let small = if with_small {
        write_small(work)?
    } else {
        work.join("small")
    };
    let big = if with_big {
        write_big(work)?
    } else {
        work.join("big")
    };
    sh("sync")?;
    Ok((small, big))
}

/// Writes `big/one.bin` (1 GiB) under `work`.
fn write_big(work: &Path) -> Result<PathBuf, String> {
    let big = work.join("big");
    eprintln!("xtask: writing one 1 GiB file under {}", work.display());
    write_file(&big.join("one.bin"), BIG_SIZE, 7)?;
    Ok(big)
}

/// Writes `small/` under `work`: 10k × 64 KiB files in 100 directories.
fn write_small(work: &Path) -> Result<PathBuf, String> {
    let small = work.join("small");
    eprintln!(
        "xtask: writing {SMALL_FILES} × 64 KiB files under {}",
        work.display()
    );
    for i in 0..SMALL_FILES {
        write_file(
            &small.join(format!("d{:02}/f{i:05}.bin", i % 100)),
            SMALL_SIZE,
            i as u64,
        )?;
    }
    Ok(small)
}

pub(crate) fn env_dir() -> Result<PathBuf, String> {
    std::env::var("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .map_err(|_| "run through `cargo xtask`".to_owned())
}

/// Installs rclone from Debian's packages when it is missing (as root, or through sudo).
pub(crate) fn ensure_rclone() -> Result<(), String> {
    if Command::new("rclone")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    eprintln!("xtask: installing rclone from Debian's packages");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let cmd = if root {
        "apt-get install -y rclone"
    } else {
        "sudo apt-get install -y rclone"
    };
    sh(cmd)
}

pub(crate) fn sh(cmd: &str) -> Result<(), String> {
    let status = Command::new("sh")
        .args(["-c", cmd])
        .status()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{cmd}` failed: {status}"))
    }
}

/// Runs `cmd` under `/usr/bin/time`: wall seconds and peak RSS in KiB.
fn timed(cmd: &str) -> Result<(f64, u64), String> {
    timed_with(cmd, &[], &[])
}

/// [`timed`] with `set` added to the environment and `unset` removed from it.
pub(crate) fn timed_with(
    cmd: &str,
    set: &[(String, String)],
    unset: &[&str],
) -> Result<(f64, u64), String> {
    let start = Instant::now();
    let mut command = Command::new("/usr/bin/time");
    command.args(["-f", "RSS_KIB=%M", "sh", "-c", cmd]);
    command.envs(set.iter().map(|(k, v)| (k, v)));
    for name in unset {
        command.env_remove(name);
    }
    let out = command.output().map_err(|e| format!("{cmd}: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("`{cmd}` failed: {}\n{err}", out.status));
    }
    let rss = err
        .lines()
        .find_map(|l| l.strip_prefix("RSS_KIB="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((secs, rss))
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

pub(crate) fn write_file(path: &Path, len: usize, seed: u64) -> Result<(), String> {
    let dir = path.parent().ok_or("no parent")?;
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut file = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        for chunk in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        file.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        left -= n;
    }
    Ok(())
}
