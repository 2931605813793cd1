//! The client's one error type, [`ClientError`]: a broker's gRPC status (code, message and hint
//! metadata kept intact so callers can match on [`Code`]), a connection failure, a record batch
//! that could not be encoded or decoded, or a misuse caught before anything was sent.
//!
//! Errors are `Clone` because one broker answer fails every record of a batch: each record's
//! [`crate::SendFuture`] gets its own copy.
//!
//! What a failed produce means for its records is read from the error: a status marked
//! `silt-not-stored` stored nothing ([`ClientError::is_not_stored`]), nor did a call whose
//! connection could not be opened ([`ClientError::is_connect_failure`]); a transport failure
//! once connected (connection reset, timeout: no answer) or an UNAVAILABLE without the mark is
//! *ambiguous* ([`ClientError::is_ambiguous`]): the records may have been committed.

use std::sync::Arc;
use std::time::Duration;

use silt_storage::BatchError;
use thiserror::Error;
use tonic::{Code, Status};

pub use silt_api::wire::{LOG_START_OFFSET, NOT_STORED, OWNER, RETRY_AFTER_MS};

/// Why a client call failed.
#[derive(Debug, Clone, Error)]
pub enum ClientError {
    /// The broker answered with an error status.
    #[error("{} ({})", .0.message(), code_name(.0.code()))]
    Status(Status),
    /// The broker could not be reached, or the URL is not valid.
    #[error("cannot connect to the broker at {url}")]
    Connect {
        url: String,
        #[source]
        source: Arc<tonic::transport::Error>,
    },
    /// A record batch could not be built or read.
    #[error("record batch: {0}")]
    Batch(#[from] BatchError),
    /// The broker's answer does not follow the API contract.
    #[error("unexpected broker response: {0}")]
    Protocol(String),
    /// The call was refused by the client before anything was sent.
    #[error("{0}")]
    InvalidArgument(String),
    /// A call got no answer in time (the client gave up; the broker may still act on it).
    #[error("{call} to {url} got no answer within {after:?}")]
    Timeout {
        call: &'static str,
        url: String,
        after: Duration,
    },
    /// The producer stopped before the record was acknowledged.
    #[error("the producer was closed before the record was acknowledged")]
    Closed,
}

impl ClientError {
    /// The gRPC code: the broker's for [`ClientError::Status`], UNAVAILABLE for connection
    /// failures, INVALID_ARGUMENT for client-side refusals, INTERNAL otherwise.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status(s) => s.code(),
            ClientError::Connect { .. } | ClientError::Closed => Code::Unavailable,
            ClientError::InvalidArgument(_) | ClientError::Batch(_) => Code::InvalidArgument,
            ClientError::Protocol(_) => Code::Internal,
            ClientError::Timeout { .. } => Code::DeadlineExceeded,
        }
    }

    /// The broker's status, when the error is one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Status(s) => Some(s),
            _ => None,
        }
    }

    /// True when the same call may succeed later: UNAVAILABLE, RESOURCE_EXHAUSTED, or a
    /// transport failure (whatever code tonic gave it).
    pub fn is_retriable(&self) -> bool {
        matches!(self.code(), Code::Unavailable | Code::ResourceExhausted) || self.is_transport()
    }

    /// True when no broker answer was received: the call failed in the client's transport
    /// (connection refused or reset, HTTP/2 error, timeout). tonic gives such a status a
    /// source error; a status a broker sent has none.
    pub fn is_transport(&self) -> bool {
        match self {
            ClientError::Status(s) => silt_api::wire::is_transport_failure(s),
            ClientError::Connect { .. } | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// True when the connection to the broker could not be opened (refused, unreachable, connect
    /// timeout): the request never left the client, so nothing of it can have been stored.
    pub fn is_connect_failure(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Status(s) => silt_api::wire::never_sent(s),
            _ => false,
        }
    }

    /// True when the broker marked the error `silt-not-stored`: nothing of the request was
    /// stored, so sending it again cannot duplicate records.
    pub fn is_not_stored(&self) -> bool {
        self.status().is_some_and(silt_api::wire::marked_not_stored)
    }

    /// True when a produce that failed this way may still have been committed: a transport
    /// failure once connected, or UNAVAILABLE without the `silt-not-stored` mark.
    pub fn is_ambiguous(&self) -> bool {
        !self.is_not_stored()
            && !self.is_connect_failure()
            && (self.is_transport() || self.code() == Code::Unavailable)
    }

    /// The `silt-owner` hint of a not-owner error: the owner's address (possibly empty while
    /// the partition is being reassigned); `None` when the error carries no hint.
    pub fn owner_hint(&self) -> Option<&str> {
        self.status()?.metadata().get(OWNER)?.to_str().ok()
    }

    /// The broker's `retry-after-ms` hint, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        metadata_i64(self.status()?, RETRY_AFTER_MS)
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis)
    }

    /// The log start offset the broker sent with OUT_OF_RANGE, if any.
    pub fn log_start_offset(&self) -> Option<i64> {
        metadata_i64(self.status()?, LOG_START_OFFSET)
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status(status)
    }
}

fn metadata_i64(status: &Status, key: &str) -> Option<i64> {
    status
        .metadata()
        .get(key)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The canonical upper-case name of a gRPC code (`NOT_FOUND`), as the proto comments use.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_message_and_hints() {
        let mut status = Status::resource_exhausted("WAL cache full");
        status
            .metadata_mut()
            .insert(RETRY_AFTER_MS, "250".parse().unwrap());
        let err = ClientError::from(status);
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(err.is_retriable());
        assert_eq!(err.retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(err.to_string(), "WAL cache full (RESOURCE_EXHAUSTED)");
    }

    #[test]
    fn not_found_reads_as_the_cli_prints_it() {
        let err = ClientError::from(Status::not_found("topic 'x' does not exist"));
        assert_eq!(err.to_string(), "topic 'x' does not exist (NOT_FOUND)");
        assert!(!err.is_retriable());
        assert_eq!(err.retry_after(), None);
    }

    #[test]
    fn not_owner_is_marked_not_stored_with_the_owner() {
        let mut status = Status::unavailable("not the owner of t/1");
        status
            .metadata_mut()
            .insert(NOT_STORED, "1".parse().unwrap());
        status
            .metadata_mut()
            .insert(OWNER, "127.0.0.1:7451".parse().unwrap());
        let err = ClientError::from(status);
        assert!(err.is_retriable() && err.is_not_stored() && !err.is_ambiguous());
        assert!(!err.is_transport());
        assert_eq!(err.owner_hint(), Some("127.0.0.1:7451"));
        let plain = ClientError::from(Status::unavailable("store down"));
        assert!(plain.is_ambiguous() && !plain.is_not_stored());
        assert_eq!(plain.owner_hint(), None);
        let full = ClientError::from(Status::resource_exhausted("WAL cache full"));
        assert!(full.is_retriable() && !full.is_ambiguous());
    }

    #[test]
    fn a_status_with_a_source_is_a_transport_failure() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let err = ClientError::from(Status::from_error(Box::new(io)));
        assert!(err.is_transport() && err.is_retriable() && err.is_ambiguous());
        assert!(!err.is_connect_failure());
    }

    #[test]
    fn a_connection_never_opened_sent_nothing() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let connect = tonic::ConnectError(Box::new(refused));
        let err = ClientError::from(Status::from_error(Box::new(connect)));
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.is_transport() && err.is_connect_failure());
        assert!(err.is_retriable() && !err.is_ambiguous());
    }

    #[test]
    fn out_of_range_carries_the_log_start() {
        let mut status = Status::out_of_range("below the log start");
        status
            .metadata_mut()
            .insert(LOG_START_OFFSET, "42".parse().unwrap());
        assert_eq!(ClientError::from(status).log_start_offset(), Some(42));
    }
}
