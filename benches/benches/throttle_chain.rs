//! The throttling cost the engine pays per chunk: a per-job throttle within a global cap, two
//! buckets per acquire. Peer: governor, two direct limiters checked one after the other (the
//! nearest it has to nested limits), on the same never-exhausted quota.
//!
//! Run: `cargo bench -p ferry-benches --bench throttle_chain`.
// Benches stop on the first unexpected error: expect says where.
// criterion_group! defines a `pub fn` that cannot take a doc comment.
#![allow(clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_throttle::Throttle;
use ferry_types::{ByteSize, Rate};
use governor::{Quota, RateLimiter};

const QUOTA: u32 = u32::MAX;

fn chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("job_within_global");
    let build = |within: Option<&Throttle>| {
        let mut builder = Throttle::builder()
            .rate(Rate::bytes_per_sec(u64::from(QUOTA)).expect("nonzero"))
            .burst(ByteSize(u64::from(QUOTA)));
        if let Some(outer) = within {
            builder = builder.within(outer);
        }
        builder.build().expect("valid burst")
    };
    let global = build(None);
    let job = build(Some(&global));
    group.bench_function("ferry_try_acquire", |b| {
        b.iter(|| black_box(job.try_acquire(black_box(1))))
    });
    let quota = Quota::per_second(NonZeroU32::new(QUOTA).expect("nonzero"));
    let (outer, inner) = (RateLimiter::direct(quota), RateLimiter::direct(quota));
    group.bench_function("governor_check_twice", |b| {
        b.iter(|| black_box(inner.check().is_ok() && outer.check().is_ok()))
    });
    group.finish();
}

criterion_group!(benches, chain);
criterion_main!(benches);
