//! The coordinator over a real cluster view and controller on the embedded store.

use std::collections::BTreeSet;

use silt_metadata::{EmbeddedStore, ManualClock, MetaStore};

use super::*;
use crate::cluster::tests::{Node, node, topic, until};
use crate::core::error::ErrorKind;

struct Broker {
    node: Node,
    coordinator: Arc<Coordinator>,
}

async fn broker(catalog: &Catalog, id: &str, clock: &Arc<ManualClock>) -> Broker {
    let node = node(catalog, id).await;
    let view = node.view.clone();
    let coordinator = Coordinator::new(
        view.clone(),
        catalog.clone(),
        view.topics(),
        view.index(),
        clock.clone(),
    );
    tokio::spawn(coordinator.clone().run(node.cancel.clone()));
    Broker { node, coordinator }
}

fn join(client: &str) -> Heartbeat {
    Heartbeat {
        member_epoch: 0,
        client_id: client.into(),
        host: "10.0.0.1".into(),
        topics: Some(BTreeSet::from(["t".to_string()])),
        ..Heartbeat::default()
    }
}

fn beat(answer: &HeartbeatAnswer) -> Heartbeat {
    Heartbeat {
        member_id: answer.member_id.clone(),
        member_epoch: answer.member_epoch,
        owned: Some(answer.assigned.clone()),
        ..Heartbeat::default()
    }
}

fn offset(partition: u32, offset: i64) -> PartitionOffset {
    PartitionOffset {
        topic: "t".into(),
        partition,
        offset,
        leader_epoch: -1,
        metadata: format!("at {offset}"),
    }
}

async fn setup() -> (Catalog, Arc<ManualClock>, u64) {
    let store: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    let catalog = Catalog::new(store, "c");
    let t = catalog.create_topic(topic("t", 4)).await.unwrap();
    (catalog, ManualClock::new(1_000), t.id)
}

async fn ready(b: &Broker, topic_id: u64) {
    until("the topic and every slot are known", || {
        b.node.view.topics().is_live(topic_id)
            && (0..GROUP_SLOTS).all(|s| !matches!(b.node.view.slot_owner(s), Owner::Unowned))
    })
    .await;
}

#[tokio::test]
async fn members_share_partitions_commit_and_a_new_coordinator_loads_it_all() {
    let (catalog, clock, topic_id) = setup().await;
    let a = broker(&catalog, "a", &clock).await;
    ready(&a, topic_id).await;
    let groups: Vec<String> = (0..12).map(|i| format!("group-{i}")).collect();
    for g in &groups {
        let c = &a.coordinator;
        let m1 = c.heartbeat(g, &join("one")).await.unwrap();
        let m2 = c.heartbeat(g, &join("two")).await.unwrap();
        // Two rounds hand two partitions from the first member to the second.
        let m1 = c.heartbeat(g, &beat(&m1)).await.unwrap();
        let m2 = c.heartbeat(g, &beat(&m2)).await.unwrap();
        let m1 = c.heartbeat(g, &beat(&m1)).await.unwrap();
        let m2 = c.heartbeat(g, &beat(&m2)).await.unwrap();
        assert_eq!((m1.assigned.len(), m2.assigned.len()), (2, 2), "{g}");
        assert!(m1.assigned.is_disjoint(&m2.assigned));
        for (m, answer) in [(&m1, 10), (&m2, 20)] {
            let offsets: Vec<_> = m.assigned.iter().map(|p| offset(p.1, answer)).collect();
            c.commit(g, &m.member_id, m.member_epoch, &offsets)
                .await
                .unwrap();
        }
        let committed = c.fetch_offsets(g, None).await.unwrap();
        assert_eq!(committed.len(), 4);
        let d = c.describe(g).await.unwrap();
        assert_eq!(d.group.members.len(), 2);
        assert_eq!(d.partitions.len(), 4);
        assert!(d.partitions.iter().all(|p| p.member.is_some()));
    }
    let mut listed = a.coordinator.list_local().await;
    listed.sort();
    let mut expected = groups.clone();
    expected.sort();
    assert_eq!(listed, expected);

    // A second broker joins and takes half the slots: its coordinator serves the groups of
    // those slots from what is stored, members and offsets alike; the first refuses them.
    let b = broker(&catalog, "b", &clock).await;
    until("the slots are shared", || {
        (0..GROUP_SLOTS)
            .filter(|s| matches!(b.node.view.slot_owner(*s), Owner::Me(_)))
            .count()
            == GROUP_SLOTS as usize / 2
            && (0..GROUP_SLOTS).all(|s| {
                matches!(a.node.view.slot_owner(s), Owner::Me(_))
                    != matches!(b.node.view.slot_owner(s), Owner::Me(_))
            })
    })
    .await;
    let moved: Vec<&String> = groups
        .iter()
        .filter(|g| matches!(b.node.view.slot_owner(slot_of(g)), Owner::Me(_)))
        .collect();
    assert!(
        !moved.is_empty(),
        "some of 12 groups moved with 16 of 32 slots"
    );
    for g in moved {
        let d = b.coordinator.describe(g).await.unwrap();
        assert_eq!(d.group.members.len(), 2, "members survive the move");
        let mut committed: Vec<i64> = b
            .coordinator
            .fetch_offsets(g, None)
            .await
            .unwrap()
            .iter()
            .map(|o| o.offset)
            .collect();
        committed.sort();
        assert_eq!(committed, vec![10, 10, 20, 20]);
        let e = a.coordinator.fetch_offsets(g, None).await.unwrap_err();
        assert!(
            matches!(&e.kind, ErrorKind::NotOwner { owner: Some(addr) } if addr == "b:1"),
            "{e:?}"
        );
        // The members keep heartbeating at the new coordinator with what they were given.
        let member = d.group.members.values().next().unwrap();
        let answer = b
            .coordinator
            .heartbeat(
                g,
                &Heartbeat {
                    member_id: member.id.clone(),
                    member_epoch: member.epoch,
                    owned: Some(member.assigned.clone()),
                    ..Heartbeat::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(answer.assigned, member.assigned);
    }
}

#[tokio::test]
async fn an_expired_member_is_fenced_and_its_partitions_move() {
    let (catalog, clock, topic_id) = setup().await;
    let a = broker(&catalog, "a", &clock).await;
    ready(&a, topic_id).await;
    let c = &a.coordinator;
    let m1 = c.heartbeat("g", &join("one")).await.unwrap();
    let mut m2 = c.heartbeat("g", &join("two")).await.unwrap();
    let mut m1 = c.heartbeat("g", &beat(&m1)).await.unwrap();
    for _ in 0..2 {
        m2 = c.heartbeat("g", &beat(&m2)).await.unwrap();
        m1 = c.heartbeat("g", &beat(&m1)).await.unwrap();
    }
    assert_eq!(m2.assigned.len(), 2);
    // m2 goes silent; m1 keeps heartbeating while the clock passes m2's session.
    let mut waited = 0;
    while m1.assigned.len() < 4 {
        clock.advance_ms(1_000);
        waited += 1_000;
        c.expire_sessions().await;
        m1 = c.heartbeat("g", &beat(&m1)).await.unwrap();
        assert!(waited <= 20_000, "m2 never expired");
    }
    assert!(waited >= i64::from(super::super::state::DEFAULT_SESSION_TIMEOUT_MS));
    let e = c.heartbeat("g", &beat(&m2)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fenced, "{e}");
    assert!(e.message.contains("rejoin"), "{e}");
    let e = c
        .commit("g", &m2.member_id, m2.member_epoch, &[offset(0, 99)])
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fenced);
    assert!(
        c.fetch_offsets("g", None).await.unwrap().is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn bad_commits_get_precise_errors_and_store_nothing() {
    let (catalog, clock, topic_id) = setup().await;
    let a = broker(&catalog, "a", &clock).await;
    ready(&a, topic_id).await;
    let c = &a.coordinator;
    let m = c.heartbeat("g", &join("one")).await.unwrap();
    let (id, epoch) = (m.member_id.as_str(), m.member_epoch);
    let mut other_topic = offset(0, 1);
    other_topic.topic = "nope".into();
    let cases: Vec<(Vec<PartitionOffset>, &str, ErrorKind)> = vec![
        (vec![other_topic], "nope", ErrorKind::NotFound),
        (vec![offset(9, 1)], "partition 9", ErrorKind::NotFound),
        (vec![offset(0, -5)], "negative", ErrorKind::Invalid),
        (
            vec![offset(0, 1), offset(0, 2)],
            "twice",
            ErrorKind::Invalid,
        ),
        (
            vec![PartitionOffset {
                metadata: "m".repeat(MAX_OFFSET_METADATA_BYTES + 1),
                ..offset(0, 1)
            }],
            "metadata",
            ErrorKind::Invalid,
        ),
    ];
    for (offsets, needle, kind) in cases {
        let e = c.commit("g", id, epoch, &offsets).await.unwrap_err();
        assert_eq!(e.kind, kind, "{needle}: {e}");
        assert!(e.message.contains(needle), "{needle}: {e}");
    }
    let e = c.commit("g", "", 0, &[offset(0, 1)]).await.unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::Precondition,
        "standalone while active: {e}"
    );
    assert!(e.message.contains("one"), "names the active member: {e}");
    let e = c.commit("", id, epoch, &[offset(0, 1)]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    let e = c.delete("g").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Precondition);
    assert!(c.fetch_offsets("g", None).await.unwrap().is_empty());

    // Once the member leaves, a standalone commit and a delete are fine.
    c.heartbeat(
        "g",
        &Heartbeat {
            member_id: id.into(),
            member_epoch: -1,
            ..Heartbeat::default()
        },
    )
    .await
    .unwrap();
    c.commit("g", "", 0, &[offset(1, 7)]).await.unwrap();
    assert_eq!(c.fetch_offsets("g", None).await.unwrap()[0].offset, 7);
    c.delete("g").await.unwrap();
    assert_eq!(c.describe("g").await.unwrap_err().kind, ErrorKind::NotFound);
    assert!(
        catalog
            .load_group_slot(slot_of("g"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn concurrent_commits_of_many_groups_all_land() {
    let (catalog, clock, topic_id) = setup().await;
    let a = broker(&catalog, "a", &clock).await;
    ready(&a, topic_id).await;
    let mut tasks = Vec::new();
    for g in 0..50 {
        let c = a.coordinator.clone();
        tasks.push(tokio::spawn(async move {
            let group = format!("g{g}");
            for round in 0..5 {
                c.commit(&group, "", 0, &[offset(g % 4, round)])
                    .await
                    .unwrap();
            }
            group
        }));
    }
    for t in tasks {
        let group = t.await.unwrap();
        let offsets = a.coordinator.fetch_offsets(&group, None).await.unwrap();
        assert_eq!(offsets.len(), 1);
        assert_eq!(offsets[0].offset, 4, "the last commit wins");
    }
}

#[tokio::test]
async fn offsets_of_a_deleted_topic_are_removed() {
    let (catalog, clock, topic_id) = setup().await;
    let a = broker(&catalog, "a", &clock).await;
    ready(&a, topic_id).await;
    let c = &a.coordinator;
    c.commit("g", "", 0, &[offset(0, 3), offset(1, 4)])
        .await
        .unwrap();
    assert_eq!(c.forget_deleted_topics().await, 0, "the topic lives");
    catalog.delete_topic("t").await.unwrap();
    until("the view forgets the topic", || {
        !a.node.view.topics().is_live(topic_id)
    })
    .await;
    assert_eq!(c.forget_deleted_topics().await, 2);
    let stored = catalog.load_group_slot(slot_of("g")).await.unwrap();
    assert!(
        stored.iter().all(|g| g.offsets.is_empty()),
        "no offset key of the deleted topic is left: {stored:?}"
    );
    // A topic re-created under the same name starts with nothing committed.
    catalog.create_topic(topic("t", 4)).await.unwrap();
    until("the view has the new topic", || {
        a.node.view.topics().get("t").is_some()
    })
    .await;
    assert!(c.fetch_offsets("g", None).await.unwrap().is_empty());
}
