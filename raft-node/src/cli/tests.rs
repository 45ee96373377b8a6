//! Argument parsing, exit codes, the status summary and `certs`.

use std::collections::BTreeMap;

use clap::error::ErrorKind;
use clap::CommandFactory;

use super::*;
use crate::api::{ErrorBody, ErrorDetail, LeaderHint, Members, NodeInfo, PeerProgress};

fn parse(arguments: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("raft-node").chain(arguments.iter().copied()))
}

#[test]
fn the_command_line_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn no_subcommand_runs_the_development_node() {
    let command = parse(&[]).unwrap().command_or_run();
    let Command::Run(args) = command else { panic!("not run: {command:?}") };
    assert!(args.id.is_none() && !args.bootstrap);
}

#[test]
fn run_takes_the_node_flags() {
    let cli = parse(&[
        "run",
        "--id",
        "2",
        "--bootstrap",
        "--initial-member",
        "2=127.0.0.1:7082=http://127.0.0.1:8082",
    ])
    .unwrap();
    let Some(Command::Run(args)) = cli.command else { panic!("not run") };
    assert_eq!(args.id, Some(2));
    assert!(args.bootstrap);
    assert_eq!(args.initial_members.len(), 1);
}

#[test]
fn put_reads_its_value_from_exactly_one_place() {
    let cli = parse(&["put", "a/b", "hello", "--if-match", "4", "--idempotency-key", "me/1"]).unwrap();
    let Some(Command::Put(args)) = cli.command else { panic!("not put") };
    assert_eq!((args.key.as_str(), args.value.as_deref()), ("a/b", Some("hello")));
    assert_eq!(args.if_match, Some(4));
    assert_eq!(args.connection.endpoint, DEFAULT_ENDPOINT);
    assert_eq!(args.connection.timeout_ms, 10_000);

    let cli = parse(&["put", "k", "--file", "value.bin"]).unwrap();
    let Some(Command::Put(args)) = cli.command else { panic!("not put") };
    assert_eq!(args.file, Some(PathBuf::from("value.bin")));

    for bad in [
        &["put", "k"][..],
        &["put", "k", "v", "--file", "x"],
        &["put", "k", "v", "--if-match", "1", "--if-none-match"],
        &["put", "k", "v", "--if-match", "seven"],
    ] {
        let error = parse(bad).unwrap_err();
        assert_eq!(error.exit_code(), 2, "{bad:?}");
    }
}

#[test]
fn client_flags_parse_on_every_client_command() {
    let cli = parse(&[
        "get",
        "k",
        "--consistency",
        "lease",
        "--endpoint",
        "https://127.0.0.1:8443",
        "--ca",
        "ca.pem",
        "--cert",
        "c.pem",
        "--key",
        "c.key",
        "--timeout-ms",
        "500",
    ])
    .unwrap();
    let Some(Command::Get(args)) = cli.command else { panic!("not get") };
    assert_eq!(args.consistency, Consistency::Lease);
    assert_eq!(args.connection.endpoint, "https://127.0.0.1:8443");
    assert_eq!(args.connection.timeout_ms, 500);

    assert_eq!(
        parse(&["get", "k", "--cert", "c.pem"]).unwrap_err().kind(),
        ErrorKind::MissingRequiredArgument
    );
    assert_eq!(parse(&["get", "k", "--timeout-ms", "0"]).unwrap_err().exit_code(), 2);
    assert_eq!(
        parse(&["get", "k", "--consistency", "eventual"]).unwrap_err().kind(),
        ErrorKind::InvalidValue
    );
}

#[test]
fn membership_and_leadership_commands_parse() {
    let cli = parse(&[
        "members",
        "add",
        "4",
        "--peer-address",
        "127.0.0.1:7084",
        "--client-address",
        "http://127.0.0.1:8084",
        "--voter",
        "--token-file",
        "token",
    ])
    .unwrap();
    let Some(Command::Members(MembersCommand::Add(args))) = cli.command else { panic!("not members add") };
    assert_eq!(args.id, 4);
    assert!(args.voter);
    assert_eq!(args.connection.token_file, Some(PathBuf::from("token")));

    assert!(matches!(
        parse(&["members", "remove", "3"]).unwrap().command,
        Some(Command::Members(MembersCommand::Remove(MemberIdArgs { id: 3, .. })))
    ));
    assert_eq!(parse(&["members", "promote", "0"]).unwrap_err().exit_code(), 2);
    assert!(matches!(
        parse(&["transfer-leader"]).unwrap().command,
        Some(Command::TransferLeader(TransferArgs { id: None, .. }))
    ));
    assert!(matches!(
        parse(&["transfer-leader", "2"]).unwrap().command,
        Some(Command::TransferLeader(TransferArgs { id: Some(2), .. }))
    ));
}

#[test]
fn certs_validates_the_cluster_id_and_node_ids() {
    let cli =
        parse(&["certs", "--cluster-id", "prod", "--out", "dir", "--node", "1", "--node", "2"]).unwrap();
    let Some(Command::Certs(args)) = cli.command else { panic!("not certs") };
    assert_eq!(args.nodes, vec![1, 2]);
    let error = parse(&["certs", "--cluster-id", "Prod!", "--out", "dir"]).unwrap_err();
    assert!(error.to_string().contains("invalid cluster id"), "{error}");
    assert_eq!(
        parse(&["certs", "--cluster-id", "p", "--out", "d", "--node", "0"]).unwrap_err().exit_code(),
        2
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    let mut root = Cli::command();
    root.build();
    let mut pending: Vec<clap::Command> = root.get_subcommands().cloned().collect();
    while let Some(mut command) = pending.pop() {
        if command.get_name() == "help" {
            continue;
        }
        pending.extend(command.get_subcommands().cloned());
        if command.has_subcommands() {
            continue;
        }
        let help = command.render_long_help().to_string();
        assert!(help.contains("Example"), "`{}` has no example:\n{help}", command.get_name());
    }
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("Exit codes") && help.contains("412"), "{help}");
}

fn api_error(status: StatusCode, code: &str) -> CliError {
    let body = ErrorBody { error: ErrorDetail { code: code.into(), message: "m".into(), leader: None } };
    CliError::Client(ClientError::Api { status, body })
}

#[test]
fn exit_codes_follow_the_table() {
    assert_eq!(api_error(StatusCode::PRECONDITION_FAILED, "precondition_failed").exit_code(), 3);
    assert_eq!(api_error(StatusCode::NOT_FOUND, "not_a_member").exit_code(), 4);
    assert_eq!(CliError::NotFound("k".into()).exit_code(), 4);
    assert_eq!(api_error(StatusCode::SERVICE_UNAVAILABLE, "no_leader").exit_code(), 1);
    let refused =
        CliError::Client(ClientError::ConnectionRefused { endpoint: "http://127.0.0.1:8080".into() });
    assert_eq!(refused.exit_code(), 1);
    assert_eq!(refused.to_string(), "connection refused: is a node running at http://127.0.0.1:8080?");
}

#[test]
fn refusals_for_want_of_the_token_say_how_to_pass_it() {
    let message = api_error(StatusCode::UNAUTHORIZED, "unauthorized").to_string();
    assert!(message.contains("--token-file") && message.contains("RAFT_ADMIN_TOKEN"), "{message}");
}

#[test]
fn the_status_summary_shows_the_essentials() {
    let status = ClusterStatus {
        node_id: 1,
        cluster_id: "local".into(),
        role: "leader".into(),
        term: 3,
        leader: Some(LeaderHint { id: 1, client_address: Some("http://127.0.0.1:8081".into()) }),
        commit_index: 10,
        applied_index: 10,
        last_index: 11,
        snapshot_index: 0,
        members: Members { voters: vec![1, 2, 3], outgoing_voters: vec![], learners: vec![], joint: false },
        nodes: BTreeMap::from([(
            1,
            NodeInfo {
                peer_address: "127.0.0.1:7081".into(),
                client_address: "http://127.0.0.1:8081".into(),
            },
        )]),
        peers: vec![PeerProgress { id: 2, match_index: 10, lag: 1 }],
        stopped: None,
    };
    let text = format_status(&status);
    for expected in [
        "node 1 of cluster local: leader in term 3",
        "leader:   node 1 at http://127.0.0.1:8081",
        "commit 10, applied 10, last 11, snapshot 0",
        "voters:   1, 2, 3",
        "learners: -",
        "127.0.0.1:7081",
        "match 10",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
}

fn certs_args(directory: &std::path::Path, cluster: &str, nodes: &[u64], force: bool) -> CertsArgs {
    CertsArgs {
        cluster_id: ClusterId::new(cluster).unwrap(),
        out: directory.to_path_buf(),
        nodes: nodes.to_vec(),
        addresses: Vec::new(),
        force,
    }
}

#[test]
fn certs_creates_then_reuses_the_ca_and_never_overwrites_silently() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path();
    certs(&certs_args(path, "unit", &[1, 2], false)).unwrap();
    let ca_before = std::fs::read(path.join("ca.pem")).unwrap();
    for name in ["ca.key", "node-1.pem", "node-1.key", "node-2.pem", "node-2.key"] {
        assert!(path.join(name).exists(), "{name} missing");
    }

    // More nodes later: issued from the same CA.
    certs(&certs_args(path, "unit", &[3], false)).unwrap();
    assert_eq!(std::fs::read(path.join("ca.pem")).unwrap(), ca_before);
    NodeFiles::in_directory(path, NodeId(3)).identity().unwrap();

    let node_before = std::fs::read(path.join("node-2.pem")).unwrap();
    let error = certs(&certs_args(path, "unit", &[2, 4], false)).unwrap_err().to_string();
    assert!(error.contains("refusing to overwrite") && error.contains("--force"), "{error}");
    assert!(!path.join("node-4.pem").exists(), "nothing is written when refusing");
    certs(&certs_args(path, "unit", &[2], true)).unwrap();
    assert_ne!(std::fs::read(path.join("node-2.pem")).unwrap(), node_before);

    let error = certs(&certs_args(path, "other", &[5], false)).unwrap_err().to_string();
    assert!(error.contains("does not belong to cluster"), "{error}");
    let error = certs(&certs_args(path, "other", &[], false)).unwrap_err().to_string();
    assert!(error.contains("does not belong to cluster"), "{error}");

    std::fs::remove_file(path.join("ca.key")).unwrap();
    let error = certs(&certs_args(path, "unit", &[6], false)).unwrap_err().to_string();
    assert!(error.contains("needs the CA's key"), "{error}");
}
