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
//! # Example: a storage system that keeps serving while a prefix moves
//! The complete request path an embedder needs, and the only safe one when sources are
//! deleted: reads go through [`Table::read_with`](forwarding::Table::read_with) (routed by
//! the table while a key moves, by the system's own [`Placement`](forwarding::Placement)
//! otherwise) and hold their guard until the node answered; writes hold a
//! [`WriteTicket`](forwarding::WriteTicket) until acknowledged; the commit hook places the
//! key on its new node, then drains the reads that were sent to the old one before the flip
//! ([`Table::drain_reads`](forwarding::Table::drain_reads)), and only then may the engine
//! delete the source.
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), ferry::store::BoxError> {
//! use std::collections::HashMap;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//!
//! use ferry::checkpoint::MemoryStore;
//! use ferry::forwarding::{Placement, Table};
//! use ferry::store::{BoxError, BoxFuture, Bytes, MemStore, Store, body_from_bytes};
//! use ferry::types::{CleanupPolicy, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};
//! use ferry::Engine;
//!
//! /// The storage system: its nodes, where each key lives, and the forwarding table.
//! struct System {
//!     nodes: HashMap<NodeId, Arc<dyn Store>>,
//!     placement: Placement,
//!     table: Table,
//! }
//!
//! impl System {
//!     /// A read: the node the key lives on now, read while the guard is held.
//!     async fn read(&self, key: &ObjectKey) -> Result<u64, BoxError> {
//!         let (node, guard) = self.table.read_with(key.as_str(), &self.placement);
//!         let size = self.nodes[&node].head(key).await?.ok_or("lost a read")?.size;
//!         drop(guard); // the node answered
//!         Ok(size)
//!     }
//!
//!     /// A write: where the ticket says, acknowledged before the ticket goes.
//!     async fn write(&self, key: &ObjectKey, data: Bytes) -> Result<(), BoxError> {
//!         let ticket = self.table.begin_write(key.as_str()).await?;
//!         let node = self.placement.resolve(key.as_str(), ticket.route());
//!         self.nodes[&node].put(key, body_from_bytes(data, 1 << 20)).await?;
//!         drop(ticket); // acknowledged
//!         Ok(())
//!     }
//! }
//!
//! // Two storage nodes; every key lives on the old one, which holds 100 photos.
//! let (old, new) = (NodeId::new("disk-old")?, NodeId::new("disk-new")?);
//! let (old_store, new_store) = (Arc::new(MemStore::new()), Arc::new(MemStore::new()));
//! let system = Arc::new(System {
//!     nodes: HashMap::from([
//!         (old, old_store.clone() as Arc<dyn Store>),
//!         (new, new_store.clone() as Arc<dyn Store>),
//!     ]),
//!     placement: Placement::new(old),
//!     table: Table::default(),
//! });
//! let key = |i: usize| ObjectKey::new(format!("photos/{i:03}.jpg"));
//! for i in 0..100 {
//!     system.write(&key(i)?, vec![i as u8; 4096].into()).await?;
//! }
//!
//! // The commit hook: the key is placed on its new node (a real system persists this),
//! // then the reads sent to the old node before the flip are waited for.
//! let hooked = Arc::clone(&system);
//! let hook = move |key: &ObjectKey, target: NodeId| -> BoxFuture<'static, Result<(), BoxError>> {
//!     let (system, key) = (Arc::clone(&hooked), key.clone());
//!     Box::pin(async move {
//!         system.placement.set(&key, target);
//!         system.table.drain_reads(key.as_str()).await;
//!         Ok(())
//!     })
//! };
//! let engine = Engine::builder()
//!     .node(old, old_store.clone())
//!     .node(new, new_store.clone())
//!     .checkpoint_store(Arc::new(MemoryStore::new())) // `FileStore` to survive a restart
//!     .forwarding(system.table.clone())
//!     .commit_hook(hook)
//!     .build()?;
//!
//! // Clients keep reading every photo while the prefix moves; not one read may fail.
//! let moving = Arc::new(AtomicBool::new(true));
//! let client = tokio::spawn({
//!     let (system, moving) = (Arc::clone(&system), Arc::clone(&moving));
//!     async move {
//!         let mut reads = 0u64;
//!         loop {
//!             for i in 0..100 {
//!                 assert_eq!(system.read(&key(i)?).await?, 4096);
//!                 reads += 1;
//!             }
//!             if !moving.load(Ordering::Relaxed) {
//!                 return Ok::<_, BoxError>(reads);
//!             }
//!             tokio::task::yield_now().await;
//!         }
//!     }
//! });
//!
//! let plan = MigrationPlan::new(old, new, ObjectSelection::prefix("photos/"))
//!     .with_rate("200MiB/s".parse()?)
//!     .with_cleanup(CleanupPolicy::AfterVerify); // each source deleted once it is safe
//! let job = engine.start(plan).await?;
//! let mut progress = job.watch(); // snapshots as the job runs
//! let done = job.wait().await?;
//! moving.store(false, Ordering::Relaxed);
//! let reads = client.await??;
//!
//! assert_eq!(done.status, JobStatus::Completed);
//! assert_eq!(done.done_objects, 100);
//! assert_eq!(progress.borrow_and_update().status, JobStatus::Completed);
//! assert!(reads >= 100);
//! // Every photo lives on the new node now, and the old copies are gone.
//! assert_eq!(system.placement.node_of("photos/007.jpg"), new);
//! assert!(old_store.is_empty());
//! assert_eq!(system.read(&key(7)?).await?, 4096);
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

pub use ferry_checkpoint as checkpoint;
pub use ferry_engine as engine;
pub use ferry_forwarding as forwarding;
#[cfg(feature = "object-store")]
pub use ferry_object_store as object_store;
pub use ferry_store as store;
pub use ferry_throttle as throttle;
pub use ferry_types as types;

pub use ferry_engine::{Engine, EngineBuilder, JobHandle};
