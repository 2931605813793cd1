//! The server-side assignor of consumer groups: which member should own each partition.
//!
//! [`assign`] is a pure function, like the controller's partition assignment: **balanced** (a
//! partition goes only to a member subscribed to its topic; when members share a subscription
//! their counts differ by at most one) and **sticky** (a partition stays with the member that
//! holds it in the previous target unless that member left, unsubscribed or holds more than its
//! share), so a join moves about `n / k` partitions and a leave moves exactly the leaver's.

use std::collections::{BTreeMap, BTreeSet};

/// A partition of a group's topics: topic id and partition number.
pub type GroupPartition = (u64, u32);

/// The target assignment: member id → the partitions it should own. Every member of `members`
/// appears (possibly with nothing). `partitions` are the partitions of every subscribed topic,
/// each with the members subscribed to it; `previous` is the last target.
pub fn assign(
    members: &BTreeSet<String>,
    partitions: &BTreeMap<GroupPartition, BTreeSet<String>>,
    previous: &BTreeMap<String, BTreeSet<GroupPartition>>,
) -> BTreeMap<String, BTreeSet<GroupPartition>> {
    let mut target: BTreeMap<String, BTreeSet<GroupPartition>> = members
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    if members.is_empty() {
        return target;
    }
    // What a member keeps in the sticky pass: the partitions it may own spread over every
    // member. With one shared subscription that is ⌊n / k⌋ and the second pass tops up the
    // least loaded, so counts differ by at most one; with different subscriptions it keeps no
    // more than a fair part and the second pass evens out what is left.
    let mut eligible_count: BTreeMap<&str, usize> = BTreeMap::new();
    for subscribers in partitions.values() {
        for m in subscribers.iter().filter(|m| members.contains(*m)) {
            *eligible_count.entry(m.as_str()).or_default() += 1;
        }
    }
    let shares: BTreeMap<&str, usize> = members
        .iter()
        .map(|m| {
            let eligible = eligible_count.get(m.as_str()).copied().unwrap_or(0);
            (m.as_str(), eligible / members.len())
        })
        .collect();

    // 1. Sticky: keep previous partitions still eligible, up to the share.
    let mut free: Vec<GroupPartition> = Vec::new();
    let mut owner_of: BTreeMap<GroupPartition, &str> = BTreeMap::new();
    for (member, owned) in previous {
        if members.contains(member) {
            for p in owned {
                owner_of.insert(*p, member.as_str());
            }
        }
    }
    for (p, subscribers) in partitions {
        match owner_of.get(p) {
            Some(m)
                if subscribers.contains(*m)
                    && target.get(*m).map_or(0, BTreeSet::len) < shares[m] =>
            {
                target.get_mut(*m).expect("member").insert(*p);
            }
            _ => free.push(*p),
        }
    }
    // 2. The rest to the least loaded eligible member; ties go to the previous owner (fewer
    //    moves), then to the smallest member id (every coordinator computes the same answer).
    for p in free {
        let subscribers = &partitions[&p];
        let previous_owner = owner_of.get(&p).copied();
        let best = subscribers
            .iter()
            .filter(|m| members.contains(*m))
            .min_by_key(|m| {
                (
                    target[*m].len(),
                    Some(m.as_str()) != previous_owner,
                    m.as_str(),
                )
            });
        if let Some(m) = best {
            target.get_mut(m).expect("member").insert(p);
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn shared(
        members: &BTreeSet<String>,
        topics: &[(u64, u32)],
    ) -> BTreeMap<GroupPartition, BTreeSet<String>> {
        topics
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (*t, p)))
            .map(|p| (p, members.clone()))
            .collect()
    }

    fn names(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn a_shared_subscription_is_balanced_within_one() {
        for (k, topics) in [
            (3, vec![(1, 6)]),
            (4, vec![(1, 7), (2, 3)]),
            (5, vec![(1, 2)]),
        ] {
            let members = names(k);
            let parts = shared(&members, &topics);
            let target = assign(&members, &parts, &BTreeMap::new());
            let counts: Vec<usize> = target.values().map(BTreeSet::len).collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{counts:?}");
            let all: BTreeSet<_> = target.values().flatten().copied().collect();
            assert_eq!(all.len(), parts.len(), "every partition assigned once");
            assert_eq!(
                target.values().map(BTreeSet::len).sum::<usize>(),
                parts.len()
            );
        }
    }

    #[test]
    fn a_partition_goes_only_to_members_subscribed_to_its_topic() {
        let members = names(3);
        let mut parts = BTreeMap::new();
        for p in 0..4 {
            parts.insert((1, p), BTreeSet::from(["m0".to_string()]));
            parts.insert((2, p), members.clone());
        }
        let target = assign(&members, &parts, &BTreeMap::new());
        for (m, owned) in &target {
            for (t, _) in owned {
                assert!(*t == 2 || m == "m0", "{m} got topic {t}");
            }
        }
        assert_eq!(target.values().map(BTreeSet::len).sum::<usize>(), 8);
    }

    #[test]
    fn a_leave_moves_only_the_leavers_partitions() {
        let members = names(3);
        let parts = shared(&members, &[(1, 12)]);
        let before = assign(&members, &parts, &BTreeMap::new());
        let mut fewer = members.clone();
        fewer.remove("m1");
        let after = assign(&fewer, &parts, &before);
        for m in &fewer {
            assert!(before[m].is_subset(&after[m]), "{m} kept everything it had");
        }
    }

    proptest! {
        /// Over random join/leave histories: every partition has exactly one owner, counts
        /// differ by at most one, and a member keeps a partition unless it had more than the
        /// largest share.
        #[test]
        fn balanced_and_sticky_over_histories(
            steps in proptest::collection::vec((any::<bool>(), 0usize..8), 1..30),
            partitions in 1u32..40,
        ) {
            let mut members: BTreeSet<String> = BTreeSet::from(["m0".to_string()]);
            let mut previous = BTreeMap::new();
            for (join, who) in steps {
                let name = format!("m{who}");
                if join { members.insert(name); } else if members.len() > 1 { members.remove(&name); }
                let parts = shared(&members, &[(7, partitions)]);
                let target = assign(&members, &parts, &previous);
                let counts: Vec<usize> = target.values().map(BTreeSet::len).collect();
                let (lo, hi) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
                prop_assert!(hi - lo <= 1, "{:?}", counts);
                let mut seen = BTreeSet::new();
                for owned in target.values() {
                    for p in owned { prop_assert!(seen.insert(*p), "{:?} twice", p); }
                }
                prop_assert_eq!(seen.len(), partitions as usize);
                let ceiling = (partitions as usize).div_ceil(members.len());
                for (m, had) in &previous {
                    if let Some(now) = target.get(m)
                        && had.len() < ceiling
                    {
                        prop_assert!(had.is_subset(now), "{} lost {:?} -> {:?}", m, had, now);
                    }
                }
                previous = target;
            }
        }
    }
}
