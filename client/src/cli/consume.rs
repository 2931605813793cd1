//! `silt consume`: prints records, one per line, read with [`PartitionReader`]s (raw-batch
//! `Fetch`, decoded here). Every selected partition is read by its own task; the tasks hand
//! records to one writer, so lines of one partition keep their order while partitions
//! interleave. Without `--follow` each partition stops at the high watermark it had at start.
//! A closed stdout (`silt consume t | head`) ends the command quietly with success.
//!
//! With `--group G` the command is a member of consumer group G ([`GroupConsumer`]): it reads
//! the partitions the group's coordinator gives it, from the group's committed offsets (or
//! `--from` where none is committed), commits what it printed every second, when a partition
//! is taken away and at the end, and prints each rebalance on stderr. Without `--follow` it
//! stops once every partition it holds reached the high watermark seen when it was assigned;
//! SIGINT and SIGTERM stop it the same way: commit, leave the group, exit 0.

use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use silt_client::{
    ConsumedRecord, GroupConsumer, GroupConsumerConfig, PartitionReader, Rebalance, StartSpec,
};
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
    /// Print the partition (tab-separated, before the offset).
    #[arg(long)]
    print_partition: bool,
    /// Read as a member of this consumer group: the group's coordinator assigns the
    /// partitions, reading starts at the group's committed offsets (`--from` applies where none
    /// is committed), and offsets of printed records are committed.
    #[arg(long)]
    group: Option<String>,
    /// With --group: the session timeout (6s..60s); the coordinator fences a member silent for
    /// this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    session_timeout: Duration,
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
                Ok(StartSpec::Timestamp(super::parse_time_ms(time)?))
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
    if let Some(group) = args.group.clone() {
        return consume_group(client, group, args).await;
    }
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => {
            let described = client.describe_topic(&args.topic).await?;
            (0..described.topic.unwrap_or_default().partitions).collect()
        }
    };
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<(u32, Vec<ConsumedRecord>)>>(64);
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
        let (partition, records) = chunk?;
        for record in &records {
            if args.print_partition {
                write!(out, "{partition}\t").context("writing to stdout")?;
            }
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

/// How long a member without partitions waits before it concludes there is nothing for it.
const IDLE_MEMBER: Duration = Duration::from_secs(5);

/// `silt consume --group`: one group member until the end (or a signal).
async fn consume_group(
    client: silt_client::Client,
    group: String,
    args: ConsumeArgs,
) -> anyhow::Result<ExitCode> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let mut config = GroupConsumerConfig::new(&group, &[args.topic.as_str()]);
    config.start = args.from;
    config.session_timeout = args.session_timeout;
    config.client_id = format!("silt-cli-{}", std::process::id());
    config.auto_commit = Some(Duration::from_secs(1));
    let mut consumer = GroupConsumer::join(&client, config).await?;
    let format = Format {
        offset: args.print_offset,
        key: args.print_key,
    };
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut printed = 0u64;
    let limit = args.max.unwrap_or(u64::MAX);
    // The end of each held partition: the high watermark seen when it was assigned.
    let mut ends: std::collections::BTreeMap<(String, u32), i64> = Default::default();
    let mut idle_since = tokio::time::Instant::now();
    let outcome: anyhow::Result<()> = async {
        while printed < limit && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let records = consumer.poll().await?;
            for event in consumer.take_rebalances() {
                let now = humantime::format_rfc3339_millis(
                    UNIX_EPOCH + Duration::from_millis(silt_client::clock::unix_now_ms() as u64),
                );
                match &event {
                    Rebalance::Assigned(starts) => {
                        let marks = consumer.high_watermarks();
                        for tp in starts.keys() {
                            ends.insert(tp.clone(), marks.get(tp).map_or(0, |m| m.1));
                        }
                        eprintln!("{now} group {group}: assigned {}", list(starts.keys()));
                    }
                    Rebalance::Revoked(set) => {
                        for tp in set {
                            ends.remove(tp);
                        }
                        eprintln!("{now} group {group}: revoked {}", list(set.iter()));
                    }
                    Rebalance::Lost(set) => {
                        ends.clear();
                        eprintln!("{now} group {group}: lost {}", list(set.iter()));
                    }
                }
                idle_since = tokio::time::Instant::now();
            }
            for r in &records {
                if args.print_partition {
                    write!(out, "{}\t", r.partition).context("writing to stdout")?;
                }
                format
                    .write(&mut out, &r.record)
                    .context("writing to stdout")?;
                printed += 1;
                if printed >= limit {
                    break;
                }
            }
            out.flush().context("writing to stdout")?;
            if !args.follow {
                let marks = consumer.high_watermarks();
                let held_done = !marks.is_empty()
                    && marks
                        .iter()
                        .all(|(tp, (next, _))| *next >= ends.get(tp).copied().unwrap_or(0));
                let nothing_held = marks.is_empty() && idle_since.elapsed() >= IDLE_MEMBER;
                if held_done || nothing_held {
                    break;
                }
            }
        }
        Ok(())
    }
    .await;
    out.flush().context("writing to stdout")?;
    // Commit what was printed and leave, whatever ended the loop.
    let closed = consumer.close().await;
    outcome?;
    closed.context("committing offsets and leaving the group")?;
    Ok(ExitCode::SUCCESS)
}

fn list<'a>(partitions: impl Iterator<Item = &'a (String, u32)>) -> String {
    let names: Vec<String> = partitions.map(|(t, p)| format!("{t}/{p}")).collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(" ")
    }
}

/// Reads one partition into `tx` until its end (without `follow`) or until the writer is gone.
async fn read_partition(
    mut reader: PartitionReader,
    follow: bool,
    tx: mpsc::Sender<anyhow::Result<(u32, Vec<ConsumedRecord>)>>,
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
        if !records.is_empty() && tx.send(Ok((reader.partition(), records))).await.is_err() {
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
