//! The hasher of the model's maps.
//!
//! Every event looks up a task, span, thread or callsite by an id off the
//! wire; std's SipHash costs more than the rest of applying a poll. This is a
//! folded multiply (as foldhash and ahash's fallback do) with a random seed
//! per map: a few cycles for an integer key, and the seed keeps a producer
//! from choosing ids that collide.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

/// A `HashMap` with the model's hasher.
pub type FastMap<K, V> = HashMap<K, V, FastState>;

/// A `HashSet` with the model's hasher.
pub type FastSet<K> = HashSet<K, FastState>;

/// An arbitrary odd constant (digits of pi).
const MUL: u64 = 0x243f_6a88_85a3_08d3;

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

/// Builds [`FastHasher`]s with a seed drawn when the map is made.
#[derive(Clone, Copy, Debug)]
pub struct FastState {
    seed: u64,
}

impl Default for FastState {
    fn default() -> Self {
        // std's RandomState is seeded from the OS once per thread and
        // stepped per instance: a cheap source of a fresh seed.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        Self { seed }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher { h: self.seed }
    }
}

/// The hasher of [`FastState`].
#[derive(Clone, Copy, Debug)]
pub struct FastHasher {
    h: u64,
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.h = folded_multiply(self.h ^ i, MUL);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // No further round: each word written was folded already, and a
        // folded multiply carries every input bit to both ends of its
        // result (the low half of the product gives the high bits their
        // spread, the high half reaches the low bits from every input
        // bit), which is what hashbrown reads: the bucket from the low
        // bits, the tag from the high ones. The test below checks both.
        self.h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ids_spread_over_buckets() {
        let s = FastState::default();
        // Sequential ids, and ids that differ only in their high bits.
        for ids in [
            (0..4096u64).collect::<Vec<_>>(),
            (0..4096u64).map(|i| i << 40).collect(),
        ] {
            let mut low = FastSet::default();
            let mut high = FastSet::default();
            for id in &ids {
                let h = s.hash_one(id);
                low.insert(h & 0xfff);
                high.insert(h >> 57);
            }
            assert!(low.len() > 2000, "low bits: {}", low.len());
            assert_eq!(high.len(), 128, "tag bits");
        }
    }

    #[test]
    fn seeds_differ_and_strings_hash_by_content() {
        let (a, b) = (FastState::default(), FastState::default());
        assert_ne!(a.hash_one(1u64), b.hash_one(1u64));
        assert_eq!(
            a.hash_one("name@src/main.rs:10"),
            a.hash_one("name@src/main.rs:10")
        );
        assert_ne!(a.hash_one("abc"), a.hash_one("abd"));
        assert_ne!(a.hash_one(""), a.hash_one("\0"));
    }
}
