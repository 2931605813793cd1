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
    // Index pages of one compacted object each: entries roll out of metadata as they go.
    for _ in 0..3 {
        cluster
            .add_broker_with(|o| fast_lifecycle(o).arg("--index-page-parts", 1))
            .await;
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
            let referenced = state.referenced(&cluster).await?;
            if state.segments.is_empty() && state.objects == referenced {
                return Ok(state);
            }
            Err(format!("{state}, referenced {referenced:?}"))
        },
    )
    .await;
    let (segments, parts) = (state.segments, state.parts);
    let pages: usize = state.roots.iter().map(|(_, r)| r.pages.len()).sum();
    let report = checker.verify(&cluster.client().await, topic).await;
    let bytes: u64 = parts.iter().map(|(_, c)| c.object_len).sum();
    eprintln!(
        "compaction: acked {}, read {}, lost {}, duplicated {}, reordered {}, gaps {}; {} segment keys, {} compacted keys holding {bytes} bytes, {pages} index pages",
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
                && state.roots.is_empty()
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

/// What the data lifecycle left: commit keys, index roots, log starts, and objects in the store.
struct Lifecycle {
    segments: Vec<(String, silt_metadata::codec::SegmentCommit)>,
    parts: Vec<(String, silt_metadata::codec::SegmentCommit)>,
    roots: Vec<((u64, u32), silt_metadata::codec::IndexRoot)>,
    log_starts: Vec<(u64, Vec<i64>)>,
    /// Object paths under `segments/`, `parts/` and `index/`, sorted.
    objects: Vec<String>,
}

impl Lifecycle {
    async fn read(
        catalog: &silt_metadata::catalog::Catalog,
        cluster: &Cluster,
    ) -> Result<Self, String> {
        let mut objects = cluster.list_objects("segments").await;
        objects.extend(cluster.list_objects("parts").await);
        objects.extend(cluster.list_objects("index").await);
        objects.sort();
        Ok(Self {
            segments: catalog.load_segments().await.map_err(|e| e.to_string())?,
            parts: catalog.load_parts().await.map_err(|e| e.to_string())?,
            roots: catalog
                .load_index_roots()
                .await
                .map_err(|e| e.to_string())?,
            log_starts: catalog.load_log_starts().await.map_err(|e| e.to_string())?,
            objects,
        })
    }

    /// Every object a commit or an index root references (through its archives and pages),
    /// sorted and without duplicates: what garbage collection must keep. Pages and archives
    /// wholly below their log start reference only themselves.
    async fn referenced(&self, cluster: &Cluster) -> Result<Vec<String>, String> {
        let mut out: Vec<String> = self.parts.iter().map(|(_, c)| c.object.clone()).collect();
        out.extend(self.segments.iter().map(|(_, c)| c.object.clone()));
        for ((topic_id, partition), root) in &self.roots {
            let log_start = self
                .log_starts
                .iter()
                .find(|(id, _)| id == topic_id)
                .map_or(0, |(_, starts)| starts[*partition as usize]);
            let mut refs = root.pages.clone();
            while let Some(r) = refs.pop() {
                out.push(r.object.clone());
                if r.last_offset < log_start {
                    continue;
                }
                let bytes = read_object(cluster, &r.object).await?;
                if r.level > 0 {
                    let archive = silt_metadata::codec::decode_index_archive(&r.object, &bytes)
                        .map_err(|e| e.to_string())?;
                    refs.extend(archive.refs);
                    continue;
                }
                let decoded = silt_metadata::codec::decode_index_page(&r.object, &bytes)
                    .map_err(|e| e.to_string())?;
                out.extend(decoded.parts.into_iter().map(|(_, c)| c.object));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The index pages of the first root, oldest first, read through its archives.
    async fn pages(&self, cluster: &Cluster) -> Result<Vec<silt_metadata::codec::PageRef>, String> {
        let mut pages = Vec::new();
        let Some((_, root)) = self.roots.first() else {
            return Ok(pages);
        };
        let mut refs: Vec<_> = root.pages.iter().rev().cloned().collect();
        while let Some(r) = refs.pop() {
            if r.level == 0 {
                pages.push(r);
                continue;
            }
            let bytes = read_object(cluster, &r.object).await?;
            let archive = silt_metadata::codec::decode_index_archive(&r.object, &bytes)
                .map_err(|e| e.to_string())?;
            if archive.refs.iter().any(|c| c.level + 1 != r.level) {
                return Err(format!(
                    "archive {} holds references of another level",
                    r.object
                ));
            }
            refs.extend(archive.refs.into_iter().rev());
        }
        Ok(pages)
    }
}

/// An object of the cluster's store, whole.
async fn read_object(cluster: &Cluster, path: &str) -> Result<Bytes, String> {
    use object_store::ObjectStoreExt;
    let store = cluster.object_store();
    match store.get(&object_store::path::Path::from(path)).await {
        Ok(got) => got.bytes().await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("{path} unreadable: {e}")),
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
    // What a crash in the middle of a PUT to a local directory leaves: the staged file, listed
    // like any object.
    leave_staged_file(&cluster, "segments/b1/0-0-1.seg.1.partial").await;
    // Its object is never committed; the controller deletes it after the grace period, and
    // the staged file with it.
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
    leave_staged_file(&cluster, "parts/1/0/0-0-b2-1-0.seg.1.partial").await;
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

/// Puts `path` in the shared store, as a write killed before its rename leaves it, and checks
/// the cluster's listings see it.
async fn leave_staged_file(cluster: &Cluster, path: &str) {
    use object_store::ObjectStoreExt;
    let store = cluster.object_store();
    let location = object_store::path::Path::from(path);
    store
        .put(
            &location,
            object_store::PutPayload::from_static(b"half an object"),
        )
        .await
        .unwrap();
    let prefix = path.rsplit_once('/').unwrap().0;
    assert!(
        cluster.list_objects(prefix).await.iter().any(|p| p == path),
        "{path} is listed"
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

/// Index pages: a partition's compacted entries roll out of metadata into index pages, so its
/// keys stay bounded however much it holds; a broker started cold (empty caches, nothing in
/// memory) reads every record back through them, finds offsets by timestamp in them, and
/// retention and topic deletion collect pages and their objects like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_entries_roll_into_index_pages_that_a_cold_broker_pages_in() {
    index_pages("index-pages", None).await;
}

/// The same with an index root of 4 references, archiving 2 at a time: the oldest pages move
/// into archives (and archives into archives), the root stays bounded, and
/// the cold broker's reads, lookups by time, garbage collection, retention, unrolling and
/// topic deletion go through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn index_roots_stay_bounded_by_archiving_their_oldest_pages() {
    index_pages("index-archives", Some((4, 2))).await;
}

/// `archives`: the paging brokers' `(--index-root-pages, --index-archive-pages)`.
async fn index_pages(name: &str, archives: Option<(usize, usize)>) {
    let Some(mut cluster) = Cluster::start(name, TTL_MS, 10).await else {
        return;
    };
    const PAGE_PARTS: usize = 2;
    let paging = move |o: BrokerOptions| {
        let o = lifecycle(o, "64KiB").arg("--index-page-parts", PAGE_PARTS);
        match archives {
            Some((root, archive)) => o
                .arg("--index-root-pages", root)
                .arg("--index-archive-pages", archive),
            None => o,
        }
    };
    // b0 writes and compacts, rolling nothing up.
    cluster
        .add_broker_with(|o| lifecycle(o, "64KiB").arg("--index-page-parts", 0))
        .await;
    let topic = "paged";
    let client = cluster.client().await;
    client
        .create_topic(topic, 1, Some(-1), None)
        .await
        .expect("create topic");
    cluster.wait_owned(topic, Duration::from_secs(20)).await;
    let catalog = cluster.catalog().await;

    // 120 requests of 24 records of 1 KiB: about 45 compacted objects of 64 KiB. Request i's
    // records carry timestamp BASE + i s, so an offset can be looked up by time exactly.
    const BASE: i64 = 1_700_000_000_000;
    let checker = Checker::new();
    let mut log = client.log();
    let mut request_starts = Vec::new();
    for i in 0..120u64 {
        let records: Vec<Record> = (0..24u64)
            .map(|j| Record {
                value: Bytes::from(silt_tests::event_value(i * 24 + j, 1024)),
                timestamp_ms: Some(BASE + i as i64 * 1_000),
                partition: Some(0),
                ..Record::default()
            })
            .collect();
        let values: Vec<Bytes> = records.iter().map(|r| r.value.clone()).collect();
        let acks = log
            .produce(ProduceRequest {
                topic: topic.into(),
                records,
            })
            .await
            .expect("produce")
            .into_inner();
        for (j, (result, value)) in acks.results.iter().zip(values).enumerate() {
            let Some(silt_api::v1::record_result::Outcome::Ack(ack)) = &result.outcome else {
                panic!("record refused: {result:?}");
            };
            if j == 0 {
                request_starts.push(ack.offset);
            }
            checker.acked(0, ack.offset, i * 24 + j as u64, value);
        }
    }

    wait_for_state("compaction", Duration::from_secs(60), || async {
        let state = Lifecycle::read(&catalog, &cluster).await?;
        if state.segments.is_empty() && state.parts.len() >= 30 {
            return Ok(());
        }
        Err(state.to_string())
    })
    .await;

    // b1 takes the partition over and dies between its first page's PUT and the root's swap:
    // the page is stored, nothing in metadata changed.
    cluster.terminate(0);
    let b1 = cluster
        .add_broker_with(move |o| {
            let mut o = paging(o);
            o.env
                .push(("SILT_FAILPOINT".into(), "rollup-after-put".into()));
            o
        })
        .await;
    cluster.wait_for_abort(b1).await;
    let crashed = Lifecycle::read(&catalog, &cluster).await.unwrap();
    assert!(crashed.roots.is_empty(), "no root was swapped in");
    assert!(crashed.parts.len() >= 30, "no commit was forgotten");
    assert_eq!(
        cluster.list_objects("index").await.len(),
        1,
        "one page stored"
    );

    // b2 takes over and rolls up. Compaction and roll-up settle: flush segments gone, most
    // entries in pages, and the partition's commit keys bounded by the page size (twice it,
    // plus small objects still merging), not by what it holds; the crashed page is collected.
    let b2 = cluster.add_broker_with(paging).await;
    cluster.wait_owned(topic, Duration::from_secs(30)).await;
    let state = wait_for_state(
        "entries to roll into index pages",
        Duration::from_secs(90),
        || async {
            let state = Lifecycle::read(&catalog, &cluster).await?;
            let pages = state.pages(&cluster).await?.len();
            if state.segments.is_empty() && pages >= 15 && state.parts.len() <= 2 * PAGE_PARTS + 2 {
                return Ok(state);
            }
            Err(format!("{} pages; {state}", pages))
        },
    )
    .await;
    let root = &state.roots[0].1;
    let pages = state.pages(&cluster).await.unwrap();
    for refs in [&root.pages, &pages] {
        for pair in refs.windows(2) {
            assert_eq!(
                pair[1].first_offset,
                pair[0].last_offset + 1,
                "pages and archives are contiguous"
            );
        }
        assert_eq!(refs[0].first_offset, 0);
    }
    let levels: Vec<u8> = root.pages.iter().map(|p| p.level).collect();
    assert!(
        levels.windows(2).all(|l| l[0] >= l[1]),
        "older references are archived deeper: {levels:?}"
    );
    if let Some((root_pages, fanout)) = archives {
        // The bound of the archiving rule (see `archive_range`): the threshold, unless there
        // are more levels than it holds groups of `fanout - 1`.
        let bound = root_pages.max((fanout - 1) * (usize::from(levels[0]) + 1) + 1);
        assert!(
            root.pages.len() <= bound,
            "the root holds at most {bound} references: {levels:?}"
        );
        assert!(levels[0] >= 2, "archives of archives: {levels:?}");
    } else {
        assert_eq!(root.pages.len(), pages.len());
    }
    eprintln!(
        "index pages: {} pages, root references at levels {levels:?}, {} compacted keys, {} objects",
        pages.len(),
        state.parts.len(),
        state.objects.len()
    );

    // A cold broker: kill -9 and start again, so nothing is cached and the index holds only
    // the tail. Every record reads back once, in order, at its offset, through the pages.
    cluster.kill9(b2);
    cluster.restart(b2).await;
    cluster.wait_owned(topic, Duration::from_secs(30)).await;
    let reader = cluster.client().await;
    checker.verify(&reader, topic).await.assert_clean();
    // Offsets by timestamp, in pages and in the tail.
    for i in [0usize, 7, 60, 119] {
        let found = silt_client::list_offsets(
            &reader,
            topic,
            0,
            silt_client::StartSpec::Timestamp(BASE + i as i64 * 1_000),
        )
        .await
        .expect("list offsets by time");
        assert_eq!(found.offset, request_starts[i], "timestamp of request {i}");
        assert_eq!(found.timestamp_ms, BASE + i as i64 * 1_000);
    }
    // Garbage collection keeps exactly what commits and pages reference: the page of the
    // crashed roll-up is gone.
    wait_for_state(
        "objects to be exactly the referenced ones",
        Duration::from_secs(60),
        || async {
            let state = Lifecycle::read(&catalog, &cluster).await?;
            let referenced = state.referenced(&cluster).await?;
            if state.objects == referenced {
                return Ok(());
            }
            Err(format!("{state}; referenced {referenced:?}"))
        },
    )
    .await;

    // Retention by size moves the log start past whole pages; the owner drops them from the
    // root and garbage collection their objects.
    let held: u64 = root.pages.iter().map(|p| p.bytes).sum();
    reader
        .alter_topic(topic, None, Some((held / 2) as i64))
        .await
        .expect("alter retention");
    let trimmed = wait_for_state(
        "retention to drop pages",
        Duration::from_secs(60),
        || async {
            let state = Lifecycle::read(&catalog, &cluster).await?;
            let start = state.log_starts.first().map_or(0, |(_, s)| s[0]);
            let root = &state.roots.first().ok_or("no root")?.1;
            let first = root.pages.first().map_or(i64::MAX, |p| p.first_offset);
            let referenced = state.referenced(&cluster).await?;
            let trimmed = root.pages.iter().all(|p| p.last_offset >= start);
            if start > 0 && trimmed && state.objects == referenced {
                return Ok((start, first));
            }
            Err(format!("log start {start}, first page at {first}; {state}"))
        },
    )
    .await;
    let (start, first_page) = trimmed;
    assert!(
        pages.iter().any(|p| p.first_offset == start),
        "the log start {start} is a page boundary"
    );
    assert!(first_page <= start);
    let kept = read_partition(&reader, topic, 0).await;
    assert_eq!(kept.keys().next().copied(), Some(start));
    assert_eq!(kept.len() as i64, 120 * 24 - start);

    // Turned key-compacted, the partition gets its pages' commits back in metadata (key
    // compaction rewrites the log from its start), then is key-compacted: every record stays
    // (none has a key), at its offset.
    reader
        .alter_topic_with(silt_api::v1::AlterTopicRequest {
            name: topic.into(),
            cleanup_policy: Some("compact".into()),
            ..Default::default()
        })
        .await
        .expect("alter the cleanup policy");
    wait_for_state(
        "pages to be unrolled and the log key-compacted",
        Duration::from_secs(60),
        || async {
            let state = Lifecycle::read(&catalog, &cluster).await?;
            let pages: usize = state.roots.iter().map(|(_, r)| r.pages.len()).sum();
            let cleaned = state.parts.iter().all(|(id, _)| id.contains(".k"));
            if pages == 0 && !state.parts.is_empty() && cleaned {
                return Ok(());
            }
            Err(format!("{pages} pages; {state}"))
        },
    )
    .await;
    assert_eq!(read_partition(&reader, topic, 0).await, kept);

    // Deleting the topic removes its root, pages and objects.
    reader.delete_topic(topic).await.expect("delete topic");
    wait_for_state(
        "the deleted topic's root, pages and objects to go",
        Duration::from_secs(60),
        || async {
            let state = Lifecycle::read(&catalog, &cluster).await?;
            if state.roots.is_empty() && state.parts.is_empty() && state.objects.is_empty() {
                Ok(())
            } else {
                Err(state.to_string())
            }
        },
    )
    .await;
}

/// A partition whose index root a broker cannot read (damaged, or written in a format it does
/// not know) is neither written nor read by it — continuing from a high watermark that lacks
/// the root's offsets would hand them out again — with UNAVAILABLE saying why, while the
/// topic's other partitions are served; a readable root written later serves it again. A
/// compacted commit that does not decode blocks its partition the same way, whether the watch
/// or the start-up load finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_index_cannot_be_decoded_is_not_served_until_it_can() {
    let Some(mut cluster) = Cluster::start("unreadable-root", TTL_MS, 10).await else {
        return;
    };
    cluster.add_broker().await;
    let topic = "damaged";
    let client = cluster.client().await;
    client
        .create_topic(topic, 2, None, None)
        .await
        .expect("create topic");
    cluster.wait_owned(topic, Duration::from_secs(20)).await;
    let mut log = client.log();
    produce_one_batch(&mut log, topic, 0)
        .await
        .expect("produce");
    let catalog = cluster.catalog().await;
    let id = catalog.get_topic(topic).await.unwrap().unwrap().id;
    let root = catalog.keys().index_root(id, 0);

    catalog
        .store()
        .put(&root, b"\x07 from a newer broker")
        .await
        .unwrap();
    let refused = wait_for_state(
        "the damaged partition to be refused",
        Duration::from_secs(20),
        || async {
            match produce_one_batch(&mut client.log(), topic, 0).await {
                Err(status) => Ok(status),
                Ok(()) => Err("still written".to_string()),
            }
        },
    )
    .await;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("could not read its index"),
        "{}",
        refused.message()
    );
    let read = silt_client::list_offsets(&client, topic, 0, silt_client::StartSpec::Earliest)
        .await
        .unwrap_err();
    assert!(
        read.to_string().contains("could not read its index"),
        "{read}"
    );
    // The other partition is served.
    produce_one_batch(&mut log, topic, 1)
        .await
        .expect("the other partition is written");

    // A readable root (no pages): served again, continuing after what was written.
    catalog
        .store()
        .put(
            &root,
            &silt_metadata::codec::encode_index_root(&Default::default()),
        )
        .await
        .unwrap();
    written_to(&client, topic, "the partition to be served again").await;
    let stored = read_partition(&client, topic, 0).await;
    assert_eq!(stored.keys().copied().collect::<Vec<_>>(), [0, 1]);

    // A compacted commit that does not decode does the same, seen by the watch and, after a
    // restart, by the load; gone, the partition is served again from the next load.
    let part = catalog
        .keys()
        .part(&silt_metadata::keys::Keys::part_id(id, 0, 100, 199));
    catalog.store().put(&part, b"\x07 garbage").await.unwrap();
    refused_as_unreadable(
        &client,
        topic,
        "a damaged compacted commit seen by the watch",
    )
    .await;
    let client = killed_and_restarted(&mut cluster, topic).await;
    refused_as_unreadable(
        &client,
        topic,
        "a damaged compacted commit seen by the load",
    )
    .await;
    catalog.store().delete(&part).await.unwrap();
    let client = killed_and_restarted(&mut cluster, topic).await;
    written_to(
        &client,
        topic,
        "the partition to be served after the damaged commit went",
    )
    .await;
}

/// Kills broker 0 with SIGKILL, starts it again, and returns a client once `topic` is owned.
async fn killed_and_restarted(cluster: &mut Cluster, topic: &str) -> silt_client::Client {
    cluster.kill9(0);
    cluster.restart(0).await;
    cluster.wait_owned(topic, Duration::from_secs(30)).await;
    cluster.client().await
}

/// Waits until producing to partition 0 of `topic` succeeds.
async fn written_to(client: &silt_client::Client, topic: &str, what: &str) {
    wait_for_state(what, Duration::from_secs(30), || async {
        produce_one_batch(&mut client.log(), topic, 0)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
}

/// Waits until producing to partition 0 of `topic` is refused as unreadable.
async fn refused_as_unreadable(client: &silt_client::Client, topic: &str, what: &str) {
    wait_for_state(what, Duration::from_secs(30), || async {
        match produce_one_batch(&mut client.log(), topic, 0).await {
            Err(status) if status.message().contains("could not read its index") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
