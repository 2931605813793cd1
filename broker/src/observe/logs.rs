//! Logs and traces: `--log-format text|json` on stderr, `SILT_LOG` filters, optional OTLP export.
//!
//! [`init`] installs the process's one `tracing` subscriber, once the settings are loaded:
//!
//! - **Logs** go to stderr, as text (ANSI colours only on a terminal) or as one JSON object per
//!   line (`timestamp`, `level`, `target`, `fields`, the current `span` and the `spans` it is
//!   in). `SILT_LOG` is an `EnvFilter` for the logs only (default `info`).
//! - **Traces** (with `--otlp-endpoint`) go over OTLP/gRPC to a collector, through a batch span
//!   processor on its own thread: `service.name` is `silt-broker`, `service.instance.id` and
//!   `silt.broker.id` are the broker id. Only Silt's own spans at `info` and above are
//!   exported, whatever `SILT_LOG` says. A collector that is down or slow never blocks the
//!   broker: ending a span only queues it (at most 2048, `OTEL_BSP_MAX_QUEUE_SIZE`), and what
//!   does not fit is dropped. The standard `OTEL_BSP_*` variables tune the processor
//!   (`OTEL_BSP_SCHEDULE_DELAY`, default 5 s between exports) and `OTEL_EXPORTER_OTLP_TIMEOUT`
//!   bounds one export (10 s).
//!
//! The spans themselves are made where the work is: one per gRPC call in `crate::edge::grpc`
//! (named after the RPC), and `flush` → `upload`, `commit` in [`crate::core::flusher`], linked
//! to the produce calls whose records the segment holds. A disabled span costs a cached
//! callsite check: no field is evaluated, nothing is allocated.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, bail};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::LogFormat;

/// The `service.name` traces are exported under.
pub const SERVICE_NAME: &str = "silt-broker";

/// The environment variable that filters log lines (`EnvFilter` syntax).
pub const LOG_FILTER_VAR: &str = "SILT_LOG";

/// Longest the exit waits for the last spans to reach the collector.
pub const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Most produce calls one flush span links to. A window may hold thousands of requests, and a
/// span keeps its links in memory until it ends and is exported; the first ones (in append
/// order) show which calls waited on the flush, and the span's `producers` field counts all.
pub const MAX_FLUSH_LINKS: usize = 64;

/// Links `span` (a flush) to the spans of the produce calls it acknowledges, at most
/// [`MAX_FLUSH_LINKS`] of them, and records their number in its `producers` field. Nothing is
/// walked when the span is disabled.
pub fn link_producers(span: &tracing::Span, producers: impl Iterator<Item = tracing::Id>) {
    if span.is_disabled() {
        return;
    }
    let mut count = 0usize;
    for id in producers {
        if count < MAX_FLUSH_LINKS {
            span.follows_from(id);
        }
        count += 1;
    }
    span.record("producers", count);
}

/// Keeps the trace exporter alive; dropping it (at the end of `main`) exports the spans still
/// queued, waiting at most [`TRACE_FLUSH_TIMEOUT`], and shuts the exporter down.
#[must_use = "dropping the guard stops the trace export"]
#[derive(Debug)]
pub struct LogGuard {
    traces: Option<SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(e) = provider.shutdown_with_timeout(TRACE_FLUSH_TIMEOUT)
        {
            tracing::warn!(error = %e, "the last spans may not have reached the trace collector");
        }
    }
}

/// Installs the global subscriber: logs on stderr in `format`, filtered by `SILT_LOG`, and,
/// with `otlp_endpoint`, trace export tagged with `broker_id`. Must run inside a Tokio runtime
/// (the exporter's gRPC channel lives there). Fails on an endpoint that is not an
/// `http://host:port` URL, or when a subscriber is already installed.
pub fn init(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    broker_id: &str,
) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_from_env(LOG_FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let (traces, provider) = match otlp_endpoint {
        Some(endpoint) => {
            let provider = tracer_provider(endpoint, broker_id)?;
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(SERVICE_NAME))
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_filter(exported_spans())
                .boxed();
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("a tracing subscriber is already installed")?;
    Ok(LogGuard { traces: provider })
}

/// What is exported: Silt's own spans and events (`silt_broker`, `silt_storage`, ...) at
/// `info` and above; never the exporter's own transport (tonic, hyper, h2), which would feed
/// itself.
fn exported_spans() -> Targets {
    Targets::new().with_target("silt", Level::INFO)
}

/// The OTLP/gRPC exporter behind a batch span processor.
fn tracer_provider(endpoint: &str, broker_id: &str) -> anyhow::Result<SdkTracerProvider> {
    check_endpoint(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("cannot export traces to --otlp-endpoint {endpoint}"))?;
    let resource = Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", broker_id.to_string()),
            KeyValue::new("silt.broker.id", broker_id.to_string()),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// An OTLP/gRPC endpoint is `http://host:port` (a collector or agent next to the broker).
fn check_endpoint(endpoint: &str) -> anyhow::Result<()> {
    let uri: tonic::transport::Uri = endpoint.parse().map_err(|e| {
        anyhow::anyhow!(
            "--otlp-endpoint '{endpoint}' is not a URL ({e}); write it as http://host:4317"
        )
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => bail!(
            "--otlp-endpoint '{endpoint}': TLS to the trace collector is not supported; \
             export to a collector or agent over plain http://host:4317"
        ),
        _ => bail!("--otlp-endpoint '{endpoint}' must start with http://, e.g. http://host:4317"),
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("--otlp-endpoint '{endpoint}' names no host; write it as http://host:4317");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_an_http_url_with_a_host() {
        check_endpoint("http://127.0.0.1:4317").unwrap();
        check_endpoint("http://otel-collector.observability:4317").unwrap();
        for (bad, why) in [
            ("127.0.0.1:4317", "must start with http://"),
            ("otel-collector", "must start with http://"),
            ("https://collector:4317", "TLS"),
            ("ftp://collector:4317", "must start with http://"),
            ("http://", "not a URL"),
            ("http://exa mple:4317", "not a URL"),
        ] {
            let e = check_endpoint(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
