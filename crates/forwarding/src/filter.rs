//! The presence filter that lets a read of a key that is not in the table skip the shard lock.

use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};

/// A blocked Bloom filter for the whole table: a key sets three bits of one 64-bit word.
///
/// A lookup is one load and a mask: a miss costs the latency of that word, and a false
/// positive costs the shard's read lock and a probe (about 45 ns at 1M entries, an atomic
/// read-modify-write that also stops the next lookups' loads from overlapping it). At
/// 8 bits per key, three bits per key give about 3.6% false positives, two bits 5.2%; more
/// bits per key or wider blocks (one bit in each of four words of a 32-byte block: 2.4%)
/// measured no faster, their extra loads and instructions costing what they save.
///
/// One array for the whole table rather than one per shard, so a lookup does not load the
/// shard's filter pointer first. The word index is hash bits 32.., whose low bits are the
/// shard index: a shard's keys set bits only in the shard's own words, under the shard's
/// write lock, so a rebuild under that lock races no insert. Words are read without a lock.
pub(crate) struct Filter {
    words: Box<[AtomicU64]>,
    mask: u64,
}

impl Filter {
    /// A filter of `words` words (a power of two).
    pub(crate) fn new(words: usize) -> Filter {
        debug_assert!(words.is_power_of_two());
        Filter {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            mask: (words - 1) as u64,
        }
    }

    /// The word of a hash: bits 32.. (the shard index is bits 32..32 + shard bits).
    #[inline]
    fn index(&self, hash: u64) -> usize {
        ((hash >> 32) & self.mask) as usize
    }

    /// The bits of a hash in its word: three positions from bits 0..18.
    #[inline]
    fn bits(hash: u64) -> u64 {
        (1u64 << (hash & 63)) | (1u64 << ((hash >> 6) & 63)) | (1u64 << ((hash >> 12) & 63))
    }

    /// Whether the key with this hash may be present; `false` means it is not.
    #[cfg(test)]
    pub(crate) fn may_contain(&self, hash: u64) -> bool {
        self.may_contain_ordered(hash, Relaxed)
    }

    /// [`Filter::may_contain`] with the word loaded with `order`: `Relaxed` on the plain read
    /// path, `SeqCst` for a counted read (see [`crate::read`]; on x86 both are one `mov`).
    #[inline(always)]
    pub(crate) fn may_contain_ordered(&self, hash: u64, order: Ordering) -> bool {
        let bits = Self::bits(hash);
        self.words[self.index(hash)].load(order) & bits == bits
    }

    /// Sets the bits of a key. The caller holds the write lock of the key's shard.
    ///
    /// `SeqCst`, so that a counted read whose `SeqCst` load misses these bits precedes this
    /// insert in the single total order, and a drain that begins after the key's flip sees
    /// that read counted (see [`crate::read`]). Registration is not on the hot path.
    pub(crate) fn insert(&self, hash: u64) {
        self.words[self.index(hash)].fetch_or(Self::bits(hash), Ordering::SeqCst);
    }

    /// Recomputes the words of shard `shard` (of `shards`, a power of two: the shard's
    /// words are those whose index ends in its number) from the hashes of its entries,
    /// dropping the bits of removed keys. The caller holds the shard's write lock, so no
    /// insert races it; each word is replaced by one store, and every present key's bits are
    /// in both the old and the new word, so a lock-free reader never misses a present key.
    pub(crate) fn rebuild(&self, shard: usize, shards: usize, hashes: impl Iterator<Item = u64>) {
        let per_shard = self.words.len() / shards;
        let mut words = vec![0u64; per_shard];
        for hash in hashes {
            let index = self.index(hash);
            debug_assert_eq!(index & (shards - 1), shard, "a key's word is in its shard");
            words[index / shards] |= Self::bits(hash);
        }
        for (local, value) in words.into_iter().enumerate() {
            self.words[local * shards + shard].store(value, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-spread 64-bit values, like `foldhash::quality` output (splitmix64).
    fn hashes(seed: u64) -> impl Iterator<Item = u64> {
        let mut state = seed;
        std::iter::repeat_with(move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    }

    #[test]
    fn i2_no_false_negative_after_inserts_and_rebuilds() {
        let (words, shards) = (1024, 8);
        let filter = Filter::new(words);
        let present: Vec<u64> = hashes(1).take(words * 8).collect();
        for &hash in &present {
            filter.insert(hash);
        }
        assert!(present.iter().all(|&h| filter.may_contain(h)));
        // Each shard keeps every other key of its own.
        for shard in 0..shards {
            let kept = present
                .iter()
                .step_by(2)
                .copied()
                .filter(|&h| filter.index(h) & (shards - 1) == shard);
            filter.rebuild(shard, shards, kept);
        }
        assert!(present.iter().step_by(2).all(|&h| filter.may_contain(h)));
        // A rebuild with no keys clears the shard's words.
        for shard in 0..shards {
            filter.rebuild(shard, shards, std::iter::empty());
        }
        assert!(present.iter().all(|&h| !filter.may_contain(h)));
    }

    #[test]
    fn false_positives_at_8_bits_per_key_stay_under_4_percent() {
        // Three bits in one word at 8 keys per word: about 3.6% (two bits: about 5.2%).
        let words = 1 << 14;
        let filter = Filter::new(words);
        for hash in hashes(2).take(words * 8) {
            filter.insert(hash);
        }
        let probes = 200_000;
        let positives = hashes(3)
            .take(probes)
            .filter(|&h| filter.may_contain(h))
            .count();
        let rate = positives as f64 / probes as f64;
        assert!(rate < 0.04, "false positive rate {rate}");
    }
}
