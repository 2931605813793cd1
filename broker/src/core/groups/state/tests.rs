use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const TOPIC: (u64, u32) = (42, 6);

fn resolve_one(name: &str) -> Option<(u64, u32)> {
    (name == "t").then_some(TOPIC)
}

fn join_hb(id: &str) -> Heartbeat {
    Heartbeat {
        member_id: id.into(),
        member_epoch: 0,
        client_id: format!("client-{id}"),
        host: "127.0.0.1".into(),
        topics: Some(BTreeSet::from(["t".to_string()])),
        ..Heartbeat::default()
    }
}

/// A member's client as the tests simulate it: it consumes what it was last told and reports
/// that as `owned`.
#[derive(Debug, Clone)]
struct Client {
    id: String,
    epoch: i32,
    consuming: BTreeSet<GroupPartition>,
}

fn beat(group: &mut Group, c: &mut Client, now: i64) -> Result<Changed, GroupError> {
    let hb = Heartbeat {
        member_id: c.id.clone(),
        member_epoch: c.epoch,
        owned: Some(c.consuming.clone()),
        ..Heartbeat::default()
    };
    let (answer, changed) = group.heartbeat(&hb, now, &resolve_one, || unreachable!())?;
    c.epoch = answer.member_epoch;
    c.consuming = answer.assigned;
    Ok(changed)
}

fn join(group: &mut Group, id: &str, now: i64) -> Client {
    let (answer, changed) = group
        .heartbeat(&join_hb(id), now, &resolve_one, || unreachable!())
        .unwrap();
    assert_eq!(changed, Changed::Persist);
    assert!(answer.member_epoch >= 1);
    Client {
        id: id.into(),
        epoch: answer.member_epoch,
        consuming: answer.assigned,
    }
}

/// No partition is held (assigned or revoking) by two members.
fn assert_exclusive(group: &Group) {
    let mut seen = BTreeSet::new();
    for m in group.members.values() {
        for p in m.assigned.iter().chain(&m.revoking) {
            assert!(seen.insert(*p), "{p:?} held twice: {group:#?}");
        }
    }
}

#[test]
fn three_members_converge_to_disjoint_balanced_assignments() {
    let mut g = Group::new("g");
    let mut clients = vec![join(&mut g, "a", 0)];
    assert_eq!(
        clients[0].consuming.len(),
        6,
        "the first member gets everything"
    );
    clients.push(join(&mut g, "b", 1));
    clients.push(join(&mut g, "c", 2));
    assert_exclusive(&g);
    // A few rounds of heartbeats hand the partitions over.
    for round in 0..4 {
        for c in &mut clients {
            beat(&mut g, c, 10 + round).unwrap();
            assert_exclusive(&g);
        }
    }
    let mut all = BTreeSet::new();
    for c in &clients {
        assert_eq!(c.consuming.len(), 2, "{}: {:?}", c.id, c.consuming);
        for p in &c.consuming {
            assert!(all.insert(*p));
        }
    }
    assert_eq!(all.len(), 6);
    // Stable now: a heartbeat changes nothing and needs no write.
    for c in &mut clients {
        assert_eq!(beat(&mut g, c, 20).unwrap(), Changed::Nothing);
    }
}

#[test]
fn a_partition_moves_only_after_its_old_member_released_it() {
    let mut g = Group::new("g");
    let mut a = join(&mut g, "a", 0);
    let mut b = join(&mut g, "b", 1);
    // b joined: a must give up three partitions, but b gets none of them yet.
    assert!(b.consuming.is_empty(), "{:?}", b.consuming);
    let a_before = a.consuming.clone();
    // a is told to drop them (it consumes the rest)...
    beat(&mut g, &mut a, 2).unwrap();
    assert_eq!(a.consuming.len(), 3);
    assert!(
        a.consuming.is_subset(&a_before),
        "a keeps what it still owns"
    );
    // ...and a may still commit the ones it is dropping until it says they are released.
    let dropped: Vec<_> = a_before.difference(&a.consuming).copied().collect();
    for p in &dropped {
        g.check_commit("a", a.epoch, [("t", *p)]).unwrap();
    }
    beat(&mut g, &mut b, 3).unwrap();
    assert!(b.consuming.is_empty(), "not before a released them");
    // b waits for partitions still being released: it is asked back sooner than usual.
    let (waiting, _) = g
        .heartbeat(
            &Heartbeat {
                member_id: "b".into(),
                member_epoch: b.epoch,
                owned: Some(b.consuming.clone()),
                ..Heartbeat::default()
            },
            3,
            &resolve_one,
            || unreachable!(),
        )
        .unwrap();
    assert_eq!(waiting.heartbeat_interval_ms, RECONCILING_HEARTBEAT_MS);
    // a's next heartbeat reports it consumes only its three: now b may have the others.
    beat(&mut g, &mut a, 4).unwrap();
    beat(&mut g, &mut b, 5).unwrap();
    assert_eq!(b.consuming.iter().copied().collect::<Vec<_>>(), dropped);
    for p in &dropped {
        let e = g.check_commit("a", a.epoch, [("t", *p)]).unwrap_err();
        assert!(matches!(e, GroupError::NotAssigned { .. }), "{e}");
        g.check_commit("b", b.epoch, [("t", *p)]).unwrap();
    }
}

#[test]
fn an_expired_member_is_fenced_and_its_partitions_move() {
    let mut g = Group::new("g");
    let mut a = join(&mut g, "a", 0);
    let mut b = join(&mut g, "b", 0);
    for t in 1..4 {
        beat(&mut g, &mut a, t).unwrap();
        beat(&mut g, &mut b, t).unwrap();
    }
    assert_eq!(a.consuming.len() + b.consuming.len(), 6);
    assert_eq!(
        g.next_deadline(),
        Some(3 + i64::from(DEFAULT_SESSION_TIMEOUT_MS))
    );
    // b stops heartbeating; a keeps going.
    let mut now = 3;
    while g.members.contains_key("b") {
        now += 1_000;
        beat(&mut g, &mut a, now).unwrap();
        g.expire(now, &resolve_one);
    }
    beat(&mut g, &mut a, now + 1).unwrap();
    assert_eq!(a.consuming.len(), 6, "a took b's partitions at once");
    // The zombie comes back: refused, told to rejoin; it can commit nothing.
    let e = beat(&mut g, &mut b, now + 2).unwrap_err();
    assert!(e.to_string().contains("rejoin"), "{e}");
    let p = *b.consuming.iter().next().unwrap();
    assert!(matches!(
        g.check_commit("b", b.epoch, [("t", p)]),
        Err(GroupError::UnknownMember { .. })
    ));
}

#[test]
fn stale_and_bad_epochs_are_refused_and_nothing_changes() {
    let mut g = Group::new("g");
    let mut a = join(&mut g, "a", 0);
    join(&mut g, "b", 0);
    beat(&mut g, &mut a, 1).unwrap();
    let before = g.clone();
    let mut zombie = a.clone();
    zombie.epoch -= 1;
    let e = beat(&mut g, &mut zombie, 2).unwrap_err();
    assert!(matches!(e, GroupError::FencedEpoch { .. }), "{e}");
    let mut future = a.clone();
    future.epoch += 5;
    assert!(beat(&mut g, &mut future, 2).is_err());
    assert!(
        g.check_commit("a", a.epoch + 1, [("t", (42, 0))]).is_err(),
        "an epoch never given is refused"
    );
    for bad in [-2, i32::MIN] {
        let hb = Heartbeat {
            member_id: "a".into(),
            member_epoch: bad,
            ..Heartbeat::default()
        };
        let e = g
            .heartbeat(&hb, 3, &resolve_one, || unreachable!())
            .unwrap_err();
        assert!(matches!(e, GroupError::Invalid(_)), "{e}");
    }
    assert_eq!(g, before, "refused calls change nothing");
}

#[test]
fn limits_are_checked_before_anything_changes() {
    let mut g = Group::new("g");
    let cases: Vec<(Heartbeat, &str)> = vec![
        (
            Heartbeat {
                session_timeout_ms: 100,
                ..join_hb("x")
            },
            "session timeout",
        ),
        (
            Heartbeat {
                session_timeout_ms: u32::MAX,
                ..join_hb("x")
            },
            "session timeout",
        ),
        (
            Heartbeat {
                heartbeat_interval_ms: 10,
                ..join_hb("x")
            },
            "heartbeat interval",
        ),
        (
            Heartbeat {
                heartbeat_interval_ms: 9_000,
                ..join_hb("x")
            },
            "half the session timeout",
        ),
        (
            Heartbeat {
                topics: Some(BTreeSet::new()),
                ..join_hb("x")
            },
            "at least one topic",
        ),
        (
            Heartbeat {
                topics: None,
                ..join_hb("x")
            },
            "topics",
        ),
        (
            Heartbeat {
                topics: Some(
                    (0..=MAX_SUBSCRIBED_TOPICS)
                        .map(|i| format!("t{i}"))
                        .collect(),
                ),
                ..join_hb("x")
            },
            "at most",
        ),
        (
            Heartbeat {
                client_id: "c".repeat(MAX_CLIENT_FIELD_BYTES + 1),
                ..join_hb("x")
            },
            "client id",
        ),
    ];
    for (hb, needle) in cases {
        let e = g
            .heartbeat(&hb, 0, &resolve_one, || "new".into())
            .unwrap_err();
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    assert!(g.members.is_empty());
    assert_eq!(g.epoch, 0);
    for (id, ok) in [
        ("", false),
        ("g", true),
        (&"x".repeat(256), false),
        ("a\nb", false),
        ("orders/eu", true),
    ] {
        assert_eq!(validate_group_id(id).is_ok(), ok, "{id:?}");
    }
}

#[test]
fn topic_changes_rebalance_and_deleted_partitions_leave_at_once() {
    let mut g = Group::new("g");
    let partitions = std::cell::Cell::new(2u32);
    let exists = std::cell::Cell::new(true);
    let resolve = |n: &str| (n == "t" && exists.get()).then(|| (7, partitions.get()));
    let (answer, _) = g
        .heartbeat(&join_hb("a"), 0, &resolve, || unreachable!())
        .unwrap();
    assert_eq!(answer.assigned.len(), 2);
    let hb = |epoch| Heartbeat {
        member_id: "a".into(),
        member_epoch: epoch,
        ..Heartbeat::default()
    };
    partitions.set(4);
    let (answer, changed) = g
        .heartbeat(&hb(answer.member_epoch), 1, &resolve, || unreachable!())
        .unwrap();
    assert_eq!(changed, Changed::Persist);
    assert_eq!(answer.assigned.len(), 4, "partitions added are assigned");
    exists.set(false);
    let (answer, _) = g
        .heartbeat(&hb(answer.member_epoch), 2, &resolve, || unreachable!())
        .unwrap();
    assert!(
        answer.assigned.is_empty(),
        "a deleted topic's partitions are gone"
    );
    assert!(g.members["a"].revoking.is_empty());
}

#[test]
fn a_static_member_rejoining_keeps_its_partitions() {
    let mut g = Group::new("g");
    let with_instance = |id: &str| Heartbeat {
        instance_id: Some("worker-1".into()),
        ..join_hb(id)
    };
    let (first, _) = g
        .heartbeat(&with_instance("a1"), 0, &resolve_one, || unreachable!())
        .unwrap();
    let mut b = join(&mut g, "b", 0);
    let mut a = Client {
        id: "a1".into(),
        epoch: first.member_epoch,
        consuming: first.assigned,
    };
    for t in 1..4 {
        beat(&mut g, &mut a, t).unwrap();
        beat(&mut g, &mut b, t).unwrap();
    }
    let epoch_before = g.epoch;
    let (again, _) = g
        .heartbeat(&with_instance("a2"), 5, &resolve_one, || unreachable!())
        .unwrap();
    assert_eq!(again.assigned, a.consuming, "same partitions, no hand-over");
    assert!(again.member_epoch > a.epoch);
    assert!(
        !g.members.contains_key("a1"),
        "the old incarnation is fenced"
    );
    assert_eq!(g.members.len(), 2);
    assert_eq!(
        beat(&mut g, &mut b, 6).unwrap(),
        Changed::Nothing,
        "b sees no rebalance"
    );
    assert!(g.epoch > epoch_before);
}

#[test]
fn a_standalone_commit_needs_an_empty_group() {
    let mut g = Group::new("g");
    g.check_commit("", 0, [("t", (42, 0))]).unwrap();
    join(&mut g, "a", 0);
    let e = g.check_commit("", 0, [("t", (42, 0))]).unwrap_err();
    assert!(e.to_string().contains("client-a"), "names the members: {e}");
}

#[test]
fn the_record_round_trips_without_deadlines() {
    let mut g = Group::new("g");
    join(&mut g, "a", 100);
    let json = serde_json::to_string(&g).unwrap();
    let mut back: Group = serde_json::from_str(&json).unwrap();
    assert_eq!(
        back.members["a"].deadline_ms, 0,
        "deadlines are not persisted"
    );
    back.restart_sessions(5_000);
    assert_eq!(
        back.members["a"].deadline_ms,
        5_000 + i64::from(DEFAULT_SESSION_TIMEOUT_MS)
    );
    back.members.get_mut("a").unwrap().deadline_ms = g.members["a"].deadline_ms;
    assert_eq!(back, g);
}

#[derive(Debug, Clone)]
enum Step {
    Join(usize),
    Beat(usize),
    Leave(usize),
    /// Time passes by this many ms; expired members are removed.
    Tick(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0usize..6).prop_map(Step::Join),
        4 => (0usize..6).prop_map(Step::Beat),
        1 => (0usize..6).prop_map(Step::Leave),
        1 => (0u16..12_000).prop_map(Step::Tick),
    ]
}

proptest! {
    /// Any history of joins, heartbeats, leaves and expiries: no partition is ever held by two
    /// members, no two live clients ever consume the same partition, and once the members only
    /// heartbeat, everyone gets a balanced, disjoint share of all partitions.
    #[test]
    fn no_partition_is_ever_consumed_twice(steps in proptest::collection::vec(step(), 1..80)) {
        let mut g = Group::new("g");
        let mut clients: BTreeMap<usize, Client> = BTreeMap::new();
        let mut now = 0i64;
        for s in steps {
            match s {
                Step::Join(i) => {
                    clients.entry(i).or_insert_with(|| join(&mut g, &format!("m{i}"), now));
                }
                Step::Beat(i) => {
                    if let Some(c) = clients.get_mut(&i)
                        && beat(&mut g, c, now).is_err()
                    {
                        // Fenced (expired): the client stops consuming and is gone.
                        clients.remove(&i);
                    }
                }
                Step::Leave(i) => {
                    if let Some(c) = clients.remove(&i) {
                        let hb = Heartbeat { member_id: c.id, member_epoch: -1, ..Heartbeat::default() };
                        let _ = g.heartbeat(&hb, now, &resolve_one, || unreachable!());
                    }
                }
                Step::Tick(ms) => {
                    now += i64::from(ms);
                    g.expire(now, &resolve_one);
                    // A client whose session ended stops consuming on its own (it could not
                    // heartbeat within its session timeout).
                    clients.retain(|_, c| g.members.contains_key(&c.id));
                }
            }
            assert_exclusive(&g);
            let mut consumed = BTreeSet::new();
            for c in clients.values() {
                for p in &c.consuming {
                    prop_assert!(consumed.insert(*p), "{:?} consumed twice", p);
                }
            }
        }
        // Settle: only heartbeats.
        for _ in 0..4 {
            for c in clients.values_mut() {
                beat(&mut g, c, now).unwrap();
            }
        }
        if !clients.is_empty() {
            let counts: Vec<usize> = clients.values().map(|c| c.consuming.len()).collect();
            prop_assert_eq!(counts.iter().sum::<usize>(), TOPIC.1 as usize);
            prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "{:?}", counts);
        }
    }
}
