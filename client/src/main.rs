//! `silt`, the Silt command-line tool: topic administration (`silt topic`), producing lines
//! from stdin or a file on the fast path (`silt produce`), printing records (`silt consume`) and
//! benchmarks of the broker and of an object store (`silt bench`), and the cluster's brokers and
//! partition owners (`silt cluster status`). Every subcommand reaches the cluster through the
//! brokers of `--broker` / `SILT_BROKER` (a comma-separated list; the first reachable one is
//! used, the others for fail-over) with the `silt_client` library, whose producer and readers
//! follow partition owners and move between brokers as they come and go; failures print
//! `error: ...` with the broker's status code and exit with code 1.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::{bench, cluster, consume, group, produce, topic};

/// The Silt command-line tool: manage topics, produce and consume records, run benchmarks.
#[derive(Debug, Parser)]
#[command(name = "silt", version, propagate_version = true)]
struct Cli {
    /// The brokers' gRPC endpoints: one URL or a comma-separated list (`host:port` means
    /// `http://host:port`). The first reachable one is used, the others for fail-over.
    #[arg(
        long,
        global = true,
        env = "SILT_BROKER",
        default_value = "http://127.0.0.1:7450"
    )]
    broker: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete topics.
    Topic(topic::TopicArgs),
    /// Produce one record per input line (stdin by default).
    Produce(produce::ProduceArgs),
    /// Print records of a topic, one value per line.
    Consume(consume::ConsumeArgs),
    /// Measure the broker (produce, consume) or an object store.
    Bench(bench::BenchArgs),
    /// Inspect the cluster (live brokers, partition owners).
    Cluster(cluster::ClusterArgs),
    /// List, describe and delete consumer groups; reset their offsets.
    Group(group::GroupArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    quiet_on_broken_pipe();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `silt topic list | head -1`: once the reader of stdout is gone, printing more fails; that
/// ends the command quietly with success, as other command-line tools do, instead of a panic
/// (Rust ignores SIGPIPE, so `println!` panics on a closed pipe).
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// The error and its causes joined with `: `, skipping a cause that repeats the one before it
/// (transport errors often wrap an error with the same message).
fn error_chain(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if parts.last().is_none_or(|last| !last.ends_with(&message)) {
            parts.push(message);
        }
    }
    parts.join(": ")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Topic(args) => topic::run(&cli.broker, args).await,
        Command::Produce(args) => produce::run(&cli.broker, args).await,
        Command::Consume(args) => consume::run(&cli.broker, args).await,
        Command::Bench(args) => bench::run(&cli.broker, args).await,
        Command::Cluster(args) => cluster::run(&cli.broker, args).await,
        Command::Group(args) => group::run(&cli.broker, args).await,
    }
}
