use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::codec::SegmentEntry;
use crate::store::{LeaseId, RangeResponse, StoreLimits, TxnResponse, WatchStream};
use crate::{EmbeddedStore, ManualClock};

/// Records the size of every transaction passing through.
struct CountingStore {
    inner: Arc<dyn MetaStore>,
    txn_ops: Mutex<Vec<usize>>,
}

#[async_trait]
impl MetaStore for CountingStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, MetaError> {
        self.inner.range(req).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        self.txn_ops.lock().unwrap().push(txn.op_count());
        self.inner.txn(txn).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.inner.revoke_lease(lease).await
    }
    async fn watch(&self, req: RangeRequest, start: i64) -> Result<WatchStream, MetaError> {
        self.inner.watch(req, start).await
    }
    async fn compact(&self, revision: i64) -> Result<(), MetaError> {
        self.inner.compact(revision).await
    }
    fn limits(&self) -> StoreLimits {
        self.inner.limits()
    }
}

fn store() -> Arc<CountingStore> {
    let inner: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    Arc::new(CountingStore {
        inner,
        txn_ops: Mutex::new(Vec::new()),
    })
}

fn topic(name: &str, partitions: u32) -> TopicRecord {
    TopicRecord {
        v: 1,
        name: name.into(),
        partitions,
        retention_ms: -1,
        retention_bytes: -1,
        max_record_bytes: 1 << 20,
        created_at_ms: 5,
        cleanup_policy: crate::codec::CleanupPolicy::Delete,
        delete_retention_ms: crate::codec::DEFAULT_DELETE_RETENTION_MS,
    }
}

fn commit(topic_id: u64, partitions: u32) -> SegmentCommit {
    SegmentCommit {
        object: "segments/b1/0000000000000001-000000000001.seg".into(),
        object_len: 100,
        created_at_ms: 7,
        entries: (0..partitions)
            .map(|p| SegmentEntry {
                topic_id,
                partition: p,
                batch_count: 1,
                first_offset: 0,
                last_offset: 9,
                min_timestamp: 1,
                max_timestamp: 2,
                position: 16,
                length: 10,
                crc32c: 0,
            })
            .collect(),
    }
}

#[tokio::test]
async fn topics_are_created_listed_and_deleted() {
    let catalog = Catalog::new(store(), "c");
    let a = catalog.create_topic(topic("a", 3)).await.unwrap();
    catalog.create_topic(topic("b", 1)).await.unwrap();
    assert!(matches!(
        catalog.create_topic(topic("a", 1)).await,
        Err(CatalogError::TopicExists(name)) if name == "a"
    ));
    let listed = catalog.list_topics().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|t| t.record.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(catalog.get_topic("a").await.unwrap(), Some(a.clone()));

    catalog.delete_topic("a").await.unwrap();
    assert!(catalog.get_topic("a").await.unwrap().is_none());
    assert!(matches!(
        catalog.delete_topic("a").await,
        Err(CatalogError::TopicNotFound(_))
    ));
    let again = catalog.create_topic(topic("a", 3)).await.unwrap();
    assert_ne!(again.id, a.id, "a re-created topic gets a new id");
}

#[tokio::test]
async fn a_commit_is_one_small_transaction_whatever_the_partition_count() {
    let store = store();
    let catalog = Catalog::new(store.clone(), "c");
    let t = catalog.create_topic(topic("wide", 4096)).await.unwrap();
    let fence = catalog.register_writer("b1", 1).await.unwrap();
    store.txn_ops.lock().unwrap().clear();
    catalog
        .commit_segment(
            &fence,
            "b1/0000000000000001-000000000001",
            &commit(t.id, 4096),
        )
        .await
        .unwrap();
    assert_eq!(*store.txn_ops.lock().unwrap(), vec![1]);
    let loaded = catalog.load_segments().await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].0, "b1/0000000000000001-000000000001");
    assert_eq!(loaded[0].1.entries.len(), 4096);
}

#[tokio::test]
async fn a_fenced_writer_commits_nothing() {
    let catalog = Catalog::new(store(), "c");
    let old = catalog.register_writer("b1", 1).await.unwrap();
    let new = catalog.register_writer("b1", 2).await.unwrap();
    let err = catalog
        .commit_segment(&old, "b1/x-1", &commit(1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::Fenced { incarnation: 1, .. }));
    assert!(catalog.load_segments().await.unwrap().is_empty());
    catalog
        .commit_segment(&new, "b1/x-2", &commit(1, 1))
        .await
        .unwrap();
    assert_eq!(catalog.load_segments().await.unwrap().len(), 1);
}

#[tokio::test]
async fn load_segments_pages_through_many_keys() {
    let store = store();
    let catalog = Catalog::new(store.clone(), "c");
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let controller = catalog.campaign("b1", lease).await.unwrap().unwrap();
    let fence = catalog.register_writer("b1", 1).await.unwrap();
    for seq in 0..2100 {
        catalog
            .commit_segment(&fence, &format!("b1/0-{seq:012}"), &commit(1, 1))
            .await
            .unwrap();
    }
    let loaded = catalog.load_segments().await.unwrap();
    assert_eq!(loaded.len(), 2100);
    assert!(loaded.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(
        catalog
            .delete_segment(controller, "b1/0-000000000000")
            .await
            .unwrap()
    );
    assert_eq!(catalog.load_segments().await.unwrap().len(), 2099);
    // Only the controller that is still elected may forget a segment.
    assert!(
        !catalog
            .delete_segment(controller + 1, "b1/0-000000000001")
            .await
            .unwrap()
    );
    assert_eq!(catalog.load_segments().await.unwrap().len(), 2099);
}

#[tokio::test]
async fn log_starts_follow_their_topic() {
    let store = store();
    let catalog = Catalog::new(store.clone(), "c");
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let controller = catalog.campaign("b1", lease).await.unwrap().unwrap();
    let t = catalog.create_topic(topic("t", 2)).await.unwrap();
    assert!(
        catalog
            .set_log_starts(controller, &t, 0, &[3, 4])
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        catalog.load_log_starts().await.unwrap(),
        vec![(t.id, vec![3, 4])]
    );
    catalog.delete_topic("t").await.unwrap();
    assert!(catalog.load_log_starts().await.unwrap().is_empty());
    assert_eq!(
        catalog
            .set_log_starts(controller, &t, 0, &[5, 5])
            .await
            .unwrap(),
        None,
        "a deleted topic gets no log starts"
    );
    assert!(catalog.load_log_starts().await.unwrap().is_empty());
}

/// A controller that was paused past its lease — or whose view is behind — computed its log
/// starts from an older version of the key; its write must not lower what its successor stored.
#[tokio::test]
async fn a_stale_controller_cannot_lower_log_starts() {
    let store = store();
    let catalog = Catalog::new(store.clone(), "c");
    let t = catalog.create_topic(topic("t", 2)).await.unwrap();
    let old_lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let old = catalog.campaign("old", old_lease).await.unwrap().unwrap();
    let first = catalog
        .set_log_starts(old, &t, 0, &[10, 10])
        .await
        .unwrap()
        .unwrap();
    // The old controller is paused; its lease ends and another broker is elected, which
    // advances the log starts.
    store.revoke_lease(old_lease).await.unwrap();
    let new_lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let new = catalog.campaign("new", new_lease).await.unwrap().unwrap();
    let second = catalog
        .set_log_starts(new, &t, first, &[50, 60])
        .await
        .unwrap()
        .unwrap();
    // The old controller wakes up and writes what it computed before the pause.
    assert_eq!(
        catalog
            .set_log_starts(old, &t, first, &[20, 20])
            .await
            .unwrap(),
        None
    );
    // Even as the elected controller, a write computed from an older version is refused.
    assert_eq!(
        catalog
            .set_log_starts(new, &t, first, &[20, 20])
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        catalog.load_log_starts().await.unwrap(),
        vec![(t.id, vec![50, 60])]
    );
    assert!(
        catalog
            .set_log_starts(new, &t, second, &[70, 60])
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn incarnations_only_grow_and_are_never_given_twice() {
    let catalog = Catalog::new(store(), "c");
    catalog.register_writer("b", 5).await.unwrap();
    for stale in [5, 4] {
        assert!(matches!(
            catalog.register_writer("b", stale).await,
            Err(CatalogError::Superseded { current: 5, .. })
        ));
    }
    // Two processes racing for the same incarnation: exactly one wins.
    let (a, b) = tokio::join!(
        catalog.register_writer("b", 6),
        catalog.register_writer("b", 6)
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
}

#[tokio::test]
async fn one_controller_at_a_time() {
    let store = store();
    let catalog = Catalog::new(store.clone(), "c");
    let l1 = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    let l2 = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    let won = catalog.campaign("b1", l1).await.unwrap();
    assert!(won.is_some());
    assert_eq!(catalog.campaign("b2", l2).await.unwrap(), None);
    store.revoke_lease(l1).await.unwrap();
    let second = catalog.campaign("b2", l2).await.unwrap().unwrap();
    assert!(second > won.unwrap());
}

#[tokio::test]
async fn taking_a_partition_away_fences_the_losers_pending_commit() {
    let store = store();
    let catalog = Catalog::new(store.clone(), "c");
    let t = catalog.create_topic(topic("t", 2)).await.unwrap();
    let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    let elected = catalog.campaign("ctl", lease).await.unwrap().unwrap();
    let b1 = catalog.register_writer("b1", 1).await.unwrap();
    let owner = |b: &str, epoch| crate::codec::OwnerRecord {
        v: 1,
        broker_id: b.into(),
        epoch,
    };
    let give = [OwnerChange {
        topic_id: t.id,
        partition: 0,
        owner: Some(owner("b1", 1)),
        seen_mod_revision: 0,
    }];
    assert!(
        catalog
            .change_owners(elected, &give, &[])
            .await
            .unwrap()
            .is_some()
    );
    catalog
        .commit_segment(&b1, "b1/x-1", &commit(t.id, 1))
        .await
        .unwrap();

    // The controller moves partition 0 to b2: b1's key is rewritten, its fence no longer holds.
    let owner_kv = store
        .get(&catalog.keys().owner(t.id, 0))
        .await
        .unwrap()
        .unwrap();
    // Giving it again from a view that missed the first change is refused.
    assert!(
        catalog
            .change_owners(elected, &give, &[])
            .await
            .unwrap()
            .is_none()
    );
    let writer = store
        .get(&catalog.keys().writer("b1"))
        .await
        .unwrap()
        .unwrap();
    let take = [OwnerChange {
        topic_id: t.id,
        partition: 0,
        owner: Some(owner("b2", 2)),
        seen_mod_revision: owner_kv.mod_revision,
    }];
    let loser = FencedWriter {
        broker_id: "b1".into(),
        value: writer.value.clone(),
        mod_revision: writer.mod_revision,
    };
    // A stale view of the loser's key changes nothing.
    let stale = FencedWriter {
        mod_revision: writer.mod_revision - 1,
        ..loser.clone()
    };
    assert!(
        catalog
            .change_owners(elected, &take, &[stale])
            .await
            .unwrap()
            .is_none()
    );
    // Nor does a controller that is no longer elected.
    assert!(
        catalog
            .change_owners(elected + 1, &take, std::slice::from_ref(&loser))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        catalog
            .change_owners(elected, &take, &[loser])
            .await
            .unwrap()
            .is_some()
    );
    let kv = store
        .get(&catalog.keys().owner(t.id, 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(catalog.decode_owner(&kv).unwrap().unwrap(), owner("b2", 2));
    assert!(matches!(
        catalog
            .commit_segment(&b1, "b1/x-2", &commit(t.id, 1))
            .await,
        Err(CatalogError::Fenced { .. })
    ));
    let after = store
        .get(&catalog.keys().writer("b1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.value, writer.value, "the incarnation is kept");
    let refreshed = WriterFence {
        revision: after.mod_revision,
        ..b1
    };
    catalog
        .commit_segment(&refreshed, "b1/x-3", &commit(t.id, 1))
        .await
        .unwrap();
    assert_eq!(catalog.load_segments().await.unwrap().len(), 2);
}

/// A compaction swap commits only from the partition's current writer, only while the topic
/// lives, and only once per range; the controller alone forgets it.
#[tokio::test]
async fn a_compaction_swap_is_fenced_on_the_writer_the_topic_and_the_range() {
    let store = store();
    let catalog = Catalog::new(store.clone(), "c");
    let t = catalog.create_topic(topic("t", 1)).await.unwrap();
    let old = catalog.register_writer("b1", 1).await.unwrap();
    let b1 = catalog.register_writer("b1", 2).await.unwrap();
    let id = Keys::part_id(t.id, 0, 0, 9);
    let part = SegmentCommit {
        object: format!("parts/{id}-b1.seg"),
        ..commit(t.id, 1)
    };
    store.txn_ops.lock().unwrap().clear();
    assert!(
        catalog
            .commit_part(&old, &t, &id, &part)
            .await
            .unwrap()
            .is_none(),
        "a stale incarnation swaps nothing"
    );
    assert!(
        catalog
            .commit_part(&b1, &t, &id, &part)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        catalog
            .commit_part(&b1, &t, &id, &part)
            .await
            .unwrap()
            .is_none(),
        "a range is compacted once"
    );
    // One transaction each: three compares, one put.
    assert_eq!(*store.txn_ops.lock().unwrap(), vec![3, 3, 3]);
    assert_eq!(
        catalog.load_parts().await.unwrap(),
        vec![(id.clone(), part.clone())]
    );

    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let controller = catalog.campaign("b1", lease).await.unwrap().unwrap();
    assert!(!catalog.delete_part(controller + 1, &id).await.unwrap());
    assert!(catalog.delete_part(controller, &id).await.unwrap());
    assert!(catalog.load_parts().await.unwrap().is_empty());

    // A deleted topic takes no new swap.
    catalog.delete_topic("t").await.unwrap();
    assert!(
        catalog
            .commit_part(&b1, &t, &id, &part)
            .await
            .unwrap()
            .is_none()
    );
    assert!(catalog.load_parts().await.unwrap().is_empty());
}

/// Rolling commits into an index page swaps the root and forgets the commits in one fenced
/// transaction, compared on the root's version; unrolling puts them back; the controller alone
/// forgets a deleted topic's root.
#[tokio::test]
async fn an_index_swap_is_fenced_on_the_writer_the_topic_and_the_root_version() {
    let store = store();
    let catalog = Catalog::new(store.clone(), "c");
    let t = catalog.create_topic(topic("t", 1)).await.unwrap();
    let old = catalog.register_writer("b1", 1).await.unwrap();
    let b1 = catalog.register_writer("b1", 2).await.unwrap();
    let ids: Vec<String> = (0..2)
        .map(|i| Keys::part_id(t.id, 0, i * 10, i * 10 + 9))
        .collect();
    for id in &ids {
        catalog
            .commit_part(&b1, &t, id, &commit(t.id, 1))
            .await
            .unwrap()
            .unwrap();
    }
    let page = crate::codec::PageRef {
        object: "index/p1.idx".into(),
        object_len: 1,
        first_offset: 0,
        last_offset: 19,
        bytes: 2,
        max_timestamp: 3,
        level: 0,
    };
    let root = IndexRoot {
        pages: vec![page.clone()],
    };
    let roll = IndexChange {
        seen_root_revision: 0,
        root: &root,
        forget: &ids,
        restore: &[],
    };
    assert!(
        catalog
            .swap_index(&old, &t, 0, roll)
            .await
            .unwrap()
            .is_none(),
        "a stale incarnation swaps nothing"
    );
    let stale = IndexChange {
        seen_root_revision: 7,
        ..roll
    };
    assert!(
        catalog
            .swap_index(&b1, &t, 0, stale)
            .await
            .unwrap()
            .is_none(),
        "a root that is not there is not at revision 7"
    );
    assert_eq!(catalog.load_parts().await.unwrap().len(), 2);
    let gone = vec![ids[0].clone(), "never-committed".to_string()];
    let missing = IndexChange {
        forget: &gone,
        ..roll
    };
    assert!(
        catalog
            .swap_index(&b1, &t, 0, missing)
            .await
            .unwrap()
            .is_none(),
        "a commit to roll that is gone refuses the swap"
    );
    let rolled = catalog.swap_index(&b1, &t, 0, roll).await.unwrap().unwrap();
    assert!(catalog.load_parts().await.unwrap().is_empty());
    assert_eq!(
        catalog.load_index_roots().await.unwrap(),
        vec![((t.id, 0), root.clone())]
    );
    assert!(
        catalog
            .swap_index(&b1, &t, 0, roll)
            .await
            .unwrap()
            .is_none(),
        "a second writer from the same view loses"
    );
    // Unrolled: the commits are back and the root has no page.
    let restore: Vec<_> = ids.iter().map(|id| (id.clone(), commit(t.id, 1))).collect();
    let empty = IndexRoot::default();
    let unroll = IndexChange {
        seen_root_revision: rolled,
        root: &empty,
        forget: &[],
        restore: &restore,
    };
    catalog
        .swap_index(&b1, &t, 0, unroll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(catalog.load_parts().await.unwrap().len(), 2);
    assert_eq!(catalog.load_index_roots().await.unwrap()[0].1, empty);

    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let controller = catalog.campaign("b1", lease).await.unwrap().unwrap();
    catalog.delete_topic("t").await.unwrap();
    assert!(
        catalog
            .swap_index(&b1, &t, 0, unroll)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !catalog
            .delete_index_root(controller + 1, t.id, 0)
            .await
            .unwrap()
    );
    assert!(
        catalog
            .delete_index_root(controller, t.id, 0)
            .await
            .unwrap()
    );
    assert!(catalog.load_index_roots().await.unwrap().is_empty());
}

fn offset(o: i64) -> crate::codec::OffsetRecord {
    crate::codec::OffsetRecord {
        offset: o,
        leader_epoch: -1,
        metadata: format!("m{o}"),
        committed_at_ms: 9,
    }
}

fn offset_commit(group: &str, partition: u32, o: i64) -> OffsetCommit {
    OffsetCommit {
        slot: 3,
        group: group.into(),
        topic_id: 7,
        partition,
        record: offset(o),
    }
}

#[tokio::test]
async fn a_group_record_is_a_compare_and_set_behind_the_coordinators_fence() {
    let catalog = Catalog::new(store(), "c");
    let fence = catalog.register_writer("b1", 1).await.unwrap();
    let r1 = catalog
        .save_group(&fence, 3, "orders/eu", b"one".to_vec(), 0)
        .await
        .unwrap()
        .expect("created");
    // A writer that believes the record is still absent, or at an older revision, writes nothing.
    for stale in [0, r1 - 1] {
        assert!(
            catalog
                .save_group(&fence, 3, "orders/eu", b"lost".to_vec(), stale)
                .await
                .unwrap()
                .is_none()
        );
    }
    let r2 = catalog
        .save_group(&fence, 3, "orders/eu", b"two".to_vec(), r1)
        .await
        .unwrap()
        .expect("updated");
    // A new incarnation (or a controller taking a slot away) rewrites the writer key: the
    // old fence writes nothing, records or offsets.
    let newer = catalog.register_writer("b1", 2).await.unwrap();
    assert!(
        catalog
            .save_group(&fence, 3, "orders/eu", b"zombie".to_vec(), r2)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        catalog
            .commit_offsets(&fence, &[offset_commit("orders/eu", 0, 5)])
            .await
            .unwrap()
            .is_none()
    );
    catalog
        .commit_offsets(
            &newer,
            &[
                offset_commit("orders/eu", 0, 5),
                offset_commit("orders/eu", 1, 8),
                offset_commit("other", 0, 1),
            ],
        )
        .await
        .unwrap()
        .expect("committed");
    let groups = catalog.load_group_slot(3).await.unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].group, "orders/eu");
    assert_eq!(groups[0].record.as_deref(), Some(&b"two"[..]));
    assert_eq!(groups[0].mod_revision, r2);
    assert_eq!(
        groups[0].offsets,
        vec![((7, 0), offset(5)), ((7, 1), offset(8))]
    );
    assert_eq!(groups[1].group, "other");
    assert_eq!(groups[1].record, None, "offsets without a record");
    assert!(catalog.load_group_slot(4).await.unwrap().is_empty());

    // Deleting takes the record and every offset, and only from the revision it was shown.
    assert!(
        catalog
            .delete_group(&newer, 3, "orders/eu", r1)
            .await
            .unwrap()
            .is_none()
    );
    catalog
        .delete_group(&newer, 3, "orders/eu", r2)
        .await
        .unwrap()
        .expect("deleted");
    let groups = catalog.load_group_slot(3).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group, "other");
}

#[tokio::test]
async fn group_keys_stay_out_of_the_cluster_view() {
    let catalog = Catalog::new(store(), "c");
    catalog.create_topic(topic("t", 1)).await.unwrap();
    let fence = catalog.register_writer("b1", 1).await.unwrap();
    catalog
        .save_group(&fence, 0, "g", b"r".to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    catalog
        .commit_offsets(&fence, &[offset_commit("g", 0, 1)])
        .await
        .unwrap()
        .unwrap();
    let (_, kvs) = catalog.load_all().await.unwrap();
    assert!(!kvs.is_empty());
    assert!(
        kvs.iter()
            .all(|kv| catalog.keys().parse_group_key(&kv.key).is_none()),
        "the view loads no group key"
    );
}

#[tokio::test]
async fn a_topic_change_is_a_compare_and_set_on_its_record_and_id() {
    let catalog = Catalog::new(store(), "c");
    let created = catalog.create_topic(topic("t", 2)).await.unwrap();
    let (read, seen) = catalog.get_topic_versioned("t").await.unwrap().unwrap();
    assert_eq!(read, created);
    let mut changed = read.record.clone();
    changed.retention_bytes = 1 << 20;
    let applied = catalog
        .replace_topic(created.id, seen, &changed)
        .await
        .unwrap()
        .expect("applied");
    // A writer that read before that change writes nothing.
    let mut stale = read.record.clone();
    stale.retention_ms = 5;
    assert!(
        catalog
            .replace_topic(created.id, seen, &stale)
            .await
            .unwrap()
            .is_none()
    );
    // Nor does one whose topic was deleted and re-created meanwhile.
    catalog.delete_topic("t").await.unwrap();
    let again = catalog.create_topic(topic("t", 2)).await.unwrap();
    let (_, seen_again) = catalog.get_topic_versioned("t").await.unwrap().unwrap();
    assert!(
        catalog
            .replace_topic(created.id, seen_again, &stale)
            .await
            .unwrap()
            .is_none(),
        "the old topic id no longer matches"
    );
    let (now, _) = catalog.get_topic_versioned("t").await.unwrap().unwrap();
    assert_eq!(now, again, "the new topic is untouched");
    assert!(applied > 0);
}
