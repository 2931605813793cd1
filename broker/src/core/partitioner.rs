//! Which partition a keyed record goes to. Each protocol has its own rule — Kafka's murmur2 of
//! the key (here, and in every Kafka client), Kinesis's MD5 of the partition key into hash-key
//! ranges (next) — so the rule is a trait the core is built with, not a function it calls.

use std::fmt::Debug;

/// Maps a record key to a partition.
pub trait Partitioner: Send + Sync + Debug {
    /// The partition of `key` among `partitions` (at least 1).
    fn partition(&self, key: &[u8], partitions: u32) -> u32;
}

/// Kafka's default partitioner: `(murmur2(key) & 0x7fffffff) % partitions`, bit for bit the
/// Java client's, so keyed data lands where a Kafka producer would put it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Murmur2;

impl Partitioner for Murmur2 {
    fn partition(&self, key: &[u8], partitions: u32) -> u32 {
        silt_storage::routing::partition_for_key(key, partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_places_keys_as_kafka_does() {
        // Kafka's UtilsTest vectors: murmur2("21") = -973932308, murmur2("foobar") = -790332482.
        let p = Murmur2;
        for (key, hash) in [(&b"21"[..], -973_932_308_i32), (b"foobar", -790_332_482)] {
            assert_eq!(p.partition(key, 10), (hash as u32 & 0x7fff_ffff) % 10);
        }
        for partitions in [1, 3, 12, 10_000] {
            for key in [&b"a"[..], b"order-42", b"\xff\x00"] {
                assert!(p.partition(key, partitions) < partitions);
                assert_eq!(p.partition(key, partitions), p.partition(key, partitions));
            }
        }
    }
}
