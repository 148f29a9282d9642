//! A load generator for an S3 endpoint, over object_store's S3 client: GETs or PUTs of one
//! object size from N concurrent requests, for a time or a count; prints one JSON line with
//! the per-request latency (p50, p99, max) and the throughput. `cargo xtask bench serve` runs
//! it against `ferry serve` and against the `s3_server` example serving the same directory.
//!
//! ```sh
//! cargo run --release -p ferry-object-store --features aws --example s3_load -- \
//!     --endpoint http://127.0.0.1:9000 --bucket b --op fill --size 4KiB --keys g4k-:256
//! cargo run --release -p ferry-object-store --features aws --example s3_load -- \
//!     --endpoint http://127.0.0.1:9000 --bucket b --op get --size 4KiB --keys g4k-:256 \
//!     --concurrency 4 --duration 5s --warmup 1s
//! ```
//!
//! - `--op get` reads the keys `PREFIX00000000` … of `--keys PREFIX:N` round robin (written
//!   before, e.g. by `--op fill`), and checks each body's length against `--size`.
//! - `--op put` writes fresh keys, `PREFIX<run>-<n>` (`PREFIX` from `--keys`, its count
//!   unused), and deletes them after the measurement unless `--keep`.
//! - `--op fill` writes each key of the key set once (`--count` is N).
//!
//! Options: `--size` (bytes, or with `KiB`/`MiB`), `--concurrency` (requests in flight,
//! default 4), `--duration`/`--warmup` (seconds, `s` or `ms` suffix; requests started in the
//! warmup are not counted) or `--count` (requests), `--threads` (Tokio worker threads;
//! default 1, a current-thread runtime), `--access-key`/`--secret-key` (default:
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`), `--region` (default `us-east-1`),
//! `--sign-payload` (sign the body's SHA-256 instead of `UNSIGNED-PAYLOAD`).
//!
//! The generator keeps its own cost low: one runtime, one client (its connection pool reused
//! by every request), one pre-generated body shared by every PUT, GET bodies counted chunk by
//! chunk and dropped, no retries (a failure counts as an error, and its latency is not
//! recorded).
//!
//! Output fields: `op`, `size`, `concurrency`, `requests` (counted), `errors`, `seconds` (from
//! the end of the warmup to the last counted completion), `p50_us`, `p99_us`, `max_us`,
//! `mean_us`, `req_per_s`, `mib_per_s`. Exit status 1 when any request failed.
// An example: the JSON line goes to stdout, usage and errors to stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

const USAGE: &str = "usage: s3_load --endpoint URL --bucket NAME --op get|put|fill --keys PREFIX:N \
    [--size 4KiB] [--concurrency 4] [--duration 5s [--warmup 1s] | --count N] [--threads 1] \
    [--access-key K --secret-key S] [--region R] [--sign-payload] [--keep]";

/// How many failures are printed (all are counted).
const ERRORS_SHOWN: u64 = 5;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Put,
    Fill,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Fill => "fill",
        }
    }
}

/// When the measurement stops.
#[derive(Clone, Copy)]
enum Until {
    Time {
        warmup: Duration,
        duration: Duration,
    },
    Count(u64),
}

struct Args {
    endpoint: String,
    bucket: String,
    op: Op,
    size: usize,
    concurrency: usize,
    until: Until,
    prefix: String,
    keys: u64,
    threads: usize,
    access_key: String,
    secret_key: String,
    region: String,
    sign_payload: bool,
    keep: bool,
}

fn main() {
    let args = match parse(std::env::args().skip(1).collect()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("s3_load: {message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("s3_load: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            println!("{}", report.json);
            if report.errors > 0 {
                std::process::exit(1);
            }
        }
        Err(message) => {
            eprintln!("s3_load: {message}");
            std::process::exit(1);
        }
    }
}

struct Report {
    json: String,
    errors: u64,
}

/// What one worker saw: the latencies of its counted requests (µs), its failures, and when
/// its last counted request completed.
#[derive(Default)]
struct Seen {
    latencies: Vec<u32>,
    errors: u64,
    last_done: Option<Instant>,
}

async fn run(args: Args) -> Result<Report, String> {
    let options = ClientOptions::new()
        .with_allow_http(true)
        .with_timeout(Duration::from_secs(60))
        .with_pool_max_idle_per_host(args.concurrency.max(1) * 2);
    let retry = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(&args.endpoint)
            .with_virtual_hosted_style_request(false)
            .with_region(&args.region)
            .with_bucket_name(&args.bucket)
            .with_access_key_id(&args.access_key)
            .with_secret_access_key(&args.secret_key)
            .with_unsigned_payload(!args.sign_payload)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| format!("S3 client: {e}"))?,
    );
    let args = Arc::new(args);
    let body = Bytes::from(payload(args.size));
    // Fresh PUT keys: unique to this run (pid and clock), so that no run overwrites another.
    let run_id = format!(
        "{}{:x}-{:x}",
        args.prefix,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (counted_from, stop_at) = match args.until {
        Until::Time { warmup, duration } => (start + warmup, Some(start + warmup + duration)),
        Until::Count(_) => (start, None),
    };
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (store, args, body, next, run_id) = (
            store.clone(),
            args.clone(),
            body.clone(),
            next.clone(),
            run_id.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let began = Instant::now();
                match (args.until, stop_at) {
                    (Until::Count(count), _) if n >= count => break,
                    (_, Some(stop)) if began >= stop => break,
                    _ => {}
                }
                let result = match args.op {
                    Op::Get => get(&*store, &key(&args.prefix, n % args.keys), args.size).await,
                    Op::Put => put(&*store, &format!("{run_id}-{n}"), &body).await,
                    Op::Fill => put(&*store, &key(&args.prefix, n), &body).await,
                };
                let done = Instant::now();
                match result {
                    Ok(()) if began >= counted_from => {
                        let micros = done.duration_since(began).as_micros();
                        seen.latencies
                            .push(u32::try_from(micros).unwrap_or(u32::MAX));
                        seen.last_done = Some(done);
                    }
                    Ok(()) => {}
                    Err(message) => {
                        if began >= counted_from {
                            seen.errors += 1;
                        }
                        if seen.errors <= ERRORS_SHOWN {
                            eprintln!("s3_load: {} {n}: {message}", args.op.name());
                        }
                    }
                }
            }
            seen
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut last_done = counted_from;
    for worker in workers {
        let seen = worker.await.map_err(|e| format!("a worker failed: {e}"))?;
        latencies.extend(seen.latencies);
        errors += seen.errors;
        last_done = last_done.max(seen.last_done.unwrap_or(counted_from));
    }
    let issued = next.load(Ordering::Relaxed);
    if args.op == Op::Put && !args.keep {
        delete_put_keys(&*store, &run_id, issued).await;
    }
    let seconds = last_done.duration_since(counted_from).as_secs_f64();
    Ok(Report {
        json: summary(&args, &mut latencies, errors, seconds),
        errors,
    })
}

/// `PREFIX` and `n` as the key set names its keys: `PREFIX00000042`.
fn key(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:08}")
}

async fn get(store: &dyn ObjectStore, key: &str, size: usize) -> Result<(), String> {
    let result = store
        .get(&Path::from(key))
        .await
        .map_err(|e| format!("{key}: {e}"))?;
    let mut body = result.into_stream();
    let mut len = 0;
    while let Some(chunk) = body.next().await {
        len += chunk.map_err(|e| format!("{key}: body: {e}"))?.len();
    }
    if len == size {
        Ok(())
    } else {
        Err(format!("{key}: {len} bytes, expected {size}"))
    }
}

async fn put(store: &dyn ObjectStore, key: &str, body: &Bytes) -> Result<(), String> {
    store
        .put(&Path::from(key), PutPayload::from_bytes(body.clone()))
        .await
        .map(|_| ())
        .map_err(|e| format!("{key}: {e}"))
}

/// Deletes the keys this run's PUTs wrote (`issued` names were handed out; the ones never
/// written are absent, which S3 does not count as a failure), in batches (DeleteObjects).
/// Untimed; failures are printed.
async fn delete_put_keys(store: &dyn ObjectStore, run_id: &str, issued: u64) {
    let run_id = run_id.to_owned();
    let paths = futures_util::stream::iter(0..issued)
        .map(move |n| Ok(Path::from(format!("{run_id}-{n}"))))
        .boxed();
    let mut deleted = store.delete_stream(paths);
    let mut failed = 0u64;
    while let Some(result) = deleted.next().await {
        if let Err(e) = result
            && !matches!(e, object_store::Error::NotFound { .. })
        {
            failed += 1;
            if failed <= ERRORS_SHOWN {
                eprintln!("s3_load: cleanup: {e}");
            }
        }
    }
    if failed > 0 {
        eprintln!("s3_load: cleanup: {failed} keys left");
    }
}

/// The JSON line: percentiles by nearest rank over the counted latencies.
fn summary(args: &Args, latencies: &mut [u32], errors: u64, seconds: f64) -> String {
    latencies.sort_unstable();
    let rank = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[i - 1]
    };
    let n = latencies.len() as u64;
    let mean = if n == 0 {
        0.0
    } else {
        latencies.iter().map(|&l| f64::from(l)).sum::<f64>() / n as f64
    };
    let per_s = if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    };
    format!(
        "{{\"op\":\"{}\",\"size\":{},\"concurrency\":{},\"requests\":{n},\"errors\":{errors},\
         \"seconds\":{seconds:.3},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"mean_us\":{mean:.0},\
         \"req_per_s\":{per_s:.1},\"mib_per_s\":{:.2}}}",
        args.op.name(),
        args.size,
        args.concurrency,
        rank(0.50),
        rank(0.99),
        latencies.last().copied().unwrap_or(0),
        per_s * args.size as f64 / f64::from(1u32 << 20),
    )
}

/// `len` bytes that do not compress (xorshift), made once before the measurement.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn parse(argv: Vec<String>) -> Result<Args, String> {
    let mut endpoint = None;
    let mut bucket = None;
    let mut op = None;
    let mut size = 4096;
    let mut concurrency = 4;
    let mut duration = None;
    let mut warmup = Duration::ZERO;
    let mut count = None;
    let mut keys = None;
    let mut threads = 1;
    let mut access_key = std::env::var("AWS_ACCESS_KEY_ID").ok();
    let mut secret_key = std::env::var("AWS_SECRET_ACCESS_KEY").ok();
    let mut region = "us-east-1".to_owned();
    let mut sign_payload = false;
    let mut keep = false;
    let mut argv = argv.into_iter();
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--sign-payload" => {
                sign_payload = true;
                continue;
            }
            "--keep" => {
                keep = true;
                continue;
            }
            "-h" | "--help" => return Err("help".to_owned()),
            _ => {}
        }
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag} {value}: not understood");
        match flag.as_str() {
            "--endpoint" => endpoint = Some(value),
            "--bucket" => bucket = Some(value),
            "--op" => {
                op = Some(match value.as_str() {
                    "get" => Op::Get,
                    "put" => Op::Put,
                    "fill" => Op::Fill,
                    _ => return Err(bad()),
                });
            }
            "--size" => size = parse_size(&value).ok_or_else(bad)?,
            "--concurrency" => concurrency = value.parse().map_err(|_| bad())?,
            "--duration" => duration = Some(parse_duration(&value).ok_or_else(bad)?),
            "--warmup" => warmup = parse_duration(&value).ok_or_else(bad)?,
            "--count" => count = Some(value.parse().map_err(|_| bad())?),
            "--keys" => {
                let (prefix, n) = value.rsplit_once(':').ok_or_else(bad)?;
                let n: u64 = n.parse().map_err(|_| bad())?;
                keys = Some((prefix.to_owned(), n));
            }
            "--threads" => threads = value.parse().map_err(|_| bad())?,
            "--access-key" => access_key = Some(value),
            "--secret-key" => secret_key = Some(value),
            "--region" => region = value,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let op = op.ok_or("--op is required")?;
    let (prefix, keys) = keys.ok_or("--keys PREFIX:N is required")?;
    if concurrency == 0 || (op != Op::Put && keys == 0) {
        return Err("--concurrency and the key count must be at least 1".to_owned());
    }
    let until = match (op, duration, count) {
        (Op::Fill, None, None) => Until::Count(keys),
        (Op::Fill, _, _) => {
            return Err("--op fill writes the key set once: no --duration or --count".to_owned());
        }
        (_, Some(duration), None) => Until::Time { warmup, duration },
        (_, None, Some(count)) => Until::Count(count),
        _ => return Err("give one of --duration and --count".to_owned()),
    };
    Ok(Args {
        endpoint: endpoint.ok_or("--endpoint is required")?,
        bucket: bucket.ok_or("--bucket is required")?,
        op,
        size,
        concurrency,
        until,
        prefix,
        keys,
        threads,
        access_key: access_key.ok_or("--access-key or AWS_ACCESS_KEY_ID is required")?,
        secret_key: secret_key.ok_or("--secret-key or AWS_SECRET_ACCESS_KEY is required")?,
        region,
        sign_payload,
        keep,
    })
}

/// `4096`, `4KiB`, `1MiB`.
fn parse_size(text: &str) -> Option<usize> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let n: usize = number.parse().ok()?;
    let unit = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// `5s`, `1.5s`, `500ms`.
fn parse_duration(text: &str) -> Option<Duration> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    let secs: f64 = text.strip_suffix('s').unwrap_or(text).parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}
