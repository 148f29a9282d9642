//! `--rate auto` through the engine: a job whose target's latency rises past a knee, and
//! which answers `SlowDown` beyond it, runs near the knee, backs off when the knee drops and
//! climbs back when it recovers (paused clock).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::Op;
use ferry_forwarding::Table;
use ferry_store::{
    BoxFuture, BoxStream, Bytes, MemStore, MetaStream, Object, ObjectMeta, Store, body_from_bytes,
};
use ferry_types::{
    AdaptiveRate, ByteSize, JobStatus, ObjectKey, ObjectSelection, Rate, RateSetting, RetryPolicy,
};
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::util::{engine, key, mem_checkpoints, plan};

const KIB: u64 = 1024;
const CHUNK: u64 = 16 * KIB;

/// A target over a `MemStore` shaped like a shared store: up to its knee (bytes put over the
/// last second) a put takes 5 ms; past it 2 s more per knee's worth of excess, and a share
/// of the puts (the excess, all of them at twice the knee) fails with `SlowDown`.
#[derive(Debug)]
struct Kneed {
    inner: MemStore,
    start: Instant,
    /// `(from second, knee in bytes per second)`, in order.
    schedule: Vec<(u64, u64)>,
    state: Mutex<Load>,
}

#[derive(Debug, Default)]
struct Load {
    offered: VecDeque<(Instant, u64)>,
    bytes: u64,
    reject_debt: f64,
}

impl Kneed {
    fn knee(&self, now: Instant) -> u64 {
        let t = now.duration_since(self.start).as_secs();
        self.schedule
            .iter()
            .take_while(|(from, _)| *from <= t)
            .last()
            .map_or(u64::MAX, |(_, knee)| *knee)
    }

    /// How long a put of `bytes` ending now takes, or `None` for a `SlowDown`.
    fn answer(&self, bytes: u64) -> Option<Duration> {
        let now = Instant::now();
        let mut load = self.state.lock();
        load.offered.push_back((now, bytes));
        load.bytes += bytes;
        while let Some(&(at, old)) = load.offered.front() {
            if now.duration_since(at) < Duration::from_secs(1) {
                break;
            }
            load.offered.pop_front();
            load.bytes -= old;
        }
        let excess = (load.bytes as f64 / self.knee(now) as f64 - 1.0).max(0.0);
        load.reject_debt += excess.min(1.0);
        if load.reject_debt >= 1.0 {
            load.reject_debt -= 1.0;
            return None;
        }
        Some(Duration::from_millis(5) + Duration::from_secs_f64(2.0 * excess))
    }
}

impl Store for Kneed {
    fn head<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, ferry_store::Result<Option<ObjectMeta>>> {
        self.inner.head(key)
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, ferry_store::Result<Object>> {
        self.inner.get(key)
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        mut body: BoxStream<'a, ferry_store::Result<Bytes>>,
    ) -> BoxFuture<'a, ferry_store::Result<ObjectMeta>> {
        Box::pin(async move {
            let mut data = Vec::new();
            while let Some(chunk) = body.next().await {
                data.extend_from_slice(&chunk?);
            }
            match self.answer(data.len() as u64) {
                Some(latency) => tokio::time::sleep(latency).await,
                None => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    return Err(ferry_store::Error::Busy {
                        op: Op::Put,
                        key: Some(key.clone()),
                        source: "503 SlowDown: please reduce your request rate".into(),
                    });
                }
            }
            let len = data.len();
            self.inner
                .put(key, body_from_bytes(Bytes::from(data), len.max(1)))
                .await
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, ferry_store::Result<bool>> {
        self.inner.delete(key)
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        self.inner.list(prefix, start_after)
    }

    fn sync(&self) -> BoxFuture<'_, ferry_store::Result<()>> {
        self.inner.sync()
    }
}

/// The job's effective rate at the end of each second, KiB/s, for `secs` seconds.
async fn rates(handle: &ferry_engine::JobHandle, start: Instant, secs: u64) -> Vec<f64> {
    let mut rates = Vec::new();
    for t in 1..=secs {
        tokio::time::sleep_until(start + Duration::from_secs(t)).await;
        let snap = handle.snapshot();
        assert!(snap.adaptive_rate, "at {t} s");
        assert_eq!(
            snap.status,
            JobStatus::Running,
            "at {t} s: ran out of objects"
        );
        let rate = snap.effective_rate.as_bytes_per_sec().unwrap();
        rates.push(rate as f64 / KIB as f64);
    }
    rates
}

fn mean(rates: &[f64], from: u64, to: u64) -> f64 {
    let window = &rates[from as usize..to as usize];
    window.iter().sum::<f64>() / window.len() as f64
}

#[tokio::test(start_paused = true)]
async fn an_auto_rate_follows_the_targets_knee_down_and_back_up() {
    // Knee 512 KiB/s, a quarter of it from 40 s to 60 s. The controller starts at 256 KiB/s
    // (16 × the floor): a rate that did not adapt would fail both ways.
    let source = MemStore::with_chunk_size(CHUNK as usize);
    for i in 0..3000 {
        source.insert(key(i), vec![i as u8; CHUNK as usize]);
    }
    let target = Arc::new(Kneed {
        inner: MemStore::new(),
        start: Instant::now(),
        schedule: vec![(0, 512 * KIB), (40, 128 * KIB), (60, 512 * KIB)],
        state: Mutex::new(Load::default()),
    });
    let table = Table::default();
    let engine = engine(Arc::new(source), target.clone(), &table, mem_checkpoints());
    let plan = plan("auto", ObjectSelection::all())
        .with_chunk_size(ByteSize::b(CHUNK))
        .with_retry(RetryPolicy {
            max_attempts: 50,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            ..RetryPolicy::default()
        })
        .with_adaptive_rate(AdaptiveRate {
            max_latency: Duration::from_millis(250),
            floor: ByteSize::kib(16),
        });
    let start = target.start;
    let handle = engine.start(plan).await.unwrap();
    let rates = rates(&handle, start, 90).await;
    let table: Vec<String> = rates
        .iter()
        .enumerate()
        .map(|(t, r)| format!("{}s {r:.0}", t + 1))
        .collect();
    let near = |mean: f64, knee: f64| (mean - knee).abs() <= 0.25 * knee;
    let before = mean(&rates, 20, 40);
    assert!(near(before, 512.0), "20–40 s: {before:.0} KiB/s\n{table:?}");
    // Within 5 s of the drop, at most 1.25 × the new knee.
    let down = rates[40..45].iter().any(|&r| r <= 160.0);
    assert!(down, "no back-off by 45 s\n{table:?}");
    let during = mean(&rates, 48, 60);
    assert!(near(during, 128.0), "48–60 s: {during:.0} KiB/s\n{table:?}");
    let after = mean(&rates, 75, 90);
    assert!(near(after, 512.0), "75–90 s: {after:.0} KiB/s\n{table:?}");

    // A fixed rate from the handle stops the controller; `auto` starts it again.
    handle.set_rate("100KiB/s".parse().unwrap());
    let snap = handle.snapshot();
    assert!(!snap.adaptive_rate);
    assert_eq!(snap.effective_rate, "100KiB/s".parse::<Rate>().unwrap());
    handle.set_rate_setting(RateSetting::Auto {
        ceiling: "300KiB/s".parse().unwrap(),
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    let snap = handle.snapshot();
    assert!(snap.adaptive_rate);
    let rate = snap.effective_rate.as_bytes_per_sec().unwrap();
    assert!(rate > 100 * KIB && rate <= 300 * KIB, "{rate}");
    handle.cancel().await.unwrap();
}
