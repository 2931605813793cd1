//! The object store's and the read cache's metrics: handles registered once on the broker's
//! registry (a [`metrics::Recorder`]), so recording is one atomic add, never a name lookup.
//! The names are Silt's Prometheus names, listed in `deploy/metrics.txt`.

use std::time::Instant;

use metrics::{Counter, Histogram, Key, Label, Level, Metadata, NoopRecorder, Recorder, Unit};

/// Object-store requests by operation and outcome.
pub const OBJECT_STORE_REQUESTS: &str = "silt_object_store_requests_total";
/// Bytes sent (put) or received (get) by operation.
pub const OBJECT_STORE_BYTES: &str = "silt_object_store_bytes_total";
/// Object-store request latency by operation (to the response headers for a get).
pub const OBJECT_STORE_DURATION: &str = "silt_object_store_request_duration_seconds";
/// Read-cache chunk lookups by result.
pub const READ_CACHE_LOOKUPS: &str = "silt_read_cache_lookups_total";

const METADATA: Metadata<'static> = Metadata::new("silt", Level::INFO, Some(module_path!()));

/// Registers a counter named `name` with `labels`.
pub fn counter(r: &dyn Recorder, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
    r.register_counter(&key(name, labels), &METADATA)
}

/// Registers a histogram named `name` with `labels`.
pub fn histogram(
    r: &dyn Recorder,
    name: &'static str,
    labels: &[(&'static str, &str)],
) -> Histogram {
    r.register_histogram(&key(name, labels), &METADATA)
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

/// An object-store operation, as the `op` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Head,
    Delete,
    List,
}

const OPS: [(Op, &str); 5] = [
    (Op::Put, "put"),
    (Op::Get, "get"),
    (Op::Head, "head"),
    (Op::Delete, "delete"),
    (Op::List, "list"),
];
const OUTCOMES: [&str; 3] = ["ok", "not_found", "error"];

/// The handles an [`InstrumentedStore`](crate::object::InstrumentedStore) records into.
#[derive(Debug, Clone)]
pub struct ObjectStoreMetrics {
    requests: [[Counter; 3]; 5],
    bytes: [Counter; 5],
    duration: [Histogram; 5],
}

impl Default for ObjectStoreMetrics {
    /// Records nothing.
    fn default() -> Self {
        Self::register(&NoopRecorder)
    }
}

impl ObjectStoreMetrics {
    /// Registers every operation × outcome on `r` and describes the metrics.
    pub fn register(r: &dyn Recorder) -> Self {
        r.describe_counter(
            OBJECT_STORE_REQUESTS.into(),
            None,
            "Object-store requests by operation (put, get, head, delete, list) and outcome (ok, not_found, error).".into(),
        );
        r.describe_counter(
            OBJECT_STORE_BYTES.into(),
            Some(Unit::Bytes),
            "Bytes sent by puts and received by gets.".into(),
        );
        r.describe_histogram(
            OBJECT_STORE_DURATION.into(),
            Some(Unit::Seconds),
            "Object-store request latency by operation.".into(),
        );
        Self {
            requests: OPS.map(|(_, op)| {
                OUTCOMES.map(|o| counter(r, OBJECT_STORE_REQUESTS, &[("op", op), ("outcome", o)]))
            }),
            bytes: OPS.map(|(_, op)| counter(r, OBJECT_STORE_BYTES, &[("op", op)])),
            duration: OPS.map(|(_, op)| histogram(r, OBJECT_STORE_DURATION, &[("op", op)])),
        }
    }

    /// Records one request of `op` that started at `started` and ended with `result`.
    pub fn observe<T>(&self, op: Op, started: Instant, result: &object_store::Result<T>) {
        self.duration[op as usize].record(started.elapsed().as_secs_f64());
        self.outcome(op, result);
    }

    /// Counts one request of `op` by its outcome.
    pub fn outcome<T>(&self, op: Op, result: &object_store::Result<T>) {
        let outcome = match result {
            Ok(_) => 0,
            Err(object_store::Error::NotFound { .. }) => 1,
            Err(_) => 2,
        };
        self.requests[op as usize][outcome].increment(1);
    }

    /// Counts bytes moved by `op`.
    pub fn bytes(&self, op: Op, bytes: u64) {
        self.bytes[op as usize].increment(bytes);
    }
}

/// The handles a [`SegmentCache`](crate::cache::SegmentCache) records into.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    pub(crate) memory_hit: Counter,
    pub(crate) disk_hit: Counter,
    pub(crate) miss: Counter,
}

impl Default for CacheMetrics {
    /// Records nothing.
    fn default() -> Self {
        Self::register(&NoopRecorder)
    }
}

impl CacheMetrics {
    /// Registers the lookup results on `r`.
    pub fn register(r: &dyn Recorder) -> Self {
        r.describe_counter(
            READ_CACHE_LOOKUPS.into(),
            None,
            "Read-cache chunk lookups: memory_hit, disk_hit, or miss (one range GET).".into(),
        );
        let c = |result| counter(r, READ_CACHE_LOOKUPS, &[("result", result)]);
        Self {
            memory_hit: c("memory_hit"),
            disk_hit: c("disk_hit"),
            miss: c("miss"),
        }
    }
}

/// A recorder for tests: counts what was recorded, by name and labels.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    /// Counter totals of a [`DebuggingRecorder`] (whose snapshots drain counters, so the
    /// totals accumulate here).
    pub struct Counts {
        snapshotter: Snapshotter,
        totals: Mutex<HashMap<String, u64>>,
    }

    impl std::fmt::Debug for Counts {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Counts").finish_non_exhaustive()
        }
    }

    impl Counts {
        /// A recorder to register handles on, and the counts of what it records.
        pub fn new() -> (DebuggingRecorder, Counts) {
            let recorder = DebuggingRecorder::new();
            let counts = Counts {
                snapshotter: recorder.snapshotter(),
                totals: Mutex::default(),
            };
            (recorder, counts)
        }

        /// The total of counter `name` with exactly `labels` (sorted by key).
        pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
            let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
            for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
                if let DebugValue::Counter(n) = value {
                    *totals
                        .entry(id(
                            key.key().name(),
                            key.key().labels().map(|l| (l.key(), l.value())),
                        ))
                        .or_default() += n;
                }
            }
            let mut wanted = labels.to_vec();
            wanted.sort();
            totals
                .get(&id(name, wanted.into_iter()))
                .copied()
                .unwrap_or(0)
        }
    }

    fn id<'a>(name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
        let mut labels: Vec<_> = labels.collect();
        labels.sort();
        format!("{name}{labels:?}")
    }
}
