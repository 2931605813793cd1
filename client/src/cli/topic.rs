//! `silt topic`: create, alter, list, describe and delete topics through the `Admin` service,
//! printing plain aligned tables.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use silt_api::v1::{AlterTopicRequest, TopicConfig, TopicInfo};

use super::connect;

/// Topic administration.
#[derive(Debug, Args)]
pub(crate) struct TopicArgs {
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: [a-zA-Z0-9._-], 1 to 249 characters.
        name: String,
        /// Number of partitions (1 to 10000).
        #[arg(long, short = 'p')]
        partitions: u32,
        /// How long records are kept, in ms (-1: forever) [default: the broker's, 7 days].
        #[arg(long, allow_negative_numbers = true)]
        retention_ms: Option<i64>,
        /// Most bytes kept per partition, oldest batches dropped first (e.g. 10GiB; -1: no
        /// limit) [default: no limit].
        #[arg(long, allow_negative_numbers = true, value_parser = parse_retention_bytes)]
        retention_bytes: Option<i64>,
        /// Largest record accepted, in bytes [default: the broker's, 1 MiB].
        #[arg(long)]
        max_record_bytes: Option<u32>,
        /// What removes old records: retention (delete), keeping only the latest record of each
        /// key (compact; every record then needs a key), or both [default: delete].
        #[arg(long, value_enum)]
        cleanup_policy: Option<CleanupPolicy>,
        /// How long a compacted topic keeps a tombstone (a record with a null value) after
        /// compaction first kept it, in ms, so consumers see the key's deletion [default:
        /// 86400000, one day].
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
        delete_retention_ms: Option<i64>,
    },
    /// Change a live topic's retention or cleanup policy; the next retention and compaction
    /// passes apply it.
    Alter {
        /// Topic name.
        name: String,
        /// How long records are kept, in ms (-1: forever).
        #[arg(long, allow_negative_numbers = true)]
        retention_ms: Option<i64>,
        /// Most bytes kept per partition (e.g. 10GiB; -1: no limit).
        #[arg(long, allow_negative_numbers = true, value_parser = parse_retention_bytes)]
        retention_bytes: Option<i64>,
        /// What removes old records: retention (delete), key compaction (compact), or both.
        #[arg(long, value_enum)]
        cleanup_policy: Option<CleanupPolicy>,
        /// How long a compacted topic keeps a tombstone, in ms.
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
        delete_retention_ms: Option<i64>,
    },
    /// List all topics.
    List,
    /// Show a topic and the offsets of each partition.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic (its data is removed in the background).
    Delete {
        /// Topic name.
        name: String,
    },
}

/// `--cleanup-policy`, with Kafka's spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CleanupPolicy {
    /// Old records go by retention (time and size).
    Delete,
    /// Only the latest record of each key is kept; retention does not apply.
    Compact,
    /// Compacted by key, and old records go by retention too.
    #[value(name = "compact,delete", alias = "delete,compact")]
    CompactDelete,
}

impl CleanupPolicy {
    /// The wire spelling.
    fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }
}

pub(crate) async fn run(broker: &str, args: TopicArgs) -> anyhow::Result<ExitCode> {
    let client = connect(broker).await?;
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            max_record_bytes,
            cleanup_policy,
            delete_retention_ms,
        } => {
            let config = TopicConfig {
                retention_ms,
                max_record_bytes,
                retention_bytes,
                cleanup_policy: cleanup_policy.map(|p| p.as_str().to_string()),
                delete_retention_ms,
            };
            let topic = client.create_topic_with(&name, partitions, config).await?;
            println!(
                "created topic '{}' with {} partitions (retention {}{}, cleanup policy {}, max record bytes {})",
                topic.name,
                topic.partitions,
                format_retention(topic.retention_ms),
                format_size_limit(topic.retention_bytes),
                format_cleanup(&topic),
                topic.max_record_bytes
            );
        }
        TopicCommand::Alter {
            name,
            retention_ms,
            retention_bytes,
            cleanup_policy,
            delete_retention_ms,
        } => {
            if retention_ms.is_none()
                && retention_bytes.is_none()
                && cleanup_policy.is_none()
                && delete_retention_ms.is_none()
            {
                anyhow::bail!(
                    "nothing to change: give --retention-ms, --retention-bytes, --cleanup-policy and/or --delete-retention-ms"
                );
            }
            let request = AlterTopicRequest {
                name,
                retention_ms,
                retention_bytes,
                cleanup_policy: cleanup_policy.map(|p| p.as_str().to_string()),
                delete_retention_ms,
            };
            let topic = client.alter_topic_with(request).await?;
            println!(
                "altered topic '{}': retention {}{}, cleanup policy {}",
                topic.name,
                format_retention(topic.retention_ms),
                format_size_limit(topic.retention_bytes),
                format_cleanup(&topic)
            );
        }
        TopicCommand::List => {
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            print!("{}", topics_table(&topics));
        }
        TopicCommand::Describe { name } => {
            let described = client.describe_topic(&name).await?;
            let topic = described.topic.unwrap_or_default();
            println!("{}", topic_line(&topic));
            let mut rows = vec![row(["PARTITION", "LOG START OFFSET", "HIGH WATERMARK"])];
            let mut partitions = described.partitions;
            partitions.sort_by_key(|p| p.partition);
            rows.extend(partitions.iter().map(|p| {
                row([
                    p.partition.to_string(),
                    p.log_start_offset.to_string(),
                    p.high_watermark.to_string(),
                ])
            }));
            print!("{}", table(&rows));
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic '{name}'");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row<const N: usize>(cells: [impl Into<String>; N]) -> Vec<String> {
    cells.into_iter().map(Into::into).collect()
}

/// The `topic list` table.
fn topics_table(topics: &[TopicInfo]) -> String {
    let mut rows = vec![row([
        "NAME",
        "PARTITIONS",
        "RETENTION",
        "CLEANUP POLICY",
        "MAX RECORD BYTES",
    ])];
    rows.extend(topics.iter().map(|t| {
        row([
            t.name.clone(),
            t.partitions.to_string(),
            format_retention(t.retention_ms),
            cleanup_policy(t).to_string(),
            t.max_record_bytes.to_string(),
        ])
    }));
    table(&rows)
}

/// A topic's cleanup policy; a broker from before cleanup policies sends none and deletes.
fn cleanup_policy(t: &TopicInfo) -> &str {
    if t.cleanup_policy.is_empty() {
        "delete"
    } else {
        &t.cleanup_policy
    }
}

/// `delete`, or `compact (tombstones kept 1day)` for a compacted topic.
fn format_cleanup(t: &TopicInfo) -> String {
    let policy = cleanup_policy(t);
    if policy.split(',').any(|p| p.trim() == "compact") {
        format!(
            "{policy} (tombstones kept {})",
            format_retention(t.delete_retention_ms)
        )
    } else {
        policy.to_string()
    }
}

/// The first line of `topic describe`.
fn topic_line(t: &TopicInfo) -> String {
    let created = UNIX_EPOCH + Duration::from_millis(u64::try_from(t.created_at_ms).unwrap_or(0));
    format!(
        "topic {}  id {}  partitions {}  retention {}{}  cleanup policy {}  max record bytes {}  created {}",
        t.name,
        t.topic_id,
        t.partitions,
        format_retention(t.retention_ms),
        format_size_limit(t.retention_bytes),
        format_cleanup(t),
        t.max_record_bytes,
        humantime::format_rfc3339_millis(created)
    )
}

/// ` or 10 GiB per partition` for a size limit, nothing without one.
fn format_size_limit(bytes: i64) -> String {
    match u64::try_from(bytes) {
        Ok(b) => format!(" or {} per partition", super::format_bytes(b)),
        Err(_) => String::new(),
    }
}

/// `--retention-bytes`: a size with units, or -1 for no limit.
fn parse_retention_bytes(s: &str) -> Result<i64, String> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    let size = s.parse::<super::ByteSize>().map_err(|e| e.to_string())?;
    i64::try_from(size.0)
        .ok()
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("'{s}' must be a positive size such as 10GiB, or -1"))
}

/// A retention in ms as people read it: `7days`, `1h 30m`, `forever`.
fn format_retention(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_duration(Duration::from_millis(ms)).to_string(),
        Err(_) => "forever".to_string(),
    }
}

/// Left-aligned columns separated by two spaces, one line per row.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_reads_as_a_duration() {
        assert_eq!(format_retention(7 * 24 * 3600 * 1000), "7days");
        assert_eq!(format_retention(90_000), "1m 30s");
        assert_eq!(format_retention(-1), "forever");
    }

    #[test]
    fn list_table_aligns_columns() {
        let topics = vec![
            TopicInfo {
                name: "events".into(),
                partitions: 8,
                retention_ms: -1,
                max_record_bytes: 1_048_576,
                ..Default::default()
            },
            TopicInfo {
                name: "a".into(),
                partitions: 1,
                retention_ms: 3_600_000,
                max_record_bytes: 100,
                cleanup_policy: "compact,delete".into(),
                ..Default::default()
            },
        ];
        let out = topics_table(&topics);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME    PARTITIONS  RETENTION  CLEANUP POLICY  MAX RECORD BYTES"
        );
        assert_eq!(
            lines[1],
            "events  8           forever    delete          1048576"
        );
        assert_eq!(
            lines[2],
            "a       1           1h         compact,delete  100"
        );
    }

    #[test]
    fn compacted_topics_show_how_long_tombstones_stay() {
        let topic = |policy: &str| TopicInfo {
            cleanup_policy: policy.into(),
            delete_retention_ms: 86_400_000,
            ..Default::default()
        };
        assert_eq!(format_cleanup(&topic("delete")), "delete");
        assert_eq!(format_cleanup(&topic("")), "delete");
        assert_eq!(
            format_cleanup(&topic("compact")),
            "compact (tombstones kept 1day)"
        );
        assert_eq!(
            format_cleanup(&TopicInfo {
                delete_retention_ms: 0,
                ..topic("compact,delete")
            }),
            "compact,delete (tombstones kept 0s)"
        );
    }

    #[test]
    fn cleanup_policy_flags_take_kafka_spellings() {
        for (flag, policy) in [
            ("delete", CleanupPolicy::Delete),
            ("compact", CleanupPolicy::Compact),
            ("compact,delete", CleanupPolicy::CompactDelete),
            ("delete,compact", CleanupPolicy::CompactDelete),
        ] {
            assert_eq!(CleanupPolicy::from_str(flag, false), Ok(policy), "{flag}");
        }
        assert_eq!(CleanupPolicy::CompactDelete.as_str(), "compact,delete");
        assert!(CleanupPolicy::from_str("shred", false).is_err());
    }
}
