//! `tracing`: a span per job and per object, a debug event per object transition, warnings
//! for retries and failures. A minimal subscriber records what the engine emits.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_engine::Op;
use ferry_forwarding::Table;
use ferry_store::{Fault, FaultyStore, MemStore, Trigger};
use ferry_types::{CleanupPolicy, JobStatus, ObjectSelection};
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::util::*;

/// Fields of a span or an event, as text.
#[derive(Debug, Default, Clone)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

#[derive(Debug, Default)]
struct Recorded {
    spans: Vec<(&'static str, Fields)>,
    events: Vec<(Level, Fields)>,
}

/// Records every span and event, at every level.
#[derive(Debug, Default, Clone)]
struct Recorder {
    next: Arc<AtomicU64>,
    seen: Arc<Mutex<Recorded>>,
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Fields::default();
        span.record(&mut fields);
        self.seen
            .lock()
            .spans
            .push((span.metadata().name(), fields));
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.seen
            .lock()
            .events
            .push((*event.metadata().level(), fields));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[tokio::test(start_paused = true)]
async fn a_job_traces_a_span_per_object_and_an_event_per_transition() {
    const N: usize = 5;
    let recorder = Recorder::default();
    let _guard = tracing::dispatcher::set_default(&tracing::Dispatch::new(recorder.clone()));

    let source = filled(N);
    let target = FaultyStore::new(MemStore::new());
    // One object at a time: put 2 (key 1's) fails once and is retried as put 3; key 2's is
    // put 4; put 5 (key 3's) fails for good.
    target.inject(Op::Put, Trigger::Call(2), Fault::Transient);
    target.inject(Op::Put, Trigger::Call(5), Fault::Permanent);
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &Table::default(),
        mem_checkpoints(),
    );
    let plan = plan("traced", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(1).unwrap())
        .with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
    assert_eq!((snap.done_objects, snap.failed_objects), (4, 1));

    let seen = recorder.seen.lock();
    let jobs: Vec<_> = seen
        .spans
        .iter()
        .filter(|(name, _)| *name == "job")
        .collect();
    assert_eq!(jobs.len(), 1, "one span for the job");
    assert_eq!(jobs[0].1.0.get("job").map(String::as_str), Some("traced"));
    let objects: Vec<&str> = seen
        .spans
        .iter()
        .filter(|(name, _)| *name == "object")
        .filter_map(|(_, f)| f.0.get("key").map(String::as_str))
        .collect();
    let keys: Vec<String> = (0..N).map(|i| key(i).as_str().to_owned()).collect();
    assert_eq!(objects, keys, "one span per object, with its key");

    // Per object, its transitions as debug events, in protocol order.
    let states = |k: &str| -> Vec<String> {
        seen.events
            .iter()
            .filter(|(level, f)| {
                *level == Level::DEBUG && f.0.get("key").map(String::as_str) == Some(k)
            })
            .filter_map(|(_, f)| f.0.get("state").cloned())
            .map(|s| s.split([' ', '{']).next().unwrap_or_default().to_owned())
            .collect()
    };
    let moved = [
        "Copying",
        "Copied",
        "Verified",
        "Forwarded",
        "Cleaned",
        "Done",
    ];
    for i in [0, 2, 4] {
        assert_eq!(states(&keys[i]), moved, "transitions of {}", keys[i]);
    }
    // Key 1 was retried: its copy started over once.
    assert_eq!(states(&keys[1]).iter().filter(|s| *s == "Done").count(), 1);
    assert!(states(&keys[3]).last().is_some_and(|s| s == "Failed"));

    let warnings: Vec<&Fields> = seen
        .events
        .iter()
        .filter(|(level, _)| *level == Level::WARN)
        .map(|(_, f)| f)
        .collect();
    assert!(
        warnings.iter().any(|f| f.0.contains_key("attempt")),
        "a warning for the retry: {warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|f| f.0.get("key").map(String::as_str) == Some(keys[3].as_str())),
        "a warning for the failure: {warnings:?}"
    );
}
