//! `ferry demo`: a self-contained migration between two in-memory nodes while readers,
//! writers and deleters hammer the same keys through the forwarding table, with a pause, a
//! rate change and a simulated crash followed by `Engine::recover`.
//!
//! The verdict is computed by checking, not by counting intentions: every write and delete a
//! worker got acknowledged is recorded in a ledger (per key, one owner task, so the order is
//! known), and at the end each key is read back where the table routes it and compared with the
//! ledger. A read that finds no object for a key that was never deleted is a failed read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use ferry::checkpoint::MemoryStore;
use ferry::forwarding::{Route, Table};
use ferry::store::{MemStore, Store};
use ferry::types::{
    CleanupPolicy, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection, Rate,
};
use ferry::{Engine, JobHandle};
use serde_json::json;

use crate::cli::DemoArgs;
use crate::error::{EXIT_ERROR, EXIT_OK, fail};
use crate::progress::size;

/// Size of each object.
const OBJECT_SIZE: usize = 4096;
/// A ledger value meaning "deleted".
const DELETED: u64 = u64::MAX;
const READERS: usize = 2;
const WRITERS: usize = 2;

fn key(i: usize) -> String {
    format!("obj/{i:07}")
}

fn value(i: usize, version: u64) -> Bytes {
    let mut data = format!("{i}:{version}:").into_bytes();
    data.resize(OBJECT_SIZE, b'.');
    Bytes::from(data)
}

/// The version an object's content says it is, if it is one of ours for key `i`.
fn version_of(i: usize, data: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(data.get(..40.min(data.len()))?).ok()?;
    let mut parts = text.split(':');
    let idx: usize = parts.next()?.parse().ok()?;
    let version: u64 = parts.next()?.parse().ok()?;
    (idx == i).then_some(version)
}

/// What the workers share.
struct World {
    a: NodeId,
    b: NodeId,
    source: MemStore,
    target: MemStore,
    table: Table,
    /// Per key: the last acknowledged version, or `DELETED`.
    ledger: Vec<AtomicU64>,
    /// Per key: a delete was started (a read that misses such a key is not a failed read).
    deleting: Vec<AtomicBool>,
    stop: AtomicBool,
    reads: AtomicU64,
    failed_reads: AtomicU64,
    stale_reads: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    fenced_writes: AtomicU64,
    refused_writes: AtomicU64,
}

impl World {
    fn node(&self, route: Route) -> &MemStore {
        match route {
            Route::Source => &self.source,
            Route::Target(node) if node == self.b => &self.target,
            Route::Target(_) => &self.source,
        }
    }
}

/// A small xorshift generator per worker (no shared state, no dependency).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

async fn reader(world: Arc<World>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let n = world.ledger.len();
    let mut i = 0u64;
    while !world.stop.load(Ordering::Relaxed) {
        let k = rng.below(n);
        let name = key(k);
        let route = world.table.route_read(&name);
        let got = world.node(route).bytes(&name);
        world.reads.fetch_add(1, Ordering::Relaxed);
        match got {
            Some(data) => {
                if version_of(k, &data).is_none() {
                    world.failed_reads.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                let gone = world.deleting[k].load(Ordering::Acquire)
                    || world.ledger[k].load(Ordering::Acquire) == DELETED;
                if !gone {
                    world.failed_reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        i += 1;
        if i.is_multiple_of(256) {
            // About 60,000 reads a second per reader: plenty, and the engine keeps a core.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Writes and deletes the keys `k % WRITERS == w` (one owner per key, so the ledger's order is
/// the order of the acknowledgements).
async fn writer(world: Arc<World>, w: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    let n = world.ledger.len();
    while !world.stop.load(Ordering::Relaxed) {
        // Writers pace themselves (about 2,000 operations a second each) so that readers and
        // the engine share the two cores, and every path of the loop waits.
        tokio::time::sleep(Duration::from_micros(500)).await;
        let k = rng.below(n.div_ceil(WRITERS)) * WRITERS + w;
        if k >= n {
            continue;
        }
        let current = world.ledger[k].load(Ordering::Acquire);
        if current == DELETED {
            continue;
        }
        let name = key(k);
        let Ok(key_obj) = ObjectKey::new(&name) else {
            continue;
        };
        // One key in 20 may be deleted, rarely; it then stays deleted.
        let delete = k % 20 == 7 && rng.below(50) == 0;
        let ticket = match world.table.try_begin_write(&name) {
            Ok(ticket) => ticket,
            Err(_) => {
                world.fenced_writes.fetch_add(1, Ordering::Relaxed);
                match world.table.begin_write(&name).await {
                    Ok(ticket) => ticket,
                    Err(_) => {
                        world.refused_writes.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
        };
        let node = world.node(ticket.route());
        if delete {
            world.deleting[k].store(true, Ordering::Release);
            if node.delete(&key_obj).await.is_err() {
                world.deleting[k].store(false, Ordering::Release);
                continue;
            }
            drop(ticket);
            world.ledger[k].store(DELETED, Ordering::Release);
            world.deletes.fetch_add(1, Ordering::Relaxed);
        } else {
            node.insert(key_obj, value(k, current + 1));
            drop(ticket);
            world.ledger[k].store(current + 1, Ordering::Release);
            world.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn engine(world: &World, checkpoints: &Arc<MemoryStore>) -> Result<Engine> {
    Ok(Engine::builder()
        .node(world.a, Arc::new(world.source.clone()))
        .node(world.b, Arc::new(world.target.clone()))
        .checkpoint_store(checkpoints.clone())
        .forwarding(world.table.clone())
        .build()?)
}

pub(crate) async fn run(args: DemoArgs) -> Result<u8> {
    let json = args.json;
    let say = |text: String| {
        if !json {
            println!("{text}");
        }
    };
    let n = args.objects as usize;
    let total_bytes = (n * OBJECT_SIZE) as u64;
    let rate_bps = (total_bytes / u64::from(args.seconds)).max(64 << 10);
    let rate = Rate::bytes_per_sec(rate_bps)?;
    let world = Arc::new(World {
        a: NodeId::new("node-a")?,
        b: NodeId::new("node-b")?,
        source: MemStore::new(),
        target: MemStore::new(),
        table: Table::default(),
        ledger: (0..n).map(|_| AtomicU64::new(0)).collect(),
        deleting: (0..n).map(|_| AtomicBool::new(false)).collect(),
        stop: AtomicBool::new(false),
        reads: AtomicU64::new(0),
        failed_reads: AtomicU64::new(0),
        stale_reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        deletes: AtomicU64::new(0),
        fenced_writes: AtomicU64::new(0),
        refused_writes: AtomicU64::new(0),
    });
    say(format!(
        "ferry demo: {n} objects of {} on node-a ({}), moving to node-b at {rate} while {READERS} readers and {WRITERS} writers/deleters use the same keys",
        size(OBJECT_SIZE as u64),
        size(total_bytes)
    ));
    for i in 0..n {
        world.source.insert(ObjectKey::new(key(i))?, value(i, 0));
    }
    let mut checkpoints = Arc::new(MemoryStore::new());
    let job_id = ferry::types::JobId::new("demo")?;
    let plan = MigrationPlan::new(world.a, world.b, ObjectSelection::prefix("obj/"))
        .with_id(job_id.clone())
        .with_rate(rate)
        .with_cleanup(CleanupPolicy::AfterGrace(Duration::from_millis(100)));
    let started = Instant::now();
    let mut job = engine(&world, &checkpoints)?
        .start(plan)
        .await
        .context("the demo job did not start")?;

    let mut workers = Vec::new();
    for r in 0..READERS {
        workers.push(tokio::spawn(reader(Arc::clone(&world), 0x5EED + r as u64)));
    }
    for w in 0..WRITERS {
        workers.push(tokio::spawn(writer(
            Arc::clone(&world),
            w,
            0xBEEF + w as u64,
        )));
    }

    // The script: pause at 25 %, a faster rate at 40 %, a crash and recover at 60 %.
    let fraction = |job: &JobHandle| job.snapshot().done_objects as f64 / n as f64;
    let mut watch = job.watch();
    let mut step = 0;
    let mut current_rate = rate;
    let mut last_line = Instant::now();
    let mut recovered_from = None;
    loop {
        if watch.borrow_and_update().status.is_finished() {
            break;
        }
        let f = fraction(&job);
        if !json && last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            let snap = job.snapshot();
            println!(
                "  {:>5.1}s  {:>3.0}% moved  reads {}  writes {}  deletes {}  failed reads {}",
                started.elapsed().as_secs_f64(),
                f * 100.0,
                world.reads.load(Ordering::Relaxed),
                world.writes.load(Ordering::Relaxed),
                world.deletes.load(Ordering::Relaxed),
                world.failed_reads.load(Ordering::Relaxed),
            );
            let _ = snap;
        }
        if step == 0 && f >= 0.25 {
            step = 1;
            job.pause().await;
            say(format!(
                "  pause at {:.0}%: copies parked, checkpoint saved; readers and writers go on for 1 s",
                f * 100.0
            ));
            tokio::time::sleep(Duration::from_secs(1)).await;
            job.resume();
            say("  resumed".to_owned());
        } else if step == 1 && f >= 0.40 {
            step = 2;
            let faster = Rate::bytes_per_sec(rate_bps * 2)?;
            job.set_rate(faster);
            current_rate = faster;
            say(format!(
                "  rate changed at {:.0}%: {rate} → {faster}",
                f * 100.0
            ));
        } else if step == 2 && f >= 0.60 {
            step = 3;
            let done = job.snapshot().done_objects;
            say(format!(
                "  crash at {:.0}%: the engine is dropped mid-copy (no last checkpoint)",
                f * 100.0
            ));
            job.crash_for_tests().await;
            // What survives a crash is the durable record, not the dead process's lease: a
            // new checkpoint store holding the same bytes, as a reopened file store would.
            let record = checkpoints
                .raw(&job_id)
                .context("the demo job has no checkpoint record at the crash")?;
            let reopened = MemoryStore::new();
            reopened.set_raw(&job_id, record);
            checkpoints = Arc::new(reopened);
            let engine = engine(&world, &checkpoints)?;
            let mut handles = engine
                .recover()
                .await
                .context("Engine::recover failed after the simulated crash")?;
            job = handles
                .pop()
                .context("Engine::recover found no unfinished job after the crash")?;
            // The rate change is not part of the stored plan: apply it again, as an operator's
            // tool would after a restart.
            job.set_rate(current_rate);
            let resumed_at = job.snapshot().done_objects;
            recovered_from = Some((done, resumed_at));
            say(format!(
                "  recovered: a new engine over the same stores, checkpoint and table resumes the job at {resumed_at} objects recorded done ({done} were done before the crash)"
            ));
            watch = job.watch();
        }
        let tick = tokio::time::sleep(Duration::from_millis(50));
        tokio::select! {
            _ = watch.changed() => {}
            () = tick => {}
        }
    }
    let elapsed = started.elapsed();
    let finished = job.wait().await;
    world.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let snap = match finished {
        Ok(snap) => snap,
        Err(err) => {
            return Err(anyhow::Error::new(err).context(crate::error::CliError {
                code: EXIT_ERROR,
                message: "the demo's migration stopped with an error".to_owned(),
                hint: Some(
                    "this is a bug in the engine: please report it with the output above"
                        .to_owned(),
                ),
            }));
        }
    };

    // The check: every key, read where the table routes it, against the ledger.
    let (mut lost_writes, mut resurrected, mut moved, mut alive, mut stale_source) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut lost_examples = Vec::new();
    for i in 0..n {
        let name = key(i);
        let expected = world.ledger[i].load(Ordering::Acquire);
        let route = world.table.route_read(&name);
        let served = world.node(route).bytes(&name);
        if expected == DELETED {
            if world.source.bytes(&name).is_some() || world.target.bytes(&name).is_some() {
                resurrected += 1;
            }
            continue;
        }
        alive += 1;
        match served.as_deref().and_then(|d| version_of(i, d)) {
            Some(v) if v == expected => {}
            got => {
                lost_writes += 1;
                if lost_examples.len() < 5 {
                    lost_examples.push(format!("{name}: acknowledged v{expected}, served {got:?}"));
                }
            }
        }
        if route == Route::Target(world.b) && world.target.bytes(&name).is_some() {
            moved += 1;
        }
        if world.source.bytes(&name).is_some() {
            stale_source += 1;
        }
    }
    let stats = world.table.stats();
    let failed_reads = world.failed_reads.load(Ordering::Relaxed);
    let clean = failed_reads == 0 && lost_writes == 0 && resurrected == 0;
    let summary = json!({
        "objects_expected": alive,
        "objects_moved": moved,
        "sources_left": stale_source,
        "reads_served": world.reads.load(Ordering::Relaxed),
        "failed_reads": failed_reads,
        "stale_reads": world.stale_reads.load(Ordering::Relaxed),
        "writes_accepted": world.writes.load(Ordering::Relaxed),
        "deletes_accepted": world.deletes.load(Ordering::Relaxed),
        "lost_writes": lost_writes,
        "resurrected_deletes": resurrected,
        "flips": stats.flips,
        "flips_refused_and_retried": stats.flips_refused,
        "fences": stats.fences,
        "writes_that_waited_at_a_fence": world.fenced_writes.load(Ordering::Relaxed),
        "writes_refused_fence_timeout": world.refused_writes.load(Ordering::Relaxed),
        "crash_recovered_at": recovered_from.map(|(before, after)| json!({"done_before_crash": before, "recorded_done_at_recover": after})),
        "job_status": snap.status,
        "seconds": elapsed.as_secs_f64(),
        "peak_memory_bytes": peak_rss(),
        "ok": clean,
    });
    if json {
        println!("{summary}");
    } else {
        println!();
        println!(
            "ferry demo summary (checked against the ledger of acknowledged writes and deletes)"
        );
        println!(
            "  objects moved              {moved} of {alive} live keys ({} deleted during the run)",
            n as u64 - alive
        );
        println!("  source copies left         {stale_source}");
        println!(
            "  reads served               {}",
            world.reads.load(Ordering::Relaxed)
        );
        println!("  failed reads               {failed_reads}");
        println!(
            "  writes accepted            {}",
            world.writes.load(Ordering::Relaxed)
        );
        println!(
            "  deletes accepted           {}",
            world.deletes.load(Ordering::Relaxed)
        );
        println!("  lost writes                {lost_writes}");
        println!("  resurrected deletes        {resurrected}");
        println!(
            "  flips (refused, retried)   {} ({})",
            stats.flips, stats.flips_refused
        );
        println!(
            "  fences                     {} ({} writes waited at one)",
            stats.fences,
            world.fenced_writes.load(Ordering::Relaxed)
        );
        println!(
            "  peak memory                {}",
            peak_rss().map_or("unknown".to_owned(), size)
        );
        println!(
            "  time                       {:.1}s, job {}",
            elapsed.as_secs_f64(),
            snap.status
        );
        for example in &lost_examples {
            println!("  lost: {example}");
        }
        println!(
            "{}",
            if clean {
                "verdict: OK: no failed read, no lost write, no resurrected delete"
            } else {
                "verdict: FAILED: see the counts above"
            }
        );
    }
    if snap.status != JobStatus::Completed {
        return Err(fail(
            format!("the demo's job ended {}", snap.status),
            "this is a bug in the engine: please report it with the output above",
        ));
    }
    Ok(if clean { EXIT_OK } else { EXIT_ERROR })
}
