//! Versioned encodings of the values stored under [`crate::keys`].
//!
//! Topic records are JSON (`{"v":1,...}`) so an operator can read them with `etcdctl`. Values
//! written on the hot path — one segment commit per flush — are compact binary: a version byte
//! followed by `postcard` (varint) encoding, about 30 bytes per partition entry, so a commit for
//! 4096 partitions stays near 128 KiB, far below etcd's 1.5 MiB request limit.

use serde::{Deserialize, Serialize};

use crate::error::MetaError;

const BINARY_V1: u8 = 1;

/// A topic as stored in `topics/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Format version, 1.
    pub v: u32,
    pub name: String,
    pub partitions: u32,
    /// -1 keeps records forever.
    pub retention_ms: i64,
    /// Most bytes kept per partition; older batches go first. -1: no size limit. Records
    /// written before this field existed read as -1.
    #[serde(default = "unlimited")]
    pub retention_bytes: i64,
    pub max_record_bytes: u32,
    pub created_at_ms: i64,
    /// What happens to old records: deleted by retention, compacted by key, or both. Records
    /// written before this field existed read as `delete`.
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,
    /// How long a tombstone (a record with a null value) of a compacted topic is kept after it
    /// was written, in ms, so consumers that read the key before see that it went. Records
    /// written before this field existed read as one day (Kafka's default).
    #[serde(default = "default_delete_retention_ms")]
    pub delete_retention_ms: i64,
}

fn unlimited() -> i64 {
    -1
}

/// Kafka's `delete.retention.ms` default: one day.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 86_400_000;

fn default_delete_retention_ms() -> i64 {
    DEFAULT_DELETE_RETENTION_MS
}

/// A topic's `cleanup_policy`, as Kafka's `cleanup.policy`: which of retention (`delete`) and
/// key compaction (`compact`) remove its old records. Stored and shown with Kafka's spellings:
/// `delete`, `compact`, `compact,delete`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CleanupPolicy {
    /// Records go when they are older than `retention_ms` or past `retention_bytes`.
    #[default]
    Delete,
    /// Only each key's latest record is kept (and its tombstone for `delete_retention_ms`);
    /// retention does not apply.
    Compact,
    /// Both: compacted by key, and retention removes old records too.
    CompactDelete,
}

impl CleanupPolicy {
    /// The spellings [`CleanupPolicy::from_str`](std::str::FromStr) accepts, for messages.
    pub const ALLOWED: &'static str = "\"delete\", \"compact\" or \"compact,delete\"";

    /// True when key compaction applies.
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    /// True when retention (by time and size) applies.
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }

    /// Kafka's spelling: `delete`, `compact` or `compact,delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }
}

impl std::fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cleanup policy that is not one of [`CleanupPolicy::ALLOWED`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cleanup_policy '{0}': use {allowed}", allowed = CleanupPolicy::ALLOWED)]
pub struct UnknownCleanupPolicy(pub String);

impl std::str::FromStr for CleanupPolicy {
    type Err = UnknownCleanupPolicy;

    /// Kafka's spellings, a comma-separated list of `compact` and `delete` in either order
    /// (`delete,compact` is `compact,delete`), spaces around the items ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut compact, mut delete) = (false, false);
        for item in s.split(',') {
            match item.trim() {
                "compact" if !compact => compact = true,
                "delete" if !delete => delete = true,
                _ => return Err(UnknownCleanupPolicy(s.to_string())),
            }
        }
        Ok(match (compact, delete) {
            (true, true) => CleanupPolicy::CompactDelete,
            (true, false) => CleanupPolicy::Compact,
            _ => CleanupPolicy::Delete,
        })
    }
}

impl TryFrom<String> for CleanupPolicy {
    type Error = UnknownCleanupPolicy;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<CleanupPolicy> for String {
    fn from(policy: CleanupPolicy) -> String {
        policy.as_str().to_string()
    }
}

/// One partition's part of a segment object, as committed: the segment format's own index
/// entry (`silt_storage::segment::SegmentEntry`), postcard-encoded field by field.
pub use silt_storage::segment::SegmentEntry;

/// A committed segment object: what makes its records readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentCommit {
    /// Object path in the store (`segments/<broker>/<incarnation>-<seq>.seg`).
    pub object: String,
    pub object_len: u64,
    pub created_at_ms: i64,
    pub entries: Vec<SegmentEntry>,
}

/// One index page of a partition as its root (`index/<topic>/<partition>`) or an archive
/// lists it: a range of older entries rolled out of metadata into an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    /// The object's path: a page (`index/<topic>/<partition>/<first>-<last>-<writer>.idx`) or
    /// an archive (`….ida`).
    pub object: String,
    pub object_len: u64,
    pub first_offset: i64,
    pub last_offset: i64,
    /// Bytes of batches its entries hold (retention by size).
    pub bytes: u64,
    /// The newest record timestamp among its entries (retention by time, the time index).
    pub max_timestamp: i64,
    /// 0: an index page; n > 0: an archive of references of level n - 1.
    pub level: u8,
}

/// A partition's index root: its pages and archives, contiguous in offsets, oldest first
/// (levels never rise from older to newer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRoot {
    pub pages: Vec<PageRef>,
}

/// An index archive object: contiguous references of one level, oldest first, moved out of
/// a partition's index root so the root stays bounded however long the log grows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexArchive {
    pub topic_id: u64,
    pub partition: u32,
    pub refs: Vec<PageRef>,
}

/// An index page object: the commits of compacted objects of one partition, as their
/// `parts/` keys held them (ids included) before they were rolled out of metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPage {
    pub topic_id: u64,
    pub partition: u32,
    pub parts: Vec<(String, SegmentCommit)>,
}

/// The first bytes of an index page object: format and version.
const PAGE_MAGIC: &[u8; 8] = b"SILTIDX1";

/// Encodes an index page: magic, postcard body, CRC32C (little-endian) of everything before.
pub fn encode_index_page(page: &IndexPage) -> Vec<u8> {
    framed(PAGE_MAGIC, page)
}

/// Decodes an index page object read from `path`, checking its format and CRC32C.
pub fn decode_index_page(path: &str, bytes: &[u8]) -> Result<IndexPage, MetaError> {
    unframed(PAGE_MAGIC, "index page", path, bytes)
}

/// `magic`, the postcard body, then the CRC32C (little-endian) of everything before.
fn framed<T: Serialize>(magic: &[u8; 8], value: &T) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend(postcard::to_allocvec(value).unwrap_or_default());
    let crc = crc32c::crc32c(&out);
    out.extend(crc.to_le_bytes());
    out
}

/// Checks the magic and the CRC32C of an object `framed` wrote, then decodes its body.
fn unframed<T: for<'de> Deserialize<'de>>(
    magic: &[u8; 8],
    what: &str,
    path: &str,
    bytes: &[u8],
) -> Result<T, MetaError> {
    let corrupt = |reason: String| corrupt(path.as_bytes(), reason);
    let body_end = bytes
        .len()
        .checked_sub(4)
        .filter(|end| *end >= magic.len())
        .ok_or_else(|| corrupt(format!("{what} too short")))?;
    if &bytes[..magic.len()] != magic {
        return Err(corrupt(format!("not an {what} (bad magic or version)")));
    }
    let stored = u32::from_le_bytes(bytes[body_end..].try_into().unwrap_or_default());
    if crc32c::crc32c(&bytes[..body_end]) != stored {
        return Err(corrupt(format!("{what} CRC32C mismatch")));
    }
    postcard::from_bytes(&bytes[magic.len()..body_end]).map_err(|e| corrupt(e.to_string()))
}

/// The first bytes of an index archive object: format and version.
const ARCHIVE_MAGIC: &[u8; 8] = b"SILTIDA1";

/// Encodes an index archive: magic, postcard body, CRC32C (little-endian) of everything before.
pub fn encode_index_archive(archive: &IndexArchive) -> Vec<u8> {
    framed(ARCHIVE_MAGIC, archive)
}

/// Decodes an index archive object read from `path`, checking its format and CRC32C.
pub fn decode_index_archive(path: &str, bytes: &[u8]) -> Result<IndexArchive, MetaError> {
    unframed(ARCHIVE_MAGIC, "index archive", path, bytes)
}

/// The root encoding before archives: pages only, no level.
#[derive(Serialize, Deserialize)]
struct PageRefV1 {
    object: String,
    object_len: u64,
    first_offset: i64,
    last_offset: i64,
    bytes: u64,
    max_timestamp: i64,
}

/// Index roots with archives are written as version 2; a root of pages only keeps version 1,
/// which brokers from before archives read.
const ROOT_V2: u8 = 2;

/// Encodes an index root: binary v1 while it lists pages only, v2 (with levels) once it
/// lists an archive.
pub fn encode_index_root(root: &IndexRoot) -> Vec<u8> {
    if root.pages.iter().all(|p| p.level == 0) {
        let pages: Vec<PageRefV1> = root
            .pages
            .iter()
            .map(|p| PageRefV1 {
                object: p.object.clone(),
                object_len: p.object_len,
                first_offset: p.first_offset,
                last_offset: p.last_offset,
                bytes: p.bytes,
                max_timestamp: p.max_timestamp,
            })
            .collect();
        return encode_binary(&pages);
    }
    let mut out = vec![ROOT_V2];
    out.extend(postcard::to_allocvec(root).unwrap_or_default());
    out
}

/// Decodes an index root of either version.
pub fn decode_index_root(key: &[u8], value: &[u8]) -> Result<IndexRoot, MetaError> {
    if let Some((&ROOT_V2, rest)) = value.split_first() {
        return postcard::from_bytes(rest).map_err(|e| corrupt(key, e));
    }
    let pages: Vec<PageRefV1> = decode_binary(key, value)?;
    let pages = pages
        .into_iter()
        .map(|p| PageRef {
            object: p.object,
            object_len: p.object_len,
            first_offset: p.first_offset,
            last_offset: p.last_offset,
            bytes: p.bytes,
            max_timestamp: p.max_timestamp,
            level: 0,
        })
        .collect();
    Ok(IndexRoot { pages })
}

/// A committed offset as stored in `~groups/<slot>/<group>/offsets/<topic-id>/<partition>`:
/// the next offset the group reads, with the client's metadata string kept as given (as
/// Kafka keeps it) and when it was committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRecord {
    pub offset: i64,
    /// The leader epoch the client saw (Kafka's `committed_leader_epoch`), -1 when unknown.
    pub leader_epoch: i32,
    pub metadata: String,
    pub committed_at_ms: i64,
}

/// Encodes a committed offset (binary v1).
pub fn encode_offset(record: &OffsetRecord) -> Vec<u8> {
    encode_binary(record)
}

/// Decodes a committed offset.
pub fn decode_offset(key: &[u8], value: &[u8]) -> Result<OffsetRecord, MetaError> {
    decode_binary(key, value)
}

/// Encodes a topic record.
pub fn encode_topic(topic: &TopicRecord) -> Vec<u8> {
    serde_json::to_vec(topic).unwrap_or_default()
}

/// Decodes a topic record.
pub fn decode_topic(key: &[u8], value: &[u8]) -> Result<TopicRecord, MetaError> {
    let topic = decode_json_v1(key, value, "topic record", |t: &TopicRecord| t.v)?;
    if topic.partitions == 0 {
        return Err(corrupt(key, "topic record with 0 partitions"));
    }
    Ok(topic)
}

/// Encodes a segment commit (binary v1).
pub fn encode_segment(commit: &SegmentCommit) -> Vec<u8> {
    encode_binary(commit)
}

/// Decodes a segment commit.
pub fn decode_segment(key: &[u8], value: &[u8]) -> Result<SegmentCommit, MetaError> {
    decode_binary(key, value)
}

/// Encodes per-partition log start offsets (binary v1).
pub fn encode_log_starts(starts: &[i64]) -> Vec<u8> {
    encode_binary(&starts)
}

/// Decodes per-partition log start offsets.
pub fn decode_log_starts(key: &[u8], value: &[u8]) -> Result<Vec<i64>, MetaError> {
    decode_binary(key, value)
}

fn encode_binary<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![BINARY_V1];
    // postcard only fails on writer errors, and a Vec never refuses bytes.
    out.extend(postcard::to_allocvec(value).unwrap_or_default());
    out
}

fn decode_binary<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T, MetaError> {
    match value.split_first() {
        Some((&BINARY_V1, rest)) => postcard::from_bytes(rest).map_err(|e| corrupt(key, e)),
        Some((v, _)) => Err(corrupt(key, format!("unknown value format version {v}"))),
        None => Err(corrupt(key, "empty value")),
    }
}

fn corrupt(key: &[u8], reason: impl ToString) -> MetaError {
    MetaError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(entries: usize) -> SegmentCommit {
        SegmentCommit {
            object: "segments/b1/0000000000000001-000000000002.seg".into(),
            object_len: 8 << 20,
            created_at_ms: 1_700_000_000_000,
            entries: (0..entries)
                .map(|i| SegmentEntry {
                    topic_id: 17,
                    partition: i as u32,
                    batch_count: 3,
                    first_offset: 1_000_000,
                    last_offset: 1_000_099,
                    min_timestamp: 1_700_000_000_000,
                    max_timestamp: 1_700_000_000_250,
                    position: 16 + 2048 * i as u64,
                    length: 2048,
                    crc32c: 0xdead_beef,
                })
                .collect(),
        }
    }

    #[test]
    fn index_pages_and_roots_round_trip_and_damage_is_caught() {
        let page = IndexPage {
            topic_id: 17,
            partition: 3,
            parts: vec![("p1".into(), commit(2)), ("p2".into(), commit(1))],
        };
        let bytes = encode_index_page(&page);
        assert_eq!(decode_index_page("x", &bytes).unwrap(), page);
        // Any flipped byte, a truncation or another format is refused, never misread.
        for i in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode_index_page("x", &bad).is_err(), "flipped byte {i}");
        }
        assert!(decode_index_page("x", &bytes[..bytes.len() - 1]).is_err());
        assert!(decode_index_page("x", b"SILTIDX1").is_err());
        assert!(decode_index_page("x", b"").is_err());
        let root = IndexRoot {
            pages: vec![PageRef {
                object: "index/p".into(),
                object_len: 10,
                first_offset: 0,
                last_offset: 99,
                bytes: 1 << 30,
                max_timestamp: 5,
                level: 0,
            }],
        };
        assert_eq!(
            decode_index_root(b"k", &encode_index_root(&root)).unwrap(),
            root
        );
    }

    #[test]
    fn roots_of_pages_keep_the_first_encoding_and_archives_round_trip() {
        let page = |first: i64, level: u8| PageRef {
            object: format!("index/t/0/{first}"),
            object_len: 10,
            first_offset: first,
            last_offset: first + 9,
            bytes: 100,
            max_timestamp: first,
            level,
        };
        // A root of pages only is written exactly as brokers from before archives wrote it:
        // the struct without levels, version 1.
        #[derive(Serialize)]
        struct OldRef<'a>(&'a str, u64, i64, i64, u64, i64);
        #[derive(Serialize)]
        struct OldRoot<'a> {
            pages: Vec<OldRef<'a>>,
        }
        let pages = IndexRoot {
            pages: vec![page(0, 0), page(10, 0)],
        };
        let old = OldRoot {
            pages: pages
                .pages
                .iter()
                .map(|p| {
                    OldRef(
                        &p.object,
                        p.object_len,
                        p.first_offset,
                        p.last_offset,
                        p.bytes,
                        p.max_timestamp,
                    )
                })
                .collect(),
        };
        assert_eq!(encode_index_root(&pages), encode_binary(&old));
        assert_eq!(
            decode_index_root(b"k", &encode_binary(&old)).unwrap(),
            pages
        );
        // With an archive it is version 2, levels kept.
        let archived = IndexRoot {
            pages: vec![page(0, 2), page(10, 1), page(20, 0)],
        };
        let bytes = encode_index_root(&archived);
        assert_eq!(bytes[0], ROOT_V2);
        assert_eq!(decode_index_root(b"k", &bytes).unwrap(), archived);
        assert!(decode_index_root(b"k", &[3, 0]).is_err());
        assert!(decode_index_root(b"k", &bytes[..bytes.len() - 1]).is_err());
        // Archives are framed and checked like pages.
        let archive = IndexArchive {
            topic_id: 17,
            partition: 3,
            refs: vec![page(0, 1), page(10, 1)],
        };
        let bytes = encode_index_archive(&archive);
        assert_eq!(&bytes[..8], b"SILTIDA1");
        assert_eq!(decode_index_archive("x", &bytes).unwrap(), archive);
        for i in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode_index_archive("x", &bad).is_err(), "flipped byte {i}");
        }
        // A page is not an archive, nor the other way round.
        let page_bytes = encode_index_page(&IndexPage {
            topic_id: 17,
            partition: 3,
            parts: Vec::new(),
        });
        assert!(decode_index_archive("x", &page_bytes).is_err());
        assert!(decode_index_page("x", &bytes).is_err());
    }

    #[test]
    fn broker_records_carry_the_formats_their_broker_reads_across_versions() {
        let new = BrokerRecord {
            v: 1,
            broker_id: "b".into(),
            address: "a:1".into(),
            incarnation: 2,
            started_at_ms: 3,
            formats: vec![FORMAT_INDEX_ARCHIVES.into()],
        };
        let bytes = encode_broker(&new);
        assert_eq!(decode_broker(b"k", &bytes).unwrap(), new);
        assert!(new.reads(FORMAT_INDEX_ARCHIVES));
        // A broker from before formats registered without them: it reads none.
        let old = br#"{"v":1,"broker_id":"b","address":"a:1","incarnation":2,"started_at_ms":3}"#;
        let old = decode_broker(b"k", old).unwrap();
        assert!(old.formats.is_empty() && !old.reads(FORMAT_INDEX_ARCHIVES));
        // ...and reads a newer broker's record, the field unknown to it.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OldBrokerRecord {
            v: u32,
            broker_id: String,
            address: String,
            incarnation: u64,
            started_at_ms: i64,
        }
        assert!(serde_json::from_slice::<OldBrokerRecord>(&bytes).is_ok());
    }

    #[test]
    fn owner_and_controller_records_round_trip_and_check_their_version() {
        let o = OwnerRecord {
            v: 1,
            broker_id: "b-1".into(),
            epoch: 7,
        };
        assert_eq!(decode_owner(b"k", &encode_owner(&o)).unwrap(), o);
        let future = br#"{"v":2,"broker_id":"b","epoch":1}"#;
        assert!(decode_owner(b"k", future).is_err());
        let c = ControllerRecord {
            v: 1,
            broker_id: "b-2".into(),
        };
        assert_eq!(decode_controller(b"k", &encode_controller(&c)).unwrap(), c);
        assert!(decode_controller(b"k", b"not json").is_err());
    }

    #[test]
    fn segment_commit_round_trips() {
        let c = commit(3);
        assert_eq!(decode_segment(b"k", &encode_segment(&c)).unwrap(), c);
    }

    #[test]
    fn a_4096_partition_commit_fits_etcd_request_limit() {
        let len = encode_segment(&commit(4096)).len();
        assert!(len < 256 * 1024, "{len} bytes");
    }

    #[test]
    fn unknown_versions_and_garbage_are_corrupt() {
        assert!(matches!(
            decode_segment(b"k", &[9, 1, 2]),
            Err(MetaError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_segment(b"k", &[]),
            Err(MetaError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_segment(b"k", &[1, 0xff]),
            Err(MetaError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_topic(b"k", b"{\"v\":2}"),
            Err(MetaError::Corrupt { .. })
        ));
    }

    fn topic(cleanup_policy: CleanupPolicy) -> TopicRecord {
        TopicRecord {
            v: 1,
            name: "kv".into(),
            partitions: 3,
            retention_ms: -1,
            retention_bytes: -1,
            max_record_bytes: 1 << 20,
            created_at_ms: 1_700_000_000_000,
            cleanup_policy,
            delete_retention_ms: 60_000,
        }
    }

    #[test]
    fn topic_records_round_trip_with_their_cleanup_policy() {
        for policy in [
            CleanupPolicy::Delete,
            CleanupPolicy::Compact,
            CleanupPolicy::CompactDelete,
        ] {
            let t = topic(policy);
            assert_eq!(decode_topic(b"k", &encode_topic(&t)).unwrap(), t);
        }
        // Stored with Kafka's spelling, readable with etcdctl.
        let json = String::from_utf8(encode_topic(&topic(CleanupPolicy::CompactDelete))).unwrap();
        assert!(
            json.contains(r#""cleanup_policy":"compact,delete""#),
            "{json}"
        );
        assert!(json.contains(r#""delete_retention_ms":60000"#), "{json}");
    }

    #[test]
    fn topic_records_from_before_cleanup_policy_read_as_delete_with_a_day_of_tombstones() {
        let old = br#"{"v":1,"name":"t","partitions":2,"retention_ms":604800000,"max_record_bytes":1048576,"created_at_ms":5}"#;
        let t = decode_topic(b"k", old).unwrap();
        assert_eq!(t.cleanup_policy, CleanupPolicy::Delete);
        assert_eq!(t.delete_retention_ms, 86_400_000);
        assert_eq!(t.retention_bytes, -1);
        let unknown = br#"{"v":1,"name":"t","partitions":2,"retention_ms":1,"max_record_bytes":1,"created_at_ms":5,"cleanup_policy":"shred"}"#;
        assert!(matches!(
            decode_topic(b"k", unknown),
            Err(MetaError::Corrupt { .. })
        ));
    }

    #[test]
    fn cleanup_policies_parse_with_kafka_spellings() {
        for policy in [
            CleanupPolicy::Delete,
            CleanupPolicy::Compact,
            CleanupPolicy::CompactDelete,
        ] {
            assert_eq!(policy.to_string().parse::<CleanupPolicy>(), Ok(policy));
            assert_eq!(policy.as_str(), policy.to_string());
        }
        assert_eq!(
            "delete,compact".parse::<CleanupPolicy>(),
            Ok(CleanupPolicy::CompactDelete)
        );
        assert_eq!(
            "compact, delete".parse::<CleanupPolicy>(),
            Ok(CleanupPolicy::CompactDelete)
        );
        assert_eq!(CleanupPolicy::default(), CleanupPolicy::Delete);
        let (d, c, cd) = (
            CleanupPolicy::Delete,
            CleanupPolicy::Compact,
            CleanupPolicy::CompactDelete,
        );
        assert!(d.deletes() && !d.compacts());
        assert!(c.compacts() && !c.deletes());
        assert!(cd.compacts() && cd.deletes());
        for bad in [
            "",
            "Compact",
            "compact,compact",
            "compact,",
            "shred",
            "delete;compact",
        ] {
            let err = bad.parse::<CleanupPolicy>().unwrap_err().to_string();
            assert!(
                err.contains(&format!("'{bad}'")) && err.contains(r#""compact,delete""#),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn log_starts_round_trip() {
        let starts = vec![0, 5, i64::MAX];
        assert_eq!(
            decode_log_starts(b"k", &encode_log_starts(&starts)).unwrap(),
            starts
        );
    }
}

/// A live broker, as it registers itself under its lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerRecord {
    pub v: u32,
    pub broker_id: String,
    /// Address clients reach its gRPC API at.
    pub address: String,
    pub incarnation: u64,
    pub started_at_ms: i64,
    /// Formats this broker reads beyond those every Silt broker reads (such as
    /// [`FORMAT_INDEX_ARCHIVES`]): a format is written only while every live broker reads it,
    /// so a cluster in a rolling upgrade never writes what its older brokers cannot read.
    /// Records of brokers from before this field read as none.
    #[serde(default)]
    pub formats: Vec<String>,
}

/// Index roots that list archives (version 2) and the archive objects.
pub const FORMAT_INDEX_ARCHIVES: &str = "index-archives";

impl BrokerRecord {
    /// Whether this broker reads `format`.
    pub fn reads(&self, format: &str) -> bool {
        self.formats.iter().any(|f| f == format)
    }
}

/// Who writes a partition, as stored in `owners/<topic-id>/<partition>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub v: u32,
    pub broker_id: String,
    /// Increases by one on every change of owner.
    pub epoch: u64,
}

/// The elected controller, as stored in `controller` under its membership lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    pub v: u32,
    pub broker_id: String,
}

pub fn encode_owner(owner: &OwnerRecord) -> Vec<u8> {
    serde_json::to_vec(owner).unwrap_or_default()
}

pub fn decode_owner(key: &[u8], value: &[u8]) -> Result<OwnerRecord, MetaError> {
    decode_json_v1(key, value, "owner record", |r: &OwnerRecord| r.v)
}

pub fn encode_controller(controller: &ControllerRecord) -> Vec<u8> {
    serde_json::to_vec(controller).unwrap_or_default()
}

pub fn decode_controller(key: &[u8], value: &[u8]) -> Result<ControllerRecord, MetaError> {
    decode_json_v1(key, value, "controller record", |r: &ControllerRecord| r.v)
}

fn decode_json_v1<T: serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
    what: &str,
    version: impl Fn(&T) -> u32,
) -> Result<T, MetaError> {
    let record: T =
        serde_json::from_slice(value).map_err(|e| corrupt(key, format!("{what}: {e}")))?;
    match version(&record) {
        1 => Ok(record),
        v => Err(corrupt(key, format!("unknown {what} version {v}"))),
    }
}

pub fn encode_broker(broker: &BrokerRecord) -> Vec<u8> {
    serde_json::to_vec(broker).unwrap_or_default()
}

pub fn decode_broker(key: &[u8], value: &[u8]) -> Result<BrokerRecord, MetaError> {
    serde_json::from_slice(value).map_err(|e| MetaError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("broker record: {e}"),
    })
}
