//! The recent rates of a job: bytes and objects per second over the last [`WINDOW`].

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How far back the rates look.
///
/// A sliding window rather than an exponentially weighted average: over a window the rate
/// is exactly what was done in it, so ten seconds after a change (`set_rate`, a pause, a
/// slower part of the selection) the old rate is gone entirely, where an average decaying
/// with a ten-second time constant would still carry a third of it; and a window needs no
/// regular tick to decay, only samples when the figures are read. Ten seconds smooths the
/// bursts of a batch of small objects committing at once, and is short enough to follow a
/// change.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// Samples closer together than this are not kept: at most about 21 are, whatever the job's
/// length or how often its snapshot is read.
const SPACING: Duration = Duration::from_millis(500);

/// Counters of this run, sampled over time.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    bytes: u64,
    objects: u64,
}

/// Rates over a sliding window of samples of a run's counters (bytes copied, objects done
/// by this run: never those a checkpoint restored).
#[derive(Debug)]
pub(crate) struct Recent {
    /// Oldest first. The first is the base the rates are measured from: the newest sample
    /// at least [`WINDOW`] old, or the run's start while the run is younger than that.
    samples: VecDeque<Sample>,
}

/// Bytes and objects per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Rates {
    pub(crate) bytes: f64,
    pub(crate) objects: f64,
}

impl Recent {
    /// Rates of a run that starts at `start` with its counters at zero.
    pub(crate) fn new(start: Instant) -> Recent {
        Recent {
            samples: VecDeque::from([Sample {
                at: start,
                bytes: 0,
                objects: 0,
            }]),
        }
    }

    /// Records the run's counters at `now` and returns the rates over the window ending now
    /// (over the whole run while it is younger than the window; zero at its first instant).
    pub(crate) fn update(&mut self, now: Instant, bytes: u64, objects: u64) -> Rates {
        while self
            .samples
            .get(1)
            .is_some_and(|next| now.saturating_duration_since(next.at) >= WINDOW)
        {
            self.samples.pop_front();
        }
        let base = self.samples[0];
        let span = now.saturating_duration_since(base.at).as_secs_f64();
        let rates = if span > 0.0 {
            Rates {
                bytes: bytes.saturating_sub(base.bytes) as f64 / span,
                objects: objects.saturating_sub(base.objects) as f64 / span,
            }
        } else {
            Rates::default()
        };
        let last = self.samples[self.samples.len() - 1];
        if now.saturating_duration_since(last.at) >= SPACING {
            self.samples.push_back(Sample {
                at: now,
                bytes,
                objects,
            });
        }
        rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `recent` a steady `per_sec` bytes and objects from `from` for `secs`, sampled
    /// every 100 ms; returns the time and counters at the end.
    fn steady(
        recent: &mut Recent,
        from: (Instant, u64),
        per_sec: u64,
        secs: u64,
    ) -> (Instant, u64) {
        let (mut at, mut count) = from;
        for _ in 0..secs * 10 {
            at += Duration::from_millis(100);
            count += per_sec / 10;
            recent.update(at, count, count);
        }
        (at, count)
    }

    #[test]
    fn a_young_run_is_measured_from_its_start() {
        let start = Instant::now();
        let mut recent = Recent::new(start);
        assert_eq!(recent.update(start, 0, 0), Rates::default());
        let rates = recent.update(start + Duration::from_secs(2), 1000, 10);
        assert_eq!(rates.bytes, 500.0);
        assert_eq!(rates.objects, 5.0);
    }

    #[test]
    fn a_rate_change_is_all_that_shows_one_window_later() {
        let start = Instant::now();
        let mut recent = Recent::new(start);
        let end = steady(&mut recent, (start, 0), 10_000, 30);
        let end = steady(&mut recent, end, 100, 12);
        let rates = recent.update(end.0, end.1, end.1);
        // The base lies between 10 and 10.5 s back, all of it in the slow part.
        assert!((rates.bytes - 100.0).abs() < 1.0, "{rates:?}");
        assert!(
            recent.samples.len() <= 22,
            "{} samples",
            recent.samples.len()
        );
    }

    #[test]
    fn an_idle_run_falls_to_zero() {
        let start = Instant::now();
        let mut recent = Recent::new(start);
        let (at, count) = steady(&mut recent, (start, 0), 1000, 20);
        let later = recent.update(at + WINDOW + SPACING, count, count);
        assert_eq!(later, Rates::default());
    }
}
