//! etcd as Silt's metadata store: the MetaStore conformance suite against a real etcd, and a
//! broker on etcd metadata surviving a kill -9.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use silt_client::{Producer, ProducerConfig, ProducerRecord};
use silt_metadata::conformance::{self, Harness};
use silt_metadata::store::RangeRequest;
use silt_metadata::{EtcdOptions, EtcdStore, MetaError, MetaStore};
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

/// The controller compacts etcd's change history older than `--metadata-history-ms` (etcd keeps
/// every revision until compacted, so otherwise its database grows with every flush): a watch
/// from before the kept history fails with `Compacted`, while the broker's own watch, produce and
/// reads go on untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_compacts_etcd_history() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions::new(dir.path())
        .arg("--metadata", etcd.url())
        .arg("--cluster", "hist")
        .arg("--retention-check-ms", 100)
        .arg("--metadata-history-ms", 500);
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    client.create_topic("h", 1, None, None).await.unwrap();
    let store = EtcdStore::connect(&etcd.options()).await.unwrap();
    let created = store
        .get(b"/silt/hist/topics/h")
        .await
        .unwrap()
        .expect("the topic key")
        .mod_revision;
    let producer = Producer::new(&client, "h", ProducerConfig::default())
        .await
        .unwrap();
    let compacted =
        |text: &str| silt_tests::metric_sum(text, "silt_metadata_compacted_revision", &[]) as i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut sent = 0u64;
    // Flushes go on (each one a revision) until the compaction passed the topic's creation.
    while compacted(&broker.scrape().await) <= created {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no compaction past revision {created} within 30 s"
        );
        let ack = producer
            .send(ProducerRecord::new(event_value(sent, 64)))
            .await
            .unwrap();
        ack.await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut watch = store
        .watch(RangeRequest::prefix(b"/silt/hist/".to_vec()), created)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an answer");
    assert!(
        matches!(first, Some(Err(MetaError::Compacted { .. }))),
        "{first:?}"
    );
    // The broker never needed the old history: it goes on acking and serving.
    for i in sent..sent + 20 {
        let ack = producer
            .send(ProducerRecord::new(event_value(i, 64)))
            .await
            .unwrap();
        ack.await.unwrap();
    }
    let stored = read_partition(&client, "h", 0).await;
    assert_eq!(stored.len() as u64, sent + 20);
    for i in 0..sent + 20 {
        assert_eq!(
            stored.get(&(i as i64)),
            Some(&Bytes::from(event_value(i, 64)))
        );
    }
}

/// etcd dies and comes back while producers write: produce fails retriably or waits, the broker
/// neither crashes nor acknowledges anything it did not commit, and it recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_under_load_loses_no_acknowledged_record() {
    use std::sync::atomic::{AtomicBool, Ordering};

    use silt_tests::load::{fast_path_load, per_record_load};
    use silt_tests::{Checker, wait_for};

    let Some(mut etcd) = EtcdProcess::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions::new(dir.path())
        .arg("--metadata", etcd.url())
        .arg("--cluster", "restart");
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    client.create_topic("r", 2, None, None).await.unwrap();
    let checker = Arc::new(Checker::new());
    let stop = Arc::new(AtomicBool::new(false));
    let run = |stop: Arc<AtomicBool>, round: u64| {
        let (c0, c1, k0, k1) = (
            client.clone(),
            client.clone(),
            checker.clone(),
            checker.clone(),
        );
        let s0 = stop.clone();
        vec![
            tokio::spawn(fast_path_load("r", c0, 0, k0, s0, round)),
            tokio::spawn(per_record_load("r", c1, 1, k1, stop, round)),
        ]
    };
    let load = run(stop.clone(), 0);
    let until = |n: u64| {
        let c = checker.clone();
        async move {
            wait_for("acks", Duration::from_secs(120), || {
                let acked = c.acked_count();
                async move { (acked >= n).then_some(()) }
            })
            .await
        }
    };
    until(1_000).await;
    etcd.kill();
    tokio::time::sleep(Duration::from_secs(2)).await; // an outage of a known length
    etcd.restart().await;
    // The loads stop at their first failure; whatever they got, start fresh ones now.
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
    }
    let before = checker.acked_count();
    let stop = Arc::new(AtomicBool::new(false));
    let load = run(stop.clone(), 1);
    until(before + 1_000).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
    }
    let report = checker.verify(&client, "r").await;
    assert_eq!(
        (report.lost, report.duplicated, report.gaps),
        (0, 0, 0),
        "{report:?}"
    );
    // Still the same broker process: it recovered by itself.
    assert!(client.list_topics().await.is_ok());
    drop(broker);
}

/// A watch broken by an etcd restart ends with an error; watching again from the last revision
/// seen + 1 resumes without missing a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_an_etcd_restart() {
    use futures::StreamExt;
    use silt_metadata::RangeRequest;

    let Some(mut etcd) = EtcdProcess::start().await else {
        return;
    };
    let options = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..Default::default()
    };
    let store = EtcdStore::connect(&options).await.unwrap();
    let mut stream = store.watch(RangeRequest::prefix("/w/"), 0).await.unwrap();
    let first = store.put(b"/w/a", b"1").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.revision, first);
    let last_seen = got.revision;

    etcd.restart().await;
    // The broken stream reports an error or ends; it never makes up events.
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Err(e))) => assert!(e.is_retriable(), "{e}"),
        Ok(None) => {}
        Ok(Some(Ok(r))) => panic!("an event after the restart without a change: {r:?}"),
        Err(_) => panic!("the watch neither failed nor ended after etcd restarted"),
    }
    // Changes made meanwhile are replayed from the resume revision.
    let second = store.put(b"/w/b", b"2").await.unwrap();
    let mut resumed = store
        .watch(RangeRequest::prefix("/w/"), last_seen + 1)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.revision, second);
    assert_eq!(got.events[0].kv().key, b"/w/b");
}

/// etcd with TLS and client-certificate authentication: the store works over TLS, refuses to
/// connect without the client certificate, and a broker started with --etcd-ca/--etcd-cert/
/// --etcd-key serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates() {
    let Some(etcd) = EtcdProcess::start_tls().await else {
        return;
    };
    let store = EtcdStore::connect(&etcd.options()).await.unwrap();
    let r = store.put(b"/tls/k", b"v").await.unwrap();
    assert_eq!(store.get(b"/tls/k").await.unwrap().unwrap().mod_revision, r);

    let mut no_cert = etcd.options();
    if let Some(tls) = &mut no_cert.tls {
        tls.client_pem = None;
    }
    no_cert.timeout = Some(Duration::from_secs(2));
    assert!(
        EtcdStore::connect(&no_cert).await.is_err(),
        "etcd requires the client certificate"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut options = BrokerOptions::new(dir.path())
        .arg("--metadata", etcd.url())
        .arg("--cluster", "tls");
    options.args.extend(etcd.tls_args());
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    client.create_topic("t", 1, None, None).await.unwrap();
    let producer = Producer::new(&client, "t", ProducerConfig::default())
        .await
        .unwrap();
    let ack = producer
        .send(ProducerRecord::new("over tls"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack, (0, 0));
}

/// A shutdown that cannot finish — etcd stops answering while the last segment commits —
/// ends at `--shutdown-timeout-ms`: the broker exits non-zero, and the record it could not
/// commit is never acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_shutdown_ends_at_its_timeout_without_a_false_ack() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        linger_ms: 60_000,
        ..BrokerOptions::new(dir.path())
            .arg("--metadata", etcd.url())
            .arg("--cluster", "stuck")
            .arg("--shutdown-timeout-ms", 2_000)
    };
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    client.create_topic("s", 1, None, None).await.unwrap();
    let config = ProducerConfig {
        retry_for: Duration::from_secs(1),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, "s", config).await.unwrap();
    let ack = producer
        .send(ProducerRecord::new(event_value(1, 100)).with_partition(0))
        .await
        .unwrap();
    // With a 60 s linger the record waits in the WAL cache; SIGTERM flushes it, and its
    // commit meets a paused etcd.
    silt_tests::wait_for(
        "the record in the WAL cache",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move { (client.stats().await.ok()?.wal_cache_bytes > 0).then_some(()) }
        },
    )
    .await;
    etcd.signal("STOP");
    let started = std::time::Instant::now();
    let (status, _) = broker.stop().await;
    let took = started.elapsed();
    etcd.signal("CONT");
    assert!(
        !status.success(),
        "a shutdown that did not finish exits non-zero"
    );
    assert!(
        took < Duration::from_secs(10),
        "the shutdown took {took:?}, past its 2 s timeout"
    );
    let answer = tokio::time::timeout(Duration::from_secs(30), ack)
        .await
        .expect("the producer answers");
    assert!(
        answer.is_err(),
        "an uncommitted record was acknowledged: {answer:?}"
    );
}
