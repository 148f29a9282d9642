//! How a running job is shown: a progress bar on a terminal, periodic plain lines otherwise,
//! JSON lines with `--json`, nothing with `--quiet`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use ferry::types::{JobSnapshot, format_duration};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

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
    pub(crate) fn event(&self, event: impl Serialize) {
        if let Display::Json = self {
            // Every event is plain data (strings, numbers, maps with string keys): it always
            // serializes; an error would only drop the line.
            let Ok(line) = serde_json::to_string(&event) else {
                return;
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    /// Shows the job's progress now (`force`: even if a plain line was printed recently).
    pub(crate) fn progress(&mut self, snap: &JobSnapshot, totals: Totals, force: bool) {
        match self {
            Display::Quiet => {}
            Display::Json => self.event(SnapshotEvent {
                event: "progress",
                snapshot: LiveSnapshot::new(snap.clone(), totals),
            }),
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

/// `120/10000 objects, 7.5MiB/625MiB, 48.2MiB/s, ETA 12s, 0 failed`; with `--rate auto`, the
/// rate the controller set after the throughput: `48.2MiB/s (auto 52MiB/s)`.
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
    let auto = if snap.adaptive_rate {
        format!(" (auto {})", snap.effective_rate)
    } else {
        String::new()
    };
    format!(
        "{} {objects}, {bytes}, {}/s{auto}{eta}, {} failed",
        snap.status,
        size(snap.throughput),
        snap.failed_objects
    )
}

/// The time left at the recent throughput: from the scan's total (which the CLI knows
/// before the engine's listing ends), else the engine's own estimate.
pub(crate) fn eta(snap: &JobSnapshot, totals: Totals) -> Option<Duration> {
    let estimate = match totals.bytes {
        Some(total) => {
            let left = total.saturating_sub(snap.done_bytes);
            if left == 0 {
                return Some(Duration::ZERO);
            }
            JobSnapshot::estimate_eta(left, snap.throughput)
        }
        None if snap.eta == Some(Duration::ZERO) => return snap.eta,
        None => snap.eta,
    };
    estimate.map(|d| Duration::from_secs(d.as_secs().max(1)))
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

/// A running job's snapshot as the CLI shows and sends it: the engine's figures, with the
/// scan's totals where the engine has none yet, and the time left from them. In JSON it is one
/// flat object: the snapshot's fields and `eta_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LiveSnapshot {
    #[serde(flatten)]
    pub(crate) snapshot: JobSnapshot,
    /// Seconds left at the recent throughput, from the scan's total; `None` when unknown.
    pub(crate) eta_secs: Option<u64>,
}

impl LiveSnapshot {
    pub(crate) fn new(mut snapshot: JobSnapshot, totals: Totals) -> LiveSnapshot {
        let eta_secs = eta(&snapshot, totals).map(|d| d.as_secs());
        snapshot.total_objects = snapshot.total_objects.or(totals.objects);
        snapshot.total_bytes = snapshot.total_bytes.or(totals.bytes);
        LiveSnapshot { snapshot, eta_secs }
    }
}

/// A `--json` event that carries the job's figures: `{"event":"progress",…snapshot}`.
#[derive(Debug, Serialize)]
struct SnapshotEvent {
    event: &'static str,
    #[serde(flatten)]
    snapshot: LiveSnapshot,
}
