//! `silt bench commits`: offset commits from many groups at a fixed total rate, as consumers
//! that commit after every record would send them; reports commit latency and, with
//! `--admin-url`, how many metadata transactions the coordinator spent on them (its
//! `silt_metadata_txn_duration_seconds_count` before and after).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use silt_api::v1::PartitionOffset;

use super::{Report, latency_histogram, quantile_ms, record_latency};
use crate::cli::connect;

/// Commit benchmark.
#[derive(Debug, Args)]
pub(crate) struct CommitsBenchArgs {
    /// Topic whose partitions the commits name (it must exist).
    #[arg(long)]
    topic: String,
    /// Groups committing at the same time (`bench-commits-0`, `-1`, ...; standalone commits,
    /// so the groups must have no members).
    #[arg(long, default_value_t = 10)]
    groups: u32,
    /// Commits per second, all groups together.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long to commit.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The coordinating broker's admin URL (http://host:9464), to count metadata transactions.
    #[arg(long)]
    admin_url: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Sum of `silt_metadata_txn_duration_seconds_count` series in a `/metrics` page.
async fn metadata_txns(admin_url: &str) -> anyhow::Result<f64> {
    let url = format!("{}/metrics", admin_url.trim_end_matches('/'));
    let body = http_get(&url)
        .await
        .with_context(|| format!("reading {url}"))?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("silt_metadata_txn_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A plain HTTP/1.1 GET (the admin port speaks nothing else).
async fn http_get(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .context("the admin URL must start with http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    match body.split_once("\r\n\r\n") {
        Some((head, rest)) if head.starts_with("HTTP/1.1 200") => Ok(rest.to_string()),
        _ => bail!("unexpected answer from {url}"),
    }
}

pub(crate) async fn run(broker: &str, args: CommitsBenchArgs) -> anyhow::Result<ExitCode> {
    if args.groups == 0 || args.rate == 0 {
        bail!("--groups and --rate must be at least 1");
    }
    let client = connect(broker).await?;
    let partitions = client
        .describe_topic(&args.topic)
        .await?
        .topic
        .unwrap_or_default()
        .partitions;
    let txns_before = match &args.admin_url {
        Some(u) => Some(metadata_txns(u).await?),
        None => None,
    };
    let histogram = Arc::new(Mutex::new(latency_histogram()));
    let per_group = Duration::from_secs_f64(f64::from(args.groups) / f64::from(args.rate));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut tasks = Vec::new();
    for g in 0..args.groups {
        let (client, histogram, topic) = (client.clone(), histogram.clone(), args.topic.clone());
        tasks.push(tokio::spawn(async move {
            let group = format!("bench-commits-{g}");
            let mut tick = tokio::time::interval(per_group);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0i64;
            let mut inflight = tokio::task::JoinSet::new();
            while tokio::time::Instant::now() < deadline {
                tick.tick().await;
                n += 1;
                let offsets = vec![PartitionOffset {
                    topic: topic.clone(),
                    partition: (n as u32) % partitions.max(1),
                    offset: n,
                    leader_epoch: -1,
                    metadata: String::new(),
                }];
                let (client, histogram, group) = (client.clone(), histogram.clone(), group.clone());
                // Open loop: a slow commit does not delay the next one.
                inflight.spawn(async move {
                    let sent = Instant::now();
                    let result = client.commit_group_offsets(&group, "", 0, offsets).await;
                    if result.is_ok() {
                        record_latency(&mut histogram.lock().unwrap(), sent.elapsed(), 1);
                    }
                    result.map_err(anyhow::Error::from)
                });
            }
            let mut failed = 0u64;
            while let Some(done) = inflight.join_next().await {
                if !matches!(done, Ok(Ok(()))) {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await?;
    }
    let elapsed = started.elapsed();
    let txns = match (&args.admin_url, txns_before) {
        (Some(u), Some(before)) => Some(metadata_txns(u).await? - before),
        _ => None,
    };
    let h = histogram.lock().unwrap().clone();
    let commits = h.len();
    let secs = elapsed.as_secs_f64();
    let report = Report::new(format!(
        "commits: {} groups, {} commits/s for {:?}",
        args.groups, args.rate, args.duration
    ))
    .field("commits", "commits", commits)
    .field("failed", "failed", failed)
    .float("commits_per_sec", "commits/s", commits as f64 / secs, 0)
    .float("commit_p50_ms", "commit p50 ms", quantile_ms(&h, 0.5), 2)
    .float("commit_p99_ms", "commit p99 ms", quantile_ms(&h, 0.99), 2)
    .float("commit_max_ms", "commit max ms", h.max() as f64 / 1000.0, 2)
    .maybe_float(
        "metadata_txns_per_sec",
        "metadata txns/s",
        txns.map(|t| t / secs),
        1,
    )
    .maybe_float(
        "commits_per_txn",
        "commits per metadata txn",
        txns.filter(|t| *t > 0.0).map(|t| commits as f64 / t),
        1,
    );
    report.print(args.json);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
