//! The gateway's request path: where each operation on a key goes while the job moves it, and
//! what makes an acknowledged write durable.
//!
//! The gateway is an embedder of the engine like any storage system (SPEC §4): every write
//! takes a [`WriteTicket`](ferry::forwarding::WriteTicket) and goes where it says, every read
//! takes a counted [`ReadGuard`](ferry::forwarding::ReadGuard) and the job's commit hook drains
//! them before a source is deleted. What the table does not know it answers from the stores:
//! a key the table routes to SRC that SRC does not hold is read from DST (a key moved and
//! cleaned up before the entry expired or the process restarted) unless the job is copying it
//! now, and a delete routed to SRC deletes on both sides. A listing shows each key as a read
//! of it would find it.
//!
//! Once the job has completed, the gateway *settles*: a key the table routes to SRC is
//! written to DST and its SRC copy deleted, and [`Gateway::drain_source`] moves whatever a
//! write left on SRC after the job's last listing. Settled writes and the drain take a
//! per-key lock, so the two never interleave on one key.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use ferry::forwarding::{Route, Table};
use ferry::store::{
    BoxStream, ByteStream, DeleteIf, Error as StoreError, ErrorKind, ObjectMeta, Op, Store,
};
use ferry::types::ObjectKey;
use futures_util::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::etags::{Etags, MultipartTags, Tagged};

/// Which of the job's two stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    Src,
    Dst,
}

/// A failure of the gateway's request path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key stayed fenced (the job flipping a hot key) longer than the fence timeout.
    #[error("key {key:?} is being flipped; try again")]
    Busy { key: String },
    /// The request's body is not what its headers announced.
    #[error("{0}")]
    Body(BodyFault),
    /// The gateway's record of multipart ETags, under the state directory, failed.
    #[error("the gateway's multipart ETag records: {0}")]
    Records(#[from] std::io::Error),
}

/// What was wrong with a request's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// It ended before (or ran past) its announced length.
    Length { expected: u64, got: u64 },
    /// Its MD5 is not the `Content-MD5` the client sent.
    Digest,
    /// The connection failed while it was read.
    Broken(String),
}

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyFault::Length { expected, got } => {
                write!(
                    f,
                    "the body has {got} bytes where {expected} were announced"
                )
            }
            BodyFault::Digest => f.write_str("the body's MD5 is not its Content-MD5"),
            BodyFault::Broken(why) => write!(f, "the body could not be read: {why}"),
        }
    }
}

pub(crate) type Result<T, E = GatewayError> = std::result::Result<T, E>;

/// An object opened for reading through the gateway.
pub(crate) struct Opened {
    pub(crate) meta: ObjectMeta,
    pub(crate) etag: Arc<str>,
    pub(crate) body: ByteStream,
}

/// One entry of a listing page.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) meta: ObjectMeta,
    pub(crate) etag: Arc<str>,
}

/// One page of a merged listing.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) objects: Vec<Listed>,
    pub(crate) prefixes: Vec<String>,
    /// Where the next page starts (exclusive), when there is one.
    pub(crate) next: Option<String>,
}

/// Keys per store listing batch.
const LIST_BATCH: usize = 1000;

/// How many per-key locks settled writes and the drain share (a power of two).
const STRIPES: usize = 256;

/// The gateway over one job's SRC and DST.
pub(crate) struct Gateway {
    src: Arc<dyn Store>,
    dst: Arc<dyn Store>,
    table: Table,
    /// The job completed: keys routed to SRC are written to DST.
    settled: AtomicBool,
    /// Settled, and SRC drained: nothing the gateway wrote is on SRC, reads look at DST first.
    drained: AtomicBool,
    /// Writes made before the gateway settled hold it shared, so settling waits them out.
    gate: tokio::sync::RwLock<()>,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
    src_sync: GroupSync,
    dst_sync: GroupSync,
    etags: Etags,
    multipart: MultipartTags,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("settled", &self.settled)
            .finish_non_exhaustive()
    }
}

/// A write's permission to go ahead: shared with the other writes before the gateway settled,
/// the key's lock after.
enum WriteGate<'g> {
    Moving(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'g, ()>),
    Settled(#[allow(dead_code)] tokio::sync::MutexGuard<'g, ()>),
}

impl WriteGate<'_> {
    fn settled(&self) -> bool {
        matches!(self, WriteGate::Settled(_))
    }
}

impl Gateway {
    /// The gateway over `src` and `dst` as `table` routes them; `multipart` keeps the ETags
    /// of objects completed from multipart uploads.
    pub(crate) fn new(
        src: Arc<dyn Store>,
        dst: Arc<dyn Store>,
        table: Table,
        multipart: MultipartTags,
    ) -> Gateway {
        Gateway {
            src_sync: GroupSync::new(Arc::clone(&src)),
            dst_sync: GroupSync::new(Arc::clone(&dst)),
            src,
            dst,
            table,
            settled: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            gate: tokio::sync::RwLock::new(()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: Default::default(),
            etags: Etags::default(),
            multipart,
        }
    }

    fn store(&self, side: Side) -> &dyn Store {
        match side {
            Side::Src => &*self.src,
            Side::Dst => &*self.dst,
        }
    }

    fn syncer(&self, side: Side) -> &GroupSync {
        match side {
            Side::Src => &self.src_sync,
            Side::Dst => &self.dst_sync,
        }
    }

    /// Whether the gateway has settled (the job completed).
    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// The job completed: from now on keys routed to SRC are written to DST. Returns once
    /// every write that began before has ended, so a listing of SRC made after it sees all
    /// that any write will ever leave there.
    pub(crate) async fn settle(&self) {
        self.settled.store(true, Ordering::Release);
        drop(self.gate.write().await);
    }

    async fn write_gate(&self, key: &ObjectKey) -> WriteGate<'_> {
        let shared = self.gate.read().await;
        if !self.is_settled() {
            return WriteGate::Moving(shared);
        }
        drop(shared);
        WriteGate::Settled(self.stripe(key).lock().await)
    }

    fn stripe(&self, key: &ObjectKey) -> &tokio::sync::Mutex<()> {
        &self.stripes[(self.hasher.hash_one(key.as_str()) as usize) & (STRIPES - 1)]
    }

    /// A write ticket for `key`, waiting through a fence; [`GatewayError::Busy`] past the
    /// fence timeout.
    async fn ticket(&self, key: &ObjectKey) -> Result<ferry::forwarding::WriteTicket<'_>> {
        self.table
            .begin_write(key.as_str())
            .await
            .map_err(|_| GatewayError::Busy {
                key: key.as_str().to_owned(),
            })
    }

    /// Runs the read `op` on the side the table routes `key` to: DST once flipped, else SRC,
    /// and DST when SRC lacks the key (moved and cleaned up, its entry gone); then the ETag of
    /// what it found (`meta` says where its metadata is). The read is counted until both are
    /// done, so the job's commit hook waits for it before it deletes the SRC copy: the ETag
    /// is never computed from a copy deleted under it.
    async fn read_routed<'s, T, F, Fut>(
        &'s self,
        key: &ObjectKey,
        op: F,
        meta: impl Fn(&T) -> &ObjectMeta,
    ) -> Result<(T, Arc<str>)>
    where
        F: Fn(&'s dyn Store) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let guard = self.table.read(key.as_str());
        let (side, found) = match guard.route() {
            Route::Target(_) => (Side::Dst, op(&*self.dst).await?),
            // Everything the gateway wrote is on DST now: one open, not a miss on SRC first.
            Route::Source if self.drained.load(Ordering::Acquire) => match op(&*self.dst).await {
                Err(e) if e.kind() == ErrorKind::NotFound => (Side::Src, op(&*self.src).await?),
                other => (Side::Dst, other?),
            },
            // (Not while the job copies the key: what DST holds then is not served, SRC is.)
            Route::Source => match op(&*self.src).await {
                Err(e) if e.kind() == ErrorKind::NotFound && !self.moving(key.as_str()) => {
                    (Side::Dst, op(&*self.dst).await?)
                }
                other => (Side::Src, other?),
            },
        };
        let etag = self.etag(side, meta(&found)).await?;
        drop(guard);
        Ok((found, etag))
    }

    /// Whether the job is copying `key` (registered, not flipped). DST may then hold a copy
    /// that is not the key's content: the job's copy of a key deleted meanwhile lands on DST
    /// before the job finds the key gone and removes it.
    fn moving(&self, key: &str) -> bool {
        matches!(self.table.route_read(key), Route::Source)
            && self
                .table
                .get(key)
                .is_some_and(|entry| entry.state.is_moving())
    }

    /// Opens `key` for reading where the table routes it ([`Gateway::read_routed`]).
    ///
    /// # Errors
    /// `NotFound` when neither side holds it; the store's errors.
    pub(crate) async fn open(&self, key: &ObjectKey) -> Result<Opened> {
        let (object, etag) = self
            .read_routed(key, |store| store.get(key), |o| &o.meta)
            .await?;
        Ok(Opened {
            meta: object.meta,
            etag,
            body: object.body,
        })
    }

    /// Opens the bytes `start..end` of `key` (clamped to its size) where the table routes it;
    /// `meta` describes the whole object.
    ///
    /// # Errors
    /// As [`Gateway::open`].
    pub(crate) async fn open_range(&self, key: &ObjectKey, start: u64, end: u64) -> Result<Opened> {
        let (object, etag) = self
            .read_routed(key, |store| store.get_range(key, start, end), |o| &o.meta)
            .await?;
        Ok(Opened {
            meta: object.meta,
            etag,
            body: object.body,
        })
    }

    /// What the gateway serves for `key`: its metadata and ETag, or `None`.
    ///
    /// # Errors
    /// The store's errors.
    pub(crate) async fn head(&self, key: &ObjectKey) -> Result<Option<(ObjectMeta, Arc<str>)>> {
        let found = self
            .read_routed(
                key,
                |store| async move {
                    store
                        .head(key)
                        .await?
                        .ok_or_else(|| StoreError::NotFound { key: key.clone() })
                },
                |m| m,
            )
            .await;
        match found {
            Err(GatewayError::Store(e)) if e.kind() == ErrorKind::NotFound => Ok(None),
            other => other.map(Some),
        }
    }

    /// Stores `body` as `key` where the table routes it, durably: when this returns `Ok`, a
    /// store sync that began after the write covers it. `etag` makes the ETag remembered
    /// (`None`: the MD5 of the body), and kept across restarts and moves (see
    /// [`MultipartTags`]). `expected`: the announced length; `md5`: the `Content-MD5` sent,
    /// checked before the object replaces the old one.
    ///
    /// # Errors
    /// [`GatewayError::Body`] when the body is not what was announced (nothing is stored);
    /// [`GatewayError::Busy`] when the key stays fenced; the store's errors.
    pub(crate) async fn put(
        &self,
        key: &ObjectKey,
        body: BoxStream<'static, Result<Bytes, BodyFault>>,
        expected: Option<u64>,
        md5: Option<[u8; 16]>,
        etag: Option<String>,
    ) -> Result<(ObjectMeta, Arc<str>)> {
        let gate = self.write_gate(key).await;
        let ticket = self.ticket(key).await?;
        let routed = match ticket.route() {
            Route::Source => Side::Src,
            Route::Target(_) => Side::Dst,
        };
        let side = if gate.settled() { Side::Dst } else { routed };
        let check = Arc::new(Mutex::new(BodyCheck::new(expected, md5, etag.is_some())));
        let body = checked(key.clone(), body, Arc::clone(&check));
        let stored = self.store(side).put(key, body).await;
        let fault = lock(&check).fault.clone();
        let meta = match (stored, fault) {
            (Ok(meta), None) => meta,
            (_, Some(fault)) => return Err(GatewayError::Body(fault)),
            (Err(e), None) => return Err(e.into()),
        };
        drop(ticket);
        let (etag, tagged) = match etag {
            Some(etag) => {
                let etag: Arc<str> = etag.into();
                let blake3 = lock(&check).blake3.take().map(|h| *h.finalize().as_bytes());
                let tagged = blake3.map(|blake3| Tagged {
                    size: meta.size,
                    blake3,
                    etag: Arc::clone(&etag),
                });
                (etag, tagged)
            }
            None => (hex(&lock(&check).digest()).into(), None),
        };
        self.etags.insert(side, &meta, Arc::clone(&etag));
        self.syncer(side).sync().await?;
        match tagged {
            Some(tagged) => self.multipart.record(key, tagged).await?,
            None => self.multipart.forget(key)?,
        }
        if side == Side::Dst && routed == Side::Src {
            // Settled: the key's SRC copy (left by a write before the job's last listing)
            // goes, so reads that look at SRC first find the new object on DST.
            if self.src.delete(key).await? {
                self.src_sync.sync().await?;
            }
        }
        drop(gate);
        Ok((meta, etag))
    }

    /// Deletes `key` durably: on DST when the table routes it there, on both sides
    /// otherwise (a key moved and cleaned up may be routed to SRC and held by DST). Returns
    /// whether any side held it.
    ///
    /// # Errors
    /// [`GatewayError::Busy`] when the key stays fenced; the store's errors.
    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<bool> {
        let gate = self.write_gate(key).await;
        let ticket = self.ticket(key).await?;
        let both = matches!(ticket.route(), Route::Source);
        let in_src = both && self.src.delete(key).await?;
        let in_dst = self.dst.delete(key).await?;
        drop(ticket);
        self.multipart.forget(key)?;
        if in_src {
            self.src_sync.sync().await?;
        }
        if in_dst {
            self.dst_sync.sync().await?;
        }
        drop(gate);
        Ok(in_src || in_dst)
    }

    /// One page of the merged listing of keys under `prefix` after `after`: each live key
    /// once, in key order, as the table routes it; with `delimiter`, the keys that share a
    /// prefix up to it after `prefix` as one common prefix.
    ///
    /// Each batch lists SRC before DST: a key leaves SRC only after it is on DST, so a key
    /// that SRC's listing missed because it moved meanwhile is in DST's.
    ///
    /// # Errors
    /// The stores' errors.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<String>,
        max_keys: usize,
    ) -> Result<Page> {
        let mut page = Page::default();
        // An empty marker or start-after is none (as S3 reads it).
        let mut cursor = after.filter(|a| !a.is_empty());
        let delimiter = delimiter.filter(|d| !d.is_empty());
        if max_keys == 0 {
            return Ok(page);
        }
        let batch = (max_keys + 1).clamp(16, LIST_BATCH);
        loop {
            let start = match cursor.as_deref() {
                Some(c) if c.as_bytes() >= prefix.as_bytes() => Some(ObjectKey::new(c)),
                _ => None,
            };
            let start = match start {
                Some(Ok(key)) => Some(key),
                Some(Err(_)) => return Ok(page),
                None => None,
            };
            let src: Vec<ObjectMeta> = self
                .src
                .list(prefix, start.as_ref())
                .take(batch)
                .try_collect()
                .await?;
            let dst: Vec<ObjectMeta> = self
                .dst
                .list(prefix, start.as_ref())
                .take(batch)
                .try_collect()
                .await?;
            // Keys up to `bound` are complete in both batches.
            let bound = [(&src, Side::Src), (&dst, Side::Dst)]
                .iter()
                .filter(|(b, _)| b.len() == batch)
                .filter_map(|(b, _)| b.last().map(|m| m.key.as_str().to_owned()))
                .min();
            let merged = self.merge(src, dst, bound.as_deref());
            for (side, meta) in merged {
                // Listed on a side reads do not take it from: a SRC copy the job flipped away
                // from and has not cleaned up yet (a delete since went to DST only), or a DST
                // copy of a key still moving. As a read finds it now, if at all (also before
                // it makes a common prefix).
                let elsewhere = match side {
                    Side::Src => {
                        matches!(self.table.route_read(meta.key.as_str()), Route::Target(_))
                    }
                    Side::Dst => self.moving(meta.key.as_str()),
                };
                let (meta, found) = if elsewhere {
                    match self.head(&meta.key).await? {
                        Some((meta, etag)) => (meta, Some(etag)),
                        None => continue,
                    }
                } else {
                    (meta, None)
                };
                let key = meta.key.as_str();
                if let Some(d) = delimiter
                    && let Some(at) = key[prefix.len()..].find(d)
                {
                    let common = &key[..prefix.len() + at + d.len()];
                    if page.prefixes.last().is_some_and(|p| p == common) {
                        continue;
                    }
                    if page.objects.len() + page.prefixes.len() == max_keys {
                        page.next = cursor;
                        return Ok(page);
                    }
                    page.prefixes.push(common.to_owned());
                    // Past every key under the common prefix (no UTF-8 text sorts after
                    // U+10FFFF's encoding but its own continuations).
                    cursor = Some(format!("{common}\u{10FFFF}"));
                    continue;
                }
                if page.objects.len() + page.prefixes.len() == max_keys {
                    page.next = cursor;
                    return Ok(page);
                }
                cursor = Some(key.to_owned());
                if let Some(etag) = found {
                    page.objects.push(Listed { meta, etag });
                    continue;
                }
                match self.etag(side, &meta).await {
                    Ok(etag) => page.objects.push(Listed { meta, etag }),
                    // Moved (or deleted) since the batch was listed: as it is now, if at all.
                    Err(GatewayError::Store(e)) if e.kind() == ErrorKind::NotFound => {
                        if let Some((meta, etag)) = self.head(&meta.key).await? {
                            page.objects.push(Listed { meta, etag });
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            match bound {
                None => return Ok(page),
                Some(bound) => {
                    if cursor.as_deref().is_none_or(|c| c < bound.as_str()) {
                        cursor = Some(bound);
                    }
                }
            }
        }
    }

    /// The two sorted batches merged up to `bound` (inclusive), each key once: from the side
    /// the table routes it to when both hold it.
    fn merge(
        &self,
        src: Vec<ObjectMeta>,
        dst: Vec<ObjectMeta>,
        bound: Option<&str>,
    ) -> Vec<(Side, ObjectMeta)> {
        let within = |m: &ObjectMeta| bound.is_none_or(|b| m.key.as_str() <= b);
        let mut out = Vec::with_capacity(src.len().max(dst.len()));
        let mut src = src.into_iter().filter(within).peekable();
        let mut dst = dst.into_iter().filter(within).peekable();
        loop {
            let order = match (src.peek(), dst.peek()) {
                (None, None) => return out,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(s), Some(d)) => s.key.as_str().cmp(d.key.as_str()),
            };
            match order {
                std::cmp::Ordering::Less => out.extend(src.next().map(|m| (Side::Src, m))),
                std::cmp::Ordering::Greater => out.extend(dst.next().map(|m| (Side::Dst, m))),
                std::cmp::Ordering::Equal => {
                    let (s, d) = (src.next(), dst.next());
                    let pick = match self
                        .table
                        .route_read(s.as_ref().or(d.as_ref()).map_or("", |m| m.key.as_str()))
                    {
                        Route::Source => s.map(|m| (Side::Src, m)),
                        Route::Target(_) => d.map(|m| (Side::Dst, m)),
                    };
                    out.extend(pick);
                }
            }
        }
    }

    /// The ETag of `meta` on `side`: remembered from the write that made it, or read once per
    /// version: the MD5 of its content, or the multipart ETag kept for that content.
    async fn etag(&self, side: Side, meta: &ObjectMeta) -> Result<Arc<str>> {
        if let Some(etag) = self.etags.get(side, meta) {
            return Ok(etag);
        }
        let object = self.store(side).get(&meta.key).await?;
        let version = object.meta.clone();
        let tagged = self.multipart.candidate(&meta.key, version.size);
        let mut blake3 = tagged.as_ref().map(|_| blake3::Hasher::new());
        let mut body = object.checked_body();
        let mut md5 = Md5::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            md5.update(&chunk);
            if let Some(h) = blake3.as_mut() {
                h.update(&chunk);
            }
        }
        let etag: Arc<str> = match (tagged, blake3) {
            (Some(t), Some(h)) if *h.finalize().as_bytes() == t.blake3 => t.etag,
            _ => hex(&md5.finalize()).into(),
        };
        self.etags.insert(side, &version, Arc::clone(&etag));
        Ok(etag)
    }

    /// Moves what SRC still holds to DST, once the gateway has settled: the keys written on
    /// SRC after the job's last listing, and those it failed or kept. Each key under its lock,
    /// copied, synced, read back, then deleted from SRC if it still has the version copied.
    /// Returns how many keys moved; from then on reads look at DST first (a key written on
    /// SRC by a program outside the gateway is still found there, after a miss on DST).
    ///
    /// # Errors
    /// The stores' errors; the keys moved so far stay moved.
    pub(crate) async fn drain_source(&self) -> Result<u64> {
        let moved = self.drain_pass().await?;
        self.drained.store(true, Ordering::Release);
        Ok(moved)
    }

    async fn drain_pass(&self) -> Result<u64> {
        let mut moved = 0;
        let mut after: Option<ObjectKey> = None;
        loop {
            let batch: Vec<ObjectMeta> = self
                .src
                .list("", after.as_ref())
                .take(LIST_BATCH)
                .try_collect()
                .await?;
            let Some(last) = batch.last().map(|m| m.key.clone()) else {
                return Ok(moved);
            };
            for listed in batch {
                moved += u64::from(self.move_one(&listed.key).await?);
            }
            after = Some(last);
        }
    }

    async fn move_one(&self, key: &ObjectKey) -> Result<bool> {
        let _lock = self.stripe(key).lock().await;
        if matches!(self.table.route_read(key.as_str()), Route::Target(_)) {
            // Forwarded by the job, whose cleanup owns the SRC copy.
            return Ok(false);
        }
        let object = match self.src.get(key).await {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            other => other?,
        };
        let from = object.meta.clone();
        let hash = Arc::new(Mutex::new(blake3::Hasher::new()));
        let tee = Arc::clone(&hash);
        let body = object
            .checked_body()
            .inspect_ok(move |chunk| {
                lock(&tee).update(chunk);
            })
            .boxed();
        let meta = self.dst.put(key, body).await?;
        let sent = lock(&hash).finalize();
        let mut back = self.dst.get(key).await?.checked_body();
        let mut check = blake3::Hasher::new();
        while let Some(chunk) = back.next().await {
            check.update(&chunk?);
        }
        if check.finalize() != sent || meta.size != from.size {
            return Err(StoreError::Permanent {
                op: Op::Put,
                key: Some(key.clone()),
                source: "the copy on DST does not read back as the SRC content".into(),
            }
            .into());
        }
        self.dst_sync.sync().await?;
        if let Some(etag) = self.etags.get(Side::Src, &from) {
            self.etags.insert(Side::Dst, &meta, etag);
        }
        match self.src.delete_if(key, &from.version).await? {
            DeleteIf::Deleted => {
                self.src_sync.sync().await?;
                Ok(true)
            }
            // Written by a program outside the gateway meanwhile: the copy goes, so the key is
            // served from SRC (also once reads look at DST first); the next drain moves it.
            _ => {
                self.dst.delete_if(key, &meta.version).await?;
                self.dst_sync.sync().await?;
                Ok(false)
            }
        }
    }
}

/// The grouped durability barrier of one store, as a database's group commit: a caller
/// whose write returned before a sync began is covered by that sync; callers that arrive while
/// one runs share the next.
pub(crate) struct GroupSync {
    store: Arc<dyn Store>,
    /// Syncs begun.
    started: AtomicU64,
    /// One more than the index of the last sync that succeeded (0: none).
    done: tokio::sync::Mutex<u64>,
}

impl GroupSync {
    fn new(store: Arc<dyn Store>) -> GroupSync {
        GroupSync {
            store,
            started: AtomicU64::new(0),
            done: tokio::sync::Mutex::new(0),
        }
    }

    /// Returns once a store sync that began after this call did covers every write that
    /// returned before it.
    ///
    /// # Errors
    /// The store's sync error.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        // Any sync whose index is at least this began after the caller's writes returned.
        let needed = self.started.load(Ordering::SeqCst);
        let mut done = self.done.lock().await;
        if *done > needed {
            return Ok(());
        }
        let index = self.started.fetch_add(1, Ordering::SeqCst);
        self.store.sync().await?;
        *done = index + 1;
        Ok(())
    }
}

/// What a request body must be, checked as it streams.
struct BodyCheck {
    expected: Option<u64>,
    md5_sent: Option<[u8; 16]>,
    md5: Md5,
    /// The content's BLAKE3, when the ETag given is kept by content.
    blake3: Option<blake3::Hasher>,
    got: u64,
    fault: Option<BodyFault>,
}

impl BodyCheck {
    fn new(expected: Option<u64>, md5_sent: Option<[u8; 16]>, blake3: bool) -> BodyCheck {
        BodyCheck {
            expected,
            md5_sent,
            md5: Md5::new(),
            blake3: blake3.then(blake3::Hasher::new),
            got: 0,
            fault: None,
        }
    }

    fn digest(&self) -> [u8; 16] {
        self.md5.clone().finalize().into()
    }

    /// The fault of a body that ended here, if any.
    fn at_end(&mut self) -> Option<BodyFault> {
        if let Some(expected) = self.expected
            && expected != self.got
        {
            return Some(BodyFault::Length {
                expected,
                got: self.got,
            });
        }
        if self.md5_sent.is_some_and(|sent| sent != self.digest()) {
            return Some(BodyFault::Digest);
        }
        None
    }
}

/// `body` as a store's put wants it: hashed as it goes, and ending with an error (so the put
/// stores nothing) when it is not what was announced.
fn checked(
    key: ObjectKey,
    body: BoxStream<'static, Result<Bytes, BodyFault>>,
    check: Arc<Mutex<BodyCheck>>,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    let refuse = move |key: &ObjectKey, fault: BodyFault| StoreError::Permanent {
        op: Op::Put,
        key: Some(key.clone()),
        source: fault.to_string().into(),
    };
    futures_util::stream::unfold(Some(body), move |body| {
        let check = Arc::clone(&check);
        let key = key.clone();
        async move {
            let mut body = body?;
            match body.next().await {
                Some(Ok(chunk)) => {
                    let mut c = lock(&check);
                    c.got += chunk.len() as u64;
                    c.md5.update(&chunk);
                    if let Some(h) = c.blake3.as_mut() {
                        h.update(&chunk);
                    }
                    if c.expected.is_some_and(|e| c.got > e) {
                        let fault = BodyFault::Length {
                            expected: c.expected.unwrap_or_default(),
                            got: c.got,
                        };
                        c.fault = Some(fault.clone());
                        return Some((Err(refuse(&key, fault)), None));
                    }
                    drop(c);
                    Some((Ok(chunk), Some(body)))
                }
                Some(Err(fault)) => {
                    lock(&check).fault = Some(fault.clone());
                    Some((Err(refuse(&key, fault)), None))
                }
                None => {
                    let mut c = lock(&check);
                    let fault = c.at_end()?;
                    c.fault = Some(fault.clone());
                    Some((Err(refuse(&key, fault)), None))
                }
            }
        }
    })
    .boxed()
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use ferry::store::{MemStore, body_from_bytes};
    use ferry::types::NodeId;

    use super::*;

    struct Setup {
        gateway: Gateway,
        src: MemStore,
        dst: MemStore,
        table: Table,
        _records: tempfile::TempDir,
    }

    fn setup() -> Setup {
        let (src, dst, table) = (MemStore::new(), MemStore::new(), Table::default());
        let records = tempfile::tempdir().unwrap();
        let multipart = MultipartTags::open(records.path().join("multipart-etags")).unwrap();
        let gateway = Gateway::new(
            Arc::new(src.clone()),
            Arc::new(dst.clone()),
            table.clone(),
            multipart,
        );
        Setup {
            gateway,
            src,
            dst,
            table,
            _records: records,
        }
    }

    async fn put(store: &MemStore, key: &ObjectKey, data: &'static [u8]) {
        store
            .put(key, body_from_bytes(Bytes::from_static(data), 4))
            .await
            .unwrap();
    }

    async fn listed(gateway: &Gateway) -> Vec<String> {
        let page = gateway.list("", None, None, 1000).await.unwrap();
        (page.objects.iter())
            .map(|o| o.meta.key.as_str().to_owned())
            .collect()
    }

    fn register(table: &Table, key: &ObjectKey) {
        let (a, b) = (NodeId::new("src").unwrap(), NodeId::new("dst").unwrap());
        table.register(key, a, b).unwrap();
    }

    #[tokio::test]
    async fn a_key_deleted_between_its_flip_and_cleanup_is_neither_read_nor_listed() {
        let s = setup();
        let key = ObjectKey::new("d/k").unwrap();
        put(&s.src, &key, b"moved").await;
        put(&s.dst, &key, b"moved").await;
        register(&s.table, &key);
        let observed = s.table.generation("d/k").unwrap();
        s.table.try_flip("d/k", observed).unwrap();
        // The job's cleanup of SRC has not run yet; the delete goes where the key lives.
        assert!(s.gateway.delete(&key).await.unwrap());
        assert!(
            s.src.bytes("d/k").is_some(),
            "the job's cleanup owns the SRC copy"
        );
        assert!(s.gateway.head(&key).await.unwrap().is_none());
        assert_eq!(listed(&s.gateway).await, Vec::<String>::new());
        let page = s.gateway.list("", Some("/"), None, 1000).await.unwrap();
        assert!(page.prefixes.is_empty(), "{:?}", page.prefixes);
        // Written again: listed once, from DST.
        put(&s.dst, &key, b"again").await;
        let page = s.gateway.list("", None, None, 1000).await.unwrap();
        assert_eq!(page.objects.len(), 1);
        assert_eq!(page.objects[0].meta.size, 5);
        assert_eq!(
            s.dst.head(&key).await.unwrap().unwrap(),
            page.objects[0].meta
        );
    }

    #[tokio::test]
    async fn a_dst_copy_of_a_key_still_moving_is_not_served_once_the_source_is_gone() {
        let s = setup();
        let key = ObjectKey::new("k").unwrap();
        register(&s.table, &key);
        // The job's copy landed on DST after a delete had removed the key from both sides.
        put(&s.dst, &key, b"deleted").await;
        assert!(s.gateway.head(&key).await.unwrap().is_none());
        let err = s.gateway.open(&key).await.err().expect("not found");
        assert!(
            matches!(&err, GatewayError::Store(e) if e.kind() == ErrorKind::NotFound),
            "{err}"
        );
        assert_eq!(listed(&s.gateway).await, Vec::<String>::new());
        // Once no job moves it, DST's copy is the key's (moved and cleaned up, its entry gone).
        s.table.remove("k");
        assert!(s.gateway.head(&key).await.unwrap().is_some());
        assert_eq!(listed(&s.gateway).await, vec!["k".to_owned()]);
    }
}
