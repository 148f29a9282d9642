//! Prints the adaptive throttle's rate and the simulated target's latency over time, as in
//! docs/benchmarks.md: `cargo run -p ferry-throttle --example adaptive_sim [EVERY_SECONDS]`.
//!
//! The target works through 100 MiB/s (its knee), 25 MiB/s from 60 s to 90 s, then 100 MiB/s
//! again; 16 writers send it 1 MiB at a time through a throttle at `--rate auto` (250 ms,
//! floor 1 MiB/s, no ceiling). The clock is tokio's, paused: the 150 s take a moment.
#![allow(clippy::print_stdout)]

#[path = "../tests/sim/mod.rs"]
mod sim;

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let every = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(5);
    let config = sim::default_config();
    let samples = sim::run(sim::knee_drop(), sim::Mode::Adaptive(config), 150).await;
    print!("{}", sim::table(&samples, every));
    println!();
    for (from, to, knee) in [(30, 60, 100.0), (70, 90, 25.0), (120, 150, 100.0)] {
        let mean = sim::mean_rate(&samples, from, to);
        println!(
            "mean rate {from}–{to} s: {mean:.1} MiB/s ({:+.0}% of the knee, {knee} MiB/s)",
            (mean / knee - 1.0) * 100.0
        );
    }
    let down = sim::first(&samples, 60, |s| s.rate <= 25.0 * 1.25);
    let up = sim::first(&samples, 90, |s| s.rate >= 75.0);
    println!("down to ≤ 31.25 MiB/s at {down:?} s (knee dropped at 60 s)");
    println!("back to ≥ 75 MiB/s at {up:?} s (knee back at 90 s)");
    let failed = sim::judge_knee_drop(&samples, config.max_latency);
    println!(
        "checks: {}",
        if failed.is_empty() {
            "all met".to_owned()
        } else {
            failed.join("; ")
        }
    );
}
