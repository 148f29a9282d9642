//! `FileStore` tests that need its insides: torn generations, poisoning, simulated crashes at
//! every I/O step.

use std::path::Path;

use ferry_types::{JobId, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};

use super::io::fault::{Fault, FaultIo};
use super::*;
use crate::error::CorruptReason;

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

fn plan() -> MigrationPlan {
    MigrationPlan::new(
        NodeId::new("a").unwrap(),
        NodeId::new("b").unwrap(),
        ObjectSelection::all(),
    )
}

fn progress(n: u64) -> Progress {
    let mut p = Progress::default();
    p.advance_watermark(ObjectKey::new(format!("k{n:06}")).unwrap());
    p.done_objects = n;
    p.done_bytes = n * 100;
    p
}

/// The slot files of `job`, newest generation first.
fn slots_newest_first(store: &FileStore, job: &JobId) -> [PathBuf; 2] {
    let [a, b] = store.record_paths(job);
    let generation = |p: &Path| {
        fs::read(p)
            .ok()
            .and_then(|b| envelope::decode(&b).ok())
            .map(|r| r.generation)
    };
    if generation(&a) >= generation(&b) {
        [a, b]
    } else {
        [b, a]
    }
}

fn tear(path: &Path) {
    let bytes = fs::read(path).unwrap();
    fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

/// A job with two saved generations: progress 1, then progress 2 (the newest).
async fn two_generations(store: &FileStore, job: &JobId) -> Lease {
    store.create(job, &plan()).await.unwrap();
    let lease = store.acquire(job).await.unwrap().lease;
    store
        .save(&lease, JobStatus::Running, progress(1).into())
        .await
        .unwrap();
    store
        .save(&lease, JobStatus::Running, progress(2).into())
        .await
        .unwrap();
    lease
}

#[tokio::test]
async fn i5_torn_newest_falls_back_to_previous_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let job = id("j");
    let lease = two_generations(&store, &job).await;
    let [newest, previous] = slots_newest_first(&store, &job);
    tear(&newest);

    let loaded = store
        .load(&job)
        .await
        .unwrap()
        .expect("previous generation");
    assert_eq!(loaded.record.progress, progress(1));
    match loaded.warnings.as_slice() {
        [
            Warning::UsedPreviousGeneration {
                unreadable, used, ..
            },
        ] => {
            assert_eq!((unreadable, used), (&newest, &previous));
        }
        other => panic!("fallback not reported: {other:?}"),
    }
    // The owner's epoch survives the fallback (acquire wrote it to both slots).
    assert_eq!(loaded.record.epoch, lease.epoch());
}

#[tokio::test]
async fn i5_both_generations_torn_is_corrupt_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let job = id("j");
    let lease = two_generations(&store, &job).await;
    store.release(&lease).await.unwrap();
    let [a, b] = store.record_paths(&job);
    tear(&a);
    tear(&b);
    match store.load(&job).await {
        Err(Error::Corrupt { path, reason }) => {
            assert!(path == a || path == b, "{path:?}");
            assert!(
                matches!(reason, CorruptReason::Truncated { .. }),
                "{reason:?}"
            );
            let msg = Error::Corrupt {
                path: path.clone(),
                reason,
            }
            .to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        other => panic!("not corrupt: {other:?}"),
    }
    // Never "start over": acquire refuses too.
    assert!(matches!(
        store.acquire(&job).await,
        Err(Error::Corrupt { .. })
    ));
}

#[tokio::test]
async fn i5_single_torn_generation_is_corrupt_not_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let job = id("j");
    store.create(&job, &plan()).await.unwrap();
    let [newest, _] = slots_newest_first(&store, &job);
    tear(&newest);
    assert!(matches!(store.load(&job).await, Err(Error::Corrupt { path, .. }) if path == newest));
    fs::write(&newest, b"").unwrap();
    assert!(matches!(store.load(&job).await, Err(Error::Corrupt { .. })));
}

#[tokio::test]
async fn newer_format_in_either_slot_is_unsupported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let job = id("j");
    two_generations(&store, &job).await;
    let [newest, _] = slots_newest_first(&store, &job);
    let mut bytes = fs::read(&newest).unwrap();
    bytes[4..6].copy_from_slice(&(envelope::FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[0..12]), &bytes[16..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    fs::write(&newest, bytes).unwrap();
    match store.load(&job).await {
        Err(Error::UnsupportedVersion {
            path,
            found,
            supported,
        }) => {
            assert_eq!(path, newest);
            assert_eq!(
                (found, supported),
                (envelope::FORMAT_VERSION + 1, envelope::FORMAT_VERSION)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn list_ignores_files_that_are_not_job_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    store.create(&id("ok.1"), &plan()).await.unwrap();
    for stray in [
        ".hidden.0.ckpt",
        "bad name.0.ckpt",
        "x.2.ckpt",
        "y.lock",
        ".ok.1.7.0.tmp",
    ] {
        fs::write(dir.path().join(stray), b"junk").unwrap();
    }
    assert_eq!(store.list().await.unwrap(), vec![id("ok.1")]);
}

#[tokio::test]
async fn acquire_removes_temp_files_of_dead_saves() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    store.create(&id("j"), &plan()).await.unwrap();
    let stale = dir.path().join(".j.999999.3.tmp");
    let foreign = dir.path().join(".j.x.tmp");
    fs::write(&stale, b"half a record").unwrap();
    fs::write(&foreign, b"not ours").unwrap();
    store.acquire(&id("j")).await.unwrap();
    assert!(!stale.exists());
    assert!(foreign.exists());
}

#[tokio::test]
async fn i6_save_refused_when_another_writer_moved_the_epoch_on_disk() {
    // Someone deleted the lock file by hand, so a second store could lock a new one: the
    // epoch on disk still fences the first owner.
    let dir = tempfile::tempdir().unwrap();
    let first = FileStore::open(dir.path()).unwrap();
    let job = id("j");
    first.create(&job, &plan()).await.unwrap();
    let old = first.acquire(&job).await.unwrap().lease;
    fs::remove_file(dir.path().join("j.lock")).unwrap();
    let second = FileStore::open(dir.path()).unwrap();
    let new = second.acquire(&job).await.unwrap().lease;
    assert_eq!(new.epoch(), 2);
    assert!(matches!(
        first
            .save(&old, JobStatus::Running, progress(9).into())
            .await,
        Err(Error::StaleEpoch {
            epoch: 1,
            current: 2,
            ..
        })
    ));
    assert!(matches!(
        first.renew(&old).await,
        Err(Error::StaleEpoch { .. })
    ));
    second
        .save(&new, JobStatus::Running, progress(3).into())
        .await
        .unwrap();
    assert_eq!(
        second.load(&job).await.unwrap().unwrap().record.progress,
        progress(3)
    );
}

#[tokio::test]
async fn second_store_in_one_process_is_refused_naming_this_pid() {
    let dir = tempfile::tempdir().unwrap();
    let first = FileStore::open(dir.path()).unwrap();
    let second = FileStore::open(dir.path()).unwrap();
    let job = id("j");
    first.create(&job, &plan()).await.unwrap();
    let lease = first.acquire(&job).await.unwrap().lease;
    match second.acquire(&job).await {
        Err(Error::Locked { holder, .. }) => {
            assert!(
                holder.contains(&format!("pid {}", std::process::id())),
                "{holder}"
            );
            assert!(holder.contains("epoch 1"), "{holder}");
        }
        other => panic!("{other:?}"),
    }
    first.release(&lease).await.unwrap();
    assert_eq!(second.acquire(&job).await.unwrap().lease.epoch(), 2);
}

/// The steps of a create: write, fsync, rename, fsync directory.
/// The barriers this system has: both on Linux 5.8 and later.
fn sync_modes() -> Vec<FileSync> {
    if syncfs_reports_errors() {
        vec![FileSync::Fsync, FileSync::Syncfs]
    } else {
        vec![FileSync::Fsync]
    }
}

/// The steps of a create are the same for both barriers: write, barrier, rename, barrier.
const FSYNC_OF_CREATE: u64 = 1;
const DIR_FSYNC_OF_CREATE: u64 = 3;

#[tokio::test]
async fn failed_fsync_poisons_the_store() {
    for (sync, step) in sync_modes()
        .into_iter()
        .flat_map(|sync| [(sync, FSYNC_OF_CREATE), (sync, DIR_FSYNC_OF_CREATE)])
    {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(FaultIo::new(step, Fault::Fail));
        let store = FileStore::with_io(dir.path(), io, sync).unwrap();
        let job = id("j");
        match store.create(&job, &plan()).await {
            Err(Error::Io { op, .. }) => {
                assert!(op.starts_with("fsync") || op == "syncfs", "{op}")
            }
            other => panic!("{sync:?} step {step}: {other:?}"),
        }
        assert!(store.is_poisoned());
        // No silent retry: every later call fails, reads included.
        assert!(matches!(
            store.create(&id("k"), &plan()).await,
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(
            store.load(&job).await,
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(store.list().await, Err(Error::Poisoned { .. })));
        let err = store.acquire(&job).await.unwrap_err();
        assert!(err.to_string().contains("restart the process"), "{err}");
    }
}

#[tokio::test]
async fn failed_write_is_an_error_but_does_not_poison() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultIo::new(0, Fault::Fail));
    let store = FileStore::with_io(dir.path(), io, FileSync::Fsync).unwrap();
    assert!(matches!(
        store.create(&id("j"), &plan()).await,
        Err(Error::Io { op: "write", .. })
    ));
    assert!(!store.is_poisoned());
    store.create(&id("j"), &plan()).await.unwrap();
    // The failed attempt left no temp file behind.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// What the sequence had done when it stopped: the state last acknowledged and the one in
/// flight, as (status, progress, epoch at least).
#[derive(Debug, Clone, PartialEq)]
struct State {
    status: JobStatus,
    progress: Progress,
    epoch: u64,
}

/// Runs create, acquire and three saves on `store`, stopping at the first error. Returns
/// the states acknowledged, in order, and the one that was in flight when it stopped.
async fn save_sequence(store: &FileStore, job: &JobId) -> (Vec<State>, Option<State>) {
    let mut acked = Vec::new();
    let created = State {
        status: JobStatus::Pending,
        progress: Progress::default(),
        epoch: 0,
    };
    if store.create(job, &plan()).await.is_err() {
        return (acked, Some(created));
    }
    acked.push(created.clone());
    let lease = match store.acquire(job).await {
        Ok(a) => a.lease,
        Err(_) => {
            return (
                acked,
                Some(State {
                    epoch: 1,
                    ..created
                }),
            );
        }
    };
    acked.push(State {
        epoch: 1,
        ..created
    });
    for n in 1..=3 {
        let next = State {
            status: JobStatus::Running,
            progress: progress(n),
            epoch: 1,
        };
        if store
            .save(&lease, JobStatus::Running, progress(n).into())
            .await
            .is_err()
        {
            return (acked, Some(next));
        }
        acked.push(next);
    }
    (acked, None)
}

#[tokio::test]
async fn i5_simulated_crash_at_every_io_step_leaves_old_or_new_record() {
    for sync in sync_modes() {
        crash_at_every_io_step(sync).await;
    }
}

async fn crash_at_every_io_step(sync: FileSync) {
    let job = id("crash");
    // Count the steps of a full run.
    let total = {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(FaultIo::new(u64::MAX, Fault::Crash));
        let store = FileStore::with_io(dir.path(), Arc::clone(&io) as Arc<dyn Io>, sync).unwrap();
        let (acked, in_flight) = save_sequence(&store, &job).await;
        assert_eq!((acked.len(), in_flight), (5, None));
        io.steps()
    };
    // A create is four steps, every later write two (write, fsync) or three (a new slot).
    assert!(total >= 4 + 4 * 2, "{total} steps");
    for at in 0..total {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(FaultIo::new(at, Fault::Crash));
        let store = FileStore::with_io(dir.path(), io, sync).unwrap();
        let (acked, in_flight) = save_sequence(&store, &job).await;
        assert!(in_flight.is_some(), "crash at step {at} went unnoticed");
        drop(store); // the process is gone: its locks go with it

        let reopened = FileStore::open(dir.path()).unwrap();
        let loaded = reopened
            .load(&job)
            .await
            .unwrap_or_else(|e| panic!("{sync:?}, crash at step {at}: record unreadable: {e}"));
        let Some(loaded) = loaded else {
            assert!(
                acked.is_empty(),
                "crash at step {at}: acknowledged record lost"
            );
            continue;
        };
        let got = State {
            status: loaded.record.status,
            progress: loaded.record.progress.clone(),
            epoch: loaded.record.epoch,
        };
        let last = acked.last();
        // Rename before fsync: a crash may tear the slot being written; `load` then falls
        // back to the other slot, with a warning, and what it finds must still be the last
        // acknowledged state or the one in flight, never an older one.
        assert!(
            Some(&got) == last || Some(&got) == in_flight.as_ref(),
            "{sync:?}, crash at step {at}: got {got:?}, last acknowledged {last:?}, in flight {in_flight:?}"
        );
        // The job can be taken over at once, and its epoch only grows.
        let acquired = reopened.acquire(&job).await.unwrap();
        assert!(acquired.lease.epoch() > last.map_or(0, |s| s.epoch));
    }
}
