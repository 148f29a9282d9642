//! The store tests, in one binary: a conformance suite run against every built-in store, and
//! the behaviour particular to each.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

mod conformance;
#[cfg(unix)]
mod dir;
mod faulty;
mod model;
mod suite;
mod util;
