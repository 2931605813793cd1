//! The `silt` CLI against a real broker, as a new user runs it.

use silt_tests::{BrokerOptions, BrokerProcess, run_cli, run_cli_with_input};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_produce_consume_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(BrokerOptions::new(dir.path())).await;
    let url = broker.url();

    let out = run_cli(&url, &["topic", "create", "orders", "--partitions", "3"]);
    assert!(out.success, "{}", out.stderr);
    let out = run_cli(&url, &["topic", "create", "orders", "--partitions", "3"]);
    assert!(!out.success);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);

    let out = run_cli(&url, &["topic", "list"]);
    assert!(
        out.success && out.stdout.contains("orders"),
        "{}",
        out.stdout
    );

    // Keyed lines: the key decides the partition, as a Kafka client would.
    let input: String = (0..300)
        .map(|i| format!("user-{}\tevent {i}\n", i % 7))
        .collect();
    let out = run_cli_with_input(
        &url,
        &["produce", "orders", "--key-separator", "\t"],
        input.as_bytes(),
    );
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stderr.contains("acknowledged 300 of 300"),
        "{}",
        out.stderr
    );

    let out = run_cli(
        &url,
        &["consume", "orders", "--print-key", "--print-offset"],
    );
    assert!(out.success, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 300);
    let mut values: Vec<String> = lines
        .iter()
        .map(|l| {
            let parts: Vec<&str> = l.splitn(3, '\t').collect();
            assert_eq!(parts.len(), 3, "offset, key, value: {l}");
            parts[0].parse::<i64>().expect("offset");
            let i: u32 = parts[2].strip_prefix("event ").unwrap().parse().unwrap();
            assert_eq!(
                parts[1],
                format!("user-{}", i % 7),
                "key travels with its value"
            );
            parts[2].to_string()
        })
        .collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), 300, "every line read back once");

    // Same key → same partition, in order.
    let key = silt_client::partitioner::partition_for_key(b"user-3", 3);
    let out = run_cli(
        &url,
        &[
            "consume",
            "orders",
            "--partition",
            &key.to_string(),
            "--print-key",
        ],
    );
    let mine: Vec<u32> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("user-3\t"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    let expected: Vec<u32> = (0..300).filter(|i| i % 7 == 3).collect();
    assert_eq!(
        mine, expected,
        "one key's records in produce order in one partition"
    );

    // --max and offset: starts.
    let out = run_cli(
        &url,
        &[
            "consume",
            "orders",
            "--partition",
            &key.to_string(),
            "--from",
            "offset:1",
            "--max",
            "2",
            "--print-offset",
        ],
    );
    assert!(out.success, "{}", out.stderr);
    let offsets: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(offsets, ["1", "2"]);

    let out = run_cli(&url, &["topic", "describe", "orders"]);
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("orders"), "{}", out.stdout);

    // Explicit partition, values with no key separator.
    let out = run_cli_with_input(&url, &["produce", "orders", "--partition", "2"], b"x\ny\n");
    assert!(out.success, "{}", out.stderr);

    let out = run_cli(&url, &["topic", "delete", "orders"]);
    assert!(out.success, "{}", out.stderr);
    let out = run_cli(&url, &["topic", "describe", "orders"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("NOT_FOUND") || out.stderr.contains("does not exist"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_errors_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(BrokerOptions::new(dir.path())).await;
    let url = broker.url();

    let out = run_cli_with_input(&url, &["produce", "missing"], b"a\n");
    assert!(!out.success);
    assert!(out.stderr.contains("missing"), "{}", out.stderr);

    let out = run_cli(&url, &["topic", "create", "bad/name", "--partitions", "1"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("INVALID_ARGUMENT") || out.stderr.contains("name"),
        "{}",
        out.stderr
    );

    let out = run_cli(
        &url,
        &[
            "topic",
            "create",
            "t",
            "--partitions",
            "1",
            "--max-record-bytes",
            "100",
        ],
    );
    assert!(out.success, "{}", out.stderr);
    let big = format!("{}\nsmall\n", "v".repeat(500));
    let out = run_cli_with_input(&url, &["produce", "t"], big.as_bytes());
    assert!(!out.success, "an oversized record makes produce fail");
    assert!(
        out.stderr.contains("100"),
        "the message names the limit: {}",
        out.stderr
    );

    let out = run_cli("http://127.0.0.1:1", &["topic", "list"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("127.0.0.1:1"),
        "names the broker it could not reach: {}",
        out.stderr
    );
}

/// The benchmarks run end to end and report what BENCHMARKS.md quotes (small sizes: this checks
/// that they work, not how fast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_commands_report_json() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(BrokerOptions::new(dir.path())).await;
    let url = broker.url();
    let field = |json: &serde_json::Value, key: &str| -> f64 {
        json.get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{key} in {json}"))
    };
    for extra in [&[][..], &["--per-record"][..], &["--replay"][..]] {
        let mut args = vec![
            "bench",
            "produce",
            "--topic",
            "bench",
            "--records",
            "3000",
            "--record-size",
            "1KiB",
            "--concurrency",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = run_cli(&url, &args);
        assert!(out.success, "{}", out.stderr);
        let json: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).expect("one JSON object");
        assert!(field(&json, "mib_per_s") > 0.0);
        assert!(field(&json, "p99_ms") >= field(&json, "p50_ms"));
        assert!(
            field(&json, "broker_cpu_seconds") > 0.0,
            "the broker's CPU is accounted: {json}"
        );
        assert!(field(&json, "mib_per_broker_cpu_second") > 0.0);
        // One metadata transaction per flush, whatever the partitions, and the ack breakdown.
        assert!(field(&json, "flushes") >= 1.0, "{json}");
        assert_eq!(field(&json, "metadata_txns_per_flush"), 1.0, "{json}");
        assert!(field(&json, "metadata_bytes_per_flush") > 0.0);
        for stage in ["wait_for_flush", "put", "commit", "ack"] {
            let key = format!("broker_{stage}_p50_ms");
            assert!(field(&json, &key) >= 0.0, "{key} in {json}");
        }
    }
    let out = run_cli(&url, &["bench", "consume", "--topic", "bench", "--json"]);
    assert!(out.success, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(field(&json, "records_per_s") > 0.0);

    // Put -> push-subscribe delivery: every acknowledged record reaches a subscriber, each
    // after it was due and no sooner than its own ack could have come.
    let out = run_cli(
        &url,
        &[
            "bench",
            "produce",
            "--topic",
            "deliver",
            "--records",
            "300",
            "--rate",
            "600",
            "--concurrency",
            "2",
            "--subscribe",
            "--json",
        ],
    );
    assert!(out.success, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(field(&json, "delivered"), 300.0, "{json}");
    assert!(field(&json, "delivery_p50_ms") > 0.0, "{json}");
    assert!(field(&json, "delivery_p99_ms") >= field(&json, "delivery_p50_ms"));
    // A stamp needs 8 bytes of value; a smaller record is refused before anything is sent.
    let out = run_cli(
        &url,
        &[
            "bench",
            "produce",
            "--topic",
            "deliver-small",
            "--records",
            "10",
            "--record-size",
            "4",
            "--rate",
            "100",
            "--subscribe",
        ],
    );
    assert!(!out.success);
    assert!(out.stderr.contains("--record-size"), "{}", out.stderr);
    let out = run_cli(&url, &["topic", "list"]);
    assert!(!out.stdout.contains("deliver-small"), "{}", out.stdout);

    let store = tempfile::tempdir().unwrap();
    let url_store = format!("file://{}", store.path().display());
    let out = run_cli(
        &url,
        &[
            "bench",
            "object-store",
            "--object-store",
            &url_store,
            "--object-size",
            "256KiB",
            "--total-bytes",
            "2MiB",
            "--json",
        ],
    );
    assert!(out.success, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(field(&json, "objects"), 8.0);
    assert!(field(&json, "mib_per_s") > 0.0);
}

/// `silt topic list | head -0`: a reader that goes away ends the command quietly with success,
/// for every printing command, not with a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_any_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(BrokerOptions::new(dir.path())).await;
    let url = broker.url();
    assert!(run_cli(&url, &["topic", "create", "t", "--partitions", "2"]).success);
    for args in [
        vec!["topic", "list"],
        vec!["topic", "describe", "t"],
        vec!["cluster", "status", "--partitions"],
        vec!["group", "list"],
    ] {
        let mut child = std::process::Command::new(silt_tests::bin_path("silt"))
            .arg("--broker")
            .arg(&url)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn silt");
        // Close the read end before the command prints anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
