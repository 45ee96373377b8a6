//! Every metric's name, type, labels and HELP text.
//!
//! Units are part of the names (`_seconds`, `_bytes`, `_entries`) and
//! counters end in `_total`, as Prometheus recommends. Every metric carries
//! the [`labels::NODE`] label, so several nodes in one process (tests, the
//! simulator) stay apart in one recorder.
//!
//! [`ALL`] lists them all; [`crate::describe_all`] registers their
//! descriptions with the `metrics` facade.

use metrics::Unit;

/// Label names.
pub mod labels {
    /// The id of the node that records the metric (on every metric).
    pub const NODE: &str = "node";
    /// The id of the remote node a per-peer metric is about.
    pub const PEER: &str = "peer";
    /// The Raft role: `follower`, `pre_candidate`, `candidate` or `leader`.
    pub const ROLE: &str = "role";
    /// The kind of a transport error (for example `dial_failure`).
    pub const KIND: &str = "kind";
    /// Why the engine dropped a message, or why the transport refused a connection.
    pub const REASON: &str = "reason";
    /// The consistency a read asked for: `linearizable`, `lease` or `stale`.
    pub const CONSISTENCY: &str = "consistency";
    /// Which snapshot operation a duration is about: `create` or `install`.
    pub const OPERATION: &str = "operation";
    /// The HTTP method.
    pub const METHOD: &str = "method";
    /// The HTTP route template (for example `/keys/{key}`), never the raw path.
    pub const ROUTE: &str = "route";
    /// The HTTP status code.
    pub const STATUS: &str = "status";
}

/// The Prometheus type of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into buckets.
    Histogram,
}

impl MetricKind {
    /// The name Prometheus uses in `# TYPE` lines.
    pub const fn prometheus_name(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One metric's description.
#[derive(Clone, Copy, Debug)]
pub struct MetricDescription {
    /// Its full name.
    pub name: &'static str,
    /// Its type.
    pub kind: MetricKind,
    /// Its unit (already part of the name).
    pub unit: Option<Unit>,
    /// Its labels, [`labels::NODE`] first.
    pub labels: &'static [&'static str],
    /// Its HELP text.
    pub help: &'static str,
}

use labels::{CONSISTENCY, KIND, METHOD, NODE, OPERATION, PEER, REASON, ROLE, ROUTE, STATUS};

macro_rules! metric_names {
    ($(
        $(#[$doc:meta])*
        $constant:ident = $name:literal, $kind:ident, $unit:expr, [$($label:ident),*], $help:literal;
    )*) => {
        $(
            $(#[$doc])*
            #[doc = ""]
            #[doc = concat!("HELP: ", $help)]
            pub const $constant: &str = $name;
        )*

        /// Every metric, in the order of this module.
        pub const ALL: &[MetricDescription] = &[
            $(MetricDescription {
                name: $name,
                kind: MetricKind::$kind,
                unit: $unit,
                labels: &[NODE $(, $label)*],
                help: $help,
            },)*
        ];
    };
}

metric_names! {
    // --- Consensus state (gauges from `NodeStatus`) ---
    /// Gauge: the node's current term.
    TERM = "raft_term", Gauge, None, [], "The node's current Raft term.";
    /// Gauge, one series per role: 1 for the role the node plays now, 0 for
    /// the others (all 0 before the node's first step). Roles: `follower`,
    /// `pre_candidate`, `candidate`, `leader`.
    ROLE_GAUGE = "raft_role", Gauge, None, [ROLE], "1 for the role the node plays now (label role: follower, pre_candidate, candidate, leader), 0 for the others.";
    /// Gauge: 1 when the node knows a leader, else 0.
    HAS_LEADER = "raft_has_leader", Gauge, None, [], "1 when the node knows a leader for its current term, else 0.";
    /// Gauge: the id of the leader the node knows (0 for none).
    LEADER_ID = "raft_leader_id", Gauge, None, [], "The id of the leader the node knows, 0 when none.";
    /// Counter: times the node saw a new leader (another node, or the same
    /// node in a new term), derived from successive statuses.
    LEADER_CHANGES = "raft_leader_changes_total", Counter, None, [], "Times this node saw a new leader (a different node, or a new term).";
    /// Counter: elections started (real, not pre-vote).
    ELECTIONS_STARTED = "raft_elections_started_total", Counter, None, [], "Elections started by this node (real votes, not pre-votes).";
    /// Counter: pre-vote rounds started.
    PRE_VOTES_STARTED = "raft_pre_votes_started_total", Counter, None, [], "Pre-vote rounds started by this node.";
    /// Counter: times the node became leader.
    LEADERSHIP_WON = "raft_leadership_won_total", Counter, None, [], "Times this node became leader.";
    /// Gauge: the commit index.
    COMMIT_INDEX = "raft_commit_index", Gauge, None, [], "The highest log index known to be committed.";
    /// Gauge: the applied index.
    APPLIED_INDEX = "raft_applied_index", Gauge, None, [], "The highest log index applied to the state machine.";
    /// Gauge: the last log index.
    LAST_LOG_INDEX = "raft_last_log_index", Gauge, None, [], "The index of the last entry in the node's log.";
    /// Gauge: the latest snapshot's index.
    SNAPSHOT_INDEX = "raft_snapshot_index", Gauge, None, [], "The last log index covered by the node's latest snapshot.";
    /// Gauge: voters in the configuration in force.
    VOTERS = "raft_voters", Gauge, None, [], "Voting members in the configuration in force.";

    // --- Engine counters (cumulative `EngineStats`) ---
    /// Counter: messages the engine dropped, by reason (`stale_term`,
    /// `unknown_peer`, `wrong_destination`, `irrelevant`).
    MESSAGES_DROPPED = "raft_messages_dropped_total", Counter, None, [REASON], "Raft messages dropped by the engine, by reason.";
    /// Counter: messages that contradicted the protocol.
    PROTOCOL_VIOLATIONS = "raft_protocol_violations_total", Counter, None, [], "Raft messages that contradicted the protocol and were dropped.";
    /// Counter: vote requests ignored inside a leader lease.
    VOTES_IGNORED_IN_LEASE = "raft_votes_ignored_in_lease_total", Counter, None, [], "Vote requests ignored because a leader was heard from recently.";

    // --- Proposals ---
    /// Counter: proposals committed (the client got its index).
    PROPOSALS_COMMITTED = "raft_proposals_committed_total", Counter, None, [], "Proposals committed and answered.";
    /// Counter: proposals the engine refused (not leader, transfer under way).
    PROPOSALS_REFUSED = "raft_proposals_refused_total", Counter, None, [], "Proposals the engine refused (not leader, leadership transfer under way).";
    /// Counter: proposals the node dropped before they reached the log
    /// (queue full, client gone, shutting down).
    PROPOSALS_DROPPED = "raft_proposals_dropped_total", Counter, None, [], "Proposals dropped before reaching the log (queue full, client gone, shutdown).";
    /// Counter: proposals that reached the log but failed (overwritten by a
    /// new leader, or the state machine rejected them).
    PROPOSALS_FAILED = "raft_proposals_failed_total", Counter, None, [], "Proposals that reached the log but failed (overwritten after a leader change, or rejected when applied).";
    /// Gauge: proposals waiting for their commit.
    PROPOSALS_PENDING = "raft_proposals_pending", Gauge, None, [], "Proposals waiting for their commit.";
    /// Histogram: time from proposal to commit.
    PROPOSE_TO_COMMIT_SECONDS = "raft_propose_to_commit_seconds", Histogram, Some(Unit::Seconds), [], "Time from a proposal's arrival to its commit, in seconds.";

    // --- Storage and state machine ---
    /// Histogram: time to append (and fsync) a batch of entries.
    STORAGE_APPEND_SECONDS = "raft_storage_append_seconds", Histogram, Some(Unit::Seconds), [], "Time to append and fsync one batch of log entries, in seconds.";
    /// Histogram: entries per append batch.
    STORAGE_APPEND_BATCH_ENTRIES = "raft_storage_append_batch_entries", Histogram, Some(Unit::Count), [], "Log entries per storage append batch.";
    /// Histogram: time to apply a batch of committed entries.
    APPLY_SECONDS = "raft_apply_seconds", Histogram, Some(Unit::Seconds), [], "Time to apply one batch of committed entries to the state machine, in seconds.";

    // --- Peers (on the leader for progress, on every node for transport) ---
    /// Gauge: a peer's match index (maintained on the leader).
    PEER_MATCH_INDEX = "raft_peer_match_index", Gauge, None, [PEER], "On the leader: the highest log index known to be replicated on the peer.";
    /// Gauge: entries a peer is behind the leader's last index (0 once the
    /// node stops leading).
    PEER_LAG_ENTRIES = "raft_peer_lag_entries", Gauge, None, [PEER], "On the leader: log entries the peer is behind the leader's last index (a node that stopped leading reports 0; one that never led has no series).";
    /// Histogram: sampled smoothed round-trip time to a peer.
    PEER_RTT_SECONDS = "raft_peer_rtt_seconds", Histogram, Some(Unit::Seconds), [PEER], "Smoothed round-trip time to the peer, sampled at each transport poll, in seconds.";
    /// Gauge: 1 when a connection to the peer is established.
    PEER_REACHABLE = "raft_peer_reachable", Gauge, None, [PEER], "1 when a connection to the peer is established, else 0.";

    // --- Transport ---
    /// Counter: bytes sent to a peer.
    TRANSPORT_SENT_BYTES = "raft_transport_sent_bytes_total", Counter, Some(Unit::Bytes), [PEER], "Frame bytes sent to the peer, headers included.";
    /// Counter: bytes received from a peer.
    TRANSPORT_RECEIVED_BYTES = "raft_transport_received_bytes_total", Counter, Some(Unit::Bytes), [PEER], "Frame bytes received from the peer, headers included.";
    /// Counter: messages sent to a peer.
    TRANSPORT_SENT_MESSAGES = "raft_transport_sent_messages_total", Counter, None, [PEER], "Raft messages sent to the peer.";
    /// Counter: messages received from a peer.
    TRANSPORT_RECEIVED_MESSAGES = "raft_transport_received_messages_total", Counter, None, [PEER], "Raft messages received from the peer.";
    /// Counter: transport errors by peer and kind.
    TRANSPORT_ERRORS = "raft_transport_errors_total", Counter, None, [PEER, KIND], "Transport errors and dropped messages, by peer and kind.";
    /// Counter: connections established with a peer.
    TRANSPORT_CONNECTIONS_ESTABLISHED = "raft_transport_connections_established_total", Counter, None, [PEER], "Connections established with the peer (either side dialing).";
    /// Gauge: messages queued for a peer.
    TRANSPORT_QUEUED_MESSAGES = "raft_transport_queued_messages", Gauge, None, [PEER], "Messages waiting in the peer's send queues.";
    /// Counter: connections this node refused or closed, by reason.
    TRANSPORT_CONNECTIONS_REJECTED = "raft_transport_connections_rejected_total", Counter, None, [REASON], "Connections this node refused or closed, by reason.";
    /// Gauge: QUIC connections open on the endpoint.
    TRANSPORT_OPEN_CONNECTIONS = "raft_transport_open_connections", Gauge, None, [], "QUIC connections open on the endpoint, established or not.";

    // --- Snapshots ---
    /// Counter: snapshots this node created.
    SNAPSHOTS_CREATED = "raft_snapshots_created_total", Counter, None, [], "Snapshots this node created from its state machine.";
    /// Counter: snapshots installed from a leader.
    SNAPSHOTS_INSTALLED = "raft_snapshots_installed_total", Counter, None, [], "Snapshots installed from a leader.";
    /// Counter: snapshot chunks sent to followers.
    SNAPSHOT_CHUNKS_SENT = "raft_snapshot_chunks_sent_total", Counter, None, [], "Snapshot chunks sent to followers.";
    /// Counter: snapshot transfers resent from an earlier offset.
    SNAPSHOT_REWINDS = "raft_snapshot_rewinds_total", Counter, None, [], "Times a snapshot transfer resent from an earlier offset because a follower reported a lost chunk.";
    /// Gauge: size of the latest snapshot.
    SNAPSHOT_SIZE_BYTES = "raft_snapshot_size_bytes", Gauge, Some(Unit::Bytes), [], "Size of the latest snapshot created or installed, in bytes.";
    /// Histogram: time to create or install a snapshot.
    SNAPSHOT_DURATION_SECONDS = "raft_snapshot_duration_seconds", Histogram, Some(Unit::Seconds), [OPERATION], "Time to create or install a snapshot (label operation), in seconds.";

    // --- Checkpoints ---
    /// Gauge: named checkpoints durable on this node.
    CHECKPOINTS = "raft_checkpoints", Gauge, Some(Unit::Count), [], "Named checkpoints durable on this node.";
    /// Gauge: bytes of the checkpoints durable on this node.
    CHECKPOINT_BYTES = "raft_checkpoint_bytes", Gauge, Some(Unit::Bytes), [], "Total size of the named checkpoints durable on this node, in bytes.";
    /// Gauge: the log index of the last rollback applied (0 for none since
    /// the process started).
    CHECKPOINT_LAST_ROLLBACK_INDEX = "raft_checkpoint_last_rollback_index", Gauge, None, [], "The log index of the last rollback to a checkpoint this node applied since it started, 0 for none.";

    // --- Reads ---
    /// Histogram: time to confirm a linearizable read (ReadIndex).
    READ_INDEX_SECONDS = "raft_read_index_seconds", Histogram, Some(Unit::Seconds), [], "Time to confirm a ReadIndex read with a quorum, in seconds.";
    /// Counter: reads served, by consistency.
    READS = "raft_reads_total", Counter, None, [CONSISTENCY], "Reads served, by consistency (linearizable, lease, stale).";

    // --- HTTP API ---
    /// Counter: HTTP requests by method, route template and status.
    HTTP_REQUESTS = "raft_http_requests_total", Counter, None, [METHOD, ROUTE, STATUS], "HTTP requests served, by method, route template and status code.";
    /// Histogram: HTTP request duration.
    HTTP_REQUEST_DURATION_SECONDS = "raft_http_request_duration_seconds", Histogram, Some(Unit::Seconds), [METHOD, ROUTE], "Time to serve an HTTP request, in seconds.";

    // --- Process ---
    /// Gauge: when the node process started (Unix time).
    PROCESS_START_TIME_SECONDS = "raft_process_start_time_seconds", Gauge, Some(Unit::Seconds), [], "When the node process started, in seconds since the Unix epoch.";
    /// Gauge: the process's resident memory.
    PROCESS_RESIDENT_MEMORY_BYTES = "raft_process_resident_memory_bytes", Gauge, Some(Unit::Bytes), [], "Resident memory of the node process, in bytes.";
    /// Gauge: CPU time the process used so far (user + system). A gauge
    /// because the `metrics` facade's counters are integers; it only grows,
    /// so `rate()` over it gives CPU use.
    PROCESS_CPU_SECONDS = "raft_process_cpu_seconds", Gauge, Some(Unit::Seconds), [], "CPU time (user and system) the node process used since it started, in seconds.";
    /// Gauge: open file descriptors.
    PROCESS_OPEN_FDS = "raft_process_open_fds", Gauge, None, [], "File descriptors the node process has open.";
}

/// The description of `name`, if it is one of [`ALL`].
pub fn find(name: &str) -> Option<&'static MetricDescription> {
    ALL.iter().find(|description| description.name == name)
}

/// The metric a Prometheus series name belongs to: the name itself, or for
/// a histogram's `_bucket`, `_sum` and `_count` series, the histogram.
pub fn find_series(series: &str) -> Option<&'static MetricDescription> {
    if let Some(description) = find(series) {
        return Some(description);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        find(base).filter(|description| description.kind == MetricKind::Histogram)
    })
}
