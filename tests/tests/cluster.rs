//! Membership: brokers register in etcd under a lease; a killed broker leaves one TTL later, a
//! stopped one at once; `silt cluster status` lists the live ones.

use std::time::{Duration, Instant};

use silt_tests::{BrokerOptions, BrokerProcess, EtcdProcess, run_cli, wait_for};

fn options(etcd: &EtcdProcess, dir: &std::path::Path, id: &str) -> BrokerOptions {
    BrokerOptions::new(dir)
        .arg("--metadata", etcd.url())
        .arg("--cluster", "members")
        .arg("--broker-id", id)
        .arg("--lease-ttl-ms", 2_000)
}

async fn live(broker: &BrokerProcess) -> Vec<String> {
    let client = broker.client().await;
    let mut ids: Vec<String> = client
        .cluster_status()
        .await
        .unwrap()
        .brokers
        .into_iter()
        .map(|b| b.broker_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_join_and_leave_through_their_leases() {
    let Some(etcd) = EtcdProcess::start().await else {
        return;
    };
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let b1 = BrokerProcess::start(options(&etcd, d1.path(), "b1")).await;
    let b2 = BrokerProcess::start(options(&etcd, d2.path(), "b2")).await;
    let b3 = BrokerProcess::start(options(&etcd, d3.path(), "b3")).await;
    assert_eq!(live(&b2).await, ["b1", "b2", "b3"]);
    let status = run_cli(&b1.url(), &["cluster", "status"]);
    assert!(status.success, "{}", status.stderr);
    assert!(
        status.stdout.contains(&b3.addr().to_string()),
        "{}",
        status.stdout
    );

    // kill -9: the registration goes when the lease expires (TTL 2 s), not before.
    let killed_at = Instant::now();
    b3.kill9();
    wait_for(
        "b3 to leave after its lease",
        Duration::from_secs(15),
        || {
            let b1 = &b1;
            async move { (live(b1).await == ["b1", "b2"]).then_some(()) }
        },
    )
    .await;
    let gone_after = killed_at.elapsed();
    assert!(
        gone_after <= Duration::from_secs(2 + 3),
        "left {gone_after:?} after kill -9"
    );

    // SIGTERM: it leaves at once — its key is gone as soon as the process has exited, without
    // the TTL having to run out.
    let (status, _) = b2.terminate(Duration::from_secs(30));
    assert!(status.success());
    assert_eq!(
        live(&b1).await,
        ["b1"],
        "a stopped broker revokes its lease on the way out"
    );
}
