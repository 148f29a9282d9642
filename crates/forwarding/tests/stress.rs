//! Concurrency tests with real threads and exhaustive interleavings (SPEC I2, I3).
// Tests stop on the first unexpected error: unwrap and expect say where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Barrier, Mutex};

use ferry_forwarding::{Config, Conflict, Fenced, Route, Table, WriteTicket};
use ferry_types::{NodeId, ObjectKey};

const KEYS: usize = 16;
const WRITERS: usize = 2;
const WRITES_PER_WRITER: usize = 20_000;
const READERS: usize = 2;
const READS_PER_READER: usize = 40_000;
const MAX_REFUSED_BEFORE_FENCE: u32 = 3;

/// A simulated store: five nodes, each a map from key to the last value written there.
struct Store {
    nodes: [Mutex<HashMap<usize, u64>>; NODES],
}

const NODES: usize = 5;

impl Store {
    fn get(&self, node: usize, key: usize) -> Option<u64> {
        self.nodes[node].lock().unwrap().get(&key).copied()
    }

    fn put(&self, node: usize, key: usize, value: u64) {
        self.nodes[node].lock().unwrap().insert(key, value);
    }
}

fn ids() -> [NodeId; NODES] {
    ["a", "b", "c", "d", "e"].map(|n| NodeId::new(n).unwrap())
}

fn index_of(route: Route, ids: &[NodeId; NODES]) -> usize {
    match route {
        Route::Source => 0,
        Route::Target(node) => ids.iter().position(|n| *n == node).unwrap(),
    }
}

fn name(key: usize) -> String {
    format!("object/{key}")
}

/// Moves every key `from` → `to`, copying and flipping, re-copying on conflict and fencing
/// after a few refusals. Returns (flips, refused).
fn move_all(
    table: &Table,
    store: &Store,
    rt: &tokio::runtime::Runtime,
    from: usize,
    to: usize,
) -> (u64, u64) {
    let ids = ids();
    let (mut flips, mut refused) = (0, 0);
    for key in 0..KEYS {
        let object = ObjectKey::new(name(key)).unwrap();
        table.register(&object, ids[from], ids[to]).unwrap();
        let mut attempts = 0;
        let mut fenced = false;
        loop {
            let observed = if fenced {
                rt.block_on(table.wait_drained(object.as_str())).unwrap()
            } else {
                table.generation(object.as_str()).unwrap()
            };
            let value = store
                .get(from, key)
                .expect("I2: the source holds the key until the flip");
            std::thread::yield_now();
            store.put(to, key, value);
            match table.try_flip(object.as_str(), observed) {
                Ok(()) => {
                    flips += 1;
                    break;
                }
                Err(Conflict::WritesSinceCopyBegan { .. } | Conflict::WritesInFlight { .. }) => {
                    refused += 1;
                    attempts += 1;
                    if attempts >= MAX_REFUSED_BEFORE_FENCE && !fenced {
                        table.fence(object.as_str()).unwrap();
                        fenced = true;
                    }
                }
                Err(other) => panic!("unexpected conflict {other:?}"),
            }
        }
    }
    (flips, refused)
}

/// I2 + I3 under real threads: readers always find a key on the node the table routes them to,
/// with at least its latest acknowledged value; writers' acknowledged writes all survive four
/// moves (a→b, then the chains b→c, c→d, d→e); flips that could miss a write are refused and
/// re-copied, or fenced after three refusals.
#[test]
fn i2_i3_readers_never_miss_and_no_acknowledged_write_is_lost() {
    let table = Table::new(Config::default().with_shards(8).with_sweep_interval(None));
    let store = Store {
        nodes: Default::default(),
    };
    for key in 0..KEYS {
        store.put(0, key, 0);
    }
    let acked: Vec<AtomicU64> = (0..KEYS).map(|_| AtomicU64::new(0)).collect();
    let reads_checked = AtomicUsize::new(0);
    let start = Barrier::new(WRITERS + READERS + 1);
    let (flips, refused) = std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (table, store, acked, start) = (&table, &store, &acked, &start);
            s.spawn(move || {
                let ids = ids();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                start.wait();
                for i in 0..WRITES_PER_WRITER {
                    // Writer w owns the keys congruent to w, so "latest" is well defined.
                    let key = (i * 7 + w) % KEYS / WRITERS * WRITERS + w;
                    let value = acked[key].load(SeqCst) + 1;
                    let ticket = rt.block_on(table.begin_write(&name(key))).unwrap();
                    store.put(index_of(ticket.route(), &ids), key, value);
                    acked[key].store(value, SeqCst); // acknowledged to the client
                    drop(ticket);
                }
            });
        }
        for r in 0..READERS {
            let (table, store, acked, start, reads_checked) =
                (&table, &store, &acked, &start, &reads_checked);
            s.spawn(move || {
                let ids = ids();
                start.wait();
                for i in 0..READS_PER_READER {
                    let key = (i * 13 + r) % KEYS;
                    let floor = acked[key].load(SeqCst);
                    let node = index_of(table.route_read(&name(key)), &ids);
                    let value = store.get(node, key);
                    assert!(
                        value.is_some(),
                        "I2: key {key} routed to node {node}, which lacks it"
                    );
                    assert!(
                        value.unwrap() >= floor,
                        "I3: node {node} has {value:?} < acknowledged {floor} for key {key}"
                    );
                    reads_checked.fetch_add(1, SeqCst);
                }
            });
        }
        let engine = s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            start.wait();
            let (mut flips, mut refused) = (0, 0);
            for hop in 0..NODES - 1 {
                let (f, r) = move_all(&table, &store, &rt, hop, hop + 1);
                flips += f;
                refused += r;
            }
            (flips, refused)
        });
        engine.join().unwrap()
    });
    let ids = ids();
    for (key, acked) in acked.iter().enumerate() {
        assert_eq!(table.route_read(&name(key)), Route::Target(ids[NODES - 1]));
        assert_eq!(
            store.get(NODES - 1, key),
            Some(acked.load(SeqCst)),
            "I3: key {key} lost an acknowledged write"
        );
        let info = table.get(&name(key)).unwrap();
        assert_eq!(
            (info.source, info.target, info.hops, info.in_flight),
            (ids[0], ids[NODES - 1], NODES as u32 - 1, 0)
        );
    }
    assert_eq!(flips, (NODES - 1) as u64 * KEYS as u64);
    assert_eq!(reads_checked.load(SeqCst), READERS * READS_PER_READER);
    let stats = table.stats();
    assert_eq!(stats.flips_refused, refused);
    eprintln!(
        "flips: {flips} succeeded, {refused} refused, {} fences",
        stats.fences
    );
}

/// One step of a simulated thread in the exhaustive test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Actor {
    Writer(usize),
    Engine,
}

/// Every interleaving of two writers (begin, write and acknowledge, end) with the engine
/// (register, [fence, drain,] observe, copy-read, copy-write, flip), replayed one step at a
/// time: after each step the routed node holds the latest acknowledged value (I2), and at the
/// end a successful flip left every write on the target, a refused one on the source (I3). A
/// fenced run's flip is never refused. This is the loom substitute (see the crate docs).
#[test]
fn i2_i3_every_interleaving_of_tickets_flip_and_fence() {
    for fenced in [false, true] {
        let engine_steps = if fenced { 7 } else { 5 };
        let mut schedule = Vec::new();
        let mut runs = 0usize;
        let mut flipped = 0usize;
        explore(&mut schedule, [3, 3], engine_steps, &mut |s| {
            if let Some(ok) = replay(s, fenced) {
                runs += 1;
                flipped += usize::from(ok);
                if fenced {
                    assert!(ok, "a fenced flip was refused: {s:?}");
                }
            }
        });
        assert!(runs > 100, "{runs}");
        assert!(
            flipped > 0 && (fenced || flipped < runs),
            "{flipped}/{runs}"
        );
    }
}

fn explore(
    schedule: &mut Vec<Actor>,
    writers: [usize; 2],
    engine: usize,
    visit: &mut dyn FnMut(&[Actor]),
) {
    if writers == [0, 0] && engine == 0 {
        visit(schedule);
        return;
    }
    for w in 0..2 {
        if writers[w] > 0 {
            let mut left = writers;
            left[w] -= 1;
            schedule.push(Actor::Writer(w));
            explore(schedule, left, engine, visit);
            schedule.pop();
        }
    }
    if engine > 0 {
        schedule.push(Actor::Engine);
        explore(schedule, writers, engine - 1, visit);
        schedule.pop();
    }
}

/// Replays one schedule; `None` when a step was blocked at its turn (a writer on the fence, the
/// engine waiting for the drain): that interleaving cannot happen.
fn replay(schedule: &[Actor], fenced: bool) -> Option<bool> {
    let table = Table::new(
        Config::default()
            .with_shards(1)
            .with_expected_entries(1)
            .with_sweep_interval(None),
    );
    let ids = ids();
    let key = "k";
    let object = ObjectKey::new(key).unwrap();
    let mut nodes = [Some(0u64), None, None, None, None];
    let mut tickets: [Option<WriteTicket<'_>>; 2] = [None, None];
    let mut step = [0usize; 2];
    let mut engine_step = 0;
    let mut clock = 0u64;
    let mut max_acked = 0;
    let mut max_written = 0;
    let mut observed = 0;
    let mut copied = None;
    let mut flip_result = None;
    let engine_plan: &[&str] = if fenced {
        &[
            "register", "fence", "drain", "observe", "read", "write", "flip",
        ]
    } else {
        &["register", "observe", "read", "write", "flip"]
    };
    for actor in schedule {
        clock += 1;
        match *actor {
            Actor::Writer(w) => {
                match step[w] {
                    0 => match table.try_begin_write(key) {
                        Ok(ticket) => tickets[w] = Some(ticket),
                        Err(Fenced) => return None,
                    },
                    1 => {
                        // Write where the ticket says, and acknowledge it.
                        let node = index_of(tickets[w].as_ref().unwrap().route(), &ids);
                        nodes[node] = Some(clock);
                        max_written = clock;
                        max_acked = clock;
                    }
                    _ => tickets[w] = None,
                }
                step[w] += 1;
            }
            Actor::Engine => {
                match engine_plan[engine_step] {
                    "register" => {
                        table.register(&object, ids[0], ids[1]).unwrap();
                    }
                    "fence" => table.fence(key).unwrap(),
                    "drain" => {
                        if table.get(key).unwrap().in_flight > 0
                            || tickets.iter().any(Option::is_some)
                        {
                            return None;
                        }
                    }
                    "observe" => observed = table.generation(key).unwrap(),
                    "read" => copied = nodes[0],
                    "write" => nodes[1] = copied,
                    _ => flip_result = Some(table.try_flip(key, observed).is_ok()),
                }
                engine_step += 1;
            }
        }
        let node = index_of(table.route_read(key), &ids);
        let value = nodes[node]
            .unwrap_or_else(|| panic!("I2: routed to {node} without the key: {schedule:?}"));
        assert!(
            value >= max_acked,
            "I3: routed value {value} < acknowledged {max_acked}: {schedule:?}"
        );
    }
    let ok = flip_result.unwrap();
    let home = if ok { 1 } else { 0 };
    // Values are step numbers, so the last write has the largest: it must be where the key
    // lives now (0 when no writer got to write).
    assert_eq!(
        nodes[home],
        Some(max_written),
        "I3: lost write: {schedule:?}"
    );
    Some(ok)
}
