//! Real S3-compatible stores (Garage and MinIO) under Silt: the object-store conformance suite
//! on both, and a broker on etcd + each store that loses no acknowledged record when killed
//! under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use silt_storage::object::{S3Options, conformance, open_object_store};
use silt_tests::load::{fast_path_load, per_record_load};
use silt_tests::{
    Backend, BackendGuard, BrokerOptions, BrokerProcess, Checker, GarageProcess, MinioProcess,
    wait_for,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_passes_the_object_store_conformance_suite() {
    let Some(garage) = GarageProcess::start().await else {
        return;
    };
    // Unsigned payloads (the default on loopback), then SigV4-signed ones (plain http on a
    // network): the server takes both.
    conformance::run_all(garage.store("conformance"), "run").await;
    let signed = S3Options {
        sign_payload: Some(true),
        ..garage.s3_options()
    };
    let store = open_object_store(&garage.url("conformance-signed"), &signed).unwrap();
    conformance::run_all(store, "run").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_passes_the_object_store_conformance_suite() {
    let Some(minio) = MinioProcess::start().await else {
        return;
    };
    // Unsigned payloads (the default on loopback), then SigV4-signed ones (plain http on a
    // network): the server takes both.
    conformance::run_all(minio.store("conformance"), "run").await;
    let signed = S3Options {
        sign_payload: Some(true),
        ..minio.s3_options()
    };
    let store = open_object_store(&minio.url("conformance-signed"), &signed).unwrap();
    conformance::run_all(store, "run").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_on_etcd_and_garage_survives_kill_9_under_load() {
    survives_kill_9_under_load(Backend::EtcdGarage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_on_etcd_and_minio_survives_kill_9_under_load() {
    survives_kill_9_under_load(Backend::EtcdMinio).await;
}

async fn survives_kill_9_under_load(kind: Backend) {
    let Some(backend) = BackendGuard::start(kind).await else {
        return;
    };
    let broker = BrokerProcess::start(backend.broker_options()).await;
    let client = broker.client().await;
    client.create_topic("g", 3, None, None).await.unwrap();

    let checker = Arc::new(Checker::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for p in 0..3 {
        let (client, checker, stop) = (client.clone(), checker.clone(), stop.clone());
        load.push(if p == 2 {
            tokio::spawn(per_record_load("g", client, p, checker, stop, 0))
        } else {
            tokio::spawn(fast_path_load("g", client, p, checker, stop, 0))
        });
    }
    let c = checker.clone();
    wait_for("acks before the kill", Duration::from_secs(120), || {
        let n = c.acked_count();
        async move { (n >= 3_000).then_some(()) }
    })
    .await;
    let options = broker.kill9();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("load stops")
            .unwrap();
    }
    let broker = BrokerProcess::start(options).await;
    let report = checker.verify(&broker.client().await, "g").await;
    report.assert_clean();
    assert!(report.acked >= 3_000);
}

/// Every start-up refusal names its real cause, and a newcomer's plain-http endpoint works
/// without extra flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refusals_name_their_real_cause() {
    let Some(garage) = GarageProcess::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (args, env) = garage.broker_args("p");

    // Wrong secret: the credentials, not the bucket.
    let mut options = BrokerOptions::new(dir.path());
    options.args.extend(args.clone());
    options.env = vec![
        env[0].clone(),
        ("AWS_SECRET_ACCESS_KEY".into(), "wrong".into()),
    ];
    let stderr = BrokerProcess::refused(&options);
    assert!(stderr.contains("credentials were refused"), "{stderr}");
    assert!(!stderr.contains("does not exist"), "{stderr}");

    // A missing bucket: the bucket, and how to create it.
    let mut options = BrokerOptions::new(dir.path());
    options.args.extend(
        args.iter()
            .map(|a| a.replace("s3://silt/", "s3://no-such-bucket/")),
    );
    options.env = env.clone();
    let stderr = BrokerProcess::refused(&options);
    assert!(
        stderr.contains("bucket does not exist") && stderr.contains("--create-bucket"),
        "{stderr}"
    );
    assert!(!stderr.contains("credentials"), "{stderr}");

    // Nothing listens at the endpoint: said so, in seconds.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut options = BrokerOptions::new(dir.path());
    options.args.extend(args.iter().map(|a| {
        if a.starts_with("http://") {
            nobody.clone()
        } else {
            a.clone()
        }
    }));
    options.env = env.clone();
    let started = std::time::Instant::now();
    let stderr = BrokerProcess::refused(&options);
    assert!(stderr.contains("cannot be reached"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );

    // A newcomer's first run: an http:// endpoint, no --s3-allow-http.
    let mut options = BrokerOptions::new(dir.path());
    let mut plain = args.clone();
    let at = plain.iter().position(|a| a == "--s3-allow-http").unwrap();
    plain.drain(at..at + 2);
    options.args.extend(plain);
    options.env = env;
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    client.create_topic("plain", 1, None, None).await.unwrap();
}

/// Garage dies and comes back under load: acks are delayed or fail retriably, never false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garage_restart_under_load_loses_no_acknowledged_record() {
    let Some(mut backend) = BackendGuard::start(Backend::EtcdGarage).await else {
        return;
    };
    let broker = BrokerProcess::start(backend.broker_options()).await;
    let client = broker.client().await;
    client.create_topic("s", 2, None, None).await.unwrap();
    let checker = Arc::new(Checker::new());
    let start_load = |round: u64| {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = vec![
            tokio::spawn(fast_path_load(
                "s",
                client.clone(),
                0,
                checker.clone(),
                stop.clone(),
                round,
            )),
            tokio::spawn(per_record_load(
                "s",
                client.clone(),
                1,
                checker.clone(),
                stop.clone(),
                round,
            )),
        ];
        (stop, tasks)
    };
    let acks_at_least = |n: u64| {
        let c = checker.clone();
        async move {
            wait_for("acks", Duration::from_secs(120), || {
                let acked = c.acked_count();
                async move { (acked >= n).then_some(()) }
            })
            .await
        }
    };
    let (stop, tasks) = start_load(0);
    acks_at_least(1_000).await;
    backend.garage.as_mut().expect("garage").restart().await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(180), task)
            .await
            .expect("load stops")
            .unwrap();
    }
    let before = checker.acked_count();
    let (stop, tasks) = start_load(1);
    acks_at_least(before + 1_000).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(180), task)
            .await
            .expect("load stops")
            .unwrap();
    }
    let report = checker.verify(&client, "s").await;
    assert_eq!(
        (report.lost, report.duplicated, report.gaps),
        (0, 0, 0),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_bucket_creates_a_missing_bucket() {
    let Some(garage) = GarageProcess::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (args, env) = garage.broker_args("p");
    let mut options = BrokerOptions::new(dir.path()).arg("--create-bucket", "true");
    options.args.extend(
        args.into_iter()
            .map(|a| a.replace("s3://silt/", "s3://fresh-bucket/")),
    );
    options.env = env;
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    client.create_topic("c", 1, None, None).await.unwrap();
    let producer = silt_client::Producer::new(&client, "c", Default::default())
        .await
        .unwrap();
    let ack = producer
        .send(silt_client::ProducerRecord::new("in a new bucket"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack, (0, 0));
}
