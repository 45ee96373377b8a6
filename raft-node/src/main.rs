//! `raft-node`: runs a node, or talks to one (see `raft-node --help`).

use std::process::ExitCode;

use clap::Parser;
use raft_node::cli::{self, Cli, CliError, Command};
use raft_node::config::{NodeConfig, RunArgs};

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with code 2.
    let command = Cli::parse().command_or_run();
    let outcome = match command {
        Command::Run(args) => run_node(&args),
        Command::Certs(args) => cli::certs(&args),
        client_command => {
            client_runtime().and_then(|runtime| runtime.block_on(cli::run_client_command(client_command)))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Resolves the configuration, then runs the node on a multi-thread runtime
/// until it shuts down.
fn run_node(args: &RunArgs) -> Result<(), CliError> {
    init_tracing();
    let config = NodeConfig::resolve(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("raft-node")
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(raft_node::node::run(config))?;
    Ok(())
}

/// A client command sends a few requests: one thread is plenty and starts
/// faster than a pool.
fn client_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CliError::Runtime)
}

/// Logs to stderr, filtered by `RAFT_LOG` (an env-filter directive such as
/// `info` or `raft_core=debug,info`), `info` when unset.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RAFT_LOG") {
        Ok(directive) => EnvFilter::try_new(&directive).unwrap_or_else(|error| {
            eprintln!("warning: RAFT_LOG={directive:?} is not a valid filter ({error}); logging at info");
            EnvFilter::new("info")
        }),
        Err(_) => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
