//! Client traffic during a migration (issue #7): mixed reads, writes, deletes and hot-key
//! overwrites routed through the forwarding table, first with no migration running
//! (baseline), then while a job moves every object from node A to node B (migrating). It
//! reports per-read latency through the table (`Table::read` and the store read, and
//! `Table::read` alone: the lookup of `route_read` plus the count a drain waits for) in both phases, and checks, against a ledger of acknowledged writes
//! and deletes, that no read failed, no write was lost and no deleted key came back (SPEC I2,
//! I3).
//!
//! Not criterion: it reports percentiles of single operations, so it is a plain program.
//!
//! - Source: a `MemStore` on node A with 20,000 objects of 4 KiB; target: an empty `MemStore`
//!   on node B.
//! - Clients route as a storage system would, the pattern of the engine's model test
//!   (`crates/engine/tests/engine/model.rs`): a read asks `Table::read` and reads the node it
//!   names (`Route::Source`: where the placement map says the key lives); a write or delete
//!   takes a `WriteTicket`, writes to the node the ticket names, and drops the ticket after
//!   the store acknowledged. The placement map (a flag per key) is moved to the target by the
//!   engine's commit hook.
//! - Two client threads, each with its own keys (key i belongs to client i % 2), so each
//!   client's ledger knows exactly what every read of its keys must find. Per op: 70% reads
//!   (20% of them on hot keys), 20% writes (half on hot keys: 1% of the keys take half of the
//!   writes), 10% deletes or re-creates (a client re-creates its oldest deleted key once it
//!   has 256 deleted; 10% of deletes hit hot keys).
//! - The job: checksum verify, cleanup after verify, concurrency 16, `max_flip_attempts` 2,
//!   so a hot key whose flip is refused twice is fenced. Its rate is set so that it would take
//!   1.5× the baseline phase's wall time, so it runs for the whole migrating phase; once the
//!   clients are done it is unthrottled to finish. Reads issued after the job ended are
//!   checked but not counted in the migrating percentiles.
//!
//! Run: `cargo bench -p ferry-benches --bench traffic` (1,000,000 ops per phase); the count
//! comes from `FERRY_TRAFFIC_OPS` or the first numeric argument
//! (`cargo bench -p ferry-benches --bench traffic -- 200000`); smoke run:
//! `FERRY_TRAFFIC_OPS=20000 cargo bench -p ferry-benches --bench traffic`.
//! `FERRY_TRAFFIC_GRACE_MS=N` cleans up after a grace period of N ms instead of right after
//! verify. Prints a markdown summary; panics when an invariant count is not zero.
//!
//! Reads in flight across a flip: a client that got `Route::Source` just before the flip may
//! reach the source after the cleanup deleted it (with cleanup right after verify there is no
//! grace period). The engine calls the commit hook after the flip and before the delete, so
//! the storage system drains such reads there, as the `CommitHook` docs ask: here each read
//! holds the `ReadGuard` of `Table::read` until its store read ends, and the hook awaits
//! `Table::drain_reads`. Without a drain (then hand-rolled with lock stripes), 3 runs
//! in 55 on a loaded 2 vCPU machine had one failed read (`FERRY_TRAFFIC_NO_DRAIN=1` turns it
//! off to see it; the failure message shows the route then and now).
// Benches stop on the first unexpected error: expect says where. This one prints its
// latency tables and the ledger check to stdout.
#![allow(clippy::expect_used, clippy::print_stdout)]

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_checkpoint::MemoryStore;
use ferry_engine::Engine;
use ferry_forwarding::{Fenced, Route, Stats, Table, WriteTicket};
use ferry_store::{MemStore, Store};
use ferry_types::{
    CleanupPolicy, JobId, JobSnapshot, JobStatus, MigrationPlan, NodeId, ObjectKey,
    ObjectSelection, Rate, VerifyMode,
};

const OBJECTS: usize = 20_000;
const OBJECT_SIZE: usize = 4 << 10;
const CLIENTS: usize = 2;
/// One key in this many is hot (1%).
const HOT_EVERY: usize = 100;
const DEFAULT_OPS: u64 = 1_000_000;
/// Deleted keys a client keeps before it re-creates the oldest.
const DELETED_KEPT: usize = 256;
const CONCURRENCY: usize = 16;
const MAX_FLIP_ATTEMPTS: u32 = 2;
/// The job's rate makes it take this many times the baseline phase's wall time.
const SPAN: f64 = 1.5;
/// Failed reads described in the output (all are counted).
const DESCRIBED: usize = 10;

fn op_count() -> u64 {
    let from_env = std::env::var("FERRY_TRAFFIC_OPS").ok();
    // `cargo bench` passes `--bench`; the count is the first numeric argument.
    let from_args = std::env::args().skip(1).find(|a| a.parse::<u64>().is_ok());
    match from_env.or(from_args) {
        Some(n) => n
            .replace('_', "")
            .parse()
            .expect("FERRY_TRAFFIC_OPS: a number of ops"),
        None => DEFAULT_OPS,
    }
}

/// Cleanup after verify, or after a grace period of `FERRY_TRAFFIC_GRACE_MS` milliseconds.
fn cleanup_policy() -> CleanupPolicy {
    match std::env::var("FERRY_TRAFFIC_GRACE_MS") {
        Ok(ms) => CleanupPolicy::AfterGrace(Duration::from_millis(
            ms.parse().expect("FERRY_TRAFFIC_GRACE_MS: milliseconds"),
        )),
        Err(_) => CleanupPolicy::AfterVerify,
    }
}

/// An object's content: the key's index and the write's version, then filler.
fn content(i: usize, version: u32) -> Vec<u8> {
    let mut data = vec![version as u8; OBJECT_SIZE];
    data[..4].copy_from_slice(&(i as u32).to_le_bytes());
    data[4..8].copy_from_slice(&version.to_le_bytes());
    data
}

/// The version `data` holds, if it is a whole object of key `i`.
fn version_of(i: usize, data: &[u8]) -> Option<u32> {
    if data.len() != OBJECT_SIZE || data[..4] != (i as u32).to_le_bytes() {
        return None;
    }
    let version = u32::from_le_bytes(data[4..8].try_into().ok()?);
    (data[OBJECT_SIZE - 1] == version as u8).then_some(version)
}

/// The storage system around the engine: its two nodes, the forwarding table it routes by,
/// its placement map (where a key lives when the table says `Route::Source`; the commit hook
/// moves keys to the target).
struct World {
    b: NodeId,
    source: MemStore,
    target: MemStore,
    table: Table,
    keys: Vec<ObjectKey>,
    on_target: Vec<AtomicBool>,
    /// Whether the hook drains (`FERRY_TRAFFIC_NO_DRAIN` unset).
    drain: bool,
    /// Set while the job runs: reads then count as "migrating".
    migrating: AtomicBool,
}

impl World {
    fn node(&self, i: usize, route: Route) -> &MemStore {
        match route {
            Route::Source if self.on_target[i].load(Ordering::Acquire) => &self.target,
            Route::Source => &self.source,
            Route::Target(node) => {
                assert_eq!(node, self.b, "routed to an unknown node");
                &self.target
            }
        }
    }

    /// The index of a key, from its name (`obj/NNNNNN`).
    fn index(key: &ObjectKey) -> usize {
        key.as_str()["obj/".len()..]
            .parse()
            .expect("keys are obj/NNNNNN")
    }
}

#[derive(Default)]
struct PhaseStats {
    ops: u64,
    reads: u64,
    writes: u64,
    deletes: u64,
    recreates: u64,
    failed_reads: u64,
    failures: Vec<String>,
    /// Writes and deletes that found their key fenced and waited.
    fenced_writes: u64,
    /// Writes and deletes refused (the fence outlasted the writers' timeout): not acknowledged.
    refused_writes: u64,
    /// The longest write or delete that waited on a fence, in nanoseconds.
    longest_fenced: u64,
    /// Reads of the migrating phase issued after the job had ended (checked, not timed).
    reads_after_job: u64,
    /// Nanoseconds: `Table::read` + the store read, `Table::read` alone, a write or delete.
    read_full: Vec<u64>,
    read_route: Vec<u64>,
    write: Vec<u64>,
    wall: Duration,
}

impl PhaseStats {
    fn wrote(&mut self, nanos: u64, fenced: bool) {
        self.write.push(nanos);
        if fenced {
            self.longest_fenced = self.longest_fenced.max(nanos);
        }
    }

    fn merge(mut self, other: PhaseStats) -> PhaseStats {
        self.ops += other.ops;
        self.reads += other.reads;
        self.writes += other.writes;
        self.deletes += other.deletes;
        self.recreates += other.recreates;
        self.failed_reads += other.failed_reads;
        self.failures.extend(other.failures);
        self.fenced_writes += other.fenced_writes;
        self.refused_writes += other.refused_writes;
        self.longest_fenced = self.longest_fenced.max(other.longest_fenced);
        self.reads_after_job += other.reads_after_job;
        self.read_full.extend(other.read_full);
        self.read_route.extend(other.read_route);
        self.write.extend(other.write);
        self.wall = self.wall.max(other.wall);
        self
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Baseline,
    Migrating,
}

/// One client: its keys, its ledger, its random numbers.
struct Client {
    rng: u64,
    owned: Vec<usize>,
    hot: Vec<usize>,
    /// Per key index (only this client's are used): the last acknowledged version, `None`
    /// once deleted.
    ledger: Vec<Option<u32>>,
    next_version: Vec<u32>,
    deleted: VecDeque<usize>,
}

impl Client {
    fn new(id: usize) -> Client {
        let owned: Vec<usize> = (id..OBJECTS).step_by(CLIENTS).collect();
        let hot = owned
            .iter()
            .copied()
            .filter(|i| (i / CLIENTS).is_multiple_of(HOT_EVERY))
            .collect();
        Client {
            rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1),
            owned,
            hot,
            ledger: vec![Some(0); OBJECTS],
            next_version: vec![1; OBJECTS],
            deleted: VecDeque::new(),
        }
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A key of this client, hot with probability `hot_percent`%.
    fn pick(&mut self, hot_percent: u64) -> usize {
        let r = self.next();
        let from = if r % 100 < hot_percent {
            &self.hot
        } else {
            &self.owned
        };
        from[(r >> 8) as usize % from.len()]
    }

    async fn run(&mut self, world: &World, ops: u64, phase: Phase) -> PhaseStats {
        let mut stats = PhaseStats {
            read_full: Vec::with_capacity(ops as usize * 3 / 4),
            read_route: Vec::with_capacity(ops as usize * 3 / 4),
            write: Vec::with_capacity(ops as usize / 3),
            ..PhaseStats::default()
        };
        let started = Instant::now();
        for _ in 0..ops {
            let roll = self.next() % 100;
            if roll < 70 {
                let i = self.pick(20);
                self.read(world, i, phase, &mut stats);
            } else if roll < 90 {
                let i = self.pick(50);
                self.write(world, i, &mut stats).await;
            } else if self.deleted.len() >= DELETED_KEPT {
                let i = self.deleted.pop_front().expect("not empty");
                stats.recreates += 1;
                self.write(world, i, &mut stats).await;
            } else {
                let i = self.pick(10);
                if self.ledger[i].is_some() {
                    self.delete(world, i, &mut stats).await;
                } else {
                    stats.recreates += 1;
                    self.write(world, i, &mut stats).await;
                }
            }
        }
        stats.ops = ops;
        stats.wall = started.elapsed();
        stats
    }

    /// A read through the table must find the latest acknowledged content (I2, I3).
    fn read(&mut self, world: &World, i: usize, phase: Phase, stats: &mut PhaseStats) {
        let key = world.keys[i].as_str();
        let timed = phase == Phase::Baseline || world.migrating.load(Ordering::Relaxed);
        // The full read: `Table::read`, the store read; `Table::read` alone inside.
        let start = Instant::now();
        let t0 = start;
        let guard = std::hint::black_box(world.table.read(key));
        let route = guard.route();
        let t1 = Instant::now();
        let found = world.node(i, route).bytes(key);
        drop(guard);
        let t2 = Instant::now();
        stats.reads += 1;
        if timed {
            stats.read_full.push((t2 - start).as_nanos() as u64);
            stats.read_route.push((t1 - t0).as_nanos() as u64);
        } else {
            stats.reads_after_job += 1;
        }
        let expected = self.ledger[i];
        let ok = match (&found, expected) {
            (None, None) => true,
            (Some(data), Some(version)) => version_of(i, data) == Some(version),
            _ => false,
        };
        if !ok {
            stats.failed_reads += 1;
            if stats.failures.len() < DESCRIBED {
                // What the key looks like now: was the route stale by the time of the read?
                let now = world.table.route_read(key);
                let again = world.node(i, now).bytes(key);
                stats.failures.push(format!(
                    "{key}: routed {route:?} (placed on target: {}), found {:?}, expected {expected:?}; \
                     routed again {now:?}: {:?}",
                    world.on_target[i].load(Ordering::Acquire),
                    found.map(|d| version_of(i, &d)),
                    again.map(|d| version_of(i, &d)),
                ));
            }
        }
    }

    async fn write(&mut self, world: &World, i: usize, stats: &mut PhaseStats) {
        let version = self.next_version[i];
        self.next_version[i] += 1;
        let data = content(i, version);
        let key = &world.keys[i];
        let t0 = Instant::now();
        let Some((ticket, fenced)) = ticket(world, key, stats).await else {
            return;
        };
        world.node(i, ticket.route()).insert(key.clone(), data);
        self.ledger[i] = Some(version);
        drop(ticket);
        stats.wrote(t0.elapsed().as_nanos() as u64, fenced);
        stats.writes += 1;
    }

    async fn delete(&mut self, world: &World, i: usize, stats: &mut PhaseStats) {
        let key = &world.keys[i];
        let t0 = Instant::now();
        let Some((ticket, fenced)) = ticket(world, key, stats).await else {
            return;
        };
        world
            .node(i, ticket.route())
            .delete(key)
            .await
            .expect("MemStore deletes");
        self.ledger[i] = None;
        drop(ticket);
        stats.wrote(t0.elapsed().as_nanos() as u64, fenced);
        stats.deletes += 1;
        self.deleted.push_back(i);
    }
}

/// A write ticket for `key` and whether it waited on a fence (the same steps as
/// `Table::begin_write`, which first tries without waiting); `None` when the fence outlasted
/// the writers' timeout (the write is then not made, so not acknowledged).
async fn ticket<'w>(
    world: &'w World,
    key: &ObjectKey,
    stats: &mut PhaseStats,
) -> Option<(WriteTicket<'w>, bool)> {
    match world.table.try_begin_write(key.as_str()) {
        Ok(ticket) => Some((ticket, false)),
        Err(Fenced) => {
            stats.fenced_writes += 1;
            match world.table.begin_write(key.as_str()).await {
                Ok(ticket) => Some((ticket, true)),
                Err(_) => {
                    stats.refused_writes += 1;
                    None
                }
            }
        }
    }
}

/// Runs `ops` ops split over the clients, one OS thread each (with a current-thread tokio
/// runtime for the fence's timed wait).
fn run_phase(
    world: &World,
    clients: Vec<Client>,
    ops: u64,
    phase: Phase,
) -> (Vec<Client>, PhaseStats) {
    let per_client = ops / CLIENTS as u64;
    std::thread::scope(|scope| {
        let threads: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(c, mut client)| {
                let ops = per_client + u64::from((c as u64) < ops % CLIENTS as u64);
                scope.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .expect("client runtime");
                    let stats = runtime.block_on(client.run(world, ops, phase));
                    (client, stats)
                })
            })
            .collect();
        let mut clients = Vec::new();
        let mut total = PhaseStats::default();
        for thread in threads {
            let (client, stats) = thread.join().expect("client thread");
            clients.push(client);
            total = total.merge(stats);
        }
        (clients, total)
    })
}

/// Nearest-rank percentile of sorted nanoseconds.
fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ns(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} ns"),
        1_000..1_000_000 => format!("{:.2} µs", n as f64 / 1e3),
        _ => format!("{:.2} ms", n as f64 / 1e6),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The median cost of the two clock reads around each timed op (included in every figure).
fn clock_pair_ns() -> u64 {
    let mut samples: Vec<u64> = (0..100_000)
        .map(|_| {
            let t0 = Instant::now();
            let t1 = Instant::now();
            (t1 - t0).as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    pct(&samples, 0.5)
}

struct Latency {
    full: [u64; 3],
    route: [u64; 3],
    write: [u64; 3],
}

fn latency(stats: &mut PhaseStats) -> Latency {
    let qs = [0.5, 0.99, 0.999];
    stats.read_full.sort_unstable();
    stats.read_route.sort_unstable();
    stats.write.sort_unstable();
    Latency {
        full: qs.map(|q| pct(&stats.read_full, q)),
        route: qs.map(|q| pct(&stats.read_route, q)),
        write: qs.map(|q| pct(&stats.write, q)),
    }
}

/// What the final check found.
#[derive(Default)]
struct Final {
    lost: u64,
    resurrected: u64,
    on_target: u64,
    left_on_source: u64,
    on_both: u64,
    deleted: u64,
    problems: Vec<String>,
}

/// Every key, read through the table, holds its last acknowledged write; deleted keys are
/// on neither node (I3).
fn check(world: &World, clients: &[Client]) -> Final {
    let mut out = Final::default();
    for i in 0..OBJECTS {
        let expected = clients[i % CLIENTS].ledger[i];
        let key = world.keys[i].as_str();
        let route = world.table.route_read(key);
        let found = world.node(i, route).bytes(key);
        let on_source = world.source.bytes(key).is_some();
        let on_target = world.target.bytes(key).is_some();
        match expected {
            Some(version) => {
                if found.as_deref().and_then(|d| version_of(i, d)) != Some(version) {
                    out.lost += 1;
                    if out.problems.len() < DESCRIBED {
                        out.problems.push(format!(
                            "{key}: lost write, routed {route:?}, found {:?}, expected {version}",
                            found.map(|d| version_of(i, &d))
                        ));
                    }
                }
                match (on_source, on_target) {
                    (true, true) => out.on_both += 1,
                    (true, false) => out.left_on_source += 1,
                    (false, true) => out.on_target += 1,
                    (false, false) => {}
                }
            }
            None => {
                out.deleted += 1;
                if found.is_some() || on_source || on_target {
                    out.resurrected += 1;
                    if out.problems.len() < DESCRIBED {
                        out.problems.push(format!(
                            "{key}: deleted, but found through the table: {}, on source: \
                             {on_source}, on target: {on_target}",
                            found.is_some()
                        ));
                    }
                }
            }
        }
    }
    out
}

fn main() {
    let ops = op_count();
    let (a, b) = (
        NodeId::new("node-a").expect("valid"),
        NodeId::new("node-b").expect("valid"),
    );
    let keys: Vec<ObjectKey> = (0..OBJECTS)
        .map(|i| ObjectKey::new(format!("obj/{i:06}")).expect("valid"))
        .collect();
    let source = MemStore::new();
    for (i, key) in keys.iter().enumerate() {
        source.insert(key.clone(), content(i, 0));
    }
    let world = Arc::new(World {
        b,
        source,
        target: MemStore::new(),
        table: Table::default(),
        keys,
        on_target: (0..OBJECTS).map(|_| AtomicBool::new(false)).collect(),
        drain: std::env::var_os("FERRY_TRAFFIC_NO_DRAIN").is_none(),
        migrating: AtomicBool::new(false),
    });
    // The engine's runtime exists (idle) in both phases.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let clock = clock_pair_ns();
    let clients: Vec<Client> = (0..CLIENTS).map(Client::new).collect();

    // Baseline: the same traffic, no migration.
    let (clients, mut baseline) = run_phase(&world, clients, ops, Phase::Baseline);
    let stats_before: Stats = world.table.stats();

    // Migrating: a job moves everything A → B while the clients run.
    let hook_world = Arc::clone(&world);
    let engine = Engine::builder()
        .node(a, Arc::new(world.source.clone()))
        .node(b, Arc::new(world.target.clone()))
        .checkpoint_store(Arc::new(MemoryStore::new()))
        .forwarding(world.table.clone())
        .commit_hook(move |key, node| {
            assert_eq!(node, hook_world.b, "committed to an unknown node");
            let i = World::index(key);
            hook_world.on_target[i].store(true, Ordering::Release);
            let (world, key) = (Arc::clone(&hook_world), key.clone());
            Box::pin(async move {
                if world.drain {
                    // Waits (briefly: a read holds its guard for one lookup and one in-memory
                    // read) for the reads that may have routed to the source before the flip.
                    world.table.drain_reads(key.as_str()).await;
                }
                Ok(())
            })
        })
        .build()
        .expect("engine");
    let cleanup = cleanup_policy();
    let data_bytes = (world.source.len() * OBJECT_SIZE) as u64;
    let rate_bytes = (data_bytes as f64 / (baseline.wall.as_secs_f64() * SPAN)) as u64;
    let rate = Rate::bytes_per_sec(rate_bytes.max(1)).expect("a positive rate");
    let plan = MigrationPlan::new(a, b, ObjectSelection::all())
        .with_id(JobId::new("traffic").expect("valid"))
        .with_verify(VerifyMode::Checksum)
        .with_cleanup(cleanup)
        .with_concurrency(NonZeroUsize::new(CONCURRENCY).expect("not zero"))
        .with_max_flip_attempts(MAX_FLIP_ATTEMPTS)
        .with_rate(rate);
    world.migrating.store(true, Ordering::Relaxed);
    let handle = runtime.block_on(engine.start(plan)).expect("start");
    let mut watch = handle.watch();
    let watcher = {
        let world = Arc::clone(&world);
        runtime.spawn(async move {
            let _ = watch.wait_for(|s| s.status.is_finished()).await;
            world.migrating.store(false, Ordering::Relaxed);
        })
    };
    let (clients, mut migrating) = run_phase(&world, clients, ops, Phase::Migrating);
    handle.set_rate(Rate::Unlimited);
    let snapshot: JobSnapshot = runtime.block_on(handle.wait()).expect("job");
    runtime.block_on(watcher).expect("watcher");
    let table = world.table.stats();
    let outcome = check(&world, &clients);

    let base = latency(&mut baseline);
    let mig = latency(&mut migrating);
    let failed_reads = baseline.failed_reads + migrating.failed_reads;
    let fences = table.fences - stats_before.fences;
    let timed_migrating = migrating.reads - migrating.reads_after_job;

    println!(
        "## Traffic through the forwarding table: {} ops per phase, {} × 4 KiB objects, {CLIENTS} client threads\n",
        thousands(ops),
        thousands(OBJECTS as u64)
    );
    println!(
        "Job: {} → {}, checksum verify, cleanup {cleanup:?}, concurrency {CONCURRENCY}, \
         max_flip_attempts {MAX_FLIP_ATTEMPTS}, rate {:.1} MiB/s (≈ {SPAN}× the baseline's \
         wall time), unthrottled once the clients were done: {:?}, {} objects done ({} \
         skipped: deleted during their copy), job time {:.2} s (the migrating phase: {:.2} s). \
         Clock: a pair of `Instant::now()` ≈ {clock} ns, included in every figure.\n",
        snapshot.source,
        snapshot.target,
        rate_bytes as f64 / f64::from(1 << 20),
        snapshot.status,
        thousands(snapshot.done_objects),
        thousands(snapshot.skipped_objects),
        snapshot.elapsed.as_secs_f64(),
        migrating.wall.as_secs_f64(),
    );
    println!(
        "| phase | ops/s | reads timed | read p50 | read p99 | read p99.9 | Table::read p50 | Table::read p99 | Table::read p99.9 | write p50 | write p99 | write p99.9 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let ops_per_sec = |s: &PhaseStats| (s.ops as f64 / s.wall.as_secs_f64()) as u64;
    for (name, stats, l) in [
        ("baseline", &baseline, &base),
        ("migrating", &migrating, &mig),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(ops_per_sec(stats)),
            thousands(stats.read_full.len() as u64),
            ns(l.full[0]),
            ns(l.full[1]),
            ns(l.full[2]),
            ns(l.route[0]),
            ns(l.route[1]),
            ns(l.route[2]),
            ns(l.write[0]),
            ns(l.write[1]),
            ns(l.write[2]),
        );
    }
    let ratio = |m: u64, b: u64| format!("{:.2}×", m as f64 / b.max(1) as f64);
    println!(
        "| migrating / baseline | {} | | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        ratio(ops_per_sec(&migrating), ops_per_sec(&baseline)),
        ratio(mig.full[0], base.full[0]),
        ratio(mig.full[1], base.full[1]),
        ratio(mig.full[2], base.full[2]),
        ratio(mig.route[0], base.route[0]),
        ratio(mig.route[1], base.route[1]),
        ratio(mig.route[2], base.route[2]),
        ratio(mig.write[0], base.write[0]),
        ratio(mig.write[1], base.write[1]),
        ratio(mig.write[2], base.write[2]),
    );
    println!(
        "| ops | reads | writes (incl. re-creates) | deletes | re-creates | failed reads | lost writes | resurrected | fences | refused flips | flips | writes that waited on a fence (longest) | writes refused (fence timeout) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {failed_reads} | {} | {} | {fences} | {} | {} | {} ({}) | {} |\n",
        thousands(baseline.ops + migrating.ops),
        thousands(baseline.reads + migrating.reads),
        thousands(baseline.writes + migrating.writes),
        thousands(baseline.deletes + migrating.deletes),
        thousands(baseline.recreates + migrating.recreates),
        outcome.lost,
        outcome.resurrected,
        thousands(table.flips_refused - stats_before.flips_refused),
        thousands(table.flips - stats_before.flips),
        baseline.fenced_writes + migrating.fenced_writes,
        ns(baseline.longest_fenced.max(migrating.longest_fenced)),
        baseline.refused_writes + migrating.refused_writes,
    );
    println!(
        "Migrating phase: {} of its {} reads ran while the job ran (timed), {} after it ended \
         (checked, not timed); {:.1}% of its `Table::read` calls found an entry (hits). \
         Final state: {} keys on the target only, {} on the source only (absent when the job \
         reached them, re-created there later), {} on both, {} deleted (on neither node).",
        thousands(timed_migrating),
        thousands(migrating.reads),
        thousands(migrating.reads_after_job),
        100.0 * (table.hits - stats_before.hits) as f64
            / (table.lookups - stats_before.lookups).max(1) as f64,
        thousands(outcome.on_target),
        thousands(outcome.left_on_source),
        thousands(outcome.on_both),
        thousands(outcome.deleted),
    );
    for failure in baseline.failures.iter().chain(&migrating.failures) {
        println!("failed read: {failure}");
    }
    for problem in &outcome.problems {
        println!("final check: {problem}");
    }

    assert_eq!(failed_reads, 0, "failed reads (I2)");
    assert_eq!(outcome.lost, 0, "lost writes (I3)");
    assert_eq!(outcome.resurrected, 0, "resurrected keys (I3)");
    assert_eq!(snapshot.status, JobStatus::Completed, "the job completed");
    assert!(fences > 0, "the fence fallback was not exercised");
}
