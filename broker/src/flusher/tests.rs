//! The flusher against in-memory stores, with injected object-store failures.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use silt_metadata::codec::TopicRecord;
use silt_metadata::{EmbeddedStore, ManualClock, MetaStore};
use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};
use silt_storage::cache::ReadCacheConfig;

use super::*;
use crate::wal_cache::{AppendBatch, DurableTicket, run_linger_timer};

/// An in-memory store whose PUTs fail while `fail` is set.
#[derive(Debug, Default)]
struct FlakyStore {
    inner: InMemory,
    fail: AtomicBool,
}

impl std::fmt::Display for FlakyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlakyStore")
    }
}

#[async_trait]
impl ObjectStore for FlakyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "flaky",
                source: "injected PUT failure".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

struct Harness {
    wal: Arc<WalCache>,
    store: Arc<FlakyStore>,
    catalog: Catalog,
    index: Arc<LogIndex>,
    topic_id: u64,
    flusher: tokio::task::JoinHandle<()>,
}

async fn harness() -> Harness {
    let clock = ManualClock::new(1_700_000_000_000);
    let meta: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(clock.clone()).unwrap();
    let catalog = Catalog::new(meta, "test");
    let topic = catalog
        .create_topic(TopicRecord {
            v: 1,
            name: "t".into(),
            partitions: 2,
            retention_ms: -1,
            max_record_bytes: 1 << 20,
            created_at_ms: 0,
        })
        .await
        .unwrap();
    let fence = WriterFence {
        broker_id: "b0".into(),
        incarnation: 1,
    };
    catalog.register_writer(&fence).await.unwrap();
    let store = Arc::new(FlakyStore::default());
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let cache = Arc::new(
        SegmentCache::open(dyn_store.clone(), ReadCacheConfig::default())
            .await
            .unwrap(),
    );
    let index = Arc::new(LogIndex::new());
    let (wal, out) = WalCache::new(1 << 30, 1 << 30, Duration::from_millis(5));
    let wal = Arc::new(wal);
    tokio::spawn(run_linger_timer(wal.clone(), out.opened));
    let flusher = Flusher::new(
        wal.clone(),
        dyn_store,
        cache,
        catalog.clone(),
        index.clone(),
        fence,
        clock,
        Arc::new(Stats::default()),
        4,
    );
    let flusher = tokio::spawn(flusher.run(out.sealed));
    Harness {
        wal,
        store,
        catalog,
        index,
        topic_id: topic.id,
        flusher,
    }
}

fn batch(topic_id: u64, partition: u32, records: usize) -> AppendBatch {
    let data: Vec<RecordData> = (0..records)
        .map(|i| RecordData {
            value: Some(Bytes::from(format!("v{i}"))),
            timestamp_ms: 10 + i as i64,
            ..Default::default()
        })
        .collect();
    AppendBatch {
        topic_id,
        partition,
        bytes: encode_batch(&data, BatchCompression::None, ProducerInfo::default()).unwrap(),
        record_count: records as u32,
        first_timestamp: 10,
        max_timestamp: 10 + records as i64 - 1,
    }
}

fn append(h: &Harness, partition: u32, records: usize) -> DurableTicket {
    h.wal
        .append(vec![batch(h.topic_id, partition, records)])
        .unwrap()
}

#[tokio::test]
async fn acks_follow_commits_and_offsets_are_dense() {
    let h = harness().await;
    let a = append(&h, 0, 3).durable().await.unwrap();
    let b = append(&h, 0, 2).durable().await.unwrap();
    let c = append(&h, 1, 1).durable().await.unwrap();
    assert_eq!((a[0].base_offset, a[0].last_offset), (0, 2));
    assert_eq!((b[0].base_offset, b[0].last_offset), (3, 4));
    assert_eq!((c[0].partition, c[0].base_offset), (1, 0));
    assert_eq!(h.index.partition(h.topic_id, 0).offsets().high_watermark, 5);
    let commits = h.catalog.load_segments().await.unwrap();
    assert_eq!(commits.len(), 3, "one commit per flushed window");
}

#[tokio::test]
async fn a_failed_upload_fails_its_producers_and_offsets_stay_dense() {
    let h = harness().await;
    append(&h, 0, 3).durable().await.unwrap();
    h.store.fail.store(true, Ordering::SeqCst);
    let err = append(&h, 0, 2).durable().await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable { .. }), "{err:?}");
    assert_eq!(
        h.index.partition(h.topic_id, 0).offsets().high_watermark,
        3,
        "nothing visible"
    );
    h.store.fail.store(false, Ordering::SeqCst);
    let ok = append(&h, 0, 2).durable().await.unwrap();
    assert_eq!(
        ok[0].base_offset, 3,
        "the failed window's offsets are reused: no gap"
    );
    assert_eq!(h.catalog.load_segments().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_fenced_writer_never_acks() {
    let h = harness().await;
    append(&h, 0, 1).durable().await.unwrap();
    h.catalog
        .register_writer(&WriterFence {
            broker_id: "b0".into(),
            incarnation: 2,
        })
        .await
        .unwrap();
    let err = append(&h, 0, 1).durable().await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable { .. }), "{err:?}");
    assert_eq!(h.index.partition(h.topic_id, 0).offsets().high_watermark, 1);
}

#[tokio::test]
async fn close_flushes_what_was_accepted_then_the_flusher_stops() {
    let h = harness().await;
    let t = append(&h, 1, 4);
    h.wal.close();
    let acks = t.durable().await.unwrap();
    assert_eq!(acks[0].last_offset, 3);
    tokio::time::timeout(Duration::from_secs(5), h.flusher)
        .await
        .unwrap()
        .unwrap();
}
