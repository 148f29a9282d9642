//! Async token bucket in bytes per second, for migrations whose bandwidth users change while
//! they run.
//!
//! A [`Throttle`] hands out bytes at a rate with a burst. [`Throttle::acquire`] waits in a
//! first-come-first-served line (a big request is never starved by a stream of small ones); a
//! request larger than the burst is admitted on debt rather than refused; [`Throttle::set_rate`]
//! and [`Throttle::set_burst`] take effect at once, for the callers already waiting too. An
//! unlimited throttle costs one atomic load. A throttle can be made *within* another one: a
//! per-job throttle within a global cap shared by many jobs, both enforced, neither waited
//! for twice. An optional objects-per-second limit sits beside the byte rate.
//!
//! It is not a general-purpose rate limiter for request admission (it never rejects, it waits),
//! and it knows nothing about what the bytes are.
//!
//! [`adaptive`] makes a throttle's rate follow the health of what the bytes are sent to:
//! AIMD on the latency and the overload errors its caller reports (`--rate auto`).
//!
//! Waiting uses [`tokio::time`]. The time the bucket counts on comes from tokio's clock when
//! it is paused (tests: `#[tokio::test(start_paused = true)]`), and otherwise from the CPU's
//! time-stamp counter, which is several times cheaper to read than the OS clock; see [`Clock`].
//!
//! # Guarantees
//! - Over any window of length `W`, the bytes granted are at most `rate × W + burst` while
//!   every request is at most the burst, and at most `rate × W + largest request` otherwise.
//! - A saturated throttle delivers its rate: within 1% over 10 s (tested on a paused clock).
//! - `acquire` is cancel safe: a dropped future leaves the line and takes no tokens.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_throttle::Throttle;
//! use ferry_types::Rate;
//!
//! // A global cap for the whole process, and one job throttled within it.
//! let global = Throttle::new("200MiB/s".parse::<Rate>()?);
//! let job = Throttle::builder().rate("50MiB/s".parse()?).within(&global).build()?;
//!
//! job.acquire(1 << 20).await; // one 1 MiB chunk, paid in both buckets
//! job.set_rate(Rate::Unlimited); // the user lifted the job's limit: only the global cap is left
//! assert_eq!(job.effective_rate(), "200MiB/s".parse()?);
//! # Ok(()) }
//! ```
//!
//! # Metrics
//! Through the `metrics` facade (no exporter here): each throttle's own rate
//! (`ferry_throttle_rate_bytes_per_second`, 0 when unlimited) and, for each acquire that
//! had to wait, how long it waited (`ferry_throttle_wait_seconds`), with the labels given
//! to [`Builder::metric_label`]. An acquire that passes at once records nothing.
//!
//! # Feature flags
//! None.

pub mod adaptive;
mod bucket;
mod error;

use std::num::NonZeroU64;
use std::sync::Arc;

use ferry_types::{ByteSize, Rate};

use crate::bucket::Bucket;
pub use crate::error::{Error, Result};

/// The default chunk size (1 MiB): the floor of the default burst unless
/// [`Builder::chunk_size`] says otherwise, itself bounded by one second of the rate (see
/// [`Builder::burst`]).
pub const DEFAULT_MIN_BURST: ByteSize = ByteSize::mib(1);

/// Where a throttle reads the time.
///
/// Reading the clock is most of what an uncontended [`Throttle::acquire`] costs: the OS clock
/// (`clock_gettime`, which `tokio::time::Instant::now` uses) takes about 22 ns on the machines
/// Ferry is benchmarked on, the CPU's time-stamp counter a few. Tests, on the other hand, want
/// tokio's clock, which `#[tokio::test(start_paused = true)]` pauses and advances. Waiting
/// always uses tokio's timer, whichever clock is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Clock {
    /// tokio's clock if it is paused when the throttle is built (a test), else [`Clock::Fast`].
    /// Build the throttle inside the paused runtime, or pick [`Clock::Tokio`] explicitly.
    #[default]
    Auto,
    /// Always `tokio::time::Instant`: follows a paused clock wherever the throttle was built.
    Tokio,
    /// The time-stamp counter through `quanta` (which falls back to the OS clock where the
    /// counter is not reliable); ignores a paused tokio clock.
    Fast,
}

/// A token bucket in bytes per second (and optionally objects per second), shareable and
/// adjustable at runtime.
///
/// Cloning a `Throttle` gives another handle to the *same* buckets: that is how a global cap is
/// shared. See the [crate docs](crate) for the guarantees.
#[derive(Clone, Debug)]
pub struct Throttle {
    /// This throttle's own level (the same as `levels[0]`, one pointer hop nearer for the
    /// fast path).
    own: Arc<Level>,
    /// This throttle's own level first, then the levels of the throttles it is within.
    levels: Arc<[Arc<Level>]>,
}

#[derive(Debug)]
struct Level {
    bytes: Bucket,
    objects: Bucket,
    /// `ferry_throttle_rate_bytes_per_second` (0: unlimited).
    rate_gauge: metrics::Gauge,
    /// `ferry_throttle_wait_seconds`: how long an acquire that had to wait waited.
    wait: metrics::Histogram,
}

/// The throttle's metric names (recorded through the `metrics` facade, with the labels given
/// to [`Builder::metric_label`]).
pub mod metric_names {
    /// Gauge: the throttle's own byte rate, in bytes per second (0: unlimited).
    pub const RATE: &str = "ferry_throttle_rate_bytes_per_second";
    /// Histogram: seconds an `acquire` or `acquire_objects` that could not pass at once
    /// waited (in this throttle and those it is within).
    pub const WAIT: &str = "ferry_throttle_wait_seconds";
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::unlimited()
    }
}

impl Throttle {
    /// A throttle of `rate` bytes per second with the default burst (see [`Builder::burst`])
    /// and no objects limit.
    pub fn new(rate: Rate) -> Throttle {
        Throttle::builder()
            .rate(rate)
            .build()
            .unwrap_or_else(|_| unreachable!("the default burst is never zero"))
    }

    /// A throttle that never waits (until [`set_rate`](Self::set_rate) gives it a limit).
    pub fn unlimited() -> Throttle {
        Throttle::new(Rate::Unlimited)
    }

    /// Configures a throttle: rate, burst, objects per second, and the throttle it is within.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn from_level(level: Level, within: Option<&Throttle>) -> Throttle {
        let own = Arc::new(level);
        let mut levels = vec![own.clone()];
        if let Some(parent) = within {
            levels.extend(parent.levels.iter().cloned());
        }
        Throttle {
            own,
            levels: levels.into(),
        }
    }

    fn own(&self) -> &Level {
        &self.own
    }

    /// Waits until `bytes` may pass, in this throttle and every one it is within, then takes
    /// them.
    ///
    /// Waiting is first come, first served; a request larger than the burst waits until the
    /// bucket is full and then passes on debt, which the callers after it wait out.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, it leaves the line, and the
    /// tokens it had already taken from this throttle while waiting for an outer one are given
    /// back.
    #[inline]
    pub async fn acquire(&self, bytes: u64) {
        if !self.try_acquire(bytes) {
            self.wait(Kind::Bytes, bytes).await;
        }
    }

    /// The waiting path, timed.
    async fn wait(&self, kind: Kind, n: u64) {
        let started = tokio::time::Instant::now();
        Box::pin(acquire_all(&self.levels, kind, n)).await;
        self.own.wait.record(started.elapsed().as_secs_f64());
    }

    /// Takes `bytes` if they may pass now in every level and nobody is waiting; never waits.
    #[inline]
    pub fn try_acquire(&self, bytes: u64) -> bool {
        self.try_acquire_all(Kind::Bytes, bytes)
    }

    /// Waits until `objects` more objects may start under the objects-per-second limit of this
    /// throttle and the ones it is within (no limit set: returns at once).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn acquire_objects(&self, objects: u64) {
        if !self.try_acquire_objects(objects) {
            self.wait(Kind::Objects, objects).await;
        }
    }

    /// Takes `objects` if they may start now in every level and nobody is waiting.
    pub fn try_acquire_objects(&self, objects: u64) -> bool {
        self.try_acquire_all(Kind::Objects, objects)
    }

    /// Sets this throttle's byte rate. Takes effect at once, for the callers already waiting
    /// too; bytes taken and not yet paid for are paid at the new rate. A default burst follows
    /// the rate; an explicit one stays.
    pub fn set_rate(&self, rate: Rate) {
        self.own().bytes.set_rate(units(rate));
        self.own().rate_gauge.set(units(rate) as f64);
    }

    /// Sets this throttle's burst (`None`: back to the default, see [`Builder::burst`]).
    /// Takes effect at once.
    ///
    /// # Errors
    /// [`Error::ZeroBurst`] for a burst of zero; nothing changes then.
    pub fn set_burst(&self, burst: Option<ByteSize>) -> Result<()> {
        check_burst(burst)?;
        self.own().bytes.set_burst(burst.map(ByteSize::as_u64));
        Ok(())
    }

    /// Sets (or, with `None`, lifts) this throttle's objects-per-second limit; at once.
    pub fn set_objects_per_sec(&self, limit: Option<NonZeroU64>) {
        self.own()
            .objects
            .set_rate(limit.map_or(0, NonZeroU64::get));
    }

    /// This throttle's own byte rate.
    pub fn rate(&self) -> Rate {
        self.own().bytes.rate_as_rate()
    }

    /// The rate in force: the lowest of this throttle's and those it is within.
    pub fn effective_rate(&self) -> Rate {
        self.levels
            .iter()
            .map(|level| level.bytes.rate_as_rate())
            .min_by_key(|rate| rate.as_bytes_per_sec().unwrap_or(u64::MAX))
            .unwrap_or(Rate::Unlimited)
    }

    /// This throttle's own burst, as in force now.
    pub fn burst(&self) -> ByteSize {
        ByteSize(self.own().bytes.burst())
    }

    /// Whether this throttle reads tokio's clock (so a paused clock drives it) rather than the
    /// time-stamp counter; see [`Clock`].
    pub fn follows_tokio_clock(&self) -> bool {
        self.own().bytes.follows_tokio_clock()
    }

    /// This throttle's own objects-per-second limit.
    pub fn objects_per_sec(&self) -> Option<NonZeroU64> {
        NonZeroU64::new(self.own().objects.rate())
    }
}

impl Throttle {
    #[inline]
    fn try_acquire_all(&self, kind: Kind, n: u64) -> bool {
        if !self.own.bucket(kind).try_acquire(n) {
            return false;
        }
        // The throttles this one is within (`len` is in the fat pointer: no extra hop).
        if self.levels.len() > 1 {
            for (i, level) in self.levels[1..].iter().enumerate() {
                if !level.bucket(kind).try_acquire(n) {
                    // Nothing awaits or panics between the takes: no guard needed.
                    for taken in &self.levels[..=i] {
                        taken.bucket(kind).refund(n);
                    }
                    return false;
                }
            }
        }
        true
    }
}

impl Bucket {
    fn rate_as_rate(&self) -> Rate {
        NonZeroU64::new(self.rate()).map_or(Rate::Unlimited, Rate::Limited)
    }
}

impl Level {
    fn new(
        rate: Rate,
        burst: Option<ByteSize>,
        min_burst: ByteSize,
        objects: Option<NonZeroU64>,
        clock: Clock,
        labels: &[(&'static str, String)],
    ) -> Level {
        let rate_gauge = metrics::gauge!(metric_names::RATE, labels);
        rate_gauge.set(units(rate) as f64);
        Level {
            rate_gauge,
            wait: metrics::histogram!(metric_names::WAIT, labels),
            bytes: Bucket::new(
                units(rate),
                burst.map(ByteSize::as_u64),
                min_burst.as_u64(),
                clock,
            ),
            objects: Bucket::new(objects.map_or(0, NonZeroU64::get), None, 1, clock),
        }
    }

    #[inline]
    fn bucket(&self, kind: Kind) -> &Bucket {
        match kind {
            Kind::Bytes => &self.bytes,
            Kind::Objects => &self.objects,
        }
    }
}

fn units(rate: Rate) -> u64 {
    rate.as_bytes_per_sec().unwrap_or(0)
}

fn check_burst(burst: Option<ByteSize>) -> Result<()> {
    match burst {
        Some(burst) if burst.as_u64() == 0 => Err(Error::ZeroBurst { burst }),
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Bytes,
    Objects,
}

/// The waiting path: level after level, in line at each. Boxed by the callers so the future
/// of an `acquire` that passes at once stays small.
async fn acquire_all(levels: &[Arc<Level>], kind: Kind, n: u64) {
    let mut taken = Taken::new(levels, kind, n);
    for level in levels {
        level.bucket(kind).acquire(n).await;
        taken.count += 1;
    }
    taken.keep();
}

/// Tokens taken from the first `count` levels; given back on drop unless kept.
struct Taken<'a> {
    levels: &'a [Arc<Level>],
    kind: Kind,
    n: u64,
    count: usize,
}

impl<'a> Taken<'a> {
    fn new(levels: &'a [Arc<Level>], kind: Kind, n: u64) -> Self {
        Taken {
            levels,
            kind,
            n,
            count: 0,
        }
    }

    fn keep(mut self) {
        self.count = 0;
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for level in &self.levels[..self.count] {
            level.bucket(self.kind).refund(self.n);
        }
    }
}

/// Configures a [`Throttle`]; see [`Throttle::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct Builder {
    rate: Rate,
    burst: Option<ByteSize>,
    min_burst: ByteSize,
    objects_per_sec: Option<NonZeroU64>,
    within: Option<Throttle>,
    clock: Clock,
    labels: Vec<(&'static str, String)>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            rate: Rate::Unlimited,
            burst: None,
            min_burst: DEFAULT_MIN_BURST,
            objects_per_sec: None,
            within: None,
            clock: Clock::Auto,
            labels: Vec::new(),
        }
    }
}

impl Builder {
    /// Bytes per second (default: unlimited).
    pub fn rate(mut self, rate: Rate) -> Self {
        self.rate = rate;
        self
    }

    /// The burst: how many bytes may pass at once, at the start and after a pause.
    ///
    /// Default: rate × 100 ms, and at least one chunk ([`chunk_size`](Self::chunk_size)),
    /// but never more than one second of the rate; it follows the rate when the rate
    /// changes. Why each bound:
    /// - rate × 100 ms: a waiter woken a little late (the timer's granularity) still finds
    ///   its tokens, so a saturated throttle delivers its rate.
    /// - one chunk: a chunk must always fit in the bucket, or it passes only on debt once
    ///   the bucket is full, with every caller after it waiting the debt out.
    /// - one second of the rate: the chunk floor must not dwarf a low rate. With a 1 MiB
    ///   floor, a job at 64 KiB/s would let 1 MiB through unthrottled at each start (about
    ///   a thousand small objects); bounded, the bytes granted in any window `W` stay at
    ///   most `rate × (W + 1 s)` for requests within the burst. A chunk larger than that
    ///   burst passes on debt, as any request above the burst does.
    pub fn burst(mut self, burst: ByteSize) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The chunk size the caller acquires in, the floor of the default burst (default
    /// [`DEFAULT_MIN_BURST`]) up to one second of the rate, so a chunk never waits for more
    /// than the rate requires (see [`burst`](Self::burst)).
    pub fn chunk_size(mut self, chunk: ByteSize) -> Self {
        self.min_burst = chunk;
        self
    }

    /// An objects-per-second limit beside the byte rate (default: none).
    pub fn objects_per_sec(mut self, limit: NonZeroU64) -> Self {
        self.objects_per_sec = Some(limit);
        self
    }

    /// Makes the new throttle enforce `outer` too (a global cap shared with other throttles):
    /// every acquire pays in both.
    pub fn within(mut self, outer: &Throttle) -> Self {
        self.within = Some(outer.clone());
        self
    }

    /// Where the throttle reads the time (default [`Clock::Auto`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Adds a label to the throttle's metrics (see [`metric_names`]; default: none), e.g.
    /// `("job", id)` for a job's own throttle.
    pub fn metric_label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((key, value.into()));
        self
    }

    /// Builds the throttle, full (a first burst passes at once).
    ///
    /// # Errors
    /// [`Error::ZeroBurst`] when the burst is zero.
    pub fn build(self) -> Result<Throttle> {
        check_burst(self.burst)?;
        let level = Level::new(
            self.rate,
            self.burst,
            self.min_burst,
            self.objects_per_sec,
            self.clock,
            &self.labels,
        );
        Ok(Throttle::from_level(level, self.within.as_ref()))
    }
}
