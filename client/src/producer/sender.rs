//! The producer's background half: one task takes requests from the [`Accumulator`] whenever a
//! request slot (a semaphore permit, `max_in_flight` of them) is free, and each request runs in
//! its own task: encode the batches with `silt_storage::batch::encode_batch`, call
//! `ProduceBatches`, retry UNAVAILABLE and RESOURCE_EXHAUSTED with backoff (honouring the
//! broker's `retry-after-ms`), and resolve every batch's outcome — only with the broker's ack,
//! which the broker gives once the batch is durable and committed.
//!
//! A request the broker refuses whole with INVALID_ARGUMENT is split: its batches are sent again
//! one per request, so one bad batch fails only its own records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use silt_api::v1::log_client::LogClient;
use silt_api::v1::{PartitionBatch, ProduceBatchesRequest};
use silt_storage::batch::{BatchCompression, ProducerInfo, encode_batch};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tonic::transport::Channel;

use super::accumulator::{Accumulator, Request};
use crate::error::ClientError;

/// First retry delay when the broker gives no hint; doubled per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// State shared by the producer handle, the sender task and the request tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) accumulator: Mutex<Accumulator>,
    /// Wakes the sender task: a batch was opened or closed, a request finished, or a flush or
    /// shutdown was asked for. `notify_one` keeps a permit, so no wake-up is lost.
    pub(crate) wake: Notify,
    /// Wakes senders waiting for buffer space.
    pub(crate) space: Notify,
    /// Set when the producer handle is dropped or closed: send what is buffered, then stop.
    pub(crate) closing: AtomicBool,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) log: LogClient<Channel>,
    pub(crate) topic: String,
    pub(crate) compression: BatchCompression,
    pub(crate) max_retries: u32,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Accumulator> {
        // A panic while holding the lock leaves the accumulator consistent enough to drain.
        self.accumulator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The sender task: runs until the producer is closing and every batch is completed.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        let Ok(permit) = shared.permits.clone().acquire_owned().await else {
            return;
        };
        let request = loop {
            let closing = shared.closing.load(Ordering::Acquire);
            let (request, deadline, idle) = {
                let mut acc = shared.lock();
                let request = acc.take_request(Instant::now(), closing);
                (request, acc.next_deadline(), acc.is_idle())
            };
            if let Some(request) = request {
                shared.space.notify_waiters();
                break request;
            }
            if closing && idle {
                return;
            }
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = shared.wake.notified() => {}
                        () = tokio::time::sleep_until(deadline.into()) => {}
                    }
                }
                None => shared.wake.notified().await,
            }
        };
        tokio::spawn(send_request(shared.clone(), request, permit));
    }
}

/// One request's life: encode, produce (with retries), resolve outcomes, free the partitions.
async fn send_request(shared: Arc<Shared>, request: Request, permit: OwnedSemaphorePermit) {
    let ids: Vec<(u64, u32)> = request
        .batches
        .iter()
        .map(|b| (b.id, b.partition))
        .collect();
    let mut encoded = Vec::with_capacity(request.batches.len());
    let mut slots = Vec::with_capacity(request.batches.len());
    let mut resolved = Vec::with_capacity(request.batches.len());
    for batch in &request.batches {
        match encode_batch(&batch.records, shared.compression, ProducerInfo::default()) {
            Ok(bytes) => {
                slots.push(batch);
                encoded.push(Encoded {
                    partition: batch.partition,
                    bytes,
                    count: batch.records.len(),
                });
            }
            Err(e) => resolved.push((batch, Err(e.into()))),
        }
    }
    if !encoded.is_empty() {
        let outcomes = produce_isolating(&shared, &encoded).await;
        resolved.extend(slots.into_iter().zip(outcomes));
    }
    // Forget the batches before resolving them, so a flush that sees a resolved outcome never
    // finds its batch still pending.
    shared.lock().complete(&ids);
    for (batch, outcome) in resolved {
        batch.outcome.send_replace(Some(outcome));
    }
    drop(permit);
    shared.wake.notify_one();
}

/// An encoded batch ready for the wire.
#[derive(Debug, Clone)]
struct Encoded {
    partition: u32,
    bytes: Bytes,
    count: usize,
}

/// Produces `batches` in one request; if the broker refuses it whole as invalid, produces each
/// batch alone so only the bad one fails. Returns each batch's base offset or error, in order.
async fn produce_isolating(shared: &Shared, batches: &[Encoded]) -> Vec<Result<i64, ClientError>> {
    match produce_with_retries(shared, batches).await {
        Ok(offsets) => offsets.into_iter().map(Ok).collect(),
        Err(e) if e.code() == Code::InvalidArgument && batches.len() > 1 => {
            let mut outcomes = Vec::with_capacity(batches.len());
            for batch in batches {
                let one = produce_with_retries(shared, std::slice::from_ref(batch)).await;
                outcomes.push(one.map(|offsets| offsets[0]));
            }
            outcomes
        }
        Err(e) => vec![Err(e); batches.len()],
    }
}

/// One `ProduceBatches` call, retried while the broker says to retry.
async fn produce_with_retries(
    shared: &Shared,
    batches: &[Encoded],
) -> Result<Vec<i64>, ClientError> {
    let mut attempt = 0u32;
    loop {
        let request = ProduceBatchesRequest {
            topic: shared.topic.clone(),
            batches: batches
                .iter()
                .map(|b| PartitionBatch {
                    partition: b.partition,
                    batch: b.bytes.clone(),
                })
                .collect(),
        };
        let result = shared.log.clone().produce_batches(request).await;
        match result {
            Ok(response) => return check_acks(batches, response.into_inner().acks),
            Err(status) => {
                let err = ClientError::from(status);
                if !err.is_retriable() || attempt >= shared.max_retries {
                    return Err(err);
                }
                let delay = backoff(&err, attempt);
                tracing::debug!(topic = %shared.topic, attempt, ?delay, error = %err, "retrying produce");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// How long to wait before retry number `attempt + 1`: the broker's hint, else exponential.
fn backoff(err: &ClientError, attempt: u32) -> Duration {
    err.retry_after()
        .unwrap_or_else(|| BASE_BACKOFF.saturating_mul(1 << attempt.min(16)))
        .min(MAX_BACKOFF)
}

/// Checks the acks follow the contract (one per batch, in order, covering its records) and
/// returns the base offsets.
fn check_acks(
    batches: &[Encoded],
    acks: Vec<silt_api::v1::BatchAck>,
) -> Result<Vec<i64>, ClientError> {
    if acks.len() != batches.len() {
        return Err(ClientError::Protocol(format!(
            "ProduceBatches returned {} acks for {} batches",
            acks.len(),
            batches.len()
        )));
    }
    batches
        .iter()
        .zip(acks)
        .map(|(batch, ack)| {
            let span = ack.last_offset - ack.base_offset + 1;
            if ack.partition != batch.partition || span != batch.count as i64 {
                return Err(ClientError::Protocol(format!(
                    "ack for partition {} offsets {}..={} does not match a batch of {} records \
                     for partition {}",
                    ack.partition, ack.base_offset, ack.last_offset, batch.count, batch.partition
                )));
            }
            Ok(ack.base_offset)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use silt_api::v1::BatchAck;
    use tonic::Status;

    fn encoded(partition: u32, count: usize) -> Encoded {
        Encoded {
            partition,
            bytes: Bytes::new(),
            count,
        }
    }

    #[test]
    fn backoff_prefers_the_broker_hint() {
        let mut status = Status::resource_exhausted("full");
        status
            .metadata_mut()
            .insert("retry-after-ms", "300".parse().unwrap());
        assert_eq!(backoff(&status.into(), 3), Duration::from_millis(300));
        let plain = ClientError::from(Status::unavailable("store down"));
        assert_eq!(backoff(&plain, 0), Duration::from_millis(100));
        assert_eq!(backoff(&plain, 2), Duration::from_millis(400));
        assert_eq!(backoff(&plain, 30), MAX_BACKOFF);
    }

    #[test]
    fn acks_must_match_the_batches() {
        let batches = [encoded(0, 3), encoded(2, 1)];
        let good = vec![
            BatchAck {
                partition: 0,
                base_offset: 10,
                last_offset: 12,
            },
            BatchAck {
                partition: 2,
                base_offset: 0,
                last_offset: 0,
            },
        ];
        assert_eq!(check_acks(&batches, good).unwrap(), vec![10, 0]);
        let short = vec![BatchAck {
            partition: 0,
            base_offset: 10,
            last_offset: 12,
        }];
        assert!(check_acks(&batches, short).is_err());
        let wrong_span = vec![
            BatchAck {
                partition: 0,
                base_offset: 10,
                last_offset: 11,
            },
            BatchAck {
                partition: 2,
                base_offset: 0,
                last_offset: 0,
            },
        ];
        assert!(check_acks(&batches, wrong_span).is_err());
    }
}
