//! Reading one partition on the `Fetch` fast path: [`PartitionReader`] resolves where to start
//! ([`StartSpec`], through `ListOffsets`), then fetches the stored Kafka RecordBatch v2 bytes as
//! they are (`raw_batches`) and decodes them here with `silt_storage::batch::decode_batches`, so
//! the broker only copies bytes. Each [`PartitionReader::next_batch`] returns the records from
//! `next_offset` on and advances it; it long-polls when the reader has caught up.
//!
//! Any broker serves reads; a reader starts on the partition's owner, whose read cache holds
//! the segments it just wrote, so a tail reader costs no GET. It is not tied to it: when its broker fails (a transport
//! error, UNAVAILABLE, no answer in time) it refreshes the client's broker list and continues
//! from `next_offset` on the next known broker, a bounded number of times with backoff, so a
//! consumer keeps reading while brokers come and go.

use std::time::Duration;

use bytes::Bytes;
use silt_api::v1::start_position::Position;
use silt_api::v1::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, StartPosition,
};
use silt_storage::batch::{DecodedRecord, decode_batches};

use crate::client::{Client, fails_over, log_client};
use crate::error::ClientError;

/// Default soft limit on the bytes of one fetch.
pub const DEFAULT_FETCH_BYTES: u32 = 4 << 20;

/// How many times one [`PartitionReader::next_batch`] moves to another broker before it
/// returns the error.
const READ_FAILOVERS: u32 = 8;
/// First pause before reading from another broker; doubled (with jitter) per failover up to
/// [`MAX_READ_BACKOFF`] (about 10 s in all: a broker's death and its lease running out).
const READ_BACKOFF: Duration = Duration::from_millis(100);
const MAX_READ_BACKOFF: Duration = Duration::from_secs(2);
/// How much longer than its long-poll wait a fetch may take before the broker counts as gone.
const FETCH_GRACE: Duration = Duration::from_secs(15);

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartSpec {
    /// The log start offset: everything still stored.
    Earliest,
    /// The high watermark when the reader is created: only records produced later.
    Latest,
    /// An explicit offset.
    Offset(i64),
    /// The first record whose timestamp is at or after this time (ms since the Unix epoch).
    Timestamp(i64),
}

impl StartSpec {
    /// The wire form of this position.
    pub fn to_position(self) -> StartPosition {
        let position = match self {
            StartSpec::Earliest => Position::Earliest(true),
            StartSpec::Latest => Position::Latest(true),
            StartSpec::Offset(offset) => Position::Offset(offset),
            StartSpec::Timestamp(ms) => Position::TimestampMs(ms),
        };
        StartPosition {
            position: Some(position),
        }
    }
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub offset: i64,
    /// Creation time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    /// `None` is a null value (a tombstone).
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

impl From<DecodedRecord> for ConsumedRecord {
    fn from(r: DecodedRecord) -> Self {
        Self {
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers,
        }
    }
}

/// Looks up an offset of one partition (`ListOffsets`) on any broker.
pub async fn list_offsets(
    client: &Client,
    topic: &str,
    partition: u32,
    spec: StartSpec,
) -> Result<ListOffsetsResponse, ClientError> {
    let request = ListOffsetsRequest {
        topic: topic.to_string(),
        partition,
        spec: Some(spec.to_position()),
    };
    client
        .with_failover(|channel| {
            let request = request.clone();
            async move {
                Ok(log_client(channel)
                    .list_offsets(request)
                    .await?
                    .into_inner())
            }
        })
        .await
}

/// Reads one partition in offset order.
#[derive(Debug, Clone)]
pub struct PartitionReader {
    client: Client,
    /// The broker read from now.
    url: String,
    topic: String,
    partition: u32,
    next_offset: i64,
    high_watermark: i64,
    log_start_offset: i64,
    max_bytes: u32,
    fetched_bytes: u64,
}

impl PartitionReader {
    /// A reader of `topic`/`partition` positioned at `start`.
    pub async fn new(
        client: &Client,
        topic: &str,
        partition: u32,
        start: StartSpec,
    ) -> Result<PartitionReader, ClientError> {
        let offsets = list_offsets(client, topic, partition, start).await?;
        // Any broker serves reads; the owner has the freshly written tail in its cache.
        let url = client
            .routes(topic)
            .await
            .owner(partition)
            .unwrap_or_else(|| client.preferred_url());
        Ok(PartitionReader {
            client: client.clone(),
            url,
            topic: topic.to_string(),
            partition,
            next_offset: offsets.offset,
            high_watermark: offsets.high_watermark,
            log_start_offset: offsets.log_start_offset,
            max_bytes: DEFAULT_FETCH_BYTES,
            fetched_bytes: 0,
        })
    }

    /// Sets the soft limit on the bytes of one fetch (0: the broker's default).
    pub fn with_max_bytes(mut self, max_bytes: u32) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The partition read.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The offset the next fetch starts at.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// The high watermark (one past the last committed offset) last seen.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// The log start offset last seen.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The URL of the broker the reader fetches from now.
    pub fn broker(&self) -> &str {
        &self.url
    }

    /// Raw batch bytes fetched so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes
    }

    /// Moves the reader to `offset`.
    pub fn seek(&mut self, offset: i64) {
        self.next_offset = offset;
    }

    /// Fetches the records from `next_offset` on, waiting up to `max_wait` when there are none
    /// yet (then the result may be empty), and advances `next_offset` past them. OUT_OF_RANGE
    /// (below the log start) is returned as is; [`ClientError::log_start_offset`] tells where
    /// to [`seek`](Self::seek). A failed broker is replaced by another known one (see the
    /// module docs); the error is returned once the failovers run out.
    pub async fn next_batch(
        &mut self,
        max_wait: Duration,
    ) -> Result<Vec<ConsumedRecord>, ClientError> {
        let request = FetchRequest {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.next_offset,
            max_bytes: self.max_bytes,
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
            raw_batches: true,
        };
        // Pauses before each failover: exponential with jitter, READ_FAILOVERS of them.
        let mut pauses = backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_min_delay(READ_BACKOFF)
                .with_max_delay(MAX_READ_BACKOFF)
                .with_jitter()
                .with_max_times(READ_FAILOVERS as usize),
        );
        let response = loop {
            let error = match self
                .fetch_once(request.clone(), max_wait + FETCH_GRACE)
                .await
            {
                Ok(response) => break response,
                Err(e) if fails_over(&e) => e,
                Err(e) => return Err(e),
            };
            let Some(pause) = pauses.next() else {
                return Err(error);
            };
            let wake = tokio::time::Instant::now() + pause;
            // Learn brokers that joined, then move to the broker after this one.
            self.client.refresh_routes(&self.topic).await;
            let next = next_after(&self.client.candidates(), &self.url);
            tracing::debug!(
                topic = %self.topic, partition = self.partition, from = %self.url,
                to = %next, ?pause, error = %error, "fetch failed, moving to another broker"
            );
            self.url = next;
            tokio::time::sleep_until(wake).await;
        };
        let mut records = Vec::new();
        for batch in response.batches {
            self.fetched_bytes += batch.len() as u64;
            records.extend(
                decode_batches(batch, self.next_offset)?
                    .into_iter()
                    .map(ConsumedRecord::from),
            );
        }
        self.high_watermark = response.high_watermark;
        self.log_start_offset = response.log_start_offset;
        let past_last = records.last().map_or(self.next_offset, |r| r.offset + 1);
        self.next_offset = self.next_offset.max(past_last).max(response.next_offset);
        Ok(records)
    }

    /// One fetch from the current broker, abandoned after `timeout`.
    async fn fetch_once(
        &self,
        request: FetchRequest,
        timeout: Duration,
    ) -> Result<FetchResponse, ClientError> {
        let channel = self.client.channel(&self.url)?;
        let result = match tokio::time::timeout(timeout, log_client(channel).fetch(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ClientError::from(status)),
            Err(_) => Err(ClientError::Timeout {
                call: "Fetch",
                url: self.url.clone(),
                after: timeout,
            }),
        };
        self.client.report(&self.url, result.as_ref().err());
        result
    }
}

/// The broker to read from after `failed`: the first other candidate (the client's preferred
/// broker comes first), or `failed` itself when it is the only one known.
fn next_after(candidates: &[String], failed: &str) -> String {
    candidates
        .iter()
        .find(|c| *c != failed)
        .cloned()
        .unwrap_or_else(|| failed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_broker_is_replaced_by_another_if_there_is_one() {
        let candidates = ["http://a:1".to_string(), "http://b:1".to_string()];
        assert_eq!(next_after(&candidates, "http://a:1"), "http://b:1");
        assert_eq!(next_after(&candidates, "http://b:1"), "http://a:1");
        assert_eq!(next_after(&candidates[..1], "http://a:1"), "http://a:1");
    }

    #[test]
    fn start_specs_map_to_wire_positions() {
        assert_eq!(
            StartSpec::Earliest.to_position().position,
            Some(Position::Earliest(true))
        );
        assert_eq!(
            StartSpec::Latest.to_position().position,
            Some(Position::Latest(true))
        );
        assert_eq!(
            StartSpec::Offset(5).to_position().position,
            Some(Position::Offset(5))
        );
        assert_eq!(
            StartSpec::Timestamp(9).to_position().position,
            Some(Position::TimestampMs(9))
        );
    }
}
