//! Real `raft-node` processes serving clients: writes and reads through any
//! node, and the documented answers to bad requests.

use bytes::Bytes;
use raft_core::types::NodeId;
use raft_node::api::ErrorBody;
use raft_node::client::{Client, ClientError, ClientOptions, WriteOptions};
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::ClusterId;

use crate::process::{Cluster, Options, CLIENT_CERTIFICATE_ID};

#[tokio::test]
async fn three_processes_serve_writes_and_linearizable_reads_through_any_node() {
    let cluster = Cluster::start(Options::nodes(3)).await;
    let leader = cluster.leader().await;
    let followers: Vec<u64> = cluster.running().into_iter().filter(|id| *id != leader).collect();

    // Writes through every node: followers forward theirs to the leader.
    let mut written = Vec::new();
    for round in 0..4 {
        for id in cluster.running() {
            let key = format!("key-{id}-{round}");
            let result = cluster.put_via(id, &key, &format!("value-{round}")).await;
            written.push((key, format!("value-{round}"), result.index));
        }
    }

    // Every node answers linearizable reads of every key.
    for (key, value, _) in &written {
        for id in cluster.running() {
            assert_eq!(cluster.get_via(id, key).await.as_deref(), Some(value.as_str()), "{key} on node {id}");
        }
    }

    // A write acknowledged through one follower is seen at once by a
    // linearizable read through the other, and through the leader.
    for round in 0..5 {
        let value = format!("overwritten-{round}");
        cluster.put_via(followers[0], "contended", &value).await;
        assert_eq!(cluster.get_via(followers[1], "contended").await, Some(value.clone()));
        assert_eq!(cluster.get_via(leader, "contended").await, Some(value));
    }

    let digest = cluster.converged_digest().await;
    assert_eq!(digest.keys, written.len() as u64 + 1);
}

#[tokio::test]
async fn bad_requests_get_the_documented_errors_and_the_cluster_keeps_serving() {
    let token = "an-admin-token-for-the-tests";
    let cluster = Cluster::start(Options { admin_token: Some(token.into()), ..Options::nodes(3) }).await;
    let leader = cluster.leader().await;
    // Through a follower: it checks what it can itself and relays the
    // leader's answer for the rest.
    let follower = cluster.other_than(leader);
    let client = cluster.client(follower);
    let url = cluster.url(follower);
    let http = crate::support::http_client();
    let mut served = 0;
    let mut still_serves = async || {
        served += 1;
        cluster.put_via(follower, &format!("still-serving-{served}"), "yes").await;
    };

    let refused = client.put("bell\u{7}", Bytes::from("x"), WriteOptions::default()).await;
    assert_refused(refused, 400, "bad_key");
    still_serves().await;
    let refused = http.put(format!("{url}/v1/kv/%00")).body("x").send().await.unwrap();
    assert_eq!(error_of(refused).await, (400, "bad_key".to_string()));
    still_serves().await;
    let refused = http.put(format!("{url}/v1/kv/%FF")).body("x").send().await.unwrap();
    assert_eq!(error_of(refused).await, (400, "bad_key".to_string()), "a key that is not UTF-8");
    still_serves().await;

    let refused = client.put(&"k".repeat(1025), Bytes::from("x"), WriteOptions::default()).await;
    assert_refused(refused, 413, "key_too_large");
    still_serves().await;
    let refused = client.put("big", Bytes::from(vec![7u8; (1 << 20) + 1]), WriteOptions::default()).await;
    assert_refused(refused, 413, "value_too_large");
    still_serves().await;

    let refused = http
        .post(format!("{url}/v1/cluster/members"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{\"id\": 4, \"peer_address\":")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(refused).await, (400, "bad_json".to_string()));
    still_serves().await;
    assert_refused(client.remove_member(99).await, 404, "unknown_member");
    still_serves().await;

    // The admin token guards membership and snapshots.
    let without_token = Client::new(ClientOptions { admin_token: None, ..cluster.client_options(follower) });
    assert_refused(without_token.unwrap().snapshot().await, 401, "unauthorized");
    still_serves().await;
    let wrong_token =
        ClientOptions { admin_token: Some("not-the-admin-token".into()), ..cluster.client_options(follower) };
    assert_refused(Client::new(wrong_token).unwrap().remove_member(3).await, 403, "forbidden");
    still_serves().await;
    client.snapshot().await.expect("the right token is accepted");
    still_serves().await;

    // Nothing refused was applied.
    assert_eq!(cluster.converged_digest().await.keys, served);
    assert_eq!(cluster.status(leader).await.members.voters, vec![1, 2, 3]);
}

#[tokio::test]
async fn only_client_certificates_from_the_cluster_ca_are_admitted() {
    let cluster = Cluster::start(Options { client_tls: true, ..Options::nodes(3) }).await;
    let leader = cluster.leader().await;
    let follower = cluster.other_than(leader);
    // The cluster's client presents a certificate from the cluster CA; the
    // follower forwards the write to the leader over HTTPS with its own.
    cluster.put_via(follower, "admitted", "yes").await;

    // Certificates from CAs the nodes do not trust: one that claims to be
    // the cluster's CA (same name, other key) and one of another cluster.
    // The node ends each handshake with an alert; the client says so.
    for (n, cluster_id) in ["test", "other"].into_iter().enumerate() {
        let elsewhere = tempfile::tempdir().unwrap();
        let other_ca = ClusterCa::generate(&ClusterId::new(cluster_id).unwrap()).unwrap();
        other_ca
            .issue_node(NodeId(CLIENT_CERTIFICATE_ID), &["127.0.0.1".into()])
            .unwrap()
            .write_pem_files(elsewhere.path())
            .unwrap();
        let stranger = Client::new(ClientOptions {
            client_cert: Some(elsewhere.path().join(format!("node-{CLIENT_CERTIFICATE_ID}.pem"))),
            client_key: Some(elsewhere.path().join(format!("node-{CLIENT_CERTIFICATE_ID}.key"))),
            ..cluster.client_options(follower)
        })
        .unwrap();
        let key = format!("from-stranger-{n}");
        let refused = stranger.put(&key, Bytes::from("x"), WriteOptions::default()).await;
        assert!(
            matches!(refused, Err(ClientError::Tls { .. })),
            "a {cluster_id} CA's certificate: {refused:?}"
        );
    }
    let anonymous = Client::new(ClientOptions {
        client_cert: None,
        client_key: None,
        ..cluster.client_options(follower)
    })
    .unwrap();
    let refused = anonymous.put("from-nobody", Bytes::from("x"), WriteOptions::default()).await;
    assert!(matches!(refused, Err(ClientError::Tls { .. })), "no certificate: {refused:?}");
    cluster
        .until("the node logs the three failed handshakes", async || {
            let failed = cluster.log(follower).matches("TLS handshake failed").count();
            if failed >= 3 {
                Ok(())
            } else {
                Err(format!("{failed} logged"))
            }
        })
        .await;

    cluster.put_via(follower, "admitted-again", "yes").await;
    // Nothing the refused clients sent was applied.
    assert_eq!(cluster.converged_digest().await.keys, 2);
}

/// Asserts that a request was refused with `status` and the error `code`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, ClientError>, status: u16, code: &str) {
    match result {
        Err(error) => {
            assert_eq!(error.status().map(|s| s.as_u16()), Some(status), "{error}");
            assert_eq!(error.code(), Some(code), "{error}");
        }
        Ok(value) => panic!("expected {status} {code}, got {value:?}"),
    }
}

/// The status and error code of a raw answer.
async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: ErrorBody = response.json().await.unwrap();
    (status, body.error.code)
}
