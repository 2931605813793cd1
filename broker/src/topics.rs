//! The broker's cache of topics, topic-name rules, and record routing (Kafka's murmur2
//! partitioner). The catalog in metadata is the truth; this table mirrors it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use silt_metadata::catalog::Topic;

use crate::error::BrokerError;

/// Longest topic name, as Kafka's.
pub const MAX_TOPIC_NAME: usize = 249;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// Checks a topic name against Kafka's rules: `[a-zA-Z0-9._-]`, 1..=249 chars, not `.`/`..`.
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    if name.is_empty() {
        return Err(BrokerError::InvalidArgument("topic name is empty".into()));
    }
    if name.len() > MAX_TOPIC_NAME {
        return Err(BrokerError::InvalidArgument(format!(
            "topic name is {} characters; the limit is {MAX_TOPIC_NAME}",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(BrokerError::InvalidArgument(format!(
            "topic name '{name}' is reserved"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(BrokerError::InvalidArgument(format!(
            "topic name '{name}' contains '{bad}'; use only a-z, A-Z, 0-9, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a non-null key.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

/// The topics this broker knows, by name.
#[derive(Debug, Default)]
pub struct TopicTable {
    by_name: RwLock<HashMap<String, Arc<Topic>>>,
}

impl TopicTable {
    pub fn new(topics: Vec<Topic>) -> Self {
        let table = Self::default();
        for t in topics {
            table.insert(t);
        }
        table
    }

    pub fn insert(&self, topic: Topic) {
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        map.insert(topic.record.name.clone(), Arc::new(topic));
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Topic>> {
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The topic, or NOT_FOUND (INVALID_ARGUMENT for an invalid name).
    pub fn require(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        validate_topic_name(name)?;
        self.get(name)
            .ok_or_else(|| BrokerError::unknown_topic(name))
    }

    /// Ids of all live topics.
    pub fn live_ids(&self) -> HashMap<u64, Arc<Topic>> {
        let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        map.values().map(|t| (t.id, t.clone())).collect()
    }

    pub fn all(&self) -> Vec<Arc<Topic>> {
        let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = map.values().cloned().collect();
        all.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        all
    }
}

/// Checks a partition number against a topic.
pub fn check_partition(topic: &Topic, partition: u32) -> Result<(), BrokerError> {
    if partition >= topic.record.partitions {
        return Err(BrokerError::NotFound(format!(
            "topic '{}' has partitions 0..{}; partition {partition} does not exist",
            topic.record.name, topic.record.partitions
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn keys_route_like_kafka() {
        // toPositive(murmur2("foobar")) % 10 = (-790332482 & 0x7fffffff) % 10
        assert_eq!(
            partition_for_key(b"foobar", 10),
            ((-790_332_482i32 & 0x7fff_ffff) as u32) % 10
        );
        assert_eq!(partition_for_key(b"abc", 7), 479_470_107 % 7);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "orders.v1", "A_b-C", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
