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

/// One gRPC call on raw HTTP/2: the produce route's `pieces` sent as one DATA frame each (the
/// stream left open when `end` is false); returns the call's grpc-status and grpc-message.
async fn raw_produce_call(
    addr: std::net::SocketAddr,
    encoding: Option<&str>,
    pieces: Vec<Bytes>,
    end: bool,
) -> (i32, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/silt.v1.Log/ProduceBatches"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(encoding) = encoding {
        request = request.header("grpc-encoding", encoding);
    }
    let mut client = client.ready().await.unwrap();
    let (response, mut stream) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    for piece in pieces {
        stream.send_data(piece, false).unwrap();
    }
    if end {
        stream.send_data(Bytes::new(), true).unwrap();
    }
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the broker answers without waiting for the rest of the stream")
        .unwrap();
    let (parts, mut body) = response.into_parts();
    let field = |map: &http::HeaderMap| {
        map.get("grpc-status").map(|s| {
            let message = map
                .get("grpc-message")
                .map(|m| percent_decode(m.to_str().unwrap()))
                .unwrap_or_default();
            (s.to_str().unwrap().parse::<i32>().unwrap(), message)
        })
    };
    if let Some(status) = field(&parts.headers) {
        return status;
    }
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    field(&trailers).expect("grpc-status in the trailers")
}

/// A `grpc-message` as written (percent-encoded).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A gRPC message frame: uncompressed flag, big-endian length, the message.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    out
}

/// gRPC framing a client library would never send, on raw HTTP/2: a request cut into a
/// thousand tiny frames is stored intact, and every malformed request — a header announcing
/// 2 GiB (refused on the header alone, the stream left open), a truncated message, a protobuf
/// that does not decode, a compressed flag without an encoding, an encoding the broker does not
/// accept — gets its gRPC status and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_produce_frames_get_grpc_statuses_and_store_nothing() {
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start(BrokerOptions::new(dir.path()).arg("--max-request-bytes", 1 << 20))
            .await;
    let client = broker.client().await;
    client.create_topic("raw", 1, None, None).await.unwrap();
    let mut log = log_client(&broker).await;
    let batch = value_batch(100, 1000);
    let request = ProduceBatchesRequest {
        topic: "raw".into(),
        batches: vec![PartitionBatch {
            partition: 0,
            batch: batch.clone(),
        }],
    }
    .encode_to_vec();
    let framed = grpc_frame(&request);

    // A valid request in ~1 000 frames.
    let pieces: Vec<Bytes> = framed
        .chunks(framed.len() / 1000 + 1)
        .map(Bytes::copy_from_slice)
        .collect();
    assert!(pieces.len() > 900);
    let (status, message) = raw_produce_call(broker.addr(), None, pieces, true).await;
    assert_eq!(status, 0, "{message}");
    let fetched = log
        .fetch(FetchRequest {
            topic: "raw".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            raw_batches: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.high_watermark, 100);
    // The stored batch is the one sent, but for the base offset the broker assigned (0 here).
    assert_eq!(fetched.batches, vec![batch.clone()]);

    let one = |b: Vec<u8>| vec![Bytes::from(b)];
    // (what, grpc-encoding, frames, end the stream, grpc-status, in grpc-message)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<Bytes>, bool, i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            "a 2 GiB header, the stream left open",
            None,
            one(vec![0, 0x80, 0, 0, 0]),
            false,
            11,
            "decoded message length too large: found 2147483648 bytes",
        ),
        (
            "a truncated message",
            None,
            one(framed[..framed.len() - 10].to_vec()),
            true,
            13,
            "Unexpected EOF",
        ),
        (
            "a protobuf that does not decode",
            None,
            one(grpc_frame(&[0xff; 64])),
            true,
            13,
            "",
        ),
        (
            "a compressed flag without an encoding",
            None,
            one([&[1u8][..], &framed[1..]].concat()),
            true,
            13,
            "compressed-flag",
        ),
        (
            "an encoding the broker does not accept",
            Some("gzip"),
            one(framed.clone()),
            true,
            12,
            "gzip",
        ),
    ];
    for (what, encoding, pieces, end, code, text) in cases {
        let (status, message) = raw_produce_call(broker.addr(), encoding, pieces, end).await;
        assert_eq!(status, code, "{what}: {message}");
        assert!(message.contains(text), "{what}: {message}");
    }
    assert_eq!(
        high_watermark(&mut log, "raw", 0).await,
        100,
        "nothing else stored"
    );
}

/// A client that vanishes without closing its connection is disconnected: with
/// `--client-keepalive-ms 2000` a peer that completes the HTTP/2 preface and then never
/// answers the broker's PING sees its connection closed within about three times that (the
/// ping, then twice as long for the answer) — without the
/// keepalive it would hold its connection (and any subscription on it) forever — and a peer
/// that never finishes the preface (a slow-loris) within the keepalive period. A live client
/// that simply has nothing to say answers the pings and keeps its subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_is_disconnected_and_a_quiet_one_is_not() {
    use silt_api::v1::start_position::Position;
    use silt_api::v1::{StartPosition, SubscribeRequest};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start(BrokerOptions::new(dir.path()).arg("--client-keepalive-ms", 2000))
            .await;
    let client = broker.client().await;
    client.create_topic("quiet", 1, None, None).await.unwrap();

    // A quiet client: a subscription with nothing to read, across several keepalive rounds.
    let mut log = log_client(&broker).await;
    let mut subscription = log
        .subscribe(SubscribeRequest {
            topic: "quiet".into(),
            partition: 0,
            start: Some(StartPosition {
                position: Some(Position::Earliest(true)),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // A vanished one: the connection preface and an empty SETTINGS frame, then silence (it
    // reads what the broker sends, and never answers).
    let addr = broker.url().trim_start_matches("http://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut frames = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => frames.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a peer that never answers stays connected: {} bytes read",
        frames.len()
    );
    // HTTP/2 frames: 9-byte headers, type at byte 3. The broker pinged (type 6) before it
    // gave up (GOAWAY, type 7).
    let mut kinds = Vec::new();
    let mut at = 0;
    while at + 9 <= frames.len() {
        let len = u32::from_be_bytes([0, frames[at], frames[at + 1], frames[at + 2]]) as usize;
        kinds.push(frames[at + 3]);
        at += 9 + len;
    }
    assert!(kinds.contains(&6), "no PING among frames {kinds:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(3_000),
        "closed after {:?}, before a keepalive round",
        started.elapsed()
    );

    // A peer that connects and sends nothing, or part of the preface, is closed too: the
    // connection must open within the keepalive period.
    for opening in [&b""[..], &b"PRI * HTTP/2.0"[..]] {
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        slow.write_all(opening).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            let mut buf = [0u8; 4096];
            while let Ok(n) = slow.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a peer that sent {opening:?} stays connected"
        );
    }

    // The quiet subscription is still served: a record produced now reaches it.
    log.produce(ProduceRequest {
        topic: "quiet".into(),
        records: vec![Record {
            value: Bytes::from("after the silence"),
            ..Record::default()
        }],
    })
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), subscription.message())
        .await
        .expect("the subscription delivers")
        .expect("the subscription is still open")
        .expect("a message");
    assert_eq!(next.records[0].offset, 0);
}
