//! [`ObjectStoreAdapter`]: the `Store` trait over an object_store `ObjectStore`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use ferry_store::{
    BoxFuture, BoxStream, ByteStream, DEFAULT_CHUNK_SIZE, MetaStream, Object, Store,
};
use ferry_store::{Checksum, ObjectMeta, Version};
use ferry_store::{Error, ErrorKind, Op, Result};
use ferry_store::{PartTag, UploadId};
use ferry_types::ObjectKey;
use futures_util::{StreamExt, stream};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};

use crate::sent::Sent;
use crate::url::{Backend, parse};

mod parts;

use self::parts::Multipart;

/// The default part size of multipart uploads: 5 MiB, S3's minimum for every part but the
/// last. With it, an S3 object can be at most 10,000 parts × 5 MiB ≈ 48.8 GiB.
pub const DEFAULT_PART_SIZE: usize = 5 << 20;

/// The default number of parts of one multipart upload in flight at once.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 2;

/// How a backend lists: whether its listings come in key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Listing {
    /// The backend lists in byte order of the keys (S3 general-purpose buckets, GCS, Azure,
    /// object_store's `InMemory`). The adapter checks it as it goes: a key that does not sort
    /// after the previous one ends the listing with a permanent error rather than skipping
    /// keys silently.
    Sorted,
    /// The backend lists in no particular order (object_store's `LocalFileSystem` walks the
    /// directory tree as the file system returns it). The adapter walks it one "directory" at
    /// a time (`list_with_delimiter`) and sorts each, depth first: memory is the entries of
    /// the directories on the current path.
    Walk,
}

/// A [`Store`] over any object_store [`ObjectStore`]: S3, GCS, Azure, a local directory or
/// memory, usually opened with [`from_url`](ObjectStoreAdapter::from_url).
///
/// - **Keys** map one to one to object_store paths, under the URL's prefix: a key with an
///   empty, `.` or `..` segment, a leading or trailing `/` or an ASCII control character is
///   refused with [`Error::InvalidKey`]; so, on `file://` stores, is a segment ending in `#`
///   and digits (object_store's local store keeps its unfinished uploads under such names).
/// - **Versions** are the backend's ETag (or its version id when it gives no ETag). On S3 the
///   ETag of a single-part upload is the MD5 of the content, so rewriting the same bytes keeps
///   the same version: the engine's version check (I1) then sees the same content, which is
///   what it protects.
/// - **Checksums**: `put` reports the BLAKE3 of what it sent when the server's ETag is the
///   one S3 gives exactly those bytes (the MD5 of a single-part object, the MD5 of the parts'
///   MD5s for a multipart one), which the adapter computes as it sends them: the server
///   computed it over what it stored, so a checksum verification need not read the object
///   back. Otherwise (an encrypting server, local files, memory), and from `head`, `get` and
///   `list`, none (`None`).
/// - **`get`** streams the body in chunks of at most the chunk size
///   ([`DEFAULT_CHUNK_SIZE`] unless set): larger chunks from the backend are split without
///   copying; a local file is read a chunk at a time on a blocking thread, from the file the
///   metadata describes.
/// - **`put`** collects the body up to one part: a body that ends there is stored with one
///   `put`; a longer one with a multipart upload of parts of the part size, at most the
///   upload concurrency of them in flight, so a put holds at most about
///   part size × (concurrency + 1) bytes of the body (I7). A body that fails aborts the upload,
///   so the previous object stays. Both are atomic for readers on every backend.
/// - **`delete`** asks `head` first (S3 deletes of absent keys succeed), so it can say whether
///   the key was there; an object deleted between the two counts as there.
/// - **`list`** runs in key order as [`Listing`] says.
/// - **`sync`** is a no-op: object stores make a put durable before they acknowledge it, and
///   `file://` stores are opened with object_store's fsync on, so that holds for them too.
///   `memory://` is never durable.
///
/// # Errors
/// The backend's "not found" is [`Error::NotFound`] from `get` (and absence from `head` and
/// `delete`); connection failures, timeouts, interrupted transfers, HTTP 408, 429 and 5xx and
/// transient I/O errors are [`Error::Transient`]; everything else (denied, unauthenticated,
/// precondition failed, invalid path, unsupported…) is [`Error::Permanent`]. Every error
/// names its operation and its key; the cause is its `source`.
#[derive(Debug, Clone)]
pub struct ObjectStoreAdapter {
    store: Arc<dyn ObjectStore>,
    listing: Listing,
    reserve_upload_names: bool,
    chunk_size: usize,
    part_size: usize,
    upload_concurrency: usize,
    /// The backend's multipart API, for uploads in parts that outlive the process.
    multipart: Option<Multipart>,
}

impl ObjectStoreAdapter {
    /// Opens the store a URL names:
    ///
    /// - `file:///abs/dir` or a plain path: a local directory (created if missing);
    /// - `memory://` (or `memory://prefix`): object_store's `InMemory`, empty;
    /// - `s3://bucket/prefix` (feature `aws`), `gs://bucket/prefix` (feature `gcp`),
    ///   `az://container/prefix` (feature `azure`): configured from the environment, as
    ///   object_store's `from_env` builders read it (see the crate's README).
    ///
    /// A prefix is put before every key; keys in listings stay relative to it.
    ///
    /// # Errors
    /// [`crate::Error::UnknownScheme`], [`crate::Error::FeatureDisabled`] (naming the feature
    /// to enable), [`crate::Error::InvalidUrl`], [`crate::Error::Dir`] when a local directory
    /// cannot be created or opened, [`crate::Error::Build`] when object_store refuses the
    /// configuration. Nothing is sent over the network here: bad credentials show on the
    /// first operation.
    pub fn from_url(url: &str) -> crate::Result<ObjectStoreAdapter> {
        let opened = open_url(url)?;
        let mut adapter = ObjectStoreAdapter::new(opened.store, opened.listing);
        adapter.reserve_upload_names = opened.local;
        adapter.multipart = opened.multipart;
        Ok(adapter)
    }

    /// An adapter over a store built by hand (a custom endpoint, a test server, a wrapper),
    /// which lists as `listing` says. Keys are used as paths as they are.
    pub fn new(store: Arc<dyn ObjectStore>, listing: Listing) -> ObjectStoreAdapter {
        ObjectStoreAdapter {
            store,
            listing,
            reserve_upload_names: false,
            chunk_size: DEFAULT_CHUNK_SIZE,
            part_size: DEFAULT_PART_SIZE,
            upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
            multipart: None,
        }
    }

    /// This adapter, taking uploads in parts that outlive the process
    /// ([`Store::create_upload`]) through `store`'s multipart API: `store` must be the
    /// backend of this adapter's store, without the prefix, which `prefix` gives (object
    /// paths are `prefix/key`). [`from_url`](ObjectStoreAdapter::from_url) sets it for S3,
    /// GCS and Azure.
    pub fn with_multipart(
        mut self,
        store: Arc<dyn object_store::multipart::MultipartStore>,
        prefix: Option<Path>,
    ) -> ObjectStoreAdapter {
        self.multipart = Some(Multipart { store, prefix });
        self
    }

    /// This adapter, with bodies from `get` in chunks of at most `chunk_size` bytes (at
    /// least 1).
    pub fn with_chunk_size(mut self, chunk_size: usize) -> ObjectStoreAdapter {
        self.chunk_size = chunk_size.max(1);
        self
    }

    /// This adapter, uploading bodies longer than `part_size` bytes in parts of that size (at
    /// least 1; S3 refuses parts under 5 MiB but the last).
    pub fn with_part_size(mut self, part_size: usize) -> ObjectStoreAdapter {
        self.part_size = part_size.max(1);
        self
    }

    /// This adapter, with at most `concurrency` parts of one upload in flight (at least 1).
    pub fn with_upload_concurrency(mut self, concurrency: usize) -> ObjectStoreAdapter {
        self.upload_concurrency = concurrency.max(1);
        self
    }

    /// `head` on behalf of `op` (`head` itself, or `delete`, which heads first): its errors
    /// name `op`.
    async fn head_for(&self, op: Op, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(convert_meta(key.clone(), &meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(op_error(op, Some(key), e)),
        }
    }

    /// The object_store path of `key`, or [`Error::InvalidKey`].
    fn path(&self, key: &ObjectKey) -> Result<Path> {
        let s = key.as_str();
        let invalid = |reason| {
            Err(Error::InvalidKey {
                key: key.clone(),
                reason,
            })
        };
        match Path::parse(s) {
            Ok(path) if path.as_ref() == s => {
                if self.reserve_upload_names && s.split('/').any(is_upload_name) {
                    return invalid(
                        "has a segment ending in '#' and digits, reserved for uploads in a local store",
                    );
                }
                Ok(path)
            }
            _ => invalid(
                "object stores refuse empty, '.' or '..' segments, control characters and a leading or trailing '/'",
            ),
        }
    }

    async fn put_inner(
        &self,
        key: &ObjectKey,
        mut body: BoxStream<'_, Result<Bytes>>,
    ) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let err = |e| op_error(Op::Put, Some(key), e);
        // What is sent is hashed as it goes, for the ETag to confirm (see `sent.rs`).
        let mut sent = Sent::new(self.part_size);
        // Up to one part: a single put.
        let mut first = Vec::new();
        let mut size = 0usize;
        while size <= self.part_size {
            match body.next().await {
                None => {
                    let payload: PutPayload = first.into_iter().collect();
                    let done = self.store.put(&path, payload).await.map_err(err)?;
                    return self
                        .put_meta(key, &path, size as u64, done, sent, false)
                        .await;
                }
                Some(chunk) => {
                    let chunk = chunk?;
                    if !chunk.is_empty() {
                        size += chunk.len();
                        sent.update(&chunk);
                        first.push(chunk);
                    }
                }
            }
        }
        // More: a multipart upload, visible only when complete.
        let upload = self.store.put_multipart(&path).await.map_err(err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut size = size as u64;
        for chunk in first {
            writer.put(chunk);
        }
        loop {
            if let Err(e) = writer.wait_for_capacity(self.upload_concurrency).await {
                // The upload failed; its abort's own failure adds nothing.
                let _ = writer.abort().await;
                return Err(err(e));
            }
            match body.next().await {
                None => break,
                Some(Err(e)) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    sent.update(&chunk);
                    writer.put(chunk);
                }
            }
        }
        let done = writer.finish().await.map_err(err)?;
        self.put_meta(key, &path, size, done, sent, true).await
    }

    /// The metadata of what a put stored, from its result (or a `head` when the backend gave
    /// neither an ETag nor a version); with the BLAKE3 of what was `sent` when the ETag
    /// confirms the server stored exactly that (`multipart`: sent in parts).
    async fn put_meta(
        &self,
        key: &ObjectKey,
        path: &Path,
        size: u64,
        done: object_store::PutResult,
        sent: Sent,
        multipart: bool,
    ) -> Result<ObjectMeta> {
        let e_tag = done.e_tag.map(unquoted);
        let checksum = e_tag
            .as_deref()
            .and_then(|e_tag| sent.confirmed_by(e_tag, multipart))
            .map(|hash| Checksum::Blake3(*hash.as_bytes()));
        if let Some(version) = e_tag.or(done.version) {
            return Ok(ObjectMeta {
                key: key.clone(),
                size,
                version: Version::new(version),
                checksum,
                // A PUT's answer carries no Last-Modified; the object was written just now.
                modified: Some(std::time::SystemTime::now()),
            });
        }
        let meta = self
            .store
            .head(path)
            .await
            .map_err(|e| op_error(Op::Put, Some(key), e))?;
        Ok(convert_meta(key.clone(), &meta))
    }

    fn list_sorted(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        let Some(dir) = dir_of(prefix) else {
            return Box::pin(stream::empty());
        };
        // Keys with the prefix sort after `start_after` when it sorts before the prefix.
        let offset = start_after
            .filter(|after| after.as_str() >= prefix)
            .and_then(|after| Path::parse(after.as_str()).ok());
        let inner = match &offset {
            Some(offset) => self.store.list_with_offset(dir.as_ref(), offset),
            None => self.store.list(dir.as_ref()),
        };
        struct State {
            inner: BoxStream<'static, object_store::Result<object_store::ObjectMeta>>,
            prefix: String,
            after: Option<ObjectKey>,
            last: Option<String>,
            done: bool,
        }
        let state = State {
            inner,
            prefix: prefix.to_owned(),
            after: start_after.cloned(),
            last: None,
            done: false,
        };
        Box::pin(stream::unfold(state, |mut st| async move {
            while !st.done {
                let meta = match st.inner.next().await? {
                    Ok(meta) => meta,
                    Err(object_store::Error::NotFound { .. }) => return None,
                    Err(e) => {
                        st.done = true;
                        return Some((Err(op_error(Op::List, None, e)), st));
                    }
                };
                let key = meta.location.as_ref();
                if st.last.as_deref().is_some_and(|last| key <= last) {
                    st.done = true;
                    let e = format!(
                        "the backend listed {key:?} after {:?}: not in key order",
                        st.last.as_deref().unwrap_or_default()
                    );
                    return Some((Err(permanent(Op::List, None, e.into())), st));
                }
                st.last = Some(key.to_owned());
                if st.after.as_ref().is_some_and(|after| key <= after.as_str()) {
                    continue;
                }
                if !key.starts_with(&st.prefix) {
                    if key > st.prefix.as_str() {
                        return None;
                    }
                    continue;
                }
                return Some((listed(&meta), st));
            }
            None
        }))
    }

    fn list_walk(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        let Some(dir) = dir_of(prefix) else {
            return Box::pin(stream::empty());
        };
        struct State {
            store: Arc<dyn ObjectStore>,
            prefix: String,
            after: Option<ObjectKey>,
            start: Option<Option<Path>>,
            /// The sorted entries left in each directory on the current path.
            stack: Vec<VecDeque<Entry>>,
        }
        let state = State {
            store: Arc::clone(&self.store),
            prefix: prefix.to_owned(),
            after: start_after.cloned(),
            start: Some(dir),
            stack: Vec::new(),
        };
        Box::pin(stream::unfold(state, |mut st| async move {
            if let Some(dir) = st.start.take() {
                match level(&*st.store, dir.as_ref()).await {
                    Ok(entries) => st.stack.push(entries),
                    Err(e) => return Some((Err(e), st)),
                }
            }
            loop {
                let top = st.stack.last_mut()?;
                let Some(entry) = top.pop_front() else {
                    st.stack.pop();
                    continue;
                };
                match entry {
                    Entry::Object(meta) => {
                        let key = meta.location.as_ref();
                        if key.starts_with(&st.prefix)
                            && st.after.as_ref().is_none_or(|after| key > after.as_str())
                        {
                            return Some((listed(&meta), st));
                        }
                    }
                    Entry::Dir(dir) => {
                        let under = format!("{dir}/");
                        let overlaps =
                            under.starts_with(&st.prefix) || st.prefix.starts_with(&under);
                        // Every key under `under` sorts before `after`.
                        let passed = st.after.as_ref().is_some_and(|after| {
                            after.as_str() > under.as_str() && !after.as_str().starts_with(&under)
                        });
                        if overlaps && !passed {
                            match level(&*st.store, Some(&dir)).await {
                                Ok(entries) => st.stack.push(entries),
                                Err(e) => {
                                    st.stack.clear();
                                    return Some((Err(e), st));
                                }
                            }
                        }
                    }
                }
            }
        }))
    }
}

/// An entry of a directory listing.
enum Entry {
    Object(object_store::ObjectMeta),
    Dir(Path),
}

/// The entries of one "directory", sorted as their keys sort: a directory `d` as `d/`.
async fn level(store: &dyn ObjectStore, dir: Option<&Path>) -> Result<VecDeque<Entry>> {
    let found = match store.list_with_delimiter(dir).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => return Ok(VecDeque::new()),
        Err(e) => return Err(op_error(Op::List, None, e)),
    };
    let mut entries: Vec<(String, Entry)> = found
        .objects
        .into_iter()
        .map(|meta| (meta.location.as_ref().to_owned(), Entry::Object(meta)))
        .chain(
            found
                .common_prefixes
                .into_iter()
                .map(|dir| (format!("{dir}/"), Entry::Dir(dir))),
        )
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(entries.into_iter().map(|(_, entry)| entry).collect())
}

/// The "directory" to list for `prefix`: its part before the last `/` (`None` for the root),
/// or no directory at all when no valid path can start with the prefix.
#[allow(clippy::option_option)]
fn dir_of(prefix: &str) -> Option<Option<Path>> {
    let dir = prefix.rfind('/').map_or("", |i| &prefix[..i]);
    if dir.is_empty() {
        return if prefix.starts_with('/') {
            None
        } else {
            Some(None)
        };
    }
    match Path::parse(dir) {
        Ok(path) if path.as_ref() == dir => Some(Some(path)),
        _ => None,
    }
}

/// Whether a path segment is a name object_store's local store uses for unfinished uploads.
fn is_upload_name(segment: &str) -> bool {
    segment
        .rsplit_once('#')
        .is_some_and(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
}

/// An ETag without the double quotes HTTP puts around it. Azure's listings give ETags bare
/// but its headers quote them (S3 quotes both): without this, a listed version would never
/// equal `head`'s.
fn unquoted(e_tag: String) -> String {
    match e_tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(bare) => bare.to_owned(),
        None => e_tag,
    }
}

fn convert_meta(key: ObjectKey, meta: &object_store::ObjectMeta) -> ObjectMeta {
    let version = meta
        .e_tag
        .clone()
        .map(unquoted)
        .or_else(|| meta.version.clone())
        .unwrap_or_else(|| {
            // Neither: the modification time and size stand in for a version.
            format!(
                "{}-{}",
                meta.last_modified.timestamp_nanos_opt().unwrap_or_default(),
                meta.size
            )
        });
    ObjectMeta {
        key,
        size: meta.size,
        version: Version::new(version),
        checksum: None,
        modified: Some(meta.last_modified.into()),
    }
}

/// A listed object's metadata, or a permanent error when its path is no valid key.
fn listed(meta: &object_store::ObjectMeta) -> Result<ObjectMeta> {
    match ObjectKey::new(meta.location.as_ref()) {
        Ok(key) => Ok(convert_meta(key, meta)),
        Err(e) => Err(permanent(Op::List, None, Box::new(e))),
    }
}

fn permanent(op: Op, key: Option<&ObjectKey>, source: ferry_store::BoxError) -> Error {
    Error::Permanent {
        op,
        key: key.cloned(),
        source,
    }
}

/// An object_store error as the engine's, classified (see [`ObjectStoreAdapter`]).
fn op_error(op: Op, key: Option<&ObjectKey>, err: object_store::Error) -> Error {
    match (classify(&err), key) {
        (ErrorKind::NotFound, Some(key)) => Error::NotFound { key: key.clone() },
        (ErrorKind::Transient, _) if is_overload(&err) => Error::Busy {
            op,
            key: key.cloned(),
            source: Box::new(err),
        },
        (ErrorKind::Transient, _) => Error::Transient {
            op,
            key: key.cloned(),
            source: Box::new(err),
        },
        _ => permanent(op, key, Box::new(err)),
    }
}

/// Whether a transient error says the store is overloaded: HTTP 429 or 503 (S3's
/// `SlowDown` is a 503), a `SlowDown` code in the message, or a timeout.
fn is_overload(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        #[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>()
            && matches!(http.kind(), object_store::client::HttpErrorKind::Timeout)
        {
            return true;
        }
        let message = e.to_string();
        if matches!(http_status(&message), Some(429 | 503)) || message.contains("SlowDown") {
            return true;
        }
        cur = e.source();
    }
    false
}

fn classify(err: &object_store::Error) -> ErrorKind {
    use object_store::Error as E;
    match err {
        E::NotFound { .. } => ErrorKind::NotFound,
        E::Generic { .. } => classify_chain(err),
        _ => ErrorKind::Permanent,
    }
}

/// The first cause in the chain that says something: an I/O error by its kind, an HTTP
/// error by its kind, an HTTP status in object_store's retry error.
fn classify_chain(err: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_kind(io);
        }
        #[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            return match http.kind() {
                K::Connect | K::Request | K::Timeout | K::Interrupted | K::Decode => {
                    ErrorKind::Transient
                }
                _ => ErrorKind::Permanent,
            };
        }
        if let Some(status) = http_status(&e.to_string()) {
            return if status == 408 || status == 429 || (500..600).contains(&status) {
                ErrorKind::Transient
            } else {
                ErrorKind::Permanent
            };
        }
        cur = e.source();
    }
    ErrorKind::Permanent
}

/// The status in object_store's message for an HTTP error response ("Server returned non-2xx
/// status code: 503 Service Unavailable…" or "Server returned error response: …"). Its
/// retry error type is not public, so its message is what there is to read; a test pins it.
fn http_status(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("Server returned non-2xx status code: ")?;
    rest.get(..3)?.parse().ok()
}

fn io_kind(err: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    match err.kind() {
        K::Interrupted
        | K::TimedOut
        | K::WouldBlock
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::ConnectionRefused
        | K::NotConnected
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::ResourceBusy => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

fn io_error(op: Op, key: &ObjectKey, err: std::io::Error) -> Error {
    let kind = io_kind(&err);
    let source = Box::new(err);
    if kind == ErrorKind::Transient {
        Error::Transient {
            op,
            key: Some(key.clone()),
            source,
        }
    } else {
        permanent(op, Some(key), source)
    }
}

/// A stream that ends after its first error.
fn end_after_error(body: ByteStream) -> ByteStream {
    Box::pin(body.scan(false, |failed, item| {
        let out = (!*failed).then(|| {
            *failed = item.is_err();
            item
        });
        std::future::ready(out)
    }))
}

/// A backend's body of `len` bytes, its errors mapped and its chunks split to at most `chunk`
/// bytes (zero copy). It ends once `len` bytes came, without asking the backend for more: an
/// error after the last byte (a connection dropped before the end of the body was read) would
/// have object_store retry with a range that starts at the end, which servers refuse.
fn backend_body(
    inner: BoxStream<'static, object_store::Result<Bytes>>,
    len: u64,
    chunk: usize,
    key: ObjectKey,
) -> ByteStream {
    let inner = stream::unfold((inner, len), |(mut inner, left)| async move {
        if left == 0 {
            return None;
        }
        let item = inner.next().await?;
        let left = match &item {
            Ok(bytes) => left.saturating_sub(bytes.len() as u64),
            Err(_) => left,
        };
        Some((item, (inner, left)))
    });
    let body = inner.flat_map(move |item| {
        let items: Vec<Result<Bytes>> = match item {
            Ok(mut bytes) => {
                let mut out = Vec::with_capacity(bytes.len().div_ceil(chunk));
                while bytes.len() > chunk {
                    out.push(Ok(bytes.split_to(chunk)));
                }
                if !bytes.is_empty() {
                    out.push(Ok(bytes));
                }
                out
            }
            Err(e) => vec![Err(op_error(Op::Get, Some(&key), e))],
        };
        stream::iter(items)
    });
    end_after_error(Box::pin(body))
}

/// A local file's `range`, read a chunk at a time on a blocking thread.
fn file_body(file: File, range: Range<u64>, chunk: usize, key: ObjectKey) -> ByteStream {
    let state = Some((file, range.start, range.end));
    Box::pin(stream::try_unfold(state, move |state| {
        let key = key.clone();
        async move {
            let Some((mut file, pos, end)) = state else {
                return Ok(None);
            };
            if pos >= end {
                return Ok(None);
            }
            let n = usize::try_from(end - pos).map_or(chunk, |left| left.min(chunk));
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; n];
                file.seek(SeekFrom::Start(pos))?;
                file.read_exact(&mut buf)?;
                Ok::<_, std::io::Error>((file, buf))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|read| read);
            let (file, buf) = read.map_err(|e| io_error(Op::Get, &key, e))?;
            Ok(Some((Bytes::from(buf), Some((file, pos + n as u64, end)))))
        }
    }))
}

impl Store for ObjectStoreAdapter {
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        Box::pin(self.head_for(Op::Head, key))
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Object>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let found = self
                .store
                .get_opts(&path, GetOptions::default())
                .await
                .map_err(|e| op_error(Op::Get, Some(key), e))?;
            let meta = convert_meta(key.clone(), &found.meta);
            let body = match found.payload {
                GetResultPayload::File(file, _) => {
                    file_body(file, found.range, self.chunk_size, key.clone())
                }
                GetResultPayload::Stream(inner) => {
                    let len = found.range.end - found.range.start;
                    backend_body(inner, len, self.chunk_size, key.clone())
                }
            };
            Ok(Object { meta, body })
        })
    }

    /// Asks the server for the range (a `Range` header), after a `head` when it would
    /// start at or past the end (which S3 answers with an error, not an empty body).
    fn get_range<'a>(
        &'a self,
        key: &'a ObjectKey,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<Object>> {
        Box::pin(async move {
            if start == 0 && end == u64::MAX {
                return self.get(key).await;
            }
            let path = self.path(key)?;
            let range = if end == u64::MAX {
                GetRange::Offset(start)
            } else {
                GetRange::Bounded(start..end.max(start))
            };
            let empty = |meta: ObjectMeta| Object {
                meta,
                body: Box::pin(stream::empty()),
            };
            if start >= end {
                let meta = self.head_for(Op::Get, key).await?;
                return meta
                    .map(empty)
                    .ok_or_else(|| Error::NotFound { key: key.clone() });
            }
            let options = GetOptions {
                range: Some(range),
                ..GetOptions::default()
            };
            let found = match self.store.get_opts(&path, options).await {
                Ok(found) => found,
                Err(e) => {
                    // A range that starts past the end is an error to the server; to the
                    // caller it is empty.
                    let error = op_error(Op::Get, Some(key), e);
                    return match self.head_for(Op::Get, key).await? {
                        Some(meta) if start >= meta.size => Ok(empty(meta)),
                        _ => Err(error),
                    };
                }
            };
            let meta = convert_meta(key.clone(), &found.meta);
            let body = match found.payload {
                GetResultPayload::File(file, _) => {
                    file_body(file, found.range, self.chunk_size, key.clone())
                }
                GetResultPayload::Stream(inner) => {
                    let len = found.range.end - found.range.start;
                    backend_body(inner, len, self.chunk_size, key.clone())
                }
            };
            Ok(Object { meta, body })
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(self.put_inner(key, body))
    }

    fn create_upload<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<UploadId>>> {
        Box::pin(self.create_upload_inner(key))
    }

    fn put_part<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        part: u32,
        _offset: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<PartTag>> {
        Box::pin(self.put_part_inner(key, upload, part, body))
    }

    fn complete_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        parts: &'a [PartTag],
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(self.complete_upload_inner(key, upload, parts))
    }

    fn abort_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.abort_upload_inner(key, upload))
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            // A failing head is the delete's failure, and named so.
            if self.head_for(Op::Delete, key).await?.is_none() {
                return Ok(false);
            }
            let path = self.path(key)?;
            match self.store.delete(&path).await {
                Ok(()) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(op_error(Op::Delete, Some(key), e)),
            }
        })
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        match self.listing {
            Listing::Sorted => self.list_sorted(prefix, start_after),
            Listing::Walk => self.list_walk(prefix, start_after),
        }
    }

    fn sync(&self) -> BoxFuture<'_, Result<()>> {
        // Object stores acknowledge a put once it is durable; `file://` stores fsync each put.
        Box::pin(std::future::ready(Ok(())))
    }
}

/// What a URL names: the store (its prefix applied), how it lists, whether it is a local
/// directory, and the backend's multipart API with the prefix (`None` for local directories
/// and memory: object_store's `LocalFileSystem` has none, and `PrefixStore` none of its own).
pub(crate) struct Opened {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) listing: Listing,
    pub(crate) local: bool,
    pub(crate) multipart: Option<Multipart>,
}

/// Opens what a URL names. See [`ObjectStoreAdapter::from_url`].
pub(crate) fn open_url(url: &str) -> crate::Result<Opened> {
    let parsed = parse(url)?;
    let build = |source: object_store::Error| crate::Error::Build {
        url: url.to_owned(),
        source: Box::new(source),
    };
    // A cloud backend's client serves as both the store and its multipart API.
    #[cfg(feature = "cloud")]
    fn cloud<T: ObjectStore + object_store::multipart::MultipartStore>(
        client: T,
    ) -> (
        Arc<dyn ObjectStore>,
        Option<Arc<dyn object_store::multipart::MultipartStore>>,
    ) {
        let client = Arc::new(client);
        (Arc::clone(&client) as Arc<dyn ObjectStore>, Some(client))
    }
    let ((store, multipart), listing, local) = match parsed.backend {
        Backend::Memory => (
            (
                Arc::new(object_store::memory::InMemory::new()) as Arc<dyn ObjectStore>,
                None,
            ),
            Listing::Sorted,
            false,
        ),
        Backend::File(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| crate::Error::Dir {
                path: dir.clone(),
                source,
            })?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(build)?
                .with_fsync(true);
            (
                (Arc::new(fs) as Arc<dyn ObjectStore>, None),
                Listing::Walk,
                true,
            )
        }
        #[cfg(feature = "aws")]
        Backend::S3 { bucket } => {
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_http_connector(crate::StallTimeout::default())
                .with_bucket_name(bucket)
                .build()
                .map_err(build)?;
            (cloud(s3), Listing::Sorted, false)
        }
        #[cfg(feature = "gcp")]
        Backend::Gcs { bucket } => {
            let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_http_connector(crate::StallTimeout::default())
                .with_bucket_name(bucket)
                .build()
                .map_err(build)?;
            (cloud(gcs), Listing::Sorted, false)
        }
        #[cfg(feature = "azure")]
        Backend::Azure { container } => {
            let az = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_http_connector(crate::StallTimeout::default())
                .with_container_name(container)
                .build()
                .map_err(build)?;
            (cloud(az), Listing::Sorted, false)
        }
        #[allow(unreachable_patterns)]
        _ => {
            // `parse` refuses the schemes whose feature is off.
            return Err(crate::Error::InvalidUrl {
                url: url.to_owned(),
                reason: "this build cannot open it",
            });
        }
    };
    let prefix = (!parsed.prefix.is_empty()).then(|| Path::from_iter(parsed.prefix.split('/')));
    let store: Arc<dyn ObjectStore> = match &prefix {
        None => store,
        Some(prefix) => Arc::new(object_store::prefix::PrefixStore::new(
            store,
            prefix.clone(),
        )),
    };
    Ok(Opened {
        store,
        listing,
        local,
        multipart: multipart.map(|store| Multipart { store, prefix }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_answers_and_timeouts_are_overloads() {
        let generic = |source: ferry_store::BoxError| object_store::Error::Generic {
            store: "S3",
            source,
        };
        let cases: Vec<(object_store::Error, bool)> = vec![
            (
                generic("Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>".into()),
                true,
            ),
            (
                generic("Server returned non-2xx status code: 429 Too Many Requests".into()),
                true,
            ),
            (
                generic(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut))),
                true,
            ),
            (
                generic("Server returned non-2xx status code: 500 Internal Server Error".into()),
                false,
            ),
            (
                generic(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))),
                false,
            ),
        ];
        let key = ObjectKey::new("k").unwrap();
        for (err, overload) in cases {
            let text = err.to_string();
            let err = op_error(Op::Put, Some(&key), err);
            assert_eq!(err.is_overload(), overload, "{text}");
            assert!(err.is_transient(), "{text}");
            assert_eq!(matches!(err, Error::Busy { .. }), overload, "{text}");
        }
    }

    #[test]
    fn http_statuses_in_object_store_messages_are_classified() {
        let msg = "Error performing GET http://x/y in 1s - Server returned non-2xx status code: 503 Service Unavailable: ";
        assert_eq!(http_status(msg), Some(503));
        assert_eq!(http_status("Server returned non-2xx status code: 4"), None);
        assert_eq!(http_status("something else"), None);
    }

    #[test]
    fn object_store_errors_are_classified_for_retry() {
        let key = ObjectKey::new("a/b").unwrap();
        let cases: Vec<(object_store::Error, ErrorKind)> = vec![
            (
                object_store::Error::NotFound {
                    path: "a/b".into(),
                    source: "gone".into(),
                },
                ErrorKind::NotFound,
            ),
            (
                object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut)),
                },
                ErrorKind::Transient,
            ),
            (
                object_store::Error::Generic {
                    store: "S3",
                    source: "Server returned non-2xx status code: 500 Internal Server Error".into(),
                },
                ErrorKind::Transient,
            ),
            (
                object_store::Error::Generic {
                    store: "S3",
                    source: "Server returned non-2xx status code: 400 Bad Request".into(),
                },
                ErrorKind::Permanent,
            ),
            (
                object_store::Error::PermissionDenied {
                    path: "a/b".into(),
                    source: "no".into(),
                },
                ErrorKind::Permanent,
            ),
        ];
        for (err, kind) in cases {
            let msg = err.to_string();
            let mapped = op_error(Op::Put, Some(&key), err);
            assert_eq!(mapped.kind(), kind, "{msg}");
            if kind != ErrorKind::NotFound {
                assert!(mapped.to_string().contains("put of \"a/b\""), "{mapped}");
            }
        }
    }

    #[test]
    fn etags_are_compared_without_their_quotes() {
        assert_eq!(unquoted("\"0x8D\"".into()), "0x8D");
        assert_eq!(unquoted("0x8D".into()), "0x8D");
        assert_eq!(unquoted("\"abc-2\"".into()), "abc-2");
        assert_eq!(unquoted("\"".into()), "\"");
    }

    #[test]
    fn keys_that_are_no_object_store_path_are_refused() {
        let adapter = ObjectStoreAdapter::from_url("memory://").unwrap();
        for bad in ["/abs", "a//b", "a/./b", "a/../b", "a/", "a\u{1}b"] {
            let key = ObjectKey::new(bad).unwrap();
            assert!(
                matches!(adapter.path(&key), Err(Error::InvalidKey { .. })),
                "{bad:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let local = ObjectStoreAdapter::from_url(dir.path().to_str().unwrap()).unwrap();
        assert!(local.path(&ObjectKey::new("x/y#12").unwrap()).is_err());
        assert!(local.path(&ObjectKey::new("x/y#a").unwrap()).is_ok());
    }

    #[tokio::test]
    async fn a_body_ends_at_its_length_without_asking_the_backend_for_more() {
        let key = ObjectKey::new("k").unwrap();
        // The connection drops after the last byte, before the end of the body was read.
        let inner = || {
            stream::iter(vec![
                Ok(Bytes::from_static(b"0123456789")),
                Ok(Bytes::from_static(b"abc")),
                Err(object_store::Error::Generic {
                    store: "S3",
                    source: "connection reset".into(),
                }),
            ])
        };
        let whole: Vec<_> = backend_body(Box::pin(inner()), 13, 4, key.clone())
            .collect()
            .await;
        assert_eq!(whole.len(), 4, "13 bytes in chunks of at most 4");
        assert!(whole.iter().all(Result::is_ok), "{whole:?}");
        // One byte short: the error is the reader's.
        let short: Vec<_> = backend_body(Box::pin(inner()), 14, 4, key).collect().await;
        assert!(short.last().unwrap().is_err());
    }
}
