//! [`EmbeddedStore`]: the single-node [`MetaStore`], persisted on local disk with redb.
//!
//! The whole keyspace is held in memory (Silt's metadata is small: topics, one key per segment
//! object, per-topic log starts) and every change is first committed durably to a redb database
//! and only then applied in memory, announced to watchers and answered. The durable commit runs
//! on one dedicated writer thread ([`writer`]), never on an async runtime's workers, and groups
//! every change waiting into one redb write transaction — one fsync for many commits. A crash
//! therefore loses nothing that was acknowledged and never exposes half a transaction: redb's
//! commit is atomic.
//!
//! It behaves as etcd does, so the two pass the same conformance suite: the revision starts at 1
//! and grows by exactly one per mutating transaction; keys carry create/mod revisions, a version
//! and a lease; transactions evaluate compares then run one branch atomically, and enforce
//! `--max-txn-ops`, `--max-request-bytes` and "duplicate key given in txn request"; leases expire
//! after their TTL without keep-alive and take their keys with them; watches replay kept history
//! from a start revision, then stream live changes, and fail with `Compacted` when the history
//! they ask for is gone. Two documented differences: history is kept in memory only (the last
//! [`HISTORY_REVISIONS`] revisions since the store was opened), and after a restart every lease
//! starts a full TTL again (etcd does the same after a leader change).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};
use writer::Request;

use crate::clock::Clock;
use crate::error::MetaError;
use crate::store::{
    Compare, CompareOp, CompareTarget, KeyValue, LeaseId, MetaStore, Op, RangeRequest,
    RangeResponse, StoreLimits, Txn, TxnResponse, WatchEvent, WatchResponse, WatchStream,
};

/// Revisions of change history kept for watches.
pub(crate) const HISTORY_REVISIONS: usize = 10_000;

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");

/// How often the background task looks for expired leases.
const LEASE_TICK: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Lease {
    ttl_ms: i64,
    deadline_ms: i64,
    keys: BTreeSet<Vec<u8>>,
}

#[derive(Debug)]
struct State {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
    next_lease: i64,
    leases: HashMap<LeaseId, Lease>,
    history: VecDeque<Arc<WatchResponse>>,
    /// The oldest revision whose events a watch can replay.
    history_start: i64,
}

/// What the store's callers and its writer thread share.
struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<WatchResponse>>,
    clock: Arc<dyn Clock>,
    limits: StoreLimits,
    /// Durable redb commits (groups) so far.
    commits: std::sync::atomic::AtomicU64,
}

/// The embedded metadata store.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    /// Changes go to the writer thread; dropping the sender stops it.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // The writer finishes the requests already sent, then releases the database file.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn db_err(e: impl Into<redb::Error>) -> MetaError {
    MetaError::Internal(format!("embedded metadata database: {}", e.into()))
}

fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + kv.value.len());
    for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&kv.value);
    out
}

fn decode_kv(key: &[u8], bytes: &[u8]) -> Result<KeyValue, MetaError> {
    if bytes.len() < 32 {
        return Err(MetaError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: format!(
                "stored record is {} bytes, shorter than its 32-byte header",
                bytes.len()
            ),
        });
    }
    let n = |i: usize| i64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    Ok(KeyValue {
        key: key.to_vec(),
        create_revision: n(0),
        mod_revision: n(1),
        version: n(2),
        lease: n(3),
        value: bytes[32..].to_vec(),
    })
}

/// The key bounds of a range request, as etcd reads them: an empty `range_end` is the single
/// key, `[0]` means "every key from `key` on", and a `range_end` below `key` selects nothing
/// (as an empty `[key, key)`, never an inverted range, which `BTreeMap::range` panics on).
fn bounds(key: &[u8], range_end: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    if range_end.is_empty() {
        (Bound::Included(key.to_vec()), Bound::Included(key.to_vec()))
    } else if range_end == [0] {
        (Bound::Included(key.to_vec()), Bound::Unbounded)
    } else {
        (
            Bound::Included(key.to_vec()),
            Bound::Excluded(range_end.max(key).to_vec()),
        )
    }
}

fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        k == key
    } else if range_end == [0] {
        k >= key
    } else {
        k >= key && k < range_end
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in the redb file at `path`.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Arc<Self>, MetaError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                MetaError::Internal(format!(
                    "cannot create metadata directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => MetaError::Internal(format!(
                "metadata database {} is in use by another process (is another broker running on this data dir?)",
                path.display()
            )),
            other => db_err(other),
        })?;
        // redb makes its file's contents durable; the directory entry of a new file is ours to
        // sync, or a power cut could lose the whole database.
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                MetaError::Internal(format!(
                    "cannot sync metadata directory {}: {e}",
                    dir.display()
                ))
            })?;
        Self::with_database(db, clock)
    }

    /// An in-memory store (tests, `--metadata memory`): same behaviour, nothing survives.
    pub fn open_in_memory(clock: Arc<dyn Clock>) -> Result<Arc<Self>, MetaError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db_err)?;
        Self::with_database(db, clock)
    }

    fn with_database(db: Database, clock: Arc<dyn Clock>) -> Result<Arc<Self>, MetaError> {
        // Create the tables so reads never meet a missing one.
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(KV).map_err(db_err)?;
            tx.open_table(META).map_err(db_err)?;
            tx.open_table(LEASES).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;

        let now = clock.monotonic_ms();
        let read = db.begin_read().map_err(db_err)?;
        let meta = read.open_table(META).map_err(db_err)?;
        let revision = meta
            .get("revision")
            .map_err(db_err)?
            .map_or(1, |v| v.value());
        let next_lease = meta
            .get("next_lease")
            .map_err(db_err)?
            .map_or(1, |v| v.value());
        let mut leases = HashMap::new();
        for item in read
            .open_table(LEASES)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (id, ttl) = item.map_err(db_err)?;
            leases.insert(
                id.value(),
                Lease {
                    ttl_ms: ttl.value(),
                    deadline_ms: now + ttl.value(),
                    keys: BTreeSet::new(),
                },
            );
        }
        let mut kvs = BTreeMap::new();
        for item in read
            .open_table(KV)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = item.map_err(db_err)?;
            let kv = decode_kv(k.value(), v.value())?;
            if kv.lease != 0
                && let Some(lease) = leases.get_mut(&kv.lease)
            {
                lease.keys.insert(kv.key.clone());
            }
            kvs.insert(kv.key.clone(), kv);
        }
        drop(meta);
        drop(read);

        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                kvs,
                revision,
                next_lease,
                leases,
                history: VecDeque::new(),
                history_start: revision + 1,
            }),
            events,
            clock,
            limits: StoreLimits::default(),
            commits: Default::default(),
        });
        let (requests, inbox) = mpsc::channel();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("silt-meta-writer".into())
                .spawn(move || writer::run(db, shared, inbox))
                .map_err(|e| {
                    MetaError::Internal(format!("cannot start the metadata writer thread: {e}"))
                })?
        };
        let store = Arc::new(Self {
            shared,
            requests: Some(requests),
            writer: Some(writer),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&store);
            handle.spawn(expire_leases_forever(weak));
        }
        Ok(store)
    }

    /// Deletes the keys of every lease whose TTL ran out (one revision per lease, as etcd).
    pub async fn expire_leases(&self) {
        if let Err(e) = self.call(Request::Expire).await {
            tracing::warn!(error = %e, "could not expire leases; retrying");
        }
    }

    /// Durable commits (fsynced redb transactions) so far; each may hold many changes.
    pub fn durable_commits(&self) -> u64 {
        self.shared
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when some lease is past its deadline (cheap: no write).
    fn any_lease_expired(&self) -> bool {
        let now = self.shared.clock.monotonic_ms();
        self.shared
            .lock()
            .leases
            .values()
            .any(|l| l.deadline_ms <= now)
    }

    /// Sends a change to the writer thread and waits until it is durable and applied.
    async fn call<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, MetaError>>) -> Request,
    ) -> Result<T, MetaError> {
        let (tx, rx) = oneshot::channel();
        let closed = || MetaError::Unavailable("embedded metadata store closed".into());
        self.requests
            .as_ref()
            .ok_or_else(closed)?
            .send(request(tx))
            .map_err(|_| closed())?;
        rx.await.unwrap_or_else(|_| Err(closed()))
    }
}

async fn expire_leases_forever(store: Weak<EmbeddedStore>) {
    let mut ticker = tokio::time::interval(LEASE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.upgrade() {
            Some(store) if store.any_lease_expired() => store.expire_leases().await,
            Some(_) => {}
            None => return,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a revision's events in the history and sends them to watchers.
    fn publish(&self, state: &mut State, response: WatchResponse) {
        let response = Arc::new(response);
        state.history.push_back(response.clone());
        while state.history.len() > HISTORY_REVISIONS {
            if let Some(dropped) = state.history.pop_front() {
                state.history_start = dropped.revision + 1;
            }
        }
        let _ = self.events.send(response);
    }

    fn check_limits(&self, txn: &Txn) -> Result<(), MetaError> {
        if txn.op_count() > self.limits.max_txn_ops {
            return Err(MetaError::InvalidRequest(format!(
                "too many operations in txn request ({} > max-txn-ops {})",
                txn.op_count(),
                self.limits.max_txn_ops
            )));
        }
        let op_bytes = |op: &Op| match op {
            Op::Put { key, value, .. } => key.len() + value.len() + 8,
            Op::Delete { key, range_end } => key.len() + range_end.len(),
            Op::Get(r) => r.key.len() + r.range_end.len(),
        };
        let bytes: usize = txn.compares.iter().map(|c| c.key.len() + 16).sum::<usize>()
            + txn
                .success
                .iter()
                .chain(&txn.failure)
                .map(op_bytes)
                .sum::<usize>();
        if bytes > self.limits.max_request_bytes {
            return Err(MetaError::InvalidRequest(format!(
                "request is too large ({bytes} bytes > max-request-bytes {})",
                self.limits.max_request_bytes
            )));
        }
        for branch in [&txn.success, &txn.failure] {
            let mut puts = BTreeSet::new();
            for op in branch {
                if let Op::Put { key, .. } = op
                    && !puts.insert(key.as_slice())
                {
                    return Err(MetaError::InvalidRequest(
                        "duplicate key given in txn request".into(),
                    ));
                }
            }
            for op in branch {
                if let Op::Delete { key, range_end } = op
                    && puts.iter().any(|p| in_range(p, key, range_end))
                {
                    return Err(MetaError::InvalidRequest(
                        "duplicate key given in txn request".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn range_response(kvs: Vec<KeyValue>, req: &RangeRequest, revision: i64) -> RangeResponse {
    let count = kvs.len() as i64;
    let mut kvs = if req.count_only { Vec::new() } else { kvs };
    let more = req.limit > 0 && count > req.limit;
    if req.limit > 0 {
        kvs.truncate(req.limit as usize);
    }
    RangeResponse {
        kvs,
        more,
        count,
        revision,
    }
}

fn compare_holds(kv: Option<&KeyValue>, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match (&c.target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => Some(kv.value.as_slice().cmp(v.as_slice())),
        (CompareTarget::ModRevision(r), kv) => Some(kv.map_or(0, |kv| kv.mod_revision).cmp(r)),
        (CompareTarget::CreateRevision(r), kv) => {
            Some(kv.map_or(0, |kv| kv.create_revision).cmp(r))
        }
        (CompareTarget::Version(r), kv) => Some(kv.map_or(0, |kv| kv.version).cmp(r)),
        (CompareTarget::Lease(l), kv) => Some(kv.map_or(0, |kv| kv.lease).cmp(l)),
    };
    let Some(ordering) = ordering else {
        return false;
    };
    match c.op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::NotEqual => ordering != Ordering::Equal,
        CompareOp::Greater => ordering == Ordering::Greater,
        CompareOp::Less => ordering == Ordering::Less,
    }
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, MetaError> {
        let state = self.shared.lock();
        let kvs = writer::read_range(&state, &req);
        Ok(range_response(kvs, &req, state.revision))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        // Refused requests never reach the writer.
        self.shared.check_limits(&txn)?;
        self.call(|reply| Request::Txn(txn, reply)).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        self.call(|reply| Request::Grant { ttl_ms, reply }).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError> {
        let now = self.shared.clock.monotonic_ms();
        let expired = {
            let mut state = self.shared.lock();
            match state.leases.get_mut(&lease) {
                Some(l) if l.deadline_ms > now => {
                    l.deadline_ms = now.saturating_add(l.ttl_ms);
                    return Ok(Duration::from_millis(l.ttl_ms as u64));
                }
                Some(_) => true,
                None => false,
            }
        };
        if expired {
            self.expire_leases().await;
        }
        Err(MetaError::LeaseNotFound(lease))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.call(|reply| Request::Revoke(lease, reply)).await
    }

    async fn watch(
        &self,
        req: RangeRequest,
        start_revision: i64,
    ) -> Result<WatchStream, MetaError> {
        let (replay, live, from) = {
            let state = self.shared.lock();
            let from = if start_revision <= 0 {
                state.revision + 1
            } else {
                start_revision
            };
            if from < state.history_start && from <= state.revision {
                let compacted = MetaError::Compacted {
                    requested: from,
                    compact_revision: state.history_start,
                };
                return Ok(futures::stream::iter([Err(compacted)]).boxed());
            }
            let replay: Vec<Arc<WatchResponse>> = state
                .history
                .iter()
                .filter(|r| r.revision >= from)
                .cloned()
                .collect();
            (replay, self.shared.events.subscribe(), from)
        };
        let last_replayed = replay.last().map_or(from - 1, |r| r.revision);
        let key = req.key.clone();
        let range_end = req.range_end.clone();
        let filter = move |r: &WatchResponse| -> Option<WatchResponse> {
            let events: Vec<WatchEvent> = r
                .events
                .iter()
                .filter(|e| in_range(&e.kv().key, &key, &range_end))
                .cloned()
                .collect();
            (!events.is_empty()).then_some(WatchResponse {
                revision: r.revision,
                events,
            })
        };
        let filter_live = filter.clone();
        let replayed = futures::stream::iter(replay).filter_map(move |r| {
            let out = filter(&r).map(Ok);
            async move { out }
        });
        let live = futures::stream::unfold(Some(live), move |rx| {
            let filter = filter_live.clone();
            async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(r) if r.revision <= last_replayed => continue,
                        Ok(r) => {
                            if let Some(out) = filter(&r) {
                                return Some((Ok(out), Some(rx)));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let e = MetaError::Compacted {
                                requested: last_replayed + 1,
                                compact_revision: 0,
                            };
                            return Some((Err(e), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            let e = MetaError::Unavailable("embedded metadata store closed".into());
                            return Some((Err(e), None));
                        }
                    }
                }
            }
        });
        Ok(replayed.chain(live).boxed())
    }

    /// Forgets the watch history below `revision` (it lives in memory only, so nothing on
    /// disk changes): a watch from an older revision then fails with `Compacted`.
    async fn compact(&self, revision: i64) -> Result<(), MetaError> {
        let mut state = self.shared.lock();
        if revision > state.revision {
            return Err(MetaError::InvalidRequest(format!(
                "cannot compact to revision {revision}: the store is at {}",
                state.revision
            )));
        }
        while state.history.front().is_some_and(|r| r.revision < revision) {
            state.history.pop_front();
        }
        state.history_start = state.history_start.max(revision);
        Ok(())
    }

    fn limits(&self) -> StoreLimits {
        self.shared.limits
    }
}

#[cfg(test)]
mod tests;
mod writer;
