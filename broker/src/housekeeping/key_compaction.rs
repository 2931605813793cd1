//! Key compaction: in a topic whose `cleanup_policy` includes `compact`, the owner of each
//! partition rewrites the log keeping only the latest record of each key, as Kafka's log
//! cleaner does. Surviving records keep their offsets (gaps are allowed in compacted topics
//! only); a record with a null value (a tombstone) deletes its key, and is itself dropped once
//! the topic's `delete_retention_ms` passed since the compaction that first kept it (its
//! batch's delete horizon, KIP-534), so a consumer that read the old value has that long to
//! see the delete, however old the tombstone's own timestamp. The tail not yet compacted
//! reads as written.
//!
//! One run covers the log from its start up to the first flush segment younger than
//! `--compaction-min-age-ms` ([`PartitionLog::cleaning_run`]), and is due when the dirty
//! section (entries key compaction did not write) holds half its bytes or is older than
//! `--compaction-max-delay-ms`, or when a tombstone's delete horizon passed (the commit id of
//! an object keeping tombstones carries the earliest of their horizons):
//!
//! 1. **Map**: read the dirty entries and note the latest offset of every key. The clean
//!    section needs no pass: each of its keys appears once, and the dirty section supersedes
//!    it. The map is bounded by `--key-compaction-map-bytes`; when full, the run ends at the
//!    entry that filled it and the rest waits for the next run.
//! 2. **Rewrite**: read the run again in offset order and thin each batch
//!    ([`retain_records`]): a record goes when a later record of its key exists, or when it is
//!    a tombstone whose batch's delete horizon passed; a batch keeping a tombstone without a
//!    horizon gets one, now + `delete_retention_ms`. Batches keep their base and last offsets; a stretch left with no
//!    record keeps an empty batch spanning its offsets, so every output entry covers exactly
//!    the input entries it replaces. Objects of about `--compaction-target-bytes` are PUT and
//!    swapped one by one, oldest first, fenced like plain compaction
//!    ([`Catalog::commit_part`]); a refused or failed swap ends the run, so a tombstone never
//!    goes while an older value of its key is still in the log.
//!
//! Commit ids carry the compaction's instant ([`Keys::cleaned_part_id`]): a range compacted
//! again gets a new key, and the old one is forgotten by garbage collection once superseded,
//! like any compacted commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use silt_metadata::catalog::Topic;
use silt_metadata::keys::Keys;
use silt_storage::batch::{
    BatchHeader, KeyedRecord, Retained, empty_batch, retain_records, split_batches,
};
use silt_storage::segment::SegmentWriter;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::compaction::{Compactor, ENTRY_BYTES, READ_CONCURRENCY, read_entry};
use crate::core::BrokerError;
use crate::core::log_index::{CleaningRun, IndexEntry};

/// What a key of the map costs beyond its bytes, counted high so the bound holds: its table
/// slot (the key's `Vec` and its offset, 32 bytes, at up to 7/8 load, and old and new tables both
/// alive while the table grows) and the key's own allocation (at least 32 bytes with malloc's
/// header and rounding).
const KEY_OVERHEAD: usize = 96;

/// What one key compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    /// Objects swapped in.
    pub objects: usize,
    /// Bytes read (both passes).
    pub read: u64,
    /// Bytes written.
    pub written: u64,
    /// Records dropped (superseded or expired tombstones).
    pub dropped: u64,
}

/// Paces reads to `bytes_per_sec` since `started`.
struct Pace {
    started: tokio::time::Instant,
    bytes_per_sec: u64,
    read: u64,
}

impl Pace {
    /// Counts `bytes` read and waits until they are within the rate; false when cancelled.
    async fn read(&mut self, bytes: usize, cancel: &CancellationToken) -> bool {
        self.read += bytes as u64;
        let due = Duration::from_secs_f64(self.read as f64 / self.bytes_per_sec as f64);
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep_until(self.started + due) => true,
        }
    }
}

impl Compactor {
    /// Key-compacts `run` of a partition of `topic`. `Ok(None)`: nothing was swapped (the
    /// partition moved, the topic went, or cancelled).
    pub(super) async fn clean(
        &self,
        topic: &Topic,
        partition: u32,
        run: &CleaningRun,
        cancel: &CancellationToken,
    ) -> Result<Option<Cleaned>, BrokerError> {
        let pid = (topic.id, partition);
        let Some(fence) = self.owner_fence(pid) else {
            return Ok(None);
        };
        let mut pace = Pace {
            started: tokio::time::Instant::now(),
            bytes_per_sec: self.settings.bytes_per_sec,
            read: 0,
        };
        let mut cleaned = Cleaned::default();

        // Pass 1: the latest offset of each key in the dirty section.
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut map_bytes = 0usize;
        let mut end = run.entries.len();
        let dirty: Vec<(usize, IndexEntry)> = run
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.object.cleaned)
            .map(|(i, e)| (i, e.clone()))
            .collect();
        let first_dirty = dirty.first().map_or(0, |(i, _)| *i);
        let mut reads = futures::stream::iter(dirty.into_iter().map(|(i, e)| {
            let store = self.store.clone();
            async move { read_entry(store, e).await.map(|(e, b)| (i, e, b)) }
        }))
        .buffered(READ_CONCURRENCY);
        while let Some(next) = reads.next().await {
            let (i, e, bytes) = next?;
            // The bound is checked at every new key, not only between entries: one entry of
            // small, compressible records can hold millions of keys. Past it (except in the
            // first dirty entry, which the run must take whole to make progress) no key is
            // added; the run then ends before this entry. The keys of this entry mapped so far
            // are harmless: their latest records stay, outside the run.
            let limit = self.settings.key_map_bytes;
            let mut full = false;
            for item in split_batches(&bytes) {
                let (header, batch) = item.map_err(|err| damaged(&e, &err))?;
                retain_records(&header, &batch, None, |r| {
                    if let Some(key) = r.key {
                        match latest.get_mut(key) {
                            Some(offset) => *offset = r.offset,
                            None if map_bytes > limit && i > first_dirty => full = true,
                            None => {
                                map_bytes += key.len() + KEY_OVERHEAD;
                                latest.insert(key.to_vec(), r.offset);
                            }
                        }
                    }
                    true
                })
                .map_err(|err| damaged(&e, &err))?;
                if full {
                    break;
                }
            }
            if full {
                debug!(
                    topic = %topic.record.name,
                    partition,
                    keys = latest.len(),
                    up_to = e.first_offset,
                    "the key map is full; this run stops here"
                );
                end = i;
                break;
            }
            if !pace.read(bytes.len(), cancel).await {
                return Ok(None);
            }
        }
        drop(reads);

        // Pass 2: rewrite the run, oldest first, swapping each object as it fills. Entries that
        // retention put below the log start meanwhile (in a `compact,delete` topic) are left to
        // GC: their objects may be gone once the grace period after pass 1 began has passed.
        let log_start = self
            .index
            .partition(topic.id, partition)
            .offsets()
            .log_start;
        let expired = run.entries[..end]
            .iter()
            .take_while(|e| e.last_offset < log_start)
            .count();
        let entries = &run.entries[expired..end];
        let now = self.clock.now_ms();
        // Horizons are rounded up to the max delay, so the runs they make due (each rewrites the
        // clean log) come at most once per max delay however steady the tombstones are.
        let round = (self.settings.max_delay.as_millis() as i64).max(1);
        let stamp = now.saturating_add(topic.record.delete_retention_ms.max(0));
        let stamp = (stamp / round)
            .saturating_add(i64::from(stamp % round != 0))
            .saturating_mul(round);
        let mut dropped = 0u64;
        // The earliest delete horizon of the tombstones the open output keeps, read from the
        // batches written (a batch whose timestamps cannot take a horizon stays unstamped).
        let mut kept_horizon: Option<i64> = None;
        // Whether the batch being thinned keeps a tombstone (an atomic: the closure is held
        // across awaits).
        let batch_keeps_tombstone = AtomicBool::new(false);
        let mut keep = |r: &KeyedRecord<'_>| {
            let superseded = r
                .key
                .and_then(|k| latest.get(k))
                .is_some_and(|latest| r.offset < *latest);
            let expired = r.is_tombstone() && r.delete_horizon.is_some_and(|h| h <= now);
            let kept = !superseded && !expired;
            if kept && r.is_tombstone() {
                batch_keeps_tombstone.store(true, Ordering::Relaxed);
            }
            dropped += u64::from(!kept);
            kept
        };
        let mut reads = futures::stream::iter(entries.iter().cloned().map(|e| {
            let store = self.store.clone();
            read_entry(store, e)
        }))
        .buffered(READ_CONCURRENCY);
        let mut out: Option<Output> = None;
        let mut index = 0usize;
        while let Some(next) = reads.next().await {
            let (e, bytes) = next?;
            index += 1;
            let o = out.get_or_insert_with(|| {
                Output::new(
                    topic.id,
                    partition,
                    e.first_offset,
                    now,
                    self.settings.target_bytes,
                )
            });
            if o.entry_first.is_none() {
                o.entry_first = Some(e.first_offset);
            }
            for item in split_batches(&bytes) {
                let (header, batch) = item.map_err(|err| damaged(&e, &err))?;
                // An empty batch an earlier run left is not carried on: the output entry's
                // range says which offsets it covers, and `close_entry` adds one again only to
                // an entry left with no batch at all.
                if header.record_count == 0 && !header.is_control() {
                    continue;
                }
                let written = match retain_records(&header, &batch, Some(stamp), &mut keep)
                    .map_err(|err| damaged(&e, &err))?
                {
                    Retained::All => Some((batch, header)),
                    Retained::Some(thin) => {
                        let h = BatchHeader::read(&thin).map_err(|err| damaged(&e, &err))?;
                        Some((thin, h))
                    }
                    Retained::Nothing => None,
                };
                let keeps_tombstone = batch_keeps_tombstone.swap(false, Ordering::Relaxed);
                if let Some((bytes, h)) = written {
                    if let Some(horizon) = h.delete_horizon().filter(|_| keeps_tombstone) {
                        kept_horizon = Some(kept_horizon.map_or(horizon, |k| k.min(horizon)));
                    }
                    o.writer.push_stored_batch(&bytes, &h);
                }
            }
            o.last = e.last_offset;
            let last_input = index == entries.len();
            let full = o.writer_bytes() >= self.settings.target_bytes;
            if o.writer.open_entry_len() >= ENTRY_BYTES || full || last_input {
                o.close_entry(e.max_timestamp);
            }
            if full || last_input {
                let o = out.take().expect("an output is open");
                let written = o.writer_bytes();
                let horizon = kept_horizon.take();
                let id = Keys::cleaned_part_id(topic.id, partition, o.first, o.last, now, horizon);
                if !self
                    .put_and_swap(topic, &fence, &id, o.writer, now, cancel)
                    .await?
                {
                    return Ok((cleaned.objects > 0).then_some(cleaned));
                }
                cleaned.objects += 1;
                cleaned.written += written;
            }
            if !pace.read(bytes.len(), cancel).await {
                return Ok((cleaned.objects > 0).then_some(cleaned));
            }
        }
        cleaned.read = pace.read;
        cleaned.dropped = dropped;
        Ok(Some(cleaned))
    }
}

/// One output object being written.
struct Output {
    writer: SegmentWriter,
    topic_id: u64,
    partition: u32,
    /// Offsets the object covers so far.
    first: i64,
    last: i64,
    /// First offset of the open output entry (`None`: no entry open).
    entry_first: Option<i64>,
}

impl Output {
    fn new(topic_id: u64, partition: u32, first: i64, now: i64, target: u64) -> Self {
        let mut writer = SegmentWriter::new(now, target.min(256 << 20) as usize + 4096);
        writer.begin_entry(topic_id, partition);
        Self {
            writer,
            topic_id,
            partition,
            first,
            last: first - 1,
            entry_first: Some(first),
        }
    }

    fn writer_bytes(&self) -> u64 {
        self.writer.len() as u64
    }

    /// Ends the open entry at the last input entry's end: an entry that lost every record
    /// keeps an empty batch spanning its offsets. The next input starts a new entry.
    fn close_entry(&mut self, timestamp_ms: i64) {
        let Some(first) = self.entry_first.take() else {
            return;
        };
        if self.writer.open_entry_len() == 0 {
            let empty = empty_batch(first, self.last, timestamp_ms);
            let header = BatchHeader::read(&empty).expect("an empty batch has a header");
            self.writer.push_stored_batch(&empty, &header);
        }
        self.writer.set_open_range(first, self.last);
        self.writer.begin_entry(self.topic_id, self.partition);
    }
}

fn damaged(e: &IndexEntry, err: &dyn std::fmt::Display) -> BrokerError {
    BrokerError::internal(format!(
        "key compaction found a batch of entry {}..={} of {} it cannot read, and leaves the log as it is: {err}",
        e.first_offset, e.last_offset, e.object.path
    ))
}
