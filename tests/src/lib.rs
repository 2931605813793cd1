//! The harness of Silt's integration tests: it starts the real `silt-broker` binary on loopback
//! (a free port chosen by the kernel, read back from the broker's start-up log), runs the real
//! `silt` CLI, kills and restarts brokers, and checks what was acknowledged against what can be
//! read back ([`Checker`]).
//!
//! The binaries are looked up in `SILT_BIN_DIR`, else next to the test executable
//! (`target/<profile>/`): build them first with `cargo build --bins` in the same profile
//! (`.ci/run` does).

mod backend;
mod broker;
mod checker;
mod cli;
mod cluster;
mod etcd;
mod garage;
pub mod load;
mod member;
mod minio;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use backend::{Backend, BackendGuard};
pub use broker::{BrokerOptions, BrokerProcess, http_get};
pub use checker::{CheckReport, Checker, read_partition};
pub use cli::{CliOutput, run_cli, run_cli_with_input};
pub use cluster::Cluster;
pub use etcd::EtcdProcess;
pub use garage::GarageProcess;
pub use member::{MemberEvent, MemberProcess, MemberRecord};
pub use minio::MinioProcess;

/// The path of one of Silt's binaries (`silt-broker`, `silt`).
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SILT_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(
            path.exists(),
            "{} does not exist (SILT_BIN_DIR)",
            path.display()
        );
        return path;
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the binaries first (`cargo build --bins` with the same profile) \
         or set SILT_BIN_DIR",
        path.display()
    );
    path
}

/// Finds a tool a test needs: `env_var` if set, else the first of `candidates` that exists, else
/// `name` on the `PATH`. When it is missing the test FAILS, naming how to install it — a green
/// run never hides an untested backend — unless `SILT_ALLOW_SKIP=1` says skipping is fine; then
/// it prints a visible `SKIPPED` line and returns `None` (the caller returns early).
pub fn require_tool(
    name: &str,
    env_var: &str,
    candidates: &[PathBuf],
    install: &str,
) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if let Some(found) = candidates.iter().find(|p| p.is_file()).cloned().or(on_path) {
        return Some(found);
    }
    let why = format!("{name} is not installed ({install}; or set {env_var})");
    if std::env::var("SILT_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: {why}; this test checked nothing");
        println!("SKIPPED: {why}");
        return None;
    }
    panic!(
        "{why}. `bash .ci/run` installs it; to skip the tests that need it, set SILT_ALLOW_SKIP=1"
    );
}

/// A port free on 127.0.0.1 right now (the kernel's pick; a server started next binds it).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until `check` returns `Some`, polling every 20 ms, or panics after `timeout` naming
/// `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_every(Duration::from_millis(20), timeout, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `check` every 100 ms until it returns `Some`, or returns `None` after `timeout`: for
/// callers that recover from a timeout instead of failing the test.
pub async fn poll_until<T, F, Fut>(timeout: Duration, check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_every(Duration::from_millis(100), timeout, check).await
}

/// Polls `check` every `interval` until it returns `Some` (checked at least once, and once
/// more at the deadline), or `None` after `timeout`.
async fn poll_every<T, F, Fut>(interval: Duration, timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Like [`wait_for`], for conditions over state worth seeing when they time out: `check`
/// answers `Err(state)` while waiting, and the panic shows the last state.
pub async fn wait_for_state<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let state = match check().await {
            Ok(value) => return value,
            Err(state) => state,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// JSON-like event bytes of exactly `size` bytes for record number `i` (distinct per record, so
/// a misplaced record is caught by its bytes, not only its position).
pub fn event_value(i: u64, size: usize) -> Vec<u8> {
    let head = format!("{{\"seq\":{i},\"kind\":\"test-event\",\"pad\":\"");
    let tail = "\"}";
    let mut out = head.into_bytes();
    let mut c = i;
    while out.len() + tail.len() < size {
        c = c
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push(b'a' + (c >> 59) as u8 % 26);
    }
    out.extend_from_slice(tail.as_bytes());
    out.truncate(size.max(1));
    out
}

/// Sums the samples of `name` whose labels include `labels` in a Prometheus exposition.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}
