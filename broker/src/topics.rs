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

pub use silt_storage::routing::{murmur2, partition_for_key};

/// The topics this broker knows, by name and by id.
#[derive(Debug, Default)]
pub struct TopicTable {
    inner: RwLock<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<u64, Arc<Topic>>,
}

impl TopicTable {
    pub fn new(topics: Vec<Topic>) -> Self {
        let table = Self::default();
        for t in topics {
            table.insert(t);
        }
        table
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, topic: Topic) {
        let topic = Arc::new(topic);
        let mut t = self.write();
        if let Some(old) = t.by_name.insert(topic.record.name.clone(), topic.clone()) {
            t.by_id.remove(&old.id);
        }
        t.by_id.insert(topic.id, topic);
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Topic>> {
        let mut t = self.write();
        let topic = t.by_name.remove(name)?;
        t.by_id.remove(&topic.id);
        Some(topic)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().by_name.get(name).cloned()
    }

    /// True when a live topic has this id.
    pub fn is_live(&self, id: u64) -> bool {
        self.read().by_id.contains_key(&id)
    }

    /// The topic, or NOT_FOUND (INVALID_ARGUMENT for an invalid name).
    pub fn require(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        validate_topic_name(name)?;
        self.get(name)
            .ok_or_else(|| BrokerError::unknown_topic(name))
    }

    /// Ids of all live topics.
    pub fn live_ids(&self) -> HashMap<u64, Arc<Topic>> {
        self.read().by_id.clone()
    }

    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.read().by_name.values().cloned().collect();
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
    fn a_recreated_topic_replaces_the_old_id() {
        use silt_metadata::codec::TopicRecord;
        let topic = |id| Topic {
            id,
            record: TopicRecord {
                v: 1,
                name: "t".into(),
                partitions: 1,
                retention_ms: -1,
                max_record_bytes: 1,
                created_at_ms: 0,
            },
        };
        let table = TopicTable::default();
        table.insert(topic(5));
        table.insert(topic(9));
        assert!(!table.is_live(5) && table.is_live(9));
        table.remove("t");
        assert!(!table.is_live(9) && table.all().is_empty());
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
