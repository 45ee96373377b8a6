//! Checkpoints over HTTP on nodes started in this process: every error
//! class, rollback, export, a new cluster started from an export, and a
//! rollback across membership changes (the node directory is not rolled
//! back).

use std::collections::BTreeSet;
use std::time::Instant;

use raft_core::runtime::ReadConsistency;
use raft_node::api::{
    CheckpointList, CheckpointOpResult, CheckpointSummary, Digest, ErrorBody, WriteResult,
    CHECKPOINT_CHECKSUM_HEADER, CHECKPOINT_INDEX_HEADER,
};
use raft_node::checkpoint_file;
use raft_node::config::JoinRole;
use raft_node::kv::{Directory, KvAnswer, KvQuery};

use crate::in_process::{error_code, Cluster};
use crate::support::WAIT;

async fn create(cluster: &Cluster, node: u64, name: &str) -> reqwest::Response {
    cluster
        .http
        .post(format!("{}/v1/checkpoints", cluster.url(node)))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .unwrap()
}

async fn put(cluster: &Cluster, node: u64, key: &str, value: &str) -> WriteResult {
    let response = cluster
        .http
        .put(format!("{}/v1/kv/{key}", cluster.url(node)))
        .body(value.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn value(cluster: &Cluster, node: u64, key: &str) -> Option<String> {
    let response = cluster.http.get(format!("{}/v1/kv/{key}", cluster.url(node))).send().await.unwrap();
    if response.status() == 404 {
        return None;
    }
    assert_eq!(response.status(), 200);
    Some(response.text().await.unwrap())
}

/// GETs `path` from `node` and decodes its JSON answer.
async fn get_json<T: serde::de::DeserializeOwned>(cluster: &Cluster, node: u64, path: &str) -> T {
    cluster.http.get(format!("{}{path}", cluster.url(node))).send().await.unwrap().json().await.unwrap()
}

async fn list(cluster: &Cluster, node: u64) -> CheckpointList {
    get_json(cluster, node, "/v1/checkpoints").await
}

async fn digest(cluster: &Cluster, node: u64) -> Digest {
    get_json(cluster, node, "/v1/cluster/digest?consistency=stale").await
}

/// Waits until every node applied at least `index` and all digests agree.
async fn agreed_digest(cluster: &Cluster, nodes: &[u64], index: u64) -> Digest {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut digests = Vec::new();
        for node in nodes {
            digests.push(digest(cluster, *node).await);
        }
        let caught_up = digests.iter().all(|d| d.applied_index >= index);
        let same =
            digests.windows(2).all(|pair| pair[0].hash == pair[1].hash && pair[0].keys == pair[1].keys);
        if caught_up && same {
            return digests.remove(0);
        }
        assert!(Instant::now() < deadline, "replicas do not agree: {digests:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until `node` lists the checkpoint `name`.
async fn listed(cluster: &Cluster, node: u64, name: &str) -> CheckpointSummary {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = list(cluster, node).await.checkpoints.into_iter().find(|c| c.name == name) {
            return found;
        }
        assert!(Instant::now() < deadline, "node {node} never listed checkpoint {name}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_created_listed_rolled_back_and_deleted_through_any_node() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = if leader == 1 { 2 } else { 1 };
    let http = &cluster.http;

    put(&cluster, leader, "colour", "red").await;
    put(&cluster, follower, "shape", "square").await;
    let response = create(&cluster, follower, "before").await;
    assert_eq!(response.status(), 201, "created through a follower (forwarded)");
    let created: CheckpointSummary = response.json().await.unwrap();
    assert_eq!(created.name, "before");
    assert_eq!(created.checksum.len(), 8);
    let at_checkpoint = agreed_digest(&cluster, &[1, 2, 3], created.index).await;
    for node in 1..=3 {
        let found = listed(&cluster, node, "before").await;
        assert_eq!((found.index, found.checksum.clone()), (created.index, created.checksum.clone()));
    }

    // Every error class, with the API's JSON error body.
    assert_eq!(error_code(create(&cluster, leader, "before").await).await, (409, "checkpoint_exists".into()));
    assert_eq!(
        error_code(create(&cluster, follower, "before").await).await,
        (409, "checkpoint_exists".into())
    );
    assert_eq!(
        error_code(create(&cluster, leader, "no spaces").await).await,
        (400, "bad_checkpoint_name".into())
    );
    assert_eq!(
        error_code(create(&cluster, leader, ".hidden").await).await,
        (400, "bad_checkpoint_name".into())
    );
    let bad_json =
        http.post(format!("{}/v1/checkpoints", cluster.url(leader))).body("{").send().await.unwrap();
    assert_eq!(error_code(bad_json).await, (400, "bad_json".into()));
    for node in [leader, follower] {
        let rollback =
            http.post(format!("{}/v1/checkpoints/missing/rollback", cluster.url(node))).send().await.unwrap();
        assert_eq!(error_code(rollback).await, (404, "checkpoint_not_found".into()));
        let delete =
            http.delete(format!("{}/v1/checkpoints/missing", cluster.url(node))).send().await.unwrap();
        assert_eq!(error_code(delete).await, (404, "checkpoint_not_found".into()));
        let export =
            http.get(format!("{}/v1/checkpoints/missing/export", cluster.url(node))).send().await.unwrap();
        assert_eq!(error_code(export).await, (404, "checkpoint_not_found".into()));
    }

    // Writes after the checkpoint, then a rollback through a follower:
    // every replica holds the checkpoint's keys again, and a write
    // committed after the rollback applies on top.
    put(&cluster, leader, "colour", "blue").await;
    put(&cluster, leader, "size", "large").await;
    let rollback =
        http.post(format!("{}/v1/checkpoints/before/rollback", cluster.url(follower))).send().await.unwrap();
    assert_eq!(rollback.status(), 200);
    let rolled_back: CheckpointOpResult = rollback.json().await.unwrap();
    assert!(rolled_back.index > created.index);
    let after_rollback = agreed_digest(&cluster, &[1, 2, 3], rolled_back.index).await;
    assert_eq!(
        (after_rollback.keys, after_rollback.hash.clone()),
        (at_checkpoint.keys, at_checkpoint.hash.clone())
    );
    assert_eq!(value(&cluster, follower, "colour").await.as_deref(), Some("red"));
    assert_eq!(value(&cluster, leader, "size").await, None);
    let later = put(&cluster, follower, "size", "small").await;
    assert!(later.index > rolled_back.index);
    agreed_digest(&cluster, &[1, 2, 3], later.index).await;
    assert_eq!(value(&cluster, leader, "size").await.as_deref(), Some("small"));
    assert_eq!(list(&cluster, leader).await.last_rollback_index, Some(rolled_back.index));

    // Export from a follower: the file header, the headers and the size agree.
    let export =
        http.get(format!("{}/v1/checkpoints/before/export", cluster.url(follower))).send().await.unwrap();
    assert_eq!(export.status(), 200);
    assert_eq!(export.headers()["content-type"], "application/octet-stream");
    assert_eq!(export.headers()["content-disposition"], "attachment; filename=\"before.checkpoint\"");
    assert_eq!(export.headers()[CHECKPOINT_INDEX_HEADER].to_str().unwrap(), created.index.to_string());
    assert_eq!(export.headers()[CHECKPOINT_CHECKSUM_HEADER].to_str().unwrap(), created.checksum);
    let bytes = export.bytes().await.unwrap();
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("before.checkpoint");
    std::fs::write(&file, &bytes).unwrap();
    let (header, offset) = checkpoint_file::read_header(&file).await.unwrap();
    assert_eq!((header.index, header.size_bytes), (created.index, created.size_bytes));
    checkpoint_file::verify(&file, &header, offset).await.unwrap();

    // Delete through a follower: gone on every node.
    let delete =
        http.delete(format!("{}/v1/checkpoints/before", cluster.url(follower))).send().await.unwrap();
    assert_eq!(delete.status(), 200);
    let deleted: CheckpointOpResult = delete.json().await.unwrap();
    agreed_digest(&cluster, &[1, 2, 3], deleted.index).await;
    for node in 1..=3 {
        let deadline = Instant::now() + WAIT;
        while list(&cluster, node).await.checkpoints.iter().any(|c| c.name == "before") {
            assert!(Instant::now() < deadline, "node {node} still lists the deleted checkpoint");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_count_is_bounded_and_the_error_names_the_bound() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.leader().await;
    put(&cluster, leader, "k", "v").await;
    let max_count = raft_core::runtime::CheckpointLimits::default().max_count;
    for number in 0..max_count {
        let response = create(&cluster, leader, &format!("c{number}")).await;
        assert_eq!(response.status(), 201, "checkpoint {number}");
    }
    let refused = create(&cluster, leader, "one-too-many").await;
    assert_eq!(refused.status(), 507);
    let body: ErrorBody = refused.json().await.unwrap();
    assert_eq!(body.error.code, "checkpoint_limit");
    assert!(body.error.message.contains(&format!("max_count {max_count}")), "{}", body.error.message);
    // Deleting one makes room again.
    let delete =
        cluster.http.delete(format!("{}/v1/checkpoints/c0", cluster.url(leader))).send().await.unwrap();
    assert_eq!(delete.status(), 200);
    assert_eq!(create(&cluster, leader, "one-too-many").await.status(), 201);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_need_the_admin_token_and_listing_does_not() {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin.token");
    std::fs::write(&token_file, "checkpoint-admin-s3cret\n").unwrap();
    let cluster = Cluster::start_with(1, |args| args.admin_token_file = Some(token_file.clone())).await;
    let leader = cluster.leader().await;
    let url = cluster.url(leader);
    assert_eq!(error_code(create(&cluster, leader, "x").await).await, (401, "unauthorized".into()));
    let wrong = cluster
        .http
        .post(format!("{url}/v1/checkpoints"))
        .bearer_auth("wrong")
        .json(&serde_json::json!({ "name": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(wrong).await, (403, "forbidden".into()));
    let rollback = cluster.http.post(format!("{url}/v1/checkpoints/x/rollback")).send().await.unwrap();
    assert_eq!(error_code(rollback).await, (401, "unauthorized".into()));
    let delete = cluster.http.delete(format!("{url}/v1/checkpoints/x")).send().await.unwrap();
    assert_eq!(error_code(delete).await, (401, "unauthorized".into()));
    let created = cluster
        .http
        .post(format!("{url}/v1/checkpoints"))
        .bearer_auth("checkpoint-admin-s3cret")
        .json(&serde_json::json!({ "name": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(list(&cluster, leader).await.checkpoints.len(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_restored_from_an_export_holds_the_same_state() {
    let source = Cluster::start(1).await;
    let leader = source.leader().await;
    let mut versions = Vec::new();
    for number in 0..50 {
        versions.push(put(&source, leader, &format!("key-{number:02}"), &format!("value {number}")).await);
    }
    let created: CheckpointSummary = create(&source, leader, "golden").await.json().await.unwrap();
    let at_checkpoint = agreed_digest(&source, &[leader], created.index).await;
    put(&source, leader, "key-00", "changed after the checkpoint").await;
    let bytes = source
        .http
        .get(format!("{}/v1/checkpoints/golden/export", source.url(leader)))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    source.shutdown().await;
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("golden.checkpoint");
    std::fs::write(&file, &bytes).unwrap();

    // A damaged file is refused before anything is written.
    let damaged = directory.path().join("damaged.checkpoint");
    let mut flipped = bytes.to_vec();
    let last = flipped.len() - 10;
    flipped[last] ^= 0xff;
    std::fs::write(&damaged, &flipped).unwrap();
    let target = directory.path().join("never-written");
    let error = checkpoint_file::restore_into(&target, &damaged, Default::default(), Default::default())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("checksum"), "{error}");
    assert!(!target.exists());
    // A data directory that is not empty is refused.
    let busy = directory.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("something"), "x").unwrap();
    let error = checkpoint_file::restore_into(&busy, &file, Default::default(), Default::default())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not empty"), "{error}");

    let restored = Cluster::start_with(3, |args| args.restore_from = Some(file.clone())).await;
    let leader = restored.leader().await;
    let digest = agreed_digest(&restored, &[1, 2, 3], created.index).await;
    assert_eq!((digest.keys, digest.hash.clone()), (at_checkpoint.keys, at_checkpoint.hash.clone()));
    assert_eq!(value(&restored, leader, "key-00").await.as_deref(), Some("value 0"));
    // Versions are indexes of the old log and stay valid: compare-and-set
    // on one succeeds, and new writes get higher indexes.
    let swapped = restored
        .http
        .put(format!("{}/v1/kv/key-07", restored.url(leader)))
        .header("if-match", format!("\"{}\"", versions[7].index))
        .body("swapped")
        .send()
        .await
        .unwrap();
    assert_eq!(swapped.status(), 200);
    let swapped: WriteResult = swapped.json().await.unwrap();
    assert!(swapped.index > created.index);
    // The directory names the new cluster's nodes.
    let status = restored.status(leader).await;
    assert_eq!(status.nodes.len(), 3);
    assert_eq!(status.nodes[&leader].client_address, restored.url(leader));
    restored.shutdown().await;
}

/// The replicated directory as node `node`'s state machine holds it (not
/// the directory in force, which a local seed may complete).
async fn replicated_directory(cluster: &Cluster, node: u64) -> Directory {
    let running = cluster.nodes[(node - 1) as usize].as_ref().expect("a running node");
    let query = KvQuery::Directory.encode();
    let answer = running.raft.read(query, ReadConsistency::Stale).await.unwrap();
    match KvAnswer::decode(&answer).unwrap() {
        KvAnswer::Directory(directory) => directory,
        other => panic!("a directory query answered {other:?}"),
    }
}

/// Waits until `node`'s replicated directory and the directory it shows
/// (`GET /v1/cluster`) both name exactly `expected`, with the addresses
/// each node registered, and its configuration has exactly these voters.
async fn directory_settles(cluster: &Cluster, node: u64, expected: &[u64]) {
    let expected: BTreeSet<u64> = expected.iter().copied().collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let replicated = replicated_directory(cluster, node).await;
        let status = cluster.status(node).await;
        let replicated_ids: BTreeSet<u64> = replicated.keys().map(|id| id.get()).collect();
        let shown_ids: BTreeSet<u64> = status.nodes.keys().copied().collect();
        let voters: BTreeSet<u64> = status.members.voters.iter().copied().collect();
        let addresses_right =
            replicated.iter().all(|(id, addresses)| addresses.client == cluster.url(id.get()));
        if replicated_ids == expected && shown_ids == expected && voters == expected && addresses_right {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {node}: replicated directory {replicated_ids:?}, shown {shown_ids:?}, voters {voters:?}, \
             expected {expected:?}: {replicated:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sends the request `make` builds until it is answered 200; a 409 (the
/// membership change that added a node is still settling) or a 503
/// (leadership moving) is retried, anything else fails the test.
async fn until_ok(what: &str, make: impl Fn() -> reqwest::RequestBuilder) {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = make().send().await.unwrap();
        let status = response.status().as_u16();
        if status == 200 {
            return;
        }
        let body = response.text().await.unwrap_or_default();
        assert!((status == 409 || status == 503) && Instant::now() < deadline, "{what}: {status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Rollback restores the keys only: a node added after the checkpoint
/// keeps its directory entry (and keeps serving), a node removed after it
/// does not come back, and every replica holds the checkpoint's keys plus
/// the writes after the rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_keeps_the_directory_of_nodes_added_and_removed_after_the_checkpoint() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    put(&cluster, leader, "colour", "red").await;
    put(&cluster, leader, "shape", "square").await;
    let created: CheckpointSummary = create(&cluster, leader, "before").await.json().await.unwrap();
    let at_checkpoint = agreed_digest(&cluster, &[1, 2, 3], created.index).await;
    for node in 1..=3 {
        directory_settles(&cluster, node, &[1, 2, 3]).await;
    }

    // After the checkpoint: node 4 joins as a voter, node 3 is removed.
    cluster.join(4, leader, JoinRole::Voter).await;
    if cluster.leader().await == 3 {
        let transfer = serde_json::json!({ "target": 1 });
        until_ok("moving leadership off node 3", || {
            cluster.http.post(format!("{}/v1/cluster/leader", cluster.url(3))).json(&transfer)
        })
        .await;
    }
    until_ok("removing node 3 through node 4", || {
        cluster.http.delete(format!("{}/v1/cluster/members/3", cluster.url(4)))
    })
    .await;
    cluster.stop(3).await;
    let members = [1, 2, 4];
    for node in members {
        directory_settles(&cluster, node, &members).await;
    }
    put(&cluster, 4, "colour", "blue").await;
    put(&cluster, 4, "size", "large").await;

    // The rollback, through the node that did not exist at the checkpoint.
    let rollback =
        cluster.http.post(format!("{}/v1/checkpoints/before/rollback", cluster.url(4))).send().await.unwrap();
    assert_eq!(rollback.status(), 200);
    let rolled_back: CheckpointOpResult = rollback.json().await.unwrap();
    let after_rollback = agreed_digest(&cluster, &members, rolled_back.index).await;
    assert_eq!(
        (after_rollback.keys, after_rollback.hash.clone()),
        (at_checkpoint.keys, at_checkpoint.hash.clone()),
        "the keys are the checkpoint's"
    );
    for node in members {
        directory_settles(&cluster, node, &members).await;
    }

    // The cluster keeps serving, through node 4 too, and writes after the
    // rollback apply on top of the checkpoint's keys on every replica.
    let later = put(&cluster, 4, "size", "small").await;
    let leader = cluster.leader().await;
    put(&cluster, leader, "after", "rollback").await;
    let last = put(&cluster, 1, "shape", "circle").await;
    assert!(later.index > rolled_back.index);
    let settled = agreed_digest(&cluster, &members, last.index).await;
    assert_eq!(settled.keys, 4);
    for node in members {
        assert_eq!(value(&cluster, node, "colour").await.as_deref(), Some("red"), "node {node}");
        assert_eq!(value(&cluster, node, "shape").await.as_deref(), Some("circle"), "node {node}");
        assert_eq!(value(&cluster, node, "size").await.as_deref(), Some("small"), "node {node}");
        assert_eq!(value(&cluster, node, "after").await.as_deref(), Some("rollback"), "node {node}");
        directory_settles(&cluster, node, &members).await;
    }
    cluster.shutdown().await;
}
