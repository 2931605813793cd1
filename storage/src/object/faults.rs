//! [`FaultyStore`]: an object store decorator that injects the trouble real S3-compatible
//! servers cause — errors (as a 5xx or a throttle would surface), latency, and "partial"
//! failures where a PUT is stored but its caller sees an error — from a seeded RNG, so a failing
//! run can be replayed.

use std::fmt;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// What to inject, per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Probability that a PUT fails without storing anything.
    pub put_error: f64,
    /// Probability that a PUT is stored but reported as failed (a lost response).
    pub put_lost_response: f64,
    /// Probability that a GET fails.
    pub get_error: f64,
    /// Extra latency added to each request, uniformly drawn from this range.
    pub latency: (Duration, Duration),
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            put_error: 0.0,
            put_lost_response: 0.0,
            get_error: 0.0,
            latency: (Duration::ZERO, Duration::ZERO),
        }
    }
}

/// Counts of what was injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectedFaults {
    pub put_errors: u64,
    pub lost_responses: u64,
    pub get_errors: u64,
}

/// An object store that misbehaves on purpose.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    enabled: AtomicBool,
    put_errors: AtomicU64,
    lost_responses: AtomicU64,
    get_errors: AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner`, drawing faults from `seed`.
    pub fn new(inner: Arc<dyn ObjectStore>, faults: Faults, seed: u64) -> Self {
        Self {
            inner,
            faults: Mutex::new(faults),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            enabled: AtomicBool::new(true),
            put_errors: AtomicU64::new(0),
            lost_responses: AtomicU64::new(0),
            get_errors: AtomicU64::new(0),
        }
    }

    /// Turns injection on or off (off: a transparent pass-through).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// What was injected so far.
    pub fn injected(&self) -> InjectedFaults {
        InjectedFaults {
            put_errors: self.put_errors.load(Ordering::Relaxed),
            lost_responses: self.lost_responses.load(Ordering::Relaxed),
            get_errors: self.get_errors.load(Ordering::Relaxed),
        }
    }

    /// Draws this request's latency and fault dice: (latency, roll in [0, 1)).
    fn draw(&self) -> Option<(Faults, Duration, f64)> {
        if !self.enabled.load(Ordering::SeqCst) {
            return None;
        }
        let faults = *self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let (lo, hi) = faults.latency;
        let latency = if hi > lo {
            rng.random_range(lo..hi)
        } else {
            lo
        };
        Some((faults, latency, rng.random::<f64>()))
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected {what} (as a 503 Slow Down would)").into(),
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let Some((faults, latency, roll)) = self.draw() else {
            return self.inner.put_opts(location, payload, opts).await;
        };
        tokio::time::sleep(latency).await;
        if roll < faults.put_error {
            self.put_errors.fetch_add(1, Ordering::Relaxed);
            return Err(injected("PUT error"));
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        if roll < faults.put_error + faults.put_lost_response {
            self.lost_responses.fetch_add(1, Ordering::Relaxed);
            return Err(injected("lost PUT response"));
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if let Some((faults, latency, roll)) = self.draw() {
            tokio::time::sleep(latency).await;
            if roll < faults.get_error {
                self.get_errors.fetch_add(1, Ordering::Relaxed);
                return Err(injected("GET error"));
            }
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        if let Some((faults, latency, roll)) = self.draw() {
            tokio::time::sleep(latency).await;
            if roll < faults.get_error {
                self.get_errors.fetch_add(1, Ordering::Relaxed);
                return Err(injected("GET error"));
            }
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn faults_follow_the_seed_and_lost_responses_store_the_object() {
        let run = |seed| async move {
            let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let faults = Faults {
                put_error: 0.3,
                put_lost_response: 0.3,
                ..Faults::default()
            };
            let store = FaultyStore::new(inner.clone(), faults, seed);
            let mut outcomes = Vec::new();
            for i in 0..50 {
                let path = Path::from(format!("o/{i}"));
                let ok = store
                    .put(&path, Bytes::from_static(b"x").into())
                    .await
                    .is_ok();
                let stored = inner.head(&path).await.is_ok();
                outcomes.push((ok, stored));
            }
            (outcomes, store.injected())
        };
        let (a, injected_a) = run(7).await;
        let (b, _) = run(7).await;
        assert_eq!(a, b, "the same seed injects the same faults");
        assert!(injected_a.put_errors > 0 && injected_a.lost_responses > 0);
        assert!(
            a.iter().any(|(ok, stored)| !ok && *stored),
            "a lost response leaves the object stored"
        );
        assert!(
            a.iter().any(|(ok, stored)| !ok && !stored),
            "a PUT error stores nothing"
        );
        assert!(
            a.iter().all(|(ok, stored)| !ok || *stored),
            "an OK PUT is always stored"
        );
    }
}
