//! `silt consume`: prints records, one per line, read with [`PartitionReader`]s (raw-batch
//! `Fetch`, decoded here). Every selected partition is read by its own task; the tasks hand
//! records to one writer, so lines of one partition keep their order while partitions
//! interleave. Without `--follow` each partition stops at the high watermark it had at start.
//! A closed stdout (`silt consume t | head`) ends the command quietly with success.

use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use silt_client::{ConsumedRecord, PartitionReader, StartSpec};
use tokio::sync::mpsc;
use tonic::Code;

use super::{connect, is_broken_pipe};

/// How long one fetch waits for new records.
const POLL_WAIT: Duration = Duration::from_millis(1000);

/// Print records of a topic.
#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Read only this partition [default: all partitions].
    #[arg(long)]
    partition: Option<u32>,
    /// Where to start: earliest, latest, offset:N or timestamp:RFC3339
    /// (e.g. timestamp:2025-01-31T12:00:00Z).
    #[arg(long, default_value = "earliest", value_parser = parse_start)]
    from: StartSpec,
    /// Stop after this many records in total.
    #[arg(long)]
    max: Option<u64>,
    /// Keep waiting for new records instead of stopping at the high watermark seen at start.
    #[arg(long)]
    follow: bool,
    /// Print the key (tab-separated, before the value).
    #[arg(long)]
    print_key: bool,
    /// Print the offset (tab-separated, first).
    #[arg(long)]
    print_offset: bool,
}

/// Parses `--from`.
fn parse_start(s: &str) -> Result<StartSpec, String> {
    match s {
        "earliest" => Ok(StartSpec::Earliest),
        "latest" => Ok(StartSpec::Latest),
        _ => {
            if let Some(offset) = s.strip_prefix("offset:") {
                let offset: i64 = offset
                    .parse()
                    .map_err(|_| format!("'{offset}' is not an offset"))?;
                if offset < 0 {
                    return Err("offsets are not negative".into());
                }
                Ok(StartSpec::Offset(offset))
            } else if let Some(time) = s.strip_prefix("timestamp:") {
                let at = humantime::parse_rfc3339(time).map_err(|e| {
                    format!("'{time}' is not an RFC 3339 time ({e}), e.g. 2025-01-31T12:00:00Z")
                })?;
                let ms = at
                    .duration_since(UNIX_EPOCH)
                    .map_err(|_| "times before 1970 are not supported")?;
                Ok(StartSpec::Timestamp(ms.as_millis() as i64))
            } else {
                Err(format!(
                    "'{s}' is not earliest, latest, offset:N or timestamp:RFC3339"
                ))
            }
        }
    }
}

pub(crate) async fn run(broker: &str, args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    match consume(broker, args).await {
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

async fn consume(broker: &str, args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let client = connect(broker).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => {
            let described = client.describe_topic(&args.topic).await?;
            (0..described.topic.unwrap_or_default().partitions).collect()
        }
    };
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Vec<ConsumedRecord>>>(64);
    for partition in partitions {
        let reader = PartitionReader::new(&client, &args.topic, partition, args.from).await?;
        tokio::spawn(read_partition(reader, args.follow, tx.clone()));
    }
    drop(tx);

    let format = Format {
        offset: args.print_offset,
        key: args.print_key,
    };
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut printed = 0u64;
    let limit = args.max.unwrap_or(u64::MAX);
    'records: while printed < limit {
        let Some(chunk) = rx.recv().await else { break };
        let records = chunk?;
        for record in &records {
            format
                .write(&mut out, record)
                .context("writing to stdout")?;
            printed += 1;
            if printed >= limit {
                break 'records;
            }
        }
        // Show what arrived before waiting for more.
        if rx.is_empty() {
            out.flush().context("writing to stdout")?;
        }
    }
    out.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Reads one partition into `tx` until its end (without `follow`) or until the writer is gone.
async fn read_partition(
    mut reader: PartitionReader,
    follow: bool,
    tx: mpsc::Sender<anyhow::Result<Vec<ConsumedRecord>>>,
) {
    let end = reader.high_watermark();
    loop {
        if !follow && reader.next_offset() >= end {
            return;
        }
        let mut records = match reader.next_batch(POLL_WAIT).await {
            Ok(records) => records,
            Err(e) if e.code() == Code::OutOfRange => {
                // Retention removed what we were about to read: skip to what is still stored.
                let start = e
                    .log_start_offset()
                    .unwrap_or_else(|| reader.log_start_offset());
                if start <= reader.next_offset() {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                eprintln!(
                    "warning: partition {} offsets {}..{} were removed by retention; skipping to {start}",
                    reader.partition(),
                    reader.next_offset(),
                    start
                );
                reader.seek(start);
                continue;
            }
            Err(e) => {
                let partition = reader.partition();
                let _ = tx
                    .send(Err(
                        anyhow::Error::new(e).context(format!("reading partition {partition}"))
                    ))
                    .await;
                return;
            }
        };
        if !follow {
            records.retain(|r| r.offset < end);
        }
        if !records.is_empty() && tx.send(Ok(records)).await.is_err() {
            return;
        }
    }
}

/// Which columns to print.
#[derive(Debug, Clone, Copy)]
struct Format {
    offset: bool,
    key: bool,
}

impl Format {
    /// Writes `offset\tkey\tvalue\n` with only the asked columns (the value always).
    fn write(self, out: &mut impl Write, record: &ConsumedRecord) -> std::io::Result<()> {
        if self.offset {
            write!(out, "{}\t", record.offset)?;
        }
        if self.key {
            out.write_all(record.key.as_deref().unwrap_or_default())?;
            out.write_all(b"\t")?;
        }
        out.write_all(record.value.as_deref().unwrap_or_default())?;
        out.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn from_accepts_the_four_forms() {
        assert_eq!(parse_start("earliest").unwrap(), StartSpec::Earliest);
        assert_eq!(parse_start("latest").unwrap(), StartSpec::Latest);
        assert_eq!(parse_start("offset:42").unwrap(), StartSpec::Offset(42));
        assert_eq!(
            parse_start("timestamp:2025-01-31T12:00:00Z").unwrap(),
            StartSpec::Timestamp(1_738_324_800_000)
        );
        assert_eq!(
            parse_start("timestamp:2025-01-31T12:00:00.250Z").unwrap(),
            StartSpec::Timestamp(1_738_324_800_250)
        );
        for bad in ["first", "offset:x", "offset:-1", "timestamp:yesterday"] {
            assert!(parse_start(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn columns_are_offset_key_value() {
        let record = ConsumedRecord {
            offset: 7,
            timestamp_ms: 0,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: Vec::new(),
        };
        let line = |offset, key| {
            let mut out = Vec::new();
            Format { offset, key }.write(&mut out, &record).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(line(false, false), "v\n");
        assert_eq!(line(true, false), "7\tv\n");
        assert_eq!(line(false, true), "k\tv\n");
        assert_eq!(line(true, true), "7\tk\tv\n");
    }
}
