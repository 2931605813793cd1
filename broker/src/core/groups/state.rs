//! One consumer group's state machine: membership, sessions, the target assignment and the
//! cooperative hand-over of partitions between members, and who may commit what.
//!
//! It is protocol-neutral and pure: every call takes the time (`now_ms`, from the injected
//! clock) and returns what changed, and the coordinator persists the group (a fenced
//! compare-and-set, see [`crate::core::groups`]) before it answers a member with anything that
//! persisting could refuse. The gRPC edge drives it with heartbeats now (the model of Kafka's
//! KIP-848 `ConsumerGroupHeartbeat`); the Kafka edge will drive the same members, sessions,
//! fences and commits through JoinGroup/SyncGroup with a client-computed assignment
//! ([`AssignmentSource::Client`]).
//!
//! **Hand-over is cooperative.** A member is told to own exactly the partitions of its
//! `assigned` set. When the target moves a partition away, it leaves `assigned` at once and
//! waits in the member's `revoking` set until the member reports (in a later heartbeat's
//! `owned` list) that it no longer consumes it — after committing its offsets; only then can
//! the partition enter another member's `assigned`. So no partition is ever in two members'
//! `assigned ∪ revoking`, and members keep every other partition during a rebalance. A member
//! that leaves or whose session expires drops everything it held at once: its client stops
//! consuming when it cannot heartbeat for its session timeout.
//!
//! **Fencing.** Every member has an epoch that grows each time it is told a changed
//! assignment. A heartbeat or commit from an unknown member (never joined, left, or expired) is
//! [`GroupError::UnknownMember`]; a heartbeat with an epoch other than the one the member was
//! last told is [`GroupError::FencedEpoch`] — both say "rejoin". A commit must name partitions
//! the member holds (`assigned ∪ revoking`), with an epoch it was given.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::assignor::{GroupPartition, assign};

/// Session timeouts a member may ask for (Kafka's `group.consumer.min/max.session.timeout.ms`
/// defaults).
pub const MIN_SESSION_TIMEOUT_MS: u32 = 6_000;
pub const MAX_SESSION_TIMEOUT_MS: u32 = 60_000;
/// The session timeout of a member that asks for none.
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 10_000;
/// Heartbeat intervals a member may ask for, and the default (Kafka's 5 s would make a
/// cooperative hand-over, which takes two heartbeats, slow; Silt's heartbeats are cheap).
pub const MIN_HEARTBEAT_INTERVAL_MS: u32 = 500;
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 3_000;
/// The interval given to a member that waits for partitions still being released elsewhere.
pub const RECONCILING_HEARTBEAT_MS: u32 = 200;
/// Most members in one group, topics in one subscription, and bytes of a group id, client id or
/// host: a join can never make a group's record outgrow a metadata value.
pub const MAX_MEMBERS: usize = 1_000;
pub const MAX_SUBSCRIBED_TOPICS: usize = 100;
pub const MAX_GROUP_ID_BYTES: usize = 255;
pub const MAX_CLIENT_FIELD_BYTES: usize = 255;

/// Why a group call was refused. Nothing changed in the group when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The request itself is wrong (a field out of its limits); retrying it cannot help.
    #[error("{0}")]
    Invalid(String),
    /// The member is not in the group (it never joined, it left, or its session expired).
    #[error(
        "member '{member}' is not in group '{group}' (its session expired or it left); rejoin the group"
    )]
    UnknownMember { group: String, member: String },
    /// The member's epoch is not its current one: a zombie from before a rebalance.
    #[error(
        "member '{member}' of group '{group}' sent epoch {sent}, its epoch is {current}; it was fenced: rejoin the group"
    )]
    FencedEpoch {
        group: String,
        member: String,
        sent: i32,
        current: i32,
    },
    /// A commit for a partition the member does not hold.
    #[error(
        "member '{member}' of group '{group}' does not hold {topic} partition {partition}; commit only assigned partitions"
    )]
    NotAssigned {
        group: String,
        member: String,
        topic: String,
        partition: u32,
    },
    /// A call that needs a group without active members (a standalone commit, an offset
    /// reset, a delete).
    #[error("group '{group}' has active members ({members}); stop them first")]
    Active { group: String, members: String },
    /// The group is full.
    #[error("group '{group}' has {MAX_MEMBERS} members, the most one group may have")]
    Full { group: String },
}

/// Where the target assignment comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentSource {
    /// The coordinator computes it ([`assign`]): gRPC members (and Kafka's KIP-848 members).
    #[default]
    Server,
    /// A leader member computes it and hands it in (Kafka's classic JoinGroup/SyncGroup with
    /// `range`, `roundrobin` or `cooperative-sticky`); sessions, fencing, commits and offsets
    /// are the same.
    Client,
}

/// One member as the group keeps it (and persists it; the session deadline is not persisted:
/// a new coordinator gives every member a full session from when it loaded the group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Static membership (Kafka's `group.instance.id`): a member that rejoins with the same
    /// instance id replaces the old one without a rebalance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    pub topics: BTreeSet<String>,
    /// The epoch the member was last told; it grows by one in the first answer after its
    /// assignment changed.
    pub epoch: i32,
    /// The assignment changed since the member was last answered.
    #[serde(default)]
    pub pending: bool,
    pub session_timeout_ms: u32,
    pub heartbeat_interval_ms: u32,
    /// What the member is told to consume.
    pub assigned: BTreeSet<GroupPartition>,
    /// Taken away, not yet released by the member (it may still be consuming and committing).
    pub revoking: BTreeSet<GroupPartition>,
    /// When the session ends without a heartbeat (coordinator clock; not persisted).
    #[serde(skip)]
    pub deadline_ms: i64,
}

impl Member {
    /// Partitions the member may still be consuming.
    pub fn holds(&self, p: &GroupPartition) -> bool {
        self.assigned.contains(p) || self.revoking.contains(p)
    }
}

/// What a member asks for in a heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// Empty to join.
    pub member_id: String,
    /// 0 to join, -1 to leave, otherwise the epoch the member was last given.
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    /// The subscription (on join; a later heartbeat may change it, `None` keeps it).
    pub topics: Option<BTreeSet<String>>,
    /// The partitions the member consumes right now (`None`: unchanged since the last one).
    pub owned: Option<BTreeSet<GroupPartition>>,
    /// 0 for the default.
    pub session_timeout_ms: u32,
    /// 0 for the default.
    pub heartbeat_interval_ms: u32,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub member_id: String,
    /// -1 after a leave.
    pub member_epoch: i32,
    pub heartbeat_interval_ms: u32,
    /// What the member must consume now (it stops consuming anything else, commits it, and
    /// reports it released in its next heartbeat).
    pub assigned: BTreeSet<GroupPartition>,
}

/// The topics a group's members subscribe to, as the coordinator resolves them: name → (topic
/// id, partition count); a topic that does not exist is absent.
pub type TopicResolver<'a> = &'a dyn Fn(&str) -> Option<(u64, u32)>;

/// One group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    /// Grows on every change of membership, subscriptions or topics (a new target).
    pub epoch: i32,
    #[serde(default)]
    pub source: AssignmentSource,
    pub members: BTreeMap<String, Member>,
    /// Member id → what it should own once hand-overs finish.
    pub target: BTreeMap<String, BTreeSet<GroupPartition>>,
    /// The topic ids and partition counts the target was computed from (a change of either
    /// recomputes it).
    pub resolved: BTreeMap<String, (u64, u32)>,
}

/// Whether a call changed what must be persisted before the answer is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// Nothing the group record holds changed (a plain heartbeat): answer at once.
    Nothing,
    /// The group record changed: persist it (fenced) before answering.
    Persist,
}

/// Checks a group id: 1 to [`MAX_GROUP_ID_BYTES`] bytes of printable characters.
pub fn validate_group_id(id: &str) -> Result<(), GroupError> {
    if id.is_empty() {
        return Err(GroupError::Invalid("the group id is empty".into()));
    }
    if id.len() > MAX_GROUP_ID_BYTES {
        return Err(GroupError::Invalid(format!(
            "the group id is {} bytes; at most {MAX_GROUP_ID_BYTES} are allowed",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(GroupError::Invalid(
            "the group id contains a control character".into(),
        ));
    }
    Ok(())
}

impl Group {
    /// An empty group.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            epoch: 0,
            source: AssignmentSource::Server,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            resolved: BTreeMap::new(),
        }
    }

    /// True when no member is active (offsets may then be reset, the group deleted).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Gives every member a full session from `now_ms` (after a coordinator took the group
    /// over: the deadlines were not persisted).
    pub fn restart_sessions(&mut self, now_ms: i64) {
        for m in self.members.values_mut() {
            m.deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        }
    }

    /// The member holding `p` (assigned or still revoking), if any.
    pub fn holder(&self, p: &GroupPartition) -> Option<&Member> {
        self.members.values().find(|m| m.holds(p))
    }

    /// A heartbeat: join (`member_epoch` 0), leave (-1) or keep alive, with the partitions the
    /// member consumes now. `new_member_id` names a joining member that sent none.
    pub fn heartbeat(
        &mut self,
        hb: &Heartbeat,
        now_ms: i64,
        resolve: TopicResolver<'_>,
        new_member_id: impl FnOnce() -> String,
    ) -> Result<(HeartbeatAnswer, Changed), GroupError> {
        let session = match hb.session_timeout_ms {
            0 => DEFAULT_SESSION_TIMEOUT_MS,
            s if (MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&s) => s,
            s => {
                return Err(GroupError::Invalid(format!(
                    "session timeout {s} ms is outside {MIN_SESSION_TIMEOUT_MS}..={MAX_SESSION_TIMEOUT_MS} ms"
                )));
            }
        };
        let interval = match hb.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT_INTERVAL_MS.min(session / 3),
            i if i >= MIN_HEARTBEAT_INTERVAL_MS && i <= session / 2 => i,
            i => {
                return Err(GroupError::Invalid(format!(
                    "heartbeat interval {i} ms must be at least {MIN_HEARTBEAT_INTERVAL_MS} ms \
                     and at most half the session timeout ({} ms)",
                    session / 2
                )));
            }
        };
        if hb.client_id.len() > MAX_CLIENT_FIELD_BYTES || hb.host.len() > MAX_CLIENT_FIELD_BYTES {
            return Err(GroupError::Invalid(format!(
                "client id and host may have at most {MAX_CLIENT_FIELD_BYTES} bytes"
            )));
        }
        if let Some(topics) = &hb.topics {
            if topics.len() > MAX_SUBSCRIBED_TOPICS {
                return Err(GroupError::Invalid(format!(
                    "a member may subscribe to at most {MAX_SUBSCRIBED_TOPICS} topics, not {}",
                    topics.len()
                )));
            }
            if topics.iter().any(String::is_empty) {
                return Err(GroupError::Invalid(
                    "a subscribed topic name is empty".into(),
                ));
            }
        }
        match hb.member_epoch {
            0 => self.join(hb, session, interval, now_ms, resolve, new_member_id),
            -1 => {
                self.member(&hb.member_id)?;
                self.members.remove(&hb.member_id);
                self.rebalance(resolve);
                self.reconcile_all();
                Ok((
                    HeartbeatAnswer {
                        member_id: hb.member_id.clone(),
                        member_epoch: -1,
                        heartbeat_interval_ms: interval,
                        assigned: BTreeSet::new(),
                    },
                    Changed::Persist,
                ))
            }
            epoch if epoch > 0 => {
                let member = self.member(&hb.member_id)?;
                if epoch != member.epoch {
                    return Err(GroupError::FencedEpoch {
                        group: self.id.clone(),
                        member: hb.member_id.clone(),
                        sent: epoch,
                        current: member.epoch,
                    });
                }
                let mut changed = Changed::Nothing;
                let m = self.members.get_mut(&hb.member_id).expect("checked");
                m.deadline_ms = now_ms + i64::from(session);
                if (m.session_timeout_ms, m.heartbeat_interval_ms) != (session, interval) {
                    (m.session_timeout_ms, m.heartbeat_interval_ms) = (session, interval);
                    changed = Changed::Persist;
                }
                if let Some(owned) = &hb.owned {
                    let released: Vec<_> = m.revoking.difference(owned).copied().collect();
                    if !released.is_empty() {
                        for p in released {
                            m.revoking.remove(&p);
                        }
                        changed = Changed::Persist;
                    }
                }
                if let Some(topics) = &hb.topics
                    && *topics != m.topics
                {
                    m.topics = topics.clone();
                    self.rebalance(resolve);
                    changed = Changed::Persist;
                } else if self.topics_changed(resolve) {
                    self.rebalance(resolve);
                    changed = Changed::Persist;
                }
                if self.reconcile_all() {
                    changed = Changed::Persist;
                }
                let (answer, delivered) = self.answer(&hb.member_id);
                if delivered {
                    changed = Changed::Persist;
                }
                Ok((answer, changed))
            }
            other => Err(GroupError::Invalid(format!(
                "member epoch {other} is not valid: send 0 to join, -1 to leave, or the epoch \
                 you were given"
            ))),
        }
    }

    fn join(
        &mut self,
        hb: &Heartbeat,
        session: u32,
        interval: u32,
        now_ms: i64,
        resolve: TopicResolver<'_>,
        new_member_id: impl FnOnce() -> String,
    ) -> Result<(HeartbeatAnswer, Changed), GroupError> {
        let Some(topics) = &hb.topics else {
            return Err(GroupError::Invalid(
                "a joining member must name the topics it subscribes to".into(),
            ));
        };
        if topics.is_empty() {
            return Err(GroupError::Invalid(
                "a joining member must subscribe to at least one topic".into(),
            ));
        }
        // A static member coming back replaces its previous incarnation.
        let replaced = hb.instance_id.as_ref().and_then(|instance| {
            self.members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance))
                .map(|m| m.id.clone())
        });
        if replaced.is_none() && self.members.len() >= MAX_MEMBERS {
            return Err(GroupError::Full {
                group: self.id.clone(),
            });
        }
        let id = if hb.member_id.is_empty() {
            new_member_id()
        } else {
            hb.member_id.clone()
        };
        let previous = replaced.and_then(|r| self.members.remove(&r));
        let member = Member {
            id: id.clone(),
            instance_id: hb.instance_id.clone(),
            client_id: hb.client_id.clone(),
            host: hb.host.clone(),
            topics: topics.clone(),
            epoch: previous.as_ref().map_or(0, |p| p.epoch),
            pending: true,
            session_timeout_ms: session,
            heartbeat_interval_ms: interval,
            // A static member keeps what its previous incarnation held; a new one starts empty.
            assigned: previous
                .as_ref()
                .map(|p| p.assigned.clone())
                .unwrap_or_default(),
            revoking: previous
                .as_ref()
                .map(|p| p.revoking.clone())
                .unwrap_or_default(),
            deadline_ms: now_ms + i64::from(session),
        };
        let old_id = previous.map(|p| p.id);
        self.members.insert(id.clone(), member);
        if let Some(old) = old_id
            && let Some(t) = self.target.remove(&old)
        {
            self.target.insert(id.clone(), t);
        }
        self.rebalance(resolve);
        self.reconcile_all();
        // `pending` is set: the joining member learns an epoch ≥ 1 (0 means "join").
        Ok((self.answer(&id).0, Changed::Persist))
    }

    fn member(&self, id: &str) -> Result<&Member, GroupError> {
        self.members
            .get(id)
            .ok_or_else(|| GroupError::UnknownMember {
                group: self.id.clone(),
                member: id.to_string(),
            })
    }

    /// The member's answer; delivers a changed assignment with the next epoch (and says so).
    fn answer(&mut self, id: &str) -> (HeartbeatAnswer, bool) {
        // A member waiting for partitions another member is still releasing comes back soon:
        // it gets them one short interval after the release, not one full interval.
        let waiting = self
            .target
            .get(id)
            .is_some_and(|t| !t.is_subset(&self.members[id].assigned));
        let m = self.members.get_mut(id).expect("member");
        let delivered = m.pending;
        if delivered {
            m.epoch += 1;
            m.pending = false;
        }
        let answer = HeartbeatAnswer {
            member_id: id.to_string(),
            member_epoch: m.epoch,
            heartbeat_interval_ms: if waiting {
                m.heartbeat_interval_ms.min(RECONCILING_HEARTBEAT_MS)
            } else {
                m.heartbeat_interval_ms
            },
            assigned: m.assigned.clone(),
        };
        (answer, delivered)
    }

    /// Whether the subscribed topics resolve differently than when the target was computed
    /// (created, deleted, re-created, partitions added).
    fn topics_changed(&self, resolve: TopicResolver<'_>) -> bool {
        let names: BTreeSet<&String> = self.members.values().flat_map(|m| &m.topics).collect();
        names.len() != self.resolved.len()
            || names
                .iter()
                .any(|n| resolve(n) != self.resolved.get(*n).copied())
    }

    /// Recomputes the target (a new group epoch). Partitions of topics that no longer exist
    /// leave every member at once: there is nothing left to consume or commit in them.
    fn rebalance(&mut self, resolve: TopicResolver<'_>) {
        self.epoch += 1;
        let names: BTreeSet<String> = self
            .members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect();
        self.resolved = names
            .iter()
            .filter_map(|n| resolve(n).map(|r| (n.clone(), r)))
            .collect();
        let mut partitions: BTreeMap<GroupPartition, BTreeSet<String>> = BTreeMap::new();
        for (name, (topic_id, count)) in &self.resolved {
            let subscribers: BTreeSet<String> = self
                .members
                .values()
                .filter(|m| m.topics.contains(name))
                .map(|m| m.id.clone())
                .collect();
            for p in 0..*count {
                partitions.insert((*topic_id, p), subscribers.clone());
            }
        }
        if self.source == AssignmentSource::Server {
            let ids: BTreeSet<String> = self.members.keys().cloned().collect();
            self.target = assign(&ids, &partitions, &self.target);
        }
        for m in self.members.values_mut() {
            let before = (m.assigned.len(), m.revoking.len());
            m.assigned.retain(|p| partitions.contains_key(p));
            m.revoking.retain(|p| partitions.contains_key(p));
            if before != (m.assigned.len(), m.revoking.len()) {
                m.pending = true;
            }
        }
    }

    /// Moves every member one step toward its target: revokes what it should no longer own,
    /// then gives it target partitions nobody else holds (assigned or revoking). Returns
    /// whether any member's assignment changed (each such member learns it, with a new epoch,
    /// in its next answer).
    fn reconcile_all(&mut self) -> bool {
        let mut changed = false;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        // Revocations first, for every member, so the additions below see them.
        for id in &ids {
            let target = self.target.get(id).cloned().unwrap_or_default();
            let m = self.members.get_mut(id).expect("member");
            let revoke: Vec<GroupPartition> = m.assigned.difference(&target).copied().collect();
            if !revoke.is_empty() {
                for p in revoke {
                    m.assigned.remove(&p);
                    m.revoking.insert(p);
                }
                m.pending = true;
                changed = true;
            }
        }
        let held: BTreeSet<GroupPartition> = self
            .members
            .values()
            .flat_map(|m| m.assigned.iter().chain(&m.revoking).copied())
            .collect();
        let mut held = held;
        for id in &ids {
            let target = self.target.get(id).cloned().unwrap_or_default();
            let m = self.members.get_mut(id).expect("member");
            let add: Vec<GroupPartition> = target
                .iter()
                .filter(|p| !m.assigned.contains(*p) && !held.contains(*p))
                .copied()
                .collect();
            if !add.is_empty() {
                for p in add {
                    m.assigned.insert(p);
                    held.insert(p);
                }
                m.pending = true;
                changed = true;
            }
        }
        changed
    }

    /// Ends the sessions that passed their deadline: those members leave (fenced: their later
    /// calls are refused) and the group rebalances. Returns the expired member ids.
    pub fn expire(&mut self, now_ms: i64, resolve: TopicResolver<'_>) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.deadline_ms <= now_ms)
            .map(|m| m.id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                self.members.remove(id);
            }
            self.rebalance(resolve);
            self.reconcile_all();
        }
        expired
    }

    /// The soonest session deadline, for the coordinator's timer.
    pub fn next_deadline(&self) -> Option<i64> {
        self.members.values().map(|m| m.deadline_ms).min()
    }

    /// Checks that `member_id` at `member_epoch` may commit offsets for `partitions` (each with
    /// its topic's name, for the error). A commit with an empty member id is a standalone
    /// commit (a reader managing its own partitions, or an offset reset): allowed only while
    /// the group has no members.
    pub fn check_commit<'a>(
        &self,
        member_id: &str,
        member_epoch: i32,
        partitions: impl IntoIterator<Item = (&'a str, GroupPartition)>,
    ) -> Result<(), GroupError> {
        if member_id.is_empty() {
            if self.members.is_empty() {
                return Ok(());
            }
            return Err(GroupError::Active {
                group: self.id.clone(),
                members: self.member_list(),
            });
        }
        let m = self.member(member_id)?;
        // An answer with a newer epoch may still be on its way to the member: an older epoch
        // is fine as long as the member holds the partitions (checked below).
        if member_epoch <= 0 || member_epoch > m.epoch {
            return Err(GroupError::FencedEpoch {
                group: self.id.clone(),
                member: member_id.to_string(),
                sent: member_epoch,
                current: m.epoch,
            });
        }
        for (topic, p) in partitions {
            if !m.holds(&p) {
                return Err(GroupError::NotAssigned {
                    group: self.id.clone(),
                    member: member_id.to_string(),
                    topic: topic.to_string(),
                    partition: p.1,
                });
            }
        }
        Ok(())
    }

    /// The active members, for messages (at most ten named).
    pub fn member_list(&self) -> String {
        let mut names: Vec<String> = self
            .members
            .values()
            .take(10)
            .map(|m| format!("{} ({})", m.id, m.client_id))
            .collect();
        if self.members.len() > 10 {
            names.push(format!("and {} more", self.members.len() - 10));
        }
        names.join(", ")
    }
}

#[cfg(test)]
mod tests;
