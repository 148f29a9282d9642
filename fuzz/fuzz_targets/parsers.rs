//! The text parsers of `ferry-types` (sizes, rates, durations, job and node ids, object keys,
//! cleanup and verify modes) on arbitrary text: a value or an error, never a panic, and a
//! value prints back to text that parses to the same value. The check is
//! `crates/migration-types/tests/fuzz_corpus/check.rs`, shared with the stable replay of the
//! corpus (`crates/migration-types/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/migration-types/tests/fuzz_corpus/check.rs"]
mod check;

fuzz_target!(|input: &[u8]| {
    check::check(input);
});
