//! The table's figures through the `metrics` facade: published by `record_metrics` and by
//! sweeps, never by the read path.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use ferry_forwarding::metrics as names;
use ferry_forwarding::{Config, ManualClock, Table};
use ferry_types::{NodeId, ObjectKey};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

/// The unlabelled series recorded so far, by name.
fn values(snapshotter: &Snapshotter) -> HashMap<String, DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
        .collect()
}

fn counter(values: &HashMap<String, DebugValue>, name: &str) -> u64 {
    match values.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} is {other:?}"),
    }
}

fn gauge(values: &HashMap<String, DebugValue>, name: &str) -> f64 {
    match values.get(name) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name} is {other:?}"),
    }
}

#[test]
fn record_metrics_publishes_entries_and_stats_and_reads_record_nothing() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let clock = ManualClock::new();
    let ttl = Duration::from_secs(60);
    let table = Table::new(
        Config::default()
            .with_sweep_interval(None)
            .with_default_ttl(ttl)
            .with_clock(clock.clone()),
    );
    for name in ["a", "b", "c"] {
        table
            .register(&ObjectKey::new(name).unwrap(), node("x"), node("y"))
            .unwrap();
    }
    table.try_flip("a", 0).unwrap();
    table.try_flip("b", 0).unwrap();
    for name in ["a", "b", "c", "d", "e"] {
        table.route_read(name);
    }
    // Reads alone publish nothing.
    assert!(values(&snapshotter).is_empty());

    table.record_metrics();
    let seen = values(&snapshotter);
    assert_eq!(gauge(&seen, names::ENTRIES), 3.0);
    assert_eq!(counter(&seen, names::REGISTRATIONS), 3);
    assert_eq!(counter(&seen, names::FLIPS), 2);
    assert_eq!(counter(&seen, names::FLIPS_REFUSED), 0);
    assert_eq!(counter(&seen, names::LOOKUPS), 5);
    assert_eq!(counter(&seen, names::HITS), 3);
    assert_eq!(counter(&seen, names::EXPIRED), 0);

    // The two forwarded entries expire and a sweep removes them.
    clock.advance(ttl + Duration::from_secs(1));
    assert_eq!(table.sweep_now(), 2);
    table.record_metrics();
    let seen = values(&snapshotter);
    assert_eq!(gauge(&seen, names::ENTRIES), 1.0);
    assert_eq!(counter(&seen, names::EXPIRED), 2);
    assert_eq!(counter(&seen, names::SWEEPS), 1);
}
