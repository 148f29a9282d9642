//! The engine tests, in one binary; each names the invariant of SPEC §2 it checks.

mod control;
mod copy;
mod resume;
mod util;
