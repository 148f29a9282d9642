//! How a running job is shown: a progress bar on a terminal, periodic plain lines otherwise,
//! JSON lines with `--json`, nothing with `--quiet`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use ferry::types::{JobSnapshot, format_duration};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cli::OutputArgs;

/// The display of one run.
pub(crate) enum Display {
    Quiet,
    Json,
    Plain { last: Option<Instant> },
    Bar(ProgressBar),
}

/// How often plain lines are printed.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

impl Display {
    pub(crate) fn new(output: OutputArgs) -> Display {
        if output.quiet {
            Display::Quiet
        } else if output.json {
            Display::Json
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            Display::Bar(bar)
        } else {
            // The first line comes one period in: a short job prints only its summary.
            Display::Plain {
                last: Some(Instant::now()),
            }
        }
    }

    pub(crate) fn is_json(&self) -> bool {
        matches!(self, Display::Json)
    }

    pub(crate) fn is_quiet(&self) -> bool {
        matches!(self, Display::Quiet)
    }

    /// A line of human text (not in JSON or quiet mode), above the bar when there is one.
    pub(crate) fn say(&self, text: &str) {
        match self {
            Display::Quiet | Display::Json => {}
            Display::Plain { .. } => println!("{text}"),
            Display::Bar(bar) => bar.println(text),
        }
    }

    /// A JSON event line (only in JSON mode).
    pub(crate) fn event(&self, value: serde_json::Value) {
        if let Display::Json = self {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }

    /// Shows the job's progress now (`force`: even if a plain line was printed recently).
    pub(crate) fn progress(&mut self, snap: &JobSnapshot, totals: Totals, force: bool) {
        match self {
            Display::Quiet => {}
            Display::Json => {
                let mut value = json!({"event": "progress"});
                merge(&mut value, snapshot_json(snap, totals));
                self.event(value);
            }
            Display::Plain { last } => {
                if force || last.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
                    *last = Some(Instant::now());
                    println!("{}", line(snap, totals));
                    let _ = std::io::stdout().flush();
                }
            }
            Display::Bar(bar) => {
                if let Some(total) = totals.bytes {
                    bar.set_length(total.max(1));
                    bar.set_position(snap.done_bytes.min(total));
                }
                bar.set_message(line(snap, totals));
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// The job's size as the scan of SRC found it (objects already done included).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    pub(crate) objects: Option<u64>,
    pub(crate) bytes: Option<u64>,
}

/// `120/10000 objects, 7.5MiB/625MiB, 48.2MiB/s, ETA 12s, 0 failed`.
pub(crate) fn line(snap: &JobSnapshot, totals: Totals) -> String {
    let objects = match totals.objects.or(snap.total_objects) {
        Some(total) => format!("{}/{} objects", snap.done_objects, total),
        None => format!("{} objects", snap.done_objects),
    };
    let bytes = match totals.bytes {
        Some(total) => format!("{}/{}", size(snap.done_bytes), size(total)),
        None => size(snap.done_bytes),
    };
    let eta = eta(snap, totals)
        .map(|d| format!(", ETA {}", format_duration(d)))
        .unwrap_or_default();
    format!(
        "{} {objects}, {bytes}, {}/s{eta}, {} failed",
        snap.status,
        size(snap.throughput),
        snap.failed_objects
    )
}

/// The time left from the scan's total and the throughput so far.
pub(crate) fn eta(snap: &JobSnapshot, totals: Totals) -> Option<Duration> {
    let left = totals.bytes?.saturating_sub(snap.done_bytes);
    if left == 0 {
        return Some(Duration::ZERO);
    }
    JobSnapshot::estimate_eta(left, snap.throughput)
        .map(|d| Duration::from_secs(d.as_secs().max(1)))
}

/// A byte count in binary units, e.g. `7.5MiB`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else if value >= 100.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// A snapshot as JSON, with the totals from the scan.
pub(crate) fn snapshot_json(snap: &JobSnapshot, totals: Totals) -> serde_json::Value {
    let mut value = serde_json::to_value(snap).unwrap_or_else(|_| json!({}));
    if let Some(obj) = value.as_object_mut() {
        if obj.get("total_objects").is_none_or(|v| v.is_null()) {
            obj.insert("total_objects".into(), json!(totals.objects));
        }
        if obj.get("total_bytes").is_none_or(|v| v.is_null()) {
            obj.insert("total_bytes".into(), json!(totals.bytes));
        }
        obj.insert(
            "eta_secs".into(),
            json!(eta(snap, totals).map(|d| d.as_secs())),
        );
    }
    value
}

/// Adds the fields of `extra` to `value` (both objects).
pub(crate) fn merge(value: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(obj), serde_json::Value::Object(extra)) = (value.as_object_mut(), extra) {
        obj.extend(extra);
    }
}
