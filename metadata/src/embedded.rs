//! [`EmbeddedStore`]: the single-node [`MetaStore`], persisted on local disk with redb.
//!
//! The whole keyspace is held in memory (Silt's metadata is small: topics, one key per segment
//! object, per-topic log starts) and every mutating transaction is first committed durably to a
//! redb database — one redb write transaction, fsynced — and only then applied in memory and
//! announced to watchers. A crash therefore loses nothing that was acknowledged and never
//! exposes half a transaction: redb's commit is atomic.
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
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::error::MetaError;
use crate::store::{
    Compare, CompareOp, CompareTarget, KeyValue, LeaseId, MetaStore, Op, OpResponse, RangeRequest,
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

/// The embedded metadata store.
pub struct EmbeddedStore {
    db: Database,
    state: Mutex<State>,
    events: broadcast::Sender<Arc<WatchResponse>>,
    clock: Arc<dyn Clock>,
    limits: StoreLimits,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
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
        let store = Arc::new(Self {
            db,
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
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&store);
            handle.spawn(expire_leases_forever(weak));
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets the watch history below `revision`, as etcd's Compact does: a watch from an older
    /// revision then fails with `Compacted`.
    pub fn compact(&self, revision: i64) {
        let mut state = self.lock();
        while state.history.front().is_some_and(|r| r.revision < revision) {
            state.history.pop_front();
        }
        state.history_start = state.history_start.max(revision);
    }

    /// Deletes the keys of every lease whose TTL ran out (one revision per lease, as etcd).
    pub fn expire_leases(&self) {
        let now = self.clock.monotonic_ms();
        let mut state = self.lock();
        let expired: Vec<LeaseId> = state
            .leases
            .iter()
            .filter(|(_, l)| l.deadline_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Err(e) = self.drop_lease(&mut state, id) {
                tracing::warn!(lease = id, error = %e, "could not expire a lease; retrying");
            }
        }
    }

    /// Removes a lease and its keys in one revision.
    fn drop_lease(&self, state: &mut State, id: LeaseId) -> Result<(), MetaError> {
        let Some(lease) = state.leases.get(&id) else {
            return Err(MetaError::LeaseNotFound(id));
        };
        let keys: Vec<Vec<u8>> = lease.keys.iter().cloned().collect();
        let revision = state.revision + 1;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut kv = tx.open_table(KV).map_err(db_err)?;
            for k in &keys {
                kv.remove(k.as_slice()).map_err(db_err)?;
            }
            tx.open_table(LEASES)
                .map_err(db_err)?
                .remove(id)
                .map_err(db_err)?;
            if !keys.is_empty() {
                tx.open_table(META)
                    .map_err(db_err)?
                    .insert("revision", revision)
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        state.leases.remove(&id);
        if keys.is_empty() {
            return Ok(());
        }
        let events = keys
            .into_iter()
            .filter_map(|k| state.kvs.remove(&k))
            .map(|old| {
                WatchEvent::Delete(KeyValue {
                    value: Vec::new(),
                    mod_revision: revision,
                    ..old
                })
            })
            .collect();
        state.revision = revision;
        self.publish(state, WatchResponse { revision, events });
        Ok(())
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
}

async fn expire_leases_forever(store: Weak<EmbeddedStore>) {
    let mut ticker = tokio::time::interval(LEASE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.upgrade() {
            Some(store) => store.expire_leases(),
            None => return,
        }
    }
}

/// The keys of `[key, range_end)` as seen through a transaction's pending writes.
fn view(
    base: &BTreeMap<Vec<u8>, KeyValue>,
    staged: &BTreeMap<Vec<u8>, Option<KeyValue>>,
    key: &[u8],
    range_end: &[u8],
) -> Vec<KeyValue> {
    let b = bounds(key, range_end);
    let mut merged: BTreeMap<&[u8], Option<&KeyValue>> = base
        .range::<Vec<u8>, _>(b.clone())
        .map(|(k, v)| (k.as_slice(), Some(v)))
        .collect();
    for (k, v) in staged.range::<Vec<u8>, _>(b) {
        merged.insert(k.as_slice(), v.as_ref());
    }
    merged.into_values().flatten().cloned().collect()
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

impl EmbeddedStore {
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

    fn run_txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        self.check_limits(&txn)?;
        let now = self.clock.monotonic_ms();
        let mut state = self.lock();
        let succeeded = txn
            .compares
            .iter()
            .all(|c| compare_holds(state.kvs.get(&c.key), c));
        let ops = if succeeded { txn.success } else { txn.failure };
        let revision = state.revision + 1;
        let mut staged: BTreeMap<Vec<u8>, Option<KeyValue>> = BTreeMap::new();
        let mut events = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    // A lease past its deadline is gone even if the reaper has not run yet.
                    let lease_alive = |l: &Lease| l.deadline_ms > now;
                    if lease != 0 && !state.leases.get(&lease).is_some_and(lease_alive) {
                        return Err(MetaError::LeaseNotFound(lease));
                    }
                    let previous = match staged.get(&key) {
                        Some(staged) => staged.clone(),
                        None => state.kvs.get(&key).cloned(),
                    };
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: previous.as_ref().map_or(1, |p| p.version + 1),
                        lease,
                    };
                    events.push(WatchEvent::Put(kv.clone()));
                    staged.insert(key, Some(kv));
                    responses.push(OpResponse::Put);
                }
                Op::Delete { key, range_end } => {
                    let doomed = view(&state.kvs, &staged, &key, &range_end);
                    for old in &doomed {
                        staged.insert(old.key.clone(), None);
                        events.push(WatchEvent::Delete(KeyValue {
                            value: Vec::new(),
                            mod_revision: revision,
                            ..old.clone()
                        }));
                    }
                    responses.push(OpResponse::Delete(doomed.len() as i64));
                }
                Op::Get(req) => {
                    let kvs = view(&state.kvs, &staged, &req.key, &req.range_end);
                    let current = if events.is_empty() {
                        state.revision
                    } else {
                        revision
                    };
                    responses.push(OpResponse::Get(range_response(kvs, &req, current)));
                }
            }
        }
        if events.is_empty() {
            return Ok(TxnResponse {
                succeeded,
                revision: state.revision,
                responses,
            });
        }

        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(KV).map_err(db_err)?;
            for (key, kv) in &staged {
                match kv {
                    Some(kv) => table
                        .insert(key.as_slice(), encode_kv(kv).as_slice())
                        .map(|_| ()),
                    None => table.remove(key.as_slice()).map(|_| ()),
                }
                .map_err(db_err)?;
            }
            tx.open_table(META)
                .map_err(db_err)?
                .insert("revision", revision)
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;

        for (key, kv) in staged {
            let old_lease = state.kvs.get(&key).map_or(0, |old| old.lease);
            if old_lease != 0
                && let Some(lease) = state.leases.get_mut(&old_lease)
            {
                lease.keys.remove(&key);
            }
            match kv {
                Some(kv) => {
                    if kv.lease != 0
                        && let Some(lease) = state.leases.get_mut(&kv.lease)
                    {
                        lease.keys.insert(key.clone());
                    }
                    state.kvs.insert(key, kv);
                }
                None => {
                    state.kvs.remove(&key);
                }
            }
        }
        state.revision = revision;
        self.publish(&mut state, WatchResponse { revision, events });
        Ok(TxnResponse {
            succeeded,
            revision,
            responses,
        })
    }
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, MetaError> {
        let state = self.lock();
        let kvs: Vec<KeyValue> = state
            .kvs
            .range::<Vec<u8>, _>(bounds(&req.key, &req.range_end))
            .map(|(_, v)| v.clone())
            .collect();
        Ok(range_response(kvs, &req, state.revision))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        self.run_txn(txn)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut state = self.lock();
        let id = state.next_lease;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            tx.open_table(LEASES)
                .map_err(db_err)?
                .insert(id, ttl_ms)
                .map_err(db_err)?;
            tx.open_table(META)
                .map_err(db_err)?
                .insert("next_lease", id + 1)
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        state.next_lease = id + 1;
        let deadline_ms = self.clock.monotonic_ms().saturating_add(ttl_ms);
        state.leases.insert(
            id,
            Lease {
                ttl_ms,
                deadline_ms,
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError> {
        let now = self.clock.monotonic_ms();
        let mut state = self.lock();
        match state.leases.get_mut(&lease) {
            Some(l) if l.deadline_ms > now => {
                l.deadline_ms = now.saturating_add(l.ttl_ms);
                Ok(Duration::from_millis(l.ttl_ms as u64))
            }
            Some(_) => {
                self.drop_lease(&mut state, lease)?;
                Err(MetaError::LeaseNotFound(lease))
            }
            None => Err(MetaError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        let mut state = self.lock();
        self.drop_lease(&mut state, lease)
    }

    async fn watch(
        &self,
        req: RangeRequest,
        start_revision: i64,
    ) -> Result<WatchStream, MetaError> {
        let (replay, live, from) = {
            let state = self.lock();
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
            (replay, self.events.subscribe(), from)
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

    fn limits(&self) -> StoreLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests;
