//! [`MemStore`]: objects in a `BTreeMap`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use ferry_types::ObjectKey;
use futures_util::StreamExt;
use parking_lot::Mutex;

use crate::{
    BoxFuture, BoxStream, Checksum, DEFAULT_CHUNK_SIZE, DeleteIf, Error, MetaStream, Object,
    ObjectMeta, PartTag, Result, Store, UploadId, Version, body_from_bytes,
};

/// How many entries a listing takes from the map per lock.
const LIST_BATCH: usize = 256;

/// A store in memory: a `BTreeMap` from key to content behind a mutex.
///
/// Clones are cheap and share the same objects. Versions come from a counter that every put
/// advances, so two writes of the same bytes still have different versions. `put` collects
/// the body (the store holds objects in memory, after all); `get` hands out zero-copy slices
/// of at most the chunk size. `sync` is a no-op: nothing here is durable, and nothing needs
/// to be made so.
///
/// Like an object store that keeps a checksum per object, it computes each object's BLAKE3
/// when it is stored and reports it in [`ObjectMeta::checksum`] (from `head`, `get`, `put`
/// and `list`), so checksum verification needs no second read of it;
/// [`without_checksums`](MemStore::without_checksums) makes a store that reports none, like a
/// directory.
#[derive(Clone, Debug)]
pub struct MemStore {
    inner: Arc<Mutex<State>>,
    chunk_size: usize,
    checksums: bool,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<ObjectKey, Stored>,
    next_version: u64,
    /// Uploads in parts, by id: the key and the parts received, by number.
    uploads: BTreeMap<String, (ObjectKey, BTreeMap<u32, Bytes>)>,
    next_upload: u64,
}

#[derive(Debug, Clone)]
struct Stored {
    data: Bytes,
    /// Made once per write: every `head`, `get` and listing hands out a clone.
    version: Version,
    blake3: Option<[u8; 32]>,
    modified: SystemTime,
}

fn meta(key: &ObjectKey, stored: &Stored) -> ObjectMeta {
    ObjectMeta {
        key: key.clone(),
        size: stored.data.len() as u64,
        version: stored.version.clone(),
        checksum: stored.blake3.map(Checksum::Blake3),
        modified: Some(stored.modified),
    }
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    /// An empty store whose bodies come in chunks of [`DEFAULT_CHUNK_SIZE`].
    pub fn new() -> MemStore {
        MemStore::with_chunk_size(DEFAULT_CHUNK_SIZE)
    }

    /// An empty store whose bodies come in chunks of at most `chunk_size` bytes (at least 1).
    pub fn with_chunk_size(chunk_size: usize) -> MemStore {
        MemStore {
            inner: Arc::default(),
            chunk_size: chunk_size.max(1),
            checksums: true,
        }
    }

    /// This store, reporting no checksums (`ObjectMeta::checksum` is `None`) for the objects
    /// stored from now on, and computing none: a checksum verification then reads the
    /// object back, as it must from a directory.
    pub fn without_checksums(mut self) -> MemStore {
        self.checksums = false;
        self
    }

    /// The number of uploads in parts started and neither completed nor aborted.
    pub fn uploads(&self) -> usize {
        self.inner.lock().uploads.len()
    }

    /// The number of objects.
    pub fn len(&self) -> usize {
        self.inner.lock().objects.len()
    }

    /// Whether the store holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The content of `key`, in one piece, if present (a test helper; no copy is made).
    pub fn bytes(&self, key: &str) -> Option<Bytes> {
        self.inner
            .lock()
            .objects
            .get(key)
            .map(|stored| stored.data.clone())
    }

    /// Stores `data` as `key` at once (a test helper; the same as a one-chunk put).
    pub fn insert(&self, key: ObjectKey, data: impl Into<Bytes>) -> ObjectMeta {
        let data = data.into();
        let blake3 = self.checksums.then(|| *blake3::hash(&data).as_bytes());
        let mut state = self.inner.lock();
        state.next_version += 1;
        let stored = Stored {
            data,
            version: Version::new(state.next_version.to_string()),
            blake3,
            modified: SystemTime::now(),
        };
        let meta = meta(&key, &stored);
        state.objects.insert(key, stored);
        meta
    }
}

/// A part's tag: its length and BLAKE3, so a part that changed since is noticed.
fn part_tag(data: &[u8]) -> PartTag {
    PartTag::new(format!("{}-{}", data.len(), blake3::hash(data).to_hex()))
}

fn upload_gone(key: &ObjectKey, upload: &UploadId) -> Error {
    Error::UploadNotFound {
        key: key.clone(),
        upload: upload.as_str().to_owned(),
    }
}

impl Store for MemStore {
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        let found = self
            .inner
            .lock()
            .objects
            .get(key)
            .map(|stored| meta(key, stored));
        Box::pin(std::future::ready(Ok(found)))
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Object>> {
        let found = self.inner.lock().objects.get(key).cloned();
        let result = match found {
            Some(stored) => Ok(Object {
                meta: meta(key, &stored),
                body: body_from_bytes(stored.data, self.chunk_size),
            }),
            None => Err(Error::NotFound { key: key.clone() }),
        };
        Box::pin(std::future::ready(result))
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        mut body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(async move {
            // The object becomes visible only once it is whole: atomic for readers.
            let mut first: Option<Bytes> = None;
            let mut buf = BytesMut::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                match first.take() {
                    None if buf.is_empty() => first = Some(chunk),
                    Some(prev) => {
                        buf.extend_from_slice(&prev);
                        buf.extend_from_slice(&chunk);
                    }
                    None => buf.extend_from_slice(&chunk),
                }
            }
            let data = first.unwrap_or_else(|| buf.freeze());
            Ok(self.insert(key.clone(), data))
        })
    }

    fn create_upload<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<UploadId>>> {
        let mut state = self.inner.lock();
        state.next_upload += 1;
        let id = format!("mem-upload-{}", state.next_upload);
        state
            .uploads
            .insert(id.clone(), (key.clone(), BTreeMap::new()));
        Box::pin(std::future::ready(Ok(Some(UploadId::new(id)))))
    }

    fn put_part<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        part: u32,
        _offset: u64,
        mut body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<PartTag>> {
        Box::pin(async move {
            let mut buf = BytesMut::new();
            while let Some(chunk) = body.next().await {
                buf.extend_from_slice(&chunk?);
            }
            let data = buf.freeze();
            let tag = part_tag(&data);
            let mut state = self.inner.lock();
            match state.uploads.get_mut(upload.as_str()) {
                Some((owner, parts)) if owner == key => {
                    parts.insert(part, data);
                    Ok(tag)
                }
                _ => Err(upload_gone(key, upload)),
            }
        })
    }

    fn complete_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        parts: &'a [PartTag],
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        let result = (|| {
            let mut state = self.inner.lock();
            let Some((owner, received)) = state.uploads.get(upload.as_str()) else {
                return Err(upload_gone(key, upload));
            };
            if owner != key {
                return Err(upload_gone(key, upload));
            }
            let mut data = BytesMut::new();
            for (number, tag) in (1u32..).zip(parts) {
                match received.get(&number) {
                    Some(part) if part_tag(part) == *tag => data.extend_from_slice(part),
                    _ => return Err(upload_gone(key, upload)),
                }
            }
            state.uploads.remove(upload.as_str());
            drop(state);
            Ok(self.insert(key.clone(), data.freeze()))
        })();
        Box::pin(std::future::ready(result))
    }

    fn abort_upload<'a>(
        &'a self,
        _key: &'a ObjectKey,
        upload: &'a UploadId,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.lock().uploads.remove(upload.as_str());
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<bool>> {
        let removed = self.inner.lock().objects.remove(key).is_some();
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn put_reports_blake3(&self) -> bool {
        self.checksums
    }

    fn delete_if<'a>(
        &'a self,
        key: &'a ObjectKey,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<DeleteIf>> {
        // Compared and removed under one lock: no write can come between the two.
        let mut inner = self.inner.lock();
        let found = match inner.objects.get(key) {
            None => DeleteIf::Absent,
            Some(stored) if stored.version != *version => DeleteIf::Changed(meta(key, stored)),
            Some(_) => {
                inner.objects.remove(key);
                DeleteIf::Deleted
            }
        };
        drop(inner);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        let inner = Arc::clone(&self.inner);
        let prefix: Arc<str> = Arc::from(prefix);
        // The last key produced; the next batch starts after it.
        let after: Option<ObjectKey> = start_after.cloned();
        let state = (after, false);
        Box::pin(
            futures_util::stream::unfold(state, move |(after, done)| {
                let inner = Arc::clone(&inner);
                let prefix = Arc::clone(&prefix);
                async move {
                    if done {
                        return None;
                    }
                    let batch: Vec<ObjectMeta> = {
                        let state = inner.lock();
                        let lower = match &after {
                            Some(k) => Bound::Excluded(k.as_str()),
                            None => Bound::Included(&*prefix),
                        };
                        state
                            .objects
                            .range::<str, _>((lower, Bound::Unbounded))
                            .skip_while(|(k, _)| k.as_str() < &*prefix)
                            .take_while(|(k, _)| k.as_str().starts_with(&*prefix))
                            .take(LIST_BATCH)
                            .map(|(k, stored)| meta(k, stored))
                            .collect()
                    };
                    let done = batch.len() < LIST_BATCH;
                    let next = batch.last().map(|m| m.key.clone());
                    next.map(|next| {
                        (
                            futures_util::stream::iter(batch.into_iter().map(Ok)),
                            (Some(next), done),
                        )
                    })
                }
            })
            .flatten(),
        )
    }

    fn sync(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
