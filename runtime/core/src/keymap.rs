//! Maps and sets keyed by run key, for the hot in-memory tables (the writer's rows, the
//! engine's resident runs), hashed without SipHash.
//!
//! Run keys are UUIDv7 made by the host (never chosen by a caller), so the flooding
//! SipHash guards against cannot be aimed at them, and their low 62 bits are random: one
//! multiply mixes them well enough for a hash table. SipHash was about 4% of the
//! writer's instructions per step in the durability bench.

use std::hash::{BuildHasher, Hasher};

/// A `HashMap` keyed by run key.
pub type KeyMap<V> = std::collections::HashMap<u128, V, KeyHash>;

/// A `HashSet` of run keys.
pub type KeySet = std::collections::HashSet<u128, KeyHash>;

/// Builds [`KeyHasher`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHash;

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// Folds a `u128` into 64 bits and mixes it with one multiply (Fibonacci hashing).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHasher(u64);

/// 2^64 divided by the golden ratio, odd: the usual Fibonacci hashing multiplier.
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, n: u128) {
        let folded = (n as u64) ^ ((n >> 64) as u64);
        self.0 = (self.0 ^ folded).wrapping_mul(MIX);
    }

    /// Anything other than a `u128` (never used for run keys, but a `Hasher` must take
    /// bytes): one byte at a time, the same mix.
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(MIX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_differ_in_either_half_hash_apart() {
        let hash = |n: u128| KeyHash.hash_one(n);
        let key = 0x0190_0000_0000_7000_8000_0000_0000_0001_u128;
        assert_ne!(hash(key), hash(key + 1));
        assert_ne!(hash(key), hash(key + (1 << 64)));
        // Spread over the buckets of a table: consecutive keys fill 64 buckets evenly.
        let mut buckets = [0u32; 64];
        for n in 0..6400u128 {
            buckets[(hash(key + n) >> 58) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| b > 50 && b < 150), "{buckets:?}");
    }

    #[test]
    fn a_map_by_run_key_works_as_any_map() {
        let mut map: KeyMap<&str> = KeyMap::default();
        map.insert(7, "seven");
        map.insert(7 << 64, "high");
        assert_eq!(map.get(&7), Some(&"seven"));
        assert_eq!(map.get(&(7 << 64)), Some(&"high"));
        assert_eq!(map.remove(&7), Some("seven"));
        assert!(!map.contains_key(&7));
    }
}
