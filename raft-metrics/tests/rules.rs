//! Checks the alert rules and the dashboard against the metric names, and
//! runs `promtool` on the rules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use raft_metrics::names;

fn crate_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(crate_file(relative))
        .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

/// Every `raft_…` identifier in `text`.
fn raft_identifiers(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_identifier = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let mut start = 0;
    while let Some(offset) = text[start..].find("raft_") {
        let begin = start + offset;
        let preceded = begin > 0 && is_identifier(bytes[begin - 1]);
        let mut end = begin;
        while end < bytes.len() && is_identifier(bytes[end]) {
            end += 1;
        }
        if !preceded {
            found.insert(text[begin..end].to_owned());
        }
        start = end.max(begin + 1);
    }
    found
}

fn assert_all_known(file: &str, identifiers: &BTreeSet<String>) {
    let unknown: Vec<_> =
        identifiers.iter().filter(|identifier| names::find_series(identifier).is_none()).collect();
    assert!(unknown.is_empty(), "{file} uses metrics missing from raft_metrics::names: {unknown:?}");
}

/// The `expr:` values of the rules file (one line each).
fn rule_expressions(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("expr:"))
        .map(|expression| expression.trim().to_owned())
        .collect()
}

#[test]
fn alert_expressions_use_only_known_metrics() {
    let rules = read("prometheus/alerts.yml");
    let expressions = rule_expressions(&rules);
    assert!(expressions.len() >= 5, "expected at least 5 rules, found {expressions:?}");
    let used: BTreeSet<String> =
        expressions.iter().flat_map(|expression| raft_identifiers(expression)).collect();
    assert_all_known("alerts.yml", &used);
    for required in [
        "raft_has_leader",
        "raft_leader_changes_total",
        "raft_storage_append_seconds_bucket",
        "raft_peer_lag_entries",
    ] {
        assert!(used.contains(required), "no alert uses {required}");
    }
    // Nothing else in the file names a metric that does not exist either.
    assert_all_known("alerts.yml", &raft_identifiers(&rules));
}

#[test]
fn alert_tests_use_only_known_metrics() {
    assert_all_known("alerts_test.yml", &raft_identifiers(&read("prometheus/alerts_test.yml")));
}

#[test]
fn the_identifier_scan_catches_renamed_metrics() {
    let used = raft_identifiers("max by (job) (raft_has_leaders) == 0 and raft_term_bucket");
    assert!(used.iter().all(|identifier| names::find_series(identifier).is_none()), "{used:?}");
    assert!(names::find_series("raft_propose_to_commit_seconds_count").is_some());
}

#[test]
fn dashboard_is_grafana_json_using_known_metrics() {
    let text = read("grafana/raft-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dashboard["uid"], "raft-consensus");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut expressions = Vec::new();
    for panel in panels.iter().filter(|panel| panel["type"] != "row") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            expressions.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    let used: BTreeSet<String> =
        expressions.iter().flat_map(|expression| raft_identifiers(expression)).collect();
    assert_all_known("raft-dashboard.json", &used);
    for required in [
        "raft_term",
        "raft_role",
        "raft_leader_id",
        "raft_commit_index",
        "raft_applied_index",
        "raft_peer_lag_entries",
        "raft_propose_to_commit_seconds_bucket",
        "raft_storage_append_seconds_bucket",
        "raft_transport_sent_bytes_total",
        "raft_snapshots_created_total",
    ] {
        assert!(used.contains(required), "the dashboard shows no {required}");
    }
}

/// Runs `promtool` with `arguments` in `prometheus/`, failing with advice
/// when it is not installed.
fn promtool(arguments: &[&str]) {
    let directory = crate_file("prometheus");
    let output = match Command::new("promtool").args(arguments).current_dir(&directory).output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not on PATH: install the Debian `prometheus` package \
             (`apt-get install -y --no-install-recommends prometheus`) to check the alert rules"
        ),
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{}\n{}",
        arguments.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn promtool_checks_the_rules() {
    promtool(&["check", "rules", "alerts.yml"]);
}

#[test]
fn promtool_unit_tests_pass() {
    promtool(&["test", "rules", "alerts_test.yml"]);
}
