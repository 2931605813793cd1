//! Operating a cluster: the admin port's metrics add up across brokers, readiness turns false
//! the moment a shutdown starts, and a rolling restart under load loses nothing and shows
//! clients only errors they retry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use silt_api::v1::{FetchRequest, PartitionBatch, ProduceBatchesRequest};
use silt_client::{Client, PartitionReader, StartSpec};
use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};
use silt_tests::load::routed_load;
use silt_tests::{
    Backend, BackendGuard, BrokerProcess, Checker, Cluster, metric_sum as sum, read_partition,
    wait_for,
};

const TTL_MS: u64 = 2_000;

async fn three_brokers(name: &str) -> Option<Cluster> {
    let mut cluster = Cluster::start(name, TTL_MS, 20).await?;
    for _ in 0..3 {
        cluster.add_broker().await;
    }
    Some(cluster)
}

/// Produce and fetch through ONE broker of three: it forwards every part owned elsewhere and
/// serves every fetch. Summed over the brokers, the produce counters are exactly what was
/// sent (each record counted once, by its owner), and the fetch counters exactly what was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_each_record_once_across_forwarding_brokers() {
    let Some(cluster) = three_brokers("metrics").await else {
        return;
    };
    let client = cluster.client().await;
    client
        .create_topic("m", 6, Some(-1), None)
        .await
        .expect("create");
    cluster.wait_owned("m", Duration::from_secs(20)).await;
    let entry = cluster.broker(0);
    let mut log = silt_api::v1::log_client::LogClient::connect(entry.url())
        .await
        .unwrap();

    // 20 requests, each with one batch of 1..=5 records for every partition.
    let (mut records, mut bytes) = (0u64, 0u64);
    for request in 0..20u64 {
        let mut batches = Vec::new();
        for partition in 0..6u32 {
            let n = 1 + (request + u64::from(partition)) % 5;
            let data: Vec<RecordData> = (0..n)
                .map(|i| RecordData {
                    value: Some(Bytes::from(format!("r{request}-p{partition}-{i}"))),
                    timestamp_ms: 1,
                    ..RecordData::default()
                })
                .collect();
            let batch =
                encode_batch(&data, BatchCompression::None, ProducerInfo::default()).unwrap();
            records += n;
            bytes += batch.len() as u64;
            batches.push(PartitionBatch { partition, batch });
        }
        log.produce_batches(ProduceBatchesRequest {
            topic: "m".into(),
            batches,
        })
        .await
        .expect("produce through one broker");
    }

    // Read everything back through the same broker.
    let mut fetched = 0u64;
    for partition in 0..6u32 {
        let mut offset = 0;
        loop {
            let out = log
                .fetch(FetchRequest {
                    topic: "m".into(),
                    partition,
                    offset,
                    ..FetchRequest::default()
                })
                .await
                .unwrap()
                .into_inner();
            if out.records.is_empty() {
                break;
            }
            fetched += out.records.len() as u64;
            offset = out.records.last().unwrap().offset + 1;
        }
    }
    assert_eq!(fetched, records);

    let scrapes: Vec<String> =
        futures::future::join_all((0..3).map(|i| cluster.broker(i).scrape())).await;
    let total = |name: &str| -> u64 {
        scrapes
            .iter()
            .map(|s| sum(s, name, &[("topic", "m")]) as u64)
            .sum()
    };
    assert_eq!(total("silt_produce_records_total"), records);
    assert_eq!(total("silt_produce_bytes_total"), bytes);
    assert_eq!(total("silt_fetch_records_total"), records);
    // The entry broker counted only what it owns: the rest was counted by the owners.
    let owners = cluster.owners("m").await;
    let owned_by_entry = owners.iter().filter(|(_, b)| b == "b0").count();
    assert!(owned_by_entry < 6, "b0 owns everything: {owners:?}");
    let entry_count = sum(&scrapes[0], "silt_produce_records_total", &[("topic", "m")]) as u64;
    assert!(
        entry_count < records,
        "the entry broker counted forwarded records too"
    );
    // The same registry answers GetStats.
    let stats = entry.client().await.stats().await.unwrap();
    assert_eq!(stats.records_produced, entry_count);
    // Every series carries its broker, and the cluster-level gauges add up.
    assert!(scrapes[0].contains("broker=\"b0\""));
    let owned: f64 = scrapes
        .iter()
        .map(|s| sum(s, "silt_owned_partitions", &[]))
        .sum();
    assert_eq!(owned, 6.0);
    let controllers: f64 = scrapes.iter().map(|s| sum(s, "silt_controller", &[])).sum();
    assert_eq!(controllers, 1.0);
    for s in &scrapes {
        assert_eq!(sum(s, "silt_ready", &[]), 1.0);
        assert_eq!(sum(s, "silt_cluster_brokers", &[]), 3.0);
        assert!(
            sum(
                s,
                "silt_object_store_requests_total",
                &[("op", "put"), ("outcome", "ok")]
            ) >= 1.0
        );
        assert!(sum(s, "silt_metadata_txn_duration_seconds_count", &[]) >= 1.0);
    }
    assert!(
        sum(
            &scrapes[0],
            "silt_request_duration_seconds_count",
            &[("rpc", "ProduceBatches"), ("protocol", "grpc")]
        ) >= 20.0
    );
}

/// `/readyz` answers 503 from the first moment of a shutdown, while `/livez` stays 200: here
/// the shutdown is held up by a paused etcd, so the broker is caught draining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_when_a_shutdown_starts() {
    let Some(guard) = BackendGuard::start(Backend::EtcdGarage).await else {
        return;
    };
    let mut options = guard.broker_options().arg("--shutdown-timeout-ms", 30_000);
    options.linger_ms = 60_000;
    let broker = BrokerProcess::start(options).await;
    wait_for(
        "the broker to be ready",
        Duration::from_secs(30),
        || async { (broker.admin_get("/readyz").await?.0 == 200).then_some(()) },
    )
    .await;
    let client = broker.client().await;
    client.create_topic("r", 1, None, None).await.unwrap();
    let producer = silt_client::Producer::new(&client, "r", Default::default())
        .await
        .unwrap();
    let ack = producer
        .send(silt_client::ProducerRecord::new(Bytes::from_static(b"x")).with_partition(0))
        .await
        .unwrap();
    wait_for(
        "the record in the WAL cache",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move { (client.stats().await.ok()?.wal_cache_bytes > 0).then_some(()) }
        },
    )
    .await;

    // Its commit meets a paused etcd: the shutdown cannot finish until etcd resumes.
    let etcd = guard.etcd.as_ref().expect("etcd");
    etcd.signal("STOP");
    broker.signal("TERM");
    let (status, body) = wait_for(
        "/readyz to say draining",
        Duration::from_secs(10),
        || async {
            let (status, body) = broker.admin_get("/readyz").await?;
            (status == 503).then_some((status, body))
        },
    )
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(broker.admin_get("/livez").await.map(|a| a.0), Some(200));
    let metrics = broker.scrape().await;
    assert_eq!(sum(&metrics, "silt_ready", &[]), 0.0, "{metrics}");
    etcd.signal("CONT");

    // The shutdown completes in order: the record is acknowledged, the process exits 0.
    let answer = tokio::time::timeout(Duration::from_secs(30), ack)
        .await
        .expect("the producer answers");
    assert!(
        answer.is_ok(),
        "the drained record is acknowledged: {answer:?}"
    );
    let (status, _) = broker.stop().await;
    assert!(status.success(), "an ordered shutdown exits 0: {status}");
}

/// A consumer that follows every partition from offset 0 through broker restarts, keeping
/// what it reads per partition.
async fn follow(
    client: Client,
    topic: &str,
    partitions: u32,
    stop: Arc<AtomicBool>,
) -> BTreeMap<u32, Vec<(i64, Bytes)>> {
    let tasks: Vec<_> = (0..partitions)
        .map(|partition| {
            let (client, topic, stop) = (client.clone(), topic.to_string(), stop.clone());
            tokio::spawn(async move {
                let mut reader =
                    PartitionReader::new(&client, &topic, partition, StartSpec::Earliest)
                        .await
                        .expect("reader");
                let mut seen = Vec::new();
                let mut idle = 0;
                loop {
                    match reader.next_batch(Duration::from_millis(200)).await {
                        Ok(batch) if batch.is_empty() => {
                            if stop.load(Ordering::Relaxed) {
                                idle += 1;
                                if idle > 5 {
                                    break;
                                }
                            }
                        }
                        Ok(batch) => {
                            idle = 0;
                            seen.extend(
                                batch
                                    .into_iter()
                                    .map(|r| (r.offset, r.value.unwrap_or_default())),
                            );
                        }
                        Err(e) => panic!("the consumer of partition {partition} failed: {e}"),
                    }
                }
                (partition, seen)
            })
        })
        .collect();
    let mut out = BTreeMap::new();
    for t in tasks {
        let (p, seen) = t.await.expect("consumer task");
        out.insert(p, seen);
    }
    out
}

/// SIGTERM each of three brokers in turn, restart it, wait until it serves, next — while a
/// routing producer, `silt produce` and a consumer run. Every produce call succeeds, every
/// acknowledged record is stored once in order, and the consumer reads every record in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_loses_nothing() {
    let Some(mut cluster) = three_brokers("rolling").await else {
        return;
    };
    const PARTITIONS: u32 = 6;
    let client = cluster.client().await;
    client
        .create_topic("roll", PARTITIONS, Some(-1), None)
        .await
        .expect("create");
    cluster.wait_owned("roll", Duration::from_secs(20)).await;
    let urls = cluster.urls();
    let out = silt_tests::run_cli(&urls, &["topic", "create", "lines", "--partitions", "3"]);
    assert!(out.success, "{}", out.stderr);
    cluster.wait_owned("lines", Duration::from_secs(20)).await;

    let checker = Arc::new(Checker::new());
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, checker, stop) = (client.clone(), checker.clone(), stop.clone());
        tokio::spawn(async move { routed_load("roll", client, PARTITIONS, checker, stop, 1).await })
    };
    let consumer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move { follow(client, "roll", PARTITIONS, stop).await })
    };
    // A consumer-group member reads what `silt produce` writes, through all the restarts.
    let mut member = silt_tests::MemberProcess::start(
        "rolling-member",
        &urls,
        "lines",
        "rolling",
        &["--follow"],
    );
    const LINES: usize = 40_000;
    let cli = {
        let input: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
        let urls = urls.clone();
        std::thread::spawn(move || {
            silt_tests::run_cli_with_input(&urls, &["produce", "lines"], input.as_bytes())
        })
    };

    for slot in 0..3 {
        let target = checker.acked_count() + 500;
        wait_for(
            "more acknowledged records",
            Duration::from_secs(60),
            || async { (checker.acked_count() >= target).then_some(()) },
        )
        .await;
        let status = cluster.terminate(slot);
        assert!(status.success(), "b{slot} stopped in order: {status}");
        cluster.restart(slot).await;
        cluster.wait_owned("roll", Duration::from_secs(20)).await;
    }
    let target = checker.acked_count() + 500;
    wait_for(
        "records after the last restart",
        Duration::from_secs(60),
        || async { (checker.acked_count() >= target).then_some(()) },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("the load stops")
        .unwrap();
    let cli_out = tokio::task::spawn_blocking(move || cli.join().unwrap())
        .await
        .unwrap();
    assert!(cli_out.success, "{}", cli_out.stderr);
    assert!(
        cli_out
            .stderr
            .contains(&format!("acknowledged {LINES} of {LINES}")),
        "{}",
        cli_out.stderr
    );

    // The group member read every line `silt produce` got acknowledged (at least once: a
    // coordinator that moves mid-way may make it re-read from its last commit), each
    // partition in offset order.
    wait_for(
        "the group member read every line",
        Duration::from_secs(120),
        || {
            let seen: std::collections::BTreeSet<String> =
                member.records().into_iter().map(|r| r.value).collect();
            async move { (seen.len() == LINES).then_some(()) }
        },
    )
    .await;
    let mut first_seen: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    let mut counted = std::collections::HashSet::new();
    for r in member.records() {
        if counted.insert((r.partition, r.offset)) {
            first_seen.entry(r.partition).or_default().push(r.offset);
        }
    }
    for (partition, offsets) in &first_seen {
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "lines partition {partition}: the group member skipped or reordered"
        );
    }
    assert!(
        member.terminate(Duration::from_secs(30)).success(),
        "the member commits, leaves and exits 0"
    );
    let group = client.describe_group("rolling").await.expect("describe");
    assert!(group.partitions.iter().all(|p| p.lag == 0), "{group:?}");

    let report = checker.verify(&client, "roll").await;
    eprintln!("rolling restart: {report:?}");
    report.assert_clean();
    assert_eq!(report.failed, 0, "a produce call failed: {report:?}");

    // The consumer read every stored record, once, in offset order.
    let consumed = tokio::time::timeout(Duration::from_secs(120), consumer)
        .await
        .expect("the consumer catches up")
        .unwrap();
    for partition in 0..PARTITIONS {
        let stored = read_partition(&client, "roll", partition).await;
        let seen = &consumed[&partition];
        let offsets: Vec<i64> = seen.iter().map(|(o, _)| *o).collect();
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "partition {partition}: the consumer read out of order or skipped"
        );
        let seen: BTreeMap<i64, Bytes> = seen.iter().cloned().collect();
        assert_eq!(seen, stored, "partition {partition}: consumed == stored");
    }
}
