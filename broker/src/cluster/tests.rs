//! The cluster view and the controller on one embedded store: several "brokers" in one process.

use std::time::Duration;

use silt_metadata::codec::{
    BrokerRecord, CleanupPolicy, DEFAULT_DELETE_RETENTION_MS, SegmentCommit, SegmentEntry,
    TopicRecord,
};
use silt_metadata::store::{Op, Txn};
use silt_metadata::{EmbeddedStore, LeaseId, ManualClock, MetaStore};

use super::*;
use crate::cluster::controller::Controller;

pub(crate) struct Node {
    pub(crate) view: Arc<ClusterView>,
    pub(crate) lease: LeaseId,
    pub(crate) cancel: CancellationToken,
}

/// A broker's view and controller on `catalog`, registered as `id`, once its view is ready.
pub(crate) async fn node(catalog: &Catalog, id: &str) -> Node {
    let incarnation = 1;
    let lease = catalog
        .store()
        .grant_lease(Duration::from_secs(3600))
        .await
        .unwrap();
    catalog
        .register_broker(
            &BrokerRecord {
                v: 1,
                broker_id: id.into(),
                address: format!("{id}:1"),
                incarnation,
                started_at_ms: 0,
                formats: Vec::new(),
            },
            lease,
        )
        .await
        .unwrap();
    let view = Arc::new(ClusterView::new(
        catalog.clone(),
        id.into(),
        incarnation,
        Arc::new(TopicTable::default()),
        Arc::new(LogIndex::new()),
    ));
    let from = view.load().await.unwrap();
    assert!(!view.is_ready());
    let fence = catalog.register_writer(id, incarnation).await.unwrap();
    view.set_ready_at(fence.revision);
    let cancel = CancellationToken::new();
    tokio::spawn(view.clone().run(from, cancel.clone()));
    assert!(view.wait_ready(Duration::from_secs(10)).await);
    let controller = Controller {
        view: view.clone(),
        catalog: catalog.clone(),
        topics: view.topics.clone(),
        lease: watch::channel(lease).1,
    };
    tokio::spawn(controller.run(cancel.clone()));
    Node {
        view,
        lease,
        cancel,
    }
}

pub(crate) fn topic(name: &str, partitions: u32) -> TopicRecord {
    TopicRecord {
        v: 1,
        name: name.into(),
        partitions,
        retention_ms: -1,
        retention_bytes: -1,
        max_record_bytes: 1 << 20,
        created_at_ms: 0,
        cleanup_policy: CleanupPolicy::Delete,
        delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
    }
}

/// An in-memory object store and a read cache over it, for housekeeping tests.
async fn memory_objects() -> (
    Arc<dyn object_store::ObjectStore>,
    Arc<silt_storage::cache::SegmentCache>,
) {
    let objects: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let cache = silt_storage::cache::SegmentCache::open(
        objects.clone(),
        silt_storage::cache::ReadCacheConfig::default(),
    )
    .await
    .unwrap();
    (objects, Arc::new(cache))
}

/// A housekeeper running as `node` over `objects`, on `clock`, with `gc_grace_ms`.
fn housekeeper_for(
    catalog: &Catalog,
    node: &Node,
    (objects, cache): &(
        Arc<dyn object_store::ObjectStore>,
        Arc<silt_storage::cache::SegmentCache>,
    ),
    clock: Arc<ManualClock>,
    gc_grace_ms: i64,
) -> crate::housekeeping::Housekeeper {
    crate::housekeeping::Housekeeper {
        catalog: catalog.clone(),
        topics: node.view.topics.clone(),
        index: node.view.index.clone(),
        store: objects.clone(),
        cache: cache.clone(),
        clock,
        fence: node.view.flush_snapshot(std::iter::empty()).fence.unwrap(),
        view: node.view.clone(),
        metrics: Arc::new(crate::observe::metrics::Metrics::new("t", 0)),
        gc_grace_ms,
        unreferenced: Default::default(),
        history: crate::housekeeping::HistoryCompaction::keeping(0),
        page_objects: Default::default(),
        archive_refs: Default::default(),
    }
}

/// The objects under `prefixes`, sorted.
async fn listed(objects: &Arc<dyn object_store::ObjectStore>, prefixes: &[&str]) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in prefixes {
        let metas: Vec<_> = futures::TryStreamExt::try_collect(
            objects.list(Some(&object_store::path::Path::from(*prefix))),
        )
        .await
        .unwrap();
        names.extend(metas.into_iter().map(|m| m.location.to_string()));
    }
    names.sort();
    names
}

/// A GC test's start: a catalog with topic `t` of `partitions`, in-memory objects, and node
/// `a` once it is the controller and owns every partition.
async fn gc_fixture(
    partitions: u32,
) -> (
    Catalog,
    silt_metadata::catalog::Topic,
    (
        Arc<dyn object_store::ObjectStore>,
        Arc<silt_storage::cache::SegmentCache>,
    ),
    Node,
) {
    let store: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    let catalog = Catalog::new(store, "c");
    let t = catalog.create_topic(topic("t", partitions)).await.unwrap();
    let stores = memory_objects().await;
    let a = node(&catalog, "a").await;
    until("a controls and owns the topic", || {
        a.view.controller_revision_if_me().is_some() && counts(&a.view) == vec![partitions]
    })
    .await;
    (catalog, t, stores, a)
}

/// Waits (bounded) until `f` holds.
pub(crate) async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn counts(view: &ClusterView) -> Vec<u32> {
    let mut c: Vec<u32> = view.owned_counts().into_values().collect();
    c.sort();
    c
}

#[tokio::test]
async fn brokers_share_partitions_evenly_and_take_over_a_leavers() {
    let store: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    let catalog = Catalog::new(store.clone(), "c");
    let t = catalog.create_topic(topic("t", 8)).await.unwrap();
    let a = node(&catalog, "a").await;
    let b = node(&catalog, "b").await;
    let c = node(&catalog, "c").await;
    until("8 partitions over 3 brokers", || {
        counts(&a.view) == vec![2, 3, 3]
    })
    .await;
    // Every view agrees, and exactly one controller exists.
    until("views agree", || {
        b.view.owners() == a.view.owners() && c.view.owners() == a.view.owners()
    })
    .await;
    assert!(a.view.controller().is_some());

    // b leaves: its partitions, and only those, move; the epochs of moved partitions grow and
    // b's writer key is rewritten (fencing its pending commits).
    let before = a.view.owners();
    let b_writer = a.view.writer("b").unwrap();
    b.cancel.cancel();
    store.revoke_lease(b.lease).await.unwrap();
    until("8 partitions over 2 brokers", || {
        counts(&a.view) == vec![4, 4]
    })
    .await;
    let after = a.view.owners();
    for (p, o) in &before {
        let now = &after[p];
        if o.broker_id == "b" {
            assert_ne!(now.broker_id, "b");
            assert_eq!(now.epoch, o.epoch + 1);
        } else {
            assert_eq!(now, o, "partition {p:?} of a survivor moved");
        }
    }
    until("b fenced", || {
        a.view.writer("b").unwrap().mod_revision > b_writer.mod_revision
    })
    .await;

    // A commit by the owner of a partition is visible on every other broker.
    let (owner, other) = match a.view.owner((t.id, 0)) {
        Owner::Me(_) => (&a, &c),
        _ => (&c, &a),
    };
    let fence = owner.view.flush_snapshot(std::iter::empty()).fence.unwrap();
    let commit = SegmentCommit {
        object: "segments/x.seg".into(),
        object_len: 100,
        created_at_ms: 0,
        entries: vec![SegmentEntry {
            topic_id: t.id,
            partition: 0,
            batch_count: 1,
            first_offset: 0,
            last_offset: 9,
            min_timestamp: 1,
            max_timestamp: 2,
            position: 16,
            length: 50,
            crc32c: 0,
        }],
    };
    catalog.commit_segment(&fence, "x", &commit).await.unwrap();
    until("the commit reaches the other broker", || {
        other.view.index.partition(t.id, 0).offsets().high_watermark == 10
    })
    .await;
    a.cancel.cancel();
    c.cancel.cancel();
}

#[tokio::test]
async fn a_newer_incarnation_supersedes_the_old_process() {
    let store: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    let catalog = Catalog::new(store.clone(), "c");
    let t = catalog.create_topic(topic("t", 2)).await.unwrap();
    let a = node(&catalog, "a").await;
    until("a owns both", || counts(&a.view) == vec![2]).await;
    assert!(
        a.view
            .flush_snapshot([(t.id, 0)].into_iter())
            .fence
            .is_some()
    );
    catalog.register_writer("a", 2).await.unwrap();
    until("the old process knows", || !a.view.is_current()).await;
    let snap = a.view.flush_snapshot([(t.id, 0)].into_iter());
    assert!(snap.fence.is_none(), "an old incarnation gets no fence");
    a.cancel.cancel();
}

#[tokio::test]
async fn topics_created_and_deleted_elsewhere_reach_every_view() {
    let store: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    let catalog = Catalog::new(store.clone(), "c");
    let a = node(&catalog, "a").await;
    let t = catalog.create_topic(topic("late", 3)).await.unwrap();
    until("topic and owners", || {
        a.view.topics.get("late").is_some() && counts(&a.view) == vec![3]
    })
    .await;
    catalog.delete_topic("late").await.unwrap();
    until("topic and owners gone", || {
        a.view.topics.get("late").is_none() && a.view.owners().is_empty()
    })
    .await;
    assert!(matches!(a.view.owner((t.id, 0)), Owner::Unowned));
    a.cancel.cancel();
}

/// A controller paused (or cut off) past its lease wakes up with a view from before the pause.
/// Its retention pass must not write that view's older, lower log starts over its successor's:
/// a broker that later loads the cluster would compute a high watermark stopping at the gap the
/// successor's GC left, and a new owner would hand out acknowledged offsets again.
#[tokio::test]
async fn a_stale_controller_cannot_lower_log_starts_or_collect_segments() {
    let store: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    let catalog = Catalog::new(store.clone(), "c");
    let mut record = topic("t", 2);
    record.retention_ms = 1_000;
    let t = catalog.create_topic(record).await.unwrap();
    let objects = memory_objects().await;
    let housekeeper = |node: &Node, now_ms: i64| {
        housekeeper_for(&catalog, node, &objects, ManualClock::new(now_ms), 0)
    };
    // Partition 0: [0, 10) at t=100, [10, 20) at t=700, [20, 30) at t=10 000.
    // Partition 1: [0, 10) at t=500, [10, 20) at t=10 000. One segment per range.
    let a = node(&catalog, "a").await;
    until("a controls and owns both", || {
        a.view.controller_revision_if_me().is_some() && counts(&a.view) == vec![2]
    })
    .await;
    let fence = a.view.flush_snapshot(std::iter::empty()).fence.unwrap();
    for (n, (p, first, ts)) in [
        (0, 0, 100),
        (0, 10, 700),
        (0, 20, 10_000),
        (1, 0, 500),
        (1, 10, 10_000),
    ]
    .into_iter()
    .enumerate()
    {
        let entry = SegmentEntry {
            topic_id: t.id,
            partition: p,
            batch_count: 1,
            first_offset: first,
            last_offset: first + 9,
            min_timestamp: ts,
            max_timestamp: ts,
            position: 16,
            length: 50,
            crc32c: 0,
        };
        let commit = SegmentCommit {
            object: format!("segments/a/{n}.seg"),
            object_len: 100,
            created_at_ms: 0,
            entries: vec![entry],
        };
        catalog
            .commit_segment(&fence, &format!("a/{n}"), &commit)
            .await
            .unwrap();
    }
    until("a sees its commits", || {
        a.view.index.partition(t.id, 0).offsets().high_watermark == 30
            && a.view.index.partition(t.id, 1).offsets().high_watermark == 20
    })
    .await;
    // The newest write is one the view never sees (another cluster's key): collection does
    // not wait for the view to reach the store's revision, only the commits' own.
    store
        .txn(Txn::new().and_then([Op::put(b"/silt/other/k".to_vec(), b"v".to_vec())]))
        .await
        .unwrap();
    // a, as controller at cutoff 150, trims partition 0 to 10 and collects [0, 10).
    let pass = tokio::time::timeout(Duration::from_secs(5), housekeeper(&a, 1_150).pass())
        .await
        .expect("the pass does not wait on a revision the view never applies")
        .unwrap();
    assert_eq!((pass.partitions_trimmed, pass.segments_deleted), (1, 1));
    until("a sees its own retention", || {
        a.view.log_start_revision(t.id) > 0
    })
    .await;

    // a is paused: its view freezes (controller = a, log starts [10, 0]); its lease runs out.
    a.cancel.cancel();
    store.revoke_lease(a.lease).await.unwrap();
    let b = node(&catalog, "b").await;
    until("b is elected", || {
        b.view.controller_revision_if_me().is_some()
    })
    .await;
    // b, at cutoff 750, trims partition 0 to 20 and partition 1 to 10, and collects [10, 20) of
    // partition 0 and [0, 10) of partition 1.
    let pass = housekeeper(&b, 1_750).pass().await.unwrap();
    assert_eq!((pass.partitions_trimmed, pass.segments_deleted), (2, 2));
    assert_eq!(
        catalog.load_log_starts().await.unwrap(),
        vec![(t.id, vec![20, 10])]
    );

    // a wakes up at cutoff 600: its stale view expires partition 1's first range and would
    // write [10, 10], lowering partition 0 from 20 to 10; and it still thinks it may collect.
    let pass = housekeeper(&a, 1_600).pass().await.unwrap();
    assert_eq!(
        pass,
        crate::housekeeping::Pass::default(),
        "a stale controller changes nothing"
    );
    assert_eq!(
        catalog.load_log_starts().await.unwrap(),
        vec![(t.id, vec![20, 10])],
        "no log start moved backwards"
    );
    assert_eq!(catalog.load_segments().await.unwrap().len(), 2);

    // A broker loading the cluster now continues partition 0 after offset 29, not at 10.
    let c = node(&catalog, "c").await;
    assert_eq!(
        c.view.index.partition(t.id, 0).offsets().high_watermark,
        30,
        "no acknowledged offset is handed out again"
    );
    assert_eq!(c.view.index.partition(t.id, 1).offsets().high_watermark, 20);
    b.cancel.cancel();
    c.cancel.cancel();
}

/// The worst case for an ownership transaction: every moved partition comes from a different
/// broker, so each change adds an owner compare and a writer compare and put. 64 such changes
/// are more than one transaction may hold (etcd's default 128 operations); the controller must
/// split them, not retry one oversized transaction forever.
#[tokio::test]
async fn the_controller_moves_64_partitions_from_64_dead_brokers() {
    let store: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    let catalog = Catalog::new(store.clone(), "c");
    let t = catalog.create_topic(topic("t", 64)).await.unwrap();
    let mut fences = Vec::new();
    for p in 0..64u32 {
        let dead = format!("dead-{p}");
        fences.push(catalog.register_writer(&dead, 1).await.unwrap());
        let owner = OwnerRecord {
            v: 1,
            broker_id: dead,
            epoch: 1,
        };
        store
            .put(&catalog.keys().owner(t.id, p), &codec::encode_owner(&owner))
            .await
            .unwrap();
    }
    let live = node(&catalog, "live").await;
    until("the live broker owns all 64", || {
        counts(&live.view) == vec![64]
    })
    .await;
    for fence in &fences {
        let writer = live.view.writer(&fence.broker_id).unwrap();
        assert!(
            writer.mod_revision > fence.revision,
            "{} was fenced",
            fence.broker_id
        );
    }
    live.cancel.cancel();
}

/// The core's routing over a real cluster view, with a recording forwarder in place of the
/// gRPC hop: parts owned elsewhere go to their owner's address, keyed records where the
/// partitioner puts them, and a forwarded request is never forwarded again.
#[tokio::test]
async fn routing_sends_each_part_to_its_owner_once() {
    use std::sync::Mutex as StdMutex;

    use async_trait::async_trait;
    use bytes::Bytes;

    use crate::core::produce::{ProduceLimits, ProducePath};
    use crate::core::routing::Router;
    use crate::core::wal_cache::{BatchAck, WalCache};
    use crate::core::{BrokerError, ErrorKind, Forwarder, Hop, Murmur2, RecordAck, RecordInput};
    use crate::observe::metrics::Metrics;

    #[derive(Debug, Default)]
    struct Recorder(StdMutex<Vec<(String, Vec<u32>)>>);

    #[async_trait]
    impl Forwarder for Recorder {
        async fn produce_batches(
            &self,
            owner: &str,
            _topic: &str,
            batches: Vec<(u32, Bytes)>,
        ) -> Result<Vec<BatchAck>, BrokerError> {
            let partitions: Vec<u32> = batches.iter().map(|(p, _)| *p).collect();
            self.0
                .lock()
                .unwrap()
                .push((owner.into(), partitions.clone()));
            Ok(partitions
                .into_iter()
                .map(|partition| BatchAck {
                    partition,
                    base_offset: 7,
                    last_offset: 7,
                })
                .collect())
        }

        async fn produce_records(
            &self,
            owner: &str,
            _topic: &str,
            records: Vec<RecordInput>,
        ) -> Result<Vec<Result<RecordAck, BrokerError>>, BrokerError> {
            let partitions: Vec<u32> = records.iter().map(|r| r.partition.unwrap()).collect();
            self.0
                .lock()
                .unwrap()
                .push((owner.into(), partitions.clone()));
            Ok(partitions
                .into_iter()
                .map(|partition| {
                    Ok(RecordAck {
                        partition,
                        offset: 9,
                    })
                })
                .collect())
        }
    }

    let store: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    let catalog = Catalog::new(store.clone(), "c");
    catalog.create_topic(topic("t", 4)).await.unwrap();
    // Only "owner" runs a controller loop at first, so it owns every partition; "edge" joins.
    let owner = node(&catalog, "owner").await;
    until("owner owns all", || counts(&owner.view) == vec![4]).await;
    owner.cancel.cancel();
    let edge = node(&catalog, "edge").await;
    until("edge sees the owners", || edge.view.owners().len() == 4).await;
    let (wal, _out) = WalCache::new(1 << 20, 1 << 20, Duration::from_secs(60));
    let produce = Arc::new(ProducePath::new(
        edge.view.topics.clone(),
        Arc::new(wal),
        ManualClock::new(0),
        Arc::new(Metrics::new("b", 1 << 30)),
        ProduceLimits {
            max_request_bytes: 1 << 20,
            max_request_records: 100,
            max_batch_bytes: 1 << 20,
            max_uncompressed_bytes: 1 << 20,
        },
    ));
    let recorder = Arc::new(Recorder::default());
    let router = Router::new(
        edge.view.clone(),
        produce,
        recorder.clone(),
        Arc::new(Murmur2),
    );
    // "owner" still holds the controller key (its lease lives on) but runs no controller
    // loop: nothing moves, and "edge" owns nothing.
    assert_eq!(counts(&edge.view), vec![4]);
    assert!(edge.view.owners().values().all(|o| o.broker_id == "owner"));
    let records = vec![
        RecordInput {
            key: Some(Bytes::from_static(b"21")),
            value: Some(Bytes::from_static(b"v")),
            ..RecordInput::default()
        },
        RecordInput {
            value: Some(Bytes::from_static(b"v")),
            partition: Some(3),
            ..RecordInput::default()
        },
    ];
    let results = router
        .produce_records(Hop::FromClient, "t", records.clone())
        .await
        .unwrap();
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(RecordAck { offset: 9, .. })))
    );
    let sent = recorder.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "one hop for the owner's part: {sent:?}");
    assert_eq!(sent[0].0, "owner:1");
    let keyed = crate::core::Partitioner::partition(&Murmur2, b"21", 4);
    assert_eq!(sent[0].1, vec![keyed, 3]);

    let err = router
        .produce_records(Hop::Forwarded, "t", records)
        .await
        .unwrap()
        .remove(0)
        .unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::NotOwner {
            owner: Some("owner:1".into())
        }
    );
    assert_eq!(recorder.0.lock().unwrap().len(), 1, "never forwarded twice");
    edge.cancel.cancel();
}

/// Coordinator slots are spread like partitions; a coordinator's fence holds only while it
/// owns the slot, and a slot taken away fails the old coordinator's group writes.
#[tokio::test]
async fn coordinator_slots_are_shared_and_fenced() {
    use silt_metadata::keys::GROUP_SLOTS;
    let store: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    let catalog = Catalog::new(store.clone(), "c");
    let a = node(&catalog, "a").await;
    until("a coordinates every slot", || {
        (0..GROUP_SLOTS).all(|s| matches!(a.view.slot_owner(s), Owner::Me(_)))
    })
    .await;
    assert!(a.view.owners().is_empty(), "slots are not topic partitions");
    let slot = 5;
    let stale = a.view.coordinator_fence(slot).expect("a owns the slot");
    let revision = catalog
        .save_group(&stale, slot, "g", b"one".to_vec(), 0)
        .await
        .unwrap()
        .expect("written under a's fence");

    let b = node(&catalog, "b").await;
    until("two brokers share the slots", || {
        let mine = (0..GROUP_SLOTS)
            .filter(|s| matches!(a.view.slot_owner(*s), Owner::Me(_)))
            .count();
        mine == GROUP_SLOTS as usize / 2
            && (0..GROUP_SLOTS).all(|s| !matches!(b.view.slot_owner(s), Owner::Unowned))
    })
    .await;
    // Whoever holds slot 5 now, a's old fence writes nothing: moving any slot (or partition)
    // away from a rewrote a's writer key.
    assert!(
        catalog
            .save_group(&stale, slot, "g", b"zombie".to_vec(), revision)
            .await
            .unwrap()
            .is_none()
    );
    let (owner, other) = match a.view.slot_owner(slot) {
        Owner::Me(_) => (&a, &b),
        _ => (&b, &a),
    };
    assert!(other.view.coordinator_fence(slot).is_none());
    let fresh = owner
        .view
        .coordinator_fence(slot)
        .expect("the owner's fence");
    catalog
        .save_group(&fresh, slot, "g", b"two".to_vec(), revision)
        .await
        .unwrap()
        .expect("the current coordinator writes");
}

/// Object GC on the injected clock: an object no commit references is deleted only once it has
/// been seen unreferenced for the grace period (an orphan from its first sighting, a forgotten
/// commit's object from the pass that forgot it), and a referenced one never.
#[tokio::test]
async fn unreferenced_objects_go_after_the_grace_period_and_referenced_ones_stay() {
    use object_store::ObjectStoreExt;
    use object_store::path::Path;

    let (catalog, t, stores, a) = gc_fixture(1).await;
    let objects = stores.0.clone();
    let fence = a.view.flush_snapshot(std::iter::empty()).fence.unwrap();
    for name in ["segments/a/committed.seg", "segments/a/orphan.seg"] {
        objects
            .put(&Path::from(name), bytes::Bytes::from_static(b"x").into())
            .await
            .unwrap();
    }
    let entry = SegmentEntry {
        topic_id: t.id,
        partition: 0,
        batch_count: 1,
        first_offset: 0,
        last_offset: 9,
        min_timestamp: 0,
        max_timestamp: 0,
        position: 16,
        length: 50,
        crc32c: 0,
    };
    let commit = SegmentCommit {
        object: "segments/a/committed.seg".into(),
        object_len: 1,
        created_at_ms: 0,
        entries: vec![entry],
    };
    catalog
        .commit_segment(&fence, "a/committed", &commit)
        .await
        .unwrap();
    until("a sees its commit", || {
        a.view.index.partition(t.id, 0).offsets().high_watermark == 10
    })
    .await;
    let clock = ManualClock::new(1_000);
    let housekeeper = housekeeper_for(&catalog, &a, &stores, clock.clone(), 500);
    let listed = || listed(&objects, &["segments"]);

    // The orphan is first seen at 1000; it stays at 1400 and goes at 1500.
    assert_eq!(housekeeper.pass().await.unwrap().objects_deleted, 0);
    clock.advance_ms(400);
    assert_eq!(housekeeper.pass().await.unwrap().objects_deleted, 0);
    assert_eq!(listed().await.len(), 2);
    clock.advance_ms(100);
    assert_eq!(housekeeper.pass().await.unwrap().objects_deleted, 1);
    assert_eq!(listed().await, vec!["segments/a/committed.seg".to_string()]);

    // The topic goes: its commit is forgotten at 2000 and its object follows 500 ms later, not
    // at once (a reader may still hold the entry).
    catalog.delete_topic("t").await.unwrap();
    until("a sees the topic go", || a.view.topics.get("t").is_none()).await;
    clock.advance_ms(500);
    let pass = housekeeper.pass().await.unwrap();
    assert_eq!((pass.segments_deleted, pass.objects_deleted), (1, 0));
    clock.advance_ms(499);
    assert_eq!(housekeeper.pass().await.unwrap().objects_deleted, 0);
    assert_eq!(listed().await.len(), 1);
    clock.advance_ms(1);
    assert_eq!(housekeeper.pass().await.unwrap().objects_deleted, 1);
    assert!(listed().await.is_empty());
    assert!(catalog.load_segments().await.unwrap().is_empty());
    a.cancel.cancel();
}

/// GC over index pages and archives: what a readable page references stays, an unreadable
/// page keeps its whole partition's objects (what it references is unknown) and an unreadable
/// archive also its index objects, while the rest of the cluster is collected; once they read
/// again their partitions' unreferenced objects go too, and a page an archive holds stays.
#[tokio::test]
async fn gc_keeps_what_pages_reference_and_a_partition_whose_page_is_unreadable() {
    use object_store::ObjectStoreExt;
    use object_store::path::Path;
    use silt_metadata::catalog::IndexChange;
    use silt_metadata::codec::{
        IndexArchive, IndexPage, IndexRoot, PageRef, encode_index_archive, encode_index_page,
    };

    let (catalog, t, stores, a) = gc_fixture(3).await;
    let objects = stores.0.clone();
    let fence = a.view.flush_snapshot(std::iter::empty()).fence.unwrap();
    let put = |name: String, body: Vec<u8>| {
        let objects = objects.clone();
        async move {
            objects
                .put(&Path::from(name), bytes::Bytes::from(body).into())
                .await
                .unwrap();
        }
    };
    let part = |p: u32, name: &str| format!("parts/{:016x}/{p}/{name}", t.id);
    let page_path = |p: u32| format!("index/{:016x}/{p}/0-9-a.idx", t.id);
    let page = |p: u32, object: String| {
        encode_index_page(&IndexPage {
            topic_id: t.id,
            partition: p,
            parts: vec![(
                format!("{p}-commit"),
                SegmentCommit {
                    object,
                    object_len: 1,
                    created_at_ms: 0,
                    entries: vec![SegmentEntry {
                        topic_id: t.id,
                        partition: p,
                        batch_count: 1,
                        first_offset: 0,
                        last_offset: 9,
                        min_timestamp: 0,
                        max_timestamp: 0,
                        position: 16,
                        length: 50,
                        crc32c: 0,
                    }],
                },
            )],
        })
    };
    let reference = |object: String, level: u8| PageRef {
        object,
        object_len: 1,
        first_offset: 0,
        last_offset: 9,
        bytes: 50,
        max_timestamp: 0,
        level,
    };
    let archive_path = format!("index/{:016x}/2/0-9-a.ida", t.id);
    let archive = encode_index_archive(&IndexArchive {
        topic_id: t.id,
        partition: 2,
        refs: vec![reference(page_path(2), 0)],
    });
    // Partition 0: a readable page. Partition 1: a page that does not decode. Partition 2:
    // an archive (of a readable page) that does not decode.
    put(page_path(0), page(0, part(0, "kept.obj"))).await;
    put(page_path(1), b"not an index page".to_vec()).await;
    put(page_path(2), page(2, part(2, "kept.obj"))).await;
    put(archive_path.clone(), b"not an index archive".to_vec()).await;
    for name in [
        part(0, "kept.obj"),
        part(0, "orphan.obj"),
        part(1, "kept.obj"),
        part(1, "orphan.obj"),
        part(2, "kept.obj"),
        part(2, "orphan.obj"),
        "segments/a/orphan.seg".to_string(),
    ] {
        put(name, b"x".to_vec()).await;
    }
    for p in 0..3 {
        let root = IndexRoot {
            pages: vec![if p == 2 {
                reference(archive_path.clone(), 1)
            } else {
                reference(page_path(p), 0)
            }],
        };
        let change = IndexChange {
            seen_root_revision: 0,
            root: &root,
            forget: &[],
            restore: &[],
        };
        catalog
            .swap_index(&fence, &t, p, change)
            .await
            .unwrap()
            .expect("the owner swaps");
    }
    until("a sees the roots", || {
        (0..3).all(|p| a.view.index.partition(t.id, p).offsets().high_watermark == 10)
    })
    .await;
    let clock = ManualClock::new(1_000);
    let housekeeper = housekeeper_for(&catalog, &a, &stores, clock.clone(), 500);
    let listed = || listed(&objects, &["segments", "parts", "index"]);

    // Past the grace period the orphans of partition 0 and of the flushes go; partitions 1
    // and 2 keep everything, a page or an archive unreadable (the page under the archive too,
    // though no root names it).
    assert_eq!(housekeeper.pass().await.unwrap().objects_deleted, 0);
    clock.advance_ms(500);
    assert_eq!(housekeeper.pass().await.unwrap().objects_deleted, 2);
    let mut expected = vec![
        page_path(0),
        page_path(1),
        page_path(2),
        archive_path.clone(),
        part(0, "kept.obj"),
        part(1, "kept.obj"),
        part(1, "orphan.obj"),
        part(2, "kept.obj"),
        part(2, "orphan.obj"),
    ];
    expected.sort();
    assert_eq!(listed().await, expected);

    // The page and the archive read again: their partitions' orphans go after their own grace
    // period; the page the archive holds, and what it references, stay.
    put(page_path(1), page(1, part(1, "kept.obj"))).await;
    put(archive_path.clone(), archive).await;
    assert_eq!(housekeeper.pass().await.unwrap().objects_deleted, 0);
    clock.advance_ms(500);
    assert_eq!(housekeeper.pass().await.unwrap().objects_deleted, 2);
    expected.retain(|p| *p != part(1, "orphan.obj") && *p != part(2, "orphan.obj"));
    assert_eq!(listed().await, expected);
    a.cancel.cancel();
}
