//! The library against the mock broker: routing, ordering, retries, error isolation,
//! backpressure and the reader's decoding — what the real broker cannot be asked to show on
//! demand.

use std::collections::HashMap;
use std::time::Duration;

use silt_api::v1::TopicConfig;
use silt_client::partitioner::partition_for_key;
use silt_client::{PartitionReader, Producer, ProducerConfig, ProducerRecord, StartSpec};
use tonic::Code;

use crate::mock::start;

fn small_batches() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(2),
        batch_bytes: 4096,
        request_bytes: 32 << 10,
        max_in_flight: 3,
        ..ProducerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_records_come_back_in_order_where_they_were_acked() {
    let (mock, client) = start().await;
    client.create_topic("events", 4, None, None).await.unwrap();
    let producer = Producer::new(&client, "events", small_batches())
        .await
        .unwrap();
    assert_eq!(producer.partitions(), 4);

    let mut futures = Vec::new();
    for i in 0..3000u32 {
        let mut record = ProducerRecord::new(format!("value-{i}"));
        if i % 3 == 0 {
            record = record.with_key(format!("user-{}", i % 17));
        }
        if i % 10 == 0 {
            record = record.with_partition(3);
        }
        futures.push((record.clone(), producer.send(record).await.unwrap()));
    }
    producer.flush().await.unwrap();

    let mut acked: HashMap<(u32, i64), ProducerRecord> = HashMap::new();
    let mut last_offset: HashMap<u32, i64> = HashMap::new();
    for (record, future) in futures {
        let routed = future.partition();
        let (partition, offset) = future.await.unwrap();
        assert_eq!(partition, routed);
        match (record.partition, &record.key) {
            (Some(p), _) => assert_eq!(partition, p),
            (None, Some(key)) => assert_eq!(partition, partition_for_key(key, 4)),
            (None, None) => {}
        }
        // Send order is offset order within a partition.
        let previous = last_offset.insert(partition, offset);
        assert!(
            previous.is_none_or(|p| p < offset),
            "partition {partition} offsets not increasing"
        );
        acked.insert((partition, offset), record);
    }
    assert_eq!(acked.len(), 3000);
    assert!(
        mock.state().widest_request > 1,
        "several batches share a request"
    );

    let mut read = 0;
    for partition in 0..4 {
        let mut reader = PartitionReader::new(&client, "events", partition, StartSpec::Earliest)
            .await
            .unwrap();
        let end = reader.high_watermark();
        let mut expected = 0;
        while reader.next_offset() < end {
            for record in reader.next_batch(Duration::ZERO).await.unwrap() {
                assert_eq!(record.offset, expected, "offsets are dense");
                expected += 1;
                let sent = &acked[&(partition, record.offset)];
                assert_eq!(record.value.as_ref(), Some(&sent.value));
                assert_eq!(record.key, sent.key);
                read += 1;
            }
        }
        assert_eq!(reader.high_watermark(), end);
    }
    assert_eq!(read, 3000);
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_read_back_as_null_values() {
    let (_mock, client) = start().await;
    let config = TopicConfig {
        cleanup_policy: Some("compact".into()),
        ..TopicConfig::default()
    };
    let topic = client.create_topic_with("kv", 1, config).await.unwrap();
    assert_eq!(topic.cleanup_policy, "compact");
    let producer = Producer::new(&client, "kv", small_batches()).await.unwrap();
    let kept = producer
        .send(ProducerRecord::new("v").with_key("k"))
        .await
        .unwrap();
    let deleted = producer.send(ProducerRecord::tombstone("k")).await.unwrap();
    assert_eq!(kept.await.unwrap(), (0, 0));
    assert_eq!(deleted.await.unwrap(), (0, 1));

    // Refused alone, before anything is sent: a null value with bytes, no key in a compacted
    // topic.
    let bad = ProducerRecord {
        null_value: true,
        ..ProducerRecord::new("bytes").with_key("k")
    };
    let err = producer.send(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.to_string()
            .contains("a record with null_value set must have an empty value"),
        "{err}"
    );
    let err = producer.send(ProducerRecord::new("v")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.to_string().contains("every record needs a key"),
        "{err}"
    );
    producer.close().await.unwrap();

    let mut reader = PartitionReader::new(&client, "kv", 0, StartSpec::Earliest)
        .await
        .unwrap();
    let read = reader.next_batch(Duration::ZERO).await.unwrap();
    let values: Vec<_> = read.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, [Some(bytes::Bytes::from_static(b"v")), None]);
    assert!(read.iter().all(|r| r.key.as_deref() == Some(&b"k"[..])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried() {
    let (mock, client) = start().await;
    client.create_topic("t", 1, None, None).await.unwrap();
    mock.state().refuse = 2;
    let producer = Producer::new(&client, "t", small_batches()).await.unwrap();
    let ack = producer
        .send(ProducerRecord::new("x"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack, (0, 0));
    assert_eq!(mock.state().produce_calls, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out() {
    let (mock, client) = start().await;
    client.create_topic("t", 1, None, None).await.unwrap();
    mock.state().refuse = 100;
    let config = ProducerConfig {
        max_retries: 1,
        ..small_batches()
    };
    let producer = Producer::new(&client, "t", config).await.unwrap();
    let err = producer
        .send(ProducerRecord::new("x"))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(mock.state().produce_calls, 2);
    // flush reports failures of the records it waited for.
    let _unawaited = producer.send(ProducerRecord::new("y")).await.unwrap();
    assert_eq!(
        producer.flush().await.unwrap_err().code(),
        Code::Unavailable
    );
    assert!(producer.flush().await.is_ok(), "nothing left to wait for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_batch_fails_only_its_own_records() {
    let (mock, client) = start().await;
    client.create_topic("t", 2, None, None).await.unwrap();
    mock.state().max_record_bytes = 100;
    let config = ProducerConfig {
        linger: Duration::from_millis(50),
        ..small_batches()
    };
    let producer = Producer::new(&client, "t", config).await.unwrap();
    let big = producer
        .send(ProducerRecord::new(vec![b'x'; 500]).with_partition(0))
        .await
        .unwrap();
    let small = producer
        .send(ProducerRecord::new("ok").with_partition(1))
        .await
        .unwrap();
    assert_eq!(big.await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(small.await.unwrap(), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_and_partitions_are_refused() {
    let (_mock, client) = start().await;
    let err = Producer::new(&client, "nope", ProducerConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.to_string(), "topic 'nope' does not exist (NOT_FOUND)");
    client.create_topic("t", 2, None, None).await.unwrap();
    let producer = Producer::new(&client, "t", ProducerConfig::default())
        .await
        .unwrap();
    let err = producer
        .send(ProducerRecord::new("x").with_partition(2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(client.stats().await.unwrap().cpu_seconds, 1.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_round_trip() {
    let (_mock, client) = start().await;
    client.create_topic("z", 1, None, None).await.unwrap();
    for compression in [
        silt_client::BatchCompression::Gzip,
        silt_client::BatchCompression::Snappy,
        silt_client::BatchCompression::Lz4,
        silt_client::BatchCompression::Zstd,
    ] {
        let config = ProducerConfig {
            compression,
            ..small_batches()
        };
        let producer = Producer::new(&client, "z", config).await.unwrap();
        let mut last = None;
        for i in 0..200 {
            last = Some(
                producer
                    .send(ProducerRecord::new(format!("compressed {i}")))
                    .await
                    .unwrap(),
            );
        }
        let (_, last_offset) = last.unwrap().await.unwrap();
        let mut reader =
            PartitionReader::new(&client, "z", 0, StartSpec::Offset(last_offset - 199))
                .await
                .unwrap();
        let mut values = Vec::new();
        while reader.next_offset() <= last_offset {
            values.extend(reader.next_batch(Duration::ZERO).await.unwrap());
        }
        assert_eq!(values.len(), 200, "{compression:?}");
        assert_eq!(values[199].value.as_deref(), Some(&b"compressed 199"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_makes_send_wait_not_fail() {
    let (mock, client) = start().await;
    client.create_topic("t", 2, None, None).await.unwrap();
    // One request of ~1 KiB in flight and ~1 KiB buffered: send must wait again and again.
    let config = ProducerConfig {
        linger: Duration::from_millis(1),
        batch_bytes: 512,
        request_bytes: 1024,
        max_in_flight: 1,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, "t", config).await.unwrap();
    let mut futures = Vec::new();
    for i in 0..5000 {
        futures.push(
            producer
                .send(ProducerRecord::new(format!("{i:050}")))
                .await
                .unwrap(),
        );
    }
    let mut acked = 0;
    for future in futures {
        future.await.unwrap();
        acked += 1;
    }
    assert_eq!(acked, 5000);
    assert!(
        mock.state().produce_calls >= 200,
        "{} calls",
        mock.state().produce_calls
    );
}
