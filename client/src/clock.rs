//! The client's one reading of the wall clock: the creation timestamp a producer gives records
//! that carry none (as Kafka producers do). Everything else in the client measures intervals
//! with `Instant`, which needs no injection.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now (0 if the system clock is before 1970).
pub fn unix_now_ms() -> i64 {
    // The workspace bans ambient wall-clock reads outside clock modules; this is the client's.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Microseconds since the Unix epoch, now (0 if the system clock is before 1970): what
/// `silt bench produce --subscribe` stamps into values to time put -> subscribe delivery, the
/// producer and the subscriber reading one machine's clock.
pub fn unix_now_us() -> u64 {
    // The workspace bans ambient wall-clock reads outside clock modules; this is the client's.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
