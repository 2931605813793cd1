//! Partition assignment: which live broker owns each partition.
//!
//! The controller calls [`assign`] whenever membership, topics or owners change. The result is
//! **balanced** — with `n` partitions over `k` brokers every broker owns `n / k` or `n / k + 1`
//! — and **sticky**: a partition keeps its owner unless that owner is gone or holds more than its
//! quota, so a join or leave moves the fewest partitions that balance allows (about `n / k` on a
//! join, exactly the leaver's partitions on a leave). It is a pure function of its inputs, so it
//! is tested without a cluster and every controller computes the same answer.

use std::collections::{BTreeMap, HashMap};

/// A partition: topic id and partition number.
pub type PartitionId = (u64, u32);

/// The owner every partition should have. `partitions` is every partition of every live topic;
/// `current` holds today's owners (possibly dead brokers); `brokers` are the live broker ids.
/// Returns an owner for every partition, or an empty map when no broker is live.
pub fn assign(
    partitions: &[PartitionId],
    current: &HashMap<PartitionId, String>,
    brokers: &[String],
) -> HashMap<PartitionId, String> {
    let mut result = HashMap::with_capacity(partitions.len());
    if brokers.is_empty() {
        return result;
    }
    let mut sorted: Vec<PartitionId> = partitions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();

    // What each live broker holds today, in partition order.
    let mut held: BTreeMap<&str, Vec<PartitionId>> =
        brokers.iter().map(|b| (b.as_str(), Vec::new())).collect();
    let mut free = Vec::new();
    for p in &sorted {
        match current.get(p).and_then(|b| held.get_mut(b.as_str())) {
            Some(list) => list.push(*p),
            None => free.push(*p),
        }
    }

    // Quotas: the brokers holding the most get the `extra` larger quotas, so fewer move.
    let (base, extra) = (sorted.len() / held.len(), sorted.len() % held.len());
    let mut order: Vec<&str> = held.keys().copied().collect();
    order.sort_by(|a, b| held[b].len().cmp(&held[a].len()).then(a.cmp(b)));
    let quota: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, b)| (*b, base + usize::from(i < extra)))
        .collect();

    // Keep what fits the quota; release the rest.
    let mut room: BTreeMap<&str, usize> = BTreeMap::new();
    for (broker, list) in &held {
        let q = quota[broker];
        for p in list.iter().take(q) {
            result.insert(*p, broker.to_string());
        }
        free.extend(list.iter().skip(q));
        room.insert(broker, q.saturating_sub(list.len()));
    }

    // Hand out the free partitions to brokers with room, in broker-id order.
    free.sort_unstable();
    let mut slots = room
        .iter()
        .flat_map(|(broker, n)| std::iter::repeat_n(*broker, *n));
    for p in free {
        let broker = slots.next().expect("quotas add up to the partition count");
        result.insert(p, broker.to_string());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(n: u32) -> Vec<PartitionId> {
        (0..n).map(|p| (1, p)).collect()
    }

    fn brokers(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn counts(a: &HashMap<PartitionId, String>) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for b in a.values() {
            *c.entry(b.clone()).or_default() += 1;
        }
        c
    }

    fn moved(before: &HashMap<PartitionId, String>, after: &HashMap<PartitionId, String>) -> usize {
        after
            .iter()
            .filter(|(p, b)| before.get(p) != Some(b))
            .count()
    }

    fn balanced(a: &HashMap<PartitionId, String>, n: usize, k: usize) {
        let c = counts(a);
        assert_eq!(c.values().sum::<usize>(), n);
        assert_eq!(c.len(), k.min(n));
        let (min, max) = (c.values().min().unwrap(), c.values().max().unwrap());
        assert!(max - min <= 1, "unbalanced: {c:?}");
    }

    #[test]
    fn no_broker_no_owner() {
        assert!(assign(&parts(4), &HashMap::new(), &[]).is_empty());
    }

    #[test]
    fn fresh_assignment_is_balanced() {
        for (n, k) in [(1, 3), (7, 3), (64, 3), (10, 10), (5, 2)] {
            let b: Vec<String> = (0..k).map(|i| format!("b{i}")).collect();
            balanced(&assign(&parts(n), &HashMap::new(), &b), n as usize, k);
        }
    }

    #[test]
    fn a_join_moves_only_the_newcomers_share() {
        let p = parts(64);
        let two = assign(&p, &HashMap::new(), &brokers(&["a", "b"]));
        let three = assign(&p, &two, &brokers(&["a", "b", "c"]));
        balanced(&three, 64, 3);
        assert_eq!(moved(&two, &three), counts(&three)["c"]);
        assert_eq!(counts(&three)["c"], 21);
    }

    #[test]
    fn a_leave_moves_only_the_leavers_partitions() {
        let p = parts(64);
        let three = assign(&p, &HashMap::new(), &brokers(&["a", "b", "c"]));
        let lost = counts(&three)["b"];
        let two = assign(&p, &three, &brokers(&["a", "c"]));
        balanced(&two, 64, 2);
        assert_eq!(moved(&three, &two), lost);
    }

    #[test]
    fn a_stable_cluster_moves_nothing() {
        let p = parts(50);
        let b = brokers(&["a", "b", "c"]);
        let once = assign(&p, &HashMap::new(), &b);
        assert_eq!(moved(&once, &assign(&p, &once, &b)), 0);
    }

    #[test]
    fn new_partitions_fill_the_emptiest_brokers() {
        let b = brokers(&["a", "b"]);
        let before = assign(&parts(4), &HashMap::new(), &b);
        let mut p = parts(4);
        p.extend((0..4).map(|i| (2, i)));
        let after = assign(&p, &before, &b);
        balanced(&after, 8, 2);
        assert_eq!(
            moved(&before, &after),
            4,
            "only the new partitions get owners"
        );
    }

    #[test]
    fn random_histories_stay_balanced_and_sticky() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let p = parts(37);
        let all = brokers(&["a", "b", "c", "d", "e"]);
        let mut current = HashMap::new();
        let mut live = vec![all[0].clone()];
        for _ in 0..200 {
            let candidate = all[rng.random_range(0..all.len())].clone();
            if live.contains(&candidate) && live.len() > 1 {
                live.retain(|b| *b != candidate);
            } else if !live.contains(&candidate) {
                live.push(candidate);
            }
            let next = assign(&p, &current, &live);
            balanced(&next, p.len(), live.len());
            // Sticky: it keeps in place as many partitions as any balanced assignment can —
            // each live broker keeps min(held, quota), the larger quotas going to the largest
            // holders.
            let mut held: Vec<usize> = live
                .iter()
                .map(|b| current.values().filter(|o| *o == b).count())
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            let (base, extra) = (p.len() / live.len(), p.len() % live.len());
            let keepable: usize = held
                .iter()
                .enumerate()
                .map(|(i, h)| (*h).min(base + usize::from(i < extra)))
                .sum();
            assert_eq!(p.len() - moved(&current, &next), keepable);
            current = next;
        }
    }
}
