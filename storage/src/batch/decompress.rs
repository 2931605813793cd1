//! Checking the records of a compressed batch without trusting its compression.
//!
//! A compressed RecordBatch v2 is a header followed by one compressed stream of records. The
//! stream is decompressed *as a stream* (gzip, lz4 frame, zstd; snappy block by block) and its
//! records are walked as they come out — each length prefix read, checked against the record
//! limit and skipped — so memory stays a few buffers whatever the stream claims, and the work
//! stops at a hard cap on decompressed bytes: the smaller of the caller's budget and what
//! `record_count` records of at most `max_record_bytes` each can take. A batch of a few MiB that
//! inflates to GiBs (a decompression bomb) is refused after at most that cap, with nothing
//! allocated for its output.

use std::io::{self, BufRead, Read};

use kafka_protocol::records::Compression;

use crate::error::BatchError;

/// Most bytes a record's length prefix (a zigzag varint) and its body take beyond the body.
const VARINT_MAX: u64 = 5;
/// Largest zstd window accepted (32 MiB): a frame asking for more is refused before the
/// decoder allocates it.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;
/// The snappy-java ("xerial") stream header Kafka's Java client writes before snappy blocks.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

/// Decompresses `stream` (the bytes after a batch header) and checks that it holds exactly
/// `count` records of at most `max_record_bytes` each, reading at most `budget` decompressed
/// bytes. Returns the decompressed size and how many records have a null key.
pub(super) fn check_records(
    codec: Compression,
    stream: &[u8],
    count: i32,
    max_record_bytes: usize,
    budget: u64,
    base_timestamp: i64,
) -> Result<(u64, u32), BatchError> {
    let per_record = (max_record_bytes as u64).saturating_add(VARINT_MAX);
    let cap = budget.min((count.max(0) as u64).saturating_mul(per_record));
    let mut capped = capped(codec, stream, cap, budget)?;
    let null_keys = walk(&mut capped, count, max_record_bytes, base_timestamp)?;
    Ok((cap - capped.left, null_keys))
}

/// Decompresses `stream` whole, refusing it past `cap` bytes (reading a stored batch).
pub(super) fn decompress(
    codec: Compression,
    stream: &[u8],
    cap: u64,
) -> Result<Vec<u8>, BatchError> {
    let mut capped = capped(codec, stream, cap, cap)?;
    let mut out = Vec::new();
    capped.read_to_end(&mut out).map_err(|e| capped.error(e))?;
    Ok(out)
}

/// A reader of `stream` decompressed with `codec`, failing past `cap` bytes.
fn capped(
    codec: Compression,
    stream: &[u8],
    cap: u64,
    budget: u64,
) -> Result<Capped<'_>, BatchError> {
    let reader: Box<dyn Read + '_> = match codec {
        Compression::None => Box::new(stream),
        Compression::Gzip => Box::new(GzipMember(flate2::bufread::GzDecoder::new(stream))),
        Compression::Snappy => Box::new(SnappyStream::new(stream, cap)?),
        Compression::Lz4 => {
            // The decoder stops at the frame's end mark and ignores what follows: the frame must
            // fill the stream exactly, or readers of the stored batch could disagree.
            if lz4_frame_len(stream) != Some(stream.len()) {
                return Err(BatchError::Undecodable(
                    "the lz4 frame is cut short or followed by other bytes".into(),
                ));
            }
            Box::new(lz4::Decoder::new(stream).map_err(undecodable)?)
        }
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(stream).map_err(undecodable)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(undecodable)?;
            Box::new(d)
        }
    };
    Ok(Capped {
        inner: io::BufReader::with_capacity(64 << 10, reader),
        left: cap,
        cap,
        budget,
    })
}

/// Walks `count` length-prefixed records through `r`: each length within the limit and fully
/// present, nothing after the last. Returns how many have a null key.
fn walk(
    r: &mut Capped<'_>,
    count: i32,
    max_record_bytes: usize,
    base_timestamp: i64,
) -> Result<u32, BatchError> {
    // One record at a time: at most `max_record_bytes` held.
    let mut body = Vec::new();
    let mut null_keys = 0u32;
    for index in 0..count as usize {
        let len = r.varint()?.ok_or_else(|| BatchError::BadRecordCount {
            declared: count,
            reason: format!("the stream ends before record {index}"),
        })?;
        if len < 0 {
            return Err(BatchError::BadRecordCount {
                declared: count,
                reason: format!("record {index} has negative length {len}"),
            });
        }
        if len as u64 > max_record_bytes as u64 {
            return Err(BatchError::RecordTooLarge {
                index,
                len: usize::try_from(len).unwrap_or(usize::MAX),
                limit: max_record_bytes,
            });
        }
        body.clear();
        let read = r
            .by_ref()
            .take(len as u64)
            .read_to_end(&mut body)
            .map_err(|e| r.error(e))?;
        if read < len as usize {
            return Err(BatchError::BadRecordCount {
                declared: count,
                reason: format!("record {index} ({len} bytes) runs past the end of the stream"),
            });
        }
        if !super::check_record(&body, index, base_timestamp)? {
            null_keys += 1;
        }
    }
    let mut one = [0u8; 1];
    match r.read(&mut one).map_err(|e| r.error(e))? {
        0 => Ok(null_keys),
        _ => Err(BatchError::BadRecordCount {
            declared: count,
            reason: "bytes follow the last record".into(),
        }),
    }
}

/// A reader that fails once it has produced more than `cap` bytes.
struct Capped<'a> {
    inner: io::BufReader<Box<dyn Read + 'a>>,
    left: u64,
    cap: u64,
    /// The caller's budget, for the error message.
    budget: u64,
}

/// The error a [`Capped`] reader returns past its cap.
#[derive(Debug)]
struct OverCap;

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decompressed size over the cap")
    }
}

impl std::error::Error for OverCap {}

impl Capped<'_> {
    /// A zigzag varint, `None` at a clean end of stream.
    fn varint(&mut self) -> Result<Option<i64>, BatchError> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let mut b = [0u8; 1];
            if self.read(&mut b).map_err(|e| self.error(e))? == 0 {
                return if i == 0 {
                    Ok(None)
                } else {
                    Err(BatchError::Undecodable(
                        "the stream ends inside a record length".into(),
                    ))
                };
            }
            raw |= u64::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                return Ok(Some(((raw >> 1) as i64) ^ -((raw & 1) as i64)));
            }
        }
        Err(BatchError::Undecodable(
            "a record length is not a valid varint".into(),
        ))
    }

    fn error(&self, e: io::Error) -> BatchError {
        if e.get_ref().is_some_and(|inner| inner.is::<OverCap>()) {
            BatchError::DecompressedTooLarge {
                limit: self.cap,
                budget: self.budget,
            }
        } else {
            undecodable(e)
        }
    }
}

impl Read for Capped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // At the cap: the stream may only be over.
            let more = self.inner.fill_buf()?;
            return if more.is_empty() {
                Ok(0)
            } else {
                Err(io::Error::other(OverCap))
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn undecodable(e: io::Error) -> BatchError {
    BatchError::Undecodable(format!(
        "the compressed records cannot be decompressed: {e}"
    ))
}

/// One gzip member, and nothing after it.
struct GzipMember<'a>(flate2::bufread::GzDecoder<&'a [u8]>);

impl Read for GzipMember<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.0.get_ref().is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bytes follow the gzip stream",
            ));
        }
        Ok(n)
    }
}

/// Snappy as Kafka clients send it: snappy-java's framing (a header, then blocks each prefixed
/// by its big-endian length) or one raw block. Blocks are decompressed one at a time, and a
/// block whose declared size exceeds what is left of the cap is refused before it is allocated.
struct SnappyStream<'a> {
    rest: &'a [u8],
    framed: bool,
    block: Vec<u8>,
    pos: usize,
    left: u64,
}

impl<'a> SnappyStream<'a> {
    fn new(stream: &'a [u8], cap: u64) -> Result<Self, BatchError> {
        let framed = stream.len() >= XERIAL_HEADER_LEN && stream.starts_with(XERIAL_MAGIC);
        Ok(Self {
            rest: if framed {
                &stream[XERIAL_HEADER_LEN..]
            } else {
                stream
            },
            framed,
            block: Vec::new(),
            pos: 0,
            left: cap,
        })
    }

    /// Decompresses the next block; false at the end.
    fn next_block(&mut self) -> io::Result<bool> {
        if self.rest.is_empty() {
            return Ok(false);
        }
        let compressed = if self.framed {
            let Some((len, rest)) = self.rest.split_first_chunk::<4>() else {
                return Err(invalid("a snappy block length is cut short"));
            };
            let len = u32::from_be_bytes(*len) as usize;
            if len > rest.len() {
                return Err(invalid("a snappy block runs past the end of the batch"));
            }
            let (block, rest) = rest.split_at(len);
            self.rest = rest;
            block
        } else {
            std::mem::take(&mut self.rest)
        };
        let size = snap::raw::decompress_len(compressed).map_err(io::Error::other)?;
        if size as u64 > self.left {
            return Err(io::Error::other(OverCap));
        }
        self.left -= size as u64;
        self.block.resize(size, 0);
        let n = snap::raw::Decoder::new()
            .decompress(compressed, &mut self.block)
            .map_err(io::Error::other)?;
        self.block.truncate(n);
        self.pos = 0;
        Ok(true)
    }
}

impl Read for SnappyStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The length of the LZ4 frame at the start of `stream` (magic, descriptor, blocks up to the
/// end mark, optional content checksum), walked without decompressing; `None` if it is not one
/// or is cut short.
fn lz4_frame_len(stream: &[u8]) -> Option<usize> {
    const MAGIC: u32 = 0x184D_2204;
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(stream.get(at..at + 4)?.try_into().ok()?))
    };
    if u32_at(0)? != MAGIC {
        return None;
    }
    let flg = *stream.get(4)?;
    let block_checksum = flg & 0x10 != 0;
    let content_size = flg & 0x08 != 0;
    let content_checksum = flg & 0x04 != 0;
    let dict_id = flg & 0x01 != 0;
    // magic, FLG, BD, [content size], [dictionary id], header checksum
    let mut pos = 4 + 2 + 8 * usize::from(content_size) + 4 * usize::from(dict_id) + 1;
    loop {
        let size = u32_at(pos)?;
        pos += 4;
        if size == 0 {
            break;
        }
        pos = pos
            .checked_add((size & 0x7fff_ffff) as usize + 4 * usize::from(block_checksum))
            .filter(|end| *end <= stream.len())?;
    }
    let end = pos + 4 * usize::from(content_checksum);
    (end <= stream.len()).then_some(end)
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
