//! `report.md`: the verdict first, then what ran and what happened.

use std::fmt::Write as _;

use raft_core::testing::linearizability::Verdict;

use crate::history::{counts, Findings, HistoryFile};

/// How many lost writes and crash notes the report lists in full.
const LISTED_MAX: usize = 20;

/// Writes the report of a checked history.
pub fn markdown(history: &HistoryFile, findings: &Findings, command: &str) -> String {
    let counts = counts(history);
    let mut out = String::new();
    let verdict = if findings.passed(history) { "PASS" } else { "FAIL" };
    let _ = writeln!(out, "# raft-chaos report: {verdict}\n");
    let _ = writeln!(out, "- seed: {}", history.seed);
    let _ = writeln!(out, "- nodes: {}", history.nodes);
    let faults: Vec<&str> = history.faults_enabled.iter().map(|kind| kind.name()).collect();
    let _ = writeln!(
        out,
        "- faults enabled: {}",
        if faults.is_empty() { "none".into() } else { faults.join(", ") }
    );
    let _ = writeln!(
        out,
        "- workload: {:.1} s of chaos, {:.1} s in all with the end checks",
        history.workload_us as f64 / 1e6,
        history.total_us as f64 / 1e6
    );
    let _ = writeln!(out, "- operations: {} on {} keys", history.records.len(), counts.keys);
    let _ = writeln!(out, "- command: `{command}`");
    let _ = writeln!(out, "- re-check: `raft-chaos check history.json`\n");

    let _ = writeln!(out, "## Checks\n");
    let linearizable = match &findings.verdict {
        Verdict::Linearizable => "linearizable".to_string(),
        Verdict::NotLinearizable { key, .. } => format!("**NOT linearizable** (key k{key})"),
        Verdict::Unknown { key, reason } => format!("**unknown** (key k{key}: {reason})"),
        other => format!("**{other}**"),
    };
    let _ = writeln!(out, "| check | result |\n|---|---|");
    let _ = writeln!(
        out,
        "| linearizability (per key, failed writes dropped, uncertain ones maybe-applied) | {linearizable} |"
    );
    let _ = writeln!(out, "| acknowledged writes lost at the end | {} |", findings.lost_writes.len());
    let _ = writeln!(out, "| keys without a final read | {} |", findings.unread_keys.len());
    let replicas = if findings.replicas_identical {
        format!("identical ({} replicas)", history.replicas.len())
    } else if !history.converged {
        "**did not converge**".to_string()
    } else {
        "**differ**".to_string()
    };
    let _ = writeln!(out, "| replicas (`GET /v1/cluster/digest`) | {replicas} |");
    let _ = writeln!(out, "| nodes that exited on their own | {} |\n", history.crashes.len());

    if let Verdict::NotLinearizable { explanation, .. } = &findings.verdict {
        let _ = writeln!(out, "### Linearizability violation\n\n```\n{explanation}\n```\n");
    }
    if !findings.lost_writes.is_empty() {
        let _ = writeln!(out, "### Lost acknowledged writes\n");
        for lost in findings.lost_writes.iter().take(LISTED_MAX) {
            let _ = writeln!(
                out,
                "- k{}: value {} acknowledged, final value {:?}",
                lost.key, lost.value, lost.final_value
            );
        }
        out.push('\n');
    }
    if !findings.unread_keys.is_empty() {
        let keys: Vec<String> =
            findings.unread_keys.iter().take(LISTED_MAX).map(|k| format!("k{k}")).collect();
        let _ = writeln!(out, "### Keys without a final read\n\n{}\n", keys.join(", "));
    }
    if !history.crashes.is_empty() {
        let _ = writeln!(out, "### Nodes that exited on their own\n");
        for crash in history.crashes.iter().take(LISTED_MAX) {
            let _ = writeln!(out, "```\n{crash}\n```");
        }
        out.push('\n');
    }

    let _ = writeln!(out, "## Replicas\n\n| node | applied index | keys | hash |\n|---|---|---|---|");
    for replica in &history.replicas {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            replica.node, replica.applied_index, replica.keys, replica.hash
        );
    }

    let _ = writeln!(out, "\n## Operations by outcome\n");
    let _ = writeln!(
        out,
        "| request | ok | cas failed (412) | not applied (reads: failed) | indeterminate |\n|---|---|---|---|---|"
    );
    for request in ["read", "write", "cas", "final read"] {
        let cell = |class| counts.by_outcome.get(&(request, class)).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {request} | {} | {} | {} | {} |",
            cell("ok"),
            cell("cas_failed"),
            cell("not_applied"),
            cell("indeterminate")
        );
    }

    let _ = writeln!(out, "\n## Faults\n\n| kind | injected | succeeded |\n|---|---|---|");
    for (kind, (started, succeeded)) in &counts.faults {
        let _ = writeln!(out, "| {kind} | {started} | {succeeded} |");
    }
    let _ = writeln!(out, "\n<details><summary>Every fault</summary>\n");
    let _ = writeln!(out, "| start (s) | end (s) | fault | ok | detail |\n|---|---|---|---|---|");
    for fault in &history.faults {
        let _ = writeln!(
            out,
            "| {:.1} | {:.1} | {} | {} | {} |",
            fault.start_us as f64 / 1e6,
            fault.end_us as f64 / 1e6,
            fault.label.replace('|', "\\|"),
            if fault.succeeded { "yes" } else { "no" },
            fault.detail.replace('|', "\\|").replace('\n', " ")
        );
    }
    let _ = writeln!(out, "\n</details>\n\nThe timeline: `timeline.svg`. Node logs: `node-<id>.log`.");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{check, FaultSpan, Record, ReplicaDigest, FINAL_CLIENT};
    use crate::schedule::FaultKind;
    use raft_core::testing::linearizability::{Op, Outcome};

    #[test]
    fn a_passing_run_reports_pass_and_counts() {
        let history = HistoryFile {
            seed: 9,
            nodes: 3,
            faults_enabled: vec![FaultKind::Kill],
            records: vec![
                Record {
                    client: 0,
                    node: 1,
                    key: 0,
                    op: Op::Write(1),
                    invoke_us: 0,
                    complete_us: Some(5),
                    outcome: Outcome::Written,
                    detail: "200".into(),
                },
                Record {
                    client: FINAL_CLIENT,
                    node: 2,
                    key: 0,
                    op: Op::Read,
                    invoke_us: 10,
                    complete_us: Some(15),
                    outcome: Outcome::Read(Some(1)),
                    detail: "200".into(),
                },
            ],
            faults: vec![FaultSpan {
                kind: FaultKind::Kill,
                label: "kill n1".into(),
                start_us: 1,
                end_us: 4,
                succeeded: true,
                detail: "restarted".into(),
            }],
            replicas: vec![ReplicaDigest { node: 1, applied_index: 3, keys: 1, hash: "00".into() }],
            converged: true,
            ..HistoryFile::default()
        };
        let findings = check(&history).unwrap();
        let report = markdown(&history, &findings, "raft-chaos run --seed 9");
        assert!(report.starts_with("# raft-chaos report: PASS"), "{report}");
        assert!(report.contains("| write | 1 | 0 | 0 | 0 |"), "{report}");
        assert!(report.contains("| kill | 1 | 1 |"), "{report}");
        assert!(report.contains("| linearizability (per key, failed writes dropped, uncertain ones maybe-applied) | linearizable |"));
    }
}
