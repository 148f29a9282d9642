//! The adaptive throttle against a simulated target whose latency rises past a knee and
//! which answers `SlowDown` beyond it, on a paused clock.

mod sim;

use std::time::Duration;

use ferry_types::Rate;
use sim::{Mode, default_config, judge_knee_drop, knee_drop, mean_rate, run};

#[tokio::test(start_paused = true)]
async fn the_rate_converges_near_the_knee_backs_off_when_it_drops_and_recovers() {
    let config = default_config();
    let samples = run(knee_drop(), Mode::Adaptive(config), 150).await;
    let failed = judge_knee_drop(&samples, config.max_latency);
    assert!(
        failed.is_empty(),
        "{failed:#?}\n{}",
        sim::table(&samples, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_controller_that_never_decreases_fails_the_same_checks() {
    let mut config = default_config();
    config.latency_decrease = 1.0;
    config.overload_decrease = 1.0;
    let samples = run(knee_drop(), Mode::Adaptive(config), 150).await;
    let failed = judge_knee_drop(&samples, config.max_latency);
    assert!(failed.len() >= 3, "{failed:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_fixed_rate_above_the_lower_knee_fails_the_same_checks() {
    let samples = run(knee_drop(), Mode::Fixed("100MiB/s".parse().unwrap()), 150).await;
    let failed = judge_knee_drop(&samples, Duration::from_millis(250));
    assert!(!failed.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_rate_stays_within_the_ceiling_and_the_floor() {
    // A ceiling below the knee: the rate climbs to it and stays there.
    let ceiling: Rate = "40MiB/s".parse().unwrap();
    let config =
        ferry_throttle::adaptive::Config::new(Duration::from_millis(250), 1 << 20, ceiling);
    let samples = run(knee_drop(), Mode::Adaptive(config), 50).await;
    assert!(
        samples.iter().all(|s| s.rate <= 40.0),
        "{}",
        sim::table(&samples, 1)
    );
    assert!((mean_rate(&samples, 20, 50) - 40.0).abs() < 0.01);
    // A target far below the floor: the rate stops at the floor, never at zero.
    let floor = 4 << 20;
    let config =
        ferry_throttle::adaptive::Config::new(Duration::from_millis(250), floor, Rate::Unlimited);
    let samples = run(vec![(0, 1.0)], Mode::Adaptive(config), 30).await;
    assert!(
        samples.iter().all(|s| s.rate >= 4.0),
        "{}",
        sim::table(&samples, 1)
    );
    assert!(mean_rate(&samples, 20, 30) < 4.01);
}
