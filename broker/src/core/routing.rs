//! Produce routing: which broker stores each part of a request, and the one hop to the owners.
//!
//! A request is split by partition owner; the local part goes to the [`ProducePath`], each
//! remote part to its owner through the [`Forwarder`] the edge provides (gRPC today), once: a
//! request that arrived forwarded ([`Hop::Forwarded`]) is never forwarded again — if this
//! broker does not own it either, the answer is not-owner. So a plain client behind one address
//! (a Kubernetes Service) works as well as a routing client that talks to owners directly.
//!
//! A batch request split over several owners is validated whole first, so one bad batch still
//! refuses the whole request with nothing stored. Per-record requests are routed record by
//! record — explicit partition, else the [`Partitioner`] of the key, else one sticky partition
//! this broker owns — and their results merged back in request order. A split request whose
//! parts fail differently says what may be stored.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;

use crate::cluster::{ClusterView, Owner};
use crate::core::error::BrokerError;
use crate::core::partitioner::Partitioner;
use crate::core::produce::{ProducePath, RecordAck, RecordInput, own_small_shares};
use crate::core::wal_cache::BatchAck;

/// How a produce reached this broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// From a client: parts owned elsewhere are forwarded to their owners.
    FromClient,
    /// From another broker: never forwarded again.
    Forwarded,
}

/// The network hop to a partition's owner, provided by an edge (gRPC today). Errors come back
/// as the owner's own answer would have been, or, for a failed hop, as unavailable (nothing
/// sent) or ambiguous (sent, no answer).
#[async_trait]
pub trait Forwarder: Send + Sync + Debug {
    async fn produce_batches(
        &self,
        owner: &str,
        topic: &str,
        batches: Vec<(u32, Bytes)>,
    ) -> Result<Vec<BatchAck>, BrokerError>;

    async fn produce_records(
        &self,
        owner: &str,
        topic: &str,
        records: Vec<RecordInput>,
    ) -> Result<Vec<Result<RecordAck, BrokerError>>, BrokerError>;
}

/// Where part of a request goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Local,
    Remote(String),
}

/// Splits produce requests by owner and forwards the remote parts.
#[derive(Debug)]
pub struct Router {
    view: Arc<ClusterView>,
    produce: Arc<ProducePath>,
    forwarder: Arc<dyn Forwarder>,
    partitioner: Arc<dyn Partitioner>,
    sticky: AtomicU32,
    /// Set while the broker drains: parts owned elsewhere are answered with their owner
    /// instead of forwarded, so clients move to the owners before this broker stops.
    draining: std::sync::atomic::AtomicBool,
}

impl Router {
    pub fn new(
        view: Arc<ClusterView>,
        produce: Arc<ProducePath>,
        forwarder: Arc<dyn Forwarder>,
        partitioner: Arc<dyn Partitioner>,
    ) -> Self {
        Self {
            view,
            produce,
            forwarder,
            partitioner,
            sticky: AtomicU32::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on, send clients to the owners instead of forwarding for them.
    pub fn set_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where a partition's records go, or the not-owner error when they cannot go anywhere.
    fn target(&self, topic_id: u64, partition: u32, hop: Hop) -> Result<Target, BrokerError> {
        match self.view.owner((topic_id, partition)) {
            Owner::Me(_) => Ok(Target::Local),
            Owner::Other { address, broker_id } if hop == Hop::Forwarded => {
                Err(BrokerError::not_owner(
                    format!(
                        "broker '{}' does not own partition {partition} (broker '{broker_id}' does) and does not forward a forwarded request; nothing was stored, retry against the owner",
                        self.view.broker_id()
                    ),
                    Some(address),
                ))
            }
            Owner::Other { address, broker_id }
                if self.draining.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                Err(BrokerError::not_owner(
                    format!(
                        "broker '{}' is shutting down and no longer owns partition {partition} (broker '{broker_id}' does); nothing was stored, retry against the owner",
                        self.view.broker_id()
                    ),
                    Some(address),
                ))
            }
            Owner::Other { address, .. } => Ok(Target::Remote(address)),
            Owner::Unowned => Err(BrokerError::not_owner(
                format!(
                    "partition {partition} has no live owner right now (it is being reassigned); nothing was stored, retry shortly"
                ),
                None,
            )),
        }
    }

    /// Appends client-built batches wherever their partitions are owned; one ack per batch, in
    /// request order.
    pub async fn produce_batches(
        &self,
        hop: Hop,
        topic: &str,
        batches: Vec<(u32, Bytes)>,
    ) -> Result<Vec<BatchAck>, BrokerError> {
        let topic_meta = self.produce.topics.require(topic)?;
        let request_bytes: usize = batches.iter().map(|(_, b)| b.len()).sum();
        // Each target's batches, with their place in the request.
        type Part = Vec<(usize, (u32, Bytes))>;
        let mut groups: BTreeMap<Target, Part> = BTreeMap::new();
        for (i, (partition, batch)) in batches.into_iter().enumerate() {
            let target = if partition >= topic_meta.record.partitions {
                Target::Local // refused there with NOT_FOUND
            } else {
                self.target(topic_meta.id, partition, hop)?
            };
            groups
                .entry(target)
                .or_default()
                .push((i, (partition, batch)));
        }
        if groups.len() > 1 && groups.contains_key(&Target::Local) && self.produce.wal.is_closed() {
            // Shutting down: the local part would be refused after the others were forwarded
            // and maybe stored, an ambiguous answer. Refuse it all first: nothing is stored and
            // the client retries at the new owners.
            return Err(shutting_down());
        }
        if groups.len() > 1 {
            // Refuse the whole request if any batch is bad, before any part is stored.
            let all: Vec<(u32, Bytes)> =
                groups.values().flatten().map(|(_, b)| b.clone()).collect();
            self.produce.validate_batches(&topic_meta, all).await?;
        }
        let total: usize = groups.values().map(Vec::len).sum();
        let parts = groups.into_iter().map(|(target, batches)| async move {
            let (idx, mut batches): (Vec<usize>, Vec<(u32, Bytes)>) = batches.into_iter().unzip();
            let result = match target {
                Target::Local => {
                    own_small_shares(&mut batches, request_bytes);
                    self.produce.produce_batches(topic, batches).await
                }
                Target::Remote(address) => {
                    self.forwarder
                        .produce_batches(&address, topic, batches)
                        .await
                }
            };
            (idx, result)
        });
        let mut acks = vec![BatchAck::default(); total];
        merge(join_all(parts).await, |idx, part: Vec<BatchAck>| {
            for (i, a) in idx.into_iter().zip(part) {
                acks[i] = a;
            }
        })?;
        Ok(acks)
    }

    /// Appends records one by one wherever their partitions are owned; one result per record,
    /// in request order (a bad record fails alone).
    pub async fn produce_records(
        &self,
        hop: Hop,
        topic: &str,
        records: Vec<RecordInput>,
    ) -> Result<Vec<Result<RecordAck, BrokerError>>, BrokerError> {
        let topic_meta = self.produce.topics.require(topic)?;
        let partitions = topic_meta.record.partitions;
        let owners: Vec<Result<Target, BrokerError>> = (0..partitions)
            .map(|p| self.target(topic_meta.id, p, hop))
            .collect();
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
        let total = records.len();
        let mut results: Vec<Option<Result<RecordAck, BrokerError>>> = vec![None; total];
        let mut groups: BTreeMap<Target, Vec<(usize, RecordInput)>> = BTreeMap::new();
        for (i, mut r) in records.into_iter().enumerate() {
            let p = match (r.partition, &r.key) {
                (Some(p), _) => p,
                (None, Some(key)) => self.partitioner.partition(key, partitions),
                (None, None) => sticky,
            };
            r.partition = Some(p);
            match owners.get(p as usize) {
                None => groups.entry(Target::Local).or_default().push((i, r)),
                Some(Ok(t)) => groups.entry(t.clone()).or_default().push((i, r)),
                Some(Err(e)) => results[i] = Some(Err(e.clone())),
            }
        }
        if groups.is_empty() {
            return Ok(results.into_iter().flatten().collect());
        }
        if groups.len() > 1 && groups.contains_key(&Target::Local) && self.produce.wal.is_closed() {
            return Err(shutting_down());
        }
        // A request stored here whole fails whole (a limit, a full WAL cache); a split one
        // reports each part's failure on its records.
        let whole_here = groups.len() == 1
            && groups.contains_key(&Target::Local)
            && results.iter().all(Option::is_none);
        let parts = groups.into_iter().map(|(target, records)| async move {
            let (idx, records): (Vec<usize>, Vec<RecordInput>) = records.into_iter().unzip();
            let result = match target {
                Target::Local => self.produce.produce_records(topic, records).await,
                Target::Remote(address) => {
                    self.forwarder
                        .produce_records(&address, topic, records)
                        .await
                }
            };
            (idx, result)
        });
        for (idx, result) in join_all(parts).await {
            if whole_here {
                return result;
            }
            match result {
                Ok(part) => {
                    for (i, r) in idx.into_iter().zip(part) {
                        results[i] = Some(r);
                    }
                }
                Err(e) => {
                    for i in idx {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BrokerError::internal("no result for a record"))))
            .collect())
    }
}

fn shutting_down() -> BrokerError {
    BrokerError::unavailable(
        "the broker is shutting down; nothing of this request was stored, retry on another broker",
    )
}

/// Merges the parts of a split request: all succeeded, or one error. The error says nothing
/// was stored only if no part was stored.
fn merge<T>(
    results: Vec<(Vec<usize>, Result<T, BrokerError>)>,
    mut apply: impl FnMut(Vec<usize>, T),
) -> Result<(), BrokerError> {
    let parts = results.len();
    let mut errors = Vec::new();
    for (idx, result) in results {
        match result {
            Ok(part) => apply(idx, part),
            Err(e) => errors.push(e),
        }
    }
    let Some(first) = errors.first() else {
        return Ok(());
    };
    let none_stored = errors.len() == parts && errors.iter().all(BrokerError::nothing_stored);
    if none_stored || parts == 1 {
        return Err(first.clone());
    }
    Err(BrokerError::ambiguous(format!(
        "part of this request, split over several partition owners, failed ({}); other parts may be stored, retry at the risk of duplicates",
        first.message
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

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
                (vec![0], Err(BrokerError::unavailable("a"))),
                (vec![1], Err(BrokerError::unavailable("b"))),
            ],
            |_, _| {},
        )
        .unwrap_err();
        assert!(all_failed.nothing_stored());

        let partial = merge(
            vec![
                (vec![0], Ok(1)),
                (vec![1], Err(BrokerError::unavailable("b"))),
            ],
            |_, _| {},
        )
        .unwrap_err();
        assert!(!partial.nothing_stored());
    }
}
