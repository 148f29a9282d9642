//! End-to-end tests of `--rate auto`: a migration whose rate follows DST's health shows it in
//! its progress lines and `status`, takes `set-rate auto` and a fixed rate from another shell,
//! and refuses a malformed ceiling or latency.
//!
//! Nothing sleeps to let things happen: a test reads the child's JSON lines until a marker.

use super::*;

#[test]
fn an_auto_rate_shows_in_progress_and_status_and_set_rate_switches_it() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 64, 64 << 10);
    // A ceiling low enough that the job is still running when the checks below are made.
    let (mut child, rx) = env.spawn(&[
        "migrate",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--id",
        "auto",
        "--rate",
        "auto:256KiB",
        "--max-latency",
        "2s",
        "--json",
    ]);
    let progress = wait_line(&rx, Duration::from_secs(30), |v| v["event"] == "progress");
    assert_eq!(progress["adaptive_rate"], true, "{progress}");
    let status = status_json(&env, "auto");
    assert_eq!(status["snapshot"]["adaptive_rate"], true, "{status}");
    let rate: ferry::types::Rate = status["snapshot"]["effective_rate"]
        .as_str()
        .expect("a rate")
        .parse()
        .expect("a rate's text");
    // The controller starts at 16 × the floor (1 MiB/s), held to the ceiling; a floor above
    // the ceiling counts as the ceiling, so the rate stays there.
    assert_eq!(rate, "256KiB/s".parse().unwrap(), "{status}");
    let out = env.run(&["status", "auto"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rate:      auto (follows DST's health)"),
        "{}",
        text(&out)
    );

    // From another shell: a fixed rate, then auto again.
    let out = env.run(&["set-rate", "auto", "300KiB"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status = status_json(&env, "auto");
    assert_eq!(status["snapshot"]["adaptive_rate"], false, "{status}");
    assert_eq!(status["snapshot"]["effective_rate"], "300KiB/s", "{status}");
    let out = env.run(&["set-rate", "auto", "auto"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rate set to auto"),
        "{}",
        text(&out)
    );
    assert_eq!(status_json(&env, "auto")["snapshot"]["adaptive_rate"], true);

    assert_eq!(wait_exit(&mut child, Duration::from_secs(120)), 0);
    assert_same_files(&src, &dst);
}

#[test]
fn a_bad_auto_rate_or_max_latency_is_a_usage_error() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 1, 16);
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    for (args, needle) in [
        (vec!["migrate", s, d, "--rate", "auto:0"], "auto:0"),
        (vec!["migrate", s, d, "--rate", "automatic"], "automatic"),
        (
            vec!["migrate", s, d, "--rate", "auto", "--max-latency", "0s"],
            "max latency",
        ),
        (
            vec!["migrate", s, d, "--rate", "auto", "--max-latency", "fast"],
            "fast",
        ),
        (vec!["set-rate", "ghost", "auto:x"], "auto:x"),
    ] {
        let out = env.run(&args);
        assert_fails(&out, 2, needle);
    }
    assert!(!dst.exists(), "a refused command wrote DST");
}

#[test]
fn plan_with_an_auto_rate_estimates_at_its_ceiling() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 4, 1 << 20);
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let out = env.run(&["plan", s, d, "--rate", "auto:1MiB"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("at auto:1MiB/s: about 4s at the ceiling"),
        "{}",
        text(&out)
    );
    let out = env.run(&["plan", s, d, "--rate", "auto"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rate: auto"),
        "{}",
        text(&out)
    );
}
