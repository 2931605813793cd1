//! Background housekeeping: retention, segment garbage collection and orphan cleanup.
//!
//! - **Retention** moves each partition's log start offset past whole index entries whose newest
//!   record is older than the topic's `retention_ms`, or past its newest `retention_bytes` of
//!   batches per partition, and records it in metadata.
//! - **Segment GC** deletes a segment once *every* entry in it is dead (its topic was deleted or
//!   its records are below their partition's log start): the metadata key first, then the
//!   object — so a crash in between leaves an orphan object, never a dangling index entry.
//! - **Orphan cleanup**, at start, deletes objects this broker uploaded in earlier incarnations
//!   whose commit never happened (killed between PUT and commit).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use silt_metadata::Clock;
use silt_metadata::catalog::{Catalog, WriterFence};
use silt_storage::cache::SegmentCache;
use silt_storage::object::{SegmentName, broker_segments_prefix};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::ClusterView;
use crate::core::BrokerError;
use crate::core::log_index::LogIndex;
use crate::core::topics::TopicTable;

/// Runs retention and GC.
#[derive(Debug)]
pub struct Housekeeper {
    pub catalog: Catalog,
    pub topics: Arc<TopicTable>,
    pub index: Arc<LogIndex>,
    pub store: Arc<dyn ObjectStore>,
    pub cache: Arc<SegmentCache>,
    pub clock: Arc<dyn Clock>,
    pub fence: WriterFence,
    pub view: Arc<ClusterView>,
}

/// What one housekeeping pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub partitions_trimmed: usize,
    pub segments_deleted: usize,
}

impl Housekeeper {
    /// Runs a pass every `every` until cancelled.
    pub async fn run(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        crate::runtime::tasks::periodic("housekeeping", every, None, cancel, || async {
            self.pass().await.map(drop)
        })
        .await;
    }

    /// One retention + GC pass; only the controller runs them, so brokers do not race. Every
    /// write is fenced on the controller's election (and retention on the log-start key's
    /// version it read), so a controller that was paused or is behind changes nothing: log
    /// starts never move backwards and nothing its successor still references is forgotten.
    pub async fn pass(&self) -> Result<Pass, BrokerError> {
        let mut pass = Pass::default();
        if !self.view.is_ready() {
            return Ok(pass);
        }
        let Some(controller) = self.view.controller_revision_if_me() else {
            return Ok(pass);
        };
        let now = self.clock.now_ms();
        for topic in self.topics.all() {
            let (by_time, by_size) = (topic.record.retention_ms, topic.record.retention_bytes);
            if by_time < 0 && by_size < 0 {
                continue;
            }
            let cutoff = (by_time >= 0).then(|| now.saturating_sub(by_time));
            // Read the key's version before the starts: a start applied after the version
            // read only makes the compare fail, never lets a lower start through.
            let seen = self.view.log_start_revision(topic.id);
            let mut starts = self.index.log_starts(topic.id, topic.record.partitions);
            let mut changed = Vec::new();
            for (p, start) in starts.iter_mut().enumerate() {
                let log = self.index.partition(topic.id, p as u32);
                // Whichever limit trims further: records older than the time limit, and the
                // oldest batches beyond the size limit (both at entry boundaries).
                let end = cutoff
                    .and_then(|c| log.expired_end(c))
                    .max((by_size >= 0).then(|| log.oversize_end(by_size)).flatten());
                if let Some(end) = end.filter(|end| *end > *start) {
                    *start = end;
                    changed.push(p as u32);
                }
            }
            if changed.is_empty() {
                continue;
            }
            if self
                .catalog
                .set_log_starts(controller, &topic, seen, &starts)
                .await?
                .is_none()
            {
                debug!(topic = %topic.record.name, "retention write refused (no longer controller, or the view is behind); retrying next pass");
                continue;
            }
            for p in &changed {
                self.index
                    .partition(topic.id, *p)
                    .set_log_start(starts[*p as usize]);
            }
            pass.partitions_trimmed += changed.len();
        }

        let live = self.topics.live_ids();
        // A topic id is the revision that created it: one the view has not reached yet may be
        // a topic created moments ago elsewhere, not a deleted one.
        let seen = self.view.applied();
        for (id, commit) in self.catalog.load_segments().await? {
            let dead = commit.entries.iter().all(|e| {
                (!live.contains_key(&e.topic_id) && e.topic_id as i64 <= seen)
                    || e.last_offset
                        < self
                            .index
                            .partition(e.topic_id, e.partition)
                            .offsets()
                            .log_start
            });
            if !dead {
                continue;
            }
            // The metadata key first, then the object: a crash in between leaves an orphan
            // object, never an index entry without its object.
            if !self.catalog.delete_segment(controller, &id).await? {
                debug!("segment GC refused: no longer the controller");
                break;
            }
            let path = Path::from(commit.object.as_str());
            self.cache.remove_object(&path, commit.object_len);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => warn!(object = %path, error = %e, "could not delete an expired segment"),
            }
            pass.segments_deleted += 1;
        }
        if pass != Pass::default() {
            info!(
                trimmed = pass.partitions_trimmed,
                deleted = pass.segments_deleted,
                "retention pass"
            );
        }
        Ok(pass)
    }

    /// Deletes this broker's objects from earlier incarnations that were never committed.
    pub async fn remove_orphans(&self, committed: &HashSet<String>) -> Result<usize, BrokerError> {
        let prefix = broker_segments_prefix(&self.fence.broker_id);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| BrokerError::unavailable(format!("listing segments failed: {e}")))?;
        let mut removed = 0;
        for meta in objects {
            let Some(name) = SegmentName::parse(&meta.location) else {
                continue;
            };
            if name.incarnation == self.fence.incarnation {
                continue;
            }
            if committed.contains(&name.id()) {
                continue;
            }
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                Err(e) => {
                    warn!(object = %meta.location, error = %e, "could not delete an orphan segment")
                }
            }
        }
        if removed > 0 {
            info!(
                removed,
                "deleted segment objects whose commit never happened"
            );
        }
        Ok(removed)
    }
}
