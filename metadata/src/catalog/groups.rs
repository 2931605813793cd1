//! Consumer groups in the catalog: a group's record and its committed offsets, written only by
//! the group's coordinator and fenced like a segment commit.
//!
//! Every write compares the coordinator's writer key (`writers/<broker>`) with the
//! `mod_revision` it read together with its ownership of the group's coordinator slot. The
//! controller rewrites that key whenever it takes a slot (or a partition) from the broker, so
//! a coordinator that lost the slot — paused, partitioned, or just behind — writes nothing: it
//! gets `None` and must look again. A group record is also compared with the `mod_revision`
//! the coordinator last wrote or loaded, so even two writers that both believed they held the
//! slot could never interleave their changes.

use super::{Catalog, WriterFence};
use crate::codec::{self, OffsetRecord};
use crate::error::CatalogError;
use crate::keys::GroupKey;
use crate::store::{Compare, CompareOp, CompareTarget, Op, Txn};

/// A group as loaded from metadata: its record (opaque to the catalog), the record's
/// `mod_revision` (the compare of the next write) and its committed offsets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupRecordKv {
    pub group: String,
    /// `None`: offsets without a record (a group only ever used by standalone commits).
    pub record: Option<Vec<u8>>,
    pub mod_revision: i64,
    pub offsets: Vec<((u64, u32), OffsetRecord)>,
}

/// One committed offset to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub slot: u32,
    pub group: String,
    pub topic_id: u64,
    pub partition: u32,
    pub record: OffsetRecord,
}

impl Catalog {
    /// Every group of a coordinator slot, with its offsets.
    pub async fn load_group_slot(&self, slot: u32) -> Result<Vec<GroupRecordKv>, CatalogError> {
        let kvs = self.range_all(self.keys.group_slot_prefix(slot)).await?;
        let mut groups: Vec<GroupRecordKv> = Vec::new();
        for kv in kvs {
            let Some(key) = self.keys.parse_group_key(&kv.key) else {
                continue;
            };
            let name = match &key {
                GroupKey::Record { group, .. } | GroupKey::Offset { group, .. } => group.clone(),
            };
            // Keys arrive sorted, so a group's keys are adjacent.
            if groups.last().is_none_or(|g| g.group != name) {
                groups.push(GroupRecordKv {
                    group: name,
                    ..GroupRecordKv::default()
                });
            }
            let group = groups.last_mut().expect("pushed");
            match key {
                GroupKey::Record { .. } => {
                    group.record = Some(kv.value);
                    group.mod_revision = kv.mod_revision;
                }
                GroupKey::Offset {
                    topic_id,
                    partition,
                    ..
                } => {
                    let record = codec::decode_offset(&kv.key, &kv.value)?;
                    group.offsets.push(((topic_id, partition), record));
                }
            }
        }
        Ok(groups)
    }

    /// The ids of every group of the cluster (with a record or committed offsets), sorted.
    pub async fn list_groups(&self) -> Result<Vec<String>, CatalogError> {
        let mut names = std::collections::BTreeSet::new();
        for slot in 0..crate::keys::GROUP_SLOTS {
            for kv in self.range_all(self.keys.group_slot_prefix(slot)).await? {
                if let Some(GroupKey::Record { group, .. } | GroupKey::Offset { group, .. }) =
                    self.keys.parse_group_key(&kv.key)
                {
                    names.insert(group);
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Writes a group's record if the fence holds and the record is still at `seen_mod_revision`
    /// (0: it does not exist). Returns the new `mod_revision`, or `None` (nothing written) when
    /// a compare failed.
    pub async fn save_group(
        &self,
        fence: &WriterFence,
        slot: u32,
        group: &str,
        record: Vec<u8>,
        seen_mod_revision: i64,
    ) -> Result<Option<i64>, CatalogError> {
        let key = self.keys.group_record(slot, group);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(self.keys.writer(&fence.broker_id), fence.revision),
                Compare::new(
                    key.clone(),
                    CompareOp::Equal,
                    CompareTarget::ModRevision(seen_mod_revision),
                ),
            ])
            .and_then([Op::put(key, record)]);
        let resp = self.store.txn(txn).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Deletes a group — its record and every committed offset — if the fence holds and the
    /// record is still at `seen_mod_revision` (0: no record). `None` when a compare failed.
    pub async fn delete_group(
        &self,
        fence: &WriterFence,
        slot: u32,
        group: &str,
        seen_mod_revision: i64,
    ) -> Result<Option<i64>, CatalogError> {
        let txn = Txn::new()
            .when([
                Compare::mod_revision(self.keys.writer(&fence.broker_id), fence.revision),
                Compare::new(
                    self.keys.group_record(slot, group),
                    CompareOp::Equal,
                    CompareTarget::ModRevision(seen_mod_revision),
                ),
            ])
            .and_then([Op::delete_prefix(self.keys.group_prefix(slot, group))]);
        let resp = self.store.txn(txn).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Deletes committed offsets (of topics that no longer exist) behind the coordinator's
    /// fence, in one transaction; `None` when the fence no longer holds. The caller keeps
    /// `1 + offsets.len()` within the store's `max_txn_ops`.
    pub async fn delete_offsets(
        &self,
        fence: &WriterFence,
        offsets: &[(u32, String, u64, u32)],
    ) -> Result<Option<i64>, CatalogError> {
        let ops: Vec<Op> = offsets
            .iter()
            .map(|(slot, group, topic_id, partition)| {
                Op::delete(self.keys.group_offset(*slot, group, *topic_id, *partition))
            })
            .collect();
        self.fenced(fence, ops).await
    }

    /// Writes committed offsets of any groups of the coordinator's slots in ONE transaction, if
    /// the fence holds. `None` (nothing written) when it does not. The caller keeps
    /// `1 + commits.len()` within the store's `max_txn_ops` and coalesces commits of one
    /// partition to the latest.
    pub async fn commit_offsets(
        &self,
        fence: &WriterFence,
        commits: &[OffsetCommit],
    ) -> Result<Option<i64>, CatalogError> {
        let ops: Vec<Op> = commits
            .iter()
            .map(|c| {
                Op::put(
                    self.keys
                        .group_offset(c.slot, &c.group, c.topic_id, c.partition),
                    codec::encode_offset(&c.record),
                )
            })
            .collect();
        self.fenced(fence, ops).await
    }

    /// `ops` in one transaction if the writer's fence holds; `None` (nothing done) otherwise.
    async fn fenced(&self, fence: &WriterFence, ops: Vec<Op>) -> Result<Option<i64>, CatalogError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.keys.writer(&fence.broker_id),
                fence.revision,
            )])
            .and_then(ops);
        let resp = self.store.txn(txn).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }
}
