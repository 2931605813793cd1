//! Segment objects, format v1: the batches of many partitions flushed together as one object.
//!
//! ```text
//! offset 0          header (16 B): "SILT" | version u16 = 1 | flags u16 = 0 | created_at_ms i64
//! offset 16         batches: the Kafka RecordBatch v2 bytes of entry 0, then entry 1, ...
//! index_position    index: entry_count × 64 B
//!                     topic_id u64 | partition u32 | batch_count u32 | first_offset i64 |
//!                     last_offset i64 | min_timestamp i64 | max_timestamp i64 |
//!                     position u64 | length u32 | crc32c u32 (of the entry's batch bytes)
//! len - 32          footer (32 B): index_position u64 | entry_count u32 | index_crc u32 |
//!                     object_length u64 | "SILT" | footer_crc u32 (of the 28 bytes before it)
//! ```
//!
//! All integers are little-endian (the batches inside keep Kafka's big-endian layout). An entry
//! is one partition's contiguous run of batches, so a reader fetches exactly the byte range of
//! the partition it wants; the same entries are committed to metadata, so the index and footer
//! are needed only to inspect or recover an object without metadata. Every decoder here returns
//! an error, never panics, on any input.
//!
//! The writer does not copy large batches: a segment is a list of pieces, each large batch's
//! bytes after its base offset a slice of the buffer it arrived in, and the base offsets,
//! header, small batches, index and footer written into the writer's own buffer. An object
//! store takes the pieces as one upload (`PutPayload` of many `Bytes`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::BatchHeader;
use crate::error::SegmentError;

/// The magic at the start and in the footer of every segment.
pub const SEGMENT_MAGIC: [u8; 4] = *b"SILT";
/// The format version this code writes and reads.
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 16;
/// Bytes of one index entry.
pub const INDEX_ENTRY_LEN: usize = 64;
/// Bytes of the footer.
pub const FOOTER_LEN: usize = 32;

/// One partition's batches inside a segment: written into the segment's index, and committed
/// as is in metadata (the commit's entries are these), which makes the records readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentEntry {
    /// The topic's id.
    pub topic_id: u64,
    /// The partition within the topic.
    pub partition: u32,
    /// Number of batches in the entry (at least 1).
    pub batch_count: u32,
    /// Offset of the entry's first record.
    pub first_offset: i64,
    /// Offset of the entry's last record.
    pub last_offset: i64,
    /// Smallest timestamp of the entry's batches (their first or max timestamps).
    pub min_timestamp: i64,
    /// Largest max timestamp of the entry's batches.
    pub max_timestamp: i64,
    /// Byte offset of the entry's first batch in the object.
    pub position: u64,
    /// Bytes of the entry's batches.
    pub length: u32,
    /// CRC32C of the entry's batch bytes.
    pub crc32c: u32,
}

/// The footer of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Byte offset of the index in the object.
    pub index_position: u64,
    /// Number of index entries.
    pub entry_count: u32,
    /// CRC32C of the index bytes.
    pub index_crc: u32,
    /// Length of the whole object in bytes.
    pub object_length: u64,
}

/// A decoded segment: its creation time and index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSegment {
    /// When the segment was written (from the header), in Unix milliseconds.
    pub created_at_ms: i64,
    /// The index entries, in object order.
    pub entries: Vec<SegmentEntry>,
}

/// Lays batches out as a segment object.
#[derive(Debug)]
pub struct SegmentWriter {
    /// The object's pieces so far, in order; `buf` follows them.
    pieces: Vec<Bytes>,
    /// Bytes written by the writer itself since the last borrowed piece.
    buf: BytesMut,
    /// Bytes of `pieces`.
    sealed: usize,
    entries: Vec<SegmentEntry>,
    open: Option<(SegmentEntry, u32)>,
}

/// Batches at least this long are referenced, not copied, by [`SegmentWriter::push_batch`]:
/// below it a copy costs less than one more piece to carry and send.
pub const BORROW_MIN: usize = 8 << 10;

/// Base offset field of a RecordBatch v2 (big-endian i64 at byte 0); the batch CRC covers only
/// bytes from the attributes (byte 21) on, so rewriting it keeps the batch valid.
const BASE_OFFSET_LEN: usize = 8;

/// End of a RecordBatch v2's CRC32C field (bytes 17..21): what follows is what that CRC covers.
const BATCH_CRC_END: usize = 21;

impl SegmentWriter {
    /// A writer for a segment created at `created_at_ms`; `capacity_hint` pre-sizes the buffer.
    pub fn new(created_at_ms: i64, capacity_hint: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity_hint.max(HEADER_LEN + FOOTER_LEN));
        buf.put_slice(&SEGMENT_MAGIC);
        buf.put_u16_le(SEGMENT_VERSION);
        buf.put_u16_le(0);
        buf.put_i64_le(created_at_ms);
        Self {
            pieces: Vec::new(),
            buf,
            sealed: 0,
            entries: Vec::new(),
            open: None,
        }
    }

    /// Ends the writer's own bytes so far as a piece, so a borrowed one can follow.
    fn seal(&mut self) {
        if !self.buf.is_empty() {
            let piece = self.buf.split().freeze();
            self.sealed += piece.len();
            self.pieces.push(piece);
        }
    }

    /// Starts the entry of `topic_id`/`partition`; the batches pushed next belong to it.
    pub fn begin_entry(&mut self, topic_id: u64, partition: u32) {
        self.close_entry();
        let entry = SegmentEntry {
            topic_id,
            partition,
            batch_count: 0,
            first_offset: 0,
            last_offset: 0,
            min_timestamp: i64::MAX,
            max_timestamp: i64::MIN,
            position: self.len() as u64,
            length: 0,
            crc32c: 0,
        };
        self.open = Some((entry, 0));
    }

    /// Appends one validated RecordBatch v2 with its base offset set to `base_offset`: a
    /// batch of [`BORROW_MIN`] bytes or more is referenced from its base offset on (no copy),
    /// a smaller one copied. The batch's CRC32C field must be right (validation checked it):
    /// the entry's CRC32C is derived from it rather than from a second pass over the bytes, so
    /// a batch whose bytes changed since reads as damaged. Panics if no entry was begun (a bug
    /// in the caller).
    pub fn push_batch(
        &mut self,
        batch: &Bytes,
        base_offset: i64,
        record_count: u32,
        max_timestamp: i64,
        first_timestamp: i64,
    ) {
        assert!(self.open.is_some(), "push_batch before begin_entry");
        let offset = base_offset.to_be_bytes();
        if batch.len() >= BORROW_MIN.max(BATCH_CRC_END) {
            self.buf.put_slice(&offset);
            self.seal();
            let rest = batch.slice(BASE_OFFSET_LEN..);
            self.sealed += rest.len();
            self.pieces.push(rest);
        } else {
            let start = self.buf.len();
            self.buf.put_slice(batch);
            if batch.len() >= BASE_OFFSET_LEN {
                self.buf[start..start + BASE_OFFSET_LEN].copy_from_slice(&offset);
            }
        }
        let Some((entry, crc)) = self.open.as_mut() else {
            return;
        };
        // The batch's own CRC32C (checked when it was produced) covers every byte from its
        // attributes on: only the header before them is CRC'd here, and combined with it.
        *crc = if batch.len() >= BATCH_CRC_END {
            let head = crc32c::crc32c_append(*crc, &offset);
            let head = crc32c::crc32c_append(head, &batch[BASE_OFFSET_LEN..BATCH_CRC_END]);
            let own = u32::from_be_bytes([
                batch[BATCH_CRC_END - 4],
                batch[BATCH_CRC_END - 3],
                batch[BATCH_CRC_END - 2],
                batch[BATCH_CRC_END - 1],
            ]);
            crate::crc::crc32c_combine(head, own, batch.len() - BATCH_CRC_END)
        } else if batch.len() >= BASE_OFFSET_LEN {
            let head = crc32c::crc32c_append(*crc, &offset);
            crc32c::crc32c_append(head, &batch[BASE_OFFSET_LEN..])
        } else {
            crc32c::crc32c_append(*crc, batch)
        };
        if entry.batch_count == 0 {
            entry.first_offset = base_offset;
        }
        entry.batch_count += 1;
        entry.last_offset = base_offset + i64::from(record_count) - 1;
        entry.min_timestamp = entry.min_timestamp.min(first_timestamp).min(max_timestamp);
        entry.max_timestamp = entry.max_timestamp.max(max_timestamp);
        entry.length += batch.len() as u32;
    }

    /// Appends one committed entry's bytes as they are (its batches already carry their
    /// offsets) to the open entry: how compaction copies a partition's entries into one object.
    /// `bytes` is exactly `source`'s range, already checked against its CRC32C by the caller,
    /// so the open entry's CRC is combined from it without reading the bytes again. Panics if
    /// no entry was begun (a bug in the caller).
    pub fn push_entry(&mut self, bytes: &[u8], source: &SegmentEntry) {
        let (entry, crc) = self.open.as_mut().expect("push_entry before begin_entry");
        self.buf.put_slice(bytes);
        *crc = if entry.batch_count == 0 {
            source.crc32c
        } else {
            crate::crc::crc32c_combine(*crc, source.crc32c, bytes.len())
        };
        if entry.batch_count == 0 {
            entry.first_offset = source.first_offset;
        }
        entry.batch_count += source.batch_count;
        entry.last_offset = source.last_offset;
        entry.min_timestamp = entry.min_timestamp.min(source.min_timestamp);
        entry.max_timestamp = entry.max_timestamp.max(source.max_timestamp);
        entry.length += bytes.len() as u32;
    }

    /// Appends a stored batch as it is (its header already carries its offsets): how key
    /// compaction lays out the batches it thinned. The entry's offsets follow the batch
    /// header's base and last offsets (a thinned batch keeps both, gaps and all). Panics if no
    /// entry was begun (a bug in the caller).
    pub fn push_stored_batch(&mut self, batch: &[u8], header: &BatchHeader) {
        let (entry, crc) = self
            .open
            .as_mut()
            .expect("push_stored_batch before begin_entry");
        self.buf.put_slice(batch);
        *crc = crc32c::crc32c_append(*crc, batch);
        if entry.batch_count == 0 {
            entry.first_offset = header.base_offset;
        }
        entry.batch_count += 1;
        entry.last_offset = header.last_offset();
        entry.min_timestamp = entry.min_timestamp.min(header.min_timestamp());
        entry.max_timestamp = entry.max_timestamp.max(header.max_timestamp);
        entry.length += batch.len() as u32;
    }

    /// Sets the offsets the open entry holds, when its batches leave some out at either end
    /// (records key compaction removed): an entry must cover exactly the offsets of the entries
    /// it replaces. Does nothing when no entry is open.
    pub fn set_open_range(&mut self, first_offset: i64, last_offset: i64) {
        if let Some((entry, _)) = self.open.as_mut() {
            entry.first_offset = first_offset;
            entry.last_offset = last_offset;
        }
    }

    /// Bytes written so far (header and batches).
    pub fn len(&self) -> usize {
        self.sealed + self.buf.len()
    }

    /// True before anything but the header was written.
    pub fn is_empty(&self) -> bool {
        self.len() <= HEADER_LEN
    }

    /// Bytes of batches in the entry being written (0 when none is open).
    pub fn open_entry_len(&self) -> u32 {
        self.open.as_ref().map_or(0, |(e, _)| e.length)
    }

    fn close_entry(&mut self) {
        if let Some((mut entry, crc)) = self.open.take()
            && entry.batch_count > 0
        {
            entry.crc32c = crc;
            self.entries.push(entry);
        }
    }

    /// Writes the index and footer; returns the object as its pieces, and its entries.
    pub fn finish(mut self) -> (Vec<Bytes>, Vec<SegmentEntry>) {
        self.close_entry();
        let index_position = self.len() as u64;
        let index_start = self.buf.len();
        for e in &self.entries {
            encode_entry(&mut self.buf, e);
        }
        let index_crc = crc32c::crc32c(&self.buf[index_start..]);
        let object_length = (self.len() + FOOTER_LEN) as u64;
        let footer_start = self.buf.len();
        self.buf.put_u64_le(index_position);
        self.buf.put_u32_le(self.entries.len() as u32);
        self.buf.put_u32_le(index_crc);
        self.buf.put_u64_le(object_length);
        self.buf.put_slice(&SEGMENT_MAGIC);
        let footer_crc = crc32c::crc32c(&self.buf[footer_start..]);
        self.buf.put_u32_le(footer_crc);
        self.seal();
        (self.pieces, self.entries)
    }

    /// [`SegmentWriter::finish`] with the object in one buffer (copied only when it was laid
    /// out in several pieces).
    pub fn finish_bytes(self) -> (Bytes, Vec<SegmentEntry>) {
        let (pieces, entries) = self.finish();
        (concat(pieces), entries)
    }
}

/// The pieces of an object in one buffer: the piece itself when there is one.
pub fn concat(mut pieces: Vec<Bytes>) -> Bytes {
    if pieces.len() == 1 {
        return pieces.pop().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
    for piece in &pieces {
        out.put_slice(piece);
    }
    out.freeze()
}

fn encode_entry(buf: &mut BytesMut, e: &SegmentEntry) {
    buf.put_u64_le(e.topic_id);
    buf.put_u32_le(e.partition);
    buf.put_u32_le(e.batch_count);
    buf.put_i64_le(e.first_offset);
    buf.put_i64_le(e.last_offset);
    buf.put_i64_le(e.min_timestamp);
    buf.put_i64_le(e.max_timestamp);
    buf.put_u64_le(e.position);
    buf.put_u32_le(e.length);
    buf.put_u32_le(e.crc32c);
}

/// Little-endian field reads from a slice whose length was checked by the caller.
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    u64_at(b, at) as i64
}

/// Decodes the 32-byte footer at the end of a segment.
pub fn decode_footer(tail: &[u8]) -> Result<Footer, SegmentError> {
    if tail.len() != FOOTER_LEN {
        return Err(SegmentError::TooShort { len: tail.len() });
    }
    let magic: [u8; 4] = tail[24..28].try_into().unwrap_or_default();
    if magic != SEGMENT_MAGIC {
        return Err(SegmentError::BadMagic { found: magic });
    }
    let expected = u32_at(tail, 28);
    let actual = crc32c::crc32c(&tail[..28]);
    if expected != actual {
        return Err(SegmentError::BadChecksum {
            what: "footer",
            expected,
            actual,
        });
    }
    Ok(Footer {
        index_position: u64_at(tail, 0),
        entry_count: u32_at(tail, 8),
        index_crc: u32_at(tail, 12),
        object_length: u64_at(tail, 16),
    })
}

/// Decodes the index bytes a footer points at, checking its CRC and every entry's bounds.
pub fn decode_index(index: &[u8], footer: &Footer) -> Result<Vec<SegmentEntry>, SegmentError> {
    let expected_len = footer.entry_count as usize * INDEX_ENTRY_LEN;
    if index.len() != expected_len {
        return Err(SegmentError::Malformed(format!(
            "index is {} bytes but the footer declares {} entries ({expected_len} bytes)",
            index.len(),
            footer.entry_count
        )));
    }
    let actual = crc32c::crc32c(index);
    if actual != footer.index_crc {
        return Err(SegmentError::BadChecksum {
            what: "index",
            expected: footer.index_crc,
            actual,
        });
    }
    let mut entries = Vec::with_capacity(footer.entry_count as usize);
    let mut next_position = HEADER_LEN as u64;
    for (i, b) in index.chunks_exact(INDEX_ENTRY_LEN).enumerate() {
        let e = SegmentEntry {
            topic_id: u64_at(b, 0),
            partition: u32_at(b, 8),
            batch_count: u32_at(b, 12),
            first_offset: i64_at(b, 16),
            last_offset: i64_at(b, 24),
            min_timestamp: i64_at(b, 32),
            max_timestamp: i64_at(b, 40),
            position: u64_at(b, 48),
            length: u32_at(b, 56),
            crc32c: u32_at(b, 60),
        };
        let end = e.position.checked_add(u64::from(e.length));
        let bad = if e.position < next_position {
            Some("overlaps the entry before it or the header")
        } else if end.is_none_or(|end| end > footer.index_position) {
            Some("extends past the batches")
        } else if e.first_offset > e.last_offset || e.batch_count == 0 || e.length == 0 {
            Some("is empty or has first offset > last offset")
        } else {
            None
        };
        if let Some(why) = bad {
            return Err(SegmentError::Malformed(format!("index entry {i} {why}")));
        }
        next_position = end.unwrap_or(u64::MAX);
        entries.push(e);
    }
    Ok(entries)
}

/// Decodes and checks a whole segment object: header, footer, index.
pub fn decode_segment(bytes: &[u8]) -> Result<DecodedSegment, SegmentError> {
    if bytes.len() < HEADER_LEN + FOOTER_LEN {
        return Err(SegmentError::TooShort { len: bytes.len() });
    }
    let magic: [u8; 4] = bytes[0..4].try_into().unwrap_or_default();
    if magic != SEGMENT_MAGIC {
        return Err(SegmentError::BadMagic { found: magic });
    }
    let version = u16_at(bytes, 4);
    if version != SEGMENT_VERSION {
        return Err(SegmentError::UnsupportedVersion { version });
    }
    let created_at_ms = i64_at(bytes, 8);
    let footer_at = bytes.len() - FOOTER_LEN;
    let footer = decode_footer(&bytes[footer_at..])?;
    if footer.object_length != bytes.len() as u64 {
        return Err(SegmentError::Malformed(format!(
            "footer says the object is {} bytes but it is {}",
            footer.object_length,
            bytes.len()
        )));
    }
    let index_at = usize::try_from(footer.index_position)
        .ok()
        .filter(|p| (HEADER_LEN..=footer_at).contains(p))
        .ok_or_else(|| {
            SegmentError::Malformed(format!(
                "index position {} is out of bounds",
                footer.index_position
            ))
        })?;
    let entries = decode_index(&bytes[index_at..footer_at], &footer)?;
    Ok(DecodedSegment {
        created_at_ms,
        entries,
    })
}

/// Checks an entry's batch bytes (exactly its range) against its CRC32C.
pub fn verify_entry_range(entry: &SegmentEntry, bytes: &[u8]) -> Result<(), SegmentError> {
    if bytes.len() != entry.length as usize {
        return Err(SegmentError::Malformed(format!(
            "entry range is {} bytes, expected {}",
            bytes.len(),
            entry.length
        )));
    }
    let actual = crc32c::crc32c(bytes);
    if actual != entry.crc32c {
        return Err(SegmentError::BadChecksum {
            what: "entry",
            expected: entry.crc32c,
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
