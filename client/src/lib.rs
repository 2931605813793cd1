//! The Silt Rust client: a [`Client`] connection to a cluster of brokers (a bootstrap list,
//! fail-over between brokers, a routing table of partition owners) with admin helpers, a
//! Kafka-style fast-path [`Producer`] that builds Kafka RecordBatch v2 batches on the client
//! and sends them with `ProduceBatches` to each partition's owner (each record's
//! [`SendFuture`] resolves once the record is durable), and a [`PartitionReader`] that fetches
//! stored batches as they are from any broker and decodes them here.
//!
//! Follow a record: [`ProducerRecord`] → [`partitioner`] (explicit, murmur2 of the key, or
//! sticky) → a partition batch in the producer → `ProduceBatches` to the partition's owner →
//! the broker's WAL cache, segment object and metadata commit → `Fetch` with `raw_batches` →
//! [`ConsumedRecord`].

mod brokers;
mod client;
pub mod clock;
mod error;
pub mod groups;
pub mod partitioner;
mod producer;
mod reader;
mod routing;

pub use client::{Client, MAX_MESSAGE_BYTES};
pub use error::{ClientError, LOG_START_OFFSET, NOT_STORED, OWNER, RETRY_AFTER_MS, code_name};
pub use groups::{GroupConsumer, GroupConsumerConfig, GroupRecord, Rebalance, ResetSpec};
pub use producer::{AckResult, Producer, ProducerConfig, ProducerRecord, SendFuture};
pub use reader::{ConsumedRecord, DEFAULT_FETCH_BYTES, PartitionReader, StartSpec, list_offsets};
pub use silt_storage::batch::BatchCompression;
