//! The fuzz corpus of `fuzz/` (target `checkpoint_decode`), run as a regular test on stable:
//! every input decodes to a record or a typed error, never a panic (SPEC I5), and a record that
//! decodes round-trips. `cargo xtask fuzz` grows the corpus on nightly; CI runs what is
//! committed. `FERRY_WRITE_FUZZ_SEEDS=1 cargo test -p ferry-checkpoint --test fuzz_corpus`
//! rewrites the seed inputs from the current encoder. `v5-running` and `v6-running`, which the
//! format 5 and 6 encoders wrote, are never rewritten: they check that such records still
//! decode.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use ferry_checkpoint::envelope;
use std::num::NonZeroUsize;
use std::time::Duration;

use ferry_checkpoint::{FlipRecord, JobRecord, Progress};
use ferry_types::{
    ByteSize, CheckpointInterval, CleanupPolicy, JobId, JobStatus, MigrationPlan, NodeId,
    ObjectKey, ObjectSelection, PlanOptions, RetryPolicy, VerifyMode,
};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/checkpoint_decode")
}

/// The record in `v5-running`, which the format 5 encoder wrote: every field set away from its
/// default, so a field read from the wrong bytes shows.
fn v5_record() -> JobRecord {
    let key = |k: &str| ObjectKey::new(k).unwrap();
    let job = JobId::new("v5-job").unwrap();
    let options = PlanOptions {
        verify: VerifyMode::Size,
        cleanup: CleanupPolicy::AfterVerify,
        concurrency: NonZeroUsize::new(7).unwrap(),
        rate: "20MiB/s".parse().unwrap(),
        burst: None,
        chunk_size: ByteSize::kib(256),
        retry: RetryPolicy {
            max_attempts: 9,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(40),
            multiplier: 3,
            jitter: false,
        },
        checkpoint: CheckpointInterval {
            objects: 77,
            every: Duration::from_millis(1500),
        },
        max_flip_attempts: 4,
        fence_timeout: Duration::from_secs(2),
        max_changes: 3,
        adaptive: None,
    };
    let plan = MigrationPlan::new(
        NodeId::new("src").unwrap(),
        NodeId::new("dst").unwrap(),
        ObjectSelection::range("photos/", Some(key("photos/0010")), None),
    )
    .with_id(job.clone())
    .with_options(options);
    let mut progress = Progress::default();
    progress.advance_watermark(key("photos/0100"));
    progress.mark_done(key("photos/0102"), 4096);
    progress.mark_failed(
        key("photos/0101"),
        3,
        "no space left on device".into(),
        ferry_types::FailureKind::DiskFull,
    );
    progress.flips.insert(
        key("photos/0103"),
        FlipRecord {
            digest: [9; 32],
            committed: true,
        },
    );
    progress.copying.insert(key("photos/0104"));
    progress.preexisting.insert(key("photos/0105"));
    JobRecord {
        epoch: 4,
        generation: 31,
        job,
        plan,
        status: JobStatus::Paused,
        progress,
    }
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

/// `v5-running` was written by the format 5 encoder, whose plans had no burst, and is never
/// rewritten: it decodes to the record it was made from, with no burst.
#[test]
fn a_format_5_record_decodes_with_no_burst_and_every_other_field_kept() {
    let bytes = std::fs::read(corpus_dir().join("v5-running")).unwrap();
    assert_eq!(bytes[4..6], 5u16.to_le_bytes(), "the format version");
    assert_eq!(envelope::decode(&bytes).unwrap(), v5_record());
}

/// `v6-running` was written by the format 6 encoder, whose plans had no `max_changes` and no
/// kind, and is never rewritten: it decodes to the record it was made from (the `v5-running`
/// one with a burst and another id), with the default `max_changes`, as a migration.
#[test]
fn a_format_6_record_decodes_with_the_default_max_changes_as_a_migration() {
    let bytes = std::fs::read(corpus_dir().join("v6-running")).unwrap();
    assert_eq!(bytes[4..6], 6u16.to_le_bytes(), "the format version");
    let mut record = v5_record();
    record.job = JobId::new("v6-job").unwrap();
    record.plan.id = Some(record.job.clone());
    record.plan.options.burst = Some(ByteSize::kib(48));
    let decoded = envelope::decode(&bytes).unwrap();
    assert_eq!(decoded, record);
    assert_eq!(decoded.plan.kind, ferry_types::JobKind::Migrate);
    assert_eq!(decoded.plan.options.max_changes, 3);
}

/// `v7-running` was written by the format 7 encoder, whose plans had no adaptive rate, and
/// is never rewritten: it decodes to the record it was made from (the `v5-running` one with
/// a burst, another `max_changes` and another id), with a fixed rate.
#[test]
fn a_format_7_record_decodes_with_a_fixed_rate() {
    let bytes = std::fs::read(corpus_dir().join("v7-running")).unwrap();
    assert_eq!(bytes[4..6], 7u16.to_le_bytes(), "the format version");
    let mut record = v5_record();
    record.job = JobId::new("v7-job").unwrap();
    record.plan.id = Some(record.job.clone());
    record.plan.options.burst = Some(ByteSize::kib(48));
    record.plan.options.max_changes = 5;
    let decoded = envelope::decode(&bytes).unwrap();
    assert_eq!(decoded, record);
    assert_eq!(decoded.plan.options.adaptive, None);
}
