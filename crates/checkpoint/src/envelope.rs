//! The envelope every record is stored in, by every backend.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `FCKP` (`46 43 4b 50`) |
//! | 4 | 2 | format version, u16 little endian ([`FORMAT_VERSION`]) |
//! | 6 | 2 | record kind, u16 little endian (1 = job record, 2 = leased job record) |
//! | 8 | 4 | payload length `n`, u32 little endian |
//! | 12 | 4 | CRC32C (Castagnoli), u32 little endian, of bytes 0..12 followed by the payload |
//! | 16 | n | payload: the record, postcard 1.x encoded |
//!
//! The 16-byte header and its checksum rule are frozen for every format version; a newer
//! version may change the payload only. So the checks run in this order: length of the
//! header, magic, payload length against the bytes present, CRC32C, then the version (a
//! record that passes its checksum with a version above [`FORMAT_VERSION`] is
//! [`DecodeError::UnsupportedVersion`]), then the kind and the payload. Every flipped byte
//! and every truncation of a valid record is therefore [`DecodeError::Corrupt`].
//!
//! [`decode`] is a pure function of its input: it never panics, whatever the bytes (the
//! fuzz target calls it).

use ferry_types::JobId;

use crate::error::{CorruptReason, Error, Result};
use crate::record::{JobRecord, JobRecordRef, LeaseHolder};

/// The first four bytes of every record.
pub const MAGIC: [u8; 4] = *b"FCKP";
/// The newest format version this build writes and reads.
///
/// - 1: the first.
/// - 2: [`Progress`](crate::Progress) gains `flips`, its last field (the record's last bytes).
///   A version 1 payload decodes as version 2 with an empty journal (its encoding, one
///   zero byte, is appended before decoding).
/// - 3: [`Progress`](crate::Progress) gains `copying`, its new last field. Older payloads
///   decode with an empty set (one more zero byte appended).
/// - 4: [`Progress`](crate::Progress) gains `preexisting`, its new last field. Older payloads
///   decode with an empty set (one more zero byte appended).
/// - 5: each [`Failure`](crate::Failure) gains its `kind`. Older payloads decode through the
///   version 4 layout (after the appends above), each failure of kind
///   [`FailureKind::Other`](ferry_types::FailureKind::Other).
/// - 6: the plan's options carry their [`burst`](ferry_types::PlanOptions::burst), after
///   the rate. Older payloads decode through the version 5 layout of the plan, with no
///   burst.
/// - 7: the plan's options carry their
///   [`max_changes`](ferry_types::PlanOptions::max_changes), and the plan its
///   [`kind`](ferry_types::MigrationPlan::kind), each its last field. Older payloads decode
///   through the version 6 layout of the plan, with the default `max_changes`, as a
///   migration.
/// - 8: the plan's options carry their
///   [`adaptive`](ferry_types::PlanOptions::adaptive) rate, their new last field (before the
///   plan's kind). Older payloads decode through the version 7 layout of the plan, with a
///   fixed rate.
/// - 9: [`Progress`](crate::Progress) gains `uploads`, its new last field (the record's
///   last bytes). Older payloads decode with an empty map (one zero byte appended).
pub const FORMAT_VERSION: u16 = 9;
/// The size of the header in front of the payload.
pub const HEADER_LEN: usize = 16;
/// The record kind of a [`JobRecord`].
pub const KIND_JOB: u16 = 1;
/// The record kind of a job record with its timed lease in front, as a
/// [`LeasedStore`](crate::LeasedStore) keeps it: the payload is the postcard encoding of an
/// `Option` of (holder: string, lease end: u64 milliseconds since the Unix epoch) followed
/// by the job record's.
pub const KIND_LEASED_JOB: u16 = 2;

/// Why bytes did not decode to a record; a store turns it into an [`Error`] naming the file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not a valid record.
    Corrupt(CorruptReason),
    /// A valid record of a newer format version.
    UnsupportedVersion {
        /// Its version.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
}

impl DecodeError {
    /// The error naming `path` as the record's place.
    pub fn at(self, path: impl Into<std::path::PathBuf>) -> Error {
        let path = path.into();
        match self {
            DecodeError::Corrupt(reason) => Error::Corrupt { path, reason },
            DecodeError::UnsupportedVersion { found, supported } => Error::UnsupportedVersion {
                path,
                found,
                supported,
            },
        }
    }
}

fn corrupt(reason: CorruptReason) -> DecodeError {
    DecodeError::Corrupt(reason)
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), payload)
}

/// Encodes `record` in the envelope.
///
/// # Errors
/// [`Error::Encode`] when the payload exceeds 4 GiB.
pub fn encode(record: &JobRecord) -> Result<Vec<u8>> {
    encode_ref(&record.as_ref())
}

pub(crate) fn encode_ref(record: &JobRecordRef<'_>) -> Result<Vec<u8>> {
    encode_kind(KIND_JOB, record.job, record)
}

/// Encodes a leased job record ([`KIND_LEASED_JOB`]).
pub(crate) fn encode_leased(
    lease: &Option<LeaseHolder>,
    record: &JobRecordRef<'_>,
) -> Result<Vec<u8>> {
    encode_kind(KIND_LEASED_JOB, record.job, &(lease, record))
}

fn encode_kind<T: serde::Serialize>(kind: u16, job: &JobId, payload: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&[0; HEADER_LEN]);
    let mut buf = postcard::to_extend(payload, buf).map_err(|e| encode_error(job, e))?;
    let len = u32::try_from(buf.len() - HEADER_LEN).map_err(|_| Error::Encode {
        job: job.clone(),
        reason: format!("payload of {} bytes exceeds 4 GiB", buf.len() - HEADER_LEN),
    })?;
    buf[0..4].copy_from_slice(&MAGIC);
    buf[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf[6..8].copy_from_slice(&kind.to_le_bytes());
    buf[8..12].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(&buf[0..12], &buf[HEADER_LEN..]);
    buf[12..16].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

fn encode_error(job: &JobId, e: postcard::Error) -> Error {
    Error::Encode {
        job: job.clone(),
        reason: e.to_string(),
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Decodes one record: checks the header, the length, the CRC32C and the version, then
/// decodes the payload.
///
/// # Errors
/// [`DecodeError::Corrupt`] for anything but a whole, valid record of a known version;
/// [`DecodeError::UnsupportedVersion`] for a valid record of a newer version.
pub fn decode(bytes: &[u8]) -> Result<JobRecord, DecodeError> {
    let (version, payload) = open(bytes, KIND_JOB)?;
    decode_record(version, payload)
}

/// A job record's fields before its progress: what a save needs of the record it replaces.
/// Generic over the plan, the one field whose layout changed (format 6 added its burst,
/// format 7 its `max_changes` and the job's kind, format 8 its adaptive rate).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct RecordHead<P = ferry_types::MigrationPlan> {
    pub(crate) epoch: u64,
    pub(crate) generation: u64,
    pub(crate) job: JobId,
    pub(crate) plan: P,
    pub(crate) status: ferry_types::JobStatus,
}

impl<P: Into<ferry_types::MigrationPlan>> RecordHead<P> {
    fn upgrade(self) -> RecordHead {
        RecordHead {
            epoch: self.epoch,
            generation: self.generation,
            job: self.job,
            plan: self.plan.into(),
            status: self.status,
        }
    }
}

impl RecordHead {
    fn with_progress(self, progress: crate::Progress) -> JobRecord {
        JobRecord {
            epoch: self.epoch,
            generation: self.generation,
            job: self.job,
            plan: self.plan,
            status: self.status,
            progress,
        }
    }
}

/// Checks a whole job record (header, length, CRC32C, version, kind) and decodes its fields
/// before the progress, which every format version lays out alike but for the plan's burst;
/// the progress, the bulk of a busy job's record, is not decoded. For saves, which replace it.
pub(crate) fn decode_head(bytes: &[u8]) -> Result<RecordHead, DecodeError> {
    let (version, payload) = open(bytes, KIND_JOB)?;
    if version >= 8 {
        take::<RecordHead>(payload).map(|(head, _)| head)
    } else if version == 7 {
        take::<RecordHead<v7::MigrationPlan>>(payload).map(|(head, _)| head.upgrade())
    } else if version == 6 {
        take::<RecordHead<v6::MigrationPlan>>(payload).map(|(head, _)| head.upgrade())
    } else {
        take::<RecordHead<v5::MigrationPlan>>(payload).map(|(head, _)| head.upgrade())
    }
}

fn take<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> Result<(T, &'a [u8]), DecodeError> {
    postcard::take_from_bytes::<T>(payload)
        .map_err(|e| corrupt(CorruptReason::Payload(e.to_string())))
}

/// Decodes a leased job record ([`KIND_LEASED_JOB`]): its lease holder, if any, and the record.
pub(crate) fn decode_leased(bytes: &[u8]) -> Result<(Option<LeaseHolder>, JobRecord), DecodeError> {
    let (version, payload) = open(bytes, KIND_LEASED_JOB)?;
    let (lease, rest) = take::<Option<LeaseHolder>>(payload)?;
    Ok((lease, decode_record(version, rest)?))
}

fn decode_record(version: u16, payload: &[u8]) -> Result<JobRecord, DecodeError> {
    if version >= 9 {
        return decode_exactly::<JobRecord>(payload);
    }
    // The progress, last in the record, lacks the uploads of version 9: an empty map is one
    // zero byte.
    let mut owned = Vec::with_capacity(payload.len() + 1);
    owned.extend_from_slice(payload);
    owned.push(0);
    let payload = &owned[..];
    if version == 8 {
        return decode_exactly::<JobRecord>(payload);
    }
    if version == 7 {
        let (head, progress) =
            decode_exactly::<(RecordHead<v7::MigrationPlan>, crate::Progress)>(payload)?;
        return Ok(head.upgrade().with_progress(progress));
    }
    if version == 6 {
        let (head, progress) =
            decode_exactly::<(RecordHead<v6::MigrationPlan>, crate::Progress)>(payload)?;
        return Ok(head.upgrade().with_progress(progress));
    }
    // Postcard writes a struct as its fields in order: a record is its head, then its
    // progress.
    if version == 5 {
        let (head, progress) =
            decode_exactly::<(RecordHead<v5::MigrationPlan>, crate::Progress)>(payload)?;
        return Ok(head.upgrade().with_progress(progress));
    }
    let upgraded;
    // Each version before 4 lacks the last fields added since: the flip journal (version
    // 2), the copy intents (version 3) and the keys the target held before the job (version
    // 4). An empty map or set is one zero byte.
    let missing = usize::from(4 - version);
    let payload = if missing > 0 {
        let mut owned = Vec::with_capacity(payload.len() + missing);
        owned.extend_from_slice(payload);
        owned.resize(payload.len() + missing, 0);
        upgraded = owned;
        &upgraded[..]
    } else {
        payload
    };
    let (head, progress) =
        decode_exactly::<(RecordHead<v5::MigrationPlan>, v4::Progress)>(payload)?;
    Ok(head.upgrade().with_progress(progress.into()))
}

/// Decodes `payload` as a whole `T`: bytes left after it are corruption too.
fn decode_exactly<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let (record, rest) = take::<T>(payload)?;
    if !rest.is_empty() {
        return Err(corrupt(CorruptReason::Payload(format!(
            "{} bytes left after the record",
            rest.len()
        ))));
    }
    Ok(record)
}

/// The plan as format version 7 laid it out: without the adaptive rate (a fixed rate).
/// As postcard reads it (`fence_timeout` is a plain `Duration` in binary formats).
mod v7 {
    use std::num::NonZeroUsize;
    use std::time::Duration;

    use ferry_types::{
        ByteSize, CheckpointInterval, CleanupPolicy, JobId, JobKind, NodeId, ObjectSelection,
        PlanOptions, Rate, RetryPolicy, VerifyMode,
    };
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct MigrationPlan {
        id: Option<JobId>,
        source: NodeId,
        target: NodeId,
        objects: ObjectSelection,
        options: Options,
        kind: JobKind,
    }

    #[derive(Deserialize)]
    struct Options {
        verify: VerifyMode,
        cleanup: CleanupPolicy,
        concurrency: NonZeroUsize,
        rate: Rate,
        burst: Option<ByteSize>,
        chunk_size: ByteSize,
        retry: RetryPolicy,
        checkpoint: CheckpointInterval,
        max_flip_attempts: u32,
        fence_timeout: Duration,
        max_changes: u32,
    }

    impl From<MigrationPlan> for ferry_types::MigrationPlan {
        fn from(old: MigrationPlan) -> ferry_types::MigrationPlan {
            let o = old.options;
            ferry_types::MigrationPlan {
                id: old.id,
                source: old.source,
                target: old.target,
                objects: old.objects,
                options: PlanOptions {
                    verify: o.verify,
                    cleanup: o.cleanup,
                    concurrency: o.concurrency,
                    rate: o.rate,
                    burst: o.burst,
                    chunk_size: o.chunk_size,
                    retry: o.retry,
                    checkpoint: o.checkpoint,
                    max_flip_attempts: o.max_flip_attempts,
                    fence_timeout: o.fence_timeout,
                    max_changes: o.max_changes,
                    adaptive: None,
                },
                kind: old.kind,
            }
        }
    }
}

/// The plan as format version 6 laid it out: without `max_changes` (which loads as the
/// default) and the job's kind (a migration).
/// As postcard reads it (`fence_timeout` is a plain `Duration` in binary formats).
mod v6 {
    use std::num::NonZeroUsize;
    use std::time::Duration;

    use ferry_types::{
        ByteSize, CheckpointInterval, CleanupPolicy, JobId, JobKind, NodeId, ObjectSelection,
        PlanOptions, Rate, RetryPolicy, VerifyMode,
    };
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct MigrationPlan {
        id: Option<JobId>,
        source: NodeId,
        target: NodeId,
        objects: ObjectSelection,
        options: Options,
    }

    #[derive(Deserialize)]
    struct Options {
        verify: VerifyMode,
        cleanup: CleanupPolicy,
        concurrency: NonZeroUsize,
        rate: Rate,
        burst: Option<ByteSize>,
        chunk_size: ByteSize,
        retry: RetryPolicy,
        checkpoint: CheckpointInterval,
        max_flip_attempts: u32,
        fence_timeout: Duration,
    }

    impl From<MigrationPlan> for ferry_types::MigrationPlan {
        fn from(old: MigrationPlan) -> ferry_types::MigrationPlan {
            let o = old.options;
            ferry_types::MigrationPlan {
                id: old.id,
                source: old.source,
                target: old.target,
                objects: old.objects,
                options: PlanOptions {
                    verify: o.verify,
                    cleanup: o.cleanup,
                    concurrency: o.concurrency,
                    rate: o.rate,
                    burst: o.burst,
                    chunk_size: o.chunk_size,
                    retry: o.retry,
                    checkpoint: o.checkpoint,
                    max_flip_attempts: o.max_flip_attempts,
                    fence_timeout: o.fence_timeout,
                    max_changes: PlanOptions::default().max_changes,
                    adaptive: None,
                },
                kind: JobKind::Migrate,
            }
        }
    }
}

/// The plan as format versions 1 to 5 laid it out: without the burst, which loads as `None`.
/// As postcard reads it (`fence_timeout` is a plain `Duration` in binary formats).
mod v5 {
    use std::num::NonZeroUsize;
    use std::time::Duration;

    use ferry_types::{
        ByteSize, CheckpointInterval, CleanupPolicy, JobId, JobKind, NodeId, ObjectSelection,
        PlanOptions, Rate, RetryPolicy, VerifyMode,
    };
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct MigrationPlan {
        id: Option<JobId>,
        source: NodeId,
        target: NodeId,
        objects: ObjectSelection,
        options: Options,
    }

    #[derive(Deserialize)]
    struct Options {
        verify: VerifyMode,
        cleanup: CleanupPolicy,
        concurrency: NonZeroUsize,
        rate: Rate,
        chunk_size: ByteSize,
        retry: RetryPolicy,
        checkpoint: CheckpointInterval,
        max_flip_attempts: u32,
        fence_timeout: Duration,
    }

    impl From<MigrationPlan> for ferry_types::MigrationPlan {
        fn from(old: MigrationPlan) -> ferry_types::MigrationPlan {
            let o = old.options;
            ferry_types::MigrationPlan {
                id: old.id,
                source: old.source,
                target: old.target,
                objects: old.objects,
                options: PlanOptions {
                    verify: o.verify,
                    cleanup: o.cleanup,
                    concurrency: o.concurrency,
                    rate: o.rate,
                    burst: None,
                    chunk_size: o.chunk_size,
                    retry: o.retry,
                    checkpoint: o.checkpoint,
                    max_flip_attempts: o.max_flip_attempts,
                    fence_timeout: o.fence_timeout,
                    max_changes: PlanOptions::default().max_changes,
                    adaptive: None,
                },
                kind: JobKind::Migrate,
            }
        }
    }
}

/// The progress as format versions 1 to 4 laid it out (after the appends of
/// `decode_record`): a failure without its kind.
mod v4 {
    use std::collections::{BTreeMap, BTreeSet};

    use ferry_types::{FailureKind, ObjectKey};
    use serde::Deserialize;

    use crate::FlipRecord;

    #[derive(Deserialize)]
    pub(super) struct Progress {
        watermark: Option<ObjectKey>,
        done_above: BTreeSet<ObjectKey>,
        done_objects: u64,
        done_bytes: u64,
        skipped_objects: u64,
        failed: BTreeMap<ObjectKey, Failure>,
        flips: BTreeMap<ObjectKey, FlipRecord>,
        copying: BTreeSet<ObjectKey>,
        preexisting: BTreeSet<ObjectKey>,
        uploads: BTreeMap<ObjectKey, crate::UploadRecord>,
    }

    #[derive(Deserialize)]
    struct Failure {
        attempts: u32,
        last_error: String,
    }

    impl From<Progress> for crate::Progress {
        fn from(p: Progress) -> crate::Progress {
            crate::Progress {
                watermark: p.watermark,
                done_above: p.done_above.into_iter().collect(),
                done_objects: p.done_objects,
                done_bytes: p.done_bytes,
                skipped_objects: p.skipped_objects,
                failed: p
                    .failed
                    .into_iter()
                    .map(|(key, f)| {
                        let failure = crate::Failure {
                            attempts: f.attempts,
                            last_error: f.last_error,
                            kind: FailureKind::Other,
                        };
                        (key, failure)
                    })
                    .collect(),
                flips: p.flips.into_iter().collect(),
                copying: p.copying.into_iter().collect(),
                preexisting: p.preexisting,
                uploads: p.uploads,
            }
        }
    }
}

/// Checks the envelope and returns the format version and the payload.
fn open(bytes: &[u8], expected_kind: u16) -> Result<(u16, &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(CorruptReason::Truncated {
            expected: HEADER_LEN,
            found: bytes.len(),
        }));
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(corrupt(CorruptReason::BadMagic(magic)));
    }
    let len = u32_at(bytes, 8) as usize;
    let expected = HEADER_LEN.saturating_add(len);
    if bytes.len() < expected {
        return Err(corrupt(CorruptReason::Truncated {
            expected,
            found: bytes.len(),
        }));
    }
    if bytes.len() > expected {
        return Err(corrupt(CorruptReason::TrailingBytes {
            expected,
            found: bytes.len(),
        }));
    }
    let payload = &bytes[HEADER_LEN..];
    let stored = u32_at(bytes, 12);
    let computed = checksum(&bytes[0..12], payload);
    if stored != computed {
        return Err(corrupt(CorruptReason::ChecksumMismatch {
            stored,
            computed,
        }));
    }
    let version = u16_at(bytes, 4);
    if version > FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(corrupt(CorruptReason::BadHeader("format version 0".into())));
    }
    let kind = u16_at(bytes, 6);
    if kind != expected_kind {
        return Err(corrupt(CorruptReason::BadHeader(format!(
            "record kind {kind}, expected {expected_kind}"
        ))));
    }
    Ok((version, payload))
}

/// The owner epoch and generation of a record, read from the first bytes of its envelope
/// without checking the CRC (which needs the whole record). For fence checks only.
pub(crate) fn peek_head(prefix: &[u8]) -> Option<(u64, u64)> {
    if prefix.len() < HEADER_LEN
        || prefix[0..4] != MAGIC
        || !(1..=FORMAT_VERSION).contains(&u16_at(prefix, 4))
    {
        return None;
    }
    let (epoch, rest) = postcard::take_from_bytes::<u64>(&prefix[HEADER_LEN..]).ok()?;
    let (generation, _) = postcard::take_from_bytes::<u64>(rest).ok()?;
    Some((epoch, generation))
}

/// Bytes enough for [`peek_head`]: the header and two varints.
pub(crate) const HEAD_PREFIX_LEN: usize = HEADER_LEN + 20;

#[cfg(test)]
pub(crate) mod tests {
    use ferry_types::{ByteSize, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};
    use proptest::prelude::*;

    use super::*;
    use crate::record::{Failure, Progress};

    pub(crate) fn sample(job: &str, failed: usize) -> JobRecord {
        let id = JobId::new(job).unwrap();
        let plan = MigrationPlan::new(
            NodeId::new("a").unwrap(),
            NodeId::new("b").unwrap(),
            ObjectSelection::prefix("photos/"),
        )
        .with_id(id.clone());
        let mut progress = Progress {
            watermark: Some(ObjectKey::new("photos/0100").unwrap()),
            done_above: [ObjectKey::new("photos/0102").unwrap()]
                .into_iter()
                .collect(),
            done_objects: 101,
            done_bytes: 101 << 16,
            skipped_objects: 1,
            ..Progress::default()
        };
        for i in 0..failed {
            progress.failed.insert(
                ObjectKey::new(format!("photos/f{i:06}")).unwrap(),
                Failure {
                    attempts: 3,
                    last_error: "connection reset".into(),
                    kind: ferry_types::FailureKind::Other,
                },
            );
        }
        JobRecord {
            epoch: 3,
            generation: 17,
            job: id,
            plan,
            status: JobStatus::Running,
            progress,
        }
    }

    fn with_version(mut bytes: Vec<u8>, version: u16) -> Vec<u8> {
        bytes[4..6].copy_from_slice(&version.to_le_bytes());
        let crc = checksum(&bytes[0..12], &bytes[HEADER_LEN..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// `bytes`, the encoding of `record` (no burst set) `lease` bytes into the payload, as
    /// format 5 wrote it: without the burst's `None`, one zero byte right after the rate.
    fn without_burst(mut bytes: Vec<u8>, record: &JobRecord, lease: usize) -> Vec<u8> {
        let (plan, options) = (&record.plan, &record.plan.options);
        assert_eq!(options.burst, None);
        let before = postcard::to_allocvec(&(
            record.epoch,
            record.generation,
            &record.job,
            &plan.id,
            &plan.source,
            &plan.target,
            &plan.objects,
            &options.verify,
            &options.cleanup,
            options.concurrency,
            options.rate,
        ))
        .unwrap()
        .len();
        assert_eq!(bytes.remove(HEADER_LEN + lease + before), 0, "the burst");
        let len = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        with_version(bytes, 5)
    }

    /// `bytes`, the encoding of `record` (a fixed rate) `lease` bytes into the payload, as
    /// format 7 wrote it: without the options' last field, the adaptive rate's `None`, one
    /// zero byte before the plan's kind.
    fn without_adaptive(mut bytes: Vec<u8>, record: &JobRecord, lease: usize) -> Vec<u8> {
        assert_eq!(record.plan.options.adaptive, None);
        let at = HEADER_LEN + lease + plan_end(record) - 2;
        assert_eq!(bytes[at], 0, "the adaptive rate");
        bytes.remove(at);
        let len = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        with_version(bytes, 7)
    }

    /// Where `record`'s plan ends in its payload (format 8).
    fn plan_end(record: &JobRecord) -> usize {
        postcard::to_allocvec(&(record.epoch, record.generation, &record.job, &record.plan))
            .unwrap()
            .len()
    }

    /// `bytes`, the format 7 encoding of `record` (`max_changes` below 128, a migration)
    /// `lease` bytes into the payload, as format 6 wrote it: without the plan's last two
    /// fields, `max_changes` and the kind, one byte each.
    fn without_changes_and_kind(mut bytes: Vec<u8>, record: &JobRecord, lease: usize) -> Vec<u8> {
        assert!(record.plan.options.max_changes < 128);
        assert_eq!(record.plan.kind, ferry_types::JobKind::Migrate);
        // Format 7 has one byte less than format 8 in the plan: the adaptive rate's.
        let at = HEADER_LEN + lease + plan_end(record) - 1 - 2;
        assert_eq!(
            bytes[at],
            u8::try_from(record.plan.options.max_changes).unwrap()
        );
        assert_eq!(bytes[at + 1], 0, "the kind");
        bytes.drain(at..at + 2);
        let len = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        with_version(bytes, 6)
    }

    /// `bytes`, the encoding of `record` (no upload under way), as format 8 wrote it: without
    /// the progress's last field, the empty uploads' one zero byte.
    fn without_uploads(mut bytes: Vec<u8>, record: &JobRecord) -> Vec<u8> {
        assert!(record.progress.uploads.is_empty());
        assert_eq!(bytes.pop(), Some(0), "the uploads");
        let len = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        with_version(bytes, 8)
    }

    /// `record` as format 8 encoded it.
    fn v8(record: &JobRecord) -> Vec<u8> {
        without_uploads(encode(record).unwrap(), record)
    }

    /// `record` as format 7 encoded it.
    fn v7(record: &JobRecord) -> Vec<u8> {
        without_adaptive(v8(record), record, 0)
    }

    /// `record` as format 6 encoded it.
    fn v6(record: &JobRecord) -> Vec<u8> {
        without_changes_and_kind(v7(record), record, 0)
    }

    /// `record` (no burst set) as format 5 encoded it.
    fn v5(record: &JobRecord) -> Vec<u8> {
        without_burst(v6(record), record, 0)
    }

    #[test]
    fn a_version_6_record_decodes_with_the_default_max_changes_as_a_migration() {
        let mut record = sample("v6-job", 2);
        record.plan = record
            .plan
            .with_burst(ByteSize::kib(48))
            .with_max_flip_attempts(7);
        let bytes = v6(&record);
        assert_eq!(decode(&bytes).unwrap(), record);
        assert_eq!(decode_head(&bytes).unwrap().plan, record.plan);
        // The same bytes labelled version 7 miss two fields: corrupt, not guessed.
        assert!(matches!(
            decode(&with_version(bytes, 7)),
            Err(DecodeError::Corrupt(CorruptReason::Payload(_)))
        ));
        let lease = Some(LeaseHolder {
            holder: "worker-1".into(),
            until_ms: 1_700_000_000_000,
        });
        let lease_len = postcard::to_allocvec(&lease).unwrap().len();
        let leased = encode_leased(&lease, &record.as_ref()).unwrap();
        let leased = without_uploads(leased, &record);
        let leased = without_adaptive(leased, &record, lease_len);
        let leased = without_changes_and_kind(leased, &record, lease_len);
        assert_eq!(decode_leased(&leased).unwrap(), (lease, record));
    }

    #[test]
    fn a_version_8_record_decodes_with_no_uploads_and_uploads_round_trip_in_version_9() {
        let mut record = sample("v8-job", 2);
        let bytes = v8(&record);
        assert_eq!(decode(&bytes).unwrap(), record);
        // The same bytes labelled version 9 miss the uploads: corrupt, not guessed.
        assert!(matches!(
            decode(&with_version(bytes, 9)),
            Err(DecodeError::Corrupt(CorruptReason::Payload(_)))
        ));
        record.progress.uploads.insert(
            ObjectKey::new("videos/huge.mkv").unwrap(),
            crate::UploadRecord {
                upload: "2~abc".into(),
                version: "\"9b2cf535f27731c974343645a3985328\"".into(),
                part_size: 16 << 20,
                parts: vec!["\"e1\"".into(), "\"e2\"".into()],
            },
        );
        assert_eq!(decode(&encode(&record).unwrap()).unwrap(), record);
    }

    #[test]
    fn a_version_7_record_decodes_with_a_fixed_rate_and_everything_else_intact() {
        let mut record = sample("v7-job", 2);
        record.plan = record
            .plan
            .with_burst(ByteSize::kib(48))
            .with_max_changes(9)
            .with_kind(ferry_types::JobKind::Check);
        let bytes = v7(&record);
        assert_eq!(decode(&bytes).unwrap(), record);
        assert_eq!(decode_head(&bytes).unwrap().plan, record.plan);
        // The same bytes labelled version 8 miss the adaptive rate: corrupt, not guessed.
        assert!(matches!(
            decode(&with_version(bytes, 8)),
            Err(DecodeError::Corrupt(CorruptReason::Payload(_)))
        ));
        let lease = Some(LeaseHolder {
            holder: "worker-2".into(),
            until_ms: 1_700_000_000_000,
        });
        let lease_len = postcard::to_allocvec(&lease).unwrap().len();
        let leased = encode_leased(&lease, &record.as_ref()).unwrap();
        let leased = without_uploads(leased, &record);
        let leased = without_adaptive(leased, &record, lease_len);
        assert_eq!(decode_leased(&leased).unwrap(), (lease, record));
    }

    #[test]
    fn an_adaptive_rate_round_trips_through_the_envelope() {
        let mut record = sample("auto", 1);
        record.plan = record
            .plan
            .with_rate("200MiB/s".parse().unwrap())
            .with_adaptive_rate(ferry_types::AdaptiveRate {
                max_latency: std::time::Duration::from_millis(80),
                floor: ByteSize::kib(512),
            });
        let bytes = encode(&record).unwrap();
        assert_eq!(decode(&bytes).unwrap(), record);
        assert_eq!(decode_head(&bytes).unwrap().plan, record.plan);
    }

    #[test]
    fn a_check_plan_and_its_max_changes_round_trip() {
        let mut record = sample("check", 1);
        record.plan = record
            .plan
            .with_kind(ferry_types::JobKind::Check)
            .with_max_changes(200);
        record
            .progress
            .failed
            .values_mut()
            .for_each(|f| f.kind = ferry_types::FailureKind::Differs);
        let bytes = encode(&record).unwrap();
        assert_eq!(decode(&bytes).unwrap(), record);
        assert_eq!(decode_head(&bytes).unwrap().plan, record.plan);
    }

    #[test]
    fn i5_round_trip_and_borrowed_encoding_match() {
        let record = sample("job-1", 5);
        let bytes = encode(&record).unwrap();
        assert_eq!(&bytes[0..4], b"FCKP");
        assert_eq!(u32_at(&bytes, 8) as usize, bytes.len() - HEADER_LEN);
        assert_eq!(decode(&bytes).unwrap(), record);
        // The borrowed view encodes like the owned record (same field order).
        assert_eq!(
            postcard::to_allocvec(&record.as_ref()).unwrap(),
            postcard::to_allocvec(&record).unwrap()
        );
        assert_eq!(peek_head(&bytes[..HEAD_PREFIX_LEN]), Some((3, 17)));
    }

    #[test]
    fn a_plans_burst_round_trips_through_the_envelope() {
        let mut record = sample("burst", 2);
        record.plan.options.burst = Some(ByteSize::kib(48));
        let bytes = encode(&record).unwrap();
        assert_eq!(u16_at(&bytes, 4), FORMAT_VERSION);
        assert_eq!(decode(&bytes).unwrap(), record);
        assert_eq!(decode_head(&bytes).unwrap().plan, record.plan);
        let lease = Some(LeaseHolder {
            holder: "worker-1".into(),
            until_ms: 1_700_000_000_000,
        });
        let leased = encode_leased(&lease, &record.as_ref()).unwrap();
        assert_eq!(decode_leased(&leased).unwrap(), (lease, record));
    }

    #[test]
    fn a_version_5_record_decodes_with_no_burst_and_everything_else_intact() {
        let mut record = sample("v5-job", 2);
        record.plan = record
            .plan
            .with_rate("20MiB/s".parse().unwrap())
            .with_chunk_size(ByteSize::kib(256))
            .with_max_flip_attempts(7);
        for failure in record.progress.failed.values_mut() {
            failure.kind = ferry_types::FailureKind::DiskFull;
        }
        let bytes = v5(&record);
        assert_eq!(decode(&bytes).unwrap(), record);
        assert_eq!(decode_head(&bytes).unwrap().plan, record.plan);
        assert_eq!(peek_head(&bytes[..HEAD_PREFIX_LEN]), Some((3, 17)));
        // The same bytes labelled version 6 miss the burst: corrupt, not guessed.
        assert!(matches!(
            decode(&with_version(bytes, 6)),
            Err(DecodeError::Corrupt(CorruptReason::Payload(_)))
        ));
        // A leased record of version 5 too: its lease, then the record.
        let lease = Some(LeaseHolder {
            holder: "worker-1".into(),
            until_ms: 1_700_000_000_000,
        });
        let lease_len = postcard::to_allocvec(&lease).unwrap().len();
        let leased = encode_leased(&lease, &record.as_ref()).unwrap();
        let leased = without_uploads(leased, &record);
        let leased = without_adaptive(leased, &record, lease_len);
        let leased = without_changes_and_kind(leased, &record, lease_len);
        let leased = without_burst(leased, &record, lease_len);
        assert_eq!(decode_leased(&leased).unwrap(), (lease, record));
    }

    #[test]
    fn older_records_decode_with_failures_of_kind_other_and_no_newer_fields() {
        // A version 4 record is a version 5 record whose failures have no kind (the varint
        // after each `last_error`); a version 3 record is a version 4 record without the
        // preexisting keys' one zero byte, a version 2 record one without the intents'
        // either, and a version 1 record one without the journal's either.
        let record = sample("old-job", 2);
        assert!(record.progress.flips.is_empty() && record.progress.copying.is_empty());
        assert!(record.progress.preexisting.is_empty());
        let mut bytes = v5(&record);
        let entry = postcard::to_allocvec(&(
            ObjectKey::new("photos/f000000").unwrap(),
            3u32,
            "connection reset",
        ))
        .unwrap()
        .len();
        // The failures come right before the three empty trailing fields, the last one's
        // kind last.
        let other = postcard::to_allocvec(&ferry_types::FailureKind::Other).unwrap();
        let mut at = bytes.len() - 3 - 1;
        for _ in 0..2 {
            assert_eq!(bytes[at..=at], other[..]);
            bytes.remove(at);
            at -= entry + 1;
        }
        let len = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes = with_version(bytes, 4);
        assert_eq!(decode(&bytes).unwrap(), record, "version 4");
        for version in [3, 2, 1] {
            assert_eq!(bytes.pop(), Some(0));
            let len = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
            bytes[8..12].copy_from_slice(&len.to_le_bytes());
            bytes = with_version(bytes, version);
            assert_eq!(decode(&bytes).unwrap(), record, "version {version}");
            assert_eq!(peek_head(&bytes[..HEAD_PREFIX_LEN]), Some((3, 17)));
            // The same bytes labelled a newer version are short: corrupt, not guessed.
            assert!(matches!(
                decode(&with_version(bytes.clone(), version + 1)),
                Err(DecodeError::Corrupt(CorruptReason::Payload(_)))
            ));
        }
    }

    #[test]
    fn i5_the_head_decodes_alone_and_a_flipped_byte_anywhere_is_still_corrupt() {
        let record = sample("head", 3);
        let bytes = encode(&record).unwrap();
        let head = decode_head(&bytes).unwrap();
        assert_eq!(
            (
                head.epoch,
                head.generation,
                &head.job,
                &head.plan,
                head.status
            ),
            (
                record.epoch,
                record.generation,
                &record.job,
                &record.plan,
                record.status
            )
        );
        // The progress is not decoded, but the checksum covers it.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            decode_head(&flipped),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn flip_journal_round_trips() {
        let mut record = sample("j", 0);
        let key = ObjectKey::new("photos/9999").unwrap();
        record.progress.apply(crate::ProgressUpdate::FlipIntent {
            key: key.clone(),
            digest: [7; 32],
        });
        record
            .progress
            .apply(crate::ProgressUpdate::FlipCommitted { key: key.clone() });
        assert!(record.progress.flips[&key].committed);
        assert_eq!(decode(&encode(&record).unwrap()).unwrap(), record);
    }

    #[test]
    fn i5_newer_version_is_unsupported_not_corrupt() {
        let bytes = with_version(encode(&sample("j", 0)).unwrap(), FORMAT_VERSION + 1);
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnsupportedVersion {
                found: FORMAT_VERSION + 1,
                supported: FORMAT_VERSION
            })
        );
        let err = DecodeError::UnsupportedVersion {
            found: 2,
            supported: 1,
        }
        .at("/x/j.0.ckpt");
        assert!(err.to_string().contains("/x/j.0.ckpt"), "{err}");
    }

    #[test]
    fn i5_wrong_magic_and_version_zero_are_corrupt() {
        let mut bytes = encode(&sample("j", 0)).unwrap();
        bytes[0] = b'X';
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Corrupt(CorruptReason::BadMagic(_)))
        ));
        let bytes = with_version(encode(&sample("j", 0)).unwrap(), 0);
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Corrupt(CorruptReason::BadHeader(_)))
        ));
        assert!(matches!(
            decode(b""),
            Err(DecodeError::Corrupt(CorruptReason::Truncated { .. }))
        ));
    }

    #[test]
    fn i5_every_byte_flip_and_truncation_is_corrupt() {
        let bytes = encode(&sample("job-flip", 3)).unwrap();
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= mask;
                assert!(
                    matches!(decode(&b), Err(DecodeError::Corrupt(_))),
                    "flip {mask:#x} at {i} not detected: {:?}",
                    decode(&b)
                );
            }
        }
        for len in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..len]), Err(DecodeError::Corrupt(_))),
                "truncation to {len} not detected"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(DecodeError::Corrupt(CorruptReason::TrailingBytes { .. }))
        ));
    }

    proptest! {
        #[test]
        fn i5_decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn i5_round_trip_random_progress(
            watermark in proptest::option::of("[a-z]{1,8}"),
            done in proptest::collection::btree_set("[a-z]{1,8}", 0..16),
            counters in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            failed in proptest::collection::btree_map("[a-z]{1,8}", (any::<u32>(), ".{0,20}"), 0..8),
            flips in proptest::collection::btree_map("[a-z]{1,8}", (any::<[u8; 32]>(), any::<bool>()), 0..8),
            copying in proptest::collection::btree_set("[a-z]{1,8}", 0..8),
            preexisting in proptest::collection::btree_set("[a-z]{1,8}", 0..8),
            uploads in proptest::collection::btree_map(
                "[a-z]{1,8}",
                (".{0,20}", ".{0,12}", any::<u64>(), proptest::collection::vec(".{0,10}", 0..4)),
                0..4,
            ),
        ) {
            let mut record = sample("prop", 0);
            record.epoch = counters.0;
            record.generation = counters.1;
            record.progress = Progress {
                watermark: watermark.map(|w| ObjectKey::new(w).unwrap()),
                done_above: done.into_iter().map(|k| ObjectKey::new(k).unwrap()).collect(),
                done_objects: counters.2,
                done_bytes: counters.3,
                skipped_objects: counters.4,
                failed: failed
                    .into_iter()
                    .map(|(k, (attempts, last_error))| {
                        (ObjectKey::new(k).unwrap(), Failure { attempts, last_error, kind: ferry_types::FailureKind::DiskFull })
                    })
                    .collect(),
                flips: flips
                    .into_iter()
                    .map(|(k, (digest, committed))| {
                        (ObjectKey::new(k).unwrap(), crate::FlipRecord { digest, committed })
                    })
                    .collect(),
                copying: copying.into_iter().map(|k| ObjectKey::new(k).unwrap()).collect(),
                preexisting: preexisting.into_iter().map(|k| ObjectKey::new(k).unwrap()).collect(),
                uploads: uploads
                    .into_iter()
                    .map(|(k, (upload, version, part_size, parts))| {
                        let record = crate::UploadRecord { upload, version, part_size, parts };
                        (ObjectKey::new(k).unwrap(), record)
                    })
                    .collect(),
            };
            let bytes = encode(&record).unwrap();
            prop_assert_eq!(peek_head(&bytes[..HEAD_PREFIX_LEN.min(bytes.len())]), Some((record.epoch, record.generation)));
            prop_assert_eq!(decode(&bytes).unwrap(), record);
        }

        #[test]
        fn i5_random_flip_or_truncation_is_corrupt(at in any::<prop::sample::Index>(), mask in 1u8..=255, cut in any::<prop::sample::Index>()) {
            let bytes = encode(&sample("prop-flip", 2)).unwrap();
            let mut flipped = bytes.clone();
            flipped[at.index(bytes.len())] ^= mask;
            prop_assert!(matches!(decode(&flipped), Err(DecodeError::Corrupt(_))));
            let cut = cut.index(bytes.len());
            prop_assert!(matches!(decode(&bytes[..cut]), Err(DecodeError::Corrupt(_))));
        }
    }
}
