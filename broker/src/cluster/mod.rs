//! The cluster view: this broker's cache of everything under `/silt/<cluster>/`, kept current by
//! one watch on the whole prefix.
//!
//! At start the broker reads every key (page by page) and then watches from one past the first
//! page's revision, so it sees every change in revision order. Each change lands where it is
//! used: topics in the [`TopicTable`], segment commits of *every* broker in the [`LogIndex`] (so
//! any broker serves fetches of any partition), log starts in the index; brokers, partition
//! owners, the controller and writer keys here. If the watch history was compacted away the view
//! reloads everything and resumes.
//!
//! What the view guarantees the flusher (see [`ClusterView::flush_snapshot`]): a snapshot pairs
//! the owned partitions with this broker's writer fence (the `mod_revision` of its writer key) as
//! of one applied revision. Every ownership change that takes a partition away rewrites the
//! loser's writer key in the same transaction, after the owner keys, so a commit that passes the
//! fence compare writes only partitions the broker still owns — whatever the view's lag.

pub mod assignment;
pub mod controller;
pub mod membership;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use silt_metadata::catalog::{Catalog, Topic, WriterFence};
use silt_metadata::codec::{self, BrokerRecord, OwnerRecord};
use silt_metadata::keys::GROUP_SLOTS_TOPIC_ID;
use silt_metadata::{KeyValue, MetaError, RangeRequest, WatchEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::log_index::LogIndex;
use crate::core::topics::TopicTable;
use assignment::PartitionId;

/// Who owns a partition, as this broker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This broker, at this epoch.
    Me(u64),
    /// Another live broker.
    Other { broker_id: String, address: String },
    /// Nobody live (no owner yet, or the owner is gone and the controller has not moved it).
    Unowned,
}

/// What the flusher needs to lay out one window.
#[derive(Debug, Clone)]
pub struct FlushSnapshot {
    /// False while the view is not yet consistent (just loaded); nothing may be laid out.
    pub ready: bool,
    /// The fence the commit must pass; `None` when a newer incarnation of this broker exists.
    pub fence: Option<WriterFence>,
    /// Each asked partition this broker owns, with its owner key's `mod_revision`: a new value
    /// means the partition was (re)acquired, so its next offset is the committed high watermark.
    pub owned: HashMap<PartitionId, i64>,
}

/// A writer key as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterKey {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

#[derive(Debug, Default)]
struct State {
    brokers: BTreeMap<String, BrokerRecord>,
    /// Each owner record with its key's `mod_revision` (unique per change).
    owners: HashMap<PartitionId, (OwnerRecord, i64)>,
    /// The owner of each consumer-group coordinator slot (owner keys under the reserved topic
    /// id `GROUP_SLOTS_TOPIC_ID`), with its key's `mod_revision`.
    slots: HashMap<u32, (OwnerRecord, i64)>,
    /// The controller's broker id and the revision that elected it.
    controller: Option<(String, i64)>,
    writers: HashMap<String, WriterKey>,
    /// The `mod_revision` of each topic's log-start key: what a retention write compares.
    log_starts: HashMap<u64, i64>,
}

/// What the view has applied, and from when it is consistent.
#[derive(Debug, Clone, Copy)]
struct Progress {
    applied: i64,
    /// The view reflects one revision of the whole prefix once `applied` reaches this.
    ready_at: i64,
}

/// This broker's view of the cluster.
#[derive(Debug)]
pub struct ClusterView {
    catalog: Catalog,
    broker_id: String,
    incarnation: u64,
    topics: Arc<TopicTable>,
    index: Arc<LogIndex>,
    state: Mutex<State>,
    progress: Mutex<Progress>,
    /// The applied revision; changes after every applied batch of events.
    applied_tx: watch::Sender<i64>,
    /// Bumped when brokers, owners, the controller, writers or topics change.
    topology_tx: watch::Sender<u64>,
    /// Counts partitions this broker gains or loses.
    ownership_changes: std::sync::OnceLock<metrics::Counter>,
}

impl ClusterView {
    pub fn new(
        catalog: Catalog,
        broker_id: String,
        incarnation: u64,
        topics: Arc<TopicTable>,
        index: Arc<LogIndex>,
    ) -> Self {
        Self {
            catalog,
            broker_id,
            incarnation,
            topics,
            index,
            state: Mutex::new(State::default()),
            progress: Mutex::new(Progress {
                applied: 0,
                ready_at: i64::MAX,
            }),
            applied_tx: watch::channel(0).0,
            topology_tx: watch::channel(0).0,
            ownership_changes: std::sync::OnceLock::new(),
        }
    }

    /// Counts every partition this broker gains or loses on `counter` from now on.
    pub fn count_ownership_changes(&self, counter: metrics::Counter) {
        let _ = self.ownership_changes.set(counter);
    }

    fn ownership_changed(&self, before: Option<&str>, after: Option<&str>) {
        let mine = |b: Option<&str>| b == Some(self.broker_id.as_str());
        if before != after
            && (mine(before) || mine(after))
            && let Some(c) = self.ownership_changes.get()
        {
            c.increment(1);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn progress(&self) -> Progress {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn broker_id(&self) -> &str {
        &self.broker_id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Reads every key and applies it; returns the revision to watch from. Replaces what the
    /// view held (used at start and after the watch history was compacted).
    ///
    /// The pages are read at different revisions, so until the watch has replayed everything
    /// up to a write made *after* the last page — the caller's [`Self::set_ready_at`] — the
    /// view may pair keys of different moments, and [`Self::is_ready`] is false.
    pub async fn load(&self) -> Result<i64, MetaError> {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ready_at = i64::MAX;
        let (revision, kvs) = self
            .catalog
            .load_all()
            .await
            .map_err(|e| MetaError::Unavailable(e.to_string()))?;
        let keys = self.catalog.keys().clone();
        let mut segments = Vec::new();
        let mut parts = Vec::new();
        let mut unreadable_parts = Vec::new();
        let mut topics = Vec::new();
        let mut rest = Vec::new();
        for kv in kvs {
            if let Some(id) = keys.parse_segment(&kv.key) {
                match codec::decode_segment(&kv.key, &kv.value) {
                    Ok(c) => segments.push((id.to_string(), c)),
                    Err(e) => warn!(error = %e, "skipping an unreadable segment commit"),
                }
            } else if let Some(id) = keys.parse_part(&kv.key) {
                match codec::decode_segment(&kv.key, &kv.value) {
                    Ok(c) => parts.push((kv.mod_revision, id.to_string(), c)),
                    Err(e) => unreadable_parts.push((kv.key.clone(), e.to_string())),
                }
            } else if keys.parse_topic(&kv.key).is_some() {
                topics.push(kv);
            } else {
                rest.push(kv);
            }
        }
        // Topics first: segment entries of unknown topics are dropped.
        let mut names = Vec::new();
        for kv in &topics {
            if let Some(t) = self.topic_of(kv) {
                names.push(t.record.name.clone());
                self.topics.insert(t);
            }
        }
        for t in self.topics.all() {
            if !names.contains(&t.record.name) {
                self.topics.remove(&t.record.name);
                self.index.remove_topic(t.id);
            }
        }
        for (key, reason) in unreadable_parts {
            self.unreadable_part(&key, reason);
        }
        // The rest builds a fresh state, swapped in at once: no reader sees half of it.
        let mut fresh = State::default();
        for kv in &rest {
            let _ = self.apply_to(&mut fresh, &WatchEvent::Put(kv.clone()));
        }
        *self.lock() = fresh;
        let live = self.topics.live_ids();
        let of_live_topics = |commits: Vec<(String, codec::SegmentCommit)>| {
            commits
                .into_iter()
                .map(|(id, mut c)| {
                    c.entries.retain(|e| live.contains_key(&e.topic_id));
                    (id, c)
                })
                .collect()
        };
        // Compacted commits in the order they were made, as the watch would have applied
        // them: a later compaction of a range wins over an earlier one still listed.
        parts.sort_by_key(|(revision, _, _)| *revision);
        let parts = parts.into_iter().map(|(_, id, c)| (id, c)).collect();
        self.index
            .load(of_live_topics(segments), of_live_topics(parts));
        self.set_applied(revision);
        self.topology_changed();
        Ok(revision + 1)
    }

    /// A compacted commit at `key` could not be decoded: the partition its key names is not
    /// served, rather than served without its offsets.
    fn unreadable_part(&self, key: &[u8], reason: String) {
        warn!(error = %reason, "a compacted commit is unreadable; its partition is not served");
        if let Some((topic_id, partition)) = self.catalog.keys().parse_part_partition(key)
            && self.topics.is_live(topic_id)
        {
            self.index.set_unreadable_part(topic_id, partition, reason);
        }
    }

    fn topic_of(&self, kv: &KeyValue) -> Option<Topic> {
        match codec::decode_topic(&kv.key, &kv.value) {
            Ok(record) => Some(Topic {
                id: kv.create_revision as u64,
                record,
            }),
            Err(e) => {
                warn!(error = %e, "skipping an unreadable topic record");
                None
            }
        }
    }

    fn topology_changed(&self) {
        self.topology_tx.send_modify(|n| *n += 1);
    }

    /// A receiver that changes whenever brokers, owners, the controller, writers or topics do.
    pub fn subscribe_topology(&self) -> watch::Receiver<u64> {
        self.topology_tx.subscribe()
    }

    /// Marks the view consistent once it has applied `revision`: a write this broker made
    /// after loading (its writer registration).
    pub fn set_ready_at(&self, revision: i64) {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ready_at = revision;
        self.applied_tx.send_modify(|_| {});
    }

    /// True once the view reflects one consistent revision of the cluster.
    pub fn is_ready(&self) -> bool {
        let p = self.progress();
        p.applied >= p.ready_at
    }

    /// Waits (up to `timeout`) until the view is consistent; true if it is.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|_| self.is_ready()))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Applies one change; true if it changed the topology (anything but data and log starts).
    fn apply(&self, event: &WatchEvent) -> bool {
        let mut s = self.lock();
        self.apply_to(&mut s, event)
    }

    /// Applies one change to `s` (and to the topic table and index it feeds).
    fn apply_to(&self, s: &mut State, event: &WatchEvent) -> bool {
        let keys = self.catalog.keys();
        let kv = event.kv();
        let put = matches!(event, WatchEvent::Put(_));
        if let Some(name) = keys.parse_topic(&kv.key) {
            if put {
                if let Some(t) = self.topic_of(kv) {
                    self.topics.insert(t);
                }
            } else if let Some(t) = self.topics.remove(name) {
                self.index.remove_topic(t.id);
            }
            return true;
        } else if let Some(id) = keys.parse_segment(&kv.key) {
            if put {
                match codec::decode_segment(&kv.key, &kv.value) {
                    Ok(mut c) => {
                        c.entries.retain(|e| self.topics.is_live(e.topic_id));
                        self.index.apply(id, &c);
                    }
                    Err(e) => warn!(error = %e, "skipping an unreadable segment commit"),
                }
            }
            return false;
        } else if let Some(id) = keys.parse_part(&kv.key) {
            if put {
                match codec::decode_segment(&kv.key, &kv.value) {
                    Ok(mut c) => {
                        c.entries.retain(|e| self.topics.is_live(e.topic_id));
                        self.index.apply_part(id, &c);
                    }
                    Err(e) => self.unreadable_part(&kv.key, e.to_string()),
                }
            }
            return false;
        } else if let Some((topic_id, partition)) = keys.parse_index_root(&kv.key) {
            // A deleted root belongs to a deleted topic, whose partitions are gone already.
            if put && self.topics.is_live(topic_id) {
                match codec::decode_index_root(&kv.key, &kv.value) {
                    Ok(root) => self
                        .index
                        .set_root(topic_id, partition, kv.mod_revision, &root),
                    Err(e) => {
                        let reason = e.to_string();
                        warn!(error = %reason, "an index root is unreadable; its partition is not served until it is");
                        self.index.set_unreadable_root(
                            topic_id,
                            partition,
                            kv.mod_revision,
                            reason,
                        );
                    }
                }
            }
            return false;
        } else if let Some(topic_id) = keys.parse_log_start(&kv.key) {
            if put {
                s.log_starts.insert(topic_id, kv.mod_revision);
                match codec::decode_log_starts(&kv.key, &kv.value) {
                    Ok(starts) => {
                        for (p, start) in starts.into_iter().enumerate() {
                            self.index
                                .partition(topic_id, p as u32)
                                .set_log_start(start);
                        }
                    }
                    Err(e) => warn!(error = %e, "skipping unreadable log starts"),
                }
            } else {
                s.log_starts.remove(&topic_id);
            }
            return false;
        } else if let Some((GROUP_SLOTS_TOPIC_ID, slot)) = keys.parse_owner(&kv.key) {
            if put {
                match codec::decode_owner(&kv.key, &kv.value) {
                    Ok(o) => {
                        s.slots.insert(slot, (o, kv.mod_revision));
                    }
                    Err(e) => warn!(error = %e, "skipping an unreadable coordinator slot owner"),
                }
            } else {
                s.slots.remove(&slot);
            }
        } else if let Some(partition) = keys.parse_owner(&kv.key) {
            if put {
                match codec::decode_owner(&kv.key, &kv.value) {
                    Ok(o) => {
                        let before = s.owners.get(&partition).map(|(b, _)| b.broker_id.clone());
                        self.ownership_changed(before.as_deref(), Some(&o.broker_id));
                        s.owners.insert(partition, (o, kv.mod_revision));
                    }
                    Err(e) => warn!(error = %e, "skipping an unreadable owner record"),
                }
            } else if let Some((before, _)) = s.owners.remove(&partition) {
                self.ownership_changed(Some(&before.broker_id), None);
            }
        } else if let Some(broker) = keys.parse_broker(&kv.key) {
            if put {
                match codec::decode_broker(&kv.key, &kv.value) {
                    Ok(b) => {
                        s.brokers.insert(broker.to_string(), b);
                    }
                    Err(e) => warn!(error = %e, "skipping an unreadable broker record"),
                }
            } else {
                s.brokers.remove(broker);
            }
        } else if let Some(broker) = keys.parse_writer(&kv.key) {
            if put {
                if broker == self.broker_id
                    && Catalog::parse_incarnation(&kv.value) != Some(self.incarnation)
                {
                    warn!(
                        broker_id = %broker,
                        incarnation = self.incarnation,
                        "a newer incarnation of this broker id started; this process can no longer commit"
                    );
                }
                s.writers.insert(
                    broker.to_string(),
                    WriterKey {
                        value: kv.value.clone(),
                        mod_revision: kv.mod_revision,
                    },
                );
            } else {
                s.writers.remove(broker);
            }
        } else if kv.key == keys.controller() {
            // An unreadable record (a newer version's) still means someone holds the key.
            s.controller = put.then(|| {
                let id = codec::decode_controller(&kv.key, &kv.value)
                    .map(|c| c.broker_id)
                    .unwrap_or_default();
                (id, kv.create_revision)
            });
        }
        true
    }

    fn set_applied(&self, revision: i64) {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .applied = revision;
        self.applied_tx.send_replace(revision);
    }

    /// Follows the watch until `cancel`, reconnecting after errors and reloading after a
    /// compaction.
    pub async fn run(self: Arc<Self>, mut from: i64, cancel: CancellationToken) {
        let prefix = self.catalog.view_range();
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times();
        let mut delays = backon::BackoffBuilder::build(backoff);
        loop {
            let before = from;
            let error = tokio::select! {
                _ = cancel.cancelled() => return,
                e = self.follow(prefix.clone(), &mut from) => e,
            };
            if from > before {
                // The watch made progress before it ended: the next failure starts over.
                delays = backon::BackoffBuilder::build(backoff);
            }
            match error {
                MetaError::Compacted { .. } => {
                    info!("cluster watch history compacted; reloading the cluster view");
                    match self.reload().await {
                        Ok(next) => from = next,
                        Err(e) => warn!(error = %e, "reloading the cluster view failed; retrying"),
                    }
                }
                e => debug!(error = %e, "cluster watch ended; resuming"),
            }
            let pause = delays.next().unwrap_or(Duration::from_secs(1));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// [`Self::load`] again, made consistent by rewriting this broker's writer key after it
    /// (which also fails this broker's commits in flight: they were laid out from the old view).
    async fn reload(&self) -> Result<i64, MetaError> {
        let from = self.load().await?;
        let touched = self
            .catalog
            .touch_writer(&self.broker_id, self.incarnation)
            .await
            .map_err(|e| MetaError::Unavailable(e.to_string()))?;
        // A newer incarnation holds the key: the view is not current anyway, say it is ready.
        self.set_ready_at(touched.unwrap_or(0));
        Ok(from)
    }

    /// One watch: applies events until it fails; returns the error.
    async fn follow(&self, prefix: RangeRequest, from: &mut i64) -> MetaError {
        let mut stream = match self.catalog.store().watch(prefix, *from).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(resp) => {
                    let mut topology = false;
                    for event in &resp.events {
                        topology |= self.apply(event);
                    }
                    *from = resp.revision + 1;
                    self.set_applied(resp.revision);
                    if topology {
                        self.topology_changed();
                    }
                }
                Err(e) => return e,
            }
        }
        MetaError::Unavailable("the cluster watch ended".into())
    }

    /// A receiver of the applied revision: it changes after every applied change.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.applied_tx.subscribe()
    }

    /// The revision the view has applied.
    pub fn applied(&self) -> i64 {
        self.progress().applied
    }

    /// Waits until the view has applied `revision` (or `timeout` passes); true if it has.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Who owns a partition.
    pub fn owner(&self, partition: PartitionId) -> Owner {
        let s = self.lock();
        Self::owner_locked(&s, &self.broker_id, partition)
    }

    fn owner_locked(s: &State, me: &str, partition: PartitionId) -> Owner {
        Self::resolve_owner(s, me, s.owners.get(&partition).map(|(o, _)| o))
    }

    /// An owner record as this broker sees it: itself, another live broker, or nobody.
    fn resolve_owner(s: &State, me: &str, owner: Option<&OwnerRecord>) -> Owner {
        match owner {
            Some(o) if o.broker_id == me => Owner::Me(o.epoch),
            Some(o) => match s.brokers.get(&o.broker_id) {
                Some(b) => Owner::Other {
                    broker_id: o.broker_id.clone(),
                    address: b.address.clone(),
                },
                None => Owner::Unowned,
            },
            None => Owner::Unowned,
        }
    }

    /// The fence and the owned partitions among `partitions`, as of one applied revision.
    pub fn flush_snapshot(&self, partitions: impl Iterator<Item = PartitionId>) -> FlushSnapshot {
        let s = self.lock();
        let fence = s
            .writers
            .get(&self.broker_id)
            .filter(|w| Catalog::parse_incarnation(&w.value) == Some(self.incarnation))
            .map(|w| WriterFence {
                broker_id: self.broker_id.clone(),
                incarnation: self.incarnation,
                revision: w.mod_revision,
            });
        let owned = partitions
            .filter_map(|p| match s.owners.get(&p) {
                Some((o, revision)) if o.broker_id == self.broker_id => Some((p, *revision)),
                _ => None,
            })
            .collect();
        drop(s);
        FlushSnapshot {
            ready: self.is_ready(),
            fence,
            owned,
        }
    }

    /// The fence under which this broker may write the groups of coordinator `slot`: `Some`
    /// only while it owns the slot, read together with its writer key (as a flush snapshot
    /// is), so a write under it fails once the slot was taken away.
    pub fn coordinator_fence(&self, slot: u32) -> Option<WriterFence> {
        let s = self.lock();
        let owned = s
            .slots
            .get(&slot)
            .is_some_and(|(o, _)| o.broker_id == self.broker_id);
        if !owned || !self.is_ready() {
            return None;
        }
        s.writers
            .get(&self.broker_id)
            .filter(|w| Catalog::parse_incarnation(&w.value) == Some(self.incarnation))
            .map(|w| WriterFence {
                broker_id: self.broker_id.clone(),
                incarnation: self.incarnation,
                revision: w.mod_revision,
            })
    }

    /// The topic table the view keeps.
    pub fn topics(&self) -> Arc<TopicTable> {
        self.topics.clone()
    }

    /// The log index the view keeps.
    pub fn index(&self) -> Arc<LogIndex> {
        self.index.clone()
    }

    /// Who coordinates the groups of `slot`.
    pub fn slot_owner(&self, slot: u32) -> Owner {
        let s = self.lock();
        Self::resolve_owner(&s, &self.broker_id, s.slots.get(&slot).map(|(o, _)| o))
    }

    /// Every coordinator slot's owner with its key's `mod_revision`.
    pub fn slots_with_revisions(&self) -> HashMap<u32, (OwnerRecord, i64)> {
        self.lock().slots.clone()
    }

    /// True while this process is the current incarnation of its broker id.
    pub fn is_current(&self) -> bool {
        let s = self.lock();
        s.writers
            .get(&self.broker_id)
            .is_none_or(|w| Catalog::parse_incarnation(&w.value) == Some(self.incarnation))
    }

    /// The live brokers, by id.
    pub fn brokers(&self) -> Vec<BrokerRecord> {
        self.lock().brokers.values().cloned().collect()
    }

    /// Every owner record, by partition.
    pub fn owners(&self) -> HashMap<PartitionId, OwnerRecord> {
        self.owners_with_revisions()
            .into_iter()
            .map(|(p, (o, _))| (p, o))
            .collect()
    }

    /// Every owner record with its key's `mod_revision`, by partition.
    pub fn owners_with_revisions(&self) -> HashMap<PartitionId, (OwnerRecord, i64)> {
        self.lock().owners.clone()
    }

    /// The controller's broker id and election revision.
    pub fn controller(&self) -> Option<(String, i64)> {
        self.lock().controller.clone()
    }

    /// The `mod_revision` of a topic's log-start key as last seen (0: none).
    pub fn log_start_revision(&self, topic_id: u64) -> i64 {
        self.lock().log_starts.get(&topic_id).copied().unwrap_or(0)
    }

    /// The revision that elected this broker controller, while the view says it is.
    pub fn controller_revision_if_me(&self) -> Option<i64> {
        match self.controller() {
            Some((id, revision)) if id == self.broker_id => Some(revision),
            _ => None,
        }
    }

    /// A writer key as last seen.
    pub fn writer(&self, broker_id: &str) -> Option<WriterKey> {
        self.lock().writers.get(broker_id).cloned()
    }

    /// How many partitions each broker owns.
    pub fn owned_counts(&self) -> HashMap<String, u32> {
        let s = self.lock();
        let mut counts = HashMap::new();
        for (o, _) in s.owners.values() {
            *counts.entry(o.broker_id.clone()).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
pub(crate) mod tests;
