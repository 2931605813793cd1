//! The embedded store's one writer: a dedicated thread that makes changes durable in groups.
//!
//! Every change — a transaction with writes, a lease grant, a revocation or an expiry — is sent
//! here as a [`Request`]. The thread takes every request waiting (up to [`MAX_GROUP`]),
//! evaluates them one after another as if each had committed alone (each mutating one gets the
//! next revision and sees the writes of those before it), writes the whole group in ONE redb
//! write transaction — one fsync however many requests — and only then applies the group to the
//! in-memory state, tells watchers, and answers each caller. So:
//! - nothing is visible (to reads, watches or callers) before it is durable;
//! - a crash loses only changes nobody was told about, and never half of a group (redb's commit
//!   is atomic);
//! - the fsync never runs on an async runtime's worker thread, and under load one fsync serves
//!   many commits (group commit).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::mpsc;

use redb::Database;
use tokio::sync::oneshot;

use super::{KV, LEASES, Lease, META, Shared, State, bounds, db_err, encode_kv};
use crate::error::MetaError;
use crate::store::{
    KeyValue, LeaseId, Op, OpResponse, RangeRequest, Txn, TxnResponse, WatchEvent, WatchResponse,
};

/// Most requests committed by one fsync.
const MAX_GROUP: usize = 1024;

/// A change for the writer thread, with where its answer goes.
pub(super) enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnResponse, MetaError>>),
    Grant {
        ttl_ms: i64,
        reply: oneshot::Sender<Result<LeaseId, MetaError>>,
    },
    Revoke(LeaseId, oneshot::Sender<Result<(), MetaError>>),
    /// Drops every lease past its deadline (one revision per lease that held keys).
    Expire(oneshot::Sender<Result<(), MetaError>>),
}

/// An answer held back until its group is durable.
enum Reply {
    Txn(oneshot::Sender<Result<TxnResponse, MetaError>>, TxnResponse),
    Grant(oneshot::Sender<Result<LeaseId, MetaError>>, LeaseId),
    Done(oneshot::Sender<Result<(), MetaError>>),
}

impl Reply {
    fn send(self) {
        match self {
            Reply::Txn(tx, r) => drop(tx.send(Ok(r))),
            Reply::Grant(tx, id) => drop(tx.send(Ok(id))),
            Reply::Done(tx) => drop(tx.send(Ok(()))),
        }
    }

    fn fail(self, e: MetaError) {
        match self {
            Reply::Txn(tx, _) => drop(tx.send(Err(e))),
            Reply::Grant(tx, _) => drop(tx.send(Err(e))),
            Reply::Done(tx) => drop(tx.send(Err(e))),
        }
    }
}

/// One revision's changes, in order.
struct Change {
    revision: i64,
    /// Each key's new state (`None`: deleted), in the order they were made.
    writes: Vec<(Vec<u8>, Option<KeyValue>)>,
    events: Vec<WatchEvent>,
}

/// The requests of one group, evaluated but not yet durable.
struct Group {
    /// The store's revision and next lease id before the group (only the writer changes them).
    base_revision: i64,
    base_next_lease: i64,
    /// The last revision given out (the store's revision before the group, plus one per change).
    revision: i64,
    next_lease: i64,
    /// Each key written by the group: its latest state (`None`: deleted).
    staged: BTreeMap<Vec<u8>, Option<KeyValue>>,
    changes: Vec<Change>,
    granted: Vec<(LeaseId, i64)>,
    dropped: HashSet<LeaseId>,
    replies: Vec<Reply>,
}

impl Group {
    fn new(state: &State) -> Self {
        Self {
            base_revision: state.revision,
            base_next_lease: state.next_lease,
            revision: state.revision,
            next_lease: state.next_lease,
            staged: BTreeMap::new(),
            changes: Vec::new(),
            granted: Vec::new(),
            dropped: HashSet::new(),
            replies: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.granted.is_empty() && self.dropped.is_empty()
    }

    /// A key as the group sees it: its own writes first, then `local`'s, then the store's.
    fn get<'a>(
        &'a self,
        state: &'a State,
        local: &'a BTreeMap<Vec<u8>, Option<KeyValue>>,
        key: &[u8],
    ) -> Option<&'a KeyValue> {
        match local.get(key).or_else(|| self.staged.get(key)) {
            Some(staged) => staged.as_ref(),
            None => state.kvs.get(key),
        }
    }

    /// The keys of `[key, range_end)` through both layers of pending writes.
    fn view(
        &self,
        state: &State,
        local: &BTreeMap<Vec<u8>, Option<KeyValue>>,
        key: &[u8],
        range_end: &[u8],
    ) -> Vec<KeyValue> {
        let b: (Bound<Vec<u8>>, Bound<Vec<u8>>) = bounds(key, range_end);
        let mut merged: BTreeMap<&[u8], Option<&KeyValue>> = state
            .kvs
            .range::<Vec<u8>, _>(b.clone())
            .map(|(k, v)| (k.as_slice(), Some(v)))
            .collect();
        for layer in [&self.staged, local] {
            for (k, v) in layer.range::<Vec<u8>, _>(b.clone()) {
                merged.insert(k.as_slice(), v.as_ref());
            }
        }
        merged.into_values().flatten().cloned().collect()
    }

    /// True while `lease` can take keys: known, not past its deadline, not dropped here.
    fn lease_alive(&self, state: &State, lease: LeaseId, now: i64) -> bool {
        !self.dropped.contains(&lease)
            && state
                .leases
                .get(&lease)
                .is_some_and(|l| l.deadline_ms > now)
    }

    /// The keys attached to `lease` as the group sees them.
    fn lease_keys(&self, state: &State, lease: LeaseId) -> BTreeSet<Vec<u8>> {
        let mut keys = state
            .leases
            .get(&lease)
            .map(|l| l.keys.clone())
            .unwrap_or_default();
        for (k, v) in &self.staged {
            match v {
                Some(kv) if kv.lease == lease => {
                    keys.insert(k.clone());
                }
                _ => {
                    keys.remove(k);
                }
            }
        }
        keys
    }

    fn push_change(&mut self, change: Change) {
        for (k, v) in &change.writes {
            self.staged.insert(k.clone(), v.clone());
        }
        self.changes.push(change);
    }

    /// Evaluates a transaction against the store plus the group's earlier writes.
    fn txn(&mut self, state: &State, txn: Txn, now: i64) -> Result<TxnResponse, MetaError> {
        let empty = BTreeMap::new();
        let succeeded = txn
            .compares
            .iter()
            .all(|c| super::compare_holds(self.get(state, &empty, &c.key), c));
        let ops = if succeeded { txn.success } else { txn.failure };
        let revision = self.revision + 1;
        let mut local: BTreeMap<Vec<u8>, Option<KeyValue>> = BTreeMap::new();
        let mut writes = Vec::new();
        let mut events = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    // A lease past its deadline is gone even if the reaper has not run yet.
                    if lease != 0 && !self.lease_alive(state, lease, now) {
                        return Err(MetaError::LeaseNotFound(lease));
                    }
                    let previous = self.get(state, &local, &key);
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision: previous.map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: previous.map_or(1, |p| p.version + 1),
                        lease,
                    };
                    events.push(WatchEvent::Put(kv.clone()));
                    writes.push((key.clone(), Some(kv.clone())));
                    local.insert(key, Some(kv));
                    responses.push(OpResponse::Put);
                }
                Op::Delete { key, range_end } => {
                    let doomed = self.view(state, &local, &key, &range_end);
                    for old in &doomed {
                        local.insert(old.key.clone(), None);
                        writes.push((old.key.clone(), None));
                        events.push(WatchEvent::Delete(KeyValue {
                            value: Vec::new(),
                            mod_revision: revision,
                            ..old.clone()
                        }));
                    }
                    responses.push(OpResponse::Delete(doomed.len() as i64));
                }
                Op::Get(req) => {
                    let kvs = self.view(state, &local, &req.key, &req.range_end);
                    let current = if events.is_empty() {
                        self.revision
                    } else {
                        revision
                    };
                    responses.push(OpResponse::Get(super::range_response(kvs, &req, current)));
                }
            }
        }
        if events.is_empty() {
            return Ok(TxnResponse {
                succeeded,
                revision: self.revision,
                responses,
            });
        }
        self.revision = revision;
        self.push_change(Change {
            revision,
            writes,
            events,
        });
        Ok(TxnResponse {
            succeeded,
            revision,
            responses,
        })
    }

    /// Drops a lease and its keys: one revision if it held any.
    fn drop_lease(&mut self, state: &State, id: LeaseId) {
        let keys = self.lease_keys(state, id);
        self.dropped.insert(id);
        if keys.is_empty() {
            return;
        }
        let revision = self.revision + 1;
        let mut writes = Vec::with_capacity(keys.len());
        let mut events = Vec::with_capacity(keys.len());
        let empty = BTreeMap::new();
        for key in keys {
            if let Some(old) = self.get(state, &empty, &key) {
                events.push(WatchEvent::Delete(KeyValue {
                    value: Vec::new(),
                    mod_revision: revision,
                    ..old.clone()
                }));
                writes.push((key, None));
            }
        }
        self.revision = revision;
        self.push_change(Change {
            revision,
            writes,
            events,
        });
    }

    /// Evaluates one request; its answer waits for the group's commit.
    fn add(&mut self, shared: &Shared, state: &State, request: Request) {
        let now = shared.clock.monotonic_ms();
        match request {
            Request::Txn(txn, reply) => match self.txn(state, txn, now) {
                Ok(response) => self.replies.push(Reply::Txn(reply, response)),
                Err(e) => drop(reply.send(Err(e))),
            },
            Request::Grant { ttl_ms, reply } => {
                let id = self.next_lease;
                self.next_lease += 1;
                self.granted.push((id, ttl_ms));
                self.replies.push(Reply::Grant(reply, id));
            }
            Request::Revoke(id, reply) => {
                if self.dropped.contains(&id) || !state.leases.contains_key(&id) {
                    let _ = reply.send(Err(MetaError::LeaseNotFound(id)));
                    return;
                }
                self.drop_lease(state, id);
                self.replies.push(Reply::Done(reply));
            }
            Request::Expire(reply) => {
                let mut expired: Vec<LeaseId> = state
                    .leases
                    .iter()
                    .filter(|(id, l)| l.deadline_ms <= now && !self.dropped.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                expired.sort_unstable();
                for id in expired {
                    self.drop_lease(state, id);
                }
                self.replies.push(Reply::Done(reply));
            }
        }
    }

    /// Writes the group in one durable redb transaction.
    fn persist(&self, db: &Database) -> Result<(), MetaError> {
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(KV).map_err(db_err)?;
            for (key, kv) in &self.staged {
                match kv {
                    Some(kv) => table
                        .insert(key.as_slice(), encode_kv(kv).as_slice())
                        .map(|_| ()),
                    None => table.remove(key.as_slice()).map(|_| ()),
                }
                .map_err(db_err)?;
            }
            let mut leases = tx.open_table(LEASES).map_err(db_err)?;
            for (id, ttl_ms) in &self.granted {
                leases.insert(*id, *ttl_ms).map_err(db_err)?;
            }
            for id in &self.dropped {
                leases.remove(*id).map_err(db_err)?;
            }
            let mut meta = tx.open_table(META).map_err(db_err)?;
            if self.revision != self.base_revision {
                meta.insert("revision", self.revision).map_err(db_err)?;
            }
            if self.next_lease != self.base_next_lease {
                meta.insert("next_lease", self.next_lease).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Makes a durable group visible: the in-memory state, then the watchers.
    fn apply(self, shared: &Shared, state: &mut State) -> Vec<Reply> {
        let now = shared.clock.monotonic_ms();
        for (id, ttl_ms) in &self.granted {
            state.leases.insert(
                *id,
                Lease {
                    ttl_ms: *ttl_ms,
                    deadline_ms: now.saturating_add(*ttl_ms),
                    keys: BTreeSet::new(),
                },
            );
        }
        state.next_lease = self.next_lease;
        for change in self.changes {
            for (key, kv) in change.writes {
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
            state.revision = change.revision;
            shared.publish(
                state,
                WatchResponse {
                    revision: change.revision,
                    events: change.events,
                },
            );
        }
        for id in &self.dropped {
            state.leases.remove(id);
        }
        state.revision = self.revision;
        self.replies
    }
}

/// The writer thread: groups requests, commits each group with one fsync, then publishes it.
pub(super) fn run(db: Database, shared: Arc<Shared>, requests: mpsc::Receiver<Request>) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let group = {
            let state = shared.lock();
            let mut group = Group::new(&state);
            for request in batch {
                group.add(&shared, &state, request);
            }
            group
        };
        let replies = if group.is_empty() {
            group.replies
        } else {
            // The durable write runs without the state lock: reads and watches go on.
            let persisted = group.persist(&db);
            match persisted {
                Ok(()) => {
                    shared
                        .commits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut state = shared.lock();
                    group.apply(&shared, &mut state)
                }
                Err(e) => {
                    tracing::error!(error = %e, "the embedded metadata store could not commit");
                    for reply in group.replies {
                        reply.fail(e.clone());
                    }
                    continue;
                }
            }
        };
        for reply in replies {
            reply.send();
        }
    }
}

/// Reads the keys of a range from the durable state (no pending writes).
pub(super) fn read_range(state: &State, req: &RangeRequest) -> Vec<KeyValue> {
    state
        .kvs
        .range::<Vec<u8>, _>(bounds(&req.key, &req.range_end))
        .map(|(_, v)| v.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::embedded::EmbeddedStore;
    use crate::store::{Compare, MetaStore};

    #[tokio::test]
    async fn waiting_changes_share_one_durable_commit_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("m.redb"), ManualClock::new(0)).unwrap();
        let lease = store
            .grant_lease(std::time::Duration::from_secs(60))
            .await
            .unwrap();
        let before = store.durable_commits();
        let shared = store.shared.clone();
        // Queue changes before a writer runs: one group takes them all.
        let (tx, rx) = mpsc::channel();
        let mut answers = Vec::new();
        for i in 0..100u32 {
            let (reply, answer) = oneshot::channel();
            // Each put is conditional on the previous one: order matters.
            let txn = Txn::new()
                .when([Compare::new(
                    "k",
                    crate::CompareOp::Equal,
                    crate::CompareTarget::Version(i64::from(i)),
                )])
                .and_then([Op::put_with_lease("k", i.to_string(), lease)]);
            tx.send(Request::Txn(txn, reply)).unwrap();
            answers.push(answer);
        }
        let (revoke, revoked) = oneshot::channel();
        tx.send(Request::Revoke(lease, revoke)).unwrap();
        drop(tx);
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        {
            let w = db.begin_write().unwrap();
            w.open_table(KV).unwrap();
            w.open_table(LEASES).unwrap();
            w.open_table(META).unwrap();
            w.commit().unwrap();
        }
        let start = shared.lock().revision;
        let writer = std::thread::spawn(move || run(db, shared, rx));
        for (i, answer) in answers.into_iter().enumerate() {
            let r = answer.await.unwrap().unwrap();
            assert!(r.succeeded, "change {i} saw the change before it");
            assert_eq!(r.revision, start + 1 + i as i64);
        }
        revoked.await.unwrap().unwrap();
        writer.join().unwrap();
        assert_eq!(
            store.durable_commits(),
            before + 1,
            "one fsync for 101 changes"
        );
        // The writer thread above applied to the same shared state the store reads.
        assert!(
            store.get(b"k").await.unwrap().is_none(),
            "the revoked lease took its key"
        );
        assert_eq!(
            store.range(RangeRequest::key("k")).await.unwrap().revision,
            start + 101
        );
    }
}
