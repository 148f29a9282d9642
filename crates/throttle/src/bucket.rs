//! One token bucket, unit-agnostic (bytes or objects), as a lock-free GCRA cell plus a FIFO
//! queue for the callers that have to wait.
//!
//! # How it keeps time
//!
//! The bucket is stored as a *theoretical arrival time* (`tat`, the generic cell rate
//! algorithm): the instant at which the bucket would be full again if nobody took anything
//! more. With `T` the time one unit costs at the current rate and `tau = burst × T`, the
//! number of tokens at instant `now` is `(tau − max(0, tat − now)) / T`. Taking `n` units moves
//! `tat` to `max(tat, now) + n × T`, which is one compare-and-swap on an `AtomicU64`: the
//! uncontended path takes no lock.
//!
//! A request of `n ≤ burst` units is admitted when that leaves `tat ≤ now + tau` (the tokens are
//! there). A request above the burst is admitted *on debt* as soon as the bucket is full
//! (`tat ≤ now`) and pushes `tat` past `now + tau`, so the callers after it wait the debt out.
//! This gives the window bound: over any window of length `W`, the units granted are at most
//! `rate × W + max(burst, largest request)`.
//!
//! Costs are rounded *up* to the nanosecond (and the per-unit time is rounded up too), so
//! rounding can only make the bucket slightly stricter, never let more through.
//!
//! # Waiting
//!
//! Callers that cannot be admitted at once line up on a `tokio::sync::Mutex` (which is fair:
//! first come, first served, and a dropped waiter leaves the line). The one holding the lock is
//! the head: it sleeps until its tokens are due, or until the rate or burst changes, and then
//! takes them with the same compare-and-swap. While anyone waits, newcomers do not try the
//! fast path, so nobody overtakes the line (no starvation of big requests by small ones).
//! Tokens are only ever taken by that last compare-and-swap, after the last `.await`: a dropped
//! `acquire` takes nothing.
//!
//! # Clocks
//!
//! Reading the clock is most of the cost of an uncontended acquire: `clock_gettime` takes
//! about 22 ns here, the rest about 10 ns. So the bucket reads time from one of two sources
//! (see [`Clock`](crate::Clock)): tokio's clock, which tests can pause, or the CPU's time-stamp
//! counter through `quanta` (a few ns). Waiting always uses tokio's timer; a due time is turned
//! into a tokio deadline as "now + what is left", which is exact on either source.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::sync::Notify;

use crate::Clock;

/// Fixed-point shift of `unit_time`: nanoseconds per unit × 2^32.
const FRAC_BITS: u32 = 32;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The default burst is this fraction of a second's worth of tokens: rate × 100 ms.
const DEFAULT_BURST_DIVISOR: u64 = 10;

/// Where a bucket reads the time, and the origin its nanoseconds count from.
#[derive(Debug)]
enum TimeSource {
    /// `tokio::time`: follows a paused test clock.
    Tokio(tokio::time::Instant),
    /// The time-stamp counter (or the OS clock where it is unusable), through `quanta`.
    Fast(quanta::Clock, u64),
}

impl TimeSource {
    fn new(clock: Clock) -> TimeSource {
        let tokio = match clock {
            Clock::Tokio => true,
            Clock::Fast => false,
            // A paused tokio clock stands still between two reads; a running one moves
            // (nanosecond resolution, about 20 ns a read). If a coarse OS clock makes two reads
            // equal while running, the guess is the tokio clock: slower, never wrong.
            Clock::Auto => tokio::time::Instant::now() == tokio::time::Instant::now(),
        };
        if tokio {
            TimeSource::Tokio(tokio::time::Instant::now())
        } else {
            let clock = quanta::Clock::new();
            let epoch = clock.raw();
            TimeSource::Fast(clock, epoch)
        }
    }

    #[inline]
    fn now_nanos(&self) -> u64 {
        match self {
            TimeSource::Tokio(epoch) => {
                let elapsed = tokio::time::Instant::now().saturating_duration_since(*epoch);
                u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
            }
            // Raw counter ticks scaled to nanoseconds: no `Duration` round trip.
            TimeSource::Fast(clock, epoch) => clock.delta_as_nanos(*epoch, clock.raw()),
        }
    }

    fn is_tokio(&self) -> bool {
        matches!(self, TimeSource::Tokio(_))
    }
}

#[derive(Debug)]
pub(crate) struct Bucket {
    /// The clock `tat` counts on, and its origin.
    time: TimeSource,
    /// Nanoseconds one unit costs, as 32.32 fixed point, rounded up. 0 means unlimited.
    unit_time: AtomicU64,
    /// Burst tolerance in nanoseconds: `burst × unit_time`.
    tau: AtomicU64,
    /// Theoretical arrival time in nanoseconds since the time source's origin. The one field
    /// every acquire writes: on its own cache line, so that reading the configuration beside
    /// it does not bounce between cores.
    tat: CachePadded<AtomicU64>,
    /// Units per second as configured; 0 means unlimited. For reporting and re-timing.
    rate: AtomicU64,
    /// Burst in units as in force now (explicit, or the default derived from the rate).
    burst: AtomicU64,
    /// Whether the burst was set explicitly (else it follows the rate).
    burst_explicit: AtomicBool,
    /// The smallest default burst (one chunk for bytes, one object for objects).
    min_burst: u64,
    /// How many callers are in (or entering) the waiting line.
    waiting: AtomicUsize,
    /// The waiting line; its holder is the head.
    line: tokio::sync::Mutex<()>,
    /// Wakes the head when the rate or burst changed or tokens were given back.
    changed: Notify,
    /// Serialises configuration changes (never taken on the acquire path).
    config: parking_lot::Mutex<()>,
}

impl Bucket {
    /// A bucket of `rate` units per second (0 = unlimited), full at creation.
    pub(crate) fn new(rate: u64, burst: Option<u64>, min_burst: u64, clock: Clock) -> Bucket {
        let min_burst = min_burst.max(1);
        let burst_units = burst.unwrap_or_else(|| default_burst(rate, min_burst));
        let unit_time = unit_time(rate);
        Bucket {
            time: TimeSource::new(clock),
            unit_time: AtomicU64::new(unit_time),
            tau: AtomicU64::new(cost(burst_units, unit_time)),
            tat: CachePadded::new(AtomicU64::new(0)),
            rate: AtomicU64::new(rate),
            burst: AtomicU64::new(burst_units),
            burst_explicit: AtomicBool::new(burst.is_some()),
            min_burst,
            waiting: AtomicUsize::new(0),
            line: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            config: parking_lot::Mutex::new(()),
        }
    }

    pub(crate) fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    pub(crate) fn burst(&self) -> u64 {
        self.burst.load(Ordering::Relaxed)
    }

    fn now_nanos(&self) -> u64 {
        self.time.now_nanos()
    }

    pub(crate) fn follows_tokio_clock(&self) -> bool {
        self.time.is_tokio()
    }

    /// Takes `n` units if the line is empty and they are there now.
    #[inline]
    pub(crate) fn try_acquire(&self, n: u64) -> bool {
        let unit_time = self.unit_time.load(Ordering::Relaxed);
        if unit_time == 0 {
            return true;
        }
        if self.waiting.load(Ordering::Acquire) != 0 {
            return false;
        }
        let now = self.now_nanos();
        let tat = self.tat.load(Ordering::Acquire);
        self.take_from(n, now, tat, unit_time).is_ok()
    }

    /// Waits in line until `n` units can be taken, then takes them.
    ///
    /// # Cancel safety
    /// Cancel safe: tokens are taken only when the future completes; a dropped future leaves
    /// the line and takes nothing.
    pub(crate) async fn acquire(&self, n: u64) {
        if self.try_acquire(n) {
            return;
        }
        let _waiting = WaitingGuard::enter(&self.waiting);
        let _head = self.line.lock().await;
        loop {
            // Register for change notifications before reading the state, so a change
            // between the read and the sleep is not missed.
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            let now = self.now_nanos();
            let due = match self.try_take(n, now) {
                Ok(()) => return,
                Err(due) => due,
            };
            let left = Duration::from_nanos(due.saturating_sub(now));
            match tokio::time::Instant::now().checked_add(left) {
                Some(deadline) => {
                    // Either outcome means: look again.
                    let _ = tokio::time::timeout_at(deadline, changed).await;
                }
                None => changed.await,
            }
        }
    }

    /// The compare-and-swap at the heart of the bucket: takes `n` units at `now`, or says
    /// when (in nanoseconds since `epoch`) they will be there.
    #[inline]
    fn try_take(&self, n: u64, now: u64) -> Result<(), u64> {
        let tat = self.tat.load(Ordering::Acquire);
        let unit_time = self.unit_time.load(Ordering::Relaxed);
        if unit_time == 0 {
            return Ok(());
        }
        self.take_from(n, now, tat, unit_time)
    }

    /// [`try_take`](Self::try_take) from a `tat` and `unit_time` already read (non-zero).
    #[inline]
    fn take_from(&self, n: u64, now: u64, mut tat: u64, mut unit_time: u64) -> Result<(), u64> {
        loop {
            let tau = self.tau.load(Ordering::Relaxed);
            let cost = cost(n, unit_time);
            let base = tat.max(now);
            let admitted = if cost <= tau {
                base.saturating_add(cost) <= now.saturating_add(tau)
            } else {
                // Above the burst: admitted on debt once the bucket is full.
                tat <= now
            };
            if !admitted {
                // Here `tat > now` in both branches, so the due time lies in the future.
                let due = if cost <= tau {
                    tat.saturating_add(cost) - tau
                } else {
                    tat
                };
                return Err(due);
            }
            match self.tat.compare_exchange_weak(
                tat,
                base.saturating_add(cost),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
            // Lost a race: the rate may have changed too.
            unit_time = self.unit_time.load(Ordering::Relaxed);
            if unit_time == 0 {
                return Ok(());
            }
        }
    }

    /// Gives back `n` units taken earlier (by an acquire that was then cancelled further up
    /// the chain), and lets the head look again.
    pub(crate) fn refund(&self, n: u64) {
        let unit_time = self.unit_time.load(Ordering::Relaxed);
        if unit_time == 0 {
            return;
        }
        let cost = cost(n, unit_time);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(cost))
            });
        self.changed.notify_waiters();
    }

    /// Changes the rate at once, for the waiting head too. What was taken and not yet paid
    /// for (the debt, in units) carries over and is paid at the new rate.
    pub(crate) fn set_rate(&self, rate: u64) {
        let _config = self.config.lock();
        let old_unit_time = self.unit_time.load(Ordering::Relaxed);
        let new_unit_time = unit_time(rate);
        let burst = if self.burst_explicit.load(Ordering::Relaxed) {
            self.burst()
        } else {
            default_burst(rate, self.min_burst)
        };
        self.rate.store(rate, Ordering::Relaxed);
        self.burst.store(burst, Ordering::Relaxed);
        self.tau
            .store(cost(burst, new_unit_time), Ordering::Relaxed);
        self.unit_time.store(new_unit_time, Ordering::Relaxed);
        let now = self.now_nanos();
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                if old_unit_time == 0 {
                    // Coming from unlimited: start full.
                    return Some(now);
                }
                // Rounded up: a change of rate never forgives part of a debt.
                let owed_units = (u128::from(tat.saturating_sub(now)) << FRAC_BITS)
                    .div_ceil(u128::from(old_unit_time));
                let owed_units = u64::try_from(owed_units).unwrap_or(u64::MAX);
                Some(now.saturating_add(cost(owed_units, new_unit_time)))
            });
        self.changed.notify_waiters();
    }

    /// Changes the burst at once; `None` goes back to the default derived from the rate.
    pub(crate) fn set_burst(&self, burst: Option<u64>) {
        let _config = self.config.lock();
        let units = burst.unwrap_or_else(|| default_burst(self.rate(), self.min_burst));
        self.burst_explicit
            .store(burst.is_some(), Ordering::Relaxed);
        self.burst.store(units, Ordering::Relaxed);
        self.tau.store(
            cost(units, self.unit_time.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        self.changed.notify_waiters();
    }
}

/// Counts a caller in the waiting line for as long as it is there (also when it is dropped).
struct WaitingGuard<'a>(&'a AtomicUsize);

impl<'a> WaitingGuard<'a> {
    fn enter(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        WaitingGuard(waiting)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Nanoseconds per unit in 32.32 fixed point, rounded up; 0 for unlimited.
fn unit_time(rate: u64) -> u64 {
    if rate == 0 {
        return 0;
    }
    let scaled = (NANOS_PER_SEC << FRAC_BITS).div_ceil(u128::from(rate));
    // Even a rate of u64::MAX units/s costs a little above zero, so the limit stays a limit.
    u64::try_from(scaled).unwrap_or(u64::MAX).max(1)
}

/// Nanoseconds that `n` units cost, rounded up, saturating.
#[inline]
fn cost(n: u64, unit_time: u64) -> u64 {
    let nanos = (u128::from(n) * u128::from(unit_time)).div_ceil(1 << FRAC_BITS);
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// The burst when none was set: a tenth of a second of the rate, and at least `min_burst`
/// (one chunk) unless that is more than a second of the rate. See
/// [`Builder::burst`](crate::Builder::burst) for why.
fn default_burst(rate: u64, min_burst: u64) -> u64 {
    if rate == 0 {
        // Unlimited: the burst is not used; it is recomputed when a rate is set.
        return min_burst;
    }
    (rate / DEFAULT_BURST_DIVISOR).max(min_burst.min(rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_so_the_bucket_never_grants_more_than_the_rate() {
        // 3 units/s: one unit costs 333_333_333.3… ns; three units cost at least a second.
        let t = unit_time(3);
        assert!(cost(3, t) >= 1_000_000_000);
        assert!(cost(3, t) <= 1_000_000_001);
        // 1 GiB/s: a 4 KiB chunk costs 3815 ns (3814.7 rounded up).
        assert_eq!(cost(4096, unit_time(1 << 30)), 3815);
        // Huge rates still cost something per unit.
        assert!(cost(1, unit_time(u64::MAX)) >= 1);
    }

    #[test]
    fn cost_saturates_instead_of_overflowing() {
        assert_eq!(cost(u64::MAX, unit_time(1)), u64::MAX);
    }

    #[test]
    fn default_burst_is_a_tenth_of_the_rate_and_at_least_a_chunk_within_a_second_of_it() {
        let table = [
            // (rate, chunk, burst)
            (100 << 20, 1 << 20, 10 << 20), // a tenth of a second of the rate
            (10 << 20, 1 << 20, 1 << 20),
            (2 << 20, 1 << 20, 1 << 20), // one chunk
            (1 << 20, 1 << 20, 1 << 20),
            (64 << 10, 1 << 20, 64 << 10), // one second of the rate, less than a chunk
            (5, 1, 1),
            (1, 1 << 20, 1),
            (0, 1 << 20, 1 << 20), // unlimited: unused
        ];
        for (rate, chunk, burst) in table {
            assert_eq!(
                default_burst(rate, chunk),
                burst,
                "rate {rate}, chunk {chunk}"
            );
        }
    }
}
