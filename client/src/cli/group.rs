//! `silt group`: list, describe, delete consumer groups and reset their offsets.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use silt_api::v1::DescribeGroupResponse;
use silt_client::ResetSpec;

use super::connect;

/// Consumer groups.
#[derive(Debug, Args)]
pub(crate) struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List every group of the cluster.
    List,
    /// Show a group: its members with their partitions, and per partition the committed
    /// offset, high watermark and lag.
    Describe {
        group: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Delete a group without active members, with its committed offsets.
    Delete { group: String },
    /// Move a group's committed offsets of a topic (the group must have no active members).
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest, latest, offset:N, timestamp:RFC3339 or shift-by:N (N may be negative).
        #[arg(long, value_parser = parse_reset, allow_hyphen_values = true)]
        to: ResetSpec,
        /// Show what would change without changing it.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_reset(s: &str) -> Result<ResetSpec, String> {
    let number = |n: &str| -> Result<i64, String> {
        n.parse().map_err(|_| format!("'{n}' is not a number"))
    };
    match s {
        "earliest" => Ok(ResetSpec::Earliest),
        "latest" => Ok(ResetSpec::Latest),
        _ => {
            if let Some(n) = s.strip_prefix("offset:") {
                let o = number(n)?;
                if o < 0 {
                    return Err("offsets are not negative".into());
                }
                Ok(ResetSpec::Offset(o))
            } else if let Some(n) = s.strip_prefix("shift-by:") {
                Ok(ResetSpec::ShiftBy(number(n)?))
            } else if let Some(time) = s.strip_prefix("timestamp:") {
                Ok(ResetSpec::Timestamp(super::parse_time_ms(time)?))
            } else {
                Err(format!(
                    "'{s}' is not earliest, latest, offset:N, timestamp:RFC3339 or shift-by:N"
                ))
            }
        }
    }
}

pub(crate) async fn run(broker: &str, args: GroupArgs) -> anyhow::Result<ExitCode> {
    let client = connect(broker).await?;
    match args.command {
        GroupCommand::List => {
            for g in client.list_groups().await? {
                println!("{g}");
            }
        }
        GroupCommand::Describe { group, json } => {
            let d = client.describe_group(&group).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&describe_json(&d))?);
            } else {
                print_describe(&d);
            }
        }
        GroupCommand::Delete { group } => {
            client.delete_group(&group).await?;
            println!("deleted group {group}");
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to,
            dry_run,
        } => {
            let r = client
                .reset_group_offsets(&group, &topic, to, dry_run)
                .await?;
            println!("PARTITION  BEFORE  AFTER");
            for p in &r.partitions {
                let before = if p.before < 0 {
                    "-".to_string()
                } else {
                    p.before.to_string()
                };
                println!("{:<9}  {:<6}  {}", p.partition, before, p.after);
            }
            if dry_run {
                println!("(dry run: nothing changed)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn partitions_text(list: &[silt_api::v1::TopicPartitions]) -> String {
    let parts: Vec<String> = list
        .iter()
        .flat_map(|tp| {
            tp.partitions
                .iter()
                .map(move |p| format!("{}/{p}", tp.topic))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

fn print_describe(d: &DescribeGroupResponse) {
    println!(
        "group {}  state {}  epoch {}  coordinator {}",
        d.group, d.state, d.group_epoch, d.coordinator
    );
    println!();
    println!("MEMBER            CLIENT                HOST             EPOCH  ASSIGNED");
    for m in &d.members {
        println!(
            "{:<16}  {:<20}  {:<15}  {:<5}  {}{}",
            m.member_id,
            m.client_id,
            m.host,
            m.member_epoch,
            partitions_text(&m.assigned),
            if m.revoking.is_empty() {
                String::new()
            } else {
                format!(" (releasing {})", partitions_text(&m.revoking))
            }
        );
    }
    println!();
    println!("TOPIC             PARTITION  COMMITTED  HIGH-WATERMARK  LAG       MEMBER");
    for p in &d.partitions {
        let committed = if p.committed < 0 {
            "-".to_string()
        } else {
            p.committed.to_string()
        };
        println!(
            "{:<16}  {:<9}  {:<9}  {:<14}  {:<8}  {}",
            p.topic,
            p.partition,
            committed,
            p.high_watermark,
            p.lag,
            if p.member_id.is_empty() {
                "-"
            } else {
                &p.member_id
            }
        );
    }
}

fn describe_json(d: &DescribeGroupResponse) -> serde_json::Value {
    let tps = |list: &[silt_api::v1::TopicPartitions]| -> serde_json::Value {
        list.iter()
            .flat_map(|tp| {
                tp.partitions
                    .iter()
                    .map(move |p| serde_json::json!({"topic": tp.topic, "partition": p}))
            })
            .collect()
    };
    serde_json::json!({
        "group": d.group,
        "state": d.state,
        "group_epoch": d.group_epoch,
        "coordinator": d.coordinator,
        "members": d.members.iter().map(|m| serde_json::json!({
            "member_id": m.member_id,
            "instance_id": m.instance_id,
            "client_id": m.client_id,
            "host": m.host,
            "member_epoch": m.member_epoch,
            "topics": m.topics,
            "assignment": tps(&m.assigned),
            "revoking": tps(&m.revoking),
        })).collect::<Vec<_>>(),
        "partitions": d.partitions.iter().map(|p| serde_json::json!({
            "topic": p.topic,
            "partition": p.partition,
            "committed": p.committed,
            "high_watermark": p.high_watermark,
            "lag": p.lag,
            "member_id": p.member_id,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_targets_parse() {
        assert_eq!(parse_reset("earliest").unwrap(), ResetSpec::Earliest);
        assert_eq!(parse_reset("latest").unwrap(), ResetSpec::Latest);
        assert_eq!(parse_reset("offset:5").unwrap(), ResetSpec::Offset(5));
        assert_eq!(parse_reset("shift-by:-3").unwrap(), ResetSpec::ShiftBy(-3));
        assert_eq!(
            parse_reset("timestamp:2025-01-31T12:00:00Z").unwrap(),
            ResetSpec::Timestamp(1_738_324_800_000)
        );
        for bad in ["first", "offset:-1", "shift-by:x", "timestamp:now"] {
            assert!(parse_reset(bad).is_err(), "{bad}");
        }
    }
}
