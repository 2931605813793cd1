//! The flusher against in-memory stores, with injected object-store failures.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use silt_metadata::codec::{CleanupPolicy, DEFAULT_DELETE_RETENTION_MS, TopicRecord};
use silt_metadata::{EmbeddedStore, ManualClock, MetaStore};
use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};
use silt_storage::cache::ReadCacheConfig;
use silt_storage::object::SegmentName;
use silt_storage::object::faults::{Faults, FaultyStore};

use super::*;
use crate::core::ErrorKind;
use crate::core::wal_cache::{AppendBatch, DurableTicket, run_linger_timer};

/// Every PUT fails (once injection is enabled).
const ALWAYS_FAIL_PUTS: Faults = Faults {
    put_error: 1.0,
    put_lost_response: 0.0,
    get_error: 0.0,
    latency: (Duration::ZERO, Duration::ZERO),
};

struct Harness {
    wal: Arc<WalCache>,
    store: Arc<FaultyStore>,
    catalog: Catalog,
    index: Arc<LogIndex>,
    topic_id: u64,
    flusher: tokio::task::JoinHandle<()>,
}

async fn harness() -> Harness {
    // Injection is off until a test turns it on.
    let store = Arc::new(FaultyStore::new(
        Arc::new(InMemory::new()),
        ALWAYS_FAIL_PUTS,
        0,
    ));
    store.set_enabled(false);
    let parts = setup(store.clone()).await;
    Harness {
        wal: parts.wal,
        store,
        catalog: parts.catalog,
        index: parts.index,
        topic_id: parts.topic_id,
        flusher: parts.flusher,
    }
}

/// A flusher over `store` with a two-partition topic.
struct Parts {
    wal: Arc<WalCache>,
    catalog: Catalog,
    index: Arc<LogIndex>,
    cache: Arc<SegmentCache>,
    topic_id: u64,
    flusher: tokio::task::JoinHandle<()>,
}

async fn setup(dyn_store: Arc<dyn ObjectStore>) -> Parts {
    let clock = ManualClock::new(1_700_000_000_000);
    let meta: Arc<dyn MetaStore> = EmbeddedStore::open_in_memory(clock.clone()).unwrap();
    let catalog = Catalog::new(meta, "test");
    let topic = catalog
        .create_topic(TopicRecord {
            v: 1,
            name: "t".into(),
            partitions: 2,
            retention_ms: -1,
            retention_bytes: -1,
            max_record_bytes: 1 << 20,
            created_at_ms: 0,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
        })
        .await
        .unwrap();
    let cache = Arc::new(
        SegmentCache::open(dyn_store.clone(), ReadCacheConfig::default())
            .await
            .unwrap(),
    );
    let index = Arc::new(LogIndex::new());
    let view = owning_view(&catalog, "b0", 1, topic.id, 2, index.clone()).await;
    let (wal, out) = WalCache::new(1 << 30, 1 << 30, Duration::from_millis(5));
    let wal = Arc::new(wal);
    tokio::spawn(run_linger_timer(wal.clone(), out.opened));
    let flusher = Flusher::new(
        wal.clone(),
        dyn_store,
        cache.clone(),
        catalog.clone(),
        index.clone(),
        view,
        clock,
        Arc::new(Metrics::new("b", 1 << 30)),
        4,
    );
    let flusher = tokio::spawn(flusher.run(out.sealed));
    Parts {
        wal,
        catalog,
        index,
        cache,
        topic_id: topic.id,
        flusher,
    }
}

/// A cluster view of `broker` (incarnation `incarnation`) owning every partition of the topic.
pub(crate) async fn owning_view(
    catalog: &Catalog,
    broker: &str,
    incarnation: u64,
    topic_id: u64,
    partitions: u32,
    index: Arc<LogIndex>,
) -> Arc<ClusterView> {
    use silt_metadata::catalog::OwnerChange;
    use silt_metadata::codec::OwnerRecord;
    let lease = catalog
        .store()
        .grant_lease(Duration::from_secs(3600))
        .await
        .unwrap();
    let elected = catalog.campaign(broker, lease).await.unwrap().unwrap();
    let changes: Vec<OwnerChange> = (0..partitions)
        .map(|partition| OwnerChange {
            topic_id,
            partition,
            owner: Some(OwnerRecord {
                v: 1,
                broker_id: broker.into(),
                epoch: 1,
            }),
            seen_mod_revision: 0,
        })
        .collect();
    catalog
        .change_owners(elected, &changes, &[])
        .await
        .unwrap()
        .unwrap();
    let view = Arc::new(ClusterView::new(
        catalog.clone(),
        broker.into(),
        incarnation,
        Arc::new(crate::core::topics::TopicTable::default()),
        index,
    ));
    let from = view.load().await.unwrap();
    let fence = catalog.register_writer(broker, incarnation).await.unwrap();
    view.set_ready_at(fence.revision);
    tokio::spawn(
        view.clone()
            .run(from, tokio_util::sync::CancellationToken::new()),
    );
    assert!(view.wait_ready(Duration::from_secs(10)).await);
    view
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
    h.store.set_enabled(true);
    let err = append(&h, 0, 2).durable().await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Unavailable { .. }), "{err:?}");
    assert_eq!(
        h.index.partition(h.topic_id, 0).offsets().high_watermark,
        3,
        "nothing visible"
    );
    h.store.set_enabled(false);
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
    h.catalog.register_writer("b0", 2).await.unwrap();
    let err = append(&h, 0, 1).durable().await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::NotOwner { .. }), "{err:?}");
    assert!(err.nothing_stored());
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

/// Seeded object-store trouble (PUT errors, lost PUT responses, latency): every ack is true —
/// its records are committed at the acknowledged offsets with the bytes sent — offsets stay
/// dense, and objects whose PUT "failed" but landed are not left committed.
#[tokio::test]
async fn seeded_store_faults_never_produce_a_false_ack() {
    for seed in [1u64, 2, 3] {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let faults = Faults {
            put_error: 0.2,
            put_lost_response: 0.1,
            get_error: 0.0,
            latency: (Duration::from_millis(0), Duration::from_millis(8)),
        };
        let faulty = Arc::new(FaultyStore::new(inner.clone(), faults, seed));
        let parts = setup(faulty.clone()).await;
        let mut tickets = Vec::new();
        for i in 0..200usize {
            let b = batch(parts.topic_id, (i % 2) as u32, 1 + i % 3);
            let bytes = b.bytes.clone();
            tickets.push((bytes, parts.wal.append(vec![b]).unwrap()));
            if i % 5 == 4 {
                // Let the linger seal a window: about 40 segments per seed.
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        }
        let mut acked = Vec::new();
        for (bytes, ticket) in tickets {
            if let Ok(acks) = ticket.durable().await {
                acked.push((acks[0], bytes));
            }
        }
        let injected = faulty.injected();
        assert!(injected.put_errors > 0, "seed {seed} injected no errors");
        assert!(!acked.is_empty(), "seed {seed}: some records got through");
        for (ack, sent) in &acked {
            let log = parts.index.partition(parts.topic_id, ack.partition);
            let (_, entries) = log.entries_from(ack.base_offset, 1 << 20);
            let entry = entries.first().expect("acked offset is committed");
            let range = entry.position..entry.position + u64::from(entry.length);
            let stored = parts
                .cache
                .read_range(&entry.object.path, range, entry.object.len)
                .await
                .unwrap();
            let found = silt_storage::batch::split_batches(&stored)
                .map(|b| b.unwrap())
                .find(|(h, _)| h.base_offset == ack.base_offset)
                .expect("a batch starts at the acked offset");
            assert_eq!(
                &found.1[8..],
                &sent[8..],
                "the stored batch is the one sent"
            );
        }
        // Dense: committed entries of each partition cover 0..hwm without gaps.
        for p in 0..2 {
            let log = parts.index.partition(parts.topic_id, p);
            let hwm = log.offsets().high_watermark;
            let mut next = 0;
            while next < hwm {
                let (_, entries) = log.entries_from(next, 1 << 20);
                let e = entries.first().expect("no gap");
                assert!(e.first_offset <= next && next <= e.last_offset);
                next = e.last_offset + 1;
            }
        }
        // Committed segments are exactly the objects left in the store once deletes settle.
        faulty.set_enabled(false);
        parts.wal.close();
        parts.flusher.await.unwrap();
        let committed: std::collections::HashSet<String> = parts
            .catalog
            .load_segments()
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let stored_ids = || async {
            inner
                .list(None)
                .map_ok(|m| {
                    SegmentName::parse(&m.location)
                        .map(|n| n.id())
                        .unwrap_or_default()
                })
                .try_collect::<std::collections::HashSet<String>>()
                .await
                .unwrap()
        };
        for _ in 0..100 {
            if stored_ids().await == committed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stored = stored_ids().await;
        assert_eq!(
            stored, committed,
            "seed {seed}: uncommitted objects were cleaned up"
        );
    }
}

/// A flusher that stops (its task dropped, as in a crash of the task or a shutdown past its
/// deadline) while a segment is uploading must not tell that segment's producers "not stored":
/// the upload and even the commit may complete. Their tickets say the outcome is unknown.
#[tokio::test]
async fn a_flusher_stopped_mid_flush_answers_ambiguous_not_unstored() {
    let slow = Faults {
        put_error: 0.0,
        put_lost_response: 0.0,
        get_error: 0.0,
        latency: (Duration::from_secs(30), Duration::from_secs(30)),
    };
    let store = Arc::new(FaultyStore::new(Arc::new(InMemory::new()), slow, 0));
    let parts = setup(store.clone()).await;
    let ticket = parts.wal.append(vec![batch(parts.topic_id, 0, 3)]).unwrap();
    // The window seals after the 5 ms linger and its upload starts, then hangs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    parts.flusher.abort();
    let err = tokio::time::timeout(Duration::from_secs(5), ticket.durable())
        .await
        .expect("the ticket is answered")
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Ambiguous, "{err:?}");
    assert!(!err.nothing_stored());
}

#[tokio::test]
async fn large_batches_reach_the_store_and_the_cache_intact() {
    use silt_storage::batch::decode_batches;
    use silt_storage::segment::{BORROW_MIN, decode_segment, verify_entry_range};
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let parts = setup(store.clone()).await;
    // Large batches are laid out as slices of their own buffers, small ones copied: mix both,
    // in one window and across partitions.
    let sizes = [(0, 3), (0, 2_000), (1, 4_000), (0, 1), (1, 2), (0, 2_500)];
    let appended: Vec<AppendBatch> = sizes
        .iter()
        .map(|&(p, n)| batch(parts.topic_id, p, n))
        .collect();
    assert!(
        appended
            .iter()
            .filter(|b| b.bytes.len() >= BORROW_MIN)
            .count()
            >= 3
    );
    let acks = parts.wal.append(appended).unwrap().durable().await.unwrap();
    let commits = parts.catalog.load_segments().await.unwrap();
    let mut next = [0i64, 0];
    for (&(p, n), ack) in sizes.iter().zip(&acks) {
        assert_eq!((ack.partition, ack.base_offset), (p, next[p as usize]));
        next[p as usize] += n as i64;
    }
    for (_, commit) in &commits {
        let path = Path::from(commit.object.as_str());
        let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored.len() as u64, commit.object_len);
        assert_eq!(decode_segment(&stored).unwrap().entries, commit.entries);
        for e in &commit.entries {
            let range = e.position..e.position + u64::from(e.length);
            let cached = parts
                .cache
                .read_range(&path, range.clone(), commit.object_len)
                .await
                .unwrap();
            assert_eq!(
                cached,
                stored.slice(range.start as usize..range.end as usize)
            );
            verify_entry_range(e, &cached).unwrap();
            let records = decode_batches(cached, 0).unwrap();
            let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
            assert_eq!(
                offsets,
                (e.first_offset..=e.last_offset).collect::<Vec<_>>()
            );
        }
    }
    let total: u64 = commits
        .iter()
        .flat_map(|(_, c)| &c.entries)
        .map(|e| (e.last_offset - e.first_offset + 1) as u64)
        .sum();
    assert_eq!(total, sizes.iter().map(|&(_, n)| n as u64).sum::<u64>());
}
