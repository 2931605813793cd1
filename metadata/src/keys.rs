//! The etcd key layout, built here and nowhere else.
//!
//! Every key lives under `/silt/<cluster>/` so several clusters can share one etcd:
//!
//! | key | value | written by |
//! |---|---|---|
//! | `topics/<name>` | [`crate::codec::TopicRecord`] (JSON, `"v":1`) | CreateTopic; its `create_revision` is the topic id |
//! | `log-start/<topic-id:016x>` | per-partition log start offsets (binary v1) | retention, topic deletion |
//! | `brokers/<broker-id>` | [`crate::codec::BrokerRecord`] (JSON, `"v":1`), under the broker's lease | a live broker: membership; gone when its lease ends |
//! | `writers/<broker-id>` | the broker's incarnation (decimal) | a broker at start, and the controller when it takes a partition away from the broker; every commit compares its `mod_revision` (fencing) |
//! | `owners/<topic-id:016x>/<partition>` | [`crate::codec::OwnerRecord`] (JSON, `"v":1`) | the controller: which broker writes the partition, with its epoch |
//! | `controller` | [`crate::codec::ControllerRecord`] (JSON, `"v":1`), under the controller's membership lease | the broker elected to assign partitions |
//! | `segments/<broker-id>/<incarnation:016x>-<seq:012>` | [`crate::codec::SegmentCommit`] (binary v1) | the flusher: one key per segment object, whatever its partition count |
//! | `parts/<topic-id:016x>/<partition>/<first:020>-<last:020>` | [`crate::codec::SegmentCommit`] (binary v1) of one partition | the partition's owner, when compaction copies its entries `first..=last` into one object, fenced like a flush |
//! | `~groups/<slot:03>/<group>/record` | the group's members and assignment (JSON, `"v":1`) | the group's coordinator (the owner of coordinator slot `<slot>`), fenced |
//! | `~groups/<slot:03>/<group>/offsets/<topic-id:016x>/<partition>` | [`crate::codec::OffsetRecord`] (binary v1) | the group's coordinator: committed offsets, fenced |
//!
//! Group keys sort after every other key (`~` follows the letters), so the cluster view loads
//! and watches `[root, root + "~")` and never reads them: they grow with groups × partitions,
//! and only a group's coordinator needs them. `<group>` is the group id with every byte outside
//! `[A-Za-z0-9._-]` written `%XX`, so it holds no `/` and one group's prefix never contains
//! another's. Coordinator slots are owned like partitions, under the reserved topic id
//! [`GROUP_SLOTS_TOPIC_ID`]: `owners/0000000000000000/<slot>`.
//!
//! Segment keys mirror the object path of their segment (`segments/...seg` in the object store),
//! so an object with no key is known to be uncommitted.

/// How many coordinator slots a cluster has. A group is coordinated by the owner of slot
/// `murmur2(group id) % GROUP_SLOTS` (Kafka's key hash); fixed forever, since changing it would
/// move every group.
pub const GROUP_SLOTS: u32 = 32;

/// Marks a key-compacted object's commit id (`<first>-<last>.k<written at ms>`).
const CLEANED_MARK: &str = ".k";
/// Follows it when the object keeps tombstones: the earliest of their delete horizons
/// (`….k<written at ms>.h<horizon ms>`), when key compaction must run again to drop them.
const HORIZON_MARK: &str = ".h";

/// The reserved topic id under which coordinator slots are owned (`owners/0…0/<slot>`). Topic
/// ids are creation revisions, which start at 1, so no topic has it.
pub const GROUP_SLOTS_TOPIC_ID: u64 = 0;

/// What a key under `~groups/` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupKey {
    /// `~groups/<slot>/<group>/record`.
    Record { slot: u32, group: String },
    /// `~groups/<slot>/<group>/offsets/<topic-id>/<partition>`.
    Offset {
        slot: u32,
        group: String,
        topic_id: u64,
        partition: u32,
    },
}

/// A group id as it appears in keys: bytes outside `[A-Za-z0-9._-]` as `%XX`.
pub fn escape_group(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The group id of an escaped key part; `None` if it is not one [`escape_group`] writes.
pub fn unescape_group(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Builds the keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys under `/silt/<cluster>/`.
    pub fn new(cluster: &str) -> Self {
        Self {
            root: format!("/silt/{cluster}/"),
        }
    }

    /// The root prefix, `/silt/<cluster>/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Where the cluster view's keys end: `[root, view_end)` is everything but the group keys.
    pub fn view_end(&self) -> Vec<u8> {
        format!("{}~", self.root).into_bytes()
    }

    /// Every group key of one coordinator slot.
    pub fn group_slot_prefix(&self, slot: u32) -> Vec<u8> {
        format!("{}~groups/{slot:03}/", self.root).into_bytes()
    }

    /// Every key of one group (its record and its offsets).
    pub fn group_prefix(&self, slot: u32, group: &str) -> Vec<u8> {
        format!("{}~groups/{slot:03}/{}/", self.root, escape_group(group)).into_bytes()
    }

    pub fn group_record(&self, slot: u32, group: &str) -> Vec<u8> {
        let mut key = self.group_prefix(slot, group);
        key.extend_from_slice(b"record");
        key
    }

    pub fn group_offsets_prefix(&self, slot: u32, group: &str) -> Vec<u8> {
        let mut key = self.group_prefix(slot, group);
        key.extend_from_slice(b"offsets/");
        key
    }

    pub fn group_offset(&self, slot: u32, group: &str, topic_id: u64, partition: u32) -> Vec<u8> {
        let mut key = self.group_offsets_prefix(slot, group);
        key.extend_from_slice(format!("{topic_id:016x}/{partition}").as_bytes());
        key
    }

    /// Parses a key under `~groups/`.
    pub fn parse_group_key(&self, key: &[u8]) -> Option<GroupKey> {
        let prefix = format!("{}~groups/", self.root);
        let rest = std::str::from_utf8(key.strip_prefix(prefix.as_bytes())?).ok()?;
        let mut parts = rest.split('/');
        let slot: u32 = parts.next()?.parse().ok()?;
        let group = unescape_group(parts.next()?)?;
        match (parts.next()?, parts.next(), parts.next(), parts.next()) {
            ("record", None, None, None) => Some(GroupKey::Record { slot, group }),
            ("offsets", Some(topic), Some(partition), None) => Some(GroupKey::Offset {
                slot,
                group,
                topic_id: u64::from_str_radix(topic, 16).ok()?,
                partition: partition.parse().ok()?,
            }),
            _ => None,
        }
    }

    pub fn topics_prefix(&self) -> Vec<u8> {
        format!("{}topics/", self.root).into_bytes()
    }

    pub fn topic(&self, name: &str) -> Vec<u8> {
        format!("{}topics/{name}", self.root).into_bytes()
    }

    pub fn log_start_prefix(&self) -> Vec<u8> {
        format!("{}log-start/", self.root).into_bytes()
    }

    pub fn log_start(&self, topic_id: u64) -> Vec<u8> {
        format!("{}log-start/{topic_id:016x}", self.root).into_bytes()
    }

    /// Parses a `log-start/` key back into its topic id.
    pub fn parse_log_start(&self, key: &[u8]) -> Option<u64> {
        let hex = key.strip_prefix(self.log_start_prefix().as_slice())?;
        u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    }

    pub fn brokers_prefix(&self) -> Vec<u8> {
        format!("{}brokers/", self.root).into_bytes()
    }

    pub fn broker(&self, broker_id: &str) -> Vec<u8> {
        format!("{}brokers/{broker_id}", self.root).into_bytes()
    }

    pub fn writer(&self, broker_id: &str) -> Vec<u8> {
        format!("{}writers/{broker_id}", self.root).into_bytes()
    }

    pub fn writers_prefix(&self) -> Vec<u8> {
        format!("{}writers/", self.root).into_bytes()
    }

    /// The broker id of a `writers/` key.
    pub fn parse_writer<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let rest = key.strip_prefix(self.writers_prefix().as_slice())?;
        std::str::from_utf8(rest).ok()
    }

    /// The broker id of a `brokers/` key.
    pub fn parse_broker<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let rest = key.strip_prefix(self.brokers_prefix().as_slice())?;
        std::str::from_utf8(rest).ok()
    }

    pub fn owners_prefix(&self) -> Vec<u8> {
        format!("{}owners/", self.root).into_bytes()
    }

    /// The owner keys of one topic.
    pub fn topic_owners_prefix(&self, topic_id: u64) -> Vec<u8> {
        format!("{}owners/{topic_id:016x}/", self.root).into_bytes()
    }

    pub fn owner(&self, topic_id: u64, partition: u32) -> Vec<u8> {
        format!("{}owners/{topic_id:016x}/{partition}", self.root).into_bytes()
    }

    /// Parses an `owners/` key back into its topic id and partition.
    pub fn parse_owner(&self, key: &[u8]) -> Option<(u64, u32)> {
        let rest = key.strip_prefix(self.owners_prefix().as_slice())?;
        let (topic, partition) = std::str::from_utf8(rest).ok()?.split_once('/')?;
        Some((
            u64::from_str_radix(topic, 16).ok()?,
            partition.parse().ok()?,
        ))
    }

    pub fn controller(&self) -> Vec<u8> {
        format!("{}controller", self.root).into_bytes()
    }

    /// The topic name of a `topics/` key.
    pub fn parse_topic<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let rest = key.strip_prefix(self.topics_prefix().as_slice())?;
        std::str::from_utf8(rest).ok()
    }

    pub fn segments_prefix(&self) -> Vec<u8> {
        format!("{}segments/", self.root).into_bytes()
    }

    /// The commit key of a segment; `object_id` is `<broker-id>/<incarnation:016x>-<seq:012>`.
    pub fn segment(&self, object_id: &str) -> Vec<u8> {
        format!("{}segments/{object_id}", self.root).into_bytes()
    }

    pub fn parts_prefix(&self) -> Vec<u8> {
        format!("{}parts/", self.root).into_bytes()
    }

    /// The id of a compacted object's commit: its topic, partition and offsets.
    pub fn part_id(topic_id: u64, partition: u32, first: i64, last: i64) -> String {
        format!("{topic_id:016x}/{partition}/{first:020}-{last:020}")
    }

    /// The id of a key-compacted object's commit: [`Self::part_id`] with the instant it was
    /// written, so a range compacted again (tombstones expiring, new keys) never reuses a key
    /// a reader or garbage collection may still hold; and, when the object keeps tombstones,
    /// the earliest delete horizon among them.
    pub fn cleaned_part_id(
        topic_id: u64,
        partition: u32,
        first: i64,
        last: i64,
        at_ms: i64,
        horizon_ms: Option<i64>,
    ) -> String {
        let horizon = horizon_ms.map_or(String::new(), |h| format!("{HORIZON_MARK}{h:013}"));
        format!(
            "{}{CLEANED_MARK}{at_ms:013}{horizon}",
            Self::part_id(topic_id, partition, first, last)
        )
    }

    /// True for an id from [`Self::cleaned_part_id`].
    pub fn is_cleaned_part(id: &str) -> bool {
        id.contains(CLEANED_MARK)
    }

    /// The earliest delete horizon of the tombstones a key-compacted object keeps, from its id.
    pub fn cleaned_part_horizon(id: &str) -> Option<i64> {
        let (_, cleaned) = id.split_once(CLEANED_MARK)?;
        cleaned.split_once(HORIZON_MARK)?.1.parse().ok()
    }

    /// The commit key of a compacted object, `id` from [`Self::part_id`].
    pub fn part(&self, id: &str) -> Vec<u8> {
        format!("{}parts/{id}", self.root).into_bytes()
    }

    /// The id of a `parts/` key.
    pub fn parse_part<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let rest = key.strip_prefix(self.parts_prefix().as_slice())?;
        std::str::from_utf8(rest).ok()
    }

    /// The topic id and partition a `parts/` key names.
    pub fn parse_part_partition(&self, key: &[u8]) -> Option<(u64, u32)> {
        let mut fields = self.parse_part(key)?.split('/');
        let topic = u64::from_str_radix(fields.next()?, 16).ok()?;
        Some((topic, fields.next()?.parse().ok()?))
    }

    pub fn index_roots_prefix(&self) -> Vec<u8> {
        format!("{}index/", self.root).into_bytes()
    }

    /// The index root of a partition: the index pages older entries were rolled into.
    pub fn index_root(&self, topic_id: u64, partition: u32) -> Vec<u8> {
        format!("{}index/{topic_id:016x}/{partition}", self.root).into_bytes()
    }

    /// Parses an `index/` key back into its topic id and partition.
    pub fn parse_index_root(&self, key: &[u8]) -> Option<(u64, u32)> {
        let rest = key.strip_prefix(self.index_roots_prefix().as_slice())?;
        let (topic, partition) = std::str::from_utf8(rest).ok()?.split_once('/')?;
        Some((
            u64::from_str_radix(topic, 16).ok()?,
            partition.parse().ok()?,
        ))
    }

    /// The object id of a segment commit key.
    pub fn parse_segment<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let rest = key.strip_prefix(self.segments_prefix().as_slice())?;
        std::str::from_utf8(rest).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        let k = Keys::new("c1");
        assert_eq!(
            k.group_offset(3, "orders/eu", 1, 2),
            b"/silt/c1/~groups/003/orders%2Feu/offsets/0000000000000001/2".to_vec()
        );
        assert_eq!(
            k.group_record(3, "g"),
            b"/silt/c1/~groups/003/g/record".to_vec()
        );
        assert_eq!(k.topic("orders"), b"/silt/c1/topics/orders".to_vec());
        assert_eq!(
            k.index_root(255, 7),
            b"/silt/c1/index/00000000000000ff/7".to_vec()
        );
        assert_eq!(k.parse_index_root(&k.index_root(255, 7)), Some((255, 7)));
        assert_eq!(k.parse_index_root(&k.owner(255, 7)), None);
        assert_eq!(
            k.log_start(255),
            b"/silt/c1/log-start/00000000000000ff".to_vec()
        );
        assert_eq!(k.writer("b-1"), b"/silt/c1/writers/b-1".to_vec());
        assert_eq!(
            k.owner(1, 3),
            b"/silt/c1/owners/0000000000000001/3".to_vec()
        );
        assert_eq!(k.controller(), b"/silt/c1/controller".to_vec());
        assert_eq!(
            k.segment("b-1/0000000000000001-000000000007"),
            b"/silt/c1/segments/b-1/0000000000000001-000000000007".to_vec()
        );
    }

    #[test]
    fn keys_parse_back() {
        let k = Keys::new("c1");
        assert_eq!(k.parse_log_start(&k.log_start(42)), Some(42));
        assert_eq!(k.parse_segment(&k.segment("b/x-1")), Some("b/x-1"));
        assert_eq!(k.parse_segment(b"/silt/c2/segments/b/x-1"), None);
        let part = Keys::part_id(0xab, 3, 100, 199);
        assert_eq!(
            k.part(&part),
            b"/silt/c1/parts/00000000000000ab/3/00000000000000000100-00000000000000000199".to_vec()
        );
        assert_eq!(k.parse_part(&k.part(&part)), Some(part.as_str()));
        assert_eq!(k.parse_part_partition(&k.part(&part)), Some((0xab, 3)));
        assert_eq!(k.parse_part_partition(&k.part("zz/3/1-2")), None);
        assert_eq!(k.parse_part(&k.segment("b/x-1")), None);
        assert_eq!(k.parse_owner(&k.owner(0xab, 7)), Some((0xab, 7)));
        assert_eq!(k.parse_owner(b"/silt/c1/owners/zz/1"), None);
        assert_eq!(k.parse_writer(&k.writer("b-2")), Some("b-2"));
        assert_eq!(k.parse_broker(&k.broker("b-3")), Some("b-3"));
        assert_eq!(k.parse_topic(&k.topic("t")), Some("t"));
        for group in ["g", "orders/eu", "a%b", "ünïcode group", "../x", ""] {
            assert_eq!(
                k.parse_group_key(&k.group_record(7, group)),
                Some(GroupKey::Record {
                    slot: 7,
                    group: group.into()
                })
            );
            assert_eq!(
                k.parse_group_key(&k.group_offset(31, group, 0xab, 9)),
                Some(GroupKey::Offset {
                    slot: 31,
                    group: group.into(),
                    topic_id: 0xab,
                    partition: 9
                })
            );
        }
        assert_eq!(k.parse_group_key(b"/silt/c1/~groups/007/g/other"), None);
        assert_eq!(k.parse_group_key(b"/silt/c1/~groups/007/%zz/record"), None);
    }

    #[test]
    fn group_keys_sort_after_the_view_and_never_nest() {
        let k = Keys::new("c1");
        let view_end = k.view_end();
        for key in [
            k.topic("zzz"),
            k.writer("zzz"),
            k.segment("zzz/x"),
            k.controller(),
        ] {
            assert!(key < view_end, "{}", String::from_utf8_lossy(&key));
        }
        assert!(k.group_record(0, "a") >= view_end);
        // "a" and "a/b" (escaped "a%2Fb") have prefixes neither of which contains the other.
        let (a, ab) = (k.group_prefix(1, "a"), k.group_prefix(1, "a/b"));
        assert!(!ab.starts_with(&a) && !a.starts_with(&ab));
        assert_eq!(escape_group("a/b c"), "a%2Fb%20c");
    }
}
