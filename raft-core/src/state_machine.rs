//! The replicated state machine trait.

use async_trait::async_trait;
use bytes::Bytes;

use crate::storage::{SnapshotReader, StorageError};
use crate::types::Entry;

/// Why the state machine failed. The runtime stops the node on an apply
/// failure: a replica that cannot apply a committed entry must not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateMachineError {
    /// Reading or writing a snapshot failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A snapshot's bytes could not be decoded.
    #[error("snapshot is malformed: {0}")]
    MalformedSnapshot(String),
    /// A query could not be answered.
    #[error("query failed: {0}")]
    Query(String),
    /// Any other failure, described.
    #[error("state machine failed: {0}")]
    Other(String),
}

/// The application state that Raft replicates.
///
/// Contract:
/// - `apply` receives every committed entry exactly once, in index order,
///   including blank and membership entries (which it answers with an empty
///   response). It must be deterministic: every replica applying the same
///   entries reaches the same state and the same responses. Deduplication
///   of client retries (the entry's `ClientRequestId`) belongs here, in the
///   replicated state, so it survives failover.
/// - `begin_snapshot` captures the state as of the last applied entry and
///   returns a stream of it; the stream may be consumed while later entries
///   are applied (so a large snapshot does not stall applying).
/// - `restore` replaces the whole state with a snapshot's: it is how a node
///   installs a snapshot from the leader and how it restarts.
/// - `restore_checkpoint` rolls the state back to a checkpoint's snapshot
///   (see [`crate::runtime::checkpoints`]); the runtime calls it, never
///   `restore`, for a committed rollback, just before it passes the rollback
///   entry to `apply`. It must be deterministic like `apply`: every replica
///   rolls back from the same state to the same state. By default it is
///   `restore`. A state machine that keeps, next to the application's data,
///   state that must not go back in time overrides it to restore only the
///   data. Two examples: a directory of node addresses that must keep
///   matching the engine's membership (a rollback does not change the
///   membership), or a table of the requests already applied, if each
///   request must take effect at most once even across a rollback.
#[async_trait]
pub trait StateMachine: Send + 'static {
    /// Applies committed entries; returns one response per entry.
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError>;

    /// Answers a read-only query against the current state.
    async fn query(&mut self, query: Bytes) -> Result<Bytes, StateMachineError>;

    /// Captures the current state as a stream of bytes.
    async fn begin_snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError>;

    /// Replaces the state with the snapshot's.
    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), StateMachineError>;

    /// Rolls the state back to a checkpoint: `checkpoint` is the snapshot
    /// this state machine's `begin_snapshot` produced when the checkpoint
    /// was created. The default replaces the whole state, like
    /// [`StateMachine::restore`]; override it to keep parts of the state
    /// that a rollback must not touch (see the trait's contract). A
    /// wrapper around another state machine (for metrics, say) must forward
    /// this method too: left to the default, it would call the inner
    /// machine's `restore` and skip the inner override.
    async fn restore_checkpoint(
        &mut self,
        checkpoint: &mut dyn SnapshotReader,
    ) -> Result<(), StateMachineError> {
        self.restore(checkpoint).await
    }
}

/// A snapshot of the state machine, produced chunk by chunk.
#[async_trait]
pub trait SnapshotSource: Send {
    /// The next chunk, or `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError>;
}
