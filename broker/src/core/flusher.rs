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

use backon::{ExponentialBuilder, Retryable};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use silt_metadata::catalog::{Catalog, WriterFence};
use silt_metadata::codec::SegmentCommit;
use silt_metadata::{CatalogError, Clock, MetaError};
use silt_storage::cache::SegmentCache;
use silt_storage::object::SegmentName;
use silt_storage::segment::SegmentWriter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span, warn};

use crate::cluster::{ClusterView, FlushSnapshot};
use crate::core::error::{BrokerError, ErrorKind};
use crate::core::log_index::LogIndex;
use crate::core::wal_cache::{BatchAck, Producers, WalCache, Window};
use crate::observe::metrics::{FlushTimes, Metrics};

/// How long a commit keeps retrying a metadata store that is unavailable.
const COMMIT_RETRY_FOR: Duration = Duration::from_secs(10);

/// A window laid out as a segment, uploading.
#[derive(Debug)]
struct Built {
    object_id: String,
    path: Path,
    /// The object's pieces: mostly slices of the produce requests' own buffers.
    bytes: PutPayload,
    commit: SegmentCommit,
    producers: Producers,
    held: usize,
    epoch: u64,
    fence: WriterFence,
    opened_at: tokio::time::Instant,
    upload_started: tokio::time::Instant,
    /// The `flush` span (a root, linked to the produce calls it acks): `upload` and `commit`
    /// are its children; it ends when the segment is committed or failed.
    span: tracing::Span,
}

/// Everything the flusher works with.
#[derive(Debug)]
pub struct Flusher {
    pub wal: Arc<WalCache>,
    pub store: Arc<dyn ObjectStore>,
    pub cache: Arc<SegmentCache>,
    pub catalog: Catalog,
    pub index: Arc<LogIndex>,
    pub view: Arc<ClusterView>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
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
        metrics: Arc<Metrics>,
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
            metrics,
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
                    let span = built.span.clone();
                    self.finish(built, upload).instrument(span).await;
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
        self.metrics.flush_started();
        let store = self.store.clone();
        let (path, bytes) = (built.path.clone(), built.bytes.clone());
        let span = info_span!(parent: &built.span, "upload", bytes = bytes.content_length());
        tokio::spawn(
            async move {
                let started = tokio::time::Instant::now();
                store.put(&path, bytes).await.map(|_| started.elapsed())
            }
            .instrument(span),
        )
    }

    /// Assigns offsets and lays the window out as a segment object; `None` when nothing of it
    /// may be written (its producers are answered at once).
    fn build(&mut self, window: Window) -> Option<Built> {
        let snapshot = self
            .view
            .flush_snapshot(window.partitions().map(|(p, _)| *p));
        if !snapshot.ready {
            self.wal.release(window.bytes());
            window.fail(&BrokerError::unavailable(
                "this broker is still loading the cluster state; nothing was stored, retry",
            ));
            return None;
        }
        let Some(fence) = snapshot.fence.clone() else {
            self.wal.release(window.bytes());
            window.fail(&BrokerError::not_owner(
                format!(
                    "broker '{}' was restarted elsewhere (a newer incarnation owns its partitions); nothing was stored, retry",
                    self.view.broker_id()
                ),
                None,
            ));
            return None;
        };
        let mut refused = self.refused_producers(&window, &snapshot);
        // A partition whose index could not be read whole may be missing committed offsets:
        // continuing from its high watermark could reuse them, so nothing is written to it.
        let (unreadable, why) = self.unreadable_producers(&window);
        refused.extend(unreadable.iter().copied());
        let seq = self.next_seq;
        self.next_seq += 1;
        let name = SegmentName {
            broker: self.view.broker_id().to_string(),
            incarnation: self.view.incarnation(),
            seq,
        };
        let (path, object_id) = (name.path(), name.id());
        let created_at_ms = self.clock.now_ms();
        // Large batches are referenced, not copied: the writer's own buffer holds the small
        // ones, the base offsets and the index.
        let mut writer = SegmentWriter::new(
            created_at_ms,
            window.bytes().min(1 << 20) + 64 * (window.partitions().count() + 1),
        );
        let mut acks = Vec::new();
        for ((topic_id, partition), batches) in window.partitions() {
            let Some(owned_at) = snapshot.owned.get(&(*topic_id, *partition)).copied() else {
                continue;
            };
            let batches: Vec<_> = batches
                .iter()
                .filter(|b| !refused.contains(&b.producer()))
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
                let b = pending.batch();
                let base = *next;
                writer.push_batch(
                    &b.bytes,
                    base,
                    b.record_count,
                    b.max_timestamp,
                    b.first_timestamp,
                );
                *next += i64::from(b.record_count);
                acks.push((
                    pending.producer(),
                    pending.slot(),
                    BatchAck {
                        partition: *partition,
                        base_offset: base,
                        last_offset: base + i64::from(b.record_count) - 1,
                    },
                ));
            }
        }
        let held = window.bytes();
        let opened_at = window.opened_at();
        let mut producers = window.into_producers();
        if let Some(why) = why {
            producers.refuse(&unreadable, &BrokerError::unavailable(why));
        }
        producers.refuse(
            &refused,
            &BrokerError::not_owner(
                format!(
                    "broker '{}' no longer owns a partition of this request; nothing was stored, retry against the owner",
                    self.view.broker_id()
                ),
                None,
            ),
        );
        if acks.is_empty() {
            // Every producer was refused above; nothing is left to store or to acknowledge.
            self.wal.release(held);
            producers.fail(&BrokerError::unavailable(
                "nothing of this request could be laid out; nothing was stored, retry",
            ));
            return None;
        }
        for (producer, slot, ack) in acks {
            producers.set_ack(producer, slot, ack);
        }
        // From here the segment may reach the store: a producer left unanswered after this
        // point (the flusher stopped) hears that its records may be stored.
        producers.mark_written();
        let (pieces, entries) = writer.finish();
        let bytes = PutPayload::from_iter(pieces);
        let span = info_span!(parent: None, "flush", segment = object_id.as_str(), bytes = bytes.content_length(),
            partitions = entries.len(), producers = tracing::field::Empty,
            outcome = tracing::field::Empty, error = tracing::field::Empty);
        crate::observe::logs::link_producers(&span, producers.spans());
        let commit = SegmentCommit {
            object: path.to_string(),
            object_len: bytes.content_length() as u64,
            created_at_ms,
            entries,
        };
        let now = tokio::time::Instant::now();
        Some(Built {
            object_id,
            path,
            bytes,
            commit,
            producers,
            held,
            epoch: self.epoch,
            fence,
            opened_at: opened_at.unwrap_or(now),
            upload_started: now,
            span,
        })
    }

    /// The producers with a batch for a partition this broker does not own: none of their
    /// batches is written, so a request is stored whole or not at all.
    /// The producers with a batch for a partition whose index could not be read, and why.
    fn unreadable_producers(&self, window: &Window) -> (HashSet<usize>, Option<String>) {
        let mut why = None;
        if !self.index.any_unreadable() {
            return (HashSet::new(), why);
        }
        let producers = window
            .partitions()
            .filter(|((topic_id, partition), _)| {
                let reason = self.index.partition(*topic_id, *partition).unreadable();
                if let Some(reason) = &reason {
                    why.get_or_insert_with(|| {
                        format!(
                            "partition {partition} of topic id {topic_id} is not written: this broker could not read its index ({reason}); nothing was stored. Upgrade this broker if it is older than the others, or repair the metadata"
                        )
                    });
                }
                reason.is_some()
            })
            .flat_map(|(_, batches)| batches.iter().map(|b| b.producer()))
            .collect();
        (producers, why)
    }

    fn refused_producers(&self, window: &Window, snapshot: &FlushSnapshot) -> HashSet<usize> {
        window
            .partitions()
            .filter(|(p, _)| !snapshot.owned.contains_key(p))
            .flat_map(|(_, batches)| batches.iter().map(|b| b.producer()))
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
                    crate::failpoint::hit("flush-after-put");
                    let started = tokio::time::Instant::now();
                    self.commit(&built)
                        .instrument(info_span!("commit", entries = built.commit.entries.len()))
                        .await
                        .map(|(bytes, revision)| (put, started.elapsed(), bytes, revision))
                }
            }
        };
        self.wal.release(built.held);
        match outcome {
            Ok((put, commit, metadata_bytes, revision)) => {
                built.span.record("outcome", "committed");
                let times = FlushTimes {
                    wait_for_flush: built
                        .upload_started
                        .saturating_duration_since(built.opened_at),
                    put,
                    commit,
                    ack: built.opened_at.elapsed(),
                };
                self.metrics
                    .flush_committed(built.bytes.content_length(), metadata_bytes, &times);
                self.cache.insert_object(&built.path, built.bytes.as_ref());
                self.index.apply(&built.object_id, &built.commit);
                debug!(object = %built.path, bytes = built.bytes.content_length(), partitions = built.commit.entries.len(), "segment committed");
                built.producers.ack();
                if let Some(revision) = revision {
                    self.measure_watch_lag(revision);
                }
            }
            Err(error) => {
                let fenced = matches!(error.kind, ErrorKind::NotOwner { .. });
                built
                    .span
                    .record("outcome", if fenced { "fenced" } else { "failed" });
                built.span.record("error", tracing::field::display(&error));
                self.metrics
                    .flush_failed(matches!(error.kind, ErrorKind::NotOwner { .. }));
                // Later windows assumed this one's offsets: fail them too and restart from the
                // committed high watermarks.
                if built.epoch == self.epoch {
                    self.epoch += 1;
                    self.next_offsets.clear();
                }
                built.producers.fail(&error);
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

    /// The metadata commit, retried (with jittered exponential backoff, up to
    /// [`COMMIT_RETRY_FOR`]) while the store is unavailable. Returns the bytes the commit sent
    /// to metadata.
    async fn commit(&self, built: &Built) -> Result<(usize, Option<i64>), BrokerError> {
        // Set once an attempt failed in a way that may have applied it.
        let mut maybe_applied = false;
        let attempt = || async {
            self.metrics.segment_commit_sent();
            self.catalog
                .commit_segment(&built.fence, &built.object_id, &built.commit)
                .await
        };
        let result = attempt
            .retry(
                backoff(Duration::from_millis(20), Duration::from_secs(1))
                    .with_total_delay(Some(COMMIT_RETRY_FOR)),
            )
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, CatalogError::Store(e) if e.is_retriable()))
            .notify(|e, _| {
                warn!(error = %e, "segment commit failed; retrying");
                maybe_applied = true;
            })
            .await;
        match result {
            Ok(committed) => Ok((committed.request_bytes, Some(committed.revision))),
            // Refused before anything was applied (a limit): a definite no.
            Err(CatalogError::Store(e @ MetaError::InvalidRequest(_))) if !maybe_applied => {
                Err(CatalogError::Store(e).into())
            }
            Err(CatalogError::Fenced { .. }) if !maybe_applied => Err(BrokerError::not_owner(
                format!(
                    "broker '{}' lost ownership of a partition while flushing; nothing was stored, retry against the owner",
                    self.view.broker_id()
                ),
                None,
            )),
            // Any other failure may have happened after etcd applied the commit.
            Err(e) => {
                warn!(object = %built.path, error = %e, "segment commit outcome unknown; settling it");
                self.settle(built).await.map(|bytes| (bytes, None))
            }
        }
    }

    /// Measures how long this broker's own metadata watch takes to apply a commit it just made
    /// (the metadata watch lag).
    fn measure_watch_lag(&self, revision: i64) {
        if self.view.applied() >= revision {
            self.metrics.watch_lag(Duration::ZERO);
            return;
        }
        let (view, metrics) = (self.view.clone(), self.metrics.clone());
        let committed = std::time::Instant::now();
        tokio::spawn(async move {
            // Not applied within a minute: the gauge says at least that.
            view.wait_for(revision, Duration::from_secs(60)).await;
            metrics.watch_lag(committed.elapsed());
        });
    }

    /// Settles a commit whose outcome is unknown: first fences every attempt still in flight (by
    /// rewriting this broker's writer key), then reads whether the commit key exists. Until the
    /// metadata store answers, nothing later may commit — later windows assumed these offsets —
    /// so this retries without end (the shutdown timeout bounds it at shutdown), and the WAL
    /// cache's bound pushes back on producers meanwhile.
    async fn settle(&self, built: &Built) -> Result<usize, BrokerError> {
        let check = || async {
            self.catalog
                .touch_writer(self.view.broker_id(), self.view.incarnation())
                .await?;
            self.catalog.segment_exists(&built.object_id).await
        };
        let outcome = check
            .retry(backoff(Duration::from_millis(50), Duration::from_secs(1)))
            .sleep(tokio::time::sleep)
            .notify(|e, _| {
                warn!(object = %built.path, error = %e, "cannot settle a segment commit yet; retrying");
            })
            .await;
        match outcome {
            Ok(true) => Ok(built.object_id.len() + built.commit.entries.len() * 30),
            Ok(false) => Err(BrokerError::unavailable(
                "the metadata store failed during the commit, which did not happen; nothing was stored, retry",
            )),
            Err(e) => Err(BrokerError::ambiguous(format!(
                "the commit's outcome could not be settled: {e}"
            ))),
        }
    }
}

/// Exponential backoff with jitter from `min` to `max`, without a limit on retries.
fn backoff(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
}

#[cfg(test)]
mod tests;
