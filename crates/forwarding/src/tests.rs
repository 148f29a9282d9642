//! Unit tests: small and table-driven.

use std::time::Duration;

use ferry_types::{NodeId, ObjectKey};

use crate::*;

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(name).unwrap()
}

fn manual_table() -> (Table, ManualClock) {
    let clock = ManualClock::new();
    let table = Table::new(
        Config::default()
            .with_clock(clock.clone())
            .with_sweep_interval(None)
            .with_default_ttl(Duration::from_secs(10)),
    );
    (table, clock)
}

#[test]
fn absent_key_routes_to_source() {
    let (table, _) = manual_table();
    assert_eq!(table.route_read("nothing"), Route::Source);
    assert!(table.is_empty());
    assert_eq!(table.stats().lookups, 1);
    assert_eq!(table.stats().hits, 0);
}

#[test]
fn i2_copying_reads_source_forwarded_reads_target() {
    let (table, _) = manual_table();
    let (a, b) = (node("a"), node("b"));
    table.register(&key("k"), a, b).unwrap();
    assert_eq!(table.route_read("k"), Route::Source);
    let g = table.generation("k").unwrap();
    table.try_flip("k", g).unwrap();
    assert_eq!(table.route_read("k"), Route::Target(b));
    assert_eq!(table.len(), 1);
    assert_eq!(table.stats().hits, 2);
}

#[test]
fn register_rejections() {
    let (table, _) = manual_table();
    let (a, b, c) = (node("a"), node("b"), node("c"));
    table.register(&key("moving"), a, b).unwrap();
    table.register(&key("moved"), a, b).unwrap();
    let g = table.generation("moved").unwrap();
    table.try_flip("moved", g).unwrap();
    let cases: Vec<(&str, NodeId, NodeId, Error)> = vec![
        (
            "x",
            a,
            a,
            Error::SameSourceAndTarget {
                key: "x".into(),
                node: a,
            },
        ),
        (
            "moving",
            a,
            c,
            Error::AlreadyMoving {
                key: "moving".into(),
                owner: None,
            },
        ),
        (
            "moved",
            c,
            a,
            Error::WrongSource {
                key: "moved".into(),
                expected: b,
                given: c,
            },
        ),
        (
            "moved",
            b,
            a,
            Error::Cycle {
                key: "moved".into(),
                target: a,
            },
        ),
    ];
    for (k, source, target, expected) in cases {
        assert_eq!(
            table.register(&key(k), source, target).unwrap_err(),
            expected,
            "{k}"
        );
    }
}

#[test]
fn chain_collapses_and_counts_hops() {
    let clock = ManualClock::new();
    let table = Table::new(
        Config::default()
            .with_clock(clock)
            .with_sweep_interval(None)
            .with_max_hops(2),
    );
    let (a, b, c, d) = (node("a"), node("b"), node("c"), node("d"));
    table.register(&key("k"), a, b).unwrap();
    table.try_flip("k", 0).unwrap();
    let reg = table.register(&key("k"), b, c).unwrap();
    assert_eq!((reg.hops, reg.source, reg.copy_from), (2, a, b));
    // While B→C copies, reads go to B, where the data is.
    assert_eq!(table.route_read("k"), Route::Target(b));
    let g = table.generation("k").unwrap();
    table.try_flip("k", g).unwrap();
    let info = table.get("k").unwrap();
    assert_eq!((info.source, info.target, info.hops), (a, c, 2));
    assert_eq!(table.route_read("k"), Route::Target(c));
    assert_eq!(
        table.register(&key("k"), c, d).unwrap_err(),
        Error::TooManyHops {
            key: "k".into(),
            hops: 3,
            max: 2
        }
    );
}

#[test]
fn i3_write_during_copy_refuses_flip() {
    let (table, _) = manual_table();
    table.register(&key("k"), node("a"), node("b")).unwrap();
    let g = table.generation("k").unwrap();
    let ticket = table.try_begin_write("k").unwrap();
    assert_eq!(ticket.route(), Route::Source);
    assert_eq!(
        table.try_flip("k", g),
        Err(Conflict::WritesInFlight { count: 1 })
    );
    drop(ticket);
    assert_eq!(
        table.try_flip("k", g),
        Err(Conflict::WritesSinceCopyBegan {
            observed: g,
            current: g + 2
        })
    );
    table.try_flip("k", g + 2).unwrap();
    assert_eq!(table.stats().flips_refused, 2);
    assert_eq!(table.stats().flips, 1);
}

#[test]
fn i3_write_started_before_copy_and_ended_during_it_refuses_flip() {
    let (table, _) = manual_table();
    table.register(&key("k"), node("a"), node("b")).unwrap();
    let ticket = table.try_begin_write("k").unwrap();
    let g = table.generation("k").unwrap(); // the copy begins while the write runs
    drop(ticket);
    assert!(matches!(
        table.try_flip("k", g),
        Err(Conflict::WritesSinceCopyBegan { .. })
    ));
}

#[test]
fn i3_write_started_before_register_refuses_flip() {
    let (table, _) = manual_table();
    let ticket = table.try_begin_write("k").unwrap(); // no entry yet: untracked
    table.register(&key("k"), node("a"), node("b")).unwrap();
    let g = table.generation("k").unwrap();
    assert!(matches!(
        table.try_flip("k", g),
        Err(Conflict::WritesInFlight { .. })
    ));
    drop(ticket);
    assert!(matches!(
        table.try_flip("k", g),
        Err(Conflict::WritesSinceCopyBegan { .. })
    ));
    let g = table.generation("k").unwrap();
    table.try_flip("k", g).unwrap();
}

#[test]
fn i3_write_in_flight_across_remove_and_reregister_refuses_flip() {
    let (table, _) = manual_table();
    table.register(&key("k"), node("a"), node("b")).unwrap();
    let ticket = table.try_begin_write("k").unwrap();
    assert!(table.remove("k"));
    table.register(&key("k"), node("a"), node("b")).unwrap();
    let g = table.generation("k").unwrap();
    assert!(table.try_flip("k", g).is_err());
    drop(ticket);
    assert!(table.try_flip("k", g).is_err());
    let g = table.generation("k").unwrap();
    table.try_flip("k", g).unwrap();
}

#[test]
fn flip_outcomes_for_absent_and_forwarded() {
    let (table, _) = manual_table();
    assert_eq!(table.try_flip("k", 0), Err(Conflict::NotFound));
    table.register(&key("k"), node("a"), node("b")).unwrap();
    table.try_flip("k", 0).unwrap();
    assert_eq!(
        table.try_flip("k", 0),
        Err(Conflict::NotMoving {
            state: EntryState::Forwarded
        })
    );
}

#[test]
fn forwarded_entry_expires_exactly_at_deadline() {
    let (table, clock) = manual_table();
    table.register(&key("k"), node("a"), node("b")).unwrap();
    clock.advance(Duration::from_secs(100)); // moving entries never expire
    assert_eq!(table.route_read("k"), Route::Source);
    assert_eq!(table.len(), 1);
    table.try_flip("k", 0).unwrap();
    clock.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert_eq!(table.route_read("k"), Route::Target(node("b")));
    clock.advance(Duration::from_nanos(1));
    assert_eq!(table.route_read("k"), Route::Source);
    assert_eq!(table.len(), 0);
    assert!(table.get("k").is_none());
    assert_eq!(table.sweep_now(), 1);
    assert_eq!(table.stats().expired, 1);
}

#[test]
fn set_ttl_restarts_the_deadline() {
    let (table, clock) = manual_table();
    table.register(&key("k"), node("a"), node("b")).unwrap();
    table.try_flip("k", 0).unwrap();
    clock.advance(Duration::from_secs(9));
    table.set_ttl("k", Duration::from_secs(10)).unwrap();
    clock.advance(Duration::from_secs(9));
    assert_eq!(table.route_read("k"), Route::Target(node("b")));
    assert_eq!(table.sweep_now(), 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(table.sweep_now(), 1);
}

#[test]
fn remove_by_source_removes_only_that_home() {
    let (table, _) = manual_table();
    for i in 0..100 {
        let home = if i % 3 == 0 { "a" } else { "c" };
        table
            .register(&key(&format!("k{i}")), node(home), node("b"))
            .unwrap();
    }
    assert_eq!(table.remove_by_source(node("a")), 34);
    assert_eq!(table.len(), 66);
    assert!(table.get("k0").is_none());
    assert!(table.get("k1").is_some());
}

#[test]
fn fence_and_unfence_transitions() {
    let (table, _) = manual_table();
    assert_eq!(table.fence("k"), Err(Error::NotFound { key: "k".into() }));
    table.register(&key("k"), node("a"), node("b")).unwrap();
    table.fence("k").unwrap();
    table.fence("k").unwrap();
    assert_eq!(table.try_begin_write("k").unwrap_err(), Fenced);
    assert_eq!(table.route_read("k"), Route::Source);
    table.unfence("k").unwrap();
    drop(table.try_begin_write("k").unwrap());
    table.fence("k").unwrap();
    let g = table.generation("k").unwrap();
    table.try_flip("k", g).unwrap();
    assert!(matches!(table.fence("k"), Err(Error::NotMoving { .. })));
    assert_eq!(table.stats().fences, 2);
}

#[test]
fn filter_rebuild_keeps_present_keys() {
    let (table, _) = manual_table();
    for i in 0..3000 {
        table
            .register(&key(&format!("k{i}")), node("a"), node("b"))
            .unwrap();
    }
    for i in 0..2900 {
        assert!(table.remove(&format!("k{i}")));
    }
    for i in 2900..3000 {
        table.try_flip(&format!("k{i}"), 0).unwrap();
        assert_eq!(table.route_read(&format!("k{i}")), Route::Target(node("b")));
    }
    assert_eq!(table.len(), 100);
}

#[test]
fn error_messages_are_lowercase_without_period() {
    let errors = [
        Error::AlreadyMoving {
            key: "k".into(),
            owner: None,
        },
        Error::NotFound { key: "k".into() },
        Error::FenceTimeout {
            key: "k".into(),
            waited: Duration::from_secs(5),
        },
    ];
    for error in errors {
        let text = error.to_string();
        assert!(text.starts_with(char::is_lowercase), "{text}");
        assert!(!text.ends_with('.'), "{text}");
    }
}

#[test]
fn i2_keys_inline_or_shared_route_flip_and_snapshot_alike() {
    // Around the inline capacity, and far beyond it (kept behind a pointer), plus unicode.
    let long = "x".repeat(crate::entry::INLINE_KEY_FOR_TESTS + 1);
    let names = [
        "k".to_owned(),
        "y".repeat(crate::entry::INLINE_KEY_FOR_TESTS),
        long.clone(),
        "z".repeat(1000),
        "ünïcødé/🦀/key".to_owned(),
    ];
    let (table, _) = manual_table();
    let (a, b) = (node("a"), node("b"));
    for name in &names {
        table.register(&key(name), a, b).unwrap();
        let g = table.generation(name).unwrap();
        table.try_flip(name, g).unwrap();
        assert_eq!(table.route_read(name), Route::Target(b), "{name}");
        // A key that differs only past the inline part is another key.
        let mut other = name.clone();
        other.push('!');
        assert_eq!(table.route_read(&other), Route::Source, "{other}");
        assert_eq!(table.get(name).unwrap().key.as_str(), name);
    }
    let restored = Table::restore(Config::default(), table.snapshot()).unwrap();
    for name in &names {
        assert_eq!(restored.route_read(name), Route::Target(b), "{name}");
    }
    assert!(table.remove(&long));
    assert_eq!(table.route_read(&long), Route::Source);
}

/// Entries carry the job that registered them: another job that meets the key while it
/// moves is refused with the owner named, and cannot remove the entry; the owner can, and a
/// chained move passes the entry to its new owner.
#[test]
fn entries_are_changed_and_removed_only_by_the_job_that_registered_them() {
    let (table, _) = manual_table();
    let (one, two) = (
        ferry_types::JobId::new("one").unwrap(),
        ferry_types::JobId::new("two").unwrap(),
    );
    table
        .register_for(&key("k"), node("a"), node("b"), &one)
        .unwrap();
    assert_eq!(table.get("k").unwrap().owner.as_ref(), Some(&one));
    let err = table
        .register_for(&key("k"), node("a"), node("b"), &two)
        .unwrap_err();
    assert_eq!(
        err,
        Error::AlreadyMoving {
            key: "k".into(),
            owner: Some(one.clone()),
        }
    );
    assert_eq!(err.to_string(), "key \"k\" is already moving (job one)");
    assert!(!table.remove_owned("k", &two), "not two's entry");
    assert_eq!(table.get("k").unwrap().owner.as_ref(), Some(&one));
    let g = table.generation("k").unwrap();
    table.try_flip("k", g).unwrap();
    assert!(!table.remove_owned("k", &two));
    assert_eq!(table.route_read("k"), Route::Target(node("b")));
    // A chained move b → c by job two: the entry is two's now.
    table
        .register_for(&key("k"), node("b"), node("c"), &two)
        .unwrap();
    assert_eq!(table.get("k").unwrap().owner.as_ref(), Some(&two));
    assert!(!table.remove_owned("k", &one));
    // Two gives its move up (a cancel): the key is forwarded to b again, one's entry.
    assert!(table.remove_owned("k", &two));
    assert_eq!(table.route_read("k"), Route::Target(node("b")));
    let info = table.get("k").unwrap();
    assert_eq!(
        (info.state, info.owner.as_ref()),
        (EntryState::Forwarded, Some(&one))
    );
    assert!(table.remove_owned("k", &one));
    assert_eq!(table.route_read("k"), Route::Source);
    // The snapshot keeps owners.
    table
        .register_for(&key("s"), node("a"), node("b"), &one)
        .unwrap();
    let restored = Table::restore(Config::default(), table.snapshot()).unwrap();
    assert_eq!(restored.get("s").unwrap().owner, Some(one));
}
