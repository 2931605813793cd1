//! Kafka RecordBatch v2: the one format records have in flight and at rest.
//!
//! Clients encode batches (the Rust client, Kafka clients later); the broker only *validates*
//! them with [`validate_batch`] — length, magic, CRC32C, attributes, record count and the
//! per-record size limit — and then stores the bytes as they are: nothing is decoded and
//! re-encoded on the produce fast path. The only byte the broker changes is the base offset
//! (bytes 0..8, outside the CRC), set when the batch is laid into a segment
//! ([`crate::segment`]).
//!
//! Encoding and full decoding go through the `kafka-protocol` crate ([`encode_batch`],
//! [`decode_batches`]); the header fields the fast path needs are read at their fixed positions
//! ([`BatchHeader`]) and cross-checked against `kafka-protocol` in the tests.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record,
    RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::error::BatchError;

pub use kafka_protocol::records::Compression as BatchCompression;

/// Bytes of the RecordBatch v2 header, up to and including the record count.
pub const BATCH_HEADER_LEN: usize = 61;

const LENGTH_POS: usize = 8;
const MAGIC_POS: usize = 16;
const CRC_POS: usize = 17;
const ATTRIBUTES_POS: usize = 21;
const LAST_OFFSET_DELTA_POS: usize = 23;
const BASE_TIMESTAMP_POS: usize = 27;
const MAX_TIMESTAMP_POS: usize = 35;
const PRODUCER_ID_POS: usize = 43;
const PRODUCER_EPOCH_POS: usize = 51;
const BASE_SEQUENCE_POS: usize = 53;
const RECORD_COUNT_POS: usize = 57;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// KIP-534: the base timestamp holds the batch's delete horizon, the instant from which key
/// compaction may drop its tombstones (record timestamps stay base + delta).
const ATTR_DELETE_HORIZON: i16 = 0x40;

/// Limits a batch must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Largest whole batch, in bytes.
    pub max_batch_bytes: usize,
    /// Largest single record as encoded in the batch (its length-prefixed body), in bytes.
    pub max_record_bytes: usize,
    /// Most bytes the batch's records may take once decompressed (a compressed batch is refused
    /// as soon as its stream passes this, without decompressing the rest).
    pub max_uncompressed_bytes: u64,
}

/// The header fields of a RecordBatch v2 the broker uses, read at their fixed positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the header of `batch` without checking anything but its length.
    pub fn read(batch: &[u8]) -> Result<Self, BatchError> {
        if batch.len() < BATCH_HEADER_LEN {
            return Err(BatchError::TooShort { len: batch.len() });
        }
        Ok(Self {
            base_offset: be_i64(batch, 0),
            attributes: be_i16(batch, ATTRIBUTES_POS),
            last_offset_delta: be_i32(batch, LAST_OFFSET_DELTA_POS),
            base_timestamp: be_i64(batch, BASE_TIMESTAMP_POS),
            max_timestamp: be_i64(batch, MAX_TIMESTAMP_POS),
            producer_id: be_i64(batch, PRODUCER_ID_POS),
            producer_epoch: be_i16(batch, PRODUCER_EPOCH_POS),
            base_sequence: be_i32(batch, BASE_SEQUENCE_POS),
            record_count: be_i32(batch, RECORD_COUNT_POS),
        })
    }

    /// The compression codec, if it is one Kafka defines.
    pub fn compression(&self) -> Option<Compression> {
        match self.attributes & ATTR_COMPRESSION_MASK {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// The delete horizon key compaction stamped on the batch (KIP-534), if any.
    pub fn delete_horizon(&self) -> Option<i64> {
        (self.attributes & ATTR_DELETE_HORIZON != 0).then_some(self.base_timestamp)
    }

    /// The earliest record timestamp the header tells: the base timestamp, unless it holds a
    /// delete horizon (then only the max timestamp is known).
    pub fn min_timestamp(&self) -> i64 {
        match self.delete_horizon() {
            Some(_) => self.max_timestamp,
            None => self.base_timestamp.min(self.max_timestamp),
        }
    }

    /// The offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
}

/// What validation learned about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidBatch {
    pub header: BatchHeader,
    /// Number of records (at least 1).
    pub record_count: u32,
    /// Bytes of its records once decompressed (their stored size when not compressed).
    pub uncompressed_bytes: u64,
    /// Records with a null key (refused by compacted topics, which keep records by key).
    pub null_keys: u32,
}

/// Checks that `batch` is one well-formed RecordBatch v2 within `limits`, without decoding
/// uncompressed records (their length prefixes are walked); compressed records are streamed
/// through their codec and walked the same way, never held whole, and refused past
/// `max_uncompressed_bytes` ([`decompress`]). Control batches are refused: only the broker
/// writes them.
pub fn validate_batch(batch: &[u8], limits: &BatchLimits) -> Result<ValidBatch, BatchError> {
    if batch.len() < BATCH_HEADER_LEN {
        return Err(BatchError::TooShort { len: batch.len() });
    }
    if batch.len() > limits.max_batch_bytes {
        return Err(BatchError::BatchTooLarge {
            len: batch.len(),
            limit: limits.max_batch_bytes,
        });
    }
    let declared = i64::from(be_i32(batch, LENGTH_POS));
    if declared != (batch.len() - 12) as i64 {
        return Err(BatchError::LengthMismatch {
            declared,
            actual: batch.len() - 12,
        });
    }
    let magic = batch[MAGIC_POS] as i8;
    if magic != 2 {
        return Err(BatchError::BadMagic { magic });
    }
    let expected = u32::from_be_bytes([
        batch[CRC_POS],
        batch[CRC_POS + 1],
        batch[CRC_POS + 2],
        batch[CRC_POS + 3],
    ]);
    let actual = crc32c::crc32c(&batch[ATTRIBUTES_POS..]);
    if expected != actual {
        return Err(BatchError::BadCrc { expected, actual });
    }
    let header = BatchHeader::read(batch)?;
    let Some(compression) = header.compression() else {
        return Err(BatchError::BadCompression {
            attributes: header.attributes,
            codec: header.attributes & ATTR_COMPRESSION_MASK,
        });
    };
    if header.is_control() {
        return Err(BatchError::ControlBatch);
    }
    if header.delete_horizon().is_some() {
        return Err(BatchError::DeleteHorizonSet);
    }
    let count = header.record_count;
    if count < 1 {
        return Err(BatchError::BadRecordCount {
            declared: count,
            reason: "a batch must hold at least one record".into(),
        });
    }
    if header.last_offset_delta != count - 1 {
        return Err(BatchError::BadRecordCount {
            declared: count,
            reason: format!(
                "its last offset delta is {} (must be record count - 1 = {})",
                header.last_offset_delta,
                count - 1
            ),
        });
    }
    let (uncompressed_bytes, null_keys) = if compression == Compression::None {
        let records = &batch[BATCH_HEADER_LEN..];
        if records.len() as u64 > limits.max_uncompressed_bytes {
            return Err(BatchError::DecompressedTooLarge {
                limit: limits.max_uncompressed_bytes,
                budget: limits.max_uncompressed_bytes,
            });
        }
        let null_keys = walk_records(
            records,
            count,
            limits.max_record_bytes,
            header.base_timestamp,
        )?;
        (records.len() as u64, null_keys)
    } else {
        decompress::check_records(
            compression,
            &batch[BATCH_HEADER_LEN..],
            count,
            limits.max_record_bytes,
            limits.max_uncompressed_bytes,
            header.base_timestamp,
        )?
    };
    Ok(ValidBatch {
        header,
        record_count: count as u32,
        uncompressed_bytes,
        null_keys,
    })
}

/// Walks the length prefixes of `count` uncompressed records: they must exactly fill `records`
/// and each must be within `max_record_bytes`. Returns how many have a null key.
fn walk_records(
    records: &[u8],
    count: i32,
    max_record_bytes: usize,
    base_timestamp: i64,
) -> Result<u32, BatchError> {
    let mut pos = 0usize;
    let mut null_keys = 0u32;
    for index in 0..count as usize {
        let (len, width) =
            read_varint(&records[pos..]).ok_or_else(|| BatchError::BadRecordCount {
                declared: count,
                reason: format!("record {index} has no valid length prefix"),
            })?;
        if len < 0 {
            return Err(BatchError::BadRecordCount {
                declared: count,
                reason: format!("record {index} has negative length {len}"),
            });
        }
        let len = len as usize;
        if len > max_record_bytes {
            return Err(BatchError::RecordTooLarge {
                index,
                len,
                limit: max_record_bytes,
            });
        }
        let start = pos + width;
        pos = pos
            .checked_add(width + len)
            .filter(|end| *end <= records.len())
            .ok_or_else(|| BatchError::BadRecordCount {
                declared: count,
                reason: format!("record {index} ({len} bytes) runs past the end of the batch"),
            })?;
        if !check_record(&records[start..pos], index, base_timestamp)? {
            null_keys += 1;
        }
    }
    if pos != records.len() {
        return Err(BatchError::BadRecordCount {
            declared: count,
            reason: format!("{} bytes follow the last record", records.len() - pos),
        });
    }
    Ok(null_keys)
}

/// Where the fields of one record sit in its body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordLayout {
    timestamp_delta: i64,
    offset_delta: i64,
    /// Byte ranges in the body; `None` for a null key or value.
    key: Option<std::ops::Range<usize>>,
    value: Option<std::ops::Range<usize>>,
    /// `(key, value)` ranges of each header.
    headers: Vec<(std::ops::Range<usize>, Option<std::ops::Range<usize>>)>,
}

/// Checks one record's body (what follows its length prefix), as Kafka's broker does for v2
/// batches: attributes, a timestamp delta that does not overflow the batch's base timestamp,
/// an offset delta equal to the record's index, then key, value and headers that fill the body
/// exactly. A record that passes decodes the same in every Kafka client, so nothing stored can
/// trip a reader. Returns whether the record has a key.
fn check_record(body: &[u8], index: usize, base_timestamp: i64) -> Result<bool, BatchError> {
    let dense = index as i64..=index as i64;
    parse_record(body, index, base_timestamp, dense).map(|r| r.key.is_some())
}

/// [`check_record`], returning where the fields are: the one record parser of Silt (produce
/// validation and reading both use it). The offset delta must lie in `deltas`: exactly the
/// record's index in a produced batch; past the previous record's, up to the batch's last
/// offset delta, in a stored one (key compaction leaves gaps, as Kafka's log cleaner does).
fn parse_record(
    body: &[u8],
    index: usize,
    base_timestamp: i64,
    deltas: std::ops::RangeInclusive<i64>,
) -> Result<RecordLayout, BatchError> {
    let bad = |reason: String| BatchError::BadRecord { index, reason };
    if body.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let mut pos = 1; // attributes
    // `what` and `suffix` name the field for an error only: the message is built when a
    // record is refused, never for a valid one (this runs for every record produced).
    let varint = |what: &str, suffix: &str, pos: &mut usize| -> Result<i64, BatchError> {
        let (v, width) = body
            .get(*pos..)
            .and_then(read_varint)
            .ok_or_else(|| bad(format!("its {what}{suffix} is not a valid varint")))?;
        *pos += width;
        Ok(v)
    };
    let timestamp_delta = varint("timestamp delta", "", &mut pos)?;
    if base_timestamp.checked_add(timestamp_delta).is_none() {
        return Err(bad(format!(
            "its timestamp delta {timestamp_delta} overflows the batch's base timestamp"
        )));
    }
    let offset_delta = varint("offset delta", "", &mut pos)?;
    if !deltas.contains(&offset_delta) {
        return Err(bad(if deltas.start() == deltas.end() {
            format!(
                "its offset delta is {offset_delta}; record {index} of a batch must have {index}"
            )
        } else {
            format!(
                "its offset delta is {offset_delta}; it must lie in {}..={} (after the previous record's, within the batch)",
                deltas.start(),
                deltas.end()
            )
        }));
    }
    // A length-prefixed field: -1 (null) or a length within the body.
    let field = |what: &str, nullable: bool, pos: &mut usize| {
        let len = varint(what, " length", pos)?;
        if len == -1 && nullable {
            return Ok(None);
        }
        if len < 0 {
            return Err(bad(format!("its {what} length is {len}")));
        }
        let start = *pos;
        *pos = pos
            .checked_add(len as usize)
            .filter(|end| *end <= body.len())
            .ok_or_else(|| bad(format!("its {what} runs past the end of the record")))?;
        Ok(Some(start..*pos))
    };
    let key = field("key", true, &mut pos)?;
    let value = field("value", true, &mut pos)?;
    let count = varint("header count", "", &mut pos)?;
    if count < 0 || count as usize > body.len() {
        return Err(bad(format!("its header count is {count}")));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let k = field("header key", false, &mut pos)?.unwrap_or_default();
        let v = field("header value", true, &mut pos)?;
        headers.push((k, v));
    }
    if pos != body.len() {
        return Err(bad(format!(
            "{} bytes follow its last header",
            body.len() - pos
        )));
    }
    Ok(RecordLayout {
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers,
    })
}

/// Key + value + header bytes of a record: the size limit's measure for decoded records.
fn record_payload_len(record: &Record) -> usize {
    record.key.as_ref().map_or(0, Bytes::len)
        + record.value.as_ref().map_or(0, Bytes::len)
        + record
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
            .sum::<usize>()
}

/// Appends `value` as a zigzag varint (Kafka's varint).
fn put_varint(out: &mut BytesMut, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.extend_from_slice(&[(raw as u8) | 0x80]);
        raw >>= 7;
    }
    out.extend_from_slice(&[raw as u8]);
}

/// Reads a zigzag varint (Kafka's varint); returns the value and its width in bytes.
fn read_varint(buf: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, byte) in buf.iter().take(10).enumerate() {
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            return Some((value, i + 1));
        }
    }
    None
}

/// Sets the base offset of a batch in place (bytes 0..8; not covered by the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    if batch.len() >= 8 {
        batch[..8].copy_from_slice(&base_offset.to_be_bytes());
    }
}

/// A record to encode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordData {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp_ms: i64,
}

/// Producer identity carried by a batch (idempotent and transactional produce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for ProducerInfo {
    fn default() -> Self {
        Self {
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
        }
    }
}

/// Encodes `records` as one RecordBatch v2 with base offset 0 through `kafka-protocol`.
pub fn encode_batch(
    records: &[RecordData],
    compression: Compression,
    producer: ProducerInfo,
) -> Result<Bytes, BatchError> {
    if records.is_empty() {
        return Err(BatchError::BadRecordCount {
            declared: 0,
            reason: "a batch must hold at least one record".into(),
        });
    }
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: producer.producer_id,
            producer_epoch: producer.producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps records in one batch while offset - sequence is constant, and
            // derives the header's base sequence from the first record: NO_SEQUENCE stays -1.
            sequence: producer.base_sequence.wrapping_add(i as i32),
            timestamp: r.timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut buf = BytesMut::with_capacity(estimate_len(&records));
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| BatchError::Undecodable(e.to_string()))?;
    Ok(buf.freeze())
}

fn estimate_len(records: &[Record]) -> usize {
    BATCH_HEADER_LEN
        + records
            .iter()
            .map(|r| record_payload_len(r) + 24)
            .sum::<usize>()
}

/// A record read back from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Most bytes one batch's records may decompress to when read (what a produce request may
/// decompress to at most, by default).
const MAX_DECODED_BATCH: u64 = 256 << 20;

/// Decodes concatenated batches (as a segment range holds them), dropping control batches and
/// records below `min_offset`. Every batch is parsed with Silt's own record parser (the one
/// produce validation uses) — never trusting a count, a length or an offset it has not
/// checked — so bytes from a damaged or hostile server are an error, never a crash or a huge
/// allocation. Keys, values and headers of uncompressed batches point into `bytes` (no copy).
pub fn decode_batches(bytes: Bytes, min_offset: i64) -> Result<Vec<DecodedRecord>, BatchError> {
    let mut out = Vec::new();
    for item in split_batches(&bytes) {
        let (header, batch) = item?;
        decode_batch(&header, &batch, min_offset, &mut out)?;
    }
    Ok(out)
}

fn decode_batch(
    header: &BatchHeader,
    batch: &Bytes,
    min_offset: i64,
    out: &mut Vec<DecodedRecord>,
) -> Result<(), BatchError> {
    if header.is_control() {
        check_magic(batch)?;
        return Ok(());
    }
    let log_append_time = header.attributes & ATTR_LOG_APPEND_TIME != 0;
    let records = stored_records(header, batch)?;
    // Never trust the count for an allocation: a record takes at least 7 bytes.
    out.reserve((header.record_count.max(0) as usize).min(records.len() / 7 + 1));
    walk_stored(header, &records, |index, _, body, layout| {
        let offset = header.base_offset + layout.offset_delta;
        if offset < min_offset {
            return Ok(());
        }
        let slice = |r: &std::ops::Range<usize>| body.slice(r.clone());
        let headers = layout
            .headers
            .iter()
            .map(|(k, v)| {
                let key = std::str::from_utf8(&body[k.clone()])
                    .map_err(|_| BatchError::BadRecord {
                        index,
                        reason: "a header key is not UTF-8".into(),
                    })?
                    .to_string();
                Ok((key, v.as_ref().map(slice)))
            })
            .collect::<Result<_, BatchError>>()?;
        out.push(DecodedRecord {
            offset,
            timestamp_ms: if log_append_time {
                header.max_timestamp
            } else {
                header.base_timestamp + layout.timestamp_delta
            },
            key: layout.key.as_ref().map(slice),
            value: layout.value.as_ref().map(slice),
            headers,
        });
        Ok(())
    })
}

fn check_magic(batch: &[u8]) -> Result<(), BatchError> {
    let magic = batch.get(MAGIC_POS).map_or(0, |m| *m as i8);
    if magic != 2 {
        return Err(BatchError::BadMagic { magic });
    }
    Ok(())
}

/// The records of a stored batch, decompressed (a slice of `batch` when not compressed), after
/// checking what a reader must not trust: the magic, the codec, a representable offset range.
fn stored_records(header: &BatchHeader, batch: &Bytes) -> Result<Bytes, BatchError> {
    check_magic(batch)?;
    let count = header.record_count;
    if count < 0
        || header.base_offset < 0
        || header.base_offset.checked_add(i64::from(count)).is_none()
        || header.last_offset_delta < 0
        || header
            .base_offset
            .checked_add(i64::from(header.last_offset_delta))
            .is_none()
    {
        return Err(BatchError::Undecodable(format!(
            "a batch at offset {} with {count} records and last offset delta {} cannot be represented",
            header.base_offset, header.last_offset_delta
        )));
    }
    match header.compression() {
        Some(Compression::None) => Ok(batch.slice(BATCH_HEADER_LEN..)),
        Some(codec) => Ok(Bytes::from(decompress::decompress(
            codec,
            &batch[BATCH_HEADER_LEN..],
            MAX_DECODED_BATCH,
        )?)),
        None => Err(BatchError::BadCompression {
            attributes: header.attributes,
            codec: header.attributes & ATTR_COMPRESSION_MASK,
        }),
    }
}

/// Walks the records of a stored batch (`records` from [`stored_records`]), parsing each:
/// `f` gets its index, its whole byte range in `records` (length prefix included), its body
/// and where the body's fields are. Offset deltas must increase and stay within the batch's
/// last offset delta: a batch key compaction thinned has gaps, never disorder.
fn walk_stored(
    header: &BatchHeader,
    records: &Bytes,
    mut f: impl FnMut(usize, std::ops::Range<usize>, Bytes, RecordLayout) -> Result<(), BatchError>,
) -> Result<(), BatchError> {
    let count = header.record_count;
    // A record takes at least 7 bytes: a count beyond that is a lie, not an allocation.
    if count as usize > records.len() / 7 + 1 {
        return Err(BatchError::BadRecordCount {
            declared: count,
            reason: format!("the batch holds only {} bytes of records", records.len()),
        });
    }
    let last_delta = i64::from(header.last_offset_delta);
    let mut next_delta = 0i64;
    let mut pos = 0usize;
    for index in 0..count as usize {
        let (len, width) = records
            .get(pos..)
            .and_then(read_varint)
            .filter(|(len, _)| *len >= 0)
            .ok_or_else(|| BatchError::BadRecordCount {
                declared: count,
                reason: format!("record {index} has no valid length"),
            })?;
        let start = pos + width;
        let end = start
            .checked_add(len as usize)
            .filter(|end| *end <= records.len())
            .ok_or_else(|| BatchError::BadRecordCount {
                declared: count,
                reason: format!("record {index} runs past the end of the batch"),
            })?;
        let body = records.slice(start..end);
        let layout = parse_record(&body, index, header.base_timestamp, next_delta..=last_delta)?;
        next_delta = layout.offset_delta + 1;
        f(index, pos..end, body, layout)?;
        pos = end;
    }
    if pos != records.len() {
        return Err(BatchError::BadRecordCount {
            declared: count,
            reason: format!("{} bytes follow the last record", records.len() - pos),
        });
    }
    Ok(())
}

/// One record of a stored batch, as key compaction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedRecord<'a> {
    pub offset: i64,
    pub timestamp_ms: i64,
    /// `None`: a null key.
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone in a compacted topic.
    pub null_value: bool,
    /// The batch's delete horizon, if key compaction stamped one (KIP-534).
    pub delete_horizon: Option<i64>,
}

impl KeyedRecord<'_> {
    /// A tombstone: a keyed record with a null value.
    pub fn is_tombstone(&self) -> bool {
        self.null_value && self.key.is_some()
    }
}

/// What [`retain_records`] left of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retained {
    /// Every record stays: the batch is kept as it is.
    All,
    /// No record stays: the batch goes.
    Nothing,
    /// Some records stay: the batch rewritten with them alone.
    Some(Bytes),
}

/// Key compaction's view of a stored batch: calls `keep` on each record in offset order and
/// rewrites the batch with the records it keeps, as Kafka's log cleaner does — same base
/// offset, last offset delta, timestamps, producer fields and codec; each kept record's bytes
/// as they were (its offset delta is relative to the unchanged base offset); the record count,
/// length and CRC32C recomputed. Control batches and empty batches are kept whole and `keep` is
/// not called for them.
///
/// `stamp`: the delete horizon to set (KIP-534) on a batch that keeps a tombstone and has
/// none yet. The base timestamp then holds the horizon and each record's timestamp delta is
/// rewritten against it, so every record keeps its timestamp. The caller drops a tombstone
/// only once its batch's horizon passed: a tombstone stays at least the delete retention after
/// the compaction that first saw it, however old its own timestamp. The caller reads the
/// horizon a batch ends up with from its header: a batch whose timestamps cannot be written
/// against the horizon (beyond the i64 range) is left unstamped.
pub fn retain_records(
    header: &BatchHeader,
    batch: &Bytes,
    stamp: Option<i64>,
    mut keep: impl FnMut(&KeyedRecord<'_>) -> bool,
) -> Result<Retained, BatchError> {
    if header.is_control() || header.record_count == 0 {
        return Ok(Retained::All);
    }
    let log_append_time = header.attributes & ATTR_LOG_APPEND_TIME != 0;
    let delete_horizon = header.delete_horizon();
    let records = stored_records(header, batch)?;
    let mut kept: Vec<std::ops::Range<usize>> = Vec::new();
    let mut count = 0i32;
    let mut dropped = false;
    let mut kept_tombstone = false;
    walk_stored(header, &records, |_, whole, body, layout| {
        let record = KeyedRecord {
            offset: header.base_offset + layout.offset_delta,
            timestamp_ms: if log_append_time {
                header.max_timestamp
            } else {
                header.base_timestamp + layout.timestamp_delta
            },
            key: layout.key.as_ref().map(|k| &body[k.clone()]),
            null_value: layout.value.is_none(),
            delete_horizon,
        };
        if keep(&record) {
            count += 1;
            kept_tombstone |= record.is_tombstone();
            // Adjacent kept records are one range: copied in one go below.
            match kept.last_mut() {
                Some(last) if last.end == whole.start => last.end = whole.end,
                _ => kept.push(whole),
            }
        } else {
            dropped = true;
        }
        Ok(())
    })?;
    let mut stamp = stamp.filter(|_| kept_tombstone && delete_horizon.is_none());
    if kept.is_empty() {
        return Ok(Retained::Nothing);
    }
    let mut plain = BytesMut::with_capacity(kept.iter().map(|r| r.len()).sum());
    if let Some(horizon) = stamp {
        // Every record's delta moves to the horizon (a log-append-time batch's deltas too, so
        // none overflows the new base). A timestamp too far from the horizon to be written
        // against it leaves the batch unstamped: its tombstones then stay.
        for range in &kept {
            let kept = &records[range.clone()];
            if rebase_records(kept, header.base_timestamp, horizon, &mut plain).is_err() {
                plain.clear();
                stamp = None;
                break;
            }
        }
    }
    if stamp.is_none() {
        if !dropped {
            return Ok(Retained::All);
        }
        for range in &kept {
            plain.extend_from_slice(&records[range.clone()]);
        }
    }
    let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + plain.len());
    out.extend_from_slice(&batch[..BATCH_HEADER_LEN]);
    if let Some(horizon) = stamp {
        let attributes = header.attributes | ATTR_DELETE_HORIZON;
        out[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attributes.to_be_bytes());
        out[BASE_TIMESTAMP_POS..BASE_TIMESTAMP_POS + 8].copy_from_slice(&horizon.to_be_bytes());
    }
    match header.compression() {
        Some(Compression::None) | None => out.extend_from_slice(&plain),
        Some(codec) => compress_into(codec, &plain, &mut out)?,
    }
    finish_header(&mut out, count);
    Ok(Retained::Some(out.freeze()))
}

/// Appends `records` (whole records, length prefixes included, parsed already) with each one's
/// timestamp delta moved from base `from` to base `to`, so its timestamp stays the same.
fn rebase_records(
    mut records: &[u8],
    from: i64,
    to: i64,
    out: &mut BytesMut,
) -> Result<(), BatchError> {
    let undecodable = || BatchError::Undecodable("a record changed after it was parsed".into());
    while !records.is_empty() {
        let (len, width) = read_varint(records).ok_or_else(undecodable)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| width.checked_add(len))
            .filter(|end| *end <= records.len())
            .ok_or_else(undecodable)?;
        let body = &records[width..end];
        let (delta, delta_width) = body
            .get(1..)
            .and_then(read_varint)
            .ok_or_else(undecodable)?;
        let rebased = from
            .checked_add(delta)
            .and_then(|timestamp| timestamp.checked_sub(to))
            .ok_or_else(|| {
                BatchError::Undecodable(format!(
                    "a record's timestamp cannot be written against the delete horizon {to}"
                ))
            })?;
        let mut field = BytesMut::with_capacity(10);
        put_varint(&mut field, rebased);
        let rest = &body[1 + delta_width..];
        put_varint(out, (1 + field.len() + rest.len()) as i64);
        out.extend_from_slice(&body[..1]);
        out.extend_from_slice(&field);
        out.extend_from_slice(rest);
        records = &records[end..];
    }
    Ok(())
}

/// Compresses `plain` records with `codec` onto `out`.
fn compress_into(codec: Compression, plain: &[u8], out: &mut BytesMut) -> Result<(), BatchError> {
    use bytes::BufMut;
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
    let fill = |buf: &mut BytesMut| {
        buf.put_slice(plain);
        Ok(())
    };
    match codec {
        Compression::None => {
            out.put_slice(plain);
            Ok(())
        }
        Compression::Gzip => Gzip::compress(out, fill),
        Compression::Snappy => Snappy::compress(out, fill),
        Compression::Lz4 => Lz4::compress(out, fill),
        Compression::Zstd => Zstd::compress(out, fill),
    }
    .map_err(|e| BatchError::Undecodable(format!("could not recompress records: {e}")))
}

/// Sets the length, record count and CRC32C of a batch whose header and records are in `out`.
fn finish_header(out: &mut BytesMut, count: i32) {
    let len = (out.len() - 12) as i32;
    out[LENGTH_POS..LENGTH_POS + 4].copy_from_slice(&len.to_be_bytes());
    out[RECORD_COUNT_POS..RECORD_COUNT_POS + 4].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_POS..]);
    out[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// A batch of no records holding offsets `base_offset..=last_offset`: what key compaction
/// leaves where every record of a stretch went, so the stretch still reads (as nothing) and
/// readers move past it. Kafka's format allows it (its log cleaner keeps such batches too).
pub fn empty_batch(base_offset: i64, last_offset: i64, timestamp_ms: i64) -> Bytes {
    let mut out = BytesMut::zeroed(BATCH_HEADER_LEN);
    out[..8].copy_from_slice(&base_offset.to_be_bytes());
    out[MAGIC_POS] = 2;
    let delta = i32::try_from(last_offset - base_offset).unwrap_or(i32::MAX);
    out[LAST_OFFSET_DELTA_POS..LAST_OFFSET_DELTA_POS + 4].copy_from_slice(&delta.to_be_bytes());
    out[BASE_TIMESTAMP_POS..BASE_TIMESTAMP_POS + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
    out[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
    out[PRODUCER_ID_POS..PRODUCER_ID_POS + 8].copy_from_slice(&NO_PRODUCER_ID.to_be_bytes());
    out[PRODUCER_EPOCH_POS..PRODUCER_EPOCH_POS + 2]
        .copy_from_slice(&NO_PRODUCER_EPOCH.to_be_bytes());
    out[BASE_SEQUENCE_POS..BASE_SEQUENCE_POS + 4].copy_from_slice(&NO_SEQUENCE.to_be_bytes());
    finish_header(&mut out, 0);
    out.freeze()
}

/// Splits concatenated batches into `(header, batch bytes)` without copying. Stops with an error
/// at the first batch whose length field does not fit.
pub fn split_batches(
    bytes: &Bytes,
) -> impl Iterator<Item = Result<(BatchHeader, Bytes), BatchError>> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= bytes.len() {
            return None;
        }
        let rest = &bytes[pos..];
        let header = match BatchHeader::read(rest) {
            Ok(h) => h,
            Err(e) => {
                pos = bytes.len();
                return Some(Err(e));
            }
        };
        let len = i64::from(be_i32(rest, LENGTH_POS)) + 12;
        if len < BATCH_HEADER_LEN as i64 || len as usize > rest.len() {
            pos = bytes.len();
            return Some(Err(BatchError::LengthMismatch {
                declared: len - 12,
                actual: rest.len() - 12,
            }));
        }
        let batch = bytes.slice(pos..pos + len as usize);
        pos += len as usize;
        Some(Ok((header, batch)))
    })
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

mod decompress;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
