//! `silt cluster status`: the cluster as any broker sees it — the live brokers (registered in
//! metadata under their leases) with how many partitions each owns and which one is the
//! controller, and with `--partitions` (or `--topic`) the owner and ownership epoch of every
//! partition. `--json` prints the same as one JSON object.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use silt_api::v1::ClusterStatusResponse;

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
    /// List the live brokers (id, address, incarnation, start time, partitions owned, the
    /// controller) and, with --partitions, the owner of each partition.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Also list every partition with its owner and ownership epoch.
    #[arg(long)]
    partitions: bool,
    /// List the partitions of this topic only (repeatable; implies --partitions).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(broker: &str, args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let client = connect(broker).await?;
    match args.command {
        ClusterCommand::Status(args) => {
            let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
            let status = client.cluster_status_of(&topics).await?;
            let partitions = args.partitions || !args.topics.is_empty();
            if args.json {
                println!("{}", status_json(&status, partitions));
            } else {
                print!("{}", brokers_table(&status));
                if partitions {
                    println!();
                    print!("{}", partitions_table(&status));
                }
                let controller = match status.controller.as_str() {
                    "" => "none elected".to_string(),
                    id => id.to_string(),
                };
                eprintln!(
                    "{} live broker(s), controller: {controller}",
                    status.brokers.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// BROKER, ADDRESS, INCARNATION, STARTED, PARTITIONS (owned), ROLE (`controller`).
fn brokers_table(status: &ClusterStatusResponse) -> String {
    let mut rows = vec![
        [
            "BROKER",
            "ADDRESS",
            "INCARNATION",
            "STARTED",
            "PARTITIONS",
            "ROLE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for b in &status.brokers {
        let started = UNIX_EPOCH + Duration::from_millis(b.started_at_ms.max(0) as u64);
        let role = if !b.broker_id.is_empty() && b.broker_id == status.controller {
            "controller"
        } else {
            ""
        };
        rows.push(vec![
            b.broker_id.clone(),
            b.address.clone(),
            b.incarnation.to_string(),
            humantime::format_rfc3339_millis(started).to_string(),
            b.partitions_owned.to_string(),
            role.to_string(),
        ]);
    }
    table(&rows)
}

/// TOPIC, PARTITION, OWNER (broker id, `-` while unowned), EPOCH.
fn partitions_table(status: &ClusterStatusResponse) -> String {
    let mut rows = vec![
        ["TOPIC", "PARTITION", "OWNER", "EPOCH"]
            .map(String::from)
            .to_vec(),
    ];
    for p in &status.partitions {
        let owner = if p.broker_id.is_empty() {
            "-".to_string()
        } else {
            p.broker_id.clone()
        };
        rows.push(vec![
            p.topic.clone(),
            p.partition.to_string(),
            owner,
            p.epoch.to_string(),
        ]);
    }
    table(&rows)
}

fn status_json(status: &ClusterStatusResponse, partitions: bool) -> Value {
    let brokers: Vec<Value> = status
        .brokers
        .iter()
        .map(|b| {
            json!({
                "broker_id": b.broker_id,
                "address": b.address,
                "incarnation": b.incarnation,
                "started_at_ms": b.started_at_ms,
                "partitions_owned": b.partitions_owned,
                "controller": !b.broker_id.is_empty() && b.broker_id == status.controller,
            })
        })
        .collect();
    let mut out = json!({ "controller": status.controller, "brokers": brokers });
    if partitions {
        out["partitions"] = status
            .partitions
            .iter()
            .map(|p| {
                json!({
                    "topic": p.topic,
                    "partition": p.partition,
                    "broker_id": p.broker_id,
                    "address": p.address,
                    "epoch": p.epoch,
                })
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use silt_api::v1::{BrokerInfo, PartitionOwner};

    fn status() -> ClusterStatusResponse {
        let broker = |id: &str, port: u16, owned| BrokerInfo {
            broker_id: id.into(),
            address: format!("127.0.0.1:{port}"),
            incarnation: 7,
            started_at_ms: 0,
            partitions_owned: owned,
        };
        let owner = |partition, id: &str, epoch| PartitionOwner {
            topic: "t".into(),
            partition,
            broker_id: id.into(),
            address: String::new(),
            epoch,
        };
        ClusterStatusResponse {
            brokers: vec![broker("b1", 7450, 1), broker("b2", 7451, 0)],
            partitions: vec![owner(0, "b1", 3), owner(1, "", 4)],
            controller: "b2".into(),
        }
    }

    #[test]
    fn brokers_show_partitions_owned_and_the_controller() {
        let text = brokers_table(&status());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("BROKER") && lines[0].contains("PARTITIONS"));
        assert!(lines[1].starts_with("b1") && !lines[1].ends_with("controller"));
        assert!(lines[2].starts_with("b2") && lines[2].ends_with("controller"));
    }

    #[test]
    fn unowned_partitions_show_a_dash() {
        let text = partitions_table(&status());
        assert_eq!(
            text,
            "TOPIC  PARTITION  OWNER  EPOCH\nt      0          b1     3\nt      1          -      4\n"
        );
    }

    #[test]
    fn json_marks_the_controller() {
        let value = status_json(&status(), true);
        assert_eq!(value["controller"], "b2");
        assert_eq!(value["brokers"][1]["controller"], true);
        assert_eq!(value["brokers"][0]["partitions_owned"], 1);
        assert_eq!(value["partitions"][1]["broker_id"], "");
        assert!(status_json(&status(), false).get("partitions").is_none());
    }
}
