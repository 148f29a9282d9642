//! What a checkpoint stores per job: the record, its progress, leases and load results.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use ferry_types::{FailureKind, JobId, JobStatus, MigrationPlan, ObjectKey};
use serde::{Deserialize, Serialize};

/// Everything stored for one job: its spec, status, progress and owner epoch.
///
/// # Layout
/// The record is the postcard payload of one [envelope](crate::envelope) and its fields are
/// encoded in declaration order: `epoch` and `generation` first (varints), so a store can read
/// them from a short prefix of the payload when it checks its fence; then `job` (string),
/// `plan` ([`MigrationPlan`]), `status` ([`JobStatus`], a varint variant index) and
/// `progress` ([`Progress`]). New fields are only added by a new format version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The owner epoch: how many times the job was acquired. 0 until the first
    /// [`acquire`](crate::CheckpointStore::acquire); a save must carry the current one (I6).
    pub epoch: u64,
    /// Bumped by every write of the record; the file store keeps the two newest generations.
    pub generation: u64,
    /// The job.
    pub job: JobId,
    /// What the job does; its `id` is `Some(job)`.
    pub plan: MigrationPlan,
    /// Where the job stands.
    pub status: JobStatus,
    /// Which objects are done.
    pub progress: Progress,
}

/// The same fields as [`JobRecord`], borrowed, for encoding without a clone. Must stay in
/// the same order (a unit test checks that both encode alike).
#[derive(Serialize)]
pub(crate) struct JobRecordRef<'a> {
    pub(crate) epoch: u64,
    pub(crate) generation: u64,
    pub(crate) job: &'a JobId,
    pub(crate) plan: &'a MigrationPlan,
    pub(crate) status: JobStatus,
    pub(crate) progress: &'a Progress,
}

impl JobRecord {
    pub(crate) fn as_ref(&self) -> JobRecordRef<'_> {
        JobRecordRef {
            epoch: self.epoch,
            generation: self.generation,
            job: &self.job,
            plan: &self.plan,
            status: self.status,
            progress: &self.progress,
        }
    }
}

/// The hasher of a record's key sets ([`Progress::done_above`], [`Progress::copying`],
/// [`Progress::flips`]): seeded per process, since keys come from clients, and several times
/// faster than std's SipHash on short keys (every object moved passes through each set).
pub type KeyHasher = foldhash::quality::RandomState;

/// Which objects of a job are done, and the counters.
///
/// Every key `<=` [`watermark`](Progress::watermark) is done; above it, the keys in
/// [`done_above`](Progress::done_above) are done (a small set: at most the objects in flight
/// when the watermark could not move, since objects finish out of order). An object is
/// recorded done only after its last step (SPEC I4). Failed objects are kept with their
/// attempts and last error so `retry-failed` can run them again; the watermark may pass them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Every key up to and including this one is done; `None`: no prefix is done yet.
    pub watermark: Option<ObjectKey>,
    /// Keys above the watermark that are done. A hash set, as [`flips`](Progress::flips) is
    /// a hash map: each object moved goes in, and out again when the watermark passes it
    /// (a B-tree's ordered insert cost ~1,200 instructions an object).
    pub done_above: HashSet<ObjectKey, KeyHasher>,
    /// Objects done (skipped ones included).
    pub done_objects: u64,
    /// Bytes of the objects done.
    pub done_bytes: u64,
    /// Objects skipped because the source vanished (SPEC I3); counted in `done_objects` too.
    pub skipped_objects: u64,
    /// Objects that failed, by key.
    pub failed: BTreeMap<ObjectKey, Failure>,
    /// The flip journal: objects whose flip was (or is about to be) made and that are not
    /// recorded done yet, with the digest of the copy the flip points reads at. An entry is
    /// written (and made durable) before the flip it announces, so after a crash the engine
    /// knows which keys may have been served from the target (SPEC I2, I3). Added in format
    /// version 2; empty in records of version 1. A hash map (every object moved goes in and
    /// out of it, and each save copies it): no order is kept, and none is encoded.
    pub flips: HashMap<ObjectKey, FlipRecord, KeyHasher>,
    /// Copy intents: objects whose copy may have begun writing the target and whose end is
    /// not recorded yet (a small set: at most the objects dispatched ahead of the saves). An
    /// intent is durable before its copy begins, so after a crash the engine knows every
    /// copy the stopped run may have left on the target (SPEC I8), and takes each up again.
    /// Added in format version 3; empty in older records. A hash set, as
    /// [`flips`](Progress::flips) is a hash map.
    pub copying: HashSet<ObjectKey, KeyHasher>,
    /// Keys of the job's selection the target held before the job began, and that the job
    /// has not copied over since (a copy intent takes a key out). A resume forwards none of
    /// them: their content is not the job's (SPEC I3). Empty unless the target already held
    /// data in the selection. Added in format version 4; empty in older records.
    pub preexisting: BTreeSet<ObjectKey>,
    /// Uploads in parts under way: objects large enough to be copied part by part, with the
    /// target store's upload and the parts it holds, so that a resumed run sends only the
    /// parts missing (SPEC I4 inside one object). An entry goes when its object is done or
    /// its upload is aborted; a cancelled or forgotten job aborts those it still has. Added
    /// in format version 9; empty in older records.
    pub uploads: BTreeMap<ObjectKey, UploadRecord>,
}

/// One entry of [`Progress::uploads`]: an upload in parts of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The target store's id of the upload.
    pub upload: String,
    /// The version of the source the parts were read from: a source that changed since
    /// makes the parts worthless.
    pub version: String,
    /// The size of every part but the last.
    pub part_size: u64,
    /// The target store's tags of the parts it holds: parts 1, 2, … in order.
    pub parts: Vec<String>,
}

/// One entry of [`Progress::flips`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlipRecord {
    /// BLAKE3 of the bytes the copy wrote to the target.
    pub digest: [u8; 32],
    /// The flip happened and the target was synced after it: the target serves the key, and
    /// the source may be cleaned up. Before that, the entry is an intent: the flip may or may
    /// not have happened, and the stores' contents against `digest` tell which.
    pub committed: bool,
}

/// An object that failed: how often it was tried and why it failed last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Attempts made.
    pub attempts: u32,
    /// The last error, as text.
    pub last_error: String,
    /// What kind of failure it was (added in format version 5; older records load with
    /// [`FailureKind::Other`]).
    pub kind: FailureKind,
}

/// One change to a job's progress, for [`Checkpointer::record`](crate::Checkpointer::record)
/// and [`Progress::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressUpdate {
    /// The object finished its last step.
    Done {
        /// The object.
        key: ObjectKey,
        /// Its size.
        bytes: u64,
    },
    /// The object vanished from the source during the copy; nothing to move.
    Skipped {
        /// The object.
        key: ObjectKey,
    },
    /// The object failed for good (its retries are spent).
    Failed {
        /// The object.
        key: ObjectKey,
        /// Attempts made.
        attempts: u32,
        /// The last error, as text.
        error: String,
        /// What kind of failure it was.
        kind: FailureKind,
    },
    /// Every key up to and including this one is done.
    Watermark(ObjectKey),
    /// The object's copy (with `digest`) is about to be flipped to the target: journal it
    /// before the flip (an intent; replaces an earlier one of the same key).
    FlipIntent {
        /// The object.
        key: ObjectKey,
        /// BLAKE3 of the copy on the target.
        digest: [u8; 32],
    },
    /// The object's flip happened and the target was synced after it.
    FlipCommitted {
        /// The object.
        key: ObjectKey,
    },
    /// The object's intent is void: the flip was refused or abandoned, reads stay on the
    /// source.
    FlipDropped {
        /// The object.
        key: ObjectKey,
    },
    /// The object's committed flip is undone: the target was found to hold exactly the
    /// flipped copy still, and the key goes back to being served by its source, whose
    /// content changed since (a retry of an object whose source changed after its flip). The
    /// journal entry goes, committed or not.
    FlipRolledBack {
        /// The object.
        key: ObjectKey,
    },
    /// The object's copy may begin: journal it before the copy writes the target.
    CopyIntent {
        /// The object.
        key: ObjectKey,
    },
    /// The object's copy intent is void: nothing of the copy is left on the target (it was
    /// never written, or it was removed when the copy was rolled back).
    CopyDropped {
        /// The object.
        key: ObjectKey,
    },
    /// An upload in parts of the object began (replaces an earlier one of the same key).
    UploadStarted {
        /// The object.
        key: ObjectKey,
        /// The target store's id of the upload.
        upload: String,
        /// The source version read.
        version: String,
        /// The size of every part but the last.
        part_size: u64,
    },
    /// Part `part` (from 1) of the object's upload is stored on the target with `tag`.
    /// Ignored unless it is the part after the last one recorded.
    UploadPart {
        /// The object.
        key: ObjectKey,
        /// The part's number.
        part: u32,
        /// The target store's tag of it.
        tag: String,
    },
    /// The object's upload is over: completed or aborted.
    UploadEnded {
        /// The object.
        key: ObjectKey,
    },
}

impl ProgressUpdate {
    /// Whether the update finishes an object (counts towards the save interval).
    pub fn finishes_object(&self) -> bool {
        matches!(
            self,
            ProgressUpdate::Done { .. }
                | ProgressUpdate::Skipped { .. }
                | ProgressUpdate::Failed { .. }
        )
    }
}

impl Progress {
    /// How many of the failed objects failed because their source kept changing
    /// ([`FailureKind::SourceChanged`]).
    pub fn changed_objects(&self) -> u64 {
        self.failed
            .values()
            .filter(|failure| failure.kind == FailureKind::SourceChanged)
            .count() as u64
    }

    /// Whether `key` is recorded done.
    pub fn is_done(&self, key: &ObjectKey) -> bool {
        self.watermark.as_ref().is_some_and(|w| key <= w) || self.done_above.contains(key)
    }

    /// Records `key` done with `bytes`; a retried failure is no longer failed, and its flip
    /// journal entry goes.
    pub fn mark_done(&mut self, key: ObjectKey, bytes: u64) {
        self.failed.remove(&key);
        self.flips.remove(&key);
        self.copying.remove(&key);
        self.uploads.remove(&key);
        self.done_objects += 1;
        self.done_bytes += bytes;
        if self.watermark.as_ref().is_none_or(|w| &key > w) {
            self.done_above.insert(key);
        }
    }

    /// Records `key` skipped (done, nothing moved).
    pub fn mark_skipped(&mut self, key: ObjectKey) {
        self.skipped_objects += 1;
        self.mark_done(key, 0);
    }

    /// Records `key` failed after `attempts` with `error`. A committed flip stays journaled
    /// (the target still serves the key); an uncommitted intent is void.
    pub fn mark_failed(&mut self, key: ObjectKey, attempts: u32, error: String, kind: FailureKind) {
        if self.flips.get(&key).is_some_and(|f| !f.committed) {
            self.flips.remove(&key);
        }
        // A failed object is accounted for by its failure: its copy, if any, is not taken
        // up again unless the object is retried.
        self.copying.remove(&key);
        self.failed.insert(
            key,
            Failure {
                attempts,
                last_error: error,
                kind,
            },
        );
    }

    /// Moves the watermark up to `key` (never down) and drops the keys it now covers from
    /// [`done_above`](Progress::done_above).
    pub fn advance_watermark(&mut self, key: ObjectKey) {
        if self.watermark.as_ref().is_some_and(|w| &key <= w) {
            return;
        }
        self.done_above.retain(|done| done > &key);
        self.watermark = Some(key);
    }

    /// Applies one update.
    pub fn apply(&mut self, update: ProgressUpdate) {
        match update {
            ProgressUpdate::Done { key, bytes } => self.mark_done(key, bytes),
            ProgressUpdate::Skipped { key } => self.mark_skipped(key),
            ProgressUpdate::Failed {
                key,
                attempts,
                error,
                kind,
            } => self.mark_failed(key, attempts, error, kind),
            ProgressUpdate::Watermark(key) => self.advance_watermark(key),
            ProgressUpdate::FlipIntent { key, digest } => {
                self.flips.insert(
                    key,
                    FlipRecord {
                        digest,
                        committed: false,
                    },
                );
            }
            ProgressUpdate::FlipCommitted { key } => {
                if let Some(flip) = self.flips.get_mut(&key) {
                    flip.committed = true;
                }
            }
            ProgressUpdate::FlipDropped { key } => {
                if self.flips.get(&key).is_some_and(|f| !f.committed) {
                    self.flips.remove(&key);
                }
            }
            ProgressUpdate::FlipRolledBack { key } => {
                self.flips.remove(&key);
            }
            ProgressUpdate::CopyIntent { key } => {
                // The copy overwrites what the target held: from now on the key's content
                // there is the job's.
                self.preexisting.remove(&key);
                self.copying.insert(key);
            }
            ProgressUpdate::CopyDropped { key } => {
                self.copying.remove(&key);
            }
            ProgressUpdate::UploadStarted {
                key,
                upload,
                version,
                part_size,
            } => {
                let record = UploadRecord {
                    upload,
                    version,
                    part_size,
                    parts: Vec::new(),
                };
                self.uploads.insert(key, record);
            }
            ProgressUpdate::UploadPart { key, part, tag } => {
                if let Some(record) = self.uploads.get_mut(&key)
                    && record.parts.len() + 1 == part as usize
                {
                    record.parts.push(tag);
                }
            }
            ProgressUpdate::UploadEnded { key } => {
                self.uploads.remove(&key);
            }
        }
    }
}

/// Proof of ownership of a job at one owner epoch, from
/// [`CheckpointStore::acquire`](crate::CheckpointStore::acquire).
///
/// Saves carry it; the store refuses a lease whose epoch is not the job's current one
/// (SPEC I6). Cloning it does not make a second owner: clones share the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub(crate) job: JobId,
    pub(crate) epoch: u64,
}

impl Lease {
    /// The job.
    pub fn job(&self) -> &JobId {
        &self.job
    }

    /// The owner epoch this lease was granted at.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Who holds a job's timed lease in a [`LeasedStore`](crate::LeasedStore), and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// The holder as it named itself: `worker pid 4242 on host-a`.
    pub holder: String,
    /// When the lease ends unless renewed, in milliseconds since the Unix epoch, by the
    /// holder's clock.
    pub until_ms: u64,
}

/// What [`CheckpointStore::acquire`](crate::CheckpointStore::acquire) returns: the lease, the
/// record as of the acquire (with the new epoch) and any warnings from reading it.
#[derive(Debug)]
pub struct Acquired {
    /// The lease; pass it to every save.
    pub lease: Lease,
    /// The record, with the new epoch: resume from its progress.
    pub record: JobRecord,
    /// Things the caller should log (e.g. a fallback to the previous generation).
    pub warnings: Vec<Warning>,
}

/// What [`CheckpointStore::load`](crate::CheckpointStore::load) returns.
#[derive(Debug)]
pub struct Loaded {
    /// The record.
    pub record: JobRecord,
    /// Things the caller should log (e.g. a fallback to the previous generation).
    pub warnings: Vec<Warning>,
}

/// Something a read got past but the caller should know (and log).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// One generation of a record was unreadable, and the other one was used. When the
    /// unreadable one was the newest, progress since the previous save is re-done (I4 holds:
    /// nothing is skipped).
    UsedPreviousGeneration {
        /// The unreadable file.
        unreadable: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// The file that was used.
        used: PathBuf,
        /// The generation that was used.
        generation: u64,
    },
    /// The job's previous holder let its timed lease run out (it died, hung or lost the
    /// network) and this acquire took the job over: work the holder did since its last save
    /// is done again (I4).
    TookOver {
        /// The previous holder, as it named itself.
        previous: String,
        /// How long ago its lease ended, in milliseconds, by this process's clock.
        expired_ms_ago: u64,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::UsedPreviousGeneration {
                unreadable,
                reason,
                used,
                generation,
            } => write!(
                f,
                "checkpoint {} is unreadable ({reason}); using {} (generation {generation})",
                unreadable.display(),
                used.display()
            ),
            Warning::TookOver {
                previous,
                expired_ms_ago,
            } => write!(
                f,
                "took the job over from {previous}, whose lease ran out {:.1} s ago",
                *expired_ms_ago as f64 / 1000.0
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> ObjectKey {
        ObjectKey::new(k).unwrap()
    }

    #[test]
    fn i4_watermark_covers_done_keys_and_prunes_done_set() {
        let mut p = Progress::default();
        p.mark_done(key("b"), 10);
        p.mark_done(key("d"), 10);
        p.mark_skipped(key("a"));
        assert!(p.is_done(&key("a")) && p.is_done(&key("b")) && !p.is_done(&key("c")));
        p.advance_watermark(key("b"));
        assert_eq!(p.done_above.iter().collect::<Vec<_>>(), vec![&key("d")]);
        assert!(p.is_done(&key("a")) && !p.is_done(&key("c")) && p.is_done(&key("d")));
        // Never moves down.
        p.advance_watermark(key("a"));
        assert_eq!(p.watermark, Some(key("b")));
        // Done below the watermark does not grow the set.
        p.mark_done(key("a0"), 1);
        assert_eq!(p.done_above.len(), 1);
        assert_eq!(
            (p.done_objects, p.done_bytes, p.skipped_objects),
            (4, 21, 1)
        );
    }

    #[test]
    fn retried_failure_is_no_longer_failed() {
        let mut p = Progress::default();
        p.apply(ProgressUpdate::Failed {
            key: key("x"),
            attempts: 3,
            error: "timeout".into(),
            kind: FailureKind::Transient,
        });
        assert_eq!(p.failed[&key("x")].attempts, 3);
        p.apply(ProgressUpdate::Done {
            key: key("x"),
            bytes: 5,
        });
        assert!(p.failed.is_empty());
    }

    #[test]
    fn copy_intents_last_until_the_object_ends_or_the_copy_is_dropped() {
        let mut p = Progress::default();
        for k in ["a", "b", "c", "d"] {
            p.apply(ProgressUpdate::CopyIntent { key: key(k) });
        }
        p.apply(ProgressUpdate::Done {
            key: key("a"),
            bytes: 1,
        });
        p.apply(ProgressUpdate::Skipped { key: key("b") });
        p.apply(ProgressUpdate::Failed {
            key: key("c"),
            attempts: 1,
            error: "x".into(),
            kind: FailureKind::Transient,
        });
        assert_eq!(p.copying.iter().collect::<Vec<_>>(), vec![&key("d")]);
        p.apply(ProgressUpdate::CopyDropped { key: key("d") });
        assert!(p.copying.is_empty());
    }

    #[test]
    fn flip_journal_lifecycle() {
        let mut p = Progress::default();
        let intent = |k: &str, d: u8| ProgressUpdate::FlipIntent {
            key: key(k),
            digest: [d; 32],
        };
        // An intent replaces an earlier one; dropped intents go; committed ones cannot be
        // dropped.
        p.apply(intent("a", 1));
        p.apply(intent("a", 2));
        assert_eq!(p.flips[&key("a")].digest, [2; 32]);
        p.apply(ProgressUpdate::FlipDropped { key: key("a") });
        assert!(p.flips.is_empty());
        p.apply(intent("a", 3));
        p.apply(ProgressUpdate::FlipCommitted { key: key("a") });
        p.apply(ProgressUpdate::FlipDropped { key: key("a") });
        assert!(p.flips[&key("a")].committed);
        // Committing an unknown key records nothing.
        p.apply(ProgressUpdate::FlipCommitted { key: key("z") });
        assert!(!p.flips.contains_key(&key("z")));
        // A failure keeps a committed flip (the target serves the key) and voids an intent.
        p.apply(intent("b", 4));
        for k in ["a", "b"] {
            p.apply(ProgressUpdate::Failed {
                key: key(k),
                attempts: 1,
                error: "hook".into(),
                kind: FailureKind::Transient,
            });
        }
        assert_eq!(p.flips.keys().collect::<Vec<_>>(), vec![&key("a")]);
        // Done (and skipped) end the journal entry.
        p.apply(ProgressUpdate::Done {
            key: key("a"),
            bytes: 1,
        });
        p.apply(intent("c", 5));
        p.apply(ProgressUpdate::Skipped { key: key("c") });
        assert!(p.flips.is_empty());
        assert!(!intent("c", 5).finishes_object());
    }
}
