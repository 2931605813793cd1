//! Consumer groups with real brokers, real etcd and real `silt consume --group` members:
//! disjoint assignments, a killed member's partitions moving within its session, the
//! coordinator's death, offsets surviving a full restart, zombies, offset resets and bad input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use silt_api::v1::PartitionOffset;
use silt_client::{Client, ProducerConfig, ProducerRecord, ResetSpec};
use silt_tests::{
    Backend, BackendGuard, BrokerProcess, Cluster, MemberProcess, backend_tests,
    run_cli_with_input, wait_for,
};
use tonic::Code;

const TTL_MS: u64 = 2_000;
const SESSION: &str = "6s";
const SESSION_MS: i64 = 6_000;

async fn cluster(name: &str, brokers: usize) -> Option<Cluster> {
    let mut c = Cluster::start(name, TTL_MS, 20).await?;
    for _ in 0..brokers {
        c.add_broker().await;
    }
    Some(c)
}

/// Produces `count` keyed records `v<first>`..`v<first+count-1>` through the CLI.
fn produce(urls: &str, topic: &str, first: u64, count: u64) {
    let input: String = (first..first + count)
        .map(|i| format!("k{i}:v{i}\n"))
        .collect();
    let out = run_cli_with_input(
        urls,
        &["produce", topic, "--key-separator", ":"],
        input.as_bytes(),
    );
    assert!(out.success, "produce failed: {}", out.stderr);
}

fn values(members: &[&MemberProcess]) -> BTreeSet<String> {
    members
        .iter()
        .flat_map(|m| m.records())
        .map(|r| r.value)
        .collect()
}

fn expected(first: u64, count: u64) -> BTreeSet<String> {
    (first..first + count).map(|i| format!("v{i}")).collect()
}

/// Polls the group's committed offsets every 100 ms and records every change, so a test can
/// check they never moved backwards.
fn watch_commits(
    client: Client,
    group: &str,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<Vec<BTreeMap<u32, i64>>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let group = group.to_string();
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut seen: Vec<BTreeMap<u32, i64>> = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            if let Ok(offsets) = client.fetch_group_offsets(&group, &BTreeSet::new()).await {
                let now: BTreeMap<u32, i64> =
                    offsets.iter().map(|o| (o.partition, o.offset)).collect();
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    });
    (stop, task)
}

fn assert_never_backwards(history: &[BTreeMap<u32, i64>]) {
    let mut best: BTreeMap<u32, i64> = BTreeMap::new();
    for snapshot in history {
        for (p, o) in snapshot {
            let before = best.entry(*p).or_insert(*o);
            assert!(
                *o >= *before,
                "partition {p}'s committed offset moved back from {before} to {o}: {history:?}"
            );
            *before = *o;
        }
    }
}

/// Per partition, the intervals each member held it (from the members' own logs, `end` for
/// one still held), checked pairwise: no partition was ever held by two members at once.
fn assert_exclusive(members: &[(&MemberProcess, i64)]) {
    let mut intervals: BTreeMap<u32, Vec<(i64, i64, String)>> = BTreeMap::new();
    for (m, end) in members {
        let mut open: BTreeMap<u32, i64> = BTreeMap::new();
        for e in m.events() {
            match e.kind.as_str() {
                "assigned" => {
                    for p in e.partitions {
                        open.insert(p, e.at_ms);
                    }
                }
                "revoked" => {
                    for p in e.partitions {
                        if let Some(start) = open.remove(&p) {
                            intervals
                                .entry(p)
                                .or_default()
                                .push((start, e.at_ms, m.name.clone()));
                        }
                    }
                }
                _ => {
                    for (p, start) in std::mem::take(&mut open) {
                        intervals
                            .entry(p)
                            .or_default()
                            .push((start, e.at_ms, m.name.clone()));
                    }
                }
            }
        }
        for (p, start) in open {
            intervals
                .entry(p)
                .or_default()
                .push((start, *end, m.name.clone()));
        }
    }
    for (p, mut list) in intervals {
        list.sort();
        for pair in list.windows(2) {
            let ((_, end_a, a), (start_b, _, b)) = (&pair[0], &pair[1]);
            assert!(
                a == b || end_a <= start_b,
                "partition {p} held by {a} until {end_a} and by {b} from {start_b}"
            );
        }
    }
}

/// `silt_group_lag_records` series of `group` over the running brokers: (partition, lag), one
/// per partition if no broker keeps a stale series.
async fn lag_series(cluster: &Cluster, group: &str) -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    for slot in 0..cluster.len() {
        if !cluster.is_running(slot) {
            continue;
        }
        let text = cluster.broker(slot).scrape().await;
        for line in text
            .lines()
            .filter(|l| l.starts_with("silt_group_lag_records{"))
        {
            if !line.contains(&format!("group=\"{group}\"")) {
                continue;
            }
            let partition = line
                .split("partition=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|p| p.parse().ok())
                .expect("partition label");
            let lag = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("value");
            out.push((partition, lag));
        }
    }
    out.sort();
    out
}

fn now_ms() -> i64 {
    silt_client::clock::unix_now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_share_a_topic_and_a_killed_members_partitions_move() {
    let Some(cluster) = cluster("groups-share", 3).await else {
        return;
    };
    let urls = cluster.urls();
    let client = cluster.client().await;
    client.create_topic("t", 6, Some(-1), None).await.unwrap();
    cluster.wait_owned("t", Duration::from_secs(20)).await;
    produce(&urls, "t", 0, 600);
    let (stop_watch, watcher) = watch_commits(client.clone(), "g");

    let mut members: Vec<MemberProcess> = (0..3)
        .map(|i| {
            MemberProcess::start(
                &format!("m{i}"),
                &urls,
                "t",
                "g",
                &["--follow", "--session-timeout", SESSION],
            )
        })
        .collect();
    wait_for(
        "three members each holding two partitions, together all six",
        Duration::from_secs(60),
        || {
            let held: Vec<Vec<u32>> = members.iter().map(MemberProcess::holding).collect();
            async move {
                let all: BTreeSet<u32> = held.iter().flatten().copied().collect();
                (held.iter().all(|h| h.len() == 2) && all.len() == 6).then_some(())
            }
        },
    )
    .await;
    wait_for("all 600 records consumed", Duration::from_secs(60), || {
        let got = values(&members.iter().collect::<Vec<_>>());
        async move { got.is_superset(&expected(0, 600)).then_some(()) }
    })
    .await;

    // kill -9 one member: its partitions move to the others once its session ends.
    let lost: Vec<u32> = members[0].holding();
    let killed_at = now_ms();
    members[0].kill9();
    produce(&urls, "t", 600, 600);
    let survivors = &members[1..];
    wait_for(
        "the survivors hold all six partitions and read all 1200 records",
        Duration::from_secs(60),
        || {
            let held: BTreeSet<u32> = survivors.iter().flat_map(MemberProcess::holding).collect();
            let got = values(
                &survivors
                    .iter()
                    .chain(std::iter::once(&members[0]))
                    .collect::<Vec<_>>(),
            );
            async move { (held.len() == 6 && got.is_superset(&expected(0, 1200))).then_some(()) }
        },
    )
    .await;
    let moved_at = survivors
        .iter()
        .flat_map(MemberProcess::events)
        .filter(|e| e.kind == "assigned" && e.partitions.iter().any(|p| lost.contains(p)))
        .map(|e| e.at_ms)
        .filter(|t| *t >= killed_at)
        .max()
        .expect("the killed member's partitions were assigned");
    let took = moved_at - killed_at;
    eprintln!("the killed member's partitions moved after {took} ms (session {SESSION_MS} ms)");
    assert!(
        took >= SESSION_MS - 1_000,
        "moved before the session could have ended: {took} ms"
    );
    assert!(
        took <= SESSION_MS + 5_000,
        "moved {took} ms after the kill, session {SESSION_MS} ms"
    );

    // The survivors stop cleanly: commit, leave, exit 0.
    let ended = now_ms();
    for m in &mut members[1..] {
        assert!(m.terminate(Duration::from_secs(30)).success(), "{}", m.name);
    }
    assert_exclusive(&[
        (&members[0], killed_at),
        (&members[1], ended),
        (&members[2], ended),
    ]);
    stop_watch.store(true, Ordering::Relaxed);
    assert_never_backwards(&watcher.await.unwrap());
    let d = client.describe_group("g").await.unwrap();
    assert!(d.members.is_empty(), "everyone left: {d:?}");
    assert_eq!(d.state, "empty");
    assert_eq!(d.partitions.len(), 6);
    for p in &d.partitions {
        assert_eq!(p.committed, p.high_watermark, "{p:?}");
        assert_eq!(p.lag, 0);
    }
    let series = lag_series(&cluster, "g").await;
    assert_eq!(series, (0..6).map(|p| (p, 0)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_coordinators_death_loses_no_group_state() {
    let Some(mut cluster) = cluster("groups-coordinator", 3).await else {
        return;
    };
    let urls = cluster.urls();
    let client = cluster.client().await;
    client.create_topic("t", 4, Some(-1), None).await.unwrap();
    cluster.wait_owned("t", Duration::from_secs(20)).await;
    produce(&urls, "t", 0, 400);
    let member = MemberProcess::start("m", &urls, "t", "g", &["--follow"]);
    wait_for("400 records consumed", Duration::from_secs(60), || {
        let got = values(&[&member]);
        async move { got.is_superset(&expected(0, 400)).then_some(()) }
    })
    .await;
    // Let a commit of everything land.
    let committed: BTreeMap<u32, i64> =
        wait_for("all 400 committed", Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                let offsets = client
                    .fetch_group_offsets("g", &BTreeSet::new())
                    .await
                    .ok()?;
                let by: BTreeMap<u32, i64> =
                    offsets.iter().map(|o| (o.partition, o.offset)).collect();
                (by.values().sum::<i64>() == 400).then_some(by)
            }
        })
        .await;
    let before = client.describe_group("g").await.unwrap();
    let coordinator = before.coordinator.clone();
    let slot: usize = coordinator.trim_start_matches('b').parse().unwrap();
    cluster.kill9(slot);
    produce(&urls, "t", 400, 400);
    wait_for("800 records consumed", Duration::from_secs(60), || {
        let got = values(&[&member]);
        async move { got.is_superset(&expected(0, 800)).then_some(()) }
    })
    .await;
    let after = client.describe_group("g").await.unwrap();
    assert_ne!(after.coordinator, coordinator, "another broker coordinates");
    // The new coordinator exports the group's lag; nobody else has a series of it.
    let series = wait_for(
        "lag series of all four partitions",
        Duration::from_secs(30),
        || {
            let f = lag_series(&cluster, "g");
            async move {
                let s = f.await;
                (s.len() == 4).then_some(s)
            }
        },
    )
    .await;
    assert_eq!(
        series.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![0, 1, 2, 3],
        "one series per partition: {series:?}"
    );
    assert_eq!(
        after
            .members
            .iter()
            .map(|m| &m.member_id)
            .collect::<Vec<_>>(),
        before
            .members
            .iter()
            .map(|m| &m.member_id)
            .collect::<Vec<_>>(),
        "the member kept its membership through the coordinator's death"
    );
    assert!(
        member.events().iter().all(|e| e.kind != "lost"),
        "the member never lost its partitions: {:?}",
        member.events()
    );
    // Nothing before the last commit was read twice.
    let mut seen: HashMap<(u32, i64), usize> = HashMap::new();
    for r in member.records() {
        *seen.entry((r.partition, r.offset)).or_default() += 1;
    }
    for ((p, o), n) in seen {
        assert!(
            n == 1 || o >= committed[&p],
            "partition {p} offset {o} read {n} times, below the commit at {}",
            committed[&p]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn committed_offsets_survive_killing_every_broker() {
    let Some(mut cluster) = cluster("groups-restart", 2).await else {
        return;
    };
    let client = cluster.client().await;
    client.create_topic("t", 3, Some(-1), None).await.unwrap();
    cluster.wait_owned("t", Duration::from_secs(20)).await;
    produce(&cluster.urls(), "t", 0, 30);
    let offsets: Vec<PartitionOffset> = (0..3)
        .map(|p| PartitionOffset {
            topic: "t".into(),
            partition: p,
            offset: i64::from(p) + 1,
            leader_epoch: -1,
            metadata: format!("checkpoint {p}"),
        })
        .collect();
    client
        .commit_group_offsets("g", "", 0, offsets.clone())
        .await
        .unwrap();
    for slot in 0..2 {
        cluster.kill9(slot);
    }
    for slot in 0..2 {
        cluster.restart(slot).await;
    }
    let client = cluster.client().await;
    let back = wait_for(
        "the restarted cluster answers",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move { client.fetch_group_offsets("g", &BTreeSet::new()).await.ok() }
        },
    )
    .await;
    let mut back = back;
    back.sort_by_key(|o| o.partition);
    assert_eq!(back, offsets, "offsets and their metadata survive");
    assert_eq!(client.list_groups().await.unwrap(), vec!["g".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zombie_member_is_fenced_and_cannot_move_offsets_back() {
    let Some(cluster) = cluster("groups-zombie", 2).await else {
        return;
    };
    let urls = cluster.urls();
    let client = cluster.client().await;
    client.create_topic("t", 4, Some(-1), None).await.unwrap();
    cluster.wait_owned("t", Duration::from_secs(20)).await;
    produce(&urls, "t", 0, 400);
    let (stop_watch, watcher) = watch_commits(client.clone(), "g");
    let zombie = MemberProcess::start(
        "zombie",
        &urls,
        "t",
        "g",
        &["--follow", "--session-timeout", SESSION],
    );
    let mut other = MemberProcess::start(
        "other",
        &urls,
        "t",
        "g",
        &["--follow", "--session-timeout", SESSION],
    );
    wait_for(
        "two members with two partitions each",
        Duration::from_secs(60),
        || {
            let (a, b) = (zombie.holding(), other.holding());
            async move { (a.len() == 2 && b.len() == 2).then_some(()) }
        },
    )
    .await;
    zombie.pause();
    let paused_at = now_ms();
    wait_for(
        "the other member takes everything",
        Duration::from_secs(30),
        || {
            let held = other.holding();
            async move { (held.len() == 4).then_some(()) }
        },
    )
    .await;
    produce(&urls, "t", 400, 400);
    wait_for(
        "the other member reads everything",
        Duration::from_secs(60),
        || {
            let got = values(&[&other]);
            let zombie_got = values(&[&zombie]);
            async move {
                let all: BTreeSet<String> = got.union(&zombie_got).cloned().collect();
                all.is_superset(&expected(0, 800)).then_some(())
            }
        },
    )
    .await;
    zombie.resume();
    let resumed_at = now_ms();
    wait_for(
        "the zombie learns it was fenced",
        Duration::from_secs(30),
        || {
            let events = zombie.events();
            async move { events.iter().any(|e| e.kind == "lost").then_some(()) }
        },
    )
    .await;
    // It rejoins as a new member and gets partitions back only through the cooperative hand-over.
    wait_for(
        "the zombie rejoins with a share",
        Duration::from_secs(60),
        || {
            let (a, b) = (zombie.holding(), other.holding());
            async move { (a.len() == 2 && b.len() == 2).then_some(()) }
        },
    )
    .await;
    let ended = now_ms();
    other.terminate(Duration::from_secs(30));
    stop_watch.store(true, Ordering::Relaxed);
    assert_never_backwards(&watcher.await.unwrap());
    // While paused it held nothing it could still consume: its interval ends at the pause.
    let _ = (paused_at, resumed_at);
    let zombie_events = zombie.events();
    assert!(
        zombie_events
            .iter()
            .any(|e| e.kind == "lost" && e.at_ms >= resumed_at - 1_000)
    );
    assert_exclusive(&[(&other, ended)]);
}

async fn reset_offsets_land_on_records_and_wait_for_an_empty_group(backend: Backend) {
    let Some(guard) = BackendGuard::start(backend).await else {
        return;
    };
    let broker = BrokerProcess::start(guard.broker_options()).await;
    let client = broker.client().await;
    client.create_topic("t", 1, Some(-1), None).await.unwrap();
    let producer = silt_client::Producer::new(&client, "t", ProducerConfig::default())
        .await
        .unwrap();
    // Ten records a second apart (by their own timestamps).
    let base = 1_700_000_000_000i64;
    for i in 0..10 {
        let mut r = ProducerRecord::new(format!("v{i}"));
        r.timestamp_ms = Some(base + i * 1_000);
        r.partition = Some(0);
        producer.send(r).await.unwrap().await.unwrap();
    }
    producer.close().await.unwrap();
    let reset = |to| {
        let client = client.clone();
        async move { client.reset_group_offsets("g", "t", to, false).await }
    };
    let r = reset(ResetSpec::Timestamp(base + 3_500)).await.unwrap();
    assert_eq!(
        (r.partitions[0].before, r.partitions[0].after),
        (-1, 4),
        "first record at or after"
    );
    let r = reset(ResetSpec::Timestamp(base + 3_000)).await.unwrap();
    assert_eq!(r.partitions[0].after, 3, "a record exactly at the time");
    let r = reset(ResetSpec::ShiftBy(-2)).await.unwrap();
    assert_eq!((r.partitions[0].before, r.partitions[0].after), (3, 1));
    let r = reset(ResetSpec::ShiftBy(-100)).await.unwrap();
    assert_eq!(r.partitions[0].after, 0, "kept within the log");
    let r = reset(ResetSpec::Latest).await.unwrap();
    assert_eq!(r.partitions[0].after, 10);
    let dry = client
        .reset_group_offsets("g", "t", ResetSpec::Earliest, true)
        .await
        .unwrap();
    assert_eq!(dry.partitions[0].after, 0);
    let offsets = client
        .fetch_group_offsets("g", &BTreeSet::new())
        .await
        .unwrap();
    assert_eq!(offsets[0].offset, 10, "a dry run changes nothing");

    // A member joins: resets are refused, naming it.
    let url = broker.url();
    let mut member = MemberProcess::start("m", &url, "t", "g", &["--follow"]);
    wait_for(
        "the member holds the partition",
        Duration::from_secs(30),
        || {
            let held = member.holding();
            async move { (!held.is_empty()).then_some(()) }
        },
    )
    .await;
    let e = reset(ResetSpec::Earliest).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("silt-cli-"), "names the member: {e}");
    assert!(member.terminate(Duration::from_secs(30)).success());
    reset(ResetSpec::Earliest).await.unwrap();
}

async fn bad_group_input_gets_precise_statuses(backend: Backend) {
    let Some(guard) = BackendGuard::start(backend).await else {
        return;
    };
    let broker = BrokerProcess::start(guard.broker_options()).await;
    let client = broker.client().await;
    client.create_topic("t", 2, Some(-1), None).await.unwrap();
    let mut groups = client.groups();
    let join = |group: &str, topics: Vec<&str>, session: u32| silt_api::v1::GroupHeartbeatRequest {
        group: group.into(),
        member_epoch: 0,
        topics: topics.into_iter().map(String::from).collect(),
        session_timeout_ms: session,
        ..Default::default()
    };
    let cases = [
        (join("g", vec!["nope"], 0), Code::NotFound, "nope"),
        (join("", vec!["t"], 0), Code::InvalidArgument, "empty"),
        (
            join(&"g".repeat(300), vec!["t"], 0),
            Code::InvalidArgument,
            "255",
        ),
        (
            join("g", vec!["t"], 100),
            Code::InvalidArgument,
            "session timeout",
        ),
        (
            join("g", vec!["t"], u32::MAX),
            Code::InvalidArgument,
            "session timeout",
        ),
        (join("g", vec![], 0), Code::InvalidArgument, "topic"),
    ];
    for (request, code, needle) in cases {
        let e = groups.heartbeat(request).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(needle), "{needle}: {}", e.message());
    }
    let e = client.describe_group("never-used").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    // A member commits a partition it does not hold: refused, nothing stored.
    let a = groups
        .heartbeat(join("g", vec!["t"], 0))
        .await
        .unwrap()
        .into_inner();
    let b = groups
        .heartbeat(join("g", vec!["t"], 0))
        .await
        .unwrap()
        .into_inner();
    assert!(
        b.assigned.is_empty(),
        "the first member holds both until it releases one"
    );
    let e = client
        .commit_group_offsets(
            "g",
            &b.member_id,
            b.member_epoch,
            vec![PartitionOffset {
                topic: "t".into(),
                partition: 0,
                offset: 5,
                leader_epoch: -1,
                metadata: String::new(),
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e}");
    assert!(e.to_string().contains("does not hold"), "{e}");
    let e = client
        .commit_group_offsets("g", "no-such-member", 1, Vec::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e}");
    assert!(e.to_string().contains("rejoin"), "{e}");
    let e = groups
        .reset_offsets(silt_api::v1::ResetOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            to: None,
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        client
            .fetch_group_offsets("g", &BTreeSet::new())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(client.list_groups().await.unwrap(), vec!["g".to_string()]);
    let _ = a;
}

backend_tests!(
    reset_offsets_land_on_records_and_wait_for_an_empty_group,
    bad_group_input_gets_precise_statuses,
);
