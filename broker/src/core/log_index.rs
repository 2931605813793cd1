//! The committed view of every partition: which byte ranges of which segment objects hold which
//! offsets, the high watermark and the log start offset.
//!
//! Built at start from the segment commits in metadata, then advanced by the cluster watch
//! (commits of every broker) and by the flusher *after* each of its commits succeeds — so readers
//! only ever see committed records (invariant 1). Entries may arrive out of order or twice (a
//! start-up load racing the watch): they are kept sorted, a duplicate is ignored, and the high
//! watermark is the end of the contiguous run from the log start, so a reader never sees a gap.
//! Each
//! partition carries a `watch` channel of its high watermark that long-polling fetches and
//! subscriptions wait on. The entries with their min/max timestamps double as the time index.
//!
//! Compaction swaps entries: a commit of a compacted object ([`LogIndex::apply_part`]) replaces
//! the entries whose offsets it covers (exactly, entry boundaries line up) in one step under the
//! partition's lock, so a reader sees the old entries or the new one, never both or neither.
//! Offsets never change; an entry arriving later for offsets a compacted entry covers is
//! ignored.
//!
//! Older entries roll out of memory and metadata into *index pages* (objects in the store,
//! listed by the partition's index root `index/<topic>/<partition>`): the partition keeps the
//! pages' offset ranges, sizes and newest timestamps, and only the tail's entries. A lookup
//! below the tail answers [`Located::Paged`] and the reader loads the page
//! ([`crate::core::index_pages::IndexPages`]); a root reference may be an *archive* of older
//! references, which the reader looks through to the page. Here both are ranges alike. Entries arriving for offsets the pages cover are
//! ignored, like those a compacted entry covers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use object_store::path::Path;
use silt_metadata::codec::{IndexPage, IndexRoot, PageRef, SegmentCommit, SegmentEntry};
use silt_metadata::keys::Keys;
use tokio::sync::watch;

/// A committed segment object.
#[derive(Debug)]
pub struct ObjectRef {
    /// The object id, also the suffix of its metadata key.
    pub id: String,
    pub path: Path,
    pub len: u64,
    /// A flush's segment (many partitions) or a compacted object (one partition).
    pub kind: ObjectKind,
    /// When the object was written (the writer's clock).
    pub created_at_ms: i64,
    /// Written by key compaction: its records are the latest of their keys as of that
    /// compaction (the clean section of a compacted topic's log).
    pub cleaned: bool,
    /// The earliest delete horizon of the tombstones a key-compacted object keeps: from then on
    /// key compaction is due again, to drop them.
    pub tombstone_horizon: Option<i64>,
}

/// What wrote an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A flush: one window's batches of many partitions (`segments/`).
    Segment,
    /// Compaction: one partition's entries copied into one object (`parts/`).
    Part,
}

impl ObjectRef {
    fn new(id: &str, commit: &SegmentCommit, kind: ObjectKind) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_string(),
            path: Path::from(commit.object.as_str()),
            len: commit.object_len,
            kind,
            created_at_ms: commit.created_at_ms,
            cleaned: kind == ObjectKind::Part && Keys::is_cleaned_part(id),
            tombstone_horizon: match kind {
                ObjectKind::Part => Keys::cleaned_part_horizon(id),
                ObjectKind::Segment => None,
            },
        })
    }
}

/// A run of a partition's entries that compaction may copy into one object.
#[derive(Debug, Clone)]
pub struct CompactionRun {
    /// The entries, contiguous in offsets, oldest first.
    pub entries: Vec<IndexEntry>,
    /// Their bytes.
    pub bytes: u64,
}

/// When compaction copies a partition's entries.
#[derive(Debug, Clone, Copy)]
pub struct CompactionPolicy {
    /// Only entries of objects written before this instant (ms) are copied: the newest data
    /// stays in its flush segment a while, where readers of the tail find it in the cache.
    pub written_before_ms: i64,
    /// A run is copied once it holds this many bytes ...
    pub target_bytes: u64,
    /// ... or once its oldest object was written before this instant (ms), so a quiet
    /// partition is compacted too.
    pub overdue_before_ms: i64,
    /// Now (ms): key compaction is due when a tombstone's delete horizon passed.
    pub now_ms: i64,
}

/// A compacted topic's partition log that key compaction should rewrite: every committed
/// entry from the log start on, contiguous, up to the first flush segment still too young.
#[derive(Debug, Clone)]
pub struct CleaningRun {
    /// The entries, oldest first.
    pub entries: Vec<IndexEntry>,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes of entries not yet key-compacted (the dirty section).
    pub dirty_bytes: u64,
}

/// One partition's byte range in one segment object: the committed entry, with the object it
/// lives in. It reads as its entry (`entry.first_offset`, `entry.position`, ...).
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub entry: SegmentEntry,
    pub object: Arc<ObjectRef>,
}

impl std::ops::Deref for IndexEntry {
    type Target = SegmentEntry;

    fn deref(&self) -> &SegmentEntry {
        &self.entry
    }
}

/// Offsets of a partition at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub log_start: i64,
    pub high_watermark: i64,
}

/// Where the entries holding an offset are.
#[derive(Debug, Clone)]
pub enum Located {
    /// In memory: these entries (empty when nothing is committed there yet).
    Entries(Vec<IndexEntry>),
    /// In an index page, to be loaded ([`crate::core::index_pages::IndexPages`]).
    Paged(PageRef),
}

/// What the owner should write to a partition's index root: its pages, trimmed to the log
/// start, and the oldest compacted commits to roll into a new page (none: only a trim).
#[derive(Debug, Clone)]
pub struct RollUp {
    /// The root's `mod_revision` as this index applied it (0: no root yet).
    pub root_revision: i64,
    /// The pages that stay, oldest first.
    pub pages: Vec<PageRef>,
    /// How many references the stored root lists (more than `pages` once retention dropped
    /// some).
    pub stored_pages: usize,
    /// Compacted objects' commits to roll up, oldest first, each with only its live entries.
    pub parts: Vec<(String, SegmentCommit)>,
}

#[derive(Debug, Default)]
struct PartitionState {
    entries: VecDeque<IndexEntry>,
    log_start: i64,
    high_watermark: i64,
    /// Index pages below `entries`, contiguous, oldest first (those wholly below the log start
    /// dropped).
    pages: Vec<PageRef>,
    /// The index root's `mod_revision` the pages come from (0: none).
    root_revision: i64,
    /// How many pages that root listed (more than `pages` once retention dropped some).
    root_pages: usize,
    /// Why the partition's index root, or a compacted commit of it, could not be read (the
    /// metadata damaged, or written in a format this broker does not know): the index may be
    /// missing committed offsets, so the partition is neither written nor read until it is.
    /// (The unreadable root's revision, why.) The root revision applied stays the last
    /// readable one, so a roll-up computed here is refused by the root's compare.
    unreadable_root: Option<(i64, String)>,
    unreadable_part: Option<String>,
}

/// One partition's committed log.
#[derive(Debug)]
pub struct PartitionLog {
    /// (topic id, partition).
    id: (u64, u32),
    state: Mutex<PartitionState>,
    hwm_tx: watch::Sender<i64>,
}

impl PartitionLog {
    fn new(id: (u64, u32)) -> Self {
        Self {
            id,
            state: Mutex::new(PartitionState::default()),
            hwm_tx: watch::channel(0).0,
        }
    }

    /// (topic id, partition).
    pub fn id(&self) -> (u64, u32) {
        self.id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PartitionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn offsets(&self) -> Offsets {
        let s = self.lock();
        Offsets {
            log_start: s.log_start,
            high_watermark: s.high_watermark,
        }
    }

    /// A receiver that changes whenever the high watermark moves.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.hwm_tx.subscribe()
    }

    /// The in-memory entries holding offsets from `offset` on, until about `max_bytes` (at
    /// least one entry). Offsets rolled into index pages are not among them: readers use
    /// [`Self::locate`].
    #[cfg(test)]
    pub(crate) fn entries_from(&self, offset: i64, max_bytes: usize) -> (Offsets, Vec<IndexEntry>) {
        let s = self.lock();
        (s.offsets(), s.entries_from(offset, max_bytes))
    }

    /// Where the entries holding `offset` and after are: in memory (until about `max_bytes`,
    /// at least one entry), or in the index page holding `offset`.
    pub fn locate(&self, offset: i64, max_bytes: usize) -> (Offsets, Located) {
        let s = self.lock();
        if let Some(page) = s.page_at(offset) {
            return (s.offsets(), Located::Paged(page.clone()));
        }
        (
            s.offsets(),
            Located::Entries(s.entries_from(offset, max_bytes)),
        )
    }

    /// The first entry whose records may have a timestamp at or after `ts` (the time index),
    /// or the index page holding it.
    pub fn entry_for_timestamp(&self, ts: i64) -> (Offsets, Option<Located>) {
        let s = self.lock();
        let page = s
            .pages
            .iter()
            .take_while(|p| p.first_offset < s.high_watermark)
            .find(|p| p.max_timestamp >= ts && p.last_offset >= s.log_start);
        if let Some(page) = page {
            return (s.offsets(), Some(Located::Paged(page.clone())));
        }
        let found = s
            .entries
            .iter()
            .take_while(|e| e.first_offset < s.high_watermark)
            .find(|e| e.max_timestamp >= ts && e.last_offset >= s.log_start);
        (
            s.offsets(),
            found.map(|e| Located::Entries(vec![e.clone()])),
        )
    }

    /// Where the log may start for retention by time: past the entries (and index pages, which
    /// go whole) whose newest record is older than `cutoff_ts`.
    pub fn expired_end(&self, cutoff_ts: i64) -> Option<i64> {
        let s = self.lock();
        let mut end = None;
        for (_, last, _, max_timestamp) in s.spans() {
            if max_timestamp >= cutoff_ts {
                break;
            }
            end = Some(last + 1);
        }
        end.filter(|end| *end > s.log_start)
    }

    /// Where the log must start for the partition to hold at most `max_bytes` of batches:
    /// the first offset of the oldest entry (or index page) that fits, counting from the
    /// newest. The newest entry is always kept, so a topic is never emptied by its size limit
    /// alone. `None` when nothing needs to go.
    pub fn oversize_end(&self, max_bytes: i64) -> Option<i64> {
        let s = self.lock();
        let live: Vec<(i64, i64, u64, i64)> = s.spans().collect();
        let mut kept = 0i64;
        let mut start = None;
        for (i, (_, _, bytes, _)) in live.iter().enumerate().rev() {
            kept = kept.saturating_add(i64::try_from(*bytes).unwrap_or(i64::MAX));
            if kept > max_bytes && i + 1 < live.len() {
                start = Some(live[i + 1].0);
                break;
            }
        }
        start.filter(|start| *start > s.log_start)
    }

    /// Why this partition cannot be served, if its index could not be read whole.
    pub fn unreadable(&self) -> Option<String> {
        let s = self.lock();
        s.unreadable_root
            .as_ref()
            .map(|(_, why)| why.clone())
            .or_else(|| s.unreadable_part.clone())
    }

    /// Marks the partition unreadable: its index root at `revision` could not be decoded. A
    /// readable root of a later revision clears it.
    fn set_unreadable_root(&self, revision: i64, reason: String) {
        let mut s = self.lock();
        if revision > s.root_revision {
            s.unreadable_root = Some((revision, reason));
        }
    }

    /// Marks the partition unreadable: a compacted commit of it could not be decoded.
    fn set_unreadable_part(&self, reason: String) {
        self.lock().unreadable_part = Some(reason);
    }

    /// Applies the partition's index root, read at `revision`: its pages replace the entries
    /// they cover. An older root than the one applied is ignored.
    pub fn set_root(&self, revision: i64, root: &IndexRoot) {
        let mut s = self.lock();
        if revision <= s.root_revision {
            return;
        }
        s.root_revision = revision;
        if s.unreadable_root
            .as_ref()
            .is_some_and(|(r, _)| *r < revision)
        {
            s.unreadable_root = None;
        }
        s.root_pages = root.pages.len();
        let log_start = s.log_start;
        s.pages = root
            .pages
            .iter()
            .filter(|p| p.last_offset >= log_start)
            .cloned()
            .collect();
        let paged_end = s.paged_end();
        while s.entries.front().is_some_and(|e| e.last_offset < paged_end) {
            s.entries.pop_front();
        }
        if s.advance() {
            let hwm = s.high_watermark;
            drop(s);
            self.hwm_tx.send_replace(hwm);
        }
    }

    /// The index pages and the root revision they come from.
    pub fn pages(&self) -> (i64, Vec<PageRef>) {
        let s = self.lock();
        (s.root_revision, s.pages.clone())
    }

    /// What the owner should write to the index root, if anything: the oldest `page_parts`
    /// compacted objects to roll into a page once `2 × page_parts` *settled* ones lead the
    /// in-memory entries — so metadata keeps between `page_parts` and `2 × page_parts` of
    /// them — and the pages retention dropped. Settled: compaction never copies it again (at
    /// least `min_part_bytes`, or followed by such an object). The owner rolls up only topics
    /// that are not key-compacted (key compaction rewrites the whole log).
    pub fn roll_up(&self, page_parts: usize, min_part_bytes: u64) -> Option<RollUp> {
        let s = self.lock();
        let page_parts = page_parts.max(1);
        let paged_end = s.paged_end();
        // Leading runs of entries of one compacted object each, contiguous in offsets and with
        // the pages, with whether the object is large.
        let mut groups: Vec<(usize, usize, bool)> = Vec::new();
        let mut next = (!s.pages.is_empty()).then_some(paged_end);
        let mut i = 0;
        while i < s.entries.len() && groups.len() <= 2 * page_parts {
            let e = &s.entries[i];
            let o = &e.object;
            let compacted = o.kind == ObjectKind::Part
                && e.first_offset < s.high_watermark
                && next.is_none_or(|n| n == e.first_offset);
            if !compacted {
                break;
            }
            let mut j = i;
            while j < s.entries.len() && s.entries[j].object.id == o.id {
                if next.is_some_and(|n| n != s.entries[j].first_offset) {
                    break;
                }
                next = Some(s.entries[j].last_offset + 1);
                j += 1;
            }
            groups.push((i, j, o.len >= min_part_bytes));
            i = j;
        }
        // Compaction merges a small object only with the small objects and flush segments
        // next to it: one followed by a large object can only merge with what comes before
        // it, which rolls first, so it is as final as a large one.
        let settled = (0..groups.len())
            .take_while(|&g| groups[g].2 || groups.get(g + 1).is_some_and(|next| next.2))
            .count();
        let mut rolled: Vec<(usize, usize)> = if settled >= 2 * page_parts {
            groups[..page_parts]
                .iter()
                .map(|&(from, to, _)| (from, to))
                .collect()
        } else {
            Vec::new()
        };
        // An object with entries beyond the rolled ones (a partial copy) stays whole in metadata.
        while let Some(&(from, to)) = rolled.last() {
            let object = &s.entries[from].object;
            if s.entries.iter().skip(to).any(|e| e.object.id == object.id) {
                rolled.pop();
            } else {
                break;
            }
        }
        let trimmed = s.pages.len() < s.root_pages;
        if rolled.is_empty() && !trimmed {
            return None;
        }
        let parts = rolled
            .iter()
            .map(|&(from, to)| {
                let o = &s.entries[from].object;
                let commit = SegmentCommit {
                    object: o.path.to_string(),
                    object_len: o.len,
                    created_at_ms: o.created_at_ms,
                    entries: s.entries.range(from..to).map(|e| e.entry).collect(),
                };
                (o.id.clone(), commit)
            })
            .collect();
        Some(RollUp {
            root_revision: s.root_revision,
            pages: s.pages.clone(),
            stored_pages: s.root_pages,
            parts,
        })
    }

    fn append(&self, entry: IndexEntry) {
        let mut s = self.lock();
        if entry.last_offset < s.high_watermark || entry.last_offset < s.paged_end() {
            // Already known (a commit seen twice); never rewind.
            return;
        }
        let pos = s
            .entries
            .partition_point(|e| e.first_offset < entry.first_offset);
        let covered = s
            .entries
            .get(pos)
            .is_some_and(|e| e.first_offset == entry.first_offset)
            || pos > 0 && s.entries[pos - 1].last_offset >= entry.first_offset;
        if covered {
            // Known already, or copied into a compacted entry.
            return;
        }
        s.entries.insert(pos, entry);
        if s.advance() {
            let hwm = s.high_watermark;
            drop(s);
            self.hwm_tx.send_replace(hwm);
        }
    }

    /// Swaps in a compacted entry: it replaces the entries whose offsets it covers. Entry
    /// boundaries line up (compaction copies whole entries), so a misaligned one — a bug or a
    /// foreign writer — is refused and the index stays as it was; false then.
    fn replace(&self, entry: IndexEntry) -> bool {
        let mut s = self.lock();
        if entry.last_offset < s.log_start || entry.last_offset < s.paged_end() {
            return true;
        }
        let from = s
            .entries
            .partition_point(|e| e.first_offset < entry.first_offset);
        let to = s
            .entries
            .partition_point(|e| e.first_offset <= entry.last_offset);
        let straddles = from > 0 && s.entries[from - 1].last_offset >= entry.first_offset
            || to > from && s.entries[to - 1].last_offset > entry.last_offset;
        if straddles {
            return false;
        }
        if to == from + 1 && Arc::ptr_eq(&s.entries[from].object, &entry.object) {
            return true;
        }
        s.entries.drain(from..to);
        s.entries.insert(from, entry);
        if s.advance() {
            let hwm = s.high_watermark;
            drop(s);
            self.hwm_tx.send_replace(hwm);
        }
        true
    }

    /// The oldest run of entries compaction should copy into one object, if any is due under
    /// `policy`: committed entries from the log start on, of flush segments or of compacted
    /// objects under half the target (which merge into a bigger one), contiguous in offsets,
    /// up to `policy.target_bytes`.
    pub fn compaction_run(&self, policy: &CompactionPolicy) -> Option<CompactionRun> {
        let s = self.lock();
        let mut run: Vec<IndexEntry> = Vec::new();
        let mut bytes = 0u64;
        // `full`: the next entry would not fit, so the run is as big as it gets.
        let flush = |run: &Vec<IndexEntry>, bytes: u64, full: bool| {
            let oldest = run.iter().map(|e| e.object.created_at_ms).min()?;
            let due = full || bytes >= policy.target_bytes || oldest < policy.overdue_before_ms;
            if !due {
                return None;
            }
            // Size tiers: a compacted object is copied again only into one at least twice its
            // size, so each byte is rewritten about log2(target / first object) times, not once
            // per pass for a slow partition.
            let mut from = 0;
            let mut rest = bytes;
            while let Some(first) = run.get(from).filter(|e| e.object.kind == ObjectKind::Part) {
                let object = first.object.clone();
                let own: u64 = run[from..]
                    .iter()
                    .take_while(|e| Arc::ptr_eq(&e.object, &object))
                    .map(|e| u64::from(e.length))
                    .sum();
                if own <= rest - own {
                    break;
                }
                from += run[from..]
                    .iter()
                    .take_while(|e| Arc::ptr_eq(&e.object, &object))
                    .count();
                rest -= own;
            }
            let run = &run[from..];
            let copies = run.len() > 1 || run.first()?.object.kind == ObjectKind::Segment;
            copies.then(|| CompactionRun {
                entries: run.to_vec(),
                bytes: rest,
            })
        };
        for e in s.entries.iter() {
            if e.first_offset >= s.high_watermark {
                break;
            }
            if e.last_offset < s.log_start {
                continue;
            }
            let small_part =
                e.object.kind == ObjectKind::Part && e.object.len < policy.target_bytes / 2;
            let eligible = (e.object.kind == ObjectKind::Segment || small_part)
                && e.object.created_at_ms < policy.written_before_ms;
            let continues = run
                .last()
                .is_none_or(|last| last.last_offset + 1 == e.first_offset);
            let fits = bytes + u64::from(e.length) <= policy.target_bytes || run.is_empty();
            if eligible && continues && fits {
                bytes += u64::from(e.length);
                run.push(e.clone());
                continue;
            }
            if !run.is_empty() {
                if let Some(due) = flush(&run, bytes, eligible && continues) {
                    return Some(due);
                }
                run.clear();
                bytes = 0;
            }
            if eligible {
                bytes = u64::from(e.length);
                run.push(e.clone());
            }
        }
        if run.is_empty() {
            return None;
        }
        flush(&run, bytes, false)
    }

    /// The run key compaction should rewrite, if one is due under `policy`: the log from its
    /// start up to the first flush segment written after `policy.written_before_ms`. Due when
    /// the dirty part (entries not written by key compaction) holds at least half its bytes
    /// (Kafka's `min.cleanable.dirty.ratio`), or its oldest object was written before
    /// `policy.overdue_before_ms` (Kafka's `max.compaction.lag.ms`), so the cost of rewriting
    /// the clean part is at most about the dirty bytes themselves.
    pub fn cleaning_run(&self, policy: &CompactionPolicy) -> Option<CleaningRun> {
        let s = self.lock();
        if !s.pages.is_empty() {
            // Key compaction reads the whole log; the owner unrolls the pages first.
            return None;
        }
        let mut run = CleaningRun {
            entries: Vec::new(),
            bytes: 0,
            dirty_bytes: 0,
        };
        let mut oldest_dirty = i64::MAX;
        let mut horizon = i64::MAX;
        for e in s.entries.iter() {
            if e.first_offset >= s.high_watermark {
                break;
            }
            if e.last_offset < s.log_start {
                continue;
            }
            let continues = run
                .entries
                .last()
                .is_none_or(|last| last.last_offset + 1 == e.first_offset);
            let settled = e.object.kind == ObjectKind::Part
                || e.object.created_at_ms < policy.written_before_ms;
            if !continues || !settled {
                break;
            }
            run.bytes += u64::from(e.length);
            horizon = horizon.min(e.object.tombstone_horizon.unwrap_or(i64::MAX));
            if !e.object.cleaned {
                run.dirty_bytes += u64::from(e.length);
                oldest_dirty = oldest_dirty.min(e.object.created_at_ms);
            }
            run.entries.push(e.clone());
        }
        let due = (run.dirty_bytes > 0
            && (run.dirty_bytes * 2 >= run.bytes || oldest_dirty < policy.overdue_before_ms))
            || horizon <= policy.now_ms;
        due.then_some(run)
    }

    /// True when `entry` of object `object_id` was copied by compaction: the index holds, at
    /// its offsets, an entry of another, compacted object covering all of them. Positive
    /// evidence only: an entry the index does not know (a commit it has not applied yet) is
    /// never called superseded.
    pub fn superseded(&self, entry: &SegmentEntry, object_id: &str) -> bool {
        let s = self.lock();
        // Pages hold compacted entries only, and only entries every older one was copied into.
        if s.pages.first().is_some_and(|p| {
            p.first_offset <= entry.first_offset && entry.last_offset < s.paged_end()
        }) {
            return true;
        }
        let pos = s
            .entries
            .partition_point(|e| e.first_offset <= entry.first_offset);
        pos > 0 && {
            let e = &s.entries[pos - 1];
            e.object.kind == ObjectKind::Part
                && e.object.id != object_id
                && e.first_offset <= entry.first_offset
                && e.last_offset >= entry.last_offset
        }
    }

    /// Moves the log start forward, dropping entries wholly below it. Offsets below the log
    /// start are gone, so the high watermark is at least the log start.
    pub fn set_log_start(&self, log_start: i64) {
        let mut s = self.lock();
        if log_start <= s.log_start {
            return;
        }
        s.log_start = log_start;
        while s.entries.front().is_some_and(|e| e.last_offset < log_start) {
            s.entries.pop_front();
        }
        s.pages.retain(|p| p.last_offset >= log_start);
        let mut moved = false;
        if s.high_watermark < log_start {
            s.high_watermark = log_start;
            moved = true;
        }
        if s.advance() || moved {
            let hwm = s.high_watermark;
            drop(s);
            self.hwm_tx.send_replace(hwm);
        }
    }
}

impl PartitionState {
    fn offsets(&self) -> Offsets {
        Offsets {
            log_start: self.log_start,
            high_watermark: self.high_watermark,
        }
    }

    /// One past the last offset the index pages cover (`i64::MIN` without pages).
    fn paged_end(&self) -> i64 {
        self.pages.last().map_or(i64::MIN, |p| p.last_offset + 1)
    }

    /// The index page holding `offset`, if it is a readable offset below the in-memory tail.
    fn page_at(&self, offset: i64) -> Option<&PageRef> {
        if offset < self.log_start || offset >= self.high_watermark || offset >= self.paged_end() {
            return None;
        }
        let i = self.pages.partition_point(|p| p.last_offset < offset);
        self.pages.get(i).filter(|p| p.first_offset <= offset)
    }

    fn entries_from(&self, offset: i64, max_bytes: usize) -> Vec<IndexEntry> {
        let start = self.entries.partition_point(|e| e.last_offset < offset);
        // Committed offsets are covered by pages and entries without a gap, except for the
        // instant between an unrolled root and the commits it puts back: never answer an
        // offset there with a later entry (a reader would skip to it); answer nothing yet.
        if offset >= self.log_start.max(self.paged_end())
            && self
                .entries
                .get(start)
                .is_some_and(|e| e.first_offset > offset)
        {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in self.entries.iter().skip(start) {
            if e.first_offset >= self.high_watermark {
                break;
            }
            if !out.is_empty() && bytes + e.length as usize > max_bytes {
                break;
            }
            bytes += e.length as usize;
            out.push(e.clone());
        }
        out
    }

    /// The readable log's pages, then entries, as (first offset, last offset, bytes, newest
    /// timestamp), oldest first: what retention decides on.
    fn spans(&self) -> impl Iterator<Item = (i64, i64, u64, i64)> + '_ {
        let pages = self
            .pages
            .iter()
            .map(|p| (p.first_offset, p.last_offset, p.bytes, p.max_timestamp));
        let entries = self.entries.iter().map(|e| {
            let bytes = u64::from(e.length);
            (e.first_offset, e.last_offset, bytes, e.max_timestamp)
        });
        let mut next = Some(self.log_start);
        pages
            .chain(entries)
            .filter(|(_, last, _, _)| *last >= self.log_start)
            .take_while(|(first, _, _, _)| *first < self.high_watermark)
            // Contiguous only: retention never decides across a transient gap (an unroll).
            .take_while(move |(first, last, _, _)| {
                let continues = next.is_some_and(|n| *first <= n);
                next = Some(last + 1);
                continues
            })
    }

    /// Extends the high watermark over the pages and entries that continue it; true if it
    /// moved.
    fn advance(&mut self) -> bool {
        let before = self.high_watermark;
        if self
            .pages
            .first()
            .is_some_and(|p| p.first_offset <= self.high_watermark)
        {
            self.high_watermark = self.high_watermark.max(self.paged_end());
        }
        let start = self
            .entries
            .partition_point(|e| e.last_offset < self.high_watermark);
        for e in self.entries.iter().skip(start) {
            if e.first_offset > self.high_watermark {
                break;
            }
            self.high_watermark = self.high_watermark.max(e.last_offset + 1);
        }
        self.high_watermark != before
    }
}

/// The committed logs of all partitions on this broker.
#[derive(Debug, Default)]
pub struct LogIndex {
    partitions: RwLock<HashMap<(u64, u32), Arc<PartitionLog>>>,
    /// Set once any partition was found unreadable, so the flusher looks for them only then.
    any_unreadable: std::sync::atomic::AtomicBool,
}

impl LogIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// The log of a partition, created empty if unknown.
    pub fn partition(&self, topic_id: u64, partition: u32) -> Arc<PartitionLog> {
        if let Some(p) = self
            .partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic_id, partition))
        {
            return p.clone();
        }
        let mut map = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        map.entry((topic_id, partition))
            .or_insert_with(|| Arc::new(PartitionLog::new((topic_id, partition))))
            .clone()
    }

    /// Applies a committed segment: every entry becomes readable and high watermarks move.
    pub fn apply(&self, object_id: &str, commit: &SegmentCommit) {
        let object = ObjectRef::new(object_id, commit, ObjectKind::Segment);
        for e in &commit.entries {
            self.partition(e.topic_id, e.partition)
                .append(entry(e, &object));
        }
    }

    /// Applies a compacted object's commit: its entries replace those they cover.
    pub fn apply_part(&self, id: &str, commit: &SegmentCommit) {
        let object = ObjectRef::new(id, commit, ObjectKind::Part);
        for e in &commit.entries {
            if !self
                .partition(e.topic_id, e.partition)
                .replace(entry(e, &object))
            {
                tracing::warn!(
                    object = %object.path,
                    first_offset = e.first_offset,
                    last_offset = e.last_offset,
                    "a compacted entry does not line up with the entries it replaces; ignoring it"
                );
            }
        }
    }

    /// Applies many commits loaded at start, in offset order per partition, then the
    /// compacted objects' over them.
    pub fn load(
        &self,
        mut commits: Vec<(String, SegmentCommit)>,
        parts: Vec<(String, SegmentCommit)>,
    ) {
        let mut entries: Vec<(SegmentEntry, Arc<ObjectRef>)> = Vec::new();
        for (id, commit) in commits.drain(..) {
            let object = ObjectRef::new(&id, &commit, ObjectKind::Segment);
            entries.extend(commit.entries.into_iter().map(|e| (e, object.clone())));
        }
        entries.sort_by_key(|(e, _)| (e.topic_id, e.partition, e.first_offset));
        for (e, object) in entries {
            self.partition(e.topic_id, e.partition)
                .append(entry(&e, &object));
        }
        for (id, commit) in parts {
            self.apply_part(&id, &commit);
        }
    }

    /// Marks a partition unreadable: its index root at `revision` could not be decoded.
    pub fn set_unreadable_root(&self, topic_id: u64, partition: u32, revision: i64, why: String) {
        self.any_unreadable
            .store(true, std::sync::atomic::Ordering::Release);
        self.partition(topic_id, partition)
            .set_unreadable_root(revision, why);
    }

    /// Marks a partition unreadable: a compacted commit of it could not be decoded.
    pub fn set_unreadable_part(&self, topic_id: u64, partition: u32, why: String) {
        self.any_unreadable
            .store(true, std::sync::atomic::Ordering::Release);
        self.partition(topic_id, partition).set_unreadable_part(why);
    }

    /// Whether any partition was ever found unreadable here.
    pub fn any_unreadable(&self) -> bool {
        self.any_unreadable
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Applies a partition's index root read at `revision`.
    pub fn set_root(&self, topic_id: u64, partition: u32, revision: i64, root: &IndexRoot) {
        self.partition(topic_id, partition).set_root(revision, root);
    }

    /// Drops every partition of a topic.
    pub fn remove_topic(&self, topic_id: u64) {
        self.partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(t, _), _| *t != topic_id);
    }

    /// The log start offsets of a topic's partitions, as known here.
    pub fn log_starts(&self, topic_id: u64, partitions: u32) -> Vec<i64> {
        (0..partitions)
            .map(|p| self.partition(topic_id, p).offsets().log_start)
            .collect()
    }
}

/// The entries an index page holds, oldest first, as the index holds compacted entries.
pub fn page_entries(page: &IndexPage) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    for (id, commit) in &page.parts {
        let object = ObjectRef::new(id, commit, ObjectKind::Part);
        out.extend(commit.entries.iter().map(|e| entry(e, &object)));
    }
    out.sort_by_key(|e| e.first_offset);
    out
}

fn entry(e: &SegmentEntry, object: &Arc<ObjectRef>) -> IndexEntry {
    IndexEntry {
        entry: *e,
        object: object.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(object: &str, entries: &[(u32, i64, i64, i64)]) -> SegmentCommit {
        SegmentCommit {
            object: object.into(),
            object_len: 1000,
            created_at_ms: 0,
            entries: entries
                .iter()
                .map(|&(p, first, last, ts)| SegmentEntry {
                    topic_id: 1,
                    partition: p,
                    batch_count: 1,
                    first_offset: first,
                    last_offset: last,
                    min_timestamp: ts,
                    max_timestamp: ts + 10,
                    position: 16,
                    length: 100,
                    crc32c: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn size_retention_keeps_the_newest_entries_that_fit() {
        let index = LogIndex::new();
        // Four entries of 100 bytes each: offsets 0-4, 5-9, 10-14, 15-19.
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let first = i as i64 * 5;
            index.apply(name, &commit(name, &[(0, first, first + 4, 100)]));
        }
        let log = index.partition(1, 0);
        assert_eq!(log.oversize_end(400), None, "all fit");
        assert_eq!(log.oversize_end(399), Some(5), "the oldest goes");
        assert_eq!(log.oversize_end(250), Some(10));
        assert_eq!(log.oversize_end(100), Some(15));
        assert_eq!(
            log.oversize_end(1),
            Some(15),
            "the newest entry always stays"
        );
        log.set_log_start(10);
        assert_eq!(log.oversize_end(250), None, "already trimmed");
        assert_eq!(log.oversize_end(100), Some(15));
    }

    #[test]
    fn apply_moves_high_watermark_and_notifies() {
        let index = LogIndex::new();
        let log = index.partition(1, 0);
        let mut rx = log.subscribe();
        index.apply("a", &commit("s/a", &[(0, 0, 4, 100), (1, 0, 1, 100)]));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 5);
        assert_eq!(
            log.offsets(),
            Offsets {
                log_start: 0,
                high_watermark: 5
            }
        );
        assert_eq!(index.partition(1, 1).offsets().high_watermark, 2);
    }

    #[test]
    fn entries_from_finds_the_entry_holding_an_offset_and_respects_max_bytes() {
        let index = LogIndex::new();
        index.apply("a", &commit("s/a", &[(0, 0, 4, 100)]));
        index.apply("b", &commit("s/b", &[(0, 5, 9, 200)]));
        index.apply("c", &commit("s/c", &[(0, 10, 14, 300)]));
        let log = index.partition(1, 0);
        let (_, e) = log.entries_from(7, 150);
        assert_eq!(
            e.iter().map(|e| e.first_offset).collect::<Vec<_>>(),
            vec![5]
        );
        let (_, e) = log.entries_from(0, 1 << 20);
        assert_eq!(e.len(), 3);
        let (o, e) = log.entries_from(15, 1 << 20);
        assert!(e.is_empty());
        assert_eq!(o.high_watermark, 15);
    }

    #[test]
    fn load_sorts_and_ignores_duplicates() {
        let index = LogIndex::new();
        index.load(
            vec![
                ("b".into(), commit("s/b", &[(0, 5, 9, 200)])),
                ("a".into(), commit("s/a", &[(0, 0, 4, 100)])),
            ],
            vec![],
        );
        index.apply("b", &commit("s/b", &[(0, 5, 9, 200)]));
        let (_, e) = index.partition(1, 0).entries_from(0, 1 << 20);
        assert_eq!(
            e.iter().map(|e| e.first_offset).collect::<Vec<_>>(),
            vec![0, 5]
        );
    }

    fn offsets_of(log: &PartitionLog) -> Vec<(i64, i64, String)> {
        log.entries_from(0, usize::MAX)
            .1
            .iter()
            .map(|e| (e.first_offset, e.last_offset, e.object.id.clone()))
            .collect()
    }

    fn part(first: i64, last: i64, len: u32) -> SegmentCommit {
        let mut c = commit(&format!("parts/{first}"), &[(0, first, last, 100)]);
        c.object_len = u64::from(len) + 48;
        c.entries[0].length = len;
        c
    }

    #[test]
    fn a_compacted_entry_replaces_exactly_what_it_covers_and_later_copies_are_ignored() {
        let index = LogIndex::new();
        for (name, first) in [("a", 0), ("b", 5), ("c", 10)] {
            index.apply(name, &commit(name, &[(0, first, first + 4, 100)]));
        }
        let log = index.partition(1, 0);
        let mut rx = log.subscribe();
        rx.borrow_and_update();
        index.apply_part("p0-9", &part(0, 9, 200));
        assert_eq!(
            offsets_of(&log),
            vec![(0, 9, "p0-9".into()), (10, 14, "c".into())]
        );
        assert!(!rx.has_changed().unwrap(), "offsets did not move");
        // The flush segments' entries, seen again (a reload), change nothing.
        index.apply("a", &commit("a", &[(0, 0, 4, 100)]));
        index.apply("b", &commit("b", &[(0, 5, 9, 100)]));
        assert_eq!(offsets_of(&log).len(), 2);
        // Applied twice: the same.
        index.apply_part("p0-9", &part(0, 9, 200));
        assert_eq!(offsets_of(&log).len(), 2);
        // Misaligned: refused, nothing changes.
        index.apply_part("bad", &part(3, 12, 10));
        assert_eq!(offsets_of(&log).len(), 2);
        // A merge of the compacted entry and the next one.
        index.apply_part("p0-14", &part(0, 14, 300));
        assert_eq!(offsets_of(&log), vec![(0, 14, "p0-14".into())]);
        assert_eq!(log.offsets().high_watermark, 15);

        let e = |first, last| SegmentEntry {
            first_offset: first,
            last_offset: last,
            ..commit("x", &[(0, first, last, 0)]).entries[0]
        };
        assert!(log.superseded(&e(5, 9), "b"));
        assert!(log.superseded(&e(0, 9), "p0-9"));
        assert!(!log.superseded(&e(0, 14), "p0-14"), "its own entry");
        assert!(!log.superseded(&e(15, 19), "d"), "unknown offsets");
    }

    #[test]
    fn compacted_entries_loaded_at_start_win_over_the_segments_they_copied() {
        let index = LogIndex::new();
        index.load(
            vec![
                ("a".into(), commit("a", &[(0, 0, 4, 100)])),
                ("b".into(), commit("b", &[(0, 5, 9, 100)])),
                ("c".into(), commit("c", &[(0, 10, 14, 100)])),
            ],
            vec![("p0-9".into(), part(0, 9, 200))],
        );
        let log = index.partition(1, 0);
        assert_eq!(
            offsets_of(&log),
            vec![(0, 9, "p0-9".into()), (10, 14, "c".into())]
        );
        // Without the segments (already collected), the part alone serves its offsets.
        let index = LogIndex::new();
        index.load(vec![], vec![("p0-9".into(), part(0, 9, 200))]);
        assert_eq!(index.partition(1, 0).offsets().high_watermark, 10);
    }

    #[test]
    fn compaction_picks_the_oldest_due_run() {
        let index = LogIndex::new();
        // Entries of 100 bytes written at 1000, 2000, ... 5000.
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let first = i as i64 * 5;
            let mut c = commit(name, &[(0, first, first + 4, 100)]);
            c.created_at_ms = (i as i64 + 1) * 1000;
            index.apply(name, &c);
        }
        let log = index.partition(1, 0);
        let policy = |written_before_ms, target_bytes, overdue_before_ms| CompactionPolicy {
            written_before_ms,
            target_bytes,
            overdue_before_ms,
            now_ms: 0,
        };
        let ids = |run: Option<CompactionRun>| {
            run.map(|r| {
                r.entries
                    .iter()
                    .map(|e| e.object.id.clone())
                    .collect::<Vec<_>>()
            })
        };
        // Not big enough and not overdue: nothing.
        assert!(log.compaction_run(&policy(10_000, 1000, 0)).is_none());
        // Big enough: the oldest entries up to the target.
        assert_eq!(
            ids(log.compaction_run(&policy(10_000, 300, 0))),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        // As big as it gets under the target (the next entry would pass it): due too.
        assert_eq!(
            ids(log.compaction_run(&policy(10_000, 250, 0))),
            Some(vec!["a".into(), "b".into()])
        );
        // Only what was written long enough ago.
        assert_eq!(
            ids(log.compaction_run(&policy(3_500, 300, 1_500))),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert!(log.compaction_run(&policy(2_500, 300, 0)).is_none());
        // Overdue: a small run goes anyway.
        assert_eq!(
            ids(log.compaction_run(&policy(2_500, 300, 1_500))),
            Some(vec!["a".into(), "b".into()])
        );
        // A small compacted object merges with what follows, once that is at least as big;
        // a big one stays.
        let mut p = part(0, 9, 200);
        p.created_at_ms = 1000;
        index.apply_part("p0-9", &p);
        assert_eq!(
            ids(log.compaction_run(&policy(10_000, 1000, 2_500))),
            Some(vec!["p0-9".into(), "c".into(), "d".into(), "e".into()])
        );
        assert_eq!(
            ids(log.compaction_run(&policy(3_500, 1000, 2_500))),
            Some(vec!["c".into()]),
            "100 bytes after a 200-byte object are copied alone"
        );
        assert_eq!(
            ids(log.compaction_run(&policy(10_000, 400, 3_500))),
            Some(vec!["c".into(), "d".into(), "e".into()]),
            "a compacted object of half the target or more is not copied again"
        );
        // A lone compacted object is never copied onto itself.
        log.set_log_start(10);
        index.apply_part("p10-24", &part(10, 24, 300));
        assert!(
            log.compaction_run(&policy(i64::MAX, 10_000, i64::MAX))
                .is_none()
        );
    }

    #[test]
    fn out_of_order_entries_wait_for_the_gap_to_close() {
        let index = LogIndex::new();
        index.apply("b", &commit("s/b", &[(0, 5, 9, 200)]));
        let log = index.partition(1, 0);
        assert_eq!(
            log.offsets().high_watermark,
            0,
            "5..9 cannot be read before 0..4"
        );
        assert!(log.entries_from(0, 1 << 20).1.is_empty());
        index.apply("a", &commit("s/a", &[(0, 0, 4, 100)]));
        assert_eq!(log.offsets().high_watermark, 10);
        assert_eq!(log.entries_from(0, 1 << 20).1.len(), 2);
        index.apply("a", &commit("s/a", &[(0, 0, 4, 100)]));
        assert_eq!(log.entries_from(0, 1 << 20).1.len(), 2);
    }

    #[test]
    fn a_log_start_before_its_entries_sets_the_base() {
        let index = LogIndex::new();
        let log = index.partition(1, 0);
        log.set_log_start(5);
        assert_eq!(log.offsets().high_watermark, 5);
        index.apply("b", &commit("s/b", &[(0, 5, 9, 200)]));
        assert_eq!(
            log.offsets(),
            Offsets {
                log_start: 5,
                high_watermark: 10
            }
        );
    }

    #[test]
    fn time_index_and_retention() {
        let index = LogIndex::new();
        index.apply("a", &commit("s/a", &[(0, 0, 4, 100)]));
        index.apply("b", &commit("s/b", &[(0, 5, 9, 200)]));
        let log = index.partition(1, 0);
        assert!(
            matches!(log.entry_for_timestamp(150).1, Some(Located::Entries(e)) if e[0].first_offset == 5)
        );
        assert!(log.entry_for_timestamp(1000).1.is_none());
        assert_eq!(log.expired_end(150), Some(5));
        log.set_log_start(5);
        assert_eq!(log.offsets().log_start, 5);
        assert_eq!(log.entries_from(0, 1 << 20).1.len(), 1);
        assert_eq!(log.expired_end(150), None);
    }

    #[test]
    fn key_compaction_runs_over_the_settled_log_when_the_dirty_part_is_due() {
        let index = LogIndex::new();
        // Segments of 100 bytes written at 1000, 2000, 3000, 4000.
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let first = i as i64 * 5;
            let mut c = commit(name, &[(0, first, first + 4, 100)]);
            c.created_at_ms = (i as i64 + 1) * 1000;
            index.apply(name, &c);
        }
        let log = index.partition(1, 0);
        let policy_at = |written_before_ms, overdue_before_ms, now_ms| CompactionPolicy {
            written_before_ms,
            target_bytes: 1 << 20,
            overdue_before_ms,
            now_ms,
        };
        let policy = |written_before_ms, overdue_before_ms| {
            policy_at(written_before_ms, overdue_before_ms, 0)
        };
        let ids = |run: &CleaningRun| {
            run.entries
                .iter()
                .map(|e| e.object.id.clone())
                .collect::<Vec<_>>()
        };
        // All dirty: due, up to the first segment too young.
        let run = log.cleaning_run(&policy(3_500, 0)).unwrap();
        assert_eq!(ids(&run), vec!["a", "b", "c"]);
        assert_eq!((run.bytes, run.dirty_bytes), (300, 300));
        // A key-compacted object over 0..=9 (clean), then c and d dirty.
        let id = Keys::cleaned_part_id(1, 0, 0, 9, 5_000, None);
        let mut cleaned = part(0, 9, 200);
        cleaned.created_at_ms = 5_000;
        index.apply_part(&id, &cleaned);
        assert!(log.entries_from(0, 1).1[0].object.cleaned);
        // Dirty c (100 bytes) is under half of 300 bytes: not due until it is overdue.
        assert!(log.cleaning_run(&policy(3_500, 0)).is_none());
        let run = log.cleaning_run(&policy(3_500, 3_500)).unwrap();
        assert_eq!(ids(&run), vec![id.clone(), "c".into()]);
        assert_eq!((run.bytes, run.dirty_bytes), (300, 100));
        // With d settled too, the dirty part is half: due.
        let run = log.cleaning_run(&policy(10_000, 0)).unwrap();
        assert_eq!(ids(&run), vec![id.clone(), "c".into(), "d".into()]);
        // Nothing dirty: never due.
        let mut all = part(0, 19, 300);
        all.created_at_ms = 6_000;
        index.apply_part(&Keys::cleaned_part_id(1, 0, 0, 19, 6_000, None), &all);
        assert!(log.cleaning_run(&policy(10_000, 10_000)).is_none());
        // ... unless it keeps tombstones whose delete horizon passed.
        let id = Keys::cleaned_part_id(1, 0, 0, 19, 7_000, Some(20_000));
        index.apply_part(&id, &all);
        assert_eq!(
            log.entries_from(0, 1).1[0].object.tombstone_horizon,
            Some(20_000)
        );
        assert!(log.cleaning_run(&policy(10_000, 10_000)).is_none());
        let run = log
            .cleaning_run(&policy_at(10_000, 10_000, 20_000))
            .unwrap();
        assert_eq!((ids(&run), run.dirty_bytes), (vec![id], 0));
    }

    #[test]
    fn a_range_compacted_again_replaces_the_earlier_object() {
        let index = LogIndex::new();
        index.apply("a", &commit("a", &[(0, 0, 4, 100)]));
        let first = Keys::cleaned_part_id(1, 0, 0, 4, 1_000, None);
        let second = Keys::cleaned_part_id(1, 0, 0, 4, 2_000, Some(3_000));
        assert_ne!(first, second);
        index.apply_part(&first, &part(0, 4, 50));
        index.apply_part(&second, &part(0, 4, 40));
        let log = index.partition(1, 0);
        assert_eq!(offsets_of(&log), vec![(0, 4, second.clone())]);
        let e = &log.entries_from(0, 1).1[0];
        assert!(log.superseded(&e.entry, &first));
        assert!(!log.superseded(&e.entry, &second));
    }

    /// A partition of ten compacted objects of 10 offsets and 100 bytes each, the first
    /// `flushed` offsets' flush segments applied before them.
    fn compacted_log(index: &LogIndex) -> Arc<PartitionLog> {
        for i in 0..10 {
            let first = i * 10;
            index.apply(
                &format!("s{i}"),
                &commit(&format!("s/{i}"), &[(0, first, first + 9, first)]),
            );
            let mut copied = part(first, first + 9, 100);
            copied.entries[0].max_timestamp = first;
            index.apply_part(&format!("p{first}"), &copied);
        }
        index.partition(1, 0)
    }

    fn page(first: i64, last: i64, max_timestamp: i64) -> PageRef {
        PageRef {
            object: format!("index/{first}-{last}.idx"),
            object_len: 10,
            first_offset: first,
            last_offset: last,
            bytes: (last + 1 - first) as u64 * 10,
            max_timestamp,
            level: 0,
        }
    }

    #[test]
    fn rolled_entries_leave_memory_and_lookups_below_the_tail_find_their_page() {
        let index = LogIndex::new();
        let log = compacted_log(&index);
        assert!(
            log.roll_up(5, 0)
                .is_some_and(|r| r.parts.len() == 5 && r.root_revision == 0)
        );
        assert!(
            log.roll_up(6, 0).is_none(),
            "twice the page must lead the index"
        );
        let roll = log.roll_up(4, 0).unwrap();
        assert_eq!(
            roll.parts
                .iter()
                .map(|(id, c)| (id.as_str(), c.entries[0].first_offset))
                .collect::<Vec<_>>(),
            [("p0", 0), ("p10", 10), ("p20", 20), ("p30", 30)]
        );
        assert_eq!(roll.parts[1].1.object, "parts/10");
        let root = IndexRoot {
            pages: vec![page(0, 39, 35)],
        };
        index.set_root(1, 0, 7, &root);
        assert_eq!(log.offsets().high_watermark, 100);
        assert!(matches!(log.locate(0, 1 << 20).1, Located::Paged(p) if p.last_offset == 39));
        assert!(matches!(log.locate(39, 1 << 20).1, Located::Paged(_)));
        let Located::Entries(tail) = log.locate(40, 150).1 else {
            panic!("the tail is in memory");
        };
        assert_eq!(
            tail.iter().map(|e| e.first_offset).collect::<Vec<_>>(),
            [40]
        );
        assert_eq!(offsets_of(&log)[0].0, 40, "rolled entries left memory");
        // Commits for rolled offsets arriving late (a reload racing the watch) are ignored,
        // and so is an older root.
        index.apply("s0", &commit("s/0", &[(0, 0, 9, 0)]));
        index.apply_part("p0", &part(0, 9, 100));
        index.set_root(1, 0, 5, &IndexRoot::default());
        assert_eq!(offsets_of(&log)[0].0, 40);
        assert_eq!(log.pages(), (7, vec![page(0, 39, 35)]));
        // Pages hold copied entries only: a flush segment's entry there was copied.
        assert!(log.superseded(&commit("s/0", &[(0, 0, 9, 0)]).entries[0], "s0"));
        assert!(!log.superseded(&commit("s/9", &[(0, 90, 99, 0)]).entries[0], "p90"));
        // The time index looks in pages first.
        assert!(matches!(
            log.entry_for_timestamp(30).1,
            Some(Located::Paged(_))
        ));
        assert!(
            matches!(log.entry_for_timestamp(45).1, Some(Located::Entries(e)) if e[0].first_offset == 50)
        );
        // The next roll-up continues the pages.
        let next = log.roll_up(2, 0).unwrap();
        assert_eq!(next.parts[0].0, "p40");
        assert_eq!(next.pages.len(), 1);
        // Key compaction waits for the pages to be unrolled.
        let policy = CompactionPolicy {
            written_before_ms: i64::MAX,
            target_bytes: 1 << 20,
            overdue_before_ms: i64::MAX,
            now_ms: 0,
        };
        assert!(log.cleaning_run(&policy).is_none());
    }

    #[test]
    fn only_objects_compaction_never_copies_again_are_rolled() {
        let index = LogIndex::new();
        let log = compacted_log(&index);
        assert!(
            log.roll_up(2, 149).is_none(),
            "objects under the minimum stay: they may still merge"
        );
        // A small object followed by a large one merges with nothing after it: it rolls.
        index.apply_part("big", &part(10, 29, 200));
        index.apply_part("big2", &part(30, 59, 200));
        let roll = log.roll_up(1, 149).expect("small-then-large settles");
        assert_eq!(roll.parts[0].0, "p0");
        assert!(
            log.roll_up(2, 149).is_none(),
            "p60 and after may still merge"
        );
        // A flush segment not yet compacted stops the run.
        let index = LogIndex::new();
        for i in 0..6 {
            let first = i * 10;
            index.apply(
                &format!("s{i}"),
                &commit(&format!("s/{i}"), &[(0, first, first + 9, 0)]),
            );
            if i != 3 {
                index.apply_part(&format!("p{first}"), &part(first, first + 9, 100));
            }
        }
        assert!(index.partition(1, 0).roll_up(2, 0).is_none());
        assert_eq!(index.partition(1, 0).roll_up(1, 0).unwrap().parts.len(), 1);
    }

    #[test]
    fn an_unreadable_root_blocks_the_partition_until_a_later_readable_one() {
        let index = LogIndex::new();
        let log = index.partition(7, 0);
        log.set_root(
            5,
            &IndexRoot {
                pages: vec![page(0, 39, 35)],
            },
        );
        assert_eq!(log.unreadable(), None);
        // An older unreadable root changes nothing; a newer one blocks, keeping the applied
        // revision (a roll-up computed now is refused by the root's compare).
        log.set_unreadable_root(4, "old".into());
        assert_eq!(log.unreadable(), None);
        log.set_unreadable_root(8, "damaged".into());
        assert_eq!(log.unreadable().as_deref(), Some("damaged"));
        assert_eq!(log.pages().0, 5);
        // A readable root older than the damaged one does not clear it; a later one does.
        log.set_root(6, &IndexRoot::default());
        assert_eq!(log.unreadable().as_deref(), Some("damaged"));
        log.set_root(9, &IndexRoot::default());
        assert_eq!(log.unreadable(), None);
        // An unreadable compacted commit blocks for good (until the broker reloads).
        log.set_unreadable_part("bad commit".into());
        assert_eq!(log.unreadable().as_deref(), Some("bad commit"));
    }

    #[test]
    fn retention_drops_pages_whole_and_the_owner_trims_the_root() {
        let index = LogIndex::new();
        let log = compacted_log(&index);
        // Pages [0, 19] (newest record at 15) and [20, 39] (at 35).
        let root = IndexRoot {
            pages: vec![page(0, 19, 15), page(20, 39, 35)],
        };
        index.set_root(1, 0, 3, &root);
        assert_eq!(log.expired_end(10), None);
        assert_eq!(log.expired_end(16), Some(20), "a page goes whole");
        assert_eq!(log.expired_end(36), Some(40));
        assert_eq!(log.expired_end(46), Some(50), "then the entries after them");
        // 200 bytes per page, 100 per entry: 700 of the 1000 bytes fit from the newest.
        assert_eq!(log.oversize_end(700), Some(40));
        assert_eq!(log.oversize_end(900), Some(20));
        assert!(log.roll_up(100, 0).is_none(), "nothing to write yet");
        log.set_log_start(20);
        assert_eq!(log.pages().1, vec![page(20, 39, 35)]);
        let trim = log.roll_up(100, 0).expect("a trim of the root is due");
        assert!(trim.parts.is_empty());
        assert_eq!(trim.pages, vec![page(20, 39, 35)]);
        assert!(matches!(log.locate(20, 1).1, Located::Paged(_)));
    }

    #[test]
    fn a_root_loaded_first_sets_the_high_watermark_and_the_tail_continues_it() {
        let index = LogIndex::new();
        let log = index.partition(1, 0);
        index.set_root(
            1,
            0,
            2,
            &IndexRoot {
                pages: vec![page(0, 49, 0)],
            },
        );
        assert_eq!(log.offsets().high_watermark, 50);
        index.apply("s", &commit("s/5", &[(0, 40, 49, 0), (0, 50, 59, 0)]));
        assert_eq!(log.offsets().high_watermark, 60);
        assert_eq!(offsets_of(&log), vec![(50, 59, "s".into())]);
        // Unrolling: the root shrinks and the page's commits come back. Between the two,
        // offsets of the page are answered with nothing (never with a later entry), and
        // retention decides nothing across the gap.
        index.set_root(1, 0, 9, &IndexRoot::default());
        assert!(matches!(log.locate(10, 1 << 20).1, Located::Entries(e) if e.is_empty()));
        assert_eq!(log.expired_end(i64::MAX), None);
        assert_eq!(log.oversize_end(0), None);
        for first in [0, 25] {
            index.apply_part(&format!("p{first}"), &part(first, first + 24, 100));
        }
        assert_eq!(offsets_of(&log).len(), 3);
        assert_eq!(log.offsets().high_watermark, 60);
        assert!(matches!(log.locate(0, 1).1, Located::Entries(e) if e[0].object.id == "p0"));
    }
}
