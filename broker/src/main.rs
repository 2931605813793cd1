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
    keep_freed_memory();
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

/// Produced bytes arrive in request buffers of up to a few MiB that the flush and the read
/// cache hold for a while, then free. With glibc's defaults such buffers go back to the kernel
/// (`munmap`, or a trimmed heap), so new requests faulted fresh pages in: most of the broker's
/// page faults at 100+ MiB/s. Keeping freed memory for reuse (allocations under 32 MiB, the
/// most glibc accepts, from the heap; up to 256 MiB of free heap kept) cut page faults by a
/// third (BENCHMARKS.md). Glibc reads these settings only at start, so the broker starts itself
/// again once with them in `GLIBC_TUNABLES` (same pid, arguments and environment). It does not
/// when `GLIBC_TUNABLES` is already set, even empty (that is how to opt out), when it already
/// did (`SILT_MALLOC_TUNED`: glibc drops `GLIBC_TUNABLES` for privileged processes), or under
/// valgrind (the second start would run outside it).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const TUNED: &str = "SILT_MALLOC_TUNED";
        let under_valgrind = std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload"));
        if std::env::var_os("GLIBC_TUNABLES").is_some()
            || std::env::var_os(TUNED).is_some()
            || under_valgrind
        {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        // `exec` returns only when it failed: then run on with glibc's defaults.
        let _failed = std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .env(
                "GLIBC_TUNABLES",
                "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456",
            )
            .env(TUNED, "1")
            .exec();
    }
}
