//! Ferry's migration engine. For now, its storage layer: the [`Store`](store::Store) trait
//! that every storage node implements, and the built-in stores.
//!
//! A store holds objects under [`ObjectKey`](ferry_types::ObjectKey)s and streams them in
//! chunks of [`Bytes`](bytes::Bytes) (SPEC I7: memory stays bounded whatever the object
//! size). `put` is atomic for readers but durable only after the next
//! [`sync`](store::Store::sync), the barrier the engine calls once per checkpoint batch rather
//! than once per object (SPEC §6: grouped durability, like a database's group commit).
//! Errors say whether to give up, retry or treat the object as absent ([`ErrorKind`]).
//!
//! - [`MemStore`](store::MemStore): in memory, for tests and benchmarks.
//! - [`DirStore`](store::DirStore) (unix): a local directory; keys that could escape the root
//!   are refused and links are never followed.
//! - [`FaultyStore`](store::FaultyStore): wraps any store and injects errors, latency,
//!   truncated or corrupted bodies and power cuts.
//!
//! It is not an object-store client library (no S3 or HTTP here: a storage system plugs its
//! nodes in by implementing `Store`), and it computes no checksums yet. The job runner
//! (`Engine`, `JobHandle`: copy, verify, forward, clean up, with checkpoints) is planned in
//! this crate and not written yet.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use bytes::Bytes;
//! use ferry_engine::store::{body_from_bytes, MemStore, Store};
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
//! # Feature flags
//! None.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::print_stdout,
        clippy::print_stderr
    )
)]

mod error;
pub mod store;

pub use crate::error::{BoxError, Error, ErrorKind, Op, Result};
