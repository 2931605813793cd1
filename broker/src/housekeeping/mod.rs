//! Background housekeeping: retention, compaction, garbage collection and orphan cleanup.
//!
//! - **Retention** moves each partition's log start offset past whole index entries whose newest
//!   record is older than the topic's `retention_ms`, or past its newest `retention_bytes` of
//!   batches per partition, and records it in metadata.
//!   Topics whose `cleanup_policy` is `compact` alone have no retention.
//! - **Compaction** ([`compaction`]) copies a partition's entries into per-partition objects;
//!   in compacted topics, **key compaction** ([`key_compaction`]) does it keeping only the
//!   latest record of each key.
//! - **Commit GC** forgets a commit (a flush segment's or a compacted object's key) once *every*
//!   entry in it is dead: its topic was deleted, its records are below their partition's log
//!   start, or compaction copied them into another object the index holds.
//! - **Object GC** deletes an object once no commit has referenced it for `--gc-grace-ms`:
//!   objects whose commit was forgotten, compaction's objects whose swap never happened, and
//!   flushes killed between PUT and commit. The commit goes first and the object after the
//!   grace period, so a crash leaves an orphan object, never a reference to a missing one, and
//!   a reader that picked an entry from an older index still finds its object.
//! - **History compaction** discards the metadata store's change history older than
//!   `--metadata-history-ms` (etcd's Compact): etcd keeps every revision of every key until
//!   compacted, so without it each flush's commit would stay in etcd's database forever.
//! - **Orphan cleanup**, at start, deletes objects this broker uploaded in earlier incarnations
//!   whose commit never happened (killed between PUT and commit) at once: those incarnations
//!   are fenced, so their commits can never land.

pub mod compaction;
pub mod key_compaction;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use silt_metadata::Clock;
use silt_metadata::catalog::{Catalog, LoadedCommits, WriterFence};
use silt_metadata::codec::{PageRef, SegmentEntry};
use silt_storage::cache::SegmentCache;
use silt_storage::object::{SegmentName, broker_segments_prefix};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::ClusterView;
use crate::core::BrokerError;
use crate::core::log_index::LogIndex;
use crate::core::topics::TopicTable;
use crate::observe::metrics::Metrics;

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
    pub metrics: Arc<Metrics>,
    /// How long an object stays unreferenced before it is deleted (ms).
    pub gc_grace_ms: i64,
    /// Unreferenced objects by path, with when this controller first saw them so.
    pub unreferenced: Mutex<HashMap<String, i64>>,
    /// How much metadata history to keep, and the revisions seen by recent passes.
    pub history: HistoryCompaction,
    /// The objects each index page references, by page path (pages never change), as
    /// [`PathSet`] hashes: 8 bytes per object instead of its path.
    pub page_objects: Mutex<HashMap<String, Arc<[u64]>>>,
    /// The references each index archive holds, by archive path (archives never change).
    pub archive_refs: Mutex<HashMap<String, Arc<[PageRef]>>>,
}

/// Index pages a GC pass reads at once (a new controller reads every page once).
const PAGE_READS: usize = 16;

/// A reference of partition `at` = (topic id, partition, log start) found in a root or an
/// archive: referenced; a page not wholly below the log start is read for its objects, an
/// archive for its references (one wholly below references nothing live: the owner drops it
/// from the root at its next roll-up, or the archive holding it goes whole, later).
fn follow(
    r: PageRef,
    at: (u64, u32, i64),
    referenced: &mut PathSet,
    pages: &mut Vec<(u64, u32, String)>,
    archives: &mut Vec<(u64, u32, i64, PageRef)>,
) {
    let (topic_id, partition, log_start) = at;
    referenced.insert(&r.object);
    if r.last_offset < log_start {
        return;
    }
    if r.level == 0 {
        pages.push((topic_id, partition, r.object));
    } else {
        archives.push((topic_id, partition, log_start, r));
    }
}

/// A set of object paths kept as 64-bit hashes, so a pass over a long history holds 8 bytes
/// per referenced object. A collision can only make an unreferenced object look referenced —
/// it is kept, never deleted wrongly — and hashes are compared within one process only.
#[derive(Debug, Default)]
struct PathSet(HashSet<u64>);

impl PathSet {
    fn hash(path: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        path.hash(&mut hasher);
        hasher.finish()
    }

    fn insert(&mut self, path: &str) {
        self.0.insert(Self::hash(path));
    }

    fn contains(&self, path: &str) -> bool {
        self.0.contains(&Self::hash(path))
    }
}

/// Compaction of the metadata store's change history: each pass as controller notes the
/// revision its view has applied; the store is compacted to the newest noted revision at least
/// `keep_ms` old. Revisions the view applied exist in the store, so the target is never ahead
/// of it, and a watcher that lags less than `keep_ms` never finds its history gone.
#[derive(Debug, Default)]
pub struct HistoryCompaction {
    /// History to keep (ms); 0 or less: never compact.
    keep_ms: i64,
    /// (when, revision applied) per pass as controller, oldest first.
    marks: Mutex<VecDeque<(i64, i64)>>,
}

impl HistoryCompaction {
    /// Keeps `keep_ms` of history (0: compaction is left to the store).
    pub fn keeping(keep_ms: i64) -> Self {
        Self {
            keep_ms,
            marks: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(i64, i64)>> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes `revision` at `now`; returns the revision to compact to, if one is due.
    fn due(&self, now: i64, revision: i64) -> Option<i64> {
        if self.keep_ms <= 0 {
            return None;
        }
        let mut marks = self.lock();
        if marks.back().is_none_or(|(_, r)| *r < revision) {
            marks.push_back((now, revision));
        }
        let mut target = None;
        while let Some(&(at, revision)) = marks.front() {
            if now.saturating_sub(at) < self.keep_ms {
                break;
            }
            target = Some(revision);
            marks.pop_front();
        }
        target
    }

    /// A broker that is not the controller forgets its marks: a new term starts counting anew.
    fn clear(&self) {
        self.lock().clear();
    }
}

/// The objects of the commits one GC pass read: kept, and forgotten by it.
#[derive(Debug, Default)]
struct Commits {
    referenced: PathSet,
    forgotten: Vec<String>,
    /// Object path prefixes nothing may be deleted under this pass: partitions with an index
    /// page that could not be read (what it references is unknown).
    protected: Vec<String>,
}

/// What one housekeeping pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub partitions_trimmed: usize,
    /// Commit keys forgotten (flush segments' and compacted objects').
    pub segments_deleted: usize,
    pub objects_deleted: usize,
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
            // Sightings of unreferenced objects count only over consecutive passes as controller.
            self.lock_unreferenced().clear();
            self.history.clear();
            return Ok(pass);
        };
        let now = self.clock.now_ms();
        if let Some(revision) = self.history.due(now, self.view.applied()) {
            match self.catalog.store().compact(revision).await {
                Ok(()) => {
                    self.metrics.metadata_compacted(revision);
                    debug!(revision, "compacted the metadata store's history");
                }
                Err(e) => {
                    warn!(revision, error = %e, "could not compact the metadata store's history; retrying next pass")
                }
            }
        }
        self.retention(controller, now, &mut pass).await?;
        // Objects are listed before the commits are read, so an object committed meanwhile is
        // at worst seen unreferenced once.
        let listed = self.list_objects().await?;
        let Some(commits) = self.forget_dead_commits(controller, &mut pass).await? else {
            return Ok(pass);
        };
        pass.objects_deleted = self
            .delete_unreferenced(controller, now, listed, commits)
            .await?;
        if pass != Pass::default() {
            info!(
                trimmed = pass.partitions_trimmed,
                forgotten = pass.segments_deleted,
                deleted = pass.objects_deleted,
                "retention and garbage collection pass"
            );
        }
        Ok(pass)
    }

    fn lock_unreferenced(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.unreferenced.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn retention(
        &self,
        controller: i64,
        now: i64,
        pass: &mut Pass,
    ) -> Result<(), BrokerError> {
        for topic in self.topics.all() {
            let (by_time, by_size) = (topic.record.retention_ms, topic.record.retention_bytes);
            // A compacted topic without `delete` in its policy keeps every key's latest
            // record however old (Kafka's `cleanup.policy=compact`).
            if by_time < 0 && by_size < 0 || !topic.record.cleanup_policy.deletes() {
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
        Ok(())
    }

    /// Forgets every commit whose entries are all dead; returns the objects of the commits it
    /// kept and of those it forgot, or `None` when it is no longer the controller.
    async fn forget_dead_commits(
        &self,
        controller: i64,
        pass: &mut Pass,
    ) -> Result<Option<Commits>, BrokerError> {
        let live = self.topics.live_ids();
        // A topic id is the revision that created it: one the view has not reached yet may be
        // a topic created moments ago elsewhere, not a deleted one.
        let seen = self.view.applied();
        let dead = |e: &SegmentEntry, id: &str| {
            if !live.contains_key(&e.topic_id) {
                return e.topic_id as i64 <= seen;
            }
            let log = self.index.partition(e.topic_id, e.partition);
            e.last_offset < log.offsets().log_start || log.superseded(e, id)
        };
        let mut commits = Commits::default();
        // Roots last: a roll-up moves a commit from `parts/` into a root in one transaction, so
        // reading them in this order never misses it.
        let LoadedCommits {
            segments,
            parts,
            roots,
            newest,
        } = self.catalog.load_commits().await?;
        // Judge the commits with an index that applied every one of them: an index behind them
        // could call a commit it has not applied yet copied (the range compacted again, or
        // unrolled). Their own revisions, not the store's: writes outside the view (groups,
        // other clusters) move the store's revision without the view ever seeing them.
        if !self.view.wait_for(newest, Duration::from_secs(10)).await {
            debug!(
                newest,
                "the view is behind the commits read; commit GC waits for the next pass"
            );
            return Ok(None);
        }
        let mut pages = Vec::new();
        let mut archives = Vec::new();
        for ((topic_id, partition), root) in roots {
            if !live.contains_key(&topic_id) {
                if topic_id as i64 > seen {
                    continue;
                }
                if !self
                    .catalog
                    .delete_index_root(controller, topic_id, partition)
                    .await?
                {
                    debug!("index root GC refused: no longer the controller");
                    return Ok(None);
                }
                commits
                    .forgotten
                    .extend(root.pages.into_iter().map(|p| p.object));
                pass.segments_deleted += 1;
                continue;
            }
            let log_start = self
                .index
                .partition(topic_id, partition)
                .offsets()
                .log_start;
            for r in root.pages {
                let at = (topic_id, partition, log_start);
                follow(r, at, &mut commits.referenced, &mut pages, &mut archives);
            }
        }
        // Archives, level by level, PAGE_READS at a time: what each references is referenced
        // and followed like the root's.
        while !archives.is_empty() {
            let mut reads = futures::stream::iter(std::mem::take(&mut archives))
                .map(|(topic_id, partition, log_start, r)| async move {
                    let held = self.archive_refs(&r).await;
                    (topic_id, partition, log_start, held)
                })
                .buffer_unordered(PAGE_READS);
            while let Some((topic_id, partition, log_start, held)) = reads.next().await {
                match held {
                    Ok(held) => {
                        for r in held.iter() {
                            let at = (topic_id, partition, log_start);
                            let referenced = &mut commits.referenced;
                            follow(r.clone(), at, referenced, &mut pages, &mut archives);
                        }
                    }
                    Err(e) => {
                        warn!(topic_id, partition, error = %e, "an index archive could not be read; the partition's objects and index are kept this pass");
                        commits.protected.extend([
                            format!("parts/{topic_id:016x}/{partition}/"),
                            format!("index/{topic_id:016x}/{partition}/"),
                        ]);
                    }
                }
            }
        }
        let mut reads = futures::stream::iter(pages)
            .map(|(topic_id, partition, page)| async move {
                (topic_id, partition, self.page_objects(&page).await)
            })
            .buffer_unordered(PAGE_READS);
        while let Some((topic_id, partition, objects)) = reads.next().await {
            match objects {
                Ok(objects) => commits.referenced.0.extend(objects.iter().copied()),
                // What it references is unknown: the partition's objects stay, the rest of the
                // cluster is collected as usual.
                Err(e) => {
                    warn!(topic_id, partition, error = %e, "an index page could not be read; the partition's objects are kept this pass");
                    commits
                        .protected
                        .push(format!("parts/{topic_id:016x}/{partition}/"));
                }
            }
        }
        drop(reads);
        // Pages no root references any more are forgotten.
        self.lock_page_objects()
            .retain(|path, _| commits.referenced.contains(path));
        self.lock_archive_refs()
            .retain(|path, _| commits.referenced.contains(path));
        for (is_part, (id, commit)) in segments
            .into_iter()
            .map(|c| (false, c))
            .chain(parts.into_iter().map(|c| (true, c)))
        {
            if !commit.entries.iter().all(|e| dead(e, &id)) {
                commits.referenced.insert(&commit.object);
                continue;
            }
            let done = if is_part {
                self.catalog.delete_part(controller, &id).await?
            } else {
                self.catalog.delete_segment(controller, &id).await?
            };
            if !done {
                debug!("commit GC refused: no longer the controller");
                return Ok(None);
            }
            commits.forgotten.push(commit.object);
            pass.segments_deleted += 1;
        }
        Ok(Some(commits))
    }

    fn lock_page_objects(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<[u64]>>> {
        self.page_objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_archive_refs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<[PageRef]>>> {
        self.archive_refs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The references an index archive holds, read once per archive.
    async fn archive_refs(&self, archive: &PageRef) -> Result<Arc<[PageRef]>, BrokerError> {
        if let Some(refs) = self.lock_archive_refs().get(&archive.object) {
            return Ok(refs.clone());
        }
        let read = crate::core::index_pages::read_archive(self.store.as_ref(), archive).await?;
        let refs: Arc<[PageRef]> = read.refs.into();
        self.lock_archive_refs()
            .insert(archive.object.clone(), Arc::clone(&refs));
        Ok(refs)
    }

    /// The objects an index page references (as [`PathSet`] hashes), read once per page.
    async fn page_objects(&self, path: &str) -> Result<Arc<[u64]>, BrokerError> {
        if let Some(objects) = self.lock_page_objects().get(path) {
            return Ok(objects.clone());
        }
        let page = crate::core::index_pages::read_page(self.store.as_ref(), path).await?;
        let mut objects: Vec<u64> = page
            .parts
            .iter()
            .map(|(_, c)| PathSet::hash(&c.object))
            .collect();
        objects.sort_unstable();
        objects.dedup();
        let objects: Arc<[u64]> = objects.into();
        self.lock_page_objects()
            .insert(path.to_string(), Arc::clone(&objects));
        Ok(objects)
    }

    /// Every flush segment, compacted object and index page in the store.
    async fn list_objects(&self) -> Result<Vec<object_store::ObjectMeta>, BrokerError> {
        let mut listed = Vec::new();
        for prefix in ["segments", "parts", "index"] {
            let objects: Vec<_> = self
                .store
                .list(Some(&Path::from(prefix)))
                .try_collect()
                .await
                .map_err(|e| BrokerError::unavailable(format!("listing objects failed: {e}")))?;
            listed.extend(objects);
        }
        Ok(listed)
    }

    /// Deletes the `listed` objects no commit has referenced for the grace period; the
    /// commits forgotten in this pass start their objects' grace period now.
    async fn delete_unreferenced(
        &self,
        controller: i64,
        now: i64,
        listed: Vec<object_store::ObjectMeta>,
        commits: Commits,
    ) -> Result<usize, BrokerError> {
        let Commits {
            referenced,
            forgotten,
            protected,
        } = commits;
        let mut due = Vec::new();
        {
            let mut since = self.lock_unreferenced();
            for path in forgotten {
                since.insert(path, now);
            }
            let mut next = HashMap::new();
            for meta in listed {
                let path = meta.location.to_string();
                if referenced.contains(&path) || protected.iter().any(|p| path.starts_with(p)) {
                    continue;
                }
                let first = since.get(&path).copied().unwrap_or(now);
                if now.saturating_sub(first) >= self.gc_grace_ms {
                    due.push((meta.location, meta.size));
                } else {
                    next.insert(path, first);
                }
            }
            *since = next;
        }
        if due.is_empty() {
            return Ok(0);
        }
        // Sightings are only as good as the election they were made under.
        if !self.catalog.still_controller(controller).await? {
            self.lock_unreferenced().clear();
            return Ok(0);
        }
        let mut deleted = 0;
        for (path, len) in due {
            self.cache.remove_object(&path, len);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    warn!(object = %path, error = %e, "could not delete an unreferenced object; retrying next pass")
                }
            }
        }
        self.metrics.gc_deleted(deleted as u64);
        Ok(deleted)
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

#[cfg(test)]
mod tests {
    use super::HistoryCompaction;

    #[test]
    fn history_is_compacted_to_the_newest_revision_at_least_keep_old() {
        let history = HistoryCompaction::keeping(1_000);
        assert_eq!(history.due(0, 10), None, "nothing is old enough yet");
        assert_eq!(history.due(400, 20), None);
        assert_eq!(history.due(900, 30), None);
        // At 1 000 the revision seen at 0 is a whole `keep` old; at 1 450, the one seen at 400.
        assert_eq!(history.due(1_000, 40), Some(10));
        assert_eq!(history.due(1_450, 50), Some(20));
        // Several marks aged at once: the newest of them.
        assert_eq!(history.due(3_000, 60), Some(50));
        // No new revision: nothing new is noted, and nothing is due until one ages.
        assert_eq!(history.due(3_500, 60), None);
        assert_eq!(history.due(4_000, 60), Some(60));
        assert_eq!(history.due(9_000, 60), None);
    }

    #[test]
    fn a_new_term_counts_from_scratch_and_zero_never_compacts() {
        let history = HistoryCompaction::keeping(1_000);
        history.due(0, 10);
        history.clear();
        assert_eq!(
            history.due(1_500, 20),
            None,
            "the mark from the old term is gone"
        );
        assert_eq!(history.due(2_500, 30), Some(20));
        let never = HistoryCompaction::keeping(0);
        assert_eq!(never.due(0, 10), None);
        assert_eq!(never.due(1_000_000, 20), None);
    }
}
