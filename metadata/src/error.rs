//! Errors of the metadata layer, with the kind a caller acts on.

use thiserror::Error;

/// What went wrong in a metadata call.
#[derive(Debug, Clone, Error)]
pub enum MetaError {
    /// The store cannot be reached or failed transiently; retry later.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// The watch start revision is older than the history the store keeps.
    #[error("revision {requested} was compacted (oldest kept: {compact_revision})")]
    Compacted {
        requested: i64,
        compact_revision: i64,
    },
    /// The lease does not exist (never granted, expired or revoked).
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(i64),
    /// The request breaks a store limit (too many operations, too many bytes, duplicate keys).
    #[error("metadata request rejected: {0}")]
    InvalidRequest(String),
    /// A stored value could not be decoded: a bug or a newer Silt wrote it.
    #[error("corrupt metadata value at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The store failed in a way retrying will not fix.
    #[error("metadata store failure: {0}")]
    Internal(String),
}

impl MetaError {
    /// True when retrying the same call later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, MetaError::Unavailable(_))
    }
}

/// What went wrong in a catalog call: a domain answer or a store failure.
#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("topic '{0}' does not exist")]
    TopicNotFound(String),
    /// The writer's fencing key changed: another incarnation of this broker (or, with ownership,
    /// another broker) owns the partitions now. Nothing was committed.
    #[error("commit fenced: writer '{broker_id}' incarnation {incarnation} is no longer current")]
    Fenced { broker_id: String, incarnation: u64 },
    /// Another process of this broker id registered `current` (≥ the incarnation asked for):
    /// this one must not write.
    #[error(
        "broker id '{broker_id}': incarnation {incarnation} is superseded by {current} (another process with this id started)"
    )]
    Superseded {
        broker_id: String,
        incarnation: u64,
        current: u64,
    },
    #[error(transparent)]
    Store(#[from] MetaError),
}
