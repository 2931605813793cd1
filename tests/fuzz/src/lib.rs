//! The bodies of Silt's fuzz targets: one function per decoder that takes bytes from the
//! network or the stores. `cargo fuzz` runs them under libFuzzer (`fuzz_targets/`); the
//! integration suite replays the committed corpus through the same functions on every test run
//! (`tests/tests/fuzz_corpus.rs` includes this file), so a crash the fuzzer once found stays
//! fixed. Each must never panic, hang, or allocate without bound, whatever the bytes.

use prost::Message;
use silt_api::v1;
use silt_metadata::codec;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("batch", batch),
    ("segment", segment),
    ("stored_batches", stored_batches),
    ("metadata_values", metadata_values),
    ("grpc_requests", grpc_requests),
];

/// A produced RecordBatch v2 (length and CRC made right, so mutations reach the codecs and the
/// record walk).
pub fn batch(data: &[u8]) {
    silt_storage::batch::testing::fuzz_batch(data);
}

/// A segment object as read back from the store.
pub fn segment(data: &[u8]) {
    let _ = silt_storage::segment::decode_segment(data);
    if let Some(tail) = data.len().checked_sub(silt_storage::segment::FOOTER_LEN) {
        let _ = silt_storage::segment::decode_footer(&data[tail..]);
    }
}

/// Batches as a fetch returns them, as a client splits and decodes them.
pub fn stored_batches(data: &[u8]) {
    let bytes = bytes::Bytes::copy_from_slice(data);
    for part in silt_storage::batch::split_batches(&bytes) {
        if part.is_err() {
            break;
        }
    }
    let _ = silt_storage::batch::decode_batches(bytes, 0);
}

/// Values read from the metadata store (written by another broker, another version, or
/// damaged).
pub fn metadata_values(data: &[u8]) {
    let key = b"/silt/fuzz/x";
    let _ = codec::decode_topic(key, data);
    let _ = codec::decode_segment(key, data);
    let _ = codec::decode_log_starts(key, data);
    let _ = codec::decode_owner(key, data);
    let _ = codec::decode_broker(key, data);
    let _ = codec::decode_controller(key, data);
}

/// gRPC request bodies as the broker receives them; the batches of a ProduceBatches request go
/// through the broker's batch validation.
pub fn grpc_requests(data: &[u8]) {
    if let Ok(req) = v1::ProduceBatchesRequest::decode(data) {
        for b in req.batches.iter().take(16) {
            batch(&b.batch);
        }
    }
    let _ = v1::ProduceRequest::decode(data);
    let _ = v1::FetchRequest::decode(data);
    let _ = v1::SubscribeRequest::decode(data);
    let _ = v1::ListOffsetsRequest::decode(data);
    let _ = v1::CreateTopicRequest::decode(data);
}
