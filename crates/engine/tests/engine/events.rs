//! The events stream: per-object transitions in protocol order (SPEC §2, §6).

use ferry_forwarding::Table;
use ferry_store::MemStore;
use ferry_types::{CleanupPolicy, JobStatus, ObjectSelection, ObjectState, VerifyMode};
use tokio::sync::broadcast::error::TryRecvError;

use crate::util::*;

async fn events_of_one_object(cleanup: CleanupPolicy) -> Vec<ObjectState> {
    let (source, target, table) = (filled(1), MemStore::new(), Table::default());
    let engine = mem_engine(&source, &target, &table);
    let plan = plan("events", ObjectSelection::Keys(vec![key(0)]))
        .with_verify(VerifyMode::Checksum)
        .with_cleanup(cleanup);
    // A current-thread runtime: the runner does not run before this test awaits, so the
    // receiver exists before the first transition.
    let handle = engine.start(plan).await.unwrap();
    let mut events = handle.events();
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    let mut states = Vec::new();
    let mut last_at = std::time::Duration::ZERO;
    loop {
        match events.try_recv() {
            Ok(event) => {
                assert_eq!(event.key, key(0));
                assert!(event.at >= last_at, "times never go back");
                last_at = event.at;
                states.push(event.state);
            }
            Err(TryRecvError::Closed | TryRecvError::Empty) => break,
            Err(err) => panic!("{err}"),
        }
    }
    states
}

fn assert_protocol_order(states: &[ObjectState]) {
    let mut from = ObjectState::Pending;
    for next in states {
        assert!(
            from.can_move_to(next),
            "{from} -> {next} is not a protocol move (all: {states:?})"
        );
        from = next.clone();
    }
}

#[tokio::test]
async fn events_of_one_object_follow_the_protocol_through_cleanup() {
    let states = events_of_one_object(CleanupPolicy::AfterVerify).await;
    assert_eq!(
        states,
        [
            ObjectState::Copying,
            ObjectState::Copied,
            ObjectState::Verified,
            ObjectState::Forwarded,
            ObjectState::Cleaned,
            ObjectState::Done,
        ]
    );
    assert_protocol_order(&states);
}

#[tokio::test]
async fn events_without_cleanup_go_from_forwarded_to_done() {
    let states = events_of_one_object(CleanupPolicy::Never).await;
    assert_eq!(
        states,
        [
            ObjectState::Copying,
            ObjectState::Copied,
            ObjectState::Verified,
            ObjectState::Forwarded,
            ObjectState::Done,
        ]
    );
    assert_protocol_order(&states);
}
