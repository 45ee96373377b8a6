//! `cargo xtask`: developer tasks, in Rust so they run wherever cargo does
//! (the alias lives in `.cargo/config.toml`). The crate's one dependency is
//! tokio (for catching Ctrl-C in `cluster`), so it builds in seconds; heavy
//! work is done by shelling out to cargo.
//!
//! Tasks:
//! - `sim`: the deterministic simulator (raft-core's `simulate` example, built
//!   in release). `cargo xtask sim --seeds N [--start S]` runs a batch on
//!   every core; `cargo xtask sim --seed S` replays one seed with its trace;
//!   `cargo xtask sim --bugs` checks that each injected protocol bug is caught.
//! - `cluster`: a local cluster of raft-node processes with generated
//!   certificates (see `cluster.rs`); Ctrl-C stops it cleanly.
//! - `chaos`: real raft-node processes under faults, with the clients'
//!   history checked for linearizability (see `chaos.rs` and raft-chaos).
//! - `bench`: raft-node against etcd on this machine (raft-node's
//!   `bench_cluster` example, built in release); `bench runtime` runs the
//!   runtime benchmark of raft-core.
//! - `figure16`: the Raft paper's Figure 16 (time to elect a new leader after
//!   a crash) simulated with raft-core's engine (its `figure16` example).

mod chaos;
mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <task> [arguments]

tasks:
  sim --seeds N [--start S] [--threads T] [--steps N] [--bug NAME]
        run N simulator seeds in release on every core; exit non-zero on any failure
  sim --seed S [--messages | --quiet] [--steps N] [--bug NAME]
        replay one seed and print its trace (bit for bit the same every time)
  sim --bugs [--max-seeds N] [--start S] [--steps N]
        switch on each injected protocol bug in turn and report how many seeds catch it
        (bugs: vote_without_log_check, commit_previous_terms, apply_before_commit, forget_vote,
        count_self_vote_early, lead_before_own_write)
  cluster [--nodes N] [--base-port P] [--fresh] [--release]
        build raft-node, make certificates for cluster id `local` (or reuse them), and run N nodes
        (default 3) on 127.0.0.1: node i serves clients on P+i (default P = 8080: 8081, 8082, ...)
        and peers on P-1000+i (7081, ...). Data lives in target/xtask-cluster/node-i, logs in
        target/xtask-cluster/node-i.log. The first start bootstraps the nodes together; later
        starts restart them from their data (with the same --base-port: the nodes remember their
        addresses). --fresh wipes the data first (certificates are kept).
        Ctrl-C stops every node with SIGTERM and waits for it.
  chaos [--nodes 3|5] [--duration D] [--faults LIST] [--seed S] [--clients C] [--subnet B] [--release]
        build raft-node and raft-chaos (debug, or --release) and run N nodes on 127.<B>.0.x (default
        subnet 77) with --dangerous-fault-injection; C clients (default 6) read, write and compare-and-set
        a few keys on random nodes while faults from LIST (default all: kill, pause, partition, delay,
        drop, torn, unsynced, membership, transfer) follow a schedule drawn from seed S. D is like 90s, 10m, 2h
        (default 60s). Partitions need nftables (apt-get install -y nftables) and root. Then everything
        heals, the replicas must converge to one digest, every key is read, and the history is checked
        for linearizability and lost acknowledged writes. Writes target/chaos/S/{report.md,timeline.svg,
        history.json,node-*.log}; exits non-zero on any violation. Re-check a history with
        `raft-chaos check history.json`.
  bench [--seconds N] [--connections 1,16,64,256] [--read-connections 64] [--failover-trials 200]
        [--skip-load] [--skip-etcd] [--report-dir target/bench]
        build raft-node in release, then run a 3-node raft-node cluster and a 3-member etcd
        cluster (Debian: apt-get install etcd-server) one after the other, drive both with the
        same HTTP load (256-byte writes, linearizable reads), then kill -9 each one's leader
        over many trials (150-300 ms election timeouts); print a Markdown report with the
        machine's fdatasync and loopback RTT, throughput, p50/p99, peak RSS, the failover
        distribution and ratios to etcd, and write it with SVG plots into the report directory
  bench runtime [arguments of raft-core's runtime bench]
        the raft-core runtime benchmark (3 runtimes in one process, in-memory stores)
  figure16 [--trials 1000] [--variant both|engine|paper] [--model disk|network] [--tick-us 100]
        [--lan-delay-us 100-500] [--disk-us 11000-15000] [--out target/figure16]
        [--request-delay-us A-B] [--answer-delay-us A-B]
        simulate the Raft paper's Figure 16 (5 servers, leader crashed, time until a new leader)
        with raft-core's engine; print the table and write SVG CDFs. `disk`: a LAN and a synced
        write before every answer that needs one; `network`: 4.5-8.5 ms one-way delays and
        instant disks. The delay options split the broadcast time differently between requests
        and answers (sensitivity checks only)";

fn main() -> ExitCode {
    let mut arguments = std::env::args().skip(1);
    let task = arguments.next();
    let rest: Vec<String> = arguments.collect();
    match task.as_deref() {
        Some("sim") => simulate(&rest),
        Some("cluster") => cluster::cluster(&rest),
        Some("chaos") => chaos::chaos(&rest),
        Some("bench") => bench(&rest),
        Some("figure16") => figure16(&rest),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown task: {other}\n\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The workspace root: the xtask crate sits one level below it.
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map(Path::to_path_buf).unwrap_or(manifest_dir)
}

/// Runs the simulator in release with the given arguments, passing its exit
/// status through.
fn simulate(arguments: &[String]) -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "raft-core",
            "--features",
            "testing",
            "--example",
            "simulate",
            "--",
        ])
        .args(arguments);
    run(command)
}

/// `bench`: the side-by-side cluster benchmark, or `bench runtime`.
fn bench(arguments: &[String]) -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(&cargo);
    command.current_dir(workspace_root());
    if arguments.first().map(String::as_str) == Some("runtime") {
        command.args(["bench", "-p", "raft-core", "--bench", "runtime", "--"]).args(&arguments[1..]);
        return run(command);
    }
    let mut build = Command::new(&cargo);
    build.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "raft-node",
        "--bin",
        "raft-node",
    ]);
    if run(build) != ExitCode::SUCCESS {
        return ExitCode::FAILURE;
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let binary = target.join("release/raft-node");
    command
        .args(["run", "--quiet", "--release", "-p", "raft-node", "--example", "bench_cluster", "--"])
        .arg("--raft-node")
        .arg(binary)
        .args(arguments);
    run(command)
}

/// `figure16`: raft-core's `figure16` example, built in release.
fn figure16(arguments: &[String]) -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["run", "--quiet", "--release", "-p", "raft-core", "--example", "figure16", "--"])
        .args(arguments);
    run(command)
}

fn run(mut command: Command) -> ExitCode {
    match command.status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(status.code().map_or(1, |code| code.clamp(1, 255) as u8)),
        Err(error) => {
            eprintln!("cannot run {command:?}: {error}");
            ExitCode::FAILURE
        }
    }
}
