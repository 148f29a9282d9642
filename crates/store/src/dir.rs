//! [`DirStore`]: objects as files under a local directory.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use ferry_types::ObjectKey;
use futures_util::StreamExt;
use parking_lot::Mutex;
#[cfg(any(target_os = "linux", target_os = "android"))]
use rustix::fs::Advice;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::{
    BoxFuture, BoxStream, Checksum, DEFAULT_CHUNK_SIZE, DeleteIf, Error, MetaStream, Object,
    ObjectMeta, Op, PartTag, Result, Store, UploadId, Version,
};

/// The name prefix of the temp files a put writes before renaming them into place. Files
/// with this prefix are never listed, and [`DirStore::open`] removes them.
pub const TEMP_PREFIX: &str = ".ferry-tmp-";

/// How many objects a listing reads from the disk per blocking call.
const LIST_BATCH: usize = 256;

/// How many blocking tasks fsync in parallel for [`SyncStrategy::PerFileFsync`].
const FSYNC_PARALLELISM: usize = 8;

/// How [`DirStore::sync`](Store::sync) makes the puts and deletes since the last barrier
/// durable.
///
/// Measured on this machine (2,000 new files of 64 KiB per barrier; figures and command in
/// `crates/engine/README.md`): one `syncfs` cost ≈ 65–77 µs per file, an fsync per file and
/// per directory ≈ 100 µs per file even with eight in parallel; so `syncfs` is the default
/// where it exists (Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SyncStrategy {
    /// fsync every file written and every directory touched since the last barrier, files
    /// first, then directories, on a few blocking threads in parallel. Covers only this
    /// store's files, whatever else the file system is doing, and mount points under the
    /// root.
    PerFileFsync,
    /// One `syncfs(2)` on the root's file system (Linux only). Also flushes whatever else is
    /// dirty on that file system, and does not cover other file systems mounted under the
    /// root.
    Syncfs,
}

impl Default for SyncStrategy {
    fn default() -> Self {
        if cfg!(target_os = "linux") {
            SyncStrategy::Syncfs
        } else {
            SyncStrategy::PerFileFsync
        }
    }
}

/// A store in a local directory: key `a/b/c.txt` is the file `<root>/a/b/c.txt`.
///
/// # Keys
/// Checked before any path is built, and refused with [`Error::InvalidKey`]: absolute keys
/// (`/x`), empty segments (`a//b`, a trailing `/`), `.` and `..` segments, NUL, backslashes
/// (a path separator elsewhere; refused so that a store copied to another system keeps its
/// meaning), segments longer than 255 bytes and segments starting with the temp prefix
/// `.ferry-tmp-`. A key cannot name an object and be a "directory" of others at once (`a` and
/// `a/b`): the file system refuses it, and the put fails with a permanent error.
///
/// # Never out of the root
/// Every path is resolved one component at a time from a descriptor of the root, each
/// directory opened with `O_NOFOLLOW | O_DIRECTORY` relative to the previous one (`openat`),
/// and the final file opened or stat'ed without following links. So a symbolic link inside the
/// root is never followed, whatever it points to and even if it is swapped in while an
/// operation runs: `get`/`head` refuse it with [`Error::UnsafePath`], `put` replaces neither it
/// nor its target (a link on the way is refused; a link as the final name is replaced by the
/// rename itself, not written through), `delete` refuses it, `list` skips it. The root path
/// itself is resolved once, by [`DirStore::open`]. Not guarded against: hard links (a file
/// hard-linked from outside is read by `get`; `put` never writes into an existing file, it
/// renames a new one over it) and mount points under the root.
///
/// # Atomic puts, grouped durability
/// `put` streams the body into a temp file in the target's directory and puts it in place
/// under the final name: readers see the old file or the whole new one. On Linux the temp
/// file is unnamed (`O_TMPFILE`) and linked to the final name (to a temp name renamed over
/// it when the name exists), so a crash leaves nothing behind and a put takes the directory's
/// lock once; elsewhere (or [`DirStore::with_named_temp_files`]) it is `.ferry-tmp-…`,
/// renamed over the final name. With [`DirStore::with_direct_writes`] the temp file is
/// written past the page cache (`O_DIRECT`) where the file system takes it. Temp files are
/// never listed, and named ones a crash left behind are removed by [`DirStore::open`],
/// except the `.ferry-tmp-up-` files of uploads in parts ([`Store::create_upload`]: written
/// part by part at their offsets, each part `fdatasync`ed, renamed into place by
/// `complete_upload`), which a resumed copy continues. Nothing is fsynced by `put`;
/// [`sync`](Store::sync) makes every put and delete before it durable, as [`SyncStrategy`]
/// says. The first sync that fails poisons the store: every later sync
/// fails with [`Error::SyncPoisoned`](crate::Error::SyncPoisoned), since the kernel reports a
/// write-back error only once. Deleting the last object of a directory leaves the directory.
///
/// # Versions and checksums
/// The version is the file's inode, size and modification time in nanoseconds: a put always
/// makes a new inode. `put` reports the BLAKE3 of the bytes it wrote, hashed as it writes
/// them (so a checksum verification need not read the new file back); `head`, `get` and
/// `list` report none (`None`): the file may have been written in place since.
///
/// # Listing
/// `list` walks the tree depth first in key order (a directory `d` sorts as `d/`, so `a.txt`
/// comes before `a/b`), reading one directory at a time: memory is the entries of the
/// directories on the current path, never the whole tree. Entries whose names are not UTF-8,
/// hold a backslash, or are not regular files or directories are skipped.
///
/// Unix only (it relies on `openat`).
#[derive(Clone, Debug)]
pub struct DirStore {
    inner: Arc<Inner>,
    chunk_size: usize,
    strategy: SyncStrategy,
    /// Whether puts use unnamed (`O_TMPFILE`) temp files where the system has them.
    unnamed_temps: bool,
    /// Whether puts write past the page cache (`O_DIRECT`) where the file system takes it.
    direct_writes: bool,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    root_fd: OwnedFd,
    dirty: Mutex<Dirty>,
    /// Held for a whole `sync`, so a sync that begins while another runs waits for it and
    /// never returns before the operations the other one took are durable.
    sync_lock: tokio::sync::Mutex<()>,
    /// A sync failed: every later sync fails too ([`Error::SyncPoisoned`]). The kernel reports
    /// a write-back error once, so a retried fsync or syncfs that succeeds proves nothing
    /// about the writes the failed one covered.
    poisoned: AtomicBool,
    /// The file system refused `O_DIRECT`: puts no longer ask for it.
    no_direct: AtomicBool,
    /// `O_DIRECT` buffers being written beside the puts that filled them ([`Writes`]),
    /// store-wide: [`WRITES_IN_FLIGHT`] at most.
    writing: Arc<tokio::sync::Semaphore>,
}

/// Paths relative to the root (`""` is the root) written or touched since the last barrier.
#[derive(Debug, Default)]
struct Dirty {
    files: BTreeSet<String>,
    dirs: BTreeSet<String>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }
}

/// Checks `key` against the rules of [`DirStore`] and splits it into its segments.
fn segments(key: &ObjectKey) -> Result<Vec<&str>> {
    let s = key.as_str();
    let invalid = |reason| {
        Err(Error::InvalidKey {
            key: key.clone(),
            reason,
        })
    };
    if s.is_empty() {
        return invalid("is empty");
    }
    if s.starts_with('/') {
        return invalid("is absolute");
    }
    if s.ends_with('/') {
        return invalid("ends with '/'");
    }
    if s.contains('\0') {
        return invalid("contains NUL");
    }
    if s.contains('\\') {
        return invalid("contains a backslash");
    }
    let segs: Vec<&str> = s.split('/').collect();
    for seg in &segs {
        match *seg {
            "" => return invalid("has an empty segment"),
            "." => return invalid("has a '.' segment"),
            ".." => return invalid("has a '..' segment"),
            _ if seg.len() > 255 => return invalid("has a segment longer than 255 bytes"),
            _ if seg.starts_with(TEMP_PREFIX) => {
                return invalid("has a segment with the reserved prefix '.ferry-tmp-'");
            }
            _ => {}
        }
    }
    Ok(segs)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    op: Op,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(Error::Permanent {
            op,
            key: None,
            source: Box::new(join),
        }),
    }
}

#[allow(clippy::unnecessary_cast)] // the field types differ between platforms
fn meta_of(key: ObjectKey, st: &Stat) -> ObjectMeta {
    let size = st.st_size as u64;
    let mtime = (st.st_mtime as i128) * 1_000_000_000 + st.st_mtime_nsec as i128;
    ObjectMeta {
        key,
        size,
        version: Version::new(format!("{:x}-{:x}-{:x}", st.st_ino as u64, size, mtime)),
        checksum: None,
        modified: u64::try_from(mtime)
            .ok()
            .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos)),
    }
}

fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode as rustix::fs::RawMode)
}

/// Where a walk to a key's directory ended.
enum Walk {
    /// The directory holding the final segment.
    Dir(OwnedFd),
    /// A directory on the way does not exist (or is a regular file): the key is absent.
    Absent,
}

impl Inner {
    /// Records `key`'s file, its directory and the directories `created` for the next
    /// barrier.
    fn written(&self, key: &ObjectKey, created: Vec<String>) {
        let mut dirty = self.dirty.lock();
        dirty.files.insert(key.as_str().to_owned());
        let parent = key.as_str().rsplit_once('/').map_or("", |(p, _)| p);
        dirty.dirs.insert(parent.to_owned());
        dirty.dirs.extend(created);
    }

    /// Opens the directory `dirs` (segments below the root) without following any link.
    /// With `created`, missing directories are made and the directories whose entries
    /// changed are pushed to it.
    fn walk(
        &self,
        op: Op,
        key: &ObjectKey,
        dirs: &[&str],
        mut created: Option<&mut Vec<String>>,
    ) -> Result<Walk> {
        // The walk starts at the root's descriptor itself; a duplicate of it is made only
        // for a key at the root, whose walk has no directory of its own to return.
        let mut opened: Option<OwnedFd> = None;
        for (i, seg) in dirs.iter().enumerate() {
            let rel = || dirs[..=i].join("/");
            let fd = opened.as_ref().map_or(self.root_fd.as_fd(), AsFd::as_fd);
            let next = match rustix::fs::openat(fd, *seg, dir_flags(), Mode::empty()) {
                Err(Errno::NOENT) if created.is_some() => {
                    match rustix::fs::mkdirat(fd, *seg, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(Error::io(op, rel(), e)),
                    }
                    if let Some(created) = created.as_deref_mut() {
                        created.push(dirs[..i].join("/"));
                    }
                    rustix::fs::openat(fd, *seg, dir_flags(), Mode::empty())
                }
                other => other,
            };
            // With O_DIRECTORY, Linux reports a link as ENOTDIR: look at what is there (only
            // to name the error: nothing is followed).
            let is_link = |e| {
                e == Errno::LOOP
                    || (e == Errno::NOTDIR
                        && rustix::fs::statat(fd, *seg, AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| file_type(&st) == FileType::Symlink))
            };
            opened = Some(match next {
                Ok(next) => next,
                Err(e) if is_link(e) => {
                    return Err(Error::UnsafePath {
                        op,
                        key: key.clone(),
                        path: rel().into(),
                    });
                }
                Err(Errno::NOENT | Errno::NOTDIR) if created.is_none() => return Ok(Walk::Absent),
                Err(e) => return Err(Error::io(op, rel(), e)),
            });
        }
        match opened {
            Some(fd) => Ok(Walk::Dir(fd)),
            None => self
                .root_fd
                .try_clone()
                .map(Walk::Dir)
                .map_err(|e| Error::io(op, &self.root, e)),
        }
    }

    fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        let segs = segments(key)?;
        let (name, dirs) = split_last(&segs);
        let Walk::Dir(dir) = self.walk(Op::Head, key, dirs, None)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match file_type(&st) {
                FileType::RegularFile => Ok(Some(meta_of(key.clone(), &st))),
                FileType::Symlink => Err(Error::UnsafePath {
                    op: Op::Head,
                    key: key.clone(),
                    path: key.as_str().into(),
                }),
                _ => Ok(None),
            },
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
            Err(e) => Err(Error::io(Op::Head, key.as_str(), e)),
        }
    }

    fn open_for_read(&self, key: &ObjectKey) -> Result<(File, ObjectMeta)> {
        let segs = segments(key)?;
        let (name, dirs) = split_last(&segs);
        let not_found = || Error::NotFound { key: key.clone() };
        let Walk::Dir(dir) = self.walk(Op::Get, key, dirs, None)? else {
            return Err(not_found());
        };
        // NONBLOCK: opening a FIFO must not hang; it has no effect on regular files.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => {
                return Err(Error::UnsafePath {
                    op: Op::Get,
                    key: key.clone(),
                    path: key.as_str().into(),
                });
            }
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(not_found()),
            Err(e) => return Err(Error::io(Op::Get, key.as_str(), e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(Op::Get, key.as_str(), e))?;
        if file_type(&st) != FileType::RegularFile {
            return Err(not_found());
        }
        // A regular file: O_NONBLOCK has no effect on it (open(2)), so the flag stays rather
        // than costing two more system calls per object (`read_chunk` clears it on EAGAIN).
        Ok((File::from(fd), meta_of(key.clone(), &st)))
    }

    fn delete(&self, key: &ObjectKey) -> Result<bool> {
        Ok(self.delete_if(key, None)? == DeleteIf::Deleted)
    }

    /// Deletes `key`, only if it has `version` when one is given: the look and the unlink
    /// are two system calls back to back on this thread, so a write landing between them
    /// (deleted with the file) has microseconds to do so, not a task switch.
    fn delete_if(&self, key: &ObjectKey, version: Option<&Version>) -> Result<DeleteIf> {
        let segs = segments(key)?;
        let (name, dirs) = split_last(&segs);
        let Walk::Dir(dir) = self.walk(Op::Delete, key, dirs, None)? else {
            return Ok(DeleteIf::Absent);
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match file_type(&st) {
                FileType::RegularFile => {
                    let meta = meta_of(key.clone(), &st);
                    if version.is_some_and(|version| meta.version != *version) {
                        return Ok(DeleteIf::Changed(meta));
                    }
                }
                FileType::Symlink => {
                    return Err(Error::UnsafePath {
                        op: Op::Delete,
                        key: key.clone(),
                        path: key.as_str().into(),
                    });
                }
                _ => return Ok(DeleteIf::Absent),
            },
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(DeleteIf::Absent),
            Err(e) => return Err(Error::io(Op::Delete, key.as_str(), e)),
        }
        // unlinkat never follows a link: even if the file was swapped for one meanwhile, only
        // the entry in this directory goes.
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => {
                self.dirty.lock().dirs.insert(dirs.join("/"));
                Ok(DeleteIf::Deleted)
            }
            Err(Errno::NOENT) => Ok(DeleteIf::Absent),
            Err(e) => Err(Error::io(Op::Delete, key.as_str(), e)),
        }
    }

    /// Creates the directories of `segs` and a temp file beside its final name. Returns the
    /// file and the directories whose entries changed.
    fn create_temp(
        &self,
        key: &ObjectKey,
        segs: &[&str],
        unnamed: bool,
        direct: bool,
    ) -> Result<(TempFile, Vec<String>)> {
        let (target, dirs) = split_last(segs);
        let mut created = Vec::new();
        let Walk::Dir(dir) = self.walk(Op::Put, key, dirs, Some(&mut created))? else {
            return Err(Error::io(Op::Put, key.as_str(), Errno::NOENT));
        };
        let (fd, name) = match unnamed.then(|| unnamed_temp(&dir)).flatten() {
            Some(fd) => (fd, None),
            None => {
                let name = temp_name();
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&dir, name.as_str(), flags, Mode::from_raw_mode(0o644))
                    .map_err(|e| Error::io(Op::Put, key.as_str(), e))?;
                (fd, Some(name))
            }
        };
        let file = Arc::new(File::from(fd));
        let gather = if direct && !self.no_direct.load(Ordering::Relaxed) {
            if direct::enable(&file) {
                Some(direct::Gather::new())
            } else {
                self.no_direct.store(true, Ordering::Relaxed);
                None
            }
        } else {
            None
        };
        let temp = TempFile {
            dir,
            file,
            name,
            target: target.to_owned(),
            armed: true,
            written: 0,
            kicked: 0,
            hasher: blake3::Hasher::new(),
            gather,
            refused: false,
        };
        Ok((temp, created))
    }

    /// fsyncs the file or directory at `rel` if it still exists.
    fn fsync_path(&self, rel: &str, is_dir: bool) -> Result<()> {
        let segs: Vec<&str> = if rel.is_empty() {
            Vec::new()
        } else {
            rel.split('/').collect()
        };
        let key = ObjectKey::new(if rel.is_empty() { "." } else { rel }).map_err(|e| {
            Error::Permanent {
                op: Op::Sync,
                key: None,
                source: Box::new(e),
            }
        })?;
        let fd = if is_dir {
            match self.walk(Op::Sync, &key, &segs, None)? {
                Walk::Dir(fd) => fd,
                Walk::Absent => return Ok(()),
            }
        } else {
            let (name, dirs) = split_last(&segs);
            let Walk::Dir(dir) = self.walk(Op::Sync, &key, dirs, None)? else {
                return Ok(());
            };
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::LOOP) => return Ok(()),
                Err(e) => return Err(Error::io(Op::Sync, rel, e)),
            }
        };
        rustix::fs::fsync(&fd).map_err(|e| Error::io(Op::Sync, rel, e))
    }
}

/// Reads up to `chunk` bytes, and no more than `left`, from `file` (fewer only at its end).
/// When that reaches the size the file had at open, one more byte is asked for in the same
/// call: a file that grew since (written in place, not through the store) then yields more
/// than its size, which the checked body reports, instead of a silently cut copy.
fn read_chunk(file: &mut File, key: &ObjectKey, chunk: usize, left: u64) -> Result<Vec<u8>> {
    let last = left <= chunk as u64;
    let want = usize::try_from(left).map_or(chunk, |left| left.min(chunk)) + usize::from(last);
    // Read into the vector's spare capacity, `want` bytes at most (a kept buffer has room
    // for more): no zeroing of a buffer the read overwrites anyway (4% of the CPU of a 1 GiB
    // copy went to that memset). Large reads take kept buffers, all of one size (`kept`).
    let mut buf = if chunk >= kept::MIN && want >= kept::MIN {
        kept::buffer(chunk + 1)
    } else {
        Vec::with_capacity(want)
    };
    while buf.len() < want {
        let limit = (want - buf.len()) as u64;
        match std::io::Read::read_to_end(&mut std::io::Read::take(&*file, limit), &mut buf) {
            // At `want` bytes, or at the end of the file.
            Ok(_) => break,
            // A file system that honours O_NONBLOCK on regular files: back to blocking reads
            // (what was read stays in `buf`).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let flags = rustix::fs::fcntl_getfl(&*file)
                    .map_err(|e| Error::io(Op::Get, key.as_str(), e))?;
                rustix::fs::fcntl_setfl(&*file, flags - OFlags::NONBLOCK)
                    .map_err(|e| Error::io(Op::Get, key.as_str(), e))?;
            }
            Err(e) => return Err(Error::io(Op::Get, key.as_str(), e)),
        }
    }
    Ok(buf)
}

/// The next `left` bytes of `file`, a chunk at a time on the blocking pool. `exact`: stop at
/// `left` (a range); otherwise the byte past it that [`read_chunk`] asks for is delivered, so
/// a file that grew since it was opened runs past its size and the checked body says so.
fn file_chunks(
    file: File,
    key: ObjectKey,
    chunk: usize,
    left: u64,
    exact: bool,
) -> impl futures_util::Stream<Item = Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold((Some(file), left), move |(file, left)| {
        let key = key.clone();
        async move {
            let mut file = file?;
            if left == 0 {
                return None;
            }
            let read = blocking(Op::Get, move || {
                let mut buf = read_chunk(&mut file, &key, chunk, left)?;
                if exact {
                    buf.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                }
                Ok((file, buf))
            })
            .await;
            match read {
                // Shorter than its size: the body ends; the checked body says so.
                Ok((_, buf)) if buf.is_empty() => None,
                Ok((file, buf)) => {
                    let left = left.saturating_sub(buf.len() as u64);
                    Some((Ok(kept::bytes(buf)), (Some(file), left)))
                }
                Err(e) => Some((Err(e), (None, 0))),
            }
        }
    })
}

mod direct;
mod kept;
mod upload;

fn split_last<'a, 'b>(segs: &'b [&'a str]) -> (&'a str, &'b [&'a str]) {
    match segs.split_last() {
        Some((name, dirs)) => (name, dirs),
        None => ("", segs),
    }
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn temp_name() -> String {
    temp_name_after(TEMP_PREFIX)
}

/// A name no other temp file has: `prefix`, then the process id, a sequence number and a
/// random number, in hex.
fn temp_name_after(prefix: &str) -> String {
    let random = std::hash::RandomState::new().build_hasher().finish();
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}-{seq:x}-{random:016x}", std::process::id())
}

/// Whether `O_TMPFILE` files can be named through `/proc/self/fd`, probed once.
static UNNAMED_TEMPS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// An unnamed file in `dir` (`O_TMPFILE`, Linux ≥ 3.11 on ext4, xfs, btrfs, tmpfs…), or
/// `None` where the file system or the kernel has none or `/proc` is not mounted (then a
/// named temp file is used).
///
/// Why: creating a named temp file and renaming it both take the directory's lock for
/// writing, and concurrent puts into one directory queue on it (7% of the CPU of a
/// 10k-file copy went to spinning on it). An unnamed file takes no directory lock until
/// [`TempFile::finish`] links it under its final name: one locked step per put instead of
/// two. A crash leaves nothing behind: an unnamed file vanishes with its last descriptor.
fn unnamed_temp(dir: &OwnedFd) -> Option<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        let usable = *UNNAMED_TEMPS.get_or_init(|| std::path::Path::new("/proc/self/fd").is_dir());
        if !usable {
            return None;
        }
        let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
        // An error means no support here (the file system, an old kernel): named temp files.
        rustix::fs::openat(dir, ".", flags, Mode::from_raw_mode(0o644)).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (dir, &UNNAMED_TEMPS);
        None
    }
}

/// The temp file of a put in progress; removed when dropped before [`TempFile::finish`]
/// (the put failed or was dropped).
struct TempFile {
    dir: OwnedFd,
    /// (Shared with the `O_DIRECT` writes under way: [`Writes`].)
    file: Arc<File>,
    /// Its name in `dir`; `None` for an unnamed (`O_TMPFILE`) file.
    name: Option<String>,
    /// The final name, in `dir`.
    target: String,
    armed: bool,
    /// Bytes written, and how many of them were handed to the kernel's writeback.
    written: u64,
    kicked: u64,
    /// BLAKE3 of the bytes written, in order.
    hasher: blake3::Hasher,
    /// With `O_DIRECT`: the last bytes taken, not yet in the file (which holds `written`
    /// less these).
    gather: Option<direct::Gather>,
    /// The file system refused `O_DIRECT` on a write (the store stops asking for it).
    refused: bool,
}

/// How many written bytes of a large file wait before their writeback is started.
const WRITEBACK_STEP: u64 = 8 << 20;

/// `O_DIRECT` buffers (1 MiB each) a store writes at once beside the puts that filled them.
/// What the put's own thread no longer waits for is the device: it hashes and gathers the
/// next buffer while one is written. More writes at once gained nothing on this project's
/// VMs (1 GiB in 1 MiB `O_DIRECT` writes, 1, 2 and 4 at once: 0.38–0.42, 0.43, 0.35–0.51 s);
/// two let the next write start as soon as one ends.
const WRITES_IN_FLIGHT: usize = 2;

/// The `O_DIRECT` writes of one put under way, each on a blocking thread, in the order they
/// were started: the put's thread goes on hashing and gathering the next bytes meanwhile.
/// Dropped with writes under way (the put failed or was dropped), those end on their own,
/// into the temp file the put removes.
struct Writes {
    file: Arc<File>,
    key: ObjectKey,
    permits: Arc<tokio::sync::Semaphore>,
    flying: std::collections::VecDeque<tokio::task::JoinHandle<rustix::io::Result<bool>>>,
    /// A write found `O_DIRECT` refused (and made itself without it).
    refused: bool,
}

impl Writes {
    fn new(inner: &Inner, temp: &TempFile, key: &ObjectKey) -> Writes {
        Writes {
            file: Arc::clone(&temp.file),
            key: key.clone(),
            permits: Arc::clone(&inner.writing),
            flying: std::collections::VecDeque::new(),
            refused: false,
        }
    }

    /// Starts writing `full`, waiting for the oldest write of this put when the store has
    /// [`WRITES_IN_FLIGHT`] under way.
    async fn push(&mut self, full: Vec<direct::Pending>) -> Result<()> {
        for pending in full {
            let permit = loop {
                match Arc::clone(&self.permits).try_acquire_owned() {
                    Ok(permit) => break permit,
                    // This put's oldest write frees a permit; with none of its own under
                    // way, another put's does.
                    Err(_) if !self.flying.is_empty() => self.wait_oldest().await?,
                    Err(_) => {
                        // (The semaphore is never closed.)
                        break Arc::clone(&self.permits).acquire_owned().await.map_err(
                            |closed| Error::Permanent {
                                op: Op::Put,
                                key: Some(self.key.clone()),
                                source: Box::new(closed),
                            },
                        )?;
                    }
                }
            };
            let file = Arc::clone(&self.file);
            self.flying.push_back(tokio::task::spawn_blocking(move || {
                let written = pending.write(&file);
                drop(permit);
                written
            }));
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<()> {
        let Some(write) = self.flying.pop_front() else {
            return Ok(());
        };
        let written = write.await.map_err(|join| Error::Permanent {
            op: Op::Put,
            key: Some(self.key.clone()),
            source: Box::new(join),
        })?;
        self.refused |= written.map_err(|e| Error::io(Op::Put, self.key.as_str(), e))?;
        Ok(())
    }

    /// Waits for every write; returns whether one found `O_DIRECT` refused.
    async fn finish(mut self) -> Result<bool> {
        while !self.flying.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(self.refused)
    }
}

impl TempFile {
    /// Takes `chunk`: hashes it, and writes it, or with `O_DIRECT` gathers it; returns the
    /// buffers it filled, to be written ([`Writes`], or [`TempFile::write_now`]) before
    /// [`TempFile::finish`].
    fn write(&mut self, key: &ObjectKey, chunk: &[u8]) -> Result<Vec<direct::Pending>> {
        self.hasher.update(chunk);
        let mut full = Vec::new();
        let mut rest = chunk;
        while let Some(gather) = &mut self.gather {
            if rest.is_empty() {
                return Ok(full);
            }
            let taken = gather.take(rest);
            rest = &rest[taken..];
            self.written += taken as u64;
            if gather.is_full() {
                let offset = self.written - gather.filled() as u64;
                full.push(std::mem::replace(gather, direct::Gather::new()).pending(offset));
            }
        }
        // Plain writes, after the bytes before them.
        std::os::unix::fs::FileExt::write_all_at(&*self.file, rest, self.written)
            .map_err(|e| Error::io(Op::Put, key.as_str(), e))?;
        self.written += rest.len() as u64;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if self.written - self.kicked >= WRITEBACK_STEP {
            // Start writing this range to disk now (Linux: `DONTNEED` on dirty pages starts
            // their writeback and drops nothing), so the barrier's `sync` finds little left
            // to do. Only a hint: its failure changes nothing.
            let len = NonZeroU64::new(self.written - self.kicked);
            let _ = rustix::fs::fadvise(&self.file, self.kicked, len, Advice::DontNeed);
            self.kicked = self.written;
        }
        Ok(full)
    }

    /// Writes `full` (buffers [`TempFile::write`] filled) on this thread.
    fn write_now(&mut self, key: &ObjectKey, full: Vec<direct::Pending>) -> Result<()> {
        for pending in full {
            self.refused |= pending
                .write(&self.file)
                .map_err(|e| Error::io(Op::Put, key.as_str(), e))?;
        }
        Ok(())
    }

    /// Writes the gathered bytes (with `O_DIRECT`), which all precede the chunk being taken.
    fn flush(&mut self, key: &ObjectKey) -> Result<()> {
        let Some(gather) = &mut self.gather else {
            return Ok(());
        };
        let offset = self.written - gather.filled() as u64;
        let refused = gather
            .write_at(&self.file, offset)
            .map_err(|e| Error::io(Op::Put, key.as_str(), e))?;
        if refused {
            self.refused = true;
            self.gather = None;
        }
        Ok(())
    }

    /// Puts the temp file in place under the target's name, atomically for readers: renames
    /// a named one over the target; links an unnamed one to the target's name, or, when the
    /// target exists, to a temp name that is then renamed over it.
    fn finish(&mut self, key: &ObjectKey) -> Result<Stat> {
        let io = |e| Error::io(Op::Put, key.as_str(), e);
        if self
            .gather
            .as_ref()
            .is_some_and(|gather| gather.filled() > 0)
        {
            self.flush(key)?;
            // The last block was padded: cut the file to the bytes of the object.
            self.file
                .set_len(self.written)
                .map_err(|e| Error::io(Op::Put, key.as_str(), e))?;
        }
        let stat = rustix::fs::fstat(&self.file).map_err(io)?;
        if self.name.is_none() {
            let fd = format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&self.file)
            );
            let link = |name: &str| {
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    fd.as_str(),
                    &self.dir,
                    name,
                    AtFlags::SYMLINK_FOLLOW,
                )
            };
            match link(self.target.as_str()) {
                Ok(()) => {
                    self.armed = false;
                    return Ok(stat);
                }
                // An existing target is replaced by a rename, the only atomic way.
                Err(Errno::EXIST) => {
                    let name = temp_name();
                    link(name.as_str()).map_err(io)?;
                    self.name = Some(name);
                }
                Err(e) => return Err(io(e)),
            }
        }
        if let Some(name) = &self.name {
            rustix::fs::renameat(&self.dir, name.as_str(), &self.dir, self.target.as_str())
                .map_err(io)?;
        }
        self.armed = false;
        Ok(stat)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed
            && let Some(name) = &self.name
        {
            let _ = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty());
        }
    }
}

/// The next non-empty chunk of a body.
async fn next_chunk(body: &mut BoxStream<'_, Result<Bytes>>) -> Result<Option<Bytes>> {
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if !chunk.is_empty() {
            return Ok(Some(chunk));
        }
    }
    Ok(None)
}

/// Removes every temp file under `dir`, without following links.
fn remove_temp_files(dir: &OwnedFd, rel: &Path) -> Result<()> {
    let entries = read_dir_entries(dir).map_err(|e| Error::io(Op::Open, rel, e))?;
    for (name, ty) in entries {
        // An upload's file is kept: a resumed copy continues it (`abort_upload` removes it).
        let upload = name.starts_with(upload::UPLOAD_PREFIX.as_bytes());
        if name.starts_with(TEMP_PREFIX.as_bytes()) && !upload && ty == FileType::RegularFile {
            match rustix::fs::unlinkat(dir, name.as_slice(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(Error::io(Op::Open, rel.join(OsStr::from_bytes(&name)), e)),
            }
        } else if ty == FileType::Directory {
            match rustix::fs::openat(dir, name.as_slice(), dir_flags(), Mode::empty()) {
                Ok(sub) => remove_temp_files(&sub, &rel.join(OsStr::from_bytes(&name)))?,
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
                Err(e) => return Err(Error::io(Op::Open, rel.join(OsStr::from_bytes(&name)), e)),
            }
        }
    }
    Ok(())
}

/// The entries of a directory (without `.` and `..`), with their types, links not followed.
fn read_dir_entries(dir: &OwnedFd) -> rustix::io::Result<Vec<(Vec<u8>, FileType)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let ty = match entry.file_type() {
            FileType::Unknown => {
                match rustix::fs::statat(dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => file_type(&st),
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e),
                }
            }
            ty => ty,
        };
        out.push((name.to_vec(), ty));
    }
    Ok(out)
}

impl DirStore {
    /// Opens the store rooted at `root`, creating the directory if needed, and removes the
    /// temp files a crash left behind (a walk of the whole tree, links not followed).
    ///
    /// # Errors
    /// [`Error::Io`] when the root cannot be created or opened, or a leftover cannot be
    /// removed.
    ///
    /// # Cancel safety
    /// Cancel safe: the cleanup runs on a blocking thread to its end, and is redone by the
    /// next open.
    pub async fn open(root: impl Into<PathBuf>) -> Result<DirStore> {
        let root = root.into();
        let inner = blocking(Op::Open, move || {
            std::fs::create_dir_all(&root).map_err(|e| Error::io(Op::Open, &root, e))?;
            let root_fd = rustix::fs::open(
                &root,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io(Op::Open, &root, e))?;
            remove_temp_files(&root_fd, Path::new(""))?;
            Ok(Inner {
                root,
                root_fd,
                dirty: Mutex::default(),
                sync_lock: tokio::sync::Mutex::new(()),
                poisoned: AtomicBool::new(false),
                no_direct: AtomicBool::new(false),
                writing: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
            })
        })
        .await?;
        Ok(DirStore {
            inner: Arc::new(inner),
            chunk_size: DEFAULT_CHUNK_SIZE,
            strategy: SyncStrategy::default(),
            unnamed_temps: true,
            direct_writes: false,
        })
    }

    /// Puts write past the page cache (`O_DIRECT`, Linux) where the file system takes it,
    /// and plain writes where it does not. For copies nobody reads again soon: they cost no
    /// copy into page-cache pages and evict nothing the machine's readers use, and the
    /// barrier's `sync` finds their data written already. A reader of a new object then reads
    /// it from the disk. `ferry migrate` and `ferry worker` write their destination this way.
    pub fn with_direct_writes(mut self, direct: bool) -> DirStore {
        self.direct_writes = direct;
        self
    }

    /// Puts write named temp files (`.ferry-tmp-…`) and rename them, as they do where
    /// `O_TMPFILE` or `/proc` is missing, instead of unnamed files linked in place. For tests
    /// of that path, and for file systems where linking through `/proc/self/fd` is unwanted.
    pub fn with_named_temp_files(mut self) -> DirStore {
        self.unnamed_temps = false;
        self
    }

    /// Bodies from `get` come in chunks of at most `chunk_size` bytes (at least 1; default
    /// [`DEFAULT_CHUNK_SIZE`]).
    pub fn with_chunk_size(mut self, chunk_size: usize) -> DirStore {
        self.chunk_size = chunk_size.max(1);
        self
    }

    /// How `sync` makes operations durable (default: [`SyncStrategy::default`]).
    pub fn with_sync_strategy(mut self, strategy: SyncStrategy) -> DirStore {
        self.strategy = strategy;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The sync strategy in use.
    pub fn sync_strategy(&self) -> SyncStrategy {
        self.strategy
    }

    async fn put_inner(
        &self,
        key: &ObjectKey,
        mut body: BoxStream<'_, Result<Bytes>>,
    ) -> Result<ObjectMeta> {
        let segs: Vec<String> = segments(key)?.into_iter().map(str::to_owned).collect();
        // Look one chunk ahead: a body of one chunk (most small objects) is created, written
        // and renamed in a single trip to the blocking pool.
        let first = next_chunk(&mut body).await?;
        let second = match first {
            Some(_) => next_chunk(&mut body).await?,
            None => None,
        };
        let inner = Arc::clone(&self.inner);
        let k = key.clone();
        let whole = second.is_none();
        let (unnamed, direct) = (self.unnamed_temps, self.direct_writes);
        let (mut temp, created, stat, full) = blocking(Op::Put, move || {
            let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
            let (mut temp, created) = inner.create_temp(&k, &segs, unnamed, direct)?;
            let mut full = match first {
                Some(chunk) => temp.write(&k, &chunk)?,
                None => Vec::new(),
            };
            let stat = if whole {
                temp.write_now(&k, std::mem::take(&mut full))?;
                Some(temp.finish(&k)?)
            } else {
                None
            };
            Ok((temp, created, stat, full))
        })
        .await?;
        let (stat, temp) = match stat {
            Some(stat) => (stat, temp),
            None => {
                // A chunk is taken (hashed, gathered) while the next one is pulled from the
                // body, and the buffers it filled are written by other threads meanwhile:
                // the disk, the hash and the source all busy at once.
                let mut writes = Writes::new(&self.inner, &temp, key);
                writes.push(full).await?;
                let mut next = second;
                while let Some(chunk) = next {
                    let k = key.clone();
                    let take = blocking(Op::Put, move || {
                        let full = temp.write(&k, &chunk)?;
                        Ok((temp, full))
                    });
                    let (taken, following) = tokio::join!(take, next_chunk(&mut body));
                    let full;
                    (temp, full) = taken?;
                    writes.push(full).await?;
                    next = following?;
                }
                temp.refused |= writes.finish().await?;
                let k = key.clone();
                blocking(Op::Put, move || Ok((temp.finish(&k)?, temp))).await?
            }
        };
        self.inner.written(key, created);
        if temp.refused {
            self.inner.no_direct.store(true, Ordering::Relaxed);
        }
        let mut meta = meta_of(key.clone(), &stat);
        // The hash of what this put wrote is the file's content only if nothing else wrote
        // to the file meanwhile (a named temp file can be): its size says so.
        if meta.size == temp.written {
            meta.checksum = Some(Checksum::Blake3(*temp.hasher.finalize().as_bytes()));
        }
        Ok(meta)
    }

    async fn sync_inner(&self) -> Result<()> {
        let _barrier = self.inner.sync_lock.lock().await;
        let poisoned = || Error::SyncPoisoned {
            root: self.inner.root.clone(),
        };
        if self.inner.poisoned.load(Ordering::Acquire) {
            return Err(poisoned());
        }
        let dirty = std::mem::take(&mut *self.inner.dirty.lock());
        if dirty.is_empty() {
            return Ok(());
        }
        let result = match self.strategy {
            #[cfg(target_os = "linux")]
            SyncStrategy::Syncfs => {
                let inner = Arc::clone(&self.inner);
                blocking(Op::Sync, move || {
                    rustix::fs::syncfs(&inner.root_fd)
                        .map_err(|e| Error::io(Op::Sync, &inner.root, e))
                })
                .await
            }
            _ => self.fsync_all(&dirty).await,
        };
        if let Err(err) = &result {
            // Never retried: the writes this sync covered may be lost for good (the kernel
            // has cleared its error), so no later sync may return Ok for them.
            self.inner.poisoned.store(true, Ordering::Release);
            tracing::error!(root = ?self.inner.root, error = %err, "sync failed: store poisoned");
        }
        result
    }

    /// fsyncs the files, then the directories, `FSYNC_PARALLELISM` at a time.
    async fn fsync_all(&self, dirty: &Dirty) -> Result<()> {
        for (paths, is_dir) in [(&dirty.files, false), (&dirty.dirs, true)] {
            let paths: Arc<Vec<String>> = Arc::new(paths.iter().cloned().collect());
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..FSYNC_PARALLELISM.min(paths.len()) {
                let (inner, paths, next) = (
                    Arc::clone(&self.inner),
                    Arc::clone(&paths),
                    Arc::clone(&next),
                );
                tasks.push(blocking(Op::Sync, move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(rel) = paths.get(i) else {
                            return Ok(());
                        };
                        inner.fsync_path(rel, is_dir)?;
                    }
                }));
            }
            for result in futures_util::future::join_all(tasks).await {
                result?;
            }
        }
        Ok(())
    }
}

/// One directory of a listing in progress.
struct Frame {
    dir: OwnedFd,
    /// Its path relative to the root, with a trailing `/` (empty for the root).
    path: String,
    /// The entries still to visit, in reverse key order (the next one is last).
    entries: Vec<(String, bool)>,
}

/// A listing in progress: the directories on the current path.
struct Lister {
    inner: Arc<Inner>,
    prefix: String,
    start_after: Option<String>,
    stack: Vec<Frame>,
    started: bool,
}

impl Lister {
    fn frame(&self, dir: OwnedFd, path: String) -> Result<Frame> {
        let entries = read_dir_entries(&dir).map_err(|e| Error::io(Op::List, &path, e))?;
        let mut keep: Vec<(String, bool)> = Vec::new();
        for (name, ty) in entries {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            if name.starts_with(TEMP_PREFIX) || name.contains('\\') {
                continue;
            }
            let is_dir = match ty {
                FileType::RegularFile => false,
                FileType::Directory => true,
                _ => continue, // links are never followed, nor listed
            };
            let full = if is_dir {
                format!("{path}{name}/")
            } else {
                format!("{path}{name}")
            };
            let after = self.start_after.as_deref();
            let wanted = if is_dir {
                (full.starts_with(&self.prefix) || self.prefix.starts_with(&full))
                    && after.is_none_or(|s| s < full.as_str() || s.starts_with(&full))
            } else {
                full.starts_with(&self.prefix) && after.is_none_or(|s| s < full.as_str())
            };
            if wanted {
                keep.push((name, is_dir));
            }
        }
        // Key order: a directory `d` sorts as `d/`.
        keep.sort_by(|(a, a_dir), (b, b_dir)| {
            let a = a
                .as_bytes()
                .iter()
                .chain(if *a_dir { &b"/"[..] } else { &[] });
            let b = b
                .as_bytes()
                .iter()
                .chain(if *b_dir { &b"/"[..] } else { &[] });
            b.cmp(a)
        });
        Ok(Frame {
            dir,
            path,
            entries: keep,
        })
    }

    /// Up to `LIST_BATCH` more objects; an empty batch ends the listing.
    fn next_batch(&mut self) -> Result<Vec<ObjectMeta>> {
        if !self.started {
            self.started = true;
            let root = self
                .inner
                .root_fd
                .try_clone()
                .map_err(|e| Error::io(Op::List, &self.inner.root, e))?;
            let frame = self.frame(root, String::new())?;
            self.stack.push(frame);
        }
        let mut out = Vec::new();
        while out.len() < LIST_BATCH {
            let Some(frame) = self.stack.last_mut() else {
                break;
            };
            let Some((name, is_dir)) = frame.entries.pop() else {
                self.stack.pop();
                continue;
            };
            if is_dir {
                match rustix::fs::openat(&frame.dir, name.as_str(), dir_flags(), Mode::empty()) {
                    Ok(dir) => {
                        let path = format!("{}{name}/", frame.path);
                        let frame = self.frame(dir, path)?;
                        self.stack.push(frame);
                    }
                    Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
                    Err(e) => {
                        return Err(Error::io(Op::List, format!("{}{name}", frame.path), e));
                    }
                }
            } else {
                let full = format!("{}{name}", frame.path);
                match rustix::fs::statat(&frame.dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if file_type(&st) == FileType::RegularFile => {
                        if let Ok(key) = ObjectKey::new(&full) {
                            out.push(meta_of(key, &st));
                        }
                    }
                    Ok(_) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(Error::io(Op::List, full, e)),
                }
            }
        }
        Ok(out)
    }
}

impl Store for DirStore {
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        Box::pin(async move {
            segments(key)?;
            let (inner, key) = (Arc::clone(&self.inner), key.clone());
            blocking(Op::Head, move || inner.head(&key)).await
        })
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Object>> {
        Box::pin(async move {
            segments(key)?;
            let (inner, k) = (Arc::clone(&self.inner), key.clone());
            let chunk = self.chunk_size;
            // The first chunk is read in the same trip to the blocking pool as the open, and
            // the body ends at the size `fstat` gave: an object of one chunk costs one trip.
            let (file, meta, first) = blocking(Op::Get, move || {
                let (mut file, meta) = inner.open_for_read(&k)?;
                let first = read_chunk(&mut file, &k, chunk, meta.size)?;
                Ok((file, meta, first))
            })
            .await?;
            let left = meta.size.saturating_sub(first.len() as u64);
            let rest = file_chunks(file, key.clone(), chunk, left, false);
            let first = (!first.is_empty()).then(|| Ok(kept::bytes(first)));
            let body = futures_util::stream::iter(first).chain(rest);
            Ok(Object {
                meta,
                body: Box::pin(body),
            })
        })
    }

    /// Seeks to `start`: a range late in a large file costs what it reads, not its offset.
    fn get_range<'a>(
        &'a self,
        key: &'a ObjectKey,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<Object>> {
        Box::pin(async move {
            segments(key)?;
            let (inner, k) = (Arc::clone(&self.inner), key.clone());
            let (file, meta, left) = blocking(Op::Get, move || {
                let (mut file, meta) = inner.open_for_read(&k)?;
                let (start, end) = (start.min(meta.size), end.min(meta.size));
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))
                    .map_err(|e| Error::io(Op::Get, k.as_str(), e))?;
                Ok((file, meta, end.saturating_sub(start)))
            })
            .await?;
            let body = file_chunks(file, key.clone(), self.chunk_size, left, true);
            Ok(Object {
                meta,
                body: Box::pin(body),
            })
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(self.put_inner(key, body))
    }

    fn create_upload<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<UploadId>>> {
        Box::pin(async move { self.create_upload_inner(key).await.map(Some) })
    }

    fn put_part<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        _part: u32,
        offset: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<PartTag>> {
        Box::pin(self.put_part_inner(key, upload, offset, body))
    }

    fn complete_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
        parts: &'a [PartTag],
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(self.complete_upload_inner(key, upload, parts))
    }

    fn abort_upload<'a>(
        &'a self,
        key: &'a ObjectKey,
        upload: &'a UploadId,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.abort_upload_inner(key, upload))
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            segments(key)?;
            let (inner, key) = (Arc::clone(&self.inner), key.clone());
            blocking(Op::Delete, move || inner.delete(&key)).await
        })
    }

    fn delete_if<'a>(
        &'a self,
        key: &'a ObjectKey,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<DeleteIf>> {
        Box::pin(async move {
            segments(key)?;
            let (inner, key, version) = (Arc::clone(&self.inner), key.clone(), version.clone());
            blocking(Op::Delete, move || inner.delete_if(&key, Some(&version))).await
        })
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        let lister = Lister {
            inner: Arc::clone(&self.inner),
            prefix: prefix.to_owned(),
            start_after: start_after.map(|k| k.as_str().to_owned()),
            stack: Vec::new(),
            started: false,
        };
        Box::pin(
            futures_util::stream::unfold(Some(lister), |lister| async move {
                let mut lister = lister?;
                let result = blocking(Op::List, move || {
                    let batch = lister.next_batch();
                    Ok((lister, batch))
                })
                .await;
                match result {
                    Ok((_, Ok(batch))) if batch.is_empty() => None,
                    Ok((lister, Ok(batch))) => Some((
                        futures_util::stream::iter(batch.into_iter().map(Ok)).left_stream(),
                        Some(lister),
                    )),
                    Ok((_, Err(e))) | Err(e) => Some((
                        futures_util::stream::once(std::future::ready(Err(e))).right_stream(),
                        None,
                    )),
                }
            })
            .flatten(),
        )
    }

    fn put_reports_blake3(&self) -> bool {
        // The BLAKE3 of what the put wrote, whenever the file holds exactly that.
        true
    }

    fn sync(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.sync_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_segments_follow_the_rules() {
        let ok = |s: &str| segments(&ObjectKey::new(s).unwrap()).map(|v| v.join("|"));
        assert_eq!(ok("a/b/c.txt").unwrap(), "a|b|c.txt");
        assert_eq!(ok(".hidden/x").unwrap(), ".hidden|x");
        assert_eq!(ok("a..b").unwrap(), "a..b");
        for bad in [
            "/abs",
            "a//b",
            "a/",
            "./a",
            "a/../b",
            "..",
            "a\\b",
            ".ferry-tmp-1",
        ] {
            let err = ok(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidKey { .. }), "{bad}: {err}");
        }
        assert!(ok(&"x".repeat(256)).is_err());
    }

    /// Large puts at once: each buffer written beside its put (several under way, shared
    /// between the puts) lands at its own offset. The bytes never repeat within an object,
    /// so a buffer written at another's offset shows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_writes_beside_the_puts_land_each_buffer_at_its_offset() {
        use direct::BUFFER;
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path())
            .await
            .unwrap()
            .with_direct_writes(true);
        let byte = |i: usize, put: usize| {
            ((i as u64 ^ (put as u64) << 40).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
        };
        let sizes = [
            9 * BUFFER + 4097,
            6 * BUFFER,
            3 * BUFFER + 1,
            12 * BUFFER - 5,
        ];
        let puts = sizes.iter().enumerate().map(|(put, &size)| {
            let store = store.clone();
            let data: Vec<u8> = (0..size).map(|i| byte(i, put)).collect();
            async move {
                let key = ObjectKey::new(format!("big/{put}")).unwrap();
                let meta = store
                    .put(&key, crate::body_from_bytes(data.clone().into(), 1 << 20))
                    .await
                    .unwrap();
                (key, data, meta)
            }
        });
        for (key, data, meta) in futures_util::future::join_all(puts).await {
            assert_eq!(meta.size, data.len() as u64);
            assert_eq!(
                meta.checksum,
                Some(Checksum::Blake3(*blake3::hash(&data).as_bytes()))
            );
            let read = std::fs::read(dir.path().join(key.as_str())).unwrap();
            assert!(read == data, "{}: read back differs", key.as_str());
        }
        assert_eq!(
            store.inner.writing.available_permits(),
            WRITES_IN_FLIGHT,
            "every write's permit returned"
        );
        if store.inner.no_direct.load(Ordering::Relaxed) {
            println!(
                "skipped the O_DIRECT path: this file system refuses it (plain writes checked)"
            );
        }
    }

    /// With `O_DIRECT`, objects of every size around the alignment and the buffer read back
    /// whole, with the BLAKE3 of their bytes (not of the padding), however the body is cut.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_writes_keep_every_size_whole() {
        use direct::{ALIGN, BUFFER};
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path())
            .await
            .unwrap()
            .with_direct_writes(true);
        let sizes = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            BUFFER - 1,
            BUFFER,
            BUFFER + 1,
            3 * BUFFER + ALIGN + 7,
        ];
        for (i, size) in sizes.into_iter().enumerate() {
            for chunk in [1000, ALIGN, BUFFER + 3] {
                let data: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
                let key = ObjectKey::new(format!("d/{size}-{chunk}")).unwrap();
                let meta = store
                    .put(&key, crate::body_from_bytes(data.clone().into(), chunk))
                    .await
                    .unwrap();
                assert_eq!(meta.size, size as u64);
                assert_eq!(
                    meta.checksum,
                    Some(Checksum::Blake3(*blake3::hash(&data).as_bytes())),
                    "{size} in chunks of {chunk}"
                );
                let read = std::fs::read(dir.path().join(key.as_str())).unwrap();
                assert!(
                    read == data,
                    "{size} in chunks of {chunk}: read back differs"
                );
            }
        }
        if store.inner.no_direct.load(Ordering::Relaxed) {
            println!(
                "skipped the O_DIRECT path: this file system refuses it (plain writes checked)"
            );
        }
    }
}
