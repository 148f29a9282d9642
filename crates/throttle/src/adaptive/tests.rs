use super::*;

const MIB: u64 = 1 << 20;

/// Round factors, for round figures.
fn config() -> Config {
    let mut config =
        Config::new(Duration::from_millis(100), MIB, Rate::Unlimited).initial(10 * MIB);
    config.latency_decrease = 0.8;
    config.overload_decrease = 0.5;
    config
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let c = Config::new(Duration::from_millis(250), MIB, Rate::Unlimited);
    assert_eq!(c.initial, 16 * MIB);
    assert_eq!(c.interval, Duration::from_secs(1));
    assert_eq!(
        (
            c.percentile,
            c.latency_decrease,
            c.overload_decrease,
            c.increase_fraction
        ),
        (0.9, 0.85, 0.7, 0.05)
    );
    assert_eq!(c.accelerate_after, 3);
}

fn ok(started: Instant, ms: u64) -> Observation {
    Observation::new(started, Duration::from_millis(ms), Outcome::Ok)
}

/// One interval of healthy traffic using the whole rate, ending at `at`.
fn healthy_second(c: &mut Controller, at: Instant) -> Option<u64> {
    let before = at - Duration::from_millis(1);
    c.observe(ok(before, 10), before);
    c.sent(c.rate(), at)
}

#[test]
fn percentile_is_the_nearest_rank() {
    let ms = |v: &[u64]| {
        v.iter()
            .map(|&m| Duration::from_millis(m))
            .collect::<Vec<_>>()
    };
    let cases: &[(&[u64], f64, Option<u64>)] = &[
        (&[], 0.9, None),
        (&[5], 0.9, Some(5)),
        (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9, Some(9)),
        (&[10, 9, 8, 7, 6, 5, 4, 3, 2, 1], 0.5, Some(5)),
        (&[1, 100], 0.9, Some(100)),
        (&[3, 1, 2], 0.0, Some(1)),
        (&[3, 1, 2], 1.0, Some(3)),
    ];
    for (samples, p, want) in cases {
        let got = percentile(&mut ms(samples), *p);
        assert_eq!(got, want.map(Duration::from_millis), "{samples:?} p{p}");
    }
}

#[test]
fn slow_start_doubles_a_used_rate_and_holds_an_unused_one() {
    let t0 = Instant::now();
    let mut c = Controller::new(config(), t0);
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(healthy_second(&mut c, t1), Some(20 * MIB));
    assert_eq!(c.last_change(), Some(Change::SlowStart));
    // Healthy, but a tenth of the rate used: the rate holds.
    let t2 = t1 + Duration::from_secs(1);
    c.observe(ok(t1, 10), t2 - Duration::from_millis(1));
    assert_eq!(c.sent(2 * MIB, t2), None);
    assert_eq!(c.rate(), 20 * MIB);
    // No latency observed at all: holds too.
    let t3 = t2 + Duration::from_secs(1);
    assert_eq!(c.sent(c.rate(), t3), None);
    assert_eq!(c.rate(), 20 * MIB);
}

#[test]
fn latency_over_the_threshold_decreases_then_the_increase_is_additive_accelerating_past_the_peak() {
    let t0 = Instant::now();
    let mut c = Controller::new(config(), t0);
    let mut t = t0 + Duration::from_secs(1);
    // p90 of ten samples is the 9th: two slow ones out of ten pass it.
    for ms in [10, 10, 10, 10, 10, 10, 10, 10, 300, 300] {
        c.observe(ok(t0, ms), t - Duration::from_millis(1));
    }
    assert_eq!(c.sent(c.rate(), t), Some(8 * MIB));
    assert_eq!(c.last_change(), Some(Change::Latency));
    // The step is 5% of the rate before the decrease (0.5 MiB/s); past that rate (10 MiB/s)
    // it doubles after three steps.
    let mut rates = Vec::new();
    for _ in 0..11 {
        t += Duration::from_secs(1);
        rates.push(healthy_second(&mut c, t).unwrap());
    }
    let half = MIB / 2;
    let want: Vec<u64> = [1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 17]
        .iter()
        .map(|steps| 8 * MIB + steps * half)
        .collect();
    assert_eq!(rates, want);
    assert_eq!(c.last_change(), Some(Change::Increase));
}

#[test]
fn an_overload_cuts_the_rate_at_once_but_at_most_once_per_interval() {
    let t0 = Instant::now();
    let mut c = Controller::new(config(), t0);
    let t = t0 + Duration::from_millis(200);
    let overloaded = |at| Observation::new(at, Duration::from_millis(5), Outcome::Overloaded);
    assert_eq!(c.observe(overloaded(t), t), Some(5 * MIB));
    assert_eq!(c.last_change(), Some(Change::Overload));
    // Another one, begun after the decrease, within the same interval: no second cut.
    let t = t + Duration::from_millis(500);
    assert_eq!(c.observe(overloaded(t), t), None);
    // One more interval on: cut again.
    let t = t + Duration::from_millis(600);
    assert_eq!(c.observe(overloaded(t), t), Some(5 * MIB / 2));
}

#[test]
fn what_began_before_a_decrease_is_not_counted_against_the_new_rate() {
    let t0 = Instant::now();
    let mut c = Controller::new(config(), t0);
    let cut = t0 + Duration::from_millis(100);
    c.observe(
        Observation::new(cut, Duration::ZERO, Outcome::Overloaded),
        cut,
    );
    assert_eq!(c.rate(), 5 * MIB);
    // Long after, operations begun before the cut report overloads and slow answers.
    let later = cut + Duration::from_secs(5);
    let stale = Observation::new(t0, Duration::from_secs(3), Outcome::Overloaded);
    assert_eq!(c.observe(stale, later), None);
    c.observe(ok(t0, 3000), later);
    assert_eq!(c.rate(), 5 * MIB);
    // A fresh, fast one in the next interval: the rate goes up.
    let next = later + Duration::from_secs(1);
    c.observe(ok(later, 10), next - Duration::from_millis(1));
    assert_eq!(c.sent(c.rate(), next), Some(5 * MIB + MIB / 2));
}

#[test]
fn other_failures_say_nothing_about_the_load() {
    let t0 = Instant::now();
    let mut c = Controller::new(config(), t0);
    let t = t0 + Duration::from_millis(10);
    let failed = Observation::new(t, Duration::from_secs(9), Outcome::Failed);
    assert_eq!(c.observe(failed, t), None);
    assert_eq!(c.rate(), 10 * MIB);
}

#[test]
fn the_rate_stays_between_the_floor_and_the_ceiling() {
    let t0 = Instant::now();
    let config = Config::new(
        Duration::from_millis(100),
        2 * MIB,
        "12MiB/s".parse().unwrap(),
    )
    .initial(100 * MIB);
    assert_eq!(config.initial, 12 * MIB);
    let mut c = Controller::new(config, t0);
    let mut t = t0;
    for _ in 0..20 {
        t += Duration::from_secs(1);
        c.observe(Observation::new(t, Duration::ZERO, Outcome::Overloaded), t);
        assert!(c.rate() >= 2 * MIB);
    }
    assert_eq!(c.rate(), 2 * MIB);
    for _ in 0..40 {
        t += Duration::from_secs(1);
        healthy_second(&mut c, t);
        assert!(c.rate() <= 12 * MIB);
    }
    assert_eq!(c.rate(), 12 * MIB);
    // A floor above the ceiling is the ceiling; a zero floor is one byte.
    let config = Config::new(
        Duration::from_millis(1),
        10 * MIB,
        "1MiB/s".parse().unwrap(),
    );
    assert_eq!((config.floor, config.initial), (MIB, MIB));
    assert_eq!(Config::new(Duration::ZERO, 0, Rate::Unlimited).floor, 1);
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_throttle_sets_the_throttles_rate_only_while_enabled() {
    let adaptive = AdaptiveThrottle::new(Throttle::new("7MiB/s".parse().unwrap()));
    let overloaded = || Observation::new(Instant::now(), Duration::ZERO, Outcome::Overloaded);
    adaptive.observe(overloaded());
    assert_eq!(adaptive.throttle().rate(), "7MiB/s".parse().unwrap());
    assert!(adaptive.controller().is_none());

    adaptive.enable(config());
    assert!(adaptive.is_enabled());
    // Decisions are applied to the throttle: the rate the job sees is the controller's.
    assert_eq!(adaptive.throttle().rate(), "10MiB/s".parse().unwrap());
    adaptive.observe(overloaded());
    assert_eq!(adaptive.throttle().rate(), "5MiB/s".parse().unwrap());
    assert_eq!(adaptive.controller().map(|c| c.rate()), Some(5 * MIB));

    adaptive.set_fixed("3MiB/s".parse().unwrap());
    assert!(!adaptive.is_enabled());
    tokio::time::advance(Duration::from_secs(2)).await;
    adaptive.observe(overloaded());
    assert_eq!(adaptive.throttle().rate(), "3MiB/s".parse().unwrap());
}
