//! One integration-test binary: each module checks a behaviour across crates, through their
//! public APIs only.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

mod crash_loop;
mod dir_to_dir;
mod plan_drives_throttle;
