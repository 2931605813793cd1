//! The WAL cache: where produced batches wait, in memory, for their segment to be flushed.
//!
//! Producers [`append`](WalCache::append) validated batches to the open *window* and get a
//! [`DurableTicket`]. A window is sealed when it holds `flush_bytes`, when it touches
//! `MAX_WINDOW_PARTITIONS` partitions (keeping the commit value small), or `linger` after its
//! first batch; the sealed window goes to the [flusher](crate::core::flusher), which turns it into one
//! segment object and one metadata commit. The ticket resolves only after that commit — the type
//! is the durability promise: a ticket is answered only through [`Producers`], which only a
//! sealed window yields, and an unanswered one says on drop whether anything may be stored.
//!
//! Memory is bounded: bytes accepted but not yet committed count against `limit`; past it
//! `append` fails with RESOURCE_EXHAUSTED and a retry hint instead of growing.
//!
//! Each producer keeps the id of the `tracing` span it appended in (its produce call), so the
//! flusher's span can link to the calls it acknowledges ([`Producers::spans`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::core::error::BrokerError;

/// Most partitions one segment may hold (bounds the size of its metadata commit).
pub const MAX_WINDOW_PARTITIONS: usize = 4096;

/// Where one appended batch landed, once durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchAck {
    pub partition: u32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// A validated batch to append.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    pub topic_id: u64,
    pub partition: u32,
    pub bytes: Bytes,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
}

/// Resolves once the appended batches are stored in object storage AND committed in metadata.
#[derive(Debug)]
#[must_use = "a produce is acknowledged only by awaiting its ticket"]
pub struct DurableTicket(oneshot::Receiver<Result<Vec<BatchAck>, BrokerError>>);

impl DurableTicket {
    /// Waits for durability; the acks are in append order.
    pub async fn durable(self) -> Result<Vec<BatchAck>, BrokerError> {
        // A waiter always answers, even when dropped (see `Waiter`'s `Drop`); no answer at
        // all cannot say whether anything was stored.
        self.0.await.unwrap_or_else(|_| {
            Err(BrokerError::ambiguous(
                "the broker stopped without saying whether these records were stored; they may be",
            ))
        })
    }
}

/// A batch in a window: which producer (request) it belongs to, and where its ack goes.
#[derive(Debug)]
pub struct PendingBatch {
    batch: AppendBatch,
    producer: usize,
    slot: usize,
}

impl PendingBatch {
    pub fn batch(&self) -> &AppendBatch {
        &self.batch
    }

    /// The producer (request) the batch belongs to, an index into its window's [`Producers`].
    pub fn producer(&self) -> usize {
        self.producer
    }

    /// The batch's place in its producer's request (where its ack goes).
    pub fn slot(&self) -> usize {
        self.slot
    }
}

/// A producer waiting on a window. It answers exactly once: with [`Producers::ack`] or a
/// failure, or, if it is dropped unanswered (the flusher stopped or failed), with an error that
/// says whether anything may have been stored: "not stored" until the flusher marks it written
/// (its segment is being uploaded), ambiguous after. Only this module can answer it.
#[derive(Debug)]
struct Waiter {
    tx: Option<oneshot::Sender<Result<Vec<BatchAck>, BrokerError>>>,
    acks: Vec<BatchAck>,
    written: bool,
    /// The span of the call that appended (none when tracing is off). Held, not just its id,
    /// so the span stays open (and its id unambiguous) until the flush links to it.
    span: Option<tracing::Span>,
}

impl Waiter {
    fn ack(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(std::mem::take(&mut self.acks)));
        }
    }

    fn fail(mut self, error: BrokerError) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(error));
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let error = if self.written {
                BrokerError::ambiguous(
                    "the broker stopped while storing these records; they may or may not be stored",
                )
            } else {
                BrokerError::unavailable(
                    "the broker stopped before storing these records; nothing was stored, retry",
                )
            };
            let _ = tx.send(Err(error));
        }
    }
}

/// The producers of a window, once the flusher laid it out: the only way to answer them.
#[derive(Debug)]
pub struct Producers(Vec<Option<Waiter>>);

impl Producers {
    /// Answers the producers in `refused` with `error` now; nothing of theirs is written.
    pub fn refuse(&mut self, refused: &std::collections::HashSet<usize>, error: &BrokerError) {
        for i in refused {
            if let Some(w) = self.0.get_mut(*i).and_then(Option::take) {
                w.fail(error.clone());
            }
        }
    }

    /// Where batch `slot` of producer `producer` landed.
    pub fn set_ack(&mut self, producer: usize, slot: usize, ack: BatchAck) {
        if let Some(Some(w)) = self.0.get_mut(producer) {
            w.acks[slot] = ack;
        }
    }

    /// From now on these producers' records may be stored (their segment is being uploaded).
    pub fn mark_written(&mut self) {
        for w in self.0.iter_mut().flatten() {
            w.written = true;
        }
    }

    /// The spans of the producers left to answer (their produce calls), in append order.
    pub fn spans(&self) -> impl Iterator<Item = tracing::Id> + '_ {
        self.0
            .iter()
            .flatten()
            .filter_map(|w| w.span.as_ref().and_then(tracing::Span::id))
    }

    /// True when no producer is left to answer.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// Acknowledges every producer left: their records are durable at their acks.
    pub fn ack(self) {
        self.0.into_iter().flatten().for_each(Waiter::ack);
    }

    /// Fails every producer left with `error`.
    pub fn fail(self, error: &BrokerError) {
        for w in self.0.into_iter().flatten() {
            w.fail(error.clone());
        }
    }
}

/// The batches gathered between two flushes.
#[derive(Debug, Default)]
pub struct Window {
    generation: u64,
    bytes: usize,
    /// Batches per (topic id, partition), in append order; the map order is the segment layout.
    partitions: BTreeMap<(u64, u32), Vec<PendingBatch>>,
    waiters: Vec<Waiter>,
    /// When the first batch arrived.
    opened_at: Option<Instant>,
    /// When the window before it was sealed (`None`: it is the first).
    after_seal_at: Option<Instant>,
}

impl Window {
    fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Bytes of the window's batches (what it holds of the cache's memory).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the window's first batch arrived.
    pub fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    /// The window's batches by (topic id, partition), in segment layout order.
    pub fn partitions(&self) -> impl Iterator<Item = (&(u64, u32), &[PendingBatch])> {
        self.partitions.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// The window's producers, to answer once the window is laid out.
    pub fn into_producers(self) -> Producers {
        Producers(self.waiters.into_iter().map(Some).collect())
    }

    /// Fails every producer of the window.
    pub fn fail(self, error: &BrokerError) {
        self.into_producers().fail(error);
    }
}

/// The in-memory write buffer of a broker.
#[derive(Debug)]
pub struct WalCache {
    open: Mutex<Window>,
    in_use: AtomicUsize,
    limit: usize,
    flush_bytes: usize,
    linger: Duration,
    /// How long a window waits when the one before it was sealed at least `linger` ago (the
    /// broker was idle): producers are waiting and nothing else may be coming.
    idle_linger: Duration,
    closed: AtomicBool,
    closed_token: tokio_util::sync::CancellationToken,
    sealed_tx: mpsc::UnboundedSender<Window>,
    opened_tx: mpsc::UnboundedSender<(u64, Instant)>,
}

/// The receiving ends a [`WalCache`] feeds: sealed windows (for the flusher) and window openings
/// (for the linger timer).
#[derive(Debug)]
pub struct WalCacheOutputs {
    pub sealed: mpsc::UnboundedReceiver<Window>,
    pub opened: mpsc::UnboundedReceiver<(u64, Instant)>,
}

impl WalCache {
    pub fn new(limit: usize, flush_bytes: usize, linger: Duration) -> (Self, WalCacheOutputs) {
        let (sealed_tx, sealed) = mpsc::unbounded_channel();
        let (opened_tx, opened) = mpsc::unbounded_channel();
        let cache = Self {
            open: Mutex::new(Window {
                generation: 1,
                ..Window::default()
            }),
            in_use: AtomicUsize::new(0),
            limit,
            flush_bytes,
            linger,
            idle_linger: linger,
            closed: AtomicBool::new(false),
            closed_token: tokio_util::sync::CancellationToken::new(),
            sealed_tx,
            opened_tx,
        };
        (cache, WalCacheOutputs { sealed, opened })
    }

    /// Bytes accepted and not yet committed (or failed).
    pub fn bytes_in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// Adaptive linger: a window opened at least `linger` after the last one was sealed (an
    /// idle broker) is sealed `idle_linger` after its first batch instead of `linger`, so a
    /// lone producer does not wait out the whole linger. Consecutive linger seals stay at least
    /// `linger` apart either way, so PUTs per second never pass 1/linger because of it.
    pub fn with_idle_linger(mut self, idle_linger: Duration) -> Self {
        self.idle_linger = idle_linger.min(self.linger);
        self
    }

    /// Adds batches (all of one request) to the open window; they flush together. The current
    /// `tracing` span is taken as the request's.
    pub fn append(&self, batches: Vec<AppendBatch>) -> Result<DurableTicket, BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::unavailable(
                "the broker is shutting down; retry on another broker",
            ));
        }
        let bytes: usize = batches.iter().map(|b| b.bytes.len()).sum();
        let before = self.in_use.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes > self.limit && before > 0 {
            self.in_use.fetch_sub(bytes, Ordering::AcqRel);
            return Err(BrokerError::busy(
                format!(
                    "the broker's WAL cache is full ({before} of {} bytes awaiting flush); retry shortly",
                    self.limit
                ),
                self.linger.as_millis().max(10) as u64,
            ));
        }
        let span = Some(tracing::Span::current()).filter(|s| !s.is_disabled());
        let (tx, rx) = oneshot::channel();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::Acquire) {
            drop(open);
            self.release(bytes);
            return Err(BrokerError::unavailable(
                "the broker is shutting down; retry on another broker",
            ));
        }
        let was_empty = open.is_empty();
        if was_empty {
            open.opened_at = Some(Instant::now());
        }
        let waiter = open.waiters.len();
        open.waiters.push(Waiter {
            tx: Some(tx),
            acks: vec![BatchAck::default(); batches.len()],
            written: false,
            span,
        });
        open.bytes += bytes;
        for (slot, batch) in batches.into_iter().enumerate() {
            let key = (batch.topic_id, batch.partition);
            open.partitions.entry(key).or_default().push(PendingBatch {
                batch,
                producer: waiter,
                slot,
            });
        }
        if open.bytes >= self.flush_bytes || open.partitions.len() >= MAX_WINDOW_PARTITIONS {
            self.seal_locked(&mut open);
        } else if was_empty {
            let now = Instant::now();
            let idle = open
                .after_seal_at
                .is_none_or(|sealed| now.duration_since(sealed) >= self.linger);
            let wait = if idle { self.idle_linger } else { self.linger };
            let _ = self.opened_tx.send((open.generation, now + wait));
        }
        Ok(DurableTicket(rx))
    }

    /// Seals the open window if it is still generation `generation` (the linger timer's call).
    pub fn seal_if(&self, generation: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.generation == generation && !open.is_empty() {
            self.seal_locked(&mut open);
        }
    }

    /// Seals whatever is open.
    pub fn seal_now(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if !open.is_empty() {
            self.seal_locked(&mut open);
        }
    }

    /// Refuses further appends and seals the open window: the first step of shutdown.
    pub fn close(&self) {
        {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            self.closed.store(true, Ordering::Release);
            if !open.is_empty() {
                self.seal_locked(&mut open);
            }
        }
        self.closed_token.cancel();
    }

    /// Fires once [`close`](Self::close) sealed the last window: no window follows.
    /// True once [`Self::close`] ran: appends are refused.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn closed(&self) -> tokio_util::sync::CancellationToken {
        self.closed_token.clone()
    }

    /// Returns memory once a window's flush finished (committed or failed).
    pub fn release(&self, bytes: usize) {
        self.in_use.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn seal_locked(&self, open: &mut Window) {
        let next = Window {
            generation: open.generation + 1,
            after_seal_at: Some(Instant::now()),
            ..Window::default()
        };
        let sealed = std::mem::replace(open, next);
        if let Err(mpsc::error::SendError(window)) = self.sealed_tx.send(sealed) {
            self.release(window.bytes);
            window.fail(&BrokerError::unavailable(
                "the broker's flusher has stopped",
            ));
        }
    }
}

/// Seals each window `linger` after its first batch arrived.
pub async fn run_linger_timer(
    cache: std::sync::Arc<WalCache>,
    mut opened: mpsc::UnboundedReceiver<(u64, Instant)>,
) {
    while let Some((generation, deadline)) = opened.recv().await {
        tokio::time::sleep_until(deadline).await;
        cache.seal_if(generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::ErrorKind;

    fn batch(partition: u32, len: usize) -> AppendBatch {
        AppendBatch {
            topic_id: 1,
            partition,
            bytes: Bytes::from(vec![0u8; len]),
            record_count: 1,
            first_timestamp: 0,
            max_timestamp: 0,
        }
    }

    #[test]
    fn a_full_window_is_sealed_at_flush_bytes() {
        let (cache, mut out) = WalCache::new(1 << 20, 100, Duration::from_secs(60));
        let _t1 = cache.append(vec![batch(0, 60)]).unwrap();
        assert!(out.sealed.try_recv().is_err());
        let _t2 = cache.append(vec![batch(1, 60), batch(0, 1)]).unwrap();
        let w = out.sealed.try_recv().unwrap();
        assert_eq!(w.bytes, 121);
        assert_eq!(w.waiters.len(), 2);
        assert_eq!(w.partitions[&(1, 0)].len(), 2);
        assert_eq!(
            w.partitions[&(1, 0)][1].slot,
            1,
            "slots follow request order"
        );
    }

    #[test]
    fn memory_is_bounded_and_released() {
        let (cache, _out) = WalCache::new(100, 1000, Duration::from_secs(60));
        let _t = cache.append(vec![batch(0, 80)]).unwrap();
        let err = cache.append(vec![batch(0, 30)]).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Busy { .. }), "{err:?}");
        cache.release(80);
        let _t = cache.append(vec![batch(0, 30)]).unwrap();
        assert_eq!(cache.bytes_in_use(), 30);
    }

    #[test]
    fn a_request_larger_than_the_limit_still_fits_an_empty_cache() {
        let (cache, _out) = WalCache::new(100, 1000, Duration::from_secs(60));
        let _t = cache.append(vec![batch(0, 150)]).unwrap();
    }

    #[tokio::test]
    async fn a_closed_cache_refuses_appends_and_fails_tickets_if_unflushed() {
        let (cache, out) = WalCache::new(1 << 20, 1 << 20, Duration::from_secs(60));
        let t = cache.append(vec![batch(0, 10)]).unwrap();
        cache.close();
        assert!(matches!(
            cache.append(vec![batch(0, 1)]),
            Err(BrokerError {
                kind: ErrorKind::Unavailable { .. },
                ..
            })
        ));
        drop(out);
        assert!(matches!(
            t.durable().await,
            Err(BrokerError {
                kind: ErrorKind::Unavailable { .. },
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_dropped_waiter_says_whether_its_records_may_be_stored() {
        let (cache, mut out) = WalCache::new(1 << 20, 1, Duration::from_secs(60));
        let unwritten = cache.append(vec![batch(0, 10)]).unwrap();
        let written = cache.append(vec![batch(0, 10)]).unwrap();
        let first = out.sealed.try_recv().unwrap();
        let mut second = out.sealed.try_recv().unwrap().into_producers();
        second.mark_written();
        drop((first, second));
        let err = unwritten.durable().await.unwrap_err();
        assert!(err.nothing_stored(), "never laid out: {err:?}");
        let err = written.durable().await.unwrap_err();
        assert!(
            err.kind == ErrorKind::Ambiguous && !err.nothing_stored(),
            "its segment was uploading: {err:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn linger_seals_a_quiet_window() {
        let (cache, mut out) = WalCache::new(1 << 20, 1 << 20, Duration::from_millis(250));
        let cache = std::sync::Arc::new(cache);
        tokio::spawn(run_linger_timer(cache.clone(), out.opened));
        let _t = cache.append(vec![batch(0, 10)]).unwrap();
        let start = Instant::now();
        let w = out.sealed.recv().await.unwrap();
        assert_eq!(w.generation, 1);
        assert!(start.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_broker_seals_early_but_never_more_often_than_linger() {
        let (cache, mut out) = WalCache::new(1 << 20, 1 << 20, Duration::from_millis(250));
        let cache = std::sync::Arc::new(cache.with_idle_linger(Duration::from_millis(2)));
        tokio::spawn(run_linger_timer(cache.clone(), out.opened));
        let start = Instant::now();
        // Idle: the first window goes after 2 ms.
        let _t = cache.append(vec![batch(0, 10)]).unwrap();
        let _w = out.sealed.recv().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(2));
        // Busy: a window opened right after a seal waits the whole linger.
        let _t = cache.append(vec![batch(0, 10)]).unwrap();
        let _w = out.sealed.recv().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(252));
        // Idle again once a linger passed without a seal.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let _t = cache.append(vec![batch(0, 10)]).unwrap();
        let _w = out.sealed.recv().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(504));
    }
}
