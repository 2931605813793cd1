//! Request metrics of the gRPC edge: a tower layer around every service that records
//! `silt_request_duration_seconds{rpc,protocol="grpc"}` (to the response head: for a stream,
//! the time to its first message) and counts `silt_request_errors_total` by gRPC status code
//! for calls answered with an error status in the head (every unary error).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::observe::metrics::Metrics;

/// Wraps services so their calls are measured.
#[derive(Debug, Clone)]
pub struct RequestMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RequestMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose calls are measured.
#[derive(Debug, Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<Request<B>> for RequestMetrics<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let rpc = rpc_name(req.uri().path());
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .filter(|c| *c != 0)
                    .map(|c| code_name(tonic::Code::from_i32(c))),
                Err(_) => Some("transport"),
            };
            metrics.request(rpc, "grpc", started.elapsed(), code);
            result
        })
    }
}

/// The RPC's name from its path (`/silt.v1.Log/Produce` → `Produce`); only known names, so a
/// hostile client cannot grow the label set.
fn rpc_name(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Produce",
        "ProduceBatches",
        "Fetch",
        "Subscribe",
        "ListOffsets",
        "CreateTopic",
        "DeleteTopic",
        "AlterTopic",
        "DescribeTopic",
        "ListTopics",
        "GetStats",
        "ClusterStatus",
        "FindCoordinator",
        "Heartbeat",
        "CommitOffsets",
        "FetchOffsets",
        "ListGroups",
        "DescribeGroup",
        "DeleteGroup",
        "ResetOffsets",
        "Check",
        "Watch",
        "ServerReflectionInfo",
    ];
    let method = path.rsplit('/').next().unwrap_or("");
    KNOWN
        .iter()
        .find(|k| **k == method)
        .copied()
        .unwrap_or("other")
}

/// A gRPC code as a Prometheus label value (snake case).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_names_are_bounded() {
        assert_eq!(rpc_name("/silt.v1.Log/Produce"), "Produce");
        assert_eq!(rpc_name("/silt.v1.Admin/GetStats"), "GetStats");
        assert_eq!(rpc_name("/x/AnythingAtAll"), "other");
        assert_eq!(rpc_name(""), "other");
    }
}
