//! An in-process stand-in for the broker's `Log` and `Admin` services: a partition log in
//! memory that validates batches with `silt_storage::batch::validate_batch`, assigns dense
//! offsets and serves raw-batch fetches, and can be told to refuse produce calls (UNAVAILABLE
//! with a `retry-after-ms` hint, an ambiguous failure).
//!
//! Several mock brokers can serve one [`State`], as real brokers share object storage: a
//! [`start_cluster`] starts them on their own ports. `State::owners` is the routing table they
//! report in `ClusterStatus`; a broker refuses batches of a partition another broker owns with
//! the not-owner answer (UNAVAILABLE, `silt-owner`, `silt-not-stored`) instead of forwarding.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use silt_api::v1::admin_server::{Admin, AdminServer};
use silt_api::v1::log_server::{Log, LogServer};
use silt_api::v1::start_position::Position;
use silt_api::v1::*;
use silt_client::Client;
use silt_storage::batch::{BatchLimits, set_base_offset, validate_batch};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
pub(crate) struct Partition {
    /// (base offset, last offset, batch bytes with the base offset set)
    batches: Vec<(i64, i64, Bytes)>,
    pub(crate) next: i64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) topics: HashMap<String, Vec<Partition>>,
    /// Each topic's cleanup settings as created or altered: (cleanup_policy,
    /// delete_retention_ms), reported as they were given (the mock does not validate them).
    pub(crate) cleanup: HashMap<String, (String, i64)>,
    /// Record limit the mock enforces (the topic advertises 0: no client-side check).
    pub(crate) max_record_bytes: usize,
    /// Produce calls to refuse with UNAVAILABLE before accepting.
    pub(crate) refuse: u32,
    pub(crate) produce_calls: u32,
    /// Largest number of batches seen in one request.
    pub(crate) widest_request: usize,
    /// Live brokers: (id, address as `host:port`).
    pub(crate) brokers: Vec<(String, String)>,
    /// Partition (of any topic) → owner address; a partition not here is unowned.
    pub(crate) owners: HashMap<u32, String>,
    /// What `ClusterStatus` reports instead of `owners` when set: a view lagging behind.
    pub(crate) reported_owners: Option<HashMap<u32, String>>,
    /// Broker address → the partitions of the batches it received, in order.
    pub(crate) received: HashMap<String, Vec<u32>>,
    pub(crate) not_owner_answers: u32,
    pub(crate) cluster_status_calls: u32,
}

impl State {
    /// `topic` with the cleanup settings the mock keeps for it.
    fn with_cleanup(&self, topic: TopicInfo) -> TopicInfo {
        match self.cleanup.get(&topic.name) {
            Some((policy, ms)) => TopicInfo {
                cleanup_policy: policy.clone(),
                delete_retention_ms: *ms,
                ..topic
            },
            None => topic,
        }
    }
}

/// One mock broker: the shared state and the address it answers at.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mock {
    state: Arc<Mutex<State>>,
    address: String,
}

impl Mock {
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

/// The not-owner answer of a broker that neither owns nor forwards.
fn not_owner(partition: u32, owner: &str) -> Status {
    let mut status = Status::unavailable(format!("not the owner of partition {partition}"));
    let metadata = status.metadata_mut();
    metadata.insert("silt-owner", owner.parse().unwrap());
    metadata.insert("silt-not-stored", "1".parse().unwrap());
    metadata.insert("retry-after-ms", "10".parse().unwrap());
    status
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
        let partitions: Vec<u32> = request.batches.iter().map(|b| b.partition).collect();
        state
            .received
            .entry(self.address.clone())
            .or_default()
            .extend(&partitions);
        for p in partitions {
            if let Some(owner) = state.owners.get(&p)
                && *owner != self.address
            {
                let owner = owner.clone();
                state.not_owner_answers += 1;
                return Err(not_owner(p, &owner));
            }
        }
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
            max_uncompressed_bytes: 128 << 20,
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
        let config = request.config.unwrap_or_default();
        let cleanup = (
            config.cleanup_policy.unwrap_or_else(|| "delete".into()),
            config.delete_retention_ms.unwrap_or(86_400_000),
        );
        state.cleanup.insert(request.name.clone(), cleanup);
        let topic = TopicInfo {
            name: request.name,
            partitions: request.partitions,
            ..Default::default()
        };
        Ok(Response::new(CreateTopicResponse {
            topic: Some(state.with_cleanup(topic)),
        }))
    }

    /// Alters only the cleanup settings.
    async fn alter_topic(
        &self,
        request: Request<silt_api::v1::AlterTopicRequest>,
    ) -> Result<Response<silt_api::v1::AlterTopicResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state();
        let Some(partitions) = state.topics.get(&request.name).map(Vec::len) else {
            return Err(Status::not_found(format!(
                "topic '{}' does not exist",
                request.name
            )));
        };
        let cleanup = state.cleanup.entry(request.name.clone()).or_default();
        if let Some(policy) = request.cleanup_policy {
            cleanup.0 = policy;
        }
        if let Some(ms) = request.delete_retention_ms {
            cleanup.1 = ms;
        }
        let topic = TopicInfo {
            name: request.name,
            partitions: partitions as u32,
            ..Default::default()
        };
        Ok(Response::new(silt_api::v1::AlterTopicResponse {
            topic: Some(state.with_cleanup(topic)),
        }))
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
            .map(|(name, partitions)| {
                state.with_cleanup(TopicInfo {
                    name: name.clone(),
                    partitions: partitions.len() as u32,
                    retention_ms: -1,
                    max_record_bytes: 1 << 20,
                    ..Default::default()
                })
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
        let topic = state.with_cleanup(TopicInfo {
            name,
            partitions: partitions.len() as u32,
            max_record_bytes: 0,
            ..Default::default()
        });
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
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let wanted = request.into_inner().topics;
        let mut state = self.state();
        state.cluster_status_calls += 1;
        let id_of = |address: &str| {
            state
                .brokers
                .iter()
                .find(|(_, a)| a == address)
                .map(|(id, _)| id.clone())
                .unwrap_or_default()
        };
        let mut partitions = Vec::new();
        let mut names: Vec<&String> = state.topics.keys().collect();
        names.sort();
        for name in names {
            if !wanted.is_empty() && !wanted.contains(name) {
                continue;
            }
            let owners = state.reported_owners.as_ref().unwrap_or(&state.owners);
            for partition in 0..state.topics[name].len() as u32 {
                let address = owners.get(&partition).cloned().unwrap_or_default();
                partitions.push(PartitionOwner {
                    topic: name.clone(),
                    partition,
                    broker_id: id_of(&address),
                    address,
                    epoch: 1,
                });
            }
        }
        let brokers = state
            .brokers
            .iter()
            .map(|(id, address)| BrokerInfo {
                broker_id: id.clone(),
                address: address.clone(),
                incarnation: 1,
                started_at_ms: 0,
                partitions_owned: partitions.iter().filter(|p| p.address == *address).count()
                    as u32,
            })
            .collect();
        let controller = state.brokers.first().map(|(id, _)| id.clone());
        Ok(Response::new(ClusterStatusResponse {
            brokers,
            partitions,
            controller: controller.unwrap_or_default(),
        }))
    }
}

/// A running mock broker.
#[derive(Debug)]
pub(crate) struct MockServer {
    pub(crate) mock: Mock,
    /// `http://127.0.0.1:<port>`.
    pub(crate) url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockServer {
    /// Serves `state` as broker `id` on a free loopback port and registers it as live.
    pub(crate) async fn start(state: Arc<Mutex<State>>, id: &str) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mock = Mock {
            state,
            address: addr.to_string(),
        };
        mock.state()
            .brokers
            .push((id.to_string(), addr.to_string()));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(LogServer::new(mock.clone()))
            .add_service(AdminServer::new(mock.clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                // Only `stop` stops it; a dropped handle leaves the broker running.
                if stopped.await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        MockServer {
            mock,
            url: format!("http://{addr}"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The address the broker advertises (`127.0.0.1:<port>`).
    pub(crate) fn address(&self) -> String {
        self.mock.address.clone()
    }

    /// Stops the broker as a process exit would: no more connections, open ones closed, and
    /// it leaves the live brokers.
    pub(crate) async fn stop(&mut self) {
        let address = self.address();
        self.mock.state().brokers.retain(|(_, a)| *a != address);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

/// Mock brokers `b0`, `b1`, ... sharing one state.
pub(crate) async fn start_cluster(brokers: usize) -> Vec<MockServer> {
    let state = Arc::new(Mutex::new(State {
        max_record_bytes: 1 << 20,
        ..State::default()
    }));
    let mut servers = Vec::new();
    for i in 0..brokers {
        servers.push(MockServer::start(state.clone(), &format!("b{i}")).await);
    }
    servers
}

/// A loopback URL nothing listens on.
pub(crate) async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Starts one mock broker on a free loopback port and connects a client to it.
pub(crate) async fn start() -> (Mock, Client) {
    let mut servers = start_cluster(1).await;
    let server = servers.remove(0);
    let client = Client::connect(&server.url).await.unwrap();
    (server.mock.clone(), client)
}
