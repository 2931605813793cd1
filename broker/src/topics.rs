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
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "orders.v1", "A_b-C", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
