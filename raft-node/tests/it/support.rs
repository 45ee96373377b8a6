//! Shared test support: certificates, free ports, configurations.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use raft_core::types::NodeId;
use raft_node::config::{NodeConfig, RunArgs};
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::ClusterId;

/// How long a test waits for a cluster to get somewhere.
pub const WAIT: Duration = Duration::from_secs(30);

/// A port free for both TCP and UDP on 127.0.0.1 right now, never handed
/// out before by this process.
///
/// It is taken below the kernel's ephemeral range (where `bind(0)` and
/// outgoing connections take their ports), so that a node restarted on the
/// same ports cannot find one of them taken by a client's connection in
/// the meantime.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|start| *start > 20_000)
        .unwrap_or(32_768);
    let range = 10_000..ephemeral_start;
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    loop {
        let draw = splitmix64(seed ^ DRAWS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9));
        let port = range.start + (draw % u64::from(range.end - range.start)) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
}

/// One step of SplitMix64: a well-mixed 64-bit value from any input.
fn splitmix64(input: u64) -> u64 {
    let mut z = input.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The addresses of one test node.
#[derive(Clone, Debug)]
pub struct Ports {
    pub client: u16,
    pub peer: u16,
}

impl Ports {
    pub fn pick() -> Ports {
        Ports { client: free_port(), peer: free_port() }
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    pub fn peer_address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.peer))
    }

    pub fn member(&self, id: u64) -> String {
        format!("{id}={}={}", self.peer_address(), self.client_url())
    }
}

/// Writes a CA for `cluster` and certificates for `nodes` into `directory`.
pub fn write_certificates(directory: &Path, cluster: &str, nodes: &[u64]) {
    let cluster = ClusterId::new(cluster).unwrap();
    let ca = ClusterCa::generate(&cluster).unwrap();
    ca.write_pem_files(directory).unwrap();
    for node in nodes {
        ca.issue_node(NodeId(*node), &["127.0.0.1".into()]).unwrap().write_pem_files(directory).unwrap();
    }
}

/// Run flags for node `id` of a test cluster; timing shortened for tests.
pub fn run_args(id: u64, ports: &Ports, data: &Path, certs: &Path) -> RunArgs {
    RunArgs {
        id: Some(id),
        cluster_id: Some("test".into()),
        data_dir: Some(data.to_path_buf()),
        listen_client: Some(SocketAddr::from(([127, 0, 0, 1], ports.client))),
        listen_peer: Some(ports.peer_address()),
        tls_ca: Some(certs.join("ca.pem")),
        tls_cert: Some(certs.join(format!("node-{id}.pem"))),
        tls_key: Some(certs.join(format!("node-{id}.key"))),
        tick_interval_ms: Some(10),
        ..RunArgs::default()
    }
}

pub fn config(args: &RunArgs) -> NodeConfig {
    NodeConfig::resolve(args).unwrap()
}

/// A plain-HTTP client (reqwest needs a TLS configuration even then; this
/// one trusts no root and uses ring, the project's only provider).
pub fn http_client() -> reqwest::Client {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap()
}
