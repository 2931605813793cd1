//! The `MetaStore` trait: an etcd-shaped key-value store, the only place Silt keeps state.
//!
//! Every call maps one to one onto etcd's v3 API — revisions, range reads, transactions with
//! compares, leases with keep-alive, watches — so the embedded store (`crate::embedded`) and the
//! etcd store are interchangeable and pass the same conformance suite (`crate::conformance`).
//! Keys and values are bytes; the typed layer above (`crate::catalog`) builds keys with
//! `crate::keys` and encodes values with `crate::codec`.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::MetaError;

/// A lease id, as etcd's: 0 means "no lease".
pub type LeaseId = i64;

/// A stored key with its revisions, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the store when the key was created (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last change to the key.
    pub mod_revision: i64,
    /// Number of changes since creation: 1 after the first put.
    pub version: i64,
    /// The lease the key is attached to, 0 if none.
    pub lease: LeaseId,
}

/// A range read: one key (`range_end` empty) or the keys in `[key, range_end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    /// Exclusive end; empty means the single key `key`. Use [`prefix_end`] for a prefix.
    pub range_end: Vec<u8>,
    /// At most this many keys (0 = no limit). Results are in key order.
    pub limit: i64,
    /// Return only the count, no key-values.
    pub count_only: bool,
}

impl RangeRequest {
    /// The single key `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            ..Self::default()
        }
    }

    /// All keys starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_end(&key);
        Self {
            key,
            range_end,
            ..Self::default()
        }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            key: start.into(),
            range_end: end.into(),
            ..Self::default()
        }
    }

    /// Limits the number of keys returned.
    pub fn with_limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }
}

/// The answer to a range read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// True when `limit` cut the result short.
    pub more: bool,
    /// Number of keys in the range (ignoring `limit`).
    pub count: i64,
    /// The store revision the read saw.
    pub revision: i64,
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value bytes. A missing key never compares equal to any value.
    Value(Vec<u8>),
    /// `mod_revision`; a missing key has 0.
    ModRevision(i64),
    /// `create_revision`; a missing key has 0.
    CreateRevision(i64),
    /// `version`; a missing key has 0.
    Version(i64),
    /// The lease id; a missing key has 0.
    Lease(LeaseId),
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One condition of a transaction, on a single key (etcd's `Compare` without ranges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Self {
            key: key.into(),
            op,
            target,
        }
    }

    /// The key does not exist.
    pub fn missing(key: impl Into<Vec<u8>>) -> Self {
        Self::new(key, CompareOp::Equal, CompareTarget::CreateRevision(0))
    }

    /// The key exists and was last changed at `revision`.
    pub fn mod_revision(key: impl Into<Vec<u8>>, revision: i64) -> Self {
        Self::new(key, CompareOp::Equal, CompareTarget::ModRevision(revision))
    }

    /// The key holds exactly `value`.
    pub fn value(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self::new(key, CompareOp::Equal, CompareTarget::Value(value.into()))
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: LeaseId,
    },
    /// Deletes `key`, or `[key, range_end)` when `range_end` is not empty.
    Delete {
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    Get(RangeRequest),
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    pub fn put_with_lease(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete {
            key: key.into(),
            range_end: Vec::new(),
        }
    }

    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_end(&key);
        Op::Delete { key, range_end }
    }

    pub fn get(req: RangeRequest) -> Self {
        Op::Get(req)
    }
}

/// An atomic transaction: if every compare holds, run `success`, else run `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Number of operations etcd counts against `--max-txn-ops`.
    pub fn op_count(&self) -> usize {
        self.compares
            .len()
            .max(self.success.len())
            .max(self.failure.len())
    }
}

/// The result of one operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    Put,
    /// Number of keys deleted.
    Delete(i64),
    Get(RangeResponse),
}

/// The answer to a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// True when every compare held and `success` ran.
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: i64,
    /// One response per operation of the branch that ran.
    pub responses: Vec<OpResponse>,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or changed; `kv` is its new state.
    Put(KeyValue),
    /// The key was deleted (by a delete or a lease expiry); `kv.mod_revision` is the deletion's
    /// revision and `kv.value` is empty.
    Delete(KeyValue),
}

impl WatchEvent {
    pub fn kv(&self) -> &KeyValue {
        match self {
            WatchEvent::Put(kv) | WatchEvent::Delete(kv) => kv,
        }
    }
}

/// A batch of events at one revision, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchResponse {
    pub revision: i64,
    pub events: Vec<WatchEvent>,
}

/// A watch: a stream of event batches. It ends with an error when the watch cannot continue
/// (the start revision was compacted, the store closed); the caller then re-reads and re-watches.
pub type WatchStream = BoxStream<'static, Result<WatchResponse, MetaError>>;

/// Limits the store enforces, as etcd's server flags do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// etcd `--max-txn-ops` (default 128).
    pub max_txn_ops: usize,
    /// etcd `--max-request-bytes` (default 1.5 MiB).
    pub max_request_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_txn_ops: 128,
            max_request_bytes: 1536 * 1024,
        }
    }
}

/// An etcd-shaped metadata store. Implementations: [`crate::EmbeddedStore`] (local disk) and the
/// etcd client. All methods are cancel-safe: dropping a future either applies the whole call or
/// nothing.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Reads one key or a range.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, MetaError>;

    /// Runs a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError>;

    /// Grants a lease that expires `ttl` after its last keep-alive; keys put with it are deleted
    /// when it expires or is revoked.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError>;

    /// Refreshes a lease; returns its TTL. `MetaError::LeaseNotFound` once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError>;

    /// Revokes a lease and deletes its keys at once.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError>;

    /// Watches `req`'s key or range for changes after `start_revision` (events with revision >=
    /// `start_revision`; 0 means "from now"). Fails with `MetaError::Compacted` when that history
    /// is no longer kept.
    async fn watch(&self, req: RangeRequest, start_revision: i64)
    -> Result<WatchStream, MetaError>;

    /// Discards the change history before `revision`, as etcd's Compact: watches from an older
    /// revision then fail with `Compacted`; current values are untouched. Compacting to a
    /// revision at or below one already compacted is not an error.
    async fn compact(&self, revision: i64) -> Result<(), MetaError>;

    /// The limits this store enforces on transactions.
    fn limits(&self) -> StoreLimits;

    /// Reads a single key.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
        let mut resp = self.range(RangeRequest::key(key.to_vec())).await?;
        Ok(resp.kvs.pop())
    }

    /// Puts a key without conditions; returns the new revision.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64, MetaError> {
        let resp = self
            .txn(Txn::new().and_then([Op::put(key.to_vec(), value.to_vec())]))
            .await?;
        Ok(resp.revision)
    }

    /// Deletes a key without conditions; returns how many keys were deleted.
    async fn delete(&self, key: &[u8]) -> Result<i64, MetaError> {
        let resp = self
            .txn(Txn::new().and_then([Op::delete(key.to_vec())]))
            .await?;
        match resp.responses.first() {
            Some(OpResponse::Delete(n)) => Ok(*n),
            _ => Ok(0),
        }
    }
}

/// The exclusive end of the range of keys starting with `prefix` (etcd's "prefix end"): the
/// prefix with its last byte below 0xff incremented; `[0]` (all keys) for an empty or all-0xff
/// prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/silt/a"), b"/silt/b".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn op_count_is_largest_branch() {
        let txn = Txn::new()
            .when([Compare::missing(b"a".to_vec())])
            .and_then([
                Op::put(b"a".to_vec(), b"1".to_vec()),
                Op::put(b"b".to_vec(), b"2".to_vec()),
            ]);
        assert_eq!(txn.op_count(), 2);
    }
}
