//! The gRPC API of a real broker, called as any gRPC client would.

use std::time::Duration;

use bytes::Bytes;
use silt_api::v1::admin_client::AdminClient;
use silt_api::v1::log_client::LogClient;
use silt_api::v1::record_result::Outcome;
use silt_api::v1::start_position::Position;
use silt_api::v1::{
    CreateTopicRequest, FetchRequest, ListOffsetsRequest, PartitionBatch, ProduceBatchesRequest,
    ProduceRequest, Record, StartPosition, SubscribeRequest, TopicConfig,
};
use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};
use silt_tests::{Backend, BackendGuard, BrokerProcess, backend_tests};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

async fn clients(broker: &BrokerProcess) -> (LogClient<Channel>, AdminClient<Channel>) {
    let channel = Channel::from_shared(broker.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        LogClient::new(channel.clone()).max_decoding_message_size(64 << 20),
        AdminClient::new(channel),
    )
}

async fn create(
    admin: &mut AdminClient<Channel>,
    name: &str,
    partitions: u32,
    max_record_bytes: Option<u32>,
) {
    admin
        .create_topic(CreateTopicRequest {
            name: name.into(),
            partitions,
            config: Some(TopicConfig {
                max_record_bytes,
                ..TopicConfig::default()
            }),
        })
        .await
        .unwrap();
}

fn record(key: Option<&str>, value: &str) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Record::default()
    }
}

fn pos(p: Position) -> Option<StartPosition> {
    Some(StartPosition { position: Some(p) })
}

async fn produce_routes_by_key_and_reports_per_record_errors(backend: Backend) {
    let Some(guard) = BackendGuard::start(backend).await else {
        return;
    };
    let broker = BrokerProcess::start(guard.broker_options()).await;
    let (mut log, mut admin) = clients(&broker).await;
    create(&mut admin, "keyed", 12, Some(1000)).await;

    let keys = ["alpha", "beta", "gamma", "delta", "user-42", ""];
    let mut records: Vec<Record> = keys.iter().map(|k| record(Some(k), "v")).collect();
    records.push(record(None, &"x".repeat(5000))); // too large for this topic
    let mut explicit = record(None, "p");
    explicit.partition = Some(12); // no such partition
    records.push(explicit);
    let response = log
        .produce(ProduceRequest {
            topic: "keyed".into(),
            records,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results.len(), 8);
    for (i, key) in keys.iter().enumerate() {
        match &response.results[i].outcome {
            Some(Outcome::Ack(ack)) => assert_eq!(
                ack.partition,
                silt_client::partitioner::partition_for_key(key.as_bytes(), 12),
                "key {key:?} lands where Kafka's murmur2 partitioner puts it"
            ),
            other => panic!("record {i} not acked: {other:?}"),
        }
    }
    for (i, code, needle) in [
        (6, Code::InvalidArgument, "1000"),
        (7, Code::NotFound, "partition 12"),
    ] {
        match &response.results[i].outcome {
            Some(Outcome::Error(e)) => {
                assert_eq!(e.code, code as i32, "{}", e.message);
                assert!(
                    e.message.contains(needle),
                    "message says what to fix: {}",
                    e.message
                );
            }
            other => panic!("record {i} should fail: {other:?}"),
        }
    }

    // Keyless records of one request stick to one partition.
    let records = (0..10).map(|i| record(None, &format!("k{i}"))).collect();
    let response = log
        .produce(ProduceRequest {
            topic: "keyed".into(),
            records,
        })
        .await
        .unwrap()
        .into_inner();
    let partitions: std::collections::HashSet<u32> = response
        .results
        .iter()
        .map(|r| match &r.outcome {
            Some(Outcome::Ack(a)) => a.partition,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(partitions.len(), 1);

    let err = log
        .produce(ProduceRequest {
            topic: "nope".into(),
            records: vec![record(None, "v")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
}

async fn admin_validates_input(backend: Backend) {
    let Some(guard) = BackendGuard::start(backend).await else {
        return;
    };
    let broker = BrokerProcess::start(guard.broker_options()).await;
    let (_, mut admin) = clients(&broker).await;
    let cases: Vec<(String, u32, Code)> = vec![
        ("ok-topic".into(), 0, Code::InvalidArgument),
        ("ok-topic".into(), 10_001, Code::InvalidArgument),
        ("x".repeat(250), 1, Code::InvalidArgument),
        ("has space".into(), 1, Code::InvalidArgument),
        ("".into(), 1, Code::InvalidArgument),
    ];
    for (name, partitions, code) in cases {
        let err = admin
            .create_topic(CreateTopicRequest {
                name: name.clone(),
                partitions,
                config: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{name}/{partitions}: {}", err.message());
        assert!(!err.message().is_empty());
    }
    create(&mut admin, &"y".repeat(249), 10_000, None).await;
    let err = admin
        .create_topic(CreateTopicRequest {
            name: "y".repeat(249),
            partitions: 1,
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = admin
        .describe_topic(silt_api::v1::DescribeTopicRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

fn batch(values: &[&str], timestamp_ms: i64) -> Bytes {
    let records: Vec<RecordData> = values
        .iter()
        .map(|v| RecordData {
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: vec![("h".into(), Some(Bytes::from_static(b"1")))],
            timestamp_ms,
        })
        .collect();
    encode_batch(&records, BatchCompression::Zstd, ProducerInfo::default()).unwrap()
}

async fn batches_fetch_subscribe_and_list_offsets(backend: Backend) {
    let Some(guard) = BackendGuard::start(backend).await else {
        return;
    };
    let broker = BrokerProcess::start(guard.broker_options()).await;
    let (mut log, mut admin) = clients(&broker).await;
    create(&mut admin, "b", 2, None).await;

    let first = batch(&["a", "b", "c"], 1_000);
    let second = batch(&["d", "e"], 2_000);
    let response = log
        .produce_batches(ProduceBatchesRequest {
            topic: "b".into(),
            batches: vec![
                PartitionBatch {
                    partition: 1,
                    batch: first.clone(),
                },
                PartitionBatch {
                    partition: 1,
                    batch: second,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let bases: Vec<(i64, i64)> = response
        .acks
        .iter()
        .map(|a| (a.base_offset, a.last_offset))
        .collect();
    assert_eq!(bases, [(0, 2), (3, 4)]);

    // A corrupt batch is refused whole and nothing of the request is stored.
    let mut corrupt = first.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let err = log
        .produce_batches(ProduceBatchesRequest {
            topic: "b".into(),
            batches: vec![
                PartitionBatch {
                    partition: 1,
                    batch: first.clone(),
                },
                PartitionBatch {
                    partition: 1,
                    batch: Bytes::from(corrupt),
                },
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().to_lowercase().contains("crc"),
        "{}",
        err.message()
    );
    let err = log
        .produce_batches(ProduceBatchesRequest {
            topic: "b".into(),
            batches: vec![PartitionBatch {
                partition: 1,
                batch: Bytes::from_static(b"short"),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let fetched = log
        .fetch(FetchRequest {
            topic: "b".into(),
            partition: 1,
            offset: 0,
            max_bytes: 1 << 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fetched.high_watermark, 5,
        "the refused request stored nothing"
    );
    let values: Vec<&[u8]> = fetched
        .records
        .iter()
        .map(|r| r.value.as_deref().unwrap())
        .collect();
    assert_eq!(values, [b"a", b"b", b"c", b"d", b"e"]);
    let offsets: Vec<i64> = fetched.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);
    assert_eq!(fetched.records[0].headers[0].key, "h");

    // Raw batches: the stored bytes, base offset set, CRC intact.
    let raw = log
        .fetch(FetchRequest {
            topic: "b".into(),
            partition: 1,
            offset: 0,
            max_bytes: 1 << 20,
            raw_batches: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(raw.records.is_empty());
    assert_eq!(raw.batches.len(), 2);
    assert_eq!(
        &raw.batches[0][8..],
        &first[8..],
        "stored byte for byte after the base offset"
    );

    // Fetch past the high watermark: OUT_OF_RANGE with the bounds.
    let err = log
        .fetch(FetchRequest {
            topic: "b".into(),
            partition: 1,
            offset: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(
        err.metadata()
            .get("silt-high-watermark")
            .unwrap()
            .to_str()
            .unwrap(),
        "5"
    );

    // Time index.
    for (ts, expected) in [(0, 0), (1_000, 0), (1_500, 3), (2_000, 3), (2_001, 5)] {
        let r = log
            .list_offsets(ListOffsetsRequest {
                topic: "b".into(),
                partition: 1,
                spec: pos(Position::TimestampMs(ts)),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.offset, expected, "first offset with timestamp >= {ts}");
    }
    let latest = log
        .list_offsets(ListOffsetsRequest {
            topic: "b".into(),
            partition: 1,
            spec: pos(Position::Latest(true)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.offset, 5);

    // Long-poll: a fetch at the high watermark returns when new data is durable.
    let mut poll_log = log.clone();
    let poll = tokio::spawn(async move {
        poll_log
            .fetch(FetchRequest {
                topic: "b".into(),
                partition: 0,
                offset: 0,
                max_bytes: 1 << 20,
                max_wait_ms: 20_000,
                raw_batches: false,
            })
            .await
    });
    let mut sub = log
        .subscribe(SubscribeRequest {
            topic: "b".into(),
            partition: 0,
            start: pos(Position::Earliest(true)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        let r = Record {
            partition: Some(0),
            ..record(None, &format!("live-{i}"))
        };
        log.produce(ProduceRequest {
            topic: "b".into(),
            records: vec![r],
        })
        .await
        .unwrap();
    }
    let polled = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(polled.records[0].value.as_deref(), Some(&b"live-0"[..]));

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(15), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for r in msg.records {
            seen.push((
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            ));
        }
    }
    assert_eq!(
        seen,
        [
            (0, "live-0".into()),
            (1, "live-1".into()),
            (2, "live-2".into())
        ]
    );
}

async fn health_and_reflection_are_served(backend: Backend) {
    let Some(guard) = BackendGuard::start(backend).await else {
        return;
    };
    let broker = BrokerProcess::start(guard.broker_options()).await;
    let channel = Channel::from_shared(broker.url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"silt.v1.Log".to_string()), "{names:?}");
    assert!(names.contains(&"silt.v1.Admin".to_string()), "{names:?}");
}

backend_tests!(
    produce_routes_by_key_and_reports_per_record_errors,
    admin_validates_input,
    batches_fetch_subscribe_and_list_offsets,
    health_and_reflection_are_served
);
