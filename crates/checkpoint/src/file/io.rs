//! The file operations `FileStore` does, behind a small trait so tests can inject faults and
//! crashes at the N-th operation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// The mutating operations count as steps of a save; reads do not.
pub(crate) trait Io: Send + Sync + std::fmt::Debug + 'static {
    /// Creates or truncates `path` and writes `bytes`, without fsync.
    fn write(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Fsyncs a file.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` over `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Fsyncs a directory, making the renames and removals in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Flushes the whole file system holding `dir` (`syncfs(2)`): every write, rename and
    /// removal on it so far is durable when it returns.
    fn sync_fs(&self, dir: &Path) -> io::Result<()>;
    /// Reads up to `limit` bytes of a file; `None` when it does not exist.
    fn read(&self, path: &Path, limit: Option<usize>) -> io::Result<Option<Vec<u8>>>;
}

/// The real file system.
#[derive(Debug, Default)]
pub(crate) struct RealIo;

impl Io for RealIo {
    fn write(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all(bytes)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        Ok(rustix::fs::syncfs(File::open(dir)?)?)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn sync_fs(&self, _dir: &Path) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "syncfs(2) exists only on Linux",
        ))
    }

    fn read(&self, path: &Path, limit: Option<usize>) -> io::Result<Option<Vec<u8>>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        match limit {
            Some(limit) => {
                file.take(limit as u64).read_to_end(&mut bytes)?;
            }
            None => {
                let mut file = file;
                file.read_to_end(&mut bytes)?;
            }
        }
        Ok(Some(bytes))
    }
}

#[cfg(test)]
pub(crate) mod fault {
    //! A fault-injecting [`Io`]: fails or "crashes" at the N-th mutating step.

    use std::collections::HashSet;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use parking_lot::Mutex;

    use super::*;

    /// What happens at the chosen step.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Fault {
        /// The step fails with EIO; later steps work.
        Fail,
        /// The machine stops at this step: a write in progress leaves half its bytes, every
        /// file written but not yet fsynced is torn (cut to half), and every later step fails.
        Crash,
    }

    #[derive(Debug)]
    pub(crate) struct FaultIo {
        real: RealIo,
        at: u64,
        fault: Fault,
        steps: AtomicU64,
        crashed: AtomicBool,
        unsynced: Mutex<HashSet<PathBuf>>,
    }

    impl FaultIo {
        /// Injects `fault` at step `at` (0-based); `u64::MAX` never does.
        pub(crate) fn new(at: u64, fault: Fault) -> FaultIo {
            FaultIo {
                real: RealIo,
                at,
                fault,
                steps: AtomicU64::new(0),
                crashed: AtomicBool::new(false),
                unsynced: Mutex::default(),
            }
        }

        /// Steps done so far.
        pub(crate) fn steps(&self) -> u64 {
            self.steps.load(Ordering::SeqCst)
        }

        fn tear_unsynced(&self) {
            for path in self.unsynced.lock().drain() {
                if let Ok(file) = OpenOptions::new().write(true).open(&path) {
                    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = file.set_len(len / 2);
                }
            }
        }

        /// `Ok(true)`: do the step; `Err`: the step fails (crash or injected error).
        fn step(&self) -> io::Result<()> {
            if self.crashed.load(Ordering::SeqCst) {
                return Err(io::Error::other("simulated crash: the machine is down"));
            }
            let n = self.steps.fetch_add(1, Ordering::SeqCst);
            if n != self.at {
                return Ok(());
            }
            match self.fault {
                Fault::Fail => Err(io::Error::from_raw_os_error(5)),
                Fault::Crash => {
                    self.crashed.store(true, Ordering::SeqCst);
                    self.tear_unsynced();
                    Err(io::Error::other("simulated crash"))
                }
            }
        }
    }

    impl Io for FaultIo {
        fn write(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
            if let Err(e) = self.step() {
                if self.fault == Fault::Crash && self.crashed.load(Ordering::SeqCst) {
                    // The write was under way: half of it reached the file.
                    let _ = fs::write(path, &bytes[..bytes.len() / 2]);
                }
                return Err(e);
            }
            fs::write(path, bytes)?;
            self.unsynced.lock().insert(path.to_path_buf());
            Ok(())
        }

        fn sync_file(&self, path: &Path) -> io::Result<()> {
            self.step()?;
            self.real.sync_file(path)?;
            self.unsynced.lock().remove(path);
            Ok(())
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.step()?;
            self.real.rename(from, to)?;
            let mut unsynced = self.unsynced.lock();
            if unsynced.remove(from) {
                unsynced.insert(to.to_path_buf());
            }
            Ok(())
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            self.step()?;
            self.real.remove(path)
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.step()?;
            self.real.sync_dir(dir)
        }

        fn sync_fs(&self, dir: &Path) -> io::Result<()> {
            self.step()?;
            self.real.sync_fs(dir)?;
            self.unsynced.lock().clear();
            Ok(())
        }

        fn read(&self, path: &Path, limit: Option<usize>) -> io::Result<Option<Vec<u8>>> {
            self.real.read(path, limit)
        }
    }
}
