//! The fuzz corpus of `fuzz/` for the target `dirstore_key_path`, run as a regular test on
//! stable: for every input, a `DirStore` never creates, changes, deletes or reads anything
//! outside its root, refuses the keys SPEC §6 names (absolute, empty, `.` or `..` segments),
//! and fails with a clean error rather than a panic. The check is `fuzz_corpus/check.rs`,
//! which the fuzz target compiles too. `cargo xtask fuzz` grows the corpus on nightly; CI runs
//! what is committed. `FERRY_WRITE_FUZZ_SEEDS=1 cargo test -p ferry-store --test fuzz_corpus`
//! rewrites the seed inputs.

#![cfg(unix)]
// Tests stop on the first unexpected error: expect says where.
#![allow(clippy::expect_used)]

#[path = "fuzz_corpus/check.rs"]
mod check;

use std::path::PathBuf;

use check::Fixture;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/dirstore_key_path")
}

/// Hand-written inputs: the escapes SPEC §6 names, unicode look-alikes (just names on Linux:
/// fine as long as they stay inside), long keys and segments, and keys that collide as a file
/// and a directory. One key per line.
fn seeds() -> Vec<(&'static str, String)> {
    let long_segment = "x".repeat(255);
    vec![
        ("seed-plain", "a/b/c.txt\nphotos/2024/cat.jpg".into()),
        ("seed-dotdot", "../sentinel\na/../../outside/secret\n..".into()),
        ("seed-absolute", "/etc/passwd\n/\n//x".into()),
        ("seed-dot-and-empty", "./a\na/./b\na//b\na/\n.".into()),
        ("seed-backslash", "..\\sentinel\na\\..\\..\\x".into()),
        ("seed-sibling", "../root-sibling/secret\n../up/root/x".into()),
        ("seed-up-link-name", "up/sentinel\nup".into()),
        ("seed-temp-prefix", ".ferry-tmp-1\na/.ferry-tmp-x".into()),
        // U+FF0E fullwidth full stop, U+2024 one dot leader, U+2215 division slash,
        // U+202E right-to-left override, U+200B zero-width space: names, not separators.
        (
            "seed-unicode",
            "\u{ff0e}\u{ff0e}/x\n\u{2024}\u{2024}/sentinel\n..\u{2215}sentinel\n\u{202e}txt.exe\n\u{200b}..\n.\u{200b}./x"
                .into(),
        ),
        ("seed-dots", "...\n.../x\n.. \n ..\n..a".into()),
        ("seed-percent", "%2e%2e/sentinel\n%2F".into()),
        ("seed-file-then-dir", "a\na/b\nb/c\nb".into()),
        ("seed-same-key-twice", "k\nk".into()),
        ("seed-long-segment", format!("{long_segment}\n{long_segment}y")),
        (
            "seed-long-key",
            // 1024 bytes in 4 segments of 255 plus separators and a short tail.
            format!("{0}/{0}/{0}/{0}/ab", long_segment),
        ),
        ("seed-too-long-key", "k/".repeat(600)),
        ("seed-many-segments", "a/".repeat(300) + "z"),
        ("seed-control-chars", "a\tb\r\n\u{1b}[2J\n\u{7f}".into()),
    ]
}

#[test]
fn every_corpus_input_stays_inside_the_root_and_fails_cleanly() {
    let dir = corpus_dir();
    if std::env::var_os("FERRY_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in seeds() {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let fixture = Fixture::new();
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fixture.check(&bytes)));
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
fn the_seeds_run_through_the_check() {
    let fixture = Fixture::new();
    for (name, text) in seeds() {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fixture.check(text.as_bytes())
        }));
        assert!(run.is_ok(), "seed {name} fails the check");
    }
}

/// The check is only worth its corpus if it can fail: a file created, a sentinel changed, or a
/// link retargeted outside the root must each be noticed.
#[test]
fn the_check_notices_any_change_outside_the_root() {
    type Meddle = fn(&std::path::Path);
    let meddlers: [(&str, Meddle); 4] = [
        ("a new file", |p| {
            std::fs::write(p.join("outside/new"), b"x").unwrap()
        }),
        ("a changed sentinel", |p| {
            std::fs::write(p.join("sentinel"), b"changed").unwrap()
        }),
        ("a removed file", |p| {
            std::fs::remove_file(p.join("root-sibling/secret")).unwrap()
        }),
        ("a retargeted link", |p| {
            std::fs::remove_file(p.join("up")).unwrap();
            std::os::unix::fs::symlink("/", p.join("up")).unwrap();
        }),
    ];
    for (what, meddle) in meddlers {
        let fixture = Fixture::new();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fixture.check_with(b"a/b\nc", meddle)
        }));
        assert!(run.is_err(), "the check missed {what}");
    }
}
