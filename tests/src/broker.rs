//! A real `silt-broker` process on loopback.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use silt_client::Client;

use crate::bin_path;

/// How to start a broker. The data directory outlives the process so a restart finds its data.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub data_dir: PathBuf,
    pub linger_ms: u64,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// A command the broker runs under (`strace -f ...`), empty for none.
    pub wrapper: Vec<String>,
}

impl BrokerOptions {
    /// Defaults for tests: a short linger so acks come fast.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            linger_ms: 20,
            args: Vec::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// Compaction and garbage collection as fast as a test wants them: every committed entry
    /// settled at once, runs due after 300 ms, compacted objects of `target` ("0": compaction
    /// off), reads up to 64 MiB/s, unreferenced objects gone after 2 s, retention every 200 ms.
    pub fn fast_lifecycle(self, target: &str) -> Self {
        self.arg("--compaction-target-bytes", target)
            .arg("--compaction-min-age-ms", 0)
            .arg("--compaction-max-delay-ms", 300)
            .arg("--compaction-check-ms", 100)
            .arg("--compaction-bytes-per-sec", "64MiB")
            .arg("--gc-grace-ms", 2_000)
            .arg("--retention-check-ms", 200)
    }

    /// Adds `--flag value`.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }
}

/// A running broker. Dropping it kills the process.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    options: BrokerOptions,
    /// The last [`KEPT_LOG_LINES`] lines it wrote on stderr.
    log: Arc<Mutex<VecDeque<String>>>,
}

/// How many of a broker's last log lines a test can read.
const KEPT_LOG_LINES: usize = 10_000;

/// The address logged after `marker` on a log line (text or JSON logs).
fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// A plain HTTP/1.1 `GET` (the admin server's protocol): `(status, body)`, or `None` when
/// nothing answers within 10 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.get(9..12)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// How long a broker may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `silt-broker` on a free loopback port with `options`, stdin closed, no colours.
fn command(options: &BrokerOptions) -> Command {
    let broker = bin_path("silt-broker");
    let mut command = match options.wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(broker);
            c
        }
        None => Command::new(broker),
    };
    command.arg("--listen").arg("127.0.0.1:0");
    if !options.args.iter().any(|a| a == "--admin-listen") {
        command.arg("--admin-listen").arg("127.0.0.1:0");
    }
    // Tests reason about the linger: windows wait exactly that long unless a test turns
    // adaptive linger on itself.
    if !options.args.iter().any(|a| a == "--idle-linger-ms") {
        command
            .arg("--idle-linger-ms")
            .arg(options.linger_ms.to_string());
    }
    command
        .arg("--data-dir")
        .arg(&options.data_dir)
        .arg("--linger-ms")
        .arg(options.linger_ms.to_string())
        .args(&options.args)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

impl BrokerProcess {
    /// Starts a broker on a free loopback port and waits until it serves gRPC.
    pub async fn start(options: BrokerOptions) -> BrokerProcess {
        let mut child = command(&options)
            // SILT_TEST_BROKER_LOG quiets them for benchmarks (the harness needs `info`).
            .env(
                "SILT_LOG",
                std::env::var("SILT_TEST_BROKER_LOG")
                    .unwrap_or_else(|_| "info,silt_broker=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn silt-broker");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let (admin_tx, admin_rx) = mpsc::channel();
        let pid = child.id();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            let (mut tx, mut admin_tx) = (Some(tx), Some(admin_tx));
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[broker {pid}] {line}");
                {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() == KEPT_LOG_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line.clone());
                }
                if let Some(addr) = address_after(&line, "serving gRPC on ")
                    && let Some(sender) = tx.take()
                {
                    let _ = sender.send(addr);
                }
                if let Some(addr) = address_after(&line, "/readyz) on ")
                    && let Some(sender) = admin_tx.take()
                {
                    let _ = sender.send(addr);
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("silt-broker exited during start-up: {status}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "silt-broker did not start in {START_TIMEOUT:?}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait");
                    panic!("silt-broker exited during start-up: {status}");
                }
            }
        };
        let broker = BrokerProcess {
            child,
            addr,
            admin_addr: admin_rx.try_recv().ok(),
            options,
            log,
        };
        broker.wait_ready().await;
        broker
    }

    /// Runs a broker that must refuse to start (bad settings, unreachable or foreign stores);
    /// returns what it printed on stderr.
    pub fn refused(options: &BrokerOptions) -> String {
        let output = command(options).output().expect("run silt-broker");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !output.status.success(),
            "the broker started but should have refused:\n{stderr}"
        );
        stderr
    }

    /// Waits until the broker answers an admin call.
    async fn wait_ready(&self) {
        let url = self.url();
        crate::wait_for("broker to answer ListTopics", START_TIMEOUT, || {
            let url = url.clone();
            async move {
                let client = Client::connect(&url).await.ok()?;
                client.list_topics().await.ok().map(|_| ())
            }
        })
        .await;
    }

    /// The lines the broker has written on stderr so far (the last [`KEPT_LOG_LINES`]).
    pub fn log_lines(&self) -> Vec<String> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect()
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin HTTP address (`/metrics`, `/livez`, `/readyz`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
            .expect("the broker logged its admin address before its gRPC one")
    }

    /// `GET path` on the admin server: `(status, body)`, or `None` when it does not answer.
    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin_addr(), path).await
    }

    /// The broker's Prometheus exposition (`/metrics`).
    pub async fn scrape(&self) -> String {
        let (status, body) = self.admin_get("/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's own process id: the child's, or under a wrapper its child's.
    fn broker_pid(&self) -> u32 {
        let pid = self.child.id();
        if self.options.wrapper.is_empty() {
            return pid;
        }
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .unwrap_or(pid)
    }

    /// The options it was started with.
    pub fn options(&self) -> &BrokerOptions {
        &self.options
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(&self.url())
            .await
            .expect("connect to broker")
    }

    /// The exit status, once the process has exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Sends a signal (`STOP`, `CONT`, ...) by name.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.broker_pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// `kill -9`: the process dies at once, with whatever it had in memory.
    pub fn kill9(mut self) -> BrokerOptions {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.options.clone()
    }

    /// [`Self::terminate`] with 30 s to exit, off the async runtime's threads.
    pub async fn stop(self) -> (ExitStatus, BrokerOptions) {
        tokio::task::spawn_blocking(move || self.terminate(Duration::from_secs(30)))
            .await
            .expect("the terminating thread panicked")
    }

    /// `kill -TERM` and wait (bounded) for the exit status.
    pub fn terminate(mut self, timeout: Duration) -> (ExitStatus, BrokerOptions) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.broker_pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status, self.options.clone());
            }
            assert!(
                Instant::now() < deadline,
                "broker did not exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
