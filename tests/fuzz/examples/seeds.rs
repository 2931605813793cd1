//! Writes the seed corpus of every target into `corpus/<target>/seed-*`: valid inputs for
//! libFuzzer to mutate from (a batch per codec, a small bomb, a segment, metadata values,
//! requests). Run after a format changes: `cargo run --example seeds` in `tests/fuzz`.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use silt_api::v1;
use silt_metadata::codec::{self, CleanupPolicy, OwnerRecord, SegmentCommit, TopicRecord};
use silt_storage::batch::testing::{CODECS, compress, raw_batch, zero_records};
use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};
use silt_storage::segment::SegmentWriter;

fn records(n: usize) -> Vec<RecordData> {
    (0..n)
        .map(|i| RecordData {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("{{\"n\":{i}}}"))),
            headers: vec![("h".into(), Some(Bytes::from_static(b"v")))],
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn main() {
    let plain = encode_batch(&records(3), BatchCompression::None, ProducerInfo::default()).unwrap();
    write("batch", "none", &plain);
    for codec in CODECS {
        let b = encode_batch(&records(3), codec, ProducerInfo::default()).unwrap();
        write("batch", &format!("{codec:?}").to_lowercase(), &b);
        let bomb = raw_batch(codec, 64, &compress(codec, zero_records(64, 1 << 10)));
        write("batch", &format!("{codec:?}-zeros").to_lowercase(), &bomb);
    }

    let mut writer = SegmentWriter::new(1_700_000_000_000, 1 << 12);
    writer.begin_entry(7, 0);
    writer.push_batch(&plain, 0, 3, 1_700_000_000_002, 1_700_000_000_000);
    writer.begin_entry(7, 1);
    writer.push_batch(&plain, 10, 3, 1_700_000_000_002, 1_700_000_000_000);
    let (segment, entries) = writer.finish_bytes();
    write("segment", "two-entries", &segment);
    let first = &entries[0];
    let stored =
        &segment[first.position as usize..(first.position + u64::from(first.length)) as usize];
    write("stored_batches", "one", stored);
    let mut two = stored.to_vec();
    two.extend_from_slice(stored);
    write("stored_batches", "two", &two);

    let topic = TopicRecord {
        v: 1,
        name: "t".into(),
        partitions: 3,
        retention_ms: -1,
        retention_bytes: -1,
        max_record_bytes: 1 << 20,
        created_at_ms: 0,
        cleanup_policy: CleanupPolicy::CompactDelete,
        delete_retention_ms: 86_400_000,
    };
    write("metadata_values", "topic", &codec::encode_topic(&topic));
    let commit = SegmentCommit {
        object: "segments/b/0-1.seg".into(),
        object_len: segment.len() as u64,
        created_at_ms: 0,
        entries: entries.clone(),
    };
    write(
        "metadata_values",
        "segment",
        &codec::encode_segment(&commit),
    );
    write(
        "metadata_values",
        "log-starts",
        &codec::encode_log_starts(&[0, 5, 9]),
    );
    let owner = OwnerRecord {
        v: 1,
        broker_id: "b".into(),
        epoch: 3,
    };
    write("metadata_values", "owner", &codec::encode_owner(&owner));

    let produce = v1::ProduceBatchesRequest {
        topic: "t".into(),
        batches: vec![v1::PartitionBatch {
            partition: 0,
            batch: plain.clone(),
        }],
    };
    write("grpc_requests", "produce-batches", &produce.encode_to_vec());
    let fetch = v1::FetchRequest {
        topic: "t".into(),
        partition: 1,
        offset: 5,
        max_bytes: 1 << 20,
        ..Default::default()
    };
    write("grpc_requests", "fetch", &fetch.encode_to_vec());
    let records = v1::ProduceRequest {
        topic: "t".into(),
        records: vec![v1::Record {
            key: Some(Bytes::from_static(b"k")),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        }],
    };
    write("grpc_requests", "produce", &records.encode_to_vec());
}
