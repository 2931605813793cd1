//! `silt bench consume`: reads partitions from the earliest offset to the high watermark seen at
//! start with raw-batch `Fetch` (4 MiB per fetch), decoding on the client as a consumer would,
//! several partitions at a time; reports records, value throughput and broker CPU.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use silt_client::{PartitionReader, StartSpec};

use super::{Report, broker_cpu_seconds, throughput};
use crate::cli::connect;

const FETCH_BYTES: u32 = 4 << 20;
/// Empty fetches in a row, below the high watermark seen at start, before giving up.
const MAX_EMPTY_FETCHES: u32 = 5;

/// Consume benchmark.
#[derive(Debug, Args)]
pub(crate) struct ConsumeBenchArgs {
    /// Topic to read.
    #[arg(long)]
    topic: String,
    /// Partitions to read, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    partitions: Vec<u32>,
    /// Partitions read at the same time.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What reading one partition gave.
#[derive(Debug, Default, Clone, Copy)]
struct Read {
    records: u64,
    value_bytes: u64,
    fetched_bytes: u64,
}

pub(crate) async fn run(broker: &str, args: ConsumeBenchArgs) -> anyhow::Result<ExitCode> {
    let client = connect(broker).await?;
    let partitions = if args.partitions.is_empty() {
        let described = client.describe_topic(&args.topic).await?;
        (0..described.topic.unwrap_or_default().partitions).collect()
    } else {
        args.partitions.clone()
    };
    let mut readers = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        readers.push(
            PartitionReader::new(&client, &args.topic, p, StartSpec::Earliest)
                .await?
                .with_max_bytes(FETCH_BYTES),
        );
    }

    let cpu_before = broker_cpu_seconds(&client).await?;
    let started = Instant::now();
    let reads: Vec<Read> = futures::stream::iter(readers)
        .map(read_to_end)
        .buffer_unordered(args.concurrency.max(1))
        .try_collect()
        .await?;
    let elapsed = started.elapsed();
    let cpu = broker_cpu_seconds(&client).await? - cpu_before;

    let total = reads.iter().fold(Read::default(), |a, r| Read {
        records: a.records + r.records,
        value_bytes: a.value_bytes + r.value_bytes,
        fetched_bytes: a.fetched_bytes + r.fetched_bytes,
    });
    let report = Report::new(format!(
        "bench consume: topic {}, {} partitions, concurrency {}",
        args.topic,
        partitions.len(),
        args.concurrency
    ))
    .field("topic", "topic", args.topic.clone())
    .field("partitions", "partitions", partitions.len() as u64)
    .field("fetched_bytes", "fetched batch bytes", total.fetched_bytes);
    throughput(report, total.records, total.value_bytes, elapsed, cpu).print(args.json);
    Ok(ExitCode::SUCCESS)
}

/// Reads one partition up to the high watermark its reader saw when created.
async fn read_to_end(mut reader: PartitionReader) -> anyhow::Result<Read> {
    let end = reader.high_watermark();
    let mut read = Read::default();
    let mut empty = 0;
    while reader.next_offset() < end {
        let records = reader.next_batch(Duration::from_millis(100)).await?;
        let wanted: Vec<_> = records.iter().filter(|r| r.offset < end).collect();
        if wanted.is_empty() {
            empty += 1;
            if empty >= MAX_EMPTY_FETCHES {
                bail!(
                    "partition {} returned nothing at offset {} below its high watermark {end}",
                    reader.partition(),
                    reader.next_offset()
                );
            }
            continue;
        }
        empty = 0;
        read.records += wanted.len() as u64;
        read.value_bytes += wanted
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64))
            .sum::<u64>();
    }
    read.fetched_bytes = reader.fetched_bytes();
    Ok(read)
}
