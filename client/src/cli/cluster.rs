//! `silt cluster status`: the live brokers, as registered in metadata under their leases.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand};

use super::connect;
use super::topic::table;

/// Inspect the cluster.
#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// List the live brokers: id, address, incarnation, start time.
    Status,
}

pub(crate) async fn run(broker: &str, args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let client = connect(broker).await?;
    match args.command {
        ClusterCommand::Status => {
            let brokers = client.cluster_status().await?;
            let mut rows = vec![vec![
                "BROKER".to_string(),
                "ADDRESS".to_string(),
                "INCARNATION".to_string(),
                "STARTED".to_string(),
            ]];
            for b in &brokers {
                let started = UNIX_EPOCH + Duration::from_millis(b.started_at_ms.max(0) as u64);
                rows.push(vec![
                    b.broker_id.clone(),
                    b.address.clone(),
                    b.incarnation.to_string(),
                    humantime::format_rfc3339_millis(started).to_string(),
                ]);
            }
            print!("{}", table(&rows));
            eprintln!("{} live broker(s)", brokers.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}
