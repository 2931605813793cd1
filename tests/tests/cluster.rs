//! Membership: brokers register in etcd under a lease; a killed broker leaves one TTL later, a
//! stopped one at once; `silt cluster status` lists the live ones. Routing: a plain client of
//! one broker reaches every partition's owner through one forwarding hop.

use std::time::{Duration, Instant};

use silt_tests::{BrokerOptions, BrokerProcess, EtcdProcess, run_cli, wait_for};

fn options(etcd: &EtcdProcess, dir: &std::path::Path, id: &str) -> BrokerOptions {
    BrokerOptions::new(dir)
        .arg("--metadata", etcd.url())
        .arg("--cluster", "members")
        .arg("--broker-id", id)
        .arg("--lease-ttl-ms", 2_000)
}

async fn live(broker: &BrokerProcess) -> Vec<String> {
    let client = broker.client().await;
    let mut ids: Vec<String> = client
        .cluster_status()
        .await
        .unwrap()
        .brokers
        .into_iter()
        .map(|b| b.broker_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_join_and_leave_through_their_leases() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let b1 = BrokerProcess::start(options(&etcd, d1.path(), "b1")).await;
    let b2 = BrokerProcess::start(options(&etcd, d2.path(), "b2")).await;
    let b3 = BrokerProcess::start(options(&etcd, d3.path(), "b3")).await;
    assert_eq!(live(&b2).await, ["b1", "b2", "b3"]);
    let status = run_cli(&b1.url(), &["cluster", "status"]);
    assert!(status.success, "{}", status.stderr);
    assert!(
        status.stdout.contains(&b3.addr().to_string()),
        "{}",
        status.stdout
    );

    // kill -9: the registration goes when the lease expires (TTL 2 s), not before.
    let killed_at = Instant::now();
    b3.kill9();
    wait_for(
        "b3 to leave after its lease",
        Duration::from_secs(15),
        || {
            let b1 = &b1;
            async move { (live(b1).await == ["b1", "b2"]).then_some(()) }
        },
    )
    .await;
    let gone_after = killed_at.elapsed();
    assert!(
        gone_after <= Duration::from_secs(2 + 3),
        "left {gone_after:?} after kill -9"
    );

    // SIGTERM: it leaves at once — its key is gone as soon as the process has exited, without
    // the TTL having to run out.
    let (status, _) = b2.terminate(Duration::from_secs(30));
    assert!(status.success());
    assert_eq!(
        live(&b1).await,
        ["b1"],
        "a stopped broker revokes its lease on the way out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_of_one_broker_reaches_every_owner_through_one_hop() {
    use silt_api::v1::{PartitionBatch, ProduceBatchesRequest, ProduceRequest, Record};
    use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};
    use silt_tests::{Cluster, read_partition};

    let Some(mut cluster) = Cluster::start("hop", 2_000, 20).await else {
        return;
    };
    for _ in 0..3 {
        cluster.add_broker().await;
    }
    // One broker's address only, as behind a Kubernetes Service.
    let front = silt_client::Client::connect(&cluster.broker(0).url())
        .await
        .unwrap();
    front.create_topic("hop", 6, Some(-1), None).await.unwrap();
    cluster.wait_owned("hop", Duration::from_secs(20)).await;
    let owners = cluster.owners("hop").await;
    assert!(
        owners.iter().any(|(_, b)| b != "b0"),
        "b0 owns everything: {owners:?}"
    );

    // One ProduceBatches over all six partitions: split by owner, stored whole.
    let batch = |v: &str| {
        let record = RecordData {
            value: Some(bytes::Bytes::from(v.to_string())),
            timestamp_ms: 1,
            ..RecordData::default()
        };
        encode_batch(&[record], BatchCompression::None, ProducerInfo::default()).unwrap()
    };
    let mut log = front.log();
    let acks = log
        .produce_batches(ProduceBatchesRequest {
            topic: "hop".into(),
            batches: (0..6)
                .map(|p| PartitionBatch {
                    partition: p,
                    batch: batch(&format!("batch-{p}")),
                })
                .collect(),
        })
        .await
        .expect("a non-owner forwards")
        .into_inner()
        .acks;
    assert_eq!(acks.len(), 6);
    for (p, ack) in acks.iter().enumerate() {
        assert_eq!(ack.partition, p as u32);
    }

    // Per-record produce with keys: routed by murmur2, forwarded, acknowledged per record.
    let results = log
        .produce(ProduceRequest {
            topic: "hop".into(),
            records: (0..30)
                .map(|i| Record {
                    key: Some(format!("key-{i}").into_bytes().into()),
                    value: format!("record-{i}").into_bytes().into(),
                    ..Record::default()
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(
        results.iter().all(|r| matches!(
            r.outcome,
            Some(silt_api::v1::record_result::Outcome::Ack(_))
        )),
        "{results:?}"
    );

    // Any broker serves the reads.
    for slot in 0..3 {
        let reader = cluster.broker(slot).client().await;
        let mut total = 0;
        for p in 0..6 {
            total += read_partition(&reader, "hop", p).await.len();
        }
        assert_eq!(total, 36, "b{slot} serves every partition");
    }

    // A forwarded request is never forwarded again: the non-owner names the owner instead.
    let (partition, owner) = owners.iter().find(|(_, b)| b != "b0").unwrap().clone();
    let mut request = tonic::Request::new(ProduceBatchesRequest {
        topic: "hop".into(),
        batches: vec![PartitionBatch {
            partition,
            batch: batch("twice-forwarded"),
        }],
    });
    request
        .metadata_mut()
        .insert("silt-forwarded", "b9".parse().unwrap());
    let status = log.produce_batches(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let slot: usize = owner[1..].parse().unwrap();
    assert_eq!(
        status
            .metadata()
            .get("silt-owner")
            .unwrap()
            .to_str()
            .unwrap(),
        cluster.broker(slot).addr().to_string()
    );
    assert!(status.metadata().get("silt-not-stored").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_broker_id_supersedes_the_first() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let objects = tempfile::tempdir().unwrap();
    let store = format!("file://{}", objects.path().display());
    let mut first =
        BrokerProcess::start(options(&etcd, d1.path(), "twin").arg("--object-store", &store)).await;
    let second =
        BrokerProcess::start(options(&etcd, d2.path(), "twin").arg("--object-store", &store)).await;
    // The old process can commit nothing any more: it stops by itself, with an error.
    let status = wait_for(
        "the superseded process to exit",
        Duration::from_secs(20),
        || {
            let exited = first.exited();
            async move { exited }
        },
    )
    .await;
    assert!(!status.success(), "a superseded broker exits non-zero");
    assert_eq!(live(&second).await, ["twin"]);
}
