//! Counted reads and their drain (SPEC I2 across cleanup): a drain waits for every read that
//! began before it, and for none that began after.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ferry_forwarding::{Config, ManualClock, ReadGuard, Route, Table};
use ferry_types::{NodeId, ObjectKey};

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(name).unwrap()
}

fn table() -> Table {
    Table::new(Config::default().with_sweep_interval(None))
}

/// Polls a future once, as an executor would, without waiting.
fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// Registers `name` a → b and flips it.
fn flipped(table: &Table, name: &str) {
    table.register(&key(name), node("a"), node("b")).unwrap();
    let generation = table.generation(name).unwrap();
    table.try_flip(name, generation).unwrap();
}

#[test]
fn read_guard_is_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ReadGuard<'static>>();
}

/// `read` answers what `route_read` answers, in every state of a key, and counts as a lookup.
#[test]
fn read_routes_as_route_read_in_every_state() {
    let clock = ManualClock::new();
    let table = Table::new(
        Config::default()
            .with_sweep_interval(None)
            .with_clock(clock.clone())
            .with_default_ttl(Duration::from_secs(10)),
    );
    let (a, b, c) = (node("a"), node("b"), node("c"));
    table.register(&key("copying"), a, b).unwrap();
    table.register(&key("fenced"), a, b).unwrap();
    table.fence("fenced").unwrap();
    flipped(&table, "forwarded");
    flipped(&table, "chained");
    table.register(&key("chained"), b, c).unwrap();
    flipped(&table, "expired");
    table.set_ttl("expired", Duration::from_secs(1)).unwrap();
    clock.advance(Duration::from_secs(1));
    let cases = [
        ("absent", Route::Source),
        ("copying", Route::Source),
        ("fenced", Route::Source),
        ("forwarded", Route::Target(b)),
        ("chained", Route::Target(b)),
        ("expired", Route::Source),
    ];
    for (name, expected) in cases {
        assert_eq!(table.route_read(name), expected, "{name}");
        assert_eq!(table.read(name).route(), expected, "{name}");
    }
    let stats = table.stats();
    // Hits: copying, fenced, forwarded and chained, by both calls.
    assert_eq!((stats.lookups, stats.hits), (12, 8));
}

#[test]
fn drain_with_no_read_in_flight_returns_at_once() {
    let table = table();
    drop(table.read("k"));
    let mut drain = pin!(table.drain_reads("k"));
    assert!(poll_once(drain.as_mut()).is_ready());
}

/// I2: a read that routed to the source before the flip holds the drain until it ends.
#[test]
fn i2_drain_waits_for_a_read_that_began_before_it() {
    let table = table();
    table.register(&key("k"), node("a"), node("b")).unwrap();
    let early = table.read("k");
    assert_eq!(early.route(), Route::Source);
    table.try_flip("k", 0).unwrap();
    let mut drain = pin!(table.drain_reads("k"));
    for _ in 0..3 {
        assert!(
            poll_once(drain.as_mut()).is_pending(),
            "the early read runs"
        );
    }
    drop(early);
    assert!(poll_once(drain.as_mut()).is_ready());
}

/// Reads that begin after the drain (here: while it waits) do not hold it back.
#[test]
fn drain_does_not_wait_for_reads_that_began_after_it() {
    let table = table();
    let early = table.read("k");
    let mut drain = pin!(table.drain_reads("k"));
    assert!(poll_once(drain.as_mut()).is_pending());
    let late = table.read("k");
    drop(early);
    assert!(
        poll_once(drain.as_mut()).is_ready(),
        "only `late` is in flight"
    );
    // `late` is counted: the next drain waits for it.
    let mut next = pin!(table.drain_reads("k"));
    assert!(poll_once(next.as_mut()).is_pending());
    drop(late);
    assert!(poll_once(next.as_mut()).is_ready());
}

/// A steady stream of overlapping reads (one always in flight) never starves a drain: it
/// returns as soon as the reads that began before it ended.
#[test]
fn drain_is_not_starved_by_a_steady_stream_of_reads() {
    let table = table();
    let early = table.read("k");
    let mut drain = pin!(table.drain_reads("k"));
    let mut current = table.read("k");
    for _ in 0..100 {
        assert!(poll_once(drain.as_mut()).is_pending(), "`early` runs");
        let next = table.read("k");
        drop(current);
        current = next;
    }
    drop(early);
    assert!(
        poll_once(drain.as_mut()).is_ready(),
        "a later read is in flight"
    );
    drop(current);
}

/// Drains of one key run one at a time; each waits for the reads that began before it.
#[test]
fn concurrent_drains_each_wait_for_their_own_earlier_reads() {
    let table = table();
    let first = table.read("k");
    let mut one = pin!(table.drain_reads("k"));
    assert!(poll_once(one.as_mut()).is_pending());
    let second = table.read("k");
    let mut two = pin!(table.drain_reads("k"));
    assert!(poll_once(two.as_mut()).is_pending());
    drop(first);
    assert!(poll_once(one.as_mut()).is_ready());
    assert!(
        poll_once(two.as_mut()).is_pending(),
        "`second` began before drain two"
    );
    drop(second);
    assert!(poll_once(two.as_mut()).is_ready());
}

/// A cancelled drain leaves nothing behind: a later one waits for the same reads, and the
/// read's end still wakes it.
#[tokio::test]
async fn a_cancelled_drain_leaves_reads_counted() {
    let table = Arc::new(table());
    let early = table.read("k");
    {
        let mut drain = pin!(table.drain_reads("k"));
        assert!(poll_once(drain.as_mut()).is_pending());
    }
    let waiter = tokio::spawn({
        let table = Arc::clone(&table);
        async move { table.drain_reads("k").await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    drop(early);
    waiter.await.unwrap();
}

/// I2 on real threads: readers hold guards across `.await` (their store read) in spawned
/// tasks while drainers register, flip and drain their keys over and over. No read that
/// routed to the source is still in flight when a drain that began after the flip returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn i2_no_source_read_outlives_a_drain_on_real_threads() {
    const KEYS: usize = 8;
    const ROUNDS: usize = 2000;
    const READERS: usize = 4;
    let table = Arc::new(table());
    let names: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("key-{i}")).collect());
    // Per key: reads in flight that routed to the source.
    let on_source: Arc<Vec<AtomicUsize>> =
        Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (table, names, on_source, stop) = (
            Arc::clone(&table),
            Arc::clone(&names),
            Arc::clone(&on_source),
            Arc::clone(&stop),
        );
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            let mut state = r as u64 + 1;
            while !stop.load(SeqCst) {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (state >> 33) as usize % KEYS;
                let guard = table.read(&names[i]);
                let source = guard.route() == Route::Source;
                if source {
                    on_source[i].fetch_add(1, SeqCst);
                }
                // The store read: a few turns of the scheduler.
                for _ in 0..(state >> 60) {
                    tokio::task::yield_now().await;
                }
                if source {
                    on_source[i].fetch_sub(1, SeqCst);
                }
                drop(guard);
                reads += 1;
            }
            reads
        }));
    }
    let mut drainers = Vec::new();
    for d in 0..2 {
        let (table, names, on_source) = (
            Arc::clone(&table),
            Arc::clone(&names),
            Arc::clone(&on_source),
        );
        drainers.push(tokio::spawn(async move {
            let mut violations = 0;
            for round in 0..ROUNDS {
                let i = d + 2 * (round % (KEYS / 2));
                let name = &names[i];
                table.register(&key(name), node("a"), node("b")).unwrap();
                tokio::task::yield_now().await; // reads route to the source meanwhile
                let generation = table.generation(name).unwrap();
                table.try_flip(name, generation).unwrap();
                table.drain_reads(name).await;
                if on_source[i].load(SeqCst) != 0 {
                    violations += 1;
                }
                assert!(table.remove(name));
            }
            violations
        }));
    }
    let mut violations = 0;
    for drainer in drainers {
        violations += drainer.await.unwrap();
    }
    stop.store(true, SeqCst);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    assert_eq!(
        violations, 0,
        "source reads in flight after a drain ({reads} reads)"
    );
    assert!(reads > 0);
}
