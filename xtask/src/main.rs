//! Project automation, in the style of rust-analyzer's xtask: `cargo xtask <task>`.
//!
//! - `ci`: what CI checks, in the order it checks it: `cargo fmt --check`, clippy on every
//!   target and feature with warnings denied, the README's test command, and the docs with
//!   warnings denied. If this passes locally, `.ci/run` passes.
//! - `bench [ARGS…]`: the criterion benches of every crate; extra arguments go to criterion
//!   (for example `cargo xtask bench -- acquire`).

use std::env;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench(&args[1..]),
        Some("help" | "-h" | "--help") | None => {
            eprintln!("usage: cargo xtask <ci | bench [-- CRITERION ARGS]>");
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
    eprintln!("xtask: ci passed");
    Ok(())
}

fn bench(extra: &[String]) -> Result<(), String> {
    let mut args = vec!["bench", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args, &[])
}

fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
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
