//! The consumer-group part of the [`Broker`] facade: what every edge calls.

use std::collections::BTreeSet;

use super::coordinator::{GroupDescription, PartitionOffset, ResetTo, slot_of};
use super::state::{Heartbeat, HeartbeatAnswer, validate_group_id};
use crate::cluster::Owner;
use crate::core::Broker;
use crate::core::error::BrokerError;
use crate::core::fetch::OffsetSpec;

/// Where a group's coordinator is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorInfo {
    pub broker_id: String,
    pub address: String,
}

/// One partition of an offset reset: its committed offset before (-1: none) and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetChange {
    pub partition: u32,
    pub before: i64,
    pub after: i64,
}

impl Broker {
    /// A live topic by name (NOT_FOUND otherwise), for edges that name partitions by topic.
    pub fn topic(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<silt_metadata::catalog::Topic>, BrokerError> {
        self.topics.require(name)
    }

    /// Topic id → name of every live topic.
    pub fn topic_names(&self) -> std::collections::HashMap<u64, String> {
        self.topics
            .all()
            .into_iter()
            .map(|t| (t.id, t.record.name.clone()))
            .collect()
    }

    /// A member's heartbeat (join with `member_epoch` 0, leave with -1). The subscribed topics
    /// must exist.
    pub async fn group_heartbeat(
        &self,
        group: &str,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAnswer, BrokerError> {
        if let Some(topics) = &hb.topics {
            for t in topics {
                self.topics.require(t)?;
            }
        }
        self.groups.heartbeat(group, hb).await
    }

    /// Commits offsets (see [`super::Coordinator::commit`]).
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: &[PartitionOffset],
    ) -> Result<(), BrokerError> {
        self.groups
            .commit(group, member_id, member_epoch, offsets)
            .await
    }

    /// A group's committed offsets: all, or those of `partitions`.
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: Option<&[(String, u32)]>,
    ) -> Result<Vec<PartitionOffset>, BrokerError> {
        self.groups.fetch_offsets(group, partitions).await
    }

    /// A group's state, members, assignment and lag.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, BrokerError> {
        self.groups.describe(group).await
    }

    /// Every group of the cluster (any broker answers).
    pub async fn list_groups(&self) -> Result<Vec<String>, BrokerError> {
        Ok(self.catalog.list_groups().await?)
    }

    /// Deletes a group without active members, with its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), BrokerError> {
        self.groups.delete(group).await
    }

    /// The broker coordinating `group`.
    pub fn find_coordinator(&self, group: &str) -> Result<CoordinatorInfo, BrokerError> {
        validate_group_id(group).map_err(|e| BrokerError::invalid(e.to_string()))?;
        match self.view.slot_owner(slot_of(group)) {
            Owner::Me(_) => Ok(CoordinatorInfo {
                broker_id: self.view.broker_id().to_string(),
                address: self
                    .view
                    .brokers()
                    .into_iter()
                    .find(|b| b.broker_id == self.view.broker_id())
                    .map(|b| b.address)
                    .unwrap_or_default(),
            }),
            Owner::Other { broker_id, address } => Ok(CoordinatorInfo { broker_id, address }),
            Owner::Unowned => Err(BrokerError::unavailable(format!(
                "group '{group}' has no coordinator yet; retry shortly"
            ))),
        }
    }

    /// Moves the committed offsets of `topic` (every partition) for a group with no active
    /// members; with `dry_run`, only says what it would do. Offsets are kept within each
    /// partition's log.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
        dry_run: bool,
    ) -> Result<Vec<OffsetChange>, BrokerError> {
        let t = self.topics.require(topic)?;
        match self.groups.describe(group).await {
            Ok(d) if !d.group.is_empty() => {
                return Err(BrokerError::precondition(format!(
                    "group '{group}' has active members ({}); stop them before resetting its offsets",
                    d.group.member_list()
                )));
            }
            Ok(_) => {}
            // A group never used has nothing to reset from, which is fine.
            Err(e) if matches!(e.kind, crate::core::ErrorKind::NotFound) => {}
            Err(e) => return Err(e),
        }
        let current = self.groups.fetch_offsets(group, None).await?;
        let mut changes = Vec::new();
        let mut offsets = Vec::new();
        let partitions: BTreeSet<u32> = (0..t.record.partitions).collect();
        for p in partitions {
            let before = current
                .iter()
                .find(|o| o.topic == topic && o.partition == p)
                .map_or(-1, |o| o.offset);
            let bounds = self.index.partition(t.id, p).offsets();
            let after = match to {
                ResetTo::Earliest => bounds.log_start,
                ResetTo::Latest => bounds.high_watermark,
                ResetTo::Offset(o) => o,
                ResetTo::ShiftBy(n) => {
                    let from = if before >= 0 {
                        before
                    } else {
                        bounds.log_start
                    };
                    from.saturating_add(n)
                }
                ResetTo::Timestamp(ts) => {
                    self.list_offsets(topic, p, OffsetSpec::Timestamp(ts))
                        .await?
                        .0
                }
            }
            .clamp(bounds.log_start, bounds.high_watermark);
            changes.push(OffsetChange {
                partition: p,
                before,
                after,
            });
            offsets.push(PartitionOffset {
                topic: topic.to_string(),
                partition: p,
                offset: after,
                leader_epoch: -1,
                metadata: String::new(),
            });
        }
        if !dry_run {
            self.groups.commit(group, "", 0, &offsets).await?;
        }
        Ok(changes)
    }
}
