//! Typed recording helpers for one node.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use raft_core::protocol::EngineStats;
use raft_core::runtime::{NodeStatus, ReadConsistency};
use raft_core::storage::CheckpointInfo;
use raft_core::types::{LogIndex, NodeId, Role, Term};

use crate::names::{self, labels};

/// One peer's transport figures, copied by the node from its transport
/// (for the QUIC transport: `TransportStats::peers`). Counters are
/// cumulative since the transport started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerTransportFigures {
    /// The peer.
    pub peer: NodeId,
    /// Whether a connection is established now.
    pub connected: bool,
    /// The connection's smoothed round-trip time, when connected.
    pub round_trip_time: Option<Duration>,
    /// Messages sent to the peer.
    pub messages_sent: u64,
    /// Messages received from the peer.
    pub messages_received: u64,
    /// Bytes sent to the peer.
    pub bytes_sent: u64,
    /// Bytes received from the peer.
    pub bytes_received: u64,
    /// Connections established with the peer.
    pub connections_established: u64,
    /// Messages waiting in the peer's queues now.
    pub queued_messages: u64,
    /// Cumulative errors by kind, in snake case (for example
    /// `("dial_failure", 3)`).
    pub errors: Vec<(&'static str, u64)>,
}

/// The whole transport's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportFigures {
    /// Per peer.
    pub peers: Vec<PeerTransportFigures>,
    /// Cumulative connections refused or closed by this node, by reason in
    /// snake case.
    pub rejections: Vec<(&'static str, u64)>,
    /// Connections open on the endpoint now.
    pub open_connections: u64,
}

/// What [`NodeMetrics`] remembers between statuses.
#[derive(Debug, Default)]
struct Memory {
    /// The last leader seen, with its term.
    leader: Option<(Term, NodeId)>,
    /// Peers whose lag was last reported as leader.
    lagging_peers: BTreeSet<NodeId>,
}

/// Records one node's metrics through the `metrics` facade, every series
/// labelled `node="<id>"`.
///
/// The methods look the recorder up on each call, so a `NodeMetrics` works
/// with the global recorder and inside [`metrics::with_local_recorder`].
#[derive(Debug)]
pub struct NodeMetrics {
    node: String,
    memory: Mutex<Memory>,
}

/// The label value of a role.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre_candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

const ROLES: [Role; 4] = [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader];

/// The label value of a read consistency.
fn consistency_name(consistency: ReadConsistency) -> &'static str {
    match consistency {
        ReadConsistency::Linearizable => "linearizable",
        ReadConsistency::Lease => "lease",
        ReadConsistency::Stale => "stale",
    }
}

/// A `u64` as a gauge value (exact up to 2^53, ample for indexes and terms).
fn as_gauge(value: u64) -> f64 {
    value as f64
}

impl NodeMetrics {
    /// Metrics for node `node_id`. Sets `raft_process_start_time_seconds`.
    pub fn new(node_id: NodeId) -> Self {
        let metrics = NodeMetrics { node: node_id.get().to_string(), memory: Mutex::new(Memory::default()) };
        gauge!(names::PROCESS_START_TIME_SECONDS, labels::NODE => metrics.node())
            .set(crate::unix_time_seconds());
        metrics
    }

    fn node(&self) -> String {
        self.node.clone()
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // The memory holds plain values: a panic elsewhere leaves it usable.
        self.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the process gauges (resident memory, CPU time, open file
    /// descriptors) from `/proc/self`; does nothing where that is missing.
    pub fn record_process(&self) {
        let node = self.node();
        if let Some(process) = crate::process::ProcessFigures::read() {
            gauge!(names::PROCESS_RESIDENT_MEMORY_BYTES, labels::NODE => node.clone())
                .set(as_gauge(process.resident_memory_bytes));
            gauge!(names::PROCESS_CPU_SECONDS, labels::NODE => node.clone()).set(process.cpu_seconds);
            gauge!(names::PROCESS_OPEN_FDS, labels::NODE => node).set(as_gauge(process.open_fds));
        }
    }

    /// Sets the state gauges from a status and derives
    /// `raft_leader_changes_total` (a known leader differing from the last
    /// one seen, by id or term) and the per-peer progress gauges (on a
    /// leader; lag reset to 0 for peers no longer reported).
    pub fn record_status(&self, status: &NodeStatus) {
        let node = self.node();
        gauge!(names::TERM, labels::NODE => node.clone()).set(as_gauge(status.term.get()));
        for role in ROLES {
            let playing = status.role == Some(role);
            gauge!(names::ROLE_GAUGE, labels::NODE => node.clone(), labels::ROLE => role_name(role))
                .set(if playing { 1.0 } else { 0.0 });
        }
        let has_leader = status.leader != NodeId::NONE;
        gauge!(names::HAS_LEADER, labels::NODE => node.clone()).set(if has_leader { 1.0 } else { 0.0 });
        gauge!(names::LEADER_ID, labels::NODE => node.clone()).set(as_gauge(status.leader.get()));
        gauge!(names::COMMIT_INDEX, labels::NODE => node.clone()).set(as_gauge(status.commit_index.get()));
        gauge!(names::APPLIED_INDEX, labels::NODE => node.clone()).set(as_gauge(status.applied_index.get()));
        gauge!(names::LAST_LOG_INDEX, labels::NODE => node.clone()).set(as_gauge(status.last_index.get()));
        gauge!(names::SNAPSHOT_INDEX, labels::NODE => node.clone())
            .set(as_gauge(status.snapshot_index.get()));
        gauge!(names::VOTERS, labels::NODE => node.clone()).set(status.membership.voters.len() as f64);

        let mut memory = self.memory();
        // Touch the counter so it renders (as 0) before the first change.
        let changes = counter!(names::LEADER_CHANGES, labels::NODE => node.clone());
        if has_leader {
            let current = (status.term, status.leader);
            if memory.leader != Some(current) {
                memory.leader = Some(current);
                changes.increment(1);
            }
        }

        let leading = status.role == Some(Role::Leader);
        let mut reported = BTreeSet::new();
        if leading {
            for (peer, match_index) in &status.peers {
                let peer_label = peer.get().to_string();
                gauge!(names::PEER_MATCH_INDEX, labels::NODE => node.clone(), labels::PEER => peer_label.clone())
                    .set(as_gauge(match_index.get()));
                let lag = status.last_index.get().saturating_sub(match_index.get());
                gauge!(names::PEER_LAG_ENTRIES, labels::NODE => node.clone(), labels::PEER => peer_label)
                    .set(as_gauge(lag));
                reported.insert(*peer);
            }
        }
        for gone in memory.lagging_peers.difference(&reported) {
            gauge!(names::PEER_LAG_ENTRIES, labels::NODE => node.clone(), labels::PEER => gone.get().to_string())
                .set(0.0);
        }
        memory.lagging_peers = reported;
    }

    /// Sets the checkpoint gauges from the checkpoints durable on this node
    /// and the index of the last rollback it applied.
    pub fn record_checkpoints(&self, checkpoints: &[CheckpointInfo], last_rollback_index: Option<LogIndex>) {
        let node = self.node();
        let bytes: u64 = checkpoints.iter().map(|checkpoint| checkpoint.size_bytes).sum();
        gauge!(names::CHECKPOINTS, labels::NODE => node.clone()).set(as_gauge(checkpoints.len() as u64));
        gauge!(names::CHECKPOINT_BYTES, labels::NODE => node.clone()).set(as_gauge(bytes));
        gauge!(names::CHECKPOINT_LAST_ROLLBACK_INDEX, labels::NODE => node)
            .set(as_gauge(last_rollback_index.map_or(0, |index| index.get())));
    }

    /// Sets the engine's counters from its cumulative figures
    /// (`Engine::stats`). The values are absolute: recording the same
    /// figures twice counts nothing twice, and a smaller value (never
    /// expected) leaves the counter where it is.
    pub fn record_engine_stats(&self, stats: &EngineStats) {
        let node = self.node();
        let counters = [
            (names::ELECTIONS_STARTED, stats.elections_started),
            (names::PRE_VOTES_STARTED, stats.pre_votes_started),
            (names::LEADERSHIP_WON, stats.leadership_won),
            (names::PROTOCOL_VIOLATIONS, stats.protocol_violations),
            (names::VOTES_IGNORED_IN_LEASE, stats.votes_ignored_in_lease),
            (names::PROPOSALS_REFUSED, stats.proposals_refused),
            (names::SNAPSHOT_CHUNKS_SENT, stats.snapshot_chunks_sent),
            (names::SNAPSHOT_REWINDS, stats.snapshot_rewinds),
            (names::SNAPSHOTS_INSTALLED, stats.snapshots_installed),
        ];
        for (name, value) in counters {
            counter!(name, labels::NODE => node.clone()).absolute(value);
        }
        let dropped = [
            ("stale_term", stats.dropped_stale_term),
            ("unknown_peer", stats.dropped_unknown_peer),
            ("wrong_destination", stats.dropped_wrong_destination),
            ("irrelevant", stats.dropped_irrelevant),
        ];
        for (reason, value) in dropped {
            counter!(names::MESSAGES_DROPPED, labels::NODE => node.clone(), labels::REASON => reason)
                .absolute(value);
        }
    }

    /// Records the transport's figures: cumulative counters as absolute
    /// values, reachability and queue gauges, and one round-trip-time sample
    /// per connected peer into `raft_peer_rtt_seconds` (so call it on a
    /// fixed period, every few seconds).
    pub fn record_transport(&self, figures: &TransportFigures) {
        let node = self.node();
        for peer in &figures.peers {
            self.record_peer_transport(peer);
        }
        for (reason, value) in &figures.rejections {
            counter!(names::TRANSPORT_CONNECTIONS_REJECTED, labels::NODE => node.clone(), labels::REASON => *reason)
                .absolute(*value);
        }
        gauge!(names::TRANSPORT_OPEN_CONNECTIONS, labels::NODE => node)
            .set(as_gauge(figures.open_connections));
    }

    /// Records one peer's transport figures (see [`Self::record_transport`]).
    pub fn record_peer_transport(&self, figures: &PeerTransportFigures) {
        let node = self.node();
        let peer = figures.peer.get().to_string();
        let per_peer = [
            (names::TRANSPORT_SENT_BYTES, figures.bytes_sent),
            (names::TRANSPORT_RECEIVED_BYTES, figures.bytes_received),
            (names::TRANSPORT_SENT_MESSAGES, figures.messages_sent),
            (names::TRANSPORT_RECEIVED_MESSAGES, figures.messages_received),
            (names::TRANSPORT_CONNECTIONS_ESTABLISHED, figures.connections_established),
        ];
        for (name, value) in per_peer {
            counter!(name, labels::NODE => node.clone(), labels::PEER => peer.clone()).absolute(value);
        }
        for (kind, value) in &figures.errors {
            counter!(names::TRANSPORT_ERRORS, labels::NODE => node.clone(), labels::PEER => peer.clone(), labels::KIND => *kind)
                .absolute(*value);
        }
        gauge!(names::PEER_REACHABLE, labels::NODE => node.clone(), labels::PEER => peer.clone())
            .set(if figures.connected { 1.0 } else { 0.0 });
        gauge!(names::TRANSPORT_QUEUED_MESSAGES, labels::NODE => node.clone(), labels::PEER => peer.clone())
            .set(as_gauge(figures.queued_messages));
        if let (true, Some(round_trip_time)) = (figures.connected, figures.round_trip_time) {
            histogram!(names::PEER_RTT_SECONDS, labels::NODE => node, labels::PEER => peer)
                .record(round_trip_time.as_secs_f64());
        }
    }

    /// A proposal committed `elapsed` after it arrived: counts it and
    /// observes the latency.
    pub fn observe_propose_to_commit(&self, elapsed: Duration) {
        counter!(names::PROPOSALS_COMMITTED, labels::NODE => self.node()).increment(1);
        histogram!(names::PROPOSE_TO_COMMIT_SECONDS, labels::NODE => self.node())
            .record(elapsed.as_secs_f64());
    }

    /// `count` proposals were dropped before reaching the log.
    pub fn add_proposals_dropped(&self, count: u64) {
        counter!(names::PROPOSALS_DROPPED, labels::NODE => self.node()).increment(count);
    }

    /// `count` proposals reached the log but failed.
    pub fn add_proposals_failed(&self, count: u64) {
        counter!(names::PROPOSALS_FAILED, labels::NODE => self.node()).increment(count);
    }

    /// Proposals waiting for their commit now.
    pub fn set_proposals_pending(&self, pending: usize) {
        gauge!(names::PROPOSALS_PENDING, labels::NODE => self.node()).set(pending as f64);
    }

    /// A storage append of `entries` entries took `elapsed`, fsync included.
    pub fn observe_storage_append(&self, entries: usize, elapsed: Duration) {
        histogram!(names::STORAGE_APPEND_SECONDS, labels::NODE => self.node()).record(elapsed.as_secs_f64());
        histogram!(names::STORAGE_APPEND_BATCH_ENTRIES, labels::NODE => self.node()).record(entries as f64);
    }

    /// Applying a batch of committed entries took `elapsed`.
    pub fn observe_apply(&self, elapsed: Duration) {
        histogram!(names::APPLY_SECONDS, labels::NODE => self.node()).record(elapsed.as_secs_f64());
    }

    /// This node created a snapshot of `size_bytes` in `elapsed`.
    pub fn observe_snapshot_created(&self, size_bytes: u64, elapsed: Duration) {
        counter!(names::SNAPSHOTS_CREATED, labels::NODE => self.node()).increment(1);
        gauge!(names::SNAPSHOT_SIZE_BYTES, labels::NODE => self.node()).set(as_gauge(size_bytes));
        histogram!(names::SNAPSHOT_DURATION_SECONDS, labels::NODE => self.node(), labels::OPERATION => "create")
            .record(elapsed.as_secs_f64());
    }

    /// This node installed a snapshot of `size_bytes` from a leader in
    /// `elapsed`. The count itself comes from
    /// [`Self::record_engine_stats`] (`snapshots_installed`).
    pub fn observe_snapshot_installed(&self, size_bytes: u64, elapsed: Duration) {
        gauge!(names::SNAPSHOT_SIZE_BYTES, labels::NODE => self.node()).set(as_gauge(size_bytes));
        histogram!(names::SNAPSHOT_DURATION_SECONDS, labels::NODE => self.node(), labels::OPERATION => "install")
            .record(elapsed.as_secs_f64());
    }

    /// A read with `consistency` was served.
    pub fn record_read(&self, consistency: ReadConsistency) {
        counter!(names::READS, labels::NODE => self.node(), labels::CONSISTENCY => consistency_name(consistency))
            .increment(1);
    }

    /// A ReadIndex confirmation took `elapsed`.
    pub fn observe_read_index(&self, elapsed: Duration) {
        histogram!(names::READ_INDEX_SECONDS, labels::NODE => self.node()).record(elapsed.as_secs_f64());
    }

    /// An HTTP request was served. `route` must be the route template
    /// (`/keys/{key}`), never the raw path, to keep the series few.
    pub fn observe_http_request(&self, method: &str, route: &'static str, status: u16, elapsed: Duration) {
        counter!(
            names::HTTP_REQUESTS,
            labels::NODE => self.node(),
            labels::METHOD => method.to_owned(),
            labels::ROUTE => route,
            labels::STATUS => status.to_string()
        )
        .increment(1);
        histogram!(
            names::HTTP_REQUEST_DURATION_SECONDS,
            labels::NODE => self.node(),
            labels::METHOD => method.to_owned(),
            labels::ROUTE => route
        )
        .record(elapsed.as_secs_f64());
    }
}
