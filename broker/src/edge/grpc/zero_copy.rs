//! `silt.v1.Log/ProduceBatches` read without copying the request.
//!
//! tonic decodes a request only after copying every byte of it out of the HTTP/2 DATA frames it
//! arrived in into one contiguous buffer: on the produce path that copy, and the fresh memory it
//! writes to, was the largest cost left in the broker's own code (BENCHMARKS.md, "CPU per byte").
//! This route takes the frames as they arrived (each one a slice of the connection's read
//! buffer), checks the gRPC message framing itself, and decodes the request over the frames: a
//! batch lying within one frame is referenced where it arrived, and only a batch split across
//! frames is copied. The broker advertises HTTP/2 frames and windows large enough for a client
//! to send a whole request in one frame ([`FRAME_BYTES`]).
//!
//! Everything else about the call is tonic's: the request goes to the same
//! [`Log::produce_batches`] handler, and compressed requests (`grpc-encoding`) and every other
//! method go to the generated [`LogServer`]. Refusals use tonic's statuses and messages.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use prost::Message;
use silt_api::v1 as api;
use silt_api::v1::log_server::{Log, LogServer};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower_service::Service;

use super::log::LogService;

/// The method served here.
pub const PATH: &str = "/silt.v1.Log/ProduceBatches";

/// Largest HTTP/2 frame the broker accepts (advertised in its SETTINGS): a client may send a
/// whole produce request (Silt's client sends up to 4 MiB plus one batch) as one frame.
pub const FRAME_BYTES: u32 = 8 << 20;
/// HTTP/2 flow-control windows the broker advertises: a stream may send such a request in one
/// go, and a connection several at once (Silt's client keeps 8 in flight). A connection's
/// unread data is bounded by its window; the handler reads each request as it arrives.
pub const STREAM_WINDOW: u32 = 16 << 20;
pub const CONNECTION_WINDOW: u32 = 64 << 20;

/// The gRPC message header: a compression flag and a big-endian length.
const HEADER: usize = 5;

/// The `silt.v1.Log` service with `ProduceBatches` read in place.
#[derive(Clone)]
pub struct LogEdge {
    inner: LogServer<LogService>,
    service: LogService,
    max_message: usize,
}

impl LogEdge {
    /// Serves `service`; requests larger than `max_message` are refused (OUT_OF_RANGE).
    pub fn new(service: LogService, max_message: usize) -> Self {
        Self {
            inner: LogServer::new(service.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(usize::MAX),
            service,
            max_message,
        }
    }
}

impl std::fmt::Debug for LogEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogEdge")
            .field("max_message", &self.max_message)
            .finish_non_exhaustive()
    }
}

impl NamedService for LogEdge {
    const NAME: &'static str = <LogServer<LogService> as NamedService>::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<Body>> for LogEdge {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let compressed = request
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e != "identity");
        if request.uri().path() != PATH || compressed {
            return Box::pin(self.inner.call(request));
        }
        let service = self.service.clone();
        let max_message = self.max_message;
        Box::pin(async move {
            Ok(produce_batches(&service, request, max_message)
                .await
                .unwrap_or_else(|status| status.into_http()))
        })
    }
}

async fn produce_batches(
    service: &LogService,
    request: http::Request<Body>,
    max_message: usize,
) -> Result<http::Response<Body>, Status> {
    let (parts, body) = request.into_parts();
    let message = read_message(body, max_message).await?;
    let message =
        api::ProduceBatchesRequest::decode(message).map_err(|e| Status::internal(e.to_string()))?;
    let request = tonic::Request::from_http(http::Request::from_parts(parts, message));
    let (metadata, message, extensions) = service.produce_batches(request).await?.into_parts();
    let mut framed = BytesMut::with_capacity(HEADER + message.encoded_len());
    framed.put_u8(0);
    framed.put_u32(message.encoded_len() as u32);
    message
        .encode(&mut framed)
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut response = http::Response::new(Body::new(Unary {
        message: Some(framed.freeze()),
        trailers: true,
    }));
    *response.headers_mut() = metadata.into_headers();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    *response.extensions_mut() = extensions;
    Ok(response)
}

/// Reads a unary call's one message from `body`: the frames as they arrived, the message
/// header checked as soon as it is in, nothing read past a refusal.
async fn read_message(mut body: Body, max_message: usize) -> Result<Chunks, Status> {
    let mut chunks = Chunks::default();
    let mut expected: Option<usize> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            // Request trailers: nothing Silt reads.
            continue;
        };
        chunks.push(data);
        if expected.is_none() && chunks.remaining() >= HEADER {
            expected = Some(HEADER + message_len(&chunks, max_message)?);
        }
        if let Some(expected) = expected
            && chunks.remaining() > expected
        {
            return Err(Status::internal(
                "a unary call carries one message; this one carries more",
            ));
        }
    }
    match expected {
        None if chunks.remaining() == 0 => Err(Status::internal("Missing request message.")),
        Some(expected) if chunks.remaining() == expected => {
            chunks.advance(HEADER);
            Ok(chunks)
        }
        _ => Err(Status::internal("Unexpected EOF decoding stream.")),
    }
}

/// The length of the message whose header starts `chunks`, refused when compressed (without a
/// `grpc-encoding`, which tonic's route handles) or longer than `max_message`.
fn message_len(chunks: &Chunks, max_message: usize) -> Result<usize, Status> {
    let mut header = [0u8; HEADER];
    let mut at = 0;
    for chunk in &chunks.chunks {
        let n = chunk.len().min(HEADER - at);
        header[at..at + n].copy_from_slice(&chunk[..n]);
        at += n;
        if at == HEADER {
            break;
        }
    }
    match header[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1) while receiving request"
            )));
        }
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    // OUT_OF_RANGE as tonic's other routes: not RESOURCE_EXHAUSTED, which clients retry.
    if len > max_message {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {max_message} bytes"
        )));
    }
    Ok(len)
}

/// Received frames read as one buffer. `copy_to_bytes` — what prost decodes a `bytes` field
/// with — returns a slice of the frame when the field lies within one, and copies only a field
/// split across frames.
#[derive(Debug, Default)]
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.remaining += chunk.len();
        self.chunks.push_back(chunk);
    }
}

impl Buf for Chunks {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| c.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the frames");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self
                .chunks
                .front_mut()
                .expect("remaining counts the chunks");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(
            len <= self.remaining,
            "copy_to_bytes past the end of the frames"
        );
        match self.chunks.front_mut() {
            Some(front) if front.len() >= len => {
                let out = front.split_to(len);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                self.remaining -= len;
                out
            }
            _ => {
                let mut out = BytesMut::with_capacity(len);
                out.put((&mut *self).take(len));
                out.freeze()
            }
        }
    }
}

/// A unary response body: the message, then `grpc-status: 0`.
struct Unary {
    message: Option<Bytes>,
    trailers: bool,
}

impl http_body::Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(message))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && !self.trailers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend((message.len() as u32).to_be_bytes());
        out.extend(message);
        out
    }

    fn body(pieces: Vec<Vec<u8>>) -> Body {
        let frames = pieces
            .into_iter()
            .map(|p| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(p))));
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    fn request(batches: &[(u32, Bytes)]) -> Vec<u8> {
        api::ProduceBatchesRequest {
            topic: "t".into(),
            batches: batches
                .iter()
                .map(|(partition, batch)| api::PartitionBatch {
                    partition: *partition,
                    batch: batch.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[tokio::test]
    async fn a_batch_within_a_frame_is_referenced_and_one_across_frames_is_copied() {
        let big = Bytes::from(vec![7u8; 100_000]);
        let other = Bytes::from(vec![9u8; 50_000]);
        let wire = framed(&request(&[(0, big.clone()), (1, other.clone())]));
        // The first frame holds the header and the first batch whole; the second batch is
        // split across the next two frames.
        let split = wire.len() - 20_000;
        let frames = vec![wire[..split].to_vec(), wire[split..].to_vec()];
        let mut chunks = read_message(body(frames), 1 << 20).await.unwrap();
        let first_frame = chunks.chunks[0].clone();
        let decoded = api::ProduceBatchesRequest::decode(&mut chunks).unwrap();
        assert_eq!(decoded.topic, "t");
        assert_eq!(decoded.batches[0].batch, big);
        assert_eq!(decoded.batches[1].batch, other);
        let within = |b: &Bytes| {
            let range = first_frame.as_ptr_range();
            range.contains(&b.as_ptr())
        };
        assert!(within(&decoded.batches[0].batch), "referenced in its frame");
        assert!(
            !within(&decoded.batches[1].batch),
            "copied out of two frames"
        );
    }

    #[tokio::test]
    async fn framing_errors_get_tonics_statuses_and_nothing_is_decoded() {
        let ok = framed(&request(&[(0, Bytes::from_static(b"x"))]));
        let cases: Vec<(Vec<Vec<u8>>, tonic::Code, &str)> = vec![
            (vec![], tonic::Code::Internal, "Missing request message"),
            (
                vec![ok[..3].to_vec()],
                tonic::Code::Internal,
                "Unexpected EOF",
            ),
            (
                vec![ok[..ok.len() - 1].to_vec()],
                tonic::Code::Internal,
                "Unexpected EOF",
            ),
            (
                vec![ok.clone(), ok.clone()],
                tonic::Code::Internal,
                "carries more",
            ),
            (
                vec![[&[1u8][..], &ok[1..]].concat()],
                tonic::Code::Internal,
                "compressed-flag",
            ),
            (
                vec![[&[7u8][..], &ok[1..]].concat()],
                tonic::Code::Internal,
                "invalid compression flag: 7",
            ),
            (
                // Only the header of a 2 GiB message: refused on the header alone.
                vec![vec![0, 0x80, 0, 0, 0]],
                tonic::Code::OutOfRange,
                "found 2147483648 bytes, the limit is: 1024 bytes",
            ),
        ];
        for (frames, code, text) in cases {
            let status = read_message(body(frames.clone()), 1024).await.unwrap_err();
            assert_eq!(status.code(), code, "{frames:?}: {status:?}");
            assert!(status.message().contains(text), "{status:?}");
        }
        // The header split across frames is read whole.
        let pieces = vec![ok[..2].to_vec(), ok[2..4].to_vec(), ok[4..].to_vec()];
        let chunks = read_message(body(pieces), 1024).await.unwrap();
        assert_eq!(chunks.remaining(), ok.len() - HEADER);
    }

    #[test]
    fn chunks_read_as_one_buffer() {
        let mut chunks = Chunks::default();
        for piece in [&b"abc"[..], b"", b"defg", b"h"] {
            chunks.push(Bytes::copy_from_slice(piece));
        }
        assert_eq!(chunks.remaining(), 8);
        assert_eq!(chunks.copy_to_bytes(2), Bytes::from_static(b"ab"));
        assert_eq!(chunks.copy_to_bytes(3), Bytes::from_static(b"cde"));
        chunks.advance(1);
        assert_eq!(chunks.chunk(), b"g");
        assert_eq!(chunks.copy_to_bytes(2), Bytes::from_static(b"gh"));
        assert_eq!(chunks.remaining(), 0);
        assert_eq!(chunks.chunk(), b"");
    }
}
