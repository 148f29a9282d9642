//! A simulated target for the adaptive throttle, on tokio's paused clock, shaped like a
//! store shared with other clients: up to its knee (`capacity`, bytes per second offered
//! over the last second) every write takes the base latency; past it, the latency rises
//! steeply with the load (2 s more per knee's worth of excess) and a share of the writes,
//! growing with the excess, is answered `SlowDown` (all of them at twice the knee). Shared
//! by the tests and the `adaptive_sim` example (which prints the table of
//! docs/benchmarks.md).

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ferry_throttle::Throttle;
use ferry_throttle::adaptive::{AdaptiveThrottle, Config, Observation, Outcome};
use ferry_types::Rate;
use parking_lot::Mutex;
use tokio::time::Instant;

pub const MIB: f64 = 1024.0 * 1024.0;

/// The capacity over time: `(from second, MiB/s)`, in order.
pub type Schedule = Vec<(u64, f64)>;

/// The scenario of the docs: a knee at 100 MiB/s, down to 25 MiB/s from 60 s to 90 s.
pub fn knee_drop() -> Schedule {
    vec![(0, 100.0), (60, 25.0), (90, 100.0)]
}

pub struct Target {
    start: Instant,
    schedule: Schedule,
    base: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Writes offered in the last second: when, and how many bytes.
    offered: VecDeque<(Instant, u64)>,
    offered_bytes: u64,
    /// Error diffusion for the share of `SlowDown`s (deterministic).
    reject_debt: f64,
    latencies: Vec<Duration>,
    slowdowns: u64,
    served: u64,
}

impl Target {
    pub fn new(schedule: Schedule) -> Target {
        Target {
            start: Instant::now(),
            schedule,
            base: Duration::from_millis(20),
            state: Mutex::new(State::default()),
        }
    }

    /// The capacity at `now`, bytes per second.
    pub fn capacity(&self, now: Instant) -> f64 {
        let t = now.saturating_duration_since(self.start).as_secs();
        self.schedule
            .iter()
            .take_while(|(from, _)| *from <= t)
            .last()
            .map_or(f64::MAX, |(_, mib)| mib * MIB)
    }

    /// One write of `bytes`: waits what the target takes and says how it ended.
    pub async fn write(&self, bytes: u64) -> (Duration, Outcome) {
        let now = Instant::now();
        let (latency, outcome) = {
            let mut state = self.state.lock();
            state.offered.push_back((now, bytes));
            state.offered_bytes += bytes;
            while let Some(&(at, old)) = state.offered.front() {
                if now.duration_since(at) < Duration::from_secs(1) {
                    break;
                }
                state.offered.pop_front();
                state.offered_bytes -= old;
            }
            let excess = (state.offered_bytes as f64 / self.capacity(now) - 1.0).max(0.0);
            state.reject_debt += excess.min(1.0);
            if state.reject_debt >= 1.0 {
                state.reject_debt -= 1.0;
                state.slowdowns += 1;
                (self.base, Outcome::Overloaded)
            } else {
                let latency = self.base + Duration::from_secs_f64(2.0 * excess);
                state.latencies.push(latency);
                state.served += bytes;
                (latency, Outcome::Ok)
            }
        };
        tokio::time::sleep(latency).await;
        (latency, outcome)
    }

    /// The p90 latency, `SlowDown`s and bytes served since the last call.
    fn take(&self) -> (Option<Duration>, u64, u64) {
        let mut state = self.state.lock();
        let mut latencies = std::mem::take(&mut state.latencies);
        latencies.sort_unstable();
        let p90 = (!latencies.is_empty())
            .then(|| latencies[(latencies.len() * 9).div_ceil(10).saturating_sub(1)]);
        let out = (p90, state.slowdowns, state.served);
        state.slowdowns = 0;
        state.served = 0;
        out
    }
}

/// One second of a run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the start (the end of the second).
    pub t: u64,
    /// The target's capacity then, MiB/s.
    pub knee: f64,
    /// The throttle's rate at the end of the second, MiB/s.
    pub rate: f64,
    /// Bytes the target served in the second, MiB.
    pub served: f64,
    /// The p90 latency of the writes that ended in the second.
    pub p90: Option<Duration>,
    /// `SlowDown` answers in the second.
    pub slowdowns: u64,
}

/// How writers use the throttle: with the controller, or at a fixed rate (a peer that
/// must fail the checks).
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Adaptive(Config),
    Fixed(Rate),
}

/// The default controller of `--rate auto` (250 ms, 1 MiB/s floor, no ceiling).
pub fn default_config() -> Config {
    Config::new(Duration::from_millis(250), 1 << 20, Rate::Unlimited)
}

/// Runs `writers` writers of `chunk` bytes for `secs` seconds against a target with
/// `schedule`, throttled as `mode` says. Must run on a paused clock.
pub async fn run(schedule: Schedule, mode: Mode, secs: u64) -> Vec<Sample> {
    const WRITERS: usize = 16;
    const CHUNK: u64 = 1 << 20;
    let target = Arc::new(Target::new(schedule));
    let adaptive = Arc::new(AdaptiveThrottle::new(Throttle::unlimited()));
    match mode {
        Mode::Adaptive(config) => adaptive.enable(config),
        Mode::Fixed(rate) => adaptive.set_fixed(rate),
    }
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (target, adaptive) = (Arc::clone(&target), Arc::clone(&adaptive));
        writers.push(tokio::spawn(async move {
            loop {
                adaptive.throttle().acquire(CHUNK).await;
                adaptive.sent(CHUNK);
                let started = Instant::now();
                let (latency, outcome) = target.write(CHUNK).await;
                adaptive.observe(Observation::new(started, latency, outcome));
            }
        }));
    }
    let start = target.start;
    let mut samples = Vec::new();
    for t in 1..=secs {
        tokio::time::sleep_until(start + Duration::from_secs(t)).await;
        let (p90, slowdowns, served) = target.take();
        let rate = adaptive
            .throttle()
            .rate()
            .as_bytes_per_sec()
            .map_or(f64::INFINITY, |r| r as f64 / MIB);
        samples.push(Sample {
            t,
            knee: target.capacity(start + Duration::from_secs(t - 1)) / MIB,
            rate,
            served: served as f64 / MIB,
            p90,
            slowdowns,
        });
    }
    for writer in writers {
        writer.abort();
    }
    samples
}

/// Mean rate over the seconds `(from, to]`.
pub fn mean_rate(samples: &[Sample], from: u64, to: u64) -> f64 {
    let window: Vec<f64> = samples
        .iter()
        .filter(|s| s.t > from && s.t <= to)
        .map(|s| s.rate)
        .collect();
    window.iter().sum::<f64>() / window.len().max(1) as f64
}

/// The first second after `from` at which `f` holds.
pub fn first(samples: &[Sample], from: u64, f: impl Fn(&Sample) -> bool) -> Option<u64> {
    samples.iter().find(|s| s.t > from && f(s)).map(|s| s.t)
}

/// The checks of the `knee_drop` scenario (150 s): near the knee before the drop, backed off
/// within 5 s of it, near the new knee, recovered within 30 s after it. Every failed check,
/// in words.
pub fn judge_knee_drop(samples: &[Sample], max_latency: Duration) -> Vec<String> {
    let mut failed = Vec::new();
    let near = |mean: f64, knee: f64| (mean - knee).abs() <= 0.25 * knee;
    let before = mean_rate(samples, 30, 60);
    if !near(before, 100.0) {
        failed.push(format!(
            "rate over 30–60 s {before:.1} MiB/s, not within 25% of the knee, 100"
        ));
    }
    match first(samples, 60, |s| s.rate <= 25.0 * 1.25) {
        Some(t) if t <= 65 => {}
        other => failed.push(format!(
            "rate down to the new knee at {other:?} s, not by 65 s"
        )),
    }
    let during = mean_rate(samples, 70, 90);
    if !near(during, 25.0) {
        failed.push(format!(
            "rate over 70–90 s {during:.1} MiB/s, not within 25% of 25"
        ));
    }
    match first(samples, 90, |s| s.rate >= 75.0) {
        Some(t) if t <= 120 => {}
        other => failed.push(format!(
            "rate back to 75 MiB/s at {other:?} s, not by 120 s"
        )),
    }
    let after = mean_rate(samples, 120, 150);
    if !near(after, 100.0) {
        failed.push(format!(
            "rate over 120–150 s {after:.1} MiB/s, not within 25% of 100"
        ));
    }
    // In the steady stretches, the target's latency stays under the threshold most seconds.
    let slow = samples
        .iter()
        .filter(|s| (30..60).contains(&s.t) || (120..150).contains(&s.t))
        .filter(|s| s.p90.is_none_or(|p| p > max_latency))
        .count();
    if slow > 15 {
        failed.push(format!(
            "{slow} of 60 steady seconds with p90 latency over the threshold"
        ));
    }
    failed
}

/// The run as a Markdown table, one row every `every` seconds.
pub fn table(samples: &[Sample], every: u64) -> String {
    let mut out = String::from(
        "| t (s) | knee (MiB/s) | rate (MiB/s) | served (MiB/s) | p90 latency (ms) | SlowDown/s |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for s in samples.iter().filter(|s| s.t % every == 0) {
        let p90 = s.p90.map_or("–".to_owned(), |p| {
            format!("{:.0}", p.as_secs_f64() * 1000.0)
        });
        out += &format!(
            "| {} | {:.0} | {:.1} | {:.1} | {} | {} |\n",
            s.t, s.knee, s.rate, s.served, p90, s.slowdowns
        );
    }
    out
}
