//! `cluster-bench`: the stateless-cluster figures of BENCHMARKS.md, measured on real processes
//! on loopback (etcd, Garage when installed, `silt-broker` from `SILT_BIN_DIR`).
//!
//! One run: N brokers, a topic of P partitions, a routing producer on every partition
//! recording each record's ack latency. After a steady window it kills (-9) a broker that owns
//! partitions and is not the controller, measures the time until every partition is owned again
//! and until each of the victim's partitions has its first new ack, compares throughput and
//! p99 ack latency in the 10 s around the kill with the steady window, then adds a broker and
//! measures the time until it owns its share, and last kills the controller and measures the
//! time until its partitions are owned again. It reports the object-store bytes the new owners
//! read to take over and the etcd transactions and bytes per flush. Prints one JSON line.
//!
//!     cargo build --release --bins
//!     SILT_BIN_DIR=target/release target/release/cluster-bench [--brokers 3] [--partitions 64]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use silt_client::{Client, Producer, ProducerConfig, ProducerRecord};
use silt_tests::{Cluster, event_value};

/// One acknowledged record: when it was acked (since the run started) and how long it took.
#[derive(Debug, Clone, Copy)]
struct Ack {
    partition: u32,
    at: Duration,
    latency: Duration,
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let brokers = arg("--brokers", 3) as usize;
    let partitions = arg("--partitions", 64) as u32;
    let ttl_ms = arg("--lease-ttl-ms", 2_000);
    let linger_ms = arg("--linger-ms", 20);
    let steady = Duration::from_secs(arg("--steady-secs", 10));
    let record_size = arg("--record-size", 1024) as usize;

    let mut cluster = Cluster::start("bench", ttl_ms, linger_ms)
        .await
        .ok_or_else(|| anyhow::anyhow!("etcd is not installed (apt-get install etcd-server)"))?;
    for _ in 0..brokers {
        cluster.add_broker().await;
    }
    let client = cluster.client().await;
    client
        .create_topic("bench", partitions, Some(-1), None)
        .await?;
    cluster.wait_owned("bench", Duration::from_secs(30)).await;

    let started = Instant::now();
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(
        client.clone(),
        partitions,
        record_size,
        started,
        acks.clone(),
        stop.clone(),
    ));

    // Warm up, then the steady window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let steady_from = started.elapsed();
    tokio::time::sleep(steady).await;
    let steady_to = started.elapsed();
    let stats_before = all_stats(&cluster).await;

    // kill -9 an owner that is not the controller.
    let status = cluster.status().await.expect("status");
    let victim = (0..brokers)
        .map(|i| format!("b{i}"))
        .find(|b| *b != status.controller)
        .expect("a broker other than the controller");
    let victim_parts: Vec<u32> = status
        .partitions
        .iter()
        .filter(|p| p.topic == "bench" && p.broker_id == victim)
        .map(|p| p.partition)
        .collect();
    let slot: usize = victim[1..].parse()?;
    let kill_at = started.elapsed();
    let killed = Instant::now();
    cluster.kill9(slot);
    let owned_again = poll_owned(&cluster, partitions, Duration::from_millis(10)).await;
    let owned_after = killed.elapsed().max(owned_again);
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(killed.elapsed())).await;
    let around = (
        kill_at.saturating_sub(Duration::from_secs(5)),
        kill_at + Duration::from_secs(5),
    );
    let stats_after = all_stats(&cluster).await;
    let bytes_read_by_new_owners: u64 = stats_after
        .iter()
        .map(|(id, s)| s.object_get_bytes - stats_before.get(id).map_or(0, |b| b.object_get_bytes))
        .sum();

    // Scale out: one more broker takes its share.
    let spawned = Instant::now();
    let new_slot = cluster.add_broker().await;
    let registered = spawned.elapsed();
    let new_id = format!("b{new_slot}");
    let share = loop {
        if let Some(s) = cluster.status().await {
            let counts: Vec<u32> = s.brokers.iter().map(|b| b.partitions_owned).collect();
            let mine = s
                .brokers
                .iter()
                .find(|b| b.broker_id == new_id)
                .map_or(0, |b| b.partitions_owned);
            let (min, max) = (
                counts.iter().min().copied().unwrap_or(0),
                counts.iter().max().copied().unwrap_or(0),
            );
            if mine > 0 && max - min <= 1 {
                break mine;
            }
        }
        assert!(
            spawned.elapsed() < Duration::from_secs(30),
            "scale-out timed out"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let scale_out = spawned.elapsed();
    let newcomer = cluster.broker(new_slot).client().await.stats().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // kill -9 the controller: another broker is elected and moves its partitions.
    let controller = cluster.status().await.expect("status").controller;
    let controller_slot: usize = controller[1..].parse()?;
    let killed = Instant::now();
    cluster.kill9(controller_slot);
    let controller_owned = poll_owned(&cluster, partitions, Duration::from_millis(10)).await;
    let controller_failover = killed.elapsed().max(controller_owned);
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    let final_stats = all_stats(&cluster).await;
    let (txns, flushes, meta_bytes) = final_stats.values().fold((0, 0, 0), |(t, f, b), s| {
        (
            t + s.metadata_txns,
            f + s.segments_flushed,
            b + s.metadata_bytes,
        )
    });

    let acks = acks.lock().unwrap().clone();
    let first_ack_each = victim_parts
        .iter()
        .map(|p| {
            acks.iter()
                .filter(|a| a.partition == *p && a.at > kill_at)
                .map(|a| a.at - kill_at)
                .min()
                .unwrap_or(Duration::MAX)
        })
        .max()
        .unwrap_or_default();
    let window = |from: Duration, to: Duration| {
        let inside: Vec<&Ack> = acks.iter().filter(|a| a.at >= from && a.at < to).collect();
        let mut latencies: Vec<Duration> = inside.iter().map(|a| a.latency).collect();
        latencies.sort();
        let quantile = |q: f64| {
            let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(i).copied().unwrap_or_default().as_secs_f64() * 1000.0
        };
        let mib_s =
            inside.len() as f64 * record_size as f64 / (1 << 20) as f64 / (to - from).as_secs_f64();
        (mib_s, quantile(0.99), quantile(0.999), quantile(1.0))
    };
    let (steady_mib_s, steady_p99, steady_p999, steady_max) = window(steady_from, steady_to);
    let (failover_mib_s, failover_p99, failover_p999, failover_max) = window(around.0, around.1);
    let report = serde_json::json!({
        "brokers": brokers,
        "partitions": partitions,
        "lease_ttl_ms": ttl_ms,
        "linger_ms": linger_ms,
        "object_store": cluster.store_kind(),
        "victim_partitions": victim_parts.len(),
        "failover_owned_ms": owned_after.as_secs_f64() * 1000.0,
        "failover_first_ack_ms": first_ack_each.as_secs_f64() * 1000.0,
        "failover_object_bytes_read": bytes_read_by_new_owners,
        "controller_failover_owned_ms": controller_failover.as_secs_f64() * 1000.0,
        "scale_out_registered_ms": registered.as_secs_f64() * 1000.0,
        "scale_out_share_ms": scale_out.as_secs_f64() * 1000.0,
        "scale_out_share": share,
        "scale_out_object_gets": newcomer.object_gets,
        "scale_out_object_bytes_read": newcomer.object_get_bytes,
        "etcd_txns_per_flush": txns as f64 / flushes.max(1) as f64,
        "etcd_bytes_per_flush": meta_bytes as f64 / flushes.max(1) as f64,
        "steady_mib_s": steady_mib_s,
        "steady_p99_ms": steady_p99,
        "steady_p999_ms": steady_p999,
        "steady_max_ms": steady_max,
        "failover_window_mib_s": failover_mib_s,
        "failover_window_p99_ms": failover_p99,
        "failover_window_p999_ms": failover_p999,
        "failover_window_max_ms": failover_max,
    });
    println!("{report}");
    Ok(())
}

/// Polls until every partition has a live owner; returns when that was first seen.
async fn poll_owned(cluster: &Cluster, partitions: u32, every: Duration) -> Duration {
    let started = Instant::now();
    let serving = cluster.serving_ids();
    loop {
        if let Some(s) = cluster.status().await {
            let owned = s
                .partitions
                .iter()
                .filter(|p| p.topic == "bench" && serving.contains(&p.broker_id))
                .count();
            if owned == partitions as usize {
                return started.elapsed();
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn all_stats(cluster: &Cluster) -> HashMap<String, silt_api::v1::GetStatsResponse> {
    let mut out = HashMap::new();
    for slot in 0..cluster.len() {
        if cluster.is_running(slot)
            && let Ok(s) = cluster.broker(slot).client().await.stats().await
        {
            out.insert(s.broker_id.clone(), s);
        }
    }
    out
}

/// Sends `record_size`-byte records to every partition, pipelined, until `stop`.
async fn load(
    client: Client,
    partitions: u32,
    record_size: usize,
    started: Instant,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
) {
    let producer = Arc::new(
        Producer::new(&client, "bench", ProducerConfig::default())
            .await
            .expect("producer"),
    );
    let tasks: Vec<_> = (0..partitions)
        .map(|partition| {
            let (producer, acks, stop) = (producer.clone(), acks.clone(), stop.clone());
            tokio::spawn(async move {
                let mut pending = FuturesOrdered::new();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let value = Bytes::from(event_value(seq, record_size));
                    seq += 1;
                    let sent = Instant::now();
                    let Ok(ack) = producer
                        .send(ProducerRecord::new(value).with_partition(partition))
                        .await
                    else {
                        continue;
                    };
                    pending.push_back(async move { (sent, ack.await) });
                    while pending.len() > 32 {
                        record(pending.next().await.unwrap(), partition, started, &acks);
                    }
                }
                while let Some(done) = pending.next().await {
                    record(done, partition, started, &acks);
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

fn record(
    (sent, result): (Instant, silt_client::AckResult),
    partition: u32,
    started: Instant,
    acks: &Mutex<Vec<Ack>>,
) {
    if result.is_ok() {
        acks.lock().unwrap().push(Ack {
            partition,
            at: started.elapsed(),
            latency: sent.elapsed(),
        });
    }
}
