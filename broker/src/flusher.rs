//! The flusher: sealed WAL-cache windows → segment objects → metadata commits → acks.
//!
//! For each sealed window, in order, it takes a [`FlushSnapshot`] of the cluster view — the
//! writer fence and which of the window's partitions this broker owns — fails at once the
//! producers that wrote to a partition it no longer owns (nothing of theirs is stored), assigns
//! offsets (the partition's next offset, dense, restarting from the committed high watermark
//! whenever the partition's ownership epoch changed),
//! lays the batches into one segment object ([`silt_storage::segment`]), and starts its upload.
//! Up to `max_inflight` uploads run at once, but commits happen strictly in window order: a
//! window's commit waits for every earlier one. After a commit succeeds, the segment goes into
//! the read cache, the [`LogIndex`] makes it readable, and the window's tickets resolve.
//!
//! The commit compares the fence (see [`Catalog::commit_segment`]), so a broker that lost a
//! partition since the snapshot — paused, cut off, or just slow — can upload but never commit.
//!
//! If an upload or commit fails, that window's producers get a retriable error and so do those
//! of every later window already holding offsets that assumed it; offset assignment restarts
//! from the committed high watermarks, so offsets stay dense. Their objects, uploaded but never
//! committed, are deleted (and collected at the next start if that fails too).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use silt_metadata::catalog::{Catalog, WriterFence};
use silt_metadata::codec::{CommitEntry, SegmentCommit};
use silt_metadata::{CatalogError, Clock, MetaError};
use silt_storage::cache::SegmentCache;
use silt_storage::object::segment_path;
use silt_storage::segment::SegmentWriter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::cluster::{ClusterView, FlushSnapshot};
use crate::error::BrokerError;
use crate::log_index::LogIndex;
use crate::stats::{FlushTimes, Stats};
use crate::wal_cache::{BatchAck, Waiter, WalCache, Window};

/// How long a commit keeps retrying a metadata store that is unavailable.
const COMMIT_RETRY_FOR: Duration = Duration::from_secs(10);

/// A window laid out as a segment, uploading.
struct Built {
    object_id: String,
    path: Path,
    bytes: Bytes,
    commit: SegmentCommit,
    waiters: Vec<Waiter>,
    held: usize,
    epoch: u64,
    fence: WriterFence,
    opened_at: tokio::time::Instant,
    upload_started: tokio::time::Instant,
}

/// Everything the flusher works with.
pub struct Flusher {
    pub wal: Arc<WalCache>,
    pub store: Arc<dyn ObjectStore>,
    pub cache: Arc<SegmentCache>,
    pub catalog: Catalog,
    pub index: Arc<LogIndex>,
    pub view: Arc<ClusterView>,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<Stats>,
    pub max_inflight: usize,
    next_seq: u64,
    /// The next offset of each partition, with the owner key revision it was computed under.
    next_offsets: HashMap<(u64, u32), (i64, i64)>,
    epoch: u64,
}

impl Flusher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        wal: Arc<WalCache>,
        store: Arc<dyn ObjectStore>,
        cache: Arc<SegmentCache>,
        catalog: Catalog,
        index: Arc<LogIndex>,
        view: Arc<ClusterView>,
        clock: Arc<dyn Clock>,
        stats: Arc<Stats>,
        max_inflight: usize,
    ) -> Self {
        Self {
            wal,
            store,
            cache,
            catalog,
            index,
            view,
            clock,
            stats,
            max_inflight,
            next_seq: 0,
            next_offsets: HashMap::new(),
            epoch: 0,
        }
    }

    /// Runs until the WAL cache's sender side is gone (shutdown), draining every window.
    pub async fn run(mut self, mut sealed: mpsc::UnboundedReceiver<Window>) {
        let mut inflight: VecDeque<(Built, JoinHandle<Result<Duration, object_store::Error>>)> =
            VecDeque::new();
        let mut open = true;
        let closed = self.wal.closed();
        while open || !inflight.is_empty() {
            tokio::select! {
                biased;
                _ = closed.cancelled(), if open => {
                    // Shutdown: the last windows are already queued; flush them all, in order.
                    open = false;
                    while let Ok(window) = sealed.try_recv() {
                        if let Some(built) = self.build(window) {
                            let handle = self.upload(&built);
                            inflight.push_back((built, handle));
                        }
                    }
                }
                result = async { (&mut inflight.front_mut().expect("checked non-empty").1).await },
                    if !inflight.is_empty() =>
                {
                    let (built, _) = inflight.pop_front().expect("checked non-empty");
                    let upload = result.unwrap_or_else(|e| {
                        Err(object_store::Error::Generic { store: "upload task", source: Box::new(e) })
                    });
                    self.finish(built, upload).await;
                }
                window = sealed.recv(), if open && inflight.len() < self.max_inflight => {
                    match window {
                        Some(window) => {
                            // Just started (or reloaded): lay out nothing from a view that is
                            // not yet consistent.
                            if !self.view.is_ready() {
                                self.view.wait_ready(Duration::from_secs(10)).await;
                            }
                            if let Some(built) = self.build(window) {
                                let handle = self.upload(&built);
                                inflight.push_back((built, handle));
                            }
                        }
                        None => open = false,
                    }
                }
            }
        }
    }

    /// Starts the upload of a built segment.
    fn upload(&self, built: &Built) -> JoinHandle<Result<Duration, object_store::Error>> {
        let store = self.store.clone();
        let (path, bytes) = (built.path.clone(), built.bytes.clone());
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            store
                .put(&path, PutPayload::from(bytes))
                .await
                .map(|_| started.elapsed())
        })
    }

    /// Assigns offsets and lays the window out as a segment object; `None` when nothing of it
    /// may be written (its producers are answered at once).
    fn build(&mut self, window: Window) -> Option<Built> {
        let snapshot = self.view.flush_snapshot(window.partitions.keys().copied());
        if !snapshot.ready {
            self.wal.release(window.bytes);
            window.fail(&BrokerError::unavailable(
                "this broker is still loading the cluster state; nothing was stored, retry",
            ));
            return None;
        }
        let Some(fence) = snapshot.fence.clone() else {
            self.wal.release(window.bytes);
            window.fail(&BrokerError::NotOwner {
                message: format!(
                    "broker '{}' was restarted elsewhere (a newer incarnation owns its partitions); nothing was stored, retry",
                    self.view.broker_id()
                ),
                owner: None,
            });
            return None;
        };
        let refused = self.refused_waiters(&window, &snapshot);
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = segment_path(self.view.broker_id(), self.view.incarnation(), seq);
        let object_id = object_id_of(&path);
        let created_at_ms = self.clock.now_ms();
        let mut writer = SegmentWriter::new(
            created_at_ms,
            window.bytes + 64 * (window.partitions.len() + 1),
        );
        let mut waiters = window.waiters;
        let mut written = 0usize;
        for ((topic_id, partition), batches) in &window.partitions {
            let Some(owned_at) = snapshot.owned.get(&(*topic_id, *partition)).copied() else {
                continue;
            };
            let batches: Vec<_> = batches
                .iter()
                .filter(|b| !refused.contains(&b.waiter))
                .collect();
            if batches.is_empty() {
                continue;
            }
            let index = &self.index;
            let slot = self
                .next_offsets
                .entry((*topic_id, *partition))
                .or_insert((owned_at, -1));
            if slot.0 != owned_at || slot.1 < 0 {
                // Newly owned (or owned again): continue from what is committed.
                *slot = (
                    owned_at,
                    index
                        .partition(*topic_id, *partition)
                        .offsets()
                        .high_watermark,
                );
            }
            let next = &mut slot.1;
            writer.begin_entry(*topic_id, *partition);
            for pending in batches {
                let b = &pending.batch;
                let base = *next;
                writer.push_batch(
                    &b.bytes,
                    base,
                    b.record_count,
                    b.max_timestamp,
                    b.first_timestamp,
                );
                *next += i64::from(b.record_count);
                written += 1;
                waiters[pending.waiter].acks[pending.slot] = BatchAck {
                    partition: *partition,
                    base_offset: base,
                    last_offset: base + i64::from(b.record_count) - 1,
                };
            }
        }
        if !refused.is_empty() {
            let mut kept = Vec::with_capacity(waiters.len());
            for (i, w) in waiters.into_iter().enumerate() {
                if refused.contains(&i) {
                    w.fail(BrokerError::NotOwner {
                        message: format!(
                            "broker '{}' no longer owns a partition of this request; nothing was stored, retry against the owner",
                            self.view.broker_id()
                        ),
                        owner: None,
                    });
                } else {
                    kept.push(w);
                }
            }
            waiters = kept;
        }
        if written == 0 {
            // Every producer was refused above; nothing is left to store or to acknowledge.
            self.wal.release(window.bytes);
            for w in waiters {
                w.fail(BrokerError::unavailable(
                    "nothing of this request could be laid out; nothing was stored, retry",
                ));
            }
            return None;
        }
        // From here the segment may reach the store: a waiter dropped unanswered after this
        // point (the flusher stopped) says its records may be stored.
        for w in &mut waiters {
            w.mark_written();
        }
        let (bytes, entries) = writer.finish();
        let commit = SegmentCommit {
            object: path.to_string(),
            object_len: bytes.len() as u64,
            created_at_ms,
            entries: entries
                .iter()
                .map(|e| CommitEntry {
                    topic_id: e.topic_id,
                    partition: e.partition,
                    batch_count: e.batch_count,
                    first_offset: e.first_offset,
                    last_offset: e.last_offset,
                    min_timestamp: e.min_timestamp,
                    max_timestamp: e.max_timestamp,
                    position: e.position,
                    length: e.length,
                    crc32c: e.crc32c,
                })
                .collect(),
        };
        let now = tokio::time::Instant::now();
        Some(Built {
            object_id,
            path,
            bytes,
            commit,
            waiters,
            held: window.bytes,
            epoch: self.epoch,
            fence,
            opened_at: window.opened_at.unwrap_or(now),
            upload_started: now,
        })
    }

    /// The waiters with a batch for a partition this broker does not own: none of their
    /// batches is written, so a request is stored whole or not at all.
    fn refused_waiters(&self, window: &Window, snapshot: &FlushSnapshot) -> HashSet<usize> {
        window
            .partitions
            .iter()
            .filter(|(p, _)| !snapshot.owned.contains_key(p))
            .flat_map(|(_, batches)| batches.iter().map(|b| b.waiter))
            .collect()
    }

    /// Commits an uploaded segment (or fails it) and answers its producers.
    async fn finish(&mut self, built: Built, upload: Result<Duration, object_store::Error>) {
        let outcome = if built.epoch != self.epoch {
            Err(BrokerError::unavailable(
                "an earlier segment flush failed, so these records were not stored; retry",
            ))
        } else {
            match upload {
                Err(e) => {
                    warn!(object = %built.path, error = %e, "segment upload failed");
                    Err(BrokerError::unavailable(format!(
                        "object store write failed: {e}; retry"
                    )))
                }
                Ok(put) => {
                    let started = tokio::time::Instant::now();
                    self.commit(&built)
                        .await
                        .map(|bytes| (put, started.elapsed(), bytes))
                }
            }
        };
        self.wal.release(built.held);
        match outcome {
            Ok((put, commit, metadata_bytes)) => {
                let times = FlushTimes {
                    wait_for_flush: built
                        .upload_started
                        .saturating_duration_since(built.opened_at),
                    put,
                    commit,
                    ack: built.opened_at.elapsed(),
                };
                self.stats.flush_committed(metadata_bytes, &times);
                self.cache.insert_object(&built.path, &built.bytes);
                self.index.apply(&built.object_id, &built.commit);
                self.stats.segment_flushed(built.bytes.len());
                debug!(object = %built.path, bytes = built.bytes.len(), partitions = built.commit.entries.len(), "segment committed");
                for w in built.waiters {
                    w.ack();
                }
            }
            Err(error) => {
                // Later windows assumed this one's offsets: fail them too and restart from the
                // committed high watermarks.
                if built.epoch == self.epoch {
                    self.epoch += 1;
                    self.next_offsets.clear();
                }
                for w in built.waiters {
                    w.fail(error.clone());
                }
                let store = self.store.clone();
                let path = built.path.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.delete(&path).await {
                        debug!(object = %path, error = %e, "could not delete uncommitted segment; it is collected at next start");
                    }
                });
            }
        }
    }

    /// The metadata commit, retried while the store is unavailable.
    /// Returns the bytes the commit sent to metadata.
    async fn commit(&self, built: &Built) -> Result<usize, BrokerError> {
        let deadline = tokio::time::Instant::now() + COMMIT_RETRY_FOR;
        let mut backoff = Duration::from_millis(20);
        // Set once an attempt failed in a way that may have applied it.
        let mut maybe_applied = false;
        loop {
            self.stats.metadata_txn();
            match self
                .catalog
                .commit_segment(&built.fence, &built.object_id, &built.commit)
                .await
            {
                Ok(committed) => return Ok(committed.request_bytes),
                Err(CatalogError::Store(e))
                    if e.is_retriable() && tokio::time::Instant::now() < deadline =>
                {
                    warn!(error = %e, "segment commit failed; retrying");
                    maybe_applied = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                // Refused before anything was applied (a limit): a definite no.
                Err(CatalogError::Store(e @ MetaError::InvalidRequest(_))) if !maybe_applied => {
                    return Err(CatalogError::Store(e).into());
                }
                Err(CatalogError::Fenced { .. }) if !maybe_applied => {
                    return Err(BrokerError::NotOwner {
                        message: format!(
                            "broker '{}' lost ownership of a partition while flushing; nothing was stored, retry against the owner",
                            self.view.broker_id()
                        ),
                        owner: None,
                    });
                }
                // Any other failure may have happened after etcd applied the commit.
                Err(e) => {
                    warn!(object = %built.path, error = %e, "segment commit outcome unknown; settling it");
                    return self.settle(built).await;
                }
            }
        }
    }
}

impl Flusher {
    /// Settles a commit whose outcome is unknown: first fences every attempt still in flight (by
    /// rewriting this broker's writer key), then reads whether the commit key exists. Until the
    /// metadata store answers, nothing later may commit — later windows assumed these offsets —
    /// so this waits, and the WAL cache's bound pushes back on producers meanwhile.
    async fn settle(&self, built: &Built) -> Result<usize, BrokerError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let outcome = async {
                self.catalog
                    .touch_writer(self.view.broker_id(), self.view.incarnation())
                    .await?;
                self.catalog.segment_exists(&built.object_id).await
            }
            .await;
            match outcome {
                Ok(true) => return Ok(built.object_id.len() + built.commit.entries.len() * 30),
                Ok(false) => {
                    return Err(BrokerError::unavailable(
                        "the metadata store failed during the commit, which did not happen; nothing was stored, retry",
                    ));
                }
                Err(e) => {
                    warn!(object = %built.path, error = %e, "cannot settle a segment commit yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// The object id of a segment path: `segments/<broker>/<file>.seg` → `<broker>/<file>`.
pub fn object_id_of(path: &Path) -> String {
    let s = path.as_ref();
    let s = s.strip_prefix("segments/").unwrap_or(s);
    s.strip_suffix(".seg").unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests;
