//! Starting, killing and restarting the two clusters' processes, and
//! asking their members who leads.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_core::types::NodeId;
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::ClusterId;

use super::System;

/// How to start one member: its first start and its restarts differ for
/// raft-node (only the first start bootstraps).
struct Member {
    program: PathBuf,
    first_arguments: Vec<OsString>,
    restart_arguments: Vec<OsString>,
    log: PathBuf,
}

/// The election timing a cluster runs with.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Heartbeat interval, in ms (raft-node: one tick).
    pub heartbeat_ms: u64,
    /// Minimum election timeout, in ms; both systems randomise it in
    /// `[timeout, 2 × timeout)`.
    pub election_timeout_ms: u64,
}

/// Three members of one system, killed when dropped.
pub struct Cluster {
    pub system: System,
    members: Vec<Member>,
    children: Vec<Option<Child>>,
    /// Each member's client URL, `http://127.0.0.1:port`.
    pub client_urls: Vec<String>,
    /// etcd's member ids (hex strings as its JSON gateway writes them), in
    /// member order; raft-node's ids are 1, 2, 3.
    etcd_member_ids: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one member says about the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// The leader it knows of, as a member index (0..3).
    pub leader: Option<usize>,
    /// Its applied index (etcd: its raft index).
    pub index: u64,
    /// Its current term.
    pub term: u64,
}

impl Cluster {
    /// Starts a fresh 3-node raft-node cluster in `directory`.
    /// `timing: None` keeps raft-node's defaults.
    pub fn raft_node(binary: &Path, directory: &Path, timing: Option<Timing>) -> Result<Cluster, String> {
        let certs = directory.join("certs");
        let cluster = ClusterId::new("bench").map_err(|e| e.to_string())?;
        let ca = ClusterCa::generate(&cluster).map_err(|e| e.to_string())?;
        ca.write_pem_files(&certs).map_err(|e| e.to_string())?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| format!("{}=127.0.0.1:{peer}=http://127.0.0.1:{client}", i + 1))
            .collect();
        // Every certificate first: writing a node's files rewrites the
        // shared ca.pem, which a node already starting would read half-written.
        for id in 1..=ports.len() as u64 {
            ca.issue_node(NodeId(id), &["127.0.0.1".into()])
                .and_then(|node| node.write_pem_files(&certs))
                .map_err(|e| e.to_string())?;
        }
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let mut arguments: Vec<OsString> = vec!["run".into(), "--id".into(), id.to_string().into()];
            arguments.extend(["--cluster-id", "bench"].map(OsString::from));
            arguments.extend(["--data-dir".into(), directory.join(format!("node-{id}")).into_os_string()]);
            arguments.extend(["--listen-client".into(), format!("127.0.0.1:{client}").into()]);
            arguments.extend(["--listen-peer".into(), format!("127.0.0.1:{peer}").into()]);
            arguments.extend(["--tls-ca".into(), certs.join("ca.pem").into_os_string()]);
            arguments.extend(["--tls-cert".into(), certs.join(format!("node-{id}.pem")).into_os_string()]);
            arguments.extend(["--tls-key".into(), certs.join(format!("node-{id}.key")).into_os_string()]);
            if let Some(timing) = timing {
                let ticks = timing.election_timeout_ms / timing.heartbeat_ms.max(1);
                arguments.extend(["--tick-interval-ms".into(), timing.heartbeat_ms.to_string().into()]);
                arguments.extend(["--election-timeout-ticks".into(), ticks.to_string().into()]);
            }
            let restart_arguments = arguments.clone();
            let mut first_arguments = arguments;
            first_arguments.push("--bootstrap".into());
            for member in &initial {
                first_arguments.extend(["--initial-member".into(), member.into()]);
            }
            members.push(Member {
                program: binary.to_path_buf(),
                first_arguments,
                restart_arguments,
                log: directory.join(format!("node-{id}.log")),
            });
        }
        let client_urls = ports.iter().map(|(client, _)| format!("http://127.0.0.1:{client}")).collect();
        Cluster::start(System::RaftNode, members, client_urls)
    }

    /// Starts a fresh 3-member etcd cluster in `directory`.
    /// `timing: None` keeps etcd's defaults.
    pub fn etcd(directory: &Path, timing: Option<Timing>) -> Result<Cluster, String> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial_cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let mut arguments: Vec<OsString> = vec!["--name".into(), name.clone().into()];
            arguments.extend(["--data-dir".into(), directory.join(&name).into_os_string()]);
            for flag in ["--listen-client-urls", "--advertise-client-urls"] {
                arguments.extend([flag.into(), format!("http://127.0.0.1:{client}").into()]);
            }
            for flag in ["--listen-peer-urls", "--initial-advertise-peer-urls"] {
                arguments.extend([flag.into(), format!("http://127.0.0.1:{peer}").into()]);
            }
            arguments.extend(["--initial-cluster".into(), initial_cluster.join(",").into()]);
            arguments.extend(
                ["--initial-cluster-state", "new", "--initial-cluster-token", "bench", "--log-level", "warn"]
                    .map(OsString::from),
            );
            if let Some(timing) = timing {
                arguments.extend(["--heartbeat-interval".into(), timing.heartbeat_ms.to_string().into()]);
                arguments
                    .extend(["--election-timeout".into(), timing.election_timeout_ms.to_string().into()]);
                // raft-node runs pre-vote; etcd 3.4 has it off by default.
                arguments.push("--pre-vote=true".into());
            }
            // A restarted member finds its data directory and ignores the
            // initial-cluster flags.
            members.push(Member {
                program: PathBuf::from("etcd"),
                first_arguments: arguments.clone(),
                restart_arguments: arguments,
                log: directory.join(format!("{name}.log")),
            });
        }
        let client_urls = ports.iter().map(|(client, _)| format!("http://127.0.0.1:{client}")).collect();
        Cluster::start(System::Etcd, members, client_urls)
    }

    fn start(system: System, members: Vec<Member>, client_urls: Vec<String>) -> Result<Cluster, String> {
        if let Some(parent) = members.first().and_then(|m| m.log.parent()) {
            std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        let mut cluster =
            Cluster { system, children: Vec::new(), members, client_urls, etcd_member_ids: Vec::new() };
        for index in 0..cluster.members.len() {
            let child = cluster.spawn(index, true)?;
            cluster.children.push(Some(child));
        }
        if system == System::Etcd {
            let deadline = Instant::now() + Duration::from_secs(30);
            for url in cluster.client_urls.clone() {
                let id = loop {
                    let status = blocking_json(&url, "POST", "/v3/maintenance/status", "{}");
                    if let Some(id) = status.as_ref().and_then(|s| s["header"]["member_id"].as_str()) {
                        break id.to_string();
                    }
                    if Instant::now() > deadline {
                        return Err(format!("etcd at {url} did not answer within 30 s"));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                cluster.etcd_member_ids.push(id);
            }
        }
        Ok(cluster)
    }

    fn spawn(&self, index: usize, first: bool) -> Result<Child, String> {
        let member = &self.members[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(|e| format!("opening {}: {e}", member.log.display()))?;
        let mut command = Command::new(&member.program);
        command
            .args(if first { &member.first_arguments } else { &member.restart_arguments })
            .env("RAFT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        command.spawn().map_err(|e| match self.system {
            System::Etcd => {
                format!("starting etcd: {e} (install it with apt-get install -y etcd-server, or pass --skip-etcd)")
            }
            System::RaftNode => format!("starting {}: {e}", member.program.display()),
        })
    }

    /// Sends SIGKILL to a member and reaps it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again from its data directory.
    pub fn restart(&mut self, index: usize) -> Result<(), String> {
        if self.children[index].is_none() {
            self.children[index] = Some(self.spawn(index, false)?);
        }
        Ok(())
    }

    /// etcd's member ids in member order (empty for raft-node).
    pub fn etcd_member_ids(&self) -> &[String] {
        &self.etcd_member_ids
    }

    /// A member's process id (for its peak RSS).
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.children[index].as_ref().map(Child::id)
    }

    /// What member `index` reports, or `None` if it does not answer.
    pub fn view(&self, index: usize) -> Option<View> {
        let url = &self.client_urls[index];
        match self.system {
            System::RaftNode => {
                let status = blocking_json(url, "GET", "/v1/cluster", "")?;
                let leader =
                    status["leader"]["id"].as_u64().and_then(|id| id.checked_sub(1)).map(|i| i as usize);
                Some(View {
                    leader,
                    index: status["applied_index"].as_u64()?,
                    term: status["term"].as_u64()?,
                })
            }
            System::Etcd => {
                let status = blocking_json(url, "POST", "/v3/maintenance/status", "{}")?;
                let leader = status["leader"].as_str();
                let leader = leader.and_then(|l| self.etcd_member_ids.iter().position(|id| id == l));
                let index = status["raftIndex"].as_str().and_then(|i| i.parse().ok())?;
                let term = status["raftTerm"].as_str().and_then(|t| t.parse().ok())?;
                Some(View { leader, index, term })
            }
        }
    }

    /// The leader's index once every running member names the same one,
    /// within `timeout`.
    pub fn agreed_leader(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<usize> =
                (0..self.children.len()).filter(|&i| self.children[i].is_some()).collect();
            let leaders: Vec<Option<usize>> =
                running.iter().map(|&i| self.view(i).and_then(|v| v.leader)).collect();
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader)) && running.contains(leader) {
                    return Ok(*leader);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the {} cluster agreed on no leader within {timeout:?}",
                    self.system.name()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A minimal blocking HTTP/1.1 exchange for status probes (the load goes
/// through hyper); the body of a 200 answer, parsed as JSON.
pub fn blocking_json(url: &str, method: &str, path: &str, body: &str) -> Option<serde_json::Value> {
    let address = url.strip_prefix("http://")?;
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    let (_, body) = response.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = tcp.local_addr().expect("a bound address").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
