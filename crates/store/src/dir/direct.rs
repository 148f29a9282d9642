//! Puts that bypass the page cache (`O_DIRECT`, Linux), where the file system takes them
//! ([`DirStore::with_direct_writes`](super::DirStore::with_direct_writes)).
//!
//! Why: a copy's bytes are read again by nobody soon (the engine checks them by the BLAKE3
//! the put computed), and putting them in the page cache costs a copy into new pages per byte
//! and evicts what the machine's readers use. Measured on this project's VMs: 640 MB written
//! and synced took 1.7–7.1 s through the page cache (the kernel's copy into pages the host
//! backs at their first touch was 44–56% of a 10k-file copy's samples) and 0.4–0.5 s with
//! `O_DIRECT` in 256 KiB writes.
//!
//! `O_DIRECT` wants the memory, the file offset and the length of each write aligned to the
//! device's block: the body is gathered into an aligned buffer and written 1 MiB at a time;
//! the last block is padded with zeros and the file cut to its length before it is linked
//! in place. A file system that refuses `O_DIRECT` (when it is set, or on a write: `EINVAL`,
//! `EOPNOTSUPP`) gets plain writes from that byte on, and the store stops asking for it.

use std::fs::File;

use rustix::fs::OFlags;
use rustix::io::Errno;

use super::kept::Pool;

/// The alignment of memory, offsets and lengths: 4 KiB covers the logical block size of
/// the devices and file systems Ferry meets (512 B or 4 KiB).
pub(super) const ALIGN: usize = 4096;

/// Bytes gathered before a write. Measured on this project's VMs (`dd oflag=direct`, 1 GiB):
/// 0.60 s in 256 KiB writes, 0.39 s in 1 MiB and in 4 MiB writes; `ferry migrate` of one
/// 1 GiB file 0.97 s → 0.79 s (medians of 8 alternating runs) from 256 KiB to 1 MiB. A put of
/// a small file touches only the pages it fills.
pub(super) const BUFFER: usize = 1 << 20;

/// Buffers kept for the next puts: new memory costs a fault per page at first touch (on a VM
/// the host's too), a kept buffer none. 16 × (1 MiB + 4 KiB) at most, whatever the
/// concurrency (the default concurrency's worth).
static POOL: Pool = Pool::new();

/// Asks for `O_DIRECT` on `file`; false when the file system refuses it.
pub(super) fn enable(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        rustix::fs::fcntl_getfl(file)
            .and_then(|flags| rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT))
            .is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// Turns `O_DIRECT` off on `file` (after a write it refused).
fn disable(file: &File) -> rustix::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let flags = rustix::fs::fcntl_getfl(file)?;
        rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        Ok(())
    }
}

/// The bytes of a put not yet written, in an aligned buffer.
pub(super) struct Gather {
    /// `BUFFER + ALIGN` bytes; the aligned region starts at `start`.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

impl Gather {
    pub(super) fn new() -> Gather {
        let buf = POOL
            .take(BUFFER + ALIGN)
            .unwrap_or_else(|| vec![0; BUFFER + ALIGN]);
        let start = buf.as_ptr().align_offset(ALIGN);
        Gather {
            buf,
            start,
            filled: 0,
        }
    }

    /// Copies what fits of `data`; returns how many bytes it took.
    pub(super) fn take(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(BUFFER - self.filled);
        let at = self.start + self.filled;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.filled += n;
        n
    }

    /// Bytes gathered and not yet written.
    pub(super) fn filled(&self) -> usize {
        self.filled
    }

    pub(super) fn is_full(&self) -> bool {
        self.filled == BUFFER
    }

    /// The bytes gathered, to be written at `offset` by [`Pending::write`] (on another
    /// thread, while this put gathers the next ones into a new buffer).
    pub(super) fn pending(self, offset: u64) -> Pending {
        Pending {
            gather: self,
            offset,
        }
    }

    /// Writes what was gathered at `offset` (the last block padded with zeros) and empties
    /// the buffer. Returns whether `O_DIRECT` was refused and turned off on the way (the write
    /// was then completed without it).
    pub(super) fn write_at(&mut self, file: &File, offset: u64) -> rustix::io::Result<bool> {
        let len = self.filled;
        let padded = len.next_multiple_of(ALIGN);
        let region = &mut self.buf[self.start..self.start + padded];
        region[len..].fill(0);
        let mut done = 0;
        let mut refused = false;
        while done < padded {
            match rustix::io::pwrite(file, &region[done..], offset + done as u64) {
                Ok(0) => return Err(Errno::NOSPC),
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                // A short write leaves the rest unaligned; some file systems refuse
                // `O_DIRECT` only on a write (`EINVAL`, or `EOPNOTSUPP` from a few).
                Err(Errno::INVAL | Errno::OPNOTSUPP) if !refused => {
                    disable(file)?;
                    refused = true;
                }
                Err(e) => return Err(e),
            }
        }
        self.filled = 0;
        Ok(refused)
    }
}

/// A full buffer of a put, and where in the file it goes.
pub(super) struct Pending {
    gather: Gather,
    offset: u64,
}

impl Pending {
    /// Writes the buffer ([`Gather::write_at`]); its memory goes back to the pool.
    pub(super) fn write(mut self, file: &File) -> rustix::io::Result<bool> {
        self.gather.write_at(file, self.offset)
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        POOL.keep(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gathered_region_is_aligned_and_a_tail_is_padded_then_cut_by_the_caller() {
        let mut gather = Gather::new();
        assert_eq!(gather.buf[gather.start..].as_ptr().align_offset(ALIGN), 0);
        let data: Vec<u8> = (0..BUFFER + 10).map(|i| (i % 251) as u8).collect();
        assert_eq!(gather.take(&data), BUFFER);
        assert!(gather.is_full());
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let direct = enable(&file);
        gather.write_at(&file, 0).unwrap();
        assert_eq!(gather.filled(), 0, "written and emptied");
        assert_eq!(gather.take(&data[BUFFER..]), 10);
        gather.write_at(&file, BUFFER as u64).unwrap();
        // What was written is the data and a padded block (cut by `TempFile::finish`).
        assert_eq!(file.metadata().unwrap().len(), (BUFFER + ALIGN) as u64);
        file.set_len(data.len() as u64).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("f")).unwrap(),
            data,
            "direct: {direct}"
        );
    }

    /// A write `O_DIRECT` refuses (here an offset off the alignment, as a file system that
    /// takes the flag but not the write would) is made without it, in full, and reported.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_refused_write_is_made_without_o_direct_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        if !enable(&file) {
            println!("skipped: this file system refuses O_DIRECT");
            return;
        }
        let mut gather = Gather::new();
        assert_eq!(gather.take(b"after a hundred bytes"), 21);
        let refused = gather.write_at(&file, 100).unwrap();
        assert_eq!(gather.filled(), 0, "written and emptied");
        assert!(refused, "an unaligned O_DIRECT write is refused");
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(OFlags::DIRECT), "O_DIRECT turned off");
        let read = std::fs::read(&path).unwrap();
        assert_eq!(&read[100..121], b"after a hundred bytes");
        assert!(
            read[121..].iter().all(|b| *b == 0),
            "the padding (cut by the caller)"
        );
    }
}
