//! etcd as Silt's metadata store: the MetaStore conformance suite against a real etcd, and a
//! broker on etcd metadata surviving a kill -9.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use silt_client::{Producer, ProducerConfig, ProducerRecord};
use silt_metadata::conformance::{self, Harness};
use silt_metadata::{EtcdOptions, EtcdStore, MetaStore};
use silt_tests::{BrokerOptions, BrokerProcess, EtcdProcess, event_value, read_partition};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_passes_the_conformance_suite() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let options = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..Default::default()
    };
    let store: Arc<dyn MetaStore> = Arc::new(EtcdStore::connect(&options).await.unwrap());
    let harness = Harness {
        store,
        prefix: b"/conformance/".to_vec(),
        advance: Box::new(|d| Box::pin(tokio::time::sleep(d))),
    };
    conformance::run_all(&harness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_a_clear_error() {
    let options = EtcdOptions {
        endpoints: vec!["127.0.0.1:1".into()],
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let err = EtcdStore::connect(&options).await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_on_etcd_keeps_acknowledged_records_across_kill_9() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions::new(dir.path())
        .arg("--metadata", etcd.url())
        .arg("--cluster", "it");
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    client.create_topic("e", 2, None, None).await.unwrap();
    let producer = Producer::new(&client, "e", ProducerConfig::default())
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..2_000u64 {
        let record = ProducerRecord::new(event_value(i, 256)).with_partition((i % 2) as u32);
        acks.push(producer.send(record).await.unwrap());
    }
    let mut acked = Vec::new();
    for (i, ack) in acks.into_iter().enumerate() {
        acked.push((i as u64, ack.await.unwrap()));
    }
    let options = broker.kill9();
    // The local data dir holds no metadata now: everything the new process knows comes from etcd.
    assert!(!dir.path().join("metadata.redb").exists());
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    for p in 0..2 {
        let stored = read_partition(&client, "e", p).await;
        for (i, (partition, offset)) in &acked {
            if *partition == p {
                assert_eq!(stored.get(offset), Some(&Bytes::from(event_value(*i, 256))));
            }
        }
    }
}
