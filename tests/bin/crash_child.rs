//! The engine child of the crash loop (`it/crash_loop.rs`, `cargo xtask crash`): a small
//! storage system around a running migration job, made to be SIGKILLed at any moment and
//! started again on the same directory.
//!
//! `ferry-crash-child WORK_DIR CYCLE SEED RATE [--final]`
//!
//! - Two `DirStore` nodes, `WORK_DIR/src` (the generated tree) and `WORK_DIR/dst`, a
//!   `FileStore` in `WORK_DIR/state`, a forwarding `Table`, and an `Engine` whose commit hook
//!   moves the key in the placement map (appended to `placement.log` before the hook returns,
//!   reloaded at start) and then drains the reads that routed to the source before the flip.
//! - The job moves the keys of `keys.txt` src → dst: checksum verify, cleanup right after
//!   verify, concurrency 8, two refused flips before a fence, a save every 16 objects or
//!   100 ms, `RATE` bytes/s. With no record yet it is started; otherwise `Engine::recover`
//!   resumes it. Then a second engine on the same checkpoint directory must be refused (I6).
//! - Two client threads read, write (overwrites, hot keys), delete and re-create their own
//!   keys through the table, as the engine's model test routes them (a read: `Table::read`,
//!   then the node it names or, on `Route::Source`, the placement map's node; a write or
//!   delete: a `WriteTicket`, the node it names, the ticket dropped after the store
//!   acknowledged). Every write is in the ledger before and after (`ferry_tests::crash`),
//!   every read is checked against it; a failed check is an `F` line. Reads and writes favour
//!   the keys the job is copying now (from its events) and a few hot keys; one read in three
//!   of the keys just verified (the next commit flips them and deletes their source) is
//!   slow between routing and reading.
//! - `FERRY_CRASH_KILL=save:N:US` (or `hook:N:US`) makes the child SIGKILL itself `US` µs
//!   after its `N`-th checkpoint save (commit hook call) began: inside a save, inside a
//!   cleanup batch.
//! - `--final`: the run is not killed. The job runs unthrottled to its end, the clients stop,
//!   every key is read once more through the table, and `final.txt` reports the job and the
//!   process's peak RSS. Without it the child serves traffic until it is killed.
//!
//! Exit codes: 0 after a `--final` run, 3 on a panic, 4 when a second engine ran the job; any
//! error of the engine or the stores is printed and exits 1.
// The crash loop's child process: it stops on the first unexpected error (expect says
// where) and tells the driver why on stderr.
#![allow(clippy::expect_used, clippy::print_stderr)]

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry::Engine;
use ferry::checkpoint::{
    Acquired, BoxFuture, CheckpointStore, FileStore, JobRecord, Lease, Loaded, Progress,
};
use ferry::engine::BoxError;
use ferry::forwarding::{Route, Table};
use ferry::store::{DirStore, Store, body_from_bytes};
use ferry::types::{
    CheckpointInterval, CleanupPolicy, JobId, JobSnapshot, JobStatus, MigrationPlan, NodeId,
    ObjectKey, ObjectSelection, ObjectState, Rate, VerifyMode,
};
use ferry_tests::crash::{self, CHECKPOINT_OBJECTS, CONCURRENCY, Checker, KeyState, Rng, Value};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::broadcast::error::RecvError;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

const CLIENTS: usize = 2;
/// Keys the job started copying lately, kept per client for its reads and writes.
const RECENT: usize = 32;
/// One key in this many of a client's is hot.
const HOT_EVERY: usize = 40;
/// Deleted keys a client keeps before it re-creates the oldest.
const DELETED_KEPT: usize = 8;
/// Reads counted per `R` line.
const READS_PER_LINE: u64 = 64;
/// Pause between a client's operations: traffic, not a flood that starves the job.
const CLIENT_PACE: Duration = Duration::from_micros(300);

fn main() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        // A panic on a client thread must end the process, not just the thread.
        std::process::exit(3);
    }));
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("ferry-crash-child: {e}");
            eprintln!("usage: ferry-crash-child WORK_DIR CYCLE SEED RATE [--final]");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the engine's runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("ferry-crash-child: {e}");
        let mut source = e.source();
        while let Some(cause) = source {
            eprintln!("  caused by: {cause}");
            source = cause.source();
        }
        std::process::exit(1);
    }
}

struct Args {
    dir: PathBuf,
    cycle: u64,
    seed: u64,
    rate: Rate,
    final_run: bool,
}

impl Args {
    fn parse() -> Result<Args, AnyError> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let (dir, cycle, seed, rate, rest) = match args.as_slice() {
            [dir, cycle, seed, rate, rest @ ..] => (dir, cycle, seed, rate, rest),
            _ => return Err("four arguments expected".into()),
        };
        Ok(Args {
            dir: PathBuf::from(dir),
            cycle: cycle.parse()?,
            seed: seed.parse()?,
            rate: match rate.parse::<u64>()? {
                0 => Rate::Unlimited,
                n => Rate::bytes_per_sec(n)?,
            },
            final_run: match rest {
                [] => false,
                [flag] if flag == "--final" => true,
                _ => return Err(format!("unexpected arguments {rest:?}").into()),
            },
        })
    }
}

/// Where the child SIGKILLs itself, from `FERRY_CRASH_KILL`.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    Save { nth: u64, after_us: u64 },
    Hook { nth: u64, after_us: u64 },
}

#[derive(Debug, Default)]
struct Killer {
    at: Option<KillAt>,
    saves: AtomicU64,
    hooks: AtomicU64,
}

impl Killer {
    fn from_env() -> Result<Killer, AnyError> {
        let Ok(text) = std::env::var("FERRY_CRASH_KILL") else {
            return Ok(Killer::default());
        };
        let parts: Vec<&str> = text.split(':').collect();
        let at = match parts.as_slice() {
            ["save", nth, us] => KillAt::Save {
                nth: nth.parse()?,
                after_us: us.parse()?,
            },
            ["hook", nth, us] => KillAt::Hook {
                nth: nth.parse()?,
                after_us: us.parse()?,
            },
            _ => return Err(format!("FERRY_CRASH_KILL={text}: save:N:US or hook:N:US").into()),
        };
        Ok(Killer {
            at: Some(at),
            ..Killer::default()
        })
    }

    fn on_save(&self) {
        if let Some(KillAt::Save { nth, after_us }) = self.at
            && self.saves.fetch_add(1, Ordering::Relaxed) + 1 == nth
        {
            kill_self_after(after_us);
        }
    }

    fn on_hook(&self) {
        if let Some(KillAt::Hook { nth, after_us }) = self.at
            && self.hooks.fetch_add(1, Ordering::Relaxed) + 1 == nth
        {
            kill_self_after(after_us);
        }
    }
}

/// SIGKILLs this process `after_us` µs from now, from another thread, while the caller goes
/// on (into its save, its cleanup).
fn kill_self_after(after_us: u64) {
    std::thread::spawn(move || {
        if after_us > 0 {
            std::thread::sleep(Duration::from_micros(after_us));
        }
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    });
}

/// The `FileStore`, with the [`Killer`] told of every save.
#[derive(Debug)]
struct Checkpoints {
    inner: FileStore,
    killer: Arc<Killer>,
}

impl CheckpointStore for Checkpoints {
    fn create<'a>(
        &'a self,
        job: &'a JobId,
        plan: &'a MigrationPlan,
    ) -> BoxFuture<'a, ferry::checkpoint::Result<JobRecord>> {
        self.inner.create(job, plan)
    }

    fn load<'a>(
        &'a self,
        job: &'a JobId,
    ) -> BoxFuture<'a, ferry::checkpoint::Result<Option<Loaded>>> {
        self.inner.load(job)
    }

    fn list(&self) -> BoxFuture<'_, ferry::checkpoint::Result<Vec<JobId>>> {
        self.inner.list()
    }

    fn delete<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, ferry::checkpoint::Result<bool>> {
        self.inner.delete(job)
    }

    fn acquire<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, ferry::checkpoint::Result<Acquired>> {
        self.inner.acquire(job)
    }

    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, ferry::checkpoint::Result<()>> {
        self.inner.renew(lease)
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, ferry::checkpoint::Result<()>> {
        self.inner.release(lease)
    }

    fn save<'a>(
        &'a self,
        lease: &'a Lease,
        status: JobStatus,
        progress: Arc<Progress>,
    ) -> BoxFuture<'a, ferry::checkpoint::Result<u64>> {
        self.killer.on_save();
        self.inner.save(lease, status, progress)
    }
}

/// The storage system: two nodes, the table (reads counted, drained by the hook), the
/// placement map, the ledger.
struct World {
    keys: Vec<ObjectKey>,
    index: HashMap<String, usize>,
    src: DirStore,
    dst: DirStore,
    dst_node: NodeId,
    table: Table,
    /// Per key: the commit hook placed it on the target.
    placed: Vec<AtomicBool>,
    placement_log: Mutex<File>,
    ledger: Mutex<File>,
    states: Vec<Mutex<KeyState>>,
    /// Per client, keys of its own that the job started copying lately (`[id][0]`: their
    /// writes race the copy), and that it verified lately (`[id][1]`: the next commit flips
    /// them and deletes their source, so their reads race the cleanup).
    recent: Vec<[Mutex<VecDeque<usize>>; 2]>,
    stop: AtomicBool,
    next_seq: AtomicU64,
    killer: Arc<Killer>,
}

impl World {
    /// The node serving key `i` for `route`.
    fn node(&self, i: usize, route: Route) -> &DirStore {
        match route {
            Route::Source if self.placed[i].load(Ordering::Acquire) => &self.dst,
            Route::Source => &self.src,
            Route::Target(node) => {
                assert_eq!(node, self.dst_node, "routed to an unknown node");
                &self.dst
            }
        }
    }

    /// Appends a line to the ledger (one `write`: the page cache keeps it through SIGKILL).
    fn log(&self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.ledger
            .lock()
            .write_all(&bytes)
            .expect("the ledger takes a line");
    }

    /// The commit hook's work for `key`: place it on the target, durably enough (the log
    /// line is written before the source can go); the hook then drains the reads that
    /// routed to the source before the flip (`Table::drain_reads`).
    fn commit(&self, key: &ObjectKey, node: NodeId) -> Result<(), BoxError> {
        if node != self.dst_node {
            return Err(format!("commit of {key:?} to unknown node {node}").into());
        }
        let i = *self
            .index
            .get(key.as_str())
            .ok_or_else(|| format!("commit of a key not in the tree: {key:?}"))?;
        self.placed[i].store(true, Ordering::Release);
        self.placement_log
            .lock()
            .write_all(format!("{key}\n").as_bytes())?;
        Ok(())
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

async fn run(args: Args) -> Result<(), AnyError> {
    let dir = &args.dir;
    for name in [crash::LEDGER, crash::PLACEMENT, crash::COPIES] {
        crash::end_torn_line(&dir.join(name))?;
    }
    let names: Vec<String> = std::fs::read_to_string(dir.join(crash::KEYS))?
        .lines()
        .map(str::to_owned)
        .collect();
    let keys = names
        .iter()
        .map(ObjectKey::new)
        .collect::<Result<Vec<_>, _>>()?;
    let index: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i))
        .collect();
    let ledger_text = match std::fs::read_to_string(dir.join(crash::LEDGER)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let replay = crash::replay(&ledger_text, &names);
    drop(ledger_text);
    let placed: Vec<AtomicBool> = (0..keys.len()).map(|_| AtomicBool::new(false)).collect();
    if let Ok(text) = std::fs::read_to_string(dir.join(crash::PLACEMENT)) {
        for line in text.lines() {
            if let Some(&i) = index.get(line) {
                placed[i].store(true, Ordering::Relaxed);
            }
        }
    }

    let (src_node, dst_node) = (NodeId::new("src")?, NodeId::new("dst")?);
    let src = DirStore::open(dir.join(crash::SOURCE_DIR)).await?;
    let dst = DirStore::open(dir.join(crash::TARGET_DIR)).await?;
    let killer = Arc::new(Killer::from_env()?);
    let state_dir = dir.join(crash::STATE_DIR);
    let checkpoints = Arc::new(Checkpoints {
        inner: FileStore::open(&state_dir)?,
        killer: Arc::clone(&killer),
    });
    let table = Table::default();
    let world = Arc::new(World {
        keys: keys.clone(),
        index,
        src: src.clone(),
        dst: dst.clone(),
        dst_node,
        table: table.clone(),
        placed,
        placement_log: Mutex::new(append(&dir.join(crash::PLACEMENT))?),
        ledger: Mutex::new(append(&dir.join(crash::LEDGER))?),
        states: replay.states.into_iter().map(Mutex::new).collect(),
        recent: (0..CLIENTS)
            .map(|_| [Mutex::new(VecDeque::new()), Mutex::new(VecDeque::new())])
            .collect(),
        stop: AtomicBool::new(false),
        // Unique across runs: the cycle in the high bits.
        next_seq: AtomicU64::new((args.cycle << 40).max(replay.max_seq + 1)),
        killer,
    });
    world.log(&format!("B {}", args.cycle));
    let hook_world = Arc::clone(&world);
    let engine = Engine::builder()
        .node(src_node, Arc::new(src.clone()))
        .node(dst_node, Arc::new(dst.clone()))
        .checkpoint_store(Arc::clone(&checkpoints) as Arc<dyn CheckpointStore>)
        .forwarding(table.clone())
        .commit_hook(move |key, node| {
            let result = hook_world.commit(key, node);
            let (world, key) = (Arc::clone(&hook_world), key.clone());
            Box::pin(async move {
                result?;
                // The reads that routed to the source before the flip end before it goes.
                world.table.drain_reads(key.as_str()).await;
                world.killer.on_hook();
                Ok(())
            })
        })
        .build()?;
    let job = JobId::new(crash::JOB_ID)?;
    let handle = if checkpoints.load(&job).await?.is_none() {
        let plan = MigrationPlan::new(src_node, dst_node, ObjectSelection::Keys(keys))
            .with_id(job.clone())
            .with_verify(VerifyMode::Checksum)
            .with_cleanup(CleanupPolicy::AfterVerify)
            .with_concurrency(NonZeroUsize::new(CONCURRENCY).expect("not zero"))
            .with_max_flip_attempts(2)
            .with_rate(args.rate)
            .with_checkpoint(CheckpointInterval {
                objects: CHECKPOINT_OBJECTS,
                every: Duration::from_millis(100),
            });
        Some(engine.start(plan).await?)
    } else {
        let mut handles = engine.recover().await?;
        if handles.len() > 1 {
            return Err(format!("recover resumed {} jobs, one expected", handles.len()).into());
        }
        handles.pop()
    };

    if handle.is_some() {
        // I6: a second engine on the same checkpoint directory must be refused the job.
        let second = Engine::builder()
            .node(src_node, Arc::new(src.clone()))
            .node(dst_node, Arc::new(dst.clone()))
            .checkpoint_store(Arc::new(FileStore::open(&state_dir)?))
            .build()?;
        match second.recover().await {
            Err(ferry::engine::Error::Checkpoint(ferry::checkpoint::Error::Locked { .. })) => {}
            Ok(handles) => {
                world.log(&format!(
                    "F i6: a second engine resumed {} job(s) this one owns",
                    handles.len()
                ));
                std::process::exit(4);
            }
            Err(e) => world.log(&format!("F i6: a second engine failed otherwise: {e}")),
        }
    }

    if let Some(handle) = &handle {
        if args.final_run {
            handle.set_rate(Rate::Unlimited);
        }
        let mut events = handle.events();
        let mut copies = append(&dir.join(crash::COPIES))?;
        copies.write_all(format!("B {}\n", args.cycle).as_bytes())?;
        let world = Arc::clone(&world);
        tokio::spawn(async move {
            loop {
                let line = match events.recv().await {
                    Ok(event) => {
                        let Some(&i) = world.index.get(event.key.as_str()) else {
                            continue;
                        };
                        let ring = match event.state {
                            ObjectState::Copying => Some(0),
                            ObjectState::Verified => Some(1),
                            _ => None,
                        };
                        if let Some(ring) = ring {
                            let mut recent = world.recent[i % CLIENTS][ring].lock();
                            if !recent.contains(&i) {
                                if recent.len() == RECENT {
                                    recent.pop_front();
                                }
                                recent.push_back(i);
                            }
                        }
                        format!("{} {}\n", event.state.name(), event.key)
                    }
                    Err(RecvError::Lagged(n)) => format!("lagged {n}\n"),
                    Err(RecvError::Closed) => break,
                };
                copies
                    .write_all(line.as_bytes())
                    .expect("copies.log takes a line");
            }
        });
    }

    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let world = Arc::clone(&world);
            let seed = args.seed ^ args.cycle.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ id as u64;
            std::thread::spawn(move || client(&world, id, seed))
        })
        .collect();

    let snapshot = match handle {
        Some(handle) => handle.wait().await?,
        None => engine
            .jobs(None)
            .await?
            .into_iter()
            .find(|s| s.id == job)
            .ok_or("no job to resume and no record of one")?,
    };
    if !args.final_run {
        // Traffic goes on until the kill.
        std::future::pending::<()>().await;
    }
    world.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().map_err(|_| "a client thread panicked")?;
    }
    // Every key once more through the table, the job done.
    let last = Arc::clone(&world);
    std::thread::spawn(move || {
        let runtime = client_runtime();
        for i in 0..last.keys.len() {
            read(&last, &runtime, i, 0, "final read");
        }
    })
    .join()
    .map_err(|_| "the final pass panicked")?;
    write_final(dir, &snapshot, &world.table)?;
    Ok(())
}

fn write_final(dir: &Path, snapshot: &JobSnapshot, table: &Table) -> Result<(), AnyError> {
    let stats = table.stats();
    let peak_rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let text = format!(
        "status {:?}\ntotal {}\ndone {}\nskipped {}\nfailed {}\npeak_rss_kib {peak_rss_kib}\n\
         flips {}\nflips_refused {}\nfences {}\n",
        snapshot.status,
        snapshot.total_objects.unwrap_or(0),
        snapshot.done_objects,
        snapshot.skipped_objects,
        snapshot.failed_objects,
        stats.flips,
        stats.flips_refused,
        stats.fences,
    );
    std::fs::write(dir.join(crash::FINAL), text)?;
    Ok(())
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime")
}

/// One client thread: reads, writes, deletes and re-creates of its keys (key `i` belongs to
/// client `i % CLIENTS`) until told to stop.
fn client(world: &World, id: usize, seed: u64) {
    let runtime = client_runtime();
    let mut rng = Rng(seed);
    let owned: Vec<usize> = (id..world.keys.len()).step_by(CLIENTS).collect();
    let hot: Vec<usize> = owned
        .iter()
        .copied()
        .filter(|i| (i / CLIENTS).is_multiple_of(HOT_EVERY))
        .collect();
    let mut deleted: VecDeque<usize> = owned
        .iter()
        .copied()
        .filter(|&i| world.states[i].lock().acked.is_none())
        .collect();
    let mut reads = 0u64;
    while !world.stop.load(Ordering::Relaxed) {
        let recent = |rng: &mut Rng, ring: usize| {
            let recent = world.recent[id][ring].lock();
            (!recent.is_empty()).then(|| recent[rng.below(recent.len() as u64) as usize])
        };
        let roll = rng.below(100);
        if roll < 62 {
            let r = rng.below(100);
            let (i, slow) = match recent(&mut rng, 1) {
                Some(i) if r < 35 => (i, rng.below(3) == 0),
                _ if r < 50 => (rng.pick(&hot).unwrap_or(owned[0]), false),
                _ => (rng.pick(&owned).unwrap_or(0), false),
            };
            let slow_us = if slow { rng.between(500, 6000) } else { 0 };
            read(world, &runtime, i, slow_us, "read");
            reads += 1;
            if reads.is_multiple_of(READS_PER_LINE) {
                world.log(&format!("R {READS_PER_LINE}"));
            }
        } else if roll < 92 {
            let r = rng.below(100);
            let i = match recent(&mut rng, 0) {
                Some(i) if r < 30 => i,
                _ if r < 80 => rng.pick(&hot).unwrap_or(owned[0]),
                _ => rng.pick(&owned).unwrap_or(0),
            };
            let len = match rng.below(100) {
                0..70 => rng.below(4 << 10),
                70..95 => rng.below(256 << 10),
                _ => rng.below(2 << 20),
            };
            if write(world, &runtime, i, len as usize) {
                deleted.retain(|&d| d != i);
            }
        } else if !deleted.is_empty() && (deleted.len() >= DELETED_KEPT || roll >= 96) {
            // Re-create the key deleted longest ago.
            let i = deleted.pop_front().expect("not empty");
            write(world, &runtime, i, rng.below(64 << 10) as usize);
        } else {
            let i = match recent(&mut rng, 0) {
                Some(i) if rng.below(2) == 0 => i,
                _ => rng.pick(&owned).unwrap_or(0),
            };
            let present = world.states[i].lock().acked.is_some();
            if present && delete(world, &runtime, i) {
                deleted.push_back(i);
            }
        }
        std::thread::sleep(CLIENT_PACE);
    }
    if !reads.is_multiple_of(READS_PER_LINE) {
        world.log(&format!("R {}", reads % READS_PER_LINE));
    }
}

/// Reads key `i` through the table and checks what it finds against the ledger (I2, I3).
fn read(world: &World, runtime: &tokio::runtime::Runtime, i: usize, slow_us: u64, what: &str) {
    let key = &world.keys[i];
    let guard = world.table.read(key.as_str());
    let route = guard.route();
    let store = world.node(i, route);
    if slow_us > 0 {
        // A slow request: routed, then queued before it reaches the node.
        std::thread::sleep(Duration::from_micros(slow_us));
    }
    let found = runtime.block_on(read_object(store, key));
    drop(guard);
    let mut state = world.states[i].lock();
    match found {
        Ok(value) if state.allows(value) => {
            if let Some(seq) = state.proven_by(value) {
                state.settle(seq);
                world.log(&format!("S {key} {seq}"));
            }
        }
        Ok(value) => world.log(&format!(
            "F {what} of {key} routed {route:?} (placed on target: {}) found {} where the \
             ledger allows {} or {:?}",
            world.placed[i].load(Ordering::Acquire),
            describe(value),
            describe(state.acked),
            state.pending,
        )),
        Err(e) => world.log(&format!(
            "F {what} of {key} routed {route:?}: {}",
            e.replace('\n', " ")
        )),
    }
}

fn describe(value: Value) -> String {
    match value {
        Some(seq) => format!("write {seq}"),
        None => "nothing".to_owned(),
    }
}

/// What `store` holds under `key`, streamed and checked chunk by chunk.
async fn read_object(store: &DirStore, key: &ObjectKey) -> Result<Value, String> {
    let object = match store.get(key).await {
        Ok(object) => object,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut checker = Checker::new(key.as_str());
    let mut body = object.checked_body();
    while let Some(chunk) = body.next().await {
        checker.feed(&chunk.map_err(|e| e.to_string())?);
    }
    checker.finish().map(Some)
}

/// Writes a new version of key `i` (about `len` bytes) through the table; whether it was
/// acknowledged.
fn write(world: &World, runtime: &tokio::runtime::Runtime, i: usize, len: usize) -> bool {
    let key = &world.keys[i];
    let seq = world.next_seq.fetch_add(1, Ordering::Relaxed);
    let len = crash::write_len(key.as_str(), seq, len);
    let data = Bytes::from(crash::content(key.as_str(), seq, len));
    change(world, runtime, i, seq, Some(data))
}

/// Deletes key `i` through the table; whether it was acknowledged.
fn delete(world: &World, runtime: &tokio::runtime::Runtime, i: usize) -> bool {
    let seq = world.next_seq.fetch_add(1, Ordering::Relaxed);
    change(world, runtime, i, seq, None)
}

/// A write (`Some`) or delete (`None`) of key `i` as intent `seq`: ledger intent, ticket, the
/// node the ticket names, ledger ack, ticket dropped.
fn change(
    world: &World,
    runtime: &tokio::runtime::Runtime,
    i: usize,
    seq: u64,
    data: Option<Bytes>,
) -> bool {
    let key = &world.keys[i];
    let value = data.as_ref().map(|_| seq);
    world.states[i].lock().intend(seq, value);
    world.log(&format!(
        "{} {key} {seq}",
        if data.is_some() { "W" } else { "D" }
    ));
    let ticket = match runtime.block_on(world.table.begin_write(key.as_str())) {
        Ok(ticket) => ticket,
        Err(_) => {
            // The fence outlasted the writers' timeout: not made, not acknowledged.
            world.states[i].lock().refuse(seq);
            world.log(&format!("X {key} {seq}"));
            return false;
        }
    };
    let store = world.node(i, ticket.route());
    let done = match data {
        Some(data) => runtime
            .block_on(store.put(key, body_from_bytes(data, 64 << 10)))
            .map(|_| ()),
        None => runtime.block_on(store.delete(key)).map(|_| ()),
    };
    let acked = match done {
        Ok(()) => {
            world.log(&format!("A {key} {seq}"));
            world.states[i].lock().settle(seq);
            true
        }
        // Its outcome is unknown: the intent stays pending.
        Err(e) => {
            world.log(&format!("F write of {key} failed: {e}"));
            false
        }
    };
    drop(ticket);
    acked
}
