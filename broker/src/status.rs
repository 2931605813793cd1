//! The one mapping from [`BrokerError`] to gRPC statuses, with the retry and offset hints as
//! metadata (`retry-after-ms`, `silt-log-start-offset`, `silt-high-watermark`).

use tonic::{Code, Status};

use crate::error::BrokerError;

pub use silt_api::wire::{HIGH_WATERMARK, LOG_START_OFFSET, NOT_STORED, OWNER, RETRY_AFTER_MS};

/// Marks a failed produce whose records were certainly not stored.
pub fn produce_status(e: BrokerError) -> Status {
    let nothing_stored = e.nothing_stored();
    let mut s = Status::from(e);
    if nothing_stored {
        insert(&mut s, NOT_STORED, 1);
    }
    s
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        let message = e.to_string();
        match e {
            BrokerError::InvalidArgument(_) => Status::invalid_argument(message),
            BrokerError::NotFound(_) => Status::not_found(message),
            BrokerError::AlreadyExists(_) => Status::already_exists(message),
            BrokerError::OutOfRange {
                log_start,
                high_watermark,
                ..
            } => {
                let mut s = Status::out_of_range(message);
                insert(&mut s, LOG_START_OFFSET, log_start);
                insert(&mut s, HIGH_WATERMARK, high_watermark);
                s
            }
            BrokerError::ResourceExhausted { retry_after_ms, .. } => {
                let mut s = Status::resource_exhausted(message);
                insert(&mut s, RETRY_AFTER_MS, retry_after_ms);
                s
            }
            BrokerError::Unavailable { retry_after_ms, .. } => {
                let mut s = Status::unavailable(message);
                insert(&mut s, RETRY_AFTER_MS, retry_after_ms);
                s
            }
            BrokerError::FailedPrecondition(_) => Status::failed_precondition(message),
            BrokerError::NotOwner { owner, .. } => {
                let mut s = Status::unavailable(message);
                insert(&mut s, OWNER, owner.unwrap_or_default());
                insert(&mut s, RETRY_AFTER_MS, 100);
                s
            }
            BrokerError::CommitUnknown(_) => {
                let mut s = Status::unavailable(message);
                insert(&mut s, RETRY_AFTER_MS, 500);
                s
            }
            BrokerError::Internal(_) => Status::internal(message),
        }
    }
}

/// The gRPC code of an error, for per-record results.
pub fn code_of(e: &BrokerError) -> Code {
    Status::from(e.clone()).code()
}

fn insert(status: &mut Status, key: &'static str, value: impl ToString) {
    if let Ok(v) = value.to_string().parse() {
        status.metadata_mut().insert(key, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_travel_as_metadata() {
        let s = Status::from(BrokerError::ResourceExhausted {
            message: "full".into(),
            retry_after_ms: 250,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_AFTER_MS).unwrap(), "250");
        let s = Status::from(BrokerError::OutOfRange {
            message: "below".into(),
            log_start: 7,
            high_watermark: 9,
        });
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.metadata().get(LOG_START_OFFSET).unwrap(), "7");
        assert_eq!(s.message(), "below");
    }

    #[test]
    fn produce_errors_say_whether_anything_was_stored() {
        let s = produce_status(BrokerError::NotOwner {
            message: "not mine".into(),
            owner: Some("127.0.0.1:1".into()),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(OWNER).unwrap(), "127.0.0.1:1");
        assert_eq!(s.metadata().get(NOT_STORED).unwrap(), "1");
        let s = produce_status(BrokerError::CommitUnknown("etcd timed out".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.metadata().get(NOT_STORED).is_none());
    }
}
