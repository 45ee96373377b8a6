//! The replicated key-value state machine.
//!
//! [`KvStateMachine`] implements raft-core's [`StateMachine`]. Every replica
//! applies the same committed entries in the same order and reaches the same
//! state:
//!
//! - **Keys** are UTF-8 strings with a `Bytes` value and a version: the index
//!   of the entry that last put the key. A delete removes the key; a later
//!   put creates it again with the new index. Writes may carry a
//!   [`Precondition`] (compare-and-set on the version, or create-only).
//! - **Deduplication** (Raft dissertation §6.3): an entry that carries a
//!   `ClientRequestId` is checked against a replicated table of each client's
//!   latest sequence and outcome. A retry of that sequence gets the
//!   remembered outcome without applying again; an older sequence is
//!   rejected; a newer one applies and is remembered. The table holds at most
//!   [`KvLimits::max_dedup_clients`] clients and evicts the one whose last
//!   use is oldest (by log index, so every replica evicts the same one).
//! - **The node directory** maps node ids to their peer and client
//!   addresses. It is published on a watch channel ([`KvView::directory`])
//!   after every batch or restore that changed it.
//!
//! Commands, outcomes, queries and answers are postcard-encoded
//! ([`KvCommand::encode`] and friends). A command that does not decode is
//! answered [`KvOutcome::Rejected`]: a bad entry must never stop a replica,
//! and every replica rejects it the same way.
//!
//! Snapshots are streamed chunk by chunk from a copy of the state taken at
//! the last applied entry; the format is described in `snapshot.rs`. A
//! restore reads the snapshot in bounded pieces, builds the new state aside,
//! checks everything (including a CRC32C over the whole snapshot) and only
//! then replaces the current state.
//!
//! # Rollback
//!
//! A rollback to a checkpoint ([`StateMachine::restore_checkpoint`]) puts
//! back the checkpoint's **keys** (values and versions) and nothing else:
//!
//! - **The node directory stays as it is.** It describes the cluster's
//!   members, which a rollback does not change (the engine's membership is
//!   not rolled back); restored, it would lose the addresses of a node added
//!   after the checkpoint and bring back those of a node removed since.
//! - **The deduplication table stays as it is.** A request is applied at
//!   most once, rollback or not: a retry of a request applied after the
//!   checkpoint gets its first answer again, whose index (below the
//!   rollback's) tells that the rollback undid it, as it undid every other
//!   write after the checkpoint. Restoring the table with the keys would
//!   instead apply such a retry a second time, on top of the restored
//!   state: one request taking effect twice (not linearizable), and a
//!   client's retry loop quietly redoing part of what the rollback undid. A
//!   client that wants its write after the rollback sends it again as a new
//!   request.
//! - The applied index stays the current one; the runtime then applies the
//!   rollback entry itself.
//!
//! A snapshot install or a restart ([`StateMachine::restore`]) replaces the
//! whole state, directory and table included: that state is the cluster's
//! state at the snapshot's index.
//!
//! The digest ([`KvQuery::Digest`]) lets tests and operators compare
//! replicas: FNV-1a-64 over every key in byte order, each written as the
//! key's length (u64 little-endian), the key, the version (u64 LE), the
//! value's length (u64 LE) and the value. It covers keys only; the
//! deduplication table and the directory are compared through snapshots.

mod snapshot;
mod state;
mod types;

#[cfg(test)]
mod tests;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::state_machine::{SnapshotSource, StateMachine, StateMachineError};
use raft_core::storage::SnapshotReader;
use raft_core::types::Entry;
use tokio::sync::watch;

pub use types::{
    Directory, KvAnswer, KvCodecError, KvCommand, KvOutcome, KvQuery, KvResponse, NodeAddresses,
    Precondition, Versioned, MAX_CLIENT_URL_BYTES, MAX_KEY_BYTES, MAX_LIST_LIMIT, MAX_VALUE_BYTES,
};

use snapshot::{Captured, KvSnapshotSource};
use state::KvState;

/// Bounds of the key-value state machine. They are part of the replicated
/// behaviour: every node of a cluster must use the same values, or replicas
/// evict different clients and diverge.
#[derive(Clone, Debug)]
pub struct KvLimits {
    /// The most clients the deduplication table remembers (default 100,000).
    /// Past it, the least recently used client is forgotten, and a retry of
    /// its last request would apply again. Each client costs about 100
    /// bytes. Zero disables deduplication.
    pub max_dedup_clients: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits { max_dedup_clients: 100_000 }
    }
}

/// Sizes of the state, kept up to date as entries apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    /// How many keys exist.
    pub keys: u64,
    /// The total length of every value, in bytes (keys not counted).
    pub value_bytes: u64,
    /// How many clients the deduplication table remembers.
    pub dedup_clients: u64,
}

/// Cheap to clone; lets code outside the apply task observe replicated
/// things.
#[derive(Clone, Debug)]
pub struct KvView {
    directory: watch::Receiver<Directory>,
}

impl KvView {
    /// The replicated node directory, updated after every applied batch or
    /// restore that changed it. The receiver starts with the current
    /// directory marked as seen, so `changed()` waits for the next change.
    pub fn directory(&self) -> watch::Receiver<Directory> {
        let mut receiver = self.directory.clone();
        receiver.mark_unchanged();
        receiver
    }
}

/// Reads a key-value snapshot (checking it completely) and returns the
/// same state as a new snapshot for another cluster, with `directory` as
/// its node directory, and the number of keys. Keys, versions, the applied
/// index and the deduplication table are kept.
///
/// The old cluster's directory is dropped because its addresses name the
/// old cluster's nodes: kept, they would override the new cluster's
/// addresses for nodes of the same ids.
pub async fn rewrite_for_new_cluster(
    snapshot: &mut dyn SnapshotReader,
    directory: Directory,
    limits: &KvLimits,
) -> Result<(Box<dyn SnapshotSource>, u64), StateMachineError> {
    let state = snapshot::restore(snapshot, limits.max_dedup_clients).await?;
    let keys = state.data.len() as u64;
    let captured = Captured {
        applied_index: state.applied_index,
        data: state.data.into_iter().collect(),
        clients: state.dedup.records().clone(),
        directory,
    };
    Ok((Box::new(KvSnapshotSource::new(captured)), keys))
}

/// The replicated key-value state machine (see the module documentation).
pub struct KvStateMachine {
    state: KvState,
    limits: KvLimits,
    directory: watch::Sender<Directory>,
}

impl fmt::Debug for KvStateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The state itself may be gigabytes; its shape is what helps.
        f.debug_struct("KvStateMachine")
            .field("applied_index", &self.state.applied_index)
            .field("stats", &self.stats())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl KvStateMachine {
    /// An empty state machine, and the view that observes it.
    pub fn new(limits: KvLimits) -> (KvStateMachine, KvView) {
        let (directory, receiver) = watch::channel(Directory::new());
        let machine = KvStateMachine { state: KvState::default(), limits, directory };
        (machine, KvView { directory: receiver })
    }

    /// The state's sizes; O(1).
    pub fn stats(&self) -> KvStats {
        KvStats {
            keys: self.state.data.len() as u64,
            value_bytes: self.state.value_bytes,
            dedup_clients: self.state.dedup.len() as u64,
        }
    }

    /// The index of the last applied entry (or of the restored snapshot).
    pub fn applied_index(&self) -> u64 {
        self.state.applied_index
    }

    /// Publishes the directory if it differs from the one last published.
    fn publish_directory(&self) {
        let directory = &self.state.directory;
        self.directory.send_if_modified(|published| {
            if published == directory {
                return false;
            }
            published.clone_from(directory);
            true
        });
    }

    /// Refuses a batch that would apply an entry twice or out of order: that
    /// would break the runtime's contract and silently fork this replica.
    /// Gaps are allowed, so that a runtime may restore an older snapshot
    /// (a rollback) and go on applying later entries on top of it.
    fn check_order(&self, entries: &[Entry]) -> Result<(), StateMachineError> {
        let mut previous = self.state.applied_index;
        for entry in entries {
            let index = entry.index.get();
            if index <= previous {
                return Err(StateMachineError::Other(format!(
                    "entry {index} arrived after entry {previous} was applied; entries must be applied \
                     once, in increasing index order"
                )));
            }
            previous = index;
        }
        Ok(())
    }
}

#[async_trait]
impl StateMachine for KvStateMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        self.check_order(entries)?;
        let mut responses = Vec::with_capacity(entries.len());
        let mut directory_changed = false;
        for entry in entries {
            let (response, changed) = self.state.apply_entry(entry, self.limits.max_dedup_clients);
            directory_changed |= changed;
            responses.push(response.encode());
        }
        if directory_changed {
            self.publish_directory();
        }
        Ok(responses)
    }

    async fn query(&mut self, query: Bytes) -> Result<Bytes, StateMachineError> {
        let query = KvQuery::decode(&query).map_err(|error| StateMachineError::Query(error.to_string()))?;
        Ok(self.state.answer(query).encode())
    }

    async fn begin_snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        // Capturing copies each key's and value's handle (a reference
        // count bump, since both are `Bytes`; no key or value bytes are
        // copied) into one vector of the exact length. For a million keys
        // that is some tens of milliseconds during which applying waits;
        // encoding happens later, chunk by chunk, while applying goes on.
        let captured = Captured {
            applied_index: self.state.applied_index,
            data: self.state.data.iter().map(|(key, versioned)| (key.clone(), versioned.clone())).collect(),
            clients: self.state.dedup.records().clone(),
            directory: self.state.directory.clone(),
        };
        Ok(Box::new(KvSnapshotSource::new(captured)))
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), StateMachineError> {
        // The new state is built aside; the current one is replaced only
        // once the whole snapshot has been read and checked.
        let restored = snapshot::restore(snapshot, self.limits.max_dedup_clients).await?;
        tracing::debug!(
            applied_index = restored.applied_index,
            keys = restored.data.len(),
            dedup_clients = restored.dedup.len(),
            nodes = restored.directory.len(),
            "restored the key-value state from a snapshot"
        );
        self.state = restored;
        self.publish_directory();
        Ok(())
    }

    /// Puts back the checkpoint's keys only; the directory, the
    /// deduplication table and the applied index stay as they are (see the
    /// module documentation). The checkpoint is read and checked completely
    /// before anything changes.
    async fn restore_checkpoint(
        &mut self,
        checkpoint: &mut dyn SnapshotReader,
    ) -> Result<(), StateMachineError> {
        let restored = snapshot::restore(checkpoint, self.limits.max_dedup_clients).await?;
        tracing::debug!(
            checkpoint_index = restored.applied_index,
            applied_index = self.state.applied_index,
            keys = restored.data.len(),
            "rolled the keys back to a checkpoint; the directory and the deduplication table stay"
        );
        self.state.data = restored.data;
        self.state.value_bytes = restored.value_bytes;
        Ok(())
    }
}
