//! Topics: the broker's table of them (the catalog in metadata is the truth; this table mirrors
//! it), the name rules (Kafka's, which Kinesis's stream names also satisfy), and what a new
//! topic gets when its creator leaves a setting out ([`TopicDefaults`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use silt_metadata::catalog::Topic;
use silt_metadata::codec::{CleanupPolicy, DEFAULT_DELETE_RETENTION_MS, TopicRecord};

use crate::core::error::BrokerError;

/// Longest topic name, as Kafka's.
pub const MAX_TOPIC_NAME: usize = 249;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// Checks a topic name against Kafka's rules: `[a-zA-Z0-9._-]`, 1..=249 chars, not `.`/`..`.
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    if name.is_empty() {
        return Err(BrokerError::invalid("topic name is empty"));
    }
    if name.len() > MAX_TOPIC_NAME {
        return Err(BrokerError::invalid(format!(
            "topic name is {} characters; the limit is {MAX_TOPIC_NAME}",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(BrokerError::invalid(format!(
            "topic name '{name}' is reserved"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(BrokerError::invalid(format!(
            "topic name '{name}' contains '{bad}'; use only a-z, A-Z, 0-9, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// A topic to create, as a caller asks for it: unset settings take the broker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    /// -1 keeps records forever.
    pub retention_ms: Option<i64>,
    /// Most bytes kept per partition; -1 (the default): no size limit.
    pub retention_bytes: Option<i64>,
    pub max_record_bytes: Option<u32>,
    /// Retention, key compaction or both; the default: retention (`delete`).
    pub cleanup_policy: Option<CleanupPolicy>,
    /// How long a compacted topic keeps a tombstone, in ms; the default: one day.
    pub delete_retention_ms: Option<i64>,
}

/// A change to a live topic's settings; `None` keeps a setting as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicChange {
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    pub cleanup_policy: Option<CleanupPolicy>,
    pub delete_retention_ms: Option<i64>,
}

impl TopicChange {
    /// `record` with the change applied, checked as a create would check it.
    pub fn apply(&self, record: &TopicRecord) -> Result<TopicRecord, BrokerError> {
        if *self == TopicChange::default() {
            return Err(BrokerError::invalid(
                "nothing to change: give a new retention_ms, retention_bytes, cleanup_policy or delete_retention_ms",
            ));
        }
        let mut new = record.clone();
        if let Some(ms) = self.retention_ms {
            check_retention_ms(ms)?;
            new.retention_ms = ms;
        }
        if let Some(bytes) = self.retention_bytes {
            check_retention_bytes(bytes)?;
            new.retention_bytes = bytes;
        }
        if let Some(policy) = self.cleanup_policy {
            new.cleanup_policy = policy;
        }
        if let Some(ms) = self.delete_retention_ms {
            check_delete_retention_ms(ms)?;
            new.delete_retention_ms = ms;
        }
        Ok(new)
    }
}

fn check_retention_ms(retention_ms: i64) -> Result<(), BrokerError> {
    if retention_ms < -1 || retention_ms == 0 {
        return Err(BrokerError::invalid(format!(
            "retention_ms must be -1 (keep forever) or positive, got {retention_ms}"
        )));
    }
    Ok(())
}

fn check_retention_bytes(retention_bytes: i64) -> Result<(), BrokerError> {
    if retention_bytes < -1 || retention_bytes == 0 {
        return Err(BrokerError::invalid(format!(
            "retention_bytes must be -1 (no size limit) or positive, got {retention_bytes}"
        )));
    }
    Ok(())
}

fn check_delete_retention_ms(delete_retention_ms: i64) -> Result<(), BrokerError> {
    if delete_retention_ms < 0 {
        return Err(BrokerError::invalid(format!(
            "delete_retention_ms must be 0 (tombstones go at the next compaction) or positive, got {delete_retention_ms}"
        )));
    }
    Ok(())
}

/// The broker's defaults and bounds for new topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicDefaults {
    pub retention_ms: i64,
    pub max_record_bytes: u32,
    /// A record can be no larger than a batch.
    pub max_batch_bytes: u32,
}

impl TopicDefaults {
    /// Checks `spec` and fills in what it leaves out.
    pub fn record(&self, spec: &TopicSpec, now_ms: i64) -> Result<TopicRecord, BrokerError> {
        validate_topic_name(&spec.name)?;
        if spec.partitions == 0 || spec.partitions > MAX_PARTITIONS {
            return Err(BrokerError::invalid(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {}",
                spec.partitions
            )));
        }
        let retention_ms = spec.retention_ms.unwrap_or(self.retention_ms);
        check_retention_ms(retention_ms)?;
        let retention_bytes = spec.retention_bytes.unwrap_or(-1);
        check_retention_bytes(retention_bytes)?;
        let delete_retention_ms = spec
            .delete_retention_ms
            .unwrap_or(DEFAULT_DELETE_RETENTION_MS);
        check_delete_retention_ms(delete_retention_ms)?;
        let max_record_bytes = spec.max_record_bytes.unwrap_or(self.max_record_bytes);
        if max_record_bytes == 0 || max_record_bytes > self.max_batch_bytes {
            return Err(BrokerError::invalid(format!(
                "max_record_bytes must be between 1 and the broker's max batch size {}, got {max_record_bytes}",
                self.max_batch_bytes
            )));
        }
        Ok(TopicRecord {
            v: 1,
            name: spec.name.clone(),
            partitions: spec.partitions,
            retention_ms,
            retention_bytes,
            max_record_bytes,
            created_at_ms: now_ms,
            cleanup_policy: spec.cleanup_policy.unwrap_or_default(),
            delete_retention_ms,
        })
    }
}

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

    /// The topic, or not-found (invalid for an invalid name).
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
        return Err(BrokerError::not_found(format!(
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
                retention_bytes: -1,
                max_record_bytes: 1,
                created_at_ms: 0,
                cleanup_policy: CleanupPolicy::Delete,
                delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            },
        };
        let table = TopicTable::default();
        table.insert(topic(5));
        table.insert(topic(9));
        assert!(!table.is_live(5) && table.is_live(9));
        table.remove("t");
        assert!(!table.is_live(9) && table.all().is_empty());
    }

    const DEFAULTS: TopicDefaults = TopicDefaults {
        retention_ms: 604_800_000,
        max_record_bytes: 1 << 20,
        max_batch_bytes: 1 << 20,
    };

    fn spec() -> TopicSpec {
        TopicSpec {
            name: "kv".into(),
            partitions: 2,
            ..TopicSpec::default()
        }
    }

    #[test]
    fn a_new_topic_is_deleted_by_retention_and_keeps_tombstones_a_day_by_default() {
        let t = DEFAULTS.record(&spec(), 7).unwrap();
        assert_eq!(t.cleanup_policy, CleanupPolicy::Delete);
        assert_eq!(t.delete_retention_ms, 86_400_000);
        let t = DEFAULTS
            .record(
                &TopicSpec {
                    cleanup_policy: Some(CleanupPolicy::Compact),
                    delete_retention_ms: Some(0),
                    ..spec()
                },
                7,
            )
            .unwrap();
        assert_eq!(t.cleanup_policy, CleanupPolicy::Compact);
        assert_eq!(t.delete_retention_ms, 0);
    }

    #[test]
    fn a_negative_delete_retention_is_refused_saying_what_to_give() {
        let bad = TopicSpec {
            delete_retention_ms: Some(-1),
            ..spec()
        };
        let err = DEFAULTS.record(&bad, 7).unwrap_err();
        assert_eq!(err.kind, crate::core::ErrorKind::Invalid);
        assert!(
            err.to_string().contains(
                "delete_retention_ms must be 0 (tombstones go at the next compaction) or positive, got -1"
            ),
            "{err}"
        );
        let record = DEFAULTS.record(&spec(), 7).unwrap();
        let change = TopicChange {
            delete_retention_ms: Some(-5),
            ..TopicChange::default()
        };
        let err = change.apply(&record).unwrap_err();
        assert_eq!(err.kind, crate::core::ErrorKind::Invalid);
        assert!(err.to_string().contains("got -5"), "{err}");
    }

    #[test]
    fn a_change_sets_only_what_it_names() {
        let record = DEFAULTS.record(&spec(), 7).unwrap();
        let compact = TopicChange {
            cleanup_policy: Some(CleanupPolicy::CompactDelete),
            ..TopicChange::default()
        }
        .apply(&record)
        .unwrap();
        assert_eq!(
            compact,
            TopicRecord {
                cleanup_policy: CleanupPolicy::CompactDelete,
                ..record.clone()
            }
        );
        let tombstones = TopicChange {
            delete_retention_ms: Some(60_000),
            ..TopicChange::default()
        }
        .apply(&compact)
        .unwrap();
        assert_eq!(
            tombstones,
            TopicRecord {
                delete_retention_ms: 60_000,
                ..compact
            }
        );
    }

    #[test]
    fn an_empty_change_names_every_setting() {
        let record = DEFAULTS.record(&spec(), 7).unwrap();
        let err = TopicChange::default().apply(&record).unwrap_err();
        assert_eq!(err.kind, crate::core::ErrorKind::Invalid);
        for setting in [
            "retention_ms",
            "retention_bytes",
            "cleanup_policy",
            "delete_retention_ms",
        ] {
            assert!(err.to_string().contains(setting), "{err}");
        }
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
