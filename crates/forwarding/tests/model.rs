//! Model-based test: the table against a plain `HashMap` model, step by step (SPEC I2, I3).
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use ferry_forwarding::{
    Config, Conflict, EntryState, Error, Fenced, ManualClock, Route, Table, WriteTicket,
};
use ferry_types::{NodeId, ObjectKey};
use proptest::prelude::*;

const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
const NODES: [&str; 4] = ["a", "b", "c", "d"];
const TTL: u64 = 10_000_000_000; // 10 s in ns
const MAX_HOPS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Register(usize, usize, usize),
    Read(usize),
    Begin(usize),
    End(usize),
    Observe(usize),
    Flip(usize, bool),
    Fence(usize),
    Unfence(usize),
    Remove(usize),
    RemoveBySource(usize),
    Advance(u64),
    Sweep,
    SetTtl(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS.len();
    let n = 0..NODES.len();
    prop_oneof![
        3 => (k.clone(), n.clone(), n.clone()).prop_map(|(k, s, t)| Op::Register(k, s, t)),
        3 => k.clone().prop_map(Op::Read),
        3 => k.clone().prop_map(Op::Begin),
        3 => (0..8usize).prop_map(Op::End),
        2 => k.clone().prop_map(Op::Observe),
        3 => (k.clone(), any::<bool>()).prop_map(|(k, stale)| Op::Flip(k, stale)),
        1 => k.clone().prop_map(Op::Fence),
        1 => k.clone().prop_map(Op::Unfence),
        1 => k.clone().prop_map(Op::Remove),
        1 => n.prop_map(Op::RemoveBySource),
        2 => (0..12u64).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
        1 => (k, 1..20u64).prop_map(|(k, s)| Op::SetTtl(k, s)),
    ]
}

#[derive(Debug, Clone)]
struct ModelEntry {
    source: usize,
    copy_from: usize,
    target: usize,
    state: EntryState,
    generation: u64,
    in_flight: u32,
    hops: u32,
    ttl: u64,
    expires_at: u64,
    maybe_untracked: bool,
    incarnation: u64,
}

impl ModelEntry {
    fn live(&self, now: u64) -> bool {
        self.state != EntryState::Forwarded || self.expires_at > now
    }
}

#[derive(Debug)]
struct ModelTicket {
    key: usize,
    /// The entry's incarnation when the write began; `None` without a live entry.
    incarnation: Option<u64>,
}

#[derive(Default)]
struct Model {
    entries: HashMap<usize, ModelEntry>,
    tickets: Vec<ModelTicket>,
    observed: HashMap<usize, u64>,
    now: u64,
    next_incarnation: u64,
}

impl Model {
    fn live(&self, k: usize) -> Option<&ModelEntry> {
        self.entries.get(&k).filter(|e| e.live(self.now))
    }

    /// Open tickets on key `k` not counted on its current entry.
    fn untracked(&self, k: usize) -> usize {
        let current = self.entries.get(&k).map(|e| e.incarnation);
        self.tickets
            .iter()
            .filter(|t| t.key == k && (t.incarnation.is_none() || t.incarnation != current))
            .count()
    }

    fn untracked_other(&self, k: usize) -> usize {
        (0..KEYS.len())
            .filter(|&o| o != k)
            .map(|o| self.untracked(o))
            .sum()
    }

    fn route(&self, k: usize) -> Route {
        match self.live(k) {
            None => Route::Source,
            Some(e) => match e.state {
                EntryState::Forwarded => Route::Target(node(e.target)),
                _ if e.copy_from != e.source => Route::Target(node(e.copy_from)),
                _ => Route::Source,
            },
        }
    }

    fn register(&mut self, k: usize, s: usize, t: usize) -> Result<(), Error> {
        let key = KEYS[k].to_owned();
        if s == t {
            return Err(Error::SameSourceAndTarget { key, node: node(s) });
        }
        let maybe_untracked = self.untracked(k) > 0;
        if let Some(e) = self.live(k).cloned() {
            if e.state != EntryState::Forwarded {
                return Err(Error::AlreadyMoving { key, owner: None });
            }
            if s != e.target {
                return Err(Error::WrongSource {
                    key,
                    expected: node(e.target),
                    given: node(s),
                });
            }
            if t == e.source {
                return Err(Error::Cycle {
                    key,
                    target: node(t),
                });
            }
            if e.hops + 1 > MAX_HOPS {
                return Err(Error::TooManyHops {
                    key,
                    hops: e.hops + 1,
                    max: MAX_HOPS,
                });
            }
            let e = self.entries.get_mut(&k).unwrap();
            e.state = EntryState::Copying;
            e.copy_from = s;
            e.target = t;
            e.hops += 1;
            e.expires_at = u64::MAX;
            e.maybe_untracked |= maybe_untracked;
            return Ok(());
        }
        // A fresh entry: every open ticket on the key (including ones counted on an expired
        // entry it replaces) is a write the new entry did not count.
        let maybe_untracked = self.tickets.iter().any(|t| t.key == k);
        self.next_incarnation += 1;
        self.entries.insert(
            k,
            ModelEntry {
                source: s,
                copy_from: s,
                target: t,
                state: EntryState::Copying,
                generation: 0,
                in_flight: 0,
                hops: 1,
                ttl: TTL,
                expires_at: u64::MAX,
                maybe_untracked,
                incarnation: self.next_incarnation,
            },
        );
        Ok(())
    }

    fn begin(&mut self, k: usize) -> Result<Route, Fenced> {
        let route = self.route(k);
        let now = self.now;
        match self.entries.get_mut(&k).filter(|e| e.live(now)) {
            Some(e) if e.state == EntryState::Fenced => Err(Fenced),
            Some(e) => {
                e.in_flight += 1;
                e.generation += 1;
                let incarnation = Some(e.incarnation);
                self.tickets.push(ModelTicket {
                    key: k,
                    incarnation,
                });
                Ok(route)
            }
            None => {
                self.tickets.push(ModelTicket {
                    key: k,
                    incarnation: None,
                });
                Ok(route)
            }
        }
    }

    fn end(&mut self, i: usize) {
        let ticket = self.tickets.remove(i);
        if let Some(e) = self.entries.get_mut(&ticket.key) {
            e.generation += 1;
            if ticket.incarnation == Some(e.incarnation) {
                e.in_flight -= 1;
            }
        }
    }

    /// The flip outcome; `WritesInFlight` may also come from another key's write in the same
    /// slot, which the caller accepts when such a write is open.
    fn flip(&mut self, k: usize, observed: u64) -> Result<(), Conflict> {
        let untracked = self.untracked(k);
        let now = self.now;
        let Some(e) = self.entries.get_mut(&k).filter(|e| e.live(now)) else {
            return Err(Conflict::NotFound);
        };
        if e.state == EntryState::Forwarded {
            return Err(Conflict::NotMoving { state: e.state });
        }
        if e.in_flight > 0 {
            return Err(Conflict::WritesInFlight {
                count: u64::from(e.in_flight),
            });
        }
        if e.maybe_untracked {
            if untracked > 0 {
                return Err(Conflict::WritesInFlight {
                    count: untracked as u64,
                });
            }
            e.maybe_untracked = false;
        }
        if e.generation != observed {
            return Err(Conflict::WritesSinceCopyBegan {
                observed,
                current: e.generation,
            });
        }
        e.state = EntryState::Forwarded;
        e.copy_from = e.source;
        e.expires_at = now + e.ttl;
        Ok(())
    }
}

fn node(i: usize) -> NodeId {
    NodeId::new(NODES[i]).unwrap()
}

fn check(table: &Table, model: &Model) -> Result<(), TestCaseError> {
    for (k, name) in KEYS.iter().enumerate() {
        prop_assert_eq!(table.route_read(name), model.route(k), "route of {}", name);
        let live = model.live(k);
        prop_assert_eq!(
            table.generation(name),
            live.map(|e| e.generation),
            "generation of {}",
            name
        );
        let info = table.get(name);
        prop_assert_eq!(info.is_some(), live.is_some());
        if let (Some(info), Some(e)) = (info, live) {
            prop_assert_eq!(info.state, e.state);
            prop_assert_eq!(info.in_flight, e.in_flight, "in flight on {}", name);
            prop_assert_eq!(info.hops, e.hops);
            prop_assert_eq!(info.source, node(e.source));
            prop_assert_eq!(info.target, node(e.target));
        }
    }
    let live = (0..KEYS.len()).filter(|&k| model.live(k).is_some()).count();
    prop_assert_eq!(table.len(), live);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let table = Table::new(
        Config::default()
            .with_clock(clock.clone())
            .with_sweep_interval(None)
            .with_default_ttl(Duration::from_nanos(TTL))
            .with_max_hops(MAX_HOPS)
            .with_shards(4),
    );
    let mut model = Model::default();
    let mut tickets: Vec<WriteTicket<'_>> = Vec::new();
    for op in ops {
        match op {
            Op::Register(k, s, t) => {
                let key = ObjectKey::new(KEYS[k]).unwrap();
                let got = table.register(&key, node(s), node(t)).map(|_| ());
                prop_assert_eq!(got, model.register(k, s, t), "{:?}", op);
            }
            Op::Read(k) => {
                prop_assert_eq!(table.route_read(KEYS[k]), model.route(k));
            }
            Op::Begin(k) => {
                let got = table.try_begin_write(KEYS[k]);
                let expected = model.begin(k);
                match got {
                    Ok(ticket) => {
                        prop_assert_eq!(Ok(ticket.route()), expected);
                        tickets.push(ticket);
                    }
                    Err(fenced) => prop_assert_eq!(Err(fenced), expected),
                }
            }
            Op::End(i) => {
                if !tickets.is_empty() {
                    let i = i % tickets.len();
                    drop(tickets.remove(i));
                    model.end(i);
                }
            }
            Op::Observe(k) => {
                if let Some(g) = model.live(k).map(|e| e.generation) {
                    model.observed.insert(k, g);
                }
            }
            Op::Flip(k, stale) => {
                let current = model.live(k).map_or(0, |e| e.generation);
                let observed = if stale {
                    model.observed.get(&k).copied().unwrap_or(0)
                } else {
                    current
                };
                let other_untracked = model.untracked_other(k);
                let got = table.try_flip(KEYS[k], observed);
                let expected = model.flip(k, observed);
                if got != expected {
                    // Only another key's write, counted in the same slot, may refuse a flip
                    // the model allows (or refuse it for that reason first).
                    prop_assert!(
                        matches!(got, Err(Conflict::WritesInFlight { .. })) && other_untracked > 0,
                        "flip of {}: table {:?}, model {:?}",
                        KEYS[k],
                        got,
                        expected
                    );
                    if expected.is_ok() {
                        // Undo the model's flip: the table refused it.
                        let e = model.entries.get_mut(&k).unwrap();
                        e.state = EntryState::Copying;
                        e.expires_at = u64::MAX;
                        let info = table.get(KEYS[k]).unwrap();
                        e.state = info.state;
                        e.copy_from = if info.copy_from == info.source {
                            e.source
                        } else {
                            NODES
                                .iter()
                                .position(|n| node_eq(n, info.copy_from))
                                .unwrap()
                        };
                        e.maybe_untracked = true;
                    }
                }
            }
            Op::Fence(k) => {
                let got = table.fence(KEYS[k]);
                let now = model.now;
                let expected = match model.entries.get_mut(&k).filter(|e| e.live(now)) {
                    None => Err(Error::NotFound {
                        key: KEYS[k].into(),
                    }),
                    Some(e) if e.state == EntryState::Forwarded => Err(Error::NotMoving {
                        key: KEYS[k].into(),
                        state: e.state,
                    }),
                    Some(e) => {
                        e.state = EntryState::Fenced;
                        Ok(())
                    }
                };
                prop_assert_eq!(got, expected);
            }
            Op::Unfence(k) => {
                let got = table.unfence(KEYS[k]);
                let now = model.now;
                let expected = match model.entries.get_mut(&k).filter(|e| e.live(now)) {
                    None => Err(Error::NotFound {
                        key: KEYS[k].into(),
                    }),
                    Some(e) if e.state == EntryState::Forwarded => Err(Error::NotMoving {
                        key: KEYS[k].into(),
                        state: e.state,
                    }),
                    Some(e) => {
                        e.state = EntryState::Copying;
                        Ok(())
                    }
                };
                prop_assert_eq!(got, expected);
            }
            Op::Remove(k) => {
                let expected = model.live(k).is_some();
                model.entries.remove(&k);
                prop_assert_eq!(table.remove(KEYS[k]), expected);
            }
            Op::RemoveBySource(n) => {
                let now = model.now;
                let mut expected = 0;
                model.entries.retain(|_, e| {
                    let hit = e.source == n;
                    if hit && e.live(now) {
                        expected += 1;
                    }
                    !hit
                });
                prop_assert_eq!(table.remove_by_source(node(n)), expected);
            }
            Op::Advance(secs) => {
                clock.advance(Duration::from_secs(secs));
                model.now += secs * 1_000_000_000;
            }
            Op::Sweep => {
                let now = model.now;
                let before = model.entries.len();
                model.entries.retain(|_, e| e.live(now));
                prop_assert_eq!(table.sweep_now(), before - model.entries.len());
            }
            Op::SetTtl(k, secs) => {
                let got = table.set_ttl(KEYS[k], Duration::from_secs(secs));
                let now = model.now;
                let expected = match model.entries.get_mut(&k).filter(|e| e.live(now)) {
                    None => Err(Error::NotFound {
                        key: KEYS[k].into(),
                    }),
                    Some(e) => {
                        e.ttl = secs * 1_000_000_000;
                        if e.state == EntryState::Forwarded {
                            e.expires_at = now + e.ttl;
                        }
                        Ok(())
                    }
                };
                prop_assert_eq!(got, expected);
            }
        }
        check(&table, &model)?;
    }
    drop(tickets);
    Ok(())
}

fn node_eq(name: &str, id: NodeId) -> bool {
    id.as_str() == name
}

proptest! {
    // `PROPTEST_CASES` overrides the default (512), as for every proptest suite here.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    /// I2 and I3 at the table's level: routes, generations, in-flight counts, flip outcomes
    /// and expiry agree with the model after every step of any sequence.
    #[test]
    fn i2_i3_table_agrees_with_hashmap_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
