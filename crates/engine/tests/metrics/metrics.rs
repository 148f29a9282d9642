//! What a job records through the `metrics` facade: its objects and bytes by step, its
//! retries and its in-flight gauge (label `job`), and each store operation's latency and
//! errors (labels `node`, `op`), checked against the job's own snapshot.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use ferry_engine::Op;
use ferry_engine::metrics as names;
use ferry_forwarding::Table;
use ferry_store::{Fault, FaultyStore, MemStore, Trigger};
use ferry_types::{CleanupPolicy, JobStatus, ObjectSelection};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

use crate::util::*;

/// A metric's name and its labels, sorted, as `name{k=v,…}`.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

#[tokio::test(start_paused = true)]
async fn a_job_records_its_objects_bytes_retries_and_store_operations() {
    const N: usize = 5;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let source = filled(N);
    let target = FaultyStore::new(MemStore::new());
    // One object at a time: put 2 (key 1's) fails once and is retried as put 3; put 5
    // (key 3's) fails for good.
    target.inject(Op::Put, Trigger::Call(2), Fault::Transient);
    target.inject(Op::Put, Trigger::Call(5), Fault::Permanent);
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &Table::default(),
        mem_checkpoints(),
    );
    let plan = plan("metered", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(1).unwrap())
        .with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
    assert_eq!((snap.done_objects, snap.failed_objects), (4, 1));

    let values: HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            (series(key.name(), &labels), value)
        })
        .collect();
    let job = [("job", "metered")];
    let counter = |name: &str, labels: &[(&str, &str)]| match values.get(&series(name, labels)) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{} is {other:?}", series(name, labels)),
    };
    let gauge = |name: &str, labels: &[(&str, &str)]| match values.get(&series(name, labels)) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{} is {other:?}", series(name, labels)),
    };
    let samples = |name: &str, labels: &[(&str, &str)]| match values.get(&series(name, labels)) {
        Some(DebugValue::Histogram(samples)) => samples.len(),
        other => panic!("{} is {other:?}", series(name, labels)),
    };

    // The job's counters end at its snapshot's figures.
    assert_eq!(counter(names::OBJECTS_DONE, &job), snap.done_objects);
    assert_eq!(counter(names::BYTES_DONE, &job), snap.done_bytes);
    assert_eq!(counter(names::OBJECTS_FAILED, &job), snap.failed_objects);
    assert_eq!(counter(names::OBJECTS_SKIPPED, &job), 0);
    assert_eq!(counter(names::BYTES_COPIED, &job), snap.bytes_copied);
    let done_bytes: usize = [0, 1, 2, 4].iter().map(|&i| content(i).len()).sum();
    assert_eq!(snap.done_bytes, done_bytes as u64);
    // Each step of the four objects that moved, once: key 1's copy reached the target once,
    // on its retry; key 3's never did.
    for name in [
        names::OBJECTS_COPIED,
        names::OBJECTS_VERIFIED,
        names::OBJECTS_FORWARDED,
        names::OBJECTS_CLEANED,
    ] {
        assert_eq!(counter(name, &job), 4, "{name}");
    }
    assert_eq!(counter(names::RETRIES, &job), 1);
    assert_eq!(counter(names::FLIPS_REFUSED, &job), 0);
    assert_eq!(gauge(names::OBJECTS_IN_FLIGHT, &job), 0.0);
    // Unlimited.
    assert_eq!(gauge(names::RATE, &job), 0.0);

    // Store operations by node and op: six puts on b (one per object, and key 1's retry),
    // two of them errors; a get per copy and a delete per cleaned source on a.
    let b_put = [("node", "b"), ("op", "put")];
    assert_eq!(samples(names::STORE_OP_DURATION, &b_put), 6);
    assert_eq!(counter(names::STORE_OP_ERRORS, &b_put), 2);
    let a_delete = [("node", "a"), ("op", "delete")];
    assert_eq!(samples(names::STORE_OP_DURATION, &a_delete), 4);
    assert_eq!(counter(names::STORE_OP_ERRORS, &a_delete), 0);
    let a_get = [("node", "a"), ("op", "get")];
    assert!(samples(names::STORE_OP_DURATION, &a_get) >= 5);
    assert!(samples(names::STORE_OP_DURATION, &[("node", "b"), ("op", "sync")]) >= 1);
}
