//! The one mapping between the core's [`BrokerError`] and gRPC statuses, both ways: an error
//! becomes a status with its hints as metadata (`retry-after-ms`, `silt-log-start-offset`,
//! `silt-high-watermark`, `silt-owner`, and `silt-not-stored` on a produce that stored
//! nothing); a status another broker answered a forwarded call with becomes the error it was
//! made from, so a hop changes nothing a client sees.

use silt_api::wire::{self, HIGH_WATERMARK, LOG_START_OFFSET, NOT_STORED, OWNER, RETRY_AFTER_MS};
use tonic::{Code, Status};

use crate::core::{BrokerError, ErrorKind};

/// A failed produce as a status, marked `silt-not-stored` when none of its records was stored.
pub fn produce_status(e: BrokerError) -> Status {
    let nothing_stored = e.nothing_stored();
    let mut s = to_status(e);
    if nothing_stored {
        insert(&mut s, NOT_STORED, 1);
    }
    s
}

/// An error as a status (without the not-stored mark: only produce answers carry it).
pub fn to_status(e: BrokerError) -> Status {
    let message = e.to_string();
    match e.kind {
        ErrorKind::Invalid => Status::invalid_argument(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::Exists => Status::already_exists(message),
        ErrorKind::OutOfRange {
            log_start,
            high_watermark,
        } => {
            let mut s = Status::out_of_range(message);
            insert(&mut s, LOG_START_OFFSET, log_start);
            insert(&mut s, HIGH_WATERMARK, high_watermark);
            s
        }
        ErrorKind::Busy { retry_after_ms } => {
            let mut s = Status::resource_exhausted(message);
            insert(&mut s, RETRY_AFTER_MS, retry_after_ms);
            s
        }
        ErrorKind::Unavailable { retry_after_ms } => {
            let mut s = Status::unavailable(message);
            insert(&mut s, RETRY_AFTER_MS, retry_after_ms);
            s
        }
        ErrorKind::Precondition => Status::failed_precondition(message),
        // ABORTED: the epoch check failed; the caller restarts at a higher level (rejoins).
        ErrorKind::Fenced => Status::aborted(message),
        ErrorKind::NotOwner { owner } => {
            let mut s = Status::unavailable(message);
            insert(&mut s, OWNER, owner.unwrap_or_default());
            insert(&mut s, RETRY_AFTER_MS, 100);
            s
        }
        ErrorKind::Ambiguous => {
            let mut s = Status::unavailable(message);
            insert(&mut s, RETRY_AFTER_MS, 500);
            s
        }
        ErrorKind::Internal => Status::internal(message),
    }
}

/// The gRPC code of an error, for per-record results.
pub fn code_of(e: &BrokerError) -> Code {
    to_status(e.clone()).code()
}

/// The error a status stands for: the answer of another broker to a forwarded call, or a
/// failure of the hop itself. A hop that failed in transport stored nothing only if its
/// connection never opened (`wire::never_sent`); otherwise the owner may have acted on it.
pub fn from_status(status: &Status, address: &str) -> BrokerError {
    if wire::is_transport_failure(status) {
        return if wire::never_sent(status) {
            BrokerError::unavailable(format!(
                "forwarding to the owner at {address} failed: it cannot be reached ({}); nothing was stored",
                status.message()
            ))
        } else {
            BrokerError::ambiguous(format!(
                "forwarding to the owner at {address} failed mid-call ({}); the records may be stored",
                status.message()
            ))
        };
    }
    let message = status.message().to_string();
    let int =
        |key: &str| -> Option<i64> { status.metadata().get(key)?.to_str().ok()?.parse().ok() };
    let retry_after_ms = int(RETRY_AFTER_MS).map_or(500, |ms| ms.max(0) as u64);
    match status.code() {
        Code::InvalidArgument => BrokerError::invalid(message),
        Code::NotFound => BrokerError::not_found(message),
        Code::AlreadyExists => BrokerError::exists(message),
        Code::OutOfRange => BrokerError::out_of_range(
            message,
            int(LOG_START_OFFSET).unwrap_or(-1),
            int(HIGH_WATERMARK).unwrap_or(-1),
        ),
        Code::ResourceExhausted => BrokerError::busy(message, retry_after_ms),
        Code::FailedPrecondition => BrokerError::precondition(message),
        Code::Aborted => BrokerError::fenced(message),
        Code::Unavailable => {
            if let Some(owner) = status.metadata().get(OWNER) {
                let owner = owner.to_str().unwrap_or_default();
                BrokerError::not_owner(message, (!owner.is_empty()).then(|| owner.to_string()))
            } else if wire::marked_not_stored(status) {
                BrokerError::unavailable_after(message, retry_after_ms)
            } else {
                BrokerError::ambiguous(message)
            }
        }
        _ => BrokerError::internal(
            message
                .strip_prefix("internal error: ")
                .unwrap_or(&message)
                .to_string(),
        ),
    }
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
        let s = to_status(BrokerError::busy("full", 250));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_AFTER_MS).unwrap(), "250");
        let s = to_status(BrokerError::out_of_range("below", 7, 9));
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.metadata().get(LOG_START_OFFSET).unwrap(), "7");
        assert_eq!(s.message(), "below");
    }

    #[test]
    fn produce_errors_say_whether_anything_was_stored() {
        let s = produce_status(BrokerError::not_owner(
            "not mine",
            Some("127.0.0.1:1".into()),
        ));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(OWNER).unwrap(), "127.0.0.1:1");
        assert_eq!(s.metadata().get(NOT_STORED).unwrap(), "1");
        let s = produce_status(BrokerError::ambiguous("etcd timed out"));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.metadata().get(NOT_STORED).is_none());
    }

    #[test]
    fn a_forwarded_answer_reads_back_as_the_error_it_was() {
        for e in [
            BrokerError::invalid("bad batch"),
            BrokerError::not_found("no topic"),
            BrokerError::out_of_range("below", 3, 9),
            BrokerError::busy("full", 250),
            BrokerError::not_owner("moved", Some("b:1".into())),
            BrokerError::not_owner("moving", None),
            BrokerError::unavailable_after("store down", 700),
            BrokerError::ambiguous("commit unknown"),
            BrokerError::precondition("superseded"),
            BrokerError::fenced("rejoin"),
        ] {
            let back = from_status(&produce_status(e.clone()), "a:1");
            assert_eq!(back, e);
        }
        let internal = from_status(&produce_status(BrokerError::internal("bug")), "a:1");
        assert_eq!(internal, BrokerError::internal("bug"));
    }

    #[test]
    fn hop_failures_say_what_may_be_stored() {
        // Words are not a classification: an answer is passed on as what it says.
        let worded = from_status(
            &Status::unavailable("tcp connect error: connection refused"),
            "a:1",
        );
        assert!(!worded.nothing_stored(), "{worded:?}");
        // The connection never opened: nothing was sent.
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let refused = from_status(
            &Status::from_error(Box::new(tonic::ConnectError(Box::new(refused)))),
            "a:1",
        );
        assert!(refused.nothing_stored(), "{refused:?}");
        assert!(produce_status(refused).metadata().get(NOT_STORED).is_some());
        // The connection broke mid-call: the owner may have stored the records.
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let reset = from_status(&Status::from_error(Box::new(reset)), "a:1");
        assert_eq!(reset.kind, ErrorKind::Ambiguous);
    }
}
