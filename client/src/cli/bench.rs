//! `silt bench`: throughput and latency of the broker's fast paths (`produce`, `consume`) and of
//! an object store (`object-store`). Broker benches read the broker's CPU seconds with
//! `Admin.GetStats` before and after the run, so they report cost as well as speed: MiB of record
//! values per broker CPU-second. Results print as aligned text or, with `--json`, one JSON object.

mod commits;
mod consume;
mod deliver;
mod object_store;
mod payload;
mod produce;
mod replay;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{Map, Value};
use silt_api::v1::GetStatsResponse;
use silt_client::Client;

/// Benchmarks.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Produce generated events and measure throughput, ack latency and broker CPU.
    Produce(produce::ProduceBenchArgs),
    /// Read partitions from the start to the high watermark and measure throughput and broker CPU.
    Consume(consume::ConsumeBenchArgs),
    /// Write, then delete, plain objects in an object store and measure throughput and latency.
    ObjectStore(object_store::ObjectStoreBenchArgs),
    /// Commit group offsets from many groups at a fixed rate; latency and metadata cost.
    Commits(commits::CommitsBenchArgs),
}

pub(crate) async fn run(broker: &str, args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Produce(args) => produce::run(broker, args).await,
        BenchCommand::Consume(args) => consume::run(broker, args).await,
        BenchCommand::ObjectStore(args) => object_store::run(args).await,
        BenchCommand::Commits(args) => commits::run(broker, args).await,
    }
}

/// The broker's CPU seconds so far.
async fn broker_cpu_seconds(client: &Client) -> anyhow::Result<f64> {
    Ok(client.stats().await?.cpu_seconds)
}

/// Adds what the broker reports of its flushes during the run: metadata operations and bytes per
/// flush, and the ack breakdown (time waiting for the flush, the PUT, the metadata commit, the
/// whole ack) — percentiles since the broker started, so run each benchmark on a fresh broker.
fn flush_breakdown(report: Report, before: &GetStatsResponse, after: &GetStatsResponse) -> Report {
    let flushes = after
        .segments_flushed
        .saturating_sub(before.segments_flushed);
    let per_flush =
        |a: u64, b: u64| (flushes > 0).then(|| a.saturating_sub(b) as f64 / flushes as f64);
    let mut report = report
        .field("flushes", "segments flushed", flushes)
        .maybe_float(
            "metadata_txns_per_flush",
            "metadata txns per flush",
            per_flush(after.metadata_txns, before.metadata_txns),
            2,
        )
        .maybe_float(
            "metadata_bytes_per_flush",
            "metadata bytes per flush",
            per_flush(after.metadata_bytes, before.metadata_bytes),
            0,
        );
    for stage in &after.ack_stages {
        let (p50, p99): (&'static str, &'static str) = match stage.stage.as_str() {
            "wait_for_flush" => (
                "broker_wait_for_flush_p50_ms",
                "broker_wait_for_flush_p99_ms",
            ),
            "put" => ("broker_put_p50_ms", "broker_put_p99_ms"),
            "commit" => ("broker_commit_p50_ms", "broker_commit_p99_ms"),
            "ack" => ("broker_ack_p50_ms", "broker_ack_p99_ms"),
            _ => continue,
        };
        report = report
            .float(p50, p50, stage.p50_ms, 3)
            .float(p99, p99, stage.p99_ms, 3);
    }
    report
}

/// A latency histogram in microseconds, from 1 µs to one hour, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Records one latency (clamped into the histogram's range).
fn record_latency(histogram: &mut Histogram<u64>, latency: Duration, count: u64) {
    let micros = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
    // In range by the clamp above, so recording cannot fail.
    let _ = histogram.record_n(micros, count);
}

/// The latency at `quantile`, in milliseconds.
fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        0.0
    } else {
        histogram.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// A benchmark result: named fields in order, printed as text or JSON.
#[derive(Debug, Default)]
struct Report {
    title: String,
    fields: Vec<(&'static str, &'static str, Value)>,
}

impl Report {
    fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            fields: Vec::new(),
        }
    }

    /// Adds a field: its JSON key, its text label and its value.
    fn field(mut self, key: &'static str, label: &'static str, value: impl Into<Value>) -> Self {
        self.fields.push((key, label, value.into()));
        self
    }

    /// Adds a float rounded to `decimals` places (JSON `null` for a non-finite value).
    fn float(self, key: &'static str, label: &'static str, value: f64, decimals: i32) -> Self {
        let scale = 10f64.powi(decimals);
        let value = if value.is_finite() {
            Value::from((value * scale).round() / scale)
        } else {
            Value::Null
        };
        self.field(key, label, value)
    }

    /// Adds quantiles of a latency histogram in ms, 3 decimals: `(key, label, quantile)` each.
    fn quantiles(
        self,
        histogram: &Histogram<u64>,
        quantiles: &[(&'static str, &'static str, f64)],
    ) -> Self {
        quantiles.iter().fold(self, |report, &(key, label, q)| {
            report.float(key, label, quantile_ms(histogram, q), 3)
        })
    }

    /// Adds a float that may be unknown (e.g. a ratio over no CPU time).
    fn maybe_float(
        self,
        key: &'static str,
        label: &'static str,
        value: Option<f64>,
        decimals: i32,
    ) -> Self {
        self.float(key, label, value.unwrap_or(f64::NAN), decimals)
    }

    fn print(&self, json: bool) {
        if json {
            let map: Map<String, Value> = self
                .fields
                .iter()
                .map(|(k, _, v)| (k.to_string(), v.clone()))
                .collect();
            println!("{}", Value::Object(map));
        } else {
            print!("{}", self.to_text());
        }
    }

    fn to_text(&self) -> String {
        let width = self
            .fields
            .iter()
            .map(|(_, label, _)| label.len())
            .max()
            .unwrap_or(0);
        let mut out = format!("{}\n", self.title);
        for (_, label, value) in &self.fields {
            let value = match value {
                Value::Null => "n/a".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("  {label:<width$}  {value}\n"));
        }
        out
    }
}

/// Throughput and cost fields shared by the broker benches.
fn throughput(
    report: Report,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    cpu_seconds: f64,
) -> Report {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mib = bytes as f64 / (1u64 << 20) as f64;
    report
        .field("records", "records", records)
        .field("bytes", "value bytes", bytes)
        .float("elapsed_s", "elapsed (s)", elapsed.as_secs_f64(), 3)
        .float(
            "mb_per_s",
            "throughput (MB/s)",
            bytes as f64 / 1e6 / secs,
            2,
        )
        .float("mib_per_s", "throughput (MiB/s)", mib / secs, 2)
        .float("records_per_s", "records/s", records as f64 / secs, 1)
        .float("broker_cpu_seconds", "broker CPU (s)", cpu_seconds, 3)
        .maybe_float(
            "mib_per_broker_cpu_second",
            "MiB per broker CPU-second",
            (cpu_seconds > 0.0).then(|| mib / cpu_seconds),
            2,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_text_aligns_and_json_keeps_keys() {
        let report = Report::new("bench x")
            .field("records", "records", 10u64)
            .float("mib_per_s", "throughput (MiB/s)", 1.23456, 2)
            .maybe_float("ratio", "ratio", None, 2);
        assert_eq!(
            report.to_text(),
            "bench x\n  records             10\n  throughput (MiB/s)  1.23\n  ratio               n/a\n"
        );
        let keys: Vec<&str> = report.fields.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(keys, ["records", "mib_per_s", "ratio"]);
    }

    #[test]
    fn throughput_reports_mib_per_cpu_second() {
        let report = throughput(Report::new("t"), 1024, 8 << 20, Duration::from_secs(2), 4.0);
        let get = |key: &str| {
            report
                .fields
                .iter()
                .find(|(k, _, _)| *k == key)
                .unwrap()
                .2
                .clone()
        };
        assert_eq!(get("mib_per_s"), Value::from(4.0));
        assert_eq!(get("mb_per_s"), Value::from(4.19));
        assert_eq!(get("records_per_s"), Value::from(512.0));
        assert_eq!(get("mib_per_broker_cpu_second"), Value::from(2.0));
        let idle = throughput(Report::new("t"), 0, 0, Duration::from_secs(1), 0.0);
        assert_eq!(idle.fields.last().unwrap().2, Value::Null);
    }

    #[test]
    fn latency_quantiles_are_in_ms() {
        let mut h = latency_histogram();
        record_latency(&mut h, Duration::from_millis(10), 99);
        record_latency(&mut h, Duration::from_millis(500), 1);
        assert!((quantile_ms(&h, 0.5) - 10.0).abs() < 0.1);
        assert!((quantile_ms(&h, 0.999) - 500.0).abs() < 1.0);
    }
}
