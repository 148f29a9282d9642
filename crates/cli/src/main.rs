//! `ferry`: move a directory tree to a new place while the old one stays in use.
//!
//! The command-line face of Ferry's engine (the `ferry` facade crate): `ferry migrate SRC DST`
//! copies, verifies and forwards every regular file of SRC to DST through a throttle, with a
//! crash-safe checkpoint in a per-user state directory, a progress display, Ctrl-C that pauses
//! and saves, and a control socket so that another shell can pause, resume, re-throttle and
//! watch the running job. `ferry demo` shows the engine's promises (no failed read, no lost
//! write) under concurrent readers and writers, with a pause, a rate change and a crash.
//!
//! This is the only crate of the workspace that prints. Exit codes: 0 done, 1 error, 2 usage,
//! 3 completed with failed objects, 130 interrupted.
//!
//! # Dependencies
//! `clap` (derive) for arguments, `indicatif` for the progress bar on a terminal,
//! `tracing-subscriber` for logs on stderr, `tokio` with every feature (signals, Unix sockets,
//! the multi-threaded runtime), `serde_json` for `--json` output and the state files.
// A command-line tool: its output goes to stdout, its messages to stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod check;
mod cli;
mod commands;
mod control;
mod demo;
mod error;
mod exporter;
mod location;
mod progress;
mod run;
mod scan;
mod serve;
mod state;
mod view;
mod worker;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(error::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing(cli.verbose, cli.quiet_logs());
    run::set_parts(ferry::engine::Parts {
        above: cli.parts_above.as_u64(),
        size: cli.part_size.as_u64().max(1),
        ..ferry::engine::Parts::default()
    });
    run::set_direct_writes(!cli.cached_writes);
    raise_malloc_thresholds();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(error::EXIT_ERROR);
        }
    };
    let outcome = runtime.block_on(commands::dispatch(cli));
    // Jobs parked by a pause or blocked file reads must not hold the exit up.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            error::report(&err);
            ExitCode::from(
                err.downcast_ref::<CliError>()
                    .map_or(error::EXIT_ERROR, |e| e.code),
            )
        }
    }
}

/// Logs go to stderr; `RUST_LOG` wins over `-v`.
fn init_tracing(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Lets glibc's allocator keep freed memory for reuse instead of handing it back at once.
///
/// A copy allocates and frees a buffer per chunk read on many threads. With glibc's initial
/// thresholds (128 KiB), each thread's arena gives its free top back to the kernel after
/// about every other 64 KiB buffer, and the next buffer faults its pages in again: 10 page
/// faults per small file, about 10% of the CPU a tree of 64 KiB files costs (docs/benchmarks.md).
/// glibc raises both thresholds when a block it mapped on its own is freed (mallopt(3),
/// "dynamic mmap threshold"): freeing one 4 MiB block sets them to 4 MiB and 8 MiB. Other
/// allocators ignore this; it costs one allocation.
fn raise_malloc_thresholds() {
    let block = std::hint::black_box(vec![0u8; 4 << 20]);
    drop(block);
}
