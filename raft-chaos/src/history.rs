//! The recorded history of a run, how answers are classified, and the
//! checks made on it: linearizability per key, no lost acknowledged write,
//! identical replicas.
//!
//! The history file (`history.json`) holds everything the checks need, so
//! `raft-chaos check history.json` reaches the same verdict later.
//!
//! # Values
//!
//! Every write writes a value no other write writes (the client's number
//! and its own counter), so a read names the write it saw. A compare-and-set
//! through `If-Match: "<version>"` after a read of value `v` at version `i`
//! is the register's `cas(v, new)`: the version that wrote `v` is the only
//! one at which the key holds `v`.
//!
//! # Outcomes
//!
//! What a client learns about a write falls into three classes, and getting
//! them wrong either hides bugs or invents them:
//! - *definite*: a `2xx` (applied) or a `412` (the compare-and-set was
//!   applied and failed);
//! - *not applied*: the node refused before proposing anything (`503` with
//!   `not_leader`, `no_leader`, `leadership_transfer`, `overloaded`,
//!   `leader_leaving`, `leader_not_ready`), the entry was replaced by another
//!   leader's (`not_applied`), the request was malformed (`4xx`), or the
//!   connection could not even be opened;
//! - *indeterminate*: everything else: timeouts (`504`, the client's own),
//!   a failed forward to the leader (`forward_failed`: the leader may have
//!   proposed it), `500`, a node shutting down, a connection lost after the
//!   request was sent. Such a write may take effect at any later time.
//!
//! A read that fails in any way constrains nothing and is left out.

use std::collections::{BTreeMap, BTreeSet};

use raft_core::testing::linearizability::{self, Op, Operation, Outcome, Verdict};
use serde::{Deserialize, Serialize};

use crate::schedule::FaultKind;

/// The `client` of the final reads made after the faults end.
pub const FINAL_CLIENT: u64 = u64::MAX;

/// What a client asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// `GET /v1/kv/{key}` (linearizable).
    Read,
    /// `PUT /v1/kv/{key}`.
    Write,
    /// `PUT /v1/kv/{key}` with `If-Match` or `If-None-Match: *`.
    Cas,
}

/// What came back, as far as classification cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP answer: status and, for errors, the JSON error code.
    Status {
        /// The HTTP status.
        status: u16,
        /// The `error.code` of an error body, if any.
        code: Option<String>,
    },
    /// The connection could not be opened: the request was never sent.
    ConnectFailed,
    /// Anything else: a timeout, a connection lost after sending, a body
    /// that could not be read.
    Lost,
}

/// Error codes with which a node refuses a write before proposing it, or
/// reports that its entry was replaced (see `raft-node/src/http/error.rs`).
const NOT_APPLIED_CODES: [&str; 7] = [
    "not_leader",
    "no_leader",
    "leadership_transfer",
    "overloaded",
    "leader_leaving",
    "leader_not_ready",
    "not_applied",
];

/// Whether a write with this answer certainly did not take effect; `None`
/// when it certainly did (`2xx`, `412`).
pub fn write_not_applied(answer: &Answer) -> Option<bool> {
    match answer {
        Answer::Status { status, .. } if (200..300).contains(status) || *status == 412 => None,
        Answer::Status { status: 503, code: Some(code) } => Some(NOT_APPLIED_CODES.contains(&code.as_str())),
        // Malformed requests, unknown routes, conflicts: refused up front.
        Answer::Status { status: 400 | 404 | 405 | 409 | 413, .. } => Some(true),
        Answer::Status { .. } => Some(false),
        Answer::ConnectFailed => Some(true),
        Answer::Lost => Some(false),
    }
}

/// The checker's outcome of a request with this answer. `read_value` is the
/// value a successful read returned (`None`: the key was absent).
pub fn classify(request: Request, answer: &Answer, read_value: Option<u64>) -> Outcome {
    match request {
        Request::Read => match answer {
            Answer::Status { status: 200, .. } => Outcome::Read(read_value),
            // Only the key's own absence; a 404 for an unknown route says nothing.
            Answer::Status { status: 404, code: Some(code) } if code == "key_not_found" => {
                Outcome::Read(None)
            }
            _ => Outcome::Indeterminate,
        },
        Request::Write | Request::Cas => match write_not_applied(answer) {
            None => match (request, answer) {
                (Request::Cas, Answer::Status { status: 412, .. }) => Outcome::Cas(false),
                (Request::Cas, _) => Outcome::Cas(true),
                _ => Outcome::Written,
            },
            Some(true) => Outcome::Failed,
            Some(false) => Outcome::Indeterminate,
        },
    }
}

/// One client operation as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The client (a lane in the timeline), or [`FINAL_CLIENT`].
    pub client: u64,
    /// The node the request was sent to.
    pub node: u64,
    /// The key's number (keys are named `k<number>`).
    pub key: u64,
    /// What the register was asked.
    pub op: Op,
    /// Microseconds from the start of the run when the request was sent.
    pub invoke_us: u64,
    /// Microseconds from the start of the run when the answer arrived;
    /// `None` if it never did.
    pub complete_us: Option<u64>,
    /// The classified outcome.
    pub outcome: Outcome,
    /// The status and error code, or the transport error, for people.
    pub detail: String,
}

/// A fault as it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpan {
    /// The kind.
    pub kind: FaultKind,
    /// A short label for the timeline, like `kill n2` or `partition {1} | {2,3}`.
    pub label: String,
    /// When it started, microseconds from the start of the run.
    pub start_us: u64,
    /// When it ended (healed, or the action finished).
    pub end_us: u64,
    /// Whether it did what it meant to (an administrative action can be
    /// refused, for instance while the cluster has no leader).
    pub succeeded: bool,
    /// What happened, for people.
    pub detail: String,
}

/// One replica's state at the end of the run (`GET /v1/cluster/digest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDigest {
    /// The node.
    pub node: u64,
    /// The index its state machine has applied.
    pub applied_index: u64,
    /// How many keys it holds.
    pub keys: u64,
    /// Its state's hash.
    pub hash: String,
}

/// Everything recorded in one run: the file `history.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryFile {
    /// The seed of the run.
    pub seed: u64,
    /// How many voters the cluster started with.
    pub nodes: u64,
    /// The fault kinds enabled.
    pub faults_enabled: Vec<FaultKind>,
    /// How long the workload ran, in microseconds.
    pub workload_us: u64,
    /// How long the whole run took (with the end checks), in microseconds.
    pub total_us: u64,
    /// Every client operation, final reads included.
    pub records: Vec<Record>,
    /// Every fault.
    pub faults: Vec<FaultSpan>,
    /// The replicas' digests once they converged (or as last seen).
    pub replicas: Vec<ReplicaDigest>,
    /// Whether the replicas converged to one applied index before the
    /// deadline.
    pub converged: bool,
    /// Nodes that exited without being told to, with what their log said.
    pub crashes: Vec<String>,
}

/// A write that was acknowledged but is missing from the end state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostWrite {
    /// The key.
    pub key: u64,
    /// The acknowledged value.
    pub value: u64,
    /// What the final read saw instead.
    pub final_value: Option<u64>,
}

/// The result of every check.
#[derive(Clone, Debug, PartialEq)]
pub struct Findings {
    /// The linearizability verdict.
    pub verdict: Verdict,
    /// Acknowledged writes the end state lost.
    pub lost_writes: Vec<LostWrite>,
    /// Keys for which no final read succeeded.
    pub unread_keys: Vec<u64>,
    /// Whether every replica ended with the same applied index and hash.
    pub replicas_identical: bool,
}

impl Findings {
    /// Whether the run passes every check.
    pub fn passed(&self, history: &HistoryFile) -> bool {
        self.verdict.is_linearizable()
            && self.lost_writes.is_empty()
            && self.unread_keys.is_empty()
            && self.replicas_identical
            && history.crashes.is_empty()
    }
}

/// Runs every check on a history.
pub fn check(history: &HistoryFile) -> Result<Findings, linearizability::HistoryError> {
    let operations: Vec<Operation> = history
        .records
        .iter()
        .map(|record| Operation {
            client: record.client,
            key: record.key,
            op: record.op,
            invoke: record.invoke_us,
            complete: record.complete_us,
            outcome: record.outcome,
        })
        .collect();
    let verdict = linearizability::check(&operations, None)?;
    let (lost_writes, unread_keys) = lost_writes(&history.records);
    Ok(Findings { verdict, lost_writes, unread_keys, replicas_identical: replicas_identical(history) })
}

/// Whether every replica reported the same applied index and hash.
fn replicas_identical(history: &HistoryFile) -> bool {
    let Some(first) = history.replicas.first() else { return false };
    history.converged
        && history
            .replicas
            .iter()
            .all(|replica| replica.applied_index == first.applied_index && replica.hash == first.hash)
}

/// The value a write or a successful compare-and-set puts in the register.
fn written_value(op: Op) -> Option<u64> {
    match op {
        Op::Write(value) => Some(value),
        Op::Cas { new, .. } => new,
        _ => None,
    }
}

/// Checks that each key's final value (read after every fault healed) still
/// reflects every acknowledged write: it must come from a write that was
/// not itself followed (in real time) by an acknowledged write of another
/// value. This is implied by linearizability, but stated on its own it says
/// plainly "this acknowledged write is gone". Returns the lost writes and
/// the keys that have no final read.
pub fn lost_writes(records: &[Record]) -> (Vec<LostWrite>, Vec<u64>) {
    let mut by_key: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    for record in records {
        by_key.entry(record.key).or_default().push(record);
    }
    let mut lost = Vec::new();
    let mut unread = Vec::new();
    for (key, records) in by_key {
        let final_read = records.iter().filter(|r| r.client == FINAL_CLIENT).find_map(|r| match r.outcome {
            Outcome::Read(value) => Some(value),
            _ => None,
        });
        let Some(final_value) = final_read else {
            unread.push(key);
            continue;
        };
        let acknowledged: Vec<(&Record, u64)> = records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Written | Outcome::Cas(true)))
            .filter_map(|r| written_value(r.op).map(|value| (*r, value)))
            .collect();
        // The writes that may have produced the final value: any write of
        // it not known to have failed.
        let sources: Vec<&Record> = records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Written | Outcome::Cas(true) | Outcome::Indeterminate))
            .filter(|r| final_value.is_some() && written_value(r.op) == final_value)
            .copied()
            .collect();
        for (record, value) in acknowledged {
            if Some(value) == final_value {
                continue;
            }
            // Another value may legitimately have replaced this one only if
            // a write of it could take effect after this one: it had not
            // completed before this write was sent.
            let overwritten =
                sources.iter().any(|source| source.complete_us.is_none_or(|done| done >= record.invoke_us));
            if !overwritten {
                lost.push(LostWrite { key, value, final_value });
            }
        }
    }
    (lost, unread)
}

/// Counts of operations by request and outcome, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `(request, outcome class)` → count; outcome classes are `ok`,
    /// `cas_failed`, `not_applied`, `indeterminate`.
    pub by_outcome: BTreeMap<(&'static str, &'static str), u64>,
    /// Faults by kind: (started, succeeded).
    pub faults: BTreeMap<FaultKind, (u64, u64)>,
    /// Keys touched.
    pub keys: u64,
}

/// The name of a request in reports.
pub fn request_name(op: Op) -> &'static str {
    match op {
        Op::Read => "read",
        Op::Write(_) => "write",
        Op::Cas { .. } => "cas",
        _ => "other",
    }
}

/// The class of an outcome in reports. A read that failed is counted as
/// not applied: it changed nothing, so nothing about it is uncertain.
pub fn outcome_class(op: Op, outcome: Outcome) -> &'static str {
    match (op, outcome) {
        (_, Outcome::Cas(false)) => "cas_failed",
        (Op::Read, Outcome::Indeterminate) | (_, Outcome::Failed) => "not_applied",
        (_, Outcome::Indeterminate) => "indeterminate",
        _ => "ok",
    }
}

/// Counts a history's operations and faults.
pub fn counts(history: &HistoryFile) -> Counts {
    let mut counts = Counts::default();
    let mut keys = BTreeSet::new();
    for record in &history.records {
        keys.insert(record.key);
        let name = if record.client == FINAL_CLIENT { "final read" } else { request_name(record.op) };
        *counts.by_outcome.entry((name, outcome_class(record.op, record.outcome))).or_default() += 1;
    }
    for fault in &history.faults {
        let entry = counts.faults.entry(fault.kind).or_default();
        entry.0 += 1;
        entry.1 += u64::from(fault.succeeded);
    }
    counts.keys = keys.len() as u64;
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, code: Option<&str>) -> Answer {
        Answer::Status { status, code: code.map(str::to_string) }
    }

    #[test]
    fn successful_answers_are_definite() {
        assert_eq!(classify(Request::Write, &status(200, None), None), Outcome::Written);
        assert_eq!(classify(Request::Cas, &status(200, None), None), Outcome::Cas(true));
        assert_eq!(
            classify(Request::Cas, &status(412, Some("precondition_failed")), None),
            Outcome::Cas(false)
        );
        assert_eq!(classify(Request::Read, &status(200, None), Some(5)), Outcome::Read(Some(5)));
        assert_eq!(classify(Request::Read, &status(404, Some("key_not_found")), None), Outcome::Read(None));
        assert_eq!(
            classify(Request::Read, &status(404, Some("no_such_route")), None),
            Outcome::Indeterminate
        );
    }

    #[test]
    fn refusals_before_proposing_are_not_applied() {
        for code in NOT_APPLIED_CODES {
            assert_eq!(classify(Request::Write, &status(503, Some(code)), None), Outcome::Failed, "{code}");
            assert_eq!(classify(Request::Cas, &status(503, Some(code)), None), Outcome::Failed, "{code}");
        }
        assert_eq!(classify(Request::Write, &status(400, Some("bad_key")), None), Outcome::Failed);
        assert_eq!(classify(Request::Write, &Answer::ConnectFailed, None), Outcome::Failed);
    }

    #[test]
    fn uncertain_answers_are_indeterminate() {
        for answer in [
            status(504, Some("timeout")),
            status(503, Some("forward_failed")),
            status(503, Some("shutting_down")),
            status(503, None),
            status(500, Some("internal")),
            status(502, None),
            Answer::Lost,
        ] {
            assert_eq!(classify(Request::Write, &answer, None), Outcome::Indeterminate, "{answer:?}");
            assert_eq!(classify(Request::Cas, &answer, None), Outcome::Indeterminate, "{answer:?}");
        }
    }

    #[test]
    fn failed_reads_constrain_nothing() {
        for answer in [status(503, Some("no_leader")), status(504, None), Answer::ConnectFailed, Answer::Lost]
        {
            assert_eq!(classify(Request::Read, &answer, None), Outcome::Indeterminate);
        }
    }

    fn record(client: u64, op: Op, invoke_us: u64, complete_us: u64, outcome: Outcome) -> Record {
        Record {
            client,
            node: 1,
            key: 0,
            op,
            invoke_us,
            complete_us: Some(complete_us),
            outcome,
            detail: String::new(),
        }
    }

    #[test]
    fn an_overwritten_write_is_not_lost() {
        let records = vec![
            record(1, Op::Write(1), 0, 10, Outcome::Written),
            record(2, Op::Write(2), 20, 30, Outcome::Written),
            record(FINAL_CLIENT, Op::Read, 40, 50, Outcome::Read(Some(2))),
        ];
        assert_eq!(lost_writes(&records), (vec![], vec![]));
    }

    #[test]
    fn a_write_missing_at_the_end_is_lost() {
        let records = vec![
            record(1, Op::Write(1), 0, 10, Outcome::Written),
            record(2, Op::Write(2), 20, 30, Outcome::Written),
            record(FINAL_CLIENT, Op::Read, 40, 50, Outcome::Read(Some(1))),
        ];
        let (lost, _) = lost_writes(&records);
        assert_eq!(lost, vec![LostWrite { key: 0, value: 2, final_value: Some(1) }]);
        let absent = vec![
            record(1, Op::Write(1), 0, 10, Outcome::Written),
            record(FINAL_CLIENT, Op::Read, 40, 50, Outcome::Read(None)),
        ];
        assert_eq!(lost_writes(&absent).0.len(), 1);
    }

    #[test]
    fn a_concurrent_or_indeterminate_write_may_win() {
        let records = vec![
            record(1, Op::Write(1), 0, 30, Outcome::Written),
            record(2, Op::Write(2), 10, 20, Outcome::Written),
            record(3, Op::Write(3), 15, 16, Outcome::Indeterminate),
            record(FINAL_CLIENT, Op::Read, 40, 50, Outcome::Read(Some(3))),
        ];
        assert_eq!(lost_writes(&records).0, vec![]);
    }

    #[test]
    fn keys_without_a_final_read_are_reported() {
        let records = vec![record(1, Op::Write(1), 0, 10, Outcome::Written)];
        assert_eq!(lost_writes(&records), (vec![], vec![0]));
    }

    #[test]
    fn the_history_file_round_trips_and_checks() {
        let mut history = HistoryFile {
            seed: 1,
            nodes: 3,
            records: vec![
                record(1, Op::Write(1), 0, 10, Outcome::Written),
                record(2, Op::Cas { expected: Some(1), new: Some(2) }, 20, 30, Outcome::Cas(true)),
                record(FINAL_CLIENT, Op::Read, 40, 50, Outcome::Read(Some(2))),
            ],
            replicas: vec![
                ReplicaDigest { node: 1, applied_index: 9, keys: 1, hash: "ab".into() },
                ReplicaDigest { node: 2, applied_index: 9, keys: 1, hash: "ab".into() },
            ],
            converged: true,
            ..HistoryFile::default()
        };
        let text = serde_json::to_string(&history).unwrap();
        let back: HistoryFile = serde_json::from_str(&text).unwrap();
        assert_eq!(back, history);
        let findings = check(&back).unwrap();
        assert!(findings.passed(&back), "{findings:?}");

        history.replicas[1].hash = "cd".into();
        assert!(!check(&history).unwrap().replicas_identical);

        // A stale final read is both a violation and a lost write.
        history.replicas[1].hash = "ab".into();
        history.records[2].outcome = Outcome::Read(Some(1));
        let findings = check(&history).unwrap();
        assert!(!findings.verdict.is_linearizable());
        assert_eq!(findings.lost_writes.len(), 1);
        assert!(!findings.passed(&history));
    }

    #[test]
    fn counts_group_by_request_and_outcome() {
        let history = HistoryFile {
            records: vec![
                record(1, Op::Write(1), 0, 10, Outcome::Written),
                record(1, Op::Write(2), 0, 10, Outcome::Indeterminate),
                record(1, Op::Cas { expected: Some(1), new: Some(3) }, 0, 10, Outcome::Cas(false)),
                record(FINAL_CLIENT, Op::Read, 40, 50, Outcome::Read(Some(1))),
            ],
            ..HistoryFile::default()
        };
        let counts = counts(&history);
        assert_eq!(counts.by_outcome[&("write", "ok")], 1);
        assert_eq!(counts.by_outcome[&("write", "indeterminate")], 1);
        assert_eq!(counts.by_outcome[&("cas", "cas_failed")], 1);
        assert_eq!(counts.by_outcome[&("final read", "ok")], 1);
        assert_eq!(counts.keys, 1);
    }
}
