//! Hands the client history to the linearizability checker: every key is a
//! register, writes and checkpoint operations that timed out may have taken
//! effect at any time after they were sent, reads that failed took no
//! effect. Checkpoint operations act on every key, with the state machine's
//! bound on retained checkpoints.

use super::history::{History, OperationRecord};
use super::kv::MAX_CHECKPOINTS;
use super::{Property, Violation};
use crate::testing::linearizability::{self, Model, Operation, SearchBudget, Verdict};

fn to_operation(record: &OperationRecord) -> Operation {
    Operation {
        client: record.client,
        key: record.key,
        op: record.op,
        invoke: record.invoke_step,
        complete: record.complete_step,
        outcome: record.outcome,
    }
}

/// Checks the history; every key starts absent.
pub fn check_history(history: &History, now: u64) -> Result<(), Violation> {
    let operations: Vec<Operation> = history.records().iter().map(to_operation).collect();
    let fail = |details: String| Violation { step: now, property: Property::Linearizability, details };
    let model = Model { initial: None, max_checkpoints: MAX_CHECKPOINTS };
    match linearizability::check_with_model(&operations, model, SearchBudget::default()) {
        Ok(Verdict::Linearizable) => Ok(()),
        Ok(verdict @ Verdict::NotLinearizable { .. }) => Err(fail(verdict.to_string())),
        Ok(verdict) => Err(fail(format!("the checker could not decide: {verdict}"))),
        Err(error) => Err(Violation {
            step: now,
            property: Property::History,
            details: format!("the simulator recorded an impossible history: {error}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sim::history::{ClientOp, OpOutcome};

    #[test]
    fn a_stale_read_is_reported_and_a_maybe_applied_write_is_not_required() {
        let mut history = History::default();
        let write = history.invoke(1, 0, ClientOp::Write(5), 1);
        history.complete(write, OpOutcome::Written, 3);
        let read = history.invoke(2, 0, ClientOp::Read, 4);
        history.complete(read, OpOutcome::Read(Some(5)), 6);
        let lost = history.invoke(1, 0, ClientOp::Write(6), 7);
        history.complete(lost, OpOutcome::Indeterminate, 9);
        assert_eq!(check_history(&history, 10), Ok(()));
        let stale = history.invoke(2, 0, ClientOp::Read, 10);
        history.complete(stale, OpOutcome::Read(None), 11);
        let violation = check_history(&history, 12).expect_err("a read of the initial value after a write");
        assert_eq!(violation.property, Property::Linearizability);
    }
}
