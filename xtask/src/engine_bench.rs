//! `cargo xtask bench engine`: the engine against its plain get/put/delete loop, MemStore →
//! MemStore, 100k × 4 KiB (`benches/benches/engine_mem.rs`). One criterion run measures both
//! in the same group: one pair (`ferry_job` first, criterion's order); the figure of each is
//! criterion's mean time per iteration (one whole job of 100k objects), from its estimates
//! under `target/criterion/`.

use std::fs;

use serde::Deserialize;

use crate::cli_bench::target_dir;
use crate::record::{self, Commands, Options, Pair, Run};

const GROUP: &str = "engine_memstore/4KiB_x_100k";

pub(crate) fn run(options: Options) -> Result<(), String> {
    let case = record::case("engine")?;
    let args = [
        "bench",
        "-p",
        "ferry-benches",
        "--bench",
        "engine_mem",
        "--",
        "--warm-up-time",
        "1",
        GROUP,
    ];
    let command = format!("cargo {}", args.join(" "));
    // Built before the first pair, so that no pair pays for it.
    crate::cargo(
        &[
            "bench",
            "-p",
            "ferry-benches",
            "--bench",
            "engine_mem",
            "--no-run",
        ],
        &[],
    )?;
    let start = record::start()?;
    let mut pairs = Vec::new();
    for i in 0..options.pairs {
        crate::cargo(&args, &[])?;
        let mut pair = Pair {
            a_first: true,
            a: estimate("ferry_job")?,
            b: estimate("plain_loop")?,
            beside: None,
            ratio: 0.0,
        };
        pair.ratio = case.ratio.of(&pair);
        eprintln!("xtask: engine pair {}: {:.2}×", i + 1, pair.ratio);
        pairs.push(pair);
    }
    let commands = Commands {
        a: format!("{command} (ferry_job)"),
        b: format!("{command} (plain_loop)"),
        beside: None,
    };
    record::finish(case, options, start, commands, pairs, Vec::new())
}

/// Criterion's mean time per iteration of `bench` in [`GROUP`], in seconds.
fn estimate(bench: &str) -> Result<Run, String> {
    let path = target_dir()?
        .join("criterion")
        .join(GROUP.replace('/', "_"))
        .join(bench)
        .join("new/estimates.json");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let estimates: Estimates =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Run {
        secs: estimates.mean.point_estimate / 1e9,
        rss_kib: 0,
    })
}

/// The part of criterion's `estimates.json` read here.
#[derive(Deserialize)]
struct Estimates {
    mean: Estimate,
}

#[derive(Deserialize)]
struct Estimate {
    /// Nanoseconds per iteration.
    point_estimate: f64,
}
