//! The vocabulary of Ferry, a zero-downtime data migration engine.
//!
//! Every Ferry crate speaks these types: names ([`JobId`], [`ObjectKey`], [`NodeId`]), sizes
//! and bandwidth ([`ByteSize`], [`Rate`]), what a job should do ([`MigrationPlan`]), where it stands ([`JobStatus`], [`ObjectState`],
//! [`JobSnapshot`]) and the one [`Error`] for invalid input. Each type validates on
//! construction and on deserialization, and parses and prints a human text form that
//! round-trips exactly.
//!
//! It does no I/O and needs no async runtime: it can be used alone, e.g. to read and check
//! plans and status records outside of the engine. It is not the engine; the engine, the
//! throttle, the forwarding table and the checkpoint stores live in their own crates.
//!
//! # Example
//! ```
//! # fn main() -> Result<(), ferry_types::Error> {
//! use ferry_types::{ByteSize, CleanupPolicy, MigrationPlan, NodeId, ObjectSelection};
//!
//! let plan = MigrationPlan::new(
//!     NodeId::new("disk-a")?,
//!     NodeId::new("disk-b")?,
//!     ObjectSelection::prefix("photos/"),
//! )
//! .with_rate("50MiB/s".parse()?)
//! .with_chunk_size(ByteSize::mib(4))
//! .with_cleanup("grace=30s".parse::<CleanupPolicy>()?);
//! plan.validate()?;
//! assert_eq!(plan.options.rate.to_string(), "50MiB/s");
//!
//! // Invalid input is refused with an error that quotes it.
//! let err = "50XB".parse::<ByteSize>().unwrap_err();
//! assert!(err.to_string().starts_with("invalid size \"50XB\": unknown unit \"XB\""));
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! None. Serde support is always on: every type here is stored in checkpoints or shown as
//! JSON. Human-readable formats get the text forms (`"50MiB/s"`, `"grace=30s"`), binary
//! formats such as postcard get compact integers.

mod adaptive;
mod duration;
mod error;
mod failure;
mod ids;
mod plan;
mod size;
mod snapshot;
mod status;

pub use adaptive::{AdaptiveRate, RateSetting};
pub use duration::{FormattedDuration, format_duration, parse_duration};
pub use error::{Error, Result};
pub use failure::FailureKind;
pub use ids::{JobId, NodeId, ObjectKey};
pub use plan::{
    CheckpointInterval, CleanupPolicy, JobKind, KeyRange, MigrationPlan, ObjectSelection,
    PlanOptions, RetryPolicy, VerifyMode,
};
pub use size::{ByteSize, Rate};
pub use snapshot::JobSnapshot;
pub use status::{JobStatus, ObjectState};
