//! `silt.v1.Log` over the core: each call converts the request (validating its fields on the
//! way in), calls the [`Broker`] facade, and converts the answer; errors go through
//! [`super::status`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use silt_api::v1 as api;
use silt_api::v1::log_server::Log;
use silt_api::wire::FORWARDED;
use silt_storage::batch::DecodedRecord;
use tonic::{Request, Response, Status};

use super::status::{code_of, produce_status, to_status};
use crate::core::{Broker, BrokerError, Fetched, Hop, OffsetSpec, RecordInput};

/// `silt.v1.Log`.
#[derive(Debug, Clone)]
pub struct LogService {
    pub broker: Arc<Broker>,
}

/// Whether a request was forwarded by another broker (the `silt-forwarded` header).
fn hop<T>(request: &Request<T>) -> Hop {
    if request.metadata().get(FORWARDED).is_some() {
        Hop::Forwarded
    } else {
        Hop::FromClient
    }
}

#[tonic::async_trait]
impl Log for LogService {
    #[tracing::instrument(name = "Produce", skip_all, fields(topic = %request.get_ref().topic, records = request.get_ref().records.len(), forwarded = request.metadata().get(FORWARDED).is_some()))]
    async fn produce(
        &self,
        request: Request<api::ProduceRequest>,
    ) -> Result<Response<api::ProduceResponse>, Status> {
        let hop = hop(&request);
        let req = request.into_inner();
        let records = req.records.into_iter().map(record_from_wire).collect();
        let results = self
            .broker
            .produce_records(hop, &req.topic, records)
            .await
            .map_err(produce_status)?;
        let results = results
            .into_iter()
            .map(|r| api::RecordResult {
                outcome: Some(match r {
                    Ok(ack) => api::record_result::Outcome::Ack(api::RecordAck {
                        partition: ack.partition,
                        offset: ack.offset,
                    }),
                    Err(e) => api::record_result::Outcome::Error(record_error(&e)),
                }),
            })
            .collect();
        Ok(Response::new(api::ProduceResponse { results }))
    }

    #[tracing::instrument(name = "ProduceBatches", skip_all, fields(topic = %request.get_ref().topic, batches = request.get_ref().batches.len(), forwarded = request.metadata().get(FORWARDED).is_some()))]
    async fn produce_batches(
        &self,
        request: Request<api::ProduceBatchesRequest>,
    ) -> Result<Response<api::ProduceBatchesResponse>, Status> {
        let hop = hop(&request);
        let req = request.into_inner();
        let batches = req
            .batches
            .into_iter()
            .map(|b| (b.partition, b.batch))
            .collect();
        let acks = self
            .broker
            .produce_batches(hop, &req.topic, batches)
            .await
            .map_err(produce_status)?;
        Ok(Response::new(api::ProduceBatchesResponse {
            acks: acks
                .into_iter()
                .map(|a| api::BatchAck {
                    partition: a.partition,
                    base_offset: a.base_offset,
                    last_offset: a.last_offset,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "Fetch", skip_all, fields(topic = %request.get_ref().topic, partition = request.get_ref().partition, offset = request.get_ref().offset))]
    async fn fetch(
        &self,
        request: Request<api::FetchRequest>,
    ) -> Result<Response<api::FetchResponse>, Status> {
        let req = request.into_inner();
        let out = self
            .broker
            .fetch(
                &req.topic,
                req.partition,
                req.offset,
                req.max_bytes as usize,
                Duration::from_millis(u64::from(req.max_wait_ms)),
                req.raw_batches,
            )
            .await
            .map_err(to_status)?;
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

    #[tracing::instrument(name = "Subscribe", skip_all, fields(topic = %request.get_ref().topic, partition = request.get_ref().partition))]
    async fn subscribe(
        &self,
        request: Request<api::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        let start = start_spec(req.start.as_ref()).map_err(to_status)?;
        let stream = self
            .broker
            .subscribe(
                &req.topic,
                req.partition,
                start,
                req.max_bytes as usize,
                req.raw_batches,
            )
            .await
            .map_err(to_status)?;
        // tonic polls the stream only as fast as the client reads: HTTP/2 flow control slows
        // the subscription for a slow reader.
        let stream = stream.map(|item| {
            item.map(|out| {
                let (records, batches) = split(out.data);
                api::SubscribeResponse {
                    records,
                    batches,
                    high_watermark: out.offsets.high_watermark,
                    next_offset: out.next_offset,
                }
            })
            .map_err(to_status)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(name = "ListOffsets", skip_all, fields(topic = %request.get_ref().topic, partition = request.get_ref().partition))]
    async fn list_offsets(
        &self,
        request: Request<api::ListOffsetsRequest>,
    ) -> Result<Response<api::ListOffsetsResponse>, Status> {
        let req = request.into_inner();
        let spec = start_spec(req.spec.as_ref()).map_err(to_status)?;
        let (offset, timestamp_ms, offsets) = self
            .broker
            .list_offsets(&req.topic, req.partition, spec)
            .await
            .map_err(to_status)?;
        Ok(Response::new(api::ListOffsetsResponse {
            offset,
            timestamp_ms,
            high_watermark: offsets.high_watermark,
            log_start_offset: offsets.log_start,
        }))
    }
}

/// A wire record as the core takes it.
pub(super) fn record_from_wire(r: api::Record) -> RecordInput {
    RecordInput {
        key: r.key,
        value: r.value,
        headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        timestamp_ms: r.timestamp_ms,
        partition: r.partition,
    }
}

fn headers_to_wire(headers: Vec<(String, Option<bytes::Bytes>)>) -> Vec<api::Header> {
    headers
        .into_iter()
        .map(|(key, value)| api::Header { key, value })
        .collect()
}

/// A core record as the wire carries it.
pub(super) fn record_to_wire(r: RecordInput) -> api::Record {
    api::Record {
        key: r.key,
        value: r.value,
        headers: headers_to_wire(r.headers),
        timestamp_ms: r.timestamp_ms,
        partition: r.partition,
    }
}

/// One record's error, as a per-record result carries it.
pub(super) fn record_error(e: &BrokerError) -> api::RecordError {
    api::RecordError {
        code: code_of(e) as i32,
        message: e.to_string(),
    }
}

fn start_spec(start: Option<&api::StartPosition>) -> Result<OffsetSpec, BrokerError> {
    use api::start_position::Position;
    match start.and_then(|s| s.position) {
        Some(Position::Earliest(_)) => Ok(OffsetSpec::Earliest),
        Some(Position::Latest(_)) => Ok(OffsetSpec::Latest),
        Some(Position::Offset(o)) => Ok(OffsetSpec::Offset(o)),
        Some(Position::TimestampMs(ts)) => Ok(OffsetSpec::Timestamp(ts)),
        None => Err(BrokerError::invalid(
            "a start position is required: earliest, latest, offset or timestamp_ms",
        )),
    }
}

fn split(data: Fetched) -> (Vec<api::FetchedRecord>, Vec<bytes::Bytes>) {
    match data {
        Fetched::Batches(b) => (Vec::new(), b),
        Fetched::Records(r) => (r.into_iter().map(fetched_to_wire).collect(), Vec::new()),
    }
}

fn fetched_to_wire(r: DecodedRecord) -> api::FetchedRecord {
    api::FetchedRecord {
        offset: r.offset,
        timestamp_ms: r.timestamp_ms,
        key: r.key,
        value: r.value,
        headers: headers_to_wire(r.headers),
    }
}
