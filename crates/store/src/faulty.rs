//! [`FaultyStore`]: a store wrapper that injects faults, for tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_types::ObjectKey;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;

use crate::{
    BoxFuture, BoxStream, ByteStream, Error, MetaStream, Object, ObjectMeta, Op, PartTag, Result,
    Store, UploadId, body_from_bytes,
};

/// The cause of an injected error: `source` of the [`Error::Transient`] or
/// [`Error::Permanent`] a [`FaultyStore`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected fault")]
pub struct InjectedFault;

/// What goes wrong when a [`Trigger`] fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The call fails with [`Error::Transient`] without reaching the inner store.
    Transient,
    /// The call fails with [`Error::Permanent`] without reaching the inner store.
    Permanent,
    /// The call waits this long (on [`tokio::time`], so a paused clock skips it) first.
    Latency(Duration),
    /// (`get` only.) The body silently ends after this many bytes, as a dropped connection
    /// might: only a consumer that checks the size notices (see
    /// [`Object::checked_body`]).
    TruncateGet {
        /// Bytes delivered before the end.
        after: u64,
    },
    /// (`get` only.) The body yields a transient error after this many bytes.
    FailGetAfter {
        /// Bytes delivered before the error.
        after: u64,
    },
    /// (`get` only.) The byte at this offset of the body is flipped (xor `0xff`), silently.
    CorruptGet {
        /// The offset of the corrupted byte.
        at: u64,
    },
}

/// When an injected [`Fault`] fires.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Trigger {
    /// On the n-th call of the operation (1-based, counting every call since the store was
    /// made, faulty or not).
    Call(u64),
    /// On every call.
    Always,
    /// On each call with this probability, drawn from the store's seeded generator: the same
    /// seed and the same sequence of calls give the same faults.
    Random {
        /// Between 0 and 1.
        probability: f64,
    },
}

#[derive(Debug)]
struct Rule {
    op: Op,
    trigger: Trigger,
    fault: Fault,
}

#[derive(Debug)]
struct State {
    rules: Vec<Rule>,
    calls: HashMap<Op, u64>,
    rng: u64,
}

impl State {
    /// splitmix64
    fn next_f64(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The faults that fired for one call.
#[derive(Debug, Default)]
struct Fired {
    delay: Duration,
    error: Option<Fault>,
    body: Vec<Fault>,
}

/// A store that wraps another and injects faults by a schedule or a seed, for tests: errors
/// (transient or permanent) on chosen calls, latency, truncated, failing or corrupted `get`
/// bodies, and power cuts that lose what was not synced.
///
/// # Power cuts
/// For every key put or deleted through this wrapper since the last successful
/// [`sync`](Store::sync), it keeps the key's content as of that barrier (read from the inner
/// store before the first change). [`FaultyStore::power_cut`] puts those contents back: what
/// was synced survives, what was not is lost, as after a real crash. Restored objects get new
/// versions. To keep that record exact, puts, deletes, syncs and power cuts through one
/// wrapper run one at a time (reads stay concurrent). Changes made to the inner store directly
/// are not tracked.
///
/// Clones share the inner store, the schedule and the record.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: Arc<S>,
    state: Arc<Mutex<State>>,
    /// Content at the last barrier of each key changed since (None: absent).
    undo: Arc<tokio::sync::Mutex<BTreeMap<ObjectKey, Option<Bytes>>>>,
}

impl<S> Clone for FaultyStore<S> {
    fn clone(&self) -> Self {
        FaultyStore {
            inner: Arc::clone(&self.inner),
            state: Arc::clone(&self.state),
            undo: Arc::clone(&self.undo),
        }
    }
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`, with no fault scheduled and seed 0.
    pub fn new(inner: S) -> FaultyStore<S> {
        FaultyStore::with_seed(inner, 0)
    }

    /// Wraps `inner`, with no fault scheduled; [`Trigger::Random`] draws from `seed`.
    pub fn with_seed(inner: S, seed: u64) -> FaultyStore<S> {
        FaultyStore {
            inner: Arc::new(inner),
            state: Arc::new(Mutex::new(State {
                rules: Vec::new(),
                calls: HashMap::new(),
                rng: seed,
            })),
            undo: Arc::default(),
        }
    }

    /// The wrapped store (reaching it directly bypasses faults and the power-cut record).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Schedules `fault` for calls of `op` selected by `trigger`. Body faults
    /// ([`Fault::TruncateGet`], [`Fault::FailGetAfter`], [`Fault::CorruptGet`]) only apply to
    /// [`Op::Get`].
    pub fn inject(&self, op: Op, trigger: Trigger, fault: Fault) -> &Self {
        self.state.lock().rules.push(Rule { op, trigger, fault });
        self
    }

    /// Removes every scheduled fault (call counts go on).
    pub fn clear_faults(&self) {
        self.state.lock().rules.clear();
    }

    /// How many calls of `op` this store has had.
    pub fn calls(&self, op: Op) -> u64 {
        self.state.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// How many keys were put or deleted since the last barrier: what a power cut would undo.
    pub async fn unsynced(&self) -> usize {
        self.undo.lock().await.len()
    }

    /// Simulates a power cut: every put and delete made through this wrapper since the last
    /// successful `sync` is undone, and the inner store synced. Returns how many keys were
    /// rolled back.
    ///
    /// # Errors
    /// The inner store's errors while restoring; the keys not yet restored stay recorded.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped power cut may have restored only some keys (the others stay
    /// recorded, and a second power cut finishes the job).
    pub async fn power_cut(&self) -> Result<usize> {
        let mut undo = self.undo.lock().await;
        let mut restored = 0;
        while let Some((key, prior)) = undo.pop_first() {
            let result = match &prior {
                Some(data) => self
                    .inner
                    .put(&key, body_from_bytes(data.clone(), usize::MAX))
                    .await
                    .map(drop),
                None => self.inner.delete(&key).await.map(drop),
            };
            if let Err(e) = result {
                undo.insert(key, prior);
                return Err(e);
            }
            restored += 1;
        }
        self.inner.sync().await?;
        Ok(restored)
    }

    fn fire(&self, op: Op) -> Fired {
        let mut state = self.state.lock();
        let n = {
            let n = state.calls.entry(op).or_insert(0);
            *n += 1;
            *n
        };
        let mut fired = Fired::default();
        let rules: Vec<(Trigger, Fault)> = state
            .rules
            .iter()
            .filter(|r| r.op == op)
            .map(|r| (r.trigger, r.fault))
            .collect();
        for (trigger, fault) in rules {
            let hit = match trigger {
                Trigger::Call(k) => k == n,
                Trigger::Always => true,
                Trigger::Random { probability } => state.next_f64() < probability,
            };
            if !hit {
                continue;
            }
            match fault {
                Fault::Latency(d) => fired.delay += d,
                Fault::Transient | Fault::Permanent => {
                    fired.error.get_or_insert(fault);
                }
                body => fired.body.push(body),
            }
        }
        fired
    }

    /// Applies latency and injected errors of one call.
    async fn before(&self, op: Op, key: Option<&ObjectKey>) -> Result<Vec<Fault>> {
        let fired = self.fire(op);
        if !fired.delay.is_zero() {
            tokio::time::sleep(fired.delay).await;
        }
        let key = key.cloned();
        match fired.error {
            Some(Fault::Transient) => Err(Error::Transient {
                op,
                key,
                source: Box::new(InjectedFault),
            }),
            Some(_) => Err(Error::Permanent {
                op,
                key,
                source: Box::new(InjectedFault),
            }),
            None => Ok(fired.body),
        }
    }

    /// Records the content `key` has at the last barrier, before its first change since.
    async fn remember(
        &self,
        undo: &mut BTreeMap<ObjectKey, Option<Bytes>>,
        key: &ObjectKey,
    ) -> Result<()> {
        if undo.contains_key(key) {
            return Ok(());
        }
        let prior = match self.inner.get(key).await {
            Ok(object) => {
                let mut buf = BytesMut::new();
                let mut body = object.body;
                while let Some(chunk) = body.next().await {
                    buf.extend_from_slice(&chunk?);
                }
                Some(buf.freeze())
            }
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        undo.insert(key.clone(), prior);
        Ok(())
    }
}

/// Applies body faults to a `get` body.
fn faulty_body(key: ObjectKey, body: ByteStream, faults: Vec<Fault>) -> ByteStream {
    let state: (Option<ByteStream>, u64) = (Some(body), 0);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(body, offset)| {
            let faults = faults.clone();
            let key = key.clone();
            async move {
                let mut body = body?;
                let mut chunk = match body.next().await? {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), (None, offset))),
                };
                let end = offset + chunk.len() as u64;
                for fault in &faults {
                    match *fault {
                        Fault::CorruptGet { at } if (offset..end).contains(&at) => {
                            let mut copy = BytesMut::from(&chunk[..]);
                            let i = usize::try_from(at - offset).unwrap_or(0);
                            copy[i] ^= 0xff;
                            chunk = copy.freeze();
                        }
                        _ => {}
                    }
                }
                for fault in &faults {
                    match *fault {
                        Fault::TruncateGet { after } if end > after => {
                            if after <= offset {
                                return None;
                            }
                            let keep = usize::try_from(after - offset).unwrap_or(0);
                            return Some((Ok(chunk.slice(..keep)), (None, after)));
                        }
                        Fault::FailGetAfter { after } if end > after => {
                            if after <= offset {
                                let err = Error::Transient {
                                    op: Op::Get,
                                    key: Some(key),
                                    source: Box::new(InjectedFault),
                                };
                                return Some((Err(err), (None, offset)));
                            }
                            // Deliver up to `after`, then fail on the next poll.
                            let keep = usize::try_from(after - offset).unwrap_or(0);
                            let rest = futures_util::stream::once(std::future::ready(Err(
                                Error::Transient {
                                    op: Op::Get,
                                    key: Some(key),
                                    source: Box::new(InjectedFault),
                                },
                            )));
                            let rest: ByteStream = Box::pin(rest);
                            return Some((Ok(chunk.slice(..keep)), (Some(rest), after)));
                        }
                        _ => {}
                    }
                }
                Some((Ok(chunk), (Some(body), end)))
            }
        },
    ))
}

impl<S: Store> FaultyStore<S> {
    /// Runs `write`, which replaces `key` on the inner store (a put, a completed upload),
    /// remembering what `key` held for a power cut.
    async fn replacing(
        &self,
        key: &ObjectKey,
        write: impl std::future::Future<Output = Result<ObjectMeta>>,
    ) -> Result<ObjectMeta> {
        // The lock is not held while the write runs: a body that waits (a paused copy) must
        // not hold up a `sync`.
        let prior = {
            let mut undo = self.undo.lock().await;
            self.remember(&mut undo, key).await?;
            undo.get(key).cloned()
        };
        let meta = write.await?;
        // A sync that ran while the write ran does not cover it: a power cut still takes the
        // key back to what it held before.
        if let Some(prior) = prior {
            self.undo.lock().await.entry(key.clone()).or_insert(prior);
        }
        Ok(meta)
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        Box::pin(async move {
            self.before(Op::Head, Some(key)).await?;
            self.inner.head(key).await
        })
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Object>> {
        Box::pin(async move {
            let faults = self.before(Op::Get, Some(key)).await?;
            let object = self.inner.get(key).await?;
            if faults.is_empty() {
                return Ok(object);
            }
            Ok(Object {
                meta: object.meta,
                body: faulty_body(key.clone(), object.body, faults),
            })
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(async move {
            self.before(Op::Put, Some(key)).await?;
            self.replacing(key, self.inner.put(key, body)).await
        })
    }

    fn create_upload<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<UploadId>>> {
        Box::pin(async move {
            self.before(Op::Put, Some(key)).await?;
            self.inner.create_upload(key).await
        })
    }

    fn put_part<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        part: u32,
        offset: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<PartTag>> {
        Box::pin(async move {
            self.before(Op::Put, Some(key)).await?;
            self.inner.put_part(key, upload, part, offset, body).await
        })
    }

    fn complete_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        parts: &'a [PartTag],
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(async move {
            self.before(Op::Put, Some(key)).await?;
            self.replacing(key, self.inner.complete_upload(key, upload, parts))
                .await
        })
    }

    fn abort_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.abort_upload(key, upload)
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.before(Op::Delete, Some(key)).await?;
            let mut undo = self.undo.lock().await;
            self.remember(&mut undo, key).await?;
            self.inner.delete(key).await
        })
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        let this = self.clone();
        let inner = self.inner.list(prefix, start_after);
        Box::pin(
            async move {
                match this.before(Op::List, None).await {
                    Ok(_) => inner,
                    Err(e) => Box::pin(futures_util::stream::once(std::future::ready(Err(e)))),
                }
            }
            .flatten_stream(),
        )
    }

    fn put_reports_blake3(&self) -> bool {
        self.inner.put_reports_blake3()
    }

    fn sync(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.before(Op::Sync, None).await?;
            let mut undo = self.undo.lock().await;
            self.inner.sync().await?;
            undo.clear();
            Ok(())
        })
    }
}
