//! The subcommands of `silt`, one module each, and what they share: connecting, the
//! compression flag, byte sizes, terminal and broken-pipe handling.

pub(crate) mod bench;
pub(crate) mod cluster;
pub(crate) mod consume;
pub(crate) mod group;
pub(crate) mod produce;
mod size;
pub(crate) mod topic;

use std::io::IsTerminal;

use clap::ValueEnum;
use silt_client::{BatchCompression, Client};

pub(crate) use size::{ByteSize, format_bytes};

/// `RFC3339` (e.g. `2025-01-31T12:00:00Z`) as ms since the Unix epoch, for `timestamp:` forms.
pub(crate) fn parse_time_ms(time: &str) -> Result<i64, String> {
    let at = humantime::parse_rfc3339(time).map_err(|e| {
        format!("'{time}' is not an RFC 3339 time ({e}), e.g. 2025-01-31T12:00:00Z")
    })?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "times before 1970 are not supported")?;
    Ok(ms.as_millis() as i64)
}

/// Connects to the cluster through the `--broker` list (the error names the last URL tried).
pub(crate) async fn connect(broker: &str) -> anyhow::Result<Client> {
    Ok(Client::connect(broker).await?)
}

/// Batch compression, as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<Compression> for BatchCompression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::None => BatchCompression::None,
            Compression::Gzip => BatchCompression::Gzip,
            Compression::Snappy => BatchCompression::Snappy,
            Compression::Lz4 => BatchCompression::Lz4,
            Compression::Zstd => BatchCompression::Zstd,
        }
    }
}

/// True when progress output should be drawn (stderr is a terminal).
pub(crate) fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// True when `err` (or anything it wraps) is a broken pipe: the reader of our stdout went away.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
