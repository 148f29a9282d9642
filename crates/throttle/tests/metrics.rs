//! The throttle's rate and waits through the `metrics` facade, on tokio's paused clock.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use ferry_throttle::{Throttle, metric_names};
use ferry_types::{ByteSize, Rate};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The series with the label `job` = `t`, by name.
fn values(snapshotter: &Snapshotter) -> HashMap<String, DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key()
                .labels()
                .any(|l| l.key() == "job" && l.value() == "t")
        })
        .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_rate_is_a_gauge_and_only_acquires_that_wait_record_their_wait() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let throttle = Throttle::builder()
        .rate(Rate::bytes_per_sec(1000).unwrap())
        .burst(ByteSize(100))
        .metric_label("job", "t")
        .build()
        .unwrap();
    let rate = |values: &HashMap<String, DebugValue>| match values.get(metric_names::RATE) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{other:?}"),
    };
    let waits = |values: &HashMap<String, DebugValue>| match values.get(metric_names::WAIT) {
        Some(DebugValue::Histogram(samples)) => samples.iter().map(|s| s.into_inner()).collect(),
        None => Vec::new(),
        other => panic!("{other:?}"),
    };

    // The burst passes at once: no wait recorded.
    throttle.acquire(100).await;
    let seen = values(&snapshotter);
    assert_eq!(rate(&seen), 1000.0);
    assert!(waits(&seen).is_empty(), "{:?}", waits(&seen));

    // The next 100 bytes wait a tenth of a second at 1000 B/s.
    throttle.acquire(100).await;
    let recorded: Vec<f64> = waits(&values(&snapshotter));
    assert_eq!(recorded.len(), 1);
    assert!((recorded[0] - 0.1).abs() < 0.01, "{recorded:?}");

    // A new rate is the gauge's at once; unlimited is 0.
    throttle.set_rate(Rate::bytes_per_sec(2000).unwrap());
    assert_eq!(rate(&values(&snapshotter)), 2000.0);
    throttle.set_rate(Rate::Unlimited);
    assert_eq!(rate(&values(&snapshotter)), 0.0);
}
