//! A harness for clusters of real `raft-node` processes on loopback.
//!
//! Every node runs the binary Cargo built for this package with its own data
//! directory; its stdout and stderr go to `node-<id>.log` in the cluster's
//! temporary directory (appended to across restarts). Dropping a
//! [`Cluster`] kills every process it started, also when the test panics;
//! then it prints the tail of every node's log and keeps the directory for a
//! post-mortem.
//!
//! Waiting is always polling a condition with a deadline ([`eventually`]):
//! these tests run on shared, noisy machines with debug builds, so nothing
//! here assumes how long anything takes.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::types::NodeId;
use raft_node::api::{ClusterStatus, Consistency, Digest, WriteResult};
use raft_node::client::{Client, ClientError, ClientOptions, WriteOptions};
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::ClusterId;

use crate::support::{Ports, WAIT};

/// The binary under test.
const NODE_BINARY: &str = env!("CARGO_BIN_EXE_raft-node");

/// The cluster id every test cluster uses (certificates name it).
const CLUSTER_ID: &str = "test";

/// The id of the certificate the test client presents to nodes that
/// require client certificates: issued by the cluster CA, never a member.
pub const CLIENT_CERTIFICATE_ID: u64 = 1000;

/// How long to pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(50);

/// How many lines of each node's log a failed test prints.
const LOG_TAIL_LINES: usize = 40;

/// Polls `check` until it answers `Ok`, and returns that value; panics after
/// [`WAIT`] with `what` and the last complaint of `check`.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: still not the case after {WAIT:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// How a test cluster is set up.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// How many nodes bootstrap the cluster (ids 1 to `size`).
    pub size: u64,
    /// `--snapshot-log-entries` for every node.
    pub snapshot_log_entries: Option<u64>,
    /// An admin token, written to a file passed as `--admin-token-file`;
    /// the cluster's client sends it.
    pub admin_token: Option<String>,
    /// Serve the client API over HTTPS and require client certificates
    /// from the cluster CA (`--client-tls --client-ca ca.pem`); the
    /// cluster's client presents one.
    pub client_tls: bool,
    /// An exported checkpoint file every node bootstraps from
    /// (`--restore-from`).
    pub restore_from: Option<PathBuf>,
}

impl Options {
    /// `size` nodes with the defaults.
    pub fn nodes(size: u64) -> Options {
        Options { size, ..Options::default() }
    }
}

/// How a node process starts.
enum Plan {
    /// `--bootstrap` with every initial member.
    Bootstrap,
    /// From its data directory.
    Restart,
    /// `--join <url> --join-as <role>`.
    Join { url: String, role: &'static str },
}

/// One node: its addresses and files, and its process while it runs.
struct Node {
    id: u64,
    ports: Ports,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// `None` while the node is stopped.
    child: Mutex<Option<Child>>,
}

impl Node {
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last `lines` lines of the node's log.
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("(no log: {e})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A cluster of `raft-node` processes.
pub struct Cluster {
    /// `None` only while dropping (taken to keep the files of a failed test).
    directory: Option<tempfile::TempDir>,
    certs: PathBuf,
    options: Options,
    nodes: BTreeMap<u64, Node>,
    /// A client of node 1 whose TLS settings and token fit the cluster;
    /// [`Cluster::client`] points it at other nodes.
    client: Client,
}

impl Cluster {
    /// Bootstraps `options.size` nodes and waits until every one is ready.
    pub async fn start(options: Options) -> Cluster {
        let cluster = Cluster::new(options);
        cluster.bootstrap().await;
        cluster
    }

    /// Starts every node of a [`Cluster::new`] with `--bootstrap` and waits
    /// until every one is ready.
    pub async fn bootstrap(&self) {
        for id in 1..=self.options.size {
            self.spawn(id, Plan::Bootstrap);
        }
        for id in 1..=self.options.size {
            self.wait_ready(id).await;
        }
    }

    /// The certificates, ports and client of a cluster, with no process
    /// yet (see [`Cluster::bootstrap`]).
    pub fn new(options: Options) -> Cluster {
        assert!(options.size > 0, "a cluster needs at least one node");
        let directory = tempfile::tempdir().unwrap();
        let certs = directory.path().join("certs");
        let ca = ClusterCa::generate(&ClusterId::new(CLUSTER_ID).unwrap()).unwrap();
        ca.write_pem_files(&certs).unwrap();
        for id in (1..=options.size).chain([CLIENT_CERTIFICATE_ID]) {
            issue_certificate(&ca, &certs, id);
        }
        let mut nodes = BTreeMap::new();
        for id in 1..=options.size {
            nodes.insert(id, new_node(directory.path(), id));
        }
        let client = Client::new(client_options(&options, &certs, &nodes[&1].ports)).unwrap();
        if let Some(token) = &options.admin_token {
            std::fs::write(directory.path().join("admin-token"), token).unwrap();
        }
        Cluster { directory: Some(directory), certs, options, nodes, client }
    }

    fn directory(&self) -> &Path {
        self.directory.as_ref().expect("the directory is kept until drop").path()
    }

    /// The settings of the cluster's client for node `id`: the cluster CA,
    /// the admin token, and a client certificate from the cluster CA when
    /// nodes require one. Tests change them to make clients that get
    /// refused.
    pub fn client_options(&self, id: u64) -> ClientOptions {
        client_options(&self.options, &self.certs, &self.node(id).ports)
    }

    /// The client API base URL of node `id`.
    pub fn url(&self, id: u64) -> String {
        base_url(&self.options, &self.node(id).ports)
    }

    /// A client of node `id` (sharing one connection pool).
    pub fn client(&self, id: u64) -> Client {
        self.client.with_endpoint(&self.url(id)).unwrap()
    }

    /// The nodes whose processes run, in id order.
    pub fn running(&self) -> Vec<u64> {
        self.nodes.values().filter(|node| node.child().is_some()).map(|node| node.id).collect()
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes.get(&id).unwrap_or_else(|| panic!("node {id} is not part of this test cluster"))
    }

    /// The tail of node `id`'s log, for assertion messages.
    pub fn log_tail(&self, id: u64) -> String {
        self.node(id).log_tail(LOG_TAIL_LINES)
    }

    /// Node `id`'s whole log, every start of it.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log_path).unwrap_or_default()
    }

    /// The client API addresses (`host:port`) of every node.
    pub fn client_addresses(&self) -> Vec<String> {
        self.nodes.values().map(|node| format!("127.0.0.1:{}", node.ports.client)).collect()
    }

    /// Starts node `id`'s process (it must not be running).
    fn spawn(&self, id: u64, plan: Plan) {
        let node = self.node(id);
        let mut child = node.child();
        assert!(child.is_none(), "node {id} is already running");
        let mut args: Vec<String> = vec![
            "run".into(),
            format!("--id={id}"),
            format!("--cluster-id={CLUSTER_ID}"),
            format!("--data-dir={}", node.data_dir.display()),
            format!("--listen-client=127.0.0.1:{}", node.ports.client),
            format!("--listen-peer={}", node.ports.peer_address()),
            format!("--tls-ca={}", self.certs.join("ca.pem").display()),
            format!("--tls-cert={}", self.certs.join(format!("node-{id}.pem")).display()),
            format!("--tls-key={}", self.certs.join(format!("node-{id}.key")).display()),
            "--tick-interval-ms=10".into(),
        ];
        if let Some(entries) = self.options.snapshot_log_entries {
            args.push(format!("--snapshot-log-entries={entries}"));
        }
        if self.options.admin_token.is_some() {
            args.push(format!("--admin-token-file={}", self.directory().join("admin-token").display()));
        }
        if self.options.client_tls {
            args.push("--client-tls".into());
            args.push(format!("--client-ca={}", self.certs.join("ca.pem").display()));
        }
        match plan {
            Plan::Bootstrap => {
                args.push("--bootstrap".into());
                for member in 1..=self.options.size {
                    let ports = &self.node(member).ports;
                    let url = base_url(&self.options, ports);
                    args.push(format!("--initial-member={member}={}={url}", ports.peer_address()));
                }
                if let Some(file) = &self.options.restore_from {
                    args.push(format!("--restore-from={}", file.display()));
                }
            }
            Plan::Restart => {}
            Plan::Join { url, role } => {
                args.push(format!("--join={url}"));
                args.push(format!("--join-as={role}"));
            }
        }
        let mut log = OpenOptions::new().create(true).append(true).open(&node.log_path).unwrap();
        writeln!(log, "=== {NODE_BINARY} {}", args.join(" ")).unwrap();
        let spawned = Command::new(NODE_BINARY)
            .args(&args)
            .env("RAFT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NODE_BINARY}: {e}"));
        *child = Some(spawned);
    }

    /// Panics with the node's log if a process this cluster did not stop
    /// has exited, so a crash fails the test at once and says why.
    fn check_alive(&self) {
        for node in self.nodes.values() {
            let exited = node.child().as_mut().and_then(|child| child.try_wait().unwrap());
            if let Some(status) = exited {
                panic!(
                    "node {} exited unexpectedly ({status}); its log ends with:\n{}",
                    node.id,
                    node.log_tail(LOG_TAIL_LINES)
                );
            }
        }
    }

    /// Like [`eventually`], but fails at once when a node crashes.
    pub async fn until<T>(&self, what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
        eventually(what, async || {
            self.check_alive();
            check().await
        })
        .await
    }

    /// Waits until node `id` answers `/readyz` (it knows a leader and has
    /// applied what it knows to be committed).
    pub async fn wait_ready(&self, id: u64) {
        let client = self.client(id);
        self.until(&format!("node {id} is ready"), async || client.ready().await.map_err(|e| e.to_string()))
            .await;
    }

    /// Node `id`'s view of the cluster.
    pub async fn status(&self, id: u64) -> ClusterStatus {
        self.client(id).cluster().await.unwrap_or_else(|e| panic!("GET /v1/cluster on node {id}: {e}"))
    }

    /// Waits until every running node names the same leader (one that runs
    /// and names itself), and returns it.
    pub async fn leader(&self) -> u64 {
        self.until("the running nodes agree on a leader", async || {
            let mut seen = BTreeMap::new();
            for id in self.running() {
                let status = self.client(id).cluster().await.map_err(|e| format!("node {id}: {e}"))?;
                seen.insert(id, status.leader.map(|leader| leader.id));
            }
            match seen.values().next() {
                Some(Some(leader))
                    if seen.values().all(|l| *l == Some(*leader)) && seen.contains_key(leader) =>
                {
                    Ok(*leader)
                }
                _ => Err(format!("leaders named by each node: {seen:?}")),
            }
        })
        .await
    }

    /// A running node other than `id`.
    pub fn other_than(&self, id: u64) -> u64 {
        self.running().into_iter().find(|other| *other != id).expect("another node runs")
    }

    /// `kill -9`: stops node `id` at once, without any chance to clean up.
    pub fn kill(&self, id: u64) {
        let mut child = self.node(id).child().take().unwrap_or_else(|| panic!("node {id} is not running"));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends SIGTERM to node `id` (a graceful stop: a leader hands over
    /// first).
    pub fn send_sigterm(&self, id: u64) {
        let pid = self.node(id).child().as_ref().unwrap_or_else(|| panic!("node {id} is not running")).id();
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
    }

    /// Waits until node `id`'s process has exited, and returns its status.
    pub async fn wait_exit(&self, id: u64) -> ExitStatus {
        let node = self.node(id);
        let status = eventually(&format!("node {id} exits"), async || {
            let mut child = node.child();
            let child = child.as_mut().ok_or_else(|| format!("node {id} is not running"))?;
            child.try_wait().unwrap().ok_or_else(|| "it still runs".to_string())
        })
        .await;
        node.child().take();
        status
    }

    /// Starts node `id` again from its data directory and waits until it is
    /// ready.
    pub async fn restart(&self, id: u64) {
        self.spawn_restart(id);
        self.wait_ready(id).await;
    }

    /// Starts node `id` again from its data directory, without waiting: a
    /// node of a cluster restarted whole is ready only once a quorum runs.
    pub fn spawn_restart(&self, id: u64) {
        self.spawn(id, Plan::Restart);
    }

    /// Starts a new node `id` that joins through `via`'s client API as
    /// `role` (`learner` or `voter`), and waits until it is ready.
    pub async fn join(&mut self, id: u64, via: u64, role: &'static str) {
        assert!(!self.nodes.contains_key(&id), "node {id} exists already");
        let ca = ClusterCa::read_pem_files(&ClusterId::new(CLUSTER_ID).unwrap(), &self.certs).unwrap();
        issue_certificate(&ca, &self.certs, id);
        let node = new_node(self.directory(), id);
        self.nodes.insert(id, node);
        self.spawn(id, Plan::Join { url: self.url(via), role });
        self.wait_ready(id).await;
    }

    /// Writes `key` through node `id`, retrying refusals worth retrying (no
    /// leader yet, leadership moving) with one idempotency key, so the
    /// write applies once.
    pub async fn put_via(&self, id: u64, key: &str, value: &str) -> WriteResult {
        self.check_alive();
        put_retrying(&self.client(id), key, value).await
    }

    /// Writes `count` keys `<prefix>-<n>` (value `value-<n>`) through every
    /// running node in turn, several writes at a time.
    pub async fn put_many(&self, prefix: &str, count: usize) {
        const WRITERS: usize = 8;
        let nodes = self.running();
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            let client = self.client(nodes[writer % nodes.len()]);
            let prefix = prefix.to_string();
            writers.spawn(async move {
                for n in (writer..count).step_by(WRITERS) {
                    put_retrying(&client, &format!("{prefix}-{n}"), &format!("value-{n}")).await;
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.expect("a writer panicked");
        }
        self.check_alive();
    }

    /// Writes `key` through whichever running node takes it: each refusal
    /// worth retrying (including a node that is down) moves on to the next
    /// node, with the same idempotency key, until the write succeeds.
    pub async fn put_anywhere(&self, key: &str, value: &str) -> WriteResult {
        let options = WriteOptions { idempotency_key: Some(idempotency_key()), ..WriteOptions::default() };
        let mut attempt = 0;
        self.until(&format!("PUT {key} succeeds through some node"), async || {
            let nodes = self.running();
            let id = nodes[attempt % nodes.len()];
            attempt += 1;
            retryable(self.client(id).put(key, Bytes::from(value.to_string()), options.clone()).await)
                .map_err(|e| format!("node {id}: {e}"))
        })
        .await
    }

    /// Reads `key` through node `id` (linearizable), retrying refusals
    /// worth retrying; `None` if the key does not exist.
    pub async fn get_via(&self, id: u64, key: &str) -> Option<String> {
        self.read_via(id, key).await.map(|(value, _version)| value)
    }

    /// Like [`Cluster::get_via`], with the key's version (the index of the
    /// entry that last wrote it).
    pub async fn read_via(&self, id: u64, key: &str) -> Option<(String, u64)> {
        let client = self.client(id);
        let read = self
            .until(&format!("GET {key} through node {id} is answered"), async || {
                retryable(client.get(key, Consistency::Linearizable).await)
            })
            .await;
        read.map(|(value, version)| (String::from_utf8(value.to_vec()).unwrap(), version))
    }

    /// Waits until every running node's replica holds the same keys (same
    /// digest), and returns that digest.
    pub async fn converged_digest(&self) -> Digest {
        self.converged_digest_of(&self.running()).await
    }

    /// Waits until the replicas of `nodes` hold the same keys (same
    /// digest), and returns that digest.
    pub async fn converged_digest_of(&self, nodes: &[u64]) -> Digest {
        self.until(&format!("nodes {nodes:?} have the same digest"), async || {
            let mut digests = BTreeMap::new();
            for id in nodes {
                let digest = self.client(*id).digest().await.map_err(|e| format!("node {id}: {e}"))?;
                digests.insert(id, digest);
            }
            let first = digests.values().next().cloned().ok_or("no nodes")?;
            if digests.values().all(|d| (d.keys, &d.hash) == (first.keys, &first.hash)) {
                Ok(first)
            } else {
                Err(format!("digests: {digests:?}"))
            }
        })
        .await
    }

    /// The sum of every series of the counter or gauge `name` on node
    /// `id`'s `/metrics`.
    pub async fn metric_sum(&self, id: u64, name: &str) -> f64 {
        let text = self.client(id).metrics_text().await.unwrap();
        metric_sum(&text, name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            if let Some(mut child) = node.child().take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in self.nodes.values() {
                eprintln!(
                    "--- the last {LOG_TAIL_LINES} lines of node {}'s log ({}) ---\n{}",
                    node.id,
                    node.log_path.display(),
                    node.log_tail(LOG_TAIL_LINES)
                );
            }
            if let Some(directory) = self.directory.take() {
                eprintln!("--- the cluster's files are kept in {} ---", directory.keep().display());
            }
        }
    }
}

/// Writes `key` through `client`, retrying refusals worth retrying (no
/// leader yet, leadership moving) with one idempotency key, so the write
/// applies once.
pub async fn put_retrying(client: &Client, key: &str, value: &str) -> WriteResult {
    let options = WriteOptions { idempotency_key: Some(idempotency_key()), ..WriteOptions::default() };
    let value = Bytes::from(value.to_string());
    // A loop rather than `eventually`: writers run as spawned tasks, and the
    // futures of async closures are not `Send` for every lifetime.
    let deadline = Instant::now() + WAIT;
    loop {
        match retryable(client.put(key, value.clone(), options.clone()).await) {
            Ok(written) => return written,
            Err(last) if Instant::now() >= deadline => {
                panic!("PUT {key} through {} failed for {WAIT:?}; last: {last}", client.endpoint())
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Passes on successes and refusals that are final; a refusal worth
/// retrying becomes the complaint of a poll.
fn retryable<T>(result: Result<T, ClientError>) -> Result<T, String> {
    match result {
        Ok(value) => Ok(value),
        Err(error) if error.is_retryable() => Err(error.to_string()),
        Err(error) => panic!("a request failed for good: {error}"),
    }
}

/// A fresh idempotency key for one logical write (its retries reuse it).
/// Each write gets a client name of its own, so writes sent concurrently
/// never look like an older request of the same client.
fn idempotency_key() -> String {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    format!("test-writer-{}/1", WRITES.fetch_add(1, Ordering::Relaxed))
}

fn new_node(directory: &Path, id: u64) -> Node {
    Node {
        id,
        ports: Ports::pick(),
        data_dir: directory.join(format!("node-{id}")),
        log_path: directory.join(format!("node-{id}.log")),
        child: Mutex::new(None),
    }
}

fn issue_certificate(ca: &ClusterCa, directory: &Path, id: u64) {
    ca.issue_node(NodeId(id), &["127.0.0.1".into()]).unwrap().write_pem_files(directory).unwrap();
}

fn client_options(options: &Options, certs: &Path, ports: &Ports) -> ClientOptions {
    let mut client = ClientOptions::new(base_url(options, ports));
    client.ca = Some(certs.join("ca.pem"));
    client.admin_token = options.admin_token.clone();
    if options.client_tls {
        client.client_cert = Some(certs.join(format!("node-{CLIENT_CERTIFICATE_ID}.pem")));
        client.client_key = Some(certs.join(format!("node-{CLIENT_CERTIFICATE_ID}.key")));
    }
    client
}

fn base_url(options: &Options, ports: &Ports) -> String {
    let scheme = if options.client_tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{}", ports.client)
}

/// The sum of every series of `name` in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .map(|line| {
            let value = line.rsplit(' ').next().unwrap();
            value.parse::<f64>().unwrap_or_else(|_| panic!("not a sample: {line:?}"))
        })
        .sum()
}
