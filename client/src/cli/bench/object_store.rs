//! `silt bench object-store`: what the object store under a broker can do on its own. Writes
//! `--total-bytes` as plain objects of `--object-size` under `bench/<run>/<i>` with
//! `--concurrency` PUTs in flight, through the same `open_object_store` the broker uses, reports
//! throughput, PUTs/s and PUT latency, then deletes the objects.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use silt_storage::object::{S3Options, open_object_store};

use super::{Report, latency_histogram, record_latency};
use crate::cli::{ByteSize, format_bytes};

/// Object-store benchmark.
#[derive(Debug, Args)]
pub(crate) struct ObjectStoreBenchArgs {
    /// Object store URL: file:///dir, memory://, or s3://bucket/prefix (S3 settings from the
    /// usual AWS_* environment variables).
    #[arg(long)]
    object_store: String,
    /// Size of each object (e.g. 8MiB).
    #[arg(long, default_value = "8MiB")]
    object_size: ByteSize,
    /// Total bytes to write (e.g. 1GiB).
    #[arg(long, default_value = "1GiB")]
    total_bytes: ByteSize,
    /// S3 endpoint of an S3-compatible server (MinIO, Garage...) [default: AWS / AWS_ENDPOINT].
    #[arg(long, env = "SILT_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "SILT_S3_REGION")]
    s3_region: Option<String>,
    /// Allow plain http to the S3 endpoint, as the broker's flag: `--s3-allow-http` or
    /// `--s3-allow-http true|false`; an endpoint written `http://...` is allowed anyway.
    #[arg(
        long,
        env = "SILT_S3_ALLOW_HTTP",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        action = clap::ArgAction::Set
    )]
    s3_allow_http: bool,
    /// PUTs in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: ObjectStoreBenchArgs) -> anyhow::Result<ExitCode> {
    let object_size = usize::try_from(args.object_size.0)?;
    if object_size == 0 || args.concurrency == 0 {
        bail!("--object-size and --concurrency must be at least 1");
    }
    let objects = args.total_bytes.0.div_ceil(args.object_size.0).max(1);
    let s3 = S3Options {
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        allow_http: args.s3_allow_http,
        ..S3Options::default()
    };
    let store = open_object_store(&args.object_store, &s3)
        .with_context(|| format!("opening object store {}", args.object_store))?;
    let body = random_body(object_size);
    let run_id = run_id();
    let paths: Vec<Path> = (0..objects)
        .map(|i| Path::from(format!("bench/{run_id}/{i}")))
        .collect();

    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(paths.iter().cloned())
        .map(|path| put(store.clone(), path, body.clone()))
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let elapsed = started.elapsed();

    let delete_started = Instant::now();
    let deleted: Vec<()> = futures::stream::iter(paths)
        .map(|path| {
            let store = store.clone();
            async move {
                store
                    .delete(&path)
                    .await
                    .with_context(|| format!("deleting {path}"))
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let delete_elapsed = delete_started.elapsed();

    let mut histogram = latency_histogram();
    for latency in &latencies {
        record_latency(&mut histogram, *latency, 1);
    }
    let bytes = objects * args.object_size.0;
    let secs = elapsed.as_secs_f64().max(1e-9);
    Report::new(format!(
        "bench object-store: {}, {objects} objects of {}, concurrency {}",
        args.object_store,
        format_bytes(args.object_size.0),
        args.concurrency
    ))
    .field("object_store", "object store", args.object_store.clone())
    .field("object_size", "object size (B)", args.object_size.0)
    .field("concurrency", "concurrency", args.concurrency as u64)
    .field("objects", "objects", objects)
    .field("bytes", "bytes", bytes)
    .float("elapsed_s", "elapsed (s)", elapsed.as_secs_f64(), 3)
    .float(
        "mb_per_s",
        "throughput (MB/s)",
        bytes as f64 / 1e6 / secs,
        2,
    )
    .float(
        "mib_per_s",
        "throughput (MiB/s)",
        bytes as f64 / (1u64 << 20) as f64 / secs,
        2,
    )
    .float("puts_per_s", "PUTs/s", objects as f64 / secs, 2)
    .quantiles(
        &histogram,
        &[
            ("put_p50_ms", "PUT latency p50 (ms)", 0.5),
            ("put_p99_ms", "PUT latency p99 (ms)", 0.99),
        ],
    )
    .field("deleted", "objects deleted", deleted.len() as u64)
    .float(
        "delete_elapsed_s",
        "delete time (s)",
        delete_elapsed.as_secs_f64(),
        3,
    )
    .print(args.json);
    Ok(ExitCode::SUCCESS)
}

/// One PUT; returns its latency.
async fn put(store: Arc<dyn ObjectStore>, path: Path, body: Bytes) -> anyhow::Result<Duration> {
    let started = Instant::now();
    store
        .put(&path, PutPayload::from(body))
        .await
        .with_context(|| format!("writing {path}"))?;
    Ok(started.elapsed())
}

/// An object body: seeded random bytes (object stores do not compress, so content is moot).
fn random_body(size: usize) -> Bytes {
    let mut body = vec![0u8; size];
    StdRng::seed_from_u64(0x0b1ec7).fill_bytes(&mut body);
    Bytes::from(body)
}

/// A name for this run's prefix: the start time and a random suffix.
fn run_id() -> String {
    let ms = silt_client::clock::unix_now_ms();
    format!("{ms}-{:08x}", rand::rng().random::<u32>())
}
