//! Key compaction on a real cluster (etcd + the shared object store): a topic with
//! `cleanup_policy=compact` ends up holding exactly the latest record of each key, at the
//! offset it was acknowledged at, as the model the test keeps says; tombstones stay for
//! `delete_retention_ms` and then go; every read while compaction runs agrees with what was
//! produced and never loses a key's latest record; a broker restarted from metadata alone reads
//! the same log; records without a key are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use silt_api::v1::{PartitionBatch, ProduceBatchesRequest, ProduceRequest, Record, TopicConfig};
use silt_client::{PartitionReader, StartSpec};
use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};
use silt_tests::{BrokerOptions, Cluster};

const TTL_MS: u64 = 2_000;
const KEYS: u64 = 40;

/// Key compaction as fast as a test wants it: every committed entry settled at once, runs due
/// after 300 ms, objects of 64 KiB, unreferenced objects gone after 2 s.
fn fast_lifecycle(options: BrokerOptions) -> BrokerOptions {
    lifecycle(options, "64KiB")
}

/// [`fast_lifecycle`] with objects of `target` ("0": compaction off).
fn lifecycle(options: BrokerOptions, target: &str) -> BrokerOptions {
    options.fast_lifecycle(target)
}

/// What a partition holds at an offset: the key and the value (`None`: a tombstone).
type Log = BTreeMap<i64, (Bytes, Option<Bytes>)>;

/// Everything produced, per partition, at the offsets the broker acknowledged.
#[derive(Default)]
struct Model {
    produced: Vec<Log>,
}

impl Model {
    fn new(partitions: u32) -> Self {
        Self {
            produced: vec![Log::new(); partitions as usize],
        }
    }

    /// The log key compaction converges to: each key's latest record; its tombstone too while
    /// tombstones are kept.
    fn compacted(&self, partition: u32, keep_tombstones: bool) -> Log {
        let mut latest: BTreeMap<Bytes, i64> = BTreeMap::new();
        let log = &self.produced[partition as usize];
        for (offset, (key, _)) in log {
            latest.insert(key.clone(), *offset);
        }
        latest
            .values()
            .map(|o| (*o, log[o].clone()))
            .filter(|(_, (_, value))| keep_tombstones || value.is_some())
            .collect()
    }

    /// Checks a read taken at any time: every record read is the one produced at its offset,
    /// and each key's latest record (but a tombstone, which may expire) is there.
    fn check_read(&self, partition: u32, read: &Log) {
        let produced = &self.produced[partition as usize];
        for (offset, record) in read {
            assert_eq!(
                produced.get(offset),
                Some(record),
                "partition {partition}: offset {offset} reads a record that was not produced there"
            );
        }
        for (offset, (key, value)) in self.compacted(partition, false) {
            assert!(
                read.contains_key(&offset),
                "partition {partition}: key {key:?}'s latest record at {offset} ({value:?}) is missing"
            );
        }
    }
}

/// Produces `rounds` requests of 50 records over `KEYS` keys, spread over the partitions;
/// about one record in seven is a tombstone.
async fn produce_rounds(
    client: &silt_client::Client,
    topic: &str,
    partitions: u32,
    model: &mut Model,
    seed: u64,
    rounds: u64,
) {
    let mut log = client.log();
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    for round in 0..rounds {
        let mut records = Vec::new();
        for i in 0..50u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (x >> 33) % KEYS;
            let tombstone = (x >> 20).is_multiple_of(7);
            let value = format!(
                "{k}@{seed}.{round}.{i}:{}",
                "x".repeat(((x >> 40) % 200) as usize)
            );
            records.push(Record {
                key: Some(Bytes::from(format!("key-{k}"))),
                value: if tombstone {
                    Bytes::new()
                } else {
                    Bytes::from(value)
                },
                null_value: tombstone,
                partition: Some((k % u64::from(partitions)) as u32),
                ..Record::default()
            });
        }
        let response = log
            .produce(ProduceRequest {
                topic: topic.into(),
                records: records.clone(),
            })
            .await
            .expect("produce")
            .into_inner();
        for (record, result) in records.into_iter().zip(response.results) {
            let Some(silt_api::v1::record_result::Outcome::Ack(ack)) = result.outcome else {
                panic!("a record was refused: {result:?}");
            };
            let value = (!record.null_value).then_some(record.value);
            model.produced[ack.partition as usize]
                .insert(ack.offset, (record.key.expect("keyed"), value));
        }
    }
}

/// Every record of a partition from its log start to its high watermark.
async fn read_log(client: &silt_client::Client, topic: &str, partition: u32) -> Log {
    let mut reader = PartitionReader::new(client, topic, partition, StartSpec::Earliest)
        .await
        .expect("reader");
    let end = reader.high_watermark();
    let mut out = Log::new();
    while reader.next_offset() < end {
        for r in reader
            .next_batch(Duration::from_millis(100))
            .await
            .expect("fetch")
        {
            if r.offset < end {
                out.insert(
                    r.offset,
                    (r.key.expect("compacted records have keys"), r.value),
                );
            }
        }
    }
    out
}

/// Waits until every partition reads as the model's compacted log, checking each read on the
/// way.
async fn wait_compacted(
    client: &silt_client::Client,
    topic: &str,
    partitions: u32,
    model: &Model,
    keep_tombstones: bool,
) {
    for p in 0..partitions {
        let want = model.compacted(p, keep_tombstones);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let read = read_log(client, topic, p).await;
            model.check_read(p, &read);
            if read == want {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{topic}/{p}: not compacted to the model in time: read {} records, want {} ({} produced)",
                read.len(),
                want.len(),
                model.produced[p as usize].len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One fast-compacting broker and a compacted topic "kv" of one partition it owns (`None`:
/// the cluster's tools are missing, as [`Cluster::start`] says).
async fn one_compacted_partition(
    name: &str,
    delete_retention_ms: i64,
) -> Option<(Cluster, silt_client::Client)> {
    let mut cluster = Cluster::start(name, TTL_MS, 10).await?;
    cluster.add_broker_with(fast_lifecycle).await;
    let client = cluster.client().await;
    client
        .create_topic_with("kv", 1, compacted_config(delete_retention_ms))
        .await
        .expect("create kv");
    cluster.wait_owned("kv", Duration::from_secs(20)).await;
    Some((cluster, client))
}

fn compacted_config(delete_retention_ms: i64) -> TopicConfig {
    TopicConfig {
        retention_ms: Some(-1),
        cleanup_policy: Some("compact".into()),
        delete_retention_ms: Some(delete_retention_ms),
        ..TopicConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_compaction_keeps_the_latest_record_per_key_at_its_offset() {
    let Some(mut cluster) = Cluster::start("key-compaction", TTL_MS, 10).await else {
        return;
    };
    cluster.add_broker_with(fast_lifecycle).await;
    cluster.add_broker_with(fast_lifecycle).await;
    let client = cluster.client().await;
    let partitions = 2;
    // Tombstones kept (a day) in one topic, dropped at once in the other.
    client
        .create_topic_with("kv", partitions, compacted_config(86_400_000))
        .await
        .expect("create kv");
    client
        .create_topic_with("kv-expiring", partitions, compacted_config(0))
        .await
        .expect("create kv-expiring");
    cluster.wait_owned("kv", Duration::from_secs(20)).await;
    cluster
        .wait_owned("kv-expiring", Duration::from_secs(20))
        .await;

    let mut kept = Model::new(partitions);
    let mut expiring = Model::new(partitions);
    produce_rounds(&client, "kv", partitions, &mut kept, 1, 40).await;
    produce_rounds(&client, "kv-expiring", partitions, &mut expiring, 2, 40).await;
    wait_compacted(&client, "kv", partitions, &kept, true).await;
    wait_compacted(&client, "kv-expiring", partitions, &expiring, false).await;

    // More writes over the compacted log: the next runs fold them in.
    produce_rounds(&client, "kv", partitions, &mut kept, 3, 20).await;
    produce_rounds(&client, "kv-expiring", partitions, &mut expiring, 4, 20).await;
    wait_compacted(&client, "kv", partitions, &kept, true).await;
    wait_compacted(&client, "kv-expiring", partitions, &expiring, false).await;

    // A broker restarted from metadata alone (empty cache) reads the same compacted logs.
    for slot in 0..cluster.len() {
        assert!(cluster.terminate(slot).success());
    }
    for slot in 0..cluster.len() {
        cluster.restart(slot).await;
    }
    cluster.wait_owned("kv", Duration::from_secs(30)).await;
    let client = cluster.client().await;
    for p in 0..partitions {
        assert_eq!(read_log(&client, "kv", p).await, kept.compacted(p, true));
        assert_eq!(
            read_log(&client, "kv-expiring", p).await,
            expiring.compacted(p, false)
        );
    }
    // Compaction shrank the logs: far fewer records than were produced.
    let produced: usize = kept.produced.iter().map(BTreeMap::len).sum();
    let left: usize = (0..partitions).map(|p| kept.compacted(p, true).len()).sum();
    assert!(
        left <= KEYS as usize && produced >= 3_000,
        "{left} of {produced}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compacted_topics_refuse_records_without_a_key() {
    let Some((_cluster, client)) = one_compacted_partition("key-compaction-null-keys", 1_000).await
    else {
        return;
    };
    let mut log = client.log();
    // Record by record: the keyless one alone is refused, the keyed one stored.
    let response = log
        .produce(ProduceRequest {
            topic: "kv".into(),
            records: vec![
                Record {
                    value: Bytes::from_static(b"no key"),
                    ..Record::default()
                },
                Record {
                    key: Some(Bytes::from_static(b"k")),
                    value: Bytes::from_static(b"v"),
                    ..Record::default()
                },
            ],
        })
        .await
        .expect("produce")
        .into_inner();
    let Some(silt_api::v1::record_result::Outcome::Error(e)) = &response.results[0].outcome else {
        panic!("a keyless record was accepted: {:?}", response.results[0]);
    };
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
    assert!(e.message.contains("needs a key"), "{}", e.message);
    assert!(matches!(
        response.results[1].outcome,
        Some(silt_api::v1::record_result::Outcome::Ack(_))
    ));
    // A client-built batch with a keyless record is refused whole.
    let records = vec![
        RecordData {
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            ..RecordData::default()
        },
        RecordData {
            value: Some(Bytes::from_static(b"v")),
            ..RecordData::default()
        },
    ];
    let batch = encode_batch(&records, BatchCompression::None, ProducerInfo::default()).unwrap();
    let status = log
        .produce_batches(ProduceBatchesRequest {
            topic: "kv".into(),
            batches: vec![PartitionBatch {
                partition: 0,
                batch,
            }],
        })
        .await
        .expect_err("a batch with a keyless record is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("needs a key"),
        "{}",
        status.message()
    );
    // Nothing of it was stored: the partition holds the one keyed record.
    assert_eq!(read_log(&client, "kv", 0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_map_smaller_than_the_keys_compacts_a_stretch_at_a_time() {
    let Some(mut cluster) = Cluster::start("key-compaction-small-map", TTL_MS, 10).await else {
        return;
    };
    // Room for about 15 of the 40 keys per run.
    cluster
        .add_broker_with(|o| fast_lifecycle(o).arg("--key-compaction-map-bytes", 800))
        .await;
    let client = cluster.client().await;
    client
        .create_topic_with("kv", 1, compacted_config(86_400_000))
        .await
        .expect("create kv");
    cluster.wait_owned("kv", Duration::from_secs(20)).await;
    let mut model = Model::new(1);
    produce_rounds(&client, "kv", 1, &mut model, 5, 30).await;
    wait_compacted(&client, "kv", 1, &model, true).await;
    // The broker counts what it removed: at least every record that is gone.
    let removed = silt_tests::metric_sum(
        &cluster.broker(0).scrape().await,
        "silt_key_compaction_records_removed_total",
        &[],
    ) as u64;
    let gone = (model.produced[0].len() - model.compacted(0, true).len()) as u64;
    assert!(removed >= gone, "{removed} removed, {gone} gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_compaction_killed_between_put_and_swap_leaves_an_orphan_and_loses_nothing() {
    let Some(mut cluster) = Cluster::start("key-compaction-crash", TTL_MS, 10).await else {
        return;
    };
    // b0 compacts nothing; it holds the topic while the history is written.
    cluster.add_broker_with(|o| lifecycle(o, "0")).await;
    let client = cluster.client().await;
    client
        .create_topic_with("kv", 2, compacted_config(0))
        .await
        .expect("create kv");
    cluster.wait_owned("kv", Duration::from_secs(20)).await;
    let mut model = Model::new(2);
    produce_rounds(&client, "kv", 2, &mut model, 6, 10).await;

    // b1 takes a partition over and dies right after its first key-compacted object's PUT.
    let b1 = cluster
        .add_broker_with(|o| {
            let mut o = fast_lifecycle(o);
            o.env
                .push(("SILT_FAILPOINT".into(), "compaction-after-put".into()));
            o
        })
        .await;
    cluster.wait_for_abort(b1).await;
    let catalog = cluster.catalog().await;
    assert!(
        catalog.load_parts().await.unwrap().is_empty(),
        "no swap happened"
    );
    // Its object is collected; the log reads as produced, nothing compacted.
    silt_tests::wait_for(
        "the unswapped object to be collected",
        Duration::from_secs(60),
        || {
            let cluster = &cluster;
            async move { cluster.list_objects("parts").await.is_empty().then_some(()) }
        },
    )
    .await;
    cluster.wait_owned("kv", Duration::from_secs(30)).await;
    for p in 0..2 {
        let read = read_log(&client, "kv", p).await;
        assert_eq!(read, model.produced[p as usize], "partition {p}");
    }

    // A healthy broker takes both partitions over (b0 stops) and compacts them to the model.
    cluster.add_broker_with(fast_lifecycle).await;
    assert!(cluster.terminate(0).success());
    cluster.wait_owned("kv", Duration::from_secs(30)).await;
    let client = cluster.client().await;
    wait_compacted(&client, "kv", 2, &model, false).await;
}

/// KIP-534: a tombstone stays `delete_retention_ms` after the compaction that first kept it,
/// however old its own timestamp, so a consumer that read the old value sees the delete. (With
/// expiry counted from the record's timestamp, a backfilled tombstone went in the very run that
/// dropped the value it deletes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfilled_tombstone_stays_for_the_delete_retention() {
    let Some((_cluster, client)) =
        one_compacted_partition("key-compaction-backfill", 86_400_000).await
    else {
        return;
    };
    let record =
        |key: &'static [u8], value: Option<&'static [u8]>, timestamp_ms: Option<i64>| Record {
            key: Some(Bytes::from_static(key)),
            value: Bytes::from_static(value.unwrap_or_default()),
            null_value: value.is_none(),
            timestamp_ms,
            partition: Some(0),
            ..Record::default()
        };
    let mut log = client.log();
    for records in [
        vec![
            record(b"k", Some(b"v"), None),
            record(b"other", Some(b"1"), None),
        ],
        // A day and more old: its own timestamp is long past the delete retention.
        vec![record(b"k", None, Some(1_000))],
        vec![record(b"other", Some(b"2"), None)],
    ] {
        let response = log
            .produce(ProduceRequest {
                topic: "kv".into(),
                records,
            })
            .await
            .expect("produce")
            .into_inner();
        assert!(response.results.iter().all(|r| matches!(
            r.outcome,
            Some(silt_api::v1::record_result::Outcome::Ack(_))
        )));
    }
    // Compaction drops the superseded records (offsets 0 and 1) and keeps the tombstone. (A
    // first run may cover only the first writes: offset 0 then goes before offset 1 does.)
    let want: Log = [
        (2, (Bytes::from_static(b"k"), None)),
        (
            3,
            (Bytes::from_static(b"other"), Some(Bytes::from_static(b"2"))),
        ),
    ]
    .into_iter()
    .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let read = read_log(&client, "kv", 0).await;
        if !read.contains_key(&0) && !read.contains_key(&1) {
            assert_eq!(
                read, want,
                "the backfilled tombstone went with the value it deletes"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never compacted: {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Later runs (new writes make them due) keep it too: its horizon is a day away.
    log.produce(ProduceRequest {
        topic: "kv".into(),
        records: vec![record(b"other", Some(b"3"), None)],
    })
    .await
    .expect("produce");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let read = read_log(&client, "kv", 0).await;
        if !read.contains_key(&3) {
            assert_eq!(read.get(&2), Some(&(Bytes::from_static(b"k"), None)));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never compacted again: {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
