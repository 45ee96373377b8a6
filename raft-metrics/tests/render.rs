//! Renders the exporter's output after recording every metric.

use std::time::Duration;

use raft_core::protocol::EngineStats;
use raft_core::runtime::{NodeStatus, ReadConsistency};
use raft_core::storage::{CheckpointInfo, CheckpointMeta};
use raft_core::types::{LogIndex, Membership, NodeId, Role, SnapshotMeta, Term};
use raft_metrics::names::{self, MetricKind};
use raft_metrics::{
    build_prometheus_recorder, describe_all, NodeMetrics, PeerTransportFigures, TransportFigures,
};

fn leader_status(term: u64, leader: u64, last_index: u64) -> NodeStatus {
    NodeStatus {
        id: NodeId(1),
        role: Some(if leader == 1 { Role::Leader } else { Role::Follower }),
        term: Term(term),
        leader: NodeId(leader),
        commit_index: LogIndex(last_index.saturating_sub(1)),
        applied_index: LogIndex(last_index.saturating_sub(2)),
        last_index: LogIndex(last_index),
        snapshot_index: LogIndex(0),
        membership: Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
        peers: if leader == 1 {
            vec![(NodeId(2), LogIndex(last_index)), (NodeId(3), LogIndex(last_index.saturating_sub(40)))]
        } else {
            Vec::new()
        },
        stats: Default::default(),
        stopped: None,
    }
}

fn record_everything(metrics: &NodeMetrics) {
    metrics.record_status(&leader_status(3, 1, 100));
    metrics.record_engine_stats(&EngineStats {
        elections_started: 2,
        leadership_won: 1,
        dropped_stale_term: 5,
        ..EngineStats::default()
    });
    metrics.record_transport(&TransportFigures {
        peers: vec![PeerTransportFigures {
            peer: NodeId(2),
            connected: true,
            round_trip_time: Some(Duration::from_micros(300)),
            messages_sent: 10,
            messages_received: 9,
            bytes_sent: 1000,
            bytes_received: 900,
            connections_established: 1,
            queued_messages: 0,
            errors: vec![("dial_failure", 1)],
        }],
        rejections: vec![("not_authorized", 0)],
        open_connections: 1,
    });
    metrics.observe_propose_to_commit(Duration::from_millis(3));
    metrics.add_proposals_dropped(1);
    metrics.add_proposals_failed(1);
    metrics.set_proposals_pending(4);
    metrics.observe_storage_append(16, Duration::from_micros(400));
    metrics.observe_apply(Duration::from_micros(50));
    metrics.observe_snapshot_created(4096, Duration::from_millis(20));
    metrics.observe_snapshot_installed(4096, Duration::from_millis(30));
    metrics.record_read(ReadConsistency::Linearizable);
    metrics.observe_read_index(Duration::from_millis(1));
    metrics.observe_http_request("GET", "/keys/{key}", 200, Duration::from_millis(2));
    metrics.record_process();
    metrics.record_checkpoints(&[checkpoint("before-migration", 40, 1000)], Some(LogIndex(90)));
}

fn checkpoint(name: &str, index: u64, size_bytes: u64) -> CheckpointInfo {
    CheckpointInfo {
        meta: CheckpointMeta {
            name: name.to_string(),
            snapshot: SnapshotMeta {
                last_index: LogIndex(index),
                last_term: Term(2),
                membership: Membership::default(),
            },
            created_unix_ms: 0,
        },
        size_bytes,
        checksum: 0,
    }
}

#[test]
fn checkpoint_gauges_count_and_sum_the_checkpoints() {
    let output = render(|| {
        NodeMetrics::new(NodeId(1))
            .record_checkpoints(&[checkpoint("a", 10, 100), checkpoint("b", 20, 250)], None)
    });
    assert_eq!(sample(&output, r#"raft_checkpoints{node="1"}"#), Some(2.0), "{output}");
    assert_eq!(sample(&output, r#"raft_checkpoint_bytes{node="1"}"#), Some(350.0), "{output}");
    assert_eq!(sample(&output, r#"raft_checkpoint_last_rollback_index{node="1"}"#), Some(0.0), "{output}");
}

fn render(record: impl FnOnce()) -> String {
    let recorder = build_prometheus_recorder().expect("recorder");
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_all();
        record();
    });
    handle.render()
}

#[test]
fn every_described_metric_renders_with_help_and_type() {
    let output = render(|| record_everything(&NodeMetrics::new(NodeId(1))));
    let mut missing = Vec::new();
    for description in names::ALL {
        let help = format!("# HELP {} {}", description.name, description.help);
        let kind = format!("# TYPE {} {}", description.name, description.kind.prometheus_name());
        if !output.lines().any(|line| line == help) || !output.lines().any(|line| line == kind) {
            missing.push(description.name);
        }
    }
    assert!(missing.is_empty(), "not rendered with HELP and TYPE: {missing:?}\n{output}");
}

#[test]
fn names_are_prefixed_unique_and_carry_units() {
    let mut seen = std::collections::BTreeSet::new();
    for description in names::ALL {
        let name = description.name;
        assert!(name.starts_with("raft_"), "{name} lacks the raft_ prefix");
        assert!(seen.insert(name), "{name} is listed twice");
        assert_eq!(description.labels.first(), Some(&names::labels::NODE), "{name} lacks the node label");
        assert_eq!(
            description.kind == MetricKind::Counter,
            name.ends_with("_total"),
            "{name}: counters, and only counters, end in _total"
        );
        if description.unit == Some(metrics::Unit::Seconds) {
            assert!(name.ends_with("_seconds"), "{name} is in seconds");
        }
        if description.unit == Some(metrics::Unit::Bytes) {
            assert!(name.contains("_bytes"), "{name} is in bytes");
        }
        assert!(!description.help.is_empty());
    }
}

#[test]
fn histograms_use_their_own_buckets() {
    let output = render(|| record_everything(&NodeMetrics::new(NodeId(1))));
    // Sub-millisecond buckets for fsync and round trips.
    assert!(output.contains(r#"raft_storage_append_seconds_bucket{node="1",le="0.0005"} 1"#), "{output}");
    assert!(output.contains(r#"raft_peer_rtt_seconds_bucket{node="1",peer="2",le="0.0005"} 1"#), "{output}");
    assert!(output.contains(r#"raft_storage_append_batch_entries_bucket{node="1",le="16"} 1"#), "{output}");
    assert!(output.contains(r#"raft_propose_to_commit_seconds_bucket{node="1",le="0.005"} 1"#), "{output}");
}

fn sample(output: &str, series: &str) -> Option<f64> {
    output.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn leader_changes_are_derived_from_statuses() {
    let output = render(|| {
        let metrics = NodeMetrics::new(NodeId(1));
        metrics.record_status(&leader_status(1, 0, 0)); // no leader yet
        metrics.record_status(&leader_status(1, 2, 10)); // leader 2: change 1
        metrics.record_status(&leader_status(1, 2, 11)); // same leader: none
        metrics.record_status(&leader_status(2, 0, 11)); // election: none
        metrics.record_status(&leader_status(2, 1, 12)); // this node: change 2
        metrics.record_status(&leader_status(3, 1, 20)); // re-elected: change 3
        metrics.record_status(&leader_status(4, 2, 20)); // leader 2 again: change 4
    });
    assert_eq!(sample(&output, r#"raft_leader_changes_total{node="1"}"#), Some(4.0), "{output}");
    assert_eq!(sample(&output, r#"raft_has_leader{node="1"}"#), Some(1.0));
    assert_eq!(sample(&output, r#"raft_role{node="1",role="follower"}"#), Some(1.0));
    assert_eq!(sample(&output, r#"raft_role{node="1",role="leader"}"#), Some(0.0));
    assert_eq!(sample(&output, r#"raft_term{node="1"}"#), Some(4.0));
    // The lag gauges were reset when the node stopped leading.
    assert_eq!(sample(&output, r#"raft_peer_lag_entries{node="1",peer="3"}"#), Some(0.0), "{output}");
}

#[test]
fn peer_lag_is_last_index_minus_match_index_on_the_leader() {
    let output = render(|| NodeMetrics::new(NodeId(1)).record_status(&leader_status(3, 1, 100)));
    assert_eq!(sample(&output, r#"raft_peer_lag_entries{node="1",peer="2"}"#), Some(0.0));
    assert_eq!(sample(&output, r#"raft_peer_lag_entries{node="1",peer="3"}"#), Some(40.0));
    assert_eq!(sample(&output, r#"raft_peer_match_index{node="1",peer="3"}"#), Some(60.0));
    assert_eq!(sample(&output, r#"raft_role{node="1",role="leader"}"#), Some(1.0));
}

#[test]
fn cumulative_engine_stats_are_absolute() {
    let output = render(|| {
        let metrics = NodeMetrics::new(NodeId(1));
        let mut stats = EngineStats { elections_started: 3, ..EngineStats::default() };
        metrics.record_engine_stats(&stats);
        metrics.record_engine_stats(&stats); // same figures: nothing added
        stats.elections_started = 5;
        metrics.record_engine_stats(&stats);
    });
    assert_eq!(sample(&output, r#"raft_elections_started_total{node="1"}"#), Some(5.0), "{output}");
}

#[test]
fn nodes_in_one_process_stay_apart() {
    let output = render(|| {
        NodeMetrics::new(NodeId(1)).record_status(&leader_status(7, 1, 10));
        let follower = NodeMetrics::new(NodeId(2));
        let mut status = leader_status(7, 1, 10);
        status.id = NodeId(2);
        status.role = Some(Role::Follower);
        status.peers.clear();
        follower.record_status(&status);
    });
    assert_eq!(sample(&output, r#"raft_role{node="1",role="leader"}"#), Some(1.0));
    assert_eq!(sample(&output, r#"raft_role{node="2",role="leader"}"#), Some(0.0));
    assert_eq!(sample(&output, r#"raft_leader_id{node="2"}"#), Some(1.0));
}
