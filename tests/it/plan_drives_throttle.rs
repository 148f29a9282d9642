//! A plan as a user writes it (JSON, human rates) configures the throttle the engine will run
//! it under, and the throttle enforces exactly that rate.

use std::time::Duration;

use ferry::throttle::Throttle;
use ferry::types::{MigrationPlan, NodeId, ObjectSelection, Rate};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_rate_written_in_a_plan_is_the_rate_the_throttle_enforces() {
    let plan = MigrationPlan::new(
        NodeId::new("node-a").unwrap(),
        NodeId::new("node-b").unwrap(),
        ObjectSelection::Prefix("photos/".into()),
    )
    .with_rate("2MiB/s".parse().unwrap());
    // The plan survives a trip through its human-readable form, rate included.
    let json = serde_json::to_string(&plan).unwrap();
    assert!(json.contains("\"2MiB/s\""), "{json}");
    let plan: MigrationPlan = serde_json::from_str(&json).unwrap();
    plan.validate().unwrap();

    let throttle = Throttle::builder()
        .rate(plan.options.rate)
        .chunk_size(plan.options.chunk_size)
        .build()
        .unwrap();
    assert_eq!(throttle.rate(), Rate::bytes_per_sec(2 << 20).unwrap());
    assert_eq!(
        throttle.burst(),
        plan.options.chunk_size,
        "burst is at least one chunk"
    );

    // 20 MiB in chunks of the plan's size: 1 MiB passes at once (the burst), the other 19 MiB
    // take 9.5 s at 2 MiB/s.
    let start = Instant::now();
    let chunk = plan.options.chunk_size.as_u64();
    for _ in 0..(20 << 20) / chunk {
        throttle.acquire(chunk).await;
    }
    let took = Instant::now() - start;
    assert!(
        took >= Duration::from_millis(9_500) && took <= Duration::from_millis(9_510),
        "{took:?}"
    );
}

#[test]
fn a_bad_rate_in_a_plan_file_is_refused_naming_the_text() {
    let err = serde_json::from_str::<Rate>("\"50 parsecs/s\"").unwrap_err();
    assert!(err.to_string().contains("50 parsecs"), "{err}");
}
