//! The broker's own counters and CPU accounting, served by `Admin.GetStats` (what `silt bench`
//! divides by).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

/// The stages of an acknowledged produce, as `Admin.GetStats` names them.
pub const STAGES: [&str; 4] = ["wait_for_flush", "put", "commit", "ack"];

/// One flush's time in each stage.
#[derive(Debug, Clone, Copy)]
pub struct FlushTimes {
    pub wait_for_flush: Duration,
    pub put: Duration,
    pub commit: Duration,
    pub ack: Duration,
}

/// Latency histograms (microseconds, 3 significant digits) of the stages in [`STAGES`].
#[derive(Debug)]
pub struct StageHistograms(Mutex<Vec<Histogram<u64>>>);

impl Default for StageHistograms {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        Self(Mutex::new(STAGES.iter().map(|_| h()).collect()))
    }
}

impl StageHistograms {
    fn record(&self, t: &FlushTimes) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (i, d) in [t.wait_for_flush, t.put, t.commit, t.ack]
            .into_iter()
            .enumerate()
        {
            h[i].saturating_record(d.as_micros().max(1) as u64);
        }
    }

    /// `(stage, count, p50 ms, p99 ms, max ms)` per stage.
    pub fn summary(&self) -> Vec<(&'static str, u64, f64, f64, f64)> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let ms = |us: u64| us as f64 / 1000.0;
        STAGES
            .iter()
            .zip(h.iter())
            .map(|(name, h)| {
                (
                    *name,
                    h.len(),
                    ms(h.value_at_quantile(0.5)),
                    ms(h.value_at_quantile(0.99)),
                    ms(h.max()),
                )
            })
            .collect()
    }
}

/// Monotonic counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    pub metadata_bytes: AtomicU64,
    pub stages: StageHistograms,
    pub records_produced: AtomicU64,
    pub bytes_produced: AtomicU64,
    pub segments_flushed: AtomicU64,
    pub segment_bytes_flushed: AtomicU64,
    pub records_fetched: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub metadata_txns: AtomicU64,
}

impl Stats {
    pub fn produced(&self, records: u64, bytes: u64) {
        self.records_produced.fetch_add(records, Ordering::Relaxed);
        self.bytes_produced.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn segment_flushed(&self, bytes: usize) {
        self.segments_flushed.fetch_add(1, Ordering::Relaxed);
        self.segment_bytes_flushed
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn fetched(&self, records: u64, bytes: u64) {
        self.records_fetched.fetch_add(records, Ordering::Relaxed);
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn metadata_txn(&self) {
        self.metadata_txns.fetch_add(1, Ordering::Relaxed);
    }

    /// A committed flush: its metadata bytes and where its time went.
    pub fn flush_committed(&self, metadata_bytes: usize, times: &FlushTimes) {
        self.metadata_bytes
            .fetch_add(metadata_bytes as u64, Ordering::Relaxed);
        self.stages.record(times);
    }
}

/// CPU seconds (user + system, all threads) this process has used, from `/proc/self/stat` in
/// the kernel's clock ticks (read with `procfs`, at the machine's real tick rate). Returns 0
/// where procfs is missing.
pub fn process_cpu_seconds() -> f64 {
    match procfs::process::Process::myself().and_then(|p| p.stat()) {
        Ok(stat) => (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64,
        Err(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's CPU seconds, read the same way as the process's.
    fn thread_cpu_seconds() -> f64 {
        // /proc/thread-self links to <pid>/task/<tid>.
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        let tid: i32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let task = procfs::process::Process::myself()
            .unwrap()
            .task_from_tid(tid)
            .unwrap();
        let stat = task.stat().unwrap();
        (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
    }

    #[test]
    fn process_cpu_time_follows_the_work_done() {
        // Work on this thread until it has used 0.2 CPU seconds. One thread cannot use CPU
        // faster than wall time passes, so that takes at least ~0.2 s (a wrong tick rate would
        // report it too early) and, even on a busy machine, well under 10 s (a reading that
        // does not follow the work never gets there); the process, which holds this thread
        // and maybe others busy too, reports at least as much.
        let (process_before, thread_before) = (process_cpu_seconds(), thread_cpu_seconds());
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while thread_cpu_seconds() - thread_before < 0.2 {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "10 s of work read as {} CPU seconds",
                thread_cpu_seconds() - thread_before
            );
        }
        let wall = start.elapsed().as_secs_f64();
        assert!(
            wall >= 0.18,
            "0.2 CPU seconds reported after {wall} s of wall time"
        );
        let process = process_cpu_seconds() - process_before;
        assert!(
            process >= 0.19,
            "the process reports {process} s for 0.2 s of its work"
        );
    }
}
