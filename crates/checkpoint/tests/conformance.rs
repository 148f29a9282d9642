//! The conformance suite (`suite/mod.rs`) run against every backend of this crate.
// Tests stop on the first unexpected error: unwrap and expect say where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod suite;

use suite::conformance;

conformance!(memory, |dir| ferry_checkpoint::MemoryStore::new());
conformance!(leased, |dir| ferry_checkpoint::LeasedStore::new(Arc::new(
    ferry_checkpoint::MemoryRecords::new()
)));
conformance!(file, |dir| ferry_checkpoint::FileStore::open(dir.path())
    .unwrap());
#[cfg(feature = "sled")]
conformance!(sled, |dir| ferry_checkpoint::SledStore::open(
    dir.path().join("db")
)
.unwrap());
#[cfg(feature = "redb")]
conformance!(redb, |dir| ferry_checkpoint::RedbStore::open(
    dir.path().join("state.redb")
)
.unwrap());
