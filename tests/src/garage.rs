//! A real Garage (S3-compatible object store) on loopback: one node, one bucket, one key,
//! set up with Garage's own CLI as its quick-start does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use silt_storage::object::{S3Options, open_object_store};

/// A running single-node Garage with a bucket and a key. Dropping it kills the process.
#[derive(Debug)]
pub struct GarageProcess {
    child: Child,
    bin: PathBuf,
    config: PathBuf,
    s3_port: u16,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    _dir: tempfile::TempDir,
}

/// The garage binary: `SILT_GARAGE_BIN`, else `~/.cache/silt/tools/bin/garage` (where
/// `.ci/run` installs it), else `garage` on the PATH.
fn garage_bin() -> Option<PathBuf> {
    let cached =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/silt/tools/bin/garage"));
    crate::require_tool(
        "garage",
        "SILT_GARAGE_BIN",
        cached.as_slice(),
        "cargo install garage --locked",
    )
}

/// Runs `garage -c <config> <args>` and returns its stdout.
fn garage_cli(bin: &Path, config: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running garage: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "garage {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The value after `label` on the line that has it (`Key ID: GK...`).
fn field(text: &str, label: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (_, rest) = l.split_once(label)?;
        let value = rest.trim_start_matches(':').trim();
        (!value.is_empty()).then(|| value.to_string())
    })
}

impl GarageProcess {
    /// Starts Garage and creates bucket `silt` and a key allowed on it, or returns `None` when
    /// no garage binary exists and `SILT_ALLOW_SKIP=1` (see [`crate::require_tool`]). A start
    /// that does not come up (a port taken between choosing it and Garage binding it, when many
    /// tests start servers at once) is retried on fresh ports, up to three times.
    pub async fn start() -> Option<GarageProcess> {
        let bin = garage_bin()?;
        let mut failures = Vec::new();
        for attempt in 1..=3 {
            match Self::start_once(&bin).await {
                Ok(garage) => return Some(garage),
                Err(why) => {
                    eprintln!("garage start-up attempt {attempt} failed: {why}");
                    failures.push(why);
                }
            }
        }
        panic!("garage did not start in 3 attempts: {failures:#?}");
    }

    async fn start_once(bin: &Path) -> Result<GarageProcess, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (rpc_port, s3_port) = (crate::free_port(), crate::free_port());
        let config = dir.path().join("silt-test-garage.toml");
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) as u8))
            .collect();
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n",
                meta = dir.path().join("meta").display(),
                data = dir.path().join("data").display(),
            ),
        )
        .expect("write garage config");
        let log = dir.path().join("garage.log");
        let child = spawn_server(bin, &config, Some(&log));
        let mut garage = GarageProcess {
            child,
            bin: bin.to_path_buf(),
            config,
            s3_port,
            bucket: "silt".into(),
            key_id: String::new(),
            secret: String::new(),
            _dir: dir,
        };
        let (bin, config) = (garage.bin.clone(), garage.config.clone());
        let log_tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        };
        let node = crate::poll_until(Duration::from_secs(30), || {
            let out = garage_cli(&bin, &config, &["node", "id", "-q"]).ok();
            async move {
                out.and_then(|o| o.trim().split('@').next().map(str::to_string))
                    .filter(|id| !id.is_empty())
            }
        })
        .await
        .ok_or_else(|| format!("`garage node id` never answered; its log: {}", log_tail()))?;
        // `node id` reads the key file the server writes first; the layout commands need its
        // RPC listener, which comes up a moment later: retry until it answers.
        let mut last_error = String::new();
        let mut exited = None;
        let assigned = crate::poll_until(Duration::from_secs(20), || {
            exited = garage.child.try_wait().ok().flatten();
            let result = garage_cli(
                &bin,
                &config,
                &["layout", "assign", "-z", "dc1", "-c", "1G", &node],
            );
            if let Err(e) = &result {
                last_error.clone_from(e);
            }
            let done = result.is_ok() || exited.is_some();
            async move { done.then_some(()) }
        })
        .await;
        if let Some(status) = exited {
            return Err(format!(
                "the server exited ({status}); its log: {}",
                log_tail()
            ));
        }
        if assigned.is_none() {
            return Err(format!(
                "its RPC never accepted the layout: {last_error}; its log: {}",
                log_tail()
            ));
        }
        garage.run(&["layout", "apply", "--version", "1"]);
        let bucket = garage.bucket.clone();
        crate::poll_until(Duration::from_secs(30), || {
            let ok = garage_cli(&bin, &config, &["bucket", "create", &bucket]).is_ok();
            async move { ok.then_some(()) }
        })
        .await
        .ok_or_else(|| format!("the bucket was never created; its log: {}", log_tail()))?;
        let key = garage.run(&["key", "create", "silt-key"]);
        garage.key_id = field(&key, "Key ID").expect("key id in `garage key create` output");
        garage.secret = field(&key, "Secret key").expect("secret in `garage key create` output");
        garage.run(&[
            "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", "silt-key",
        ]);
        garage.run(&["key", "allow", "--create-bucket", "silt-key"]);
        Ok(garage)
    }

    /// Kills Garage (SIGKILL), starts it again on the same config and data, and waits until its
    /// S3 API serves the bucket again.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_server(&self.bin, &self.config, None);
        let store = self.store("restart-probe");
        crate::wait_for("garage to serve S3 again", Duration::from_secs(60), || {
            let store = store.clone();
            async move {
                let path = object_store::path::Path::from("probe");
                use object_store::ObjectStoreExt;
                store
                    .put(&path, bytes::Bytes::from_static(b"x").into())
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
    }

    fn run(&self, args: &[&str]) -> String {
        garage_cli(&self.bin, &self.config, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// S3 settings for this server, with its key.
    pub fn s3_options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint()),
            region: Some("garage".into()),
            allow_http: true,
            virtual_hosted_style: false,
            credentials: Some((self.key_id.clone(), self.secret.clone())),
            retry_for: None,
            sign_payload: None,
        }
    }

    /// An object store on this server under `prefix`.
    pub fn store(&self, prefix: &str) -> std::sync::Arc<dyn object_store::ObjectStore> {
        open_object_store(&self.url(prefix), &self.s3_options()).expect("open garage store")
    }

    /// Broker flags and environment for this server.
    pub fn broker_args(&self, prefix: &str) -> (Vec<String>, Vec<(String, String)>) {
        let args = [
            ("--object-store", self.url(prefix)),
            ("--s3-endpoint", self.endpoint()),
            ("--s3-region", "garage".to_string()),
            ("--s3-allow-http", "true".to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect();
        let env = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), self.secret.clone()),
        ];
        (args, env)
    }
}

/// Starts the server; its warnings and errors go to `log` when given.
fn spawn_server(bin: &Path, config: &Path, log: Option<&Path>) -> Child {
    let stderr = log
        .and_then(|path| std::fs::File::create(path).ok())
        .map_or_else(Stdio::null, Stdio::from);
    Command::new(bin)
        .arg("-c")
        .arg(config)
        .arg("server")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn garage")
}

impl Drop for GarageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
