//! Fence waits on a paused tokio clock, the sweeper's lifetime, snapshot and restore.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferry_forwarding::{Config, EntryState, Error, ManualClock, Route, Table, TableSnapshot};
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

/// I3 with the fence: a writer that arrives while the key is fenced waits, and once the flip
/// completes it is told to write to the target.
#[tokio::test(start_paused = true)]
async fn i3_fenced_writer_waits_then_writes_to_target() {
    let table = std::sync::Arc::new(table());
    table.register(&key("k"), node("a"), node("b")).unwrap();
    table.fence("k").unwrap();
    let writer = {
        let table = table.clone();
        tokio::spawn(async move { table.begin_write("k").await.map(|t| t.route()) })
    };
    tokio::task::yield_now().await;
    assert!(!writer.is_finished(), "the writer must wait on the fence");
    let generation = table.wait_drained("k").await.unwrap();
    table.try_flip("k", generation).unwrap();
    assert_eq!(writer.await.unwrap().unwrap(), Route::Target(node("b")));
}

/// A fence that is lifted lets waiting writers proceed to the source.
#[tokio::test(start_paused = true)]
async fn unfence_releases_waiters_to_source() {
    let table = std::sync::Arc::new(table());
    table.register(&key("k"), node("a"), node("b")).unwrap();
    table.fence("k").unwrap();
    let writer = {
        let table = table.clone();
        tokio::spawn(async move { table.begin_write("k").await.map(|t| t.route()) })
    };
    tokio::task::yield_now().await;
    assert!(!writer.is_finished());
    table.unfence("k").unwrap();
    assert_eq!(writer.await.unwrap().unwrap(), Route::Source);
    assert_eq!(table.get("k").unwrap().in_flight, 0);
}

/// A writer waits at most the fence timeout, measured on tokio's clock.
#[tokio::test(start_paused = true)]
async fn fenced_writer_times_out_after_fence_timeout() {
    let table = Table::new(
        Config::default()
            .with_sweep_interval(None)
            .with_fence_timeout(Duration::from_secs(5)),
    );
    table.register(&key("k"), node("a"), node("b")).unwrap();
    table.fence("k").unwrap();
    let started = tokio::time::Instant::now();
    let error = table.begin_write("k").await.unwrap_err();
    assert_eq!(
        error,
        Error::FenceTimeout {
            key: "k".into(),
            waited: Duration::from_secs(5)
        }
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

/// The fence drains writes already in flight: `wait_drained` returns once the last ticket is
/// dropped, with a generation the flip accepts.
#[tokio::test(start_paused = true)]
async fn i3_wait_drained_waits_for_in_flight_writes() {
    let table = std::sync::Arc::new(table());
    table.register(&key("k"), node("a"), node("b")).unwrap();
    let ticket = table.try_begin_write("k").unwrap();
    table.fence("k").unwrap();
    let drained = {
        let table = table.clone();
        tokio::spawn(async move { table.wait_drained("k").await })
    };
    tokio::task::yield_now().await;
    assert!(!drained.is_finished(), "a write is still in flight");
    assert!(table.try_flip("k", table.generation("k").unwrap()).is_err());
    drop(ticket);
    let generation = drained.await.unwrap().unwrap();
    table.try_flip("k", generation).unwrap();
}

/// No leaked thread: the sweeper exits when the last table handle is dropped.
#[test]
fn sweeper_stops_when_table_is_dropped() {
    let table = Table::new(Config::default().with_sweep_interval(Some(Duration::from_secs(3600))));
    let clone = table.clone();
    let sweeper = table.sweeper().expect("a sweeper thread");
    assert!(!sweeper.is_finished());
    drop(table);
    assert!(
        !sweeper.wait_finished(Duration::from_millis(50)),
        "a clone still uses it"
    );
    drop(clone);
    assert!(sweeper.wait_finished(Duration::from_secs(30)));
}

/// Dropping the table while its sweeper is removing many expired entries is fine: the sweep
/// finishes or stops early and the thread exits.
#[test]
fn drop_while_sweeper_runs() {
    let clock = ManualClock::new();
    let table = Table::new(
        Config::default()
            .with_clock(clock.clone())
            .with_expected_entries(100_000)
            .with_default_ttl(Duration::from_secs(1))
            .with_sweep_interval(Some(Duration::from_millis(1))),
    );
    for i in 0..100_000 {
        let k = format!("k{i}");
        table.register(&key(&k), node("a"), node("b")).unwrap();
        table.try_flip(&k, 0).unwrap();
    }
    let sweeper = table.sweeper().unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        table.route_read("k0"),
        Route::Source,
        "expired at once, before any sweep"
    );
    drop(table);
    assert!(sweeper.wait_finished(Duration::from_secs(30)));
}

/// The sweeper frees expired entries by itself.
#[test]
fn sweeper_removes_expired_entries() {
    let clock = ManualClock::new();
    let table = Table::new(
        Config::default()
            .with_clock(clock.clone())
            .with_default_ttl(Duration::from_secs(1))
            .with_sweep_interval(Some(Duration::from_millis(1))),
    );
    table.register(&key("k"), node("a"), node("b")).unwrap();
    table.try_flip("k", 0).unwrap();
    clock.advance(Duration::from_secs(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while table.stats().expired == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper never ran"
        );
        std::thread::yield_now();
    }
    assert_eq!(table.sweep_now(), 0);
}

/// A restarted process gets back the routes it had (I2 across restarts): forwarded entries with
/// the time they had left, moving ones as `Copying` with no write in flight.
#[test]
fn i2_snapshot_restore_keeps_routes() {
    let clock = ManualClock::new();
    let config = Config::default()
        .with_clock(clock.clone())
        .with_sweep_interval(None)
        .with_default_ttl(Duration::from_secs(100));
    let table = Table::new(config.clone());
    let (a, b, c) = (node("a"), node("b"), node("c"));
    table.register(&key("copying"), a, b).unwrap();
    table.register(&key("fenced"), a, b).unwrap();
    table.fence("fenced").unwrap();
    table.register(&key("forwarded"), a, b).unwrap();
    table.try_flip("forwarded", 0).unwrap();
    table.register(&key("chained"), a, b).unwrap();
    table.try_flip("chained", 0).unwrap();
    table.register(&key("chained"), b, c).unwrap();
    table.register(&key("expired"), a, b).unwrap();
    table.try_flip("expired", 0).unwrap();
    table.set_ttl("expired", Duration::from_secs(10)).unwrap();
    let ticket = table.try_begin_write("copying").unwrap();
    clock.advance(Duration::from_secs(40));

    let json = serde_json::to_string(&table.snapshot()).unwrap();
    let snapshot: TableSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(snapshot.entries.len(), 4);
    drop(ticket);

    let restored_clock = ManualClock::new();
    let restored = Table::restore(config.with_clock(restored_clock.clone()), snapshot).unwrap();
    for k in ["copying", "fenced", "forwarded", "chained", "expired"] {
        assert_eq!(restored.route_read(k), table.route_read(k), "{k}");
    }
    assert_eq!(restored.get("fenced").unwrap().state, EntryState::Copying);
    assert_eq!(restored.get("copying").unwrap().in_flight, 0);
    let chained = restored.get("chained").unwrap();
    assert_eq!(
        (
            chained.source,
            chained.copy_from,
            chained.target,
            chained.hops
        ),
        (a, b, c, 2)
    );
    assert_eq!(restored.route_read("chained"), Route::Target(b));
    restored_clock.advance(Duration::from_secs(59));
    assert_eq!(restored.route_read("forwarded"), Route::Target(b));
    restored_clock.advance(Duration::from_secs(1));
    assert_eq!(
        restored.route_read("forwarded"),
        Route::Source,
        "60 s were left"
    );
    assert_eq!(restored.len(), 3);
}
