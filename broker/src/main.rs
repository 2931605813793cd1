//! `silt-broker`: starts one Silt broker with settings from flags, `SILT_*` variables and an
//! optional TOML file, and stops it in order on SIGINT/SIGTERM.

use std::io::IsTerminal;

use clap::Parser;
use silt_broker::{Builder, Cli, Settings};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SILT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let settings = Settings::load(&cli).map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
    let handle = Builder::new(settings).start().await?;
    let cancel = handle.cancel_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        cancel.cancel();
    });
    handle.wait().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
