//! Client helpers for tests of a running [`RaftNode`].

use std::time::Duration;

use bytes::Bytes;

use crate::runtime::{ClientError, RaftNode, ReadConsistency};
use crate::types::NodeId;

/// Reads through `node` like a patient client: a read refused for a
/// retryable reason (leadership moved, which happens when a loaded machine
/// starves a node of its heartbeats) is asked again once the node knows a
/// leader, until `wait` has passed. Any other error is returned at once.
pub async fn read_retrying(
    node: &RaftNode,
    query: Bytes,
    consistency: ReadConsistency,
    wait: Duration,
) -> Result<Bytes, ClientError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match node.read(query.clone(), consistency).await {
            Err(error) if error.is_retryable() && tokio::time::Instant::now() < deadline => {
                let mut status = node.status();
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                let _ = tokio::time::timeout(remaining, status.wait_for(|s| s.leader != NodeId::NONE)).await;
            }
            outcome => return outcome,
        }
    }
}
