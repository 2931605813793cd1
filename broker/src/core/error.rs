//! The core's one error: a message for a person and an [`ErrorKind`] that says what the caller
//! should do. Messages name the broker's own settings when a limit is at stake, never a
//! protocol's calls or fields: each edge maps the kind to its protocol (gRPC statuses in
//! `edge::grpc::status`; Kafka error codes and Kinesis exceptions next) and adds the advice its
//! callers understand.

use silt_metadata::{CatalogError, MetaError};
use silt_storage::{BatchError, StorageError};

/// What the caller should do about a failed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or breaks a limit: fix it; the same request fails again.
    /// Nothing was stored.
    Invalid,
    /// The topic (or partition) does not exist.
    NotFound,
    /// The topic already exists.
    Exists,
    /// An offset outside the partition's log `[log_start, high_watermark]`.
    OutOfRange { log_start: i64, high_watermark: i64 },
    /// The broker is at a resource limit: retry after the hint. Nothing was stored.
    Busy { retry_after_ms: u64 },
    /// This broker does not own the partition: retry at the owner (its address, when known).
    /// Nothing was stored.
    NotOwner { owner: Option<String> },
    /// A dependency (object store, metadata) failed, or the broker is stopping or loading:
    /// retry after the hint. Nothing was stored.
    Unavailable { retry_after_ms: u64 },
    /// The outcome is unknown: the records may or may not be stored. Retrying may duplicate.
    Ambiguous,
    /// The system is not in a state to run the call (a superseded process, an expired lease).
    Precondition,
    /// The caller's group membership is no longer valid (it left, its session expired, or it
    /// sent an epoch it no longer has): rejoin. Nothing was changed.
    Fenced,
    /// A bug or corrupt data: not the caller's fault, not fixed by retrying.
    Internal,
}

/// A failed core operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if matches!(kind, ErrorKind::Internal) { "internal error: " } else { "" })]
pub struct BrokerError {
    pub kind: ErrorKind,
    pub message: String,
}

impl BrokerError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Exists, message)
    }

    pub fn out_of_range(message: impl Into<String>, log_start: i64, high_watermark: i64) -> Self {
        Self::new(
            ErrorKind::OutOfRange {
                log_start,
                high_watermark,
            },
            message,
        )
    }

    pub fn busy(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Self::new(ErrorKind::Busy { retry_after_ms }, message)
    }

    pub fn not_owner(message: impl Into<String>, owner: Option<String>) -> Self {
        Self::new(ErrorKind::NotOwner { owner }, message)
    }

    /// Unavailable, retry after 500 ms.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::unavailable_after(message, 500)
    }

    pub fn unavailable_after(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Self::new(ErrorKind::Unavailable { retry_after_ms }, message)
    }

    pub fn ambiguous(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Ambiguous, message)
    }

    pub fn fenced(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fenced, message)
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Precondition, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// False only when the records of a failed produce may have been stored.
    pub fn nothing_stored(&self) -> bool {
        !matches!(self.kind, ErrorKind::Ambiguous | ErrorKind::Internal)
    }

    pub fn unknown_topic(name: &str) -> Self {
        Self::not_found(format!("topic '{name}' does not exist"))
    }

    /// The same error with `context` before its message.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl From<MetaError> for BrokerError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Unavailable(_) | MetaError::Compacted { .. } => {
                BrokerError::unavailable(e.to_string())
            }
            MetaError::InvalidRequest(_) => BrokerError::invalid(e.to_string()),
            MetaError::LeaseNotFound(_) => BrokerError::precondition(e.to_string()),
            MetaError::Corrupt { .. } | MetaError::Internal(_) => {
                BrokerError::internal(e.to_string())
            }
        }
    }
}

impl From<CatalogError> for BrokerError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::TopicExists(_) => BrokerError::exists(e.to_string()),
            CatalogError::TopicNotFound(_) => BrokerError::not_found(e.to_string()),
            CatalogError::Fenced { .. } => BrokerError::unavailable_after(
                format!("{e}; retry against the current owner"),
                1000,
            ),
            CatalogError::Superseded { .. } => BrokerError::precondition(e.to_string()),
            CatalogError::Store(e) => e.into(),
        }
    }
}

impl From<StorageError> for BrokerError {
    fn from(e: StorageError) -> Self {
        if e.is_retriable() {
            BrokerError::unavailable(e.to_string())
        } else {
            BrokerError::internal(e.to_string())
        }
    }
}

impl From<BatchError> for BrokerError {
    fn from(e: BatchError) -> Self {
        BrokerError::invalid(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_says_whether_anything_was_stored() {
        for stored_nothing in [
            BrokerError::invalid("x"),
            BrokerError::busy("x", 10),
            BrokerError::not_owner("x", None),
            BrokerError::unavailable("x"),
        ] {
            assert!(stored_nothing.nothing_stored(), "{stored_nothing:?}");
        }
        for maybe in [BrokerError::ambiguous("x"), BrokerError::internal("x")] {
            assert!(!maybe.nothing_stored(), "{maybe:?}");
        }
        assert_eq!(
            BrokerError::internal("boom").to_string(),
            "internal error: boom"
        );
        assert_eq!(BrokerError::invalid("bad").to_string(), "bad");
    }
}
