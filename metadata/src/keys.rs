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
//!
//! Segment keys mirror the object path of their segment (`segments/...seg` in the object store),
//! so an object with no key is known to be uncommitted.

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
        assert_eq!(k.topic("orders"), b"/silt/c1/topics/orders".to_vec());
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
        assert_eq!(k.parse_owner(&k.owner(0xab, 7)), Some((0xab, 7)));
        assert_eq!(k.parse_owner(b"/silt/c1/owners/zz/1"), None);
        assert_eq!(k.parse_writer(&k.writer("b-2")), Some("b-2"));
        assert_eq!(k.parse_broker(&k.broker("b-3")), Some("b-3"));
        assert_eq!(k.parse_topic(&k.topic("t")), Some("t"));
    }
}
