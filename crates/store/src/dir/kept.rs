//! Read buffers of large chunks, kept for the next reads instead of freed.
//!
//! Why: a large file is read a chunk at a time, on the blocking pool, and each chunk is freed
//! by whichever thread drops it last. glibc keeps a freed block in the arena of the thread
//! that allocated it (one arena per thread, up to eight per core), and `ferry` raises the
//! thresholds under which glibc gives memory back (see its `main`): every thread's arena then
//! holds a few chunks that no one reuses. A 1 GiB copy's peak RSS went from 45 to 65 MiB when
//! its `O_DIRECT` writes moved to threads of their own (23 MiB with one arena). A kept buffer
//! is never freed, so no arena holds it twice.

use bytes::Bytes;
use parking_lot::Mutex;

/// Reads of at least this many bytes use kept buffers.
pub(super) const MIN: usize = 256 << 10;

/// Buffers kept at most (16 chunks: 16 MiB at the default chunk size).
const KEPT: usize = 16;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty vector with room for `capacity` bytes: a kept one when `capacity` is at least
/// [`MIN`] and one that large is kept.
pub(super) fn buffer(capacity: usize) -> Vec<u8> {
    if capacity >= MIN {
        let mut pool = POOL.lock();
        while let Some(mut buf) = pool.pop() {
            // (A smaller one, from a store with smaller chunks, is freed.)
            if buf.capacity() >= capacity {
                buf.clear();
                return buf;
            }
        }
    }
    Vec::with_capacity(capacity)
}

/// `buf` as [`Bytes`]; one of at least [`MIN`] bytes of capacity goes back to the pool when
/// the last `Bytes` of it is dropped.
pub(super) fn bytes(buf: Vec<u8>) -> Bytes {
    if buf.capacity() >= MIN {
        Bytes::from_owner(Kept(buf))
    } else {
        Bytes::from(buf)
    }
}

struct Kept(Vec<u8>);

impl AsRef<[u8]> for Kept {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let mut pool = POOL.lock();
        if pool.len() < KEPT {
            pool.push(std::mem::take(&mut self.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_comes_back_once_its_last_bytes_are_dropped() {
        let mut buf = buffer(MIN + 1);
        buf.extend_from_slice(b"first read");
        let ptr = buf.as_ptr();
        let first = bytes(buf);
        let slice = first.slice(0..5);
        drop(first);
        assert_eq!(&slice[..], b"first", "a slice keeps the buffer alive");
        drop(slice);
        // Back in the pool (other tests' buffers may be there too: look for this one).
        let mut taken = Vec::new();
        let found = loop {
            let buf = buffer(MIN + 1);
            assert!(buf.is_empty(), "a kept buffer comes back empty");
            if buf.as_ptr() == ptr {
                break true;
            }
            if buf.capacity() < MIN || taken.len() > KEPT {
                break false;
            }
            taken.push(buf);
        };
        assert!(found, "the buffer was kept");
        assert_eq!(&bytes(b"small".to_vec())[..], b"small");
    }
}
