//! The checker: every acknowledged record must be readable exactly once, at its acknowledged
//! offset, with its bytes; offsets are dense; per-partition order holds. Reusable by any test
//! that produces under faults.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use silt_client::{Client, PartitionReader, StartSpec};

/// One acknowledged record.
#[derive(Debug, Clone)]
struct Acked {
    /// Order in which the producer sent it within its partition.
    send_seq: u64,
    value: Bytes,
}

/// Collects acknowledgements, then reads the topic back and compares.
#[derive(Debug, Default)]
pub struct Checker {
    acked: Mutex<HashMap<u32, BTreeMap<i64, Acked>>>,
    failed: Mutex<u64>,
}

/// The outcome of [`Checker::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub acked: u64,
    /// Produce calls that returned an error (their records may or may not be stored).
    pub failed: u64,
    /// Records read back (all partitions, from the log start to the high watermark).
    pub read: u64,
    /// Acknowledged records missing or with other bytes at their offset.
    pub lost: u64,
    /// Acknowledged values found at more than one offset.
    pub duplicated: u64,
    /// Pairs of acknowledged records of one partition stored in another order than sent.
    pub reordered: u64,
    /// Offsets skipped between the log start and the high watermark.
    pub gaps: u64,
}

impl CheckReport {
    /// Panics with the counts unless nothing was lost, duplicated, reordered or skipped.
    pub fn assert_clean(&self) {
        eprintln!("checker: {self:?}");
        assert_eq!(
            (self.lost, self.duplicated, self.reordered, self.gaps),
            (0, 0, 0, 0),
            "checker found violations: {self:?}"
        );
    }
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `value`, the `send_seq`-th record sent to `partition`, was acknowledged at
    /// `offset`. Panics if two records were acknowledged at one offset.
    pub fn acked(&self, partition: u32, offset: i64, send_seq: u64, value: Bytes) {
        let mut acked = self.acked.lock().unwrap();
        let previous = acked
            .entry(partition)
            .or_default()
            .insert(offset, Acked { send_seq, value });
        assert!(
            previous.is_none(),
            "two records acknowledged at partition {partition} offset {offset}"
        );
    }

    /// Records a produce call that failed.
    pub fn failed(&self) {
        *self.failed.lock().unwrap() += 1;
    }

    /// Number of acknowledged records so far.
    pub fn acked_count(&self) -> u64 {
        self.acked
            .lock()
            .unwrap()
            .values()
            .map(|p| p.len() as u64)
            .sum()
    }

    /// Prints acknowledged records whose value is stored more than once (debugging aid).
    pub async fn dump_duplicates(&self, client: &Client, topic: &str) {
        let acked = self.acked.lock().unwrap().clone();
        let mut shown = 0;
        for (partition, records) in &acked {
            let stored = read_partition(client, topic, *partition).await;
            for (offset, record) in records {
                let at: Vec<i64> = stored
                    .iter()
                    .filter(|(_, v)| **v == record.value)
                    .map(|(o, _)| *o)
                    .collect();
                if at.len() > 1 && shown < 10 {
                    shown += 1;
                    eprintln!(
                        "partition {partition}: acked offset {offset} (send {}) value stored at {at:?}: {:?}",
                        record.send_seq,
                        String::from_utf8_lossy(&record.value[..40.min(record.value.len())])
                    );
                }
            }
        }
    }

    /// Reads every partition of `topic` from its log start to its high watermark and compares.
    pub async fn verify(&self, client: &Client, topic: &str) -> CheckReport {
        let described = client.describe_topic(topic).await.expect("describe topic");
        let partitions = described.topic.expect("topic info").partitions;
        let acked = self.acked.lock().unwrap().clone();
        let mut report = CheckReport {
            acked: acked.values().map(|p| p.len() as u64).sum(),
            failed: *self.failed.lock().unwrap(),
            ..CheckReport::default()
        };
        let mut seen_values: HashMap<Bytes, u32> = HashMap::new();
        for partition in 0..partitions {
            let stored = read_partition(client, topic, partition).await;
            report.read += stored.len() as u64;
            let mut expected_next: Option<i64> = None;
            for (offset, value) in &stored {
                if let Some(next) = expected_next
                    && *offset != next
                {
                    report.gaps += (*offset - next).unsigned_abs();
                }
                expected_next = Some(*offset + 1);
                *seen_values.entry(value.clone()).or_default() += 1;
            }
            let Some(mine) = acked.get(&partition) else {
                continue;
            };
            for (offset, record) in mine {
                if stored.get(offset) != Some(&record.value) {
                    report.lost += 1;
                }
            }
            // Sorted by offset, send order must increase.
            let mut last_seq = None;
            for record in mine.values() {
                if last_seq.is_some_and(|last| record.send_seq < last) {
                    report.reordered += 1;
                }
                last_seq = Some(record.send_seq);
            }
        }
        for partition in acked.values() {
            for record in partition.values() {
                if seen_values.get(&record.value).copied().unwrap_or(0) > 1 {
                    report.duplicated += 1;
                }
            }
        }
        report
    }
}

/// Every record of a partition, offset → value.
pub async fn read_partition(client: &Client, topic: &str, partition: u32) -> BTreeMap<i64, Bytes> {
    let mut reader = PartitionReader::new(client, topic, partition, StartSpec::Earliest)
        .await
        .expect("reader");
    let end = reader.high_watermark();
    let mut out = BTreeMap::new();
    while reader.next_offset() < end {
        let records = reader
            .next_batch(Duration::from_millis(100))
            .await
            .expect("fetch");
        for r in records {
            if r.offset < end {
                out.insert(r.offset, r.value.unwrap_or_default());
            }
        }
    }
    out
}
