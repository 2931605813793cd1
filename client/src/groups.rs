//! Consumer groups: calls routed to a group's coordinator, and the [`GroupConsumer`].
//!
//! Every group call goes to the broker coordinating the group: found with `FindCoordinator`
//! (any broker answers), remembered, and replaced when a broker answers UNAVAILABLE with the
//! coordinator's address in its `silt-owner` trailer (the coordinator moved) or cannot be
//! reached. Such calls are retried with backoff for about a lease TTL, the time a new
//! coordinator takes over a dead one's groups.
//!
//! A [`GroupConsumer`] is a group member. A background task heartbeats (every interval the
//! coordinator gives, default 3 s) with the partitions the consumer reads *now*, and keeps the
//! latest assignment; [`GroupConsumer::poll`] applies it: for a partition taken away it
//! commits what it returned and stops reading it, which the next heartbeat reports as released
//! (only then does the coordinator give it to another member); for a new partition it starts
//! reading at the group's committed offset, or at [`GroupConsumerConfig::start`] when there is
//! none. Offsets of the records `poll` returned are committed every
//! [`GroupConsumerConfig::auto_commit`] (and on revocation and close): at-least-once. A consumer
//! whose heartbeats fail for a whole session timeout stops reading everything (its partitions
//! may already be someone else's) and joins again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use silt_api::v1::groups_client::GroupsClient;
use silt_api::v1::reset_offsets_request::To;
use silt_api::v1::{
    CommitOffsetsRequest, DeleteGroupRequest, DescribeGroupRequest, DescribeGroupResponse,
    FetchOffsetsRequest, FindCoordinatorRequest, GroupHeartbeatRequest, GroupHeartbeatResponse,
    ListGroupsRequest, PartitionOffset, ResetOffsetsRequest, ResetOffsetsResponse, TopicPartitions,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

use crate::client::Client;
use crate::error::ClientError;
use crate::reader::{ConsumedRecord, PartitionReader, StartSpec};

/// How long a group call keeps retrying while the coordinator moves or is unreachable.
const COORDINATOR_PATIENCE: Duration = Duration::from_secs(20);
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// The commit timer without auto-commit: a day, re-armed at every commit.
const NO_AUTO_COMMIT: Duration = Duration::from_secs(86_400);

/// A topic and partition.
pub type TopicPartition = (String, u32);

fn to_wire(set: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in set {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

fn from_wire(list: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    list.iter()
        .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p)))
        .collect()
}

/// Where a group's offsets are moved by [`Client::reset_group_offsets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetSpec {
    Earliest,
    Latest,
    Offset(i64),
    /// The first record at or after this time (ms since the Unix epoch).
    Timestamp(i64),
    ShiftBy(i64),
}

impl Client {
    /// Runs a group call at the group's coordinator, following it when it moves.
    pub(crate) async fn group_call<T, F, Fut>(
        &self,
        group: &str,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(GroupsClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + COORDINATOR_PATIENCE;
        let mut pause = RETRY_MIN;
        let mut url = self.inner_coordinator(group);
        loop {
            let target = match &url {
                Some(u) => Ok(u.clone()),
                None => self.find_coordinator(group).await,
            };
            let result = match target {
                Ok(u) => {
                    url = Some(u.clone());
                    match self.channel(&u) {
                        Ok(ch) => call(GroupsClient::new(ch)).await.map_err(ClientError::from),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let error = match result {
                Ok(v) => {
                    if let Some(u) = &url {
                        self.remember_coordinator(group, u);
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            let retriable = error.is_transport() || error.code() == Code::Unavailable;
            if !retriable || Instant::now() >= deadline {
                return Err(error);
            }
            url = match error.owner_hint() {
                Some(owner) if !owner.is_empty() => Some(crate::brokers::normalize_url(owner)),
                _ => None,
            };
            self.forget_coordinator(group);
            tokio::time::sleep(error.retry_after().unwrap_or(pause).min(RETRY_MAX)).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// The URL of the broker coordinating `group` (any broker answers).
    pub async fn find_coordinator(&self, group: &str) -> Result<String, ClientError> {
        let answer = self
            .with_failover(|channel| {
                let request = FindCoordinatorRequest {
                    group: group.to_string(),
                };
                async move {
                    Ok(GroupsClient::new(channel)
                        .find_coordinator(request)
                        .await?
                        .into_inner())
                }
            })
            .await?;
        let url = crate::brokers::normalize_url(&answer.address);
        self.learn_brokers([answer.address.as_str()]);
        Ok(url)
    }

    /// Every group of the cluster.
    pub async fn list_groups(&self) -> Result<Vec<String>, ClientError> {
        self.with_failover(|channel| async move {
            Ok(GroupsClient::new(channel)
                .list_groups(ListGroupsRequest {})
                .await?
                .into_inner()
                .groups)
        })
        .await
    }

    /// A group's members, assignments and lag.
    pub async fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse, ClientError> {
        self.group_call(group, |mut c| {
            let request = DescribeGroupRequest {
                group: group.to_string(),
            };
            async move { Ok(c.describe_group(request).await?.into_inner()) }
        })
        .await
    }

    /// Deletes a group without active members.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        self.group_call(group, |mut c| {
            let request = DeleteGroupRequest {
                group: group.to_string(),
            };
            async move { c.delete_group(request).await.map(drop) }
        })
        .await
    }

    /// Moves a group's committed offsets of `topic` (the group must have no active members).
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetSpec,
        dry_run: bool,
    ) -> Result<ResetOffsetsResponse, ClientError> {
        let to = match to {
            ResetSpec::Earliest => To::Earliest(true),
            ResetSpec::Latest => To::Latest(true),
            ResetSpec::Offset(o) => To::Offset(o),
            ResetSpec::Timestamp(t) => To::TimestampMs(t),
            ResetSpec::ShiftBy(n) => To::ShiftBy(n),
        };
        self.group_call(group, |mut c| {
            let request = ResetOffsetsRequest {
                group: group.to_string(),
                topic: topic.to_string(),
                to: Some(to),
                dry_run,
            };
            async move { Ok(c.reset_offsets(request).await?.into_inner()) }
        })
        .await
    }

    /// A group's committed offsets (all of them when `partitions` is empty).
    pub async fn fetch_group_offsets(
        &self,
        group: &str,
        partitions: &BTreeSet<TopicPartition>,
    ) -> Result<Vec<PartitionOffset>, ClientError> {
        let wanted = to_wire(partitions);
        self.group_call(group, |mut c| {
            let request = FetchOffsetsRequest {
                group: group.to_string(),
                partitions: wanted.clone(),
            };
            async move { Ok(c.fetch_offsets(request).await?.into_inner().offsets) }
        })
        .await
    }

    /// Commits offsets for a group: as `member_id` at `member_epoch`, or (empty member id) a
    /// standalone commit for a group without active members.
    pub async fn commit_group_offsets(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: Vec<PartitionOffset>,
    ) -> Result<(), ClientError> {
        self.group_call(group, |mut c| {
            let request = CommitOffsetsRequest {
                group: group.to_string(),
                member_id: member_id.to_string(),
                member_epoch,
                offsets: offsets.clone(),
            };
            async move { c.commit_offsets(request).await.map(drop) }
        })
        .await
    }
}

/// How a [`GroupConsumer`] joins and reads.
#[derive(Debug, Clone)]
pub struct GroupConsumerConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// Shown in `silt group describe`.
    pub client_id: String,
    /// Static membership: rejoining with the same id keeps the partitions (no rebalance).
    pub instance_id: Option<String>,
    /// How long the coordinator waits for a heartbeat before it fences this member (6–60 s).
    pub session_timeout: Duration,
    /// Where to start reading a partition the group has no committed offset for.
    pub start: StartSpec,
    /// Commit the offsets of returned records this often; `None`: only on revocation, on
    /// [`GroupConsumer::commit`] and on close.
    pub auto_commit: Option<Duration>,
    /// The longest one fetch waits for records.
    pub max_wait: Duration,
}

impl GroupConsumerConfig {
    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self {
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            client_id: "silt-client".into(),
            instance_id: None,
            session_timeout: Duration::from_secs(10),
            start: StartSpec::Earliest,
            auto_commit: Some(Duration::from_secs(5)),
            max_wait: Duration::from_millis(250),
        }
    }
}

/// A change of a consumer's partitions, as [`GroupConsumer::poll`] applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalance {
    /// Taken away (after their offsets were committed).
    Revoked(BTreeSet<TopicPartition>),
    /// Given, with the offset reading starts at.
    Assigned(BTreeMap<TopicPartition, i64>),
    /// Everything dropped without a commit: the session was lost (fenced or unreachable).
    Lost(BTreeSet<TopicPartition>),
}

/// A record with its topic and partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub topic: String,
    pub partition: u32,
    pub record: ConsumedRecord,
}

/// What the heartbeat task and the consumer share.
#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    epoch: i32,
    /// The latest assignment from the coordinator (`None` before the first answer).
    assigned: Option<BTreeSet<TopicPartition>>,
    /// What the consumer reads now (reported in every heartbeat).
    owned: BTreeSet<TopicPartition>,
    /// The session is lost: drop everything and join again.
    lost: bool,
    /// An error that will not go away (unknown topic, bad settings).
    fatal: Option<ClientError>,
    heartbeat_interval: Duration,
    leaving: bool,
}

/// A consumer-group member.
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    config: GroupConsumerConfig,
    shared: Arc<Mutex<Membership>>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    readers: BTreeMap<TopicPartition, PartitionReader>,
    /// The next offset to commit per partition: one past the last record returned.
    positions: BTreeMap<TopicPartition, i64>,
    committed: BTreeMap<TopicPartition, i64>,
    next_commit: Instant,
    cursor: usize,
    events: Vec<Rebalance>,
    /// An assignment change was applied but not yet reported to the coordinator: it is, at the
    /// next `poll`, once the caller has had the change's events.
    report_pending: bool,
}

impl GroupConsumer {
    /// Joins the group (the first assignment arrives with the first heartbeat answer).
    pub async fn join(client: &Client, config: GroupConsumerConfig) -> Result<Self, ClientError> {
        if config.topics.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a group consumer needs at least one topic".into(),
            ));
        }
        let shared = Arc::new(Mutex::new(Membership {
            heartbeat_interval: Duration::from_secs(3),
            ..Membership::default()
        }));
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(heartbeat_loop(
            client.clone(),
            config.clone(),
            shared.clone(),
            wake.clone(),
        ));
        let next_commit = Instant::now() + config.auto_commit.unwrap_or(NO_AUTO_COMMIT);
        Ok(Self {
            client: client.clone(),
            config,
            shared,
            wake,
            task,
            readers: BTreeMap::new(),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            next_commit,
            cursor: 0,
            events: Vec::new(),
            report_pending: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The member id (empty until joined) and epoch.
    pub fn member(&self) -> (String, i32) {
        let m = self.lock();
        (m.member_id.clone(), m.epoch)
    }

    /// The partitions this consumer reads now.
    pub fn assignment(&self) -> BTreeSet<TopicPartition> {
        self.readers.keys().cloned().collect()
    }

    /// The high watermark each assigned partition's reader last saw.
    pub fn high_watermarks(&self) -> BTreeMap<TopicPartition, (i64, i64)> {
        self.readers
            .iter()
            .map(|(tp, r)| (tp.clone(), (r.next_offset(), r.high_watermark())))
            .collect()
    }

    /// Rebalances applied since the last call.
    pub fn take_rebalances(&mut self) -> Vec<Rebalance> {
        std::mem::take(&mut self.events)
    }

    /// Applies assignment changes, commits when due, and returns the next records (possibly
    /// none after about `max_wait`).
    pub async fn poll(&mut self) -> Result<Vec<GroupRecord>, ClientError> {
        if std::mem::take(&mut self.report_pending) {
            // The caller has seen the last change (its `Revoked` event came back with the poll
            // that made it): only now may the coordinator hand the partitions to others.
            self.lock().owned = self.readers.keys().cloned().collect();
            self.wake.notify_one();
        }
        if self.apply_assignment().await? {
            // Return at once: the caller learns of the change before any wait for records,
            // and before the coordinator does.
            return Ok(Vec::new());
        }
        if Instant::now() >= self.next_commit {
            match self.commit().await {
                // Fenced: the partitions are someone else's now; drop them (the next
                // assignment is applied on the next poll) instead of failing the caller.
                Err(e) if e.code() == Code::Aborted => {}
                other => other?,
            }
        }
        if self.readers.is_empty() {
            tokio::time::sleep(self.config.max_wait.min(Duration::from_millis(100))).await;
            return Ok(Vec::new());
        }
        // One pass without waiting; then one partition waits (rotating), so records of every
        // partition come through.
        let keys: Vec<TopicPartition> = self.readers.keys().cloned().collect();
        let n = keys.len();
        for pass in 0..2 {
            for i in 0..n {
                let tp = &keys[(self.cursor + i) % n];
                let wait = if pass == 0 {
                    Duration::ZERO
                } else {
                    self.config.max_wait
                };
                let reader = self.readers.get_mut(tp).expect("reader");
                let records = match reader.next_batch(wait).await {
                    Ok(r) => r,
                    Err(e) if e.code() == Code::OutOfRange => {
                        // Below the log start (retention): continue from it.
                        if let Some(start) = e.log_start_offset() {
                            reader.seek(start);
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if !records.is_empty() {
                    self.cursor = (self.cursor + i + 1) % n;
                    let last = records.last().map_or(0, |r| r.offset);
                    self.positions.insert(tp.clone(), last + 1);
                    return Ok(records
                        .into_iter()
                        .map(|record| GroupRecord {
                            topic: tp.0.clone(),
                            partition: tp.1,
                            record,
                        })
                        .collect());
                }
                if pass == 1 {
                    self.cursor = (self.cursor + 1) % n;
                    return Ok(Vec::new());
                }
            }
        }
        Ok(Vec::new())
    }

    /// Commits the offsets of every record returned so far (those not committed yet).
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        self.next_commit = Instant::now() + self.config.auto_commit.unwrap_or(NO_AUTO_COMMIT);
        let due: BTreeMap<TopicPartition, i64> = self
            .positions
            .iter()
            .filter(|(tp, o)| self.committed.get(*tp) != Some(o))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        self.commit_positions(due).await
    }

    async fn commit_positions(
        &mut self,
        due: BTreeMap<TopicPartition, i64>,
    ) -> Result<(), ClientError> {
        if due.is_empty() {
            return Ok(());
        }
        let (member, epoch) = self.member();
        if member.is_empty() || epoch <= 0 {
            // Not a member now (fenced, rejoining): a commit without a member id would be a
            // standalone one, which the coordinator refuses while the group has members. The
            // partitions' new owners read from the last commit (at-least-once).
            return Err(ClientError::Status(tonic::Status::aborted(format!(
                "not committed: this consumer is not a member of group '{}' now (its session was lost; it is rejoining)",
                self.config.group
            ))));
        }
        let offsets = due
            .iter()
            .map(|((topic, partition), offset)| PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                leader_epoch: -1,
                metadata: String::new(),
            })
            .collect();
        match self
            .client
            .commit_group_offsets(&self.config.group, &member, epoch, offsets)
            .await
        {
            Ok(()) => {
                self.committed.extend(due);
                Ok(())
            }
            Err(e) => {
                if e.code() == Code::Aborted {
                    // This member was fenced (its session ended while it was away): what it
                    // read since its last commit will be read again by the partitions' new
                    // owners. It stops reading everything and joins again.
                    tracing::warn!(group = %self.config.group, error = %e, "commit refused: fenced; rejoining");
                    let mut m = self.lock();
                    // Unless the heartbeat task already joined again as a new member.
                    if m.member_id == member {
                        m.member_id.clear();
                        m.epoch = 0;
                        m.assigned = None;
                        m.lost = true;
                    }
                }
                Err(e)
            }
        }
    }

    /// Applies the latest assignment: revoke (commit, stop reading), then assign. Returns whether
    /// the partitions read changed; the change is reported to the coordinator at the next poll.
    async fn apply_assignment(&mut self) -> Result<bool, ClientError> {
        let (target, lost, fatal) = {
            let mut m = self.lock();
            (
                m.assigned.clone(),
                std::mem::take(&mut m.lost),
                m.fatal.take(),
            )
        };
        if let Some(e) = fatal {
            return Err(e);
        }
        if lost {
            let dropped: BTreeSet<TopicPartition> = self.readers.keys().cloned().collect();
            self.readers.clear();
            self.positions.clear();
            self.committed.clear();
            self.lock().owned.clear();
            if !dropped.is_empty() {
                tracing::warn!(group = %self.config.group, partitions = dropped.len(), "group session lost; rejoining");
                self.events.push(Rebalance::Lost(dropped));
            }
            self.wake.notify_one();
            return Ok(true);
        }
        let Some(target) = target else {
            return Ok(false);
        };
        let owned: BTreeSet<TopicPartition> = self.readers.keys().cloned().collect();
        let revoked: BTreeSet<TopicPartition> = owned.difference(&target).cloned().collect();
        let added: BTreeSet<TopicPartition> = target.difference(&owned).cloned().collect();
        if revoked.is_empty() && added.is_empty() {
            return Ok(false);
        }
        if !revoked.is_empty() {
            let due: BTreeMap<TopicPartition, i64> = revoked
                .iter()
                .filter_map(|tp| {
                    let o = *self.positions.get(tp)?;
                    (self.committed.get(tp) != Some(&o)).then(|| (tp.clone(), o))
                })
                .collect();
            if let Err(e) = self.commit_positions(due).await {
                // Not committed: the next owner re-reads from the last commit (at-least-once).
                tracing::debug!(error = %e, "commit on revocation failed");
            }
            for tp in &revoked {
                self.readers.remove(tp);
                self.positions.remove(tp);
                self.committed.remove(tp);
            }
            self.events.push(Rebalance::Revoked(revoked));
        }
        if !added.is_empty() {
            let committed = self
                .client
                .fetch_group_offsets(&self.config.group, &added)
                .await?;
            let mut starts = BTreeMap::new();
            for tp in &added {
                let offset = committed
                    .iter()
                    .find(|o| o.topic == tp.0 && o.partition == tp.1)
                    .map(|o| o.offset);
                let spec = offset.map_or(self.config.start, StartSpec::Offset);
                let reader = match PartitionReader::new(&self.client, &tp.0, tp.1, spec).await {
                    Ok(r) => r,
                    // The committed offset is below the log start now: start there.
                    Err(e) if e.code() == Code::OutOfRange => {
                        PartitionReader::new(&self.client, &tp.0, tp.1, StartSpec::Earliest).await?
                    }
                    Err(e) => return Err(e),
                };
                starts.insert(tp.clone(), reader.next_offset());
                if let Some(o) = offset {
                    self.committed.insert(tp.clone(), o);
                }
                self.readers.insert(tp.clone(), reader);
            }
            self.events.push(Rebalance::Assigned(starts));
        }
        // Reported at the next poll (not at the next heartbeat interval), after the caller saw
        // the events: a partition is never handed on before its `Revoked` reached the caller.
        self.report_pending = true;
        Ok(true)
    }

    /// Commits what was returned, leaves the group (its partitions move at once) and stops.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let committed = self.commit().await;
        let (member, epoch) = self.member();
        self.task.abort();
        if !member.is_empty() && epoch > 0 {
            let group = self.config.group.clone();
            let leave = self
                .client
                .group_call(&group, |mut c| {
                    let request = GroupHeartbeatRequest {
                        group: group.clone(),
                        member_id: member.clone(),
                        member_epoch: -1,
                        ..GroupHeartbeatRequest::default()
                    };
                    async move { c.heartbeat(request).await.map(drop) }
                })
                .await;
            if let Err(e) = leave {
                tracing::debug!(error = %e, "leaving the group failed; the session will expire");
            }
        }
        self.lock().leaving = true;
        committed
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Heartbeats until aborted: joins, reports what the consumer owns, keeps the assignment.
async fn heartbeat_loop(
    client: Client,
    config: GroupConsumerConfig,
    shared: Arc<Mutex<Membership>>,
    wake: Arc<Notify>,
) {
    let session = config.session_timeout;
    let mut last_ok = Instant::now();
    loop {
        let request = {
            let m = shared.lock().unwrap_or_else(|e| e.into_inner());
            if m.leaving {
                return;
            }
            GroupHeartbeatRequest {
                group: config.group.clone(),
                member_id: m.member_id.clone(),
                member_epoch: m.epoch,
                instance_id: config.instance_id.clone().unwrap_or_default(),
                client_id: config.client_id.clone(),
                topics: if m.epoch == 0 {
                    config.topics.clone()
                } else {
                    Vec::new()
                },
                owned: to_wire(&m.owned),
                owned_known: true,
                session_timeout_ms: u32::try_from(session.as_millis()).unwrap_or(u32::MAX),
                heartbeat_interval_ms: 0,
            }
        };
        let joining = request.member_epoch == 0;
        let result = client
            .group_call(&config.group, |mut c| {
                let request = request.clone();
                async move { c.heartbeat(request).await.map(tonic::Response::into_inner) }
            })
            .await;
        let interval = {
            let mut m = shared.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(GroupHeartbeatResponse {
                    member_id,
                    member_epoch,
                    heartbeat_interval_ms,
                    assigned,
                }) => {
                    last_ok = Instant::now();
                    if joining {
                        tracing::info!(group = %config.group, member = %member_id, "joined the group");
                    }
                    m.member_id = member_id;
                    m.epoch = member_epoch;
                    m.assigned = Some(from_wire(&assigned));
                    m.heartbeat_interval =
                        Duration::from_millis(u64::from(heartbeat_interval_ms.max(100)));
                }
                Err(e) if e.code() == Code::Aborted => {
                    // Fenced: drop everything, join again as a new member.
                    tracing::warn!(group = %config.group, error = %e, "fenced by the group coordinator; rejoining");
                    m.member_id.clear();
                    m.epoch = 0;
                    m.assigned = None;
                    m.lost = true;
                    last_ok = Instant::now();
                }
                Err(e) if matches!(e.code(), Code::NotFound | Code::InvalidArgument) => {
                    m.fatal = Some(e);
                    return;
                }
                Err(e) => {
                    tracing::debug!(group = %config.group, error = %e, "heartbeat failed");
                    if last_ok.elapsed() >= session {
                        // The coordinator has fenced us by now: stop reading, join again.
                        m.member_id.clear();
                        m.epoch = 0;
                        m.assigned = None;
                        m.lost = true;
                        last_ok = Instant::now();
                    }
                }
            }
            m.heartbeat_interval
        };
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer that is not a member now (fenced and rejoining, or never joined) never sends
    /// a commit: without a member id it would be a standalone commit, which the coordinator
    /// refuses while the group has members (FAILED_PRECONDITION), and the consumer would stop.
    /// It answers ABORTED, which `poll` treats as fenced.
    #[tokio::test]
    async fn a_consumer_without_a_membership_sends_no_commit() {
        let url = "http://127.0.0.1:1";
        let channel = tonic::transport::Endpoint::from_static(url).connect_lazy();
        let client = Client::from_channel(url, channel);
        let mut consumer = GroupConsumer::join(&client, GroupConsumerConfig::new("g", &["t"]))
            .await
            .unwrap();
        consumer.positions.insert(("t".into(), 0), 5);
        let err = consumer.commit().await.unwrap_err();
        assert_eq!(err.code(), Code::Aborted, "{err}");
        assert!(
            err.to_string().contains("not a member of group 'g'"),
            "{err}"
        );
        assert!(consumer.committed.is_empty());
    }
}
