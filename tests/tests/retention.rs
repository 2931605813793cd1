//! Retention moves the log start past expired records, fetches below it get OUT_OF_RANGE with
//! the log start offset, and segments whose records all expired are deleted.

use std::time::Duration;

use bytes::Bytes;
use silt_api::v1::{FetchRequest, ProduceRequest, Record};
use silt_tests::{BrokerOptions, BrokerProcess, wait_for};
use tonic::Code;

/// A broker whose retention runs every 100 ms and whose GC grace period is 3 s.
async fn fast_retention_broker(dir: &std::path::Path) -> BrokerProcess {
    BrokerProcess::start(
        BrokerOptions::new(dir)
            .arg("--retention-check-ms", 100)
            .arg("--gc-grace-ms", 3_000),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_are_trimmed_and_fetch_below_log_start_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let broker = fast_retention_broker(dir.path()).await;
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
    // The object outlives its commit by the grace period (3 s), so it is here to count even
    // if retention already forgot it.
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

/// Retention by size, set on a live topic with `silt topic alter`: each partition keeps its
/// newest batches within the limit, the log start moves to a batch boundary, a fetch below it
/// is OUT_OF_RANGE with the new start, and what is kept reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_set_on_a_live_topic_keeps_the_newest_batches() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start(BrokerOptions::new(dir.path()).arg("--retention-check-ms", 100)).await;
    let client = broker.client().await;
    let url = broker.url();
    let created = silt_tests::run_cli(&url, &["topic", "create", "sized", "--partitions", "1"]);
    assert!(created.success, "{}", created.stderr);
    assert!(
        !created.stdout.contains("per partition"),
        "no size limit by default"
    );
    let mut log = client.log();
    // 20 produce calls of 10 records of 1 KiB: at least 20 batches of about 10 KiB.
    for call in 0..20 {
        let records = (0..10)
            .map(|i| Record {
                value: Bytes::from(format!("{call:02}-{i}-{}", "x".repeat(1000))),
                partition: Some(0),
                ..Record::default()
            })
            .collect();
        log.produce(ProduceRequest {
            topic: "sized".into(),
            records,
        })
        .await
        .unwrap();
    }
    let before = client.describe_topic("sized").await.unwrap().partitions[0];
    assert_eq!((before.log_start_offset, before.high_watermark), (0, 200));

    // Bad values are refused with what to write, and change nothing.
    for bad in [
        ["--retention-bytes", "0"],
        ["--retention-bytes", "lots"],
        ["--retention-ms", "0"],
    ] {
        let out = silt_tests::run_cli(&url, &["topic", "alter", "sized", bad[0], bad[1]]);
        assert!(!out.success, "{bad:?} accepted");
        assert!(out.stderr.contains("retention"), "{bad:?}: {}", out.stderr);
    }
    let nothing = silt_tests::run_cli(&url, &["topic", "alter", "sized"]);
    assert!(!nothing.success && nothing.stderr.contains("nothing to change"));
    let missing = silt_tests::run_cli(&url, &["topic", "alter", "nope", "--retention-ms", "5"]);
    assert!(
        !missing.success && missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );

    let altered = silt_tests::run_cli(
        &url,
        &["topic", "alter", "sized", "--retention-bytes", "50KiB"],
    );
    assert!(altered.success, "{}", altered.stderr);
    assert!(
        altered.stdout.contains("50 KiB per partition")
            || altered.stdout.contains("50.0 KiB per partition")
            || altered.stdout.contains("per partition"),
        "{}",
        altered.stdout
    );
    let info = client.describe_topic("sized").await.unwrap().topic.unwrap();
    assert_eq!(info.retention_bytes, 50 * 1024);

    let offsets = wait_for(
        "the size limit to trim the log",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let p = client.describe_topic("sized").await.ok()?.partitions[0];
                (p.log_start_offset > 0).then_some(p)
            }
        },
    )
    .await;
    assert_eq!(offsets.high_watermark, 200, "nothing new was lost");
    assert_eq!(
        offsets.log_start_offset % 10,
        0,
        "a batch boundary: {offsets:?}"
    );
    let kept = offsets.high_watermark - offsets.log_start_offset;
    assert!(
        (30..=60).contains(&kept),
        "about 50 KiB of 10 KiB batches kept, got {kept} records"
    );
    let below = log
        .fetch(FetchRequest {
            topic: "sized".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            ..FetchRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(below.code(), Code::OutOfRange);
    assert_eq!(
        silt_client::ClientError::from(below).log_start_offset(),
        Some(offsets.log_start_offset)
    );
    let kept_records = silt_tests::read_partition(&client, "sized", 0).await;
    assert_eq!(kept_records.len() as i64, kept);
    assert_eq!(
        kept_records.keys().next().copied(),
        Some(offsets.log_start_offset)
    );

    // Unlimited again: nothing more is trimmed (what was trimmed stays gone).
    let unlimited = silt_tests::run_cli(
        &url,
        &["topic", "alter", "sized", "--retention-bytes", "-1"],
    );
    assert!(unlimited.success, "{}", unlimited.stderr);
    let info = client.describe_topic("sized").await.unwrap().topic.unwrap();
    assert_eq!(info.retention_bytes, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_only_topic_keeps_old_records_and_compact_delete_trims_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = fast_retention_broker(dir.path()).await;
    let client = broker.client().await;
    let mut log = client.log();
    for (topic, policy) in [("kept", "compact"), ("trimmed", "compact,delete")] {
        client
            .create_topic_with(
                topic,
                1,
                silt_api::v1::TopicConfig {
                    retention_ms: Some(60_000),
                    cleanup_policy: Some(policy.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        // Keyed records stamped in 1970: far past the one-minute retention.
        let records = (0..10)
            .map(|i| Record {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Bytes::from(format!("old-{i}")),
                timestamp_ms: Some(1_000 + i),
                ..Record::default()
            })
            .collect();
        log.produce(ProduceRequest {
            topic: topic.into(),
            records,
        })
        .await
        .unwrap();
    }
    // One retention pass covers every topic: once it trimmed compact,delete, it has looked at
    // the compact-only topic too.
    wait_for(
        "retention to trim the compact,delete topic",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let d = client.describe_topic("trimmed").await.ok()?;
                (d.partitions[0].log_start_offset == 10).then_some(())
            }
        },
    )
    .await;
    let kept = client.describe_topic("kept").await.unwrap();
    assert_eq!(kept.partitions[0].log_start_offset, 0);
    assert_eq!(kept.partitions[0].high_watermark, 10);
}
