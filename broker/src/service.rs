//! The gRPC edge: `silt.v1.Log` and `silt.v1.Admin`. It converts wire messages to domain calls
//! (validating every field on the way in) and domain errors to statuses (via
//! [`crate::status`]); no broker logic lives here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use silt_api::v1 as api;
use silt_api::v1::admin_server::Admin;
use silt_api::v1::log_server::Log;
use silt_metadata::Clock;
use silt_metadata::catalog::{Catalog, Topic};
use silt_metadata::codec::TopicRecord;
use silt_storage::batch::DecodedRecord;
use silt_storage::object::InstrumentedStore;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::cluster::{ClusterView, Owner};
use crate::error::BrokerError;
use crate::fetch::{FetchPath, Fetched, OffsetSpec};
use crate::forward::{FORWARDED, Router};
use crate::log_index::LogIndex;
use crate::produce::{ProducePath, RecordInput};
use crate::stats::{Stats, process_cpu_seconds};
use crate::status::{code_of, produce_status};
use crate::topics::{MAX_PARTITIONS, TopicTable, validate_topic_name};
use crate::wal_cache::WalCache;

/// `silt.v1.Log`.
#[derive(Debug, Clone)]
pub struct LogService {
    pub produce: Arc<ProducePath>,
    pub fetch: Arc<FetchPath>,
    pub router: Arc<Router>,
}

impl LogService {
    /// The per-record path on this broker (every record's partition is owned here, or is
    /// refused per record).
    async fn produce_here(&self, req: api::ProduceRequest) -> Result<api::ProduceResponse, Status> {
        let records = req
            .records
            .into_iter()
            .map(|r| RecordInput {
                key: r.key,
                value: r.value,
                headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                timestamp_ms: r.timestamp_ms,
                partition: r.partition,
            })
            .collect();
        let results = self
            .produce
            .produce_records(&req.topic, records)
            .await
            .map_err(produce_status)?;
        let results = results
            .into_iter()
            .map(|r| api::RecordResult {
                outcome: Some(match r {
                    Ok((partition, offset)) => {
                        api::record_result::Outcome::Ack(api::RecordAck { partition, offset })
                    }
                    Err(e) => api::record_result::Outcome::Error(api::RecordError {
                        code: code_of(&e) as i32,
                        message: e.to_string(),
                    }),
                }),
            })
            .collect();
        Ok(api::ProduceResponse { results })
    }
}

#[tonic::async_trait]
impl Log for LogService {
    async fn produce(
        &self,
        request: Request<api::ProduceRequest>,
    ) -> Result<Response<api::ProduceResponse>, Status> {
        let forwarded = request.metadata().get(FORWARDED).is_some();
        let response = self
            .router
            .produce(forwarded, request.into_inner(), |req| {
                self.produce_here(req)
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn produce_batches(
        &self,
        request: Request<api::ProduceBatchesRequest>,
    ) -> Result<Response<api::ProduceBatchesResponse>, Status> {
        let forwarded = request.metadata().get(FORWARDED).is_some();
        let response = self
            .router
            .produce_batches(forwarded, request.into_inner())
            .await?;
        Ok(Response::new(response))
    }

    async fn fetch(
        &self,
        request: Request<api::FetchRequest>,
    ) -> Result<Response<api::FetchResponse>, Status> {
        let req = request.into_inner();
        let out = self
            .fetch
            .fetch(
                &req.topic,
                req.partition,
                req.offset,
                req.max_bytes as usize,
                Duration::from_millis(u64::from(req.max_wait_ms)),
                req.raw_batches,
            )
            .await?;
        let (records, batches) = split(out.data);
        Ok(Response::new(api::FetchResponse {
            records,
            batches,
            high_watermark: out.offsets.high_watermark,
            log_start_offset: out.offsets.log_start,
            next_offset: out.next_offset,
        }))
    }

    type SubscribeStream =
        Pin<Box<dyn Stream<Item = Result<api::SubscribeResponse, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<api::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        let spec = start_spec(req.start.as_ref())?;
        let (mut offset, _, _) = self
            .fetch
            .list_offsets(&req.topic, req.partition, spec)
            .await?;
        // A small channel: a slow reader fills it and gRPC flow control stops the loop.
        let (tx, rx) = mpsc::channel(2);
        let fetch = self.fetch.clone();
        tokio::spawn(async move {
            loop {
                let next = fetch.fetch(
                    &req.topic,
                    req.partition,
                    offset,
                    req.max_bytes as usize,
                    Duration::from_secs(30),
                    req.raw_batches,
                );
                let result = tokio::select! {
                    _ = tx.closed() => return,
                    result = next => result,
                };
                let message = match result {
                    Ok(out) if out.next_offset == offset => continue,
                    Ok(out) => {
                        offset = out.next_offset;
                        let (records, batches) = split(out.data);
                        Ok(api::SubscribeResponse {
                            records,
                            batches,
                            high_watermark: out.offsets.high_watermark,
                            next_offset: out.next_offset,
                        })
                    }
                    Err(e) => Err(Status::from(e)),
                };
                let stop = message.is_err();
                if tx.send(message).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_offsets(
        &self,
        request: Request<api::ListOffsetsRequest>,
    ) -> Result<Response<api::ListOffsetsResponse>, Status> {
        let req = request.into_inner();
        let spec = start_spec(req.spec.as_ref())?;
        let (offset, timestamp_ms, offsets) = self
            .fetch
            .list_offsets(&req.topic, req.partition, spec)
            .await?;
        Ok(Response::new(api::ListOffsetsResponse {
            offset,
            timestamp_ms,
            high_watermark: offsets.high_watermark,
            log_start_offset: offsets.log_start,
        }))
    }
}

fn start_spec(start: Option<&api::StartPosition>) -> Result<OffsetSpec, BrokerError> {
    use api::start_position::Position;
    match start.and_then(|s| s.position) {
        Some(Position::Earliest(_)) => Ok(OffsetSpec::Earliest),
        Some(Position::Latest(_)) => Ok(OffsetSpec::Latest),
        Some(Position::Offset(o)) => Ok(OffsetSpec::Offset(o)),
        Some(Position::TimestampMs(ts)) => Ok(OffsetSpec::Timestamp(ts)),
        None => Err(BrokerError::InvalidArgument(
            "a start position is required: earliest, latest, offset or timestamp_ms".into(),
        )),
    }
}

fn split(data: Fetched) -> (Vec<api::FetchedRecord>, Vec<bytes::Bytes>) {
    match data {
        Fetched::Batches(b) => (Vec::new(), b),
        Fetched::Records(r) => (r.into_iter().map(record_to_wire).collect(), Vec::new()),
    }
}

fn record_to_wire(r: DecodedRecord) -> api::FetchedRecord {
    api::FetchedRecord {
        offset: r.offset,
        timestamp_ms: r.timestamp_ms,
        key: r.key,
        value: r.value,
        headers: r
            .headers
            .into_iter()
            .map(|(key, value)| api::Header { key, value })
            .collect(),
    }
}

/// `silt.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    pub catalog: Catalog,
    pub view: Arc<ClusterView>,
    pub topics: Arc<TopicTable>,
    pub index: Arc<LogIndex>,
    pub wal: Arc<WalCache>,
    pub store: Arc<InstrumentedStore>,
    pub stats: Arc<Stats>,
    pub clock: Arc<dyn Clock>,
    pub broker_id: String,
    pub started_ms: i64,
    pub default_retention_ms: i64,
    pub default_max_record_bytes: u32,
    pub max_batch_bytes: u32,
}

impl AdminService {
    fn info(&self, t: &Topic) -> api::TopicInfo {
        api::TopicInfo {
            name: t.record.name.clone(),
            topic_id: t.id,
            partitions: t.record.partitions,
            retention_ms: t.record.retention_ms,
            max_record_bytes: t.record.max_record_bytes,
            created_at_ms: t.record.created_at_ms,
        }
    }

    fn new_topic(&self, req: &api::CreateTopicRequest) -> Result<TopicRecord, BrokerError> {
        validate_topic_name(&req.name)?;
        if req.partitions == 0 || req.partitions > MAX_PARTITIONS {
            return Err(BrokerError::InvalidArgument(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {}",
                req.partitions
            )));
        }
        let config = req.config.unwrap_or_default();
        let retention_ms = config.retention_ms.unwrap_or(self.default_retention_ms);
        if retention_ms < -1 || retention_ms == 0 {
            return Err(BrokerError::InvalidArgument(format!(
                "retention_ms must be -1 (keep forever) or positive, got {retention_ms}"
            )));
        }
        let max_record_bytes = config
            .max_record_bytes
            .unwrap_or(self.default_max_record_bytes);
        if max_record_bytes == 0 || max_record_bytes > self.max_batch_bytes {
            return Err(BrokerError::InvalidArgument(format!(
                "max_record_bytes must be between 1 and the broker's max batch size {}, got {max_record_bytes}",
                self.max_batch_bytes
            )));
        }
        Ok(TopicRecord {
            v: 1,
            name: req.name.clone(),
            partitions: req.partitions,
            retention_ms,
            max_record_bytes,
            created_at_ms: self.clock.now_ms(),
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<api::CreateTopicRequest>,
    ) -> Result<Response<api::CreateTopicResponse>, Status> {
        let record = self.new_topic(request.get_ref())?;
        let topic = self
            .catalog
            .create_topic(record)
            .await
            .map_err(BrokerError::from)?;
        let info = self.info(&topic);
        tracing::info!(topic = %info.name, partitions = info.partitions, id = info.topic_id, "topic created");
        self.topics.insert(topic.clone());
        // Answer once every partition has an owner, so a produce right after succeeds.
        let mut changes = self.view.subscribe_topology();
        let all_owned = || {
            (0..topic.record.partitions).all(|p| self.view.owner((topic.id, p)) != Owner::Unowned)
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while !all_owned() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        Ok(Response::new(api::CreateTopicResponse {
            topic: Some(info),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<api::DeleteTopicRequest>,
    ) -> Result<Response<api::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        validate_topic_name(&name)?;
        let topic = self
            .catalog
            .delete_topic(&name)
            .await
            .map_err(BrokerError::from)?;
        self.topics.remove(&name);
        self.index.remove_topic(topic.id);
        tracing::info!(topic = %name, "topic deleted");
        Ok(Response::new(api::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _request: Request<api::ListTopicsRequest>,
    ) -> Result<Response<api::ListTopicsResponse>, Status> {
        let topics = self.topics.all().iter().map(|t| self.info(t)).collect();
        Ok(Response::new(api::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<api::DescribeTopicRequest>,
    ) -> Result<Response<api::DescribeTopicResponse>, Status> {
        let topic = self.topics.require(&request.get_ref().name)?;
        let partitions = (0..topic.record.partitions)
            .map(|p| {
                let o = self.index.partition(topic.id, p).offsets();
                api::PartitionInfo {
                    partition: p,
                    log_start_offset: o.log_start,
                    high_watermark: o.high_watermark,
                }
            })
            .collect();
        Ok(Response::new(api::DescribeTopicResponse {
            topic: Some(self.info(&topic)),
            partitions,
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<api::GetStatsRequest>,
    ) -> Result<Response<api::GetStatsResponse>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        let o = self.store.stats();
        Ok(Response::new(api::GetStatsResponse {
            broker_id: self.broker_id.clone(),
            cpu_seconds: process_cpu_seconds(),
            uptime_ms: (self.clock.now_ms() - self.started_ms).max(0) as u64,
            records_produced: s.records_produced.load(Relaxed),
            bytes_produced: s.bytes_produced.load(Relaxed),
            segments_flushed: s.segments_flushed.load(Relaxed),
            segment_bytes_flushed: s.segment_bytes_flushed.load(Relaxed),
            object_puts: o.puts,
            object_gets: o.gets,
            object_get_bytes: o.get_bytes,
            records_fetched: s.records_fetched.load(Relaxed),
            bytes_fetched: s.bytes_fetched.load(Relaxed),
            wal_cache_bytes: self.wal.bytes_in_use() as u64,
            metadata_txns: s.metadata_txns.load(Relaxed),
            metadata_bytes: s.metadata_bytes.load(Relaxed),
            ack_stages: s
                .stages
                .summary()
                .into_iter()
                .map(|(stage, count, p50_ms, p99_ms, max_ms)| api::StageLatency {
                    stage: stage.to_string(),
                    count,
                    p50_ms,
                    p99_ms,
                    max_ms,
                })
                .collect(),
        }))
    }

    async fn cluster_status(
        &self,
        request: Request<api::ClusterStatusRequest>,
    ) -> Result<Response<api::ClusterStatusResponse>, Status> {
        let wanted = request.into_inner().topics;
        for name in &wanted {
            self.topics.require(name)?;
        }
        let counts = self.view.owned_counts();
        let brokers: Vec<_> = self.view.brokers();
        let address_of: std::collections::HashMap<&str, &str> = brokers
            .iter()
            .map(|b| (b.broker_id.as_str(), b.address.as_str()))
            .collect();
        let owners = self.view.owners();
        let mut partitions = Vec::new();
        for t in self.topics.all() {
            if !wanted.is_empty() && !wanted.contains(&t.record.name) {
                continue;
            }
            for p in 0..t.record.partitions {
                let owner = owners.get(&(t.id, p));
                let live =
                    owner.and_then(|o| address_of.get(o.broker_id.as_str()).map(|a| (o, *a)));
                partitions.push(api::PartitionOwner {
                    topic: t.record.name.clone(),
                    partition: p,
                    broker_id: live.map(|(o, _)| o.broker_id.clone()).unwrap_or_default(),
                    address: live.map(|(_, a)| a.to_string()).unwrap_or_default(),
                    epoch: owner.map_or(0, |o| o.epoch),
                });
            }
        }
        let brokers = brokers
            .iter()
            .map(|b| api::BrokerInfo {
                broker_id: b.broker_id.clone(),
                address: b.address.clone(),
                incarnation: b.incarnation,
                started_at_ms: b.started_at_ms,
                partitions_owned: counts.get(&b.broker_id).copied().unwrap_or(0),
            })
            .collect();
        Ok(Response::new(api::ClusterStatusResponse {
            brokers,
            partitions,
            controller: self.view.controller().map(|(id, _)| id).unwrap_or_default(),
        }))
    }
}
