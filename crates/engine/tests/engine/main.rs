//! The engine tests, in one binary; each names the invariant of SPEC §2 it checks.
// Tests stop on the first unexpected error: unwrap and expect say where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod adaptive;
mod api;
mod batch;
mod changes;
mod check;
mod control;
mod copy;
mod events;
mod faults;
mod hooks;
mod hot;
mod journal;
mod lifecycle;
mod memory;
mod model;
mod overlap;
mod parts;
mod progress;
mod range;
mod resume;
mod retry;
mod small;
mod util;
