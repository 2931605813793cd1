//! `silt-broker`: starts one Silt broker with settings from flags, `SILT_*` variables and an
//! optional TOML file, and stops it in order on SIGINT/SIGTERM.
//!
//! Logging starts once the settings are loaded (they choose its format and trace export), so a
//! settings error is printed to stderr as `main`'s error, before any logger exists; any later
//! error is logged (as JSON with `--log-format json`) and the process exits with status 1.

use std::process::ExitCode;

use clap::Parser;
use silt_broker::observe::logs;
use silt_broker::{Builder, Cli, Settings};

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli).map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Declared after the runtime, so dropped before it: the last spans are exported while the
    // runtime that carries the exporter's connection still runs.
    let _logs = {
        let _in_runtime = runtime.enter();
        logs::init(
            settings.log_format,
            settings.otlp_endpoint.as_deref(),
            &settings.broker_id,
        )?
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!("{e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
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
