//! Every limit is enforced with a precise status, and nothing invalid is stored.

use bytes::Bytes;
use silt_api::v1::log_client::LogClient;
use silt_api::v1::{FetchRequest, PartitionBatch, ProduceBatchesRequest, ProduceRequest, Record};
use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};
use std::time::Duration;

use silt_tests::{Backend, BackendGuard, BrokerOptions, BrokerProcess, backend_tests, wait_for};
use tonic::Code;
use tonic::transport::Channel;

fn value_batch(count: usize, value_size: usize) -> Bytes {
    let records: Vec<RecordData> = (0..count)
        .map(|i| RecordData {
            key: None,
            value: Some(Bytes::from(silt_tests::event_value(i as u64, value_size))),
            headers: Vec::new(),
            timestamp_ms: 1,
        })
        .collect();
    encode_batch(&records, BatchCompression::None, ProducerInfo::default()).unwrap()
}

async fn log_client(broker: &BrokerProcess) -> LogClient<Channel> {
    let channel = Channel::from_shared(broker.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    LogClient::new(channel).max_encoding_message_size(256 << 20)
}

async fn high_watermark(log: &mut LogClient<Channel>, topic: &str, partition: u32) -> i64 {
    log.fetch(FetchRequest {
        topic: topic.into(),
        partition,
        offset: 0,
        max_bytes: 1,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .high_watermark
}

async fn wal_cache_is_bounded_with_retry_advice(backend: Backend) {
    let Some(guard) = BackendGuard::start(backend).await else {
        return;
    };
    // A long linger and large flush size: nothing leaves the WAL cache by itself.
    let options = guard
        .broker_options()
        .arg("--wal-cache-bytes", 1 << 20)
        .arg("--flush-bytes", 1 << 20);
    let broker = BrokerProcess::start(BrokerOptions {
        linger_ms: 60_000,
        ..options
    })
    .await;
    let client = broker.client().await;
    client.create_topic("w", 1, None, None).await.unwrap();
    let mut log = log_client(&broker).await;
    let batch = value_batch(100, 1000); // ~100 KiB
    let mut pending = Vec::new();
    let err = loop {
        let mut l = log.clone();
        let request = ProduceBatchesRequest {
            topic: "w".into(),
            batches: vec![PartitionBatch {
                partition: 0,
                batch: batch.clone(),
            }],
        };
        // Appends are acknowledged only at flush; keep them outstanding. Each call is either
        // refused or visibly held in the WAL cache before the next one goes.
        let call = tokio::spawn(async move { l.produce_batches(request).await });
        let held = (pending.len() + 1) as u64 * batch.len() as u64;
        let refused = wait_for(
            "the append to be held or refused",
            Duration::from_secs(30),
            || {
                let client = client.clone();
                let finished = call.is_finished();
                async move {
                    if finished {
                        return Some(true);
                    }
                    let in_cache = client.stats().await.ok()?.wal_cache_bytes;
                    (in_cache >= held).then_some(false)
                }
            },
        )
        .await;
        if refused {
            break call.await.unwrap().unwrap_err();
        }
        pending.push(call);
        assert!(pending.len() < 40, "the WAL cache never pushed back");
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    let retry: u64 = err
        .metadata()
        .get("retry-after-ms")
        .expect("retry advice")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0);
    assert!(
        err.message().to_lowercase().contains("wal cache"),
        "{}",
        err.message()
    );
    assert_eq!(
        high_watermark(&mut log, "w", 0).await,
        0,
        "nothing visible before a flush"
    );
    drop(pending);
}

async fn request_and_record_limits(backend: Backend) {
    let Some(guard) = BackendGuard::start(backend).await else {
        return;
    };
    let options = guard
        .broker_options()
        .arg("--max-request-records", 100)
        .arg("--max-batch-bytes", 256 << 10)
        .arg("--max-request-bytes", 1 << 20);
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    client.create_topic("l", 1, None, Some(2000)).await.unwrap();
    let mut log = log_client(&broker).await;

    // Too many records in one Produce.
    let records: Vec<Record> = (0..101)
        .map(|_| Record {
            value: Bytes::from_static(b"v"),
            ..Record::default()
        })
        .collect();
    let err = log
        .produce(ProduceRequest {
            topic: "l".into(),
            records,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("100"), "{}", err.message());

    // A batch over the batch size limit.
    let err = log
        .produce_batches(ProduceBatchesRequest {
            topic: "l".into(),
            batches: vec![PartitionBatch {
                partition: 0,
                batch: value_batch(200, 1500),
            }],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::InvalidArgument | Code::ResourceExhausted),
        "{err:?}"
    );
    assert!(
        err.message().contains("262144") || err.message().contains("256"),
        "{}",
        err.message()
    );

    // A record over the topic's max record size, inside a batch: the batch is refused whole.
    let err = log
        .produce_batches(ProduceBatchesRequest {
            topic: "l".into(),
            batches: vec![PartitionBatch {
                partition: 0,
                batch: value_batch(3, 5000),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("2000"), "{}", err.message());

    // A request over the request size limit.
    let batches = (0..8)
        .map(|_| PartitionBatch {
            partition: 0,
            batch: value_batch(100, 1500),
        })
        .collect();
    let err = log
        .produce_batches(ProduceBatchesRequest {
            topic: "l".into(),
            batches,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("max-request-bytes"),
        "{}",
        err.message()
    );
    let records: Vec<Record> = (0..20)
        .map(|_| Record {
            value: Bytes::from(vec![b'r'; 60_000]),
            ..Record::default()
        })
        .collect();
    let err = log
        .produce(ProduceRequest {
            topic: "l".into(),
            records,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("max-request-bytes"),
        "{}",
        err.message()
    );

    // A batch whose record count lies.
    let mut lying = value_batch(3, 10).to_vec();
    lying[57..61].copy_from_slice(&5i32.to_be_bytes());
    let err = log
        .produce_batches(ProduceBatchesRequest {
            topic: "l".into(),
            batches: vec![PartitionBatch {
                partition: 0,
                batch: Bytes::from(lying),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    // Unknown partition.
    let err = log
        .produce_batches(ProduceBatchesRequest {
            topic: "l".into(),
            batches: vec![PartitionBatch {
                partition: 1,
                batch: value_batch(1, 10),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());

    assert_eq!(
        high_watermark(&mut log, "l", 0).await,
        0,
        "nothing invalid was stored"
    );
    let ok = log
        .produce_batches(ProduceBatchesRequest {
            topic: "l".into(),
            batches: vec![PartitionBatch {
                partition: 0,
                batch: value_batch(3, 100),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.acks[0].base_offset, 0);
}

backend_tests!(
    wal_cache_is_bounded_with_retry_advice,
    request_and_record_limits
);

/// The broker's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/<pid>/status")
        * 1024
}

/// Compression bombs, one per codec, against a broker with default limits: small requests
/// whose records inflate to hundreds of MiB (each record within the 1 MiB record limit), and a
/// record whose length says 4 GiB. Each is refused with INVALID_ARGUMENT naming the limit;
/// nothing is stored; the broker's peak memory barely moves (the stream is checked as it
/// decompresses and abandoned at the cap, never held whole); and it still serves afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_bombs_are_refused_with_bounded_memory() {
    use silt_storage::batch::testing::{CODECS, compress, raw_batch, zero_records, zigzag};

    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(BrokerOptions::new(dir.path())).await;
    let client = broker.client().await;
    client.create_topic("bomb", 1, None, None).await.unwrap();
    let mut log = log_client(&broker).await;
    // Warm up, so the baseline includes the broker's buffers for an ordinary request.
    log.produce_batches(ProduceBatchesRequest {
        topic: "bomb".into(),
        batches: vec![PartitionBatch {
            partition: 0,
            batch: value_batch(100, 1000),
        }],
    })
    .await
    .unwrap();
    let before = peak_rss(broker.pid());

    for codec in CODECS {
        // Each batch stays within the 8 MiB batch limit: snappy (at most ~21:1) needs several
        // batches to pass the 256 MiB request budget; the others pack 512 MiB into one.
        let (records_per_batch, batches) = match codec {
            BatchCompression::Snappy => (150, 3),
            _ => (512, 1),
        };
        let stream = compress(codec, zero_records(records_per_batch, (1 << 20) - 8));
        let batch = Bytes::from(raw_batch(codec, records_per_batch as i32, &stream));
        assert!(
            batch.len() < 8 << 20,
            "{codec:?} bomb is {} bytes",
            batch.len()
        );
        let err = log
            .produce_batches(ProduceBatchesRequest {
                topic: "bomb".into(),
                batches: vec![
                    PartitionBatch {
                        partition: 0,
                        batch,
                    };
                    batches
                ],
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{codec:?}: {}",
            err.message()
        );
        assert!(
            err.message().contains("decompress"),
            "{codec:?}: {}",
            err.message()
        );

        // One record that says it is 4 GiB long.
        let stream = compress(codec, |w| {
            w.write_all(&zigzag(4 << 30)).unwrap();
            w.write_all(&vec![0u8; 1 << 20]).unwrap();
        });
        let err = log
            .produce_batches(ProduceBatchesRequest {
                topic: "bomb".into(),
                batches: vec![PartitionBatch {
                    partition: 0,
                    batch: Bytes::from(raw_batch(codec, 1, &stream)),
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{codec:?}: {}",
            err.message()
        );
        assert!(
            err.message().contains("record limit"),
            "{codec:?}: {}",
            err.message()
        );
    }
    let after = peak_rss(broker.pid());
    eprintln!(
        "broker peak RSS: {} MiB before the bombs, {} MiB after",
        before >> 20,
        after >> 20
    );
    assert!(
        after < before + (48 << 20),
        "peak memory grew from {} MiB to {} MiB",
        before >> 20,
        after >> 20
    );
    assert_eq!(
        high_watermark(&mut log, "bomb", 0).await,
        100,
        "no bomb was stored"
    );
    let ok = log
        .produce_batches(ProduceBatchesRequest {
            topic: "bomb".into(),
            batches: vec![PartitionBatch {
                partition: 0,
                batch: value_batch(3, 100),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.acks[0].base_offset, 100);
}
