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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use object_store::path::Path;
use silt_metadata::codec::{SegmentCommit, SegmentEntry};
use tokio::sync::watch;

/// A committed segment object.
#[derive(Debug)]
pub struct ObjectRef {
    /// The object id, also the suffix of its metadata key.
    pub id: String,
    pub path: Path,
    pub len: u64,
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

#[derive(Debug, Default)]
struct PartitionState {
    entries: VecDeque<IndexEntry>,
    log_start: i64,
    high_watermark: i64,
}

/// One partition's committed log.
#[derive(Debug)]
pub struct PartitionLog {
    state: Mutex<PartitionState>,
    hwm_tx: watch::Sender<i64>,
}

impl PartitionLog {
    fn new() -> Self {
        Self {
            state: Mutex::new(PartitionState::default()),
            hwm_tx: watch::channel(0).0,
        }
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

    /// Entries holding offsets from `offset` on, until about `max_bytes` (at least one entry).
    pub fn entries_from(&self, offset: i64, max_bytes: usize) -> (Offsets, Vec<IndexEntry>) {
        let s = self.lock();
        let offsets = Offsets {
            log_start: s.log_start,
            high_watermark: s.high_watermark,
        };
        let start = s.entries.partition_point(|e| e.last_offset < offset);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in s.entries.iter().skip(start) {
            if e.first_offset >= s.high_watermark {
                break;
            }
            if !out.is_empty() && bytes + e.length as usize > max_bytes {
                break;
            }
            bytes += e.length as usize;
            out.push(e.clone());
        }
        (offsets, out)
    }

    /// The first entry whose records may have a timestamp at or after `ts` (the time index).
    pub fn entry_for_timestamp(&self, ts: i64) -> (Offsets, Option<IndexEntry>) {
        let s = self.lock();
        let offsets = Offsets {
            log_start: s.log_start,
            high_watermark: s.high_watermark,
        };
        let found = s
            .entries
            .iter()
            .take_while(|e| e.first_offset < s.high_watermark)
            .find(|e| e.max_timestamp >= ts && e.last_offset >= s.log_start);
        (offsets, found.cloned())
    }

    /// Entries of a partition whose newest record is older than `cutoff_ts`: their end offset.
    pub fn expired_end(&self, cutoff_ts: i64) -> Option<i64> {
        let s = self.lock();
        let mut end = None;
        for e in &s.entries {
            if e.max_timestamp >= cutoff_ts || e.first_offset >= s.high_watermark {
                break;
            }
            end = Some(e.last_offset + 1);
        }
        end.filter(|end| *end > s.log_start)
    }

    /// Where the log must start for the partition to hold at most `max_bytes` of batches:
    /// the first offset of the oldest entry that fits, counting from the newest. The newest
    /// entry is always kept, so a topic is never emptied by its size limit alone. `None` when
    /// nothing needs to go.
    pub fn oversize_end(&self, max_bytes: i64) -> Option<i64> {
        let s = self.lock();
        let live: Vec<&IndexEntry> = s
            .entries
            .iter()
            .filter(|e| e.last_offset >= s.log_start && e.first_offset < s.high_watermark)
            .collect();
        let mut kept = 0i64;
        let mut start = None;
        for (i, e) in live.iter().enumerate().rev() {
            kept = kept.saturating_add(i64::from(e.length));
            if kept > max_bytes && i + 1 < live.len() {
                start = Some(live[i + 1].first_offset);
                break;
            }
        }
        start.filter(|start| *start > s.log_start)
    }

    fn append(&self, entry: IndexEntry) {
        let mut s = self.lock();
        if entry.last_offset < s.high_watermark {
            // Already known (a commit seen twice); never rewind.
            return;
        }
        let pos = s
            .entries
            .partition_point(|e| e.first_offset < entry.first_offset);
        if s.entries
            .get(pos)
            .is_some_and(|e| e.first_offset == entry.first_offset)
        {
            return;
        }
        s.entries.insert(pos, entry);
        if s.advance() {
            let hwm = s.high_watermark;
            drop(s);
            self.hwm_tx.send_replace(hwm);
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
    /// Extends the high watermark over the entries that continue it; true if it moved.
    fn advance(&mut self) -> bool {
        let before = self.high_watermark;
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
            .or_insert_with(|| Arc::new(PartitionLog::new()))
            .clone()
    }

    /// Applies a committed segment: every entry becomes readable and high watermarks move.
    pub fn apply(&self, object_id: &str, commit: &SegmentCommit) {
        let object = Arc::new(ObjectRef {
            id: object_id.to_string(),
            path: Path::from(commit.object.as_str()),
            len: commit.object_len,
        });
        for e in &commit.entries {
            self.partition(e.topic_id, e.partition)
                .append(entry(e, &object));
        }
    }

    /// Applies many commits loaded at start, in offset order per partition.
    pub fn load(&self, mut commits: Vec<(String, SegmentCommit)>) {
        let mut entries: Vec<(SegmentEntry, Arc<ObjectRef>)> = Vec::new();
        for (id, commit) in commits.drain(..) {
            let object = Arc::new(ObjectRef {
                path: Path::from(commit.object.as_str()),
                len: commit.object_len,
                id,
            });
            entries.extend(commit.entries.into_iter().map(|e| (e, object.clone())));
        }
        entries.sort_by_key(|(e, _)| (e.topic_id, e.partition, e.first_offset));
        for (e, object) in entries {
            self.partition(e.topic_id, e.partition)
                .append(entry(&e, &object));
        }
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
        index.load(vec![
            ("b".into(), commit("s/b", &[(0, 5, 9, 200)])),
            ("a".into(), commit("s/a", &[(0, 0, 4, 100)])),
        ]);
        index.apply("b", &commit("s/b", &[(0, 5, 9, 200)]));
        let (_, e) = index.partition(1, 0).entries_from(0, 1 << 20);
        assert_eq!(
            e.iter().map(|e| e.first_offset).collect::<Vec<_>>(),
            vec![0, 5]
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
        assert_eq!(log.entry_for_timestamp(150).1.unwrap().first_offset, 5);
        assert!(log.entry_for_timestamp(1000).1.is_none());
        assert_eq!(log.expired_end(150), Some(5));
        log.set_log_start(5);
        assert_eq!(log.offsets().log_start, 5);
        assert_eq!(log.entries_from(0, 1 << 20).1.len(), 1);
        assert_eq!(log.expired_end(150), None);
    }
}
