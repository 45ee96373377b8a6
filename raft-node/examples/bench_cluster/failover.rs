//! Failover after `kill -9` of the leader, as a distribution over many
//! trials (the real-process counterpart of the Raft paper's Figure 16).
//!
//! One trial: every member agrees on a leader and the member restarted by
//! the previous trial has caught up; writers start on the two followers (a
//! new write every [`LAUNCH_INTERVAL`], each on its own connection, so a
//! write stuck on a dead leader never delays the next); after a random
//! pause the leader gets SIGKILL. Measured from the kill: the first write
//! sent after the kill that succeeds, and the first moment a survivor
//! names a surviving leader. Then the killed member restarts from its data
//! directory and the next trial waits until it has caught up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::cluster::Cluster;
use super::{base64, connect, System, VALUE_BYTES};

/// How often writers start a new write during a trial.
const LAUNCH_INTERVAL: Duration = Duration::from_millis(2);
/// How often the survivors are asked who leads.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// A write that has not finished by then counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// A trial whose cluster has not recovered by then is recorded as failed.
const TRIAL_LIMIT: Duration = Duration::from_secs(20);

/// One system's failover figures, in ms from the kill.
#[derive(Clone, Debug, Default)]
pub struct FailoverResults {
    /// Until the first write sent after the kill succeeded.
    pub write_ms: Vec<f64>,
    /// Until a survivor named a surviving leader.
    pub leader_ms: Vec<f64>,
    /// Terms the election took (new leader's term minus the killed one's).
    pub elections: Vec<u64>,
    /// Whether the new leader was the member restarted by the trial before
    /// (one whose peers may still be backing off from dialing it).
    pub restarted_won: Vec<bool>,
    /// Trials that did not recover within the limit.
    pub failed_trials: usize,
}

/// Runs `trials` kill-and-restart trials on `cluster`.
pub async fn failover(cluster: &mut Cluster, trials: usize, seed: u64) -> Result<FailoverResults, String> {
    let mut results = FailoverResults::default();
    let mut rng = seed | 1;
    let name = cluster.system.name();
    let mut restarted: Option<usize> = None;
    for trial in 0..trials {
        let leader = cluster.agreed_leader(Duration::from_secs(30))?;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // A random moment relative to the leader's heartbeats.
        let pause = Duration::from_micros(20_000 + rng % 50_000);
        let term_before = cluster.view(leader).map_or(0, |v| v.term);
        let outcome = one_trial(cluster, leader, pause).await?;
        cluster.restart(leader)?;
        let new_leader = wait_caught_up(cluster, leader)?;
        match outcome {
            (Some(write_ms), Some(leader_ms)) => {
                results.write_ms.push(write_ms);
                results.leader_ms.push(leader_ms);
                let term_after = cluster.view(new_leader).map_or(0, |v| v.term);
                results.elections.push(term_after.saturating_sub(term_before));
                results.restarted_won.push(restarted == Some(new_leader));
            }
            _ => results.failed_trials += 1,
        }
        restarted = Some(leader);
        if trial % 20 == 19 || trial + 1 == trials {
            let mut sorted = results.write_ms.clone();
            sorted.sort_by(f64::total_cmp);
            eprintln!(
                "{name}: failover trial {}/{trials}: write recovered, median {:.0} ms, worst {:.0} ms; {} failed",
                trial + 1,
                quantile(&sorted, 0.5),
                sorted.last().copied().unwrap_or(f64::NAN),
                results.failed_trials
            );
        }
    }
    Ok(results)
}

/// Kills `leader` while writers run; returns (write recovered, leader
/// named) in ms from the kill.
async fn one_trial(
    cluster: &mut Cluster,
    leader: usize,
    pause: Duration,
) -> Result<(Option<f64>, Option<f64>), String> {
    let survivors: Vec<usize> = (0..cluster.client_urls.len()).filter(|&i| i != leader).collect();
    let targets: Vec<String> = survivors.iter().map(|&i| cluster.client_urls[i].clone()).collect();
    let system = cluster.system;
    let stop = Arc::new(AtomicBool::new(false));
    // (sent, finished) of every successful write.
    let successes: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let launcher = {
        let stop = stop.clone();
        let successes = successes.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(LAUNCH_INTERVAL);
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                interval.tick().await;
                let target = targets[(sequence % targets.len() as u64) as usize].clone();
                let successes = successes.clone();
                sequence += 1;
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let written =
                        tokio::time::timeout(WRITE_TIMEOUT, write_once(system, &target, sequence)).await;
                    if let Ok(true) = written {
                        let finished = Instant::now();
                        if let Ok(mut successes) = successes.lock() {
                            successes.push((sent, finished));
                        }
                    }
                });
            }
        })
    };
    tokio::time::sleep(pause).await;
    let killed_at = Instant::now();
    cluster.kill(leader);
    // The survivors' status, polled from a thread of its own so the
    // writers' runtime cannot delay it.
    let leader_named = {
        let views: Vec<(usize, String)> =
            survivors.iter().map(|&i| (i, cluster.client_urls[i].clone())).collect();
        let probe = ViewProbe { system, etcd_ids: cluster_ids(cluster) };
        let survivors = survivors.clone();
        tokio::task::spawn_blocking(move || {
            while killed_at.elapsed() < TRIAL_LIMIT {
                for (_, url) in &views {
                    if let Some(named) = probe.leader_of(url) {
                        if survivors.contains(&named) {
                            return Some(killed_at.elapsed());
                        }
                    }
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            None
        })
    };
    let write_recovered = loop {
        let first = successes
            .lock()
            .map_err(|_| "a writer panicked")?
            .iter()
            .filter(|(sent, _)| *sent >= killed_at)
            .map(|(_, finished)| *finished)
            .min();
        if let Some(finished) = first {
            break Some(finished - killed_at);
        }
        if killed_at.elapsed() > TRIAL_LIMIT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let _ = launcher.await;
    let leader_named = leader_named.await.map_err(|e| format!("the leader probe failed: {e}"))?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((write_recovered.map(ms), leader_named.map(ms)))
}

/// Member ids for the probe thread (etcd's; raft-node needs none).
fn cluster_ids(cluster: &Cluster) -> Vec<String> {
    cluster.etcd_member_ids().to_vec()
}

/// Asks one member which member leads, without borrowing the cluster.
struct ViewProbe {
    system: System,
    etcd_ids: Vec<String>,
}

impl ViewProbe {
    fn leader_of(&self, url: &str) -> Option<usize> {
        match self.system {
            System::RaftNode => {
                let status = super::cluster::blocking_json(url, "GET", "/v1/cluster", "")?;
                status["leader"]["id"].as_u64().and_then(|id| id.checked_sub(1)).map(|i| i as usize)
            }
            System::Etcd => {
                let status = super::cluster::blocking_json(url, "POST", "/v3/maintenance/status", "{}")?;
                let leader = status["leader"].as_str()?;
                self.etcd_ids.iter().position(|id| id == leader)
            }
        }
    }
}

/// One 256-byte write on a fresh connection; whether it succeeded.
async fn write_once(system: System, target: &str, sequence: u64) -> bool {
    let Ok(mut sender) = connect(target).await else { return false };
    let key = format!("failover-{}", sequence % 1_000);
    let value = vec![b'f'; VALUE_BYTES];
    let (path, body) = match system {
        System::RaftNode => (format!("/v1/kv/{key}"), Bytes::from(value)),
        System::Etcd => (
            "/v3/kv/put".to_string(),
            Bytes::from(format!(
                "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                base64(key.as_bytes()),
                base64(&value)
            )),
        ),
    };
    let method = if system == System::RaftNode { "PUT" } else { "POST" };
    let authority = target.strip_prefix("http://").unwrap_or(target).to_string();
    let Ok(request) = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .body(Full::new(body))
    else {
        return false;
    };
    match sender.send_request(request).await {
        Ok(response) => {
            let status = response.status();
            // etcd's gateway answers 200 with an error object when the put
            // failed; a successful put carries a header with a revision.
            match response.into_body().collect().await {
                Ok(body) if status.is_success() => match system {
                    System::RaftNode => true,
                    System::Etcd => {
                        let body = body.to_bytes();
                        serde_json::from_slice::<serde_json::Value>(&body)
                            .is_ok_and(|v| v["header"]["revision"].is_string() && v["error"].is_null())
                    }
                },
                _ => false,
            }
        }
        Err(_) => false,
    }
}

/// Waits until the restarted member names the leader and has applied what
/// the leader had when it was asked; returns the leader.
fn wait_caught_up(cluster: &Cluster, restarted: usize) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let leader = loop {
        if let Ok(leader) = cluster.agreed_leader(Duration::from_millis(200)) {
            break leader;
        }
        if Instant::now() > deadline {
            return Err(format!("{}: no agreed leader after a restart", cluster.system.name()));
        }
    };
    let target = cluster.view(leader).map(|v| v.index).unwrap_or(0);
    while Instant::now() < deadline {
        if cluster.view(restarted).is_some_and(|v| v.leader == Some(leader) && v.index >= target) {
            return Ok(leader);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{}: the restarted member did not catch up within 120 s", cluster.system.name()))
}

/// The value at `q` (0..=1) of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
