//! `raft-chaos`: runs a chaos test against real raft-node processes, or
//! re-checks a recorded history. Usually started by `cargo xtask chaos`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use raft_chaos::history::{self, HistoryFile};
use raft_chaos::run::{self, RunOptions};
use raft_chaos::schedule::FaultList;
use raft_chaos::workload::Mix;

/// Chaos testing of raft-node processes.
#[derive(Parser, Debug)]
#[command(name = "raft-chaos", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a cluster, run clients and faults, check, and write a report.
    Run(RunArgs),
    /// Re-check a recorded history.json; exits non-zero on any violation.
    Check {
        /// The history file of a run.
        history: PathBuf,
        /// Also rewrite report.md and timeline.svg next to it.
        #[arg(long)]
        rewrite: bool,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The raft-node binary.
    #[arg(long)]
    raft_node: PathBuf,
    /// Initial voters.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// How long clients and faults run: seconds, or with a unit (90s, 10m, 2h).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Fault kinds: all, none, or a list of kill, pause, partition, delay,
    /// drop, torn, unsynced, membership, transfer.
    #[arg(long, default_value = "all")]
    faults: FaultList,
    /// The seed of the fault schedule and the clients.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: u64,
    /// Keys in use at a time.
    #[arg(long, default_value_t = 4)]
    keys: u64,
    /// Operations per key before the clients move to fresh keys (bounds
    /// the checker's work per key).
    #[arg(long, default_value_t = 500)]
    ops_per_key: u64,
    /// The directory for the report, history, logs and data (default:
    /// target/chaos/<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Node addresses are 127.<subnet>.0.<id>; runs at the same time need
    /// different subnets (and each gets its own firewall table).
    #[arg(long, default_value_t = 77)]
    subnet: u8,
    /// Real time per Raft tick, passed to every node.
    #[arg(long)]
    tick_interval_ms: Option<u64>,
    /// Snapshot threshold of every node, in log entries (small, so that
    /// snapshots and their transfer happen during the faults).
    #[arg(long, default_value_t = 2_000)]
    snapshot_log_entries: u64,
    /// Keep the nodes' data directories after a passing run.
    #[arg(long)]
    keep_data: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 10m or 2h"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}: use s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run_chaos(args),
        Command::Check { history, rewrite } => check(&history, rewrite),
    }
}

fn run_chaos(args: RunArgs) -> ExitCode {
    if !(1..=9).contains(&args.nodes) || args.clients == 0 || args.keys == 0 {
        eprintln!("raft-chaos: --nodes must be 1 to 9, --clients and --keys at least 1");
        return ExitCode::from(2);
    }
    let mut node_flags = vec![format!("--snapshot-log-entries={}", args.snapshot_log_entries)];
    if let Some(tick) = args.tick_interval_ms {
        node_flags.push(format!("--tick-interval-ms={tick}"));
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("target/chaos").join(args.seed.to_string()));
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let options = RunOptions {
        nodes: args.nodes,
        duration: args.duration,
        faults: args.faults.0.clone(),
        seed: args.seed,
        clients: args.clients,
        mix: Mix { keys: args.keys, ops_per_key: args.ops_per_key, read_percent: 40, cas_percent: 25 },
        raft_node: args.raft_node.clone(),
        out: out.clone(),
        subnet: args.subnet,
        node_flags,
        keep_data: args.keep_data,
        command,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("raft-chaos: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(options)) {
        Ok((history, findings)) => {
            let passed = findings.passed(&history);
            println!(
                "raft-chaos: {}: {} operations, {} faults; {}; {} lost writes; replicas {}; report in {}",
                if passed { "PASS" } else { "FAIL" },
                history.records.len(),
                history.faults.len(),
                short_verdict(&findings.verdict),
                findings.lost_writes.len(),
                if findings.replicas_identical { "identical" } else { "NOT identical" },
                out.join("report.md").display()
            );
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("raft-chaos: the run failed: {error}");
            ExitCode::from(3)
        }
    }
}

fn short_verdict(verdict: &raft_core::testing::linearizability::Verdict) -> String {
    match verdict {
        raft_core::testing::linearizability::Verdict::NotLinearizable { key, .. } => {
            format!("NOT linearizable on k{key}")
        }
        other => other.to_string(),
    }
}

fn check(path: &std::path::Path, rewrite: bool) -> ExitCode {
    let history: HistoryFile = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(history) => history,
        Err(error) => {
            eprintln!("raft-chaos: cannot read {}: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    let findings = match history::check(&history) {
        Ok(findings) => findings,
        Err(error) => {
            eprintln!("raft-chaos: {} is malformed: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    if rewrite {
        let directory = path.parent().unwrap_or(std::path::Path::new("."));
        let command = format!("raft-chaos check {}", path.display());
        if let Err(error) = run::write_outputs(directory, &history, &findings, &command) {
            eprintln!("raft-chaos: {error}");
            return ExitCode::FAILURE;
        }
    }
    println!("{}", findings.verdict);
    println!("lost acknowledged writes: {}", findings.lost_writes.len());
    println!("keys without a final read: {}", findings.unread_keys.len());
    println!("replicas identical: {}", findings.replicas_identical);
    println!("nodes that exited on their own: {}", history.crashes.len());
    if findings.passed(&history) {
        println!("PASS");
        ExitCode::SUCCESS
    } else {
        println!("FAIL");
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
