//! The crash loop (issue #7): a real engine process, `ferry-crash-child`
//! (`bin/crash_child.rs`), moves a generated tree between two directories while two client
//! threads read, write, delete and re-create keys through the forwarding table; it is
//! SIGKILLed at a random moment, started again (it resumes with `Engine::recover`), and so on
//! for N cycles; a last run goes to the end unkilled. Then every invariant of SPEC §2 is
//! checked against the ledger of acknowledged operations the child kept (`ferry_tests::crash`)
//! and against what the directories and the checkpoint hold:
//!
//! - I1: every key the commit hook placed on the target is gone from the source; every key
//!   still on the source is one a client deleted (the job found it gone and skipped it) and
//!   re-created since; no copy lies on the target of a key served by the source.
//! - I2: no read failed (each read checked against the ledger as it ran, `F` lines), and
//!   after the last run every key read once more through the table found its content.
//! - I3: every key holds its last acknowledged write, or a later unacknowledged one (no lost
//!   write); a key whose last acknowledged operation is a delete is on neither node (no
//!   resurrection); every object on disk is whole and is a write of its own key.
//! - I4: the job's record says Completed with done + failed == total and nothing failed; an
//!   object that no client ever wrote was copied again at most CONCURRENCY +
//!   CHECKPOINT_OBJECTS times per kill in all.
//! - I5: every restart loaded the checkpoint (a corrupt record fails the child).
//! - I6: every restart checks that a second engine on the same checkpoint is refused.
//! - I7: the last run's peak RSS stays far below what buffering its objects would take.
//!
//! Kills are SIGKILL, at a random moment: 20% early (while the child opens its stores and
//! recovers), half at a random time, and the rest from inside the child itself (it SIGKILLs
//! itself µs after its N-th checkpoint save began, or its N-th commit hook call: inside a save,
//! inside a cleanup batch). No fsync is needed for the ledger: a kill is not a power cut.
//!
//! Environment: `FERRY_CRASH_CYCLES` (default 5), `FERRY_CRASH_SEED` (default: from the
//! clock; printed), `FERRY_CRASH_OBJECTS` (default 300), `FERRY_CRASH_MAX_SIZE` (bytes,
//! default 4 MiB; sizes run from 0 B), `FERRY_CRASH_KEEP=1` keeps the work directory.
//! `cargo xtask crash -n N [--seed S]` runs it long, in release mode. It prints one summary
//! line (`--nocapture` to see it).

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ferry::checkpoint::{CheckpointStore, FileStore};
use ferry::store::TEMP_PREFIX;
use ferry::types::{JobId, JobStatus};
use ferry_tests::crash::{self, CHECKPOINT_OBJECTS, CONCURRENCY, Rng, Value};

const CHILD: &str = env!("CARGO_BIN_EXE_ferry-crash-child");
/// A run with a kill point inside the child is killed from here after this long anyway
/// (the job may have finished before its N-th save).
const SELF_KILL_FALLBACK: Duration = Duration::from_secs(2);
/// The last run must finish within this.
const FINAL_TIMEOUT: Duration = Duration::from_secs(900);
/// I7: the last run's peak RSS must stay below this. The job streams (8 copies × 1 MiB
/// chunks); buffering whole objects of tens of MiB would pass it.
const PEAK_RSS_LIMIT_MIB: u64 = 160;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: a number")),
        Err(_) => default,
    }
}

/// A size from 0 B to `max`: mostly small files, some of a few chunks, a few large ones.
fn size(rng: &mut Rng, max: u64) -> u64 {
    let size = match rng.below(100) {
        0..5 => 0,
        5..15 => rng.between(1, 64),
        15..70 => rng.between(65, 64 << 10),
        70..95 => rng.between(64 << 10, 1 << 20),
        95..98 => rng.between(1 << 20, 4 << 20),
        _ => rng.between(4 << 20, max.max(4 << 20)),
    };
    size.min(max)
}

/// How a cycle's run was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// From here, this long after the start (early ones land in opening and recovery).
    Timed(Duration),
    /// By the child itself, `us` µs after its `nth` checkpoint save began.
    InSave { nth: u64, us: u64 },
    /// By the child itself, `us` µs after its `nth` commit hook call (a cleanup batch).
    InCleanup { nth: u64, us: u64 },
}

#[derive(Debug, Default)]
struct KillCounts {
    timed: u64,
    in_save: u64,
    in_cleanup: u64,
    /// Self-kill points never reached: killed from here after the fallback delay.
    fallback: u64,
}

fn run_child(
    dir: &Path,
    cycle: u64,
    seed: u64,
    rate: u64,
    kill: Option<Kill>,
) -> (ExitStatus, bool) {
    let log = std::fs::File::create(dir.join(format!("cycle-{cycle}.log"))).unwrap();
    let mut command = Command::new(CHILD);
    command
        .arg(dir)
        .arg(cycle.to_string())
        .arg(seed.to_string())
        .arg(rate.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .env_remove("FERRY_CRASH_KILL");
    let deadline = match kill {
        None => {
            command.arg("--final");
            FINAL_TIMEOUT
        }
        Some(Kill::Timed(after)) => after,
        Some(Kill::InSave { nth, us }) => {
            command.env("FERRY_CRASH_KILL", format!("save:{nth}:{us}"));
            SELF_KILL_FALLBACK
        }
        Some(Kill::InCleanup { nth, us }) => {
            command.env("FERRY_CRASH_KILL", format!("hook:{nth}:{us}"));
            SELF_KILL_FALLBACK
        }
    };
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    // Polling, not sleeping for an outcome: the kill time is the random input of the test.
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, false);
        }
        if started.elapsed() >= deadline {
            // SIGKILL.
            child.kill().unwrap();
            return (child.wait().unwrap(), true);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn child_log(dir: &Path, cycle: u64) -> String {
    std::fs::read_to_string(dir.join(format!("cycle-{cycle}.log"))).unwrap_or_default()
}

/// The value `bytes` holds for `key`; `Err` when it is no whole write of the key.
fn value_of(key: &str, bytes: Option<Vec<u8>>) -> Result<Value, String> {
    bytes.map(|b| crash::decode(key, &b)).transpose()
}

fn read_opt(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Files under `dir` whose name says they are temp files.
fn temp_files(dir: &Path, is_temp: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            temp_files(&path, is_temp, out);
        } else if entry.file_name().to_str().is_some_and(is_temp) {
            out.push(path);
        }
    }
}

/// Problems found, by kind, the first few described.
#[derive(Default)]
struct Problems {
    counts: Vec<(&'static str, u64)>,
    described: Vec<String>,
}

impl Problems {
    fn add(&mut self, kind: &'static str, what: String) {
        match self.counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((kind, 1)),
        }
        if self.described.len() < 40 {
            self.described.push(format!("{kind}: {what}"));
        }
    }

    fn count(&self, kind: &str) -> u64 {
        self.counts
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

#[test]
fn i1_to_i7_hold_when_an_engine_process_is_sigkilled_and_restarted_under_traffic() {
    let cycles = env_u64("FERRY_CRASH_CYCLES", 5);
    let seed = env_u64(
        "FERRY_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_007,
    );
    let objects = env_u64("FERRY_CRASH_OBJECTS", 300) as usize;
    let max_size = env_u64("FERRY_CRASH_MAX_SIZE", 4 << 20);
    let keep = std::env::var_os("FERRY_CRASH_KEEP").is_some();
    let work = tempfile::Builder::new()
        .prefix("ferry-crash-")
        .tempdir()
        .unwrap();
    let dir = work.path().to_owned();
    eprintln!("crash loop: seed {seed}, work dir {}", dir.display());

    // The tree: `objects` files of 0 B to `max_size`, in directories of about 100.
    let mut rng = Rng(seed);
    let dirs = objects.div_ceil(100).max(1);
    let keys: Vec<String> = (0..objects)
        .map(|i| format!("d{:02}/f{i:05}.bin", i % dirs))
        .collect();
    let mut total_bytes = 0u64;
    for key in &keys {
        let len = size(&mut rng, max_size);
        total_bytes += len;
        let path = dir.join(crash::SOURCE_DIR).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, crash::content(key, 0, len as usize)).unwrap();
    }
    std::fs::write(dir.join(crash::KEYS), keys.join("\n") + "\n").unwrap();
    // Throttled so that the killed runs together would move about half the tree (a run
    // copies for about 0.4 s on average before its kill), so kills land in a running job;
    // the last run goes unthrottled.
    let rate = (total_bytes * 5 / 4 / cycles.max(1)).max(1 << 20);

    let mut kills = KillCounts::default();
    for cycle in 1..=cycles {
        let kill = match rng.below(100) {
            0..20 => Kill::Timed(Duration::from_millis(rng.below(150))),
            20..60 => Kill::Timed(Duration::from_millis(rng.between(150, 1000))),
            60..80 => Kill::InSave {
                nth: rng.between(1, 10),
                us: rng.below(3000),
            },
            _ => Kill::InCleanup {
                nth: rng.between(1, 60),
                us: rng.below(3000),
            },
        };
        let (status, by_us) = run_child(&dir, cycle, seed, rate, Some(kill));
        assert_eq!(
            status.signal(),
            Some(9),
            "cycle {cycle} ({kill:?}) ended otherwise than by SIGKILL ({status}); its log:\n{}",
            child_log(&dir, cycle)
        );
        match (kill, by_us) {
            (Kill::Timed(_), _) => kills.timed += 1,
            (_, true) => kills.fallback += 1,
            (Kill::InSave { .. }, false) => kills.in_save += 1,
            (Kill::InCleanup { .. }, false) => kills.in_cleanup += 1,
        }
    }
    let last = cycles + 1;
    let (status, timed_out) = run_child(&dir, last, seed, rate, None);
    assert!(
        status.success() && !timed_out,
        "the last run ({status}, timed out: {timed_out}); its log:\n{}",
        child_log(&dir, last)
    );

    // What the runs left: the ledger, the placement map, the copies, the last run's report.
    let ledger = std::fs::read_to_string(dir.join(crash::LEDGER)).unwrap_or_default();
    let replay = crash::replay(&ledger, &keys);
    let placed: std::collections::HashSet<String> =
        std::fs::read_to_string(dir.join(crash::PLACEMENT))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
    let mut copies: HashMap<String, u64> = HashMap::new();
    let mut lagged = 0u64;
    for line in std::fs::read_to_string(dir.join(crash::COPIES))
        .unwrap_or_default()
        .lines()
    {
        if let Some(key) = line.strip_prefix("copied ") {
            *copies.entry(key.to_owned()).or_default() += 1;
        } else if let Some(n) = line.strip_prefix("lagged ") {
            lagged += n.parse::<u64>().unwrap_or(0);
        }
    }
    let report: HashMap<String, String> = std::fs::read_to_string(dir.join(crash::FINAL))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let reported = |name: &str| -> u64 { report[name].parse().unwrap() };

    let mut problems = Problems::default();
    for failure in &replay.failures {
        let kind = if failure.starts_with("read") || failure.starts_with("final read") {
            "failed read (I2)"
        } else if failure.starts_with("i6") {
            "second owner not refused (I6)"
        } else {
            "client write failed"
        };
        problems.add(kind, failure.clone());
    }
    let kill_count = cycles;
    if replay.torn.len() as u64 > kill_count {
        problems.add(
            "ledger lines that make no sense",
            format!(
                "{} (at most one torn per kill): {:?}",
                replay.torn.len(),
                replay.torn
            ),
        );
    }

    // I1, I3: every key against the ledger, on both nodes.
    let (mut on_target, mut on_source, mut absent) = (0u64, 0u64, 0u64);
    for (i, key) in keys.iter().enumerate() {
        let state = &replay.states[i];
        let src = value_of(key, read_opt(&dir.join(crash::SOURCE_DIR).join(key)));
        let dst = value_of(key, read_opt(&dir.join(crash::TARGET_DIR).join(key)));
        let (src, dst) = match (src, dst) {
            (Ok(src), Ok(dst)) => (src, dst),
            (src, dst) => {
                problems.add(
                    "damaged object (I3)",
                    format!("{key}: source {src:?}, target {dst:?}"),
                );
                continue;
            }
        };
        let is_placed = placed.contains(key);
        let served = if is_placed { dst } else { src };
        match served {
            Some(_) if is_placed => on_target += 1,
            Some(_) => on_source += 1,
            None => absent += 1,
        }
        let deleted = state.acked.is_none() && state.pending.is_empty();
        if deleted {
            if src.is_some() || dst.is_some() {
                problems.add(
                    "resurrected (I3)",
                    format!(
                        "{key}: deleted (acknowledged), found on source {src:?}, target {dst:?}"
                    ),
                );
            }
        } else if !state.allows(served) {
            problems.add(
                "lost write (I3)",
                format!(
                    "{key}: served by the {} with {served:?}; the ledger allows {:?} or {:?}",
                    if is_placed { "target" } else { "source" },
                    state.acked,
                    state.pending
                ),
            );
        }
        if is_placed && src.is_some() {
            problems.add(
                "source not cleaned (I1)",
                format!("{key}: placed on the target, still on the source ({src:?})"),
            );
        }
        if !is_placed && src.is_some() && !state.deleted_ever {
            problems.add(
                "not moved (I1/I4)",
                format!("{key}: on the source only, never deleted by a client"),
            );
        }
        if !is_placed && dst.is_some() {
            problems.add(
                "stray copy on the target (I3)",
                format!("{key}: served by the source, yet the target holds {dst:?}"),
            );
        }
    }

    // No temp files left by the killed runs (the stores and the checkpoint clean them up).
    let mut temps = Vec::new();
    for node in [crash::SOURCE_DIR, crash::TARGET_DIR] {
        temp_files(
            &dir.join(node),
            &|name| name.starts_with(TEMP_PREFIX),
            &mut temps,
        );
    }
    temp_files(
        &dir.join(crash::STATE_DIR),
        &|name| name.ends_with(".tmp"),
        &mut temps,
    );
    for temp in temps {
        problems.add("temp file left", temp.display().to_string());
    }

    // I4: the record is complete, and little was done twice.
    let record = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let store = FileStore::open(dir.join(crash::STATE_DIR)).unwrap();
            store
                .load(&JobId::new(crash::JOB_ID).unwrap())
                .await
                .unwrap()
                .expect("the job's record")
                .record
        });
    let progress = &record.progress;
    let failed = progress.failed.len() as u64;
    if record.status != JobStatus::Completed
        || progress.done_objects + failed != keys.len() as u64
        || failed != 0
    {
        problems.add(
            "job record (I4)",
            format!(
                "status {:?}, done {} + failed {failed} of {} objects: {:?}",
                record.status,
                progress.done_objects,
                keys.len(),
                progress.failed
            ),
        );
    }
    if report["status"] != "Completed"
        || reported("done") + reported("failed") != reported("total")
        || reported("total") != keys.len() as u64
    {
        problems.add("last run's snapshot (I4)", format!("{report:?}"));
    }
    let recopied = copies.values().filter(|&&n| n > 1).count() as u64;
    let recopied_untouched: u64 = keys
        .iter()
        .zip(&replay.states)
        .filter(|(_, s)| !s.touched)
        .map(|(k, _)| copies.get(k).copied().unwrap_or(0).saturating_sub(1))
        .sum();
    let bound = kill_count * (CONCURRENCY as u64 + CHECKPOINT_OBJECTS);
    if recopied_untouched > bound {
        problems.add(
            "re-copied too much (I4)",
            format!(
                "{recopied_untouched} copies again of objects no client wrote, over {kill_count} \
                 kills: more than {bound} (in flight + one checkpoint interval per kill)"
            ),
        );
    }

    // I7.
    let peak_rss_mib = reported("peak_rss_kib") / 1024;
    if peak_rss_mib > PEAK_RSS_LIMIT_MIB {
        problems.add(
            "peak RSS (I7)",
            format!("{peak_rss_mib} MiB > {PEAK_RSS_LIMIT_MIB} MiB"),
        );
    }

    let ops = replay.reads + replay.writes + replay.deletes;
    println!(
        "crash loop: cycles {cycles} (SIGKILL {} timed, {} in a checkpoint save, {} in a cleanup, \
         {} at the fallback), objects {} ({:.1} MiB), ops {ops} ({} reads, {} writes of which \
         {} re-creates, {} deletes), lost {}, failed reads {}, resurrected {}, re-copied objects \
         {recopied} ({recopied_untouched} extra copies of objects no client wrote, bound {bound}), \
         final: {on_target} on target, {on_source} on source, {absent} deleted, peak RSS \
         {peak_rss_mib} MiB, events lagged {lagged}, seed {seed}",
        kills.timed,
        kills.in_save,
        kills.in_cleanup,
        kills.fallback,
        keys.len(),
        total_bytes as f64 / f64::from(1 << 20),
        replay.reads,
        replay.writes,
        replay.recreates,
        replay.deletes,
        problems.count("lost write (I3)"),
        problems.count("failed read (I2)"),
        problems.count("resurrected (I3)"),
    );
    if !problems.counts.is_empty() || keep {
        eprintln!("work dir kept: {}", dir.display());
        let _ = work.keep();
    }
    assert!(
        problems.counts.is_empty(),
        "invariants broken (seed {seed}): {:?}\n{}",
        problems.counts,
        problems.described.join("\n")
    );
}
