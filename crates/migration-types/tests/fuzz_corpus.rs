//! The fuzz corpus of `fuzz/` for the target `parsers`, run as a regular test on stable: the
//! size, rate, duration, id, key and policy parsers never panic on any text, and whatever
//! they accept prints back to text that parses to the same value. The check is
//! `fuzz_corpus/check.rs`, which the fuzz target compiles too. `cargo xtask fuzz` grows the
//! corpus on nightly; CI runs what is committed.
//! `FERRY_WRITE_FUZZ_SEEDS=1 cargo test -p ferry-types --test fuzz_corpus` rewrites the seeds.

#[path = "fuzz_corpus/check.rs"]
mod check;

use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/parsers")
}

/// Hand-written inputs at the edges of each parser.
fn seeds() -> Vec<(&'static str, String)> {
    vec![
        ("seed-size", "1.5GiB".into()),
        ("seed-size-space", " 4 k ".into()),
        ("seed-size-max", "18446744073709551615".into()),
        ("seed-size-overflow", "16384PiB".into()),
        ("seed-size-fraction-9", "0.000000001K".into()),
        ("seed-size-fraction-10", "1.0000000001K".into()),
        ("seed-size-fraction-bytes", "1.5B".into()),
        ("seed-size-negative", "-1MB".into()),
        ("seed-rate", "50MiB/s".into()),
        ("seed-rate-unlimited", "UnLimited".into()),
        ("seed-rate-zero", "0/s".into()),
        ("seed-rate-rounds-to-zero", "0.0000001KB/s".into()),
        ("seed-rate-multibyte", "1\u{e9}/s".into()),
        ("seed-job-id", "drain-node-7.2024-06".into()),
        ("seed-job-id-dot", ".hidden".into()),
        ("seed-job-id-escape", "../etc".into()),
        ("seed-node-id", "10.0.0.7:9000".into()),
        ("seed-node-id-32", "a".repeat(32)),
        ("seed-key", "photos/2024/cat.jpg".into()),
        ("seed-key-1024", "k".repeat(1024)),
        ("seed-key-1025", "k".repeat(1025)),
        ("seed-key-nul", "a\0b".into()),
        ("seed-key-unicode", "\u{ff0e}\u{ff0e}/\u{202e}x".into()),
        ("seed-duration", "2 h".into()),
        ("seed-duration-max", "18446744073709551615s".into()),
        (
            "seed-duration-overflow",
            "99999999999999999999999999999999999999999d".into(),
        ),
        ("seed-cleanup", "grace=30s".into()),
        ("seed-cleanup-spaces", " Grace = 500ms".into()),
        ("seed-verify", " Checksum ".into()),
    ]
}

#[test]
fn every_corpus_input_parses_or_fails_cleanly_and_round_trips() {
    let dir = corpus_dir();
    if std::env::var_os("FERRY_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in seeds() {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let run = std::panic::catch_unwind(|| check::check(&bytes));
        assert!(
            run.is_ok(),
            "corpus input {} fails the check",
            path.display()
        );
        inputs += 1;
    }
    assert!(
        inputs >= seeds().len(),
        "corpus at {} has {inputs} inputs",
        dir.display()
    );
}

#[test]
fn the_seeds_parse_or_fail_cleanly_and_round_trip() {
    for (name, text) in seeds() {
        let run = std::panic::catch_unwind(|| check::check(text.as_bytes()));
        assert!(run.is_ok(), "seed {name} fails the check");
    }
}

/// The round-trip check can fail: a type whose `Display` does not print what it parsed is
/// caught.
#[test]
fn the_round_trip_check_catches_a_lossy_display() {
    #[derive(Debug, PartialEq)]
    struct OffByOne(u8);
    impl std::str::FromStr for OffByOne {
        type Err = std::num::ParseIntError;
        fn from_str(s: &str) -> Result<OffByOne, Self::Err> {
            s.parse().map(OffByOne)
        }
    }
    impl std::fmt::Display for OffByOne {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0.saturating_add(1))
        }
    }
    assert!(std::panic::catch_unwind(|| check::round_trip::<OffByOne>("7")).is_err());
    // And a faithful one passes.
    check::round_trip::<u8>("7");
}
