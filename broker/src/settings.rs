//! Broker settings: one serde struct, layered defaults < TOML file < `SILT_*` environment <
//! command-line flags. The flag doc comments below are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Sizes in flags, `SILT_*` variables and the file: plain bytes or `8MiB`, `100MB`, `1.5GiB`
/// (the `bytesize` crate, as the `silt` CLI parses them).
mod size {
    use serde::Deserialize;

    pub(super) fn parse(s: &str) -> Result<u64, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| format!("'{s}' is not a size (use e.g. 4096, 8MiB, 100MB): {e}"))
    }

    pub(super) fn parse_u32(s: &str) -> Result<u32, String> {
        let n = parse(s)?;
        u32::try_from(n).map_err(|_| format!("'{s}' is {n} bytes; at most 4 GiB - 1"))
    }

    pub(super) fn de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        bytesize::ByteSize::deserialize(d).map(|b| b.as_u64())
    }

    pub(super) fn de_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let n = de(d)?;
        u32::try_from(n)
            .map_err(|_| serde::de::Error::custom(format!("{n} bytes is over 4 GiB - 1")))
    }
}

/// The default gRPC port: "SILT" on a phone keypad is 7458; 7450 is easier to remember.
pub const DEFAULT_PORT: u16 = 7450;

/// Everything a broker can be told. Field names are the TOML keys; `SILT_<FIELD>` in upper case
/// is the environment variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None` means `file://<data_dir>/objects`.
    pub object_store: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_allow_http: bool,
    pub s3_virtual_hosted_style: bool,
    /// Sign PUT bodies with their SHA-256; `None`: only over plain http to a network host.
    pub s3_sign_payload: Option<bool>,
    /// Create the `s3://` bucket at start if it is missing.
    pub create_bucket: bool,
    /// `embedded` (on disk under `data_dir`) or `memory`.
    pub metadata: String,
    pub cluster: String,
    /// etcd user and password, when etcd has authentication on.
    pub etcd_user: Option<String>,
    pub etcd_password: Option<String>,
    /// PEM files for TLS to etcd: the CA of its server certificate, and a client certificate
    /// and key when etcd requires them.
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub broker_id: String,
    pub linger_ms: u64,
    /// How long a window waits when the broker was idle (no flush in the last linger).
    pub idle_linger_ms: u64,
    #[serde(deserialize_with = "size::de")]
    pub flush_bytes: u64,
    #[serde(deserialize_with = "size::de")]
    pub wal_cache_bytes: u64,
    #[serde(deserialize_with = "size::de")]
    pub max_request_bytes: u64,
    pub max_request_records: u64,
    /// How often an idle client connection is pinged; a client silent for as long again is
    /// disconnected. 0: never.
    pub client_keepalive_ms: u64,
    #[serde(deserialize_with = "size::de")]
    pub max_batch_bytes: u64,
    /// Most bytes the batches of one produce request may decompress to.
    #[serde(deserialize_with = "size::de")]
    pub max_uncompressed_bytes: u64,
    #[serde(deserialize_with = "size::de_u32")]
    pub default_max_record_bytes: u32,
    pub default_retention_ms: i64,
    #[serde(deserialize_with = "size::de")]
    pub cache_memory_bytes: u64,
    #[serde(deserialize_with = "size::de")]
    pub cache_disk_bytes: u64,
    pub retention_check_ms: u64,
    /// Compaction: the size of the per-partition objects it writes; 0 turns it off.
    #[serde(deserialize_with = "size::de")]
    pub compaction_target_bytes: u64,
    /// Compaction copies only entries of objects at least this old.
    pub compaction_min_age_ms: u64,
    /// A partition's entries are copied after this long even when they fill no target object.
    pub compaction_max_delay_ms: u64,
    /// Most bytes per second one broker's compaction reads (and, on a local directory, writes).
    #[serde(deserialize_with = "size::de")]
    pub compaction_bytes_per_sec: u64,
    /// How often each broker looks for partitions to compact.
    pub compaction_check_ms: u64,
    /// Most memory key compaction's map of keys takes per run.
    #[serde(deserialize_with = "size::de")]
    pub key_compaction_map_bytes: u64,
    /// Compacted objects per index page: a partition's oldest ones roll out of metadata into a
    /// page once twice this many lead its index; 0 never rolls.
    pub index_page_parts: u32,
    /// Most pages and archives a partition's index root lists: past it, the oldest
    /// `index_archive_pages` of one level move into an archive object.
    pub index_root_pages: u32,
    /// References per index archive.
    pub index_archive_pages: u32,
    /// Most memory the index pages loaded on demand take.
    #[serde(deserialize_with = "size::de")]
    pub index_page_cache_bytes: u64,
    /// An object no commit references is deleted after this long unreferenced.
    pub gc_grace_ms: u64,
    /// The metadata store's change history the controller keeps (older revisions are
    /// compacted); 0 leaves compaction to the store.
    pub metadata_history_ms: u64,
    /// Address other brokers and clients reach this broker at; `None` = the bound address.
    pub advertise: Option<String>,
    /// TTL of the broker's membership lease.
    pub lease_ttl_ms: u64,
    pub max_inflight_flushes: usize,
    /// Longest an ordered shutdown may take before the process exits non-zero.
    pub shutdown_timeout_ms: u64,
    /// Address of the admin HTTP server: `/metrics`, `/livez`, `/readyz`.
    pub admin_listen: SocketAddr,
    /// Log lines as human-readable text or one JSON object per line.
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint traces are exported to; `None` exports none.
    pub otlp_endpoint: Option<String>,
}

/// How the broker writes its log lines (to stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// The default admin HTTP port (Prometheus exporters' conventional 9464).
pub const DEFAULT_ADMIN_PORT: u16 = 9464;

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            data_dir: PathBuf::from("./silt-data"),
            object_store: None,
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: false,
            s3_virtual_hosted_style: false,
            s3_sign_payload: None,
            create_bucket: false,
            metadata: "embedded".into(),
            cluster: "default".into(),
            etcd_user: None,
            etcd_password: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            broker_id: "broker-0".into(),
            linger_ms: 250,
            idle_linger_ms: 5,
            flush_bytes: 8 << 20,
            wal_cache_bytes: 256 << 20,
            max_request_bytes: 32 << 20,
            client_keepalive_ms: 30_000,
            max_request_records: 50_000,
            max_batch_bytes: 8 << 20,
            max_uncompressed_bytes: 256 << 20,
            default_max_record_bytes: 1 << 20,
            default_retention_ms: 7 * 24 * 3600 * 1000,
            cache_memory_bytes: 256 << 20,
            cache_disk_bytes: 0,
            retention_check_ms: 30_000,
            compaction_target_bytes: 64 << 20,
            compaction_min_age_ms: 60_000,
            compaction_max_delay_ms: 600_000,
            compaction_bytes_per_sec: 32 << 20,
            compaction_check_ms: 10_000,
            key_compaction_map_bytes: 64 << 20,
            index_page_parts: 16,
            index_root_pages: 4096,
            index_archive_pages: 256,
            index_page_cache_bytes: 64 << 20,
            gc_grace_ms: 300_000,
            metadata_history_ms: 300_000,
            advertise: None,
            lease_ttl_ms: 5_000,
            max_inflight_flushes: 4,
            shutdown_timeout_ms: 25_000,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

/// Command-line flags. Every flag is optional: unset flags fall back to the environment, the
/// config file, then the defaults.
#[derive(Debug, Default, Parser, Serialize)]
#[command(name = "silt-broker", version, about = "Silt: a diskless streaming broker", long_about = None)]
pub struct Cli {
    /// TOML config file with any of the settings below (keys are the flag names with `_`).
    #[arg(long, env = "SILT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address serving gRPC [default: 127.0.0.1:7450].
    #[arg(long, env = "SILT_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// Directory for embedded metadata, the default local object store and the disk cache
    /// [default: ./silt-data].
    #[arg(long, env = "SILT_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// Where segment objects go: `file:///path`, `memory://` or `s3://bucket/prefix`
    /// [default: file://<data-dir>/objects].
    #[arg(long, env = "SILT_OBJECT_STORE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_store: Option<String>,

    /// S3 endpoint URL for S3-compatible stores (MinIO, Garage...) [default: AWS / AWS_ENDPOINT_URL].
    #[arg(long, env = "SILT_S3_ENDPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,

    /// S3 region [default: AWS_REGION / AWS_DEFAULT_REGION].
    #[arg(long, env = "SILT_S3_REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,

    /// Allow plain http to the S3 endpoint; an endpoint written `http://...` is allowed anyway
    /// (`--s3-allow-http` alone means true) [default: false].
    #[arg(long, env = "SILT_S3_ALLOW_HTTP", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_allow_http: Option<bool>,

    /// Use virtual-hosted-style S3 URLs instead of path-style (alone means true)
    /// [default: false].
    #[arg(long, env = "SILT_S3_VIRTUAL_HOSTED_STYLE", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_virtual_hosted_style: Option<bool>,

    /// Sign each PUT's body (SigV4 with the body's SHA-256: one more pass over every byte
    /// uploaded) instead of sending it as UNSIGNED-PAYLOAD (alone means true) [default: only
    /// for a plain http endpoint that is not loopback; TLS or loopback already protect the body
    /// in transit].
    #[arg(long, env = "SILT_S3_SIGN_PAYLOAD", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_sign_payload: Option<bool>,

    /// Create the bucket of an `s3://` object store at start if it does not exist (alone means
    /// true) [default: false].
    #[arg(long, env = "SILT_CREATE_BUCKET", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_bucket: Option<bool>,

    /// Metadata store: `embedded` (redb file under the data dir), `memory`, or
    /// `etcd://host:port[,host:port...]` (builds with the `etcd` feature) [default: embedded].
    #[arg(long, env = "SILT_METADATA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,

    /// Cluster name: the metadata key prefix `/silt/<cluster>/` [default: default].
    #[arg(long, env = "SILT_CLUSTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,

    /// etcd user, when etcd has authentication enabled (with --etcd-password).
    #[arg(long, env = "SILT_ETCD_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_user: Option<String>,

    /// etcd password (prefer the SILT_ETCD_PASSWORD environment variable to a flag).
    #[arg(long, env = "SILT_ETCD_PASSWORD", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_password: Option<String>,

    /// CA certificate (PEM) of etcd's server certificate: connects to etcd over TLS.
    #[arg(long, env = "SILT_ETCD_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<PathBuf>,

    /// Client certificate (PEM) for etcd's client-certificate authentication (with --etcd-key).
    #[arg(long, env = "SILT_ETCD_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<PathBuf>,

    /// Client key (PEM) for --etcd-cert.
    #[arg(long, env = "SILT_ETCD_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<PathBuf>,

    /// This broker's id ([a-z0-9-]) [default: broker-0].
    #[arg(long, env = "SILT_BROKER_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_id: Option<String>,

    /// Longest time a produced record waits in the WAL cache before its segment is flushed.
    /// Lower = lower ack latency but more object-store PUTs (at most 1000/linger per second;
    /// S3 charges per PUT) [default: 250].
    #[arg(long, env = "SILT_LINGER_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,

    /// Adaptive linger: when no flush happened in the last linger (an idle broker), a new
    /// window is flushed this long after its first record instead, so a lone producer does not
    /// wait out the whole linger; flushes still never come more often than one per linger.
    /// Equal to --linger-ms turns it off [default: 5].
    #[arg(long, env = "SILT_IDLE_LINGER_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_linger_ms: Option<u64>,

    /// Flush a segment as soon as this many bytes are buffered [default: 8388608 (8 MiB)].
    #[arg(long, env = "SILT_FLUSH_BYTES", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush_bytes: Option<u64>,

    /// Memory for accepted but not yet committed records; past it produce gets
    /// RESOURCE_EXHAUSTED [default: 268435456 (256 MiB)].
    #[arg(long, env = "SILT_WAL_CACHE_BYTES", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_cache_bytes: Option<u64>,

    /// Largest gRPC request accepted [default: 33554432 (32 MiB)].
    #[arg(long, env = "SILT_MAX_REQUEST_BYTES", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,

    /// How often the broker pings a client connection it has heard nothing from (HTTP/2
    /// PING); the calls of a client that does not answer within twice that end, so those of a
    /// client that vanished without closing its connection (a subscription, a long poll) free
    /// what they hold. A new connection must also send the HTTP/2 preface within it (at most
    /// 30 s). 0: no pings [default: 30000].
    #[arg(long, env = "SILT_CLIENT_KEEPALIVE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_keepalive_ms: Option<u64>,

    /// Most records (Produce) or batches (ProduceBatches) in one request [default: 50000].
    #[arg(long, env = "SILT_MAX_REQUEST_RECORDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_records: Option<u64>,

    /// Largest single record batch [default: 8388608 (8 MiB)].
    #[arg(long, env = "SILT_MAX_BATCH_BYTES", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_bytes: Option<u64>,

    /// Most bytes the record batches of one produce request may decompress to; a compressed
    /// batch past it (a compression bomb) is refused without decompressing the rest
    /// [default: 268435456 (256 MiB)].
    #[arg(long, env = "SILT_MAX_UNCOMPRESSED_BYTES", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_uncompressed_bytes: Option<u64>,

    /// Largest record for topics that do not set their own [default: 1048576 (1 MiB)].
    #[arg(long, env = "SILT_DEFAULT_MAX_RECORD_BYTES", value_parser = size::parse_u32)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_max_record_bytes: Option<u32>,

    /// Retention for topics that do not set their own; -1 keeps forever [default: 604800000 (7 days)].
    #[arg(long, env = "SILT_DEFAULT_RETENTION_MS", allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_retention_ms: Option<i64>,

    /// Memory tier of the read cache [default: 268435456 (256 MiB)].
    #[arg(long, env = "SILT_CACHE_MEMORY_BYTES", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_memory_bytes: Option<u64>,

    /// Disk tier of the read cache under <data-dir>/cache; 0 disables it [default: 0].
    #[arg(long, env = "SILT_CACHE_DISK_BYTES", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_disk_bytes: Option<u64>,

    /// How often retention and garbage collection run [default: 30000].
    #[arg(long, env = "SILT_RETENTION_CHECK_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_check_ms: Option<u64>,

    /// Size of the per-partition objects compaction copies flushed entries into; 0 turns
    /// compaction off [default: 64MiB].
    #[arg(long, env = "SILT_COMPACTION_TARGET_BYTES", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_target_bytes: Option<u64>,

    /// Compaction copies entries only from objects at least this old, so the tail stays in
    /// the flush segments readers have cached [default: 60000].
    #[arg(long, env = "SILT_COMPACTION_MIN_AGE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_min_age_ms: Option<u64>,

    /// A partition's entries are compacted after this long even if they fill less than a
    /// target object (quiet partitions) [default: 600000].
    #[arg(long, env = "SILT_COMPACTION_MAX_DELAY_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_max_delay_ms: Option<u64>,

    /// Most bytes per second compaction reads on this broker, so it never starves produce; on a
    /// local-directory store it also writes at most that [default: 32MiB].
    #[arg(long, env = "SILT_COMPACTION_BYTES_PER_SEC", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_bytes_per_sec: Option<u64>,

    /// How often the broker looks for partitions to compact [default: 10000].
    #[arg(long, env = "SILT_COMPACTION_CHECK_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_check_ms: Option<u64>,

    /// Most memory key compaction's map of keys (each key's bytes and about 48 more) takes in
    /// one run; a partition with more distinct keys is compacted a stretch at a time
    /// [default: 64MiB].
    #[arg(long, env = "SILT_KEY_COMPACTION_MAP_BYTES", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_compaction_map_bytes: Option<u64>,

    /// Compacted objects per index page: once twice this many lead a partition's index, its
    /// oldest ones roll out of the metadata store into one index page in the object store
    /// (loaded back on demand), so metadata stays bounded by partitions, not retained bytes;
    /// 0 never rolls [default: 16].
    #[arg(long, env = "SILT_INDEX_PAGE_PARTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_page_parts: Option<u32>,

    /// Most index pages (and archives) a partition's index root lists: past it, the oldest
    /// `--index-archive-pages` of them move into one archive object, so the root stays bounded
    /// however long the log grows (about 4 TiB per partition at the defaults before the first
    /// archive) [default: 4096].
    #[arg(long, env = "SILT_INDEX_ROOT_PAGES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_root_pages: Option<u32>,

    /// Index pages (or archives) per index archive [default: 256].
    #[arg(long, env = "SILT_INDEX_ARCHIVE_PAGES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_archive_pages: Option<u32>,

    /// Most memory the index pages loaded on demand (reads of old offsets) take on a broker;
    /// about 160 bytes per 1 MiB entry [default: 64MiB].
    #[arg(long, env = "SILT_INDEX_PAGE_CACHE_BYTES", value_parser = size::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_page_cache_bytes: Option<u64>,

    /// How long an object stays after no commit references it (compacted, expired, or never
    /// committed) before garbage collection deletes it: readers holding an older index finish
    /// within it. Keep it well above the metadata store's request timeout [default: 300000].
    #[arg(long, env = "SILT_GC_GRACE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc_grace_ms: Option<u64>,

    /// How much of the metadata store's change history to keep: at each retention pass the
    /// controller compacts etcd's revisions older than this, as Kubernetes' API server does.
    /// etcd keeps every revision until compacted, so without it every flush's commit stays in
    /// etcd's database forever. 0 leaves it to etcd's own `--auto-compaction-retention`
    /// [default: 300000].
    #[arg(long, env = "SILT_METADATA_HISTORY_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_history_ms: Option<u64>,

    /// Address clients and other brokers reach this broker at (host:port) [default: the
    /// listen address].
    #[arg(long, env = "SILT_ADVERTISE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,

    /// TTL of the broker's membership lease: a broker that stops renewing it (killed, paused,
    /// cut off) leaves the cluster this long after [default: 5000].
    #[arg(long, env = "SILT_LEASE_TTL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,

    /// Segment uploads in flight at once (commits stay in order) [default: 4].
    #[arg(long, env = "SILT_MAX_INFLIGHT_FLUSHES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight_flushes: Option<usize>,

    /// Longest an ordered shutdown (SIGTERM: flush, commit, leave) may take; past it the broker
    /// logs what was left and exits non-zero, acknowledging nothing it did not commit. Keep it
    /// below the orchestrator's grace period (Kubernetes: 30 s) [default: 25000].
    #[arg(long, env = "SILT_SHUTDOWN_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout_ms: Option<u64>,

    /// Address of the admin HTTP server: Prometheus `/metrics`, `/livez` (the process runs) and
    /// `/readyz` (registered, cluster view ready, not shutting down); port 0 picks a free one
    /// [default: 127.0.0.1:9464].
    #[arg(long, env = "SILT_ADMIN_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,

    /// Log format on stderr: `text` or `json` (one object per line) [default: text].
    #[arg(long, env = "SILT_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// Export traces over OTLP/gRPC to this endpoint (e.g. http://otel-collector:4317)
    /// [default: no export].
    #[arg(long, env = "SILT_OTLP_ENDPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

impl Settings {
    /// Layers the defaults, the config file named by `cli.config`, and the flags (clap already
    /// folded `SILT_*` variables into them, below explicit flags).
    pub fn load(cli: &Cli) -> Result<Self, String> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = &cli.config {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let settings: Settings = figment
            .merge(Serialized::defaults(cli))
            .extract()
            .map_err(|e| e.to_string())?;
        settings.validate()?;
        Ok(settings)
    }

    /// Warnings about settings that are valid but unsafe outside tests.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.gc_grace_ms < SAFE_GC_GRACE_MS {
            out.push(format!(
                "gc-grace-ms {} is below {SAFE_GC_GRACE_MS}: a flush retries its commit for up to 10 s, so a commit could land after garbage collection deleted its object; use a grace period this short only in tests",
                self.gc_grace_ms
            ));
        }
        out
    }

    /// Checks values a flag or file could get wrong.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.broker_id.is_empty()
            && self.broker_id.len() <= 64
            && self
                .broker_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(format!(
                "broker id '{}' must be 1-64 characters of a-z, 0-9 and '-'",
                self.broker_id
            ));
        }
        if self.cluster.is_empty() || self.cluster.contains('/') {
            return Err(format!(
                "cluster name '{}' must be non-empty and contain no '/'",
                self.cluster
            ));
        }
        if self.flush_bytes == 0 || self.wal_cache_bytes < self.flush_bytes {
            return Err(format!(
                "wal-cache-bytes ({}) must be at least flush-bytes ({}), which must be > 0",
                self.wal_cache_bytes, self.flush_bytes
            ));
        }
        if self.client_keepalive_ms != 0 && !(1_000..=3_600_000).contains(&self.client_keepalive_ms)
        {
            return Err(format!(
                "client-keepalive-ms {} must be 0 (never) or between 1000 and 3600000",
                self.client_keepalive_ms
            ));
        }
        if self.max_request_records == 0 || self.max_request_bytes < 1024 {
            return Err("max-request-records must be > 0 and max-request-bytes >= 1024".into());
        }
        let etcd = self.metadata.starts_with("etcd://");
        if !matches!(self.metadata.as_str(), "embedded" | "memory") && !etcd {
            return Err(format!(
                "metadata store '{}' is not supported: use 'embedded', 'memory' or etcd://host:port[,host:port...]",
                self.metadata
            ));
        }
        if self.etcd_user.is_some() != self.etcd_password.is_some() {
            return Err("--etcd-user and --etcd-password go together".into());
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return Err("--etcd-cert and --etcd-key go together".into());
        }
        if self.etcd_cert.is_some() && self.etcd_ca.is_none() {
            return Err("--etcd-cert needs --etcd-ca (the CA of etcd's server certificate)".into());
        }
        if etcd && !cfg!(feature = "etcd") {
            return Err(format!(
                "metadata store '{}' needs etcd support, which this build lacks: rebuild with `cargo build --release -p silt-broker --features etcd` (needs protoc)",
                self.metadata
            ));
        }
        if self.compaction_target_bytes > 0
            && (self.compaction_target_bytes < 64 << 10 || self.compaction_bytes_per_sec == 0)
        {
            return Err(format!(
                "compaction-target-bytes ({}) must be 0 (off) or at least 64KiB, with compaction-bytes-per-sec > 0",
                self.compaction_target_bytes
            ));
        }
        if self.index_page_parts > 100 {
            return Err(format!(
                "index-page-parts {} must be at most 100: one metadata transaction forgets that many commit keys, and etcd allows 128 operations per transaction",
                self.index_page_parts
            ));
        }
        if !(2..=1024).contains(&self.index_archive_pages) {
            return Err(format!(
                "index-archive-pages {} must be between 2 and 1024",
                self.index_archive_pages
            ));
        }
        if self.index_root_pages < 2 * self.index_archive_pages || self.index_root_pages > 4096 {
            return Err(format!(
                "index-root-pages {} must be at least twice index-archive-pages ({}) and at most 4096 (an index root stays well inside the metadata store's 1.5 MiB request limit)",
                self.index_root_pages, self.index_archive_pages
            ));
        }
        if !(1_000..=60_000).contains(&self.lease_ttl_ms) {
            return Err(format!(
                "lease-ttl-ms {} must be between 1000 and 60000",
                self.lease_ttl_ms
            ));
        }
        if self.max_uncompressed_bytes < self.max_batch_bytes {
            return Err(format!(
                "max-uncompressed-bytes ({}) must be at least max-batch-bytes ({})",
                self.max_uncompressed_bytes, self.max_batch_bytes
            ));
        }
        if !(1_000..=3_600_000).contains(&self.shutdown_timeout_ms) {
            return Err(format!(
                "shutdown-timeout-ms {} must be between 1000 and 3600000",
                self.shutdown_timeout_ms
            ));
        }
        if self.max_inflight_flushes == 0 {
            return Err("max-inflight-flushes must be at least 1".into());
        }
        if self.gc_grace_ms < MIN_GC_GRACE_MS {
            return Err(format!(
                "gc-grace-ms {} must be at least {MIN_GC_GRACE_MS}: garbage collection could delete a flushed object before its commit lands (keep the default, 300000, outside tests)",
                self.gc_grace_ms
            ));
        }
        Ok(())
    }

    /// The object store URL, defaulting to a directory under the data dir.
    pub fn object_store_url(&self) -> Result<String, String> {
        match &self.object_store {
            Some(url) => Ok(url.clone()),
            None => {
                let dir = absolute(&self.data_dir.join("objects"))?;
                Ok(format!("file://{}", dir.display()))
            }
        }
    }
}

fn absolute(path: &std::path::Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

/// The shortest `--gc-grace-ms` accepted: below it, garbage collection could delete an object
/// between a flush's PUT and its commit even when the metadata store answers at once.
pub const MIN_GC_GRACE_MS: u64 = 1_000;
/// The shortest `--gc-grace-ms` without a warning: twice as long as a flush retries its commit.
pub const SAFE_GC_GRACE_MS: u64 = 20_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Settings::default().validate().unwrap();
        let s = Settings::load(&Cli::default()).unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn file_then_flags_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silt.toml");
        std::fs::write(
            &path,
            "linger_ms = 10\nflush_bytes = 1024\nbroker_id = \"b-7\"\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(path),
            linger_ms: Some(20),
            ..Cli::default()
        };
        let s = Settings::load(&cli).unwrap();
        assert_eq!(s.linger_ms, 20, "a flag beats the file");
        assert_eq!(s.flush_bytes, 1024, "the file beats the default");
        assert_eq!(s.broker_id, "b-7");
    }

    #[test]
    fn sizes_take_units_in_flags_environment_and_file() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "silt-broker",
            "--flush-bytes",
            "8MiB",
            "--default-max-record-bytes",
            "1.5 MiB",
        ])
        .unwrap();
        let s = Settings::load(&cli).unwrap();
        assert_eq!(
            (s.flush_bytes, s.default_max_record_bytes),
            (8 << 20, 3 << 19)
        );
        assert!(Cli::try_parse_from(["silt-broker", "--flush-bytes", "8 parsecs"]).is_err());
        assert!(
            Cli::try_parse_from(["silt-broker", "--default-max-record-bytes", "5GiB"]).is_err()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silt.toml");
        std::fs::write(
            &path,
            "wal_cache_bytes = \"512MiB\"\nmax_batch_bytes = 4194304\n",
        )
        .unwrap();
        let s = Settings::load(&Cli {
            config: Some(path),
            ..Cli::default()
        })
        .unwrap();
        assert_eq!((s.wal_cache_bytes, s.max_batch_bytes), (512 << 20, 4 << 20));
    }

    #[test]
    fn boolean_flags_take_a_value_or_stand_alone() {
        use clap::Parser;
        for (args, expected) in [
            (&["--s3-allow-http"][..], Some(true)),
            (&["--s3-allow-http", "true"][..], Some(true)),
            (&["--s3-allow-http", "false"][..], Some(false)),
            (&["--s3-allow-http=false"][..], Some(false)),
            (&[][..], None),
        ] {
            let cli =
                Cli::try_parse_from(std::iter::once("silt-broker").chain(args.iter().copied()))
                    .unwrap();
            assert_eq!(cli.s3_allow_http, expected, "{args:?}");
        }
        let cli = Cli::try_parse_from([
            "silt-broker",
            "--create-bucket",
            "--s3-virtual-hosted-style",
        ])
        .unwrap();
        assert_eq!(
            (cli.create_bucket, cli.s3_virtual_hosted_style),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silt.toml");
        std::fs::write(&path, "lingerms = 10\n").unwrap();
        let err = Settings::load(&Cli {
            config: Some(path),
            ..Cli::default()
        })
        .unwrap_err();
        assert!(err.contains("lingerms"), "{err}");
        let err = Settings::load(&Cli {
            broker_id: Some("B/1".into()),
            ..Cli::default()
        })
        .unwrap_err();
        assert!(err.contains("broker id"), "{err}");
        let err = Settings::load(&Cli {
            gc_grace_ms: Some(999),
            ..Cli::default()
        })
        .unwrap_err();
        assert!(
            err.contains("gc-grace-ms 999 must be at least 1000"),
            "{err}"
        );
        for (root, archive, says) in [
            (4096, 1, "index-archive-pages 1 must be between 2 and 1024"),
            (
                4096,
                2048,
                "index-archive-pages 2048 must be between 2 and 1024",
            ),
            (
                300,
                256,
                "index-root-pages 300 must be at least twice index-archive-pages (256)",
            ),
            (5000, 256, "at most 4096"),
        ] {
            let err = Settings::load(&Cli {
                index_root_pages: Some(root),
                index_archive_pages: Some(archive),
                ..Cli::default()
            })
            .unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        let smallest = Settings::load(&Cli {
            index_root_pages: Some(4),
            index_archive_pages: Some(2),
            ..Cli::default()
        })
        .unwrap();
        assert_eq!(
            (smallest.index_root_pages, smallest.index_archive_pages),
            (4, 2)
        );
        let short = Settings::load(&Cli {
            gc_grace_ms: Some(2_000),
            ..Cli::default()
        })
        .unwrap();
        assert!(
            short.warnings()[0].contains("gc-grace-ms 2000"),
            "{:?}",
            short.warnings()
        );
        assert!(Settings::default().warnings().is_empty());
        let missing = Cli {
            config: Some("/nonexistent/silt.toml".into()),
            ..Cli::default()
        };
        assert!(
            Settings::load(&missing)
                .unwrap_err()
                .contains("does not exist")
        );
    }

    #[test]
    fn flags_parse_with_env_names_in_help() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for name in [
            "SILT_LISTEN",
            "SILT_LINGER_MS",
            "SILT_WAL_CACHE_BYTES",
            "SILT_OBJECT_STORE",
        ] {
            assert!(help.contains(name), "--help lacks {name}");
        }
        let cli =
            Cli::try_parse_from(["silt-broker", "--linger-ms", "5", "--listen", "127.0.0.1:9"])
                .unwrap();
        assert_eq!(cli.linger_ms, Some(5));
    }
}
