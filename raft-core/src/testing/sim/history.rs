//! The record of every client operation: what was asked, when (in simulator
//! steps), and what the client learnt. The record is what the
//! linearizability checker judges at the end of a run.

use std::fmt;

/// What a client asked for on one key, and what it learnt: the checker's
/// own types, so the history needs no translation.
pub use crate::testing::linearizability::{Op as ClientOp, Outcome as OpOutcome};

/// One operation of the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperationRecord {
    /// The client.
    pub client: u64,
    /// The key.
    pub key: u64,
    /// What was asked.
    pub op: ClientOp,
    /// The step at which the client sent it.
    pub invoke_step: u64,
    /// The step at which the client learnt the outcome; `None` if it never
    /// did (indeterminate).
    pub complete_step: Option<u64>,
    /// The outcome.
    pub outcome: OpOutcome,
}

impl fmt::Display for OperationRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let complete = self.complete_step.map_or_else(|| "?".to_string(), |s| s.to_string());
        // A checkpoint operation acts on every key.
        let key = if self.op.is_checkpoint() { "*".to_string() } else { self.key.to_string() };
        write!(
            f,
            "client {} key {key} {:?} [{}..{}] -> {:?}",
            self.client, self.op, self.invoke_step, complete, self.outcome
        )
    }
}

/// Every operation of one run, in invocation order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    records: Vec<OperationRecord>,
}

/// Identifies a record of a [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordId(pub usize);

impl History {
    /// Records an operation sent at `step`; it stays indeterminate until
    /// completed.
    pub fn invoke(&mut self, client: u64, key: u64, op: ClientOp, step: u64) -> RecordId {
        self.records.push(OperationRecord {
            client,
            key,
            op,
            invoke_step: step,
            complete_step: None,
            outcome: OpOutcome::Indeterminate,
        });
        RecordId(self.records.len() - 1)
    }

    /// Records the outcome of an operation, learnt at `step`. An
    /// indeterminate outcome keeps no completion step: the operation may take
    /// effect at any time after its invocation.
    pub fn complete(&mut self, id: RecordId, outcome: OpOutcome, step: u64) {
        if let Some(record) = self.records.get_mut(id.0) {
            record.outcome = outcome;
            record.complete_step = (outcome != OpOutcome::Indeterminate).then_some(step);
        }
    }

    /// The records.
    pub fn records(&self) -> &[OperationRecord] {
        &self.records
    }

    /// Number of checkpoint operations (create, rollback, delete), and of
    /// rollbacks that reported success.
    pub fn checkpoint_counts(&self) -> (usize, usize) {
        let checkpoints = self.records.iter().filter(|r| r.op.is_checkpoint()).count();
        let rollbacks = self
            .records
            .iter()
            .filter(|r| {
                matches!(r.op, ClientOp::Rollback(_))
                    && r.outcome
                        == OpOutcome::Checkpoint(crate::testing::linearizability::CheckpointOutcome::Done)
            })
            .count();
        (checkpoints, rollbacks)
    }

    /// Number of operations with a definite outcome.
    pub fn definite_count(&self) -> usize {
        let indefinite = [OpOutcome::Failed, OpOutcome::Indeterminate];
        self.records.iter().filter(|r| !indefinite.contains(&r.outcome)).count()
    }
}
