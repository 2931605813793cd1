//! The fast-path producer, shaped like Kafka's: [`Producer::send`] routes a record to a partition
//! (see [`crate::partitioner`]) and appends it to that partition's batch; batches close at
//! `batch_bytes` or after `linger`, travel as Kafka RecordBatch v2 bytes in `ProduceBatches`
//! requests of several partitions (up to `request_bytes`), and each record's [`SendFuture`]
//! resolves to its `(partition, offset)` once the broker acknowledged it — which the broker does
//! only when the record is durable in object storage and committed.
//!
//! Routing: a request's batches are split by the owner of their partition (the client's
//! routing table) and sent as one `ProduceBatches` per owner, concurrently; a partition with no
//! known owner goes to any broker, which forwards it. Sending to a wrong broker still works
//! (one forwarding hop), so a stale table costs latency, not records.
//!
//! Flow control: at most `max_in_flight` requests are outstanding and each partition has at
//! most one of them, so records of a partition are stored in send order, retries included.
//! While the request slots are full, batches wait in memory; once `max_in_flight ×
//! request_bytes` bytes wait, [`Producer::send`] itself waits.
//!
//! Retries (UNAVAILABLE, RESOURCE_EXHAUSTED, transport failures) refresh the routing table and
//! back off, within `retry_for` and `max_retries`, long enough by default to ride through a
//! broker's death and the reassignment of its partitions. An error marked `silt-not-stored`
//! stored nothing and is always safe to retry; an *ambiguous* one (no answer, or UNAVAILABLE
//! without the mark) may have been committed, so retrying it gives at-least-once delivery
//! (`retry_ambiguous`, the default) and not retrying it fails the records instead, so that
//! every acknowledged record is stored exactly once.

mod accumulator;
mod plan;
mod sender;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use silt_storage::batch::BatchCompression;
use tokio::sync::{Notify, Semaphore, watch};

use self::accumulator::{Accumulator, Limits, Outcome, PendingRecord};
use self::sender::{RetryPolicy, Shared};
use crate::client::Client;
use crate::clock::unix_now_ms;
use crate::error::ClientError;
use crate::partitioner::Partitioner;

/// How a [`Producer`] batches and sends.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records before it is sent (default 5 ms).
    pub linger: Duration,
    /// Size at which a partition's batch is sent without waiting for the linger (default
    /// 256 KiB, counted before compression).
    pub batch_bytes: usize,
    /// Codec of the batches (default none).
    pub compression: BatchCompression,
    /// Most `ProduceBatches` requests outstanding at once (default 8).
    pub max_in_flight: usize,
    /// Soft limit on one request's batch bytes (default 4 MiB; one batch is always sent).
    pub request_bytes: usize,
    /// Most retries of one batch (UNAVAILABLE, RESOURCE_EXHAUSTED, transport failures) before
    /// its records fail (default 1000). Retries end at this count or when `retry_for` has
    /// passed, whichever comes first; with the defaults the time budget is the one that ends
    /// them. 0 disables retries.
    pub max_retries: u32,
    /// How long after its first attempt a batch may still be retried (default 30 s: more than
    /// a broker failover, lease TTL + 1 s). A retry whose backoff would end later is not made.
    pub retry_for: Duration,
    /// Whether an *ambiguous* failure — no answer from the broker, or UNAVAILABLE without the
    /// `silt-not-stored` mark — is retried (default true: at-least-once, a record may be stored
    /// twice). When false such a failure fails the batch's records with the error, so an
    /// acknowledged record is stored exactly once; errors marked not-stored are still retried.
    pub retry_ambiguous: bool,
    /// How long one `ProduceBatches` call may take before it is abandoned as a transport
    /// failure (an ambiguous one) (default 30 s).
    pub request_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            batch_bytes: 256 << 10,
            compression: BatchCompression::None,
            max_in_flight: 8,
            request_bytes: 4 << 20,
            max_retries: 1000,
            retry_for: Duration::from_secs(30),
            retry_ambiguous: true,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The key; `None` is a null key (sticky spreading unless `partition` is set).
    pub key: Option<Bytes>,
    /// The value; must be empty when `null_value` is set.
    pub value: Bytes,
    /// True: the value is null — a tombstone, which in a compacted topic deletes its key
    /// ([`ProducerRecord::tombstone`]).
    pub null_value: bool,
    /// Headers: a string key and an optional value each.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Creation time in ms since the Unix epoch; `None` takes the time of [`Producer::send`].
    pub timestamp_ms: Option<i64>,
    /// Explicit partition; `None` hashes the key with murmur2 (as Kafka does).
    pub partition: Option<u32>,
}

impl ProducerRecord {
    /// A record with this value and nothing else set.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            value: value.into(),
            ..Self::default()
        }
    }

    /// A tombstone for `key`: a record with a null value, which in a compacted topic deletes
    /// the key (its earlier records go at the next compaction, the tombstone itself after the
    /// topic's `delete_retention_ms`).
    pub fn tombstone(key: impl Into<Bytes>) -> Self {
        Self {
            key: Some(key.into()),
            null_value: true,
            ..Self::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the creation timestamp (ms since the Unix epoch).
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: Option<Bytes>) -> Self {
        self.headers.push((key.into(), value));
        self
    }

    /// Key + value + header bytes: what the topic's `max_record_bytes` limits.
    fn payload_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
    }
}

/// Resolves to a sent record's `(partition, offset)` once the broker acknowledged it (it is then
/// durable), or to the error that made it fail.
#[must_use = "a SendFuture tells whether the record was stored"]
pub struct SendFuture {
    partition: u32,
    inner: Pin<Box<dyn Future<Output = AckResult> + Send>>,
}

/// A record's `(partition, offset)`, or why it was not stored.
pub type AckResult = Result<(u32, i64), ClientError>;

impl SendFuture {
    fn new(partition: u32, index: usize, mut outcome: watch::Receiver<Outcome>) -> Self {
        let inner = Box::pin(async move {
            let resolved = outcome
                .wait_for(Option::is_some)
                .await
                .map_err(|_| ClientError::Closed)?;
            match resolved.as_ref() {
                Some(Ok(base_offset)) => Ok((partition, base_offset + index as i64)),
                Some(Err(e)) => Err(e.clone()),
                None => Err(ClientError::Closed),
            }
        });
        Self { partition, inner }
    }

    /// The partition the record was routed to.
    pub fn partition(&self) -> u32 {
        self.partition
    }
}

impl Future for SendFuture {
    type Output = AckResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for SendFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendFuture")
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

/// A producer for one topic. Share it by reference (or in an `Arc`) between tasks; dropping it
/// still sends what was buffered, [`Producer::close`] also waits for it.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    topic: String,
    partitions: u32,
    max_record_bytes: u32,
    /// The topic's `cleanup_policy` included `compact` when the producer was created: every
    /// record needs a key.
    compacted: bool,
}

impl Producer {
    /// Creates a producer for `topic`, whose partition count and record limit are read once
    /// with `DescribeTopic` (NOT_FOUND if the topic does not exist), and loads the topic's
    /// partition owners into the client's routing table.
    pub async fn new(
        client: &Client,
        topic: &str,
        config: ProducerConfig,
    ) -> Result<Producer, ClientError> {
        if config.max_in_flight == 0 || config.batch_bytes == 0 || config.request_bytes == 0 {
            return Err(ClientError::InvalidArgument(
                "producer max_in_flight, batch_bytes and request_bytes must be at least 1".into(),
            ));
        }
        let described = client.describe_topic(topic).await?;
        let info = described.topic.unwrap_or_default();
        if info.partitions == 0 {
            return Err(ClientError::Protocol(format!(
                "topic '{topic}' has no partitions"
            )));
        }
        let limits = Limits {
            linger: config.linger,
            batch_bytes: config.batch_bytes,
            request_bytes: config.request_bytes,
            buffer_bytes: config.max_in_flight.saturating_mul(config.request_bytes),
        };
        let partitioner = Partitioner::new(info.partitions, rand::random::<u32>());
        let shared = Arc::new(Shared {
            accumulator: Mutex::new(Accumulator::new(limits, partitioner)),
            wake: Notify::new(),
            space: Notify::new(),
            closing: Default::default(),
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            client: client.clone(),
            topic: topic.to_string(),
            compression: config.compression,
            retry: RetryPolicy {
                max_retries: config.max_retries,
                retry_for: config.retry_for,
                retry_ambiguous: config.retry_ambiguous,
                request_timeout: config.request_timeout,
            },
        });
        // Learn the partition owners before the first batch is sent.
        client.routes(topic).await;
        tokio::spawn(sender::run(shared.clone()));
        Ok(Producer {
            shared,
            topic: topic.to_string(),
            partitions: info.partitions,
            max_record_bytes: info.max_record_bytes,
            compacted: info
                .cleanup_policy
                .split(',')
                .any(|p| p.trim() == "compact"),
        })
    }

    /// The topic this producer writes.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's partition count, as read at creation.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Buffers `record` for sending and returns the future of its acknowledgement. Waits while
    /// the producer's buffer is full (the broker is behind); fails at once for a record the
    /// topic cannot take (too large, partition out of range, no key for a compacted topic, a
    /// null value with bytes).
    pub async fn send(&self, record: ProducerRecord) -> Result<SendFuture, ClientError> {
        if record.null_value && !record.value.is_empty() {
            return Err(ClientError::InvalidArgument(format!(
                "a record with null_value set must have an empty value; this one has {} bytes",
                record.value.len()
            )));
        }
        // The broker refuses a whole batch holding a record without a key for a compacted
        // topic: refuse the record alone here.
        if self.compacted && record.key.is_none() {
            return Err(ClientError::InvalidArgument(format!(
                "topic '{}' is compacted: every record needs a key",
                self.topic
            )));
        }
        if self.max_record_bytes > 0 && record.payload_bytes() > self.max_record_bytes as usize {
            return Err(ClientError::InvalidArgument(format!(
                "record of {} bytes is over the {}-byte record limit of topic '{}'",
                record.payload_bytes(),
                self.max_record_bytes,
                self.topic
            )));
        }
        let record = PendingRecord {
            timestamp_ms: record.timestamp_ms.unwrap_or_else(unix_now_ms),
            key: record.key,
            value: (!record.null_value).then_some(record.value),
            headers: record.headers,
            partition: record.partition,
        };
        loop {
            let space = self.shared.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut acc = self.shared.lock();
                if acc.has_room() {
                    let appended = acc.append(record, Instant::now())?;
                    drop(acc);
                    if appended.wake_sender {
                        self.shared.wake.notify_one();
                    }
                    return Ok(SendFuture::new(
                        appended.partition,
                        appended.index,
                        appended.outcome,
                    ));
                }
            }
            self.shared.wake.notify_one();
            space.await;
        }
    }

    /// Sends every buffered record now and waits until all records sent before this call are
    /// acknowledged or failed. Returns the first failure, if any (each record's [`SendFuture`]
    /// has its own outcome too).
    pub async fn flush(&self) -> Result<(), ClientError> {
        let outcomes = {
            let mut acc = self.shared.lock();
            acc.close_all();
            acc.pending_outcomes()
        };
        self.shared.wake.notify_one();
        let mut first_error = None;
        for mut outcome in outcomes {
            let result = match outcome.wait_for(Option::is_some).await {
                Ok(resolved) => match resolved.as_ref() {
                    Some(Err(e)) => Some(e.clone()),
                    _ => None,
                },
                Err(_) => Some(ClientError::Closed),
            };
            if first_error.is_none() {
                first_error = result;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Flushes and stops the producer.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await
        // Drop marks the sender task closing; with nothing pending it ends.
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kafka_like() {
        let c = ProducerConfig::default();
        assert_eq!(c.linger, Duration::from_millis(5));
        assert_eq!(c.batch_bytes, 256 * 1024);
        assert_eq!(c.max_in_flight, 8);
        assert_eq!(c.request_bytes, 4 * 1024 * 1024);
        assert_eq!(c.compression, BatchCompression::None);
        assert!(
            c.retry_for > Duration::from_secs(7),
            "rides through a failover"
        );
        assert!(c.retry_ambiguous, "at-least-once by default");
    }

    #[test]
    fn record_builder_and_payload_size() {
        let r = ProducerRecord::new("value")
            .with_key("k")
            .with_partition(2)
            .with_timestamp_ms(7)
            .with_header("h", Some(Bytes::from_static(b"xy")));
        assert_eq!(r.partition, Some(2));
        assert_eq!(r.timestamp_ms, Some(7));
        assert_eq!(r.payload_bytes(), 5 + 1 + 1 + 2);
    }

    #[tokio::test]
    async fn send_future_resolves_to_partition_and_offset() {
        let (tx, rx) = watch::channel(None);
        let fut = SendFuture::new(3, 2, rx);
        assert_eq!(fut.partition(), 3);
        tx.send_replace(Some(Ok(40)));
        assert_eq!(fut.await.unwrap(), (3, 42));
    }

    #[tokio::test]
    async fn send_future_reports_the_batch_error_or_a_lost_sender() {
        let (tx, rx) = watch::channel(None);
        let fut = SendFuture::new(0, 0, rx);
        tx.send_replace(Some(Err(tonic::Status::not_found("gone").into())));
        assert_eq!(fut.await.unwrap_err().code(), tonic::Code::NotFound);
        let (tx, rx) = watch::channel(None);
        drop(tx);
        assert!(matches!(
            SendFuture::new(0, 0, rx).await,
            Err(ClientError::Closed)
        ));
    }
}
