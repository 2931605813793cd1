//! Broker settings are layered: defaults < TOML file < SILT_* environment < flags.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use silt_tests::{BrokerOptions, BrokerProcess, bin_path};

/// Starts a broker, returns its "serving gRPC" log line, and kills it.
fn serving_line(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> String {
    serving(dir, env, args).0
}

/// [`serving_line`], with the `GLIBC_TUNABLES` the broker runs with once it serves.
fn serving(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (String, Option<String>) {
    let mut child = Command::new(bin_path("silt-broker"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .inspect(|l| eprintln!("{l}"))
        .find(|l| l.contains("serving gRPC on"));
    let tunables = std::fs::read(format!("/proc/{}/environ", child.id()))
        .ok()
        .and_then(|environ| {
            environ
                .split(|b| *b == 0)
                .find_map(|var| var.strip_prefix(b"GLIBC_TUNABLES="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
    let _ = child.kill();
    let _ = child.wait();
    (
        line.expect("the broker logs the address it serves"),
        tunables,
    )
}

/// The broker starts itself again once so glibc keeps freed memory for reuse (settings glibc
/// reads only at start), unless `GLIBC_TUNABLES` is set already, even empty.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_broker_keeps_freed_memory_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tunables) = serving(dir.path(), &[], &[]);
    let tunables = tunables.expect("the broker runs with GLIBC_TUNABLES");
    // glibc cuts the string at its first separator once parsed: the first setting is what shows.
    assert!(
        tunables.starts_with("glibc.malloc.mmap_threshold=33554432"),
        "{tunables}"
    );
    let (_, tunables) = serving(dir.path(), &[("GLIBC_TUNABLES", "")], &[]);
    assert_eq!(
        tunables.as_deref(),
        Some(""),
        "an operator's choice is kept"
    );
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("silt.toml");
    std::fs::write(&config, "linger_ms = 111\nflush_bytes = 2097152\n").unwrap();
    let file = config.to_str().unwrap();

    let line = serving_line(dir.path(), &[], &["--config", file]);
    assert!(
        line.contains("linger 111 ms") && line.contains("flush at 2097152 bytes"),
        "{line}"
    );
    let line = serving_line(
        dir.path(),
        &[("SILT_LINGER_MS", "222")],
        &["--config", file],
    );
    assert!(
        line.contains("linger 222 ms") && line.contains("flush at 2097152 bytes"),
        "{line}"
    );
    let line = serving_line(
        dir.path(),
        &[("SILT_LINGER_MS", "222")],
        &["--config", file, "--linger-ms", "333"],
    );
    assert!(line.contains("linger 333 ms"), "{line}");
}

#[test]
fn invalid_settings_exit_non_zero_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(bin_path("silt-broker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--flush-bytes", "1000", "--wal-cache-bytes", "10"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("wal-cache-bytes"), "{stderr}");

    let output = Command::new(bin_path("silt-broker"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--object-store",
        "--linger-ms",
        "--flush-bytes",
        "--wal-cache-bytes",
        "--config",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }
    assert!(
        help.contains("SILT_LINGER_MS"),
        "--help names the environment variables"
    );
}

#[test]
fn start_up_checks_refuse_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    // A prefix owned by another cluster.
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(
        objects.join("silt-cluster.json"),
        r#"{"v":1,"cluster":"other","created_at_ms":0}"#,
    )
    .unwrap();
    let stderr = BrokerProcess::refused(&BrokerOptions::new(dir.path()));
    assert!(
        stderr.contains("belongs to Silt cluster 'other'"),
        "{stderr}"
    );
    // Unreachable etcd.
    let options = BrokerOptions::new(dir.path())
        .arg("--metadata", "etcd://127.0.0.1:1")
        .arg("--cluster", "other");
    let stderr = BrokerProcess::refused(&options);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}
