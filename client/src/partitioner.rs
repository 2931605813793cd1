//! Which partition a produced record goes to, exactly as Kafka's default partitioner (and the
//! broker's per-record `Produce` path) decides: an explicit partition wins; else a key is hashed
//! with Kafka's murmur2, `(murmur2(key) & 0x7fffffff) % partitions`, so keyed records land where a
//! Kafka producer would put them; else (a null key) the record sticks to one partition until that
//! partition's batch is closed, then moves to the next, so null-key records form full batches
//! instead of one small batch per partition.

use crate::error::ClientError;

pub use silt_storage::routing::{murmur2, partition_for_key};

/// Chooses partitions for records of one topic; the sticky state belongs to one producer.
#[derive(Debug, Clone)]
pub struct Partitioner {
    partitions: u32,
    sticky: u32,
}

impl Partitioner {
    /// A partitioner over `partitions` (at least 1) whose null-key records start at
    /// `sticky_start` (taken modulo the partition count; producers pick it at random so that
    /// many producers do not all start on partition 0).
    pub fn new(partitions: u32, sticky_start: u32) -> Self {
        let partitions = partitions.max(1);
        Self {
            partitions,
            sticky: sticky_start % partitions,
        }
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of a record with this key and explicit partition.
    pub fn partition(&self, key: Option<&[u8]>, explicit: Option<u32>) -> Result<u32, ClientError> {
        match (explicit, key) {
            (Some(p), _) if p < self.partitions => Ok(p),
            (Some(p), _) => Err(ClientError::InvalidArgument(format!(
                "partition {p} does not exist: the topic has partitions 0..{}",
                self.partitions
            ))),
            (None, Some(key)) => Ok(partition_for_key(key, self.partitions)),
            (None, None) => Ok(self.sticky),
        }
    }

    /// The partition null-key records currently go to.
    pub fn sticky(&self) -> u32 {
        self.sticky
    }

    /// Tells the partitioner that `partition`'s open batch was closed (full, lingered or
    /// flushed): if null-key records were sticking to it, they move on to the next partition.
    pub fn batch_closed(&mut self, partition: u32) {
        if partition == self.sticky {
            self.sticky = (self.sticky + 1) % self.partitions;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn keyed_records_use_the_positive_hash_modulo_partitions() {
        // murmur2("foobar") = -790332482; & 0x7fffffff = 1357151166.
        assert_eq!(partition_for_key(b"foobar", 10), 1_357_151_166 % 10);
        assert_eq!(partition_for_key(b"abc", 7), 479_470_107 % 7);
        let p = Partitioner::new(10, 0);
        assert_eq!(p.partition(Some(b"foobar"), None).unwrap(), 6);
        // The same key always lands on the same partition.
        assert_eq!(p.partition(Some(b"foobar"), None).unwrap(), 6);
    }

    #[test]
    fn explicit_partition_wins_and_is_checked() {
        let p = Partitioner::new(4, 0);
        assert_eq!(p.partition(Some(b"foobar"), Some(3)).unwrap(), 3);
        let err = p.partition(None, Some(4)).unwrap_err();
        assert!(
            err.to_string().contains("partition 4 does not exist"),
            "{err}"
        );
    }

    #[test]
    fn null_keys_stick_until_their_batch_closes() {
        let mut p = Partitioner::new(3, 5);
        assert_eq!(p.sticky(), 2);
        assert_eq!(p.partition(None, None).unwrap(), 2);
        // Closing another partition's batch does not move the sticky partition.
        p.batch_closed(0);
        assert_eq!(p.partition(None, None).unwrap(), 2);
        p.batch_closed(2);
        assert_eq!(p.partition(None, None).unwrap(), 0);
        p.batch_closed(0);
        assert_eq!(p.partition(None, None).unwrap(), 1);
    }
}
