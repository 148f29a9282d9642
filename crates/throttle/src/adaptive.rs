//! An adaptive rate: AIMD on the latency and the overload errors of the store written to.
//!
//! A [`Controller`] is a pure state machine: it is told what each operation on the target
//! took ([`Controller::observe`]) and how many bytes went out ([`Controller::sent`]), with
//! the time passed in, and answers with a new rate when it decides on one. An
//! [`AdaptiveThrottle`] puts one in front of a [`Throttle`]: it reads the time from
//! [`tokio::time`] and applies every decision with [`Throttle::set_rate`], so the throttle's
//! rate (and its [`effective_rate`](Throttle::effective_rate)) is always the one in force.
//!
//! # The rule
//! Time is cut in intervals (default 1 s). At the end of each:
//! - **decrease** (rate × [`Config::latency_decrease`], 0.8) when the 90th percentile of the
//!   latencies observed in it is above [`Config::max_latency`];
//! - **increase** when it is not, no operation was overloaded and the bytes sent used at
//!   least half of the rate (a rate the job does not use is not raised): doubled while no
//!   decrease has happened yet (slow start, as TCP's), then by a step
//!   ([`Config::increase_fraction`], 5% of the rate before the last decrease). Once the rate
//!   is above that rate (the target may have recovered, or grown), the step doubles after
//!   every [`Config::accelerate_after`] (3) increases, so a rate far below a recovered
//!   target's capacity climbs back in seconds (4× in about 15 s), not minutes;
//! - **hold** otherwise (no latency observed, or the rate not used).
//!
//! An overloaded operation (HTTP 429 or 503, S3 `SlowDown`, a timeout) decreases the rate
//! at once, by [`Config::overload_decrease`] (0.5). The rate never leaves
//! `[floor, ceiling]`, and decreases at most once per interval. What an operation that began
//! before the last decrease reports is ignored: it measured the load before the decrease.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use ferry_throttle::adaptive::{AdaptiveThrottle, Config, Observation, Outcome};
//! use ferry_throttle::Throttle;
//! use ferry_types::Rate;
//!
//! let adaptive = AdaptiveThrottle::new(Throttle::unlimited());
//! let ceiling: Rate = "200MiB/s".parse().unwrap();
//! adaptive.enable(Config::new(Duration::from_millis(250), 1 << 20, ceiling));
//! let before = adaptive.throttle().rate();
//!
//! // The engine reports each target operation; an overload halves the rate at once.
//! let started = tokio::time::Instant::now();
//! adaptive.observe(Observation::new(started, Duration::from_millis(40), Outcome::Overloaded));
//! assert!(adaptive.throttle().rate().as_bytes_per_sec() < before.as_bytes_per_sec());
//! # }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_types::Rate;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::Throttle;

/// The constants of a [`Controller`]; [`Config::new`] sets the defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The latency percentile above which the rate decreases.
    pub max_latency: Duration,
    /// The lowest rate, bytes per second (at least 1): the job never stops.
    pub floor: u64,
    /// The highest rate (unlimited: none).
    pub ceiling: Rate,
    /// The rate the controller starts at (default 16 × floor, within the bounds).
    pub initial: u64,
    /// How often the controller decides (default 1 s).
    pub interval: Duration,
    /// Which latency percentile is compared with `max_latency` (default 0.9).
    pub percentile: f64,
    /// The factor of a decrease on latency (default 0.85).
    pub latency_decrease: f64,
    /// The factor of a decrease on an overloaded operation (default 0.7).
    pub overload_decrease: f64,
    /// The additive step, as a fraction of the rate before the last decrease (default 0.05).
    pub increase_fraction: f64,
    /// Healthy increases in a row above the rate of the last decrease after which the step
    /// doubles (default 3).
    pub accelerate_after: u32,
}

impl Config {
    /// The defaults, for a latency threshold, a floor (bytes per second; 0 counts as 1, and
    /// a floor above the ceiling as the ceiling) and a ceiling.
    pub fn new(max_latency: Duration, floor: u64, ceiling: Rate) -> Config {
        let floor = floor
            .max(1)
            .min(ceiling.as_bytes_per_sec().unwrap_or(u64::MAX));
        let mut config = Config {
            max_latency,
            floor,
            ceiling,
            initial: 0,
            interval: Duration::from_secs(1),
            percentile: 0.9,
            latency_decrease: 0.85,
            overload_decrease: 0.7,
            increase_fraction: 0.05,
            accelerate_after: 3,
        };
        config.initial = config.clamp(floor.saturating_mul(16) as f64) as u64;
        config
    }

    /// Starts at `initial` bytes per second (within the bounds).
    #[must_use]
    pub fn initial(mut self, initial: u64) -> Config {
        self.initial = self.clamp(initial as f64) as u64;
        self
    }

    /// Decides every `interval` (at least 1 ms).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Config {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    fn ceiling(&self) -> f64 {
        self.ceiling
            .as_bytes_per_sec()
            .map_or(f64::MAX, |c| c as f64)
    }

    fn clamp(&self, rate: f64) -> f64 {
        // The ceiling is never below the floor (`new`), but a caller may set fields.
        rate.min(self.ceiling()).max(self.floor as f64)
    }
}

/// How a target operation ended, as the controller counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded (or found nothing): its latency counts.
    Ok,
    /// The target asked to slow down or did not answer in time (HTTP 429 or 503, S3
    /// `SlowDown`, a timeout): the rate decreases at once.
    Overloaded,
    /// Any other failure: says nothing about the target's load, and is not counted.
    Failed,
}

/// One target operation, as reported to a [`Controller`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// When it began.
    pub started: Instant,
    /// What the target took to answer it.
    pub latency: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl Observation {
    /// An observation of an operation begun at `started`.
    pub fn new(started: Instant, latency: Duration, outcome: Outcome) -> Observation {
        Observation {
            started,
            latency,
            outcome,
        }
    }
}

/// Why a [`Controller`] changed the rate; see [`Controller::last_change`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Doubled: no decrease has happened yet.
    SlowStart,
    /// One additive step up.
    Increase,
    /// Down: the latency percentile passed the threshold.
    Latency,
    /// Down: an operation was overloaded.
    Overload,
}

/// The AIMD state machine; see the [module docs](self). Pure: every call takes the time.
#[derive(Clone, Debug)]
pub struct Controller {
    config: Config,
    rate: f64,
    slow_start: bool,
    step: f64,
    /// The rate before the last decrease.
    peak: f64,
    streak: u32,
    window_start: Instant,
    last_decrease: Option<Instant>,
    latencies: Vec<Duration>,
    sent: u64,
    last_change: Option<Change>,
}

impl Controller {
    /// A controller at `config.initial`, its first interval beginning at `now`.
    pub fn new(config: Config, now: Instant) -> Controller {
        Controller {
            rate: config.clamp(config.initial as f64),
            config,
            slow_start: true,
            step: 0.0,
            peak: 0.0,
            streak: 0,
            window_start: now,
            last_decrease: None,
            latencies: Vec::new(),
            sent: 0,
            last_change: None,
        }
    }

    /// The rate decided, bytes per second (within `[floor, ceiling]`).
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The last change of the rate and why, if any.
    pub fn last_change(&self) -> Option<Change> {
        self.last_change
    }

    /// Counts `bytes` sent to the target (how much of the rate is used); decides when an
    /// interval ended. Returns the new rate when it changed.
    pub fn sent(&mut self, bytes: u64, now: Instant) -> Option<u64> {
        self.sent = self.sent.saturating_add(bytes);
        self.tick(now)
    }

    /// Counts one target operation; decides at once on an overload, else when an interval
    /// ended. Returns the new rate when it changed.
    pub fn observe(&mut self, observation: Observation, now: Instant) -> Option<u64> {
        // An operation begun before the last decrease measured the load before it.
        let stale = self
            .last_decrease
            .is_some_and(|decreased| observation.started < decreased);
        if !stale {
            match observation.outcome {
                Outcome::Ok => self.latencies.push(observation.latency),
                Outcome::Overloaded if self.may_decrease(now) => {
                    return self.decrease(now, Change::Overload);
                }
                Outcome::Overloaded | Outcome::Failed => {}
            }
        }
        self.tick(now)
    }

    fn may_decrease(&self, now: Instant) -> bool {
        self.last_decrease.is_none_or(|decreased| {
            now.saturating_duration_since(decreased) >= self.config.interval
        })
    }

    fn tick(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < self.config.interval {
            return None;
        }
        let before = self.rate;
        match percentile(&mut self.latencies, self.config.percentile) {
            Some(p) if p > self.config.max_latency && self.may_decrease(now) => {
                return self.decrease(now, Change::Latency);
            }
            // Slow, but decreased within the interval already: hold.
            Some(p) if p > self.config.max_latency => {}
            Some(_) => {
                let used = self.sent as f64 / elapsed.as_secs_f64();
                if used >= self.rate / 2.0 {
                    self.increase();
                }
            }
            None => {}
        }
        self.new_window(now);
        (self.rate != before).then_some(self.rate as u64)
    }

    fn increase(&mut self) {
        if self.slow_start {
            self.rate = self.config.clamp(self.rate * 2.0);
            self.last_change = Some(Change::SlowStart);
            return;
        }
        self.rate = self.config.clamp(self.rate + self.step);
        // Below the rate of the last decrease the target was fine before: a plain step.
        // Above it, its capacity is unknown (it may have grown): accelerate.
        if self.rate > self.peak {
            self.streak += 1;
            if self.config.accelerate_after > 0
                && self.streak.is_multiple_of(self.config.accelerate_after)
            {
                self.step *= 2.0;
            }
        }
        self.last_change = Some(Change::Increase);
    }

    fn decrease(&mut self, now: Instant, why: Change) -> Option<u64> {
        let factor = match why {
            Change::Overload => self.config.overload_decrease,
            _ => self.config.latency_decrease,
        };
        let before = self.rate;
        self.peak = before;
        self.step = (before * self.config.increase_fraction).max(1.0);
        self.rate = self.config.clamp(before * factor.clamp(0.0, 1.0));
        self.slow_start = false;
        self.streak = 0;
        self.last_decrease = Some(now);
        self.last_change = Some(why);
        self.new_window(now);
        (self.rate != before).then_some(self.rate as u64)
    }

    fn new_window(&mut self, now: Instant) {
        self.window_start = now;
        self.latencies.clear();
        self.sent = 0;
    }
}

/// The `p` percentile (nearest rank) of `samples`, which it sorts; `None` when empty.
fn percentile(samples: &mut [Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = (p.clamp(0.0, 1.0) * samples.len() as f64).ceil() as usize;
    samples.get(rank.saturating_sub(1)).copied()
}

/// A [`Throttle`] whose rate a [`Controller`] sets, when enabled; see the
/// [module docs](self).
///
/// Disabled, it costs one atomic load per report and the throttle keeps whatever rate it is
/// given. Shareable: the engine's store wrapper reports, the job's handle switches modes.
#[derive(Debug)]
pub struct AdaptiveThrottle {
    throttle: Throttle,
    enabled: AtomicBool,
    controller: Mutex<Option<Controller>>,
}

impl AdaptiveThrottle {
    /// Wraps `throttle`, disabled: its rate stays as it is.
    pub fn new(throttle: Throttle) -> AdaptiveThrottle {
        AdaptiveThrottle {
            throttle,
            enabled: AtomicBool::new(false),
            controller: Mutex::new(None),
        }
    }

    /// The throttle whose rate is set.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Whether the controller sets the rate.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Lets a new controller set the rate, from `config.initial`, at once.
    pub fn enable(&self, config: Config) {
        let controller = Controller::new(config, Instant::now());
        self.throttle.set_rate(rate_of(controller.rate()));
        *self.controller.lock() = Some(controller);
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Stops adapting and sets the fixed `rate`.
    pub fn set_fixed(&self, rate: Rate) {
        self.enabled.store(false, Ordering::Relaxed);
        *self.controller.lock() = None;
        self.throttle.set_rate(rate);
    }

    /// Reports one target operation (ignored while disabled).
    pub fn observe(&self, observation: Observation) {
        if self.is_enabled() {
            self.apply(|c, now| c.observe(observation, now));
        }
    }

    /// Reports bytes sent to the target (ignored while disabled).
    pub fn sent(&self, bytes: u64) {
        if self.is_enabled() {
            self.apply(|c, now| c.sent(bytes, now));
        }
    }

    /// The controller's state, while enabled (a copy).
    pub fn controller(&self) -> Option<Controller> {
        self.controller.lock().clone()
    }

    fn apply(&self, f: impl FnOnce(&mut Controller, Instant) -> Option<u64>) {
        let mut guard = self.controller.lock();
        if let Some(controller) = guard.as_mut()
            && let Some(rate) = f(controller, Instant::now())
        {
            // Under the lock, so two decisions are applied in the order they were made.
            self.throttle.set_rate(rate_of(rate));
        }
    }
}

fn rate_of(bytes_per_sec: u64) -> Rate {
    Rate::bytes_per_sec(bytes_per_sec.max(1)).unwrap_or(Rate::Unlimited)
}

#[cfg(test)]
mod tests;
