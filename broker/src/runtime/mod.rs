//! The runtime: assembles a broker from its settings and injected components, runs its
//! background loops, serves its edges, and stops it in order.
//!
//! [`Builder`] takes the [`Settings`] and, optionally, the metadata store, the object store and
//! the clock (tests inject them; otherwise they are opened from the settings, [`stores`]).
//! [`Builder::start`] loads the cluster view, starts the flusher, housekeeping, membership and
//! the controller ([`tasks`] is their one loop shape), builds the protocol-neutral
//! [`core::Broker`](crate::core::Broker) and serves the gRPC edge and the admin server.
//! Shutdown order, bounded by `--shutdown-timeout-ms`: readiness turns false → stop accepting
//! produce → flush and commit the WAL cache (in-flight calls get their acks) → stop the
//! controller and release ownership (revoke the lease: the others take over at once) → answer
//! produce with the new owners until clients stop calling → stop the listeners → stop the
//! admin server.

pub mod stores;
pub mod tasks;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStore;
use silt_metadata::catalog::Catalog;
use silt_metadata::codec::BrokerRecord;
use silt_metadata::{Clock, MetaStore, SystemClock};
use silt_storage::cache::{ReadCacheConfig, SegmentCache};
use silt_storage::object::InstrumentedStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::cluster::ClusterView;
use crate::cluster::controller::Controller;
use crate::cluster::membership::Membership;
use crate::core::fetch::FetchPath;
use crate::core::flusher::Flusher;
use crate::core::groups::Coordinator;
use crate::core::index_pages::IndexPages;
use crate::core::log_index::LogIndex;
use crate::core::produce::{ProduceLimits, ProducePath};
use crate::core::topics::TopicTable;
use crate::core::wal_cache::{WalCache, run_linger_timer};
use crate::core::{Broker, BrokerParts, Murmur2, TopicDefaults};
use crate::edge::grpc::{self, GrpcForwarder};
use crate::housekeeping::compaction::{CompactionSettings, Compactor};
use crate::housekeeping::{HistoryCompaction, Housekeeper};
use crate::observe::admin::{self, AdminSource, Readiness};
use crate::observe::metastore::InstrumentedMeta;
use crate::observe::metrics::{Metrics, StateSample};
use crate::settings::Settings;

/// After leaving the cluster, the broker keeps answering (with the new owners) until no produce
/// call has arrived for this long...
const DRAIN_QUIET: Duration = Duration::from_millis(250);
/// ...or this long has passed.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// Builds a broker: settings plus the components a caller wants to inject.
pub struct Builder {
    settings: Settings,
    clock: Arc<dyn Clock>,
    meta: Option<Arc<dyn MetaStore>>,
    objects: Option<Arc<dyn ObjectStore>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    /// The address gRPC is served on.
    pub addr: SocketAddr,
    /// The address of the admin HTTP server (`/metrics`, `/livez`, `/readyz`).
    pub admin_addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl BrokerHandle {
    /// Starts the ordered shutdown and waits for it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.task.await?
    }

    /// Waits until the broker stops by itself (it does not, unless `cancel` fires).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }

    /// The token that stops the broker.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Builder {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            clock: SystemClock::new(),
            meta: None,
            objects: None,
        }
    }

    /// Uses another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Uses this metadata store instead of the one the settings name.
    pub fn with_meta_store(mut self, meta: Arc<dyn MetaStore>) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Uses this object store instead of the one the settings name.
    pub fn with_object_store(mut self, objects: Arc<dyn ObjectStore>) -> Self {
        self.objects = Some(objects);
        self
    }

    /// Opens (or takes) the stores, loads metadata, binds the listener and starts serving.
    pub async fn start(self) -> anyhow::Result<BrokerHandle> {
        let Builder {
            settings: s,
            clock,
            meta,
            objects,
        } = self;
        silt_storage::object::create_dir_durably(&s.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", s.data_dir.display()))?;
        for warning in s.warnings() {
            tracing::warn!("{warning}");
        }
        // The admin server comes up first: /livez answers while the broker loads, /readyz
        // says what it is waiting for.
        let metrics = Arc::new(Metrics::new(&s.broker_id, s.wal_cache_bytes));
        let admin_state = Arc::new(RuntimeAdmin {
            metrics: metrics.clone(),
            readiness: Readiness::default(),
            view: std::sync::OnceLock::new(),
            wal: std::sync::OnceLock::new(),
            groups: std::sync::OnceLock::new(),
        });
        let admin_listener = admin::bind(s.admin_listen).await?;
        let admin_addr = admin_listener.local_addr()?;
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            admin_state.clone(),
            admin::HEADER_TIMEOUT,
            admin_stop.clone(),
        ));
        info!("serving admin HTTP (/metrics, /livez, /readyz) on {admin_addr}");
        let upkeep = {
            let metrics = metrics.clone();
            let stop = admin_stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => metrics.upkeep(),
                    }
                }
            })
        };
        let meta = match meta {
            Some(meta) => meta,
            None => stores::open_metadata(&s, &clock).await?,
        };
        let meta = InstrumentedMeta::wrap(meta, metrics.recorder());
        let catalog = Catalog::new(meta, &s.cluster);
        let (objects, probe, url) = match objects {
            Some(objects) => (objects.clone(), objects.clone(), format!("{objects}")),
            None => stores::open_objects(&s).await?,
        };
        stores::claim(probe.as_ref(), &s.cluster, &url, clock.now_ms()).await?;
        let store: Arc<dyn ObjectStore> =
            Arc::new(InstrumentedStore::new(objects, metrics.object_store()));
        let cache_config = ReadCacheConfig {
            memory_bytes: s.cache_memory_bytes as usize,
            disk_bytes: s.cache_disk_bytes as usize,
            disk_dir: (s.cache_disk_bytes > 0).then(|| s.data_dir.join("cache")),
            metrics: metrics.read_cache(),
            ..ReadCacheConfig::default()
        };
        let cache = Arc::new(SegmentCache::open(store.clone(), cache_config).await?);

        // This process's incarnation: newer than any earlier one of this broker id.
        let previous = catalog
            .store()
            .get(&catalog.keys().writer(&s.broker_id))
            .await?
            .and_then(|kv| Catalog::parse_incarnation(&kv.value))
            .unwrap_or(0);
        let incarnation = (clock.now_ms().max(0) as u64).max(previous + 1);

        // The cluster view loads every key, then follows one watch from there. Registering the
        // new incarnation afterwards fences every earlier one of this broker id and is the
        // write the view must have replayed to be consistent.
        let topics = Arc::new(TopicTable::default());
        let index = Arc::new(LogIndex::new());
        let view = Arc::new(ClusterView::new(
            catalog.clone(),
            s.broker_id.clone(),
            incarnation,
            topics.clone(),
            index.clone(),
        ));
        view.count_ownership_changes(metrics.ownership_changes());
        let _ = admin_state.view.set(view.clone());
        let watch_from = view.load().await?;
        let fence = catalog.register_writer(&s.broker_id, incarnation).await?;
        view.set_ready_at(fence.revision);
        let committed: HashSet<String> = catalog
            .load_segments()
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let segment_count = committed.len();
        let view_cancel = CancellationToken::new();
        let view_task = tokio::spawn(view.clone().run(watch_from, view_cancel.clone()));
        if !view.wait_ready(Duration::from_secs(30)).await {
            anyhow::bail!("the metadata watch did not catch up within 30 s; is etcd overloaded?");
        }

        // The data path: WAL cache → flusher (segment objects, commits) → index.
        let (wal, outputs) = WalCache::new(
            s.wal_cache_bytes as usize,
            s.flush_bytes as usize,
            Duration::from_millis(s.linger_ms),
        );
        let wal = Arc::new(wal.with_idle_linger(Duration::from_millis(s.idle_linger_ms)));
        let _ = admin_state.wal.set(wal.clone());
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let flusher = Flusher::new(
            wal.clone(),
            store.clone(),
            cache.clone(),
            catalog.clone(),
            index.clone(),
            view.clone(),
            clock.clone(),
            metrics.clone(),
            s.max_inflight_flushes,
        );
        let flusher_task = tracker.spawn(flusher.run(outputs.sealed));
        let linger_task = tokio::spawn(run_linger_timer(wal.clone(), outputs.opened));

        let index_pages = Arc::new(IndexPages::new(
            store.clone(),
            usize::try_from(s.index_page_cache_bytes).unwrap_or(usize::MAX),
            metrics.clone(),
        ));
        let housekeeper = Arc::new(Housekeeper {
            catalog: catalog.clone(),
            topics: topics.clone(),
            index: index.clone(),
            store: store.clone(),
            cache: cache.clone(),
            clock: clock.clone(),
            fence: fence.clone(),
            view: view.clone(),
            metrics: metrics.clone(),
            gc_grace_ms: s.gc_grace_ms as i64,
            unreferenced: Default::default(),
            history: HistoryCompaction::keeping(s.metadata_history_ms as i64),
            page_objects: Default::default(),
            archive_refs: Default::default(),
        });
        {
            let hk = housekeeper.clone();
            tracker.spawn(async move {
                if let Err(e) = hk.remove_orphans(&committed).await {
                    tracing::warn!(error = %e, "orphan cleanup failed; it runs again at next start");
                }
            });
        }
        tracker.spawn(housekeeper.run(
            Duration::from_millis(s.retention_check_ms.max(100)),
            cancel.clone(),
        ));
        if s.compaction_target_bytes > 0 {
            let compactor = Arc::new(Compactor {
                catalog: catalog.clone(),
                topics: topics.clone(),
                index: index.clone(),
                store: store.clone(),
                clock: clock.clone(),
                view: view.clone(),
                metrics: metrics.clone(),
                settings: CompactionSettings {
                    target_bytes: s.compaction_target_bytes,
                    min_age: Duration::from_millis(s.compaction_min_age_ms),
                    max_delay: Duration::from_millis(s.compaction_max_delay_ms),
                    bytes_per_sec: s.compaction_bytes_per_sec,
                    swap_deadline: Duration::from_millis(s.gc_grace_ms / 2),
                    key_map_bytes: usize::try_from(s.key_compaction_map_bytes)
                        .unwrap_or(usize::MAX),
                    page_parts: s.index_page_parts as usize,
                    root_pages: s.index_root_pages as usize,
                    archive_pages: s.index_archive_pages as usize,
                },
                seq: Default::default(),
            });
            tracker.spawn(compactor.run(
                Duration::from_millis(s.compaction_check_ms.max(100)),
                cancel.clone(),
            ));
        }

        // The protocol-neutral core, and the gRPC edge over it.
        let produce = Arc::new(ProducePath::new(
            topics.clone(),
            wal.clone(),
            clock.clone(),
            metrics.clone(),
            ProduceLimits {
                max_request_bytes: s.max_request_bytes as usize,
                max_request_records: s.max_request_records as usize,
                max_batch_bytes: s.max_batch_bytes as usize,
                max_uncompressed_bytes: s.max_uncompressed_bytes,
            },
        ));
        let fetch = Arc::new(FetchPath {
            topics: topics.clone(),
            index: index.clone(),
            cache,
            pages: index_pages.clone(),
            metrics: metrics.clone(),
            stopping: cancel.clone(),
        });
        // Consumer groups: the coordinator of the slots this broker owns.
        let groups = Coordinator::new(
            view.clone(),
            catalog.clone(),
            topics.clone(),
            index.clone(),
            clock.clone(),
        );
        let _ = admin_state.groups.set(groups.clone());
        let groups_stop = CancellationToken::new();
        let groups_task = tokio::spawn(groups.clone().run(groups_stop.clone()));
        // The gRPC frame limit leaves room for framing so the produce path, not the transport,
        // refuses an over-limit request with a message naming `max-request-bytes`.
        let max_message = (s.max_request_bytes as usize)
            .saturating_mul(2)
            .saturating_add(1 << 20);
        let broker = Arc::new(Broker::new(BrokerParts {
            catalog: catalog.clone(),
            view: view.clone(),
            topics: topics.clone(),
            index,
            wal: wal.clone(),
            produce,
            fetch,
            forwarder: Arc::new(GrpcForwarder::new(&s.broker_id, max_message)),
            partitioner: Arc::new(Murmur2),
            metrics: metrics.clone(),
            clock: clock.clone(),
            groups: groups.clone(),
            defaults: TopicDefaults {
                retention_ms: s.default_retention_ms,
                max_record_bytes: s.default_max_record_bytes,
                max_batch_bytes: s.max_batch_bytes.min(u64::from(u32::MAX)) as u32,
            },
        }));
        let listener = TcpListener::bind(s.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", s.listen))?;
        let addr = listener.local_addr()?;

        // Membership and the controller.
        let membership = Arc::new(Membership::new(
            catalog.clone(),
            BrokerRecord {
                v: 1,
                broker_id: s.broker_id.clone(),
                address: s.advertise.clone().unwrap_or_else(|| addr.to_string()),
                incarnation,
                started_at_ms: clock.now_ms(),
                formats: vec![silt_metadata::codec::FORMAT_INDEX_ARCHIVES.into()],
            },
            Duration::from_millis(s.lease_ttl_ms),
        ));
        membership.register().await?;
        admin_state.readiness.set_registered();
        let leave = CancellationToken::new();
        let controller = Controller {
            view: view.clone(),
            catalog,
            topics: topics.clone(),
            lease: membership.lease(),
        };
        let controller_stop = CancellationToken::new();
        let controller_task = tokio::spawn(controller.run(controller_stop.clone()));
        let membership_task = tokio::spawn(membership.run(leave.clone()));
        info!(
            broker_id = %s.broker_id,
            incarnation,
            data_dir = %s.data_dir.display(),
            object_store = %url,
            metadata = %s.metadata,
            topics = topics.all().len(),
            segments = segment_count,
            "broker started"
        );
        info!(
            "serving gRPC on {addr} (linger {} ms, flush at {} bytes)",
            s.linger_ms, s.flush_bytes
        );

        // A newer process of this broker id supersedes this one: stop (it can commit nothing).
        let superseded = Arc::new(AtomicBool::new(false));
        {
            let (view, cancel, superseded) = (view.clone(), cancel.clone(), superseded.clone());
            tokio::spawn(async move {
                let mut changes = view.subscribe_topology();
                while changes.changed().await.is_ok() {
                    if !view.is_current() {
                        tracing::error!(
                            broker_id = %view.broker_id(),
                            "a newer incarnation of this broker id started elsewhere; stopping"
                        );
                        superseded.store(true, Ordering::Relaxed);
                        cancel.cancel();
                        return;
                    }
                }
            });
        }

        // Serving, then the ordered shutdown, bounded by the shutdown timeout.
        let shutdown_timeout = Duration::from_millis(s.shutdown_timeout_ms);
        let stage = Arc::new(Mutex::new("serving"));
        let set_stage = {
            let stage = stage.clone();
            move |now: &'static str| *stage.lock().unwrap_or_else(|e| e.into_inner()) = now
        };
        let wal_for_deadline = wal.clone();
        let deadline = {
            let cancel = cancel.clone();
            async move {
                cancel.cancelled().await;
                tokio::time::sleep(shutdown_timeout).await;
            }
        };
        // The gRPC edge serves until ownership is handed over: a client that reaches this broker
        // while it drains is forwarded to the new owner rather than refused.
        let server_stop = CancellationToken::new();
        let broker_for_drain = broker.clone();
        let grpc_task = {
            let stop = server_stop.clone();
            tokio::spawn(grpc::serve(
                listener,
                broker,
                max_message,
                (s.client_keepalive_ms > 0).then(|| Duration::from_millis(s.client_keepalive_ms)),
                cancel.clone(),
                async move { stop.cancelled().await },
            ))
        };
        let orderly = {
            let (shutdown, wal_for_shutdown, set_stage_now) =
                (cancel.clone(), wal.clone(), set_stage.clone());
            let admin_state = admin_state.clone();
            async move {
                // 1. Not ready from the first moment: load balancers and clients move away.
                shutdown.cancelled().await;
                admin_state.readiness.set_draining();
                info!("shutting down: not ready; refusing new produce, flushing the WAL cache");
                // 2. Stop accepting produce; seal and flush what was accepted. In-flight calls
                //    finish with their acks.
                set_stage_now("flushing the WAL cache and answering in-flight produce calls");
                wal_for_shutdown.close();
                linger_task.abort();
                drop(wal);
                tracker.close();
                tracker.wait().await;
                drop(flusher_task);
                //    Offset commits already accepted are written and answered too.
                groups_stop.cancel();
                let _ = groups_task.await;
                // 3. Everything accepted is committed: leave the cluster at once, which hands
                //    this broker's partitions (and the controller's job, if it had it) to the
                //    others.
                set_stage_now("leaving the cluster");
                controller_stop.cancel();
                let _ = controller_task.await;
                leave.cancel();
                let _ = membership_task.await;
                // 4. Send clients to the new owners until they stop calling (they re-route on
                //    the first not-owner answer), so no request is on the wire when the
                //    listener closes; bounded by DRAIN_GRACE.
                set_stage_now("sending clients to the new owners");
                broker_for_drain.set_draining();
                let drain_started = tokio::time::Instant::now();
                while drain_started.elapsed() < DRAIN_GRACE
                    && broker_for_drain.idle_for() < DRAIN_QUIET
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // 5. Stop the listeners; calls still running (long polls) finish.
                set_stage_now("stopping the gRPC listener");
                server_stop.cancel();
                let served = grpc_task
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("gRPC server task failed: {e}")));
                view_cancel.cancel();
                let _ = view_task.await;
                admin_stop.cancel();
                let _ = admin_task.await;
                let _ = upkeep.await;
                info!("broker stopped");
                if superseded.load(Ordering::Relaxed) {
                    anyhow::bail!("stopped: a newer incarnation of this broker id took over");
                }
                served
            }
        };
        let task = tokio::spawn(async move {
            tokio::select! {
                result = orderly => result,
                () = deadline => {
                    let stage = *stage.lock().unwrap_or_else(|e| e.into_inner());
                    let unflushed = wal_for_deadline.bytes_in_use();
                    tracing::error!(
                        stage,
                        unflushed_bytes = unflushed,
                        "shutdown did not finish within {shutdown_timeout:?}; exiting. Records \
                         not yet committed were never acknowledged; their producers see the \
                         connection close and retry. This broker's partitions move to others \
                         when its lease expires."
                    );
                    anyhow::bail!(
                        "shutdown did not finish within {shutdown_timeout:?} (stuck {stage}, \
                         {unflushed} bytes not committed)"
                    )
                }
            }
        });
        Ok(BrokerHandle {
            addr,
            admin_addr,
            cancel,
            task,
        })
    }
}

/// What the admin server reads: the registry, readiness and, once loaded, the cluster view and
/// the WAL cache.
#[derive(Debug)]
struct RuntimeAdmin {
    metrics: Arc<Metrics>,
    readiness: Readiness,
    view: std::sync::OnceLock<Arc<ClusterView>>,
    wal: std::sync::OnceLock<Arc<WalCache>>,
    groups: std::sync::OnceLock<Arc<Coordinator>>,
}

impl AdminSource for RuntimeAdmin {
    fn sample(&self) -> StateSample {
        let mut sample = StateSample {
            ready: self.ready().is_ok(),
            wal_cache_bytes: self.wal.get().map_or(0, |w| w.bytes_in_use() as u64),
            ..StateSample::default()
        };
        if let Some(view) = self.view.get() {
            let me = view.broker_id();
            sample.owned_partitions = view.owners().values().filter(|o| o.broker_id == me).count();
            sample.controller = view.controller().is_some_and(|(id, _)| id == me);
            sample.brokers = view.brokers().len();
        }
        sample
    }

    fn extra_series(&self) -> String {
        self.groups
            .get()
            .map(|g| self.metrics.render_group_lag(&g.lag_snapshot()))
            .unwrap_or_default()
    }

    fn ready(&self) -> Result<(), &'static str> {
        self.readiness
            .check(self.view.get().is_some_and(|v| v.is_ready()))
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use silt_api::v1 as api;
    use silt_api::v1::admin_client::AdminClient;
    use silt_api::v1::log_client::LogClient;
    use silt_metadata::{EmbeddedStore, ManualClock};

    use super::*;

    /// The runtime assembles a whole broker around injected components: an in-memory metadata
    /// store, an in-memory object store and a manual clock; the gRPC edge serves it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_runs_on_injected_stores_and_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let meta = EmbeddedStore::open_in_memory(clock.clone()).unwrap();
        let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            linger_ms: 5,
            ..Settings::default()
        };
        let handle = Builder::new(settings)
            .with_clock(clock.clone())
            .with_meta_store(meta)
            .with_object_store(objects.clone())
            .start()
            .await
            .unwrap();
        let url = format!("http://{}", handle.addr);
        let mut admin = AdminClient::connect(url.clone()).await.unwrap();
        admin
            .create_topic(api::CreateTopicRequest {
                name: "t".into(),
                partitions: 1,
                config: None,
            })
            .await
            .unwrap();
        let mut log = LogClient::connect(url).await.unwrap();
        let acked = log
            .produce(api::ProduceRequest {
                topic: "t".into(),
                records: vec![api::Record {
                    value: bytes::Bytes::from_static(b"hello"),
                    ..Default::default()
                }],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(matches!(
            acked.results[0].outcome,
            Some(api::record_result::Outcome::Ack(api::RecordAck {
                offset: 0,
                ..
            }))
        ));
        let fetched = log
            .fetch(api::FetchRequest {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched.records[0].value.as_deref(), Some(&b"hello"[..]));
        // The record's segment and the cluster marker are in the injected store; the created
        // timestamp is the injected clock's.
        let names: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(objects.list(None))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        assert!(names.iter().any(|n| n.ends_with(".seg")), "{names:?}");
        let described = admin
            .describe_topic(api::DescribeTopicRequest { name: "t".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(described.topic.unwrap().created_at_ms, 1_700_000_000_000);
        handle.shutdown().await.unwrap();
    }
}
