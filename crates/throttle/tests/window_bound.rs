//! SPEC §3 accuracy, as a property: over any window W, the bytes granted are at most the bytes
//! the rate allowed in W plus the burst (plus, for requests above the burst, what they were
//! let through on debt), under a random schedule of requests, cancellations and rate changes.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ferry_throttle::Throttle;
use ferry_types::{ByteSize, Rate};
use parking_lot::Mutex;
use proptest::prelude::*;
use tokio::time::Instant;

const BURST: u64 = 4096;

#[derive(Clone, Debug)]
enum Op {
    /// After `delay_ms`, a task asks for `bytes`; it gives up after `patience_ms` if set.
    Request {
        delay_ms: u64,
        bytes: u64,
        patience_ms: Option<u64>,
    },
    /// After `delay_ms`, the rate changes.
    SetRate { delay_ms: u64, bytes_per_sec: u64 },
}

/// A delay before the next operation: often none (requests pile up on a full bucket), sometimes
/// long enough for the bucket to fill up again.
fn delay_ms() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(0u64), 2 => 0..100u64, 1 => 500..3000u64]
}

fn op(max_request: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (delay_ms(), 1..=max_request, prop::option::weighted(0.2, 0..500u64)).prop_map(
            |(delay_ms, bytes, patience_ms)| Op::Request { delay_ms, bytes, patience_ms }
        ),
        1 => (delay_ms(), prop::sample::select(vec![1_000u64, 8_000, 64_000, 1_000_000]))
            .prop_map(|(delay_ms, bytes_per_sec)| Op::SetRate { delay_ms, bytes_per_sec }),
    ]
}

/// Schedules where every request fits in the burst (the bound is exactly SPEC §3's), and
/// schedules with requests up to three bursts (admitted on debt).
fn schedule() -> impl Strategy<Value = Vec<Op>> {
    prop_oneof![
        prop::collection::vec(op(BURST), 1..60),
        prop::collection::vec(op(3 * BURST), 1..60),
    ]
}

/// Grants (time, bytes) and rate changes (time, bytes/s), in the order they happened.
#[derive(Default)]
struct Record {
    grants: Vec<(Instant, u64)>,
    rates: Vec<(Instant, u64)>,
}

fn run(ops: Vec<Op>, initial_rate: u64) -> (Instant, Record) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let throttle = Throttle::builder()
            .rate(Rate::bytes_per_sec(initial_rate).unwrap())
            .burst(ByteSize(BURST))
            .build()
            .unwrap();
        let start = Instant::now();
        let record = Arc::new(Mutex::new(Record::default()));
        record.lock().rates.push((start, initial_rate));
        let mut tasks = Vec::new();
        for op in ops {
            match op {
                Op::Request {
                    delay_ms,
                    bytes,
                    patience_ms,
                } => {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    let throttle = throttle.clone();
                    let record = record.clone();
                    tasks.push(tokio::spawn(async move {
                        let acquire = throttle.acquire(bytes);
                        let granted = match patience_ms {
                            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), acquire)
                                .await
                                .is_ok(),
                            None => {
                                acquire.await;
                                true
                            }
                        };
                        if granted {
                            record.lock().grants.push((Instant::now(), bytes));
                        }
                    }));
                }
                Op::SetRate {
                    delay_ms,
                    bytes_per_sec,
                } => {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    throttle.set_rate(Rate::bytes_per_sec(bytes_per_sec).unwrap());
                    record.lock().rates.push((Instant::now(), bytes_per_sec));
                }
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        let record = Arc::try_unwrap(record).ok().unwrap().into_inner();
        (start, record)
    })
}

/// Bytes the rate schedule allows between `from` and `to` (nanosecond-exact, rounded up).
fn allowed(rates: &[(Instant, u64)], from: Instant, to: Instant) -> u128 {
    let mut total_nanos_bytes: u128 = 0;
    for (i, &(at, rate)) in rates.iter().enumerate() {
        let until = rates.get(i + 1).map_or(to, |&(next, _)| next);
        let lo = at.max(from);
        let hi = until.min(to);
        if hi > lo {
            total_nanos_bytes += (hi - lo).as_nanos() * u128::from(rate);
        }
    }
    total_nanos_bytes.div_ceil(1_000_000_000)
}

proptest! {
    // `PROPTEST_CASES` overrides the default (128), as for every proptest suite here.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128)
    ))]

    #[test]
    fn granted_bytes_never_exceed_rate_times_window_plus_burst(
        ops in schedule(),
        initial_rate in prop::sample::select(vec![1_000u64, 8_000, 64_000]),
    ) {
        let (_, record) = run(ops, initial_rate);
        let mut grants = record.grants;
        grants.sort_by_key(|&(at, _)| at);
        let largest = grants.iter().map(|&(_, bytes)| bytes).max().unwrap_or(0);
        let slack = u128::from(BURST.max(largest));
        for i in 0..grants.len() {
            let mut in_window: u128 = 0;
            for j in i..grants.len() {
                in_window += u128::from(grants[j].1);
                let (from, to) = (grants[i].0, grants[j].0);
                let bound = allowed(&record.rates, from, to) + slack;
                prop_assert!(
                    in_window <= bound,
                    "window {:?}..{:?}: granted {} > bound {}",
                    from, to, in_window, bound
                );
            }
        }
    }
}
