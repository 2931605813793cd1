//! `silt bench produce --subscribe`: put → push-subscribe delivery latency.
//!
//! Before the run, one `Subscribe` stream per partition opens at the partition's high watermark
//! (an explicit offset, so no record of the run can slip in before a stream is positioned). Each
//! record of the run carries, in its first 8 bytes, the instant it was due (µs since the Unix
//! epoch, little-endian); a stream that delivers it records now − that instant. Producer and
//! subscriber run on one machine, so they read one clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use silt_api::v1::SubscribeRequest;
use silt_client::{Client, StartSpec, list_offsets};
use tokio::task::JoinSet;

use super::{latency_histogram, record_latency};

/// Bytes of the stamp at the start of each value.
pub(crate) const STAMP_BYTES: usize = 8;

pub(crate) use silt_client::clock::unix_now_us;

/// `value` with its first [`STAMP_BYTES`] bytes replaced by `due_us`.
pub(crate) fn stamped(value: &Bytes, due_us: u64) -> Bytes {
    let mut out = BytesMut::from(value.as_ref());
    out[..STAMP_BYTES].copy_from_slice(&due_us.to_le_bytes());
    out.freeze()
}

/// Delivery latencies gathered by the subscribers.
pub(crate) struct Deliveries {
    tasks: JoinSet<anyhow::Result<()>>,
    delivered: Arc<AtomicU64>,
    latency: Arc<Mutex<Histogram<u64>>>,
}

/// What the subscribers saw once the run ended.
pub(crate) struct Delivered {
    pub(crate) records: u64,
    pub(crate) latency: Histogram<u64>,
}

impl Deliveries {
    /// Opens one stream per partition of `topic` at its current high watermark.
    pub(crate) async fn open(
        client: &Client,
        topic: &str,
        partitions: u32,
    ) -> anyhow::Result<Self> {
        let delivered = Arc::new(AtomicU64::new(0));
        let latency = Arc::new(Mutex::new(latency_histogram()));
        let mut tasks = JoinSet::new();
        for partition in 0..partitions {
            let start = list_offsets(client, topic, partition, StartSpec::Latest)
                .await
                .with_context(|| format!("high watermark of {topic}/{partition}"))?
                .offset;
            let request = SubscribeRequest {
                topic: topic.to_string(),
                partition,
                start: Some(StartSpec::Offset(start).to_position()),
                raw_batches: false,
                max_bytes: 0,
            };
            let mut stream = client
                .log()
                .subscribe(request)
                .await
                .with_context(|| format!("subscribing to {topic}/{partition}"))?
                .into_inner();
            let (delivered, latency) = (delivered.clone(), latency.clone());
            tasks.spawn(async move {
                while let Some(message) = stream.message().await? {
                    let now = unix_now_us();
                    let mut seen = 0;
                    let mut histogram = latency.lock().expect("latency histogram lock");
                    for record in &message.records {
                        let Some(stamp) = record
                            .value
                            .as_ref()
                            .and_then(|v| v.get(..STAMP_BYTES))
                            .and_then(|s| <[u8; STAMP_BYTES]>::try_from(s).ok())
                        else {
                            continue;
                        };
                        let due = u64::from_le_bytes(stamp);
                        record_latency(
                            &mut histogram,
                            Duration::from_micros(now.saturating_sub(due)),
                            1,
                        );
                        seen += 1;
                    }
                    drop(histogram);
                    delivered.fetch_add(seen, Ordering::Relaxed);
                }
                Ok(())
            });
        }
        Ok(Self {
            tasks,
            delivered,
            latency,
        })
    }

    /// Waits until `expected` records were delivered (or `timeout` passed, or a stream failed),
    /// then closes the streams.
    pub(crate) async fn finish(
        mut self,
        expected: u64,
        timeout: Duration,
    ) -> anyhow::Result<Delivered> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.delivered.load(Ordering::Relaxed) < expected {
            if let Some(Ok(Err(e))) = self.tasks.try_join_next() {
                return Err(e.context("a subscription stream failed"));
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.tasks.abort_all();
        let latency = self.latency.lock().expect("latency histogram lock").clone();
        Ok(Delivered {
            records: self.delivered.load(Ordering::Relaxed),
            latency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_replaces_the_first_bytes_only() {
        let value = Bytes::from(vec![7u8; 16]);
        let out = stamped(&value, 0x0102_0304_0506_0708);
        assert_eq!(&out[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&out[8..], &[7u8; 8]);
        assert_eq!(value[0], 7, "the pool's value is untouched");
    }
}
