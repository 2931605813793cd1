//! The producer's batching rules, kept free of I/O and of the clock (every call takes `now`) so
//! they are tested without a broker or a sleep.
//!
//! A record is routed by the [`Partitioner`] and appended to its partition's *open* batch. An
//! open batch is *closed* when it reaches `batch_bytes`, when its linger expires, or on flush,
//! and joins the *ready* queue in closing order. [`Accumulator::take_request`] then gathers ready
//! batches of partitions that have no request in flight, up to `request_bytes`, into one
//! `ProduceBatches` request and marks those partitions busy until [`Accumulator::complete`]:
//! a partition never has two requests in flight, so a retried batch can never be overtaken by
//! the partition's next one and each partition's records keep their send order.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use silt_storage::batch::RecordData;
use tokio::sync::watch;

use crate::error::ClientError;
use crate::partitioner::Partitioner;

/// What a batch's records wait on: `None` until the batch is acknowledged (`Ok(base offset)`)
/// or has failed.
pub(crate) type Outcome = Option<Result<i64, ClientError>>;

/// Per-record overhead added to the payload bytes when sizing batches: the record's length,
/// attributes, timestamp and offset deltas and the key/value/header-count varints.
const RECORD_OVERHEAD: usize = 16;

/// The sizes and times the accumulator works to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) linger: Duration,
    pub(crate) batch_bytes: usize,
    pub(crate) request_bytes: usize,
    /// Bytes held in open and ready batches above which `send` waits.
    pub(crate) buffer_bytes: usize,
}

/// A record as the accumulator takes it: already timestamped.
#[derive(Debug, Clone)]
pub(crate) struct PendingRecord {
    pub(crate) key: Option<Bytes>,
    /// `None`: a null value (a tombstone).
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Vec<(String, Option<Bytes>)>,
    pub(crate) timestamp_ms: i64,
    pub(crate) partition: Option<u32>,
}

impl PendingRecord {
    /// The size this record counts for in batches and buffers.
    pub(crate) fn estimated_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + 2)
                .sum::<usize>()
            + RECORD_OVERHEAD
    }
}

/// A batch: its records and the channel its records' futures wait on.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) id: u64,
    pub(crate) partition: u32,
    pub(crate) records: Vec<RecordData>,
    pub(crate) bytes: usize,
    created: Instant,
    pub(crate) outcome: watch::Sender<Outcome>,
}

/// Where an appended record went.
#[derive(Debug)]
pub(crate) struct Appended {
    pub(crate) partition: u32,
    /// The record's position in its batch: its offset is the batch's base offset plus this.
    pub(crate) index: usize,
    pub(crate) outcome: watch::Receiver<Outcome>,
    /// True when the sender should look again: a batch was opened (a new linger deadline) or
    /// closed (a ready batch).
    pub(crate) wake_sender: bool,
}

/// Ready batches taken for one `ProduceBatches` request.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) batches: Vec<Batch>,
}

/// Open and ready batches of one producer, and which partitions are busy.
#[derive(Debug)]
pub(crate) struct Accumulator {
    limits: Limits,
    partitioner: Partitioner,
    open: Vec<Option<Batch>>,
    ready: VecDeque<Batch>,
    busy: Vec<bool>,
    buffered_bytes: usize,
    next_id: u64,
    /// Every batch not yet completed, open, ready or in flight: what `flush` waits for.
    pending: BTreeMap<u64, watch::Receiver<Outcome>>,
}

impl Accumulator {
    pub(crate) fn new(limits: Limits, partitioner: Partitioner) -> Self {
        let n = partitioner.partitions() as usize;
        Self {
            limits,
            partitioner,
            open: (0..n).map(|_| None).collect(),
            ready: VecDeque::new(),
            busy: vec![false; n],
            buffered_bytes: 0,
            next_id: 0,
            pending: BTreeMap::new(),
        }
    }

    /// True while `send` may add records without waiting. An empty buffer always has room, so
    /// a record larger than the whole buffer still goes through.
    pub(crate) fn has_room(&self) -> bool {
        self.buffered_bytes == 0 || self.buffered_bytes < self.limits.buffer_bytes
    }

    /// Bytes held in open and ready batches.
    #[cfg(test)]
    fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// True when no batch is open, ready or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Routes `record` and appends it to its partition's open batch.
    pub(crate) fn append(
        &mut self,
        record: PendingRecord,
        now: Instant,
    ) -> Result<Appended, ClientError> {
        let size = record.estimated_bytes();
        let sticky = record.partition.is_none() && record.key.is_none();
        let mut wake_sender = false;
        let mut partition = self
            .partitioner
            .partition(record.key.as_deref(), record.partition)?;
        // Close a batch the record would overflow. A null-key record then follows the sticky
        // partition to the next one, which may itself be full; this ends within one lap.
        for _ in 0..self.open.len() {
            let full = self.open[partition as usize]
                .as_ref()
                .is_some_and(|b| !b.records.is_empty() && b.bytes + size > self.limits.batch_bytes);
            if !full {
                break;
            }
            self.close(partition);
            wake_sender = true;
            if !sticky {
                break;
            }
            partition = self.partitioner.sticky();
        }

        let slot = &mut self.open[partition as usize];
        let batch = match slot {
            Some(batch) => batch,
            None => {
                let (outcome, receiver) = watch::channel(None);
                let id = self.next_id;
                self.next_id += 1;
                self.pending.insert(id, receiver);
                wake_sender = true;
                slot.insert(Batch {
                    id,
                    partition,
                    records: Vec::new(),
                    bytes: 0,
                    created: now,
                    outcome,
                })
            }
        };
        let index = batch.records.len();
        batch.records.push(RecordData {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp_ms: record.timestamp_ms,
        });
        batch.bytes += size;
        let outcome = batch.outcome.subscribe();
        let now_full = batch.bytes >= self.limits.batch_bytes;
        self.buffered_bytes += size;
        if now_full {
            self.close(partition);
            wake_sender = true;
        }
        Ok(Appended {
            partition,
            index,
            outcome,
            wake_sender,
        })
    }

    /// Moves `partition`'s open batch, if any, to the ready queue.
    fn close(&mut self, partition: u32) {
        if let Some(batch) = self.open[partition as usize].take() {
            self.partitioner.batch_closed(partition);
            self.ready.push_back(batch);
        }
    }

    /// Closes every open batch (flush and shutdown).
    pub(crate) fn close_all(&mut self) {
        let mut open: Vec<&Batch> = self.open.iter().flatten().collect();
        // Oldest first, so the ready queue stays in creation order.
        open.sort_by_key(|b| b.id);
        let partitions: Vec<u32> = open.iter().map(|b| b.partition).collect();
        for p in partitions {
            self.close(p);
        }
    }

    /// Closes the open batches whose linger has expired.
    fn close_expired(&mut self, now: Instant) {
        let mut expired: Vec<(u64, u32)> = self
            .open
            .iter()
            .flatten()
            .filter(|b| b.created + self.limits.linger <= now)
            .map(|b| (b.id, b.partition))
            .collect();
        expired.sort_unstable();
        for (_, p) in expired {
            self.close(p);
        }
    }

    /// When the next open batch's linger expires, if any batch is open.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.open
            .iter()
            .flatten()
            .map(|b| b.created + self.limits.linger)
            .min()
    }

    /// Takes the next request: ready batches (after closing lingered ones, or every open one
    /// when `close_all`) of partitions without a request in flight, in closing order, up to
    /// `request_bytes` (always at least one batch). Marks their partitions busy.
    pub(crate) fn take_request(&mut self, now: Instant, close_all: bool) -> Option<Request> {
        if close_all {
            self.close_all();
        } else {
            self.close_expired(now);
        }
        let mut total = 0usize;
        let mut blocked: HashSet<u32> = HashSet::new();
        let mut chosen = Vec::new();
        for (i, batch) in self.ready.iter().enumerate() {
            let p = batch.partition;
            if self.busy[p as usize] || blocked.contains(&p) {
                continue;
            }
            if !chosen.is_empty() && total + batch.bytes > self.limits.request_bytes {
                // Later batches of this partition must wait for this one.
                blocked.insert(p);
                continue;
            }
            total += batch.bytes;
            chosen.push(i);
            if total >= self.limits.request_bytes {
                break;
            }
        }
        if chosen.is_empty() {
            return None;
        }
        let mut batches = Vec::with_capacity(chosen.len());
        // Remove from the back so earlier indices stay valid, then restore the order.
        for &i in chosen.iter().rev() {
            if let Some(batch) = self.ready.remove(i) {
                batches.push(batch);
            }
        }
        batches.reverse();
        for batch in &batches {
            self.busy[batch.partition as usize] = true;
            self.buffered_bytes -= batch.bytes;
        }
        Some(Request { batches })
    }

    /// Marks a request's partitions free again and forgets its batches (they are completed).
    pub(crate) fn complete(&mut self, batches: &[(u64, u32)]) {
        for &(id, partition) in batches {
            self.busy[partition as usize] = false;
            self.pending.remove(&id);
        }
    }

    /// The outcome channels of every batch not completed yet.
    pub(crate) fn pending_outcomes(&self) -> Vec<watch::Receiver<Outcome>> {
        self.pending.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(5);

    fn limits(batch_bytes: usize, request_bytes: usize) -> Limits {
        Limits {
            linger: LINGER,
            batch_bytes,
            request_bytes,
            buffer_bytes: 1 << 20,
        }
    }

    fn record(key: Option<&str>, partition: Option<u32>, value_len: usize) -> PendingRecord {
        PendingRecord {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::from(vec![b'v'; value_len])),
            headers: Vec::new(),
            timestamp_ms: 1,
            partition,
        }
    }

    fn partitions_of(request: &Request) -> Vec<u32> {
        request.batches.iter().map(|b| b.partition).collect()
    }

    fn done(acc: &mut Accumulator, request: &Request) {
        let ids: Vec<(u64, u32)> = request
            .batches
            .iter()
            .map(|b| (b.id, b.partition))
            .collect();
        acc.complete(&ids);
    }

    #[test]
    fn records_wait_for_linger_then_go_in_one_request() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(limits(1 << 20, 4 << 20), Partitioner::new(4, 0));
        let a = acc.append(record(None, Some(1), 10), t0).unwrap();
        let b = acc.append(record(None, Some(2), 10), t0).unwrap();
        let c = acc.append(record(None, Some(1), 10), t0).unwrap();
        assert!(a.wake_sender && b.wake_sender && !c.wake_sender);
        assert_eq!((a.partition, a.index), (1, 0));
        assert_eq!((c.partition, c.index), (1, 1));
        assert!(
            acc.take_request(t0, false).is_none(),
            "nothing is ready before the linger"
        );
        assert_eq!(acc.next_deadline(), Some(t0 + LINGER));
        let request = acc.take_request(t0 + LINGER, false).unwrap();
        assert_eq!(partitions_of(&request), vec![1, 2]);
        assert_eq!(request.batches[0].records.len(), 2);
        assert_eq!(acc.buffered_bytes(), 0);
        assert!(!acc.is_idle());
        done(&mut acc, &request);
        assert!(acc.is_idle());
    }

    #[test]
    fn a_full_batch_is_ready_at_once() {
        let t0 = Instant::now();
        let size = record(None, Some(0), 100).estimated_bytes();
        let mut acc = Accumulator::new(limits(3 * size, 4 << 20), Partitioner::new(1, 0));
        for i in 0..3 {
            acc.append(record(None, Some(0), 100), t0).unwrap();
            let ready = acc.take_request(t0, false);
            assert_eq!(ready.is_some(), i == 2, "after record {i}");
        }
    }

    #[test]
    fn an_overflowing_record_starts_a_new_batch() {
        let t0 = Instant::now();
        let size = record(Some("k"), None, 100).estimated_bytes();
        let mut acc = Accumulator::new(limits(2 * size + 1, 4 << 20), Partitioner::new(1, 0));
        acc.append(record(Some("k"), None, 100), t0).unwrap();
        acc.append(record(Some("k"), None, 100), t0).unwrap();
        let third = acc.append(record(Some("k"), None, 100), t0).unwrap();
        assert_eq!(third.index, 0, "the third record opens a second batch");
        let request = acc.take_request(t0, false).unwrap();
        assert_eq!(request.batches.len(), 1);
        assert_eq!(request.batches[0].records.len(), 2);
    }

    #[test]
    fn a_record_larger_than_a_batch_travels_alone() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(limits(64, 4 << 20), Partitioner::new(1, 0));
        let big = acc.append(record(None, Some(0), 1000), t0).unwrap();
        assert_eq!(big.index, 0);
        let request = acc.take_request(t0, false).unwrap();
        assert_eq!(request.batches[0].records.len(), 1);
    }

    #[test]
    fn null_keys_fill_one_partition_then_move_on() {
        let t0 = Instant::now();
        let size = record(None, None, 100).estimated_bytes();
        let mut acc = Accumulator::new(limits(2 * size, 4 << 20), Partitioner::new(3, 0));
        let placed: Vec<u32> = (0..6)
            .map(|_| acc.append(record(None, None, 100), t0).unwrap().partition)
            .collect();
        assert_eq!(placed, vec![0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn keyed_records_follow_murmur2() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(limits(1 << 20, 4 << 20), Partitioner::new(10, 0));
        assert_eq!(
            acc.append(record(Some("foobar"), None, 1), t0)
                .unwrap()
                .partition,
            6
        );
        assert!(acc.append(record(None, Some(10), 1), t0).is_err());
    }

    #[test]
    fn a_busy_partition_waits_and_keeps_its_order() {
        let t0 = Instant::now();
        let size = record(None, Some(0), 100).estimated_bytes();
        let mut acc = Accumulator::new(limits(size, 4 << 20), Partitioner::new(2, 0));
        acc.append(record(None, Some(0), 100), t0).unwrap();
        let first = acc.take_request(t0, false).unwrap();
        assert_eq!(partitions_of(&first), vec![0]);
        // Partition 0 is in flight: its next batches wait, partition 1 does not.
        acc.append(record(None, Some(0), 100), t0).unwrap();
        acc.append(record(None, Some(0), 100), t0).unwrap();
        acc.append(record(None, Some(1), 100), t0).unwrap();
        let second = acc.take_request(t0, false).unwrap();
        assert_eq!(partitions_of(&second), vec![1]);
        assert!(acc.take_request(t0, false).is_none());
        done(&mut acc, &first);
        let third = acc.take_request(t0, false).unwrap();
        assert_eq!(partitions_of(&third), vec![0, 0]);
        assert!(third.batches[0].id < third.batches[1].id);
    }

    #[test]
    fn requests_stop_at_request_bytes_without_reordering_a_partition() {
        let t0 = Instant::now();
        let size = record(None, Some(0), 100).estimated_bytes();
        // One record per batch; a request holds two batches.
        let mut acc = Accumulator::new(limits(size, 2 * size), Partitioner::new(2, 0));
        acc.append(record(None, Some(0), 100), t0).unwrap();
        acc.append(record(None, Some(0), 100), t0).unwrap();
        acc.append(record(None, Some(0), 100), t0).unwrap();
        acc.append(record(None, Some(1), 100), t0).unwrap();
        let first = acc.take_request(t0, false).unwrap();
        assert_eq!(partitions_of(&first), vec![0, 0]);
        let second = acc.take_request(t0, false).unwrap();
        assert_eq!(partitions_of(&second), vec![1]);
        assert!(acc.take_request(t0, false).is_none());
    }

    #[test]
    fn close_all_sends_before_the_linger() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(limits(1 << 20, 4 << 20), Partitioner::new(3, 0));
        acc.append(record(None, Some(2), 1), t0).unwrap();
        acc.append(record(None, Some(0), 1), t0).unwrap();
        assert_eq!(acc.pending_outcomes().len(), 2);
        let request = acc.take_request(t0, true).unwrap();
        assert_eq!(partitions_of(&request), vec![2, 0], "creation order");
        assert_eq!(acc.next_deadline(), None);
    }

    #[test]
    fn the_buffer_limit_applies_once_something_is_buffered() {
        let t0 = Instant::now();
        let mut limits = limits(1 << 20, 4 << 20);
        limits.buffer_bytes = 100;
        let mut acc = Accumulator::new(limits, Partitioner::new(1, 0));
        assert!(acc.has_room());
        acc.append(record(None, None, 500), t0).unwrap();
        assert!(!acc.has_room());
        let _request = acc.take_request(t0, true).unwrap();
        assert!(acc.has_room());
    }
}
