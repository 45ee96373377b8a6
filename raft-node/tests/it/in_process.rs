//! Nodes started through the library in this process: the wiring of
//! stores, transport, runtime and client API, seen through HTTP.

use std::time::Instant;

use raft_core::types::NodeId;
use raft_node::api::{ClusterStatus, ErrorBody, KeyList, WriteResult};
use raft_node::config::JoinRole;
use raft_node::node::{self, RunningNode};
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::ClusterId;

use crate::support::{config, run_args, write_certificates, Ports, WAIT};

pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Option<RunningNode>>,
    ports: Vec<Ports>,
    pub(crate) http: reqwest::Client,
    _directory: tempfile::TempDir,
}

impl Cluster {
    pub(crate) async fn start(size: u64) -> Cluster {
        Cluster::start_with(size, |_| {}).await
    }

    /// A cluster whose nodes' flags `edit` adjusts (after the defaults).
    pub(crate) async fn start_with(size: u64, edit: impl Fn(&mut raft_node::config::RunArgs)) -> Cluster {
        let directory = tempfile::tempdir().unwrap();
        let certs = directory.path().join("certs");
        let ids: Vec<u64> = (1..=size).collect();
        write_certificates(&certs, "test", &ids);
        let ports: Vec<Ports> = ids.iter().map(|_| Ports::pick()).collect();
        let members: Vec<String> = ids.iter().map(|id| ports[(*id - 1) as usize].member(*id)).collect();
        let mut nodes = Vec::new();
        for id in &ids {
            let mut args = run_args(
                *id,
                &ports[(*id - 1) as usize],
                &directory.path().join(format!("node-{id}")),
                &certs,
            );
            args.bootstrap = true;
            args.initial_members = members.clone();
            edit(&mut args);
            nodes.push(Some(node::start(config(&args), None).await.unwrap()));
        }
        Cluster { nodes, ports, http: crate::support::http_client(), _directory: directory }
    }

    /// Starts node `id` (the next id) empty and has it ask node `via` to
    /// add it with `role`; returns once it runs.
    pub(crate) async fn join(&mut self, id: u64, via: u64, role: JoinRole) {
        assert_eq!(id as usize, self.nodes.len() + 1, "nodes join in id order");
        let certs = self._directory.path().join("certs");
        let ca = ClusterCa::read_pem_files(&ClusterId::new("test").unwrap(), &certs).unwrap();
        ca.issue_node(NodeId(id), &["127.0.0.1".into()]).unwrap().write_pem_files(&certs).unwrap();
        let ports = Ports::pick();
        let mut args = run_args(id, &ports, &self._directory.path().join(format!("node-{id}")), &certs);
        args.join = Some(self.url(via));
        args.join_as = Some(role);
        self.ports.push(ports);
        self.nodes.push(Some(node::start(config(&args), None).await.unwrap()));
    }

    /// Shuts node `id` down (handing leadership over if it leads).
    pub(crate) async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes[(id - 1) as usize].take() {
            node.shutdown().await;
        }
    }

    pub(crate) fn url(&self, id: u64) -> String {
        self.ports[(id - 1) as usize].client_url()
    }

    pub(crate) async fn status(&self, id: u64) -> ClusterStatus {
        self.http.get(format!("{}/v1/cluster", self.url(id))).send().await.unwrap().json().await.unwrap()
    }

    /// Waits until every running node names the same leader, and returns it.
    pub(crate) async fn leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut leaders = Vec::new();
            for (index, node) in self.nodes.iter().enumerate() {
                if node.is_some() {
                    leaders.push(self.status(index as u64 + 1).await.leader.map(|l| l.id));
                }
            }
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader)) {
                    return *leader;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn shutdown(mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.shutdown().await;
        }
    }
}

pub(crate) async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: ErrorBody = response.json().await.unwrap();
    (status, body.error.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_writes_and_reads_through_any_node() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = if leader == 1 { 2 } else { 1 };
    let http = &cluster.http;

    // A write through a follower is forwarded to the leader.
    let response =
        http.put(format!("{}/v1/kv/greeting", cluster.url(follower))).body("hello").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    let written: WriteResult = response.json().await.unwrap();
    assert_eq!(etag, format!("\"{}\"", written.index));

    // Linearizable reads through every node see it.
    for id in 1..=3 {
        let response = http.get(format!("{}/v1/kv/greeting", cluster.url(id))).send().await.unwrap();
        assert_eq!(response.status(), 200, "node {id}");
        assert_eq!(response.headers()["etag"].to_str().unwrap(), etag);
        assert_eq!(response.bytes().await.unwrap(), "hello");
    }

    // Compare-and-set: the wrong version is refused with 412, the right one wins.
    let stale = http
        .put(format!("{}/v1/kv/greeting", cluster.url(leader)))
        .header("if-match", "\"1\"")
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(stale).await, (412, "precondition_failed".to_string()));
    let swapped = http
        .put(format!("{}/v1/kv/greeting", cluster.url(follower)))
        .header("if-match", etag.clone())
        .body("bonjour")
        .send()
        .await
        .unwrap();
    assert_eq!(swapped.status(), 200);
    let create_only = http
        .put(format!("{}/v1/kv/greeting", cluster.url(leader)))
        .header("if-none-match", "*")
        .body("again")
        .send()
        .await
        .unwrap();
    assert_eq!(create_only.status(), 412);

    // An idempotent write retried returns the first result and applies once.
    let first: WriteResult = http
        .put(format!("{}/v1/kv/counter", cluster.url(leader)))
        .header("idempotency-key", "client-a/1")
        .body("1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let retry: WriteResult = http
        .put(format!("{}/v1/kv/counter", cluster.url(follower)))
        .header("idempotency-key", "client-a/1")
        .body("1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first.index, retry.index);

    // Listing and deleting.
    let list: KeyList = http
        .get(format!("{}/v1/kv?prefix=gr", cluster.url(follower)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.keys.len(), 1);
    assert_eq!(list.keys[0].key, "greeting");
    let deleted = http.delete(format!("{}/v1/kv/greeting", cluster.url(follower))).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let gone = http.get(format!("{}/v1/kv/greeting", cluster.url(leader))).send().await.unwrap();
    assert_eq!(error_code(gone).await, (404, "key_not_found".to_string()));

    // Bad requests get the documented errors.
    let too_long = "k".repeat(2000);
    let response =
        http.put(format!("{}/v1/kv/{too_long}", cluster.url(leader))).body("x").send().await.unwrap();
    assert_eq!(error_code(response).await, (413, "key_too_large".to_string()));
    let response = http
        .put(format!("{}/v1/kv/big", cluster.url(leader)))
        .body(vec![0u8; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (413, "value_too_large".to_string()));
    let response =
        http.get(format!("{}/v1/kv/x?consistency=sometimes", cluster.url(leader))).send().await.unwrap();
    assert_eq!(error_code(response).await, (400, "bad_consistency".to_string()));
    let response = http
        .put(format!("{}/v1/kv/x", cluster.url(leader)))
        .header("if-match", "seven")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (400, "bad_precondition".to_string()));
    let response = http
        .post(format!("{}/v1/cluster/members", cluster.url(leader)))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (400, "bad_json".to_string()));
    let response =
        http.delete(format!("{}/v1/cluster/members/9", cluster.url(follower))).send().await.unwrap();
    assert_eq!(error_code(response).await, (404, "unknown_member".to_string()));

    // Stale reads on every node converge to the same digest.
    let status = cluster.status(leader).await;
    assert_eq!(status.members.voters, vec![1, 2, 3]);
    assert_eq!(status.nodes.len(), 3, "every member registered in the directory: {status:?}");
    cluster.shutdown().await;
}
