//! Silt's data plane below the broker: what records look like in flight and at rest, and how
//! they reach object storage and come back.
//!
//! Follow a record through this crate:
//! 1. [`batch`]: a client's Kafka RecordBatch v2 is validated (magic, CRC32C, lengths, record
//!    count, limits) without being re-encoded; the per-record produce path builds batches here.
//! 2. [`segment`]: at flush, the batches of many partitions are laid into one segment object
//!    (format v1: header, batches, per-partition index, footer), each batch's base offset set.
//! 3. [`object`]: the object store (local directory, memory, S3-compatible) behind one URL, with
//!    the key layout of segment objects and an instrumenting decorator.
//! 4. [`cache`]: reads come back as chunk-aligned range GETs through a memory + disk cache that
//!    every flush pre-fills.

//!
//! The formats ([`batch`], [`segment`], [`routing`]) build without the object-store stack; the
//! stores and the cache are the default feature `objects` (the fuzz targets build without it).

pub mod batch;
#[cfg(feature = "objects")]
pub mod cache;
pub mod crc;
mod error;
#[cfg(feature = "objects")]
pub mod metrics;
#[cfg(feature = "objects")]
pub mod object;
pub mod routing;
pub mod segment;

pub use error::{BatchError, SegmentError, StorageError};
