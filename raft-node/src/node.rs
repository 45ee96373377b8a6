//! Wiring: stores, transport, runtime, metrics and the client API of one node.

use crate::config::NodeConfig;

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration or the data directory is not usable.
    #[error("{0}")]
    Setup(String),
}

/// Runs the node until SIGTERM or Ctrl-C, then shuts it down gracefully.
pub async fn run(config: NodeConfig) -> Result<(), NodeError> {
    let _ = config;
    Err(NodeError::Setup("not wired yet".into()))
}
