//! `acquire` against governor's `check` on the same quota (SPEC §8: ≤ 1× governor's ns).
//!
//! Both limiters get a quota they never run out of (u32::MAX per second, burst the same), so
//! what is measured is the cost of asking, not of waiting. governor's `check` is a synchronous
//! yes/no; Ferry's matching call is `try_acquire`, and `acquire` is measured too, as one poll of
//! its future (it completes on the first poll when the tokens are there).
//!
//! Run: `cargo bench -p ferry-throttle --bench acquire`.
// Benches stop on the first unexpected error: expect says where.
// criterion_group! defines a `pub fn` that cannot take a doc comment.
#![allow(clippy::expect_used, missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_throttle::Throttle;
use ferry_types::{ByteSize, Rate};
use governor::{Quota, RateLimiter};

const QUOTA: u32 = u32::MAX;

fn ferry() -> Throttle {
    Throttle::builder()
        .rate(Rate::bytes_per_sec(u64::from(QUOTA)).expect("nonzero"))
        .burst(ByteSize(u64::from(QUOTA)))
        .build()
        .expect("valid burst")
}

fn governor() -> governor::DefaultDirectRateLimiter {
    RateLimiter::direct(Quota::per_second(NonZeroU32::new(QUOTA).expect("nonzero")))
}

/// One poll of `acquire`: it must be ready, as the quota is never exhausted.
fn poll_acquire(throttle: &Throttle) {
    let mut cx = Context::from_waker(Waker::noop());
    let fut = pin!(throttle.acquire(1));
    assert!(matches!(fut.poll(&mut cx), Poll::Ready(())));
}

fn uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_uncontended");
    let throttle = ferry();
    group.bench_function("ferry_try_acquire", |b| {
        b.iter(|| black_box(throttle.try_acquire(black_box(1))))
    });
    group.bench_function("ferry_acquire_poll", |b| b.iter(|| poll_acquire(&throttle)));
    let unlimited = Throttle::unlimited();
    group.bench_function("ferry_acquire_unlimited", |b| {
        b.iter(|| poll_acquire(&unlimited))
    });
    let limiter = governor();
    group.bench_function("governor_check", |b| {
        b.iter(|| black_box(limiter.check().is_ok()))
    });
    group.finish();
}

/// Wall time for two threads to make `iters` calls each on one shared limiter, per call pair.
fn two_threads<F>(iters: u64, call: F) -> Duration
where
    F: Fn() + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let call = call.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    call();
                }
                start.elapsed()
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().expect("bench thread"))
        .max()
        .unwrap_or_default()
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_2_threads");
    let throttle = ferry();
    group.bench_function("ferry_try_acquire", |b| {
        let throttle = throttle.clone();
        b.iter_custom(move |iters| {
            let throttle = throttle.clone();
            two_threads(iters, move || {
                black_box(throttle.try_acquire(black_box(1)));
            })
        })
    });
    group.bench_function("ferry_acquire_poll", |b| {
        let throttle = throttle.clone();
        b.iter_custom(move |iters| {
            let throttle = throttle.clone();
            two_threads(iters, move || poll_acquire(&throttle))
        })
    });
    let limiter = Arc::new(governor());
    group.bench_function("governor_check", |b| {
        b.iter_custom(|iters| {
            let limiter = limiter.clone();
            two_threads(iters, move || {
                black_box(limiter.check().is_ok());
            })
        })
    });
    group.finish();
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches, clock_benches);

fn clocks(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    group.bench_function("tokio_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    group.bench_function("std_now", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    group.finish();
}
criterion_group!(clock_benches, clocks);
