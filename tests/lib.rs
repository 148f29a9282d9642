//! Ferry's cross-crate integration tests live in `it/` and build as one binary
//! (`cargo test -p ferry-tests`), in the manner of ripgrep's: one link, every module a concern.
//! This library is empty; shared fixtures go here when two modules need one.
