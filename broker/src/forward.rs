//! Produce routing: a produce for partitions this broker does not own is forwarded to their
//! owners, once, so a plain client behind one address (a Kubernetes Service) works as well as a
//! routing client that talks to owners directly.
//!
//! A request is split by owner; local parts go to the [`ProducePath`], remote parts to the
//! owners with the `silt-forwarded` metadata key, which an owner never forwards again (one hop:
//! if it is not the owner either, it answers not-owner). A `ProduceBatches` request split over
//! several owners is validated whole here first, so an invalid batch still refuses the whole
//! request. Per-record `Produce` requests are routed here (explicit partition, key hash, or a
//! sticky partition this broker owns) and their results merged back in request order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use silt_api::v1 as api;
use silt_api::v1::log_client::LogClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::cluster::{ClusterView, Owner};
use crate::error::BrokerError;
use crate::produce::ProducePath;
use crate::status::{NOT_STORED, produce_status};
use crate::topics::partition_for_key;

pub use silt_api::wire::FORWARDED;

/// Where part of a request goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Local,
    Remote(String),
}

/// Splits produce requests by owner and forwards the remote parts.
#[derive(Debug)]
pub struct Router {
    pub view: Arc<ClusterView>,
    pub produce: Arc<ProducePath>,
    clients: Mutex<HashMap<String, LogClient<Channel>>>,
    max_message: usize,
    sticky: AtomicU32,
}

impl Router {
    pub fn new(view: Arc<ClusterView>, produce: Arc<ProducePath>, max_message: usize) -> Self {
        Self {
            view,
            produce,
            clients: Mutex::new(HashMap::new()),
            max_message,
            sticky: AtomicU32::new(0),
        }
    }

    fn client(&self, address: &str) -> Result<LogClient<Channel>, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Status::internal(format!("bad broker address '{address}': {e}")))?
            .connect_timeout(Duration::from_secs(2))
            // A paused owner keeps its socket open: keep-alive pings find it out, and no hop
            // waits longer than a produce may.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(4))
            .keep_alive_while_idle(true)
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true);
        let client = LogClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message);
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    fn forwarded<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(v) = self.view.broker_id().parse() {
            request.metadata_mut().insert(FORWARDED, v);
        }
        request
    }

    /// Where a partition's records go, or the not-owner error when they cannot go anywhere.
    fn target(
        &self,
        topic_id: u64,
        partition: u32,
        forwarded: bool,
    ) -> Result<Target, BrokerError> {
        match self.view.owner((topic_id, partition)) {
            Owner::Me(_) => Ok(Target::Local),
            Owner::Other { address, broker_id } if forwarded => Err(BrokerError::NotOwner {
                message: format!(
                    "broker '{}' does not own partition {partition} (broker '{broker_id}' does) and does not forward a forwarded request; nothing was stored, retry against the owner",
                    self.view.broker_id()
                ),
                owner: Some(address),
            }),
            Owner::Other { address, .. } => Ok(Target::Remote(address)),
            Owner::Unowned => Err(BrokerError::NotOwner {
                message: format!(
                    "partition {partition} has no live owner right now (it is being reassigned); nothing was stored, retry shortly"
                ),
                owner: None,
            }),
        }
    }

    /// `Log.ProduceBatches`, routed.
    pub async fn produce_batches(
        &self,
        forwarded: bool,
        req: api::ProduceBatchesRequest,
    ) -> Result<api::ProduceBatchesResponse, Status> {
        let topic = self
            .produce
            .topics
            .require(&req.topic)
            .map_err(produce_status)?;
        let mut groups: BTreeMap<Target, Vec<(usize, api::PartitionBatch)>> = BTreeMap::new();
        for (i, b) in req.batches.into_iter().enumerate() {
            let target = if b.partition >= topic.record.partitions {
                Target::Local // refused there with NOT_FOUND
            } else {
                self.target(topic.id, b.partition, forwarded)
                    .map_err(produce_status)?
            };
            groups.entry(target).or_default().push((i, b));
        }
        if groups.len() > 1 {
            // Refuse the whole request if any batch is bad, before any part is stored.
            let all: Vec<(u32, bytes::Bytes)> = groups
                .values()
                .flatten()
                .map(|(_, b)| (b.partition, b.batch.clone()))
                .collect();
            self.produce
                .validate_batches(&topic, all)
                .await
                .map_err(produce_status)?;
        }
        let total: usize = groups.values().map(Vec::len).sum();
        let parts = groups.into_iter().map(|(target, batches)| {
            let topic_name = req.topic.clone();
            async move {
                let (idx, batches): (Vec<usize>, Vec<api::PartitionBatch>) =
                    batches.into_iter().unzip();
                let result = match target {
                    Target::Local => self
                        .produce
                        .produce_batches(
                            &topic_name,
                            batches
                                .into_iter()
                                .map(|b| (b.partition, b.batch))
                                .collect(),
                        )
                        .await
                        .map(|acks| {
                            acks.into_iter()
                                .map(|a| api::BatchAck {
                                    partition: a.partition,
                                    base_offset: a.base_offset,
                                    last_offset: a.last_offset,
                                })
                                .collect()
                        })
                        .map_err(produce_status),
                    Target::Remote(address) => {
                        let request = api::ProduceBatchesRequest {
                            topic: topic_name,
                            batches,
                        };
                        match self.client(&address) {
                            Ok(mut c) => c
                                .produce_batches(self.forwarded(request))
                                .await
                                .map(|r| r.into_inner().acks)
                                .map_err(|s| hop_failure(&address, s)),
                            Err(e) => Err(e),
                        }
                    }
                };
                (idx, result)
            }
        });
        let results = join_all(parts).await;
        let mut acks = vec![api::BatchAck::default(); total];
        merge(results, |idx, part: Vec<api::BatchAck>| {
            for (i, a) in idx.into_iter().zip(part) {
                acks[i] = a;
            }
        })?;
        Ok(api::ProduceBatchesResponse { acks })
    }

    /// `Log.Produce`, routed; `local` runs the per-record path on this broker.
    pub async fn produce<F, Fut>(
        &self,
        forwarded: bool,
        req: api::ProduceRequest,
        local: F,
    ) -> Result<api::ProduceResponse, Status>
    where
        F: Fn(api::ProduceRequest) -> Fut,
        Fut: std::future::Future<Output = Result<api::ProduceResponse, Status>>,
    {
        let topic = self
            .produce
            .topics
            .require(&req.topic)
            .map_err(produce_status)?;
        let partitions = topic.record.partitions;
        let owners: Vec<Result<Target, BrokerError>> = (0..partitions)
            .map(|p| self.target(topic.id, p, forwarded))
            .collect();
        if owners.iter().all(|o| matches!(o, Ok(Target::Local))) {
            return local(req).await;
        }
        // Null keys stick to one partition this broker owns, so they need no hop.
        let mine: Vec<u32> = (0..partitions)
            .filter(|p| matches!(owners[*p as usize], Ok(Target::Local)))
            .collect();
        let pick = self.sticky.fetch_add(1, Ordering::Relaxed);
        let sticky = if mine.is_empty() {
            pick % partitions
        } else {
            mine[pick as usize % mine.len()]
        };
        let total = req.records.len();
        let mut results: Vec<Option<api::RecordResult>> = vec![None; total];
        let mut groups: BTreeMap<Target, Vec<(usize, api::Record)>> = BTreeMap::new();
        for (i, mut r) in req.records.into_iter().enumerate() {
            let p = match (r.partition, &r.key) {
                (Some(p), _) => p,
                (None, Some(key)) => partition_for_key(key, partitions),
                (None, None) => sticky,
            };
            r.partition = Some(p);
            match owners.get(p as usize) {
                None => groups.entry(Target::Local).or_default().push((i, r)),
                Some(Ok(t)) => groups.entry(t.clone()).or_default().push((i, r)),
                Some(Err(e)) => results[i] = Some(record_error(&produce_status(e.clone()))),
            }
        }
        let parts = groups.into_iter().map(|(target, records)| {
            let topic_name = req.topic.clone();
            let local = &local;
            async move {
                let (idx, records): (Vec<usize>, Vec<api::Record>) = records.into_iter().unzip();
                let request = api::ProduceRequest {
                    topic: topic_name,
                    records,
                };
                let result = match target {
                    Target::Local => local(request).await,
                    Target::Remote(address) => match self.client(&address) {
                        Ok(mut c) => c
                            .produce(self.forwarded(request))
                            .await
                            .map(|r| r.into_inner())
                            .map_err(|s| hop_failure(&address, s)),
                        Err(e) => Err(e),
                    },
                };
                (idx, result)
            }
        });
        for (idx, result) in join_all(parts).await {
            match result {
                Ok(resp) => {
                    for (i, r) in idx.into_iter().zip(resp.results) {
                        results[i] = Some(r);
                    }
                }
                Err(status) => {
                    for i in idx {
                        results[i] = Some(record_error(&status));
                    }
                }
            }
        }
        Ok(api::ProduceResponse {
            results: results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| record_error(&Status::internal("no result for a record")))
                })
                .collect(),
        })
    }
}

/// A failed hop to an owner, as the client should see it: the owner's own answers pass as they
/// are; a failure of the hop itself (no answer from the owner) becomes UNAVAILABLE
/// (retriable), marked not-stored only when the connection never opened (nothing was sent).
fn hop_failure(address: &str, status: Status) -> Status {
    if !silt_api::wire::is_transport_failure(&status) {
        return status;
    }
    let error = if silt_api::wire::never_sent(&status) {
        BrokerError::unavailable(format!(
            "forwarding to the owner at {address} failed: it cannot be reached ({}); nothing was stored, retry",
            status.message()
        ))
    } else {
        BrokerError::CommitUnknown(format!(
            "forwarding to the owner at {address} failed mid-call ({}); the records may be stored, retry at the risk of a duplicate",
            status.message()
        ))
    };
    produce_status(error)
}

fn record_error(status: &Status) -> api::RecordResult {
    api::RecordResult {
        outcome: Some(api::record_result::Outcome::Error(api::RecordError {
            code: status.code() as i32,
            message: status.message().to_string(),
        })),
    }
}

/// Merges the parts of a split request: all succeeded, or one error. The error keeps the
/// `silt-not-stored` mark only if no part was stored.
fn merge<T>(
    results: Vec<(Vec<usize>, Result<T, Status>)>,
    mut apply: impl FnMut(Vec<usize>, T),
) -> Result<(), Status> {
    let parts = results.len();
    let mut errors = Vec::new();
    for (idx, result) in results {
        match result {
            Ok(part) => apply(idx, part),
            Err(status) => errors.push(status),
        }
    }
    let Some(first) = errors.first() else {
        return Ok(());
    };
    let none_stored = errors.len() == parts
        && errors
            .iter()
            .all(|s| s.metadata().get(NOT_STORED).is_some());
    if none_stored || parts == 1 {
        return Err(first.clone());
    }
    Err(Status::unavailable(format!(
        "part of this request, split over several partition owners, failed ({}); other parts may be stored, retry at the risk of duplicates",
        first.message()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_stored(message: &str) -> Status {
        produce_status(BrokerError::unavailable(message))
    }

    #[test]
    fn hop_failures_become_retriable_and_say_what_may_be_stored() {
        // The owner answered: its status passes as it is, whatever its words.
        let owner_said = produce_status(BrokerError::InvalidArgument("bad batch".into()));
        assert_eq!(
            hop_failure("a:1", owner_said.clone()).code(),
            owner_said.code()
        );
        let worded_like_a_refusal = Status::unavailable("tcp connect error: connection refused");
        let passed = hop_failure("a:1", worded_like_a_refusal);
        assert!(
            passed.metadata().get(NOT_STORED).is_none(),
            "a message is not a classification"
        );
        // The connection never opened: nothing was sent.
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let refused = hop_failure(
            "a:1",
            Status::from_error(Box::new(tonic::ConnectError(Box::new(refused)))),
        );
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(refused.metadata().get(NOT_STORED).is_some());
        // The connection broke mid-call: the owner may have stored the records.
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let reset = hop_failure("a:1", Status::from_error(Box::new(reset)));
        assert_eq!(reset.code(), tonic::Code::Unavailable);
        assert!(reset.metadata().get(NOT_STORED).is_none());
    }

    #[test]
    fn a_split_request_is_not_stored_only_if_no_part_was() {
        let mut seen = Vec::new();
        let ok = merge(vec![(vec![0], Ok(1)), (vec![1], Ok(2))], |i, v| {
            seen.push((i, v))
        });
        assert!(ok.is_ok());
        assert_eq!(seen.len(), 2);

        let all_failed = merge::<i32>(
            vec![
                (vec![0], Err(not_stored("a"))),
                (vec![1], Err(not_stored("b"))),
            ],
            |_, _| {},
        )
        .unwrap_err();
        assert!(all_failed.metadata().get(NOT_STORED).is_some());

        let partial = merge(
            vec![(vec![0], Ok(1)), (vec![1], Err(not_stored("b")))],
            |_, _| {},
        )
        .unwrap_err();
        assert_eq!(partial.code(), tonic::Code::Unavailable);
        assert!(partial.metadata().get(NOT_STORED).is_none());
    }
}
