//! The fuzz corpus of `fuzz/` (target `checkpoint_decode`), run as a regular test on stable:
//! every input decodes to a record or a typed error, never a panic (SPEC I5), and a record that
//! decodes round-trips. `cargo xtask fuzz` grows the corpus on nightly; CI runs what is
//! committed. `FERRY_WRITE_FUZZ_SEEDS=1 cargo test -p ferry-checkpoint --test fuzz_corpus`
//! rewrites the seed inputs from the current encoder.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use ferry_checkpoint::envelope;
use ferry_checkpoint::{JobRecord, Progress};
use ferry_types::{JobId, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/checkpoint_decode")
}

fn seed_records() -> Vec<(&'static str, JobRecord)> {
    let key = |k: &str| ObjectKey::new(k).unwrap();
    let job = JobId::new("seed-job").unwrap();
    let plan = MigrationPlan::new(
        NodeId::new("src").unwrap(),
        NodeId::new("dst").unwrap(),
        ObjectSelection::prefix("photos/"),
    )
    .with_id(job.clone());
    let mut busy = Progress::default();
    busy.advance_watermark(key("photos/0100"));
    busy.mark_done(key("photos/0102"), 4096);
    busy.mark_failed(
        key("photos/0101"),
        3,
        "timeout after 30s".into(),
        ferry_types::FailureKind::Transient,
    );
    let record = |generation, status, progress| JobRecord {
        epoch: 2,
        generation,
        job: job.clone(),
        plan: plan.clone(),
        status,
        progress,
    };
    vec![
        (
            "seed-new",
            record(1, JobStatus::Pending, Progress::default()),
        ),
        ("seed-running", record(7, JobStatus::Running, busy)),
    ]
}

#[test]
fn i5_every_corpus_input_decodes_or_fails_with_a_typed_error() {
    let dir = corpus_dir();
    if std::env::var_os("FERRY_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, record) in seed_records() {
            std::fs::write(dir.join(name), envelope::encode(&record).unwrap()).unwrap();
        }
        std::fs::write(dir.join("seed-empty"), b"").unwrap();
    }
    let mut inputs = 0;
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        inputs += 1;
        if let Ok(record) = envelope::decode(&bytes) {
            decoded += 1;
            let again = envelope::encode(&record).unwrap();
            assert_eq!(
                envelope::decode(&again).unwrap(),
                record,
                "{}",
                path.display()
            );
        }
    }
    // The seeds are there, and the valid ones still decode with today's format.
    assert!(
        inputs >= 3,
        "corpus at {} has {inputs} inputs",
        dir.display()
    );
    assert!(decoded >= 2, "only {decoded} corpus inputs decode");
}
