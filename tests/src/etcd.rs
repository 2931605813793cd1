//! A real etcd server on loopback (Debian's `etcd-server`, run as a plain process).

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
    tls: bool,
}

/// Makes a CA, a server certificate for 127.0.0.1 and a client certificate with openssl, in
/// `dir` (ca.pem, server.pem/.key, client.pem/.key).
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=silt-test-ca",
    ]);
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN=silt-{name}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

/// The etcd binary: `SILT_ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on the PATH.
fn etcd_bin() -> Option<PathBuf> {
    crate::require_tool(
        "etcd",
        "SILT_ETCD_BIN",
        &[PathBuf::from("/usr/bin/etcd")],
        "apt-get install etcd-server",
    )
}

impl EtcdProcess {
    /// Starts etcd, or returns `None` when no etcd binary is installed and `SILT_ALLOW_SKIP=1`
    /// (see [`crate::require_tool`]).
    pub async fn start() -> Option<EtcdProcess> {
        let bin = etcd_bin()?;
        Some(Self::launch(bin, false).await)
    }

    /// Like [`start`](Self::start), with TLS and client-certificate authentication on.
    pub async fn start_tls() -> Option<EtcdProcess> {
        let bin = etcd_bin()?;
        Some(Self::launch(bin, true).await)
    }

    async fn launch(bin: PathBuf, tls: bool) -> EtcdProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        if tls {
            make_certs(dir.path());
        }
        let (client_port, peer_port) = (crate::free_port(), crate::free_port());
        let child = spawn(&bin, dir.path(), client_port, peer_port, tls);
        let etcd = EtcdProcess {
            child,
            bin,
            client_port,
            peer_port,
            dir,
            tls,
        };
        etcd.wait_ready().await;
        etcd
    }

    async fn wait_ready(&self) {
        let options = self.options();
        crate::wait_for("etcd to answer", Duration::from_secs(30), || {
            let options = options.clone();
            async move {
                silt_metadata::EtcdStore::connect(&options)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
    }

    /// Client options for this etcd (with the test CA and client certificate under TLS).
    pub fn options(&self) -> silt_metadata::EtcdOptions {
        let tls = self.tls.then(|| {
            let read = |name: &str| std::fs::read(self.dir.path().join(name)).expect("read cert");
            silt_metadata::EtcdTls {
                ca_pem: read("ca.pem"),
                client_pem: Some((read("client.pem"), read("client.key"))),
            }
        });
        silt_metadata::EtcdOptions {
            endpoints: vec![self.endpoint()],
            tls,
            ..Default::default()
        }
    }

    /// Broker flags for TLS to this etcd (empty without TLS).
    pub fn tls_args(&self) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        [
            "--etcd-ca",
            "ca.pem",
            "--etcd-cert",
            "client.pem",
            "--etcd-key",
            "client.key",
        ]
        .chunks(2)
        .flat_map(|pair| [pair[0].to_string(), path(pair[1])])
        .collect()
    }

    /// Sends a signal (`STOP`, `CONT`, ...) by name: a paused etcd keeps its connections open
    /// and answers nothing.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Kills etcd (SIGKILL) and leaves it down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on the same ports and data, and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn(
            &self.bin,
            self.dir.path(),
            self.client_port,
            self.peer_port,
            self.tls,
        );
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

fn spawn(
    bin: &std::path::Path,
    dir: &std::path::Path,
    client_port: u16,
    peer_port: u16,
    tls: bool,
) -> Child {
    let scheme = if tls { "https" } else { "http" };
    let client = format!("{scheme}://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut command = Command::new(bin);
    if tls {
        command
            .arg(format!("--cert-file={}", dir.join("server.pem").display()))
            .arg(format!("--key-file={}", dir.join("server.key").display()))
            .arg(format!(
                "--trusted-ca-file={}",
                dir.join("ca.pem").display()
            ))
            .arg("--client-cert-auth");
    }
    command
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
