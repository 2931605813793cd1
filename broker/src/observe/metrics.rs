//! The broker's metrics: one Prometheus registry per broker (`metrics-exporter-prometheus`'s
//! recorder, never a process-global one, so brokers in one test process stay apart), written
//! through handles registered once — recording is an atomic add, not a name lookup — and
//! rendered by the admin server's `/metrics`. `Admin.GetStats` reads its totals from the same
//! registry. Every name is listed in `deploy/metrics.txt` (a test keeps the two equal) and
//! documented in the README.
//!
//! Counting rule: a record is counted once, by the broker that did the work — produce by the
//! owner that appended it (a forwarded request is counted at the owner only), fetch by the
//! broker that served it — so sums over brokers are exactly what clients sent and read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram as Hdr;
use metrics::{Counter, Gauge, Histogram, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use silt_storage::metrics::{CacheMetrics, ObjectStoreMetrics, counter, histogram};

use crate::core::ErrorKind;

/// Every metric Silt exports, with its type and help text: the one list the registry, the
/// README and `deploy/metrics.txt` agree on.
pub const CATALOG: &[(&str, Kind, &str)] = &[
    (
        PRODUCE_RECORDS,
        Kind::Counter,
        "Records appended by this broker (the partition's owner), by topic.",
    ),
    (
        PRODUCE_BYTES,
        Kind::Counter,
        "Record-batch bytes appended by this broker, by topic.",
    ),
    (
        PRODUCE_ERRORS,
        Kind::Counter,
        "Produce requests (or records) refused or failed, by reason, counted by the broker the client called.",
    ),
    (
        PRODUCE_ACK,
        Kind::Histogram,
        "Time from a produce request's arrival to its durable acknowledgement.",
    ),
    (
        FETCH_RECORDS,
        Kind::Counter,
        "Records served by this broker, by topic.",
    ),
    (
        FETCH_BYTES,
        Kind::Counter,
        "Record-batch bytes served by this broker, by topic.",
    ),
    (
        REQUEST_DURATION,
        Kind::Histogram,
        "Request latency by RPC and protocol.",
    ),
    (
        REQUEST_ERRORS,
        Kind::Counter,
        "Requests answered with an error, by RPC, protocol and status code.",
    ),
    (
        FLUSH_STAGE,
        Kind::Histogram,
        "Time of each stage of a flush: wait_for_flush (window open to upload), put, commit, ack (window open to acknowledgement).",
    ),
    (
        FLUSH_SIZE,
        Kind::Histogram,
        "Bytes of each committed segment object.",
    ),
    (
        FLUSH_INTERVAL,
        Kind::Histogram,
        "Time between two committed flushes.",
    ),
    (
        FLUSHES,
        Kind::Counter,
        "Segment flushes by outcome: committed, fenced (ownership lost), failed.",
    ),
    (
        FLUSHES_IN_FLIGHT,
        Kind::Gauge,
        "Segment uploads and commits in progress.",
    ),
    (
        WAL_CACHE_BYTES,
        Kind::Gauge,
        "Bytes accepted and not yet committed (the WAL cache).",
    ),
    (
        WAL_CACHE_LIMIT,
        Kind::Gauge,
        "The WAL cache's bound; produce gets a busy answer past it.",
    ),
    (
        silt_storage::metrics::OBJECT_STORE_REQUESTS,
        Kind::Counter,
        "Object-store requests by operation (put, get, head, delete, list) and outcome (ok, not_found, error).",
    ),
    (
        silt_storage::metrics::OBJECT_STORE_BYTES,
        Kind::Counter,
        "Bytes sent by puts and received by gets.",
    ),
    (
        silt_storage::metrics::OBJECT_STORE_DURATION,
        Kind::Histogram,
        "Object-store request latency by operation.",
    ),
    (
        silt_storage::metrics::READ_CACHE_LOOKUPS,
        Kind::Counter,
        "Read-cache chunk lookups: memory_hit, disk_hit, or miss (one range GET).",
    ),
    (
        METADATA_TXN,
        Kind::Histogram,
        "Metadata store transaction latency (etcd or embedded).",
    ),
    (
        METADATA_ERRORS,
        Kind::Counter,
        "Failed metadata store calls by operation (range, txn, lease, watch).",
    ),
    (
        METADATA_COMMIT_BYTES,
        Kind::Counter,
        "Bytes segment commits wrote to the metadata store.",
    ),
    (
        SEGMENT_COMMITS,
        Kind::Counter,
        "Segment commit transactions sent to the metadata store, retries included.",
    ),
    (
        WATCH_LAG,
        Kind::Gauge,
        "Time from this broker's latest segment commit to its metadata watch applying it.",
    ),
    (
        OWNED_PARTITIONS,
        Kind::Gauge,
        "Partitions this broker owns.",
    ),
    (
        OWNERSHIP_CHANGES,
        Kind::Counter,
        "Partitions this broker gained or lost.",
    ),
    (
        CONTROLLER,
        Kind::Gauge,
        "1 on the broker that is the cluster's controller, else 0.",
    ),
    (
        COMPACTIONS,
        Kind::Counter,
        "Compaction runs of this broker's partitions, by outcome: committed, refused (the partition moved, the topic went, or the range was compacted already), failed.",
    ),
    (
        COMPACTION_BYTES,
        Kind::Counter,
        "Batch bytes compaction read to write per-partition objects (key compaction reads the dirty entries twice).",
    ),
    (
        KEY_COMPACTION_DROPPED,
        Kind::Counter,
        "Records key compaction removed from compacted topics (superseded by a later record of their key, or expired tombstones).",
    ),
    (
        INDEX_PAGES_WRITTEN,
        Kind::Counter,
        "Index pages and archives this broker wrote: its partitions' oldest compacted entries rolled out of metadata into the object store, and the oldest pages of a full index root moved into an archive.",
    ),
    (
        INDEX_PAGE_LOADS,
        Kind::Counter,
        "Index pages and archives read from the object store to serve reads of older offsets (misses of the index page cache).",
    ),
    (
        GC_OBJECTS_DELETED,
        Kind::Counter,
        "Objects the controller's garbage collection deleted (no commit referenced them for the grace period).",
    ),
    (
        METADATA_COMPACTED_REVISION,
        Kind::Gauge,
        "The revision up to which this controller last compacted the metadata store's change history (--metadata-history-ms).",
    ),
    (
        CLUSTER_BROKERS,
        Kind::Gauge,
        "Brokers this broker sees in the cluster.",
    ),
    (READY, Kind::Gauge, "1 while /readyz answers ready, else 0."),
    (
        GROUP_LAG,
        Kind::Gauge,
        "Records a consumer group is behind the high watermark, by group, topic and partition.",
    ),
    (
        BUILD_INFO,
        Kind::Gauge,
        "Always 1; the version label says which build runs.",
    ),
    (
        PROCESS_CPU,
        Kind::Counter,
        "CPU seconds (user + system) the broker process has used.",
    ),
    (
        PROCESS_RSS,
        Kind::Gauge,
        "Resident memory of the broker process.",
    ),
];

/// How a compaction run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionOutcome {
    Committed = 0,
    Refused = 1,
    Failed = 2,
}

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub const PRODUCE_RECORDS: &str = "silt_produce_records_total";
pub const PRODUCE_BYTES: &str = "silt_produce_bytes_total";
pub const PRODUCE_ERRORS: &str = "silt_produce_errors_total";
pub const PRODUCE_ACK: &str = "silt_produce_ack_duration_seconds";
pub const FETCH_RECORDS: &str = "silt_fetch_records_total";
pub const FETCH_BYTES: &str = "silt_fetch_bytes_total";
pub const REQUEST_DURATION: &str = "silt_request_duration_seconds";
pub const REQUEST_ERRORS: &str = "silt_request_errors_total";
pub const FLUSH_STAGE: &str = "silt_flush_stage_duration_seconds";
pub const FLUSH_SIZE: &str = "silt_flush_size_bytes";
pub const FLUSH_INTERVAL: &str = "silt_flush_interval_seconds";
pub const FLUSHES: &str = "silt_flushes_total";
pub const FLUSHES_IN_FLIGHT: &str = "silt_flushes_in_flight";
pub const WAL_CACHE_BYTES: &str = "silt_wal_cache_bytes";
pub const WAL_CACHE_LIMIT: &str = "silt_wal_cache_limit_bytes";
pub const METADATA_TXN: &str = "silt_metadata_txn_duration_seconds";
pub const METADATA_ERRORS: &str = "silt_metadata_errors_total";
pub const METADATA_COMMIT_BYTES: &str = "silt_metadata_commit_bytes_total";
pub const SEGMENT_COMMITS: &str = "silt_segment_commits_total";
pub const WATCH_LAG: &str = "silt_metadata_watch_lag_seconds";
pub const OWNED_PARTITIONS: &str = "silt_owned_partitions";
pub const OWNERSHIP_CHANGES: &str = "silt_ownership_changes_total";
pub const CONTROLLER: &str = "silt_controller";
pub const COMPACTIONS: &str = "silt_compactions_total";
pub const COMPACTION_BYTES: &str = "silt_compaction_bytes_total";
pub const GC_OBJECTS_DELETED: &str = "silt_gc_objects_deleted_total";
pub const KEY_COMPACTION_DROPPED: &str = "silt_key_compaction_records_removed_total";
pub const INDEX_PAGES_WRITTEN: &str = "silt_index_pages_written_total";
pub const INDEX_PAGE_LOADS: &str = "silt_index_page_loads_total";
pub const METADATA_COMPACTED_REVISION: &str = "silt_metadata_compacted_revision";
pub const CLUSTER_BROKERS: &str = "silt_cluster_brokers";
pub const READY: &str = "silt_ready";
pub const GROUP_LAG: &str = "silt_group_lag_records";
pub const BUILD_INFO: &str = "silt_build_info";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";

/// Latency buckets (seconds): 0.5 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Size buckets (bytes): 1 KiB to 64 MiB.
const BYTES_BUCKETS: &[f64] = &[
    1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 8388608.0, 16777216.0, 67108864.0,
];

/// The stages of an acknowledged produce, as `Admin.GetStats` and the `stage` label name them.
pub const STAGES: [&str; 4] = ["wait_for_flush", "put", "commit", "ack"];

/// One flush's time in each stage.
#[derive(Debug, Clone, Copy)]
pub struct FlushTimes {
    pub wait_for_flush: Duration,
    pub put: Duration,
    pub commit: Duration,
    pub ack: Duration,
}

impl FlushTimes {
    fn each(&self) -> [Duration; 4] {
        [self.wait_for_flush, self.put, self.commit, self.ack]
    }
}

/// A produce failure's `reason` label.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Invalid => "invalid",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Exists => "exists",
        ErrorKind::OutOfRange { .. } => "out_of_range",
        ErrorKind::Busy { .. } => "busy",
        ErrorKind::NotOwner { .. } => "not_owner",
        ErrorKind::Unavailable { .. } => "unavailable",
        ErrorKind::Ambiguous => "ambiguous",
        ErrorKind::Precondition => "precondition",
        ErrorKind::Fenced => "fenced",
        ErrorKind::Internal => "internal",
    }
}

/// Per-topic record and byte counters.
#[derive(Debug)]
struct TopicCounters {
    produce_records: Counter,
    produce_bytes: Counter,
    fetch_records: Counter,
    fetch_bytes: Counter,
}

/// What the admin server samples into gauges at each scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateSample {
    pub wal_cache_bytes: u64,
    pub owned_partitions: usize,
    pub controller: bool,
    pub brokers: usize,
    pub ready: bool,
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One broker's registry and the handles it records into.
pub struct Metrics {
    broker_id: String,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Exact stage quantiles for `Admin.GetStats` (the bench reads p50/p99 from here; the
    /// Prometheus histograms have buckets, which are for dashboards).
    stages: StageHistograms,
    produce_ack: Histogram,
    flush_stages: [Histogram; 4],
    flush_size: Histogram,
    flush_interval: Histogram,
    last_flush: Mutex<Option<Instant>>,
    flushes_committed: Counter,
    flushes_fenced: Counter,
    flushes_failed: Counter,
    flushes_in_flight: Gauge,
    metadata_commit_bytes: Counter,
    segment_commits: Counter,
    watch_lag: Gauge,
    ownership_changes: Counter,
    compactions: [Counter; 3],
    compaction_bytes: Counter,
    gc_objects_deleted: Counter,
    key_compaction_dropped: Counter,
    index_pages_written: Counter,
    index_page_loads: Counter,
    metadata_compacted_revision: Gauge,
    wal_cache_bytes: Gauge,
    wal_cache_limit: Gauge,
    owned_partitions: Gauge,
    controller: Gauge,
    cluster_brokers: Gauge,
    ready: Gauge,
    process_cpu: Counter,
    process_rss: Gauge,
    topics: RwLock<HashMap<String, Arc<TopicCounters>>>,
    /// Lazily registered handles with labels known only at run time.
    labelled: Mutex<HashMap<(&'static str, String), Labelled>>,
}

#[derive(Debug, Clone)]
enum Labelled {
    Counter(Counter),
    Histogram(Histogram),
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry for broker `broker_id` (every sample carries a `broker` label) whose WAL
    /// cache holds at most `wal_cache_limit` bytes.
    pub fn new(broker_id: &str, wal_cache_limit: u64) -> Self {
        let recorder = PrometheusBuilder::new()
            .add_global_label("broker", broker_id)
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        let r: &dyn Recorder = &recorder;
        for (name, kind, help) in CATALOG {
            let unit = if name.ends_with("_seconds") || name.ends_with("_seconds_total") {
                Some(Unit::Seconds)
            } else if name.ends_with("_bytes") || name.ends_with("_bytes_total") {
                Some(Unit::Bytes)
            } else {
                None
            };
            match kind {
                Kind::Counter => r.describe_counter((*name).into(), unit, (*help).into()),
                Kind::Gauge => r.describe_gauge((*name).into(), unit, (*help).into()),
                Kind::Histogram => r.describe_histogram((*name).into(), unit, (*help).into()),
            }
        }
        let gauge = |name| r.register_gauge(&metrics::Key::from_name(name), &meta());
        let plain = |name| counter(r, name, &[]);
        let flushes = |outcome| counter(r, FLUSHES, &[("outcome", outcome)]);
        r.register_gauge(
            &metrics::Key::from_parts(
                BUILD_INFO,
                vec![metrics::Label::new("version", env!("CARGO_PKG_VERSION"))],
            ),
            &meta(),
        )
        .set(1.0);
        let wal_cache_limit_gauge = gauge(WAL_CACHE_LIMIT);
        wal_cache_limit_gauge.set(wal_cache_limit as f64);
        let metrics = Self {
            broker_id: broker_id.to_string(),
            stages: StageHistograms::default(),
            produce_ack: histogram(r, PRODUCE_ACK, &[]),
            flush_stages: STAGES.map(|stage| histogram(r, FLUSH_STAGE, &[("stage", stage)])),
            flush_size: histogram(r, FLUSH_SIZE, &[]),
            flush_interval: histogram(r, FLUSH_INTERVAL, &[]),
            last_flush: Mutex::new(None),
            flushes_committed: flushes("committed"),
            flushes_fenced: flushes("fenced"),
            flushes_failed: flushes("failed"),
            flushes_in_flight: gauge(FLUSHES_IN_FLIGHT),
            metadata_commit_bytes: plain(METADATA_COMMIT_BYTES),
            segment_commits: plain(SEGMENT_COMMITS),
            watch_lag: gauge(WATCH_LAG),
            ownership_changes: plain(OWNERSHIP_CHANGES),
            compactions: ["committed", "refused", "failed"]
                .map(|outcome| counter(r, COMPACTIONS, &[("outcome", outcome)])),
            compaction_bytes: plain(COMPACTION_BYTES),
            gc_objects_deleted: plain(GC_OBJECTS_DELETED),
            key_compaction_dropped: plain(KEY_COMPACTION_DROPPED),
            index_pages_written: plain(INDEX_PAGES_WRITTEN),
            index_page_loads: plain(INDEX_PAGE_LOADS),
            metadata_compacted_revision: gauge(METADATA_COMPACTED_REVISION),
            wal_cache_bytes: gauge(WAL_CACHE_BYTES),
            wal_cache_limit: wal_cache_limit_gauge,
            owned_partitions: gauge(OWNED_PARTITIONS),
            controller: gauge(CONTROLLER),
            cluster_brokers: gauge(CLUSTER_BROKERS),
            ready: gauge(READY),
            process_cpu: plain(PROCESS_CPU),
            process_rss: gauge(PROCESS_RSS),
            topics: RwLock::default(),
            labelled: Mutex::default(),
            recorder,
            handle,
        };
        let _ = &metrics.wal_cache_limit;
        metrics
    }

    /// The registry, to register more handles on (the stores' decorators).
    pub fn recorder(&self) -> &dyn Recorder {
        &self.recorder
    }

    /// Handles for an object store decorator.
    pub fn object_store(&self) -> ObjectStoreMetrics {
        ObjectStoreMetrics::register(&self.recorder)
    }

    /// Handles for the read cache.
    pub fn read_cache(&self) -> CacheMetrics {
        CacheMetrics::register(&self.recorder)
    }

    fn topic(&self, topic: &str) -> Arc<TopicCounters> {
        if let Some(c) = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return c.clone();
        }
        let r: &dyn Recorder = &self.recorder;
        let c = |name| counter(r, name, &[("topic", topic)]);
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(topic.to_string())
            .or_insert_with(|| {
                Arc::new(TopicCounters {
                    produce_records: c(PRODUCE_RECORDS),
                    produce_bytes: c(PRODUCE_BYTES),
                    fetch_records: c(FETCH_RECORDS),
                    fetch_bytes: c(FETCH_BYTES),
                })
            })
            .clone()
    }

    fn labelled(
        &self,
        name: &'static str,
        labels: &[(&'static str, &str)],
        make: impl FnOnce(&dyn Recorder) -> Labelled,
    ) -> Labelled {
        let mut id = String::new();
        for (k, v) in labels {
            id.push_str(k);
            id.push('=');
            id.push_str(v);
            id.push(',');
        }
        self.labelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((name, id))
            .or_insert_with(|| make(&self.recorder))
            .clone()
    }

    /// Records appended by this broker (the owner).
    pub fn produced(&self, topic: &str, records: u64, bytes: u64) {
        let c = self.topic(topic);
        c.produce_records.increment(records);
        c.produce_bytes.increment(bytes);
    }

    /// Records served by this broker.
    pub fn fetched(&self, topic: &str, records: u64, bytes: u64) {
        let c = self.topic(topic);
        c.fetch_records.increment(records);
        c.fetch_bytes.increment(bytes);
    }

    /// `n` produce requests or records failed with `kind`.
    pub fn produce_failed(&self, kind: &ErrorKind, n: u64) {
        let reason = reason(kind);
        if let Labelled::Counter(c) = self.labelled(PRODUCE_ERRORS, &[("reason", reason)], |r| {
            Labelled::Counter(counter(r, PRODUCE_ERRORS, &[("reason", reason)]))
        }) {
            c.increment(n);
        }
    }

    /// A produce request was acknowledged `elapsed` after it arrived.
    pub fn produce_acked(&self, elapsed: Duration) {
        self.produce_ack.record(elapsed.as_secs_f64());
    }

    /// One request of `rpc` over `protocol` took `elapsed` and ended with `code` (`None`: ok).
    pub fn request(
        &self,
        rpc: &'static str,
        protocol: &'static str,
        elapsed: Duration,
        code: Option<&'static str>,
    ) {
        let labels = [("rpc", rpc), ("protocol", protocol)];
        if let Labelled::Histogram(h) = self.labelled(REQUEST_DURATION, &labels, |r| {
            Labelled::Histogram(histogram(r, REQUEST_DURATION, &labels))
        }) {
            h.record(elapsed.as_secs_f64());
        }
        if let Some(code) = code {
            let labels = [("rpc", rpc), ("protocol", protocol), ("code", code)];
            if let Labelled::Counter(c) = self.labelled(REQUEST_ERRORS, &labels, |r| {
                Labelled::Counter(counter(r, REQUEST_ERRORS, &labels))
            }) {
                c.increment(1);
            }
        }
    }

    /// A flush started uploading.
    pub fn flush_started(&self) {
        self.flushes_in_flight.increment(1.0);
    }

    /// A flush was committed: `size` bytes of object, `metadata_bytes` written to metadata.
    pub fn flush_committed(&self, size: usize, metadata_bytes: usize, times: &FlushTimes) {
        self.flushes_in_flight.decrement(1.0);
        self.flushes_committed.increment(1);
        self.flush_size.record(size as f64);
        self.metadata_commit_bytes.increment(metadata_bytes as u64);
        for (h, d) in self.flush_stages.iter().zip(times.each()) {
            h.record(d.as_secs_f64());
        }
        self.stages.record(times);
        let now = Instant::now();
        let mut last = self.last_flush.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(previous) = last.replace(now) {
            self.flush_interval
                .record(now.duration_since(previous).as_secs_f64());
        }
    }

    /// A flush failed; `fenced` when ownership was lost.
    pub fn flush_failed(&self, fenced: bool) {
        self.flushes_in_flight.decrement(1.0);
        if fenced {
            self.flushes_fenced.increment(1);
        } else {
            self.flushes_failed.increment(1);
        }
    }

    /// A compaction run ended: `copied` bytes committed (`Some`), or refused / failed.
    pub fn compaction(&self, outcome: CompactionOutcome, copied: u64) {
        self.compactions[outcome as usize].increment(1);
        self.compaction_bytes.increment(copied);
    }

    /// Key compaction removed `n` records.
    pub fn key_compaction_removed(&self, n: u64) {
        self.key_compaction_dropped.increment(n);
    }

    /// Roll-up wrote an index page.
    pub fn index_page_written(&self) {
        self.index_pages_written.increment(1);
    }

    /// A reader loaded an index page from the store.
    pub fn index_page_loaded(&self) {
        self.index_page_loads.increment(1);
    }

    /// The controller compacted the metadata store's history up to `revision`.
    pub fn metadata_compacted(&self, revision: i64) {
        self.metadata_compacted_revision.set(revision as f64);
    }

    /// Garbage collection deleted `n` objects.
    pub fn gc_deleted(&self, n: u64) {
        self.gc_objects_deleted.increment(n);
    }

    /// One segment commit transaction is sent (a retry is another).
    pub fn segment_commit_sent(&self) {
        self.segment_commits.increment(1);
    }

    /// This broker's watch applied its own commit `lag` after the commit returned.
    pub fn watch_lag(&self, lag: Duration) {
        self.watch_lag.set(lag.as_secs_f64());
    }

    /// The handle counting partitions this broker gains or loses.
    pub fn ownership_changes(&self) -> Counter {
        self.ownership_changes.clone()
    }

    /// Samples state into gauges (each scrape does, before rendering).
    pub fn sample(&self, s: &StateSample) {
        self.wal_cache_bytes.set(s.wal_cache_bytes as f64);
        self.owned_partitions.set(s.owned_partitions as f64);
        self.controller.set(if s.controller { 1.0 } else { 0.0 });
        self.cluster_brokers.set(s.brokers as f64);
        self.ready.set(if s.ready { 1.0 } else { 0.0 });
        self.process_cpu.absolute(process_cpu_seconds() as u64);
        if let Some(rss) = process_rss_bytes() {
            self.process_rss.set(rss as f64);
        }
    }

    /// `silt_group_lag_records` for `rows` of (group, topic, partition, lag), in the text
    /// format, with this broker's label; empty when there are none.
    pub fn render_group_lag(&self, rows: &[(String, String, u32, i64)]) -> String {
        use std::fmt::Write;
        if rows.is_empty() {
            return String::new();
        }
        let help = CATALOG
            .iter()
            .find(|(n, _, _)| *n == GROUP_LAG)
            .map_or("", |(_, _, h)| *h);
        let mut out = format!("# HELP {GROUP_LAG} {help}\n# TYPE {GROUP_LAG} gauge\n");
        for (group, topic, partition, lag) in rows {
            let _ = writeln!(
                out,
                "{GROUP_LAG}{{broker=\"{}\",group=\"{}\",topic=\"{}\",partition=\"{partition}\"}} {lag}",
                escape_label(&self.broker_id),
                escape_label(group),
                escape_label(topic),
            );
        }
        out
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets so memory stays bounded between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Totals read back from the registry (what `Admin.GetStats` reports).
    pub fn totals(&self) -> Totals {
        let text = self.render();
        let sum = |name: &str, labels: &[(&str, &str)]| sum_samples(&text, name, labels) as u64;
        Totals {
            records_produced: sum(PRODUCE_RECORDS, &[]),
            bytes_produced: sum(PRODUCE_BYTES, &[]),
            records_fetched: sum(FETCH_RECORDS, &[]),
            bytes_fetched: sum(FETCH_BYTES, &[]),
            segments_flushed: sum(FLUSHES, &[("outcome", "committed")]),
            segment_bytes_flushed: sum(&format!("{FLUSH_SIZE}_sum"), &[]),
            metadata_bytes: sum(METADATA_COMMIT_BYTES, &[]),
            metadata_txns: sum(SEGMENT_COMMITS, &[]),
            object_puts: sum(
                silt_storage::metrics::OBJECT_STORE_REQUESTS,
                &[("op", "put")],
            ),
            object_gets: sum(
                silt_storage::metrics::OBJECT_STORE_REQUESTS,
                &[("op", "get")],
            ),
            object_get_bytes: sum(silt_storage::metrics::OBJECT_STORE_BYTES, &[("op", "get")]),
        }
    }

    /// `(stage, count, p50 ms, p99 ms, max ms)` per flush stage.
    pub fn stage_summary(&self) -> Vec<(&'static str, u64, f64, f64, f64)> {
        self.stages.summary()
    }
}

fn meta() -> metrics::Metadata<'static> {
    metrics::Metadata::new("silt", metrics::Level::INFO, Some(module_path!()))
}

/// Totals since start, read from the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub records_produced: u64,
    pub bytes_produced: u64,
    pub records_fetched: u64,
    pub bytes_fetched: u64,
    pub segments_flushed: u64,
    pub segment_bytes_flushed: u64,
    pub metadata_bytes: u64,
    pub metadata_txns: u64,
    pub object_puts: u64,
    pub object_gets: u64,
    pub object_get_bytes: u64,
}

/// Sums the samples of metric `name` whose labels include `labels`, in a Prometheus text
/// exposition.
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let has = |k: &str, v: &str| {
                label_text
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            };
            if !labels.iter().all(|(k, v)| has(k, v)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// Latency histograms (microseconds, 3 significant digits) of the stages in [`STAGES`].
#[derive(Debug)]
struct StageHistograms(Mutex<Vec<Hdr<u64>>>);

impl Default for StageHistograms {
    fn default() -> Self {
        let h = || Hdr::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        Self(Mutex::new(STAGES.iter().map(|_| h()).collect()))
    }
}

impl StageHistograms {
    fn record(&self, t: &FlushTimes) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (i, d) in t.each().into_iter().enumerate() {
            h[i].saturating_record(d.as_micros().max(1) as u64);
        }
    }

    fn summary(&self) -> Vec<(&'static str, u64, f64, f64, f64)> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let ms = |us: u64| us as f64 / 1000.0;
        STAGES
            .iter()
            .zip(h.iter())
            .map(|(name, h)| {
                (
                    *name,
                    h.len(),
                    ms(h.value_at_quantile(0.5)),
                    ms(h.value_at_quantile(0.99)),
                    ms(h.max()),
                )
            })
            .collect()
    }
}

/// CPU seconds (user + system, all threads) this process has used, from `/proc/self/stat` in
/// the kernel's clock ticks (read with `procfs`, at the machine's real tick rate). Returns 0
/// where procfs is missing.
pub fn process_cpu_seconds() -> f64 {
    match procfs::process::Process::myself().and_then(|p| p.stat()) {
        Ok(stat) => (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64,
        Err(_) => 0.0,
    }
}

/// Resident memory of this process, from `/proc/self/stat`.
fn process_rss_bytes() -> Option<u64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some(stat.rss * procfs::page_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_come_from_the_rendered_registry() {
        let m = Metrics::new("b-1", 1 << 20);
        m.produced("orders", 3, 300);
        m.produced("clicks", 2, 20);
        m.fetched("orders", 1, 100);
        m.produce_failed(&ErrorKind::Busy { retry_after_ms: 5 }, 2);
        m.request(
            "Produce",
            "grpc",
            Duration::from_millis(3),
            Some("unavailable"),
        );
        m.flush_started();
        let times = FlushTimes {
            wait_for_flush: Duration::from_millis(1),
            put: Duration::from_millis(2),
            commit: Duration::from_millis(3),
            ack: Duration::from_millis(6),
        };
        m.flush_committed(4096, 120, &times);
        let text = m.render();
        assert_eq!(
            sum_samples(&text, PRODUCE_RECORDS, &[("topic", "orders")]),
            3.0
        );
        assert_eq!(
            sum_samples(&text, PRODUCE_ERRORS, &[("reason", "busy")]),
            2.0
        );
        assert_eq!(
            sum_samples(
                &text,
                REQUEST_ERRORS,
                &[("rpc", "Produce"), ("code", "unavailable")]
            ),
            1.0
        );
        assert!(text.contains("broker=\"b-1\""), "{text}");
        assert!(text.contains("# TYPE silt_produce_ack_duration_seconds histogram"));
        assert_eq!(sum_samples(&text, FLUSHES_IN_FLIGHT, &[]), 0.0);
        let t = m.totals();
        assert_eq!(
            (
                t.records_produced,
                t.bytes_produced,
                t.records_fetched,
                t.bytes_fetched
            ),
            (5, 320, 1, 100)
        );
        assert_eq!(
            (
                t.segments_flushed,
                t.segment_bytes_flushed,
                t.metadata_bytes
            ),
            (1, 4096, 120)
        );
        assert_eq!(m.stage_summary()[3].1, 1);
    }

    #[test]
    fn every_metric_is_listed_in_deploy_metrics_txt() {
        let listed = include_str!("../../../deploy/metrics.txt");
        let listed: std::collections::BTreeSet<&str> = listed
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let exported: std::collections::BTreeSet<&str> =
            CATALOG.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(
            listed, exported,
            "deploy/metrics.txt and observe::metrics::CATALOG must list the same names"
        );
    }

    #[test]
    fn every_catalogued_metric_is_rendered_with_help_and_type() {
        let m = Metrics::new("b-1", 1);
        m.sample(&StateSample::default());
        // Metrics registered lazily (per topic, per RPC, per reason) appear once used.
        m.produced("t", 1, 1);
        m.produce_failed(&ErrorKind::Internal, 1);
        m.produce_acked(Duration::from_millis(1));
        m.request(
            "Produce",
            "grpc",
            Duration::from_millis(1),
            Some("internal"),
        );
        let _ = m.object_store();
        let _ = m.read_cache();
        let text = m.render();
        for (name, kind, _) in CATALOG {
            if matches!(*name, METADATA_TXN | METADATA_ERRORS | GROUP_LAG) {
                continue; // registered by the metadata decorator and by consumer groups
            }
            let ty = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert!(
                text.contains(&format!("# TYPE {name} {ty}")),
                "{name} is not rendered as a {ty}:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help"
            );
        }
    }

    #[test]
    fn group_lag_is_rendered_with_escaped_labels() {
        let m = Metrics::new("b\"0", 1);
        assert_eq!(m.render_group_lag(&[]), "");
        let text = m.render_group_lag(&[
            ("orders/eu".into(), "t".into(), 3, 42),
            ("we\"ird\\g\nx".into(), "t".into(), 0, 0),
        ]);
        assert!(text.starts_with("# HELP silt_group_lag_records "), "{text}");
        assert!(text.contains("# TYPE silt_group_lag_records gauge\n"));
        assert!(text.contains(
            "silt_group_lag_records{broker=\"b\\\"0\",group=\"orders/eu\",topic=\"t\",partition=\"3\"} 42\n"
        ), "{text}");
        assert!(text.contains("group=\"we\\\"ird\\\\g\\nx\""), "{text}");
    }
}
