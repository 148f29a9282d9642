//! The table's time source.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where the table reads the time for TTLs: the system's monotonic clock, or a
/// [`ManualClock`] that tests (and simulations) move by hand.
///
/// Time inside the table is nanoseconds since the clock's start, a `u64`. The read hot path
/// reads the clock only when it finds a `Forwarded` entry (misses and `Copying` entries never
/// look at the time). The system clock reads the time-stamp counter through `quanta`: a few
/// ns, and unlike the vDSO's `clock_gettime` (an ordered, `lfence`d `rdtsc`) it does not wait
/// for the lookup's outstanding cache misses, which measured 40% off a forwarded hit.
///
/// The fence timeout does not use this clock: it is a `tokio::time` timeout, so it follows a
/// paused tokio clock.
#[derive(Clone)]
pub struct Clock {
    kind: ClockKind,
}

#[derive(Clone)]
enum ClockKind {
    /// The time-stamp counter through `quanta` (the OS clock where the counter is unusable).
    System {
        clock: quanta::Clock,
        start: u64,
    },
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The system's monotonic clock, read from the CPU's time-stamp counter through `quanta`
    /// (calibrated against the OS clock; `quanta` falls back to the OS clock where the counter
    /// is not usable).
    pub fn system() -> Clock {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        Clock {
            kind: ClockKind::System { clock, start },
        }
    }

    /// Nanoseconds since the clock's start.
    pub(crate) fn now(&self) -> u64 {
        match &self.kind {
            ClockKind::System { clock, start } => clock.delta_as_nanos(*start, clock.raw()),
            ClockKind::Manual(nanos) => nanos.load(Ordering::Acquire),
        }
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ClockKind::System { .. } => f.write_str("Clock::System"),
            ClockKind::Manual(nanos) => f
                .debug_tuple("Clock::Manual")
                .field(&Duration::from_nanos(nanos.load(Ordering::Acquire)))
                .finish(),
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Clock {
        Clock {
            kind: ClockKind::Manual(manual.nanos),
        }
    }
}

/// A clock that only moves when told to; clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use ferry_forwarding::{Config, ManualClock, Table};
/// let clock = ManualClock::new();
/// let table = Table::new(Config::default().with_clock(clock.clone()));
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.elapsed(), Duration::from_secs(60));
/// # drop(table);
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(duration_nanos(by), Ordering::AcqRel);
    }

    /// The time since the clock's start.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.elapsed()).finish()
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (about 584 years).
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
