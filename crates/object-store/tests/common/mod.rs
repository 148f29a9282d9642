//! The store conformance suite, shared with the engine (`crates/store/tests/stores/suite.rs`,
//! included by path), and what it expects of `ObjectStoreAdapter`; used by the test files that
//! run it: `conformance.rs` (`memory://`, `file://`), `s3.rs` (`s3://` on the in-process
//! server), `external_s3.rs` (moto) and `external_azure.rs` (Azurite).

#[path = "../../../store/tests/stores/suite.rs"]
mod suite;

pub(crate) use suite::*;

use ferry_object_store::{DEFAULT_PART_SIZE, DEFAULT_UPLOAD_CONCURRENCY};

/// An adapter with its defaults over a remote backend that gives every write a new version
/// and lists head's versions: a put holds a part being filled and up to the upload
/// concurrency of parts in flight; a get gives chunks of at most 1 MiB as the backend sends
/// them.
pub(crate) const ADAPTER: Expect = Expect {
    holds: Holds::Disk,
    versions: Versions::PerWrite,
    listed: Listed::Versions,
    parts: Parts {
        size: DEFAULT_PART_SIZE,
        in_flight: DEFAULT_UPLOAD_CONCURRENCY,
    },
    reads: Reads::UpToAChunk,
};
