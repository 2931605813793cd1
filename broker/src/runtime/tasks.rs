//! The one shape of the broker's background loops (controller, housekeeping, membership): a
//! named task that runs one step now, then every `period` and whenever its wake-up channel
//! changes, until cancelled; a failed step is logged and retried at the next tick, never ends
//! the loop. (The flusher is the one loop driven by messages instead: sealed windows.)

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::core::BrokerError;

/// Runs `step` until `cancel`: at once, then every `period` and on every change of `wake`.
pub async fn periodic<F, Fut>(
    name: &'static str,
    period: Duration,
    mut wake: Option<watch::Receiver<u64>>,
    cancel: CancellationToken,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), BrokerError>>,
{
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let woken = async {
            match wake.as_mut() {
                Some(w) => {
                    if w.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            () = woken => {}
        }
        if let Err(e) = step().await {
            warn!(task = name, error = %e, "background step failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_ticks_wakes_survives_failures_and_stops() {
        let runs = Arc::new(AtomicU32::new(0));
        let (wake_tx, wake) = watch::channel(0);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (runs, cancel) = (runs.clone(), cancel.clone());
            periodic(
                "test",
                Duration::from_secs(60),
                Some(wake),
                cancel,
                move || {
                    let n = runs.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            Err(BrokerError::unavailable("first step fails"))
                        } else {
                            Ok(())
                        }
                    }
                },
            )
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "a step at once");
        wake_tx.send_replace(1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "woken, after a failed step");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "a tick");
        cancel.cancel();
        task.await.unwrap();
    }
}
