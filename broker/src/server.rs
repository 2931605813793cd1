//! Start-up and shutdown: builds the components from [`Settings`], serves gRPC, and stops in
//! order — stop accepting produce → flush and commit the WAL cache → stop gRPC.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use silt_api::v1::admin_server::AdminServer;
use silt_api::v1::log_server::LogServer;
use silt_metadata::catalog::Catalog;
use silt_metadata::codec::BrokerRecord;
use silt_metadata::{Clock, EmbeddedStore, MetaStore, SystemClock};
use silt_storage::cache::{ReadCacheConfig, SegmentCache};
use silt_storage::object::{InstrumentedStore, S3Options, open_object_store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::cluster::ClusterView;
use crate::controller::Controller;
use crate::fetch::FetchPath;
use crate::flusher::Flusher;
use crate::forward::Router;
use crate::housekeeping::Housekeeper;
use crate::log_index::LogIndex;
use crate::membership::Membership;
use crate::produce::{ProduceLimits, ProducePath};
use crate::service::{AdminService, LogService};
use crate::settings::Settings;
use crate::stats::Stats;
use crate::topics::TopicTable;
use crate::wal_cache::{WalCache, run_linger_timer};

/// A broker ready to serve.
pub struct Broker {
    settings: Settings,
    clock: Arc<dyn Clock>,
}

/// A running broker.
pub struct BrokerHandle {
    /// The address gRPC is served on.
    pub addr: SocketAddr,
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

impl Broker {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            clock: SystemClock::new(),
        }
    }

    /// Uses another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Opens the stores, loads metadata, binds the listener and starts serving.
    pub async fn start(self) -> anyhow::Result<BrokerHandle> {
        let s = self.settings;
        let clock = self.clock;
        silt_storage::object::create_dir_durably(&s.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", s.data_dir.display()))?;

        let meta: Arc<dyn MetaStore> = match s.metadata.as_str() {
            "memory" => EmbeddedStore::open_in_memory(clock.clone())?,
            #[cfg(feature = "etcd")]
            url if url.starts_with("etcd://") => {
                let mut options = silt_metadata::EtcdOptions::from_url(url)?;
                options.user = s.etcd_user.clone().zip(s.etcd_password.clone());
                if let Some(ca) = &s.etcd_ca {
                    let read = |p: &std::path::Path| {
                        std::fs::read(p)
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
                    };
                    let client_pem = match (&s.etcd_cert, &s.etcd_key) {
                        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                        _ => None,
                    };
                    options.tls = Some(silt_metadata::EtcdTls {
                        ca_pem: read(ca)?,
                        client_pem,
                    });
                }
                Arc::new(silt_metadata::EtcdStore::connect(&options).await?)
            }
            _ => EmbeddedStore::open(&s.data_dir.join("metadata.redb"), clock.clone())?,
        };
        let catalog = Catalog::new(meta, &s.cluster);

        let url = s.object_store_url().map_err(anyhow::Error::msg)?;
        let s3 = S3Options {
            endpoint: s.s3_endpoint.clone(),
            region: s.s3_region.clone(),
            allow_http: s.s3_allow_http,
            virtual_hosted_style: s.s3_virtual_hosted_style,
            credentials: None,
            retry_for: None,
        };
        if s.create_bucket && silt_storage::object::create_bucket_if_missing(&url, &s3).await? {
            info!(object_store = %url, "created the missing bucket");
        }
        let instrumented = Arc::new(InstrumentedStore::new(open_object_store(&url, &s3)?));
        let store: Arc<dyn object_store::ObjectStore> = instrumented.clone();
        // The start-up check retries briefly: a wrong endpoint or a stopped server is reported
        // in seconds, with its cause.
        let probe = open_object_store(
            &url,
            &S3Options {
                retry_for: Some(Duration::from_secs(5)),
                ..s3.clone()
            },
        )?;
        silt_storage::object::claim_for_cluster(probe.as_ref(), &s.cluster, clock.now_ms())
            .await
            .map_err(|e| anyhow::anyhow!("object store {url}: {e}"))?;
        let cache_config = ReadCacheConfig {
            memory_bytes: s.cache_memory_bytes as usize,
            disk_bytes: s.cache_disk_bytes as usize,
            disk_dir: (s.cache_disk_bytes > 0).then(|| s.data_dir.join("cache")),
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

        let stats = Arc::new(Stats::default());
        let (wal, outputs) = WalCache::new(
            s.wal_cache_bytes as usize,
            s.flush_bytes as usize,
            Duration::from_millis(s.linger_ms),
        );
        let wal = Arc::new(wal);
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
            stats.clone(),
            s.max_inflight_flushes,
        );
        let flusher_task = tracker.spawn(flusher.run(outputs.sealed));
        let linger_task = tokio::spawn(run_linger_timer(wal.clone(), outputs.opened));

        let housekeeper = Arc::new(Housekeeper {
            catalog: catalog.clone(),
            topics: topics.clone(),
            index: index.clone(),
            store: store.clone(),
            cache: cache.clone(),
            clock: clock.clone(),
            fence: fence.clone(),
            view: view.clone(),
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

        let produce = Arc::new(ProducePath::new(
            topics.clone(),
            wal.clone(),
            clock.clone(),
            stats.clone(),
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
            stats: stats.clone(),
        });
        // The gRPC frame limit leaves room for framing so the produce path, not the transport,
        // refuses an over-limit request with a message naming `max-request-bytes`.
        let max_message = (s.max_request_bytes as usize)
            .saturating_mul(2)
            .saturating_add(1 << 20);
        let router = Arc::new(Router::new(view.clone(), produce.clone(), max_message));
        let log_service = LogService {
            produce,
            fetch,
            router,
        };
        let catalog_for_membership = catalog.clone();
        let catalog_for_controller = catalog.clone();
        let admin_service = AdminService {
            catalog,
            view: view.clone(),
            topics: topics.clone(),
            index,
            wal: wal.clone(),
            store: instrumented,
            stats,
            clock: clock.clone(),
            broker_id: s.broker_id.clone(),
            started_ms: clock.now_ms(),
            default_retention_ms: s.default_retention_ms,
            default_max_record_bytes: s.default_max_record_bytes,
            max_batch_bytes: s.max_batch_bytes.min(u64::from(u32::MAX)) as u32,
        };

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<LogServer<LogService>>().await;
        health_reporter
            .set_serving::<AdminServer<AdminService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(silt_api::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let listener = TcpListener::bind(s.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", s.listen))?;
        let addr = listener.local_addr()?;
        let membership = Arc::new(Membership::new(
            catalog_for_membership,
            BrokerRecord {
                v: 1,
                broker_id: s.broker_id.clone(),
                address: s.advertise.clone().unwrap_or_else(|| addr.to_string()),
                incarnation,
                started_at_ms: clock.now_ms(),
            },
            Duration::from_millis(s.lease_ttl_ms),
        ));
        let lease = membership.register().await?;
        let leave = CancellationToken::new();
        let controller = Controller {
            view: view.clone(),
            catalog: catalog_for_controller,
            topics: topics.clone(),
            lease: membership.lease(),
        };
        let controller_stop = CancellationToken::new();
        let controller_task = tokio::spawn(controller.run(controller_stop.clone()));
        let membership_task = tokio::spawn(membership.run(lease, leave.clone()));
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
        let superseded = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
                        superseded.store(true, std::sync::atomic::Ordering::Relaxed);
                        cancel.cancel();
                        return;
                    }
                }
            });
        }
        let shutdown = cancel.clone();
        let wal_for_shutdown = wal.clone();
        let shutdown_timeout = Duration::from_millis(s.shutdown_timeout_ms);
        let stage = Arc::new(std::sync::Mutex::new("serving"));
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
        let orderly = async move {
            let server = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(reflection)
                .add_service(
                    LogServer::new(log_service)
                        .max_decoding_message_size(max_message)
                        .max_encoding_message_size(usize::MAX),
                )
                .add_service(AdminServer::new(admin_service).max_decoding_message_size(max_message))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), {
                    let set_stage = set_stage.clone();
                    async move {
                        shutdown.cancelled().await;
                        info!("shutting down: refusing new produce, flushing the WAL cache");
                        set_stage("flushing the WAL cache and answering in-flight produce calls");
                        health_reporter
                            .set_not_serving::<LogServer<LogService>>()
                            .await;
                        // Seal and flush what was accepted; in-flight calls finish with their
                        // acks.
                        wal_for_shutdown.close();
                    }
                });
            let served = server.await;
            // The server is gone; nothing can append any more. Let the flusher drain.
            set_stage("committing the last segments");
            linger_task.abort();
            drop(wal);
            tracker.close();
            tracker.wait().await;
            drop(flusher_task);
            // Everything accepted is committed: leave the cluster at once, which hands this
            // broker's partitions (and the controller's job, if it had it) to the others.
            set_stage("leaving the cluster");
            controller_stop.cancel();
            let _ = controller_task.await;
            leave.cancel();
            let _ = membership_task.await;
            view_cancel.cancel();
            let _ = view_task.await;
            info!("broker stopped");
            if superseded.load(std::sync::atomic::Ordering::Relaxed) {
                anyhow::bail!("stopped: a newer incarnation of this broker id took over");
            }
            served.map_err(anyhow::Error::from)
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
        Ok(BrokerHandle { addr, cancel, task })
    }
}
