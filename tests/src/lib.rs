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

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use backend::{Backend, BackendGuard};
pub use broker::{BrokerOptions, BrokerProcess};
pub use checker::{CheckReport, Checker, read_partition};
pub use cli::{CliOutput, run_cli, run_cli_with_input};
pub use cluster::Cluster;
pub use etcd::EtcdProcess;
pub use garage::GarageProcess;

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

/// Waits until `check` returns `Some`, polling every 20 ms, or panics after `timeout` naming
/// `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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
