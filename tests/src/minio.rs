//! A real MinIO server on loopback: one drive in a temporary directory, one bucket created
//! through S3 itself (CreateBucket), root credentials for tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use silt_storage::object::{S3Options, create_bucket_if_missing, open_object_store};

const USER: &str = "silt-test";
const PASSWORD: &str = "silt-test-secret-key";

/// A running MinIO with bucket `silt`. Dropping it kills the process.
#[derive(Debug)]
pub struct MinioProcess {
    child: Child,
    port: u16,
    pub bucket: String,
    _dir: tempfile::TempDir,
}

/// The minio binary: `SILT_MINIO_BIN`, else `~/.cache/silt/tools/bin/minio` (where `.ci/run`
/// installs it), else `minio` on the PATH.
fn minio_bin() -> Option<PathBuf> {
    let cached =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/silt/tools/bin/minio"));
    crate::require_tool(
        "minio",
        "SILT_MINIO_BIN",
        cached.as_slice(),
        "go install github.com/minio/minio@latest",
    )
}

impl MinioProcess {
    /// Starts MinIO and creates bucket `silt`, or returns `None` when no minio binary exists
    /// and `SILT_ALLOW_SKIP=1` (see [`crate::require_tool`]).
    pub async fn start() -> Option<MinioProcess> {
        let bin = minio_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("silt-test-minio-")
            .tempdir()
            .expect("tempdir");
        let (port, console) = (crate::free_port(), crate::free_port());
        let mut child = Command::new(&bin)
            .arg("server")
            .arg(dir.path().join("data"))
            .arg("--address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--console-address")
            .arg(format!("127.0.0.1:{console}"))
            .arg("--quiet")
            .env("MINIO_ROOT_USER", USER)
            .env("MINIO_ROOT_PASSWORD", PASSWORD)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn minio");
        let health = format!("127.0.0.1:{port}");
        let ready = crate::wait_for("minio to be ready", Duration::from_secs(60), || {
            let exited = child.try_wait().ok().flatten();
            assert!(exited.is_none(), "minio exited during start-up: {exited:?}");
            let addr: std::net::SocketAddr = health.parse().expect("address");
            async move {
                crate::http_get(addr, "/minio/health/ready")
                    .await
                    .filter(|(status, _)| *status == 200)
                    .map(|_| ())
            }
        });
        ready.await;
        let minio = MinioProcess {
            child,
            port,
            bucket: "silt".into(),
            _dir: dir,
        };
        create_bucket_if_missing(&minio.url("probe"), &minio.s3_options())
            .await
            .expect("create the test bucket");
        Some(minio)
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// S3 settings for this server, with its credentials.
    pub fn s3_options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            allow_http: true,
            virtual_hosted_style: false,
            credentials: Some((USER.into(), PASSWORD.into())),
            retry_for: None,
            sign_payload: None,
        }
    }

    /// An object store on this server under `prefix`.
    pub fn store(&self, prefix: &str) -> std::sync::Arc<dyn object_store::ObjectStore> {
        open_object_store(&self.url(prefix), &self.s3_options()).expect("open minio store")
    }

    /// Broker flags and environment for this server.
    pub fn broker_args(&self, prefix: &str) -> (Vec<String>, Vec<(String, String)>) {
        let args = [
            ("--object-store", self.url(prefix)),
            ("--s3-endpoint", self.endpoint()),
            ("--s3-region", "us-east-1".to_string()),
            ("--s3-allow-http", "true".to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect();
        let env = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), USER.to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), PASSWORD.to_string()),
        ];
        (args, env)
    }
}

impl Drop for MinioProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
