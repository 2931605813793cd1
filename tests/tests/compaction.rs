//! Compaction and garbage collection on a real cluster (etcd + the shared object store): the
//! owners copy flushed entries into per-partition objects while producers, readers and a
//! `kill -9` go on; the checker finds every acknowledged record once, in order, at its offset;
//! flush segments' keys and objects go away, so metadata is bounded by partitions, not by
//! flushes; crashes between an object's PUT and its commit leave only orphans, which garbage
//! collection deletes; and deleting a topic leaves no object and no key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use silt_api::v1::{ProduceRequest, Record};
use silt_tests::load::routed_load;
use silt_tests::{BrokerOptions, Checker, Cluster, read_partition, wait_for, wait_for_state};

const TTL_MS: u64 = 2_000;

/// Compaction and GC as fast as a test wants them: every committed entry is due at once (max
/// delay 300 ms), objects of 256 KiB, and unreferenced objects go after 2 s.
fn fast_lifecycle(options: BrokerOptions) -> BrokerOptions {
    lifecycle(options, "256KiB")
}

/// [`fast_lifecycle`] with compaction objects of `target` ("0": compaction off).
fn lifecycle(options: BrokerOptions, target: &str) -> BrokerOptions {
    options.fast_lifecycle(target)
}

/// Reads partitions over and over while the test runs: every read is dense from the log start
/// and never disagrees with an earlier read about an offset's record.
async fn tail_checker(
    client: silt_client::Client,
    topic: String,
    partitions: u32,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
) {
    let mut seen: Vec<BTreeMap<i64, Bytes>> = vec![BTreeMap::new(); partitions as usize];
    while !stop.load(Ordering::Relaxed) {
        for p in 0..partitions {
            // A read that fails (its broker was just killed) is skipped, not judged.
            let Some(read) = try_read_partition(&client, &topic, p).await else {
                continue;
            };
            let offsets: Vec<i64> = read.keys().copied().collect();
            for pair in offsets.windows(2) {
                assert_eq!(pair[1], pair[0] + 1, "partition {p}: a gap in a read");
            }
            for (offset, value) in &read {
                if let Some(before) = seen[p as usize].insert(*offset, value.clone()) {
                    assert_eq!(&before, value, "partition {p}: offset {offset} changed");
                }
            }
            reads.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of a partition from its log start to its high watermark; `None` on an error.
async fn try_read_partition(
    client: &silt_client::Client,
    topic: &str,
    partition: u32,
) -> Option<BTreeMap<i64, Bytes>> {
    use silt_client::{PartitionReader, StartSpec};
    let mut reader = PartitionReader::new(client, topic, partition, StartSpec::Earliest)
        .await
        .ok()?;
    let end = reader.high_watermark();
    let mut out = BTreeMap::new();
    while reader.next_offset() < end {
        for r in reader.next_batch(Duration::from_millis(100)).await.ok()? {
            if r.offset < end {
                out.insert(r.offset, r.value.unwrap_or_default());
            }
        }
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_under_produce_fetch_and_kill_9_loses_nothing_and_bounds_metadata() {
    let Some(mut cluster) = Cluster::start("compaction", TTL_MS, 10).await else {
        return;
    };
    for _ in 0..3 {
        cluster.add_broker_with(fast_lifecycle).await;
    }
    let topic = "history";
    let partitions = 6;
    let client = cluster.client().await;
    client
        .create_topic(topic, partitions, Some(-1), None)
        .await
        .expect("create topic");
    cluster.wait_owned(topic, Duration::from_secs(20)).await;
    let catalog = cluster.catalog().await;

    let checker = Arc::new(Checker::new());
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, checker, stop) = (client.clone(), checker.clone(), stop.clone());
        tokio::spawn(async move { routed_load(topic, client, partitions, checker, stop, 1).await })
    };
    let reads = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(tail_checker(
        cluster.client().await,
        topic.to_string(),
        2,
        stop.clone(),
        reads.clone(),
    ));

    // Compaction swaps entries while producing and reading go on.
    let compacted = |n: usize| {
        let catalog = catalog.clone();
        async move {
            let parts = catalog.load_parts().await.ok()?;
            (parts.len() >= n).then_some(parts.len())
        }
    };
    wait_for(
        "compaction to swap entries",
        Duration::from_secs(60),
        || compacted(6),
    )
    .await;

    // The broker compacting b1's partitions dies mid-way; the survivors take them over and
    // compact them too.
    cluster.kill9(1);
    cluster.wait_owned(topic, Duration::from_secs(30)).await;
    let before = catalog.load_parts().await.unwrap().len();
    wait_for(
        "compaction after the failover",
        Duration::from_secs(60),
        || compacted(before + 6),
    )
    .await;
    let acked = checker.acked_count();
    wait_for("more acknowledged records", Duration::from_secs(30), || {
        let n = checker.acked_count();
        async move { (n > acked + 500).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("the load stops")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reader stops")
        .unwrap();
    assert!(reads.load(Ordering::Relaxed) > 4, "the reader read");

    // Everything flushed is compacted; no flush segment's key or object is left, and every
    // object left is referenced by exactly one compacted commit.
    let state = wait_for_state(
        "flush segments to be compacted and collected",
        Duration::from_secs(60),
        || async {
            let state = Lifecycle::read(&catalog, &cluster).await?;
            let mut referenced: Vec<String> =
                state.parts.iter().map(|(_, c)| c.object.clone()).collect();
            referenced.sort();
            if state.segments.is_empty() && state.objects == referenced {
                return Ok(state);
            }
            Err(format!("{state}, referenced {referenced:?}"))
        },
    )
    .await;
    let (segments, parts) = (state.segments, state.parts);
    let report = checker.verify(&cluster.client().await, topic).await;
    let bytes: u64 = parts.iter().map(|(_, c)| c.object_len).sum();
    eprintln!(
        "compaction: acked {}, read {}, lost {}, duplicated {}, reordered {}, gaps {}; {} segment keys, {} compacted keys holding {bytes} bytes",
        report.acked,
        report.read,
        report.lost,
        report.duplicated,
        report.reordered,
        report.gaps,
        segments.len(),
        parts.len()
    );
    assert!(report.acked > 0);
    report.assert_clean();

    // Deleting the topic removes its data, index entries and metadata.
    client.delete_topic(topic).await.expect("delete topic");
    wait_for_state(
        "the deleted topic's keys and objects to go",
        Duration::from_secs(60),
        || async {
            let state = Lifecycle::read(&catalog, &cluster).await?;
            let empty = state.segments.is_empty()
                && state.parts.is_empty()
                && state.log_starts.is_empty()
                && state.objects.is_empty();
            if empty {
                Ok(())
            } else {
                Err(state.to_string())
            }
        },
    )
    .await;
}

/// What the data lifecycle left: commit keys, log starts, and objects in the store.
struct Lifecycle {
    segments: Vec<(String, silt_metadata::codec::SegmentCommit)>,
    parts: Vec<(String, silt_metadata::codec::SegmentCommit)>,
    log_starts: Vec<(u64, Vec<i64>)>,
    /// Object paths under `segments/` and `parts/`, sorted.
    objects: Vec<String>,
}

impl Lifecycle {
    async fn read(
        catalog: &silt_metadata::catalog::Catalog,
        cluster: &Cluster,
    ) -> Result<Self, String> {
        let mut objects = cluster.list_objects("segments").await;
        objects.extend(cluster.list_objects("parts").await);
        objects.sort();
        Ok(Self {
            segments: catalog.load_segments().await.map_err(|e| e.to_string())?,
            parts: catalog.load_parts().await.map_err(|e| e.to_string())?,
            log_starts: catalog.load_log_starts().await.map_err(|e| e.to_string())?,
            objects,
        })
    }
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids = |c: &[(String, silt_metadata::codec::SegmentCommit)]| {
            c.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()
        };
        write!(
            f,
            "segment keys {:?}, compacted keys {:?}, log starts {:?}, objects {:?}",
            ids(&self.segments),
            ids(&self.parts),
            self.log_starts,
            self.objects
        )
    }
}

/// One record to `partition` through the per-record API; the outcome is returned, not checked.
async fn produce_one(
    client: &silt_client::Client,
    topic: &str,
    key: &str,
) -> Result<(), tonic::Status> {
    let mut log = client.log();
    log.produce(ProduceRequest {
        topic: topic.into(),
        records: vec![Record {
            key: Some(Bytes::from(key.to_string())),
            value: Bytes::from(format!("value of {key}")),
            ..Record::default()
        }],
    })
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_between_put_and_commit_leave_orphans_that_gc_deletes() {
    let Some(mut cluster) = Cluster::start("gc-crash", TTL_MS, 10).await else {
        return;
    };
    // b0 keeps running and compacts nothing; b1 crashes after a flush's PUT.
    cluster.add_broker_with(|o| lifecycle(o, "0")).await;
    let client = cluster.client().await;
    client
        .create_topic("t", 1, Some(-1), None)
        .await
        .expect("create topic");
    cluster.wait_owned("t", Duration::from_secs(20)).await;
    for i in 0..20 {
        produce_one(&client, "t", &format!("k{i}")).await.unwrap();
    }
    let crasher = |failpoint: &'static str| {
        move |o: BrokerOptions| {
            let mut o = fast_lifecycle(o);
            o.env.push(("SILT_FAILPOINT".into(), failpoint.into()));
            o
        }
    };

    // A broker killed between a flush's PUT and its commit. Topic u has one partition per
    // broker, so b1 owns one and flushes it on the first record.
    let b1 = cluster.add_broker_with(crasher("flush-after-put")).await;
    client
        .create_topic("u", 2, Some(-1), None)
        .await
        .expect("create topic");
    cluster.wait_owned("u", Duration::from_secs(20)).await;
    let owners = cluster.owners("u").await;
    let on_b1 = owners
        .iter()
        .find(|(_, b)| b == "b1")
        .map(|(p, _)| *p)
        .expect("b1 owns a partition of u");
    let mut log = client.log();
    let _ = produce_one_batch(&mut log, "u", on_b1).await;
    cluster.wait_for_abort(b1).await;
    // Its object is never committed; the controller deletes it after the grace period.
    wait_for(
        "the uncommitted flush object to be collected",
        Duration::from_secs(60),
        || {
            let cluster = &cluster;
            async move {
                cluster
                    .list_objects("segments/b1")
                    .await
                    .is_empty()
                    .then_some(())
            }
        },
    )
    .await;

    // A broker killed between compaction's PUT and its swap: b2 takes partitions over and
    // compacts them at once. Every partition holds records first, so whichever it gets has
    // something to compact.
    cluster.wait_owned("u", Duration::from_secs(30)).await;
    for partition in 0..2 {
        produce_one_batch(&mut log, "u", partition)
            .await
            .expect("produce to u after the failover");
    }
    let b2 = cluster
        .add_broker_with(crasher("compaction-after-put"))
        .await;
    cluster.wait_for_abort(b2).await;
    let catalog = cluster.catalog().await;
    assert!(
        catalog.load_parts().await.unwrap().is_empty(),
        "no swap happened"
    );
    wait_for(
        "the unswapped compacted object to be collected",
        Duration::from_secs(60),
        || {
            let cluster = &cluster;
            async move { cluster.list_objects("parts").await.is_empty().then_some(()) }
        },
    )
    .await;
    // Nothing acknowledged was lost: topic t still holds its 20 records.
    cluster.wait_owned("t", Duration::from_secs(30)).await;
    let stored = read_partition(&cluster.client().await, "t", 0).await;
    assert_eq!(stored.len(), 20);
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
}

/// Sends one record to `partition` in a raw `ProduceBatches` call.
async fn produce_one_batch(
    log: &mut silt_api::v1::log_client::LogClient<tonic::transport::Channel>,
    topic: &str,
    partition: u32,
) -> Result<(), tonic::Status> {
    log.produce_batches(silt_api::v1::ProduceBatchesRequest {
        topic: topic.into(),
        batches: vec![silt_api::v1::PartitionBatch {
            partition,
            batch: one_batch(),
        }],
    })
    .await
    .map(drop)
}

/// One Kafka record batch holding one record (a log line, not a checked value).
fn one_batch() -> Bytes {
    use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};
    let record = RecordData {
        value: Some(Bytes::from_static(b"never committed")),
        timestamp_ms: 1,
        ..RecordData::default()
    };
    encode_batch(&[record], BatchCompression::None, ProducerInfo::default()).unwrap()
}

/// A partition whose compaction fails (its flushed object is gone: a damaged store) is retried
/// every pass and reported as failed, while the partitions after it are still compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_cannot_be_compacted_does_not_stop_the_others() {
    use silt_tests::{BrokerProcess, metric_sum};
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects").join("segments");
    let list = || -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![objects.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "seg") {
                    found.push(path);
                }
            }
        }
        found.sort();
        found
    };
    let broker = BrokerProcess::start(BrokerOptions::new(dir.path()).fast_lifecycle("0")).await;
    let client = broker.client().await;
    client.create_topic("t", 2, None, None).await.unwrap();
    // Partition 0, then partition 1, each acked before the next: separate flush objects.
    let send = |partition: u32, n: usize| {
        let client = client.clone();
        async move {
            let records = (0..n)
                .map(|i| Record {
                    value: Bytes::from(format!("p{partition}-{i}")),
                    partition: Some(partition),
                    ..Record::default()
                })
                .collect();
            client
                .log()
                .produce(ProduceRequest {
                    topic: "t".into(),
                    records,
                })
                .await
                .expect("produce");
        }
    };
    send(0, 50).await;
    let first = list();
    assert!(!first.is_empty(), "partition 0 was flushed");
    send(1, 50).await;
    assert!(
        list().len() > first.len(),
        "partition 1 was flushed on its own"
    );
    broker.kill9();
    for path in &first {
        std::fs::remove_file(path).unwrap();
    }
    let broker =
        BrokerProcess::start(BrokerOptions::new(dir.path()).fast_lifecycle("256KiB")).await;
    let counted = |text: &str, outcome: &str| {
        metric_sum(text, "silt_compactions_total", &[("outcome", outcome)])
    };
    wait_for(
        "partition 1 compacted and partition 0 failing",
        Duration::from_secs(30),
        || {
            let broker = &broker;
            async move {
                let text = broker.scrape().await;
                (counted(&text, "committed") >= 1.0 && counted(&text, "failed") >= 2.0)
                    .then_some(())
            }
        },
    )
    .await;
    let client = broker.client().await;
    let stored = read_partition(&client, "t", 1).await;
    assert_eq!(stored.len(), 50);
    assert_eq!(stored.get(&49), Some(&Bytes::from("p1-49")));
}
