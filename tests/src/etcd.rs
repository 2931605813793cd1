//! A real etcd server on loopback (Debian's `etcd-server`, run as a plain process).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running etcd. Dropping it kills the process; its data dir is a temp dir.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Child,
    bin: PathBuf,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

/// The etcd binary: `SILT_ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on the PATH.
fn etcd_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SILT_ETCD_BIN") {
        return Some(PathBuf::from(path));
    }
    let default = PathBuf::from("/usr/bin/etcd");
    if default.exists() {
        return Some(default);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join("etcd"))
        .find(|p| p.exists())
}

/// A port the kernel says is free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl EtcdProcess {
    /// Starts etcd, or returns `None` when no etcd binary is installed and `SILT_REQUIRE_ETCD`
    /// is unset (`.ci/run` installs etcd and sets it, so CI never skips).
    pub async fn start() -> Option<EtcdProcess> {
        let Some(bin) = etcd_bin() else {
            assert!(
                std::env::var_os("SILT_REQUIRE_ETCD").is_none(),
                "SILT_REQUIRE_ETCD is set but no etcd binary was found (apt-get install etcd-server)"
            );
            eprintln!(
                "skipping: no etcd binary (apt-get install etcd-server, or set SILT_ETCD_BIN)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (client_port, peer_port) = (free_port(), free_port());
        let child = spawn(&bin, dir.path(), client_port, peer_port);
        let etcd = EtcdProcess {
            child,
            bin,
            client_port,
            peer_port,
            dir,
        };
        etcd.wait_ready().await;
        Some(etcd)
    }

    async fn wait_ready(&self) {
        let endpoint = self.endpoint();
        crate::wait_for("etcd to answer", Duration::from_secs(30), || {
            let endpoint = endpoint.clone();
            async move {
                let options = silt_metadata::EtcdOptions {
                    endpoints: vec![endpoint],
                    ..Default::default()
                };
                silt_metadata::EtcdStore::connect(&options)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
    }

    /// Kills etcd (SIGKILL) and leaves it down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on the same ports and data, and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.bin, self.dir.path(), self.client_port, self.peer_port);
        self.wait_ready().await;
    }

    /// `127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `etcd://127.0.0.1:<port>`, for `--metadata`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }
}

fn spawn(bin: &std::path::Path, dir: &std::path::Path, client_port: u16, peer_port: u16) -> Child {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    Command::new(bin)
        .arg("--name=silt-test")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=silt-test={peer}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcd")
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
