//! The process-global exporter (its own test binary: one install per process).

use raft_core::types::NodeId;
use raft_metrics::{install_prometheus, names, MetricsError, NodeMetrics};

#[test]
fn installs_once_and_renders_descriptions() {
    let handle = install_prometheus().expect("first install");
    assert!(matches!(install_prometheus(), Err(MetricsError::AlreadyInstalled)));
    let metrics = NodeMetrics::new(NodeId(9));
    metrics.set_proposals_pending(2);
    handle.run_upkeep();
    let output = handle.render();
    assert!(output.contains(&format!("# HELP {} ", names::PROPOSALS_PENDING)), "{output}");
    assert!(output.contains(r#"raft_proposals_pending{node="9"} 2"#), "{output}");
    assert!(output.contains(r#"raft_process_start_time_seconds{node="9"}"#), "{output}");
}
