//! The backends a test broker runs on: the embedded defaults, etcd + Garage, or etcd + MinIO
//! (real processes on loopback). Suites written once run on all three with
//! [`backend_tests!`](crate::backend_tests). Garage stays beside MinIO: it ignores conditional
//! PUTs, which keeps Silt honest about not relying on them.

use crate::{BrokerOptions, EtcdProcess, GarageProcess, MinioProcess};

/// Which metadata and object store a test broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded metadata and a local-directory object store under the data dir.
    Embedded,
    /// etcd metadata and a Garage bucket.
    EtcdGarage,
    /// etcd metadata and a MinIO bucket.
    EtcdMinio,
}

/// The running servers of a backend and a data dir; keep it alive for the test.
#[derive(Debug)]
pub struct BackendGuard {
    pub kind: Backend,
    pub dir: tempfile::TempDir,
    pub etcd: Option<EtcdProcess>,
    pub garage: Option<GarageProcess>,
    pub minio: Option<MinioProcess>,
}

impl BackendGuard {
    /// Starts what `kind` needs; `None` when its servers are not installed (and not required).
    pub async fn start(kind: Backend) -> Option<BackendGuard> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (etcd, garage, minio) = match kind {
            Backend::Embedded => (None, None, None),
            Backend::EtcdGarage => (
                Some(EtcdProcess::start().await?),
                Some(GarageProcess::start().await?),
                None,
            ),
            Backend::EtcdMinio => (
                Some(EtcdProcess::start().await?),
                None,
                Some(MinioProcess::start().await?),
            ),
        };
        Some(BackendGuard {
            kind,
            dir,
            etcd,
            garage,
            minio,
        })
    }

    /// Options for a broker on this backend.
    pub fn broker_options(&self) -> BrokerOptions {
        let mut options = BrokerOptions::new(self.dir.path());
        if let Some(etcd) = &self.etcd {
            options = options
                .arg("--metadata", etcd.url())
                .arg("--cluster", "suite");
            let (args, env) = match (&self.garage, &self.minio) {
                (Some(garage), _) => garage.broker_args("suite"),
                (_, Some(minio)) => minio.broker_args("suite"),
                _ => unreachable!("etcd backends have an object store"),
            };
            options.args.extend(args);
            options.env = env;
        }
        options
    }
}

/// Runs each listed `async fn name(backend: Backend)` as three tests, `embedded::name`,
/// `etcd_garage::name` and `etcd_minio::name`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Embedded).await
                }
            )*
        }
        mod etcd_garage {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::EtcdGarage).await
                }
            )*
        }
        mod etcd_minio {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::EtcdMinio).await
                }
            )*
        }
    };
}
