//! The `raft-node` command line (DESIGN.md §7.3): running a node, the client
//! commands over the HTTP API, and `certs` to make a cluster CA and node
//! certificates.
//!
//! Parsing is clap's derive; `main.rs` builds the runtime and calls
//! [`run_client_command`], [`certs`] or the node. Every failure is a
//! [`CliError`] whose [`CliError::exit_code`] follows the table in
//! [`EXIT_CODES`].

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use raft_core::types::NodeId;
use raft_transport_quic::certs::{CaFiles, CertificateError, ClusterCa, NodeFiles};
use raft_transport_quic::ClusterId;
use reqwest::StatusCode;

use crate::api::{AddMemberRequest, CheckpointList, ClusterStatus, Consistency, MembershipResult};
use crate::client::{Client, ClientError, ClientOptions, WriteOptions, DEFAULT_ENDPOINT};
use crate::config::{ConfigError, RunArgs};
use crate::node::NodeError;

/// The exit codes, as shown in `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (connection, TLS, server error, bad input file, ...)
  2  usage error (bad flags or arguments)
  3  precondition failed (412: --if-match / --if-none-match did not hold)
  4  not found (the key, the member, or the checkpoint does not exist)";

const ABOUT: &str = "A replicated, linearizable key-value node (Raft), and a client for its HTTP API";

const LONG_ABOUT: &str = "\
A replicated, linearizable key-value node (Raft), and a client for its HTTP API.

With no subcommand, runs a single-node development cluster: data under ./raft-data, \
client API on http://127.0.0.1:8080, peers on 127.0.0.1:7080 (same as `raft-node run`).";

const MAIN_EXAMPLES: &str = "\
Examples:
  raft-node                                   # a single-node development cluster
  raft-node put greeting hello
  raft-node get greeting
  raft-node status --endpoint http://127.0.0.1:8081
  raft-node certs --cluster-id prod --out certs --node 1 --node 2 --node 3 --address 10.0.0.1

Logging (run): RAFT_LOG=debug (an env-filter directive; default info).";

/// `raft-node`.
#[derive(Debug, Parser)]
#[command(
    name = "raft-node",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = format!("{MAIN_EXAMPLES}\n\n{EXIT_CODES}"),
)]
pub struct Cli {
    /// What to do; none runs the development node.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The command to run: `run` with its defaults when none was given.
    /// The defaults come from parsing `raft-node run`, so environment
    /// variables such as `RAFT_NODE_CONFIG` still apply.
    pub fn command_or_run(self) -> Command {
        match self.command {
            Some(command) => command,
            None => match Cli::try_parse_from(["raft-node", "run"]) {
                Ok(Cli { command: Some(command) }) => command,
                // Only an invalid environment variable can make this fail;
                // the node then starts from the built-in defaults.
                _ => Command::Run(Box::default()),
            },
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (the default when no subcommand is given).
    #[command(after_help = RUN_HELP)]
    Run(Box<RunArgs>),
    /// Set a key to a value.
    #[command(after_help = PUT_HELP)]
    Put(PutArgs),
    /// Print a key's value (raw bytes on stdout).
    #[command(after_help = GET_HELP)]
    Get(GetArgs),
    /// Delete a key.
    #[command(after_help = DELETE_HELP)]
    Delete(DeleteArgs),
    /// List keys and their versions.
    #[command(after_help = LIST_HELP)]
    List(ListArgs),
    /// Show a node's view of the cluster: role, term, leader, indexes, members.
    #[command(after_help = STATUS_HELP)]
    Status(StatusArgs),
    /// Change the cluster's membership (needs the admin token when one is set).
    #[command(subcommand)]
    Members(MembersCommand),
    /// Hand leadership to another voter.
    #[command(after_help = TRANSFER_HELP)]
    TransferLeader(TransferArgs),
    /// Take a snapshot on the node now (compacts its log).
    #[command(after_help = SNAPSHOT_HELP)]
    Snapshot(SnapshotArgs),
    /// Named checkpoints of the whole cluster: create, list, roll back to,
    /// delete, export (mutations need the admin token when one is set).
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Make a cluster CA and node certificates (PEM files).
    #[command(after_help = CERTS_HELP)]
    Certs(CertsArgs),
}

const RUN_HELP: &str = "\
Examples:
  raft-node run                               # development mode, like plain `raft-node`
  raft-node run --id 1 --cluster-id prod --bootstrap \\
      --initial-member 1=10.0.0.1:7080=http://10.0.0.1:8080 \\
      --initial-member 2=10.0.0.2:7080=http://10.0.0.2:8080 \\
      --initial-member 3=10.0.0.3:7080=http://10.0.0.3:8080 \\
      --listen-client 10.0.0.1:8080 --listen-peer 10.0.0.1:7080 \\
      --tls-ca certs/ca.pem --tls-cert certs/node-1.pem --tls-key certs/node-1.key
  raft-node run --config /etc/raft/node.toml  # restart from the data directory

Logging: RAFT_LOG=debug (an env-filter directive; default info).";

/// Where the node is and how to authenticate: shared by every client command.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// The node's client API base URL (any node: followers forward to the leader).
    #[arg(long, env = "RAFT_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_name = "URL")]
    pub endpoint: String,
    /// The CA certificate (PEM) to trust for an https:// endpoint: the cluster's ca.pem.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM), for nodes that require one.
    #[arg(long, value_name = "PEM", requires = "client_key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    // The id differs from the flag because `key` is the positional key of
    // put, get and delete.
    #[arg(long = "key", id = "client_key", value_name = "PEM", requires = "cert")]
    pub client_key: Option<PathBuf>,
    /// A file holding the admin token (membership, leader transfer, snapshot).
    /// Without it, the token is read from the RAFT_ADMIN_TOKEN environment variable.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How long a request may take, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

/// `put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key (any UTF-8 text without control characters; '/' is fine).
    pub key: String,
    /// The value; `-` reads it from stdin.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from this file instead.
    #[arg(long, short = 'f', value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Write only if the key exists at this version (compare-and-set).
    #[arg(long, value_name = "VERSION", conflicts_with = "if_none_match")]
    pub if_match: Option<u64>,
    /// Write only if the key does not exist (create).
    #[arg(long)]
    pub if_none_match: bool,
    /// `<client>/<sequence>`: a retry with the same key is applied once.
    #[arg(long, value_name = "CLIENT/SEQ")]
    pub idempotency_key: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

const PUT_HELP: &str = "\
Prints the key's new version (the index of the write).

Examples:
  raft-node put greeting hello
  raft-node put config/app.json --file app.json
  echo -n hi | raft-node put greeting -
  raft-node put counter 8 --if-match 41       # compare-and-set on version 41
  raft-node put lock me --if-none-match       # create only

Exit codes: 0 written, 3 precondition failed, 1 other failures, 2 usage.";

/// `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// How fresh the read must be.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,
    /// Also print the version to stderr.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Print {"key", "version", "value"} as JSON instead of the raw value
    /// ("value_hex" instead of "value" when the value is not UTF-8).
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

const GET_HELP: &str = "\
Examples:
  raft-node get greeting
  raft-node get greeting --verbose --consistency stale
  raft-node get config/app.json > app.json

Exit codes: 0 found, 4 not found, 1 other failures, 2 usage.";

/// `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    /// Delete only if the key is at this version.
    #[arg(long, value_name = "VERSION")]
    pub if_match: Option<u64>,
    /// `<client>/<sequence>`: a retry with the same key is applied once.
    #[arg(long, value_name = "CLIENT/SEQ")]
    pub idempotency_key: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

const DELETE_HELP: &str = "\
Examples:
  raft-node delete greeting
  raft-node delete counter --if-match 42

Exit codes: 0 deleted, 3 precondition failed, 4 not found, 1 other failures, 2 usage.";

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// At most this many keys (the server's default without it).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Print the raw JSON listing.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

const LIST_HELP: &str = "\
Prints one key per line: the key, a tab, its version.

Examples:
  raft-node list
  raft-node list --prefix config/ --limit 100";

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the JSON answer of GET /v1/cluster.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

const STATUS_HELP: &str = "\
Examples:
  raft-node status
  raft-node status --endpoint http://127.0.0.1:8082 --json";

/// `members …`.
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Add a node, as a learner unless --voter.
    #[command(after_help = MEMBERS_ADD_HELP)]
    Add(MembersAddArgs),
    /// Make a learner a voter (once it caught up).
    #[command(after_help = MEMBERS_PROMOTE_HELP)]
    Promote(MemberIdArgs),
    /// Remove a voter or a learner.
    #[command(after_help = MEMBERS_REMOVE_HELP)]
    Remove(MemberIdArgs),
}

/// `members add`.
#[derive(Debug, Args)]
pub struct MembersAddArgs {
    /// The new node's id.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// The new node's peer (QUIC) address, host:port.
    #[arg(long, value_name = "HOST:PORT")]
    pub peer_address: String,
    /// The new node's client API base URL.
    #[arg(long, value_name = "URL")]
    pub client_address: String,
    /// Add it as a voter directly instead of as a learner.
    #[arg(long)]
    pub voter: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

const MEMBERS_ADD_HELP: &str = "\
Examples:
  raft-node members add 4 --peer-address 10.0.0.4:7080 --client-address http://10.0.0.4:8080
  raft-node members add 4 --peer-address 10.0.0.4:7080 --client-address http://10.0.0.4:8080 --voter \\
      --token-file admin.token

Start the new node first with `raft-node run --join <any member's URL>`.";

/// `members promote` and `members remove`.
#[derive(Debug, Args)]
pub struct MemberIdArgs {
    /// The node's id.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

const MEMBERS_PROMOTE_HELP: &str = "\
Example:
  raft-node members promote 4";

const MEMBERS_REMOVE_HELP: &str = "\
Example:
  raft-node members remove 4

Exit codes: 0 removed, 4 not a member, 1 other failures, 2 usage.";

/// `transfer-leader`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// The voter to hand leadership to; without it, the most up-to-date one.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    pub id: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

const TRANSFER_HELP: &str = "\
Examples:
  raft-node transfer-leader        # to the most up-to-date voter
  raft-node transfer-leader 2";

/// `snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

const SNAPSHOT_HELP: &str = "\
Example:
  raft-node snapshot --endpoint http://127.0.0.1:8082";

/// `checkpoint …`.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Create a checkpoint of the cluster's state now.
    #[command(after_help = CHECKPOINT_CREATE_HELP)]
    Create(CheckpointNameArgs),
    /// List the checkpoints durable on the node asked.
    #[command(after_help = CHECKPOINT_LIST_HELP)]
    List(CheckpointListArgs),
    /// Roll the whole cluster's state back to a checkpoint.
    #[command(after_help = CHECKPOINT_ROLLBACK_HELP)]
    Rollback(CheckpointNameArgs),
    /// Delete a checkpoint on every node.
    #[command(after_help = CHECKPOINT_DELETE_HELP)]
    Delete(CheckpointNameArgs),
    /// Download a checkpoint as a file, to start a new cluster from.
    #[command(after_help = CHECKPOINT_EXPORT_HELP)]
    Export(CheckpointExportArgs),
}

/// `checkpoint create`, `rollback` and `delete`.
#[derive(Debug, Args)]
pub struct CheckpointNameArgs {
    /// The checkpoint's name: 1 to 128 characters from A-Z a-z 0-9 . _ - (not starting with '.').
    pub name: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

/// `checkpoint list`.
#[derive(Debug, Args)]
pub struct CheckpointListArgs {
    /// Print the JSON answer of GET /v1/checkpoints.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

/// `checkpoint export`.
#[derive(Debug, Args)]
pub struct CheckpointExportArgs {
    /// The checkpoint's name.
    pub name: String,
    /// Where to write the file (default: NAME.checkpoint; `-` for stdout).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectArgs,
}

const CHECKPOINT_CREATE_HELP: &str = "\
Commits a checkpoint entry through the leader; every node keeps the state at that index until the \
checkpoint is deleted. Prints its index, size and checksum once it is durable on the leader.

Examples:
  raft-node checkpoint create before-migration
  raft-node checkpoint create nightly-2024-06-01 --token-file admin.token

Exit codes: 0 created, 1 failed (409 the name exists, 507 the retained checkpoints are at their bound), 2 usage.";

const CHECKPOINT_LIST_HELP: &str = "\
Prints one checkpoint per line: name, index, term, size in bytes, checksum, creation time (UTC). \
The list is the answering node's: a checkpoint just created appears on a follower once it applied it.

Examples:
  raft-node checkpoint list
  raft-node checkpoint list --endpoint http://127.0.0.1:8082 --json";

const CHECKPOINT_ROLLBACK_HELP: &str = "\
Commits a rollback entry: every node replaces its key-value state (keys, the node directory and the \
idempotency table) with the checkpoint's, at the rollback entry's index. Writes committed after the \
rollback entry apply on top of the restored state; writes committed before it are undone.

Example:
  raft-node checkpoint rollback before-migration

Exit codes: 0 rolled back, 4 no such checkpoint, 1 other failures, 2 usage.";

const CHECKPOINT_DELETE_HELP: &str = "\
Example:
  raft-node checkpoint delete before-migration

Exit codes: 0 deleted, 4 no such checkpoint, 1 other failures, 2 usage.";

const CHECKPOINT_EXPORT_HELP: &str = "\
Downloads the answering node's copy as a self-describing file (header with index, term and CRC-32C, \
then the state). Start a new cluster from it with `raft-node run --bootstrap ... --restore-from FILE` \
on every initial member. Large checkpoints need a larger --timeout-ms.

Examples:
  raft-node checkpoint export before-migration                  # writes before-migration.checkpoint
  raft-node checkpoint export before-migration -o /backups/bm.checkpoint --timeout-ms 600000

Exit codes: 0 written, 4 no such checkpoint, 1 other failures, 2 usage.";

/// `certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The cluster's id: certificates name nodes node-<id>.<cluster-id>.
    #[arg(long, value_parser = parse_cluster_id)]
    pub cluster_id: ClusterId,
    /// The directory for the files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Issue a certificate for this node id; repeat for each node.
    #[arg(long = "node", value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub nodes: Vec<u64>,
    /// An IP address or DNS name the nodes are reached by (added to every
    /// node certificate); repeat for several. Default: 127.0.0.1 and localhost.
    #[arg(long = "address", value_name = "IP|NAME")]
    pub addresses: Vec<String>,
    /// Replace existing node certificates and keys.
    #[arg(long)]
    pub force: bool,
}

const CERTS_HELP: &str = "\
Writes ca.pem and ca.key (the CA: keep ca.key off the nodes) unless DIR already holds the CA of this \
cluster, in which case new certificates are issued from it; and node-<id>.pem, node-<id>.key for each \
--node. Existing node files are kept unless --force.

Examples:
  raft-node certs --cluster-id local --out certs --node 1 --node 2 --node 3
  raft-node certs --cluster-id prod --out certs --node 4 --address 10.0.0.4 --address db4.example";

fn parse_cluster_id(text: &str) -> Result<ClusterId, String> {
    ClusterId::new(text).map_err(|e| e.to_string())
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The request failed.
    #[error("{}", describe_client_error(.0))]
    Client(#[from] ClientError),
    /// The node's configuration was refused.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The node stopped with an error.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// Certificates could not be made or written.
    #[error("{0}")]
    Certs(String),
    /// The key does not exist.
    #[error("key {0:?} not found")]
    NotFound(String),
    /// An input (value file, stdin, token file) could not be read or is not usable.
    #[error("{0}")]
    Input(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl CliError {
    /// The process exit code (see [`EXIT_CODES`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NotFound(_) => 4,
            CliError::Client(error) => match error.status() {
                Some(StatusCode::PRECONDITION_FAILED) => 3,
                Some(StatusCode::NOT_FOUND) => 4,
                _ => 1,
            },
            _ => 1,
        }
    }
}

/// The client error's message, with a hint about the admin token when the
/// node refused for want of one.
fn describe_client_error(error: &ClientError) -> String {
    match error.status() {
        Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => format!(
            "{error}\nhint: this endpoint needs the admin token: pass --token-file FILE or set RAFT_ADMIN_TOKEN"
        ),
        _ => error.to_string(),
    }
}

/// Builds the client from the connection flags.
pub fn client(connection: &ConnectArgs) -> Result<Client, CliError> {
    let admin_token = match &connection.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Input(format!("cannot read the token file {}: {e}", path.display()))
            })?;
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(CliError::Input(format!("the token file {} is empty", path.display())));
            }
            Some(token)
        }
        None => {
            std::env::var("RAFT_ADMIN_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        }
    };
    let options = ClientOptions {
        ca: connection.ca.clone(),
        client_cert: connection.cert.clone(),
        client_key: connection.client_key.clone(),
        admin_token,
        timeout: Duration::from_millis(connection.timeout_ms),
        ..ClientOptions::new(connection.endpoint.clone())
    };
    Ok(Client::new(options)?)
}

/// Runs a client command (everything but `run` and `certs`).
pub async fn run_client_command(command: Command) -> Result<(), CliError> {
    match command {
        Command::Put(args) => put(args).await,
        Command::Get(args) => get(args).await,
        Command::Delete(args) => delete(args).await,
        Command::List(args) => list(args).await,
        Command::Status(args) => {
            let status = client(&args.connection)?.cluster().await?;
            print_answer(&status, args.json, format_status)
        }
        Command::Members(MembersCommand::Add(args)) => {
            let request = AddMemberRequest {
                id: args.id,
                peer_address: args.peer_address,
                client_address: args.client_address,
                voter: args.voter,
            };
            let result = client(&args.connection)?.add_member(&request).await?;
            let role = if args.voter { "voter" } else { "learner" };
            print_membership(&result, &format!("node {} added as a {role}", args.id), args.json)
        }
        Command::Members(MembersCommand::Promote(args)) => {
            let result = client(&args.connection)?.promote(args.id).await?;
            print_membership(&result, &format!("node {} promoted to voter", args.id), args.json)
        }
        Command::Members(MembersCommand::Remove(args)) => {
            let result = client(&args.connection)?.remove_member(args.id).await?;
            print_membership(&result, &format!("node {} removed", args.id), args.json)
        }
        Command::TransferLeader(args) => {
            let result = client(&args.connection)?.transfer_leader(args.id).await?;
            print_answer(&result, args.json, |result| {
                format!("leadership handed to node {}\n", result.target)
            })
        }
        Command::Snapshot(args) => {
            let result = client(&args.connection)?.snapshot().await?;
            print_answer(&result, args.json, |result| {
                format!("snapshot taken at index {} (term {})\n", result.index, result.term)
            })
        }
        Command::Checkpoint(command) => checkpoint(command).await,
        Command::Run(_) | Command::Certs(_) => {
            Err(CliError::Input("run and certs are not client commands".into()))
        }
    }
}

async fn put(args: PutArgs) -> Result<(), CliError> {
    let value =
        match (&args.value, &args.file) {
            (_, Some(path)) => Bytes::from(std::fs::read(path).map_err(|e| {
                CliError::Input(format!("cannot read the value file {}: {e}", path.display()))
            })?),
            (Some(value), None) if value == "-" => {
                let mut buffer = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buffer)
                    .map_err(|e| CliError::Input(format!("cannot read the value from stdin: {e}")))?;
                Bytes::from(buffer)
            }
            (Some(value), None) => Bytes::from(value.clone().into_bytes()),
            // clap requires one of the two; kept as an error rather than a panic.
            (None, None) => return Err(CliError::Input("give a value, `-` for stdin, or --file".into())),
        };
    let options = WriteOptions {
        if_match: args.if_match,
        if_none_match: args.if_none_match,
        idempotency_key: args.idempotency_key,
    };
    let result = client(&args.connection)?.put(&args.key, value, options).await?;
    print_answer(&result, args.json, |result| format!("version {} (term {})\n", result.index, result.term))
}

async fn get(args: GetArgs) -> Result<(), CliError> {
    let found = client(&args.connection)?.get(&args.key, args.consistency).await?;
    let Some((value, version)) = found else { return Err(CliError::NotFound(args.key)) };
    if args.json {
        let mut object = serde_json::json!({ "key": args.key, "version": version });
        match std::str::from_utf8(&value) {
            Ok(text) => object["value"] = text.into(),
            Err(_) => object["value_hex"] = hex(&value).into(),
        }
        return print_json(&object);
    }
    if args.verbose {
        eprintln!("version {version}");
    }
    write_stdout(&value)
}

async fn delete(args: DeleteArgs) -> Result<(), CliError> {
    let options =
        WriteOptions { if_match: args.if_match, if_none_match: false, idempotency_key: args.idempotency_key };
    let result = client(&args.connection)?.delete(&args.key, options).await?;
    print_answer(&result, args.json, |result| {
        format!("deleted at index {} (term {})\n", result.index, result.term)
    })
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let limit = args.limit.map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
    let listing = client(&args.connection)?.list(&args.prefix, limit).await?;
    if args.json {
        return print_json(&listing);
    }
    let mut text = String::new();
    for key in &listing.keys {
        text.push_str(&format!("{}\t{}\n", key.key, key.version));
    }
    print(&text)?;
    if listing.more {
        eprintln!("(more keys match; raise --limit or narrow --prefix)");
    }
    Ok(())
}

async fn checkpoint(command: CheckpointCommand) -> Result<(), CliError> {
    match command {
        CheckpointCommand::Create(args) => {
            let created = client(&args.connection)?.create_checkpoint(&args.name).await?;
            print_answer(&created, args.json, |created| {
                format!(
                    "checkpoint {} created at index {} (term {}): {} bytes, checksum {}\n",
                    created.name, created.index, created.term, created.size_bytes, created.checksum
                )
            })
        }
        CheckpointCommand::List(args) => {
            let listing = client(&args.connection)?.checkpoints().await?;
            print_answer(&listing, args.json, format_checkpoints)
        }
        CheckpointCommand::Rollback(args) => {
            let result = client(&args.connection)?.rollback(&args.name).await?;
            print_answer(&result, args.json, |result| {
                format!(
                    "rolled back to checkpoint {} at index {} (term {}); later writes apply on top\n",
                    result.name, result.index, result.term
                )
            })
        }
        CheckpointCommand::Delete(args) => {
            let result = client(&args.connection)?.delete_checkpoint(&args.name).await?;
            print_answer(&result, args.json, |result| {
                format!(
                    "checkpoint {} deleted at index {} (term {})\n",
                    result.name, result.index, result.term
                )
            })
        }
        CheckpointCommand::Export(args) => export_checkpoint(args).await,
    }
}

/// Downloads into `FILE.partial` and renames it once complete, so that a
/// failed download never leaves a file that looks whole.
async fn export_checkpoint(args: CheckpointExportArgs) -> Result<(), CliError> {
    let client = client(&args.connection)?;
    let output = args.output.unwrap_or_else(|| PathBuf::from(format!("{}.checkpoint", args.name)));
    if output.as_os_str() == "-" {
        let mut stdout = std::io::stdout();
        client.export_checkpoint(&args.name, &mut stdout).await?;
        return stdout.flush().map_err(CliError::Output);
    }
    let mut partial = output.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut file = std::fs::File::create(&partial)
        .map_err(|e| CliError::Input(format!("cannot create {}: {e}", partial.display())))?;
    let written = match client.export_checkpoint(&args.name, &mut file).await {
        Ok(written) => written,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error.into());
        }
    };
    file.sync_all()
        .and_then(|()| std::fs::rename(&partial, &output))
        .map_err(|e| CliError::Input(format!("cannot finish {}: {e}", output.display())))?;
    eprintln!("wrote {} ({written} bytes)", output.display());
    Ok(())
}

/// A human listing of `GET /v1/checkpoints`.
pub fn format_checkpoints(listing: &CheckpointList) -> String {
    let mut text = String::new();
    for checkpoint in &listing.checkpoints {
        text.push_str(&format!(
            "{}\tindex {}\tterm {}\t{} bytes\tcrc32c {}\t{}\n",
            checkpoint.name,
            checkpoint.index,
            checkpoint.term,
            checkpoint.size_bytes,
            checkpoint.checksum,
            utc_time(checkpoint.created_unix_ms)
        ));
    }
    if listing.checkpoints.is_empty() {
        text.push_str(&format!("no checkpoints on node {}\n", listing.node_id));
    }
    if let Some(index) = listing.last_rollback_index {
        text.push_str(&format!("last rollback applied at index {index}\n"));
    }
    text
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil date
/// from days, after Howard Hinnant's algorithm).
fn utc_time(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let (days, time) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", time / 3600, time / 60 % 60, time % 60)
}

/// Prints a command's answer: as JSON with `--json`, otherwise the text
/// `describe` makes of it.
fn print_answer<T: serde::Serialize>(
    answer: &T,
    json: bool,
    describe: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    if json {
        print_json(answer)
    } else {
        print(&describe(answer))
    }
}

fn print_membership(result: &MembershipResult, summary: &str, json: bool) -> Result<(), CliError> {
    print_answer(result, json, |result| {
        let members = &result.members;
        let mut text = format!(
            "{summary} (configuration entry {}, term {})\nvoters:   {}\nlearners: {}\n",
            result.index,
            result.term,
            id_list(&members.voters),
            id_list(&members.learners)
        );
        if members.joint {
            text.push_str(&format!("joint with outgoing voters {}\n", id_list(&members.outgoing_voters)));
        }
        text
    })
}

/// A human summary of `GET /v1/cluster`.
pub fn format_status(status: &ClusterStatus) -> String {
    let mut text = format!(
        "node {} of cluster {}: {} in term {}\n",
        status.node_id, status.cluster_id, status.role, status.term
    );
    if let Some(reason) = &status.stopped {
        text.push_str(&format!("STOPPED:  {reason}\n"));
    }
    let leader = match &status.leader {
        Some(leader) => match &leader.client_address {
            Some(address) => format!("node {} at {address}", leader.id),
            None => format!("node {}", leader.id),
        },
        None => "none known".to_string(),
    };
    text.push_str(&format!("leader:   {leader}\n"));
    text.push_str(&format!(
        "indexes:  commit {}, applied {}, last {}, snapshot {}\n",
        status.commit_index, status.applied_index, status.last_index, status.snapshot_index
    ));
    let members = &status.members;
    text.push_str(&format!("voters:   {}\n", id_list(&members.voters)));
    if members.joint {
        text.push_str(&format!("outgoing: {} (joint configuration)\n", id_list(&members.outgoing_voters)));
    }
    text.push_str(&format!("learners: {}\n", id_list(&members.learners)));
    if !status.nodes.is_empty() {
        text.push_str("nodes:\n");
        for (id, node) in &status.nodes {
            text.push_str(&format!(
                "  {id:<4} client {:<28} peer {}\n",
                node.client_address, node.peer_address
            ));
        }
    }
    if !status.peers.is_empty() {
        text.push_str("replication (as this leader sees it):\n");
        for peer in &status.peers {
            text.push_str(&format!("  {:<4} match {:<10} lag {}\n", peer.id, peer.match_index, peer.lag));
        }
    }
    text
}

fn id_list(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Output(std::io::Error::other(e.to_string())))?;
    text.push('\n');
    print(&text)
}

fn print(text: &str) -> Result<(), CliError> {
    write_stdout(text.as_bytes())
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}

/// `raft-node certs`: makes or reuses the CA in `--out`, then issues the
/// node certificates. Everything is generated and checked before the first
/// file is written, so a failure leaves the directory as it was.
pub fn certs(args: &CertsArgs) -> Result<(), CliError> {
    let directory = &args.out;
    let cluster = &args.cluster_id;
    let fail = |what: &str, e: CertificateError| CliError::Certs(format!("{what}: {e}"));
    let ca_files = CaFiles::in_directory(directory);
    let (ca, created) = match (ca_files.certificate.exists(), ca_files.key.exists()) {
        (true, true) => {
            let ca = ClusterCa::read_pem_files(cluster, directory)
                .map_err(|e| fail(&format!("cannot load the CA in {}", directory.display()), e))?;
            (ca, false)
        }
        (false, false) => {
            (ClusterCa::generate(cluster).map_err(|e| fail("cannot generate the CA", e))?, true)
        }
        (true, false) => {
            return Err(CliError::Certs(format!(
                "{} exists but {} does not: issuing certificates needs the CA's key; use another --out \
                 directory or put ca.key back",
                ca_files.certificate.display(),
                ca_files.key.display()
            )))
        }
        (false, true) => {
            return Err(CliError::Certs(format!(
                "{} exists but {} does not: the CA certificate is missing",
                ca_files.key.display(),
                ca_files.certificate.display()
            )))
        }
    };

    let mut nodes = args.nodes.clone();
    nodes.sort_unstable();
    nodes.dedup();
    let existing: Vec<PathBuf> = nodes
        .iter()
        .flat_map(|&id| {
            let files = NodeFiles::in_directory(directory, NodeId(id));
            [files.certificate, files.key]
        })
        .filter(|path| path.exists())
        .collect();
    if !existing.is_empty() && !args.force {
        let names: Vec<String> = existing.iter().map(|p| p.display().to_string()).collect();
        return Err(CliError::Certs(format!(
            "refusing to overwrite {}: pass --force to replace them",
            names.join(", ")
        )));
    }

    let addresses = if args.addresses.is_empty() {
        vec!["127.0.0.1".to_string(), "localhost".to_string()]
    } else {
        args.addresses.clone()
    };
    let mismatch = |e: CertificateError| match e {
        CertificateError::SelfCheck(_) if !created => CliError::Certs(format!(
            "the CA in {} does not belong to cluster {cluster:?} (or ca.key does not match ca.pem): use the \
             cluster id it was made for, or another --out directory ({e})",
            directory.display()
        )),
        other => fail("cannot issue a node certificate", other),
    };
    // A loaded CA is checked by issuing one throwaway certificate even when
    // no node is asked for, so a wrong --cluster-id never passes silently.
    if !created && nodes.is_empty() {
        ca.issue_node(NodeId(1), &[]).map_err(mismatch)?;
    }
    let issued = nodes
        .iter()
        .map(|&id| ca.issue_node(NodeId(id), &addresses))
        .collect::<Result<Vec<_>, _>>()
        .map_err(mismatch)?;

    let mut report = String::new();
    if created {
        let files = ca.write_pem_files(directory).map_err(|e| fail("cannot write the CA", e))?;
        report.push_str(&format!(
            "wrote {} (CA certificate: give it to nodes and clients)\n",
            files.certificate.display()
        ));
        report.push_str(&format!("wrote {} (CA key: keep it off the nodes)\n", files.key.display()));
    } else {
        report.push_str(&format!("using the CA of cluster {cluster} in {}\n", directory.display()));
    }
    for certificate in &issued {
        let files = certificate
            .write_pem_files(directory)
            .map_err(|e| fail(&format!("cannot write node {}'s files", certificate.node.get()), e))?;
        report.push_str(&format!(
            "wrote {} and {} (node {}: {}, {})\n",
            files.certificate.display(),
            files.key.display(),
            certificate.node.get(),
            cluster.node_dns_name(certificate.node),
            addresses.join(", ")
        ));
    }
    print(&report)
}

#[cfg(test)]
mod tests;
