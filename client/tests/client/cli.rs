//! The `silt` binary against the mock broker: topic commands (cleanup policies included), a
//! produce → consume round trip, tombstones, error messages and exit codes, and the fast-path
//! benches' JSON output.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use silt_client::{Client, PartitionReader, StartSpec};

use crate::mock::{dead_url, start, start_cluster};

/// Runs `silt --broker <client's url> args...` with `stdin`, off the async runtime.
async fn silt(client: &Client, args: &[&str], stdin: &str) -> Output {
    silt_at(client.url(), args, stdin).await
}

/// Runs `silt --broker <brokers> args...` with `stdin`, off the async runtime.
async fn silt_at(brokers: &str, args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_silt"));
    command
        .arg("--broker")
        .arg(brokers)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("silt runs");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_commands() {
    let (_mock, client) = start().await;
    let created = silt(
        &client,
        &["topic", "create", "orders", "--partitions", "3"],
        "",
    )
    .await;
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).contains("created topic 'orders' with 3 partitions"));

    let list = silt(&client, &["topic", "list"], "").await;
    let text = stdout(&list);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains("orders  3"), "{text}");

    let describe = silt(&client, &["topic", "describe", "orders"], "").await;
    let text = stdout(&describe);
    assert!(text.starts_with("topic orders"), "{text}");
    assert_eq!(
        text.lines().count(),
        5,
        "topic line, header, 3 partitions:\n{text}"
    );

    let again = silt(
        &client,
        &["topic", "create", "orders", "--partitions", "3"],
        "",
    )
    .await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("(ALREADY_EXISTS)"),
        "{}",
        stderr(&again)
    );

    let deleted = silt(&client, &["topic", "delete", "orders"], "").await;
    assert!(deleted.status.success());
    let missing = silt(&client, &["topic", "describe", "orders"], "").await;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stderr(&missing).trim(),
        "error: topic 'orders' does not exist (NOT_FOUND)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_policy_flags_and_tombstones() {
    let (_mock, client) = start().await;
    let created = silt(
        &client,
        &[
            "topic",
            "create",
            "kv",
            "--partitions",
            "1",
            "--cleanup-policy",
            "compact",
            "--delete-retention-ms",
            "60000",
        ],
        "",
    )
    .await;
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(
        stdout(&created).contains("cleanup policy compact (tombstones kept 1m)"),
        "{}",
        stdout(&created)
    );
    let list = stdout(&silt(&client, &["topic", "list"], "").await);
    assert!(
        list.lines().next().unwrap().contains("CLEANUP POLICY"),
        "{list}"
    );
    assert!(list.contains("compact"), "{list}");
    let describe = stdout(&silt(&client, &["topic", "describe", "kv"], "").await);
    assert!(
        describe.contains("cleanup policy compact (tombstones kept 1m)"),
        "{describe}"
    );

    // Kafka's other spelling of both policies.
    let altered = silt(
        &client,
        &["topic", "alter", "kv", "--cleanup-policy", "delete,compact"],
        "",
    )
    .await;
    assert!(altered.status.success(), "{}", stderr(&altered));
    assert!(
        stdout(&altered).contains("cleanup policy compact,delete (tombstones kept 1m)"),
        "{}",
        stdout(&altered)
    );
    let nothing = silt(&client, &["topic", "alter", "kv"], "").await;
    assert_eq!(nothing.status.code(), Some(1));
    assert!(
        stderr(&nothing).contains("nothing to change")
            && stderr(&nothing).contains("--cleanup-policy")
            && stderr(&nothing).contains("--delete-retention-ms"),
        "{}",
        stderr(&nothing)
    );
    for bad in [
        ["--cleanup-policy", "shred"],
        ["--delete-retention-ms", "-1"],
    ] {
        let out = silt(
            &client,
            &[
                "topic",
                "create",
                "bad",
                "--partitions",
                "1",
                bad[0],
                bad[1],
            ],
            "",
        )
        .await;
        assert_eq!(out.status.code(), Some(2), "{bad:?} is a usage error");
        assert!(stderr(&out).contains(bad[1]), "{bad:?}: {}", stderr(&out));
    }
    let policies = silt(
        &client,
        &["topic", "create", "bad", "-p", "1", "--cleanup-policy", "x"],
        "",
    )
    .await;
    assert!(
        stderr(&policies).contains("delete, compact, compact,delete"),
        "the allowed policies are named: {}",
        stderr(&policies)
    );

    // A value equal to the null marker is a tombstone.
    let produced = silt(
        &client,
        &[
            "produce",
            "kv",
            "--key-separator",
            ":",
            "--null-marker",
            "NULL",
        ],
        "a:1\nb:NULLS\na:NULL\n",
    )
    .await;
    assert!(produced.status.success(), "{}", stderr(&produced));
    let mut reader = PartitionReader::new(&client, "kv", 0, StartSpec::Earliest)
        .await
        .unwrap();
    let read: Vec<(Option<Bytes>, Option<Bytes>)> = reader
        .next_batch(Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect();
    let bytes = |s: &'static str| Some(Bytes::from_static(s.as_bytes()));
    assert_eq!(
        read,
        [
            (bytes("a"), bytes("1")),
            (bytes("b"), bytes("NULLS")),
            (bytes("a"), None)
        ]
    );

    // A compacted topic takes no record without a key.
    let unkeyed = silt(&client, &["produce", "kv"], "no key\n").await;
    assert_eq!(unkeyed.status.code(), Some(1));
    let err = stderr(&unkeyed);
    assert!(err.contains("acknowledged 0 of 1 records"), "{err}");
    assert!(err.contains("every record needs a key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_consume() {
    let (_mock, client) = start().await;
    client.create_topic("lines", 1, None, None).await.unwrap();
    let input = "k1:v1\nk2:v:2\nno key\r\n\nlast";
    let produced = silt(
        &client,
        &["produce", "lines", "--key-separator", ":"],
        input,
    )
    .await;
    assert!(produced.status.success(), "{}", stderr(&produced));
    assert_eq!(stderr(&produced).trim(), "acknowledged 5 of 5 records");

    let values = silt(&client, &["consume", "lines"], "").await;
    assert!(values.status.success(), "{}", stderr(&values));
    assert_eq!(stdout(&values), "v1\nv:2\nno key\n\nlast\n");

    let columns = silt(
        &client,
        &["consume", "lines", "--print-offset", "--print-key"],
        "",
    )
    .await;
    assert_eq!(
        stdout(&columns),
        "0\tk1\tv1\n1\tk2\tv:2\n2\t\tno key\n3\t\t\n4\t\tlast\n"
    );

    let limited = silt(
        &client,
        &[
            "consume",
            "lines",
            "--from",
            "offset:1",
            "--max",
            "2",
            "--print-offset",
        ],
        "",
    )
    .await;
    assert_eq!(stdout(&limited), "1\tv:2\n2\tno key\n");

    let latest = silt(&client, &["consume", "lines", "--from", "latest"], "").await;
    assert!(latest.status.success());
    assert_eq!(stdout(&latest), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_with_code_1() {
    let (_mock, client) = start().await;
    let produce = silt(&client, &["produce", "nope"], "x\n").await;
    assert_eq!(produce.status.code(), Some(1));
    assert_eq!(
        stderr(&produce).trim(),
        "error: topic 'nope' does not exist (NOT_FOUND)"
    );
    let consume = silt(&client, &["consume", "nope"], "").await;
    assert_eq!(consume.status.code(), Some(1));
    let bad_from = silt(&client, &["consume", "nope", "--from", "yesterday"], "").await;
    assert_eq!(bad_from.status.code(), Some(2), "clap usage errors exit 2");

    client.create_topic("p", 2, None, None).await.unwrap();
    let bad_partition = silt(&client, &["produce", "p", "--partition", "5"], "a\nb\n").await;
    assert_eq!(bad_partition.status.code(), Some(1));
    let err = stderr(&bad_partition);
    assert!(err.contains("acknowledged 0 of 2 records"), "{err}");
    assert!(err.contains("error: partition 5 does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benches_report_json() {
    let (_mock, client) = start().await;
    let produce = silt(
        &client,
        &[
            "bench",
            "produce",
            "--topic",
            "b",
            "--records",
            "3000",
            "--record-size",
            "200",
        ]
        .into_iter()
        .chain(["--concurrency", "2", "--partitions", "4", "--json"])
        .collect::<Vec<_>>(),
        "",
    )
    .await;
    assert!(produce.status.success(), "{}", stderr(&produce));
    let report: serde_json::Value = serde_json::from_str(&stdout(&produce)).unwrap();
    assert_eq!(report["records"], 3000);
    assert_eq!(report["bytes"], 600_000);
    assert_eq!(report["failed"], 0);
    assert!(report["p99_ms"].as_f64().unwrap() > 0.0);
    // The mock's CPU counter never moves: no cost ratio.
    assert_eq!(report["broker_cpu_seconds"], 0.0);
    assert!(report["mib_per_broker_cpu_second"].is_null());

    let consume = silt(&client, &["bench", "consume", "--topic", "b", "--json"], "").await;
    assert!(consume.status.success(), "{}", stderr(&consume));
    let report: serde_json::Value = serde_json::from_str(&stdout(&consume)).unwrap();
    assert_eq!(report["records"], 3000);
    assert_eq!(report["bytes"], 600_000);
    assert_eq!(report["partitions"], 4);

    let text = silt(
        &client,
        &["bench", "consume", "--topic", "b", "--partitions", "0,1"],
        "",
    )
    .await;
    assert!(
        stdout(&text).starts_with("bench consume: topic b, 2 partitions"),
        "{}",
        stdout(&text)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_consume_quietly() {
    use std::io::{BufRead, BufReader};

    let (_mock, client) = start().await;
    client.create_topic("many", 1, None, None).await.unwrap();
    let producer = silt_client::Producer::new(&client, "many", Default::default())
        .await
        .unwrap();
    for i in 0..100_000 {
        let _ack = producer
            .send(silt_client::ProducerRecord::new(format!("record {i}")))
            .await;
    }
    producer.close().await.unwrap();

    let url = client.url().to_string();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_silt"))
            .args(["--broker", &url, "consume", "many"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read one line, then hang up as `head -1` would.
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first, "record 0\n");
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_through_a_broker_list() {
    let brokers = start_cluster(2).await;
    let (a, b) = (&brokers[0], &brokers[1]);
    a.mock.state().owners.insert(0, b.address());
    // The first broker of the list is down; bare host:port works.
    let list = format!("{},{}", dead_url().await, a.address());
    let created = silt_at(&list, &["topic", "create", "t", "--partitions", "2"], "").await;
    assert!(created.status.success(), "{}", stderr(&created));

    let status = silt_at(&list, &["cluster", "status", "--partitions"], "").await;
    assert!(status.status.success(), "{}", stderr(&status));
    let text = stdout(&status);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("PARTITIONS") && lines[0].ends_with("ROLE"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("b0") && lines[1].contains(&a.address()),
        "{text}"
    );
    assert!(lines[1].ends_with("controller"), "{text}");
    assert!(
        lines[2].starts_with("b1") && lines[2].contains(" 1 "),
        "{text}"
    );
    assert!(text.contains("TOPIC  PARTITION  OWNER  EPOCH"), "{text}");
    assert!(text.contains("t      0          b1"), "{text}");
    assert!(text.contains("t      1          -"), "{text}");
    assert!(stderr(&status).contains("2 live broker(s), controller: b0"));

    let json = silt_at(&list, &["cluster", "status", "--json"], "").await;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["controller"], "b0");
    assert_eq!(value["brokers"][1]["partitions_owned"], 1);
    assert!(value.get("partitions").is_none());

    // Produce and consume go through the list too.
    let produced = silt_at(&list, &["produce", "t", "--partition", "1"], "x\ny\n").await;
    assert!(produced.status.success(), "{}", stderr(&produced));
    let consumed = silt_at(&list, &["consume", "t", "--partition", "1"], "").await;
    assert_eq!(stdout(&consumed), "x\ny\n");
}
