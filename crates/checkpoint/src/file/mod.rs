//! `FileStore`: one directory, a few small files per job.

mod io;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_types::{JobId, JobStatus, MigrationPlan, PlanOptions};
use parking_lot::Mutex;

use self::io::{Io, RealIo};
use crate::envelope::{self, HEAD_PREFIX_LEN};
use crate::error::{Error, Result};
use crate::kv::{check_transition, decode_at, new_record};
use crate::record::{Acquired, JobRecord, JobRecordRef, Lease, Loaded, Progress, Warning};
use crate::{BoxFuture, CheckpointStore};

/// The default checkpoint store: a directory with a few small files per job.
///
/// # Files
/// For a job `J` (a [`JobId`], so a safe file name: `[A-Za-z0-9._-]{1,128}`, no leading `.`):
/// - `J.0.ckpt` and `J.1.ckpt`: the two newest generations of the record, generation `g`
///   in slot `g % 2`, each one [envelope](crate::envelope). The newest readable one wins.
/// - `J.lock`: the OS lock file of the owner; it holds `pid=…`, `host=…`, `epoch=…` lines,
///   for the message a second owner gets. It is never deleted (deleting a lock file races
///   with a concurrent acquire).
/// - `.J.<pid>.<n>.tmp`: a save under way. A hidden name, so it can never be a job's file.
///
/// # Saving
/// A job's first record is written the textbook way: temp file, fsync, rename, fsync the
/// directory, so a crash leaves no record rather than a torn one. After that the other slot
/// always holds the previous generation, whole and durable, and a save is: temp file, rename
/// over the older slot, then the barrier [`FileSync`] chooses (fsync the file and the
/// directory, or one `syncfs` of the file system; the default is `syncfs` on Linux 5.8 and
/// later), returning after it.
/// A process killed at any point leaves the previous generation or the new one, whole (the
/// rename is atomic). A power cut before the fsyncs may leave the renamed slot torn; it
/// fails its CRC and `load` takes the other slot, the previous generation (I5). Renaming
/// before the fsync lets one journal commit carry the data and the rename, where
/// fsync-then-rename costs two on ext4 (the README has the figures of both).
/// When the newest generation is unreadable (a power cut mid-save, a disk that lied about a
/// flush, a bit flip), [`load`](CheckpointStore::load) falls back to the other one and says so
/// in a [`Warning`]; when neither is readable it fails with [`Error::Corrupt`] naming the file.
/// A failed fsync poisons the store: every later call fails with [`Error::Poisoned`], since
/// after a failed fsync the kernel may have dropped the dirty pages and a retry could report
/// success for data that is not on disk (PostgreSQL's "fsyncgate").
///
/// All file work runs on tokio's blocking threads (`spawn_blocking`); the methods must be
/// called within a tokio runtime.
///
/// # Ownership
/// [`acquire`](CheckpointStore::acquire) takes an exclusive OS lock on `J.lock`
/// (`File::try_lock`, `flock` on Linux) without waiting: when another process (or another
/// `FileStore` in this one) holds it, the call fails at once with [`Error::Locked`] naming the
/// holder's pid and host. The kernel drops the lock when its process dies, even by SIGKILL,
/// so there is no lease to wait out. The owner epoch is bumped and written to both slots, so
/// even a fallback to the previous generation keeps it; every save checks it against the
/// newest generation on disk (I6). OS locks are advisory and not reliable on network file
/// systems: keep the directory on a local disk.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

/// How a [`FileStore`] makes a save durable before it returns.
///
/// Both keep the save order of [`FileStore`] (temp file, rename, barrier) and its guarantee:
/// when a save returns, the new generation and its rename are on disk. Measured on this
/// project's machines (figures and command in the crate README): a save with [`Fsync`] costs
/// about 1.5–1.7× a raw write+fsync of the same bytes, since it needs two device flushes (the
/// file's and the directory's) where the raw write needs one; with [`Syncfs`] one flush
/// covers both, about 1.0×.
///
/// [`Fsync`]: FileSync::Fsync
/// [`Syncfs`]: FileSync::Syncfs
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileSync {
    /// `fsync` the record file, then `fsync` the directory (the textbook sequence). Waits
    /// only for this store's files, whatever else the file system is doing.
    Fsync,
    /// One `syncfs(2)` of the directory's file system after the rename. One device flush
    /// instead of two, but it also writes out whatever else is dirty on that file system:
    /// keep the directory off a file system that other programs fill with writes, or choose
    /// [`FileSync::Fsync`]. Linux only, and only from kernel 5.8 on, where `syncfs` reports
    /// write-back errors (so a failed flush poisons the store as a failed fsync does); on
    /// other systems and older kernels [`FileStore::open_with`] uses [`FileSync::Fsync`].
    Syncfs,
}

impl Default for FileSync {
    /// [`FileSync::Syncfs`] where it is available and reports errors, else [`FileSync::Fsync`].
    fn default() -> Self {
        if syncfs_reports_errors() {
            FileSync::Syncfs
        } else {
            FileSync::Fsync
        }
    }
}

/// Whether this is Linux 5.8 or later, where `syncfs(2)` returns write-back errors.
fn syncfs_reports_errors() -> bool {
    if !cfg!(any(target_os = "linux", target_os = "android")) {
        return false;
    }
    let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (5, 8)
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    io: Arc<dyn Io>,
    sync: FileSync,
    poison: Mutex<Option<String>>,
    jobs: Mutex<HashMap<JobId, Arc<Mutex<JobState>>>>,
    tmp_seq: AtomicU64,
}

#[derive(Debug, Default)]
struct JobState {
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    lock: File,
    epoch: u64,
    generation: u64,
    status: JobStatus,
    plan: MigrationPlan,
}

impl FileStore {
    /// Opens (creating it if needed) the store in `dir`.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created or is not a directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore> {
        FileStore::open_with(dir, FileSync::default())
    }

    /// Opens (creating it if needed) the store in `dir`, making saves durable with `sync`.
    /// [`FileSync::Syncfs`] where `syncfs(2)` is missing or does not report errors (not
    /// Linux, or Linux before 5.8) falls back to [`FileSync::Fsync`]; [`sync`](Self::sync)
    /// says which one is in use.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created or is not a directory.
    pub fn open_with(dir: impl AsRef<Path>, sync: FileSync) -> Result<FileStore> {
        let sync = match sync {
            FileSync::Syncfs if !syncfs_reports_errors() => FileSync::Fsync,
            sync => sync,
        };
        FileStore::with_io(dir.as_ref(), Arc::new(RealIo), sync)
    }

    fn with_io(dir: &Path, io: Arc<dyn Io>, sync: FileSync) -> Result<FileStore> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        Ok(FileStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                io,
                sync,
                poison: Mutex::new(None),
                jobs: Mutex::default(),
                tmp_seq: AtomicU64::new(0),
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// How saves are made durable.
    pub fn sync(&self) -> FileSync {
        self.inner.sync
    }

    /// The files holding `job`'s two generations, newest first when known: for tools and
    /// for error messages. The paths are built from a validated [`JobId`].
    pub fn record_paths(&self, job: &JobId) -> [PathBuf; 2] {
        [self.inner.slot(job, 0), self.inner.slot(job, 1)]
    }

    /// Whether an earlier fsync failure poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poison.lock().is_some()
    }

    async fn blocking<T, F>(&self, job: &JobId, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::task(job, e))?
    }
}

/// Who holds a job, from its lock file.
fn holder_text(lock: &mut File) -> String {
    let mut text = String::new();
    let _ = lock.rewind();
    let _ = lock.read_to_string(&mut text);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    match (field("pid"), field("host"), field("epoch")) {
        (Some(pid), host, epoch) => {
            let mut s = format!("pid {pid}");
            if pid == std::process::id().to_string() {
                s.push_str(" (this process)");
            }
            if let Some(host) = host {
                s.push_str(&format!(" on {host}"));
            }
            if let Some(epoch) = epoch {
                s.push_str(&format!(" (epoch {epoch})"));
            }
            s
        }
        _ => "another process (its lock file names no pid yet)".to_owned(),
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown host".to_owned())
}

/// One slot's content as read.
enum Slot {
    Missing,
    Ok(Box<JobRecord>),
    Bad(Error),
}

impl Inner {
    fn slot(&self, job: &JobId, n: u64) -> PathBuf {
        self.dir.join(format!("{job}.{}.ckpt", n % 2))
    }

    fn lock_path(&self, job: &JobId) -> PathBuf {
        self.dir.join(format!("{job}.lock"))
    }

    fn tmp_path(&self, job: &JobId) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!(".{job}.{}.{n}.tmp", std::process::id()))
    }

    fn check_poison(&self) -> Result<()> {
        match &*self.poison.lock() {
            None => Ok(()),
            Some(cause) => Err(Error::Poisoned {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
        }
    }

    fn poison(&self, what: &str, path: &Path, e: &std::io::Error) {
        let mut poison = self.poison.lock();
        if poison.is_none() {
            *poison = Some(format!("{what} {}: {e}", path.display()));
        }
    }

    fn job_state(&self, job: &JobId) -> Arc<Mutex<JobState>> {
        Arc::clone(self.jobs.lock().entry(job.clone()).or_default())
    }

    fn read_slot(&self, job: &JobId, n: u64) -> Slot {
        let path = self.slot(job, n);
        match self.io.read(&path, None) {
            Ok(None) => Slot::Missing,
            Ok(Some(bytes)) => match decode_at(&path, job, &bytes) {
                Ok(record) => Slot::Ok(Box::new(record)),
                Err(e) => Slot::Bad(e),
            },
            Err(e) => Slot::Bad(Error::io("read", path, e)),
        }
    }

    /// The newest readable generation, with a warning when the other one is unreadable.
    fn read_record(&self, job: &JobId) -> Result<Option<Loaded>> {
        let fatal = |e: &Error| matches!(e, Error::UnsupportedVersion { .. } | Error::Io { .. });
        let (record, warnings) = match (self.read_slot(job, 0), self.read_slot(job, 1)) {
            // A newer format is never skipped over for an older generation, and a read that
            // failed says nothing about the record.
            (Slot::Bad(e), _) | (_, Slot::Bad(e)) if fatal(&e) => return Err(e),
            (Slot::Missing, Slot::Missing) => return Ok(None),
            (Slot::Ok(x), Slot::Ok(y)) => {
                (if x.generation >= y.generation { *x } else { *y }, vec![])
            }
            (Slot::Ok(r), Slot::Missing) | (Slot::Missing, Slot::Ok(r)) => (*r, vec![]),
            (Slot::Ok(r), Slot::Bad(e)) | (Slot::Bad(e), Slot::Ok(r)) => {
                let warning = match e {
                    Error::Corrupt { path, reason } => Warning::UsedPreviousGeneration {
                        unreadable: path,
                        reason: reason.to_string(),
                        used: self.slot(job, r.generation),
                        generation: r.generation,
                    },
                    other => return Err(other),
                };
                (*r, vec![warning])
            }
            (Slot::Bad(e), Slot::Missing) | (Slot::Missing, Slot::Bad(e)) => return Err(e),
            (Slot::Bad(x), Slot::Bad(y)) => {
                // Name the file written last: the one that should have been readable.
                let modified = |e: &Error| match e {
                    Error::Corrupt { path, .. } => {
                        fs::metadata(path).and_then(|m| m.modified()).ok()
                    }
                    _ => None,
                };
                return Err(if modified(&y) > modified(&x) { y } else { x });
            }
        };
        Ok(Some(Loaded { record, warnings }))
    }

    /// Writes `bytes` as generation `generation` into its slot and returns once it is durable.
    ///
    /// `other_slot_valid` says whether the other slot holds the previous generation, whole
    /// and durable: then the file is made durable after the rename (see "Saving" on
    /// [`FileStore`]), else before it too. The barrier is the store's [`FileSync`]; a failed
    /// one poisons the store.
    fn write_generation(
        &self,
        job: &JobId,
        generation: u64,
        bytes: &[u8],
        other_slot_valid: bool,
    ) -> Result<()> {
        let tmp = self.tmp_path(job);
        if let Err(e) = self.io.write(&tmp, bytes) {
            let _ = self.io.remove(&tmp);
            return Err(Error::io("write", tmp, e));
        }
        if !other_slot_valid {
            // No previous generation to fall back to: the bytes are durable before the name.
            let synced = match self.sync {
                FileSync::Fsync => self.sync_file(&tmp),
                FileSync::Syncfs => self.sync_fs(),
            };
            if let Err(e) = synced {
                let _ = self.io.remove(&tmp);
                return Err(e);
            }
        }
        let slot = self.slot(job, generation);
        if let Err(e) = self.io.rename(&tmp, &slot) {
            let _ = self.io.remove(&tmp);
            return Err(Error::io("rename", tmp, e));
        }
        match self.sync {
            // One `syncfs` makes the bytes and the rename durable.
            FileSync::Syncfs => self.sync_fs(),
            FileSync::Fsync => {
                if other_slot_valid {
                    self.sync_file(&slot)?;
                }
                self.sync_dir()
            }
        }
    }

    /// fsyncs the file at `path`; a failure poisons the store.
    fn sync_file(&self, path: &Path) -> Result<()> {
        self.io.sync_file(path).map_err(|e| {
            self.poison("fsync", path, &e);
            Error::io("fsync", path, e)
        })
    }

    fn sync_fs(&self) -> Result<()> {
        self.io.sync_fs(&self.dir).map_err(|e| {
            self.poison("syncfs", &self.dir, &e);
            Error::io("syncfs", self.dir.clone(), e)
        })
    }

    fn sync_dir(&self) -> Result<()> {
        self.io.sync_dir(&self.dir).map_err(|e| {
            self.poison("fsync directory", &self.dir, &e);
            Error::io("fsync directory", self.dir.clone(), e)
        })
    }

    /// Takes `job`'s OS lock without waiting.
    fn lock(&self, job: &JobId) -> Result<File> {
        let path = self.lock_path(job);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(TryLockError::WouldBlock) => Err(Error::Locked {
                job: job.clone(),
                holder: holder_text(&mut file),
            }),
            Err(TryLockError::Error(e)) => Err(Error::io("lock", path, e)),
        }
    }

    fn refuse_if_held(&self, job: &JobId, state: &JobState) -> Result<()> {
        match &state.held {
            Some(held) => Err(Error::Locked {
                job: job.clone(),
                holder: format!(
                    "pid {} (this process, epoch {})",
                    std::process::id(),
                    held.epoch
                ),
            }),
            None => Ok(()),
        }
    }

    /// Removes temp files left by saves that never finished (their process died).
    fn remove_stale_tmps(&self, job: &JobId) {
        let prefix = format!(".{job}.");
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(rest) = name.strip_prefix(&prefix)
                && let Some(middle) = rest.strip_suffix(".tmp")
                && middle.split('.').count() == 2
                && middle
                    .split('.')
                    .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn create(&self, job: &JobId, plan: &MigrationPlan) -> Result<JobRecord> {
        self.check_poison()?;
        let record = new_record(job, plan)?;
        let state = self.job_state(job);
        let state = state.lock();
        if state.held.is_some() {
            return Err(Error::AlreadyExists { job: job.clone() });
        }
        let _lock = self.lock(job)?;
        let exists = |n| self.slot(job, n).symlink_metadata().is_ok();
        if exists(0) || exists(1) {
            return Err(Error::AlreadyExists { job: job.clone() });
        }
        let bytes = envelope::encode(&record)?;
        // The first record: no previous generation to fall back to.
        self.write_generation(job, record.generation, &bytes, false)?;
        Ok(record)
    }

    fn load(&self, job: &JobId) -> Result<Option<Loaded>> {
        self.check_poison()?;
        let state = self.job_state(job);
        let _state = state.lock();
        self.read_record(job)
    }

    fn list(&self) -> Result<Vec<JobId>> {
        self.check_poison()?;
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io("list", &self.dir, e))?;
        let mut jobs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(job) = name
                .strip_suffix(".0.ckpt")
                .or_else(|| name.strip_suffix(".1.ckpt"))
            else {
                continue;
            };
            // A file whose name is not a valid job id is not ours: skip it.
            if let Ok(job) = JobId::new(job) {
                jobs.push(job);
            }
        }
        jobs.sort();
        jobs.dedup();
        Ok(jobs)
    }

    fn delete(&self, job: &JobId) -> Result<bool> {
        self.check_poison()?;
        let state = self.job_state(job);
        let state = state.lock();
        self.refuse_if_held(job, &state)?;
        let _lock = self.lock(job)?;
        // The older generation first: a crash in between leaves the newest one, never the
        // older one alone.
        let generation = |n| match self.read_slot(job, n) {
            Slot::Ok(r) => Some(r.generation),
            _ => None,
        };
        let order = if generation(0) > generation(1) {
            [1, 0]
        } else {
            [0, 1]
        };
        let mut removed = false;
        for n in order {
            let path = self.slot(job, n);
            match self.io.remove(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", path, e)),
            }
        }
        self.remove_stale_tmps(job);
        if removed {
            self.sync_dir()?;
        }
        Ok(removed)
    }

    fn acquire(&self, job: &JobId) -> Result<Acquired> {
        self.check_poison()?;
        let state = self.job_state(job);
        let mut state = state.lock();
        self.refuse_if_held(job, &state)?;
        let mut lock = self.lock(job)?;
        let Some(Loaded {
            mut record,
            warnings,
        }) = self.read_record(job)?
        else {
            return Err(Error::NotFound { job: job.clone() });
        };
        self.remove_stale_tmps(job);
        // Both slots get the new epoch, so a fallback to the previous generation keeps it.
        record.epoch += 1;
        for _ in 0..2 {
            record.generation += 1;
            let bytes = envelope::encode(&record)?;
            // The other slot holds the generation just loaded, or the one just written.
            self.write_generation(job, record.generation, &bytes, true)?;
        }
        // Who holds it, for the message a second owner gets. Not fsynced: only informative.
        let info = format!(
            "pid={}\nhost={}\nepoch={}\n",
            std::process::id(),
            hostname(),
            record.epoch
        );
        let path = self.lock_path(job);
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(info.as_bytes()))
            .map_err(|e| Error::io("write lock file", path, e))?;
        state.held = Some(Held {
            lock,
            epoch: record.epoch,
            generation: record.generation,
            status: record.status,
            plan: record.plan.clone(),
        });
        Ok(Acquired {
            lease: Lease {
                job: job.clone(),
                epoch: record.epoch,
            },
            record,
            warnings,
        })
    }

    /// Checks that `lease` is the ownership this store holds, and that no other writer put a
    /// newer generation or epoch on disk since (a lock file deleted by hand, a network file
    /// system ignoring locks).
    fn check_lease<'s>(&self, lease: &Lease, state: &'s mut JobState) -> Result<&'s mut Held> {
        let job = &lease.job;
        let Some(held) = state.held.as_mut() else {
            return Err(Error::NotOwner {
                job: job.clone(),
                epoch: lease.epoch,
            });
        };
        if held.epoch != lease.epoch {
            return Err(if held.epoch > lease.epoch {
                Error::StaleEpoch {
                    job: job.clone(),
                    epoch: lease.epoch,
                    current: held.epoch,
                }
            } else {
                Error::NotOwner {
                    job: job.clone(),
                    epoch: lease.epoch,
                }
            });
        }
        let mut newest: Option<(u64, u64)> = None;
        for n in 0..2 {
            let path = self.slot(job, n);
            let prefix = self
                .io
                .read(&path, Some(HEAD_PREFIX_LEN))
                .map_err(|e| Error::io("read", &path, e))?;
            if let Some((epoch, generation)) = prefix.as_deref().and_then(envelope::peek_head)
                && newest.is_none_or(|(_, g)| generation > g)
            {
                newest = Some((epoch, generation));
            }
        }
        match newest {
            Some((epoch, generation)) if epoch != held.epoch || generation != held.generation => {
                Err(Error::StaleEpoch {
                    job: job.clone(),
                    epoch: lease.epoch,
                    current: epoch.max(held.epoch + 1),
                })
            }
            _ => Ok(held),
        }
    }

    fn renew(&self, lease: &Lease) -> Result<()> {
        self.check_poison()?;
        let state = self.job_state(&lease.job);
        let mut state = state.lock();
        self.check_lease(lease, &mut state).map(|_| ())
    }

    fn release(&self, lease: &Lease) -> Result<()> {
        let state = self.job_state(&lease.job);
        let mut state = state.lock();
        match &state.held {
            Some(held) if held.epoch == lease.epoch => {}
            Some(held) if held.epoch > lease.epoch => {
                return Err(Error::StaleEpoch {
                    job: lease.job.clone(),
                    epoch: lease.epoch,
                    current: held.epoch,
                });
            }
            _ => {
                return Err(Error::NotOwner {
                    job: lease.job.clone(),
                    epoch: lease.epoch,
                });
            }
        }
        if let Some(held) = state.held.take() {
            let _ = held.lock.unlock();
        }
        Ok(())
    }

    /// Saves the status and progress, and the plan's options when given.
    fn save(
        &self,
        lease: &Lease,
        status: JobStatus,
        progress: &Progress,
        options: Option<PlanOptions>,
    ) -> Result<u64> {
        self.check_poison()?;
        let state = self.job_state(&lease.job);
        let mut state = state.lock();
        let held = self.check_lease(lease, &mut state)?;
        check_transition(&lease.job, held.status, status)?;
        let generation = held.generation + 1;
        let plan = options.map(|options| MigrationPlan {
            options,
            ..held.plan.clone()
        });
        let bytes = envelope::encode_ref(&JobRecordRef {
            epoch: held.epoch,
            generation,
            job: &lease.job,
            plan: plan.as_ref().unwrap_or(&held.plan),
            status,
            progress,
        })?;
        // The other slot holds the previous save (or acquire's), whole and durable.
        self.write_generation(&lease.job, generation, &bytes, true)?;
        held.generation = generation;
        held.status = status;
        if let Some(plan) = plan {
            held.plan = plan;
        }
        Ok(generation)
    }
}

impl CheckpointStore for FileStore {
    fn create<'a>(
        &'a self,
        job: &'a JobId,
        plan: &'a MigrationPlan,
    ) -> BoxFuture<'a, Result<JobRecord>> {
        let (id, plan) = (job.clone(), plan.clone());
        Box::pin(self.blocking(job, move |inner| inner.create(&id, &plan)))
    }

    fn load<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Option<Loaded>>> {
        let id = job.clone();
        Box::pin(self.blocking(job, move |inner| inner.load(&id)))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<JobId>>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.list())
                .await
                .map_err(|e| Error::Task {
                    job: "-".to_owned(),
                    source: e,
                })?
        })
    }

    fn delete<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<bool>> {
        let id = job.clone();
        Box::pin(self.blocking(job, move |inner| inner.delete(&id)))
    }

    fn acquire<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Acquired>> {
        let id = job.clone();
        Box::pin(self.blocking(job, move |inner| inner.acquire(&id)))
    }

    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        let l = lease.clone();
        Box::pin(self.blocking(&lease.job, move |inner| inner.renew(&l)))
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        let l = lease.clone();
        Box::pin(self.blocking(&lease.job, move |inner| inner.release(&l)))
    }

    fn save<'a>(
        &'a self,
        lease: &'a Lease,
        status: JobStatus,
        progress: Arc<Progress>,
    ) -> BoxFuture<'a, Result<u64>> {
        let l = lease.clone();
        Box::pin(self.blocking(&lease.job, move |inner| {
            inner.save(&l, status, &progress, None)
        }))
    }

    fn save_with_options<'a>(
        &'a self,
        lease: &'a Lease,
        status: JobStatus,
        progress: Arc<Progress>,
        options: &'a PlanOptions,
    ) -> BoxFuture<'a, Result<u64>> {
        let (l, options) = (lease.clone(), options.clone());
        Box::pin(self.blocking(&lease.job, move |inner| {
            inner.save(&l, status, &progress, Some(options))
        }))
    }
}

#[cfg(test)]
mod tests;
