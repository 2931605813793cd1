//! A metadata-store decorator that records transaction latency and failed calls into the
//! broker's registry; everything else passes through unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{Counter, Histogram, Recorder};
use silt_metadata::store::{
    LeaseId, RangeRequest, RangeResponse, StoreLimits, Txn, TxnResponse, WatchStream,
};
use silt_metadata::{MetaError, MetaStore};
use silt_storage::metrics::{counter, histogram};

use super::metrics::{METADATA_ERRORS, METADATA_TXN};

/// Records into the broker's registry around another [`MetaStore`].
pub struct InstrumentedMeta {
    inner: Arc<dyn MetaStore>,
    txn: Histogram,
    errors: [Counter; 5],
}

impl std::fmt::Debug for InstrumentedMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedMeta").finish_non_exhaustive()
    }
}

const RANGE: usize = 0;
const TXN: usize = 1;
const LEASE: usize = 2;
const WATCH: usize = 3;
const COMPACT: usize = 4;

impl InstrumentedMeta {
    pub fn wrap(inner: Arc<dyn MetaStore>, r: &dyn Recorder) -> Arc<dyn MetaStore> {
        Arc::new(Self {
            inner,
            txn: histogram(r, METADATA_TXN, &[]),
            errors: ["range", "txn", "lease", "watch", "compact"]
                .map(|op| counter(r, METADATA_ERRORS, &[("op", op)])),
        })
    }

    fn count<T>(&self, op: usize, result: Result<T, MetaError>) -> Result<T, MetaError> {
        if result.is_err() {
            self.errors[op].increment(1);
        }
        result
    }
}

#[async_trait]
impl MetaStore for InstrumentedMeta {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, MetaError> {
        let result = self.inner.range(req).await;
        self.count(RANGE, result)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        let started = Instant::now();
        let result = self.inner.txn(txn).await;
        self.txn.record(started.elapsed().as_secs_f64());
        self.count(TXN, result)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        let result = self.inner.grant_lease(ttl).await;
        self.count(LEASE, result)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError> {
        let result = self.inner.keep_alive(lease).await;
        self.count(LEASE, result)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        let result = self.inner.revoke_lease(lease).await;
        self.count(LEASE, result)
    }

    async fn watch(
        &self,
        req: RangeRequest,
        start_revision: i64,
    ) -> Result<WatchStream, MetaError> {
        let result = self.inner.watch(req, start_revision).await;
        self.count(WATCH, result)
    }

    async fn compact(&self, revision: i64) -> Result<(), MetaError> {
        let result = self.inner.compact(revision).await;
        self.count(COMPACT, result)
    }

    fn limits(&self) -> StoreLimits {
        self.inner.limits()
    }
}
