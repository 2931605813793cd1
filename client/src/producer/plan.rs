//! How one producer request is split into sends: its batches grouped by the broker that owns
//! their partition, one `ProduceBatches` per broker, in the order the batches came. Pure, so the
//! ordering rules are tested here rather than through a network.
//!
//! A batch marked *alone* (its request was refused whole as invalid, so each batch is tried by
//! itself to fail only the bad one) travels in a send of its own, and only the first pending
//! batch of such a partition goes in a round: a partition's batches are stored in order.

use std::collections::HashSet;

/// One `ProduceBatches` of a round: the destination and the request's batch indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Send {
    pub(super) url: String,
    pub(super) batches: Vec<usize>,
}

/// Groups `pending` batch indices (in request order) by `destination(partition(i))`, groups in
/// order of first appearance; returns the sends of this round and the batches deferred to the
/// next one (alone batches behind another of their partition).
pub(super) fn plan_round(
    pending: &[usize],
    partition: impl Fn(usize) -> u32,
    destination: impl Fn(u32) -> String,
    alone: &[bool],
) -> (Vec<Send>, Vec<usize>) {
    let mut sends: Vec<Send> = Vec::new();
    let mut deferred = Vec::new();
    // Partitions with an alone batch in this round (or deferred): their later batches wait.
    let mut held: HashSet<u32> = HashSet::new();
    for &i in pending {
        let p = partition(i);
        if held.contains(&p) {
            deferred.push(i);
            continue;
        }
        let url = destination(p);
        if alone[i] {
            held.insert(p);
            sends.push(Send {
                url,
                batches: vec![i],
            });
            continue;
        }
        match sends
            .iter_mut()
            .find(|s| s.url == url && !alone[s.batches[0]])
        {
            Some(send) => send.batches.push(i),
            None => sends.push(Send {
                url,
                batches: vec![i],
            }),
        }
    }
    (sends, deferred)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches 0..n with these partitions; partitions 0 and 2 live on A, 1 on B, 3 unknown → any.
    fn plan(partitions: &[u32], pending: &[usize], alone: &[bool]) -> (Vec<Send>, Vec<usize>) {
        plan_round(
            pending,
            |i| partitions[i],
            |p| match p {
                0 | 2 => "A".to_string(),
                1 => "B".to_string(),
                _ => "any".to_string(),
            },
            alone,
        )
    }

    fn send(url: &str, batches: &[usize]) -> Send {
        Send {
            url: url.into(),
            batches: batches.to_vec(),
        }
    }

    #[test]
    fn batches_are_grouped_by_owner_in_request_order() {
        let partitions = [0, 1, 2, 0, 3, 1];
        let (sends, deferred) = plan(&partitions, &[0, 1, 2, 3, 4, 5], &[false; 6]);
        assert_eq!(
            sends,
            [send("A", &[0, 2, 3]), send("B", &[1, 5]), send("any", &[4])]
        );
        assert!(deferred.is_empty());
        let (sends, _) = plan(&partitions, &[1, 5], &[false; 6]);
        assert_eq!(sends, [send("B", &[1, 5])], "a retry of some batches only");
    }

    #[test]
    fn alone_batches_go_one_per_send_and_one_per_partition_per_round() {
        let partitions = [0, 0, 2, 1];
        let alone = [true, true, true, false];
        let (sends, deferred) = plan(&partitions, &[0, 1, 2, 3], &alone);
        assert_eq!(sends, [send("A", &[0]), send("A", &[2]), send("B", &[3])]);
        assert_eq!(
            deferred,
            [1],
            "partition 0's second batch waits for its first"
        );
        let (sends, deferred) = plan(&partitions, &[1], &alone);
        assert_eq!((sends, deferred), (vec![send("A", &[1])], vec![]));
    }
}
