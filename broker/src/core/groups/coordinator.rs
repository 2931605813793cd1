//! The group coordinator of one broker: serves the groups of the coordinator slots it owns.
//!
//! A slot's groups are loaded from metadata the first time the slot is used after this broker
//! became its owner (every member then gets a full session), and dropped as soon as the view
//! shows another owner. Each slot has one async lock: calls on the groups of one slot run one
//! at a time, and a change is persisted (a fenced compare-and-set of the group record) before
//! the caller hears of it. A write refused by its compare means this broker lost the slot or
//! another writer got in: the slot is dropped and the caller is told to retry (at the new
//! coordinator, when known).
//!
//! Committed offsets go through one committer task that coalesces the commits of every group
//! this broker coordinates into one metadata transaction per round — at most one round per
//! [`COMMIT_WINDOW`] (5 ms), holding every commit that arrived meanwhile, up to the store's
//! operation limit, one key per partition keeping the latest — and answers each commit only
//! after its transaction. Consumers that commit after every record therefore cost the metadata
//! store at most 200 transactions per second per coordinator, whatever their commit rate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use silt_metadata::Clock;
use silt_metadata::catalog::{Catalog, OffsetCommit, WriterFence};
use silt_metadata::codec::OffsetRecord;
use silt_metadata::keys::GROUP_SLOTS;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::GroupPartition;
use super::state::{Changed, Group, GroupError, Heartbeat, HeartbeatAnswer, validate_group_id};
use crate::cluster::{ClusterView, Owner};
use crate::core::error::BrokerError;
use crate::core::log_index::LogIndex;
use crate::core::topics::TopicTable;

/// How often sessions are checked for expiry.
pub const EXPIRY_TICK: Duration = Duration::from_millis(250);
/// The shortest time between two offset-commit rounds (one metadata transaction each).
pub const COMMIT_WINDOW: Duration = Duration::from_millis(5);
/// Every how many expiry ticks committed offsets of deleted topics are removed (5 s).
const DELETED_TOPICS_EVERY: u64 = 20;
/// Most commits waiting for the committer before callers are told to slow down.
const COMMIT_QUEUE: usize = 10_000;
/// Most partitions one commit call may name.
pub const MAX_COMMIT_PARTITIONS: usize = 10_000;
/// Most bytes of a commit's metadata string (Kafka's `offset.metadata.max.bytes`).
pub const MAX_OFFSET_METADATA_BYTES: usize = 4096;

/// The coordinator slot of a group: Kafka's key hash of its id.
pub fn slot_of(group: &str) -> u32 {
    silt_storage::routing::partition_for_key(group.as_bytes(), GROUP_SLOTS)
}

/// One partition's committed offset as a caller gives or gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// A partition of a group as `describe` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: u32,
    /// -1: nothing committed.
    pub committed: i64,
    pub high_watermark: i64,
    /// Records between the committed offset (or the log start, when nothing is committed) and
    /// the high watermark.
    pub lag: i64,
    pub member: Option<String>,
}

/// What `describe` returns.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub group: Group,
    pub partitions: Vec<PartitionLag>,
}

/// Where an offset reset moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(i64),
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
    ShiftBy(i64),
}

/// A group loaded in its slot: state, the record's `mod_revision` (0: never written) and its
/// committed offsets by (topic id, partition).
#[derive(Debug, Clone)]
struct Loaded {
    group: Group,
    revision: i64,
    offsets: BTreeMap<GroupPartition, OffsetRecord>,
}

/// The groups of one slot as this broker coordinates them.
#[derive(Debug, Default)]
struct SlotState {
    /// The owner key epoch under which the slot was loaded; a different epoch means the slot
    /// moved away and back, so what is loaded may be stale.
    epoch: u64,
    groups: HashMap<String, Loaded>,
}

/// One commit waiting for the committer.
#[derive(Debug)]
struct CommitJob {
    slot: u32,
    group: String,
    offsets: Vec<(GroupPartition, OffsetRecord)>,
    reply: oneshot::Sender<Result<(), BrokerError>>,
}

/// The coordinator.
#[derive(Debug)]
pub struct Coordinator {
    view: Arc<ClusterView>,
    catalog: Catalog,
    topics: Arc<TopicTable>,
    index: Arc<LogIndex>,
    clock: Arc<dyn Clock>,
    slots: Vec<Mutex<Option<SlotState>>>,
    commits: mpsc::Sender<CommitJob>,
    commit_rx: std::sync::Mutex<Option<mpsc::Receiver<CommitJob>>>,
}

fn group_error(e: GroupError) -> BrokerError {
    match e {
        GroupError::Invalid(m) => BrokerError::invalid(m),
        GroupError::Full { .. } => BrokerError::invalid(e.to_string()),
        GroupError::UnknownMember { .. } | GroupError::FencedEpoch { .. } => {
            BrokerError::fenced(e.to_string())
        }
        GroupError::NotAssigned { .. } => BrokerError::fenced(e.to_string()),
        GroupError::Active { .. } => BrokerError::precondition(e.to_string()),
    }
}

impl Coordinator {
    pub fn new(
        view: Arc<ClusterView>,
        catalog: Catalog,
        topics: Arc<TopicTable>,
        index: Arc<LogIndex>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
        Arc::new(Self {
            view,
            catalog,
            topics,
            index,
            clock,
            slots: (0..GROUP_SLOTS).map(|_| Mutex::new(None)).collect(),
            commits: tx,
            commit_rx: std::sync::Mutex::new(Some(rx)),
        })
    }

    /// Runs the committer and the session expiry until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let rx = self
            .commit_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(rx) = rx else { return };
        let committer = tokio::spawn(self.clone().commit_loop(rx, cancel.clone()));
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    self.expire_sessions().await;
                    ticks += 1;
                    if ticks.is_multiple_of(DELETED_TOPICS_EVERY) {
                        self.forget_deleted_topics().await;
                    }
                }
            }
        }
        let _ = committer.await;
    }

    /// Puts (or deletes) one fenced transaction may hold: the store's limit less the fence.
    fn puts_per_txn(&self) -> usize {
        self.catalog
            .store()
            .limits()
            .max_txn_ops
            .saturating_sub(1)
            .max(1)
    }

    /// Resolves a topic name to (id, partitions) for the state machine.
    fn resolver(&self) -> impl Fn(&str) -> Option<(u64, u32)> + '_ {
        |name| self.topics.get(name).map(|t| (t.id, t.record.partitions))
    }

    /// The slot's lock, with the slot loaded if this broker owns it; otherwise a not-owner
    /// error naming the coordinator.
    async fn owned_slot(
        &self,
        group: &str,
    ) -> Result<(u32, tokio::sync::MutexGuard<'_, Option<SlotState>>), BrokerError> {
        validate_group_id(group).map_err(group_error)?;
        let slot = slot_of(group);
        let epoch = match self.view.slot_owner(slot) {
            Owner::Me(epoch) => epoch,
            Owner::Other { broker_id, address } => {
                return Err(BrokerError::not_owner(
                    format!("group '{group}' is coordinated by broker {broker_id}"),
                    Some(address),
                ));
            }
            Owner::Unowned => {
                return Err(BrokerError::unavailable(format!(
                    "group '{group}' has no coordinator yet; retry shortly"
                )));
            }
        };
        let mut guard = self.slots[slot as usize].lock().await;
        if guard.as_ref().is_none_or(|s| s.epoch != epoch) {
            let loaded = self.catalog.load_group_slot(slot).await?;
            let now = self.clock.monotonic_ms();
            let mut groups = HashMap::new();
            for kv in loaded {
                let mut group = match kv.record.as_deref().map(serde_json::from_slice::<Group>) {
                    Some(Ok(g)) => g,
                    Some(Err(e)) => {
                        warn!(group = %kv.group, error = %e, "unreadable group record; starting the group empty");
                        Group::new(&kv.group)
                    }
                    None => Group::new(&kv.group),
                };
                group.restart_sessions(now);
                groups.insert(
                    kv.group,
                    Loaded {
                        group,
                        revision: kv.mod_revision,
                        offsets: kv.offsets.into_iter().collect(),
                    },
                );
            }
            info!(slot, groups = groups.len(), "coordinating a group slot");
            *guard = Some(SlotState { epoch, groups });
        }
        Ok((slot, guard))
    }

    fn fence(&self, slot: u32) -> Result<WriterFence, BrokerError> {
        self.view.coordinator_fence(slot).ok_or_else(|| {
            BrokerError::unavailable("this broker is no longer the group's coordinator; retry")
        })
    }

    /// Persists `group` if it changed; on a refused compare drops the slot (it is stale).
    async fn persist(
        &self,
        slot: u32,
        guard: &mut Option<SlotState>,
        loaded: Loaded,
    ) -> Result<(), BrokerError> {
        let fence = self.fence(slot)?;
        let record = serde_json::to_vec(&loaded.group)
            .map_err(|e| BrokerError::internal(format!("encoding group record: {e}")))?;
        let id = loaded.group.id.clone();
        match self
            .catalog
            .save_group(&fence, slot, &id, record, loaded.revision)
            .await?
        {
            Some(revision) => {
                let state = guard.as_mut().expect("loaded");
                state.groups.insert(id, Loaded { revision, ..loaded });
                Ok(())
            }
            None => {
                *guard = None;
                Err(BrokerError::unavailable(
                    "the group's coordinator changed while writing; retry",
                ))
            }
        }
    }

    /// A member's heartbeat (join, keep alive, leave).
    pub async fn heartbeat(
        &self,
        group_id: &str,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAnswer, BrokerError> {
        let (slot, mut guard) = self.owned_slot(group_id).await?;
        let state = guard.as_mut().expect("loaded");
        let mut loaded = state.groups.get(group_id).cloned().unwrap_or(Loaded {
            group: Group::new(group_id),
            revision: 0,
            offsets: BTreeMap::new(),
        });
        let now = self.clock.monotonic_ms();
        let resolve = self.resolver();
        let (answer, changed) = loaded
            .group
            .heartbeat(hb, now, &resolve, || {
                format!("{:016x}", rand::random::<u64>())
            })
            .map_err(group_error)?;
        match changed {
            Changed::Persist => self.persist(slot, &mut guard, loaded).await?,
            Changed::Nothing => {
                state.groups.insert(group_id.to_string(), loaded);
            }
        }
        Ok(answer)
    }

    /// Commits offsets for a member (`member_id` empty: a standalone commit, only while the
    /// group has no members). Answers once the commit is durable.
    pub async fn commit(
        &self,
        group_id: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: &[PartitionOffset],
    ) -> Result<(), BrokerError> {
        if offsets.len() > MAX_COMMIT_PARTITIONS {
            return Err(BrokerError::invalid(format!(
                "a commit may name at most {MAX_COMMIT_PARTITIONS} partitions, not {}",
                offsets.len()
            )));
        }
        let mut resolved = Vec::with_capacity(offsets.len());
        let mut seen = BTreeSet::new();
        for o in offsets {
            let topic = self.topics.require(&o.topic)?;
            if o.partition >= topic.record.partitions {
                return Err(BrokerError::not_found(format!(
                    "topic '{}' has no partition {}",
                    o.topic, o.partition
                )));
            }
            if o.offset < 0 {
                return Err(BrokerError::invalid(format!(
                    "offset {} for {} partition {} is negative",
                    o.offset, o.topic, o.partition
                )));
            }
            if o.metadata.len() > MAX_OFFSET_METADATA_BYTES {
                return Err(BrokerError::invalid(format!(
                    "offset metadata is {} bytes; at most {MAX_OFFSET_METADATA_BYTES} are kept",
                    o.metadata.len()
                )));
            }
            if !seen.insert((topic.id, o.partition)) {
                return Err(BrokerError::invalid(format!(
                    "{} partition {} is named twice in one commit",
                    o.topic, o.partition
                )));
            }
            resolved.push((o.topic.as_str(), (topic.id, o.partition), o));
        }
        let (slot, guard) = self.owned_slot(group_id).await?;
        let state = guard.as_ref().expect("loaded");
        match state.groups.get(group_id) {
            Some(l) => l.group.check_commit(
                member_id,
                member_epoch,
                resolved.iter().map(|(t, p, _)| (*t, *p)),
            ),
            None => Group::new(group_id).check_commit(
                member_id,
                member_epoch,
                resolved.iter().map(|(t, p, _)| (*t, *p)),
            ),
        }
        .map_err(group_error)?;
        let now = self.clock.now_ms();
        let (reply, answer) = oneshot::channel();
        let job = CommitJob {
            slot,
            group: group_id.to_string(),
            offsets: resolved
                .iter()
                .map(|(_, p, o)| {
                    (
                        *p,
                        OffsetRecord {
                            offset: o.offset,
                            leader_epoch: o.leader_epoch,
                            metadata: o.metadata.clone(),
                            committed_at_ms: now,
                        },
                    )
                })
                .collect(),
            reply,
        };
        // Queued while the slot is held, so commits of one group reach the committer in the
        // order their checks passed.
        self.commits.try_send(job).map_err(|_| {
            BrokerError::busy(
                "too many offset commits are waiting to be written; retry",
                50,
            )
        })?;
        drop(guard);
        answer.await.unwrap_or_else(|_| {
            Err(BrokerError::unavailable(
                "the coordinator stopped before the commit was written; retry",
            ))
        })
    }

    /// The committer: one metadata transaction per round for every commit waiting.
    async fn commit_loop(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<CommitJob>,
        cancel: CancellationToken,
    ) {
        let max_ops = self.puts_per_txn();
        let mut last_round = tokio::time::Instant::now() - COMMIT_WINDOW;
        loop {
            let first = tokio::select! {
                () = cancel.cancelled() => {
                    // Stopping: nothing new is accepted; what was accepted is written.
                    rx.close();
                    match rx.recv().await {
                        Some(j) => j,
                        None => return,
                    }
                }
                job = rx.recv() => match job { Some(j) => j, None => return },
            };
            // One round per window at most: the commits arriving meanwhile join it, so the
            // metadata store sees at most 1 / COMMIT_WINDOW transactions per second from this
            // coordinator whatever the commit rate (chunks aside). Not while stopping.
            if !cancel.is_cancelled() {
                tokio::time::sleep_until(last_round + COMMIT_WINDOW).await;
            }
            last_round = tokio::time::Instant::now();
            let mut jobs = vec![first];
            let mut keys: BTreeSet<(u32, String, GroupPartition)> = BTreeSet::new();
            for (p, _) in &jobs[0].offsets {
                keys.insert((jobs[0].slot, jobs[0].group.clone(), *p));
            }
            // Whatever else is waiting, while it fits one transaction.
            while let Ok(job) = rx.try_recv() {
                let new_keys = job
                    .offsets
                    .iter()
                    .filter(|(p, _)| !keys.contains(&(job.slot, job.group.clone(), *p)))
                    .count();
                if keys.len() + new_keys > max_ops {
                    self.write_round(std::mem::take(&mut jobs)).await;
                    keys.clear();
                }
                for (p, _) in &job.offsets {
                    keys.insert((job.slot, job.group.clone(), *p));
                }
                jobs.push(job);
            }
            self.write_round(jobs).await;
        }
    }

    /// Writes one round of commits (one transaction, or a few when one commit alone is larger
    /// than a transaction) and answers them.
    async fn write_round(&self, jobs: Vec<CommitJob>) {
        if jobs.is_empty() {
            return;
        }
        let max_ops = self.puts_per_txn();
        // The latest offset per (slot, group, partition), in arrival order.
        let mut latest: BTreeMap<(u32, String, GroupPartition), OffsetRecord> = BTreeMap::new();
        for job in &jobs {
            for (p, record) in &job.offsets {
                latest.insert((job.slot, job.group.clone(), *p), record.clone());
            }
        }
        let slots: BTreeSet<u32> = jobs.iter().map(|j| j.slot).collect();
        let fences: Vec<Option<WriterFence>> = slots
            .iter()
            .map(|s| self.view.coordinator_fence(*s))
            .collect();
        let result = match fences.iter().flatten().next() {
            Some(fence) if fences.iter().all(Option::is_some) => {
                let commits: Vec<OffsetCommit> = latest
                    .iter()
                    .map(
                        |((slot, group, (topic_id, partition)), record)| OffsetCommit {
                            slot: *slot,
                            group: group.clone(),
                            topic_id: *topic_id,
                            partition: *partition,
                            record: record.clone(),
                        },
                    )
                    .collect();
                let mut outcome = Ok(());
                for chunk in commits.chunks(max_ops) {
                    match self.catalog.commit_offsets(fence, chunk).await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            outcome = Err(BrokerError::unavailable(
                                "the group's coordinator changed while committing; retry",
                            ));
                            break;
                        }
                        Err(e) => {
                            outcome = Err(BrokerError::from(e));
                            break;
                        }
                    }
                }
                outcome
            }
            _ => Err(BrokerError::unavailable(
                "this broker is no longer the group's coordinator; retry",
            )),
        };
        match &result {
            Ok(()) => {
                // Visible to fetches only once durable, in the order written.
                for (slot, jobs_of_slot) in group_by_slot(&jobs) {
                    let mut guard = self.slots[slot as usize].lock().await;
                    if let Some(state) = guard.as_mut() {
                        for job in jobs_of_slot {
                            let loaded =
                                state
                                    .groups
                                    .entry(job.group.clone())
                                    .or_insert_with(|| Loaded {
                                        group: Group::new(&job.group),
                                        revision: 0,
                                        offsets: BTreeMap::new(),
                                    });
                            for (p, record) in &job.offsets {
                                loaded.offsets.insert(*p, record.clone());
                            }
                        }
                    }
                }
                debug!(
                    commits = jobs.len(),
                    partitions = latest.len(),
                    "offsets committed"
                );
            }
            Err(e) => {
                debug!(error = %e, "offset commit round failed");
                // The slots' cached state may be behind whoever writes now.
                for slot in slots {
                    *self.slots[slot as usize].lock().await = None;
                }
            }
        }
        for job in jobs {
            let _ = job.reply.send(result.clone());
        }
    }

    /// The committed offsets of a group (all, or those of `partitions`).
    pub async fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, u32)]>,
    ) -> Result<Vec<PartitionOffset>, BrokerError> {
        let (_, guard) = self.owned_slot(group_id).await?;
        let state = guard.as_ref().expect("loaded");
        let Some(loaded) = state.groups.get(group_id) else {
            return Ok(Vec::new());
        };
        let names = self.topic_names();
        let mut out = Vec::new();
        for ((topic_id, partition), record) in &loaded.offsets {
            let Some(topic) = names.get(topic_id) else {
                continue;
            };
            if let Some(wanted) = partitions
                && !wanted.iter().any(|(t, p)| t == topic && p == partition)
            {
                continue;
            }
            out.push(PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: record.offset,
                leader_epoch: record.leader_epoch,
                metadata: record.metadata.clone(),
            });
        }
        Ok(out)
    }

    fn topic_names(&self) -> HashMap<u64, String> {
        self.topics
            .all()
            .into_iter()
            .map(|t| (t.id, t.record.name.clone()))
            .collect()
    }

    /// A group's members, assignment and per-partition lag.
    pub async fn describe(&self, group_id: &str) -> Result<GroupDescription, BrokerError> {
        let (_, guard) = self.owned_slot(group_id).await?;
        let state = guard.as_ref().expect("loaded");
        let Some(loaded) = state.groups.get(group_id) else {
            return Err(BrokerError::not_found(format!(
                "group '{group_id}' does not exist"
            )));
        };
        let out = self.lags(loaded, &self.topic_names());
        Ok(GroupDescription {
            group: loaded.group.clone(),
            partitions: out,
        })
    }

    /// (group, topic, partition, lag) of every partition of every group loaded here, for the
    /// `silt_group_lag_records` gauge. Slots busy at this moment are skipped (the next scrape
    /// sees them); nothing waits.
    pub fn lag_snapshot(&self) -> Vec<(String, String, u32, i64)> {
        let names = self.topic_names();
        let mut out = Vec::new();
        for slot in &self.slots {
            let Ok(guard) = slot.try_lock() else { continue };
            let Some(state) = guard.as_ref() else {
                continue;
            };
            for (id, loaded) in &state.groups {
                for p in self.lags(loaded, &names) {
                    out.push((id.clone(), p.topic, p.partition, p.lag));
                }
            }
        }
        out.sort();
        out
    }

    /// Every partition of a group (subscribed now, or with a committed offset) with its lag.
    fn lags(&self, loaded: &Loaded, names: &HashMap<u64, String>) -> Vec<PartitionLag> {
        let mut partitions: BTreeSet<GroupPartition> = loaded.offsets.keys().copied().collect();
        for (name, (id, count)) in &loaded.group.resolved {
            if self.topics.get(name).is_some_and(|t| t.id == *id) {
                partitions.extend((0..*count).map(|p| (*id, p)));
            }
        }
        let mut out = Vec::new();
        for p in partitions {
            let Some(topic) = names.get(&p.0) else {
                continue;
            };
            let offsets = self.index.partition(p.0, p.1).offsets();
            let committed = loaded.offsets.get(&p).map_or(-1, |r| r.offset);
            let from = if committed >= 0 {
                committed
            } else {
                offsets.log_start
            };
            out.push(PartitionLag {
                topic: topic.clone(),
                partition: p.1,
                committed,
                high_watermark: offsets.high_watermark,
                lag: (offsets.high_watermark - from).max(0),
                member: loaded.group.holder(&p).map(|m| m.id.clone()),
            });
        }
        out
    }

    /// The groups of the slots this broker coordinates.
    pub async fn list_local(&self) -> Vec<String> {
        let mut out = Vec::new();
        for slot in 0..GROUP_SLOTS {
            if !matches!(self.view.slot_owner(slot), Owner::Me(_)) {
                continue;
            }
            // A slot not used since this broker took it is read from metadata.
            let guard = self.slots[slot as usize].lock().await;
            if let Some(state) = guard.as_ref() {
                out.extend(state.groups.keys().cloned());
            } else {
                drop(guard);
                if let Ok(groups) = self.catalog.load_group_slot(slot).await {
                    out.extend(groups.into_iter().map(|g| g.group));
                }
            }
        }
        out.sort();
        out
    }

    /// Deletes a group with no active members, with its committed offsets.
    pub async fn delete(&self, group_id: &str) -> Result<(), BrokerError> {
        let (slot, mut guard) = self.owned_slot(group_id).await?;
        let state = guard.as_ref().expect("loaded");
        let Some(loaded) = state.groups.get(group_id) else {
            return Err(BrokerError::not_found(format!(
                "group '{group_id}' does not exist"
            )));
        };
        if !loaded.group.is_empty() {
            return Err(BrokerError::precondition(format!(
                "group '{group_id}' has active members ({}); stop them first",
                loaded.group.member_list()
            )));
        }
        let fence = self.fence(slot)?;
        match self
            .catalog
            .delete_group(&fence, slot, group_id, loaded.revision)
            .await?
        {
            Some(_) => {
                guard.as_mut().expect("loaded").groups.remove(group_id);
                Ok(())
            }
            None => {
                *guard = None;
                Err(BrokerError::unavailable(
                    "the group's coordinator changed while deleting; retry",
                ))
            }
        }
    }

    /// Removes the committed offsets of topics that were deleted (a topic id the view has seen
    /// pass but no longer lists: a re-created topic has a new id), so a group's keys stay
    /// bounded by the partitions that exist. Fenced like every group write.
    pub(crate) async fn forget_deleted_topics(&self) -> usize {
        let applied = self.view.applied();
        let max_ops = self.puts_per_txn();
        let mut removed = 0;
        for slot in 0..GROUP_SLOTS {
            let mut guard = self.slots[slot as usize].lock().await;
            let Some(state) = guard.as_ref() else {
                continue;
            };
            let dead: Vec<(u32, String, u64, u32)> = state
                .groups
                .iter()
                .flat_map(|(id, l)| l.offsets.keys().map(move |p| (id, p)))
                .filter(|(_, (topic_id, _))| {
                    !self.topics.is_live(*topic_id) && (*topic_id as i64) <= applied
                })
                .map(|(id, (topic_id, partition))| (slot, id.clone(), *topic_id, *partition))
                .collect();
            if dead.is_empty() {
                continue;
            }
            let Some(fence) = self.view.coordinator_fence(slot) else {
                continue;
            };
            for chunk in dead.chunks(max_ops) {
                match self.catalog.delete_offsets(&fence, chunk).await {
                    Ok(Some(_)) => {
                        let state = guard.as_mut().expect("loaded");
                        for (_, group, topic_id, partition) in chunk {
                            if let Some(l) = state.groups.get_mut(group) {
                                l.offsets.remove(&(*topic_id, *partition));
                            }
                        }
                        removed += chunk.len();
                    }
                    Ok(None) => {
                        *guard = None;
                        break;
                    }
                    Err(e) => {
                        debug!(slot, error = %e, "removing offsets of deleted topics failed; retrying later");
                        break;
                    }
                }
            }
        }
        if removed > 0 {
            info!(
                offsets = removed,
                "removed committed offsets of deleted topics"
            );
        }
        removed
    }

    /// Ends expired sessions in every loaded slot and persists the groups that changed.
    async fn expire_sessions(&self) {
        let now = self.clock.monotonic_ms();
        for slot in 0..GROUP_SLOTS {
            let mut guard = self.slots[slot as usize].lock().await;
            // A slot that moved away is forgotten: its new owner serves it.
            let owned = matches!(self.view.slot_owner(slot), Owner::Me(e) if guard.as_ref().is_some_and(|s| s.epoch == e));
            if !owned {
                *guard = None;
                continue;
            }
            let due: Vec<String> = guard
                .as_ref()
                .expect("loaded")
                .groups
                .values()
                .filter(|l| l.group.next_deadline().is_some_and(|d| d <= now))
                .map(|l| l.group.id.clone())
                .collect();
            for id in due {
                let Some(mut loaded) = guard.as_ref().and_then(|s| s.groups.get(&id).cloned())
                else {
                    continue;
                };
                let resolve = self.resolver();
                let expired = loaded.group.expire(now, &resolve);
                if expired.is_empty() {
                    continue;
                }
                info!(group = %id, members = ?expired, "member sessions expired");
                if let Err(e) = self.persist(slot, &mut guard, loaded).await {
                    debug!(group = %id, error = %e, "persisting expired members failed");
                    break;
                }
            }
        }
    }
}

/// Jobs grouped by slot, in arrival order within each slot.
fn group_by_slot(jobs: &[CommitJob]) -> BTreeMap<u32, Vec<&CommitJob>> {
    let mut out: BTreeMap<u32, Vec<&CommitJob>> = BTreeMap::new();
    for job in jobs {
        out.entry(job.slot).or_default().push(job);
    }
    out
}

#[cfg(test)]
mod tests;
