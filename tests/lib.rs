//! Ferry's cross-crate integration tests live in `it/` and build as one binary
//! (`cargo test -p ferry-tests`), in the manner of ripgrep's: one link, every module a concern.
//!
//! This library holds what two of them share: [`crash`], the object content format and the
//! ledger of the crash loop, written by the engine child (`bin/crash_child.rs`) and read back
//! by the driver (`it/crash_loop.rs`).

pub mod crash;
