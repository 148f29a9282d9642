//! The waiting path of `acquire`: callers that find the bucket empty and line up first come,
//! first served, beside `leaky-bucket`'s fair `acquire` on the same rate, burst and requests.
//!
//! What is measured is the queueing machinery, not the sleeping. The bucket is saturated (it
//! starts empty, its rate is small against what is asked) and everything runs on a paused tokio
//! clock, on one thread: when every task waits, tokio moves the clock straight to the next
//! timer, so the wall time is only what it costs to get in line, sleep until the tokens are
//! due, wake, take them and hand the line on. The figure is wall time per waiting acquire, and
//! it is meaningful because both sides are paced alike: each round checks that the paused
//! clock moved by at least what the bytes cost at the rate (beyond the burst), so neither
//! side got through without waiting. A real run adds the time asleep, which the rate sets,
//! not the limiter.
//!
//! Requests of mixed sizes, 4 KiB, 64 KiB and 1 MiB in turn, against a burst of 1 MiB and a
//! rate of 64 MiB/s. Two cases: one caller acquiring in a loop (every acquire sleeps until its
//! tokens are due, nobody else in line), and eight callers at once, where most of the waiting
//! is in the line.
//!
//! Why `leaky-bucket` as the peer: it is the published async token bucket nearest to this
//! one. It is fair (FIFO) by default, sleeps on tokio's timer (so it runs on the same paused
//! clock), admits requests of any size and gives back what a dropped waiter had gathered.
//! It refills in steps of an interval: `leaky_bucket_acquire` gets the finest one tokio's timer
//! has, 1 ms (with the rate's worth of tokens per step), which paces as closely as `Throttle`
//! does; a request of 1 MiB then takes 16 steps, each a wake-up of its waiter.
//! `leaky_bucket_acquire_16ms_steps` refills a whole burst every 16 ms, the fewest wake-ups it
//! can do with this burst, and paces in lumps of 1 MiB. governor's `until_n_ready` is not
//! comparable here: its waiters are not in line (each one sleeps and checks again, so a big
//! request can be overtaken for ever), it sleeps on `futures-timer`'s own thread in real time,
//! which a paused tokio clock cannot skip, and it refuses requests above the burst.
//!
//! Run: `cargo bench -p ferry-throttle --bench wait`.
// Benches stop on the first unexpected error: expect says where.
// criterion_group! defines a `pub fn` that cannot take a doc comment.
#![allow(clippy::expect_used, missing_docs)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_throttle::{Clock, Throttle};
use ferry_types::{ByteSize, Rate};

/// Bytes per second: 64 KiB per millisecond, one refill step of the peer.
const RATE: u64 = 64 << 20;
/// Both buckets hold at most this much (one 1 MiB chunk).
const BURST: u64 = 1 << 20;
/// The requests, in turn.
const SIZES: [u64; 3] = [4 << 10, 64 << 10, 1 << 20];

/// A current-thread runtime on a paused clock.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// The request sizes caller `caller` of `callers` makes, `iters` in all over the callers.
fn requests(caller: u64, callers: u64, iters: u64) -> impl Iterator<Item = u64> {
    (caller..iters)
        .step_by(callers as usize)
        .map(|i| SIZES[(i % SIZES.len() as u64) as usize])
}

/// Runs `iters` acquires over `callers` tasks, each through `acquire`, on a fresh limiter from
/// `limiter` (built inside the paused runtime, empty); returns the wall time. Panics when the
/// paused clock moved less than the bytes cost: then some acquires did not wait.
fn round<L, F, Fut>(iters: u64, callers: u64, limiter: fn() -> L, acquire: F) -> Duration
where
    L: Send + Sync + 'static,
    F: Fn(Arc<L>, u64) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    paused_runtime().block_on(async move {
        let limiter = Arc::new(limiter());
        let bytes: u64 = (0..iters)
            .map(|i| SIZES[(i % SIZES.len() as u64) as usize])
            .sum();
        let (wall, virtual_start) = (Instant::now(), tokio::time::Instant::now());
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    for n in requests(caller, callers, iters) {
                        acquire(Arc::clone(&limiter), n).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("caller");
        }
        let elapsed = wall.elapsed();
        let paced = tokio::time::Instant::now() - virtual_start;
        let due = Duration::from_secs_f64(bytes.saturating_sub(BURST) as f64 / RATE as f64);
        assert!(
            paced >= due,
            "{iters} acquires of {bytes} bytes passed in {paced:?} of paused time, less than the {due:?} the rate allows"
        );
        elapsed
    })
}

fn ferry() -> Throttle {
    let throttle = Throttle::builder()
        .rate(Rate::bytes_per_sec(RATE).expect("nonzero"))
        .burst(ByteSize(BURST))
        .clock(Clock::Tokio)
        .build()
        .expect("valid burst");
    // Empty, as the peer starts: every acquire of the round waits.
    assert!(throttle.try_acquire(BURST), "a new throttle is full");
    throttle
}

/// The peer, refilled every `MS` milliseconds with the rate's worth of tokens.
fn leaky_bucket<const MS: u64>() -> leaky_bucket::RateLimiter {
    leaky_bucket::RateLimiter::builder()
        .max(BURST as usize)
        .initial(0)
        .refill((RATE * MS / 1000) as usize)
        .interval(Duration::from_millis(MS))
        .fair(true)
        .build()
}

async fn leaky_acquire(limiter: Arc<leaky_bucket::RateLimiter>, n: u64) {
    limiter.acquire(n as usize).await;
}

fn waiting(c: &mut Criterion) {
    for callers in [1, 8] {
        let mut group = c.benchmark_group(format!("acquire_waiting/{callers}_callers"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("ferry_acquire", |b| {
            b.iter_custom(|iters| {
                round(
                    iters,
                    callers,
                    ferry,
                    |t, n| async move { t.acquire(n).await },
                )
            })
        });
        group.bench_function("leaky_bucket_acquire", |b| {
            b.iter_custom(|iters| round(iters, callers, leaky_bucket::<1>, leaky_acquire))
        });
        group.bench_function("leaky_bucket_acquire_16ms_steps", |b| {
            b.iter_custom(|iters| round(iters, callers, leaky_bucket::<16>, leaky_acquire))
        });
        group.finish();
    }
}

criterion_group!(benches, waiting);
criterion_main!(benches);
