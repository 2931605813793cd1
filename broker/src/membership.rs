//! Cluster membership: a broker registers `brokers/<id>` in metadata under a lease and keeps the
//! lease alive; if it stops (killed, paused, cut off from metadata) the key disappears one TTL
//! later, and on a clean shutdown it revokes the lease so it leaves at once.

use std::sync::Arc;
use std::time::Duration;

use silt_metadata::catalog::Catalog;
use silt_metadata::codec::BrokerRecord;
use silt_metadata::{LeaseId, MetaError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::BrokerError;

/// Keeps this broker registered.
#[derive(Debug)]
pub struct Membership {
    catalog: Catalog,
    record: BrokerRecord,
    ttl: Duration,
    /// The lease the broker is registered under now (the controller campaigns with it).
    lease_tx: watch::Sender<LeaseId>,
}

impl Membership {
    pub fn new(catalog: Catalog, record: BrokerRecord, ttl: Duration) -> Self {
        Self {
            catalog,
            record,
            ttl,
            lease_tx: watch::channel(LeaseId::default()).0,
        }
    }

    /// The current lease, updated when the broker registers again.
    pub fn lease(&self) -> watch::Receiver<LeaseId> {
        self.lease_tx.subscribe()
    }

    /// Grants a lease and registers under it.
    pub async fn register(&self) -> Result<LeaseId, BrokerError> {
        let lease = self
            .catalog
            .store()
            .grant_lease(self.ttl)
            .await
            .map_err(silt_metadata::CatalogError::from)?;
        self.catalog.register_broker(&self.record, lease).await?;
        self.lease_tx.send_replace(lease);
        Ok(lease)
    }

    /// Renews the lease every third of its TTL until `cancel`, registering again under a new
    /// lease if the old one expired (the broker was paused or cut off); then revokes it.
    pub async fn run(self: Arc<Self>, mut lease: LeaseId, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.ttl / 3);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            match self.catalog.store().keep_alive(lease).await {
                Ok(_) => {}
                Err(MetaError::LeaseNotFound(_)) => {
                    warn!(broker_id = %self.record.broker_id, "membership lease expired; registering again");
                    match self.register().await {
                        Ok(new) => lease = new,
                        Err(e) => warn!(error = %e, "could not register again; retrying"),
                    }
                }
                Err(e) => warn!(error = %e, "membership keep-alive failed; retrying"),
            }
        }
        match self.catalog.store().revoke_lease(lease).await {
            Ok(()) => info!(broker_id = %self.record.broker_id, "left the cluster"),
            Err(e) => {
                warn!(error = %e, "could not revoke the membership lease; it expires by itself")
            }
        }
    }
}
