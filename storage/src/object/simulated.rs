//! [`SimulatedStore`]: an in-process store that costs what a remote S3-compatible one does per
//! request — a first-byte latency, then the bytes at a per-request bandwidth — so benchmarks
//! can ask whether Silt's pipeline keeps up with a store like S3 without a network: is produce
//! throughput close to what the same store does with raw PUTs at the same concurrency?
//!
//! Opened as `memory://?latency_ms=L&mib_per_s=B`. Each PUT or GET waits `L` ms plus its bytes
//! at `B` MiB/s, then runs on the in-memory store; requests overlap freely (as independent
//! connections do), so throughput grows with concurrency as it does against S3. Lists and
//! deletes pay the latency only.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// Per-request costs of the simulated store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestCost {
    /// Time to first byte of every request.
    pub latency: Duration,
    /// Bytes per second of one request's body (0: no limit).
    pub bytes_per_sec: u64,
}

impl RequestCost {
    /// How long a request moving `bytes` takes.
    pub fn of(&self, bytes: u64) -> Duration {
        let transfer = if self.bytes_per_sec == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64)
        };
        self.latency + transfer
    }
}

/// A store that waits what each request would cost against a remote store.
#[derive(Debug)]
pub struct SimulatedStore {
    inner: Arc<dyn ObjectStore>,
    cost: RequestCost,
}

impl SimulatedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, cost: RequestCost) -> Self {
        Self { inner, cost }
    }
}

impl fmt::Display for SimulatedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Simulated({}, {:?} + {} B/s per request)",
            self.inner, self.cost.latency, self.cost.bytes_per_sec
        )
    }
}

/// Bytes a GET returns, when the request says.
fn range_len(range: &GetRange) -> Option<u64> {
    match range {
        GetRange::Bounded(r) => Some(r.end.saturating_sub(r.start)),
        GetRange::Offset(_) | GetRange::Suffix(_) => None,
    }
}

#[async_trait]
impl ObjectStore for SimulatedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        tokio::time::sleep(self.cost.of(payload.content_length() as u64)).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        tokio::time::sleep(self.cost.latency).await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let known = options.range.as_ref().and_then(range_len);
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        let bytes = if head {
            0
        } else {
            known.unwrap_or(result.range.end - result.range.start)
        };
        tokio::time::sleep(self.cost.of(bytes)).await;
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let bytes = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
        tokio::time::sleep(self.cost.of(bytes)).await;
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
        tokio::time::sleep(self.cost.latency).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        tokio::time::sleep(self.cost.latency).await;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_request_costs_its_latency_plus_its_bytes_at_the_bandwidth() {
        let store = SimulatedStore::new(
            Arc::new(InMemory::new()),
            RequestCost {
                latency: Duration::from_millis(20),
                bytes_per_sec: 1 << 20,
            },
        );
        let path = Path::from("a");
        let started = tokio::time::Instant::now();
        store
            .put(&path, PutPayload::from(vec![7u8; 512 << 10]))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(520));
        let started = tokio::time::Instant::now();
        let got = store.get_range(&path, 0..(256 << 10)).await.unwrap();
        assert_eq!(got.len(), 256 << 10);
        assert_eq!(started.elapsed(), Duration::from_millis(270));
        // Requests overlap: two PUTs at once take as long as one.
        let (b, c) = (Path::from("b"), Path::from("c"));
        let started = tokio::time::Instant::now();
        let (a, b) = tokio::join!(
            store.put(&b, PutPayload::from(vec![1u8; 1 << 20])),
            store.put(&c, PutPayload::from(vec![1u8; 1 << 20])),
        );
        a.unwrap();
        b.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(1_020));
    }
}
