//! An in-process stand-in for the broker's `Log` and `Admin` services: a partition log in
//! memory that validates batches with `silt_storage::batch::validate_batch`, assigns dense
//! offsets and serves raw-batch fetches, and can be told to refuse produce calls (UNAVAILABLE
//! with a `retry-after-ms` hint).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use silt_api::v1::admin_server::{Admin, AdminServer};
use silt_api::v1::log_server::{Log, LogServer};
use silt_api::v1::start_position::Position;
use silt_api::v1::*;
use silt_client::Client;
use silt_storage::batch::{BatchLimits, set_base_offset, validate_batch};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
pub(crate) struct Partition {
    /// (base offset, last offset, batch bytes with the base offset set)
    batches: Vec<(i64, i64, Bytes)>,
    next: i64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) topics: HashMap<String, Vec<Partition>>,
    /// Record limit the mock enforces (the topic advertises 0: no client-side check).
    pub(crate) max_record_bytes: usize,
    /// Produce calls to refuse with UNAVAILABLE before accepting.
    pub(crate) refuse: u32,
    pub(crate) produce_calls: u32,
    /// Largest number of batches seen in one request.
    pub(crate) widest_request: usize,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Mock(Arc<Mutex<State>>);

impl Mock {
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

#[tonic::async_trait]
impl Log for Mock {
    async fn produce(
        &self,
        _: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn produce_batches(
        &self,
        request: Request<ProduceBatchesRequest>,
    ) -> Result<Response<ProduceBatchesResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state();
        state.produce_calls += 1;
        state.widest_request = state.widest_request.max(request.batches.len());
        if state.refuse > 0 {
            state.refuse -= 1;
            let mut status = Status::unavailable("object store is down");
            status
                .metadata_mut()
                .insert("retry-after-ms", "10".parse().unwrap());
            return Err(status);
        }
        let limits = BatchLimits {
            max_batch_bytes: 8 << 20,
            max_record_bytes: state.max_record_bytes,
        };
        let Some(partitions) = state.topics.get(&request.topic) else {
            return Err(Status::not_found(format!(
                "topic '{}' does not exist",
                request.topic
            )));
        };
        let count = partitions.len() as u32;
        let mut checked = Vec::new();
        for b in &request.batches {
            if b.partition >= count {
                return Err(Status::not_found("no such partition"));
            }
            let valid = validate_batch(&b.batch, &limits)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            checked.push((b.partition, valid.record_count, b.batch.clone()));
        }
        let partitions = state.topics.get_mut(&request.topic).unwrap();
        let mut acks = Vec::new();
        for (partition, records, bytes) in checked {
            let log = &mut partitions[partition as usize];
            let base = log.next;
            let last = base + i64::from(records) - 1;
            let mut stored = BytesMut::from(&bytes[..]);
            set_base_offset(&mut stored, base);
            log.batches.push((base, last, stored.freeze()));
            log.next = last + 1;
            acks.push(BatchAck {
                partition,
                base_offset: base,
                last_offset: last,
            });
        }
        Ok(Response::new(ProduceBatchesResponse { acks }))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let request = request.into_inner();
        let state = self.state();
        let partitions = state
            .topics
            .get(&request.topic)
            .ok_or_else(|| Status::not_found("topic"))?;
        let log = partitions
            .get(request.partition as usize)
            .ok_or_else(|| Status::not_found("partition"))?;
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        let mut next_offset = request.offset;
        for (_, last, batch) in log
            .batches
            .iter()
            .filter(|(_, last, _)| *last >= request.offset)
        {
            if !batches.is_empty() && bytes + batch.len() > request.max_bytes as usize {
                break;
            }
            bytes += batch.len();
            batches.push(batch.clone());
            next_offset = last + 1;
        }
        Ok(Response::new(FetchResponse {
            records: Vec::new(),
            batches,
            high_watermark: log.next,
            log_start_offset: 0,
            next_offset,
        }))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

    async fn subscribe(
        &self,
        _: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let request = request.into_inner();
        let state = self.state();
        let partitions = state
            .topics
            .get(&request.topic)
            .ok_or_else(|| Status::not_found("topic"))?;
        let hw = partitions[request.partition as usize].next;
        let offset = match request.spec.and_then(|s| s.position) {
            Some(Position::Latest(_)) => hw,
            Some(Position::Offset(o)) => o,
            _ => 0,
        };
        Ok(Response::new(ListOffsetsResponse {
            offset,
            timestamp_ms: -1,
            high_watermark: hw,
            log_start_offset: 0,
        }))
    }
}

#[tonic::async_trait]
impl Admin for Mock {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state();
        if state.topics.contains_key(&request.name) {
            return Err(Status::already_exists("exists"));
        }
        let partitions = (0..request.partitions)
            .map(|_| Partition::default())
            .collect();
        state.topics.insert(request.name.clone(), partitions);
        let topic = TopicInfo {
            name: request.name,
            partitions: request.partitions,
            ..Default::default()
        };
        Ok(Response::new(CreateTopicResponse { topic: Some(topic) }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        match self.state().topics.remove(&name) {
            Some(_) => Ok(Response::new(DeleteTopicResponse {})),
            None => Err(Status::not_found(format!("topic '{name}' does not exist"))),
        }
    }

    async fn list_topics(
        &self,
        _: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let state = self.state();
        let topics = state
            .topics
            .iter()
            .map(|(name, partitions)| TopicInfo {
                name: name.clone(),
                partitions: partitions.len() as u32,
                retention_ms: -1,
                max_record_bytes: 1 << 20,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let name = request.into_inner().name;
        let state = self.state();
        let partitions = state
            .topics
            .get(&name)
            .ok_or_else(|| Status::not_found(format!("topic '{name}' does not exist")))?;
        let topic = TopicInfo {
            name,
            partitions: partitions.len() as u32,
            max_record_bytes: 0,
            ..Default::default()
        };
        let offsets = partitions
            .iter()
            .enumerate()
            .map(|(i, p)| PartitionInfo {
                partition: i as u32,
                log_start_offset: 0,
                high_watermark: p.next,
            })
            .collect();
        Ok(Response::new(DescribeTopicResponse {
            topic: Some(topic),
            partitions: offsets,
        }))
    }

    async fn get_stats(
        &self,
        _: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        Ok(Response::new(GetStatsResponse {
            cpu_seconds: 1.5,
            ..Default::default()
        }))
    }

    async fn cluster_status(
        &self,
        _: Request<silt_api::v1::ClusterStatusRequest>,
    ) -> Result<Response<silt_api::v1::ClusterStatusResponse>, Status> {
        Ok(Response::new(silt_api::v1::ClusterStatusResponse {
            brokers: Vec::new(),
        }))
    }
}

/// Starts the mock on a free loopback port and connects a client to it.
pub(crate) async fn start() -> (Mock, Client) {
    let mock = Mock::default();
    mock.state().max_record_bytes = 1 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(LogServer::new(mock.clone()))
        .add_service(AdminServer::new(mock.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    let client = Client::connect(&format!("http://{addr}")).await.unwrap();
    (mock, client)
}
