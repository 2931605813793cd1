//! The gRPC hop to a partition's owner: the core's [`Forwarder`], over `silt.v1.Log`. A
//! forwarded call carries the `silt-forwarded` header (the owner never forwards it again); the
//! owner's answer comes back as the error it was made from ([`super::status::from_status`]),
//! and a failed hop as unavailable (the connection never opened: nothing was sent) or
//! ambiguous (anything else: the owner may have acted on it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use silt_api::v1 as api;
use silt_api::v1::log_client::LogClient;
use silt_api::wire::FORWARDED;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::log::record_to_wire;
use super::status::from_status;
use crate::core::{BatchAck, BrokerError, Forwarder, RecordAck, RecordInput};

/// Forwards produce calls to other brokers over gRPC, one lazily connected channel per owner.
#[derive(Debug)]
pub struct GrpcForwarder {
    broker_id: String,
    clients: Mutex<HashMap<String, LogClient<Channel>>>,
    max_message: usize,
}

impl GrpcForwarder {
    pub fn new(broker_id: &str, max_message: usize) -> Self {
        Self {
            broker_id: broker_id.to_string(),
            clients: Mutex::new(HashMap::new()),
            max_message,
        }
    }

    fn client(&self, address: &str) -> Result<LogClient<Channel>, BrokerError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| BrokerError::internal(format!("bad broker address '{address}': {e}")))?
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
        if let Ok(v) = self.broker_id.parse() {
            request.metadata_mut().insert(FORWARDED, v);
        }
        request
    }
}

#[async_trait]
impl Forwarder for GrpcForwarder {
    async fn produce_batches(
        &self,
        owner: &str,
        topic: &str,
        batches: Vec<(u32, Bytes)>,
    ) -> Result<Vec<BatchAck>, BrokerError> {
        let request = api::ProduceBatchesRequest {
            topic: topic.to_string(),
            batches: batches
                .into_iter()
                .map(|(partition, batch)| api::PartitionBatch { partition, batch })
                .collect(),
        };
        let response = self
            .client(owner)?
            .produce_batches(self.forwarded(request))
            .await
            .map_err(|s| from_status(&s, owner))?;
        Ok(response
            .into_inner()
            .acks
            .into_iter()
            .map(|a| BatchAck {
                partition: a.partition,
                base_offset: a.base_offset,
                last_offset: a.last_offset,
            })
            .collect())
    }

    async fn produce_records(
        &self,
        owner: &str,
        topic: &str,
        records: Vec<RecordInput>,
    ) -> Result<Vec<Result<RecordAck, BrokerError>>, BrokerError> {
        let request = api::ProduceRequest {
            topic: topic.to_string(),
            records: records.into_iter().map(record_to_wire).collect(),
        };
        let response = self
            .client(owner)?
            .produce(self.forwarded(request))
            .await
            .map_err(|s| from_status(&s, owner))?;
        Ok(response
            .into_inner()
            .results
            .into_iter()
            .map(|r| match r.outcome {
                Some(api::record_result::Outcome::Ack(a)) => Ok(RecordAck {
                    partition: a.partition,
                    offset: a.offset,
                }),
                Some(api::record_result::Outcome::Error(e)) => Err(from_status(
                    &Status::new(Code::from(e.code), e.message),
                    owner,
                )),
                None => Err(BrokerError::internal(format!(
                    "the owner at {owner} sent a record result without an outcome"
                ))),
            })
            .collect())
    }
}
