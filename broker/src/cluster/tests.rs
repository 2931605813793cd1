//! The cluster view and the controller on one embedded store: several "brokers" in one process.

use std::time::Duration;

use silt_metadata::codec::{BrokerRecord, CommitEntry, SegmentCommit, TopicRecord};
use silt_metadata::{EmbeddedStore, LeaseId, ManualClock, MetaStore};

use super::*;
use crate::controller::Controller;

struct Node {
    view: Arc<ClusterView>,
    lease: LeaseId,
    cancel: CancellationToken,
}

async fn node(catalog: &Catalog, id: &str) -> Node {
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

fn topic(name: &str, partitions: u32) -> TopicRecord {
    TopicRecord {
        v: 1,
        name: name.into(),
        partitions,
        retention_ms: -1,
        max_record_bytes: 1 << 20,
        created_at_ms: 0,
    }
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
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
        entries: vec![CommitEntry {
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
