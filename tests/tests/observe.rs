//! Logs and traces of a real broker: `--log-format json` writes one JSON object per line, and
//! `--otlp-endpoint` exports spans over OTLP/gRPC to a collector (run here in-process, on
//! loopback) — one per RPC with its topic, and a `flush` with `upload` and `commit` children,
//! linked to the produce calls whose records it acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use silt_api::v1::{ProduceRequest, Record};
use silt_tests::{BrokerOptions, BrokerProcess, wait_for};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// An OTLP/gRPC trace collector that keeps every span it receives.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    /// `service.name` of each export's resources.
    services: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for resource_spans in request.into_inner().resource_spans {
            if let Some(resource) = &resource_spans.resource {
                for kv in &resource.attributes {
                    if kv.key == "service.name"
                        && let Some(Value::StringValue(s)) =
                            kv.value.as_ref().and_then(|v| v.value.as_ref())
                    {
                        self.services.lock().unwrap().push(s.clone());
                    }
                }
            }
            for scope in resource_spans.scope_spans {
                self.spans.lock().unwrap().extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves on a free loopback port until the test ends; returns its `http://` endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn string_attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            Value::BoolValue(b) => Some(b.to_string()),
            _ => None,
        })
}

async fn produce(broker: &BrokerProcess, topic: &str, values: &[&str]) {
    let client = broker.client().await;
    let records = values
        .iter()
        .map(|v| Record {
            value: Bytes::copy_from_slice(v.as_bytes()),
            ..Record::default()
        })
        .collect();
    client
        .log()
        .produce(ProduceRequest {
            topic: topic.into(),
            records,
        })
        .await
        .expect("produce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start(BrokerOptions::new(dir.path()).arg("--log-format", "json")).await;
    let client = broker.client().await;
    client
        .create_topic("logs", 1, None, None)
        .await
        .expect("create");
    produce(&broker, "logs", &["a"]).await;
    let lines = broker.log_lines();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(value.get(key).is_some(), "no '{key}' in {line}");
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("serving gRPC on")),
        "the start-up line is logged as JSON too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_link_each_flush_to_the_produce_calls_it_acks() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut options = BrokerOptions::new(dir.path())
        .arg("--otlp-endpoint", &endpoint)
        .arg("--broker-id", "traced-1");
    // Export every 100 ms instead of every 5 s, so the test waits less.
    options
        .env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    let broker = BrokerProcess::start(options).await;
    broker
        .client()
        .await
        .create_topic("traced", 2, None, None)
        .await
        .expect("create");
    produce(&broker, "traced", &["one", "two", "three"]).await;

    let (produce, flush) = wait_for(
        "a Produce span and a flush span linked to it",
        Duration::from_secs(30),
        || {
            let spans = collector.spans();
            async move {
                let produce = spans
                    .iter()
                    .find(|s| {
                        s.name == "Produce" && string_attr(s, "topic").as_deref() == Some("traced")
                    })?
                    .clone();
                let flush = spans
                    .iter()
                    .find(|s| {
                        s.name == "flush" && s.links.iter().any(|l| l.span_id == produce.span_id)
                    })?
                    .clone();
                Some((produce, flush))
            }
        },
    )
    .await;
    assert_eq!(string_attr(&produce, "records").as_deref(), Some("3"));
    assert_eq!(string_attr(&flush, "outcome").as_deref(), Some("committed"));
    assert!(
        string_attr(&flush, "producers").is_some_and(|n| n.parse::<u64>().unwrap() >= 1),
        "{flush:?}"
    );
    assert!(
        flush.parent_span_id.is_empty(),
        "a flush is a root span, linked to (not inside) the calls it serves"
    );
    assert_eq!(
        flush.links[0].trace_id, produce.trace_id,
        "the link names the produce call's trace"
    );

    // The flush's children: the object upload and the metadata commit.
    let children: HashMap<String, Span> = wait_for(
        "the flush's upload and commit spans",
        Duration::from_secs(30),
        || {
            let spans = collector.spans();
            let flush_id = flush.span_id.clone();
            async move {
                let children: HashMap<String, Span> = spans
                    .into_iter()
                    .filter(|s| s.parent_span_id == flush_id)
                    .map(|s| (s.name.clone(), s))
                    .collect();
                (children.contains_key("upload") && children.contains_key("commit"))
                    .then_some(children)
            }
        },
    )
    .await;
    for child in children.values() {
        assert_eq!(child.trace_id, flush.trace_id);
        assert!(child.start_time_unix_nano >= flush.start_time_unix_nano);
        assert!(child.end_time_unix_nano <= flush.end_time_unix_nano);
    }
    assert!(
        children["upload"].end_time_unix_nano <= children["commit"].start_time_unix_nano,
        "the commit starts once the object is stored"
    );
    assert!(
        collector
            .services
            .lock()
            .unwrap()
            .iter()
            .all(|s| s == "silt-broker")
    );
    // Nothing of the exporter's own transport is exported.
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| !s.name.contains("h2") && !s.name.contains("hyper")),
        "only Silt's spans are exported"
    );
}

#[test]
fn a_bad_otlp_endpoint_is_refused_with_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = BrokerProcess::refused(
        &BrokerOptions::new(dir.path()).arg("--otlp-endpoint", "collector:4317"),
    );
    assert!(
        stderr.contains("--otlp-endpoint") && stderr.contains("http://"),
        "{stderr}"
    );
}
