//! A Ferry [`Store`](ferry_store::Store) over the [`object_store`] crate: S3 and
//! S3-compatible servers, Google Cloud Storage, Azure Blob Storage, a local directory or
//! memory, selected by URL.
//!
//! [`ObjectStoreAdapter`] passes the engine's conformance checks on `memory://`, `file://`
//! and `s3://` (a real S3 server in the tests, `test_server` with the `test-server`
//! feature). The `ferry` command takes these URLs as SRC and DST.
//!
//! [`ObjectRecords`] keeps checkpoint records in a bucket with conditional writes, for
//! `ferry_checkpoint::LeasedStore`: workers on many machines then share jobs, one owner at a
//! time (SPEC I6). object_store's API is used in this crate only, so its churn stays here.
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_store::{Store, body_from_bytes};
//! use ferry_object_store::ObjectStoreAdapter;
//! use ferry_types::ObjectKey;
//!
//! let store = ObjectStoreAdapter::from_url("memory://some/prefix")?;
//! let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! rt.block_on(async {
//!     let key = ObjectKey::new("a/b.txt")?;
//!     let meta = store.put(&key, body_from_bytes("hello".into(), 2)).await?;
//!     assert_eq!(store.head(&key).await?, Some(meta));
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! None is on by default (`file://` and `memory://` need none).
//! - `aws`: `s3://bucket/prefix`, configured from the `AWS_*` environment variables.
//! - `gcp`: `gs://bucket/prefix`, configured from the `GOOGLE_*` environment variables.
//! - `azure`: `az://container/prefix`, configured from the `AZURE_*` environment variables.
//! - `test-server`: `test_server::S3Server`, an S3 server in this process on loopback for
//!   tests (implies `aws`).

mod adapter;
mod error;
mod records;
mod sent;
#[cfg(feature = "cloud")]
mod stall;
#[cfg(feature = "test-server")]
pub mod test_server;
mod url;

pub use crate::adapter::{
    DEFAULT_PART_SIZE, DEFAULT_UPLOAD_CONCURRENCY, Listing, ObjectStoreAdapter,
};
pub use crate::error::{Error, Result};
pub use crate::records::ObjectRecords;
#[cfg(feature = "cloud")]
pub use crate::stall::{DEFAULT_STALL_LIMIT, StallTimeout};
pub use crate::url::BucketUrl;
/// The object_store version this crate is built on, for [`ObjectStoreAdapter::new`].
pub use object_store;
