//! Compaction: the owner of a partition copies the partition's entries out of the flush
//! segments (one object per flush window, many partitions, small) into per-partition objects of
//! about `--compaction-target-bytes`, and swaps the index to them.
//!
//! Why the owner, not the controller: the owner already holds the partition's fence (its
//! writer key), so the swap is fenced exactly like a flush — a broker that lost the partition
//! can copy, never swap — and the work spreads over the brokers with their partitions instead
//! of landing on one.
//!
//! One run: pick the oldest due run of entries ([`PartitionLog::compaction_run`]), read each
//! entry's byte range straight from the object store (not through the read cache, which keeps
//! the tail), check it against its CRC32C, append it whole (offsets never change; entries
//! coalesce up to [`ENTRY_BYTES`], never split), PUT the object, then commit
//! `parts/<topic>/<partition>/<first>-<last>` in one transaction comparing the writer key, the
//! topic and the key's absence ([`Catalog::commit_part`]). Readers switch at that commit;
//! the flush segments stay until garbage collection finds every entry of theirs copied or
//! expired, and their objects until the grace period passed (see [`super::gc`]). A crash at
//! any step leaves an unreferenced object (collected after the grace period), never a
//! reference to a missing one. Reads are throttled to `--compaction-bytes-per-sec`; on a local
//! directory the object is written in the background at that pace too
//! ([`silt_storage::object::local`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use silt_metadata::Clock;
use silt_metadata::catalog::{Catalog, IndexChange, Topic, WriterFence};
use silt_metadata::codec::{self, IndexArchive, IndexPage, IndexRoot, PageRef, SegmentCommit};
use silt_metadata::keys::Keys;
use silt_storage::object::local::BackgroundWrite;
use silt_storage::segment::{SegmentWriter, verify_entry_range};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::ClusterView;
use crate::core::BrokerError;
use crate::core::index_pages::{read_archive, read_page};
use crate::core::log_index::{CompactionPolicy, CompactionRun, IndexEntry, LogIndex, RollUp};
use crate::core::topics::TopicTable;
use crate::observe::metrics::{CompactionOutcome, Metrics};

/// Entries of a compacted object are coalesced up to this size: a fetch reads at least one
/// whole entry, so entries stay about as large as a fetch.
pub const ENTRY_BYTES: u32 = 1 << 20;

/// Largest index root a roll-up grows: a partition's page list stays well inside etcd's
/// 1.5 MiB request limit. Archives keep it near `--index-root-pages` (at most 4096 references,
/// about 800 KiB with 64-byte broker ids); this is the last guard.
const MAX_ROOT_BYTES: usize = 1 << 20;

/// A root this large is archived whatever its count (long broker ids make long page paths).
const ARCHIVE_ROOT_BYTES: usize = 768 << 10;

/// Largest unroll transaction: a root plus the commits it puts back, inside etcd's 1.5 MiB.
const MAX_UNROLL_BYTES: usize = 1400 << 10;

/// Entry reads in flight at once during a run.
pub(super) const READ_CONCURRENCY: usize = 8;

/// When and how fast compaction runs.
#[derive(Debug, Clone, Copy)]
pub struct CompactionSettings {
    pub target_bytes: u64,
    pub min_age: Duration,
    pub max_delay: Duration,
    pub bytes_per_sec: u64,
    /// A swap is not sent later than this after its object's PUT ended: garbage collection may
    /// delete an unreferenced object once it was listed unreferenced for the grace period, so
    /// a swap must land well inside it.
    pub swap_deadline: Duration,
    /// Most bytes key compaction's map of keys may take per run.
    pub key_map_bytes: usize,
    /// Compacted objects per index page (0: never roll entries up).
    pub page_parts: usize,
    /// Most references an index root lists before the oldest are archived.
    pub root_pages: usize,
    /// References per index archive.
    pub archive_pages: usize,
}

/// Compacts the partitions this broker owns.
#[derive(Debug)]
pub struct Compactor {
    pub catalog: Catalog,
    pub topics: Arc<TopicTable>,
    pub index: Arc<LogIndex>,
    pub store: Arc<dyn ObjectStore>,
    pub clock: Arc<dyn Clock>,
    pub view: Arc<ClusterView>,
    pub metrics: Arc<Metrics>,
    pub settings: CompactionSettings,
    /// Names objects uniquely within this incarnation.
    pub seq: AtomicU64,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPass {
    pub runs: usize,
    pub bytes: u64,
}

impl Compactor {
    /// Runs a pass every `every` until cancelled.
    pub async fn run(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let stop = cancel.clone();
        crate::runtime::tasks::periodic("compaction", every, None, cancel, || async {
            self.pass(&stop).await.map(drop)
        })
        .await;
    }

    /// One pass over the partitions this broker owns: each compacts its due runs, oldest
    /// first, until none is due or `cancel`.
    pub async fn pass(&self, cancel: &CancellationToken) -> Result<CompactionPass, BrokerError> {
        let mut pass = CompactionPass::default();
        if !self.view.is_ready() {
            return Ok(pass);
        }
        let me = self.view.broker_id().to_string();
        let mut owned: Vec<_> = self
            .view
            .owners()
            .into_iter()
            .filter(|(_, o)| o.broker_id == me)
            .map(|(p, _)| p)
            .collect();
        owned.sort_unstable();
        let live = self.topics.live_ids();
        // A partition that fails (a damaged or missing object, the store down) is reported and
        // retried next pass; the partitions after it are still compacted.
        let mut first_error = None;
        for (topic_id, partition) in owned {
            let Some(topic) = live.get(&topic_id) else {
                continue;
            };
            if topic.record.cleanup_policy.compacts() {
                // Key compaction reads the whole log: a topic turned compacted first gets its
                // index pages back in metadata, newest first.
                let unrolled = self.unroll(topic, partition).await;
                if let Err(e) = unrolled {
                    warn!(topic = %topic.record.name, partition, error = %e, "could not unroll the index pages of a compacted topic; retrying next pass");
                    first_error.get_or_insert(e);
                    continue;
                }
                if let Err(e) = self
                    .clean_partition(topic, partition, &mut pass, cancel)
                    .await
                {
                    warn!(topic = %topic.record.name, partition, error = %e, "key compaction failed; retrying next pass");
                    first_error.get_or_insert(e);
                }
                continue;
            }
            // A partition's due runs, one after the other (each swap changes what is due).
            loop {
                if cancel.is_cancelled() {
                    return Ok(pass);
                }
                let policy = self.policy();
                let log = self.index.partition(topic_id, partition);
                let Some(run) = log.compaction_run(&policy) else {
                    break;
                };
                match self.compact(topic, partition, &run, cancel).await {
                    Ok(true) => {
                        pass.runs += 1;
                        pass.bytes += run.bytes;
                        self.metrics
                            .compaction(CompactionOutcome::Committed, run.bytes);
                    }
                    Ok(false) => {
                        self.metrics.compaction(CompactionOutcome::Refused, 0);
                        break;
                    }
                    Err(e) => {
                        self.metrics.compaction(CompactionOutcome::Failed, 0);
                        warn!(topic = %topic.record.name, partition, error = %e, "compaction failed; retrying next pass");
                        first_error.get_or_insert(e);
                        break;
                    }
                }
            }
            if cancel.is_cancelled() {
                return Ok(pass);
            }
            if let Err(e) = self.roll_up(topic, partition).await {
                warn!(topic = %topic.record.name, partition, error = %e, "rolling index entries into a page failed; retrying next pass");
                first_error.get_or_insert(e);
            }
        }
        if pass.runs > 0 {
            info!(
                runs = pass.runs,
                bytes = pass.bytes,
                "compacted entries into per-partition objects"
            );
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(pass),
        }
    }

    /// Key-compacts a partition of a compacted topic if a run is due.
    async fn clean_partition(
        &self,
        topic: &Topic,
        partition: u32,
        pass: &mut CompactionPass,
        cancel: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let policy = self.policy();
        let log = self.index.partition(topic.id, partition);
        let Some(run) = log.cleaning_run(&policy) else {
            return Ok(());
        };
        match self.clean(topic, partition, &run, cancel).await {
            Ok(Some(cleaned)) => {
                pass.runs += cleaned.objects;
                pass.bytes += cleaned.read;
                self.metrics
                    .compaction(CompactionOutcome::Committed, cleaned.read);
                self.metrics.key_compaction_removed(cleaned.dropped);
                debug!(
                    topic = %topic.record.name,
                    partition,
                    objects = cleaned.objects,
                    read = cleaned.read,
                    written = cleaned.written,
                    dropped = cleaned.dropped,
                    "key-compacted a partition"
                );
                Ok(())
            }
            Ok(None) => {
                self.metrics.compaction(CompactionOutcome::Refused, 0);
                Ok(())
            }
            Err(e) => {
                self.metrics.compaction(CompactionOutcome::Failed, 0);
                Err(e)
            }
        }
    }

    /// This broker's writer fence, if it owns partition `pid`: what its swaps compare.
    pub(super) fn owner_fence(&self, pid: (u64, u32)) -> Option<WriterFence> {
        let snapshot = self.view.flush_snapshot(std::iter::once(pid));
        snapshot.fence.filter(|_| snapshot.owned.contains_key(&pid))
    }

    /// When runs are due, as of now.
    fn policy(&self) -> CompactionPolicy {
        let now = self.clock.now_ms();
        CompactionPolicy {
            written_before_ms: now.saturating_sub(self.settings.min_age.as_millis() as i64),
            target_bytes: self.settings.target_bytes,
            overdue_before_ms: now.saturating_sub(self.settings.max_delay.as_millis() as i64),
            now_ms: now,
        }
    }

    /// Copies one run into a new object and swaps the index to it. `Ok(false)`: refused (the
    /// partition moved, the topic went, the range was compacted already, or cancelled).
    async fn compact(
        &self,
        topic: &Topic,
        partition: u32,
        run: &CompactionRun,
        cancel: &CancellationToken,
    ) -> Result<bool, BrokerError> {
        let started = tokio::time::Instant::now();
        let pid = (topic.id, partition);
        let Some(fence) = self.owner_fence(pid) else {
            return Ok(false);
        };
        let now = self.clock.now_ms();
        let mut writer = SegmentWriter::new(now, run.bytes as usize + 4096);
        writer.begin_entry(topic.id, partition);
        // Entries are small objects' ranges: read several at once, append them in order.
        let reads: Vec<_> = run
            .entries
            .iter()
            .cloned()
            .map(|e| {
                let store = self.store.clone();
                read_entry(store, e)
            })
            .collect();
        let mut reads = futures::stream::iter(reads).buffered(READ_CONCURRENCY);
        let mut read = 0u64;
        while let Some(next) = reads.next().await {
            let (e, bytes) = next?;
            if writer.open_entry_len() > 0
                && writer.open_entry_len().saturating_add(e.length) > ENTRY_BYTES
            {
                writer.begin_entry(topic.id, partition);
            }
            writer.push_entry(&bytes, &e.entry);
            read += bytes.len() as u64;
            // Throttle: never ahead of bytes_per_sec since the run began.
            let due = Duration::from_secs_f64(read as f64 / self.settings.bytes_per_sec as f64);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(false),
                _ = tokio::time::sleep_until(started + due) => {}
            }
        }
        let (first, last) = (
            run.entries[0].first_offset,
            run.entries[run.entries.len() - 1].last_offset,
        );
        let id = Keys::part_id(topic.id, partition, first, last);
        self.put_and_swap(topic, &fence, &id, writer, now, cancel)
            .await
    }

    /// PUTs a compacted object (`writer`'s) and swaps the index to it under commit id `id`:
    /// true when swapped; false when refused (the partition moved, the topic went, or the range
    /// was compacted already) or too late to swap safely, and then the object is deleted or
    /// left to garbage collection.
    pub(super) async fn put_and_swap(
        &self,
        topic: &Topic,
        fence: &WriterFence,
        id: &str,
        writer: SegmentWriter,
        now: i64,
        cancel: &CancellationToken,
    ) -> Result<bool, BrokerError> {
        let (object, entries) = writer.finish();
        let object = PutPayload::from_iter(object);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = Path::from(format!(
            "parts/{id}-{}-{:016x}-{seq}.seg",
            fence.broker_id, fence.incarnation
        ));
        let commit = SegmentCommit {
            object: path.to_string(),
            object_len: object.content_length() as u64,
            created_at_ms: now,
            entries,
        };
        // On a local disk, written piecewise at the throttle's pace (it shares the disk with
        // the flushes' fsyncs; one PUT elsewhere), but within the swap deadline: the staged file
        // is listed, so garbage collection could delete it once the grace period passed.
        let at_least = commit.object_len as f64 / self.settings.swap_deadline.as_secs_f64();
        let pace = BackgroundWrite {
            bytes_per_sec: self.settings.bytes_per_sec.max(at_least.ceil() as u64),
        };
        // Cancelled (shutdown): the write stops between pieces and removes what it staged.
        tokio::select! {
            _ = cancel.cancelled() => return Ok(false),
            put = self.store.put_opts(&path, object, pace.put_options()) => {
                put.map_err(|err| {
                    BrokerError::unavailable(format!("compaction could not write {path}: {err}"))
                })?;
            }
        }
        // Garbage collection can see the object (list it) only once its PUT ended, so its
        // grace period starts then at the earliest; the swap must be sent well within it.
        let put_done = tokio::time::Instant::now();
        crate::failpoint::hit("compaction-after-put");
        if put_done.elapsed() > self.settings.swap_deadline {
            warn!(object = %path, "compaction took too long to swap safely; its object is left to garbage collection");
            return Ok(false);
        }
        match self.catalog.commit_part(fence, topic, id, &commit).await {
            Ok(Some(_)) => {
                self.index.apply_part(id, &commit);
                debug!(object = %path, "compacted");
                Ok(true)
            }
            Ok(None) => {
                debug!(object = %path, "compaction swap refused (partition moved, topic gone, or compacted already)");
                if let Err(e) = self.store.delete(&path).await {
                    debug!(object = %path, error = %e, "could not delete a refused compaction's object; garbage collection will");
                }
                Ok(false)
            }
            // Its outcome is unknown: the object stays, and garbage collection deletes it once
            // it is sure no commit references it.
            Err(e) => Err(e.into()),
        }
    }
}

impl Compactor {
    /// Rolls the partition's oldest compacted objects out of metadata into an index page, and
    /// drops the pages retention passed, when due ([`crate::core::log_index::PartitionLog::roll_up`]):
    /// PUT the page (and, once the root lists more than `root_pages` references, an archive of
    /// the oldest `archive_pages` of one level: [`archive_range`]), then ONE transaction puts
    /// the index root with them and deletes the rolled commits' keys, fenced like a compaction
    /// swap and compared on the root's version. True when the root changed. A crash between
    /// the PUTs and the swap leaves unreferenced objects for garbage collection.
    pub async fn roll_up(&self, topic: &Topic, partition: u32) -> Result<bool, BrokerError> {
        if self.settings.page_parts == 0 {
            return Ok(false);
        }
        // The fence before the index: a roll-up computed from an index older than the fence
        // could be sent under it.
        let pid = (topic.id, partition);
        let Some(fence) = self.owner_fence(pid) else {
            return Ok(false);
        };
        let log = self.index.partition(topic.id, partition);
        let Some(RollUp {
            root_revision,
            mut pages,
            stored_pages,
            mut parts,
        }) = log.roll_up(self.settings.page_parts, self.settings.target_bytes / 2)
        else {
            return Ok(false);
        };
        // Unrolling puts a page's commits back in one transaction: keep a page's commits well
        // inside etcd's 1.5 MiB request (huge compaction targets make big commits).
        while parts.len() > 1
            && parts
                .iter()
                .map(|(id, c)| id.len() + codec::encode_segment(c).len())
                .sum::<usize>()
                > MAX_ROOT_BYTES / 2
        {
            parts.pop();
        }
        let forget: Vec<String> = parts.iter().map(|(id, _)| id.clone()).collect();
        let mut upload = None;
        let entries = || parts.iter().flat_map(|(_, c)| &c.entries);
        if let (Some(first), Some(last)) = (entries().next(), entries().last()) {
            let (first, last) = (first.first_offset, last.last_offset);
            let bytes: u64 = entries().map(|e| u64::from(e.length)).sum();
            let max_timestamp = entries().map(|e| e.max_timestamp).max().unwrap_or(i64::MIN);
            let page = IndexPage {
                topic_id: topic.id,
                partition,
                parts,
            };
            let encoded = codec::encode_index_page(&page);
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let path = Path::from(format!(
                "index/{:016x}/{partition}/{first:020}-{last:020}-{}-{:016x}-{seq}.idx",
                topic.id, fence.broker_id, fence.incarnation
            ));
            pages.push(PageRef {
                object: path.to_string(),
                object_len: encoded.len() as u64,
                first_offset: first,
                last_offset: last,
                bytes,
                max_timestamp,
                level: 0,
            });
            upload = Some((path, encoded));
        }
        // Past `root_pages` (or ARCHIVE_ROOT_BYTES of root, with long paths), the oldest
        // references of one level move into an archive (written after the page, swapped in by
        // the same transaction) — once every live broker reads archives (a rolling upgrade
        // from brokers without them writes none).
        let mut uploads: Vec<(Path, Vec<u8>)> = upload.into_iter().collect();
        let full = pages.len() > self.settings.root_pages
            || codec::encode_index_root(&IndexRoot {
                pages: pages.clone(),
            })
            .len()
                > ARCHIVE_ROOT_BYTES;
        if full
            && let Some(range) = archive_range(&pages, self.settings.archive_pages)
            && self.every_broker_reads_archives(&fence.broker_id).await
        {
            let refs: Vec<PageRef> = pages[range.clone()].to_vec();
            let (first, last) = (refs[0].first_offset, refs[refs.len() - 1].last_offset);
            let level = refs[0].level + 1;
            let archive = codec::encode_index_archive(&IndexArchive {
                topic_id: topic.id,
                partition,
                refs,
            });
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let path = Path::from(format!(
                "index/{:016x}/{partition}/{first:020}-{last:020}-{}-{:016x}-{seq}.ida",
                topic.id, fence.broker_id, fence.incarnation
            ));
            let archived = &pages[range.clone()];
            let reference = PageRef {
                object: path.to_string(),
                object_len: archive.len() as u64,
                first_offset: first,
                last_offset: last,
                bytes: archived.iter().map(|r| r.bytes).sum(),
                max_timestamp: archived
                    .iter()
                    .map(|r| r.max_timestamp)
                    .max()
                    .unwrap_or(i64::MIN),
                level,
            };
            pages.splice(range, [reference]);
            uploads.push((path, archive));
        }
        let grows = pages.len() > stored_pages;
        let root = IndexRoot { pages };
        let root_len = codec::encode_index_root(&root).len();
        if grows && root_len > MAX_ROOT_BYTES {
            warn!(topic = %topic.record.name, partition, root_len, "the partition's index root is full (are all brokers upgraded to read index archives?); its newer compacted entries stay in metadata");
            return Ok(false);
        }
        let mut written = Vec::new();
        let mut first_put_done = None;
        for (path, encoded) in uploads {
            let put = self.store.put(&path, PutPayload::from(encoded)).await;
            if let Err(err) = put {
                self.delete_unswapped(&written).await;
                return Err(BrokerError::unavailable(format!(
                    "could not write index object {path}: {err}"
                )));
            }
            first_put_done.get_or_insert_with(tokio::time::Instant::now);
            written.push(path);
        }
        if let Some(put_done) = first_put_done {
            crate::failpoint::hit("rollup-after-put");
            if put_done.elapsed() > self.settings.swap_deadline {
                warn!(objects = ?written, "an index page took too long to swap in safely; it is left to garbage collection");
                return Ok(false);
            }
        }
        let swapped = self
            .catalog
            .swap_index(
                &fence,
                topic,
                partition,
                IndexChange {
                    seen_root_revision: root_revision,
                    root: &root,
                    forget: &forget,
                    restore: &[],
                },
            )
            .await?;
        match swapped {
            Some(revision) => {
                self.index.set_root(topic.id, partition, revision, &root);
                for _ in &written {
                    self.metrics.index_page_written();
                }
                debug!(topic = %topic.record.name, partition, rolled = forget.len(), pages = root.pages.len(), written = written.len(), "index root updated");
                Ok(true)
            }
            None => {
                debug!(topic = %topic.record.name, partition, "index roll-up refused (partition moved, topic gone, or the root changed)");
                self.delete_unswapped(&written).await;
                Ok(false)
            }
        }
    }

    /// Whether every live broker reads index archives, as the metadata store lists them now
    /// (not the view, which may not show a broker that registered a moment ago), this one
    /// among them.
    async fn every_broker_reads_archives(&self, me: &str) -> bool {
        match self.catalog.list_brokers().await {
            Ok(brokers) => brokers.iter().any(|b| b.broker_id == me) && archives_readable(&brokers),
            Err(e) => {
                debug!(error = %e, "could not list the brokers; no archive this pass");
                false
            }
        }
    }

    /// Deletes index objects whose swap was refused or never sent; garbage collection deletes
    /// any left.
    async fn delete_unswapped(&self, written: &[Path]) {
        for path in written {
            if let Err(e) = self.store.delete(path).await {
                debug!(object = %path, error = %e, "could not delete an index object never swapped in; garbage collection will");
            }
        }
    }

    /// Puts the commits of a partition's index pages back into metadata, newest page first,
    /// one page per transaction (fenced like [`Self::roll_up`]), until the partition has none:
    /// key compaction rewrites the log from its start, which needs every entry in memory.
    async fn unroll(&self, topic: &Topic, partition: u32) -> Result<(), BrokerError> {
        let log = self.index.partition(topic.id, partition);
        loop {
            let (root_revision, mut pages) = log.pages();
            let Some(last) = pages.pop() else {
                return Ok(());
            };
            let pid = (topic.id, partition);
            let Some(fence) = self.owner_fence(pid) else {
                return Ok(());
            };
            if last.level > 0 {
                // An archive goes back into the root as the references it holds first.
                let archive = read_archive(self.store.as_ref(), &last).await?;
                pages.extend(archive.refs);
                let root = IndexRoot { pages };
                let root_len = codec::encode_index_root(&root).len();
                if root_len > MAX_ROOT_BYTES {
                    warn!(topic = %topic.record.name, partition, root_len, "the partition's index is too large to unroll for key compaction; its records stay as they are, readable");
                    return Ok(());
                }
                let change = IndexChange {
                    seen_root_revision: root_revision,
                    root: &root,
                    forget: &[],
                    restore: &[],
                };
                let swapped = self
                    .catalog
                    .swap_index(&fence, topic, partition, change)
                    .await?;
                let Some(revision) = swapped else {
                    return Ok(());
                };
                self.index.set_root(topic.id, partition, revision, &root);
                info!(topic = %topic.record.name, partition, object = %last.object, "put an index archive's references back into the index root for key compaction");
                continue;
            }
            let page = read_page(self.store.as_ref(), &last.object).await?;
            let root = IndexRoot { pages };
            let unroll_len = codec::encode_index_root(&root).len()
                + page
                    .parts
                    .iter()
                    .map(|(id, c)| id.len() + codec::encode_segment(c).len())
                    .sum::<usize>();
            if unroll_len > MAX_UNROLL_BYTES {
                warn!(topic = %topic.record.name, partition, unroll_len, "the partition's index is too large to unroll for key compaction; its records stay as they are, readable");
                return Ok(());
            }
            let swapped = self
                .catalog
                .swap_index(
                    &fence,
                    topic,
                    partition,
                    IndexChange {
                        seen_root_revision: root_revision,
                        root: &root,
                        forget: &[],
                        restore: &page.parts,
                    },
                )
                .await?;
            let Some(revision) = swapped else {
                return Ok(());
            };
            self.index.set_root(topic.id, partition, revision, &root);
            for (id, commit) in &page.parts {
                self.index.apply_part(id, commit);
            }
            info!(topic = %topic.record.name, partition, object = %last.object, "put an index page's commits back into metadata for key compaction");
        }
    }
}

/// Whether every broker listed reads index archives.
fn archives_readable(brokers: &[silt_metadata::codec::BrokerRecord]) -> bool {
    brokers
        .iter()
        .all(|b| b.reads(codec::FORMAT_INDEX_ARCHIVES))
}

/// The references of `pages` (an index root, levels never rising from older to newer) to
/// move into one archive: the oldest `fanout` of the level with the most references (the
/// lowest of equals), if it has that many. One archive per roll-up (which adds one page)
/// keeps the root at its threshold `R` as long as some level has `fanout` references: it
/// lists at most max(R, (fanout − 1) × levels + 1). A level fills `fanout` times more slowly
/// than the one below (levels ≈ log_fanout of the pages), so at the defaults (4096, 256) the
/// root stays at 4096 below 16 levels — never — and a lookup reads one archive per level,
/// one below ~0.5 PiB of a partition, two beyond.
fn archive_range(pages: &[PageRef], fanout: usize) -> Option<std::ops::Range<usize>> {
    let mut best: Option<(usize, std::ops::Range<usize>)> = None;
    let mut i = 0;
    while i < pages.len() {
        let level = pages[i].level;
        let end = i + pages[i..].iter().take_while(|p| p.level == level).count();
        let count = end - i;
        // Levels fall from older to newer: a later run of equal length is a lower level.
        if best.as_ref().is_none_or(|(n, _)| count >= *n) {
            best = Some((count, i..end));
        }
        i = end;
    }
    let (count, run) = best?;
    (count >= fanout.max(2)).then(|| run.start..run.start + fanout.max(2))
}

/// One entry's bytes, checked against its CRC32C.
pub(super) async fn read_entry(
    store: Arc<dyn ObjectStore>,
    e: IndexEntry,
) -> Result<(IndexEntry, bytes::Bytes), BrokerError> {
    let range = e.position..e.position + u64::from(e.length);
    let bytes = store
        .get_range(&e.object.path, range)
        .await
        .map_err(|err| {
            BrokerError::unavailable(format!(
                "compaction could not read {}: {err}",
                e.object.path
            ))
        })?;
    verify_entry_range(&e.entry, &bytes).map_err(|err| {
        BrokerError::internal(format!(
            "compaction found entry {}..={} of {} damaged, and leaves it as it is: {err}",
            e.first_offset, e.last_offset, e.object.path
        ))
    })?;
    Ok((e, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(levels: &[u8]) -> Vec<PageRef> {
        levels
            .iter()
            .enumerate()
            .map(|(i, &level)| PageRef {
                object: format!("index/{i}"),
                object_len: 1,
                first_offset: i as i64 * 10,
                last_offset: i as i64 * 10 + 9,
                bytes: 1,
                max_timestamp: 0,
                level,
            })
            .collect()
    }

    #[test]
    fn archives_are_written_only_while_every_live_broker_reads_them() {
        let broker = |formats: &[&str]| silt_metadata::codec::BrokerRecord {
            v: 1,
            broker_id: "b".into(),
            address: "a:1".into(),
            incarnation: 1,
            started_at_ms: 0,
            formats: formats.iter().map(|f| f.to_string()).collect(),
        };
        let reads = broker(&[codec::FORMAT_INDEX_ARCHIVES]);
        assert!(archives_readable(&[reads.clone(), reads.clone()]));
        // One broker from before archives (mid rolling upgrade): none are written.
        assert!(!archives_readable(&[reads.clone(), broker(&[])]));
        assert!(!archives_readable(&[broker(&["something-else"]), reads]));
    }

    #[test]
    fn the_level_with_most_references_is_archived_oldest_first() {
        // The most references: the three of level 1.
        assert_eq!(archive_range(&refs(&[1, 1, 1, 0, 0]), 2), Some(0..2));
        // Equals: the lower level, whose references are newer.
        assert_eq!(archive_range(&refs(&[3, 3, 1, 0, 0]), 2), Some(3..5));
        assert_eq!(archive_range(&refs(&[2, 0, 0, 0, 0, 0]), 4), Some(1..5));
        // No level has enough: nothing.
        assert_eq!(archive_range(&refs(&[2, 1, 0]), 2), None);
        assert_eq!(archive_range(&[], 2), None);
        // Rolling one page at a time into a root of at most R references, F per archive: the
        // root stays within max(R, (F - 1) x levels + 1), levels fall from older to newer, the
        // references stay contiguous, and levels grow with the logarithm of the pages.
        for (r, f, pages) in [(4, 2, 600), (16, 4, 3000), (512, 256, 3000)] {
            let mut root: Vec<PageRef> = Vec::new();
            for n in 0..pages as i64 {
                let mut page = refs(&[0]).remove(0);
                page.first_offset = n * 10;
                page.last_offset = n * 10 + 9;
                root.push(page);
                if root.len() > r
                    && let Some(range) = archive_range(&root, f)
                {
                    let archived = root[range.clone()].to_vec();
                    let mut archive = archived[0].clone();
                    archive.last_offset = archived[archived.len() - 1].last_offset;
                    archive.level += 1;
                    root.splice(range, [archive]);
                }
                let levels = usize::from(root[0].level) + 1;
                let bound = r.max((f - 1) * levels + 1);
                assert!(
                    root.len() <= bound,
                    "{r}/{f} page {n}: {} references",
                    root.len()
                );
                assert!(root.windows(2).all(|w| w[0].level >= w[1].level));
                assert!(
                    root.windows(2)
                        .all(|w| w[1].first_offset == w[0].last_offset + 1)
                );
                assert_eq!(root[0].first_offset, 0);
                let log = ((n + 1) as f64).log(f as f64).ceil() as usize;
                assert!(levels <= log + 1, "{r}/{f} page {n}: {levels} levels");
            }
        }
    }
}
