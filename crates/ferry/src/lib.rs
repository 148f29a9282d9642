//! Ferry moves objects between storage nodes in the background while the storage system keeps
//! serving reads and writes: per object COPY → VERIFY → FORWARD → CLEANUP, throttled,
//! checkpointed, pausable and observable, with a forwarding table so that no read fails and no
//! write is lost while a key moves.
//!
//! This crate is the facade: it re-exports the crates Ferry is made of, each usable alone, and
//! holds no logic of its own.
//!
//! | module | crate | what it is |
//! |---|---|---|
//! | [`types`] | `ferry-types` | ids, keys, plans, statuses, snapshots, sizes and rates |
//! | [`throttle`] | `ferry-throttle` | the async token bucket, adjustable while it runs |
//! | [`forwarding`] | `ferry-forwarding` | the routing table on every read and write |
//! | [`checkpoint`] | `ferry-checkpoint` | durable job records: file, sled, redb, memory |
//! | [`store`] | `ferry-store` | the `Store` trait, its errors, the memory and directory stores |
//! | [`engine`] | `ferry-engine` | the job runner |
//! | `object_store` | `ferry-object-store` | a `Store` over S3, GCS, Azure (feature `object-store`) |
//!
//! # Example: move a prefix between two stores, watch it, wait
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use ferry::checkpoint::MemoryStore;
//! use ferry::store::{MemStore, Store, body_from_bytes};
//! use ferry::forwarding::{Route, Table};
//! use ferry::types::{CleanupPolicy, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};
//! use ferry::Engine;
//!
//! // Two storage nodes; the old one holds 100 photos.
//! let (old, new) = (NodeId::new("disk-old")?, NodeId::new("disk-new")?);
//! let old_store = Arc::new(MemStore::new());
//! for i in 0..100 {
//!     let key = ObjectKey::new(format!("photos/{i:03}.jpg"))?;
//!     old_store.put(&key, body_from_bytes(vec![i as u8; 4096].into(), 1024)).await?;
//! }
//!
//! // The storage system keeps consulting this table on its request path while keys move.
//! let table = Table::default();
//! let engine = Engine::builder()
//!     .node(old, old_store.clone())
//!     .node(new, Arc::new(MemStore::new()))
//!     .checkpoint_store(Arc::new(MemoryStore::new())) // `FileStore` to survive a restart
//!     .forwarding(table.clone())
//!     .build()?;
//!
//! let plan = MigrationPlan::new(old, new, ObjectSelection::prefix("photos/"))
//!     .with_rate("200MiB/s".parse()?)
//!     .with_cleanup(CleanupPolicy::AfterVerify);
//! let job = engine.start(plan).await?;
//! let mut progress = job.watch(); // snapshots as the job runs
//! let done = job.wait().await?;
//!
//! assert_eq!(done.status, JobStatus::Completed);
//! assert_eq!(done.done_objects, 100);
//! assert_eq!(progress.borrow_and_update().status, JobStatus::Completed);
//! // Reads of a moved key now go to the new node, and the old copies are gone.
//! assert_eq!(table.route_read("photos/007.jpg"), Route::Target(new));
//! assert!(old_store.is_empty());
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! - `sled`: the sled 0.34.7 checkpoint backend, `checkpoint::SledStore`.
//! - `redb`: the redb checkpoint backend, `checkpoint::RedbStore`.
//! - `object-store`: `object_store`, the `ferry-object-store` crate (S3, GCS, Azure and local
//!   files behind one `Store`).
//! - `testing`: `store::FaultyStore`, which injects faults into any store, for tests.
//!
//! A `Store` author needs nothing but [`store`]: it re-exports [`Bytes`](store::Bytes),
//! [`BoxFuture`](store::BoxFuture), [`BoxStream`](store::BoxStream) and
//! [`Stream`](store::Stream).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use ferry_checkpoint as checkpoint;
pub use ferry_engine as engine;
pub use ferry_forwarding as forwarding;
#[cfg(feature = "object-store")]
pub use ferry_object_store as object_store;
pub use ferry_store as store;
pub use ferry_throttle as throttle;
pub use ferry_types as types;

pub use ferry_engine::{Engine, EngineBuilder, JobHandle};
