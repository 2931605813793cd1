//! The backends a test broker runs on: the embedded defaults, or etcd + Garage (real processes
//! on loopback). Suites written once run on both with [`backend_tests!`](crate::backend_tests).

use crate::{BrokerOptions, EtcdProcess, GarageProcess};

/// Which metadata and object store a test broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded metadata and a local-directory object store under the data dir.
    Embedded,
    /// etcd metadata and a Garage bucket.
    EtcdGarage,
}

/// The running servers of a backend and a data dir; keep it alive for the test.
#[derive(Debug)]
pub struct BackendGuard {
    pub kind: Backend,
    pub dir: tempfile::TempDir,
    pub etcd: Option<EtcdProcess>,
    pub garage: Option<GarageProcess>,
}

impl BackendGuard {
    /// Starts what `kind` needs; `None` when its servers are not installed (and not required).
    pub async fn start(kind: Backend) -> Option<BackendGuard> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (etcd, garage) = match kind {
            Backend::Embedded => (None, None),
            Backend::EtcdGarage => (
                Some(EtcdProcess::start().await?),
                Some(GarageProcess::start().await?),
            ),
        };
        Some(BackendGuard {
            kind,
            dir,
            etcd,
            garage,
        })
    }

    /// Options for a broker on this backend.
    pub fn broker_options(&self) -> BrokerOptions {
        let mut options = BrokerOptions::new(self.dir.path());
        if let (Some(etcd), Some(garage)) = (&self.etcd, &self.garage) {
            options = options
                .arg("--metadata", etcd.url())
                .arg("--cluster", "suite");
            let (args, env) = garage.broker_args("suite");
            options.args.extend(args);
            options.env = env;
        }
        options
    }
}

/// Runs each listed `async fn name(backend: Backend)` as two tests, `embedded::name` and
/// `etcd_garage::name`.
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
    };
}
