//! The placement map: where keys live once the table forgot their move (SPEC I2 after the
//! TTL), resolution of routes, and its snapshot.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use ferry_forwarding::{Config, ManualClock, Placement, PlacementSnapshot, Route, Table};
use ferry_types::{NodeId, ObjectKey};

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(name).unwrap()
}

#[test]
fn node_of_follows_set_and_remove() {
    let placement = Placement::new(node("a"));
    assert_eq!(placement.default_node(), node("a"));
    // (operation, key, node argument, node_of afterwards, len afterwards)
    let steps: [(&str, &str, &str, &str, usize); 7] = [
        ("get", "k", "", "a", 0),
        ("set", "k", "b", "b", 1),
        ("set", "k", "c", "c", 1),
        ("set", "other", "b", "b", 2),
        ("set", "k", "a", "a", 1), // the default node: forgotten
        ("remove", "other", "", "a", 0),
        ("remove", "other", "", "a", 0),
    ];
    for (i, (op, k, n, expected, len)) in steps.into_iter().enumerate() {
        match op {
            "set" => placement.set(&key(k), node(n)),
            "remove" => {
                placement.remove(k);
            }
            _ => {}
        }
        assert_eq!(placement.node_of(k), node(expected), "step {i}");
        assert_eq!(placement.len(), len, "step {i}");
    }
    assert!(placement.is_empty());
}

#[test]
fn remove_returns_the_node_the_key_was_placed_on() {
    let placement = Placement::new(node("a"));
    placement.set(&key("k"), node("b"));
    assert_eq!(placement.remove("k"), Some(node("b")));
    assert_eq!(placement.remove("k"), None);
}

#[test]
fn resolve_takes_the_target_or_the_placement() {
    let placement = Placement::new(node("a"));
    placement.set(&key("moved"), node("b"));
    let cases = [
        ("moved", Route::Source, "b"),
        ("home", Route::Source, "a"),
        ("moved", Route::Target(node("c")), "c"),
        ("home", Route::Target(node("c")), "c"),
    ];
    for (k, route, expected) in cases {
        assert_eq!(placement.resolve(k, route), node(expected), "{k} {route:?}");
    }
}

/// I2 after the TTL: once a forwarded entry expired the table answers `Source`; reads still
/// reach the target because the commit hook placed the key there. Without the placement
/// step they would go back to the source, whose copy the engine deleted.
#[test]
fn i2_reads_follow_the_placement_after_the_entry_expired() {
    let clock = ManualClock::new();
    let table = Table::new(
        Config::default()
            .with_sweep_interval(None)
            .with_clock(clock.clone())
            .with_default_ttl(Duration::from_secs(10)),
    );
    let (a, b) = (node("a"), node("b"));
    let placement = Placement::new(a);
    let forgetful = Placement::new(a); // a hook that never moved the key
    let k = key("photos/cat.jpg");
    table.register(&k, a, b).unwrap();
    let early = table.read_with(k.as_str(), &placement);
    assert_eq!(early.0, a);
    table.try_flip(k.as_str(), 0).unwrap();

    // The commit hook: place, then drain (the early read holds the drain).
    placement.set(&k, b);
    {
        let mut drain = pin!(table.drain_reads(k.as_str()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(drain.as_mut().poll(&mut cx).is_pending());
        drop(early);
        assert!(drain.as_mut().poll(&mut cx).is_ready());
    }
    assert_eq!(table.read_with(k.as_str(), &placement).0, b);
    assert_eq!(table.read_with(k.as_str(), &forgetful).0, b, "forwarded");

    clock.advance(Duration::from_secs(10));
    assert_eq!(table.sweep_now(), 1);
    assert_eq!(table.route_read(k.as_str()), Route::Source);
    assert_eq!(table.read_with(k.as_str(), &placement).0, b);
    assert_eq!(
        table.read_with(k.as_str(), &forgetful).0,
        a,
        "without the placement the read goes back to the source"
    );
}

#[test]
fn snapshot_round_trips_through_json() {
    let placement = Placement::new(node("a"));
    for i in 0..200 {
        placement.set(
            &key(&format!("k{i:03}")),
            node(if i % 2 == 0 { "b" } else { "c" }),
        );
    }
    placement.set(&key("k000"), node("a"));
    let snapshot = placement.snapshot();
    assert_eq!(snapshot.version, PlacementSnapshot::VERSION);
    assert_eq!(snapshot.default, node("a"));
    assert_eq!(snapshot.nodes.len(), 199);
    let json = serde_json::to_string(&snapshot).unwrap();
    assert!(json.contains(r#""k001":"c""#), "{json}");
    let back: PlacementSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snapshot);
    let restored = Placement::restore(back);
    assert_eq!(restored.len(), 199);
    assert_eq!(restored.default_node(), node("a"));
    for i in 0..200 {
        let k = format!("k{i:03}");
        assert_eq!(restored.node_of(&k), placement.node_of(&k), "{k}");
    }
    assert_eq!(restored.snapshot(), snapshot);
}

/// Keys set and removed from several threads at once all land where the last call put them.
#[test]
fn concurrent_sets_and_lookups_agree() {
    let placement = Placement::new(node("a"));
    let (b, c) = (node("b"), node("c"));
    std::thread::scope(|s| {
        for t in 0..4 {
            let placement = &placement;
            s.spawn(move || {
                for i in 0..2000 {
                    let k = key(&format!("t{t}/k{i}"));
                    placement.set(&k, b);
                    assert_eq!(placement.node_of(k.as_str()), b);
                    if i % 2 == 0 {
                        placement.set(&k, c);
                    } else if i % 3 == 0 {
                        assert_eq!(placement.remove(k.as_str()), Some(b));
                    }
                }
            });
        }
    });
    let mut expected_len = 0;
    for t in 0..4 {
        for i in 0..2000 {
            let expected = match (i % 2, i % 3) {
                (0, _) => c,
                (_, 0) => node("a"),
                _ => b,
            };
            expected_len += usize::from(expected != node("a"));
            assert_eq!(placement.node_of(&format!("t{t}/k{i}")), expected);
        }
    }
    assert_eq!(placement.len(), expected_len);
}
