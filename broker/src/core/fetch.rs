//! The read path: committed offsets → segment byte ranges → batches or records.
//!
//! A fetch looks the offset up in the [`LogIndex`] (committed data only), reads the byte ranges
//! of the entries it needs through the [`SegmentCache`] (chunk-aligned range GETs, pre-filled by
//! every flush so tail readers never wait on the store), checks each range's CRC32C against the
//! commit, and returns the stored batches as they are (`raw`) or decoded records. At the high
//! watermark it long-polls the partition's watermark channel; [`FetchPath::subscribe`] is the
//! same long-poll as a stream (gRPC Subscribe now; Kafka's Fetch and Kinesis's SubscribeToShard
//! next).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use silt_storage::batch::{DecodedRecord, decode_batches, split_batches};
use silt_storage::cache::SegmentCache;
use tokio::time::Instant;

use crate::core::error::BrokerError;
use crate::core::index_pages::{self, IndexPages};
use crate::core::log_index::{IndexEntry, Located, LogIndex, Offsets, PartitionLog};
use crate::core::topics::{TopicTable, check_partition};
use crate::observe::metrics::Metrics;

/// Default and largest `max_bytes` of one fetch.
pub const DEFAULT_FETCH_BYTES: usize = 1 << 20;
pub const MAX_FETCH_BYTES: usize = 64 << 20;
/// Longest long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Each long-poll of a subscription.
const SUBSCRIBE_POLL: Duration = Duration::from_secs(30);

/// What a fetch returns.
#[derive(Debug, Clone)]
pub enum Fetched {
    Records(Vec<DecodedRecord>),
    Batches(Vec<Bytes>),
}

/// A fetch result with the partition's offsets.
#[derive(Debug, Clone)]
pub struct FetchOutput {
    pub data: Fetched,
    pub offsets: Offsets,
    pub next_offset: i64,
}

/// Where a lookup starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    Offset(i64),
    Timestamp(i64),
}

/// Serves Fetch, Subscribe and ListOffsets.
#[derive(Debug)]
pub struct FetchPath {
    pub topics: Arc<TopicTable>,
    pub index: Arc<LogIndex>,
    pub cache: Arc<SegmentCache>,
    /// Index pages of older offsets, loaded on demand.
    pub pages: Arc<IndexPages>,
    pub metrics: Arc<Metrics>,
    /// Fires when the broker starts shutting down: subscriptions end with an unavailable error
    /// so clients move to another broker instead of holding the shutdown up.
    pub stopping: tokio_util::sync::CancellationToken,
}

impl FetchPath {
    /// The committed log of a topic partition, or NOT_FOUND.
    pub fn log(&self, topic: &str, partition: u32) -> Result<Arc<PartitionLog>, BrokerError> {
        let t = self.topics.require(topic)?;
        check_partition(&t, partition)?;
        let log = self.index.partition(t.id, partition);
        if let Some(reason) = log.unreadable() {
            return Err(BrokerError::unavailable(format!(
                "{topic}/{partition} is not served: this broker could not read its index ({reason}); upgrade this broker if it is older than the others, or repair the metadata"
            )));
        }
        Ok(log)
    }

    /// Reads from `offset`, waiting up to `max_wait` when nothing is committed there yet.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: usize,
        max_wait: Duration,
        raw: bool,
    ) -> Result<FetchOutput, BrokerError> {
        let log = self.log(topic, partition)?;
        let max_bytes = if max_bytes == 0 {
            DEFAULT_FETCH_BYTES
        } else {
            max_bytes.min(MAX_FETCH_BYTES)
        };
        let deadline = Instant::now() + max_wait.min(MAX_WAIT);
        let mut changes = log.subscribe();
        loop {
            changes.borrow_and_update();
            let (offsets, located) = log.locate(offset, max_bytes);
            check_offset(topic, partition, offset, offsets)?;
            let entries = self
                .resolve(&log, located, offset, max_bytes, offsets)
                .await?;
            if !entries.is_empty() {
                return self
                    .read(topic, entries, offset, max_bytes, raw, offsets)
                    .await;
            }
            let waited = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                let data = if raw {
                    Fetched::Batches(Vec::new())
                } else {
                    Fetched::Records(Vec::new())
                };
                return Ok(FetchOutput {
                    data,
                    offsets: log.offsets(),
                    next_offset: offset,
                });
            }
        }
    }

    /// The entries a lookup found: those in memory, or those of its index page.
    async fn resolve(
        &self,
        log: &PartitionLog,
        located: Located,
        offset: i64,
        max_bytes: usize,
        offsets: Offsets,
    ) -> Result<Vec<IndexEntry>, BrokerError> {
        match located {
            Located::Entries(entries) => Ok(entries),
            Located::Paged(top) => {
                let (topic_id, partition) = log.id();
                let from = offset.max(top.first_offset);
                let page = self.pages.leaf(topic_id, partition, &top, from).await?;
                let entries = self.pages.entries(topic_id, partition, &page).await?;
                Ok(index_pages::entries_from(
                    &entries,
                    offset.max(page.first_offset),
                    max_bytes,
                    offsets.high_watermark,
                ))
            }
        }
    }

    async fn read(
        &self,
        topic: &str,
        entries: Vec<IndexEntry>,
        offset: i64,
        max_bytes: usize,
        raw: bool,
        offsets: Offsets,
    ) -> Result<FetchOutput, BrokerError> {
        let ranges =
            futures::future::try_join_all(entries.iter().map(|e| self.read_entry(e))).await?;
        let mut next_offset = offset;
        let mut bytes = 0usize;
        let data = if raw {
            let mut batches = Vec::new();
            let mut served = 0i64;
            'outer: for (range, entry) in ranges.iter().zip(&entries) {
                for item in split_batches(range) {
                    let (header, batch) =
                        item.map_err(|e| corrupt(format!("stored batch: {e}")))?;
                    if header.last_offset() < offset {
                        continue;
                    }
                    if !batches.is_empty() && bytes + batch.len() > max_bytes {
                        break 'outer;
                    }
                    bytes += batch.len();
                    served += header.last_offset() - header.base_offset.max(offset) + 1;
                    next_offset = header.last_offset() + 1;
                    batches.push(batch);
                }
                // The whole entry was served: move past it even where key compaction left
                // no record at its end.
                next_offset = next_offset.max(entry.last_offset + 1);
            }
            self.metrics
                .fetched(topic, served.max(0) as u64, bytes as u64);
            Fetched::Batches(batches)
        } else {
            let mut records = Vec::new();
            for (range, entry) in ranges.into_iter().zip(&entries) {
                bytes += range.len();
                let decoded = decode_batches(range, offset)
                    .map_err(|e| corrupt(format!("stored batch: {e}")))?;
                // Past the whole entry, even where key compaction left no record at its end.
                next_offset = next_offset.max(entry.last_offset + 1);
                records.extend(decoded);
                if bytes >= max_bytes {
                    break;
                }
            }
            self.metrics
                .fetched(topic, records.len() as u64, bytes as u64);
            Fetched::Records(records)
        };
        Ok(FetchOutput {
            data,
            offsets,
            next_offset,
        })
    }

    /// One entry's bytes, checked against the CRC32C its commit recorded.
    async fn read_entry(&self, e: &IndexEntry) -> Result<Bytes, BrokerError> {
        let range = e.position..e.position + u64::from(e.length);
        let bytes = self
            .cache
            .read_range(&e.object.path, range, e.object.len)
            .await?;
        let crc = crc32c::crc32c(&bytes);
        if bytes.len() != e.length as usize || crc != e.crc32c {
            return Err(corrupt(format!(
                "segment {} bytes {}..{} fail their checksum (stored {:#010x}, read {crc:#010x})",
                e.object.path,
                e.position,
                e.position + u64::from(e.length),
                e.crc32c
            )));
        }
        Ok(bytes)
    }

    /// Reads a partition from `start` on, as a stream of fetch results that each wait for new
    /// records (long-polls of `SUBSCRIBE_POLL`), never empty: it ends after the first error.
    /// The stream does nothing until polled, so a slow reader slows it down (back-pressure),
    /// and dropping it stops it.
    pub async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        start: OffsetSpec,
        max_bytes: usize,
        raw: bool,
    ) -> Result<impl futures::Stream<Item = Result<FetchOutput, BrokerError>> + use<>, BrokerError>
    {
        let (offset, _, _) = self.list_offsets(topic, partition, start).await?;
        let state = Some((self.clone(), topic.to_string(), offset));
        Ok(futures::stream::unfold(state, move |state| async move {
            let (fetch, topic, mut offset) = state?;
            loop {
                let polled = tokio::select! {
                    polled = fetch.fetch(&topic, partition, offset, max_bytes, SUBSCRIBE_POLL, raw) => polled,
                    () = fetch.stopping.cancelled() => Err(BrokerError::unavailable(
                        "this broker is shutting down; subscribe again from the next offset (another broker serves it)",
                    )),
                };
                match polled {
                    Ok(out) if out.next_offset == offset => continue,
                    Ok(out) => {
                        offset = out.next_offset;
                        return Some((Ok(out), Some((fetch, topic, offset))));
                    }
                    Err(e) => return Some((Err(e), None)),
                }
            }
        }))
    }

    /// Resolves an offset lookup: `(offset, timestamp of the record found or -1, offsets)`.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<(i64, i64, Offsets), BrokerError> {
        let log = self.log(topic, partition)?;
        let offsets = log.offsets();
        match spec {
            OffsetSpec::Earliest => Ok((offsets.log_start, -1, offsets)),
            OffsetSpec::Latest => Ok((offsets.high_watermark, -1, offsets)),
            OffsetSpec::Offset(o) => {
                check_offset(topic, partition, o, offsets)?;
                Ok((o, -1, offsets))
            }
            OffsetSpec::Timestamp(ts) => {
                let (offsets, found) = log.entry_for_timestamp(ts);
                let Some(found) = found else {
                    return Ok((offsets.high_watermark, -1, offsets));
                };
                // The page's newest timestamp may belong to an entry below the log start: then
                // look on from the page's end.
                let mut found = found;
                // Pages before this offset were looked through already.
                let mut resume = offsets.log_start;
                let mut entry = loop {
                    if let Located::Paged(top) = &found
                        && top.level > 0
                    {
                        // An archive: the first page under it that may hold `ts`, else on
                        // from its end.
                        let (topic_id, partition) = log.id();
                        let leaf = self
                            .pages
                            .leaf_for_timestamp(topic_id, partition, top, ts, resume)
                            .await?;
                        let after = top.last_offset + 1;
                        found = match leaf {
                            Some(page) => Located::Paged(page),
                            None if after < offsets.high_watermark => {
                                resume = after;
                                log.locate(after, usize::MAX).1
                            }
                            None => return Ok((offsets.high_watermark, -1, offsets)),
                        };
                        continue;
                    }
                    let (from, after_page) = match &found {
                        Located::Paged(page) => (
                            page.first_offset.max(offsets.log_start),
                            Some(page.last_offset + 1),
                        ),
                        Located::Entries(_) => (offsets.log_start, None),
                    };
                    let candidates = self.resolve(&log, found, from, usize::MAX, offsets).await?;
                    let hit = candidates
                        .into_iter()
                        .find(|e| e.max_timestamp >= ts && e.last_offset >= offsets.log_start);
                    match (hit, after_page) {
                        (Some(e), _) => break e,
                        (None, Some(next)) if next < offsets.high_watermark => {
                            resume = next;
                            found = log.locate(next, usize::MAX).1;
                        }
                        _ => return Ok((offsets.high_watermark, -1, offsets)),
                    }
                };
                // The entry's max timestamp is at or after `ts`; find the first record that is,
                // moving on to later entries if the batches' headers over-promised.
                loop {
                    let bytes = self.read_entry(&entry).await?;
                    let records = decode_batches(bytes, offsets.log_start)
                        .map_err(|e| corrupt(format!("stored batch: {e}")))?;
                    if let Some(r) = records.iter().find(|r| r.timestamp_ms >= ts) {
                        return Ok((r.offset, r.timestamp_ms, offsets));
                    }
                    let after = entry.last_offset + 1;
                    let (now, located) = log.locate(after, 1);
                    let next = self.resolve(&log, located, after, 1, now).await?;
                    match next.into_iter().next() {
                        Some(e) => entry = e,
                        None => return Ok((offsets.high_watermark, -1, offsets)),
                    }
                }
            }
        }
    }
}

fn check_offset(topic: &str, partition: u32, offset: i64, o: Offsets) -> Result<(), BrokerError> {
    if offset < o.log_start || offset > o.high_watermark {
        return Err(BrokerError::out_of_range(
            format!(
                "offset {offset} is outside {topic}/{partition}'s log [{}, {}] (log start offset, high watermark); read from an offset in that range",
                o.log_start, o.high_watermark
            ),
            o.log_start,
            o.high_watermark,
        ));
    }
    Ok(())
}

fn corrupt(message: String) -> BrokerError {
    BrokerError::internal(format!("corrupt data: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
    use silt_metadata::catalog::Topic;
    use silt_metadata::codec::{IndexPage, IndexRoot, PageRef, SegmentCommit, SegmentEntry};
    use silt_storage::batch::{BatchCompression, ProducerInfo, RecordData, encode_batch};

    /// Ten records at `first..first + 10` stamped `ts..ts + 10`, stored as one object; its
    /// commit.
    async fn stored_entry(
        store: &Arc<dyn ObjectStore>,
        topic_id: u64,
        first: i64,
        ts: i64,
    ) -> (String, SegmentCommit) {
        let records: Vec<RecordData> = (0..10)
            .map(|i| RecordData {
                key: None,
                value: Some(Bytes::from(format!("v{}", first + i))),
                headers: Vec::new(),
                timestamp_ms: ts + i,
            })
            .collect();
        let batch =
            encode_batch(&records, BatchCompression::None, ProducerInfo::default()).unwrap();
        let mut bytes = batch.to_vec();
        bytes[..8].copy_from_slice(&first.to_be_bytes());
        let path = format!("parts/{first}.obj");
        store
            .put(&Path::from(path.as_str()), PutPayload::from(bytes.clone()))
            .await
            .unwrap();
        let commit = SegmentCommit {
            object: path,
            object_len: bytes.len() as u64,
            created_at_ms: 0,
            entries: vec![SegmentEntry {
                topic_id,
                partition: 0,
                batch_count: 1,
                first_offset: first,
                last_offset: first + 9,
                min_timestamp: ts,
                max_timestamp: ts + 9,
                position: 0,
                length: bytes.len() as u32,
                crc32c: crc32c::crc32c(&bytes),
            }],
        };
        (format!("part-{first}"), commit)
    }

    /// ListOffsets by time over index pages when the newest timestamp of a page belongs to an
    /// entry below the log start (timestamps are the producers' and need not grow with offsets):
    /// the lookup goes on past that page to the first live record at or after the time.
    #[tokio::test]
    async fn a_time_lookup_goes_past_a_page_whose_newest_time_is_below_the_log_start() {
        time_lookups_over_pages(false).await;
    }

    /// The same lookups, and reads by offset, with the pages moved into an archive, itself
    /// in an archive: each lookup goes down through both to the page.
    #[tokio::test]
    async fn lookups_and_reads_go_through_archives_to_the_pages() {
        time_lookups_over_pages(true).await;
    }

    /// An archive of `refs` (one level below it), stored.
    async fn stored_archive(
        store: &Arc<dyn ObjectStore>,
        name: &str,
        refs: Vec<PageRef>,
    ) -> PageRef {
        let r = PageRef {
            object: format!("index/{name}.ida"),
            object_len: 0,
            first_offset: refs[0].first_offset,
            last_offset: refs.last().unwrap().last_offset,
            bytes: 0,
            max_timestamp: refs.iter().map(|r| r.max_timestamp).max().unwrap(),
            level: refs[0].level + 1,
        };
        let archive = silt_metadata::codec::IndexArchive {
            topic_id: 7,
            partition: 0,
            refs,
        };
        store
            .put(
                &Path::from(r.object.as_str()),
                PutPayload::from(silt_metadata::codec::encode_index_archive(&archive)),
            )
            .await
            .unwrap();
        r
    }

    async fn time_lookups_over_pages(archived: bool) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let topic = Topic {
            id: 7,
            record: crate::cluster::tests::topic("t", 1),
        };
        // Page A: offsets 0..=9 stamped in the future (later below the log start), 10..=19 at
        // 100. Page B: 20..=29 at 200. Tail: 30..=39 at 6 000.
        let a = vec![
            stored_entry(&store, topic.id, 0, 10_000).await,
            stored_entry(&store, topic.id, 10, 100).await,
        ];
        let b = vec![stored_entry(&store, topic.id, 20, 200).await];
        let tail = stored_entry(&store, topic.id, 30, 6_000).await;
        let mut pages = Vec::new();
        for (name, parts) in [("a", a), ("b", b)] {
            let first = parts[0].1.entries[0].first_offset;
            let last = parts.last().unwrap().1.entries[0].last_offset;
            let max_timestamp = parts
                .iter()
                .map(|(_, c)| c.entries[0].max_timestamp)
                .max()
                .unwrap();
            let object = format!("index/{name}.idx");
            let page = IndexPage {
                topic_id: topic.id,
                partition: 0,
                parts,
            };
            store
                .put(
                    &Path::from(object.as_str()),
                    PutPayload::from(silt_metadata::codec::encode_index_page(&page)),
                )
                .await
                .unwrap();
            pages.push(PageRef {
                object,
                object_len: 0,
                first_offset: first,
                last_offset: last,
                bytes: 0,
                max_timestamp,
                level: 0,
            });
        }
        if archived {
            let inner = stored_archive(&store, "inner", pages).await;
            pages = vec![stored_archive(&store, "outer", vec![inner]).await];
        }
        let index = Arc::new(LogIndex::new());
        let log = index.partition(topic.id, 0);
        log.set_root(1, &IndexRoot { pages });
        index.apply(&tail.0, &tail.1);
        log.set_log_start(10);
        assert_eq!(log.offsets().high_watermark, 40);
        let metrics = Arc::new(Metrics::new("a", 0));
        let cache = SegmentCache::open(store.clone(), Default::default())
            .await
            .unwrap();
        let fetch = FetchPath {
            topics: Arc::new(TopicTable::new(vec![topic])),
            index,
            cache: Arc::new(cache),
            pages: Arc::new(IndexPages::new(store, 1 << 20, metrics.clone())),
            metrics,
            stopping: Default::default(),
        };
        let at = |ts| fetch.list_offsets("t", 0, OffsetSpec::Timestamp(ts));
        // Page A's newest time (10 009) is below the log start: the answer is in the tail.
        assert_eq!(at(5_000).await.unwrap().0, 30);
        assert_eq!(at(5_000).await.unwrap().1, 6_000);
        // Live times in the pages and the tail are found where they are.
        assert_eq!(at(105).await.unwrap().0, 15);
        assert_eq!(at(150).await.unwrap().0, 20);
        assert_eq!(at(6_005).await.unwrap().0, 35);
        // Past every live time: the high watermark.
        assert_eq!(
            at(7_000).await.unwrap(),
            (40, -1, fetch.log("t", 0).unwrap().offsets())
        );
        // Every live offset reads, one fetch at a time, from the pages then the tail.
        let mut offset = 10;
        let mut read = Vec::new();
        while offset < 40 {
            let out = fetch
                .fetch("t", 0, offset, 1, Duration::ZERO, false)
                .await
                .unwrap();
            let Fetched::Records(records) = out.data else {
                panic!("records asked for")
            };
            read.extend(records.iter().map(|r| r.offset));
            assert!(out.next_offset > offset);
            offset = out.next_offset;
        }
        assert_eq!(read, (10..40).collect::<Vec<_>>());
    }
}
