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

use crate::core::BrokerError;

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
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        crate::runtime::tasks::periodic("membership", self.ttl / 3, None, cancel, || {
            self.keep_alive()
        })
        .await;
        let lease = *self.lease_tx.borrow();
        match self.catalog.store().revoke_lease(lease).await {
            Ok(()) => info!(broker_id = %self.record.broker_id, "left the cluster"),
            Err(e) => {
                warn!(error = %e, "could not revoke the membership lease; it expires by itself")
            }
        }
    }

    /// One renewal of the current lease, or a new registration if it expired.
    async fn keep_alive(&self) -> Result<(), BrokerError> {
        let lease = *self.lease_tx.borrow();
        match self.catalog.store().keep_alive(lease).await {
            Ok(_) => Ok(()),
            Err(MetaError::LeaseNotFound(_)) => {
                warn!(broker_id = %self.record.broker_id, "membership lease expired; registering again");
                self.register().await.map(|_| ())
            }
            Err(e) => Err(e.into()),
        }
    }
}
