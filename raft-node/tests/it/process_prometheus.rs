//! A real Prometheus server scrapes a cluster of `raft-node` processes; the
//! test reads what it stored through Prometheus' own HTTP API.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::process::{Cluster, Options};
use crate::support::free_port;

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts Prometheus with a 1 s scrape interval over `targets`
    /// (`host:port` of each node's client API), keeping its files in
    /// `directory`.
    fn start(directory: &Path, targets: &[String]) -> Prometheus {
        let config = directory.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|target| format!("'{target}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: raft-node\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let log = directory.join("prometheus.log");
        let output = std::fs::File::create(&log).unwrap();
        let spawned = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--storage.tsdb.path={}", directory.join("data").display()))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
                "prometheus is not on PATH: install the Debian `prometheus` package \
                 (`apt-get install -y --no-install-recommends prometheus`) to run this test"
            ),
            Err(error) => panic!("cannot run prometheus: {error}"),
        };
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), log }
    }

    /// The samples of an instant query: each series' labels and value.
    async fn query(&self, http: &reqwest::Client, expression: &str) -> Result<Vec<(Value, f64)>, String> {
        let response = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expression)])
            .send()
            .await
            .map_err(|e| format!("Prometheus is not answering yet: {e}"))?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("the query {expression:?} failed: {body}"));
        }
        let samples = body["data"]["result"].as_array().ok_or_else(|| format!("no result: {body}"))?;
        Ok(samples
            .iter()
            .map(|sample| {
                let value = sample["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (sample["metric"].clone(), value)
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("--- the end of Prometheus' log ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The values of `label` over a query's samples.
fn label_values(samples: &[(Value, f64)], label: &str) -> BTreeSet<String> {
    samples.iter().filter_map(|(labels, _)| labels[label].as_str().map(str::to_string)).collect()
}

#[tokio::test]
async fn prometheus_scrapes_every_node_and_sees_one_leader() {
    let cluster = Cluster::new(Options::nodes(3));
    let files = tempfile::tempdir().unwrap();
    // Prometheus first: it takes a few seconds to store its first samples,
    // while the cluster starts.
    let prometheus = Prometheus::start(files.path(), &cluster.client_addresses());
    cluster.bootstrap().await;
    cluster.put_many("key", 10).await;
    let http = crate::support::http_client();
    let every_node: BTreeSet<String> = ["1", "2", "3"].map(String::from).into();

    for metric in ["raft_term", "raft_commit_index"] {
        cluster
            .until(&format!("Prometheus has {metric} of every node"), async || {
                let samples = prometheus.query(&http, metric).await?;
                let (nodes, instances) = (label_values(&samples, "node"), label_values(&samples, "instance"));
                if samples.len() == 3 && nodes == every_node && instances.len() == 3 {
                    Ok(())
                } else {
                    Err(format!("{samples:?}"))
                }
            })
            .await;
    }

    // Exactly one node reports itself leader: the one the nodes agree on.
    // The leader reports how far behind each of the two others is (a node
    // exports lag series only once it has led).
    cluster
        .until("Prometheus sees the leader and its lag series", async || {
            let leader = cluster.leader().await.to_string();
            let leaders = prometheus.query(&http, r#"raft_role{role="leader"} == 1"#).await?;
            if label_values(&leaders, "node") != BTreeSet::from([leader.clone()]) || leaders.len() != 1 {
                return Err(format!("leader {leader}, reported as leader: {leaders:?}"));
            }
            let lag =
                prometheus.query(&http, &format!(r#"raft_peer_lag_entries{{node="{leader}"}}"#)).await?;
            let others: BTreeSet<String> = every_node.iter().filter(|n| **n != leader).cloned().collect();
            if label_values(&lag, "peer") == others {
                Ok(())
            } else {
                Err(format!("lag series of leader {leader}: {lag:?}"))
            }
        })
        .await;
}
