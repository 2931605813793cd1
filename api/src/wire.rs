//! The wire contract beyond the messages: the metadata keys Silt's statuses and requests
//! carry, and how a caller tells what a failed call may have done. Broker and client read them
//! from here, so both sides agree by construction.

use tonic::Status;

/// Status metadata: how long to wait before retrying, in milliseconds (RESOURCE_EXHAUSTED,
/// UNAVAILABLE).
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// Status metadata: the partition's log start offset, with OUT_OF_RANGE.
pub const LOG_START_OFFSET: &str = "silt-log-start-offset";
/// Status metadata: the partition's high watermark, with OUT_OF_RANGE.
pub const HIGH_WATERMARK: &str = "silt-high-watermark";
/// Status metadata of a not-owner answer (UNAVAILABLE): the owner's address, empty while the
/// partition is being reassigned.
pub const OWNER: &str = "silt-owner";
/// Status metadata (value `1`) on a failed produce of which nothing was stored: retrying it
/// cannot duplicate a record.
pub const NOT_STORED: &str = "silt-not-stored";
/// Request metadata marking a produce one broker forwarded to a partition's owner (value: the
/// forwarding broker's id); an owner never forwards it again.
pub const FORWARDED: &str = "silt-forwarded";

/// True when the status was made by the caller's own transport, not sent by a server: tonic
/// gives such a status a source error (connection refused or reset, HTTP/2 error, timeout),
/// while a status decoded from an answer has none.
pub fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// True when the call never left the caller: its connection could not be opened (refused,
/// unreachable, connect timeout — tonic's `ConnectError` in the source chain), or the request
/// was still queued when its connection closed (hyper's "canceled": a server that is shutting
/// down sent GOAWAY; hyper hands such a request back unsent). Nothing of such a request can
/// have been stored. Any other transport failure may have reached the server.
pub fn never_sent(status: &Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_canceled()
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// True when the server marked the failure [`NOT_STORED`].
pub fn marked_not_stored(status: &Status) -> bool {
    status
        .metadata()
        .get(NOT_STORED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_never_opened_sent_nothing() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert!(is_transport_failure(&status) && never_sent(&status));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let status = Status::from_error(Box::new(reset));
        assert!(is_transport_failure(&status) && !never_sent(&status));
        // A server's answer, whatever its words, is not a transport failure.
        let answered = Status::unavailable("tcp connect error: connection refused");
        assert!(!is_transport_failure(&answered) && !never_sent(&answered));
        let mut marked = Status::unavailable("not the owner");
        marked
            .metadata_mut()
            .insert(NOT_STORED, "1".parse().unwrap());
        assert!(marked_not_stored(&marked) && !marked_not_stored(&answered));
    }
}
