//! The produce path on the partitions' owner, before the WAL cache: request limits and batch
//! validation. Records arrive here routed ([`crate::core::routing`] chose each partition).
//!
//! Fast path ([`ProducePath::produce_batches`]): client-built RecordBatch v2 bytes are validated
//! (`silt_storage::batch::validate_batch`) and appended as they are; one bad batch refuses the
//! whole request and nothing is stored. Per-record path ([`ProducePath::produce_records`]):
//! records are checked one by one (a bad record fails alone) and encoded into one batch per
//! partition. Both then wait on the [`DurableTicket`](crate::core::wal_cache::DurableTicket):
//! next, the records go to the [flusher](crate::core::flusher).

use std::sync::Arc;

use bytes::Bytes;
use silt_metadata::Clock;
use silt_metadata::catalog::Topic;
use silt_storage::batch::{
    BatchCompression, BatchHeader, BatchLimits, ProducerInfo, RecordData, encode_batch,
    validate_batch,
};
use silt_storage::segment::BORROW_MIN;

use crate::core::error::BrokerError;
use crate::core::topics::{TopicTable, check_partition};
use crate::core::wal_cache::{AppendBatch, BatchAck, WalCache};
use crate::observe::metrics::Metrics;

/// A record of a per-record produce request.
#[derive(Debug, Clone, Default)]
pub struct RecordInput {
    pub key: Option<Bytes>,
    /// `None`: a null value (a tombstone: in a compacted topic it deletes its key).
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp_ms: Option<i64>,
    /// Set by the caller or by the [router](crate::core::routing); required here.
    pub partition: Option<u32>,
}

/// Where one record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordAck {
    pub partition: u32,
    pub offset: i64,
}

/// Request-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ProduceLimits {
    /// Most record bytes (batch bytes, or keys + values + headers) in one request.
    pub max_request_bytes: usize,
    pub max_request_records: usize,
    pub max_batch_bytes: usize,
    /// Most bytes the batches of one request may decompress to.
    pub max_uncompressed_bytes: u64,
}

/// The request-level checks of a `ProduceBatches` request (count and bytes of its batches).
fn check_request_shape(
    batches: &[(u32, Bytes)],
    limits: &ProduceLimits,
) -> Result<(), BrokerError> {
    if batches.is_empty() {
        return Err(BrokerError::invalid("the request holds no batches"));
    }
    if batches.len() > limits.max_request_records {
        return Err(BrokerError::invalid(format!(
            "the request holds {} batches; the limit is {} per request (broker setting max-request-records)",
            batches.len(),
            limits.max_request_records
        )));
    }
    let total: usize = batches.iter().map(|(_, b)| b.len()).sum();
    if total > limits.max_request_bytes {
        return Err(BrokerError::invalid(format!(
            "the request carries {total} bytes of batches; the limit is {} per request (broker setting max-request-bytes): send fewer or smaller batches per request",
            limits.max_request_bytes
        )));
    }
    Ok(())
}

/// Validates every batch of a request, all or nothing, within one decompression budget.
fn check_batches(
    topic: &Topic,
    batches: Vec<(u32, Bytes)>,
    limits: &ProduceLimits,
) -> Result<(Vec<AppendBatch>, u64, u64), BrokerError> {
    let mut budget = limits.max_uncompressed_bytes;
    let mut append = Vec::with_capacity(batches.len());
    let (mut records, mut bytes) = (0u64, 0u64);
    for (i, (partition, batch)) in batches.into_iter().enumerate() {
        check_partition(topic, partition).map_err(|e| e.context(format_args!("batch {i}")))?;
        let batch_limits = BatchLimits {
            max_batch_bytes: limits.max_batch_bytes,
            max_record_bytes: topic.record.max_record_bytes as usize,
            max_uncompressed_bytes: budget,
        };
        let valid = validate_batch(&batch, &batch_limits).map_err(|e| {
            BrokerError::invalid(format!(
                "batch {i} (partition {partition}) is invalid, nothing was stored: {e}"
            ))
        })?;
        if valid.null_keys > 0 && topic.record.cleanup_policy.compacts() {
            return Err(null_key(
                topic,
                format_args!(
                    "batch {i} (partition {partition}) holds {} records without a key; nothing was stored:",
                    valid.null_keys
                ),
            ));
        }
        budget -= valid.uncompressed_bytes;
        records += u64::from(valid.record_count);
        bytes += batch.len() as u64;
        append.push(AppendBatch {
            topic_id: topic.id,
            partition,
            record_count: valid.record_count,
            first_timestamp: valid.header.base_timestamp,
            max_timestamp: valid.header.max_timestamp,
            bytes: batch,
        });
    }
    Ok((append, records, bytes))
}

/// A flush references batches of [`BORROW_MIN`] bytes or more instead of copying them, and the
/// read cache keeps those references until first read, holding the whole buffer the request
/// arrived in (`request_bytes` long, including the parts of it other brokers store). The cache
/// weighs them at twice their length, which bounds that buffer only when they are at least half
/// the request: otherwise (a few large batches among many small ones, or a small local part of
/// a request mostly forwarded) they are copied out here, so a request's buffer is never held
/// for a small part of it.
pub(crate) fn own_small_shares(batches: &mut [(u32, Bytes)], request_bytes: usize) {
    let borrowed: usize = batches
        .iter()
        .map(|(_, b)| b.len())
        .filter(|len| *len >= BORROW_MIN)
        .sum();
    if borrowed > 0 && borrowed * 2 < request_bytes {
        for (_, b) in batches.iter_mut().filter(|(_, b)| b.len() >= BORROW_MIN) {
            *b = Bytes::copy_from_slice(b);
        }
    }
}

/// A record without a key sent to a compacted topic: Kafka's INVALID_RECORD, here
/// INVALID_ARGUMENT (key compaction keeps records by key; a null key has none).
fn null_key(topic: &Topic, what: std::fmt::Arguments<'_>) -> BrokerError {
    BrokerError::invalid(format!(
        "{what} topic '{}' is compacted (cleanup_policy={}): every record needs a key",
        topic.record.name, topic.record.cleanup_policy
    ))
}

/// Validates and routes produce requests into the WAL cache.
#[derive(Debug)]
pub struct ProducePath {
    pub topics: Arc<TopicTable>,
    pub wal: Arc<WalCache>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub limits: ProduceLimits,
    /// Compressed requests being checked at once (one per core).
    decompressing: tokio::sync::Semaphore,
}

impl ProducePath {
    pub fn new(
        topics: Arc<TopicTable>,
        wal: Arc<WalCache>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        limits: ProduceLimits,
    ) -> Self {
        Self {
            topics,
            wal,
            clock,
            metrics,
            limits,
            decompressing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        }
    }

    /// Appends client-built batches; returns one ack per batch once all are durable.
    pub async fn produce_batches(
        &self,
        topic: &str,
        batches: Vec<(u32, Bytes)>,
    ) -> Result<Vec<BatchAck>, BrokerError> {
        let topic = self.topics.require(topic)?;
        let (append, records, bytes) = self.validate_batches(&topic, batches).await?;
        self.append(&topic.record.name, append, records, bytes)
            .await
    }

    /// Checks a whole `ProduceBatches` request — limits, partitions, every batch — without
    /// storing anything; returns the batches to append with their record and byte counts.
    /// Compressed batches are checked on a blocking thread (decompression is CPU work that must
    /// not stall the async workers), at most one request per core at a time, and the request's
    /// batches together may decompress to at most `max_uncompressed_bytes`.
    pub async fn validate_batches(
        &self,
        topic: &Topic,
        batches: Vec<(u32, Bytes)>,
    ) -> Result<(Vec<AppendBatch>, u64, u64), BrokerError> {
        check_request_shape(&batches, &self.limits)?;
        let compressed = batches.iter().any(|(_, b)| {
            BatchHeader::read(b).is_ok_and(|h| h.compression() != Some(BatchCompression::None))
        });
        if !compressed {
            return check_batches(topic, batches, &self.limits);
        }
        let _permit = self
            .decompressing
            .acquire()
            .await
            .map_err(|_| BrokerError::unavailable("the broker is shutting down"))?;
        let (topic, limits) = (topic.clone(), self.limits);
        tokio::task::spawn_blocking(move || check_batches(&topic, batches, &limits))
            .await
            .map_err(|e| BrokerError::internal(format!("batch validation failed: {e}")))?
    }

    /// Appends validated batches and waits until they are durable.
    async fn append(
        &self,
        topic: &str,
        append: Vec<AppendBatch>,
        records: u64,
        bytes: u64,
    ) -> Result<Vec<BatchAck>, BrokerError> {
        let acks = self.wal.append(append)?.durable().await?;
        self.metrics.produced(topic, records, bytes);
        Ok(acks)
    }

    /// Appends records one by one; returns one result per record, in request order.
    pub async fn produce_records(
        &self,
        topic: &str,
        records: Vec<RecordInput>,
    ) -> Result<Vec<Result<RecordAck, BrokerError>>, BrokerError> {
        let topic = self.topics.require(topic)?;
        if records.is_empty() {
            return Err(BrokerError::invalid("the request holds no records"));
        }
        if records.len() > self.limits.max_request_records {
            return Err(BrokerError::invalid(format!(
                "the request holds {} records; the limit is {} per request (broker setting max-request-records)",
                records.len(),
                self.limits.max_request_records
            )));
        }
        let total: usize = records
            .iter()
            .map(|r| {
                r.key.as_ref().map_or(0, Bytes::len)
                    + r.value.as_ref().map_or(0, Bytes::len)
                    + r.headers
                        .iter()
                        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
                        .sum::<usize>()
            })
            .sum();
        if total > self.limits.max_request_bytes {
            return Err(BrokerError::invalid(format!(
                "the request carries {total} bytes of records; the limit is {} per request (broker setting max-request-bytes): send fewer records per request",
                self.limits.max_request_bytes
            )));
        }
        let max_record = topic.record.max_record_bytes as usize;
        let now = self.clock.now_ms();

        // Check each record; group the good ones per partition, in order.
        let mut results: Vec<Result<RecordAck, BrokerError>> = Vec::with_capacity(records.len());
        let mut groups: Vec<(u32, Vec<RecordData>, Vec<usize>)> = Vec::new();
        let mut group_of: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        for (i, r) in records.into_iter().enumerate() {
            let size = r.key.as_ref().map_or(0, Bytes::len)
                + r.value.as_ref().map_or(0, Bytes::len)
                + r.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
                    .sum::<usize>();
            let Some(partition) = r.partition else {
                results.push(Err(BrokerError::internal(format!(
                    "record {i} reached the produce path without a partition"
                ))));
                continue;
            };
            let check = if size > max_record {
                Err(BrokerError::invalid(format!(
                    "record {i} is {size} bytes; topic '{}' accepts at most {max_record} (the topic's max_record_bytes)",
                    topic.record.name
                )))
            } else if r.key.is_none() && topic.record.cleanup_policy.compacts() {
                Err(null_key(&topic, format_args!("record {i}")))
            } else if let Some(ts) = r.timestamp_ms.filter(|ts| *ts < 0) {
                Err(BrokerError::invalid(format!(
                    "record {i} has negative timestamp {ts}"
                )))
            } else {
                check_partition(&topic, partition)
            };
            if let Err(e) = check {
                results.push(Err(e));
                continue;
            }
            results.push(Ok(RecordAck {
                partition,
                offset: -1,
            }));
            let data = RecordData {
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp_ms: r.timestamp_ms.unwrap_or(now),
            };
            let g = *group_of.entry(partition).or_insert_with(|| {
                groups.push((partition, Vec::new(), Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(data);
            groups[g].2.push(i);
        }
        if groups.is_empty() {
            return Ok(results);
        }

        let mut append = Vec::with_capacity(groups.len());
        let (mut count, mut bytes) = (0u64, 0u64);
        for (partition, recs, _) in &groups {
            let batch = encode_batch(recs, BatchCompression::None, ProducerInfo::default())
                .map_err(|e| BrokerError::internal(format!("encoding a batch failed: {e}")))?;
            if batch.len() > self.limits.max_batch_bytes {
                return Err(BrokerError::invalid(format!(
                    "the records for partition {partition} make a {}-byte batch; the limit is {} (broker setting max-batch-bytes): send fewer records per request",
                    batch.len(),
                    self.limits.max_batch_bytes
                )));
            }
            let first = recs.iter().map(|r| r.timestamp_ms).min().unwrap_or(now);
            let max = recs.iter().map(|r| r.timestamp_ms).max().unwrap_or(now);
            count += recs.len() as u64;
            bytes += batch.len() as u64;
            append.push(AppendBatch {
                topic_id: topic.id,
                partition: *partition,
                bytes: batch,
                record_count: recs.len() as u32,
                first_timestamp: first,
                max_timestamp: max,
            });
        }
        let acks = self.wal.append(append)?.durable().await?;
        self.metrics.produced(&topic.record.name, count, bytes);
        for ((partition, _, idx), ack) in groups.iter().zip(acks) {
            for (n, i) in idx.iter().enumerate() {
                results[*i] = Ok(RecordAck {
                    partition: *partition,
                    offset: ack.base_offset + n as i64,
                });
            }
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(buffer: &Bytes, cuts: &[usize]) -> Vec<(u32, Bytes)> {
        cuts.windows(2)
            .map(|w| (0, buffer.slice(w[0]..w[1])))
            .collect()
    }

    fn inside(buffer: &Bytes, b: &Bytes) -> bool {
        let start = buffer.as_ptr() as usize;
        (start..start + buffer.len()).contains(&(b.as_ptr() as usize))
    }

    #[test]
    fn large_batches_keep_their_request_buffer_only_when_they_are_most_of_it() {
        let buffer = Bytes::from(vec![7u8; 64 * BORROW_MIN]);
        // One large batch among many small ones: copied out, with the same bytes.
        let mut cuts = vec![0, BORROW_MIN];
        cuts.extend((1..=120).map(|i| BORROW_MIN + i * (BORROW_MIN / 4)));
        let mut local = batches(&buffer, &cuts);
        let before = local.clone();
        own_small_shares(&mut local, *cuts.last().unwrap());
        assert!(!inside(&buffer, &local[0].1));
        assert!(local[1..].iter().all(|(_, b)| inside(&buffer, b)));
        assert_eq!(before, local);
        // Large batches that are most of the request stay references...
        let mut local = batches(
            &buffer,
            &[0, 40 * BORROW_MIN, 41 * BORROW_MIN, 64 * BORROW_MIN],
        );
        own_small_shares(&mut local, buffer.len());
        assert!(local.iter().all(|(_, b)| inside(&buffer, b)));
        // ... unless they are a small local part of a request mostly stored elsewhere.
        let mut local = batches(&buffer, &[0, 4 * BORROW_MIN]);
        own_small_shares(&mut local, buffer.len());
        assert!(!inside(&buffer, &local[0].1));
    }
}
