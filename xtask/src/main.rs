//! Project automation, in the style of rust-analyzer's xtask: `cargo xtask <task>`.
//!
//! - `ci`: what CI checks, in the order it checks it: `cargo fmt --check`, clippy on every
//!   target and feature with warnings denied, the README's test command, the docs with
//!   warnings denied, `scripts/moto-s3.sh` (the S3 tests against moto, installed from PyPI)
//!   and `scripts/azurite.sh` (the az:// tests against Azurite, installed from npm), and
//!   `scripts/gateway-clients.sh --bounded` (`ferry serve` under boto3, the aws CLI and rclone,
//!   installed by `scripts/s3-clients.sh`: pinned, hashed, from PyPI and Debian). If this
//!   passes locally, `.ci/run` passes.
//! - `bench [ARGS…]`: the criterion benches of every crate; extra arguments go to criterion
//!   (for example `cargo xtask bench -- acquire`).
//! - `bench CASE [--pairs N] [--dry]`: an end-to-end comparison of SPEC §8 in N (default
//!   6, so each side goes first as often; minimum 5) alternating pairs (A B, B A, …), recorded in
//!   `docs/bench/CASE-COMMIT-DATETIME.json` (machine, load average, commit, every pair, the
//!   median and spread of the per-pair ratios), then `bench tables`. `--dry` (any N) prints
//!   and writes nothing under `docs/`. CASE: `cli-10k` (`ferry migrate` of 10k × 64 KiB vs
//!   `rclone copy --checksum`; rclone is installed from Debian's packages when missing),
//!   `cli-1g` (one 1 GiB file vs `cp` + `sync -f`, plain `cp` beside it, then one run with
//!   `--rate 50MiB`), `check` (`ferry check` vs `rclone check --checksum`), `s3-10k`,
//!   `s3-1g`, `s3s3-10k`, `s3s3-1g` (vs `rclone copy` to the same S3 server on loopback,
//!   `ferry-object-store`'s `s3_server` example), `engine` (the engine vs its plain loop, one
//!   criterion run of `engine_mem` per pair); `cli` runs the first three, `s3` the four S3
//!   cases.
//! - `bench tables`: regenerates the tables between `<!-- generated: NAME begin -->` and
//!   `<!-- generated: NAME end -->` in `docs/benchmarks.md` and the crate READMEs from every
//!   result file under `docs/bench/`.
//! - `bench serve [--pairs N] [--seconds S] [--concurrency C]`: `ferry serve` against the
//!   direct S3 server (`ferry-object-store`'s `s3_server` example serving the same
//!   directory), GET and PUT of 4 KiB and 1 MiB objects measured by its `s3_load` example, in
//!   alternating pairs (default 5): p50, p99, throughput, the median gateway ÷ direct p50 and
//!   its spread; then the gateway's p99 while a migration runs vs idle. Every pair goes to
//!   `docs/bench/serve-COMMIT.md`; prints the Markdown tables for `docs/benchmarks.md`.
//! - `bench ab REV [PAIRS]`: this checkout's `ferry migrate` against the one built from
//!   git revision REV, in PAIRS (default 5) alternating pairs, on 10k × 64 KiB and 1 GiB, with
//!   the defaults and with `--verify size --cleanup after-verify`; the pairs, the median
//!   ratio and its spread go to `docs/bench/ab-NEW-vs-BASE.md`. What a change costs, measured
//!   as the issue that made it asks.
//! - `crash [-n CYCLES] [--seed SEED]`: the crash tests, long: CYCLES (default 1000) SIGKILL
//!   cycles of a checkpointing child process, then the simulated crash at every I/O step, then
//!   `ferry migrate` of a 2 GiB file SIGKILLed half way and resumed (to a directory and to S3),
//!   then CYCLES cases of the engine's model test (random traffic, pause, cancel, crash and
//!   recover, faults), then the crash loop (`tests/it/crash_loop.rs`): CYCLES SIGKILLs of an
//!   engine process moving a tree of 3,000 files of 0 B to 32 MiB under client traffic, a last
//!   run to the end, every invariant checked against the ledger, one summary line (SEED picks
//!   the tree, the traffic and the kill moments; default: from the clock, printed). CI runs 8
//!   cycles, 64 cases and a crash loop of 5 cycles over 300 files of up to 4 MiB.
//! - `fuzz [SECONDS]`: each fuzz target in `fuzz/` for SECONDS (default 60) on the nightly
//!   toolchain, installing `cargo-fuzz` first if it is missing; new inputs land in
//!   `fuzz/corpus/`, which CI replays as a regular test on stable.
// A command-line tool: it prints its reports to stdout and its progress to stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod ab_bench;
mod cli_bench;
mod engine_bench;
mod record;
mod s3_bench;
mod serve_bench;

use std::env;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench(&args[1..]),
        Some("crash") => crash(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("help" | "-h" | "--help") | None => {
            eprintln!(
                "usage: cargo xtask <ci | bench [cli | cli-10k | cli-1g | check | s3 | s3-10k | s3-1g | s3s3-10k | s3s3-1g | engine [--pairs N] [--dry] | tables | serve [--pairs N] [--seconds S] [--concurrency C] | ab REV [PAIRS] | -- CRITERION ARGS] | crash [-n CYCLES] [--seed SEED] | fuzz [SECONDS]>"
            );
            return ExitCode::from(2);
        }
        Some(other) => {
            eprintln!("xtask: unknown task `{other}`; try `cargo xtask help`");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The README's test command; `.ci/run` runs the same one.
const TEST_COMMAND: &[&str] = &["test", "--workspace"];

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(TEST_COMMAND, &[])?;
    cargo(
        &["doc", "--workspace", "--no-deps", "--all-features"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // The S3 tests against moto, a second S3 implementation, the az:// tests against
    // Azurite, Azure's emulator, and `ferry serve` under boto3, the aws CLI and rclone,
    // bounded (`.ci/run` runs the three too).
    for (script, args) in [
        ("moto-s3.sh", &[][..]),
        ("azurite.sh", &[][..]),
        ("gateway-clients.sh", &["--bounded"][..]),
    ] {
        let script = cli_bench::env_dir()?.join("../scripts").join(script);
        eprintln!("xtask: $ {} {}", script.display(), args.join(" "));
        let status = Command::new(&script)
            .args(args)
            .status()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if !status.success() {
            return Err(format!("{} failed: {status}", script.display()));
        }
    }
    eprintln!("xtask: ci passed");
    Ok(())
}

fn bench(extra: &[String]) -> Result<(), String> {
    let rest = extra.get(1..).unwrap_or_default();
    match extra.first().map(String::as_str) {
        Some("tables") => return record::tables(),
        Some(name @ ("cli" | "cli-10k" | "cli-1g" | "check")) => {
            return cli_bench::run(name, record::parse_options(rest)?);
        }
        Some(name @ ("s3" | "s3-10k" | "s3-1g" | "s3s3-10k" | "s3s3-1g")) => {
            return s3_bench::run(name, record::parse_options(rest)?);
        }
        Some("engine") => return engine_bench::run(record::parse_options(rest)?),
        Some("serve") => return serve_bench::run(rest),
        Some("ab") => return ab_bench::run(rest),
        _ => {}
    }
    let mut args = vec!["bench", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args, &[])
}

fn crash(args: &[String]) -> Result<(), String> {
    const USAGE: &str = "usage: cargo xtask crash [-n CYCLES] [--seed SEED]";
    let mut cycles = "1000".to_owned();
    let mut seed = None;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().filter(|v| v.parse::<u64>().is_ok());
        match (flag.as_str(), value) {
            ("-n", Some(n)) => cycles = n.clone(),
            ("--seed", Some(s)) => seed = Some(s.clone()),
            _ => return Err(USAGE.to_owned()),
        }
    }
    cargo(
        &[
            "test",
            "--release",
            "-p",
            "ferry-checkpoint",
            "--test",
            "crash",
        ],
        &[("FERRY_CRASH_CYCLES", &cycles)],
    )?;
    cargo(
        &[
            "test",
            "--release",
            "-p",
            "ferry-checkpoint",
            "--lib",
            "i5_",
        ],
        &[],
    )?;
    // Resume inside a huge object: `ferry migrate` of a 2 GiB file SIGKILLed half way, to a
    // directory and to the in-process S3 server; CI runs it with 64 MiB.
    cargo(
        &[
            "test",
            "--release",
            "-p",
            "ferry-cli",
            "--test",
            "cli",
            "parts::i4_",
            "--",
            "--nocapture",
        ],
        &[("FERRY_HUGE_MIB", "2048")],
    )?;
    // The engine's model: random plans, traffic, pause/cancel/crash and faults, checked
    // against a ledger; CI runs 64 cases, this runs CYCLES.
    cargo(
        &[
            "test",
            "--release",
            "-p",
            "ferry-engine",
            "--test",
            "engine",
            "model::",
        ],
        &[("PROPTEST_CASES", &cycles)],
    )?;
    // The crash loop: a real engine process SIGKILLed CYCLES times under client traffic.
    let mut envs = vec![
        ("FERRY_CRASH_CYCLES", cycles.as_str()),
        ("FERRY_CRASH_OBJECTS", "3000"),
        ("FERRY_CRASH_MAX_SIZE", "33554432"),
    ];
    if let Some(seed) = &seed {
        envs.push(("FERRY_CRASH_SEED", seed));
    }
    cargo(
        &[
            "test",
            "--release",
            "-p",
            "ferry-tests",
            "--test",
            "integration",
            "crash_loop",
            "--",
            "--nocapture",
        ],
        &envs,
    )
}

/// Fuzz targets and the corpus directory each one grows.
const FUZZ_TARGETS: &[&str] = &["checkpoint_decode", "dirstore_key_path", "parsers"];

fn fuzz(args: &[String]) -> Result<(), String> {
    let seconds = match args {
        [] => "60".to_owned(),
        [s] if s.parse::<u64>().is_ok() => s.clone(),
        _ => return Err("usage: cargo xtask fuzz [SECONDS]".to_owned()),
    };
    let has_cargo_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_cargo_fuzz {
        eprintln!("xtask: installing cargo-fuzz (once)");
        run(
            "cargo",
            &["+nightly", "install", "cargo-fuzz", "--locked"],
            &[],
        )?;
    }
    for target in FUZZ_TARGETS {
        let corpus = format!("fuzz/corpus/{target}");
        let max_time = format!("-max_total_time={seconds}");
        run(
            "cargo",
            &[
                "+nightly",
                "fuzz",
                "run",
                "--fuzz-dir",
                "fuzz",
                target,
                &corpus,
                "--",
                &max_time,
            ],
            &[],
        )?;
    }
    Ok(())
}

/// Runs a program other than the current cargo (e.g. `cargo +nightly`, which must go through
/// rustup's proxy rather than the pinned toolchain's cargo).
fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    eprintln!("xtask: $ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .status()
        .map_err(|e| format!("could not run `{program}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed ({status})", args.join(" ")))
    }
}

pub(crate) fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("xtask: $ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .map_err(|e| format!("could not run `{cargo}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}
