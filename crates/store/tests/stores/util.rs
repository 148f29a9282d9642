//! Helpers shared by the store tests: the conformance suite's.

pub(crate) use crate::suite::{key, keys, put, read};
