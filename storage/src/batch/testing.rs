//! Builders of hostile batches for tests (here, in the integration suite and in the fuzz
//! targets): a RecordBatch v2 around any record stream, compressed with any codec —
//! compression bombs, lying lengths — and the batch fuzz target's body.

use std::io::Write;

use kafka_protocol::records::Compression;

use super::{ATTRIBUTES_POS, BATCH_HEADER_LEN, CRC_POS};

/// Compresses what `write` writes with `codec`, as Kafka clients frame it.
pub fn compress(codec: Compression, write: impl FnOnce(&mut dyn std::io::Write)) -> Vec<u8> {
    match codec {
        Compression::None => {
            let mut out = Vec::new();
            write(&mut out);
            out
        }
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            write(&mut e);
            e.finish().unwrap()
        }
        Compression::Snappy => {
            // snappy-java framing, as Kafka's Java client writes it: 32 KiB blocks.
            let mut raw = Vec::new();
            write(&mut raw);
            let mut out = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
            let mut encoder = snap::raw::Encoder::new();
            for block in raw.chunks(32 << 10) {
                let c = encoder.compress_vec(block).unwrap();
                out.extend_from_slice(&(c.len() as u32).to_be_bytes());
                out.extend_from_slice(&c);
            }
            out
        }
        Compression::Lz4 => {
            let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
            write(&mut e);
            let (out, result) = e.finish();
            result.unwrap();
            out
        }
        Compression::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
            write(&mut e);
            let _ = e.flush();
            e.finish().unwrap()
        }
    }
}

/// Every compression codec.
pub const CODECS: [Compression; 4] = [
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

/// A codec's value in the batch attributes.
pub fn codec_bits(codec: Compression) -> i16 {
    match codec {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
    }
}

/// A RecordBatch v2 around an already compressed record stream, with a correct CRC.
pub fn raw_batch(codec: Compression, count: i32, compressed: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + compressed.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((BATCH_HEADER_LEN - 12 + compressed.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&codec_bits(codec).to_be_bytes());
    b.extend_from_slice(&(count - 1).to_be_bytes());
    b.extend_from_slice(&1i64.to_be_bytes());
    b.extend_from_slice(&1i64.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    assert_eq!(b.len(), BATCH_HEADER_LEN);
    b.extend_from_slice(compressed);
    let crc = crc32c::crc32c(&b[ATTRIBUTES_POS..]);
    b[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Kafka's zigzag varint of `v`.
pub fn zigzag(v: i64) -> Vec<u8> {
    let mut raw = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (raw & 0x7f) as u8;
        raw >>= 7;
        if raw == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// The body of record `index` (attributes, deltas, a null key, a value of zeros, no headers),
/// exactly `size` bytes long (at least 8).
pub fn record_body(index: usize, size: usize) -> Vec<u8> {
    let head = |value_len: usize| {
        let mut b = vec![0u8, 0u8];
        b.extend(zigzag(index as i64));
        b.extend(zigzag(-1));
        b.extend(zigzag(value_len as i64));
        b
    };
    // The value's length prefix grows with the value: settle on a length that fits exactly.
    let mut value_len = size.saturating_sub(head(0).len() + 1);
    while head(value_len).len() + value_len + 1 > size && value_len > 0 {
        value_len -= 1;
    }
    let mut body = head(value_len);
    body.resize(body.len() + value_len, 0);
    body.push(0); // no headers
    body
}

/// `count` valid records whose bodies are `size` bytes (mostly zeros), as a record stream.
pub fn zero_records(count: usize, size: usize) -> impl FnOnce(&mut dyn std::io::Write) {
    move |w| {
        for i in 0..count {
            let body = record_body(i, size);
            w.write_all(&zigzag(body.len() as i64)).unwrap();
            w.write_all(&body).unwrap();
        }
    }
}

/// The body of the batch fuzz target (and of its corpus replay): `data` becomes a batch whose
/// length field and CRC are made right — so the fuzzer's mutations reach the attributes, the
/// record count, the codecs and the record walk instead of dying at the CRC — and is validated
/// under tight and loose limits. It must never panic, hang or allocate without bound; what it
/// accepts must be exactly what a second validation accepts.
pub fn fuzz_batch(data: &[u8]) {
    let mut b = data.to_vec();
    if b.len() >= BATCH_HEADER_LEN {
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[16] = 2;
        let crc = crc32c::crc32c(&b[ATTRIBUTES_POS..]);
        b[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    }
    for limits in [
        super::BatchLimits {
            max_batch_bytes: 1 << 20,
            max_record_bytes: 1 << 10,
            max_uncompressed_bytes: 1 << 20,
        },
        super::BatchLimits {
            max_batch_bytes: 8 << 20,
            max_record_bytes: 1 << 20,
            max_uncompressed_bytes: 64 << 20,
        },
    ] {
        let first = super::validate_batch(&b, &limits);
        assert_eq!(first, super::validate_batch(&b, &limits));
        if let Ok(valid) = first {
            assert!(valid.record_count >= 1);
            assert!(valid.uncompressed_bytes <= limits.max_uncompressed_bytes);
        }
    }
}
