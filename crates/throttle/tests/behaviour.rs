//! Behaviour of `Throttle` on tokio's paused clock: each test names the property of SPEC §3 it
//! checks. No test sleeps to "let things happen": time only moves when every task waits.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use ferry_throttle::{Error, Throttle};
use ferry_types::{ByteSize, Rate};
use parking_lot::Mutex;
use tokio::time::Instant;

fn rate(bytes_per_sec: u64) -> Rate {
    Rate::bytes_per_sec(bytes_per_sec).unwrap()
}

fn throttle(bytes_per_sec: u64, burst: u64) -> Throttle {
    Throttle::builder()
        .rate(rate(bytes_per_sec))
        .burst(ByteSize(burst))
        .build()
        .unwrap()
}

/// Lets every spawned task run until it waits (the clock is paused, so none can finish a wait).
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Bytes granted to a saturating consumer in the `window` after the bucket is drained.
async fn saturate(throttle: &Throttle, chunk: u64, window: Duration, consumers: usize) -> u64 {
    let burst = throttle.burst().as_u64();
    throttle.acquire(burst).await; // drain the initial burst
    let start = Instant::now();
    let end = start + window;
    let granted = Arc::new(Mutex::new(0u64));
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let throttle = throttle.clone();
        let granted = granted.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                throttle.acquire(chunk).await;
                if Instant::now() > end {
                    break;
                }
                *granted.lock() += chunk;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    *granted.lock()
}

fn assert_within_one_percent(got: u64, expected: u64, what: &str) {
    let error = (got as f64 - expected as f64).abs() / expected as f64;
    assert!(
        error <= 0.01,
        "{what}: delivered {got} B, expected {expected} B (error {:.3}%)",
        error * 100.0
    );
}

#[tokio::test(start_paused = true)]
async fn saturated_throttle_delivers_its_rate_within_one_percent_over_10s() {
    let cases: &[(u64, u64, usize)] = &[
        // (rate B/s, chunk B, consumers)
        (50 << 20, 1 << 20, 1),
        (50 << 20, 1 << 20, 8),
        (1 << 20, 4 << 10, 1),
        (1 << 20, 4 << 10, 16),
        (3_000_000_000, 1 << 20, 2),
        (10_000, 100, 1),
    ];
    for &(bytes_per_sec, chunk, consumers) in cases {
        let throttle = Throttle::new(rate(bytes_per_sec));
        let got = saturate(&throttle, chunk, Duration::from_secs(10), consumers).await;
        assert_within_one_percent(
            got,
            bytes_per_sec * 10,
            &format!("rate {bytes_per_sec}, chunk {chunk}, {consumers} consumers"),
        );
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_come_first_served() {
    let throttle = throttle(1000, 1000);
    throttle.acquire(1000).await; // empty
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, bytes) in [300u64, 50, 700, 10, 400, 1].into_iter().enumerate() {
        let throttle = throttle.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            throttle.acquire(bytes).await;
            order.lock().push(i);
        }));
        settle().await; // task i is in line before task i + 1 is spawned
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn a_big_request_is_not_starved_by_a_stream_of_small_ones() {
    let throttle = throttle(1000, 100);
    throttle.acquire(100).await; // empty
    let start = Instant::now();
    let big = {
        let throttle = throttle.clone();
        tokio::spawn(async move {
            throttle.acquire(5000).await; // 50× the burst: admitted on debt when full
            Instant::now()
        })
    };
    settle().await;
    let small_done = Arc::new(Mutex::new(Vec::new()));
    let mut smalls = Vec::new();
    for _ in 0..100 {
        let throttle = throttle.clone();
        let small_done = small_done.clone();
        smalls.push(tokio::spawn(async move {
            throttle.acquire(10).await;
            small_done.lock().push(Instant::now());
        }));
    }
    let big_at = big.await.unwrap();
    for task in smalls {
        task.await.unwrap();
    }
    // The big one waited for a full bucket (100 B at 1000 B/s), not for the small ones.
    assert!(
        big_at - start <= Duration::from_millis(101),
        "{:?}",
        big_at - start
    );
    let first_small = small_done.lock().iter().copied().min().unwrap();
    assert!(
        first_small >= big_at,
        "a small request overtook the big one"
    );
    // …and the small ones then wait out its debt: 5000 B at 1000 B/s.
    assert!(first_small - start >= Duration::from_millis(4900));
}

#[tokio::test(start_paused = true)]
async fn a_request_above_the_burst_is_admitted_on_debt_when_the_bucket_is_full() {
    let throttle = throttle(1000, 100);
    let start = Instant::now();
    throttle.acquire(10_000).await; // 100× the burst, bucket full: at once
    assert_eq!(Instant::now(), start);
    throttle.acquire(1).await; // pays the debt: 9_900 B + 1 B at 1000 B/s
    let waited = Instant::now() - start;
    assert!(
        waited >= Duration::from_millis(9_900) && waited <= Duration::from_millis(9_903),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_change_applies_to_waiters_already_queued() {
    let throttle = throttle(1000, 1000);
    throttle.acquire(1000).await; // empty: the next 1000 B are due at 1 s
    let start = Instant::now();
    let waiter = {
        let throttle = throttle.clone();
        tokio::spawn(async move {
            throttle.acquire(1000).await;
            Instant::now()
        })
    };
    settle().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    throttle.set_rate(rate(10_000));
    // At 0.1 s, 900 B are owed; at 10 kB/s they are paid by 0.19 s.
    let done = waiter.await.unwrap() - start;
    assert!(
        done >= Duration::from_millis(190) && done <= Duration::from_millis(192),
        "{done:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn lifting_the_limit_releases_every_waiter_at_once() {
    let throttle = throttle(1000, 1000);
    throttle.acquire(1000).await;
    let start = Instant::now();
    let mut waiters = Vec::new();
    for _ in 0..10 {
        let throttle = throttle.clone();
        waiters.push(tokio::spawn(async move {
            throttle.acquire(1000).await;
            Instant::now()
        }));
    }
    settle().await;
    tokio::time::sleep(Duration::from_secs(1) / 2).await;
    throttle.set_rate(Rate::Unlimited);
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap() - start, Duration::from_millis(500));
    }
    assert!(throttle.try_acquire(u64::MAX));
}

#[tokio::test(start_paused = true)]
async fn a_burst_change_applies_to_a_waiting_request() {
    let throttle = throttle(1000, 100);
    throttle.acquire(100).await; // empty: the next 100 B are due at 0.1 s
    let start = Instant::now();
    let waiter = {
        let throttle = throttle.clone();
        tokio::spawn(async move {
            throttle.acquire(100).await;
            Instant::now()
        })
    };
    settle().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A burst of 1000 B: the 50 B owed leave room for 950 B now, so the waiter passes at once.
    throttle.set_burst(Some(ByteSize(1000))).unwrap();
    assert_eq!(throttle.burst(), ByteSize(1000));
    assert_eq!(waiter.await.unwrap() - start, Duration::from_millis(50));

    assert_eq!(
        throttle.set_burst(Some(ByteSize(0))),
        Err(Error::ZeroBurst { burst: ByteSize(0) })
    );
    assert_eq!(
        throttle.burst(),
        ByteSize(1000),
        "a refused burst changes nothing"
    );
    throttle.set_burst(None).unwrap();
    assert_eq!(
        throttle.burst(),
        ByteSize(1000),
        "back to the default: a chunk, within one second of the rate"
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_burst_at_a_low_rate_lets_at_most_a_second_of_it_through_at_once() {
    // 64 KiB/s with the default 1 MiB chunks: requests of 1 KiB (small objects), as fast as
    // the throttle lets them through. Over the first second at most rate × 1 s + burst pass,
    // and the burst is one second of the rate, not a whole chunk.
    let rate_bps = 64 << 10;
    let throttle = Throttle::builder()
        .rate(rate(rate_bps))
        .chunk_size(ferry_throttle::DEFAULT_MIN_BURST)
        .build()
        .unwrap();
    assert_eq!(throttle.burst(), ByteSize(rate_bps));
    let start = Instant::now();
    let mut at_once = 0;
    while throttle.try_acquire(1024) {
        at_once += 1024;
    }
    assert_eq!(at_once, rate_bps, "unthrottled at the start");
    let mut granted = at_once;
    loop {
        throttle.acquire(1024).await;
        if Instant::now() - start > Duration::from_secs(1) {
            break;
        }
        granted += 1024;
    }
    assert!(
        granted <= 2 * rate_bps,
        "{granted} B in the first second at {rate_bps} B/s"
    );
    // The burst follows the rate, within the same bounds.
    throttle.set_rate(rate(10 << 20));
    assert_eq!(throttle.burst(), ferry_throttle::DEFAULT_MIN_BURST);
    throttle.set_rate(rate(100 << 20));
    assert_eq!(throttle.burst(), ByteSize(10 << 20));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_acquire_gives_its_place_up_and_takes_no_tokens() {
    let throttle = throttle(1000, 1000);
    throttle.acquire(1000).await;
    let start = Instant::now();
    let first = {
        let throttle = throttle.clone();
        tokio::spawn(async move { throttle.acquire(500).await })
    };
    settle().await;
    let second = {
        let throttle = throttle.clone();
        tokio::spawn(async move {
            throttle.acquire(500).await;
            Instant::now()
        })
    };
    settle().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // The second is served when 500 B are there, as if the first had never asked.
    let done = second.await.unwrap() - start;
    assert!(
        done >= Duration::from_millis(500) && done <= Duration::from_millis(501),
        "{done:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_acquire_within_a_global_cap_gives_back_what_it_took_from_its_own_bucket() {
    let global = throttle(1000, 1000);
    global.acquire(1000).await; // the global cap is empty, the job's bucket full
    let job = Throttle::builder()
        .rate(rate(1000))
        .burst(ByteSize(1000))
        .within(&global)
        .build()
        .unwrap();
    let waiting = {
        let job = job.clone();
        tokio::spawn(async move { job.acquire(1000).await })
    };
    settle().await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    global.set_rate(Rate::Unlimited);
    assert!(
        job.try_acquire(1000),
        "the job's own tokens were not given back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_within_a_global_cap_runs_at_the_lower_rate_without_waiting_twice() {
    let global = Throttle::new(rate(2 << 20));
    let job = Throttle::builder()
        .rate(rate(1 << 20))
        .within(&global)
        .build()
        .unwrap();
    assert_eq!(job.effective_rate(), rate(1 << 20));
    let got = saturate(&job, 16 << 10, Duration::from_secs(10), 1).await;
    assert_within_one_percent(got, 10 << 20, "job at 1 MiB/s within 2 MiB/s");
}

#[tokio::test(start_paused = true)]
async fn jobs_sharing_a_global_cap_get_all_of_it_between_them_and_fair_shares() {
    let global = Throttle::new(rate(2 << 20));
    let jobs: Vec<Throttle> = (0..2)
        .map(|_| {
            Throttle::builder()
                .rate(rate(2 << 20))
                .within(&global)
                .build()
                .unwrap()
        })
        .collect();
    global.acquire(global.burst().as_u64()).await;
    let end = Instant::now() + Duration::from_secs(10);
    let mut tasks = Vec::new();
    for job in &jobs {
        let job = job.clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = 0u64;
            loop {
                job.acquire(16 << 10).await;
                if Instant::now() > end {
                    return granted;
                }
                granted += 16 << 10;
            }
        }));
    }
    let mut shares = Vec::new();
    for task in tasks {
        shares.push(task.await.unwrap());
    }
    let total: u64 = shares.iter().sum();
    assert_within_one_percent(total, 20 << 20, "two jobs within one 2 MiB/s cap");
    for share in shares {
        assert!(share >= 9 << 20, "unfair share: {share} of {total}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_objects_limit_admits_objects_at_its_rate() {
    let throttle = Throttle::builder()
        .objects_per_sec(NonZeroU64::new(100).unwrap())
        .build()
        .unwrap();
    assert_eq!(throttle.objects_per_sec(), NonZeroU64::new(100));
    assert!(throttle.try_acquire(u64::MAX), "bytes stay unlimited");
    let start = Instant::now();
    let mut objects = 0u64;
    while Instant::now() - start < Duration::from_secs(10) {
        throttle.acquire_objects(1).await;
        objects += 1;
    }
    // 10 s at 100/s, plus the burst of 10 that was there at the start.
    assert!((1009..=1011).contains(&objects), "{objects} objects");
    throttle.set_objects_per_sec(None);
    assert!(throttle.try_acquire_objects(1_000_000));
}

#[tokio::test(start_paused = true)]
async fn an_unlimited_throttle_never_waits() {
    let throttle = Throttle::unlimited();
    let start = Instant::now();
    for _ in 0..1000 {
        throttle.acquire(1 << 30).await;
        throttle.acquire_objects(1).await;
    }
    assert_eq!(Instant::now(), start);
    assert_eq!(throttle.rate(), Rate::Unlimited);
}

#[tokio::test(start_paused = true)]
async fn try_acquire_does_not_overtake_the_line() {
    let throttle = throttle(1000, 1000);
    throttle.acquire(1000).await;
    let waiter = {
        let throttle = throttle.clone();
        tokio::spawn(async move { throttle.acquire(1000).await })
    };
    settle().await;
    // Let the bucket refill a little: the waiter needs all 1000 B, so 1 B is there.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!throttle.try_acquire(1), "try_acquire jumped the line");
    waiter.await.unwrap();
}

#[test]
fn many_threads_sharing_a_global_cap_neither_deadlock_nor_lose_tokens() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        // High rates so the test runs in milliseconds of real time; what it checks is that
        // every acquire completes with jobs, global and cancellations racing on real threads.
        let global = Throttle::new(rate(4 << 30));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let job = Throttle::builder()
                .rate(rate(1 << 30))
                .within(&global)
                .build()
                .unwrap();
            tasks.push(tokio::spawn(async move {
                for j in 0..2000u64 {
                    if (i + j) % 7 == 0 {
                        // A cancelled acquire in the middle of the traffic.
                        let _ = tokio::time::timeout(Duration::ZERO, job.acquire(64 << 10)).await;
                    } else {
                        job.acquire(4 << 10).await;
                    }
                    if j % 500 == 0 {
                        job.set_rate(rate((1 << 30) + j));
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn a_zero_burst_is_refused_with_a_clear_error() {
    let err = Throttle::builder()
        .rate(rate(1000))
        .burst(ByteSize(0))
        .build()
        .unwrap_err();
    assert_eq!(err, Error::ZeroBurst { burst: ByteSize(0) });
    assert!(err.to_string().contains("burst"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_throttle_built_on_a_paused_clock_follows_it() {
    assert!(Throttle::new(rate(1000)).follows_tokio_clock());
    let fast = Throttle::builder()
        .rate(rate(1000))
        .clock(ferry_throttle::Clock::Fast)
        .build()
        .unwrap();
    assert!(!fast.follows_tokio_clock());
}

#[test]
fn an_explicit_tokio_clock_is_kept_outside_a_runtime() {
    let throttle = Throttle::builder()
        .rate(rate(1000))
        .clock(ferry_throttle::Clock::Tokio)
        .build()
        .unwrap();
    assert!(throttle.follows_tokio_clock());
}
