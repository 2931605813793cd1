//! Object storage: one URL opens a local directory, memory, or an S3-compatible bucket; segment
//! objects are named here; [`InstrumentedStore`] counts every request.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::error::StorageError;
use crate::metrics::{ObjectStoreMetrics, Op};

pub mod conformance;
pub mod faults;
pub mod local;
pub mod simulated;

/// Settings of an `s3://` store; unset fields come from the standard AWS environment.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible server (MinIO, Garage...).
    pub endpoint: Option<String>,
    /// Region; when unset and not in the environment, `us-east-1`.
    pub region: Option<String>,
    /// Allow plain `http://` endpoints. An endpoint written as `http://...` is allowed
    /// whatever this says (the user asked for it); a warning is logged unless it is loopback.
    pub allow_http: bool,
    /// Virtual-hosted-style URLs (`bucket.host`) instead of path-style (`host/bucket`).
    pub virtual_hosted_style: bool,
    /// Access key id and secret; `None` takes them from the standard AWS environment.
    pub credentials: Option<(String, String)>,
    /// How long a failing request is retried (5xx, throttling, connection errors);
    /// `None` keeps `object_store`'s default (10 retries within 3 minutes). Start-up checks
    /// use a short one, so a wrong endpoint is reported in seconds.
    pub retry_for: Option<std::time::Duration>,
    /// Sign PUT bodies (SigV4's `x-amz-content-sha256` is the body's SHA-256, a pass over every
    /// byte uploaded) or send them as `UNSIGNED-PAYLOAD` (headers still signed). `None` decides
    /// by the endpoint ([`signs_payload`]).
    pub sign_payload: Option<bool>,
}

/// Whether PUT bodies are signed: as set, else only over plain http to a non-loopback host.
/// Over TLS (every AWS endpoint, any `https://` one) and on loopback the transport already
/// protects the body in transit, so hashing it again only costs CPU; over plain http on a
/// network the signature is the body's only integrity check in transit.
pub fn signs_payload(s3: &S3Options) -> bool {
    s3.sign_payload.unwrap_or_else(|| {
        s3.endpoint
            .as_deref()
            .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://") && !is_loopback_url(e))
    })
}

/// Opens the object store named by `url`: `file:///abs/dir`, `memory://` or
/// `s3://bucket[/prefix]`. `memory://?latency_ms=L&mib_per_s=B` is a memory store that costs
/// what a remote one does per request ([`simulated`]), for benchmarks.
pub fn open_object_store(url: &str, s3: &S3Options) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let parsed = url::Url::parse(url).map_err(|e| {
        StorageError::Config(format!(
            "'{url}' is not a URL ({e}); use file:///dir, memory:// or s3://bucket/prefix"
        ))
    })?;
    match parsed.scheme() {
        "file" => {
            let dir = parsed.to_file_path().map_err(|()| {
                StorageError::Config(format!("'{url}' is not an absolute file:// path"))
            })?;
            create_dir_durably(&dir).map_err(|e| {
                StorageError::Config(format!("cannot create {}: {e}", dir.display()))
            })?;
            // Every write is fsynced — the file, then the directory entries it added — before
            // the put returns, so a segment is on disk before its commit starts: an ack
            // survives a power cut, not only a crash of the process. Compaction's objects are
            // written in the background of that ([`local`]).
            Ok(Arc::new(local::LocalStore::new(&dir)?))
        }
        "memory" => {
            let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
            match simulated_cost(&parsed)? {
                Some(cost) => Ok(Arc::new(simulated::SimulatedStore::new(memory, cost))),
                None => Ok(memory),
            }
        }
        "s3" => {
            let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                StorageError::Config(format!("'{url}' names no bucket: use s3://bucket/prefix"))
            })?;
            let plain_http = s3
                .endpoint
                .as_deref()
                .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
            if plain_http && !is_loopback_url(s3.endpoint.as_deref().unwrap_or_default()) {
                tracing::warn!(
                    endpoint = s3.endpoint.as_deref().unwrap_or_default(),
                    "the S3 endpoint is plain http on a network address: data and credentials travel unencrypted"
                );
            }
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(s3.virtual_hosted_style)
                .with_allow_http(s3.allow_http || plain_http)
                .with_unsigned_payload(!signs_payload(s3));
            if let Some((key_id, secret)) = &s3.credentials {
                builder = builder
                    .with_access_key_id(key_id)
                    .with_secret_access_key(secret);
            }
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(retry_for) = s3.retry_for {
                builder = builder.with_retry(object_store::RetryConfig {
                    retry_timeout: retry_for,
                    ..object_store::RetryConfig::default()
                });
            }
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            } else if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                builder = builder.with_region("us-east-1");
            }
            let store: Arc<dyn ObjectStore> = Arc::new(builder.build()?);
            let prefix = parsed.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(store)
            } else {
                Ok(Arc::new(object_store::prefix::PrefixStore::new(
                    store, prefix,
                )))
            }
        }
        other => Err(StorageError::Config(format!(
            "object store scheme '{other}' is not supported; use file:///dir, memory:// or s3://bucket/prefix"
        ))),
    }
}

/// The per-request costs of `memory://?latency_ms=L&mib_per_s=B` (a store simulating a remote
/// one, for benchmarks), `None` for a plain `memory://`.
fn simulated_cost(url: &url::Url) -> Result<Option<simulated::RequestCost>, StorageError> {
    let mut cost = simulated::RequestCost {
        latency: std::time::Duration::ZERO,
        bytes_per_sec: 0,
    };
    let mut any = false;
    for (key, value) in url.query_pairs() {
        let number = value
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0);
        let Some(number) = number else {
            return Err(StorageError::Config(format!(
                "'{url}': {key}={value} is not a non-negative number"
            )));
        };
        match key.as_ref() {
            "latency_ms" => cost.latency = std::time::Duration::from_secs_f64(number / 1000.0),
            "mib_per_s" => cost.bytes_per_sec = (number * 1_048_576.0) as u64,
            other => {
                return Err(StorageError::Config(format!(
                    "'{url}': unknown setting '{other}'; memory:// takes latency_ms and mib_per_s (a simulated remote store)"
                )));
            }
        }
        any = true;
    }
    Ok(any.then_some(cost))
}

/// True when `url`'s host is a loopback address or `localhost`.
fn is_loopback_url(url: &str) -> bool {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Creates `dir` and any missing parents, and makes their entries durable: each new directory
/// and the existing one that received the first new entry are fsynced, so a power cut cannot
/// lose the directory that later holds acknowledged data.
pub fn create_dir_durably(dir: &std::path::Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        cursor = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    // The new directories, deepest first, then the parent of the shallowest.
    let mut sync = missing.clone();
    if let Some(parent) = missing.last().and_then(|d| d.parent()) {
        sync.push(if parent.as_os_str().is_empty() {
            std::path::PathBuf::from(".")
        } else {
            parent.to_path_buf()
        });
    }
    for d in sync {
        std::fs::File::open(&d)?.sync_all()?;
    }
    Ok(())
}

/// Creates the bucket of an `s3://bucket/...` URL if it does not exist (`--create-bucket`);
/// returns whether it created it. `object_store` has no bucket calls, so this one request goes
/// through `aws-sdk-s3`, with the same endpoint, region, addressing and credential chain.
pub async fn create_bucket_if_missing(url: &str, s3: &S3Options) -> Result<bool, StorageError> {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};

    let parsed = url::Url::parse(url)
        .map_err(|e| StorageError::Config(format!("'{url}' is not a URL ({e})")))?;
    if parsed.scheme() != "s3" {
        return Ok(false);
    }
    let bucket = parsed
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            StorageError::Config(format!("'{url}' names no bucket: use s3://bucket/prefix"))
        })?
        .to_string();
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    let region = s3
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    loader = loader.region(Region::new(region.clone()));
    if let Some((id, secret)) = &s3.credentials {
        loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "silt"));
    }
    let shared = loader.load().await;
    let mut config =
        aws_sdk_s3::config::Builder::from(&shared).force_path_style(!s3.virtual_hosted_style);
    if let Some(endpoint) = &s3.endpoint {
        config = config.endpoint_url(endpoint);
    }
    let client = aws_sdk_s3::Client::from_conf(config.build());
    match client.head_bucket().bucket(&bucket).send().await {
        Ok(_) => return Ok(false),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
        Err(e) => {
            return Err(StorageError::Config(format!(
                "cannot check bucket '{bucket}': {}; check the endpoint and credentials",
                sdk_error(&e)
            )));
        }
    }
    let mut create = client.create_bucket().bucket(&bucket);
    if region != "us-east-1" {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region.as_str()))
                .build(),
        );
    }
    match create.send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
        {
            Ok(false)
        }
        Err(e) => Err(StorageError::Config(format!(
            "cannot create bucket '{bucket}': {}",
            sdk_error(&e)
        ))),
    }
}

/// An SDK error as `Code: message` when the server sent one, else its cause chain.
fn sdk_error<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("no message")
        ),
        None => aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
    }
}

/// The object that says which Silt cluster owns a store prefix.
pub const CLUSTER_MARKER: &str = "silt-cluster.json";

/// Claims the store for `cluster`: reads the cluster marker, writes it if missing, and refuses
/// a prefix that another cluster owns (two clusters writing one prefix would delete each
/// other's objects as orphans). The write also proves the bucket exists and the credentials can
/// write, so a broker fails at start, not at its first flush — with the real cause
/// ([`explain_store_error`]).
pub async fn claim_for_cluster(
    store: &dyn ObjectStore,
    cluster: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    use object_store::ObjectStoreExt;
    let marker = Path::from(CLUSTER_MARKER);
    match store.get(&marker).await {
        Ok(found) => {
            let bytes = found.bytes().await.map_err(|e| {
                StorageError::Config(format!("reading {marker}: {}", explain_store_error(&e)))
            })?;
            let owner = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("cluster")?.as_str().map(str::to_string))
                .unwrap_or_default();
            if owner != cluster {
                return Err(StorageError::Config(format!(
                    "this object-store prefix belongs to Silt cluster '{owner}', not '{cluster}': use another prefix or --cluster {owner}"
                )));
            }
            Ok(())
        }
        Err(object_store::Error::NotFound { .. }) => {
            let body = serde_json::json!({ "v": 1, "cluster": cluster, "created_at_ms": now_ms })
                .to_string();
            match store.put(&marker, Bytes::from(body).into()).await {
                Ok(_) => Ok(()),
                // Reading a missing object is normal; writing one fails only without a bucket.
                Err(e @ object_store::Error::NotFound { .. }) => {
                    Err(StorageError::Config(format!(
                        "the bucket does not exist ({}): create it, or start with --create-bucket true",
                        chain(&e)
                    )))
                }
                Err(e) => Err(StorageError::Config(format!(
                    "cannot write {marker}: {}",
                    explain_store_error(&e)
                ))),
            }
        }
        Err(e) => Err(StorageError::Config(format!(
            "cannot read {marker}: {}",
            explain_store_error(&e)
        ))),
    }
}

/// An object-store error as a user can act on it: its cause, then what to check.
pub fn explain_store_error(e: &object_store::Error) -> String {
    use std::error::Error as _;
    let cause = chain(e);
    let lower = cause.to_ascii_lowercase();
    let hint = match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            "the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS profile) and that the key may read and write this bucket"
        }
        object_store::Error::NotFound { .. } => {
            "the bucket does not exist: create it, or start with --create-bucket true"
        }
        _ if lower.contains("invalidaccesskeyid")
            || lower.contains("signaturedoesnotmatch")
            || lower.contains("accessdenied")
            || lower.contains("forbidden") =>
        {
            "the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS profile)"
        }
        _ if lower.contains("nosuchbucket") => {
            "the bucket does not exist: create it, or start with --create-bucket true"
        }
        _ if lower.contains("connect") || lower.contains("dns") || lower.contains("resolve") => {
            "the endpoint cannot be reached: is the server running, and are --s3-endpoint's host and port right?"
        }
        _ if lower.contains("timed out") || lower.contains("timeout") => {
            "the endpoint did not answer in time: is it the S3 port of a running server?"
        }
        _ if lower.contains("builder error") || lower.contains("https") => {
            "the endpoint URL was refused by the HTTP client: check --s3-endpoint (scheme, host and port)"
        }
        _ if e.source().is_none() => "",
        _ => "check --s3-endpoint, the region, the bucket and the credentials",
    };
    if hint.is_empty() {
        cause
    } else {
        format!("{cause}; {hint}")
    }
}

/// An error and its causes, joined: object_store's own message often hides the server's.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The folder of one broker's segment objects.
pub fn broker_segments_prefix(broker_id: &str) -> Path {
    Path::from(format!("segments/{broker_id}"))
}

/// The name of a segment object, the one place it is spelled: the object lives at
/// `segments/<broker>/<incarnation:016x>-<seq:012>.seg` and is committed under the id
/// `<broker>/<incarnation:016x>-<seq:012>` (the suffix of its metadata key), so an object with no
/// commit key is known to be uncommitted. Names never repeat: an incarnation is unique per
/// broker and `seq` counts its flushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentName {
    pub broker: String,
    pub incarnation: u64,
    pub seq: u64,
}

impl SegmentName {
    /// The object's path in the store.
    pub fn path(&self) -> Path {
        Path::from(format!("segments/{}.seg", self.id()))
    }

    /// The id its commit is stored under.
    pub fn id(&self) -> String {
        format!("{}/{:016x}-{:012}", self.broker, self.incarnation, self.seq)
    }

    /// The name of a segment object's path, `None` for any other path.
    pub fn parse(path: &Path) -> Option<Self> {
        let mut parts = path.parts();
        if parts.next()?.as_ref() != "segments" {
            return None;
        }
        let broker = parts.next()?.as_ref().to_string();
        let file = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let stem = file.as_ref().strip_suffix(".seg")?;
        let (inc, seq) = stem.split_once('-')?;
        if inc.len() != 16 || seq.len() != 12 {
            return None;
        }
        Some(Self {
            broker,
            incarnation: u64::from_str_radix(inc, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// An object store that records every request into [`ObjectStoreMetrics`] (count by
/// operation and outcome, bytes, latency): what a broker asked of its store.
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
    metrics: ObjectStoreMetrics,
}

impl InstrumentedStore {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn ObjectStore>, metrics: ObjectStoreMetrics) -> Self {
        Self { inner, metrics }
    }
}

impl InstrumentedStore {
    /// Counts a listing as one request, recorded when its stream is dropped: an error if any
    /// page failed.
    fn counted_list(
        &self,
        stream: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let mut guard = ListGuard {
            metrics: self.metrics.clone(),
            started: Instant::now(),
            failed: false,
        };
        stream
            .map(move |r| {
                guard.saw(&r);
                r
            })
            .boxed()
    }
}

/// Records one listing when dropped.
struct ListGuard {
    metrics: ObjectStoreMetrics,
    started: Instant,
    failed: bool,
}

impl ListGuard {
    fn saw<T>(&mut self, page: &object_store::Result<T>) {
        self.failed |= page.is_err();
    }
}

impl Drop for ListGuard {
    fn drop(&mut self) {
        let result: object_store::Result<()> = if self.failed {
            Err(object_store::Error::Generic {
                store: "list",
                source: "a page failed".into(),
            })
        } else {
            Ok(())
        };
        self.metrics.observe(Op::List, self.started, &result);
    }
}

impl fmt::Display for InstrumentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instrumented({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let (started, len) = (Instant::now(), payload.content_length() as u64);
        let result = self.inner.put_opts(location, payload, opts).await;
        self.metrics.observe(Op::Put, started, &result);
        if result.is_ok() {
            self.metrics.bytes(Op::Put, len);
        }
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let started = Instant::now();
        let result = self.inner.put_multipart_opts(location, opts).await;
        self.metrics.observe(Op::Put, started, &result);
        result
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let started = Instant::now();
        let op = if options.head { Op::Head } else { Op::Get };
        let result = self.inner.get_opts(location, options).await;
        self.metrics.observe(op, started, &result);
        if let (Ok(r), Op::Get) = (&result, op) {
            self.metrics.bytes(Op::Get, r.range.end - r.range.start);
        }
        result
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let started = Instant::now();
        let result = self.inner.get_ranges(location, ranges).await;
        self.metrics.observe(Op::Get, started, &result);
        if let Ok(parts) = &result {
            self.metrics
                .bytes(Op::Get, parts.iter().map(|p| p.len() as u64).sum());
        }
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let metrics = self.metrics.clone();
        self.inner
            .delete_stream(locations)
            .inspect(move |r| metrics.outcome(Op::Delete, r))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counted_list(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counted_list(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let started = Instant::now();
        let result = self.inner.list_with_delimiter(prefix).await;
        self.metrics.observe(Op::List, started, &result);
        result
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let name = SegmentName {
            broker: "broker-7".into(),
            incarnation: 0x1234,
            seq: 42,
        };
        let p = name.path();
        assert_eq!(
            p.as_ref(),
            "segments/broker-7/0000000000001234-000000000042.seg"
        );
        assert_eq!(name.id(), "broker-7/0000000000001234-000000000042");
        assert_eq!(SegmentName::parse(&p), Some(name));
        for other in [
            "segments/b/x.seg",
            "segments/b/0000000000001234-000000000042",
            "other/b/0000000000001234-000000000042.seg",
            "segments/0000000000001234-000000000042.seg",
        ] {
            assert_eq!(SegmentName::parse(&Path::from(other)), None, "{other}");
        }
        assert!(p.prefix_matches(&broker_segments_prefix("broker-7")));
    }

    #[test]
    fn urls_are_checked() {
        let s3 = S3Options::default();
        assert!(open_object_store("memory://", &s3).is_ok());
        let simulated = open_object_store("memory://?latency_ms=30&mib_per_s=80", &s3).unwrap();
        assert!(
            simulated.to_string().starts_with("Simulated("),
            "{simulated}"
        );
        for bad in [
            "memory://?latency_ms=-1",
            "memory://?mib_per_s=fast",
            "memory://?bandwidth=1",
        ] {
            let err = open_object_store(bad, &s3).expect_err(bad).to_string();
            assert!(
                err.contains("latency_ms") || err.contains("number"),
                "{err}"
            );
        }
        for bad in ["ftp://x/y", "not a url", "s3://"] {
            let err = open_object_store(bad, &s3).map(|_| ()).unwrap_err();
            assert!(matches!(err, StorageError::Config(_)), "{bad}: {err}");
        }
        let s3 = S3Options {
            endpoint: Some("http://127.0.0.1:3900".into()),
            allow_http: true,
            ..S3Options::default()
        };
        assert!(
            open_object_store("s3://bucket/some/prefix", &s3).is_ok(),
            "S3 is wired (no request is made)"
        );
    }

    #[test]
    fn plain_http_endpoints_are_allowed_when_written_so() {
        for (endpoint, loopback) in [
            ("http://127.0.0.1:9000", true),
            ("http://localhost:9000", true),
            ("http://[::1]:9000", true),
            ("http://minio.internal:9000", false),
        ] {
            assert_eq!(is_loopback_url(endpoint), loopback, "{endpoint}");
            let s3 = S3Options {
                endpoint: Some(endpoint.into()),
                ..S3Options::default()
            };
            assert!(open_object_store("s3://b/p", &s3).is_ok(), "{endpoint}");
        }
    }

    #[test]
    fn payloads_are_signed_only_where_nothing_else_protects_them() {
        let signs = |endpoint: Option<&str>, set: Option<bool>| {
            signs_payload(&S3Options {
                endpoint: endpoint.map(String::from),
                sign_payload: set,
                ..S3Options::default()
            })
        };
        // TLS or loopback: the transport protects the body; no SHA-256 pass over it.
        assert!(!signs(None, None), "AWS itself (https)");
        assert!(!signs(Some("https://s3.example.com"), None));
        assert!(!signs(Some("http://127.0.0.1:9000"), None));
        assert!(!signs(Some("http://localhost:3900"), None));
        // Plain http over a network: the signature is the only integrity check in transit.
        assert!(signs(Some("http://minio.internal:9000"), None));
        assert!(signs(Some("HTTP://10.0.0.7:9000"), None));
        // As set, whatever the endpoint.
        assert!(signs(Some("https://s3.example.com"), Some(true)));
        assert!(!signs(Some("http://minio.internal:9000"), Some(false)));
    }

    #[test]
    fn store_errors_name_their_cause_and_what_to_check() {
        let denied = object_store::Error::PermissionDenied {
            path: "silt-cluster.json".into(),
            source: "AccessDenied: the key may not read".into(),
        };
        let text = explain_store_error(&denied);
        assert!(
            text.contains("AccessDenied") && text.contains("credentials"),
            "{text}"
        );
        assert!(!text.contains("bucket does not exist"), "{text}");
        let refused = object_store::Error::Generic {
            store: "S3",
            source: "error sending request: client error (Connect): tcp connect error: Connection refused".into(),
        };
        let text = explain_store_error(&refused);
        assert!(
            text.contains("Connection refused") && text.contains("cannot be reached"),
            "{text}"
        );
        assert!(!text.contains("credentials"), "{text}");
    }

    #[tokio::test]
    async fn a_prefix_belongs_to_one_cluster() {
        let store = InMemory::new();
        claim_for_cluster(&store, "a", 1).await.unwrap();
        claim_for_cluster(&store, "a", 2).await.unwrap();
        let err = claim_for_cluster(&store, "b", 3).await.unwrap_err();
        assert!(
            err.to_string().contains("belongs to Silt cluster 'a'"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn instrumentation_counts_requests_and_bytes() {
        use crate::metrics::testing::Counts;
        use crate::metrics::{OBJECT_STORE_BYTES as BYTES, OBJECT_STORE_REQUESTS as REQUESTS};
        let (recorder, counts) = Counts::new();
        let store = InstrumentedStore::new(
            Arc::new(InMemory::new()),
            ObjectStoreMetrics::register(&recorder),
        );
        let count = |op, outcome| counts.get(REQUESTS, &[("op", op), ("outcome", outcome)]);
        let p = Path::from("a/b");
        store
            .put(&p, Bytes::from_static(b"hello world").into())
            .await
            .unwrap();
        let _ = store.get_range(&p, 0..5).await.unwrap();
        store.delete(&p).await.unwrap();
        assert!(store.get(&p).await.is_err());
        assert_eq!(
            (
                count("put", "ok"),
                count("get", "ok"),
                count("delete", "ok"),
                count("get", "not_found")
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(counts.get(BYTES, &[("op", "put")]), 11);
        assert_eq!(counts.get(BYTES, &[("op", "get")]), 5);

        // Listing with an offset and renaming are delegated to the inner store.
        for name in ["d/1", "d/2", "d/3"] {
            store
                .put(&Path::from(name), Bytes::from_static(b"x").into())
                .await
                .unwrap();
        }
        let after: Vec<_> = store
            .list_with_offset(Some(&Path::from("d")), &Path::from("d/1"))
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        assert_eq!(after.len(), 2, "{after:?}");
        store
            .rename(&Path::from("d/3"), &Path::from("d/4"))
            .await
            .unwrap();
        assert!(store.head(&Path::from("d/4")).await.is_ok());
        assert!(store.head(&Path::from("d/3")).await.is_err());
        assert_eq!(count("list", "ok"), 1);
        assert_eq!((count("head", "ok"), count("head", "not_found")), (1, 1));
    }
}
