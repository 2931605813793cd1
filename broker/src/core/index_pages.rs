//! Index pages loaded on demand: the entries of a partition's older offsets, rolled out of
//! memory and metadata into objects (see [`crate::core::log_index`]), read back when a fetch, an
//! offset lookup by time or retention reaches them.
//!
//! Pages are immutable, so a loaded page stays valid for as long as it is cached. The cache is
//! bounded by `--index-page-cache-bytes` (an estimate of the entries' memory) and drops the
//! least recently used page first; a page larger than the whole budget is served and not kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use silt_metadata::codec::{self, IndexPage, PageRef};

use crate::core::BrokerError;
use crate::core::log_index::{IndexEntry, page_entries};
use crate::observe::metrics::Metrics;

/// Memory an entry of a loaded page takes, about (the entry, its share of the object ref).
const ENTRY_COST: usize = 160;

#[derive(Debug, Default)]
struct Cached {
    /// Page path -> (entries, cost, last use).
    pages: HashMap<String, (Arc<[IndexEntry]>, usize, u64)>,
    bytes: usize,
    tick: u64,
}

/// Loads index pages from the store, keeping the recently used ones.
#[derive(Debug)]
pub struct IndexPages {
    store: Arc<dyn ObjectStore>,
    max_bytes: usize,
    cached: Mutex<Cached>,
    metrics: Arc<Metrics>,
}

impl IndexPages {
    pub fn new(store: Arc<dyn ObjectStore>, max_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            max_bytes,
            cached: Mutex::default(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes the cached pages take, about.
    pub fn cached_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The entries of `page` of partition `(topic_id, partition)`, oldest first.
    pub async fn entries(
        &self,
        topic_id: u64,
        partition: u32,
        page: &PageRef,
    ) -> Result<Arc<[IndexEntry]>, BrokerError> {
        {
            let mut c = self.lock();
            c.tick += 1;
            let tick = c.tick;
            if let Some((entries, _, used)) = c.pages.get_mut(&page.object) {
                *used = tick;
                return Ok(entries.clone());
            }
        }
        self.metrics.index_page_loaded();
        let decoded = read_page(self.store.as_ref(), &page.object).await?;
        if (decoded.topic_id, decoded.partition) != (topic_id, partition) {
            return Err(BrokerError::internal(format!(
                "corrupt data: index page {} belongs to topic id {} partition {}, not {topic_id}/{partition}",
                page.object, decoded.topic_id, decoded.partition
            )));
        }
        let entries: Arc<[IndexEntry]> = page_entries(&decoded).into();
        let cost = entries.len() * ENTRY_COST + page.object.len();
        let mut c = self.lock();
        if cost <= self.max_bytes && !c.pages.contains_key(&page.object) {
            while c.bytes + cost > self.max_bytes {
                let Some(oldest) = c
                    .pages
                    .iter()
                    .min_by_key(|(_, (_, _, used))| *used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some((_, freed, _)) = c.pages.remove(&oldest) {
                    c.bytes -= freed;
                }
            }
            c.tick += 1;
            let tick = c.tick;
            c.bytes += cost;
            c.pages
                .insert(page.object.clone(), (entries.clone(), cost, tick));
        }
        Ok(entries)
    }
}

/// Reads and decodes the index page at `path`: UNAVAILABLE when the store fails, INTERNAL
/// (corrupt data) when the object is not a whole index page.
pub async fn read_page(store: &dyn ObjectStore, path: &str) -> Result<IndexPage, BrokerError> {
    let read = |e: object_store::Error| {
        BrokerError::unavailable(format!("could not read index page {path}: {e}"))
    };
    let bytes = store
        .get(&Path::from(path))
        .await
        .map_err(read)?
        .bytes()
        .await
        .map_err(read)?;
    codec::decode_index_page(path, &bytes)
        .map_err(|e| BrokerError::internal(format!("corrupt data: {e}")))
}

/// The entries of a loaded page holding offsets from `offset` on, below `high_watermark`, until
/// about `max_bytes` (at least one entry).
pub fn entries_from(
    entries: &[IndexEntry],
    offset: i64,
    max_bytes: usize,
    high_watermark: i64,
) -> Vec<IndexEntry> {
    let start = entries.partition_point(|e| e.last_offset < offset);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for e in &entries[start..] {
        if e.first_offset >= high_watermark
            || !out.is_empty() && bytes + e.length as usize > max_bytes
        {
            break;
        }
        bytes += e.length as usize;
        out.push(e.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;
    use object_store::memory::InMemory;
    use silt_metadata::codec::{SegmentCommit, SegmentEntry};

    fn page(topic_id: u64, first: i64, parts: usize) -> (IndexPage, PageRef) {
        let parts: Vec<_> = (0..parts as i64)
            .map(|i| {
                let f = first + i * 10;
                let commit = SegmentCommit {
                    object: format!("parts/{f}.seg"),
                    object_len: 100,
                    created_at_ms: 0,
                    entries: vec![SegmentEntry {
                        topic_id,
                        partition: 0,
                        batch_count: 1,
                        first_offset: f,
                        last_offset: f + 9,
                        min_timestamp: 0,
                        max_timestamp: f,
                        position: 0,
                        length: 100,
                        crc32c: 0,
                    }],
                };
                (format!("id{f}"), commit)
            })
            .collect();
        let last = first + parts.len() as i64 * 10 - 1;
        let page = IndexPage {
            topic_id,
            partition: 0,
            parts,
        };
        let reference = PageRef {
            object: format!("index/{first}.idx"),
            object_len: 0,
            first_offset: first,
            last_offset: last,
            bytes: 0,
            max_timestamp: last,
        };
        (page, reference)
    }

    async fn stored(store: &Arc<dyn ObjectStore>, page: &IndexPage, r: &PageRef) {
        let bytes = codec::encode_index_page(page);
        store
            .put(&Path::from(r.object.as_str()), PutPayload::from(bytes))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn pages_load_once_and_the_cache_stays_within_its_budget() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (p1, r1) = page(7, 0, 4);
        let (p2, r2) = page(7, 40, 4);
        stored(&store, &p1, &r1).await;
        stored(&store, &p2, &r2).await;
        // Room for one 4-entry page only.
        let metrics = Arc::new(Metrics::new("t", 0));
        let pages = IndexPages::new(store.clone(), 4 * ENTRY_COST + 20, metrics);
        let e = pages.entries(7, 0, &r1).await.unwrap();
        assert_eq!(
            e.iter().map(|e| e.first_offset).collect::<Vec<_>>(),
            [0, 10, 20, 30]
        );
        assert_eq!(e[2].object.path.as_ref(), "parts/20.seg");
        // Cached: served without the store.
        store.delete(&Path::from(r1.object.as_str())).await.unwrap();
        assert_eq!(pages.entries(7, 0, &r1).await.unwrap().len(), 4);
        // Loading another evicts it, and the budget holds.
        assert_eq!(pages.entries(7, 0, &r2).await.unwrap()[0].first_offset, 40);
        assert!(pages.cached_bytes() <= 4 * ENTRY_COST + 20);
        let gone = pages.entries(7, 0, &r1).await.unwrap_err();
        assert!(
            gone.to_string().contains("could not read index page"),
            "{gone}"
        );
        // A page of another partition, or a damaged one, is refused.
        let (p4, r4) = page(7, 120, 1);
        stored(&store, &p4, &r4).await;
        let wrong = pages.entries(8, 0, &r4).await.unwrap_err();
        assert!(
            wrong.to_string().contains("belongs to topic id 7"),
            "{wrong}"
        );
        let (p3, r3) = page(7, 80, 1);
        let mut bytes = codec::encode_index_page(&p3);
        bytes[12] ^= 1;
        store
            .put(&Path::from(r3.object.as_str()), PutPayload::from(bytes))
            .await
            .unwrap();
        let err = pages.entries(7, 0, &r3).await.unwrap_err();
        assert!(err.to_string().contains("corrupt data"), "{err}");
    }

    #[test]
    fn entries_from_a_page_stop_at_the_high_watermark_and_the_byte_budget() {
        let (p, _) = page(7, 0, 4);
        let entries = page_entries(&p);
        let first = |v: Vec<IndexEntry>| v.iter().map(|e| e.first_offset).collect::<Vec<_>>();
        assert_eq!(first(entries_from(&entries, 15, 250, i64::MAX)), [10, 20]);
        assert_eq!(first(entries_from(&entries, 15, 1, i64::MAX)), [10]);
        assert_eq!(first(entries_from(&entries, 0, 10_000, 20)), [0, 10]);
    }
}
