//! Errors of the storage layer.

use thiserror::Error;

/// Why a record batch was refused. Every variant is the client's fault (INVALID_ARGUMENT).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch is {len} bytes, shorter than the 61-byte RecordBatch v2 header")]
    TooShort { len: usize },
    #[error("batch magic is {magic}, only RecordBatch v2 (magic 2) is accepted")]
    BadMagic { magic: i8 },
    #[error("batch length field says {declared} bytes follow the length, but {actual} do")]
    LengthMismatch { declared: i64, actual: usize },
    #[error("batch CRC32C mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    BadCrc { expected: u32, actual: u32 },
    #[error("batch attributes {attributes:#06x} name unknown compression codec {codec}")]
    BadCompression { attributes: i16, codec: i16 },
    #[error("batch declares {declared} records but {reason}")]
    BadRecordCount { declared: i32, reason: String },
    /// A record whose body is malformed (its fields, not its length).
    #[error("record {index} of the batch is malformed: {reason}")]
    BadRecord { index: usize, reason: String },
    #[error("batch is {len} bytes, over the {limit}-byte batch limit")]
    BatchTooLarge { len: usize, limit: usize },
    #[error(
        "record {index} of the batch is {len} bytes, over the topic's {limit}-byte record limit"
    )]
    RecordTooLarge {
        index: usize,
        len: usize,
        limit: usize,
    },
    /// The records decompress to more than allowed: a compression bomb, or a batch (or request)
    /// too large once decompressed. Nothing past the limit was decompressed.
    #[error(
        "batch records decompress to more than {limit} bytes (the limit: what its record count allows at the topic's record limit, and at most {budget} bytes per request); send smaller batches"
    )]
    DecompressedTooLarge { limit: u64, budget: u64 },
    #[error("control batches cannot be produced by clients")]
    ControlBatch,
    #[error(
        "the batch has its delete-horizon attribute (bit 6) set: only key compaction sets it, clients must leave it clear"
    )]
    DeleteHorizonSet,
    #[error("batch records could not be decoded: {0}")]
    Undecodable(String),
}

/// Why a segment object (or a range of it) could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SegmentError {
    #[error("segment is {len} bytes, too short for a v1 header and footer")]
    TooShort { len: usize },
    #[error("segment magic {found:?} is not Silt's")]
    BadMagic { found: [u8; 4] },
    #[error("segment version {version} is not supported (this Silt reads version 1)")]
    UnsupportedVersion { version: u16 },
    #[error("segment {what} checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    BadChecksum {
        what: &'static str,
        expected: u32,
        actual: u32,
    },
    #[error("segment is malformed: {0}")]
    Malformed(String),
}

/// A storage operation failed.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[cfg(feature = "objects")]
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("invalid object store configuration: {0}")]
    Config(String),
    #[error("read cache: {0}")]
    Cache(String),
}

impl StorageError {
    /// True when retrying later may succeed (store outages, timeouts, throttling).
    pub fn is_retriable(&self) -> bool {
        match self {
            #[cfg(feature = "objects")]
            StorageError::ObjectStore(e) => !matches!(
                e,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
            StorageError::Cache(_) => true,
            StorageError::Segment(_) | StorageError::Config(_) => false,
        }
    }
}
