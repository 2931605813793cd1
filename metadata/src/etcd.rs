//! [`EtcdStore`]: the [`MetaStore`] of a Silt cluster, over etcd's v3 API (`etcd-client`).
//!
//! The trait was shaped after etcd, so every call maps one to one: `range` → Range, `txn` →
//! Txn (compares, success and failure ops), leases → LeaseGrant / LeaseKeepAlive / LeaseRevoke,
//! `watch` → Watch from a start revision. Errors are sorted by what the caller does next:
//! transport failures and etcd's unavailable/timeout statuses are [`MetaError::Unavailable`]
//! (retry), limit violations are [`MetaError::InvalidRequest`], a missing lease is
//! [`MetaError::LeaseNotFound`], a compacted watch start is [`MetaError::Compacted`].

use std::time::Duration;

use async_trait::async_trait;
use etcd_client as etcd;
use futures::StreamExt;

use crate::error::MetaError;
use crate::store::{
    Compare, CompareOp, CompareTarget, KeyValue, LeaseId, MetaStore, Op, OpResponse, RangeRequest,
    RangeResponse, StoreLimits, Txn, TxnResponse, WatchEvent, WatchResponse, WatchStream,
};

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `host:port` endpoints (any member of the cluster).
    pub endpoints: Vec<String>,
    /// User and password when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// Per-request timeout (default 5 s).
    pub timeout: Option<Duration>,
    /// TLS to etcd: set when etcd serves https.
    pub tls: Option<EtcdTls>,
}

/// TLS settings for etcd (PEM bytes).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificate.
    pub ca_pem: Vec<u8>,
    /// Client certificate and key, when etcd requires client certificates.
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdOptions {
    /// Parses `etcd://host:port[,host:port…]`.
    pub fn from_url(url: &str) -> Result<Self, MetaError> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            MetaError::InvalidRequest(format!(
                "'{url}' is not an etcd URL: use etcd://host:port[,host:port...]"
            ))
        })?;
        let endpoints: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(MetaError::InvalidRequest(format!(
                "'{url}' names no etcd endpoint"
            )));
        }
        Ok(Self {
            endpoints,
            ..Self::default()
        })
    }
}

/// Largest range or watch response accepted. etcd sends a catching-up watch up to 1000
/// revisions per message and a range page up to 1000 keys, either far above gRPC's 4 MiB default
/// when segment commits are large; refusing one would stall the caller on the same message.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// A [`MetaStore`] backed by an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: etcd::Client,
    limits: StoreLimits,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

/// Sorts an etcd error by what the caller should do.
fn map_err(e: etcd::Error) -> MetaError {
    match e {
        etcd::Error::GRpcStatus(status) => {
            let message = status.message().to_string();
            match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted
                | tonic::Code::Cancelled
                | tonic::Code::Unknown => MetaError::Unavailable(format!("etcd: {message}")),
                tonic::Code::NotFound if message.contains("lease not found") => {
                    MetaError::LeaseNotFound(0)
                }
                tonic::Code::InvalidArgument
                | tonic::Code::ResourceExhausted
                | tonic::Code::OutOfRange => MetaError::InvalidRequest(format!("etcd: {message}")),
                code => MetaError::Internal(format!("etcd ({code:?}): {message}")),
            }
        }
        etcd::Error::TransportError(e) => MetaError::Unavailable(format!("etcd unreachable: {e}")),
        etcd::Error::IoError(e) => MetaError::Unavailable(format!("etcd i/o: {e}")),
        etcd::Error::LeaseKeepAliveError(e) if e.contains("not found") => {
            MetaError::LeaseNotFound(0)
        }
        etcd::Error::LeaseKeepAliveError(e) => {
            MetaError::Unavailable(format!("etcd lease keep-alive: {e}"))
        }
        etcd::Error::WatchError(e) => MetaError::Unavailable(format!("etcd watch: {e}")),
        other => MetaError::Internal(format!("etcd: {other}")),
    }
}

fn convert_kv(kv: &etcd::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn get_options(req: &RangeRequest) -> etcd::GetOptions {
    let mut options = etcd::GetOptions::new();
    if !req.range_end.is_empty() {
        options = options.with_range(req.range_end.clone());
    }
    if req.limit > 0 {
        options = options.with_limit(req.limit);
    }
    if req.count_only {
        options = options.with_count_only();
    }
    options
}

fn convert_range(resp: &etcd::GetResponse) -> RangeResponse {
    RangeResponse {
        kvs: resp.kvs().iter().map(convert_kv).collect(),
        more: resp.more(),
        count: resp.count(),
        revision: resp.header().map_or(0, |h| h.revision()),
    }
}

fn convert_compare(c: &Compare) -> etcd::Compare {
    let op = match c.op {
        CompareOp::Equal => etcd::CompareOp::Equal,
        CompareOp::NotEqual => etcd::CompareOp::NotEqual,
        CompareOp::Greater => etcd::CompareOp::Greater,
        CompareOp::Less => etcd::CompareOp::Less,
    };
    let key = c.key.clone();
    match &c.target {
        CompareTarget::Value(v) => etcd::Compare::value(key, op, v.clone()),
        CompareTarget::ModRevision(r) => etcd::Compare::mod_revision(key, op, *r),
        CompareTarget::CreateRevision(r) => etcd::Compare::create_revision(key, op, *r),
        CompareTarget::Version(v) => etcd::Compare::version(key, op, *v),
        CompareTarget::Lease(l) => etcd::Compare::lease(key, op, *l),
    }
}

fn convert_op(op: &Op) -> etcd::TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let options = (*lease != 0).then(|| etcd::PutOptions::new().with_lease(*lease));
            etcd::TxnOp::put(key.clone(), value.clone(), options)
        }
        Op::Delete { key, range_end } => {
            let options = (!range_end.is_empty())
                .then(|| etcd::DeleteOptions::new().with_range(range_end.clone()));
            etcd::TxnOp::delete(key.clone(), options)
        }
        Op::Get(req) => etcd::TxnOp::get(req.key.clone(), Some(get_options(req))),
    }
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers (a failing check is an error naming the
    /// endpoints, so a broker refuses to start against an unreachable etcd).
    pub async fn connect(options: &EtcdOptions) -> Result<Self, MetaError> {
        let timeout = options.timeout.unwrap_or(Duration::from_secs(5));
        let mut connect = etcd::ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &options.tls {
            let mut config =
                etcd::TlsOptions::new().ca_certificate(etcd::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.client_pem {
                config = config.identity(etcd::Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(config);
        }
        let endpoints = options.endpoints.join(",");
        let mut client = etcd::Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| {
                MetaError::Unavailable(format!(
                    "cannot connect to etcd at {endpoints}: {}",
                    map_err(e)
                ))
            })?;
        client
            .get("/", Some(etcd::GetOptions::new().with_count_only()))
            .await
            .map_err(|e| {
                MetaError::Unavailable(format!(
                    "etcd at {endpoints} does not answer: {}",
                    map_err(e)
                ))
            })?;
        Ok(Self {
            client,
            limits: StoreLimits::default(),
        })
    }
}

#[async_trait]
impl MetaStore for EtcdStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, MetaError> {
        let mut client = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let resp = client
            .get(req.key.clone(), Some(get_options(&req)))
            .await
            .map_err(map_err)?;
        Ok(convert_range(&resp))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        let first_lease = txn
            .success
            .iter()
            .chain(&txn.failure)
            .find_map(|op| match op {
                Op::Put { lease, .. } if *lease != 0 => Some(*lease),
                _ => None,
            })
            .unwrap_or(0);
        let request = etcd::Txn::new()
            .when(txn.compares.iter().map(convert_compare).collect::<Vec<_>>())
            .and_then(txn.success.iter().map(convert_op).collect::<Vec<_>>())
            .or_else(txn.failure.iter().map(convert_op).collect::<Vec<_>>());
        let mut client = self.client.clone();
        let resp = client.txn(request).await.map_err(|e| match map_err(e) {
            MetaError::LeaseNotFound(_) => MetaError::LeaseNotFound(first_lease),
            other => other,
        })?;
        let responses = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                etcd::TxnOpResponse::Put(_) => OpResponse::Put,
                etcd::TxnOpResponse::Delete(d) => OpResponse::Delete(d.deleted()),
                etcd::TxnOpResponse::Get(g) => OpResponse::Get(convert_range(&g)),
                etcd::TxnOpResponse::Txn(_) => OpResponse::Put,
            })
            .collect();
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
            responses,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let mut client = self.client.clone();
        Ok(client.lease_grant(secs, None).await.map_err(map_err)?.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError> {
        let mut client = self.client.clone();
        let named = |e: etcd::Error| match map_err(e) {
            MetaError::LeaseNotFound(_) => MetaError::LeaseNotFound(lease),
            other => other,
        };
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.map_err(named)?;
        keeper.keep_alive().await.map_err(named)?;
        let resp =
            stream.message().await.map_err(named)?.ok_or_else(|| {
                MetaError::Unavailable("etcd closed the keep-alive stream".into())
            })?;
        if resp.ttl() <= 0 {
            return Err(MetaError::LeaseNotFound(lease));
        }
        Ok(Duration::from_secs(resp.ttl() as u64))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        let mut client = self.client.clone();
        match client.lease_revoke(lease).await.map_err(map_err) {
            Ok(_) => Ok(()),
            Err(MetaError::LeaseNotFound(_)) => Err(MetaError::LeaseNotFound(lease)),
            Err(e) => Err(e),
        }
    }

    async fn watch(
        &self,
        req: RangeRequest,
        start_revision: i64,
    ) -> Result<WatchStream, MetaError> {
        let mut options = etcd::WatchOptions::new();
        if !req.range_end.is_empty() {
            options = options.with_range(req.range_end.clone());
        }
        if start_revision > 0 {
            options = options.with_start_revision(start_revision);
        }
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let stream = client
            .watch(req.key.clone(), Some(options))
            .await
            .map_err(map_err)?;
        let requested = start_revision;
        let events = stream.flat_map(move |item| {
            let out: Vec<Result<WatchResponse, MetaError>> = match item {
                Err(e) => vec![Err(map_err(e))],
                Ok(resp) if resp.canceled() && resp.compact_revision() > 0 => {
                    vec![Err(MetaError::Compacted {
                        requested,
                        compact_revision: resp.compact_revision(),
                    })]
                }
                Ok(resp) if resp.canceled() => {
                    vec![Err(MetaError::Unavailable(format!(
                        "etcd cancelled the watch: {}",
                        resp.cancel_reason()
                    )))]
                }
                Ok(resp) => split_by_revision(&resp).into_iter().map(Ok).collect(),
            };
            futures::stream::iter(out)
        });
        // The stream ends right after an error, as the trait promises, without waiting for
        // etcd to send anything more.
        let events =
            futures::stream::unfold((events.boxed(), false), |(mut inner, failed)| async move {
                if failed {
                    return None;
                }
                let item = inner.next().await?;
                let failed = item.is_err();
                Some((item, (inner, failed)))
            });
        Ok(events.boxed())
    }

    /// etcd's Compact, physical: it answers once the old revisions are gone from the backend,
    /// so their space is free for reuse (the file shrinks only with `etcdctl defrag`).
    async fn compact(&self, revision: i64) -> Result<(), MetaError> {
        let mut client = self.client.clone();
        match client
            .compact(
                revision,
                Some(etcd::CompactionOptions::new().with_physical()),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Someone (etcd's own auto-compaction, an operator) compacted further already.
            Err(e)
                if e.to_string()
                    .contains("required revision has been compacted") =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(e)),
        }
    }

    fn limits(&self) -> StoreLimits {
        self.limits
    }
}

/// etcd may deliver several revisions in one watch response; the trait gives one per revision.
fn split_by_revision(resp: &etcd::WatchResponse) -> Vec<WatchResponse> {
    let mut out: Vec<WatchResponse> = Vec::new();
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let kv = convert_kv(kv);
        let revision = kv.mod_revision;
        let event = match event.event_type() {
            etcd::EventType::Put => WatchEvent::Put(kv),
            etcd::EventType::Delete => WatchEvent::Delete(kv),
        };
        match out.last_mut() {
            Some(last) if last.revision == revision => last.events.push(event),
            _ => out.push(WatchResponse {
                revision,
                events: vec![event],
            }),
        }
    }
    out
}
