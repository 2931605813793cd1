//! Time, injected. Lease expiry, linger and retention read the time through [`Clock`] so tests
//! drive them with a [`ManualClock`] instead of sleeping. This is the one module allowed to read
//! the system clock (see `clippy.toml`).

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Wall-clock time in milliseconds since the Unix epoch (record timestamps, retention).
    fn now_ms(&self) -> i64;

    /// Monotonic time in milliseconds since an arbitrary origin (deadlines, lease expiry).
    fn monotonic_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Arc<Self> {
        #[allow(clippy::disallowed_methods)]
        let origin = Instant::now();
        Arc::new(Self { origin })
    }
}

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    #[allow(clippy::disallowed_methods)]
    fn monotonic_ms(&self) -> i64 {
        self.origin.elapsed().as_millis() as i64
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> Arc<Self> {
        Arc::new(Self {
            now_ms: AtomicI64::new(start_ms),
        })
    }

    /// Moves both the wall and the monotonic time forward.
    pub fn advance_ms(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn monotonic_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}
