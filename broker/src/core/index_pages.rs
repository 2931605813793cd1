//! Index pages loaded on demand: the entries of a partition's older offsets, rolled out of
//! memory and metadata into objects (see [`crate::core::log_index`]), read back when a fetch, an
//! offset lookup by time or retention reaches them.
//!
//! A partition with very many pages moves the oldest references of its root into *archives*
//! (objects listing contiguous references one level below): a lookup under an archive loads
//! it, then the reference holding the offset, down to the page ([`IndexPages::leaf`]).
//!
//! Pages and archives are immutable, so a loaded one stays valid for as long as it is cached.
//! The cache is bounded by `--index-page-cache-bytes` (an estimate of the memory the entries
//! and references take) and drops the least recently used object first; one larger than the
//! whole budget is served and not kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use silt_metadata::codec::{self, IndexArchive, IndexPage, PageRef};

use crate::core::BrokerError;
use crate::core::log_index::{IndexEntry, page_entries};
use crate::observe::metrics::Metrics;

/// Memory an entry of a loaded page takes, about (the entry, its share of the object ref).
const ENTRY_COST: usize = 160;

/// Memory a reference of a loaded archive takes, about (the reference and its path).
const REF_COST: usize = 64;

/// A loaded index object.
#[derive(Debug, Clone)]
enum Loaded {
    Page(Arc<[IndexEntry]>),
    Archive(Arc<[PageRef]>),
}

#[derive(Debug, Default)]
struct Cached {
    /// Object path -> (contents, cost, last use).
    objects: HashMap<String, (Loaded, usize, u64)>,
    bytes: usize,
    tick: u64,
}

/// Loads index pages and archives from the store, keeping the recently used ones.
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

    /// Bytes the cached pages and archives take, about.
    pub fn cached_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn cached(&self, path: &str) -> Option<Loaded> {
        let mut c = self.lock();
        c.tick += 1;
        let tick = c.tick;
        let (loaded, _, used) = c.objects.get_mut(path)?;
        *used = tick;
        Some(loaded.clone())
    }

    /// Keeps `loaded` unless it alone exceeds the budget, dropping the least recently used.
    fn keep(&self, path: &str, loaded: &Loaded, cost: usize) {
        let mut c = self.lock();
        if cost > self.max_bytes || c.objects.contains_key(path) {
            return;
        }
        while c.bytes + cost > self.max_bytes {
            let Some(oldest) = c
                .objects
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((_, freed, _)) = c.objects.remove(&oldest) {
                c.bytes -= freed;
            }
        }
        c.tick += 1;
        let tick = c.tick;
        c.bytes += cost;
        c.objects
            .insert(path.to_string(), (loaded.clone(), cost, tick));
    }

    /// The entries of `page` (an index page, level 0) of partition `(topic_id, partition)`,
    /// oldest first.
    pub async fn entries(
        &self,
        topic_id: u64,
        partition: u32,
        page: &PageRef,
    ) -> Result<Arc<[IndexEntry]>, BrokerError> {
        if let Some(Loaded::Page(entries)) = self.cached(&page.object) {
            return Ok(entries);
        }
        self.metrics.index_page_loaded();
        let decoded = read_page(self.store.as_ref(), &page.object).await?;
        check_owner(
            &page.object,
            (decoded.topic_id, decoded.partition),
            (topic_id, partition),
        )?;
        let entries: Arc<[IndexEntry]> = page_entries(&decoded).into();
        let cost = entries.len() * ENTRY_COST + page.object.len();
        self.keep(&page.object, &Loaded::Page(entries.clone()), cost);
        Ok(entries)
    }

    /// The references `archive` (level > 0) holds, oldest first.
    pub async fn archive(
        &self,
        topic_id: u64,
        partition: u32,
        archive: &PageRef,
    ) -> Result<Arc<[PageRef]>, BrokerError> {
        if let Some(Loaded::Archive(refs)) = self.cached(&archive.object) {
            return Ok(refs);
        }
        self.metrics.index_page_loaded();
        let decoded = read_archive(self.store.as_ref(), archive).await?;
        check_owner(
            &archive.object,
            (decoded.topic_id, decoded.partition),
            (topic_id, partition),
        )?;
        let cost = decoded
            .refs
            .iter()
            .map(|r| REF_COST + r.object.len())
            .sum::<usize>()
            + archive.object.len();
        let refs: Arc<[PageRef]> = decoded.refs.into();
        self.keep(&archive.object, &Loaded::Archive(refs.clone()), cost);
        Ok(refs)
    }

    /// The index page holding `offset` under `top` (a page: itself; an archive: looked up
    /// through it, level by level).
    pub async fn leaf(
        &self,
        topic_id: u64,
        partition: u32,
        top: &PageRef,
        offset: i64,
    ) -> Result<PageRef, BrokerError> {
        let mut at = top.clone();
        while at.level > 0 {
            let refs = self.archive(topic_id, partition, &at).await?;
            let i = refs.partition_point(|r| r.last_offset < offset);
            at = refs.get(i).cloned().ok_or_else(|| {
                BrokerError::internal(format!(
                    "corrupt data: index archive {} does not cover offset {offset}",
                    at.object
                ))
            })?;
        }
        Ok(at)
    }

    /// The first index page under `top` that may hold a record at or after `ts` at an offset
    /// at or after `from` (the time index), if any.
    pub async fn leaf_for_timestamp(
        &self,
        topic_id: u64,
        partition: u32,
        top: &PageRef,
        ts: i64,
        from: i64,
    ) -> Result<Option<PageRef>, BrokerError> {
        // Depth first, oldest first: an archive's newest timestamp may come from a child below
        // `from`, so a later sibling is tried when one yields nothing.
        let mut stack = vec![top.clone()];
        while let Some(r) = stack.pop() {
            if r.max_timestamp < ts || r.last_offset < from {
                continue;
            }
            if r.level == 0 {
                return Ok(Some(r));
            }
            let refs = self.archive(topic_id, partition, &r).await?;
            stack.extend(refs.iter().rev().cloned());
        }
        Ok(None)
    }
}

fn check_owner(path: &str, found: (u64, u32), expected: (u64, u32)) -> Result<(), BrokerError> {
    if found == expected {
        return Ok(());
    }
    Err(BrokerError::internal(format!(
        "corrupt data: index object {path} belongs to topic id {} partition {}, not {}/{}",
        found.0, found.1, expected.0, expected.1
    )))
}

async fn read_object(
    store: &dyn ObjectStore,
    what: &str,
    path: &str,
) -> Result<bytes::Bytes, BrokerError> {
    let read = |e: object_store::Error| {
        BrokerError::unavailable(format!("could not read {what} {path}: {e}"))
    };
    store
        .get(&Path::from(path))
        .await
        .map_err(read)?
        .bytes()
        .await
        .map_err(read)
}

/// Reads and decodes the index page at `path`: UNAVAILABLE when the store fails, INTERNAL
/// (corrupt data) when the object is not a whole index page.
pub async fn read_page(store: &dyn ObjectStore, path: &str) -> Result<IndexPage, BrokerError> {
    let bytes = read_object(store, "index page", path).await?;
    codec::decode_index_page(path, &bytes)
        .map_err(|e| BrokerError::internal(format!("corrupt data: {e}")))
}

/// Reads and decodes the index archive `archive` refers to: UNAVAILABLE when the store
/// fails, INTERNAL (corrupt data) when the object is not a whole archive of references one
/// level below it, covering exactly its offsets.
pub async fn read_archive(
    store: &dyn ObjectStore,
    archive: &PageRef,
) -> Result<IndexArchive, BrokerError> {
    let path = archive.object.as_str();
    let bytes = read_object(store, "index archive", path).await?;
    let corrupt = |e: String| BrokerError::internal(format!("corrupt data: {e}"));
    let decoded = codec::decode_index_archive(path, &bytes).map_err(|e| corrupt(e.to_string()))?;
    let contiguous = decoded
        .refs
        .windows(2)
        .all(|w| w[1].first_offset == w[0].last_offset + 1);
    let covers = decoded.refs.first().map(|r| r.first_offset) == Some(archive.first_offset)
        && decoded.refs.last().map(|r| r.last_offset) == Some(archive.last_offset);
    if !contiguous || !covers || decoded.refs.iter().any(|r| r.level + 1 != archive.level) {
        return Err(corrupt(format!(
            "index archive {path} does not hold contiguous level-{} references covering {}..={}",
            archive.level.saturating_sub(1),
            archive.first_offset,
            archive.last_offset
        )));
    }
    Ok(decoded)
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
            level: 0,
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

    #[tokio::test]
    async fn an_archive_is_read_only_if_it_holds_contiguous_references_one_level_below() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (p1, r1) = page(7, 0, 2);
        let (p2, r2) = page(7, 20, 2);
        stored(&store, &p1, &r1).await;
        stored(&store, &p2, &r2).await;
        let archive = |name: &str, refs: Vec<PageRef>, first: i64, last: i64, level: u8| {
            let store = store.clone();
            let name = name.to_string();
            async move {
                let bytes = codec::encode_index_archive(&IndexArchive {
                    topic_id: 7,
                    partition: 0,
                    refs,
                });
                store
                    .put(&Path::from(name.as_str()), PutPayload::from(bytes))
                    .await
                    .unwrap();
                PageRef {
                    object: name,
                    object_len: 0,
                    first_offset: first,
                    last_offset: last,
                    bytes: 0,
                    max_timestamp: last,
                    level,
                }
            }
        };
        let metrics = Arc::new(Metrics::new("t", 0));
        let pages = IndexPages::new(store.clone(), 1 << 20, metrics);
        let good = archive("a", vec![r1.clone(), r2.clone()], 0, 39, 1).await;
        assert_eq!(pages.leaf(7, 0, &good, 25).await.unwrap(), r2);
        assert_eq!(pages.leaf(7, 0, &good, 0).await.unwrap(), r1);
        assert_eq!(
            pages.leaf_for_timestamp(7, 0, &good, 15, 0).await.unwrap(),
            Some(r1.clone())
        );
        assert_eq!(
            pages.leaf_for_timestamp(7, 0, &good, 15, 20).await.unwrap(),
            Some(r2.clone())
        );
        assert_eq!(
            pages.leaf_for_timestamp(7, 0, &good, 40, 0).await.unwrap(),
            None
        );
        // A gap, a reference claiming more than it holds, or the wrong level: corrupt.
        let (_, r3) = page(7, 30, 1);
        for bad in [
            archive("gap", vec![r1.clone(), r3], 0, 39, 1).await,
            archive("short", vec![r1.clone(), r2.clone()], 0, 49, 1).await,
            archive("level", vec![r1.clone(), r2.clone()], 0, 39, 2).await,
        ] {
            let err = pages.leaf(7, 0, &bad, 0).await.unwrap_err();
            assert!(
                err.to_string().contains("corrupt data"),
                "{}: {err}",
                bad.object
            );
        }
        let cold = IndexPages::new(store.clone(), 1 << 20, Arc::new(Metrics::new("t", 0)));
        let other = cold.archive(8, 0, &good).await.unwrap_err();
        assert!(
            other.to_string().contains("belongs to topic id 7"),
            "{other}"
        );
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
