//! Ferry's migration engine: the job runner ([`Engine`], [`EngineBuilder`], [`JobHandle`]).
//! It moves objects between storage nodes, each a [`Store`](ferry_store::Store) of the
//! `ferry-store` crate (the trait, its errors and the built-in stores live there), while
//! the storage system keeps serving reads and writes through the
//! [`forwarding table`](ferry_forwarding::Table).
//!
//! # The job runner: what is implemented
//! - [`Engine::builder`] (nodes, checkpoint store, forwarding table, global throttle) and
//!   [`Engine::start`]: validates the plan, refuses unknown nodes, creates the job record or
//!   resumes an unfinished one from its checkpoint, and acquires the job's lease (I6).
//! - The per-object pipeline COPY → VERIFY → FORWARD → CLEANUP, `concurrency` objects at a
//!   time over a lazily listed (or explicit, sorted) key stream; keys recorded done are
//!   skipped (I4). A key-range selection
//!   ([`ObjectSelection::Range`](ferry_types::ObjectSelection::Range): a prefix and the
//!   bounds `(after, until]`) lists from `after` and stops at the first key past `until`, the
//!   rest of the prefix unread: a job split by key range runs as one job per worker. The copy streams chunk by chunk through the job's throttle (within the
//!   global one), computing BLAKE3 as it goes (I7); verify by size (`head`) or by checksum
//!   (target and source re-read at once, streaming, and both compared with the copy's hash: a
//!   read that silently changed a byte is caught, not verified against itself; a store that
//!   reports an object's BLAKE3 in its metadata, as `MemStore` does, is not re-read). The forwarding generation is read before the source is
//!   opened. Verified objects are flipped by the next checkpoint commit, after its target
//!   sync, so a flip never points reads at a copy that is not durable (I2); a refused flip
//!   copies again, and after `max_flip_attempts` refusals the key is fenced, drained, copied
//!   once more, synced and flipped on its own (I3). A source gone at open means
//!   `Skipped`, absent on both sides. Transient errors are retried with the plan's backoff and
//!   jitter; permanent or exhausted ones fail the object (its entry removed: reads stay on the
//!   source; the record keeps the error's text and its kind,
//!   [`Error::failure_kind`](crate::Error::failure_kind): `DiskFull`, `PermissionDenied`, …) and the job ends `CompletedWithErrors`. Before the flips, the copies' digests
//!   are journaled in the checkpoint and saved (the *flip journal*); after them, which flips
//!   were made (committed) and which were refused (void) is saved before any source is
//!   deleted or any key copied again. Cleanup waits out the grace period (objects waiting
//!   hold no copy slot; up to 64 × `concurrency` of them wait at once);
//!   the object then waits for the next checkpoint commit, which syncs the target once for
//!   the whole batch, then for each object calls the
//!   commit hook and deletes the source only
//!   if it still has the copied version (I1: no source is deleted before a completed target
//!   sync), then records the batch.
//! - Objects are recorded done only after their last step, and only after a target `sync`
//!   that began after they finished (sync before record).
//! - [`JobHandle`]: `pause` (copies park at the next chunk; a checkpoint is saved),
//!   `resume`, `cancel` (Copying entries removed, forwarded objects stay; a
//!   [`CancelReport`]), `set_rate` (at once, and saved in the job's record with a
//!   checkpoint asked for at once: a recovered or restarted job goes on at the rate last
//!   set; `set_rate_setting` also takes `auto`, a rate that follows the target's health),
//!   `snapshot`, `watch`, `wait`, and
//!   [`events`](JobHandle::events): a broadcast stream of per-object transitions
//!   ([`ObjectEvent`]: key, [`ObjectState`](ferry_types::ObjectState), time since start), in
//!   protocol order; a slow receiver lags (loses the oldest) rather than slowing the job.
//! - The commit hook ([`EngineBuilder::commit_hook`], a [`CommitHook`]): called for each
//!   object after its flip and the commit's target sync, and before its source is deleted; the storage system updates its placement map there. If it
//!   fails, the source is kept and the object is recorded failed with the hook's error; its
//!   forwarding entry stays `Forwarded`, so reads keep going to the complete target copy (I2).
//! - Progress ([`JobSnapshot`](ferry_types::JobSnapshot)): `throughput` and
//!   `objects_per_sec` are this run's, over the last 10 s (a sliding window; over the whole
//!   run while it is younger), never counting objects restored from a checkpoint. A listed
//!   job's `total_objects` and `total_bytes` (the listed sizes, plus the bytes done before
//!   this run) are known once its listing ends, and grow with what a drain's re-listing
//!   finds (keys created behind the first listing); explicit keys know their objects from
//!   the start. `eta` is given as soon as a total is known: the bytes left at the recent
//!   throughput, or else the objects left at the recent objects per second.
//! - The job's throttle: the plan's rate and, when set, its burst
//!   ([`PlanOptions::burst`](ferry_types::PlanOptions)); the default burst is a tenth of a
//!   second of the rate, at least one chunk but at most one second of the rate, so a low rate
//!   lets at most a second's worth through at once (at the start, after a pause or a recovery).
//! - [`Engine::route`]: where a key is served now (the forwarding lookup).
//!   [`Engine::jobs`]: the jobs of the checkpoint store as snapshots, optionally filtered by
//!   status (live snapshots for jobs running in this engine, the others from their records).
//! - [`Engine::recover`]: resumes every job recorded `Pending`, `Running`, `Paused` or `Completing` that
//!   is not running in this engine, from its checkpoint under a new lease; a `Paused` job is
//!   resumed paused. Before a resumed job's runner starts, the flip journal is settled and
//!   saved: a committed flip routes to the target again; an intent is settled by what the
//!   stores hold against the journaled digest (the target changed: a client wrote through
//!   the flip, so the target serves it; the source changed: the flip was refused, the source
//!   serves it and the key is copied again; the source is gone and the target has the copy:
//!   deleted before the flip, so the copy goes too). Then the keys recorded done that the
//!   target holds are reloaded as forwarded, except those it held before the job began and
//!   the job never copied over (a job lists them once, before it copies anything). So no read after `recover` goes to a node
//!   without the object (I2), and no write made through a flip before the crash is
//!   overwritten by a copy of the stale source (I3).
//! - [`Engine::retry_failed`]: a job that ended `CompletedWithErrors` runs again
//!   (`CompletedWithErrors` → `Running`, new lease) over exactly the keys of its record's
//!   `failed` map; each that succeeds leaves `failed` and is counted done, so
//!   done + failed == total at the end (skipped objects are counted in done).
//! - Check jobs (a plan [`with_kind`](ferry_types::MigrationPlan::with_kind)
//!   [`JobKind::Check`](ferry_types::JobKind), cleanup `never`): verify-only, as
//!   `rclone check` or Vitess `VDiff`. Both sides are listed in key order and merged (an
//!   explicit key list is looked up with `head` on both); a key only on the source is
//!   recorded failed as [`FailureKind::MissingOnTarget`](ferry_types::FailureKind), one only
//!   on the target as `ExtraOnTarget`, one whose sizes or contents differ as `Differs` (the
//!   stores' checksums when both report one of the same algorithm, else BLAKE3 of both
//!   contents, streamed a chunk at a time through the job's throttle, which counts the bytes
//!   read on both sides); a key that matches is done, one absent from both sides skipped. The
//!   watermark, pause, cancel, shutdown, `recover` and `retry_failed` (which compares only the
//!   differences again) work as for a migration; a check writes, forwards and deletes
//!   nothing. The snapshot's `bytes_copied` counts the bytes it read.
//! - [`tracing`](https://docs.rs/tracing): an info span `job` per job (fields `job`,
//!   `source`, `target`, `retry`) and a debug span `object` per object (`key`) inside it; a
//!   debug event at each object transition (`key`, `state`, the same moves as
//!   [`JobHandle::events`]) and at each job status change; warnings for each retry of a
//!   transient error (`what`, `attempt`, `error`), each failed object (`key`, `attempts`,
//!   `error`) and a failed job; a debug event for each copy made again because the source
//!   changed outside the table (`key`, `changes`, `when`).
//!   The library never prints: install a subscriber to see them.
//! - Metrics through the `metrics` facade (no exporter here: install the recorder you use):
//!   per job (label `job`) objects done, copied, verified, forwarded, cleaned, skipped and
//!   failed, bytes copied and done, retries, refused flips, fences and their waits, objects in
//!   flight, the rate limit and throughput; per node and operation (labels `node`, `op`) the
//!   stores' latency and errors. The names are constants in [`metrics`]; `docs/metrics.md`
//!   is the reference.
//!
//! - The checkpoint watermark advances over the finished prefix of the (key-ordered) stream,
//!   so the record's done set stays bounded by what is in flight. Failed objects count as
//!   finished for the watermark: they are kept in the record's failed map, not run again on
//!   resume.
//!
//! # Sources written outside the table, and sources that lie
//! A program may write the source directly, never asking the table (a user's editor, a
//! backup restore). The engine looks for such changes after each copy: at verify (the source
//! read again, or its reported checksum, no longer matches what was streamed and its version
//! moved), just before the flip (the source's version is re-read in the commit), and after the
//! flip (re-read before the delete; with cleanup `never` the source stays the live copy, and
//! a change after the flip is a change after the move). A change
//! seen before the flip is copied again, up to
//! [`PlanOptions::max_changes`](ferry_types::PlanOptions) times (default 3); past that, or
//! when the change comes after the flip, the object is recorded failed with
//! [`FailureKind::SourceChanged`](ferry_types::FailureKind::SourceChanged) and counted in
//! [`JobSnapshot::changed_objects`](ferry_types::JobSnapshot): its source is kept (I1), the
//! job ends `CompletedWithErrors`. [`Engine::retry_failed`] moves such objects again once the
//! writers stop; one that failed after its flip has the flip rolled back first (journaled
//! durably, then the entry removed), but only when the target still holds exactly the
//! flipped copy; when a client wrote the target through the table since, neither side is
//! overwritten and the object stays failed. (A write through the table landing between that
//! check and the rollback is the window this leaves: retry once the writers have stopped.)
//!
//! What was streamed from the source is checked against the source itself before any
//! cleanup deletes it, in every verify mode: against the checksum the store reports, else by
//! a second read; so a source is never deleted on the word of the one read that made the
//! copy. Where the store reports a checksum, that check is made in every mode, cleanup or
//! not. A store that reports no checksum and corrupts every read alike cannot be caught: the
//! second read agrees with the first.
//!
//! Events of objects a crashed run had already moved may start mid-protocol. A job recovered from a record written
//! before format 6, which had no place for the plan's burst, runs with the default burst.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use ferry_checkpoint::MemoryStore;
//! use ferry_engine::Engine;
//! use ferry_store::MemStore;
//! use ferry_types::{CleanupPolicy, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};
//!
//! let (a, b) = (NodeId::new("a")?, NodeId::new("b")?);
//! let (source, target) = (MemStore::new(), MemStore::new());
//! source.insert(ObjectKey::new("photos/cat.jpg")?, "meow");
//! let engine = Engine::builder()
//!     .node(a, Arc::new(source.clone()))
//!     .node(b, Arc::new(target.clone()))
//!     .checkpoint_store(Arc::new(MemoryStore::new()))
//!     .build()?;
//! let plan = MigrationPlan::new(a, b, ObjectSelection::prefix("photos/"))
//!     .with_cleanup(CleanupPolicy::AfterVerify);
//! let job = engine.start(plan).await?;
//! let snapshot = job.wait().await?;
//! assert_eq!(snapshot.status, JobStatus::Completed);
//! assert_eq!(target.bytes("photos/cat.jpg").as_deref(), Some(&b"meow"[..]));
//! assert!(source.is_empty()); // moved, verified, forwarded, then cleaned up
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! None.

mod engine;
mod error;

pub use crate::engine::metrics;
pub use crate::engine::{
    CancelReport, CommitHook, Engine, EngineBuilder, JobHandle, ObjectEvent, Parts,
};
pub use crate::error::{BoxError, Error, ErrorKind, Op, Result};
