//! `DirStore`'s key-to-path mapping on arbitrary keys (one per line of the input): put, head,
//! get, list and delete never create, change, delete or read anything outside the store's
//! root, refuse absolute keys and empty, `.` and `..` segments, and fail with an error, never a
//! panic (SPEC §6). The check is `crates/store/tests/fuzz_corpus/check.rs`, shared with the
//! stable replay of the corpus (`crates/store/tests/fuzz_corpus.rs`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/store/tests/fuzz_corpus/check.rs"]
mod check;

/// One store and one set of sentinels per fuzzing process (its temp directory stays behind
/// when the process ends: statics are not dropped).
static FIXTURE: OnceLock<check::Fixture> = OnceLock::new();

fuzz_target!(|input: &[u8]| {
    FIXTURE.get_or_init(check::Fixture::new).check(input);
});
