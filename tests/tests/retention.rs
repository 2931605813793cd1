//! Retention moves the log start past expired records, fetches below it get OUT_OF_RANGE with
//! the log start offset, and segments whose records all expired are deleted.

use std::time::Duration;

use bytes::Bytes;
use silt_api::v1::{FetchRequest, ProduceRequest, Record};
use silt_tests::{BrokerOptions, BrokerProcess, wait_for};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_are_trimmed_and_fetch_below_log_start_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start(BrokerOptions::new(dir.path()).arg("--retention-check-ms", 100)).await;
    let client = broker.client().await;
    client
        .create_topic("old", 1, Some(60_000), None)
        .await
        .unwrap();
    let mut log = client.log();
    // Records stamped in 1970: far past the topic's one-minute retention.
    let records = (0..10)
        .map(|i| Record {
            value: Bytes::from(format!("old-{i}")),
            timestamp_ms: Some(1_000 + i),
            ..Record::default()
        })
        .collect();
    log.produce(ProduceRequest {
        topic: "old".into(),
        records,
    })
    .await
    .unwrap();
    let segments_dir = dir.path().join("objects/segments/broker-0");
    let count = || {
        std::fs::read_dir(&segments_dir)
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let objects_before = count();
    assert!(objects_before >= 1);

    let log_start = wait_for(
        "retention to trim the partition",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let d = client.describe_topic("old").await.ok()?;
                let start = d.partitions[0].log_start_offset;
                (start == 10).then_some(start)
            }
        },
    )
    .await;
    let err = log
        .fetch(FetchRequest {
            topic: "old".into(),
            partition: 0,
            offset: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    let advertised: i64 = err
        .metadata()
        .get("silt-log-start-offset")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(advertised, log_start);
    wait_for(
        "the expired segment object to be deleted",
        Duration::from_secs(30),
        || {
            let n = count();
            async move { (n < objects_before).then_some(()) }
        },
    )
    .await;

    // New records still land at the next offsets.
    let records = vec![Record {
        value: Bytes::from_static(b"fresh"),
        ..Record::default()
    }];
    let response = log
        .produce(ProduceRequest {
            topic: "old".into(),
            records,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(silt_api::v1::record_result::Outcome::Ack(ack)) = &response.results[0].outcome else {
        panic!("{response:?}")
    };
    assert_eq!(ack.offset, 10);
}
