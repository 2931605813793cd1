//! The broker's error kinds: each says what the caller should do. [`crate::status`] maps them
//! onto gRPC statuses, in one place.

use silt_metadata::{CatalogError, MetaError};
use silt_storage::{BatchError, StorageError};
use thiserror::Error;

/// A failed broker operation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// The request is malformed or breaks a limit; fix it before retrying.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// An offset outside `[log_start, high_watermark]`.
    #[error("{message}")]
    OutOfRange {
        message: String,
        log_start: i64,
        high_watermark: i64,
    },
    /// The broker is at a resource limit; retry after the hint.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after_ms: u64,
    },
    /// A dependency (object store, metadata) failed; retry after the hint.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_ms: u64,
    },
    /// The system is not in a state to run the call (topic deleted meanwhile, writer fenced).
    #[error("{0}")]
    FailedPrecondition(String),
    /// This broker does not own the partition; nothing was stored. `owner` is the owner's
    /// address when one is known; retry there.
    #[error("{message}")]
    NotOwner {
        message: String,
        owner: Option<String>,
    },
    /// The metadata commit's outcome is unknown (the store failed while it ran): the records
    /// may or may not be stored. Retriable, at the risk of a duplicate.
    #[error("{0}")]
    CommitUnknown(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl BrokerError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        BrokerError::Unavailable {
            message: message.into(),
            retry_after_ms: 500,
        }
    }

    /// False only when the records of a failed produce may have been stored.
    pub fn nothing_stored(&self) -> bool {
        !matches!(
            self,
            BrokerError::CommitUnknown(_) | BrokerError::Internal(_)
        )
    }

    pub fn unknown_topic(name: &str) -> Self {
        BrokerError::NotFound(format!(
            "topic '{name}' does not exist; create it with CreateTopic"
        ))
    }
}

impl From<MetaError> for BrokerError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Unavailable(_) | MetaError::Compacted { .. } => {
                BrokerError::unavailable(e.to_string())
            }
            MetaError::InvalidRequest(_) => BrokerError::InvalidArgument(e.to_string()),
            MetaError::LeaseNotFound(_) => BrokerError::FailedPrecondition(e.to_string()),
            MetaError::Corrupt { .. } | MetaError::Internal(_) => {
                BrokerError::Internal(e.to_string())
            }
        }
    }
}

impl From<CatalogError> for BrokerError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::TopicExists(_) => BrokerError::AlreadyExists(e.to_string()),
            CatalogError::TopicNotFound(_) => BrokerError::NotFound(e.to_string()),
            CatalogError::Fenced { .. } => BrokerError::Unavailable {
                message: format!("{e}; retry against the current owner"),
                retry_after_ms: 1000,
            },
            CatalogError::Superseded { .. } => BrokerError::FailedPrecondition(e.to_string()),
            CatalogError::Store(e) => e.into(),
        }
    }
}

impl From<StorageError> for BrokerError {
    fn from(e: StorageError) -> Self {
        if e.is_retriable() {
            BrokerError::unavailable(e.to_string())
        } else {
            BrokerError::Internal(e.to_string())
        }
    }
}

impl From<BatchError> for BrokerError {
    fn from(e: BatchError) -> Self {
        BrokerError::InvalidArgument(e.to_string())
    }
}
