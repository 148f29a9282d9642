//! `cargo xtask bench engine`: the engine against its plain get/put/delete loop, MemStore →
//! MemStore, 100k × 4 KiB (`benches/benches/engine_mem.rs`). One criterion run measures both
//! in the same group: one pair (`ferry_job` first, criterion's order); the figure of each is
//! criterion's mean time per iteration (one whole job of 100k objects), from its estimates
//! under `target/criterion/`.

use std::fs;

use serde::Deserialize;

use crate::cli_bench::{median, target_dir};
use crate::record::{self, Commands, Options, Pair, Run};

const GROUP: &str = "engine_memstore/4KiB_x_100k";
/// Objects per iteration in [`GROUP`].
const OBJECTS: f64 = 100_000.0;

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
    // SPEC §8 asks ≥ 200k objects/s too: the job's rate, beside the ratio.
    let rate = |secs: fn(&Pair) -> f64| {
        let mut rates: Vec<f64> = pairs.iter().map(|p| OBJECTS / secs(p)).collect();
        median(&mut rates) / 1000.0
    };
    let notes = vec![format!(
        "objects/s, medians over the pairs: ferry_job {:.0}k, plain_loop {:.0}k (target ≥ 200k for the job)",
        rate(|p| p.a.secs),
        rate(|p| p.b.secs)
    )];
    record::finish(case, options, start, commands, pairs, notes)
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
