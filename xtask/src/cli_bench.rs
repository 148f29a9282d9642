//! `cargo xtask bench cli`: the `ferry` binary against its peers, in the same run.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 4;
const SMALL_FILES: usize = 10_000;
const SMALL_SIZE: usize = 64 << 10;
const BIG_SIZE: usize = 1 << 30;

/// The release `ferry` binary, built, and an empty work directory under the target dir.
fn setup() -> Result<(PathBuf, PathBuf), String> {
    ensure_rclone()?;
    super::cargo(&["build", "--release", "-p", "ferry-cli"], &[])?;
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => env_dir()?.join("../target"),
    };
    let ferry = target.join("release/ferry");
    let ferry = fs::canonicalize(&ferry).map_err(|e| format!("{}: {e}", ferry.display()))?;
    let work = target.join("cli-bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    Ok((ferry, work))
}

/// `cargo xtask bench cli`: every case below, then [`check`]'s.
pub(crate) fn run() -> Result<(), String> {
    let (ferry, work) = setup()?;
    let (small, big) = write_trees(&work)?;

    // Every timed run writes into a fresh destination and state directory, and nothing is
    // deleted until the end: on this machine's ext4 (mounted with `discard`) a deletion's
    // discards land in a later journal commit, so the next run to fsync would pay for the
    // previous run's deletes (rclone never fsyncs; ferry and `sync -f` do).
    let mut runs = 0u32;
    let mut fresh = || -> Result<(PathBuf, PathBuf), String> {
        runs += 1;
        sh("sync")?;
        Ok((
            work.join(format!("dst-{runs}")),
            work.join(format!("state-{runs}")),
        ))
    };
    let ferry_cmd = |src: &Path, (dst, state): &(PathBuf, PathBuf), extra: &str| {
        format!(
            "{} --state {} migrate {} {} -q {extra}",
            ferry.display(),
            state.display(),
            src.display(),
            dst.display()
        )
    };
    let rclone_cmd = |(dst, _): &(PathBuf, PathBuf)| {
        format!(
            "rclone copy --checksum --transfers 16 {} {}",
            small.display(),
            dst.display()
        )
    };
    let cp_cmd = |(dst, _): &(PathBuf, PathBuf)| {
        format!(
            "mkdir -p {d} && cp {}/one.bin {d}/one.bin",
            big.display(),
            d = dst.display()
        )
    };
    let cp_sync_cmd =
        |to: &(PathBuf, PathBuf)| format!("{} && sync -f {}/one.bin", cp_cmd(to), to.0.display());

    // 10k × 64 KiB, checksum verify, vs rclone copy --checksum.
    let (mut t_ferry, mut t_rclone) = (Vec::new(), Vec::new());
    // The order alternates: on this VM the second of two back-to-back runs is often the
    // slower one (its page-cache pages are freshly handed out by the host).
    for run in 0..RUNS {
        if run.is_multiple_of(2) {
            t_rclone.push(timed(&rclone_cmd(&fresh()?))?.0);
            t_ferry.push(timed(&ferry_cmd(&small, &fresh()?, "--verify checksum"))?.0);
        } else {
            t_ferry.push(timed(&ferry_cmd(&small, &fresh()?, "--verify checksum"))?.0);
            t_rclone.push(timed(&rclone_cmd(&fresh()?))?.0);
        }
    }
    // One 1 GiB file vs cp + sync -f (durable) and plain cp.
    let (mut t_big, mut rss_big, mut t_cp, mut t_cp_sync) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        t_cp.push(timed(&cp_cmd(&fresh()?))?.0);
        t_cp_sync.push(timed(&cp_sync_cmd(&fresh()?))?.0);
        let (t, rss) = timed(&ferry_cmd(&big, &fresh()?, "--verify checksum"))?;
        t_big.push(t);
        rss_big.push(rss);
    }
    // The rate limit: 1 GiB at 50 MiB/s (one large file, so the disk is not the limit).
    let rate_cmd = ferry_cmd(&big, &fresh()?, "--rate 50MiB");
    let (t_rate, _) = timed(&rate_cmd)?;
    let achieved = BIG_SIZE as f64 / t_rate / (1 << 20) as f64;
    let example = fresh()?;

    let (f, r) = (median(&mut t_ferry), median(&mut t_rclone));
    let (b, c, cs) = (
        median(&mut t_big),
        median(&mut t_cp),
        median(&mut t_cp_sync),
    );
    let rss = rss_big.iter().copied().max().unwrap_or(0);
    let gib = BIG_SIZE as f64 / (1 << 20) as f64;
    let mut out = String::new();
    out.push_str("| what | ferry | peer | ratio | target |\n|---|---|---|---|---|\n");
    out.push_str(&format!(
        "| 10k × 64 KiB, checksum verify | {f:.2} s | rclone copy --checksum --transfers 16: {r:.2} s | {:.2}× rclone's time | ≤ 1× |\n",
        f / r
    ));
    out.push_str(&format!(
        "| 1 GiB file, checksum verify | {b:.2} s ({:.0} MiB/s), peak RSS {} MiB | cp + sync -f: {cs:.2} s ({:.0} MiB/s); plain cp: {c:.2} s ({:.0} MiB/s) | {:.2}× the durable cp's throughput | ≥ 1×, RSS ≤ 64 MiB |\n",
        gib / b,
        rss / 1024,
        gib / cs,
        gib / c,
        cs / b
    ));
    out.push_str(&format!(
        "| --rate 50MiB, one 1 GiB file | {t_rate:.2} s: {achieved:.2} MiB/s | — | {:+.2}% off | within 2% |\n",
        (achieved / 50.0 - 1.0) * 100.0
    ));
    out.push_str(&format!(
        "\nMedians of {RUNS} runs (all: ferry {t_ferry:.2?}, rclone {t_rclone:.2?}, ferry 1 GiB {t_big:.2?}, cp {t_cp:.2?}, cp+sync {t_cp_sync:.2?}); each run into a fresh destination.\nCommands: `{}`, `{}`, `{}`, `{}`, `{rate_cmd}`.\n",
        ferry_cmd(&small, &example, "--verify checksum"),
        rclone_cmd(&example),
        ferry_cmd(&big, &example, "--verify checksum"),
        cp_sync_cmd(&example),
    ));
    println!("{out}");
    check_case(&ferry, &work, &small)?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// `cargo xtask bench cli check`: only the check case.
pub(crate) fn check() -> Result<(), String> {
    let (ferry, work) = setup()?;
    let small = write_small(&work)?;
    sh("sync")?;
    check_case(&ferry, &work, &small)?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// Alternating pairs of the check case.
const CHECK_PAIRS: usize = 6;

/// `ferry check` vs `rclone check --checksum` of `small` against an identical copy of it, in
/// [`CHECK_PAIRS`] alternating pairs (A B, B A, …); prints each pair's times and ratio, and
/// the median ratio with its range. Both read both trees from the page cache (the copy was
/// just written, and the first run of each pair warms it for the second).
fn check_case(ferry: &Path, work: &Path, small: &Path) -> Result<(), String> {
    let copy = work.join("small-copy");
    sh(&format!("cp -r {} {}", small.display(), copy.display()))?;
    sh("sync")?;
    let mut runs = 0u32;
    let mut ferry_cmd = || {
        runs += 1;
        format!(
            "{} --state {} check {} {} -q",
            ferry.display(),
            work.join(format!("check-state-{runs}")).display(),
            small.display(),
            copy.display()
        )
    };
    let rclone_cmd = format!(
        "rclone check --checksum --checkers 16 -q {} {}",
        small.display(),
        copy.display()
    );
    // A first run of each, untimed, so that both trees are in the page cache for every pair.
    timed(&ferry_cmd())?;
    timed(&rclone_cmd)?;
    let mut pairs = Vec::new();
    for pair in 0..CHECK_PAIRS {
        let (f, r) = if pair.is_multiple_of(2) {
            let f = timed(&ferry_cmd())?;
            (f, timed(&rclone_cmd)?)
        } else {
            let r = timed(&rclone_cmd)?;
            (timed(&ferry_cmd())?, r)
        };
        pairs.push((f, r));
    }
    let mut ratios: Vec<f64> = pairs.iter().map(|((f, _), (r, _))| f / r).collect();
    let mut out = String::from(
        "| pair | order | ferry check | rclone check --checksum | ferry / rclone |\n|---|---|---|---|---|\n",
    );
    for (i, ((f, f_rss), (r, r_rss))) in pairs.iter().enumerate() {
        let order = if i % 2 == 0 {
            "ferry, rclone"
        } else {
            "rclone, ferry"
        };
        out.push_str(&format!(
            "| {} | {order} | {f:.2} s ({} MiB) | {r:.2} s ({} MiB) | {:.2}× |\n",
            i + 1,
            f_rss / 1024,
            r_rss / 1024,
            f / r
        ));
    }
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    out.push_str(&format!(
        "\n10k × 64 KiB, identical trees: median of {CHECK_PAIRS} per-pair ratios **{:.2}×** rclone's time ({lo:.2}–{hi:.2}×), target ≤ 1×. Peak RSS in parentheses.\nCommands: `{}`, `{rclone_cmd}`.\n",
        median(&mut ratios),
        ferry_cmd(),
    ));
    println!("{out}");
    Ok(())
}

/// Writes the bench data under `work`: `small/` (10k × 64 KiB files in 100 directories) and
/// `big/one.bin` (1 GiB), then syncs. Returns the two directories.
pub(crate) fn write_trees(work: &Path) -> Result<(PathBuf, PathBuf), String> {
    let big = work.join("big");
    eprintln!("xtask: writing one 1 GiB file under {}", work.display());
    let small = write_small(work)?;
    write_file(&big.join("one.bin"), BIG_SIZE, 7)?;
    sh("sync")?;
    Ok((small, big))
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
