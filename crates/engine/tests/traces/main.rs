//! `tracing` output, in a test binary of its own: whether a callsite is enabled is cached
//! process-wide, and tests running on other threads without a subscriber race with this
//! test's thread-local one (a span or event may be cached as disabled just as it starts), so
//! nothing else runs in this process.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../engine/util.rs"]
mod util;

mod traces;
