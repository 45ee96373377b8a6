//! The `raft-node` processes of a run: where each listens, how it starts,
//! stops, pauses and resumes, and the write-ahead log tear done between a
//! `kill -9` and a restart.
//!
//! Node `i` listens on its own loopback address `127.<subnet>.0.<i>`, the
//! client API on [`CLIENT_PORT`] and peers on [`PEER_PORT`], so firewall
//! rules between two addresses cut exactly the traffic between two nodes.
//! Every node runs with `--dangerous-fault-injection`, which also makes it
//! forward client requests from its own address. Its output goes to
//! `node-<i>.log` in the run's directory, appended to across restarts.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use raft_core::types::NodeId;
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::ClusterId;

use crate::rng::Rng;

/// The client API port of every node (each node has its own address).
pub const CLIENT_PORT: u16 = 27_180;
/// The peer (QUIC) port of every node.
pub const PEER_PORT: u16 = 27_170;
/// The cluster id the certificates name.
pub const CLUSTER_ID: &str = "chaos";
/// The highest node id: the last byte of a loopback address.
pub const MAX_NODE_ID: u64 = 254;
/// How many lines of a node's log a crash report quotes.
const LOG_TAIL_LINES: usize = 30;

/// Why something about the processes failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Certificates could not be made.
    #[error("certificates: {0}")]
    Certificates(String),
    /// More nodes than loopback addresses.
    #[error("node id {0} is above {MAX_NODE_ID}: no loopback address is left")]
    TooManyNodes(u64),
    /// A node's store refused a fault-injection step.
    #[error("{what}: {source}")]
    Storage {
        /// What was being done.
        what: String,
        /// The error.
        source: raft_core::storage::StorageError,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// How a node process starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// `--bootstrap` with these initial voters.
    Bootstrap(Vec<u64>),
    /// From its data directory.
    Restart,
    /// `--join <url>`: learns the members there and waits to be added.
    Join(String),
}

/// Where a node stands in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A member (voter or learner) as far as the runner knows.
    Member,
    /// Started with `--join`, not yet added.
    Joining,
    /// Removed from the cluster; its process is stopped for good.
    Removed,
}

/// One node.
#[derive(Debug)]
pub struct NodeProcess {
    /// Its id.
    pub id: u64,
    /// Where it stands.
    pub standing: Standing,
    /// Whether it is stopped with SIGSTOP.
    pub paused: bool,
    child: Option<Child>,
    data_dir: PathBuf,
    log_path: PathBuf,
}

impl NodeProcess {
    /// Whether its process runs (paused or not).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Settings of the processes.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// The `raft-node` binary.
    pub binary: PathBuf,
    /// The run's directory: logs, data (under `data/`), certificates.
    pub directory: PathBuf,
    /// The second byte of every node address.
    pub subnet: u8,
    /// Extra flags for every node (timing, snapshots).
    pub node_flags: Vec<String>,
}

/// The processes of a run.
pub struct Cluster {
    settings: ClusterSettings,
    ca: ClusterCa,
    nodes: BTreeMap<u64, NodeProcess>,
}

impl Cluster {
    /// Makes the cluster's CA; no process starts yet.
    pub fn new(settings: ClusterSettings) -> Result<Cluster, ClusterError> {
        let certs = settings.directory.join("certs");
        let cluster_id = ClusterId::new(CLUSTER_ID).map_err(|e| ClusterError::Certificates(e.to_string()))?;
        let ca = ClusterCa::generate(&cluster_id).map_err(|e| ClusterError::Certificates(e.to_string()))?;
        ca.write_pem_files(&certs).map_err(|e| ClusterError::Certificates(e.to_string()))?;
        Ok(Cluster { settings, ca, nodes: BTreeMap::new() })
    }

    /// Node `id`'s address.
    pub fn ip(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(127, self.settings.subnet, 0, id.min(MAX_NODE_ID) as u8)
    }

    /// Node `id`'s client API base URL.
    pub fn url(&self, id: u64) -> String {
        format!("http://{}:{CLIENT_PORT}", self.ip(id))
    }

    /// Every node the runner knows, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeProcess> {
        self.nodes.values()
    }

    /// Node `id`, if known.
    pub fn node(&self, id: u64) -> Option<&NodeProcess> {
        self.nodes.get(&id)
    }

    /// Members (not removed, not joining), in id order.
    pub fn members(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.standing == Standing::Member).map(|n| n.id).collect()
    }

    /// Members whose process runs and is not paused.
    pub fn live_members(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.standing == Standing::Member && n.is_running() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// The highest id ever used.
    pub fn highest_id(&self) -> u64 {
        self.nodes.keys().next_back().copied().unwrap_or(0)
    }

    /// Starts node `id` (which must not run).
    pub fn spawn(&mut self, id: u64, plan: Plan) -> Result<(), ClusterError> {
        if id == 0 || id > MAX_NODE_ID {
            return Err(ClusterError::TooManyNodes(id));
        }
        // Each node gets a directory of its own: writing a node's files also
        // rewrites `ca.pem` there, which a running node might be reading.
        let certs = self.settings.directory.join("certs").join(format!("node-{id}"));
        if !certs.join(format!("node-{id}.pem")).exists() {
            self.ca
                .issue_node(NodeId(id), &[self.ip(id).to_string()])
                .and_then(|certificate| certificate.write_pem_files(&certs))
                .map_err(|e| ClusterError::Certificates(e.to_string()))?;
        }
        let data_dir = self.settings.directory.join("data").join(format!("node-{id}"));
        let log_path = self.settings.directory.join(format!("node-{id}.log"));
        let ip = self.ip(id);
        let mut args: Vec<String> = vec![
            "run".into(),
            format!("--id={id}"),
            format!("--cluster-id={CLUSTER_ID}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client={ip}:{CLIENT_PORT}"),
            format!("--listen-peer={ip}:{PEER_PORT}"),
            format!("--tls-ca={}", certs.join("ca.pem").display()),
            format!("--tls-cert={}", certs.join(format!("node-{id}.pem")).display()),
            format!("--tls-key={}", certs.join(format!("node-{id}.key")).display()),
            "--dangerous-fault-injection".into(),
        ];
        args.extend(self.settings.node_flags.iter().cloned());
        let standing = match &plan {
            Plan::Bootstrap(members) => {
                args.push("--bootstrap".into());
                for member in members {
                    let ip = self.ip(*member);
                    args.push(format!(
                        "--initial-member={member}={ip}:{PEER_PORT}=http://{ip}:{CLIENT_PORT}"
                    ));
                }
                Standing::Member
            }
            Plan::Restart => Standing::Member,
            Plan::Join(url) => {
                args.push(format!("--join={url}"));
                Standing::Joining
            }
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let _ = writeln!(log, "=== {} {}", self.settings.binary.display(), args.join(" "));
        let stderr = log.try_clone().map_err(io("duplicating the log file"))?;
        let child = Command::new(&self.settings.binary)
            .args(&args)
            .env("RAFT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(io(format!("starting {}", self.settings.binary.display())))?;
        let node = self.nodes.entry(id).or_insert_with(|| NodeProcess {
            id,
            standing,
            paused: false,
            child: None,
            data_dir: data_dir.clone(),
            log_path: log_path.clone(),
        });
        if node.standing != Standing::Member || standing == Standing::Joining {
            node.standing = standing;
        }
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// `kill -9` node `id` and waits for it; nothing if it is not running.
    pub fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            node.paused = false;
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`) to node `id`'s process.
    fn signal(&mut self, id: u64, signal: &str) -> bool {
        let Some(pid) = self.nodes.get(&id).and_then(|n| n.child.as_ref()).map(Child::id) else {
            return false;
        };
        Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// SIGSTOP: the process freezes where it is.
    pub fn pause(&mut self, id: u64) -> bool {
        let sent = self.signal(id, "STOP");
        if let (true, Some(node)) = (sent, self.nodes.get_mut(&id)) {
            node.paused = true;
        }
        sent
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) -> bool {
        let sent = self.signal(id, "CONT");
        if let Some(node) = self.nodes.get_mut(&id) {
            node.paused = false;
        }
        sent
    }

    /// Marks node `id` removed, stops its process for good and deletes its
    /// data: a long run replaces dozens of nodes, and each one's
    /// write-ahead log preallocates 64 MiB segments. Its log file stays.
    pub fn retire(&mut self, id: u64) {
        self.kill(id);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.standing = Standing::Removed;
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
    }

    /// Marks a joining node as a member.
    pub fn admit(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if node.standing == Standing::Joining {
                node.standing = Standing::Member;
            }
        }
    }

    /// Processes that exited without being told to: `(id, what happened)`.
    /// Their entries stay (not running) so that the runner can restart them.
    pub fn reap(&mut self) -> Vec<(u64, String)> {
        let mut exited = Vec::new();
        for node in self.nodes.values_mut() {
            let status = node.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = status {
                node.child = None;
                node.paused = false;
                let tail = log_tail(&node.log_path, LOG_TAIL_LINES);
                exited.push((
                    node.id,
                    format!("node {} exited ({status}); its log ends with:\n{tail}", node.id),
                ));
            }
        }
        exited
    }

    /// Writes a torn record past the last record of node `id`'s newest
    /// write-ahead log segment (the node must be stopped). Returns what was
    /// done, for the report.
    pub fn tear_wal_tail(&self, id: u64, pick: u64) -> Result<String, ClusterError> {
        let Some(node) = self.nodes.get(&id) else { return Ok(format!("node {id} is unknown")) };
        tear_wal_tail(&node.data_dir, pick)
    }

    /// Throws away the write-ahead log writes node `id` (stopped) had not
    /// flushed, as a power failure would; returns how many bytes of records
    /// were dropped.
    pub fn discard_unsynced(&self, id: u64) -> Result<u64, ClusterError> {
        let Some(node) = self.nodes.get(&id) else { return Ok(0) };
        let log = node.data_dir.join(raft_storage_redb::LOG_FILE_NAME);
        raft_storage_redb::fault_injection::discard_unsynced_writes(&log).map_err(|source| {
            ClusterError::Storage { what: format!("dropping unflushed writes of node {id}"), source }
        })
    }

    /// Kills every process (SIGCONT first is not needed: SIGKILL ends a
    /// stopped process too).
    pub fn kill_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }

    /// Removes the nodes' data directories (after a passing run: the
    /// write-ahead log preallocates 64 MiB segments).
    pub fn remove_data(&self) {
        let _ = std::fs::remove_dir_all(self.settings.directory.join("data"));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The size of a WAL segment's header (see raft-storage-redb/DESIGN.md).
const SEGMENT_HEADER_BYTES: usize = 64;
/// The size of a WAL record's header.
const RECORD_HEADER_BYTES: usize = 24;
/// WAL records start at multiples of this.
const RECORD_ALIGNMENT: usize = 8;
/// The longest torn record written.
const MAX_TORN_BYTES: u64 = 4_096;

/// The offset just past the last record of a segment, by walking the
/// records' length fields from the header on; `None` if it holds none.
/// (The last non-zero byte would not do: a record's body may end in zeros.)
fn end_of_records(segment: &[u8]) -> Option<usize> {
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset + RECORD_HEADER_BYTES <= segment.len() {
        let length = u32::from_le_bytes(segment[offset..offset + 4].try_into().ok()?) as usize;
        if length == 0 {
            break;
        }
        let next = (offset + RECORD_HEADER_BYTES + length).div_ceil(RECORD_ALIGNMENT) * RECORD_ALIGNMENT;
        if next > segment.len() {
            break;
        }
        offset = next;
    }
    (offset > SEGMENT_HEADER_BYTES).then_some(offset)
}

/// Simulates a write cut short by a crash: past the last record of the
/// newest segment that holds any, writes the start of a record (a header
/// claiming a longer body, then random bytes) that never finished. Per
/// raft-storage-redb/DESIGN.md, recovery must find it, see that no intact
/// record follows, zero it and carry on; every acknowledged record before
/// it must survive. The segment's length is unchanged (segments are
/// preallocated, and a changed length is corruption, not a torn write).
pub fn tear_wal_tail(data_dir: &Path, pick: u64) -> Result<String, ClusterError> {
    let wal = data_dir.join(format!("{}.wal", raft_storage_redb::LOG_FILE_NAME));
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&wal)
        .map_err(io(format!("listing {}", wal.display())))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    // Segment names are zero-padded numbers: name order is number order.
    segments.sort();
    for segment in segments.iter().rev() {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment)
            .map_err(io(format!("opening {}", segment.display())))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(format!("reading {}", segment.display())))?;
        let Some(end) = end_of_records(&bytes) else { continue };
        let mut rng = Rng::new(pick);
        let length = rng.between(8, MAX_TORN_BYTES) as usize;
        if end + length > bytes.len() {
            return Ok(format!("{} has no room after its last record; not torn", segment.display()));
        }
        let mut torn = vec![0u8; length];
        for byte in torn.iter_mut() {
            *byte = rng.next_u64() as u8;
        }
        // A record header that promises more body than was written.
        let claimed = u32::try_from(length * 2).unwrap_or(u32::MAX);
        torn[..4].copy_from_slice(&claimed.to_le_bytes());
        torn[4] = 1;
        file.seek(SeekFrom::Start(end as u64)).map_err(io("seeking in the segment"))?;
        file.write_all(&torn).map_err(io("writing the torn record"))?;
        file.sync_all().map_err(io("syncing the segment"))?;
        let name = segment.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(format!("{length} torn bytes at offset {end} of {name}"));
    }
    Ok("no write-ahead log segment holds a record; not torn".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_written_after_the_last_record() {
        let dir = std::env::temp_dir().join(format!("raft-chaos-tear-{}", std::process::id()));
        let wal = dir.join("log.redb.wal");
        std::fs::create_dir_all(&wal).unwrap();
        let mut segment = vec![0u8; 64 * 1024];
        segment[..8].copy_from_slice(b"RAFTWAL\0");
        // One record with a 36-byte body ending in zeros, from offset 64:
        // 24 + 36 = 60 bytes, padded to 64, so the next starts at 128.
        segment[64..68].copy_from_slice(&36u32.to_le_bytes());
        segment[68] = 1;
        for byte in &mut segment[72..120] {
            *byte = 0xAB;
        }
        for byte in &mut segment[110..124] {
            *byte = 0;
        }
        std::fs::write(wal.join("00000000000000000001.seg"), &segment).unwrap();
        // A newer, empty spare segment: the tear must go to the older one.
        let mut spare = vec![0u8; 64 * 1024];
        spare[..8].copy_from_slice(b"RAFTWAL\0");
        std::fs::write(wal.join("00000000000000000002.seg"), &spare).unwrap();

        let done = tear_wal_tail(&dir, 3).unwrap();
        assert!(done.contains("offset 128 of 00000000000000000001.seg"), "{done}");
        let after = std::fs::read(wal.join("00000000000000000001.seg")).unwrap();
        assert_eq!(after.len(), segment.len(), "the segment keeps its length");
        assert_eq!(&after[..128], &segment[..128], "the records before are untouched");
        assert_ne!(&after[128..132], &[0, 0, 0, 0]);
        assert_eq!(std::fs::read(wal.join("00000000000000000002.seg")).unwrap(), spare);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_segment_means_no_tear() {
        let dir = std::env::temp_dir().join(format!("raft-chaos-tear-none-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("log.redb.wal")).unwrap();
        assert!(tear_wal_tail(&dir, 1).unwrap().contains("not torn"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
