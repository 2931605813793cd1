//! The read cache: segment objects in aligned chunks, in memory and optionally on local disk,
//! through foyer's hybrid cache.
//!
//! A read of a byte range becomes reads of the chunks it covers (`chunk_bytes`, default 4 MiB,
//! aligned to the object's start). A missing chunk is fetched with ONE range GET, and
//! concurrent readers of the same missing chunk share that GET (foyer's `get_or_fetch`). Every
//! flush inserts its new segment whole ([`SegmentCache::insert_object`]), so readers at the tail
//! never wait on the object store. Objects are immutable, so a cached chunk is never stale.
//!
//! A flushed segment is laid out without copying its large batches (see
//! [`crate::segment::SegmentWriter`]), so its chunks go into the cache as the pieces they are
//! made of, which keep the produce requests' buffers alive. The first read of such a chunk joins
//! it into one buffer and caches that instead: data nobody reads at the tail is never copied,
//! data read at the tail is copied once, as the flush used to. Until then a chunk weighs twice
//! its length, the most the request buffers it holds can take (a buffer grows by doubling).

use std::io::{Read, Write};
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, PsyncIoEngineConfig,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::StorageError;
use crate::metrics::CacheMetrics;

/// Sizes of the read cache.
#[derive(Debug, Clone)]
pub struct ReadCacheConfig {
    /// Memory tier capacity in bytes.
    pub memory_bytes: usize,
    /// Disk tier capacity in bytes; 0 disables the disk tier.
    pub disk_bytes: usize,
    /// Directory of the disk tier (required when `disk_bytes > 0`).
    pub disk_dir: Option<std::path::PathBuf>,
    /// Chunk size: the unit of caching and of range GETs.
    pub chunk_bytes: u64,
    /// Where lookups are counted (memory hit, disk hit, miss).
    pub metrics: CacheMetrics,
}

impl Default for ReadCacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            disk_bytes: 0,
            disk_dir: None,
            chunk_bytes: 4 << 20,
            metrics: CacheMetrics::default(),
        }
    }
}

/// Cache key: one chunk of one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ChunkKey {
    object: String,
    chunk: u64,
}

/// One cached chunk: one buffer of its own, or until first read the pieces a flush wrote it
/// from (`borrowed`: slices of produce requests' buffers, even when there is one piece).
#[derive(Debug, Clone)]
struct Chunk {
    pieces: Arc<[Bytes]>,
    borrowed: bool,
}

impl Chunk {
    fn whole(bytes: Bytes) -> Self {
        Self {
            pieces: Arc::from([bytes]),
            borrowed: false,
        }
    }

    fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// Memory the chunk holds, at most: borrowed pieces may keep request buffers up to twice
    /// their length alive.
    fn weight(&self) -> usize {
        if self.borrowed {
            2 * self.len()
        } else {
            self.len()
        }
    }

    /// The chunk in one buffer of its own, and whether that took a copy.
    fn joined(&self) -> (Bytes, bool) {
        match &*self.pieces {
            [] => (Bytes::new(), false),
            [one] if !self.borrowed => (one.clone(), false),
            pieces => {
                let mut out = BytesMut::with_capacity(self.len());
                for piece in pieces {
                    out.extend_from_slice(piece);
                }
                (out.freeze(), true)
            }
        }
    }
}

/// Stored as one buffer (the layout foyer gives `Bytes`).
impl Code for Chunk {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        self.len().encode(writer)?;
        for piece in self.pieces.iter() {
            writer.write_all(piece).map_err(foyer::Error::io_error)?;
        }
        Ok(())
    }

    fn decode(reader: &mut impl Read) -> foyer::Result<Self> {
        Bytes::decode(reader).map(Self::whole)
    }

    fn estimated_size(&self) -> usize {
        std::mem::size_of::<usize>() + self.len()
    }
}

impl Code for ChunkKey {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        self.chunk.encode(writer)?;
        self.object.encode(writer)
    }

    fn decode(reader: &mut impl Read) -> foyer::Result<Self> {
        let chunk = u64::decode(reader)?;
        let object = String::decode(reader)?;
        Ok(Self { object, chunk })
    }

    fn estimated_size(&self) -> usize {
        8 + 8 + self.object.len()
    }
}

/// Segment bytes, cached in chunks in front of an object store.
pub struct SegmentCache {
    store: Arc<dyn ObjectStore>,
    cache: HybridCache<ChunkKey, Chunk>,
    chunk_bytes: u64,
    metrics: CacheMetrics,
}

impl std::fmt::Debug for SegmentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCache")
            .field("chunk_bytes", &self.chunk_bytes)
            .finish_non_exhaustive()
    }
}

/// Block size of the disk tier: a chunk must fit in one block.
fn disk_block_bytes(chunk_bytes: u64) -> usize {
    (chunk_bytes as usize + (64 << 10))
        .next_power_of_two()
        .max(1 << 20)
}

impl SegmentCache {
    /// Opens the cache over `store`.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        config: ReadCacheConfig,
    ) -> Result<Self, StorageError> {
        if config.chunk_bytes == 0 {
            return Err(StorageError::Config(
                "read cache chunk size must be > 0".into(),
            ));
        }
        let builder = HybridCacheBuilder::new()
            .with_name("silt-segments")
            .with_policy(HybridCachePolicy::WriteOnEviction)
            .memory(config.memory_bytes.max(1))
            .with_weighter(|k: &ChunkKey, v: &Chunk| k.object.len() + v.weight() + 64)
            .storage();
        let builder = match (&config.disk_dir, config.disk_bytes) {
            (Some(dir), bytes) if bytes > 0 => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StorageError::Config(format!("cannot create cache dir {}: {e}", dir.display()))
                })?;
                let block = disk_block_bytes(config.chunk_bytes);
                let capacity = (bytes / block).max(2) * block;
                let device = FsDeviceBuilder::new(dir)
                    .with_capacity(capacity)
                    .build()
                    .map_err(|e| {
                        StorageError::Cache(format!("disk cache at {}: {e}", dir.display()))
                    })?;
                builder
                    .with_io_engine_config(PsyncIoEngineConfig::new())
                    .with_engine_config(BlockEngineConfig::new(device).with_block_size(block))
            }
            _ => builder,
        };
        let cache = builder
            .build()
            .await
            .map_err(|e| StorageError::Cache(e.to_string()))?;
        Ok(Self {
            store,
            cache,
            chunk_bytes: config.chunk_bytes,
            metrics: config.metrics,
        })
    }

    /// The chunks covering `range` of an object of `object_len` bytes.
    fn chunks(&self, range: &Range<u64>) -> Range<u64> {
        range.start / self.chunk_bytes..range.end.div_ceil(self.chunk_bytes)
    }

    /// Reads `range` of the object at `path` (`object_len` bytes long).
    pub async fn read_range(
        &self,
        path: &Path,
        range: Range<u64>,
        object_len: u64,
    ) -> Result<Bytes, StorageError> {
        if range.start > range.end || range.end > object_len {
            return Err(StorageError::Config(format!(
                "range {range:?} is outside object {path} of {object_len} bytes"
            )));
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let chunks = self.chunks(&range);
        let mut parts = Vec::with_capacity((chunks.end - chunks.start) as usize);
        for chunk in chunks {
            parts.push((chunk, self.chunk(path, chunk, object_len).await?));
        }
        if let [(chunk, bytes)] = parts.as_slice() {
            let base = chunk * self.chunk_bytes;
            return Ok(bytes.slice((range.start - base) as usize..(range.end - base) as usize));
        }
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        for (chunk, bytes) in parts {
            let base = chunk * self.chunk_bytes;
            let from = range.start.max(base) - base;
            let to = range.end.min(base + bytes.len() as u64) - base;
            out.extend_from_slice(&bytes[from as usize..to as usize]);
        }
        Ok(out.freeze())
    }

    /// One chunk, from the cache or with one range GET.
    async fn chunk(&self, path: &Path, chunk: u64, object_len: u64) -> Result<Bytes, StorageError> {
        let key = ChunkKey {
            object: path.to_string(),
            chunk,
        };
        if let Some(entry) = self.cache.memory().get(&key) {
            self.metrics.memory_hit.increment(1);
            let (bytes, copied) = entry.value().joined();
            if copied {
                self.cache.insert(key, Chunk::whole(bytes.clone()));
            }
            return Ok(bytes);
        }
        let start = chunk * self.chunk_bytes;
        let end = (start + self.chunk_bytes).min(object_len);
        let store = self.store.clone();
        let path = path.clone();
        let fetched = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fetching = fetched.clone();
        let entry = self
            .cache
            .get_or_fetch(&key, move || async move {
                fetching.store(true, std::sync::atomic::Ordering::Relaxed);
                let bytes = store.get_range(&path, start..end).await?;
                if bytes.len() as u64 != end - start {
                    return Err(FetchError::Short(format!(
                        "object {path} returned {} bytes for range {start}..{end}: it is shorter than its commit says",
                        bytes.len()
                    )));
                }
                Ok::<_, FetchError>(Chunk::whole(bytes))
            })
            .await
            .map_err(|e| StorageError::Cache(format!("reading {}: {e}", key.object)))?;
        if fetched.load(std::sync::atomic::Ordering::Relaxed) {
            self.metrics.miss.increment(1);
        } else {
            // Not in memory and not fetched: the disk tier had it (or a concurrent reader's
            // fetch, which that reader counts as its miss).
            self.metrics.disk_hit.increment(1);
        }
        Ok(entry.value().joined().0)
    }

    /// Inserts a whole object (just written, in `pieces`), chunk by chunk, without copying.
    pub fn insert_object(&self, path: &Path, pieces: &[Bytes]) {
        let object = path.to_string();
        let chunk_bytes = self.chunk_bytes as usize;
        let mut chunk = 0u64;
        let mut parts: Vec<Bytes> = Vec::new();
        let mut filled = 0usize;
        for piece in pieces {
            let mut at = 0;
            while at < piece.len() {
                let take = (chunk_bytes - filled).min(piece.len() - at);
                parts.push(piece.slice(at..at + take));
                (at, filled) = (at + take, filled + take);
                if filled == chunk_bytes {
                    self.insert_chunk(&object, chunk, std::mem::take(&mut parts));
                    (chunk, filled) = (chunk + 1, 0);
                }
            }
        }
        if !parts.is_empty() {
            self.insert_chunk(&object, chunk, parts);
        }
    }

    fn insert_chunk(&self, object: &str, chunk: u64, parts: Vec<Bytes>) {
        let key = ChunkKey {
            object: object.to_string(),
            chunk,
        };
        let chunk = Chunk {
            pieces: Arc::from(parts),
            borrowed: true,
        };
        self.cache.insert(key, chunk);
    }

    /// Drops an object's chunks (its segment was deleted).
    pub fn remove_object(&self, path: &Path, object_len: u64) {
        let object = path.to_string();
        for chunk in 0..object_len.div_ceil(self.chunk_bytes) {
            self.cache.remove(&ChunkKey {
                object: object.clone(),
                chunk,
            });
        }
    }
}

/// Why a chunk fetch failed (the cache needs a `std::error::Error`).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Store(#[from] object_store::Error),
    #[error("{0}")]
    Short(String),
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;
    use crate::object::InstrumentedStore;

    fn object(len: usize) -> Bytes {
        Bytes::from((0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>())
    }

    use crate::metrics::testing::Counts;
    use crate::metrics::{OBJECT_STORE_REQUESTS, ObjectStoreMetrics, READ_CACHE_LOOKUPS};

    struct Counted(Counts);

    impl Counted {
        fn gets(&self) -> u64 {
            self.0
                .get(OBJECT_STORE_REQUESTS, &[("op", "get"), ("outcome", "ok")])
        }

        fn lookups(&self, result: &str) -> u64 {
            self.0.get(READ_CACHE_LOOKUPS, &[("result", result)])
        }
    }

    async fn setup(mut config: ReadCacheConfig) -> (Counted, SegmentCache, Bytes, Path) {
        let (recorder, counts) = Counts::new();
        let counted = Counted(counts);
        config.metrics = CacheMetrics::register(&recorder);
        let store = Arc::new(InstrumentedStore::new(
            Arc::new(InMemory::new()),
            ObjectStoreMetrics::register(&recorder),
        ));
        let bytes = object(1000);
        let path = Path::from("segments/b/x.seg");
        store.put(&path, bytes.clone().into()).await.unwrap();
        let cache = SegmentCache::open(store, config).await.unwrap();
        (counted, cache, bytes, path)
    }

    #[tokio::test]
    async fn reads_any_range_across_chunks() {
        let config = ReadCacheConfig {
            chunk_bytes: 16,
            ..ReadCacheConfig::default()
        };
        let (store, cache, bytes, path) = setup(config).await;
        for range in [0..1, 0..16, 15..17, 3..200, 990..1000, 0..1000, 500..500] {
            let got = cache.read_range(&path, range.clone(), 1000).await.unwrap();
            assert_eq!(
                got,
                bytes.slice(range.start as usize..range.end as usize),
                "{range:?}"
            );
        }
        let (gets, misses) = (store.gets(), store.lookups("miss"));
        assert_eq!(gets, misses, "each miss is one GET");
        let hits = store.lookups("memory_hit");
        let _ = cache.read_range(&path, 0..1000, 1000).await.unwrap();
        assert_eq!(store.gets(), gets, "a second read is served from the cache");
        assert_eq!(
            store.lookups("memory_hit"),
            hits + 63,
            "1000 bytes in 16-byte chunks"
        );
        assert!(cache.read_range(&path, 990..1001, 1000).await.is_err());
    }

    #[tokio::test]
    async fn inserted_objects_need_no_get() {
        let config = ReadCacheConfig {
            chunk_bytes: 64,
            ..ReadCacheConfig::default()
        };
        let (store, cache, bytes, _) = setup(config).await;
        let fresh = Path::from("segments/b/y.seg");
        cache.insert_object(&fresh, std::slice::from_ref(&bytes));
        let got = cache.read_range(&fresh, 100..900, 1000).await.unwrap();
        assert_eq!(got, bytes.slice(100..900));
        assert_eq!(store.gets(), 0);
        // Read chunks were copied out of the inserted buffer (a produce request's, in a
        // broker), even those that were one slice of it: the cache lets go of that buffer.
        let at = bytes.as_ptr() as usize;
        let got = cache.read_range(&fresh, 130..140, 1000).await.unwrap();
        assert!(!(at..at + bytes.len()).contains(&(got.as_ptr() as usize)));
        cache.remove_object(&fresh, 1000);
        assert!(
            cache.read_range(&fresh, 0..10, 1000).await.is_err(),
            "removed and not in the store"
        );
    }

    #[tokio::test]
    async fn objects_inserted_in_pieces_read_back_whole() {
        let config = ReadCacheConfig {
            chunk_bytes: 64,
            ..ReadCacheConfig::default()
        };
        let (store, cache, bytes, _) = setup(config).await;
        let fresh = Path::from("segments/b/z.seg");
        // Pieces of every size around the chunk size, as a flush lays large batches out.
        let cuts = [0, 3, 64, 65, 200, 201, 202, 460, 700, 1000];
        let pieces: Vec<Bytes> = cuts.windows(2).map(|w| bytes.slice(w[0]..w[1])).collect();
        cache.insert_object(&fresh, &pieces);
        for round in 0..2 {
            for range in [0..1, 0..64, 60..70, 3..200, 190..210, 460..1000, 0..1000] {
                let got = cache.read_range(&fresh, range.clone(), 1000).await.unwrap();
                let want = bytes.slice(range.start as usize..range.end as usize);
                assert_eq!(got, want, "round {round}, {range:?}");
            }
        }
        assert_eq!(store.gets(), 0);
        // Once read, a chunk is one buffer: a read inside it is a slice, not a copy.
        let a = cache.read_range(&fresh, 130..140, 1000).await.unwrap();
        let b = cache.read_range(&fresh, 128..192, 1000).await.unwrap();
        assert_eq!(a.as_ptr(), b[2..].as_ptr());
    }

    #[tokio::test]
    async fn missing_object_is_an_error() {
        let (_, cache, _, _) = setup(ReadCacheConfig::default()).await;
        let err = cache
            .read_range(&Path::from("nope"), 0..10, 100)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[tokio::test]
    async fn disk_tier_works() {
        let dir = tempfile::tempdir().unwrap();
        let config = ReadCacheConfig {
            memory_bytes: 1,
            disk_bytes: 8 << 20,
            disk_dir: Some(dir.path().to_path_buf()),
            chunk_bytes: 128,
            ..ReadCacheConfig::default()
        };
        let (counted, cache, bytes, path) = setup(config).await;
        for _ in 0..3 {
            let got = cache.read_range(&path, 10..900, 1000).await.unwrap();
            assert_eq!(got, bytes.slice(10..900));
        }
        let lookups: u64 = ["memory_hit", "disk_hit", "miss"]
            .iter()
            .map(|r| counted.lookups(r))
            .sum();
        assert_eq!(
            lookups,
            3 * 8,
            "every chunk lookup (8 per read) is counted once"
        );
        assert_eq!(counted.gets(), counted.lookups("miss"));
    }
}
