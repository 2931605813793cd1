//! Administration as the facade serves it to every edge: create, delete, list and describe
//! topics (Kafka's CreateTopics/Metadata, Kinesis's CreateStream/DescribeStream), the cluster's
//! status (brokers, the controller, each partition's owner), and the broker's counters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use silt_metadata::catalog::Topic;

use crate::cluster::Owner;
use crate::core::Broker;
use crate::core::error::BrokerError;
use crate::core::log_index::Offsets;
use crate::core::topics::{TopicChange, TopicSpec, validate_topic_name};
use crate::observe::metrics::process_cpu_seconds;

/// How long topic creation waits for every partition to have an owner, so a produce right after
/// it succeeds.
const OWNED_WAIT: Duration = Duration::from_secs(10);

/// A live broker as the cluster status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus {
    pub broker_id: String,
    pub address: String,
    pub incarnation: u64,
    pub started_at_ms: i64,
    pub partitions_owned: u32,
}

/// One partition's owner, as the cluster status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwner {
    pub topic: String,
    pub partition: u32,
    /// The owner's broker id and address, when it is live.
    pub owner: Option<(String, String)>,
    /// The ownership epoch (0: never owned).
    pub epoch: u64,
}

/// The cluster as this broker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub brokers: Vec<BrokerStatus>,
    pub partitions: Vec<PartitionOwner>,
    pub controller: Option<String>,
}

/// One ack stage's latency summary (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct StageSummary {
    pub stage: &'static str,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The broker's counters since it started.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerStats {
    pub broker_id: String,
    pub cpu_seconds: f64,
    pub uptime_ms: u64,
    pub records_produced: u64,
    pub bytes_produced: u64,
    pub segments_flushed: u64,
    pub segment_bytes_flushed: u64,
    pub records_fetched: u64,
    pub bytes_fetched: u64,
    pub wal_cache_bytes: u64,
    pub metadata_txns: u64,
    pub metadata_bytes: u64,
    pub object_puts: u64,
    pub object_gets: u64,
    pub object_get_bytes: u64,
    pub ack_stages: Vec<StageSummary>,
}

impl Broker {
    /// Creates a topic (unset settings take the broker's defaults) and answers once every
    /// partition has an owner, or after a bounded wait.
    pub async fn create_topic(&self, spec: &TopicSpec) -> Result<Arc<Topic>, BrokerError> {
        let record = self.defaults.record(spec, self.clock.now_ms())?;
        let topic = self.catalog.create_topic(record).await?;
        tracing::info!(topic = %topic.record.name, partitions = topic.record.partitions, id = topic.id, cleanup_policy = %topic.record.cleanup_policy, "topic created");
        self.topics.insert(topic.clone());
        let mut changes = self.view.subscribe_topology();
        let all_owned = || {
            (0..topic.record.partitions).all(|p| self.view.owner((topic.id, p)) != Owner::Unowned)
        };
        let _ = tokio::time::timeout(OWNED_WAIT, async {
            while !all_owned() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        Ok(Arc::new(topic))
    }

    /// Changes a live topic's retention and cleanup policy. A compare-and-set on the topic's record (and its id:
    /// a topic deleted and re-created meanwhile is not changed), retried when another change
    /// got in first.
    pub async fn alter_topic(
        &self,
        name: &str,
        change: &TopicChange,
    ) -> Result<Arc<Topic>, BrokerError> {
        validate_topic_name(name)?;
        for _ in 0..5 {
            let Some((topic, seen)) = self.catalog.get_topic_versioned(name).await? else {
                return Err(BrokerError::unknown_topic(name));
            };
            let record = change.apply(&topic.record)?;
            if self
                .catalog
                .replace_topic(topic.id, seen, &record)
                .await?
                .is_some()
            {
                let topic = Topic {
                    id: topic.id,
                    record,
                };
                tracing::info!(
                    topic = %name,
                    retention_ms = topic.record.retention_ms,
                    retention_bytes = topic.record.retention_bytes,
                    cleanup_policy = %topic.record.cleanup_policy,
                    delete_retention_ms = topic.record.delete_retention_ms,
                    "topic altered"
                );
                self.topics.insert(topic.clone());
                return Ok(Arc::new(topic));
            }
        }
        Err(BrokerError::unavailable(format!(
            "topic '{name}' kept changing while it was being altered; retry"
        )))
    }

    /// Deletes a topic; its data is collected later.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        validate_topic_name(name)?;
        let topic = self.catalog.delete_topic(name).await?;
        self.topics.remove(name);
        self.index.remove_topic(topic.id);
        tracing::info!(topic = %name, "topic deleted");
        Ok(())
    }

    /// Every topic, by name.
    pub fn list_topics(&self) -> Vec<Arc<Topic>> {
        self.topics.all()
    }

    /// A topic and the offsets of each of its partitions.
    pub fn describe_topic(&self, name: &str) -> Result<(Arc<Topic>, Vec<Offsets>), BrokerError> {
        let topic = self.topics.require(name)?;
        let offsets = (0..topic.record.partitions)
            .map(|p| self.index.partition(topic.id, p).offsets())
            .collect();
        Ok((topic, offsets))
    }

    /// The live brokers, the controller, and the owner of each partition of `topics` (all
    /// topics when empty).
    pub fn cluster_status(&self, topics: &[String]) -> Result<ClusterStatus, BrokerError> {
        for name in topics {
            self.topics.require(name)?;
        }
        let counts = self.view.owned_counts();
        let brokers = self.view.brokers();
        let address_of: HashMap<&str, &str> = brokers
            .iter()
            .map(|b| (b.broker_id.as_str(), b.address.as_str()))
            .collect();
        let owners = self.view.owners();
        let mut partitions = Vec::new();
        for t in self.topics.all() {
            if !topics.is_empty() && !topics.contains(&t.record.name) {
                continue;
            }
            for p in 0..t.record.partitions {
                let owner = owners.get(&(t.id, p));
                partitions.push(PartitionOwner {
                    topic: t.record.name.clone(),
                    partition: p,
                    owner: owner.and_then(|o| {
                        address_of
                            .get(o.broker_id.as_str())
                            .map(|a| (o.broker_id.clone(), a.to_string()))
                    }),
                    epoch: owner.map_or(0, |o| o.epoch),
                });
            }
        }
        let brokers = brokers
            .iter()
            .map(|b| BrokerStatus {
                broker_id: b.broker_id.clone(),
                address: b.address.clone(),
                incarnation: b.incarnation,
                started_at_ms: b.started_at_ms,
                partitions_owned: counts.get(&b.broker_id).copied().unwrap_or(0),
            })
            .collect();
        Ok(ClusterStatus {
            brokers,
            partitions,
            controller: self.view.controller().map(|(id, _)| id),
        })
    }

    /// The broker's counters, read from its metrics registry.
    pub fn stats(&self) -> BrokerStats {
        let t = self.metrics.totals();
        BrokerStats {
            broker_id: self.broker_id().to_string(),
            cpu_seconds: process_cpu_seconds(),
            uptime_ms: (self.clock.now_ms() - self.started_ms).max(0) as u64,
            records_produced: t.records_produced,
            bytes_produced: t.bytes_produced,
            segments_flushed: t.segments_flushed,
            segment_bytes_flushed: t.segment_bytes_flushed,
            records_fetched: t.records_fetched,
            bytes_fetched: t.bytes_fetched,
            wal_cache_bytes: self.wal.bytes_in_use() as u64,
            metadata_txns: t.metadata_txns,
            metadata_bytes: t.metadata_bytes,
            object_puts: t.object_puts,
            object_gets: t.object_gets,
            object_get_bytes: t.object_get_bytes,
            ack_stages: self
                .metrics
                .stage_summary()
                .into_iter()
                .map(|(stage, count, p50_ms, p99_ms, max_ms)| StageSummary {
                    stage,
                    count,
                    p50_ms,
                    p99_ms,
                    max_ms,
                })
                .collect(),
        }
    }
}
