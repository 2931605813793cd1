//! The producer's background half: one task takes requests from the [`Accumulator`] whenever a
//! request slot (a semaphore permit, `max_in_flight` of them) is free, and each request runs in
//! its own task: encode the batches with `silt_storage::batch::encode_batch`, split them by the
//! owner of their partition ([`plan_round`]) and call `ProduceBatches` on every owner at once,
//! retry what failed retriably (UNAVAILABLE, RESOURCE_EXHAUSTED, transport failures; ambiguous
//! ones only if the policy says so) after refreshing the routing table and backing off
//! (honouring the broker's `retry-after-ms`), and resolve every batch's outcome — only with the
//! broker's ack, which the broker gives once the batch is durable and committed. The request
//! keeps its partitions busy until every batch is resolved, so a partition never has two
//! requests in flight.
//!
//! A send the broker refuses whole with INVALID_ARGUMENT is split: its batches are sent again
//! one per request, so one bad batch fails only its own records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use silt_api::v1::{PartitionBatch, ProduceBatchesRequest};
use silt_storage::batch::{BatchCompression, ProducerInfo, encode_batch};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tonic::Code;

use super::accumulator::{Accumulator, Request};
use super::plan::plan_round;
use crate::brokers::normalize_url;
use crate::client::{Client, log_client};
use crate::error::ClientError;

/// First retry delay when the broker gives no hint; doubled (with jitter) per attempt up to
/// [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MAX_CONNECT_BACKOFF: Duration = Duration::from_millis(250);

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
    pub(crate) client: Client,
    pub(crate) topic: String,
    pub(crate) compression: BatchCompression,
    pub(crate) retry: RetryPolicy,
}

/// When a failed batch is sent again (see [`crate::ProducerConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) retry_for: Duration,
    pub(crate) retry_ambiguous: bool,
    pub(crate) request_timeout: Duration,
}

impl RetryPolicy {
    /// Whether a batch that failed with `err` after `attempt` retries is retried again, the
    /// retry starting `at` after the batch's first attempt.
    fn allows(&self, err: &ClientError, attempt: u32, at: Duration) -> bool {
        err.is_retriable()
            && (self.retry_ambiguous || !err.is_ambiguous())
            && attempt < self.max_retries
            && at <= self.retry_for
    }
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
        let outcomes = produce_routed(&shared, &encoded).await;
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

/// Produces `batches`: each round plans sends by owner (see [`plan_round`]), runs them
/// concurrently and keeps the failed batches the policy retries for the next round, after a
/// routing refresh (and the not-owner answer's `silt-owner` hint where the refreshed table
/// still names the broker that refused) and a backoff. A send refused whole as invalid is
/// split into one-batch sends so only the bad batch fails. Returns each batch's base offset or
/// error, in order.
async fn produce_routed(shared: &Shared, batches: &[Encoded]) -> Vec<Result<i64, ClientError>> {
    let started = Instant::now();
    let routes = shared.client.routes(&shared.topic).await;
    let mut outcomes: Vec<Option<Result<i64, ClientError>>> = vec![None; batches.len()];
    let mut attempts = vec![0u32; batches.len()];
    let mut alone = vec![false; batches.len()];
    let mut pending: Vec<usize> = (0..batches.len()).collect();
    while !pending.is_empty() {
        let any = shared.client.preferred_url();
        let (sends, mut next) = plan_round(
            &pending,
            |i| batches[i].partition,
            |p| routes.owner(p).unwrap_or_else(|| any.clone()),
            &alone,
        );
        let results = join_all(sends.into_iter().map(|send| async move {
            let result = produce_once(shared, &send.url, batches, &send.batches).await;
            (send, result)
        }))
        .await;
        let mut delay: Option<Duration> = None;
        let mut reroute = false;
        // (partitions, refusing broker, its owner hint) of not-owner answers.
        let mut hints: Vec<(Vec<u32>, String, String)> = Vec::new();
        for (send, result) in results {
            match result {
                Ok(offsets) => {
                    for (&i, offset) in send.batches.iter().zip(offsets) {
                        outcomes[i] = Some(Ok(offset));
                    }
                }
                Err(e) if e.code() == Code::InvalidArgument && send.batches.len() > 1 => {
                    for &i in &send.batches {
                        alone[i] = true;
                    }
                    next.extend(&send.batches);
                }
                Err(e) => {
                    let attempt = send.batches.iter().map(|&i| attempts[i]).max().unwrap_or(0);
                    let wait = backoff(&e, attempt);
                    if shared.retry.allows(&e, attempt, started.elapsed() + wait) {
                        tracing::debug!(
                            topic = %shared.topic, url = %send.url, attempt, ?wait, error = %e,
                            "retrying produce"
                        );
                        reroute |= e.code() != Code::ResourceExhausted || e.is_transport();
                        if let Some(owner) = e.owner_hint().filter(|o| !o.trim().is_empty()) {
                            let partitions =
                                send.batches.iter().map(|&i| batches[i].partition).collect();
                            hints.push((partitions, send.url.clone(), normalize_url(owner)));
                        }
                        delay = Some(delay.map_or(wait, |d| d.max(wait)));
                        for &i in &send.batches {
                            attempts[i] += 1;
                        }
                        next.extend(&send.batches);
                    } else {
                        for &i in &send.batches {
                            outcomes[i] = Some(Err(e.clone()));
                        }
                    }
                }
            }
        }
        if let Some(delay) = delay {
            let wake = Instant::now() + delay;
            if reroute {
                shared.client.refresh_routes(&shared.topic).await;
            }
            // A table that still names the broker that refused is behind that broker's own
            // view: follow its hint until the next refresh.
            for (partitions, refused_by, owner) in hints {
                for p in partitions {
                    if routes.owner(p).is_none_or(|url| url == refused_by) {
                        routes.set_owner(p, owner.clone());
                    }
                }
            }
            tokio::time::sleep_until(wake.into()).await;
        }
        // Keep request order: a partition's batches must go out in the order they came.
        next.sort_unstable();
        pending = next;
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Err(ClientError::Closed)))
        .collect()
}

/// One `ProduceBatches` of the batches at `indices` to the broker at `url`, within the
/// policy's request timeout.
async fn produce_once(
    shared: &Shared,
    url: &str,
    batches: &[Encoded],
    indices: &[usize],
) -> Result<Vec<i64>, ClientError> {
    let sent: Vec<&Encoded> = indices.iter().map(|&i| &batches[i]).collect();
    let request = ProduceBatchesRequest {
        topic: shared.topic.clone(),
        batches: sent
            .iter()
            .map(|b| PartitionBatch {
                partition: b.partition,
                batch: b.bytes.clone(),
            })
            .collect(),
    };
    let timeout = shared.retry.request_timeout;
    let result = match shared.client.channel(url) {
        Ok(channel) => {
            let mut log = log_client(channel);
            match tokio::time::timeout(timeout, log.produce_batches(request)).await {
                Ok(Ok(response)) => check_acks(&sent, response.into_inner().acks),
                Ok(Err(status)) => Err(ClientError::from(status)),
                Err(_) => Err(ClientError::Timeout {
                    call: "ProduceBatches",
                    url: url.to_string(),
                    after: timeout,
                }),
            }
        }
        Err(e) => Err(e),
    };
    shared.client.report(url, result.as_ref().err());
    result
}

/// How long to wait before retry number `attempt + 1`: the broker's hint, else exponential.
/// A broker that cannot be connected to costs nothing to try again and is usually one whose
/// partitions are about to move, so those retries stay at most [`MAX_CONNECT_BACKOFF`] apart.
fn backoff(err: &ClientError, attempt: u32) -> Duration {
    let delay = err
        .retry_after()
        .unwrap_or_else(|| exponential(attempt))
        .min(MAX_BACKOFF);
    if err.is_connect_failure() {
        delay.min(MAX_CONNECT_BACKOFF)
    } else {
        delay
    }
}

/// The delay before retry number `attempt + 1` without a hint: exponential from
/// [`BASE_BACKOFF`] to [`MAX_BACKOFF`], with jitter so producers that failed together do not
/// retry together (`backon`'s policy).
fn exponential(attempt: u32) -> Duration {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(BASE_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempt.min(16) as usize)
        .unwrap_or(MAX_BACKOFF)
}

/// Checks the acks follow the contract (one per batch, in order, covering its records) and
/// returns the base offsets.
fn check_acks(
    batches: &[&Encoded],
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
        // Without a hint: exponential with jitter, within [delay, 2 × delay), capped.
        for _ in 0..20 {
            let first = backoff(&plain, 0);
            assert!((100..200).contains(&first.as_millis()), "{first:?}");
            let third = backoff(&plain, 2);
            assert!((400..800).contains(&third.as_millis()), "{third:?}");
        }
        assert_eq!(backoff(&plain, 30), MAX_BACKOFF);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(backoff(&refused.into(), 5), MAX_CONNECT_BACKOFF);
    }

    #[test]
    fn the_policy_bounds_retries_by_count_time_and_ambiguity() {
        let policy = RetryPolicy {
            max_retries: 3,
            retry_for: Duration::from_secs(10),
            retry_ambiguous: false,
            request_timeout: Duration::from_secs(1),
        };
        let mut not_owner = Status::unavailable("not the owner");
        not_owner
            .metadata_mut()
            .insert("silt-not-stored", "1".parse().unwrap());
        let not_owner = ClientError::from(not_owner);
        let ambiguous = ClientError::from(Status::unavailable("commit outcome unknown"));
        let second = Duration::from_secs(1);
        assert!(policy.allows(&not_owner, 0, second));
        assert!(!policy.allows(&not_owner, 3, second), "count runs out");
        assert!(!policy.allows(&not_owner, 0, 11 * second), "time runs out");
        assert!(!policy.allows(&ambiguous, 0, second));
        let at_least_once = RetryPolicy {
            retry_ambiguous: true,
            ..policy
        };
        assert!(at_least_once.allows(&ambiguous, 0, second));
        let invalid = ClientError::from(Status::invalid_argument("bad batch"));
        assert!(!at_least_once.allows(&invalid, 0, second));
    }

    #[test]
    fn acks_must_match_the_batches() {
        let (a, b) = (encoded(0, 3), encoded(2, 1));
        let batches = [&a, &b];
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
