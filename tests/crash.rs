//! What the crash loop's engine child writes and its driver reads back: object contents that
//! name their key and write, and the ledger of client operations.
//!
//! # Object contents
//! Every object is `key|seq|len\n` followed by filler that depends on `seq` and the byte's
//! position, `len` bytes in all, so a read (or a file found on disk) tells which write it is,
//! and that it is whole. The generated tree is write `0` of every key; objects shorter than
//! their header (0 B included) hold the header's first bytes. Client writes are never that
//! short.
//!
//! # The ledger
//! An append-only text file, one line per event, written by the child before and after each
//! store call (SIGKILL, not a power cut, is the failure here: the page cache keeps what was
//! written, so nothing is fsynced):
//!
//! | line | meaning |
//! |---|---|
//! | `W key seq` | intent: write `seq` of `key` is about to be made |
//! | `D key seq` | intent: `key` is about to be deleted (`seq` names the delete) |
//! | `A key seq` | the store acknowledged intent `seq` |
//! | `S key seq` | a read found what intent `seq` made, unacknowledged (its process died) |
//! | `X key seq` | intent `seq` was refused before it reached a store (fence timeout) |
//! | `R n` | `n` more reads were made and checked |
//! | `F what…` | an invariant failed where the child could see it (a read, a second owner) |
//! | `B n` | run `n` of the child began (for reading the ledger when a check fails) |
//!
//! Each key is written by one client thread at a time (keys are split between the clients,
//! and one process runs at a time), so a key's lines are in the order its writes happened.
//! What a key may hold is then its last acknowledged (or seen) value, or the value of any
//! intent after it: an intent whose process died between the store call and its `A` line may
//! or may not have landed. An acknowledged write that is not there is lost (I3); content after
//! an acknowledged delete is resurrected (I3); no content where content is due is a failed
//! read (I2) or a lost write.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// The ledger of client operations, in the work directory.
pub const LEDGER: &str = "ledger.log";
/// Keys the commit hook placed on the target, one a line, in the work directory.
pub const PLACEMENT: &str = "placement.log";
/// The job's events, in the work directory: `B n` when run `n` began, `state key` for each
/// object transition (`copied key` for each copy), `lagged n` when the event stream lost `n`.
pub const COPIES: &str = "copies.log";
/// The keys of the generated tree, one a line, in the work directory.
pub const KEYS: &str = "keys.txt";
/// What the child's last (uninterrupted) run reports: `name value` lines.
pub const FINAL: &str = "final.txt";
/// The source node's directory, under the work directory.
pub const SOURCE_DIR: &str = "src";
/// The target node's directory, under the work directory.
pub const TARGET_DIR: &str = "dst";
/// The checkpoint store's directory, under the work directory.
pub const STATE_DIR: &str = "state";
/// The id of the job the child runs.
pub const JOB_ID: &str = "crash-loop";
/// The job's concurrency.
pub const CONCURRENCY: usize = 8;
/// The job saves its checkpoint after this many finished objects (or 100 ms): after a crash
/// at most the objects in flight plus this many are processed again (SPEC I4).
pub const CHECKPOINT_OBJECTS: u64 = 16;

/// The header of write `seq` of `key`, `len` bytes long.
fn header(key: &str, seq: u64, len: usize) -> String {
    format!("{key}|{seq}|{len}\n")
}

fn filler(seq: u64, pos: u64) -> u8 {
    b'a' + ((seq.wrapping_add(pos)) % 23) as u8
}

/// The bytes of write `seq` of `key`, `len` long (see the module docs).
pub fn content(key: &str, seq: u64, len: usize) -> Vec<u8> {
    let head = header(key, seq, len);
    if len <= head.len() {
        return head.as_bytes()[..len].to_vec();
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(head.as_bytes());
    out.extend((head.len()..len).map(|p| filler(seq, p as u64)));
    out
}

/// The smallest length at least `want` that holds the whole header of write `seq` of `key`
/// (client writes must say which write they are).
pub fn write_len(key: &str, seq: u64, want: usize) -> usize {
    let mut len = want;
    loop {
        let need = header(key, seq, len).len();
        if len >= need {
            return len;
        }
        len = need;
    }
}

/// The longest header [`Checker`] looks for.
const MAX_HEADER: usize = 1024;

/// Checks an object's bytes as they stream in, chunk by chunk, without keeping them: which
/// write of the key it is, and that it is whole and intact.
#[derive(Debug)]
pub struct Checker<'k> {
    key: &'k str,
    /// The first bytes, until the header's end is found.
    head: Vec<u8>,
    /// `(seq, len)` once the header was read.
    parsed: Option<(u64, u64)>,
    seen: u64,
    error: Option<String>,
}

impl<'k> Checker<'k> {
    /// A checker for an object read under `key`.
    pub fn new(key: &'k str) -> Checker<'k> {
        Checker {
            key,
            head: Vec::new(),
            parsed: None,
            seen: 0,
            error: None,
        }
    }

    /// The next bytes of the object.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.parsed.is_none() {
            let take = chunk.len().min(MAX_HEADER - self.head.len());
            self.head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            let Some(end) = self.head.iter().position(|&b| b == b'\n') else {
                if self.head.len() == MAX_HEADER {
                    self.error = Some(format!("no header in the first {MAX_HEADER} bytes"));
                }
                return;
            };
            let text = String::from_utf8_lossy(&self.head[..end]).into_owned();
            let mut parts = text.rsplitn(3, '|');
            let (len, seq, key) = (parts.next(), parts.next(), parts.next());
            let parsed = match (key, seq.map(str::parse::<u64>), len.map(str::parse::<u64>)) {
                (Some(key), Some(Ok(seq)), Some(Ok(len))) if key == self.key => (seq, len),
                _ => {
                    self.error = Some(format!("bad header {text:?}"));
                    return;
                }
            };
            self.parsed = Some(parsed);
            let rest = self.head.split_off(end + 1);
            self.seen = (end + 1) as u64;
            self.check_filler(&rest);
        }
        self.check_filler(chunk);
    }

    fn check_filler(&mut self, bytes: &[u8]) {
        let Some((seq, _)) = self.parsed else { return };
        if self.error.is_some() {
            return;
        }
        for (i, &b) in bytes.iter().enumerate() {
            let pos = self.seen + i as u64;
            if b != filler(seq, pos) {
                self.error = Some(format!("byte {pos} of write {seq} is wrong"));
                return;
            }
        }
        self.seen += bytes.len() as u64;
    }

    /// Which write of the key the object is, or what is wrong with it.
    ///
    /// # Errors
    /// A description of the damage: not an object of this key, torn, or corrupt.
    pub fn finish(self) -> Result<u64, String> {
        if let Some(error) = self.error {
            return Err(error);
        }
        match self.parsed {
            Some((seq, len)) if len == self.seen => Ok(seq),
            Some((seq, len)) => Err(format!(
                "write {seq} has {} bytes where its header says {len}",
                self.seen
            )),
            // Shorter than a header: only the generated tree's objects are.
            None if self.head == content(self.key, 0, self.head.len()) => Ok(0),
            None => Err(format!(
                "{} bytes that are no object of this key",
                self.head.len()
            )),
        }
    }
}

/// Which write of `key` the whole object `bytes` is ([`Checker`] in one go).
///
/// # Errors
/// As [`Checker::finish`].
pub fn decode(key: &str, bytes: &[u8]) -> Result<u64, String> {
    let mut checker = Checker::new(key);
    checker.feed(bytes);
    checker.finish()
}

/// What a key holds: `Some(seq)` (write `seq`, `0` for the generated tree), `None`: absent.
pub type Value = Option<u64>;

/// One key's account in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The last acknowledged (or seen) value.
    pub acked: Value,
    /// Intents after it, not acknowledged: `(seq, value)`, in order.
    pub pending: Vec<(u64, Value)>,
    /// Whether a delete was ever intended for the key.
    pub deleted_ever: bool,
    /// Whether any write or delete was ever intended for the key.
    pub touched: bool,
}

impl Default for KeyState {
    fn default() -> Self {
        KeyState {
            acked: Some(0),
            pending: Vec::new(),
            deleted_ever: false,
            touched: false,
        }
    }
}

impl KeyState {
    /// Whether the key may hold `value` now.
    pub fn allows(&self, value: Value) -> bool {
        self.acked == value || self.pending.iter().any(|&(_, v)| v == value)
    }

    /// Records intent `seq` to make the key hold `value`.
    pub fn intend(&mut self, seq: u64, value: Value) {
        self.pending.push((seq, value));
        self.touched = true;
        self.deleted_ever |= value.is_none();
    }

    /// Intent `seq` landed (acknowledged, or seen by a read): it replaces the intents before
    /// it. Whether `seq` was pending.
    pub fn settle(&mut self, seq: u64) -> bool {
        let Some(at) = self.pending.iter().position(|&(s, _)| s == seq) else {
            return false;
        };
        self.acked = self.pending[at].1;
        self.pending.drain(..=at);
        true
    }

    /// Intent `seq` never reached a store. Whether it was pending.
    pub fn refuse(&mut self, seq: u64) -> bool {
        let before = self.pending.len();
        self.pending.retain(|&(s, _)| s != seq);
        self.pending.len() != before
    }

    /// A read found `value`: the seq of the pending intent it proves landed, if it is one
    /// (the newest such), to be settled and logged as `S`.
    pub fn proven_by(&self, value: Value) -> Option<u64> {
        if self.acked == value && self.pending.iter().all(|&(_, v)| v != value) {
            return None;
        }
        self.pending
            .iter()
            .rev()
            .find(|&&(_, v)| v == value)
            .map(|&(s, _)| s)
    }
}

/// The ledger, replayed.
#[derive(Debug, Default)]
pub struct Replay {
    /// Per key of the tree, in the order of `keys`.
    pub states: Vec<KeyState>,
    /// Reads made and checked.
    pub reads: u64,
    /// Writes intended (re-creates included).
    pub writes: u64,
    /// Writes intended for keys deleted at the time (re-creates).
    pub recreates: u64,
    /// Deletes intended.
    pub deletes: u64,
    /// Intents refused before reaching a store.
    pub refused: u64,
    /// `F` lines.
    pub failures: Vec<String>,
    /// Lines that do not parse or name no pending intent: torn by a kill mid-write.
    pub torn: Vec<String>,
    /// The largest seq in the ledger.
    pub max_seq: u64,
}

/// Replays the ledger `text` over the keys of the tree.
pub fn replay(text: &str, keys: &[String]) -> Replay {
    let index: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut out = Replay {
        states: vec![KeyState::default(); keys.len()],
        ..Replay::default()
    };
    for line in text.lines() {
        if let Some(failure) = line.strip_prefix("F ") {
            out.failures.push(failure.to_owned());
            continue;
        }
        if line.starts_with("B ") {
            continue;
        }
        if let Some(n) = line.strip_prefix("R ") {
            match n.parse::<u64>() {
                Ok(n) => out.reads += n,
                Err(_) => out.torn.push(line.to_owned()),
            }
            continue;
        }
        let mut parts = line.split(' ');
        let (kind, key, seq) = (parts.next(), parts.next(), parts.next());
        let parsed = match (kind, key.and_then(|k| index.get(k)), seq.map(str::parse)) {
            (Some(kind), Some(&i), Some(Ok(seq))) if parts.next().is_none() => Some((kind, i, seq)),
            _ => None,
        };
        let Some((kind, i, seq)) = parsed else {
            out.torn.push(line.to_owned());
            continue;
        };
        out.max_seq = out.max_seq.max(seq);
        let state = &mut out.states[i];
        let ok = match kind {
            "W" => {
                out.writes += 1;
                if state.acked.is_none() {
                    out.recreates += 1;
                }
                state.intend(seq, Some(seq));
                true
            }
            "D" => {
                out.deletes += 1;
                state.intend(seq, None);
                true
            }
            "A" | "S" => state.settle(seq),
            "X" => {
                out.refused += 1;
                state.refuse(seq)
            }
            _ => false,
        };
        if !ok {
            out.torn.push(line.to_owned());
        }
    }
    out
}

/// Appends a newline to `path` if it does not end with one, so that a line torn by a kill
/// stays a line of its own (and reads as torn) rather than glued to the next one.
///
/// # Errors
/// I/O errors other than a missing file.
pub fn end_torn_line(path: &Path) -> std::io::Result<()> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if text.last().is_some_and(|&b| b != b'\n') {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)?
            .write_all(b"\n")?;
    }
    Ok(())
}

/// A seeded generator (splitmix64), shared by the child and the driver so a seed replays.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `lo..=hi` (`lo <= hi`).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// One of `from`'s elements, or `None` if it is empty.
    pub fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.below(from.len() as u64) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_decode_to_their_write_and_damage_is_caught() {
        for len in [0, 1, 5, 17, 18, 19, 40, 5000] {
            let bytes = content("d0/f1", 0, len);
            assert_eq!(bytes.len(), len);
            assert_eq!(decode("d0/f1", &bytes), Ok(0), "{len}");
        }
        let len = write_len("d0/f1", 77, 3);
        let bytes = content("d0/f1", 77, len);
        assert_eq!(decode("d0/f1", &bytes), Ok(77));
        assert!(decode("d0/f2", &bytes).is_err(), "another key's object");
        assert!(decode("d0/f1", &bytes[..len - 1]).is_err() || len == 0);
        let big = content("d0/f1", 9, 3 << 20);
        let mut checker = Checker::new("d0/f1");
        for chunk in big.chunks(7777) {
            checker.feed(chunk);
        }
        assert_eq!(checker.finish(), Ok(9));
        let mut torn = big.clone();
        torn.truncate(1 << 20);
        assert!(decode("d0/f1", &torn).is_err(), "torn");
        let mut flipped = big;
        flipped[2 << 20] ^= 1;
        assert!(decode("d0/f1", &flipped).is_err(), "corrupt");
    }

    #[test]
    fn the_ledger_allows_the_last_ack_and_later_intents_only() {
        let keys = vec!["a".to_owned(), "b".to_owned()];
        let text =
            "W a 5\nA a 5\nW a 6\nD a 7\nW b 8\nX b 8\nR 3\nW a 9\nA a 9\nD b 10\nS b 10\nW b 1";
        let r = replay(text, &keys);
        assert_eq!(r.states[0].acked, Some(9));
        assert!(r.states[0].pending.is_empty());
        assert!(!r.states[0].allows(Some(6)));
        assert_eq!(r.states[1].acked, None);
        assert!(r.states[1].allows(Some(1)), "a later intent (torn or not)");
        assert!(!r.states[1].allows(Some(0)));
        assert_eq!(r.reads, 3);
        assert_eq!((r.writes, r.deletes, r.refused), (5, 2, 1));
        let r = replay("W a 5\nA a 6\nQ a 1\nA zz 5", &keys);
        assert_eq!(r.torn.len(), 3);
        assert!(r.states[0].allows(Some(0)) && r.states[0].allows(Some(5)));
    }
}
