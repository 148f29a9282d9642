//! Where objects live: the [`Store`] trait every storage node of a Ferry migration
//! implements, its errors, and the built-in stores.
//!
//! A store holds objects under [`ObjectKey`]s and streams them in chunks of [`Bytes`] (SPEC
//! I7: memory stays bounded whatever the object size). `put` is atomic for readers but durable
//! only after the next [`sync`](Store::sync), the barrier the engine calls once per checkpoint
//! batch rather than once per object (SPEC §6: grouped durability, like a database's group
//! commit). Errors say whether to give up, retry or treat the object as absent
//! ([`ErrorKind`]).
//!
//! - [`MemStore`]: in memory, for tests and benchmarks.
//! - [`DirStore`] (unix): a local directory, keys mapped to relative paths; keys that could
//!   escape the root are refused and links are never followed.
//! - `FaultyStore` (feature `testing`): wraps any store and injects errors, latency,
//!   truncated or corrupted bodies and power cuts, for tests.
//!
//! A store may also take uploads in parts that outlive the process
//! ([`Store::create_upload`], [`UploadId`], [`PartTag`]): the engine copies huge objects that
//! way so that a crash costs one part, not the object. [`MemStore`] and [`DirStore`] do; the
//! default answers "not taken", and objects go by [`Store::put`].
//!
//! This crate holds no job runner (that is `ferry-engine`) and no object-store client (that
//! is `ferry-object-store`, a `Store` over S3, GCS and Azure): a storage system plugs its
//! nodes into Ferry by implementing `Store`, with this crate alone.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use ferry_store::{Bytes, MemStore, Store, body_from_bytes};
//! use ferry_types::ObjectKey;
//! use futures_util::TryStreamExt;
//!
//! let store: Arc<dyn Store> = Arc::new(MemStore::new());
//! let key = ObjectKey::new("photos/cat.jpg")?;
//! let body = body_from_bytes(Bytes::from_static(b"meow"), 2); // two chunks
//! let meta = store.put(&key, body).await?;
//! store.sync().await?; // the durability barrier
//!
//! let object = store.get(&key).await?;
//! assert_eq!(object.meta, meta);
//! let chunks: Vec<Bytes> = object.checked_body().try_collect().await?;
//! assert_eq!(chunks.concat(), b"meow");
//!
//! let listed: Vec<_> = store.list("photos/", None).try_collect().await?;
//! assert_eq!(listed, [meta]);
//! # Ok(()) }
//! ```
//!
//! # Why boxed futures rather than `async fn` in the trait
//! The engine holds its nodes as `Arc<dyn Store>`, so the trait must be dyn-compatible, which
//! `async fn` in traits is not. Each method returns a [`BoxFuture`] (or a [`BoxStream`]) by
//! hand, as `#[async_trait]` would generate, without a proc-macro dependency and with the
//! lifetimes in plain sight: futures borrow `self` and the key, while bodies and listings are
//! `'static` so that they can be moved into spawned tasks. The types a `Store` author needs
//! are re-exported here: [`Bytes`], [`BoxFuture`], [`BoxStream`], [`Stream`].
//!
//! # Feature flags
//! - `testing`: `FaultyStore`, the fault-injecting wrapper (for tests of code built on
//!   stores; never for production).

use std::pin::Pin;
use std::task::{Context, Poll};

pub use bytes::Bytes;
use ferry_types::ObjectKey;
pub use futures_core::Stream;
pub use futures_core::future::BoxFuture;
pub use futures_core::stream::BoxStream;
use futures_util::StreamExt as _;

#[cfg(unix)]
mod dir;
mod error;
#[cfg(feature = "testing")]
mod faulty;
mod mem;
mod meta;
mod upload;

#[cfg(unix)]
pub use self::dir::{DirStore, SyncStrategy, TEMP_PREFIX};
pub use self::error::{BoxError, Error, ErrorKind, Op, Result};
#[cfg(feature = "testing")]
pub use self::faulty::{Fault, FaultyStore, InjectedFault, Trigger};
pub use self::mem::MemStore;
pub use self::meta::{Checksum, DeleteIf, ObjectMeta, Version};
pub use self::upload::{PartTag, UploadId};

/// The default chunk size of bodies the built-in stores produce: 1 MiB (SPEC I7).
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;

/// An object's content as a stream of chunks. Owns what it needs (`'static`), so it can be
/// moved into a task; an error ends it.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// A stream of object metadata, as [`Store::list`] returns it.
pub type MetaStream = BoxStream<'static, Result<ObjectMeta>>;

/// An object being read: what the store knew about it when the read began, and its body.
///
/// `meta` describes exactly the content `body` delivers (the built-in stores read both from
/// the same open file or the same in-memory value), so the version a copy was made from is
/// known without a racy second `head`.
pub struct Object {
    /// Size, version and (when the store knows one) checksum of the content in `body`.
    pub meta: ObjectMeta,
    /// The content, in chunks.
    pub body: ByteStream,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl Object {
    /// The body, checked against `meta.size`: a body that ends short of it (or runs past it)
    /// ends with [`Error::Truncated`] instead of looking like a
    /// complete, shorter object. Give this to [`Store::put`] when copying, so a truncated
    /// transfer fails the put instead of storing a short object.
    pub fn checked_body(self) -> ByteStream {
        checked(self.meta.key, self.meta.size, self.body)
    }
}

/// `body` (of `key`), checked to deliver exactly `expected` bytes: one that ends short of it
/// or runs past it ends with [`Error::Truncated`]. [`Object::checked_body`] for a whole
/// object; this for a range of one.
pub fn checked(key: ObjectKey, expected: u64, body: ByteStream) -> ByteStream {
    Box::pin(CheckedBody {
        key,
        expected,
        got: 0,
        inner: Some(body),
    })
}

struct CheckedBody {
    key: ObjectKey,
    expected: u64,
    got: u64,
    inner: Option<ByteStream>,
}

impl Stream for CheckedBody {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let item = match inner.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let truncated = |got| crate::Error::Truncated {
            key: this.key.clone(),
            expected: this.expected,
            got,
        };
        let out = match item {
            Some(Ok(chunk)) => {
                this.got += chunk.len() as u64;
                if this.got > this.expected {
                    Some(Err(truncated(this.got)))
                } else {
                    return Poll::Ready(Some(Ok(chunk)));
                }
            }
            Some(Err(err)) => Some(Err(err)),
            None if this.got == this.expected => None,
            None => Some(Err(truncated(this.got))),
        };
        this.inner = None;
        Poll::Ready(out)
    }
}

/// A place objects are stored: a node of the storage system being migrated.
///
/// Dyn-compatible: the engine holds stores as `Arc<dyn Store>`. Every method may be called
/// concurrently from many tasks.
///
/// # Durability (SPEC §6)
/// Durability is grouped, like a database's group commit. [`put`](Store::put) and
/// [`delete`](Store::delete) are atomic — a reader sees the old object or the whole new one,
/// never a part — but need not be durable when they return. [`sync`](Store::sync) is the
/// barrier: every put and delete that returned before a `sync` began is durable when that
/// `sync` returns. A store with no cheaper way may make each put durable itself and make
/// `sync` a no-op.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// What the store knows about `key`, or `None` when it is absent.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] when the store cannot hold `key`; I/O
    /// or backend failures, classified by [`Error::kind`].
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>>;

    /// Opens `key` for reading: its metadata and its content as a stream of chunks (of at
    /// most the store's chunk size; [`DEFAULT_CHUNK_SIZE`] for the built-in stores). The body
    /// is read lazily, a chunk at a time, so memory stays bounded whatever the size (SPEC I7).
    ///
    /// # Errors
    /// [`Error::NotFound`] when `key` is absent; otherwise as
    /// [`head`](Store::head). Errors while reading end the body with an error item.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads; dropping the body closes the object.
    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Object>>;

    /// Opens `key` for reading the bytes `start..end` of it (both clamped to its size; `end`
    /// may be `u64::MAX` for "to the end"): `meta` describes the whole object, `body` delivers
    /// only those bytes. For ranged reads (an S3 `Range` header) of large objects.
    ///
    /// The default opens the object with [`get`](Store::get) and skips the bytes before
    /// `start` ([`range_of`]); [`DirStore`] seeks instead, and an object store asks its server
    /// for the range.
    ///
    /// # Errors
    /// As [`get`](Store::get).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    fn get_range<'a>(
        &'a self,
        key: &'a ObjectKey,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<Object>> {
        Box::pin(async move {
            let object = self.get(key).await?;
            Ok(Object {
                body: range_of(object.body, start, end),
                meta: object.meta,
            })
        })
    }

    /// Stores `body` as the content of `key`, replacing any previous object, and returns the
    /// new object's metadata.
    ///
    /// Atomic: a concurrent reader sees the previous object or the whole new one, never a
    /// part. Not necessarily durable until the next [`sync`](Store::sync) returns. The body
    /// is consumed a chunk at a time. When the body yields an error, the put fails with that
    /// error and the previous object (or its absence) stays as it was.
    ///
    /// # Errors
    /// The body's own error; [`Error::InvalidKey`] when the store
    /// cannot hold `key`; I/O or backend failures, classified by
    /// [`Error::kind`].
    ///
    /// # Cancel safety
    /// Not cancel safe in what it leaves, but safe in what readers see: a put dropped before
    /// it returns may or may not have replaced the object — entirely, or not at all.
    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<ObjectMeta>>;

    /// Removes `key`. Returns whether it was there: deleting an absent key is fine (SPEC I4:
    /// every step is idempotent). Not necessarily durable until the next
    /// [`sync`](Store::sync) returns.
    ///
    /// # Errors
    /// As [`head`](Store::head).
    ///
    /// # Cancel safety
    /// A delete dropped before it returns may or may not have removed the object.
    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<bool>>;

    /// Removes `key` only if the store holds it at `version`: what the engine calls before
    /// it deletes a source whose copy it verified (SPEC I1), so that a write made meanwhile by
    /// a program outside the forwarding table is never deleted with it.
    ///
    /// The default looks with [`head`](Store::head), then calls [`delete`](Store::delete): a
    /// write landing between the two is deleted. A store that can do better overrides it
    /// ([`DirStore`] looks and unlinks back to back on one thread; an object store with
    /// conditional deletes could make it exact).
    ///
    /// # Errors
    /// As [`head`](Store::head) and [`delete`](Store::delete).
    ///
    /// # Cancel safety
    /// As [`delete`](Store::delete).
    fn delete_if<'a>(
        &'a self,
        key: &'a ObjectKey,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<DeleteIf>> {
        Box::pin(async move {
            match self.head(key).await? {
                None => Ok(DeleteIf::Absent),
                Some(meta) if meta.version != *version => Ok(DeleteIf::Changed(meta)),
                Some(_) => Ok(if self.delete(key).await? {
                    DeleteIf::Deleted
                } else {
                    DeleteIf::Absent
                }),
            }
        })
    }

    /// Starts an upload of `key` in parts that outlive this process (see [`UploadId`]), or
    /// answers `None` when the store takes none (the default): then objects are copied with
    /// [`put`](Store::put) alone. Nothing is visible under `key` until
    /// [`complete_upload`](Store::complete_upload).
    ///
    /// # Errors
    /// As [`put`](Store::put).
    ///
    /// # Cancel safety
    /// An upload started by a dropped call may be left behind, unnamed to the caller.
    fn create_upload<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<UploadId>>> {
        let _ = key;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Stores `body` as part `part` (numbered from 1) of `upload`: the bytes at `offset` of
    /// the object. Every part but the last has the same size. The part is durable when this
    /// returns, so its tag may be recorded at once; sending a part again replaces it.
    ///
    /// # Errors
    /// [`Error::UploadNotFound`] when the upload is gone (aborted, completed, or removed by
    /// the store's own cleanup): start another one. Otherwise as [`put`](Store::put).
    ///
    /// # Cancel safety
    /// A dropped call may or may not have stored the part.
    fn put_part<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        part: u32,
        offset: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<PartTag>> {
        let _ = (upload, part, offset, body);
        Box::pin(std::future::ready(Err(no_uploads(key))))
    }

    /// Makes the parts tagged `parts` (parts 1, 2, …, in order) the content of `key`,
    /// atomically for readers as [`put`](Store::put) is, and returns the new object's
    /// metadata. Durable after the next [`sync`](Store::sync). The upload is gone after it.
    ///
    /// # Errors
    /// [`Error::UploadNotFound`] when the upload is gone or a part does not match its tag;
    /// otherwise as [`put`](Store::put).
    ///
    /// # Cancel safety
    /// A dropped call may or may not have completed the upload.
    fn complete_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        parts: &'a [PartTag],
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        let _ = (upload, parts);
        Box::pin(std::future::ready(Err(no_uploads(key))))
    }

    /// Abandons `upload` and frees what its parts hold. An upload already gone is fine.
    ///
    /// # Errors
    /// As [`delete`](Store::delete).
    ///
    /// # Cancel safety
    /// A dropped call may or may not have aborted the upload; calling it again is fine.
    fn abort_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
    ) -> BoxFuture<'a, Result<()>> {
        let _ = (key, upload);
        Box::pin(std::future::ready(Ok(())))
    }

    /// The objects whose keys start with `prefix` and come after `start_after` (when given),
    /// in key order (byte order of the keys), produced lazily: the whole listing is never
    /// held in memory at once. Objects put or deleted while the listing runs may or may not
    /// appear.
    ///
    /// # Errors
    /// Failures are items of the stream; the stream ends after the first one.
    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream;

    /// The durability barrier: when it returns `Ok`, every put and delete that returned
    /// before it began is durable (survives a crash or power loss).
    ///
    /// # Errors
    /// When durability cannot be guaranteed; the operations stay pending and a later `sync`
    /// tries them again.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped sync guarantees nothing, and a later one covers the same
    /// operations.
    fn sync(&self) -> BoxFuture<'_, Result<()>>;

    /// Whether [`put`](Store::put) reports the BLAKE3 of the bytes it stored
    /// ([`ObjectMeta::checksum`]): then a copy need not hash what it streams to the store
    /// too, the store's word stands for it. `false` unless a store says so; a store that says
    /// so and then reports none only costs the caller a read of what it stored.
    fn put_reports_blake3(&self) -> bool {
        false
    }
}

/// The error of the upload methods of a store that takes no uploads in parts.
fn no_uploads(key: &ObjectKey) -> Error {
    Error::Permanent {
        op: Op::Put,
        key: Some(key.clone()),
        source: "this store takes no uploads in parts".into(),
    }
}

/// The bytes `start..end` of `body` (a whole object's), without copying: chunks before the
/// range are dropped, the two at its edges sliced.
pub fn range_of(body: ByteStream, start: u64, end: u64) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        (body, 0u64),
        move |(mut body, mut at)| async move {
            loop {
                if at >= end {
                    return None;
                }
                let chunk = match body.next().await? {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), (body, end))),
                };
                let from = at;
                at += chunk.len() as u64;
                if at <= start {
                    continue;
                }
                let lo = start.saturating_sub(from) as usize;
                let hi = (end.min(at) - from) as usize;
                return Some((Ok(chunk.slice(lo..hi)), (body, at)));
            }
        },
    ))
}

/// Splits `data` into a body of chunks of at most `chunk` bytes (zero-copy slices), for
/// tests, examples and stores that hold their objects in memory.
pub fn body_from_bytes(data: Bytes, chunk: usize) -> ByteStream {
    let chunk = chunk.max(1);
    let mut rest = data;
    Box::pin(futures_util::stream::iter(std::iter::from_fn(move || {
        if rest.is_empty() {
            None
        } else {
            let n = chunk.min(rest.len());
            Some(Ok(rest.split_to(n)))
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn checked_body_reports_truncation_instead_of_ending_short() {
        let key = ObjectKey::new("k").unwrap();
        let meta = ObjectMeta {
            key,
            size: 10,
            version: Version::new("1"),
            checksum: None,
            modified: None,
        };
        let short = Object {
            meta: meta.clone(),
            body: body_from_bytes(Bytes::from_static(b"12345"), 2),
        };
        let items: Vec<_> = short.checked_body().collect().await;
        let last = items.last().unwrap();
        assert!(
            matches!(
                last,
                Err(crate::Error::Truncated {
                    expected: 10,
                    got: 5,
                    ..
                })
            ),
            "{last:?}"
        );
        let long = Object {
            meta: meta.clone(),
            body: body_from_bytes(Bytes::from_static(b"0123456789ab"), 4),
        };
        let items: Vec<_> = long.checked_body().collect().await;
        assert!(items.last().unwrap().is_err());
        let exact = Object {
            meta,
            body: body_from_bytes(Bytes::from_static(b"0123456789"), 4),
        };
        let items: Vec<_> = exact.checked_body().collect().await;
        assert!(items.iter().all(Result::is_ok));
        assert_eq!(items.len(), 3);
    }
}
