//! The client's routing table: which broker owns each partition, per topic, as the last
//! `ClusterStatus(topics = [topic])` said. The producer sends a partition's batches to its
//! owner; a partition the table does not know (never refreshed, or unowned while it is being
//! reassigned) goes to any broker, which forwards it or answers not-owner.
//!
//! The table is a cache and may be stale: an error that says so (not-owner, a broker gone)
//! asks for a refresh, and a table older than [`MAX_ROUTES_AGE`] is refreshed in the
//! background (a moved partition whose old owner forwards raises no error, only latency). Refreshes of one topic are coalesced — callers that asked while one was
//! running share its answer — and spaced at least [`MIN_REFRESH_INTERVAL`] apart, so a burst
//! of failures costs one `ClusterStatus`, not one per request.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use silt_api::v1::PartitionOwner;

use crate::brokers::normalize_url;
use crate::error::ClientError;

/// Least time between two refreshes of one topic's routes.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(75);
/// Age after which a topic's routes are refreshed in the background.
pub(crate) const MAX_ROUTES_AGE: Duration = Duration::from_secs(10);

/// Partition owners of every topic the client routed to.
#[derive(Debug, Default)]
pub(crate) struct RoutingTable {
    topics: Mutex<HashMap<String, Arc<TopicRoutes>>>,
}

impl RoutingTable {
    /// The routes of `topic` (empty until refreshed).
    pub(crate) fn topic(&self, topic: &str) -> Arc<TopicRoutes> {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.entry(topic.to_string()).or_default().clone()
    }
}

/// One topic's partition → owner URL map and its refresh gate.
#[derive(Debug, Default)]
pub(crate) struct TopicRoutes {
    owners: Mutex<Owners>,
    /// Held while a refresh runs; waiters find the refresh done when they get it.
    refresh: tokio::sync::Mutex<()>,
    /// Set while a background refresh is asked for or running, so only one is.
    background: AtomicBool,
}

#[derive(Debug, Default)]
struct Owners {
    by_partition: HashMap<u32, String>,
    /// When the last refresh started (its answer reflects the cluster from then on).
    refreshed_at: Option<Instant>,
}

impl TopicRoutes {
    fn lock(&self) -> MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The URL of `partition`'s owner, if known.
    pub(crate) fn owner(&self, partition: u32) -> Option<String> {
        self.lock().by_partition.get(&partition).cloned()
    }

    /// Routes `partition` to `url` until the next refresh (a broker's `silt-owner` hint).
    pub(crate) fn set_owner(&self, partition: u32, url: String) {
        self.lock().by_partition.insert(partition, url);
    }

    /// True when the routes are older than `max_age` and no background refresh is under way;
    /// the caller then owns the background refresh (the next refresh clears the claim).
    pub(crate) fn claim_stale(&self, max_age: Duration) -> bool {
        let stale = self
            .lock()
            .refreshed_at
            .is_some_and(|at| at.elapsed() > max_age);
        stale && !self.background.swap(true, Ordering::AcqRel)
    }

    /// True once a refresh has been tried.
    pub(crate) fn is_loaded(&self) -> bool {
        self.lock().refreshed_at.is_some()
    }

    /// Replaces the owners with what `fetch` returns, unless a refresh that started after this
    /// call was made has finished meanwhile (then its answer is as fresh as ours would be).
    /// Waits out [`MIN_REFRESH_INTERVAL`] since the previous refresh. On error the old routes
    /// stay.
    pub(crate) async fn refresh<F, Fut>(&self, fetch: F) -> Result<(), ClientError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<PartitionOwner>, ClientError>>,
    {
        let asked_at = Instant::now();
        let _gate = self.refresh.lock().await;
        let previous = self.lock().refreshed_at;
        if let Some(previous) = previous {
            if previous >= asked_at {
                return Ok(());
            }
            tokio::time::sleep_until((previous + MIN_REFRESH_INTERVAL).into()).await;
        }
        let started = Instant::now();
        let result = fetch().await;
        let mut owners = self.lock();
        owners.refreshed_at = Some(started);
        self.background.store(false, Ordering::Release);
        let partitions = result?;
        owners.by_partition = partitions
            .into_iter()
            .filter(|p| !p.address.trim().is_empty())
            .map(|p| (p.partition, normalize_url(&p.address)))
            .collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn owner(partition: u32, address: &str) -> PartitionOwner {
        PartitionOwner {
            topic: "t".into(),
            partition,
            broker_id: if address.is_empty() { "" } else { "b" }.into(),
            address: address.into(),
            epoch: 1,
        }
    }

    #[tokio::test]
    async fn owners_are_urls_and_unowned_partitions_are_unknown() {
        let routes = TopicRoutes::default();
        assert!(!routes.is_loaded());
        routes
            .refresh(|| async { Ok(vec![owner(0, "127.0.0.1:7450"), owner(1, "")]) })
            .await
            .unwrap();
        assert!(routes.is_loaded());
        assert_eq!(routes.owner(0).as_deref(), Some("http://127.0.0.1:7450"));
        assert_eq!(routes.owner(1), None);
        let failed = routes
            .refresh(|| async { Err(ClientError::Protocol("down".into())) })
            .await;
        assert!(failed.is_err());
        assert_eq!(
            routes.owner(0).as_deref(),
            Some("http://127.0.0.1:7450"),
            "a failed refresh keeps the routes"
        );
    }

    #[tokio::test]
    async fn one_background_refresh_is_claimed_for_stale_routes() {
        let routes = TopicRoutes::default();
        assert!(
            !routes.claim_stale(Duration::ZERO),
            "never loaded: not stale"
        );
        routes.refresh(|| async { Ok(Vec::new()) }).await.unwrap();
        assert!(!routes.claim_stale(Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(routes.claim_stale(Duration::from_millis(1)));
        assert!(
            !routes.claim_stale(Duration::from_millis(1)),
            "claimed once"
        );
        routes.refresh(|| async { Ok(Vec::new()) }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            routes.claim_stale(Duration::from_millis(1)),
            "claimable again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_refreshes_are_coalesced_and_spaced() {
        let routes = Arc::new(TopicRoutes::default());
        let calls = Arc::new(AtomicU32::new(0));
        let refresh = |routes: Arc<TopicRoutes>, calls: Arc<AtomicU32>| async move {
            routes
                .refresh(|| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok(vec![owner(0, "a:1")])
                })
                .await
        };
        let first = tokio::spawn(refresh(routes.clone(), calls.clone()));
        tokio::time::sleep(Duration::from_millis(5)).await;
        // These ask while the first runs: one more refresh serves all of them.
        let waiters: Vec<_> = (0..5)
            .map(|_| tokio::spawn(refresh(routes.clone(), calls.clone())))
            .collect();
        first.await.unwrap().unwrap();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let before = Instant::now();
        refresh(routes.clone(), calls.clone()).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(before.elapsed() >= Duration::from_millis(30), "spaced out");
    }
}
