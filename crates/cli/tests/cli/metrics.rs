//! `--metrics-addr`: the metrics of a running job, scraped over HTTP and read with a
//! Prometheus text-format parser (`prometheus-parse`), as a Prometheus server would.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};

use super::*;

/// The counters a dashboard plots, by name, for one job.
const COUNTERS: [&str; 5] = [
    "ferry_objects_done_total",
    "ferry_bytes_copied_total",
    "ferry_bytes_done_total",
    "ferry_objects_failed_total",
    "ferry_objects_copied_total",
];

/// `GET /metrics` on `addr`: the page, or `None` once nothing answers there (the command
/// ended). Panics on an answer that is not a 200 with the Prometheus text format.
fn get_metrics(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    // A connection the server closed as it stopped reads as nothing: the command ended.
    stream.read_to_string(&mut response).ok()?;
    if response.is_empty() {
        return None;
    }
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Some(body.to_owned())
}

fn parse(page: &str) -> Scrape {
    Scrape::parse(page.lines().map(|line| Ok(line.to_owned()))).expect("Prometheus text format")
}

/// The value of the counter or gauge `name` with the label `job` = `job`.
fn job_value(scrape: &Scrape, name: &str, job: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("job") == Some(job))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{name} is not a counter or gauge: {other:?}"),
        })
}

#[test]
fn metrics_addr_serves_counters_that_only_grow_and_end_at_the_jobs_figures() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    let (files, size) = (40u64, 64u64 << 10);
    flat_tree(&src, files as usize, size as usize);
    // 2.5 MiB at 512 KiB/s: about five seconds to scrape the job while it runs.
    let mut child = env
        .cmd()
        .args([
            "migrate",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--id",
            "met",
            "--rate",
            "512KiB",
            "--concurrency",
            "4",
            "--json",
            "--metrics-addr",
            "127.0.0.1:0",
            "--metrics-linger",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry starts");
    let stdout = line_channel(child.stdout.take().expect("piped stdout"));
    let stderr = line_channel(child.stderr.take().expect("piped stderr"));
    // Port 0: the address bound is said on stderr.
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr: SocketAddr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = stderr
            .recv_timeout(left)
            .expect("ferry says where it serves metrics");
        if let Some(url) = line.strip_prefix("ferry: metrics at http://") {
            let addr = url
                .strip_suffix("/metrics")
                .expect("the URL ends in /metrics");
            break addr.parse().expect("a socket address");
        }
    };
    assert_ne!(addr.port(), 0);

    // Scrape until the command has ended and stopped serving; with --metrics-linger it
    // serves until a scrape has read its final figures.
    let mut scrapes: Vec<Scrape> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(page) = get_metrics(addr) {
        scrapes.push(parse(&page));
        assert!(Instant::now() < deadline, "ferry still serves metrics");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 0);
    let done = wait_line(&stdout, Duration::from_secs(5), |v| v["event"] == "done");

    // Counters only grow, scrape after scrape.
    let mut last: BTreeMap<&str, f64> = BTreeMap::new();
    let mut mid_run = 0;
    for scrape in &scrapes {
        for name in COUNTERS {
            let Some(value) = job_value(scrape, name, "met") else {
                // Registered when the job starts: absent only before it.
                assert!(!last.contains_key(name), "{name} vanished");
                continue;
            };
            if let Some(before) = last.insert(name, value) {
                assert!(value >= before, "{name} went down from {before} to {value}");
            }
        }
        let done = job_value(scrape, "ferry_objects_done_total", "met").unwrap_or(0.0);
        mid_run += usize::from(done > 0.0 && done < files as f64);
    }
    assert!(
        scrapes.len() >= 3 && mid_run >= 1,
        "{} scrapes, {mid_run} of them while objects were moving",
        scrapes.len()
    );

    // The last scrape has the job's own figures: its record's, and the run's last line.
    let status = status_json(&env, "met");
    assert_eq!(status["status"], "completed");
    let end = scrapes.last().expect("scraped");
    let value = |name| job_value(end, name, "met").unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(
        value("ferry_objects_done_total"),
        status["done_objects"].as_f64().unwrap()
    );
    assert_eq!(value("ferry_objects_done_total"), files as f64);
    assert_eq!(
        value("ferry_bytes_done_total"),
        status["done_bytes"].as_f64().unwrap()
    );
    assert_eq!(
        value("ferry_objects_failed_total"),
        status["failed_objects"].as_f64().unwrap()
    );
    assert_eq!(
        value("ferry_bytes_copied_total"),
        done["bytes_copied"].as_f64().unwrap()
    );
    assert_eq!(value("ferry_bytes_copied_total"), (files * size) as f64);
    assert_eq!(value("ferry_objects_in_flight"), 0.0);
    assert_eq!(value("ferry_rate_bytes_per_second"), 512.0 * 1024.0);

    // Every store operation's latency is a Prometheus histogram labelled by node and op.
    let ops: Vec<(String, String, f64)> = end
        .samples
        .iter()
        .filter(|s| s.metric == "ferry_store_op_duration_seconds")
        .map(|s| match &s.value {
            Value::Histogram(buckets) => {
                let inf = buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .expect("a +Inf bucket");
                let node = s.labels.get("node").expect("a node label").to_owned();
                let op = s.labels.get("op").expect("an op label").to_owned();
                (node, op, inf.count)
            }
            other => panic!("ferry_store_op_duration_seconds is not a histogram: {other:?}"),
        })
        .collect();
    let count = |node: &str, op: &str| {
        ops.iter()
            .find(|(n, o, _)| n == node && o == op)
            .map_or(0.0, |(_, _, count)| *count)
    };
    // One put per file on DST (none refused here: nothing writes the tree meanwhile).
    assert_eq!(count("dst", "put"), files as f64, "{ops:?}");
    assert!(count("src", "get") >= files as f64, "{ops:?}");
    assert!(count("dst", "sync") >= 1.0, "{ops:?}");
    // The forwarding table's entries: every file flipped and still forwarded (TTL 24 h).
    let entries = end
        .samples
        .iter()
        .find(|s| s.metric == "ferry_forwarding_entries")
        .expect("ferry_forwarding_entries");
    assert_eq!(entries.value, Value::Gauge(files as f64));
}

#[test]
fn metrics_addr_that_is_busy_or_bad_is_a_clear_error_naming_it() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 2, 10);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("address").to_string();
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let out = env.run(&["migrate", s, d, "--metrics-addr", &addr]);
    assert_fails(&out, 1, &format!("cannot serve metrics on {addr}"));
    // Nothing moved: the address is checked before the job starts.
    assert!(!dst.join("f").exists(), "{}", text(&out));
    let out = env.run(&["migrate", s, d, "--metrics-addr", "not an address"]);
    assert_fails(&out, 2, "not an address to serve metrics on");
}
