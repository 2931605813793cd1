//! `silt bench produce --replay`: the broker's and the store's share of the fast path, without
//! the client's. Before the clock starts, the payload pool is encoded once into RecordBatch v2
//! batches of `batch_bytes`; during the run each sender replays them in raw `ProduceBatches`
//! requests of up to `request_bytes` (several partitions per request, `in_flight` requests at a
//! time), so the client spends almost no CPU per record while the broker does all its usual
//! work: validate every batch (CRC32C included), assign offsets, build, upload and commit
//! segments. Use it where the client shares the broker's cores, as on a one-machine benchmark.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use silt_api::v1::{PartitionBatch, ProduceBatchesRequest};
use silt_client::{Client, ClientError};
use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};

use super::produce::TaskResult;
use super::record_latency;

/// Retries of a request refused with UNAVAILABLE or RESOURCE_EXHAUSTED.
const MAX_RETRIES: u32 = 20;

/// Pre-encoded batches and how many records each holds.
#[derive(Debug)]
pub(crate) struct Batches {
    batches: Vec<Bytes>,
    records_per_batch: u64,
}

impl Batches {
    /// Encodes `values` into batches of about `batch_bytes` each.
    pub(crate) fn encode(
        values: &[Bytes],
        batch_bytes: usize,
        compression: BatchCompression,
    ) -> Result<Batches, ClientError> {
        let size = values.first().map_or(1, Bytes::len).max(1);
        let per_batch = (batch_bytes / size).clamp(1, values.len().max(1));
        let mut batches = Vec::new();
        for chunk in values.chunks(per_batch).filter(|c| c.len() == per_batch) {
            let records: Vec<RecordData> = chunk
                .iter()
                .enumerate()
                .map(|(i, v)| RecordData {
                    value: Some(v.clone()),
                    timestamp_ms: 1_735_689_600_000 + i as i64,
                    ..RecordData::default()
                })
                .collect();
            batches.push(encode_batch(
                &records,
                compression,
                ProducerInfo::default(),
            )?);
        }
        if batches.is_empty() {
            return Err(ClientError::InvalidArgument(
                "too few records to fill one batch".into(),
            ));
        }
        Ok(Batches {
            batches,
            records_per_batch: per_batch as u64,
        })
    }
}

/// One replaying sender: claims batches of the run until `total` records are claimed.
pub(crate) struct ReplaySender {
    pub(crate) client: Client,
    pub(crate) topic: String,
    pub(crate) partitions: u32,
    pub(crate) batches: Arc<Batches>,
    /// Records claimed so far by all senders.
    pub(crate) claimed: Arc<AtomicU64>,
    pub(crate) total: u64,
    pub(crate) batches_per_request: usize,
    pub(crate) in_flight: usize,
}

impl ReplaySender {
    pub(crate) async fn run(self) -> TaskResult {
        let mut result = TaskResult::new();
        let mut pending = FuturesUnordered::new();
        let mut next_batch = 0usize;
        loop {
            while pending.len() < self.in_flight {
                let Some(request) = self.claim(&mut next_batch) else {
                    break;
                };
                pending.push(self.send(request));
            }
            match pending.next().await {
                Some((records, latency, Ok(()))) => {
                    result.acked += records;
                    record_latency(&mut result.latency, latency, records);
                }
                Some((records, _, Err(e))) => result.fail(records, e),
                None => return result,
            }
        }
    }

    /// The next request's batches and their record count, `None` once the run is claimed.
    fn claim(&self, next_batch: &mut usize) -> Option<(ProduceBatchesRequest, u64)> {
        let per = self.batches.records_per_batch;
        let want = per * self.batches_per_request as u64;
        let first = self.claimed.fetch_add(want, Ordering::Relaxed);
        if first >= self.total {
            return None;
        }
        let count = want.min(self.total - first).div_ceil(per).max(1);
        let batches = (0..count)
            .map(|_| {
                let i = *next_batch;
                *next_batch += 1;
                PartitionBatch {
                    partition: (i % self.partitions as usize) as u32,
                    batch: self.batches.batches[i % self.batches.batches.len()].clone(),
                }
            })
            .collect();
        let request = ProduceBatchesRequest {
            topic: self.topic.clone(),
            batches,
        };
        Some((request, count * per))
    }

    async fn send(
        &self,
        (request, records): (ProduceBatchesRequest, u64),
    ) -> (u64, Duration, Result<(), ClientError>) {
        let mut log = self.client.log();
        let sent_at = Instant::now();
        let mut attempt = 0;
        loop {
            match log.produce_batches(request.clone()).await {
                Ok(_) => return (records, sent_at.elapsed(), Ok(())),
                Err(status) => {
                    let e = ClientError::from(status);
                    if !e.is_retriable() || attempt >= MAX_RETRIES {
                        return (records, sent_at.elapsed(), Err(e));
                    }
                    let delay = e
                        .retry_after()
                        .unwrap_or(Duration::from_millis(50 << attempt.min(5)));
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}
