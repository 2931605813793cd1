//! The stateless cluster under faults: three brokers on one etcd and one object store. Owners
//! are killed, paused past their lease and stopped while a routing client produces; every test
//! ends with the checker (acked ⇒ stored once at its offset, offsets dense, order kept).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use rand::{Rng, SeedableRng};
use silt_api::v1::{PartitionBatch, ProduceBatchesRequest};
use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};
use silt_tests::load::routed_load;
use silt_tests::{Checker, Cluster, read_partition, wait_for};

const TTL_MS: u64 = 2_000;

/// etcd, the object store and brokers b0..b2; `None` when etcd is not installed.
async fn three_brokers(name: &str) -> Option<Cluster> {
    let mut cluster = Cluster::start(name, TTL_MS, 20).await?;
    for _ in 0..3 {
        cluster.add_broker().await;
    }
    Some(cluster)
}

/// A whole number from the environment, else `default`.
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A topic, and a load on it that runs until the returned flag is set.
async fn start_load(
    cluster: &Cluster,
    topic: &str,
    partitions: u32,
) -> (Arc<Checker>, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let client = cluster.client().await;
    client
        .create_topic(topic, partitions, Some(-1), None)
        .await
        .expect("create topic");
    cluster.wait_owned(topic, Duration::from_secs(20)).await;
    let checker = Arc::new(Checker::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (topic, c, s) = (topic.to_string(), checker.clone(), stop.clone());
    let load = tokio::spawn(async move { routed_load(&topic, client, partitions, c, s, 1).await });
    (checker, stop, load)
}

/// Waits until `n` more records than now are acknowledged.
async fn acked_more(checker: &Checker, n: u64) {
    let target = checker.acked_count() + n;
    wait_for(
        "more acknowledged records",
        Duration::from_secs(30),
        || async { (checker.acked_count() >= target).then_some(()) },
    )
    .await;
}

/// Stops the load, and checks every partition through the whole cluster.
async fn finish(
    cluster: &Cluster,
    topic: &str,
    checker: Arc<Checker>,
    stop: Arc<AtomicBool>,
    load: tokio::task::JoinHandle<()>,
) {
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("the load stops")
        .unwrap();
    cluster.wait_owned(topic, Duration::from_secs(20)).await;
    let report = checker.verify(&cluster.client().await, topic).await;
    eprintln!(
        "{topic} on {}: acked {}, read {}, failed calls {}, lost {}, duplicated {}, reordered {}, gaps {}",
        cluster.store_kind(),
        report.acked,
        report.read,
        report.failed,
        report.lost,
        report.duplicated,
        report.reordered,
        report.gaps
    );
    assert!(report.acked > 0, "nothing was acknowledged");
    report.assert_clean();
}

fn owned_by(owners: &[(u32, String)], broker: &str) -> Vec<u32> {
    owners
        .iter()
        .filter(|(_, b)| b == broker)
        .map(|(p, _)| *p)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_an_owner_moves_its_partitions_to_the_survivors() {
    let Some(cluster) = three_brokers("failover").await else {
        return;
    };
    owner_failover(cluster).await;
}

/// The same failover with MinIO as the shared object store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_an_owner_moves_its_partitions_on_minio() {
    let Some(mut cluster) = Cluster::start_on_minio("failover-minio", TTL_MS, 20).await else {
        return;
    };
    for _ in 0..3 {
        cluster.add_broker().await;
    }
    assert_eq!(cluster.store_kind(), "minio");
    owner_failover(cluster).await;
}

async fn owner_failover(mut cluster: Cluster) {
    let (checker, stop, load) = start_load(&cluster, "orders", 6).await;
    acked_more(&checker, 500).await;

    let victim = owned_by(&cluster.owners("orders").await, "b1");
    assert!(!victim.is_empty(), "b1 owns nothing");
    let killed = Instant::now();
    cluster.kill9(1);
    let moved = cluster.wait_owned("orders", Duration::from_secs(30)).await;
    eprintln!(
        "kill -9: partitions {victim:?} owned again after {moved:?} (lease TTL {:?})",
        cluster.ttl()
    );
    assert!(
        killed.elapsed() <= cluster.ttl() + Duration::from_secs(4),
        "failover took {:?}",
        killed.elapsed()
    );
    // Producing goes on, on every partition.
    acked_more(&checker, 500).await;
    finish(&cluster, "orders", checker, stop, load).await;
}

/// A batch of one record for a raw `ProduceBatches` call.
fn one_record_batch(value: &[u8]) -> Bytes {
    let record = RecordData {
        value: Some(Bytes::copy_from_slice(value)),
        timestamp_ms: 1,
        ..RecordData::default()
    };
    encode_batch(&[record], BatchCompression::None, ProducerInfo::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_owner_past_its_lease_can_upload_but_never_commit() {
    let Some(mut cluster) = Cluster::start("zombie", TTL_MS, 20).await else {
        return;
    };
    // b0 holds its windows open for a while, so a produce is pending when it freezes.
    cluster
        .add_broker_with(|mut o| {
            o.linger_ms = 1_500;
            o
        })
        .await;
    cluster.add_broker().await;
    cluster.add_broker().await;
    let client = cluster.client().await;
    client
        .create_topic("zombie", 3, Some(-1), None)
        .await
        .unwrap();
    cluster.wait_owned("zombie", Duration::from_secs(20)).await;
    let partition = owned_by(&cluster.owners("zombie").await, "b0")[0];

    // A produce straight to b0, then SIGSTOP while it waits in b0's WAL cache.
    let zombie = cluster.broker(0).client().await;
    let mut log = zombie.log();
    let pending = tokio::spawn(async move {
        log.produce_batches(ProduceBatchesRequest {
            topic: "zombie".into(),
            batches: vec![PartitionBatch {
                partition,
                batch: one_record_batch(b"from-the-zombie"),
            }],
        })
        .await
    });
    wait_for(
        "the produce to wait in b0's WAL cache",
        Duration::from_secs(10),
        || {
            let zombie = zombie.clone();
            async move {
                let stats = zombie.stats().await.ok()?;
                (stats.wal_cache_bytes > 0).then_some(())
            }
        },
    )
    .await;
    cluster.pause(0);

    // Past the lease the partition has a new owner, which commits new records.
    cluster.wait_owned("zombie", Duration::from_secs(30)).await;
    let survivors = cluster.client().await;
    let mut log = survivors.log();
    let ack = log
        .produce_batches(ProduceBatchesRequest {
            topic: "zombie".into(),
            batches: vec![PartitionBatch {
                partition,
                batch: one_record_batch(b"from-the-new-owner"),
            }],
        })
        .await
        .expect("the new owner acknowledges")
        .into_inner()
        .acks[0];

    // The zombie wakes up: its pending flush must fail, its producer must get an error.
    cluster.resume(0);
    let answer = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("the zombie answers")
        .unwrap();
    let status = answer.expect_err("a fenced broker must not acknowledge");
    eprintln!("the zombie answered: {}", status.message());
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.metadata().get("silt-not-stored").is_some(),
        "the error says nothing was stored: {status:?}"
    );

    let stored = read_partition(&survivors, "zombie", partition).await;
    assert_eq!(
        stored.get(&ack.base_offset).map(|v| v.as_ref()),
        Some(&b"from-the-new-owner"[..])
    );
    assert!(
        stored.values().all(|v| v.as_ref() != b"from-the-zombie"),
        "the zombie's record was stored: {stored:?}"
    );

    // What the zombie uploaded without committing is deleted.
    let catalog = cluster.catalog().await;
    let store = cluster.object_store();
    wait_for(
        "the zombie's orphan object to go",
        Duration::from_secs(30),
        || {
            let (catalog, store) = (catalog.clone(), store.clone());
            async move {
                let committed: Vec<String> = catalog
                    .load_segments()
                    .await
                    .ok()?
                    .into_iter()
                    .map(|(_, c)| c.object)
                    .collect();
                let objects: Vec<String> = store
                    .list(Some(&object_store::path::Path::from("segments/b0")))
                    .map_ok(|m| m.location.to_string())
                    .try_collect()
                    .await
                    .ok()?;
                objects.iter().all(|o| committed.contains(o)).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_and_in_under_load_moves_no_record_data() {
    let Some(mut cluster) = Cluster::start("elastic", TTL_MS, 20).await else {
        return;
    };
    cluster.add_broker().await;
    let (checker, stop, load) = start_load(&cluster, "elastic", 8).await;
    acked_more(&checker, 300).await;

    // Scale out 1 → 3: each newcomer takes its share, reading nothing from the object store.
    for (slot, expect) in [(1usize, [4u32, 4, 0]), (2, [3, 3, 2])] {
        assert_eq!(cluster.add_broker().await, slot);
        let took = cluster.wait_owned("elastic", Duration::from_secs(20)).await;
        let counts = wait_for("a balanced assignment", Duration::from_secs(20), || {
            let cluster = &cluster;
            async move {
                let status = cluster.status().await?;
                let mut counts = [0u32; 3];
                for b in &status.brokers {
                    let i: usize = b.broker_id[1..].parse().ok()?;
                    counts[i] = b.partitions_owned;
                }
                let mut sorted = counts;
                sorted.sort_unstable_by(|a, b| b.cmp(a));
                (sorted == expect).then_some(counts)
            }
        })
        .await;
        eprintln!("scale-out to b{slot}: owners {counts:?}, owned in {took:?} after start");
        // Its only read is the prefix claim (`silt-cluster.json`) at start: no segment bytes.
        let stats = cluster.broker(slot).client().await.stats().await.unwrap();
        eprintln!(
            "b{slot} read {} object(s), {} bytes, to take over",
            stats.object_gets, stats.object_get_bytes
        );
        assert!(
            stats.object_gets <= 1 && stats.object_get_bytes < 1024,
            "a new owner reads no record data to take over: {} GETs, {} bytes",
            stats.object_gets,
            stats.object_get_bytes
        );
        acked_more(&checker, 300).await;
    }

    // Scale in 3 → 1: a stopped broker flushes, releases at once (no lease wait) and exits 0.
    for slot in [2usize, 1] {
        let stopped = Instant::now();
        assert!(cluster.terminate(slot).success(), "b{slot} exits cleanly");
        let moved = cluster.wait_owned("elastic", Duration::from_secs(20)).await;
        let total = stopped.elapsed();
        eprintln!(
            "scale-in of b{slot}: exited and handed over in {total:?} ({moved:?} after exit)"
        );
        assert!(
            moved < cluster.ttl(),
            "partitions moved after {moved:?}: the lease was waited for"
        );
        acked_more(&checker, 300).await;
    }
    finish(&cluster, "elastic", checker, stop, load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_kills_pauses_and_restarts_lose_nothing() {
    let Some(mut cluster) = three_brokers("chaos").await else {
        return;
    };
    let seed = env_u64("SILT_CHAOS_SEED", 20261201);
    let secs = env_u64("SILT_CHAOS_SECS", 60);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (checker, stop, load) = start_load(&cluster, "chaos", 8).await;
    acked_more(&checker, 300).await;

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut actions: BTreeMap<&str, u32> = BTreeMap::new();
    while Instant::now() < deadline {
        let slot = rng.random_range(0..cluster.len());
        let action = [
            "kill -9",
            "SIGSTOP past the lease",
            "SIGSTOP briefly",
            "SIGTERM",
        ][rng.random_range(0..4)];
        *actions.entry(action).or_default() += 1;
        eprintln!("chaos: {action} b{slot}");
        match action {
            "kill -9" => {
                cluster.kill9(slot);
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..2_500))).await;
                cluster.restart(slot).await;
            }
            "SIGSTOP past the lease" => {
                cluster.pause(slot);
                tokio::time::sleep(
                    cluster.ttl() + Duration::from_millis(rng.random_range(500..2_000)),
                )
                .await;
                cluster.resume(slot);
            }
            "SIGSTOP briefly" => {
                cluster.pause(slot);
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..1_000))).await;
                cluster.resume(slot);
            }
            _ => {
                assert!(cluster.terminate(slot).success(), "b{slot} exits cleanly");
                cluster.restart(slot).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_500))).await;
    }
    eprintln!("chaos (seed {seed}, {secs} s): {actions:?}");
    // Every partition is served again and producing goes on.
    cluster.wait_owned("chaos", Duration::from_secs(30)).await;
    acked_more(&checker, 300).await;
    finish(&cluster, "chaos", checker, stop, load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_keeps_producing_while_an_owner_dies() {
    let Some(mut cluster) = three_brokers("cli").await else {
        return;
    };
    let urls = cluster.urls();
    let out = silt_tests::run_cli(&urls, &["topic", "create", "lines", "--partitions", "6"]);
    assert!(out.success, "{}", out.stderr);
    cluster.wait_owned("lines", Duration::from_secs(20)).await;

    // `silt produce` of many lines, through the broker list; an owner dies half-way.
    const LINES: usize = 60_000;
    let input: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    let cli = {
        let urls = urls.clone();
        std::thread::spawn(move || {
            silt_tests::run_cli_with_input(&urls, &["produce", "lines"], input.as_bytes())
        })
    };
    let client = cluster.client().await;
    wait_for(
        "the produce to be under way",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                let described = client.describe_topic("lines").await.ok()?;
                let stored: i64 = described.partitions.iter().map(|p| p.high_watermark).sum();
                (stored > (LINES / 4) as i64).then_some(())
            }
        },
    )
    .await;
    assert!(!cli.is_finished(), "the produce ended before the kill");
    cluster.kill9(1);
    let out = tokio::task::spawn_blocking(move || cli.join().unwrap())
        .await
        .unwrap();
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("acknowledged {LINES} of {LINES}")),
        "{}",
        out.stderr
    );

    // Every line is stored (at least once: the CLI retries like any at-least-once producer).
    cluster.wait_owned("lines", Duration::from_secs(20)).await;
    let out = silt_tests::run_cli(&cluster.urls(), &["consume", "lines"]);
    assert!(out.success, "{}", out.stderr);
    let seen: std::collections::HashSet<&str> = out.stdout.lines().collect();
    assert_eq!(seen.len(), LINES, "every line produced is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_controller_elects_another_that_moves_its_partitions() {
    let Some(mut cluster) = three_brokers("ctl").await else {
        return;
    };
    let (checker, stop, load) = start_load(&cluster, "ctl", 6).await;
    acked_more(&checker, 300).await;
    let controller = cluster.status().await.unwrap().controller;
    let slot: usize = controller[1..].parse().unwrap();
    cluster.kill9(slot);
    let moved = cluster.wait_owned("ctl", Duration::from_secs(30)).await;
    let status = cluster.status().await.unwrap();
    eprintln!(
        "controller {controller} killed: {} elected, partitions owned again after {moved:?}",
        status.controller
    );
    assert!(
        cluster.serving_ids().contains(&status.controller),
        "a live broker is the controller: {status:?}"
    );
    acked_more(&checker, 300).await;
    finish(&cluster, "ctl", checker, stop, load).await;
}
