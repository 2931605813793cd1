//! The controller: one broker, elected through metadata, that assigns partitions to brokers.
//!
//! Every broker runs this loop. While no controller key exists a broker campaigns for it under
//! its membership lease, so the controller dies with its broker (one TTL after a crash, at once
//! on a clean shutdown) and another broker takes over. The elected broker reacts to every change
//! of membership, topics or owners: it computes the balanced, sticky assignment of
//! [`crate::cluster::assignment`] and writes the differences with [`Catalog::change_owners`], which also
//! rewrites every losing broker's writer key — fencing its pending commits — in the same
//! transaction. A change that fails its compares (this broker is no longer the controller, or its
//! view is behind) changes nothing and is recomputed on the next change or tick.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use silt_metadata::LeaseId;
use silt_metadata::catalog::{Catalog, FencedWriter, OwnerChange};
use silt_metadata::codec::OwnerRecord;
use silt_metadata::keys::{GROUP_SLOTS, GROUP_SLOTS_TOPIC_ID};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::cluster::ClusterView;
use crate::cluster::assignment::{PartitionId, assign};
use crate::core::BrokerError;
use crate::core::topics::TopicTable;

/// How often the controller re-checks the assignment without a change (retries, elections).
const TICK: Duration = Duration::from_millis(500);

/// Splits a plan into transactions within the store's `max_txn_ops`. A transaction compares
/// the election key, each changed owner key and each distinct loser's writer key
/// (`1 + changes + losers`), and puts the owner keys and the losers' writer keys: so a chunk
/// grows while `1 + changes + distinct losers` fits. In the worst case (every change takes a
/// partition from a different broker) that is `(max_ops - 1) / 2` changes per transaction.
fn txn_chunks(
    plan: Vec<(OwnerChange, Option<String>)>,
    max_ops: usize,
) -> Vec<Vec<(OwnerChange, Option<String>)>> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<(OwnerChange, Option<String>)> = Vec::new();
    let mut losers: BTreeSet<String> = BTreeSet::new();
    for (change, loser) in plan {
        let new_loser = loser.as_ref().is_some_and(|l| !losers.contains(l));
        let ops = 1 + chunk.len() + 1 + losers.len() + usize::from(new_loser);
        if !chunk.is_empty() && ops > max_ops {
            chunks.push(std::mem::take(&mut chunk));
            losers.clear();
        }
        if let Some(l) = &loser {
            losers.insert(l.clone());
        }
        chunk.push((change, loser));
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// The controller loop of one broker.
#[derive(Debug)]
pub struct Controller {
    pub view: Arc<ClusterView>,
    pub catalog: Catalog,
    pub topics: Arc<TopicTable>,
    /// The broker's current membership lease.
    pub lease: watch::Receiver<LeaseId>,
}

impl Controller {
    /// Runs until `cancel`: a step on every change of members, topics or owners, and every
    /// half second (retries, elections).
    pub async fn run(self, cancel: CancellationToken) {
        let changes = self.view.subscribe_topology();
        crate::runtime::tasks::periodic("controller", TICK, Some(changes), cancel, || async {
            self.step().await.map(drop)
        })
        .await;
    }

    /// Campaigns if there is no controller; if this broker is it, moves what must move.
    pub async fn step(&self) -> Result<usize, BrokerError> {
        if !self.view.is_current() || !self.view.is_ready() {
            return Ok(0);
        }
        let me = self.view.broker_id().to_string();
        let elected = match self.view.controller() {
            Some((id, revision)) if id == me => revision,
            Some(_) => return Ok(0),
            None => {
                let lease = *self.lease.borrow();
                match self.catalog.campaign(&me, lease).await? {
                    Some(revision) => {
                        info!(broker_id = %me, "elected controller");
                        self.view.wait_for(revision, Duration::from_secs(2)).await;
                        revision
                    }
                    None => return Ok(0),
                }
            }
        };
        let mut moved = 0;
        let max_ops = self.catalog.store().limits().max_txn_ops;
        for chunk in txn_chunks(self.plan(), max_ops) {
            let chunk = chunk.as_slice();
            let losers: BTreeSet<&str> = chunk.iter().filter_map(|(_, l)| l.as_deref()).collect();
            let losers: Vec<FencedWriter> = losers
                .into_iter()
                .filter_map(|b| {
                    self.view.writer(b).map(|w| FencedWriter {
                        broker_id: b.to_string(),
                        value: w.value,
                        mod_revision: w.mod_revision,
                    })
                })
                .collect();
            let changes: Vec<OwnerChange> = chunk.iter().map(|(c, _)| c.clone()).collect();
            match self
                .catalog
                .change_owners(elected, &changes, &losers)
                .await?
            {
                Some(revision) => {
                    moved += changes.len();
                    debug!(
                        changes = changes.len(),
                        revision, "partition owners changed"
                    );
                    // The next chunk's compares need this one's writer revisions.
                    self.view.wait_for(revision, Duration::from_secs(2)).await;
                }
                None => {
                    debug!("ownership change refused (view behind or no longer controller)");
                    return Ok(moved);
                }
            }
        }
        if moved > 0 {
            info!(
                owners = moved,
                brokers = self.view.brokers().len(),
                "partition and group-coordinator owners reassigned"
            );
        }
        Ok(moved)
    }

    /// The owner changes the assignment asks for, each with the broker that loses the partition.
    fn plan(&self) -> Vec<(OwnerChange, Option<String>)> {
        let brokers: Vec<String> = self
            .view
            .brokers()
            .into_iter()
            .map(|b| b.broker_id)
            .collect();
        let owners = self.view.owners_with_revisions();
        let live = self.topics.live_ids();
        let mut partitions: Vec<PartitionId> = Vec::new();
        for t in live.values() {
            partitions.extend((0..t.record.partitions).map(|p| (t.id, p)));
        }
        let current: HashMap<PartitionId, String> = owners
            .iter()
            .map(|(p, (o, _))| (*p, o.broker_id.clone()))
            .collect();
        let target = assign(&partitions, &current, &brokers);
        // Consumer-group coordinator slots are owned like partitions (and fenced the same
        // way), balanced on their own so every broker coordinates its share of groups.
        let slots = self.view.slots_with_revisions();
        let slot_ids: Vec<PartitionId> = (0..GROUP_SLOTS)
            .map(|s| (GROUP_SLOTS_TOPIC_ID, s))
            .collect();
        let slot_current: HashMap<PartitionId, String> = slots
            .iter()
            .map(|(s, (o, _))| ((GROUP_SLOTS_TOPIC_ID, *s), o.broker_id.clone()))
            .collect();
        let slot_target = assign(&slot_ids, &slot_current, &brokers);
        let mut owners = owners;
        owners.extend(
            slots
                .into_iter()
                .map(|(s, owner)| ((GROUP_SLOTS_TOPIC_ID, s), owner)),
        );
        let mut plan = Vec::new();
        let mut sorted: Vec<_> = target.into_iter().chain(slot_target).collect();
        sorted.sort();
        for ((topic_id, partition), owner) in sorted {
            let previous = owners.get(&(topic_id, partition));
            if previous.is_some_and(|(o, _)| o.broker_id == owner) {
                continue;
            }
            plan.push((
                OwnerChange {
                    topic_id,
                    partition,
                    owner: Some(OwnerRecord {
                        v: 1,
                        broker_id: owner,
                        epoch: previous.map_or(1, |(o, _)| o.epoch + 1),
                    }),
                    seen_mod_revision: previous.map_or(0, |(_, r)| *r),
                },
                previous.map(|(o, _)| o.broker_id.clone()),
            ));
        }
        // Owner keys of deleted topics (ids the view has seen pass) go away.
        let applied = self.view.applied();
        let mut gone: Vec<_> = owners
            .iter()
            .filter(|((t, _), _)| {
                *t != GROUP_SLOTS_TOPIC_ID && !live.contains_key(t) && (*t as i64) <= applied
            })
            .map(|(p, (_, r))| (*p, *r))
            .collect();
        gone.sort();
        plan.extend(gone.into_iter().map(|((topic_id, partition), seen)| {
            (
                OwnerChange {
                    topic_id,
                    partition,
                    owner: None,
                    seen_mod_revision: seen,
                },
                None,
            )
        }));
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(partition: u32, loser: Option<&str>) -> (OwnerChange, Option<String>) {
        (
            OwnerChange {
                topic_id: 1,
                partition,
                owner: None,
                seen_mod_revision: 0,
            },
            loser.map(str::to_string),
        )
    }

    #[test]
    fn every_chunk_fits_the_txn_limit_even_when_each_change_has_its_own_loser() {
        let names: Vec<String> = (0..200).map(|i| format!("b{i}")).collect();
        for (count, distinct) in [(64, 64), (200, 200), (200, 1), (200, 0), (127, 127), (5, 5)] {
            let plan: Vec<_> = (0..count)
                .map(|p| {
                    let loser = (distinct > 0).then(|| names[p as usize % distinct].as_str());
                    change(p, loser)
                })
                .collect();
            let chunks = txn_chunks(plan, 128);
            assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), count as usize);
            for c in &chunks {
                let losers: BTreeSet<_> = c.iter().filter_map(|(_, l)| l.clone()).collect();
                assert!(
                    1 + c.len() + losers.len() <= 128,
                    "{count}/{distinct}: {}",
                    c.len()
                );
            }
            if distinct == 0 {
                assert_eq!(chunks.len(), 2, "127 changes per txn without losers");
            }
        }
        // 64 changes from 64 distinct brokers: 63 fit one transaction, the 64th the next.
        let plan: Vec<_> = (0..64)
            .map(|p| change(p, Some(&names[p as usize])))
            .collect();
        let sizes: Vec<usize> = txn_chunks(plan, 128).iter().map(Vec::len).collect();
        assert_eq!(sizes, [63, 1]);
    }
}
