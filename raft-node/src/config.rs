//! The node's configuration: a TOML file and/or command-line flags, checked
//! once at start into a [`NodeConfig`] the rest of the node trusts.
//!
//! Flags override the file. With neither, the node runs the single-node
//! development cluster: data under `./raft-data`, client API on
//! `127.0.0.1:8080`, peers on `127.0.0.1:7080`, dev certificates generated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default of `snapshot_log_entries`. Measured with `cargo xtask bench`
/// (256,000 keys, 64 connections): 50,000 put raft-node's p99 write latency
/// above etcd's because a snapshot of the whole state came every 3.5 s;
/// 100,000 halves that work and keeps the leader's RSS below etcd's.
pub const DEFAULT_SNAPSHOT_LOG_ENTRIES: u64 = 100_000;

/// Flags of `raft-node run` (and of `raft-node` with no subcommand).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunArgs {
    /// A TOML configuration file; flags given as well override it.
    #[arg(long, short = 'c', env = "RAFT_NODE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// The cluster's id: certificates name nodes `node-<id>.<cluster-id>`.
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Where the log, snapshots and (in dev mode) certificates live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The client API's listen address.
    #[arg(long)]
    pub listen_client: Option<SocketAddr>,
    /// The peer (QUIC) listen address.
    #[arg(long)]
    pub listen_peer: Option<SocketAddr>,
    /// The client API base URL other nodes and clients use to reach this
    /// node (default: derived from --listen-client).
    #[arg(long)]
    pub advertise_client: Option<String>,
    /// The peer address other nodes dial (default: --listen-peer).
    #[arg(long)]
    pub advertise_peer: Option<SocketAddr>,
    /// Start a new cluster whose initial voters are the --initial-member
    /// list. Refused if the data directory already holds a log.
    #[arg(long, conflicts_with = "join")]
    pub bootstrap: bool,
    /// An initial member, `<id>=<peer-address>=<client-url>`; repeat for each.
    #[arg(long = "initial-member", value_name = "ID=PEER=CLIENT")]
    pub initial_members: Vec<String>,
    /// Join an existing cluster through any member's client URL: the node
    /// learns the members from it and waits to be added (with
    /// --join-as, it asks to be added itself). Refused if the data
    /// directory already holds a log.
    #[arg(long, value_name = "URL")]
    pub join: Option<String>,
    /// With --join: ask the cluster to add this node as a `learner` or a
    /// `voter` (needs the admin token when one is set).
    #[arg(long, value_name = "ROLE", requires = "join")]
    pub join_as: Option<JoinRole>,
    /// The cluster CA certificate (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), issued by the cluster CA.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Serve the client API over HTTPS with this node's certificate.
    #[arg(long)]
    pub client_tls: bool,
    /// With --client-tls: require client certificates issued by this CA.
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// A file holding the admin token required by membership and snapshot
    /// endpoints (`Authorization: Bearer <token>`).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Answer writes on followers with 307 to the leader instead of
    /// forwarding them.
    #[arg(long)]
    pub no_forward: bool,
    /// Real time per Raft tick, in milliseconds.
    #[arg(long)]
    pub tick_interval_ms: Option<u64>,
    /// The election timeout's lower bound in ticks (the timeout is random
    /// in [this, 2 × this)).
    #[arg(long)]
    pub election_timeout_ticks: Option<u32>,
    /// Take a snapshot once the log holds this many entries [default: 100000].
    #[arg(long)]
    pub snapshot_log_entries: Option<u64>,
    /// Enable a test-only in-process fault injector for the peer transport
    /// (delay and drop controlled over the client API). Never in production.
    #[arg(long, hide = true)]
    pub dangerous_fault_injection: bool,
    /// With --bootstrap: start the new cluster from an exported checkpoint
    /// file (`raft-node checkpoint export`). Every initial member must be
    /// started with the same file; the data directory must be empty.
    #[arg(long, value_name = "FILE")]
    pub restore_from: Option<PathBuf>,
}

/// How `--join-as` asks to be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum JoinRole {
    /// Added as a non-voting learner, to be promoted later.
    Learner,
    /// Added as a voter directly.
    Voter,
}

/// The TOML file. Every field is optional; flags override it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// This node's id.
    pub id: Option<u64>,
    /// The cluster's id.
    pub cluster_id: Option<String>,
    /// The data directory.
    pub data_dir: Option<PathBuf>,
    /// Listen addresses.
    #[serde(default)]
    pub listen: AddressPair,
    /// Addresses other nodes and clients use.
    #[serde(default)]
    pub advertise: AdvertisePair,
    /// Bootstrap settings.
    #[serde(default)]
    pub bootstrap: BootstrapSection,
    /// Join settings.
    #[serde(default)]
    pub join: JoinSection,
    /// Peer TLS files.
    #[serde(default)]
    pub tls: TlsSection,
    /// The client API.
    #[serde(default)]
    pub client_api: ClientApiSection,
    /// Raft timing and snapshots.
    #[serde(default)]
    pub raft: RaftSection,
}

/// `[listen]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPair {
    /// Client API listen address.
    pub client: Option<SocketAddr>,
    /// Peer listen address.
    pub peer: Option<SocketAddr>,
}

/// `[advertise]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertisePair {
    /// Client API base URL.
    pub client: Option<String>,
    /// Peer address.
    pub peer: Option<SocketAddr>,
}

/// `[bootstrap]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapSection {
    /// Bootstrap a new cluster (same as `--bootstrap`).
    #[serde(default)]
    pub enabled: bool,
    /// Initial members, `"<id>=<peer-address>=<client-url>"` each.
    #[serde(default)]
    pub initial_members: Vec<String>,
}

/// `[join]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSection {
    /// A member's client URL.
    pub url: Option<String>,
    /// Ask to be added as this role.
    pub role: Option<JoinRole>,
}

/// `[tls]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Cluster CA certificate.
    pub ca: Option<PathBuf>,
    /// Node certificate.
    pub cert: Option<PathBuf>,
    /// Node key.
    pub key: Option<PathBuf>,
}

/// `[client_api]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientApiSection {
    /// Serve HTTPS with the node's certificate.
    #[serde(default)]
    pub tls: bool,
    /// Require client certificates issued by this CA.
    pub client_ca: Option<PathBuf>,
    /// File holding the admin token.
    pub admin_token_file: Option<PathBuf>,
    /// Forward writes from followers to the leader (default true); false
    /// answers 307.
    pub forward_to_leader: Option<bool>,
    /// Largest key in bytes (default 1,024).
    pub max_key_bytes: Option<usize>,
    /// Largest value in bytes (default 1 MiB).
    pub max_value_bytes: Option<usize>,
    /// How long a request may wait for commit, in milliseconds (default 5,000).
    pub request_timeout_ms: Option<u64>,
    /// The most requests served at once; more wait (default 4,096).
    pub max_concurrent_requests: Option<usize>,
}

/// `[raft]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftSection {
    /// Real time per tick in milliseconds (default 15).
    pub tick_interval_ms: Option<u64>,
    /// Election timeout lower bound in ticks (default 10).
    pub election_timeout_ticks: Option<u32>,
    /// Heartbeat interval in ticks (default 1).
    pub heartbeat_interval_ticks: Option<u32>,
    /// Snapshot once the log holds this many entries (default 100,000, as
    /// etcd's `--snapshot-count`). Each snapshot captures and encodes the
    /// whole state, so a lower value trades a shorter log in memory for
    /// more frequent bursts of work that lengthen the latency tail.
    pub snapshot_log_entries: Option<u64>,
}

/// How the node starts: the three are distinct on purpose, so that a node
/// with an empty disk never silently forms a cluster of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPlan {
    /// A new cluster with these voters; the data directory must be empty.
    Bootstrap(BTreeMap<u64, Member>),
    /// Join through a member's client URL; the data directory must be empty.
    Join {
        /// A member's client URL.
        url: String,
        /// Ask to be added, and how.
        role: Option<JoinRole>,
    },
    /// Restart from the data directory, which must hold a log.
    Restart,
    /// Development mode: bootstrap a single-node cluster if the data
    /// directory is empty, restart otherwise.
    Dev,
}

/// A member of `--initial-member`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its peer address.
    pub peer_address: SocketAddr,
    /// Its client API base URL.
    pub client_address: String,
}

/// Peer TLS material locations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Cluster CA certificate.
    pub ca: PathBuf,
    /// Node certificate.
    pub cert: PathBuf,
    /// Node key.
    pub key: PathBuf,
}

/// The whole, checked configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id.
    pub id: u64,
    /// The cluster's id.
    pub cluster_id: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Client API listen address.
    pub listen_client: SocketAddr,
    /// Peer listen address.
    pub listen_peer: SocketAddr,
    /// Advertised client URL.
    pub advertise_client: String,
    /// Advertised peer address.
    pub advertise_peer: SocketAddr,
    /// How to start.
    pub plan: StartPlan,
    /// Peer TLS files; `None` in dev mode until generated (under
    /// `<data_dir>/certs`).
    pub tls: Option<TlsFiles>,
    /// Serve the client API over HTTPS.
    pub client_tls: bool,
    /// Require client certificates from this CA.
    pub client_ca: Option<PathBuf>,
    /// The admin token, read from its file.
    pub admin_token: Option<String>,
    /// Forward follower writes to the leader.
    pub forward_to_leader: bool,
    /// Largest key.
    pub max_key_bytes: usize,
    /// Largest value.
    pub max_value_bytes: usize,
    /// Client request timeout.
    pub request_timeout: Duration,
    /// Concurrent request bound.
    pub max_concurrent_requests: usize,
    /// Real time per tick.
    pub tick_interval: Duration,
    /// Election timeout lower bound in ticks.
    pub election_timeout_ticks: u32,
    /// Heartbeat interval in ticks.
    pub heartbeat_interval_ticks: u32,
    /// Snapshot threshold in log entries.
    pub snapshot_log_entries: u64,
    /// The test-only fault injector.
    pub dangerous_fault_injection: bool,
    /// With a bootstrap plan: the exported checkpoint file the new cluster
    /// starts from.
    pub restore_from: Option<PathBuf>,
}

/// Default client API address of the development node.
pub const DEV_CLIENT_ADDRESS: &str = "127.0.0.1:8080";
/// Default peer address of the development node.
pub const DEV_PEER_ADDRESS: &str = "127.0.0.1:7080";
/// Default data directory.
pub const DEV_DATA_DIR: &str = "./raft-data";
/// Default cluster id of the development node.
pub const DEV_CLUSTER_ID: &str = "dev";

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("the configuration file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A setting is missing or wrong.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }
}

/// Parses `<id>=<peer-address>=<client-url>`.
pub fn parse_member(text: &str) -> Result<(u64, Member), ConfigError> {
    let mut parts = text.splitn(3, '=');
    let (Some(id), Some(peer), Some(client)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid(format!(
            "initial member {text:?} is not <id>=<peer-address>=<client-url>, \
             e.g. 1=127.0.0.1:7080=http://127.0.0.1:8080"
        )));
    };
    let id = parse_node_id(id)?;
    let peer_address = peer
        .parse()
        .map_err(|_| invalid(format!("initial member {text:?}: {peer:?} is not an ip:port address")))?;
    let client_address = check_url(client)?;
    Ok((id, Member { peer_address, client_address }))
}

/// Parses a node id: a positive integer.
pub fn parse_node_id(text: &str) -> Result<u64, ConfigError> {
    match text.trim().parse::<u64>() {
        Ok(0) | Err(_) => Err(invalid(format!("node id {text:?} must be a positive integer"))),
        Ok(id) => Ok(id),
    }
}

/// Checks a client base URL and returns it without a trailing slash.
pub fn check_url(text: &str) -> Result<String, ConfigError> {
    let url = text.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| invalid(format!("{text:?} is not an http:// or https:// URL")))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(invalid(format!("{text:?} must be a base URL like http://host:port, without a path")));
    }
    Ok(url.to_string())
}

impl NodeConfig {
    /// Merges flags over the file (if any) and checks the result.
    pub fn resolve(args: &RunArgs) -> Result<NodeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: &RunArgs, file: FileConfig) -> Result<NodeConfig, ConfigError> {
        let id = match args.id.or(file.id) {
            Some(0) => return Err(invalid("the node id must be a positive integer")),
            Some(id) => Some(id),
            None => None,
        };
        let bootstrap = args.bootstrap || file.bootstrap.enabled;
        let join_url = args.join.clone().or(file.join.url.clone());
        let join_role = args.join_as.or(file.join.role);
        let member_texts = if args.initial_members.is_empty() {
            &file.bootstrap.initial_members
        } else {
            &args.initial_members
        };
        let tls_ca = args.tls_ca.clone().or(file.tls.ca.clone());
        let tls_cert = args.tls_cert.clone().or(file.tls.cert.clone());
        let tls_key = args.tls_key.clone().or(file.tls.key.clone());
        let any_tls = tls_ca.is_some() || tls_cert.is_some() || tls_key.is_some();

        // Development mode: nothing that names a cluster was given.
        let dev = id.is_none() && !bootstrap && join_url.is_none() && member_texts.is_empty() && !any_tls;
        if bootstrap && join_url.is_some() {
            return Err(invalid(
                "--bootstrap and --join exclude each other: a node starts one cluster or joins one",
            ));
        }
        let id = match (id, dev) {
            (Some(id), _) => id,
            (None, true) => 1,
            (None, false) => {
                return Err(invalid("the node id is missing: pass --id or set `id` in the file"))
            }
        };

        let data_dir = args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEV_DATA_DIR));
        let listen_client = args
            .listen_client
            .or(file.listen.client)
            .unwrap_or_else(|| DEV_CLIENT_ADDRESS.parse().expect("a valid constant address"));
        let listen_peer = args
            .listen_peer
            .or(file.listen.peer)
            .unwrap_or_else(|| DEV_PEER_ADDRESS.parse().expect("a valid constant address"));
        let client_tls = args.client_tls || file.client_api.tls;
        let scheme = if client_tls { "https" } else { "http" };
        let advertise_client = match args.advertise_client.clone().or(file.advertise.client) {
            Some(url) => check_url(&url)?,
            None => {
                if listen_client.ip().is_unspecified() {
                    return Err(invalid(format!(
                        "the client API listens on {listen_client}: set --advertise-client to the URL \
                         others use to reach it"
                    )));
                }
                format!("{scheme}://{listen_client}")
            }
        };
        let advertise_peer = match args.advertise_peer.or(file.advertise.peer) {
            Some(address) => address,
            None if listen_peer.ip().is_unspecified() => {
                return Err(invalid(format!(
                    "peers listen on {listen_peer}: set --advertise-peer to the address others dial"
                )))
            }
            None => listen_peer,
        };

        if args.restore_from.is_some() && !bootstrap {
            return Err(invalid(
                "--restore-from starts a new cluster: give it with --bootstrap and the --initial-member list",
            ));
        }
        let plan = if dev {
            StartPlan::Dev
        } else if bootstrap {
            let mut members = BTreeMap::new();
            for text in member_texts {
                let (member_id, member) = parse_member(text)?;
                if members.insert(member_id, member).is_some() {
                    return Err(invalid(format!("initial member {member_id} is listed twice")));
                }
            }
            if members.is_empty() {
                members.insert(
                    id,
                    Member { peer_address: advertise_peer, client_address: advertise_client.clone() },
                );
            }
            if !members.contains_key(&id) {
                return Err(invalid(format!(
                    "--bootstrap: this node ({id}) is not among the initial members {:?}",
                    members.keys().collect::<Vec<_>>()
                )));
            }
            StartPlan::Bootstrap(members)
        } else if let Some(url) = join_url {
            if !member_texts.is_empty() {
                return Err(invalid("--initial-member is only for --bootstrap; --join learns the members"));
            }
            StartPlan::Join { url: check_url(&url)?, role: join_role }
        } else {
            if !member_texts.is_empty() {
                return Err(invalid("--initial-member needs --bootstrap"));
            }
            StartPlan::Restart
        };

        let tls = match (tls_ca, tls_cert, tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
            (None, None, None) if dev => None,
            (None, None, None) => {
                return Err(invalid(
                    "peer TLS files are missing: pass --tls-ca, --tls-cert and --tls-key \
                     (`raft-node certs` makes them)",
                ))
            }
            _ => return Err(invalid("--tls-ca, --tls-cert and --tls-key go together: give all three")),
        };

        let admin_token = match args.admin_token_file.clone().or(file.client_api.admin_token_file.clone()) {
            Some(path) => {
                let token = std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                let token = token.trim().to_string();
                if token.len() < 16 {
                    return Err(invalid(format!(
                        "the admin token in {} is shorter than 16 characters",
                        path.display()
                    )));
                }
                Some(token)
            }
            None => None,
        };
        let client_ca = args.client_ca.clone().or(file.client_api.client_ca.clone());
        if client_ca.is_some() && !client_tls {
            return Err(invalid("--client-ca (client certificate auth) needs --client-tls"));
        }

        let raft = file.raft;
        let tick_interval_ms = args.tick_interval_ms.or(raft.tick_interval_ms).unwrap_or(15);
        let election_timeout_ticks =
            args.election_timeout_ticks.or(raft.election_timeout_ticks).unwrap_or(10);
        let heartbeat_interval_ticks = raft.heartbeat_interval_ticks.unwrap_or(1);
        if !(1..=10_000).contains(&tick_interval_ms) {
            return Err(invalid("tick_interval_ms must be between 1 and 10000"));
        }
        if heartbeat_interval_ticks == 0 || election_timeout_ticks <= heartbeat_interval_ticks {
            return Err(invalid(format!(
                "the election timeout ({election_timeout_ticks} ticks) must exceed the heartbeat interval \
                 ({heartbeat_interval_ticks} ticks), which must be at least 1"
            )));
        }
        let snapshot_log_entries =
            args.snapshot_log_entries.or(raft.snapshot_log_entries).unwrap_or(DEFAULT_SNAPSHOT_LOG_ENTRIES);
        if snapshot_log_entries < 16 {
            return Err(invalid("snapshot_log_entries must be at least 16"));
        }
        let api = file.client_api;
        let max_key_bytes = api.max_key_bytes.unwrap_or(1024);
        let max_value_bytes = api.max_value_bytes.unwrap_or(1 << 20);
        if max_key_bytes == 0 || max_key_bytes > 64 * 1024 {
            return Err(invalid("max_key_bytes must be between 1 and 65536"));
        }
        // A value travels in one Raft entry and one transport frame (16 MiB).
        if max_value_bytes > 8 << 20 {
            return Err(invalid("max_value_bytes must be at most 8 MiB (one entry must fit a peer frame)"));
        }
        let max_concurrent_requests = api.max_concurrent_requests.unwrap_or(4096);
        if max_concurrent_requests == 0 {
            return Err(invalid("max_concurrent_requests must be at least 1"));
        }
        let request_timeout_ms = api.request_timeout_ms.unwrap_or(5_000);
        if request_timeout_ms == 0 {
            return Err(invalid("request_timeout_ms must be at least 1"));
        }

        Ok(NodeConfig {
            id,
            cluster_id: args.cluster_id.clone().or(file.cluster_id).unwrap_or_else(|| DEV_CLUSTER_ID.into()),
            data_dir,
            listen_client,
            listen_peer,
            advertise_client,
            advertise_peer,
            plan,
            tls,
            client_tls,
            client_ca,
            admin_token,
            forward_to_leader: !args.no_forward && api.forward_to_leader.unwrap_or(true),
            max_key_bytes,
            max_value_bytes,
            request_timeout: Duration::from_millis(request_timeout_ms),
            max_concurrent_requests,
            tick_interval: Duration::from_millis(tick_interval_ms),
            election_timeout_ticks,
            heartbeat_interval_ticks,
            snapshot_log_entries,
            dangerous_fault_injection: args.dangerous_fault_injection,
            restore_from: args.restore_from.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs::default()
    }

    #[test]
    fn no_arguments_is_the_development_node() {
        let config = NodeConfig::resolve(&args()).unwrap();
        assert_eq!(config.plan, StartPlan::Dev);
        assert_eq!(config.id, 1);
        assert_eq!(config.listen_client.to_string(), DEV_CLIENT_ADDRESS);
        assert_eq!(config.listen_peer.to_string(), DEV_PEER_ADDRESS);
        assert_eq!(config.advertise_client, "http://127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from(DEV_DATA_DIR));
        assert!(config.tls.is_none());
    }

    #[test]
    fn bootstrap_needs_this_node_among_the_members() {
        let mut a = args();
        a.id = Some(4);
        a.bootstrap = true;
        a.initial_members = vec!["1=127.0.0.1:7081=http://127.0.0.1:8081".into()];
        a.tls_ca = Some("ca".into());
        a.tls_cert = Some("c".into());
        a.tls_key = Some("k".into());
        let error = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(error.contains("not among the initial members"), "{error}");
        a.initial_members.push("4=127.0.0.1:7084=http://127.0.0.1:8084/".into());
        let config = NodeConfig::resolve(&a).unwrap();
        let StartPlan::Bootstrap(members) = config.plan else { panic!("not a bootstrap plan") };
        assert_eq!(members[&4].client_address, "http://127.0.0.1:8084");
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        type Change = Box<dyn Fn(&mut RunArgs)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|a| a.id = Some(0)), "positive integer"),
            (Box::new(|a| a.id = Some(2)), "peer TLS files are missing"),
            (
                Box::new(|a| {
                    a.id = Some(2);
                    a.tls_ca = Some("ca".into());
                }),
                "go together",
            ),
            (
                Box::new(|a| {
                    a.id = Some(1);
                    a.bootstrap = true;
                    a.initial_members = vec!["x".into()];
                }),
                "is not <id>=<peer-address>=<client-url>",
            ),
            (Box::new(|a| a.advertise_client = Some("ftp://x".into())), "not an http"),
            (Box::new(|a| a.listen_client = Some("0.0.0.0:8080".parse().unwrap())), "--advertise-client"),
            (Box::new(|a| a.election_timeout_ticks = Some(1)), "must exceed the heartbeat"),
            (Box::new(|a| a.client_ca = Some("ca".into())), "needs --client-tls"),
        ];
        for (change, expected) in cases {
            let mut a = args();
            change(&mut a);
            let error = NodeConfig::resolve(&a).unwrap_err().to_string();
            assert!(error.contains(expected), "expected {expected:?} in {error:?}");
        }
    }

    #[test]
    fn the_file_is_read_and_flags_override_it() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("node.toml");
        std::fs::write(
            &path,
            r#"
id = 3
cluster_id = "prod"
data_dir = "/var/lib/raft"
[listen]
client = "127.0.0.3:8080"
peer = "127.0.0.3:7080"
[tls]
ca = "ca.pem"
cert = "node.pem"
key = "node.key"
[raft]
tick_interval_ms = 20
"#,
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        a.tick_interval_ms = Some(30);
        let config = NodeConfig::resolve(&a).unwrap();
        assert_eq!(config.id, 3);
        assert_eq!(config.cluster_id, "prod");
        assert_eq!(config.plan, StartPlan::Restart);
        assert_eq!(config.advertise_client, "http://127.0.0.3:8080");
        assert_eq!(config.tick_interval, Duration::from_millis(30));

        std::fs::write(&path, "id = 3\nunknown_setting = 1\n").unwrap();
        let error = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(error.contains("unknown field"), "{error}");
    }
}
