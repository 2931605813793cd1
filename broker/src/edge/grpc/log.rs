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
        // A record the wire cannot carry into the core fails alone; the others go on.
        let mut records = Vec::with_capacity(req.records.len());
        let mut refused = Vec::new();
        for (i, r) in req.records.into_iter().enumerate() {
            match record_from_wire(r) {
                Ok(r) => records.push(r),
                Err(e) => refused.push((i, e.context(format_args!("record {i}")))),
            }
        }
        let stored = if records.is_empty() && !refused.is_empty() {
            Vec::new()
        } else {
            self.broker
                .produce_records(hop, &req.topic, records)
                .await
                .map_err(produce_status)?
        };
        let results = with_refused(stored, refused)
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

/// A wire record as the core takes it; `null_value` makes the value null, and then the wire's
/// `value` must be empty.
pub(super) fn record_from_wire(r: api::Record) -> Result<RecordInput, BrokerError> {
    let value = match (r.null_value, r.value.is_empty()) {
        (false, _) => Some(r.value),
        (true, true) => None,
        (true, false) => {
            return Err(BrokerError::invalid(format!(
                "a record with null_value set must have an empty value; this one has {} bytes",
                r.value.len()
            )));
        }
    };
    Ok(RecordInput {
        key: r.key,
        value,
        headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        timestamp_ms: r.timestamp_ms,
        partition: r.partition,
    })
}

/// The results of the records the core took, with the refused ones put back at their places
/// in the request.
fn with_refused<T>(
    stored: Vec<Result<T, BrokerError>>,
    refused: Vec<(usize, BrokerError)>,
) -> Vec<Result<T, BrokerError>> {
    let mut out = Vec::with_capacity(stored.len() + refused.len());
    let mut stored = stored.into_iter();
    for (i, e) in refused {
        out.extend(stored.by_ref().take(i - out.len()));
        out.push(Err(e));
    }
    out.extend(stored);
    out
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
        null_value: r.value.is_none(),
        value: r.value.unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::core::{ErrorKind, RecordAck};

    #[test]
    fn null_value_is_a_tombstone_and_round_trips_through_the_forwarding_hop() {
        let wire = api::Record {
            key: Some(Bytes::from_static(b"k")),
            null_value: true,
            ..api::Record::default()
        };
        let input = record_from_wire(wire.clone()).unwrap();
        assert_eq!(input.value, None);
        assert_eq!(record_to_wire(input), wire);
        // An empty value that is not null stays an empty value.
        let empty = api::Record {
            key: Some(Bytes::from_static(b"k")),
            ..api::Record::default()
        };
        let input = record_from_wire(empty.clone()).unwrap();
        assert_eq!(input.value, Some(Bytes::new()));
        assert_eq!(record_to_wire(input), empty);
    }

    #[test]
    fn null_value_with_a_value_is_refused() {
        let e = record_from_wire(api::Record {
            value: Bytes::from_static(b"abc"),
            null_value: true,
            ..api::Record::default()
        })
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(
            e.to_string()
                .contains("a record with null_value set must have an empty value"),
            "{e}"
        );
    }

    #[test]
    fn refused_records_keep_their_places_among_the_results() {
        let ack = |offset| {
            Ok(RecordAck {
                partition: 0,
                offset,
            })
        };
        let refused = |i: usize| (i, BrokerError::invalid(format!("r{i}")));
        let merged = with_refused(
            vec![ack(10), ack(11)],
            vec![refused(0), refused(2), refused(4)],
        );
        let shape: Vec<String> = merged
            .into_iter()
            .map(|r| match r {
                Ok(a) => a.offset.to_string(),
                Err(e) => e.message,
            })
            .collect();
        assert_eq!(shape, ["r0", "10", "r2", "11", "r4"]);
        assert_eq!(with_refused(vec![ack(1)], Vec::new()).len(), 1);
        assert_eq!(
            with_refused::<RecordAck>(Vec::new(), vec![refused(0), refused(1)]).len(),
            2
        );
    }
}
