//! Produce loads that record every acknowledgement in a [`Checker`], for tests that produce
//! while brokers die or stores fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use silt_api::v1::record_result::Outcome;
use silt_api::v1::{ProduceRequest, Record};
use silt_client::{Client, Producer, ProducerConfig, ProducerRecord};

use crate::{Checker, event_value};

/// Sends records to `partition` through the fast path until `stop`, recording every ack.
pub async fn fast_path_load(
    topic: &str,
    client: Client,
    partition: u32,
    checker: Arc<Checker>,
    stop: Arc<AtomicBool>,
    run: u64,
) {
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        max_retries: 0,
        ..ProducerConfig::default()
    };
    let Ok(producer) = Producer::new(&client, topic, config).await else {
        return;
    };
    pump(&producer, partition, &checker, &stop, run, 256, false).await;
}

/// Sends numbered records to `partition` until `stop`, at most `window` unacknowledged, and
/// settles every outcome in the checker. A refused `send` ends the loop, or with
/// `keep_going` is counted as a failure and the loop goes on.
async fn pump(
    producer: &Producer,
    partition: u32,
    checker: &Checker,
    stop: &AtomicBool,
    run: u64,
    window: usize,
    keep_going: bool,
) {
    let mut seq = 0u64;
    let mut pending = FuturesOrdered::new();
    while !stop.load(Ordering::Relaxed) {
        let value = Bytes::from(event_value(
            seq + u64::from(partition) * 1_000_000_000 + run * 100_000_000,
            200,
        ));
        let Ok(ack) = producer
            .send(ProducerRecord::new(value.clone()).with_partition(partition))
            .await
        else {
            if !keep_going {
                break;
            }
            checker.failed();
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let this_seq = seq;
        pending.push_back(async move { (this_seq, value, ack.await) });
        seq += 1;
        while pending.len() > window {
            settle(pending.next().await.unwrap(), partition, checker);
        }
    }
    while let Some(done) = pending.next().await {
        settle(done, partition, checker);
    }
}

pub(crate) fn settle(
    done: (u64, Bytes, silt_client::AckResult),
    partition: u32,
    checker: &Checker,
) {
    match done {
        (seq, value, Ok((p, offset))) => {
            assert_eq!(p, partition);
            checker.acked(p, offset, seq, value);
        }
        (_, _, Err(e)) => {
            if std::env::var_os("SILT_TEST_SHOW_FAILURES").is_some() {
                eprintln!("produce failed on partition {partition}: {e} ({e:?})");
            }
            checker.failed()
        }
    }
}

/// Sends one-record `Produce` calls (the per-record path) to `partition` until `stop`.
pub async fn per_record_load(
    topic: &str,
    client: Client,
    partition: u32,
    checker: Arc<Checker>,
    stop: Arc<AtomicBool>,
    run: u64,
) {
    let mut log = client.log();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let records: Vec<Record> = (0..20)
            .map(|i| Record {
                value: Bytes::from(event_value(
                    seq + i + u64::from(partition) * 1_000_000_000 + run * 100_000_000,
                    100,
                )),
                partition: Some(partition),
                ..Record::default()
            })
            .collect();
        let values: Vec<Bytes> = records.iter().map(|r| r.value.clone()).collect();
        match log
            .produce(ProduceRequest {
                topic: topic.to_string(),
                records,
            })
            .await
        {
            Ok(response) => {
                for (i, result) in response.into_inner().results.into_iter().enumerate() {
                    match result.outcome {
                        Some(Outcome::Ack(ack)) => checker.acked(
                            ack.partition,
                            ack.offset,
                            seq + i as u64,
                            values[i].clone(),
                        ),
                        _ => checker.failed(),
                    }
                }
            }
            Err(_) => {
                checker.failed();
                break;
            }
        }
        seq += 20;
    }
}

/// Produces to every partition of `topic` through one routing [`Producer`] until `stop`, as a
/// user of a cluster would: each partition's records are numbered in send order, every ack goes
/// to the checker and every failure is counted. Failures after which nothing was stored are
/// retried inside the producer (against the new owner); ambiguous ones are not
/// (`retry_ambiguous: false`), so an acknowledged record can never be stored twice.
pub async fn routed_load(
    topic: &str,
    client: Client,
    partitions: u32,
    checker: Arc<Checker>,
    stop: Arc<AtomicBool>,
    run: u64,
) {
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        retry_ambiguous: false,
        ..ProducerConfig::default()
    };
    let producer = Arc::new(
        Producer::new(&client, topic, config)
            .await
            .expect("producer"),
    );
    let tasks: Vec<_> = (0..partitions)
        .map(|partition| {
            let (producer, checker, stop) = (producer.clone(), checker.clone(), stop.clone());
            tokio::spawn(async move {
                pump(&producer, partition, &checker, &stop, run, 64, true).await;
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    if let Ok(producer) = Arc::try_unwrap(producer) {
        let _ = producer.close().await;
    }
}
