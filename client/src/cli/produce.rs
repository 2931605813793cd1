//! `silt produce`: one record per input line through the fast-path [`Producer`]. Lines are read
//! as bytes (no UTF-8 requirement), the trailing newline (`\n` or `\r\n`) stripped; with
//! `--key-separator` a line is split at the first separator into key and value, and a line
//! without it has a null key; with `--null-marker` a value equal to the marker is sent as a null
//! value (a tombstone, which deletes its key in a compacted topic), as Kafka's console producer
//! does with `null.marker`. Acknowledgements are counted as they arrive; the command reports
//! `acknowledged X of Y records` and fails if any record was not acknowledged.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use silt_client::{ClientError, Producer, ProducerConfig, ProducerRecord, SendFuture};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use super::{Compression, connect, stderr_is_terminal};

/// Produce records from lines of text.
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// Topic to produce to.
    topic: String,
    /// Split each line at the first occurrence of this separator into key and value; lines
    /// without it get a null key.
    #[arg(long)]
    key_separator: Option<String>,
    /// Send a value equal to this marker (after the key is split off) as a null value: a
    /// tombstone, which deletes its key in a compacted topic. E.g. with `--key-separator :
    /// --null-marker NULL` the line `user-1:NULL` deletes `user-1`.
    #[arg(long)]
    null_marker: Option<String>,
    /// Send every record to this partition instead of hashing the key.
    #[arg(long)]
    partition: Option<u32>,
    /// Read lines from this file instead of stdin.
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Batch compression.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    compression: Compression,
    /// How long a batch waits for more records before it is sent, in ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
}

pub(crate) async fn run(broker: &str, args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let client = connect(broker).await?;
    let config = ProducerConfig {
        linger: Duration::from_millis(args.linger_ms),
        compression: args.compression.into(),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, &args.topic, config).await?;
    let input: Box<dyn AsyncRead + Unpin + Send> = match &args.file {
        Some(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdin()),
    };
    let mut lines = BufReader::with_capacity(1 << 20, input);

    let progress = stderr_is_terminal().then(progress_bar);
    let (futures_tx, futures_rx) = mpsc::unbounded_channel();
    let tally = tokio::spawn(count_acks(futures_rx, progress.clone()));

    let format = LineFormat {
        key_separator: args.key_separator.as_deref().map(str::as_bytes),
        null_marker: args.null_marker.as_deref().map(str::as_bytes),
        partition: args.partition,
    };
    let mut sent = 0u64;
    let mut refused: Option<ClientError> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        let record = format.record(&line);
        sent += 1;
        match producer.send(record).await {
            Ok(future) => {
                // The receiver only goes away if the tally task panicked; the join below reports it.
                let _ = futures_tx.send(future);
            }
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    let flushed = producer.close().await;
    drop(futures_tx);
    let (acked, first_error) = tally.await?;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    eprintln!("acknowledged {acked} of {sent} records");
    match refused.or(first_error).or(flushed.err()) {
        Some(e) if acked < sent => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// How input lines become records.
#[derive(Debug, Clone, Copy, Default)]
struct LineFormat<'a> {
    key_separator: Option<&'a [u8]>,
    null_marker: Option<&'a [u8]>,
    partition: Option<u32>,
}

impl LineFormat<'_> {
    /// The record for one input line (with its newline).
    fn record(&self, line: &[u8]) -> ProducerRecord {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (key, value) = match self.key_separator.and_then(|sep| split_once(line, sep)) {
            Some((key, value)) => (Some(Bytes::copy_from_slice(key)), value),
            None => (None, line),
        };
        let null_value = self.null_marker == Some(value);
        ProducerRecord {
            key,
            value: if null_value {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(value)
            },
            null_value,
            partition: self.partition,
            ..ProducerRecord::default()
        }
    }
}

fn split_once<'a>(haystack: &'a [u8], needle: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if needle.is_empty() {
        return None;
    }
    let at = haystack.windows(needle.len()).position(|w| w == needle)?;
    Some((&haystack[..at], &haystack[at + needle.len()..]))
}

/// Awaits every send future as it resolves; returns the number acknowledged and the first error.
async fn count_acks(
    mut futures_rx: mpsc::UnboundedReceiver<SendFuture>,
    progress: Option<ProgressBar>,
) -> (u64, Option<ClientError>) {
    let mut pending = FuturesUnordered::new();
    let mut acked = 0u64;
    let mut first_error = None;
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            next = futures_rx.recv(), if open => match next {
                Some(future) => pending.push(future),
                None => open = false,
            },
            Some(result) = pending.next(), if !pending.is_empty() => match result {
                Ok(_) => {
                    acked += 1;
                    if let Some(bar) = &progress {
                        bar.inc(1);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            },
        }
    }
    (acked, first_error)
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {human_pos} records acknowledged ({per_sec}) {elapsed}",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(separator: &[u8]) -> LineFormat<'_> {
        LineFormat {
            key_separator: Some(separator),
            ..LineFormat::default()
        }
    }

    #[test]
    fn lines_lose_their_newline() {
        let plain = LineFormat::default();
        let r = plain.record(b"hello\n");
        assert_eq!((r.key, r.value), (None, Bytes::from_static(b"hello")));
        let r = LineFormat {
            partition: Some(3),
            ..plain
        }
        .record(b"crlf\r\n");
        assert_eq!(
            (r.value, r.partition),
            (Bytes::from_static(b"crlf"), Some(3))
        );
        let r = plain.record(b"last line without newline");
        assert_eq!(r.value, Bytes::from_static(b"last line without newline"));
        let empty = plain.record(b"\n");
        assert_eq!((empty.value, empty.null_value), (Bytes::new(), false));
    }

    #[test]
    fn key_separator_splits_at_the_first_occurrence() {
        let r = keyed(b"::").record(b"user-1::a::b\n");
        assert_eq!(r.key, Some(Bytes::from_static(b"user-1")));
        assert_eq!(r.value, Bytes::from_static(b"a::b"));
        let r = keyed(b"::").record(b"no separator\n");
        assert_eq!(
            (r.key, r.value),
            (None, Bytes::from_static(b"no separator"))
        );
        let r = keyed(b"\t").record(b"\tvalue\n");
        assert_eq!(
            (r.key, r.value),
            (Some(Bytes::new()), Bytes::from_static(b"value"))
        );
    }

    #[test]
    fn a_value_equal_to_the_null_marker_is_a_tombstone() {
        let format = LineFormat {
            null_marker: Some(b"NULL"),
            ..keyed(b":")
        };
        let r = format.record(b"user-1:NULL\n");
        assert_eq!(r, ProducerRecord::tombstone(Bytes::from_static(b"user-1")));
        // Only the whole value matches; the key may be anything.
        for line in [&b"user-1:NULLS\n"[..], b"user-1:\n", b"NULL:x\n"] {
            let r = format.record(line);
            assert!(!r.null_value, "{:?}", String::from_utf8_lossy(line));
        }
        // Without a separator the whole line is the value.
        let r = LineFormat {
            null_marker: Some(b"NULL"),
            ..LineFormat::default()
        }
        .record(b"NULL\r\n");
        assert_eq!((r.key, r.null_value, r.value), (None, true, Bytes::new()));
        // An empty marker makes empty values null.
        let r = LineFormat {
            null_marker: Some(b""),
            ..keyed(b":")
        }
        .record(b"k:\n");
        assert!(r.null_value);
    }
}
