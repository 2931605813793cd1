//! A cluster of real brokers on loopback: one etcd, one object store shared by all brokers
//! (Garage when installed — `.ci/run` requires it — else a shared local directory), and broker
//! slots that tests start, kill (-9), pause (SIGSTOP), resume, stop (SIGTERM) and restart.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use silt_api::v1::ClusterStatusResponse;
use silt_client::Client;

use crate::{BrokerOptions, BrokerProcess, EtcdProcess, GarageProcess, wait_for};

/// One broker slot: its options (data dir, id) outlive its processes.
#[derive(Debug)]
struct Slot {
    options: BrokerOptions,
    process: Option<BrokerProcess>,
    paused: bool,
}

/// etcd, an object store and brokers `b0`, `b1`, ...
#[derive(Debug)]
pub struct Cluster {
    pub etcd: EtcdProcess,
    pub garage: Option<GarageProcess>,
    pub minio: Option<crate::MinioProcess>,
    dir: tempfile::TempDir,
    name: String,
    ttl_ms: u64,
    linger_ms: u64,
    slots: Vec<Slot>,
}

impl Cluster {
    /// Starts etcd and the object store (no brokers yet); `None` when etcd is not installed
    /// and not required.
    pub async fn start(name: &str, ttl_ms: u64, linger_ms: u64) -> Option<Cluster> {
        let etcd = EtcdProcess::start().await?;
        let garage = GarageProcess::start().await;
        Some(Cluster {
            etcd,
            garage,
            minio: None,
            dir: tempfile::tempdir().expect("tempdir"),
            name: name.to_string(),
            ttl_ms,
            linger_ms,
            slots: Vec::new(),
        })
    }

    /// Like [`Self::start`], with a MinIO bucket as the shared object store.
    pub async fn start_on_minio(name: &str, ttl_ms: u64, linger_ms: u64) -> Option<Cluster> {
        let etcd = EtcdProcess::start().await?;
        let minio = crate::MinioProcess::start().await?;
        Some(Cluster {
            etcd,
            garage: None,
            minio: Some(minio),
            dir: tempfile::tempdir().expect("tempdir"),
            name: name.to_string(),
            ttl_ms,
            linger_ms,
            slots: Vec::new(),
        })
    }

    /// The lease TTL the brokers use.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// Which object store the brokers share, for reports.
    pub fn store_kind(&self) -> &'static str {
        if self.garage.is_some() {
            "garage"
        } else if self.minio.is_some() {
            "minio"
        } else {
            "shared local directory"
        }
    }

    fn options(&self, slot: usize) -> BrokerOptions {
        let mut options = BrokerOptions::new(&self.dir.path().join(format!("b{slot}")))
            .arg("--metadata", self.etcd.url())
            .arg("--cluster", &self.name)
            .arg("--broker-id", format!("b{slot}"))
            .arg("--lease-ttl-ms", self.ttl_ms);
        options.linger_ms = self.linger_ms;
        let s3 = match (&self.garage, &self.minio) {
            (Some(garage), _) => Some(garage.broker_args(&self.name)),
            (_, Some(minio)) => Some(minio.broker_args(&self.name)),
            _ => None,
        };
        match s3 {
            Some((args, env)) => {
                options.args.extend(args);
                options.env = env;
            }
            None => {
                let objects: PathBuf = self.dir.path().join("objects");
                std::fs::create_dir_all(&objects).expect("objects dir");
                options = options.arg("--object-store", format!("file://{}", objects.display()));
            }
        }
        options
    }

    /// Adds a broker slot, starts it and returns its index.
    pub async fn add_broker(&mut self) -> usize {
        self.add_broker_with(|o| o).await
    }

    /// Adds a broker slot with changed options, starts it and returns its index.
    pub async fn add_broker_with(
        &mut self,
        change: impl FnOnce(BrokerOptions) -> BrokerOptions,
    ) -> usize {
        let slot = self.slots.len();
        let options = change(self.options(slot));
        self.slots.push(Slot {
            options: options.clone(),
            process: Some(BrokerProcess::start(options).await),
            paused: false,
        });
        slot
    }

    /// Starts a stopped or killed broker again (same id and data dir, new incarnation).
    pub async fn restart(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        assert!(s.process.is_none(), "broker b{slot} is running");
        s.process = Some(BrokerProcess::start(s.options.clone()).await);
        s.paused = false;
    }

    /// The running process of a slot.
    pub fn broker(&self, slot: usize) -> &BrokerProcess {
        self.slots[slot]
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("broker b{slot} is not running"))
    }

    /// True while the slot has a running (possibly paused) process.
    pub fn is_running(&self, slot: usize) -> bool {
        self.slots[slot].process.is_some()
    }

    /// True while the slot's process is paused.
    pub fn is_paused(&self, slot: usize) -> bool {
        self.slots[slot].paused
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the cluster has no broker slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The exit status of a slot's process once it has exited by itself (a crash); the slot
    /// is then empty, as after [`Self::kill9`].
    pub fn exited(&mut self, slot: usize) -> Option<ExitStatus> {
        let status = self.slots[slot].process.as_mut()?.exited()?;
        self.slots[slot].process = None;
        Some(status)
    }

    /// Waits for a broker started with a `SILT_FAILPOINT` to abort at it (SIGABRT).
    pub async fn wait_for_abort(&mut self, slot: usize) {
        use std::os::unix::process::ExitStatusExt;
        let status = wait_for(
            "a broker to crash at its failpoint",
            Duration::from_secs(60),
            || {
                let status = self.exited(slot);
                async move { status }
            },
        )
        .await;
        assert_eq!(status.signal(), Some(6), "b{slot} aborted: {status:?}");
    }

    /// Every object path in the shared store under `prefix`.
    pub async fn list_objects(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        self.object_store()
            .list(Some(&object_store::path::Path::from(prefix)))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list objects")
    }

    /// `kill -9`.
    pub fn kill9(&mut self, slot: usize) {
        if let Some(p) = self.slots[slot].process.take() {
            p.kill9();
        }
        self.slots[slot].paused = false;
    }

    /// SIGTERM, waiting (bounded) for the exit.
    pub fn terminate(&mut self, slot: usize) -> ExitStatus {
        let p = self.slots[slot]
            .process
            .take()
            .unwrap_or_else(|| panic!("broker b{slot} is not running"));
        if self.slots[slot].paused {
            p.signal("CONT");
            self.slots[slot].paused = false;
        }
        p.terminate(Duration::from_secs(60)).0
    }

    /// SIGSTOP: the process freezes with its memory, connections and pending work.
    pub fn pause(&mut self, slot: usize) {
        self.broker(slot).signal("STOP");
        self.slots[slot].paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, slot: usize) {
        self.broker(slot).signal("CONT");
        self.slots[slot].paused = false;
    }

    /// The broker ids that run and are not paused.
    pub fn serving_ids(&self) -> Vec<String> {
        (0..self.slots.len())
            .filter(|i| self.is_running(*i) && !self.is_paused(*i))
            .map(|i| format!("b{i}"))
            .collect()
    }

    /// The URLs of the brokers that run and are not paused, comma-separated (a client's
    /// bootstrap list).
    pub fn urls(&self) -> String {
        (0..self.slots.len())
            .filter(|i| self.is_running(*i) && !self.is_paused(*i))
            .map(|i| self.broker(i).url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client bootstrapped from every serving broker.
    pub async fn client(&self) -> Client {
        Client::connect(&self.urls())
            .await
            .expect("connect to the cluster")
    }

    /// The cluster status as a serving broker sees it.
    pub async fn status(&self) -> Option<ClusterStatusResponse> {
        let client = Client::connect(&self.urls()).await.ok()?;
        client.cluster_status().await.ok()
    }

    /// Waits until every partition of `topic` is owned by a serving broker in the eyes of
    /// every serving broker; returns how long that took.
    pub async fn wait_owned(&self, topic: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let serving = self.serving_ids();
        let urls: Vec<String> = (0..self.slots.len())
            .filter(|i| self.is_running(*i) && !self.is_paused(*i))
            .map(|i| self.broker(i).url())
            .collect();
        wait_for(
            &format!("every partition of {topic} owned by one of {serving:?}"),
            timeout,
            || {
                let (urls, serving) = (urls.clone(), serving.clone());
                async move {
                    for url in &urls {
                        let client = Client::connect(url).await.ok()?;
                        let status = client.cluster_status().await.ok()?;
                        let parts: Vec<_> = status
                            .partitions
                            .iter()
                            .filter(|p| p.topic == topic)
                            .collect();
                        let owned = !parts.is_empty()
                            && parts.iter().all(|p| serving.contains(&p.broker_id));
                        if !owned {
                            return None;
                        }
                    }
                    Some(())
                }
            },
        )
        .await;
        started.elapsed()
    }

    /// The object store the brokers share.
    pub fn object_store(&self) -> std::sync::Arc<dyn object_store::ObjectStore> {
        match (&self.garage, &self.minio) {
            (Some(garage), _) => garage.store(&self.name),
            (_, Some(minio)) => minio.store(&self.name),
            _ => std::sync::Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(
                    self.dir.path().join("objects"),
                )
                .expect("local object store"),
            ),
        }
    }

    /// The metadata catalog of the cluster, straight from etcd.
    pub async fn catalog(&self) -> silt_metadata::catalog::Catalog {
        let store = silt_metadata::EtcdStore::connect(&self.etcd.options())
            .await
            .expect("connect to etcd");
        silt_metadata::catalog::Catalog::new(std::sync::Arc::new(store), &self.name)
    }

    /// Partition → owner broker id, as a serving broker sees it.
    pub async fn owners(&self, topic: &str) -> Vec<(u32, String)> {
        let status = self.status().await.expect("cluster status");
        status
            .partitions
            .into_iter()
            .filter(|p| p.topic == topic)
            .map(|p| (p.partition, p.broker_id))
            .collect()
    }
}
