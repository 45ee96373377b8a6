//! Errors of the runtime's operations.

use super::checkpoints::CheckpointError;
use crate::protocol::{MembershipError, ProposeError, ReadError, RestoreError, TransferError};
use crate::state_machine::StateMachineError;
use crate::storage::StorageError;
use crate::types::{LogIndex, NodeId, Term};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The stores could not be read.
    #[error("reading the stores failed: {0}")]
    Storage(#[from] StorageError),
    /// The stored state is not a valid Raft state.
    #[error("the stored state is invalid: {0}")]
    InvalidState(#[from] RestoreError),
    /// Restoring the state machine from the latest snapshot failed.
    #[error("restoring the state machine failed: {0}")]
    StateMachine(#[from] StateMachineError),
    /// Bootstrapping was asked for, but the node already has state.
    #[error(
        "the node already has state (term {term}, last index {last_index}); \
         restart it instead of bootstrapping"
    )]
    AlreadyInitialized {
        /// The stored term.
        term: Term,
        /// The stored last index.
        last_index: LogIndex,
    },
}

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// This node is not the leader.
    #[error("not the leader (leader: {leader})")]
    NotLeader {
        /// The leader this node knows of, or [`NodeId::NONE`].
        leader: NodeId,
    },
    /// The engine refused the proposal.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The read could not be confirmed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The membership change was refused.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The leadership transfer was refused.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// The checkpoint operation failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The proposal's entry was replaced by another leader's: it was not
    /// applied and will not be.
    #[error("the proposal was lost to a leader change; it was not applied")]
    Lost,
    /// No answer in time. The request may or may not take effect.
    #[error("the request timed out; it may or may not take effect")]
    Timeout,
    /// The node is shutting down or stopped.
    #[error("the node is shutting down")]
    Shutdown,
    /// The state machine failed to answer.
    #[error("the state machine failed: {0}")]
    StateMachine(String),
    /// The node stopped because storage failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

impl ClientError {
    /// Whether asking again may succeed: leadership moved or was not yet
    /// known, the engine was busy, or no answer came in time (a write that
    /// timed out may still take effect: retry it with the same client
    /// request id).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::NotLeader { .. }
                | ClientError::Timeout
                | ClientError::Read(ReadError::LeadershipLost | ReadError::NoLeader | ReadError::Timeout)
                | ClientError::Read(ReadError::Busy(_))
                | ClientError::Propose(ProposeError::Busy { .. })
        )
    }

    /// The leader to retry at, if this error names one.
    pub fn leader_hint(&self) -> Option<NodeId> {
        let leader = match self {
            ClientError::NotLeader { leader } => *leader,
            ClientError::Propose(ProposeError::NotLeader { leader }) => *leader,
            ClientError::Membership(MembershipError::Propose(ProposeError::NotLeader { leader })) => *leader,
            ClientError::Transfer(TransferError::NotLeader { leader }) => *leader,
            _ => return None,
        };
        (leader != NodeId::NONE).then_some(leader)
    }
}
