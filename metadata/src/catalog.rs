//! The catalog: the typed view of metadata the broker works with.
//!
//! It turns topic management, segment commits and log-start updates into [`MetaStore`] calls
//! with the keys of [`crate::keys`] and the values of [`crate::codec`]. Its guarantees:
//! - a segment commit is ONE transaction of O(1) operations whatever the number of partitions
//!   in the segment: a compare on the writer's fencing key and one put;
//! - a commit from a fenced writer changes nothing and returns [`CatalogError::Fenced`]. The
//!   fence is the `mod_revision` of `writers/<broker>`: a new incarnation of the broker rewrites
//!   the key, and so does every ownership change that takes a partition away from the broker, so
//!   one compare proves the writer still owns every partition it owned when it read the fence;
//! - ownership changes are written only by the elected controller, in transactions that compare
//!   its election key and put the losing brokers' writer keys *after* the owner keys;
//! - a topic's id is the revision that created it, so a re-created topic never aliases the data
//!   of the one deleted before it.

use std::sync::Arc;

use crate::codec::{
    self, BrokerRecord, ControllerRecord, IndexRoot, OwnerRecord, SegmentCommit, TopicRecord,
};
use crate::error::{CatalogError, MetaError};
use crate::keys::Keys;
use crate::store::{Compare, LeaseId, MetaStore, Op, RangeRequest, Txn};

/// Keys read per range call when loading large prefixes.
const PAGE: i64 = 1000;

/// A topic and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub id: u64,
    pub record: TopicRecord,
}

/// What a writer proves on every commit: `writers/<broker>` is unchanged since `revision`, so
/// it is still the current incarnation of its broker and has lost no partition since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterFence {
    pub broker_id: String,
    pub incarnation: u64,
    /// The `mod_revision` of `writers/<broker>` the writer last saw.
    pub revision: i64,
}

/// One partition moving to a new owner (or being dropped, with `owner: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerChange {
    pub topic_id: u64,
    pub partition: u32,
    /// The new owner and epoch; `None` deletes the owner key (the topic is gone).
    pub owner: Option<OwnerRecord>,
    /// The owner key's `mod_revision` as the controller saw it (0: it had no owner key). The
    /// change is made only if the key is still so.
    pub seen_mod_revision: i64,
}

/// A broker losing partitions in an ownership transaction: its writer key, as the controller
/// last saw it, is rewritten with the same value, which fences its pending commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedWriter {
    pub broker_id: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A change of a partition's index root ([`Catalog::swap_index`]).
#[derive(Debug, Clone, Copy)]
pub struct IndexChange<'a> {
    /// The root's `mod_revision` the change was computed from (0: no root yet).
    pub seen_root_revision: i64,
    /// The root to put.
    pub root: &'a IndexRoot,
    /// Commit ids whose `parts/` keys go (rolled into the root's new page).
    pub forget: &'a [String],
    /// Commits put back under `parts/` (a page unrolled).
    pub restore: &'a [(String, SegmentCommit)],
}

/// Index roots by (topic id, partition).
pub type Roots = Vec<((u64, u32), IndexRoot)>;

/// What commit GC reads: every commit and index root ([`Catalog::load_commits`]).
#[derive(Debug, Clone, Default)]
pub struct LoadedCommits {
    /// Flush segments' commits, by object id.
    pub segments: Vec<(String, SegmentCommit)>,
    /// Compacted objects' commits, by id.
    pub parts: Vec<(String, SegmentCommit)>,
    /// Index roots, by (topic id, partition).
    pub roots: Roots,
    /// The newest `mod_revision` among them (0: none).
    pub newest: i64,
}

/// A segment commit that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The metadata revision of the commit.
    pub revision: i64,
    /// Keys and values the commit sent (compare and put): its metadata cost.
    pub request_bytes: usize,
}

/// The typed metadata API over a [`MetaStore`].
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn MetaStore>,
    keys: Keys,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("root", &self.keys.root())
            .finish()
    }
}

impl Catalog {
    pub fn new(store: Arc<dyn MetaStore>, cluster: &str) -> Self {
        Self {
            store,
            keys: Keys::new(cluster),
        }
    }

    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.store
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Creates a topic; fails with `TopicExists` if the name is taken.
    pub async fn create_topic(&self, record: TopicRecord) -> Result<Topic, CatalogError> {
        let key = self.keys.topic(&record.name);
        let txn = Txn::new()
            .when([Compare::missing(key.clone())])
            .and_then([Op::put(key, codec::encode_topic(&record))]);
        let resp = self.store.txn(txn).await?;
        if !resp.succeeded {
            return Err(CatalogError::TopicExists(record.name));
        }
        Ok(Topic {
            id: resp.revision as u64,
            record,
        })
    }

    /// Deletes a topic (its data is collected later); returns what it was.
    pub async fn delete_topic(&self, name: &str) -> Result<Topic, CatalogError> {
        let topic = self
            .get_topic(name)
            .await?
            .ok_or_else(|| CatalogError::TopicNotFound(name.into()))?;
        let key = self.keys.topic(name);
        let txn = Txn::new()
            .when([Compare::new(
                key.clone(),
                crate::CompareOp::Equal,
                crate::CompareTarget::CreateRevision(topic.id as i64),
            )])
            .and_then([Op::delete(key), Op::delete(self.keys.log_start(topic.id))]);
        if !self.store.txn(txn).await?.succeeded {
            return Err(CatalogError::TopicNotFound(name.into()));
        }
        Ok(topic)
    }

    /// Replaces a live topic's record (its settings), if it is still the topic `topic_id` and
    /// unchanged since `seen_mod_revision`. `None` (nothing written) when either compare fails:
    /// the caller reads again and retries, or reports the topic gone.
    pub async fn replace_topic(
        &self,
        topic_id: u64,
        seen_mod_revision: i64,
        record: &TopicRecord,
    ) -> Result<Option<i64>, CatalogError> {
        let key = self.keys.topic(&record.name);
        let txn = Txn::new()
            .when([
                Compare::new(
                    key.clone(),
                    crate::CompareOp::Equal,
                    crate::CompareTarget::CreateRevision(topic_id as i64),
                ),
                Compare::mod_revision(key.clone(), seen_mod_revision),
            ])
            .and_then([Op::put(key, codec::encode_topic(record))]);
        let resp = self.store.txn(txn).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Reads one topic with its key's `mod_revision` (what [`Self::replace_topic`] compares).
    pub async fn get_topic_versioned(
        &self,
        name: &str,
    ) -> Result<Option<(Topic, i64)>, CatalogError> {
        let key = self.keys.topic(name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some((
                Topic {
                    id: kv.create_revision as u64,
                    record: codec::decode_topic(&kv.key, &kv.value)?,
                },
                kv.mod_revision,
            ))),
            None => Ok(None),
        }
    }

    /// Reads one topic.
    pub async fn get_topic(&self, name: &str) -> Result<Option<Topic>, CatalogError> {
        let key = self.keys.topic(name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(Topic {
                id: kv.create_revision as u64,
                record: codec::decode_topic(&kv.key, &kv.value)?,
            })),
            None => Ok(None),
        }
    }

    /// All topics, in name order.
    pub async fn list_topics(&self) -> Result<Vec<Topic>, CatalogError> {
        let mut topics = Vec::new();
        for kv in self.range_all(self.keys.topics_prefix()).await? {
            topics.push(Topic {
                id: kv.create_revision as u64,
                record: codec::decode_topic(&kv.key, &kv.value)?,
            });
        }
        Ok(topics)
    }

    /// Registers a live broker under `lease`: the key disappears when the lease ends.
    pub async fn register_broker(
        &self,
        broker: &BrokerRecord,
        lease: LeaseId,
    ) -> Result<(), CatalogError> {
        let op = Op::put_with_lease(
            self.keys.broker(&broker.broker_id),
            codec::encode_broker(broker),
            lease,
        );
        self.store.txn(Txn::new().and_then([op])).await?;
        Ok(())
    }

    /// The brokers registered now, by id.
    pub async fn list_brokers(&self) -> Result<Vec<BrokerRecord>, CatalogError> {
        let resp = self
            .store
            .range(RangeRequest::prefix(self.keys.brokers_prefix()))
            .await?;
        resp.kvs
            .iter()
            .map(|kv| codec::decode_broker(&kv.key, &kv.value).map_err(CatalogError::from))
            .collect()
    }

    /// Makes `incarnation` the current one of `broker_id`: commits of earlier incarnations fail
    /// from now on. Returns the new incarnation's fence. The write is a compare-and-set, so
    /// incarnations only grow and are never handed out twice: if the key holds `incarnation` or
    /// a newer one (another process of this id started meanwhile), nothing is written and the
    /// answer is [`CatalogError::Superseded`].
    pub async fn register_writer(
        &self,
        broker_id: &str,
        incarnation: u64,
    ) -> Result<WriterFence, CatalogError> {
        let key = self.keys.writer(broker_id);
        loop {
            let current = self.store.get(&key).await?;
            let seen = current.as_ref().map_or(0, |kv| kv.mod_revision);
            if let Some(held) = current
                .as_ref()
                .and_then(|kv| Self::parse_incarnation(&kv.value))
                .filter(|held| *held >= incarnation)
            {
                return Err(CatalogError::Superseded {
                    broker_id: broker_id.to_string(),
                    incarnation,
                    current: held,
                });
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), seen)])
                .and_then([Op::put(key.clone(), incarnation.to_string())]);
            let resp = self.store.txn(txn).await?;
            if resp.succeeded {
                return Ok(WriterFence {
                    broker_id: broker_id.to_string(),
                    incarnation,
                    revision: resp.revision,
                });
            }
        }
    }

    /// Rewrites the writer key of `incarnation` with its own value, so every commit sent with an
    /// older fence fails from now on (used to settle a commit whose outcome is unknown, and to
    /// mark the point a reloaded view must reach). Returns the revision of the write, or
    /// `None`, changing nothing, when a newer incarnation holds the key.
    pub async fn touch_writer(
        &self,
        broker_id: &str,
        incarnation: u64,
    ) -> Result<Option<i64>, CatalogError> {
        let key = self.keys.writer(broker_id);
        let value = incarnation.to_string().into_bytes();
        let txn = Txn::new()
            .when([Compare::value(key.clone(), value.clone())])
            .and_then([Op::put(key, value)]);
        let resp = self.store.txn(txn).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// True when the segment's commit key exists.
    pub async fn segment_exists(&self, object_id: &str) -> Result<bool, CatalogError> {
        Ok(self
            .store
            .get(&self.keys.segment(object_id))
            .await?
            .is_some())
    }

    /// The incarnation a writer key holds.
    pub fn parse_incarnation(value: &[u8]) -> Option<u64> {
        std::str::from_utf8(value).ok()?.parse().ok()
    }

    /// Commits a segment: one compare (the fence) and one put. Returns the commit revision.
    pub async fn commit_segment(
        &self,
        fence: &WriterFence,
        object_id: &str,
        commit: &SegmentCommit,
    ) -> Result<Committed, CatalogError> {
        let fence_key = self.keys.writer(&fence.broker_id);
        let (key, value) = (self.keys.segment(object_id), codec::encode_segment(commit));
        let request_bytes = fence_key.len() + 8 + key.len() + value.len();
        let txn = Txn::new()
            .when([Compare::mod_revision(fence_key, fence.revision)])
            .and_then([Op::put(key, value)]);
        let resp = self.store.txn(txn).await?;
        if !resp.succeeded {
            return Err(CatalogError::Fenced {
                broker_id: fence.broker_id.clone(),
                incarnation: fence.incarnation,
            });
        }
        Ok(Committed {
            revision: resp.revision,
            request_bytes,
        })
    }

    /// Tries to become the controller under `lease`; returns the election key's revision when
    /// this broker won, `None` when another broker holds the key.
    pub async fn campaign(
        &self,
        broker_id: &str,
        lease: LeaseId,
    ) -> Result<Option<i64>, CatalogError> {
        let key = self.keys.controller();
        let record = ControllerRecord {
            v: 1,
            broker_id: broker_id.to_string(),
        };
        let txn = Txn::new()
            .when([Compare::missing(key.clone())])
            .and_then([Op::put_with_lease(
                key,
                codec::encode_controller(&record),
                lease,
            )]);
        let resp = self.store.txn(txn).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Writes ownership changes as the controller elected at `controller_revision`: one
    /// transaction comparing the election key, each changed owner key and each losing
    /// writer's key with what the controller saw, putting the owner
    /// keys and then the losing writers' keys (so a watcher that sees a writer key change has
    /// already seen the owner changes of the same transaction). Returns false, changing
    /// nothing, when a compare failed (no longer the controller, or a view that is behind);
    /// otherwise the revision of the change.
    /// The caller keeps `1 + changes.len() + losers.len()` within the store's `max_txn_ops`.
    pub async fn change_owners(
        &self,
        controller_revision: i64,
        changes: &[OwnerChange],
        losers: &[FencedWriter],
    ) -> Result<Option<i64>, CatalogError> {
        let mut compares = vec![self.controller_compare(controller_revision)];
        let mut ops = Vec::with_capacity(changes.len() + losers.len());
        for c in changes {
            let key = self.keys.owner(c.topic_id, c.partition);
            compares.push(Compare::new(
                key.clone(),
                crate::CompareOp::Equal,
                crate::CompareTarget::ModRevision(c.seen_mod_revision),
            ));
            ops.push(match &c.owner {
                Some(owner) => Op::put(key, codec::encode_owner(owner)),
                None => Op::delete(key),
            });
        }
        for l in losers {
            let key = self.keys.writer(&l.broker_id);
            compares.push(Compare::mod_revision(key.clone(), l.mod_revision));
            ops.push(Op::put(key, l.value.clone()));
        }
        let resp = self
            .store
            .txn(Txn::new().when(compares).and_then(ops))
            .await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Decodes an owner value; `None` when the key is not an owner key.
    pub fn decode_owner(&self, kv: &crate::KeyValue) -> Result<Option<OwnerRecord>, CatalogError> {
        if self.keys.parse_owner(&kv.key).is_none() {
            return Ok(None);
        }
        Ok(Some(codec::decode_owner(&kv.key, &kv.value)?))
    }

    /// Every key of the cluster view (all but the group keys, see [`Keys::view_end`]), page by
    /// page, and the revision of the first page: a watch from one past it sees every change the
    /// pages may have missed.
    pub async fn load_all(&self) -> Result<(i64, Vec<crate::KeyValue>), CatalogError> {
        Ok(self
            .range_between_at(self.keys.root().as_bytes().to_vec(), self.keys.view_end())
            .await?)
    }

    /// What the cluster view watches: every key but the group keys.
    pub fn view_range(&self) -> RangeRequest {
        RangeRequest::between(self.keys.root().as_bytes().to_vec(), self.keys.view_end())
    }

    /// Every committed segment, with its object id.
    pub async fn load_segments(&self) -> Result<Vec<(String, SegmentCommit)>, CatalogError> {
        let kvs = self.range_all(self.keys.segments_prefix()).await?;
        Ok(self.decode_commits(&kvs, |k| self.keys.parse_segment(k))?.1)
    }

    /// Forgets a segment whose records are all dead, as the controller elected at
    /// `controller_revision`: false, changing nothing, when that broker is no longer the
    /// controller (a paused ex-controller deletes nothing; its successor decides).
    pub async fn delete_segment(
        &self,
        controller_revision: i64,
        object_id: &str,
    ) -> Result<bool, CatalogError> {
        self.delete_as_controller(controller_revision, self.keys.segment(object_id))
            .await
    }

    /// Forgets a compacted object's commit whose entries are all dead or were compacted again,
    /// fenced like [`Self::delete_segment`].
    pub async fn delete_part(
        &self,
        controller_revision: i64,
        id: &str,
    ) -> Result<bool, CatalogError> {
        self.delete_as_controller(controller_revision, self.keys.part(id))
            .await
    }

    /// True while the controller elected at `controller_revision` still holds the election
    /// (a read through the store's consensus, not the caller's view).
    pub async fn still_controller(&self, controller_revision: i64) -> Result<bool, CatalogError> {
        let txn = Txn::new().when([self.controller_compare(controller_revision)]);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    async fn delete_as_controller(
        &self,
        controller_revision: i64,
        key: Vec<u8>,
    ) -> Result<bool, CatalogError> {
        let txn = Txn::new()
            .when([self.controller_compare(controller_revision)])
            .and_then([Op::delete(key)]);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Swaps part of a partition's index to a compacted object: puts `parts/<id>` (entries of
    /// one partition only, covering exactly the entries they replace), as the writer `fence`
    /// of the partition's owner, while `topic` still exists and no commit of this range exists
    /// yet. One transaction, so readers see the old entries or the new ones, never a mix. The
    /// revision of the swap, or `None` (nothing written) when a compare failed: the partition
    /// moved, the topic is gone, or the range was compacted already.
    pub async fn commit_part(
        &self,
        fence: &WriterFence,
        topic: &Topic,
        id: &str,
        commit: &SegmentCommit,
    ) -> Result<Option<i64>, CatalogError> {
        let key = self.keys.part(id);
        let txn = Txn::new()
            .when(
                self.owner_compares(fence, topic)
                    .chain([Compare::missing(key.clone())]),
            )
            .and_then([Op::put(key, codec::encode_segment(commit))]);
        let resp = self.store.txn(txn).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Changes a partition's index root, as the writer `fence` of the partition's owner, while
    /// `topic` still exists, the root is still at `change.seen_root_revision` (0: none yet) and
    /// every commit in `change.forget` still exists:
    /// puts `change.root`, deletes the `parts/` keys `change.forget` and puts the commits
    /// `change.restore`, in ONE transaction, so a reader sees the entries in pages or in
    /// `parts/` keys, never in both or neither. Rolling entries up puts a root with one more
    /// page and forgets the commits it holds; unrolling (a topic turned key-compacted) puts
    /// the last page's commits back and drops the page. The revision of the write, or `None`
    /// (nothing written) when a compare failed.
    pub async fn swap_index(
        &self,
        fence: &WriterFence,
        topic: &Topic,
        partition: u32,
        change: IndexChange<'_>,
    ) -> Result<Option<i64>, CatalogError> {
        let key = self.keys.index_root(topic.id, partition);
        let mut ops = vec![Op::put(key.clone(), codec::encode_index_root(change.root))];
        ops.extend(
            change
                .forget
                .iter()
                .map(|id| Op::delete(self.keys.part(id))),
        );
        ops.extend(
            change
                .restore
                .iter()
                .map(|(id, commit)| Op::put(self.keys.part(id), codec::encode_segment(commit))),
        );
        let txn = Txn::new()
            .when(
                self.owner_compares(fence, topic)
                    .chain([Compare::mod_revision(key, change.seen_root_revision)])
                    // Every commit rolled into the page is still there: no view so stale it
                    // missed their removal (copied again, collected) rolls them.
                    .chain(change.forget.iter().map(|id| {
                        Compare::new(
                            self.keys.part(id),
                            crate::CompareOp::Greater,
                            crate::CompareTarget::CreateRevision(0),
                        )
                    })),
            )
            .and_then(ops);
        let resp = self.store.txn(txn).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Every partition's index root.
    pub async fn load_index_roots(&self) -> Result<Roots, CatalogError> {
        let kvs = self.range_all(self.keys.index_roots_prefix()).await?;
        Ok(self.decode_roots(&kvs)?.1)
    }

    /// Decodes index root keys: with the newest `mod_revision`.
    fn decode_roots(&self, kvs: &[crate::KeyValue]) -> Result<(i64, Roots), CatalogError> {
        let mut out = Vec::new();
        let mut newest = 0;
        for kv in kvs {
            newest = newest.max(kv.mod_revision);
            if let Some(partition) = self.keys.parse_index_root(&kv.key) {
                out.push((partition, codec::decode_index_root(&kv.key, &kv.value)?));
            }
        }
        Ok((newest, out))
    }

    /// Forgets the index root of a deleted topic's partition, fenced like
    /// [`Self::delete_segment`].
    pub async fn delete_index_root(
        &self,
        controller_revision: i64,
        topic_id: u64,
        partition: u32,
    ) -> Result<bool, CatalogError> {
        self.delete_as_controller(
            controller_revision,
            self.keys.index_root(topic_id, partition),
        )
        .await
    }

    /// Every compacted object's commit, with its id.
    pub async fn load_parts(&self) -> Result<Vec<(String, SegmentCommit)>, CatalogError> {
        let kvs = self.range_all(self.keys.parts_prefix()).await?;
        Ok(self.decode_commits(&kvs, |k| self.keys.parse_part(k))?.1)
    }

    /// Decodes commit keys, `id_of` giving each one's id: with the newest `mod_revision`.
    fn decode_commits<'k>(
        &self,
        kvs: &'k [crate::KeyValue],
        id_of: impl Fn(&'k [u8]) -> Option<&'k str>,
    ) -> Result<(i64, Vec<(String, SegmentCommit)>), CatalogError> {
        let mut out = Vec::new();
        let mut newest = 0;
        for kv in kvs {
            newest = newest.max(kv.mod_revision);
            let id = id_of(&kv.key).unwrap_or_default().to_string();
            out.push((id, codec::decode_segment(&kv.key, &kv.value)?));
        }
        Ok((newest, out))
    }

    /// Every flush segment commit, compacted object commit and index root, read in that
    /// order, with the newest `mod_revision` among them: a view that applied that revision
    /// knows every one of them.
    pub async fn load_commits(&self) -> Result<LoadedCommits, CatalogError> {
        let kvs = self.range_all(self.keys.segments_prefix()).await?;
        let (newest_segment, segments) =
            self.decode_commits(&kvs, |k| self.keys.parse_segment(k))?;
        let kvs = self.range_all(self.keys.parts_prefix()).await?;
        let (newest_part, parts) = self.decode_commits(&kvs, |k| self.keys.parse_part(k))?;
        let kvs = self.range_all(self.keys.index_roots_prefix()).await?;
        let (newest_root, roots) = self.decode_roots(&kvs)?;
        let newest = newest_segment.max(newest_part).max(newest_root);
        Ok(LoadedCommits {
            segments,
            parts,
            roots,
            newest,
        })
    }

    /// The compares of a partition owner's write: its writer key is as `fence` saw it (it
    /// still owns every partition it owned then) and `topic` still exists (same id).
    fn owner_compares(&self, fence: &WriterFence, topic: &Topic) -> impl Iterator<Item = Compare> {
        [
            Compare::mod_revision(self.keys.writer(&fence.broker_id), fence.revision),
            Compare::new(
                self.keys.topic(&topic.record.name),
                crate::CompareOp::Equal,
                crate::CompareTarget::CreateRevision(topic.id as i64),
            ),
        ]
        .into_iter()
    }

    /// The compare every controller write carries: the election key is still the one that
    /// elected it.
    fn controller_compare(&self, controller_revision: i64) -> Compare {
        Compare::new(
            self.keys.controller(),
            crate::CompareOp::Equal,
            crate::CompareTarget::CreateRevision(controller_revision),
        )
    }

    /// Log start offsets of every topic that has any, by topic id.
    pub async fn load_log_starts(&self) -> Result<Vec<(u64, Vec<i64>)>, CatalogError> {
        let mut out = Vec::new();
        for kv in self.range_all(self.keys.log_start_prefix()).await? {
            if let Some(id) = self.keys.parse_log_start(&kv.key) {
                out.push((id, codec::decode_log_starts(&kv.key, &kv.value)?));
            }
        }
        Ok(out)
    }

    /// Stores a topic's log start offsets as the controller elected at `controller_revision`.
    /// The write is fenced three ways: the election key must still be that controller's, the
    /// topic must still exist, and the log-start key must still be at `seen_mod_revision` (0:
    /// none yet) — the version the caller computed `starts` from. So a controller that was
    /// paused, cut off or is just behind can never put back older, lower log starts over its
    /// successor's. Returns the revision of the write, or `None` (nothing written) when a
    /// compare failed; the caller recomputes from a fresher view.
    pub async fn set_log_starts(
        &self,
        controller_revision: i64,
        topic: &Topic,
        seen_mod_revision: i64,
        starts: &[i64],
    ) -> Result<Option<i64>, CatalogError> {
        let key = self.keys.log_start(topic.id);
        let txn = Txn::new()
            .when([
                self.controller_compare(controller_revision),
                Compare::new(
                    self.keys.topic(&topic.record.name),
                    crate::CompareOp::Equal,
                    crate::CompareTarget::CreateRevision(topic.id as i64),
                ),
                Compare::mod_revision(key.clone(), seen_mod_revision),
            ])
            .and_then([Op::put(key, codec::encode_log_starts(starts))]);
        let resp = self.store.txn(txn).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Reads a whole prefix page by page (etcd bounds response sizes).
    async fn range_all(&self, prefix: Vec<u8>) -> Result<Vec<crate::KeyValue>, MetaError> {
        Ok(self.range_all_at(prefix).await?.1)
    }

    /// [`Self::range_all`], with the revision of the first page.
    async fn range_all_at(
        &self,
        prefix: Vec<u8>,
    ) -> Result<(i64, Vec<crate::KeyValue>), MetaError> {
        let end = crate::store::prefix_end(&prefix);
        self.range_between_at(prefix, end).await
    }

    /// Every key in `[start, end)`, page by page, with the revision of the first page.
    async fn range_between_at(
        &self,
        mut start: Vec<u8>,
        end: Vec<u8>,
    ) -> Result<(i64, Vec<crate::KeyValue>), MetaError> {
        let mut out = Vec::new();
        let mut first_revision = None;
        loop {
            let resp = self
                .store
                .range(RangeRequest::between(start.clone(), end.clone()).with_limit(PAGE))
                .await?;
            let more = resp.more;
            let revision = *first_revision.get_or_insert(resp.revision);
            if let Some(last) = resp.kvs.last() {
                start = last.key.clone();
                start.push(0);
            }
            out.extend(resp.kvs);
            if !more {
                return Ok((revision, out));
            }
        }
    }
}

mod groups;
pub use groups::{GroupRecordKv, OffsetCommit};

#[cfg(test)]
mod tests;
