//! `silt bench produce`: generated events sent by C concurrent tasks, either each with its own
//! connection and fast-path [`Producer`] (the default) or each sending per-record `Produce`
//! requests of about 256 KiB (`--per-record`), or replaying batches encoded before the run
//! (`--replay`, see [`super::replay`]). Every record's ack latency (send → ack) goes into an HDR
//! histogram; throughput counts acknowledged record values only.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use silt_api::v1::record_result::Outcome;
use silt_api::v1::{ProduceRequest, Record};
use silt_client::{Client, ClientError, Producer, ProducerConfig, ProducerRecord, SendFuture};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::Code;

use super::deliver::{self, Deliveries};
use super::payload;
use super::replay::{Batches, ReplaySender};
use super::{Report, broker_cpu_seconds, latency_histogram, record_latency, throughput};
use crate::cli::{ByteSize, Compression, connect};

/// Values per per-record `Produce` request: about 256 KiB, within the broker's record limit.
const PER_RECORD_REQUEST_BYTES: u64 = 256 << 10;
const MAX_REQUEST_RECORDS: u64 = 10_000;
/// Retries of a per-record request refused with UNAVAILABLE or RESOURCE_EXHAUSTED.
const MAX_RETRIES: u32 = 5;

/// Produce benchmark.
#[derive(Debug, Args)]
pub(crate) struct ProduceBenchArgs {
    /// Topic to produce to (created if missing).
    #[arg(long)]
    topic: String,
    /// Number of records to send.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Size of each record value (e.g. 1KiB, 100, 4KB).
    #[arg(long, default_value = "1KiB")]
    record_size: ByteSize,
    /// Concurrent producers (each with its own connection), or concurrent per-record senders.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Send with per-record `Produce` requests of ~256 KiB instead of the batch fast path.
    #[arg(long, conflicts_with = "replay")]
    per_record: bool,
    /// Replay RecordBatches encoded before the run in raw `ProduceBatches` calls (256 KiB
    /// batches, 4 MiB requests, 4 in flight per sender): measures the broker and the store
    /// without the client's encoding, for machines where the client shares the broker's cores.
    #[arg(long)]
    replay: bool,
    /// Partitions of the topic if it has to be created.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Batch compression (fast path only).
    #[arg(long, value_enum, default_value_t = Compression::None)]
    compression: Compression,
    /// Producer linger in ms (fast path only).
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Send at most this many records per second in all (fast path only): a moderate,
    /// steady load instead of saturation. Latency then counts from when each record was due,
    /// so a stall is not hidden by the sender waiting out the stall [default: as fast as
    /// possible].
    #[arg(long, conflicts_with_all = ["replay", "per_record"])]
    rate: Option<u64>,
    /// Key the records `key-0` .. `key-{N-1}`, in turn (fast path only): a topic with
    /// `--cleanup-policy compact` then keeps N records [default: no keys].
    #[arg(long, conflicts_with_all = ["replay", "per_record"])]
    keys: Option<u64>,
    /// Also measure put → push-subscribe delivery: one `Subscribe` stream per partition reads
    /// the run back as it is committed, and each record's delivery latency counts from when it
    /// was due (needs `--rate`; record size at least 8 bytes).
    #[arg(long, requires = "rate")]
    subscribe: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What one sending task achieved.
#[derive(Debug)]
pub(crate) struct TaskResult {
    pub(crate) acked: u64,
    pub(crate) failed: u64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) first_error: Option<ClientError>,
}

impl TaskResult {
    pub(crate) fn new() -> Self {
        Self {
            acked: 0,
            failed: 0,
            latency: latency_histogram(),
            first_error: None,
        }
    }

    pub(crate) fn fail(&mut self, count: u64, error: ClientError) {
        self.failed += count;
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: TaskResult) {
        self.acked += other.acked;
        self.failed += other.failed;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

pub(crate) async fn run(broker: &str, args: ProduceBenchArgs) -> anyhow::Result<ExitCode> {
    if args.concurrency == 0 || args.records == 0 || args.rate == Some(0) || args.keys == Some(0) {
        bail!("--concurrency, --records, --rate and --keys must be at least 1");
    }
    let size = usize::try_from(args.record_size.0)?;
    if args.subscribe && size < deliver::STAMP_BYTES {
        bail!(
            "--subscribe stamps each value with its send time: --record-size must be at least {} bytes",
            deliver::STAMP_BYTES
        );
    }
    let client = connect(broker).await?;
    let partitions = ensure_topic(&client, &args.topic, args.partitions).await?;
    let deliveries = if args.subscribe {
        Some(Deliveries::open(&client, &args.topic, partitions).await?)
    } else {
        None
    };
    let before = client.stats().await?;
    let values = Arc::new(payload::pool(
        size,
        payload::pool_len(args.records, size),
        0x5117,
    ));

    let mut tasks = JoinSet::new();
    let (cpu_before, started) = if args.replay {
        let batches = Arc::new(Batches::encode(
            &values,
            256 << 10,
            args.compression.into(),
        )?);
        let claimed = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::with_capacity(args.concurrency);
        for _ in 0..args.concurrency {
            senders.push(ReplaySender {
                client: connect(broker).await?,
                topic: args.topic.clone(),
                partitions,
                batches: batches.clone(),
                claimed: claimed.clone(),
                total: args.records,
                batches_per_request: 16,
                in_flight: 4,
            });
        }
        let cpu_before = broker_cpu_seconds(&client).await?;
        let started = Instant::now();
        for sender in senders {
            tasks.spawn(sender.run());
        }
        (cpu_before, started)
    } else if args.per_record {
        let next = Arc::new(AtomicU64::new(0));
        let chunk =
            (PER_RECORD_REQUEST_BYTES / args.record_size.0.max(1)).clamp(1, MAX_REQUEST_RECORDS);
        let cpu_before = broker_cpu_seconds(&client).await?;
        let started = Instant::now();
        for _ in 0..args.concurrency {
            let sender = PerRecordSender {
                client: connect(broker).await?,
                topic: args.topic.clone(),
                values: values.clone(),
                next: next.clone(),
                total: args.records,
                chunk,
            };
            tasks.spawn(sender.run());
        }
        (cpu_before, started)
    } else {
        let config = ProducerConfig {
            linger: Duration::from_millis(args.linger_ms),
            compression: args.compression.into(),
            ..ProducerConfig::default()
        };
        let mut producers = Vec::with_capacity(args.concurrency);
        for _ in 0..args.concurrency {
            producers
                .push(Producer::new(&connect(broker).await?, &args.topic, config.clone()).await?);
        }
        let per_task = args.records / args.concurrency as u64;
        let extra = args.records % args.concurrency as u64;
        let cpu_before = broker_cpu_seconds(&client).await?;
        let started = Instant::now();
        let started_us = args.subscribe.then(deliver::unix_now_us);
        // Each producer sends its share of the rate, evenly spaced.
        let gap = args
            .rate
            .map(|rate| Duration::from_secs_f64(args.concurrency as f64 / rate as f64));
        let mut first = 0u64;
        for (i, producer) in producers.into_iter().enumerate() {
            let count = per_task + u64::from((i as u64) < extra);
            let pace = gap.map(|gap| Pace {
                start: started,
                start_us: started_us,
                gap,
            });
            tasks.spawn(run_producer(
                producer,
                values.clone(),
                first,
                count,
                pace,
                args.keys,
            ));
            first += count;
        }
        (cpu_before, started)
    };

    let mut total = TaskResult::new();
    while let Some(result) = tasks.join_next().await {
        total.merge(result?);
    }
    let elapsed = started.elapsed();
    let cpu = broker_cpu_seconds(&client).await? - cpu_before;
    let after = client.stats().await?;
    let delivered = match deliveries {
        Some(d) => Some(d.finish(total.acked, Duration::from_secs(30)).await?),
        None => None,
    };

    let mode = if args.replay {
        "replay"
    } else if args.per_record {
        "per-record"
    } else {
        "producer"
    };
    let compression = format!("{:?}", args.compression).to_lowercase();
    let rate = args
        .rate
        .map_or_else(|| "unlimited".to_string(), |r| format!("{r}/s"));
    let report = Report::new(format!(
        "bench produce: topic {} ({partitions} partitions), {} records of {} B, concurrency {}, {mode}, compression {compression}, rate {rate}",
        args.topic, args.records, size, args.concurrency
    ))
    .field("rate", "rate (records/s)", rate)
    .field("topic", "topic", args.topic.clone())
    .field("mode", "mode", mode)
    .field("record_size", "record size (B)", size as u64)
    .field("concurrency", "concurrency", args.concurrency as u64)
    .field("compression", "compression", compression)
    .field("failed", "failed records", total.failed);
    let report = throughput(report, total.acked, total.acked * size as u64, elapsed, cpu)
        .quantiles(
            &total.latency,
            &[
                ("p50_ms", "ack latency p50 (ms)", 0.5),
                ("p99_ms", "ack latency p99 (ms)", 0.99),
                ("p999_ms", "ack latency p99.9 (ms)", 0.999),
            ],
        );
    let report = match &delivered {
        Some(d) => report
            .field("delivered", "records delivered to subscribers", d.records)
            .quantiles(
                &d.latency,
                &[
                    ("delivery_p50_ms", "put -> subscribe delivery p50 (ms)", 0.5),
                    (
                        "delivery_p99_ms",
                        "put -> subscribe delivery p99 (ms)",
                        0.99,
                    ),
                ],
            ),
        None => report,
    };
    let report = super::flush_breakdown(report, &before, &after);
    report.print(args.json);
    if let Some(d) = &delivered
        && d.records < total.acked
    {
        bail!(
            "{} of {} acknowledged records reached the subscribers within 30 s",
            d.records,
            total.acked
        );
    }
    match total.first_error {
        Some(e) if total.acked < args.records => Err(anyhow::Error::new(e).context(format!(
            "{} of {} records failed",
            total.failed, args.records
        ))),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The partition count of `topic`, creating it with `partitions` if it does not exist.
async fn ensure_topic(client: &Client, topic: &str, partitions: u32) -> anyhow::Result<u32> {
    match client.describe_topic(topic).await {
        Ok(described) => Ok(described.topic.unwrap_or_default().partitions),
        Err(e) if e.code() == Code::NotFound => {
            match client.create_topic(topic, partitions, None, None).await {
                Ok(info) => Ok(info.partitions),
                // Someone else created it meanwhile.
                Err(e) if e.code() == Code::AlreadyExists => Ok(client
                    .describe_topic(topic)
                    .await?
                    .topic
                    .unwrap_or_default()
                    .partitions),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A rate-limited producer's schedule: its k-th record is due at `start + k × gap`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    start: Instant,
    /// `start` in µs since the Unix epoch, when values carry their due time (`--subscribe`).
    start_us: Option<u64>,
    gap: Duration,
}

/// One fast-path producer sending `count` values starting at pool position `first`; with a
/// `pace`, the k-th record is due at its slot and its latency counts from then.
async fn run_producer(
    producer: Producer,
    values: Arc<Vec<Bytes>>,
    first: u64,
    count: u64,
    pace: Option<Pace>,
    keys: Option<u64>,
) -> TaskResult {
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect_acks(acks_rx));
    let mut refused = TaskResult::new();
    for (k, i) in (first..first + count).enumerate() {
        let mut value = values[(i % values.len() as u64) as usize].clone();
        let sent_at = match pace {
            Some(pace) => {
                let offset = pace.gap.mul_f64(k as f64);
                let due = pace.start + offset;
                tokio::time::sleep_until(due.into()).await;
                if let Some(start_us) = pace.start_us {
                    value = deliver::stamped(&value, start_us + offset.as_micros() as u64);
                }
                due
            }
            None => Instant::now(),
        };
        let mut record = ProducerRecord::new(value);
        if let Some(keys) = keys {
            record = record.with_key(format!("key-{}", i % keys));
        }
        match producer.send(record).await {
            Ok(future) => {
                let _ = acks_tx.send((sent_at, future));
            }
            Err(e) => refused.fail(1, e),
        }
    }
    drop(acks_tx);
    // Failures also reach each record's future, which the collector counts.
    let _ = producer.close().await;
    match collector.await {
        Ok(mut result) => {
            result.merge(refused);
            result
        }
        Err(e) => {
            refused.fail(
                count - refused.failed,
                ClientError::Protocol(format!("ack collector failed: {e}")),
            );
            refused
        }
    }
}

/// Awaits ack futures as they resolve and records each one's latency.
async fn collect_acks(mut acks_rx: mpsc::UnboundedReceiver<(Instant, SendFuture)>) -> TaskResult {
    let mut result = TaskResult::new();
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            next = acks_rx.recv(), if open => match next {
                Some((sent_at, future)) => pending.push(async move { (future.await, sent_at.elapsed()) }),
                None => open = false,
            },
            Some((outcome, latency)) = pending.next(), if !pending.is_empty() => match outcome {
                Ok(_) => {
                    result.acked += 1;
                    record_latency(&mut result.latency, latency, 1);
                }
                Err(e) => result.fail(1, e),
            },
        }
    }
    result
}

/// One task of the per-record path: claims chunks of the run and sends each as one `Produce`.
struct PerRecordSender {
    client: Client,
    topic: String,
    values: Arc<Vec<Bytes>>,
    next: Arc<AtomicU64>,
    total: u64,
    chunk: u64,
}

impl PerRecordSender {
    async fn run(self) -> TaskResult {
        let mut result = TaskResult::new();
        let mut log = self.client.log();
        loop {
            let first = self.next.fetch_add(self.chunk, Ordering::Relaxed);
            if first >= self.total {
                return result;
            }
            let count = self.chunk.min(self.total - first);
            let records: Vec<Record> = (first..first + count)
                .map(|i| Record {
                    value: self.values[(i % self.values.len() as u64) as usize].clone(),
                    ..Record::default()
                })
                .collect();
            let request = ProduceRequest {
                topic: self.topic.clone(),
                records,
            };
            let sent_at = Instant::now();
            let mut attempt = 0;
            let response = loop {
                match log.produce(request.clone()).await {
                    Ok(response) => break Ok(response.into_inner()),
                    Err(status) => {
                        let e = ClientError::from(status);
                        if !e.is_retriable() || attempt >= MAX_RETRIES {
                            break Err(e);
                        }
                        let delay = e
                            .retry_after()
                            .unwrap_or(Duration::from_millis(100 << attempt));
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                }
            };
            let latency = sent_at.elapsed();
            match response {
                Ok(response) => {
                    let returned = response.results.len() as u64;
                    let mut acked = 0;
                    for outcome in response.results.into_iter().map(|r| r.outcome) {
                        match outcome {
                            Some(Outcome::Ack(_)) => acked += 1,
                            Some(Outcome::Error(e)) => result.fail(
                                1,
                                tonic::Status::new(Code::from_i32(e.code), e.message).into(),
                            ),
                            None => result
                                .fail(1, ClientError::Protocol("a record result is empty".into())),
                        }
                    }
                    result.acked += acked;
                    record_latency(&mut result.latency, latency, acked);
                    if returned < count {
                        let missing =
                            ClientError::Protocol("Produce returned too few results".into());
                        result.fail(count - returned, missing);
                    }
                }
                Err(e) => result.fail(count, e),
            }
        }
    }
}
