//! Buffers kept for the next reads and puts instead of freed: a [`Pool`] each for the
//! `O_DIRECT` puts' aligned buffers (`direct`) and for the reads of large chunks (here).
//!
//! Why for reads: a large file is read a chunk at a time, on the blocking pool, and each
//! chunk is freed by whichever thread drops it last. glibc keeps a freed block in the arena
//! of the thread that allocated it (one arena per thread, up to eight per core), and `ferry`
//! raises the thresholds under which glibc gives memory back (see its `main`): every
//! thread's arena then holds a few chunks that no one reuses. A 1 GiB copy's peak RSS went from 45 to 65 MiB when
//! its `O_DIRECT` writes moved to threads of their own (23 MiB with one arena), and 22 MiB
//! with kept buffers: a kept buffer is not freed, the next read takes it, whatever its thread.

use bytes::Bytes;
use parking_lot::Mutex;

/// Reads of at least this many bytes use kept buffers.
pub(super) const MIN: usize = 256 << 10;

/// Buffers a pool keeps at most (16 chunks: 16 MiB at the default chunk size).
const KEPT: usize = 16;

/// The read buffers kept, for every `DirStore` of the process.
static POOL: Pool = Pool::new();

/// Buffers kept for reuse, [`KEPT`] at most.
pub(super) struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    pub(super) const fn new() -> Pool {
        Pool(Mutex::new(Vec::new()))
    }

    /// A kept buffer with room for `capacity` bytes, as it was kept (its length and bytes);
    /// smaller ones met on the way are freed.
    pub(super) fn take(&self, capacity: usize) -> Option<Vec<u8>> {
        let mut kept = self.0.lock();
        while let Some(buf) = kept.pop() {
            if buf.capacity() >= capacity {
                return Some(buf);
            }
        }
        None
    }

    /// Keeps `buf` for a later [`Pool::take`], unless [`KEPT`] are kept already.
    pub(super) fn keep(&self, buf: Vec<u8>) {
        let mut kept = self.0.lock();
        if kept.len() < KEPT {
            kept.push(buf);
        }
    }

    fn buffer(&self, capacity: usize) -> Vec<u8> {
        if capacity >= MIN
            && let Some(mut buf) = self.take(capacity)
        {
            buf.clear();
            return buf;
        }
        Vec::with_capacity(capacity)
    }

    fn bytes(&'static self, buf: Vec<u8>) -> Bytes {
        if buf.capacity() >= MIN {
            Bytes::from_owner(Kept { buf, pool: self })
        } else {
            Bytes::from(buf)
        }
    }
}

/// An empty vector with room for `capacity` bytes: a kept one when `capacity` is at least
/// [`MIN`] and one that large is kept.
pub(super) fn buffer(capacity: usize) -> Vec<u8> {
    POOL.buffer(capacity)
}

/// `buf` as [`Bytes`]; one of at least [`MIN`] bytes of capacity goes back to the pool when
/// the last `Bytes` of it is dropped.
pub(super) fn bytes(buf: Vec<u8>) -> Bytes {
    POOL.bytes(buf)
}

struct Kept {
    buf: Vec<u8>,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Kept {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.pool.keep(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_comes_back_once_its_last_bytes_are_dropped() {
        // A pool of its own: other tests read through the process's pool meanwhile.
        static OWN: Pool = Pool::new();
        let mut buf = OWN.buffer(MIN + 1);
        buf.extend_from_slice(b"first read");
        let ptr = buf.as_ptr();
        let first = OWN.bytes(buf);
        let slice = first.slice(0..5);
        drop(first);
        assert_eq!(&slice[..], b"first", "a slice keeps the buffer alive");
        assert!(OWN.0.lock().is_empty(), "not back while a slice holds it");
        drop(slice);
        let again = OWN.buffer(MIN + 1);
        assert_eq!(again.as_ptr(), ptr, "the buffer was kept");
        assert!(again.is_empty(), "a kept buffer comes back empty");
        // Smaller reads and buffers are not kept.
        assert_eq!(&OWN.bytes(b"small".to_vec())[..], b"small");
        assert!(OWN.0.lock().is_empty());
        for _ in 0..KEPT + 3 {
            drop(OWN.bytes(Vec::with_capacity(MIN)));
        }
        assert_eq!(OWN.0.lock().len(), KEPT, "{KEPT} kept at most");
    }
}
