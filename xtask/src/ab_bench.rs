//! `cargo xtask bench ab REV [PAIRS]`: this checkout's `ferry` against the one built from
//! git revision `REV`, in alternating pairs (base then new, new then base, …), on the trees
//! of `bench cli` and the settings a change may cost on. Each pair's times, and the median
//! and spread of the per-pair ratios (new ÷ base), go to a result file under `docs/bench/`
//! (every run kept) and to stdout. `FERRY_AB_BASE_BIN=PATH` uses a `ferry` built at REV
//! before instead of building it.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cli_bench::{clear_runs, env_dir, sh, target_dir, timed_with, write_trees};
use super::record::summarize;

/// One setting compared: its name, which tree, the flags, and whether each run needs a
/// fresh copy of the source (a cleanup deletes it).
struct Case {
    name: &'static str,
    big: bool,
    flags: &'static str,
    consumes_source: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "10k × 64 KiB, defaults (verify checksum, cleanup never)",
        big: false,
        flags: "",
        consumes_source: false,
    },
    Case {
        name: "10k × 64 KiB, --verify size --cleanup after-verify",
        big: false,
        flags: "--verify size --cleanup after-verify",
        consumes_source: true,
    },
    Case {
        name: "1 GiB, defaults (verify checksum, cleanup never)",
        big: true,
        flags: "",
        consumes_source: false,
    },
    Case {
        name: "1 GiB, --verify size --cleanup after-verify",
        big: true,
        flags: "--verify size --cleanup after-verify",
        consumes_source: true,
    },
];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    const USAGE: &str = "usage: cargo xtask bench ab REV [PAIRS]";
    let base_rev = args.first().ok_or(USAGE)?;
    let pairs: usize = match args.get(1) {
        Some(n) => n.parse().map_err(|_| USAGE.to_owned())?,
        None => 5,
    };
    let root = env_dir()?.join("..");
    let target = target_dir()?;
    let base_commit = git(&root, &["rev-parse", "--short", base_rev])?;
    let new_commit = git(&root, &["rev-parse", "--short", "HEAD"])?;
    let dirty = !git(&root, &["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    super::cargo(&["build", "--release", "-p", "ferry-cli"], &[])?;
    let new = fs::canonicalize(target.join("release/ferry")).map_err(|e| e.to_string())?;
    // A base binary built before (e.g. in another worktree) may be given instead.
    let base = match std::env::var_os("FERRY_AB_BASE_BIN") {
        Some(bin) => fs::canonicalize(&bin).map_err(|e| format!("FERRY_AB_BASE_BIN: {e}"))?,
        None => build_base(&root, &target, &base_commit)?,
    };

    let work = target.join("ab-bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let (small, big) = write_trees(&work, true, true)?;
    let mut n = 0u32;
    let mut report = String::new();
    let machine = machine();
    let _ = writeln!(
        report,
        "# `ferry` {new_commit}{} vs {base_commit}\n\nMachine: {machine}. Command: `cargo xtask bench ab {base_rev} {pairs}`. Each run writes into a fresh destination and state directory, removed after its case (then `fstrim`); a case whose cleanup deletes the source runs on a fresh copy of it (made and synced before the timer starts). Ratio: new ÷ base wall time, per pair.\n",
        if dirty { " (uncommitted changes)" } else { "" },
    );
    let _ = writeln!(
        report,
        "| case | pairs (base s, new s) | median ratio | spread |\n|---|---|---|---|"
    );
    for case in CASES {
        let tree = if case.big { &big } else { &small };
        let mut ratios = Vec::new();
        let mut cells = Vec::new();
        for pair in 0..pairs {
            let mut one = |bin: &Path| -> Result<f64, String> {
                n += 1;
                let src = if case.consumes_source {
                    let copy = work.join(format!("src-{n}"));
                    sh(&format!("cp -a {} {}", tree.display(), copy.display()))?;
                    copy
                } else {
                    tree.clone()
                };
                sh("sync")?;
                let cmd = format!(
                    "{} --state {} migrate {} {} -q {}",
                    bin.display(),
                    work.join(format!("state-{n}")).display(),
                    src.display(),
                    work.join(format!("dst-{n}")).display(),
                    case.flags
                );
                Ok(timed_with(&cmd, &[], &[])?.0)
            };
            let (b, m) = if pair % 2 == 0 {
                let b = one(&base)?;
                (b, one(&new)?)
            } else {
                let m = one(&new)?;
                (one(&base)?, m)
            };
            cells.push(format!("({b:.2}, {m:.2})"));
            ratios.push(m / b);
        }
        // The case's copies go before the next case (every run of every case does not fit
        // on every disk); their discards are made now, untimed (`fstrim`, where allowed), so
        // no run pays for another's deletes.
        clear_runs(&work, &[small.clone(), big.clone()])?;
        let (mid, lo, hi) = summarize(&ratios);
        let _ = writeln!(
            report,
            "| {} | {} | {mid:.2}× | {lo:.2}–{hi:.2} |",
            case.name,
            cells.join(" ")
        );
        eprintln!("xtask: {}: median {mid:.2}×", case.name);
    }
    println!("{report}");
    let dir = root.join("docs/bench");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join(format!("ab-{new_commit}-vs-{base_commit}.md"));
    fs::write(&file, &report).map_err(|e| format!("{}: {e}", file.display()))?;
    eprintln!("xtask: wrote {}", file.display());
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// Builds `ferry` at `commit` in a worktree of its own under the target directory (kept for
/// the next run) and returns the binary.
fn build_base(root: &Path, target: &Path, commit: &str) -> Result<PathBuf, String> {
    let tree = target.join(format!("ab-base-{commit}"));
    if !tree.exists() {
        let tree_arg = tree.to_string_lossy().into_owned();
        git(root, &["worktree", "add", "--detach", &tree_arg, commit])?;
    }
    let base_target = target.join("ab-base-target");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "ferry-cli"])
        .current_dir(&tree)
        .env("CARGO_TARGET_DIR", &base_target)
        .status()
        .map_err(|e| format!("cargo build at {commit}: {e}"))?;
    if !status.success() {
        return Err(format!("building ferry at {commit} failed: {status}"));
    }
    fs::canonicalize(base_target.join("release/ferry")).map_err(|e| e.to_string())
}

pub(crate) fn git(root: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .map_err(|e| format!("git {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The machine, in a line: CPUs, memory, kernel.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {mem} memory, Linux {}", kernel.trim())
}
