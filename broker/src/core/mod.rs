//! The protocol-neutral core: what a Silt broker does, whatever protocol asked. Every edge —
//! gRPC today (`crate::edge::grpc`), the Kafka wire protocol and a Kinesis-compatible API next —
//! decodes its request, calls the [`Broker`] facade, and encodes the answer; no decision lives
//! in an edge. Nothing here imports tonic, `silt_api`, HTTP or Kafka wire types; errors are
//! [`BrokerError`]s whose [`ErrorKind`] says what the caller should do.
//!
//! A record's path through the core:
//! 1. [`routing`] — which broker owns each partition of a request; parts owned elsewhere go to
//!    their owner through the edge's [`Forwarder`] (one hop), keyed records are placed by the
//!    [`Partitioner`];
//! 2. [`produce`] — limits and batch validation on the owner;
//! 3. [`wal_cache`] — batches wait in memory for their window to flush; the producer holds a
//!    [`wal_cache::DurableTicket`];
//! 4. [`flusher`] — one segment object per window, uploaded, then committed in metadata in
//!    order; only then the tickets resolve and [`log_index`] makes the records readable;
//! 5. [`fetch`] — reads committed byte ranges through the read cache (fetch, long-poll,
//!    subscribe, offsets by time).
//!
//! Beside it: [`topics`] (the topic table, name rules, defaults), [`admin`] (topics and the
//! cluster's status as the facade serves them), [`groups`] (consumer groups: the coordinator,
//! its state machine and assignor, and their part of the facade); the broker's metrics are
//! [`crate::observe::metrics`].

pub mod admin;
pub mod error;
pub mod fetch;
pub mod flusher;
pub mod groups;
pub mod index_pages;
pub mod log_index;
pub mod partitioner;
pub mod produce;
pub mod routing;
pub mod topics;
pub mod wal_cache;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use silt_metadata::Clock;
use silt_metadata::catalog::Catalog;

pub use error::{BrokerError, ErrorKind};
pub use fetch::{FetchOutput, Fetched, OffsetSpec};
pub use log_index::Offsets;
pub use partitioner::{Murmur2, Partitioner};
pub use produce::{RecordAck, RecordInput};
pub use routing::{Forwarder, Hop};
pub use topics::{TopicChange, TopicDefaults, TopicSpec};
pub use wal_cache::BatchAck;

use crate::cluster::ClusterView;
use crate::observe::metrics::Metrics;
use fetch::FetchPath;
use log_index::LogIndex;
use produce::ProducePath;
use routing::Router;
use topics::TopicTable;
use wal_cache::WalCache;

/// What the facade is built from (the runtime assembles it).
#[derive(Debug)]
pub struct BrokerParts {
    pub catalog: Catalog,
    pub view: Arc<ClusterView>,
    pub topics: Arc<TopicTable>,
    pub index: Arc<LogIndex>,
    pub wal: Arc<WalCache>,
    pub produce: Arc<ProducePath>,
    pub fetch: Arc<FetchPath>,
    pub forwarder: Arc<dyn Forwarder>,
    pub partitioner: Arc<dyn Partitioner>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub defaults: TopicDefaults,
    pub groups: Arc<groups::Coordinator>,
}

/// One broker's operations, for every edge.
#[derive(Debug)]
pub struct Broker {
    catalog: Catalog,
    view: Arc<ClusterView>,
    topics: Arc<TopicTable>,
    index: Arc<LogIndex>,
    wal: Arc<WalCache>,
    fetch: Arc<FetchPath>,
    router: Router,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    defaults: TopicDefaults,
    groups: Arc<groups::Coordinator>,
    started_ms: i64,
    /// When the last produce call arrived (ms since `epoch`).
    last_call: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

impl Broker {
    pub fn new(parts: BrokerParts) -> Self {
        let started_ms = parts.clock.now_ms();
        Self {
            router: Router::new(
                parts.view.clone(),
                parts.produce,
                parts.forwarder,
                parts.partitioner,
            ),
            catalog: parts.catalog,
            view: parts.view,
            topics: parts.topics,
            index: parts.index,
            wal: parts.wal,
            fetch: parts.fetch,
            metrics: parts.metrics,
            clock: parts.clock,
            defaults: parts.defaults,
            groups: parts.groups,
            started_ms,
            last_call: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// The broker is draining: produce parts owned elsewhere are answered with their owner
    /// (clients re-route at once) rather than forwarded.
    pub fn set_draining(&self) {
        self.router.set_draining();
    }

    /// Time since the last produce call arrived.
    pub fn idle_for(&self) -> Duration {
        let last = self.last_call.load(std::sync::atomic::Ordering::Relaxed);
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    fn called(&self) {
        self.last_call.store(
            self.epoch.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The broker's metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The broker's id.
    pub fn broker_id(&self) -> &str {
        self.view.broker_id()
    }

    /// Appends client-built RecordBatch v2 batches (`(partition, bytes)`), stored whole or not
    /// at all; one ack per batch, in request order, once durable.
    pub async fn produce_batches(
        &self,
        hop: Hop,
        topic: &str,
        batches: Vec<(u32, Bytes)>,
    ) -> Result<Vec<BatchAck>, BrokerError> {
        self.called();
        let started = std::time::Instant::now();
        let result = self.router.produce_batches(hop, topic, batches).await;
        self.count_produce(hop, started, result.as_ref().err(), 0);
        result
    }

    /// Appends records one by one (a bad record fails alone); one result per record, in
    /// request order, once durable.
    pub async fn produce_records(
        &self,
        hop: Hop,
        topic: &str,
        records: Vec<RecordInput>,
    ) -> Result<Vec<Result<RecordAck, BrokerError>>, BrokerError> {
        self.called();
        let started = std::time::Instant::now();
        let result = self.router.produce_records(hop, topic, records).await;
        match &result {
            Ok(results) => {
                if hop == Hop::FromClient {
                    for e in results.iter().filter_map(|r| r.as_ref().err()) {
                        self.metrics.produce_failed(&e.kind, 1);
                    }
                }
                let any_acked = results.iter().any(Result::is_ok);
                self.count_produce(hop, started, None, usize::from(!any_acked));
            }
            Err(e) => self.count_produce(hop, started, Some(e), 0),
        }
        result
    }

    /// Counts a produce request at the broker the client called (a forwarded request is
    /// counted there, not again at the owner): its failure by reason, or its ack latency.
    fn count_produce(
        &self,
        hop: Hop,
        started: std::time::Instant,
        error: Option<&BrokerError>,
        nothing_acked: usize,
    ) {
        if hop == Hop::Forwarded {
            return;
        }
        match error {
            Some(e) => self.metrics.produce_failed(&e.kind, 1),
            None if nothing_acked == 0 => self.metrics.produce_acked(started.elapsed()),
            None => {}
        }
    }

    /// Reads from `offset`, waiting up to `max_wait` when nothing is committed there yet.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: usize,
        max_wait: Duration,
        raw: bool,
    ) -> Result<FetchOutput, BrokerError> {
        self.fetch
            .fetch(topic, partition, offset, max_bytes, max_wait, raw)
            .await
    }

    /// Reads a partition from `start` on as a stream of non-empty fetch results that waits for
    /// new records (see [`FetchPath::subscribe`]).
    pub async fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        start: OffsetSpec,
        max_bytes: usize,
        raw: bool,
    ) -> Result<impl Stream<Item = Result<FetchOutput, BrokerError>> + use<>, BrokerError> {
        self.fetch
            .subscribe(topic, partition, start, max_bytes, raw)
            .await
    }

    /// Resolves an offset lookup: `(offset, timestamp of the record found or -1, offsets)`.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<(i64, i64, Offsets), BrokerError> {
        self.fetch.list_offsets(topic, partition, spec).await
    }
}
