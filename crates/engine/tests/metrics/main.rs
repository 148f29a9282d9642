//! Metrics, in a test binary of its own: the recorder is the test thread's (a job on a
//! current-thread runtime records from that thread), and nothing else runs in this process.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../engine/util.rs"]
mod util;

mod metrics;
