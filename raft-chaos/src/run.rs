//! One chaos run: start the cluster, run the clients, inject the planned
//! faults, heal, wait for the replicas to converge, read every key, check
//! and write the report.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use raft_node::api::{ClusterStatus, Digest};
use raft_node::fault::FaultRules;
use tokio::sync::watch;

use crate::cluster::{Cluster, ClusterError, ClusterSettings, Plan, Standing, CLIENT_PORT, PEER_PORT};
use crate::history::{self, FaultSpan, Findings, HistoryFile, ReplicaDigest};
use crate::network::{Firewall, FirewallError};
use crate::rng::Rng;
use crate::schedule::{self, Action, FaultKind, PlannedFault, Target, Timing};
use crate::workload::{self, Mix, Recorder, Targets};

/// How long the cluster may take to start, and to converge at the end.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the watchdog looks for processes that exited on their own.
const WATCHDOG_INTERVAL: Duration = Duration::from_millis(250);
/// Timeout of the runner's own administrative requests.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often conditions are polled while waiting.
const POLL: Duration = Duration::from_millis(200);

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Initial voters (3 or 5).
    pub nodes: u64,
    /// How long the clients and faults run.
    pub duration: Duration,
    /// Which faults to inject.
    pub faults: Vec<FaultKind>,
    /// The seed of the schedule and the clients.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// The workload's shape.
    pub mix: Mix,
    /// The `raft-node` binary.
    pub raft_node: PathBuf,
    /// Where the report, history, logs and data go.
    pub out: PathBuf,
    /// The second byte of the node addresses (127.<subnet>.0.<id>).
    pub subnet: u8,
    /// Extra flags for every node.
    pub node_flags: Vec<String>,
    /// Keep the nodes' data directories even when the run passes.
    pub keep_data: bool,
    /// The command line, for the report.
    pub command: String,
}

/// Why a run could not be carried out (as opposed to finding a bug, which
/// is a result).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The processes.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The firewall.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// The HTTP client.
    #[error(transparent)]
    Http(#[from] workload::HttpClientError),
    /// The output directory.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The cluster did not come up.
    #[error("the cluster did not start: {0}")]
    Start(String),
    /// The recorded history is impossible: a bug in the runner.
    #[error("the recorded history is malformed: {0}")]
    History(String),
}

/// The shared state of a run's tasks.
struct Shared {
    cluster: Mutex<Cluster>,
    firewall: Option<Firewall>,
    http: reqwest::Client,
    started: Instant,
    faults: Mutex<Vec<FaultSpan>>,
    crashes: Mutex<Vec<String>>,
    /// Nodes a disruptive fault holds right now; administrative actions
    /// leave them alone.
    busy: Mutex<BTreeSet<u64>>,
    targets: Targets,
    initial_voters: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn record_fault(&self, kind: FaultKind, label: String, start_us: u64, succeeded: bool, detail: String) {
        let end_us = self.now_us();
        println!("[{:8.1} s] {label}: {detail}", end_us as f64 / 1e6);
        lock(&self.faults).push(FaultSpan { kind, label, start_us, end_us, succeeded, detail });
    }

    /// Refreshes the clients' targets from the cluster's members.
    fn refresh_targets(&self) {
        let cluster = lock(&self.cluster);
        let targets: Vec<(u64, String)> =
            cluster.members().into_iter().map(|id| (id, cluster.url(id))).collect();
        *self.targets.write().unwrap_or_else(PoisonError::into_inner) = targets;
    }

    fn url(&self, id: u64) -> String {
        lock(&self.cluster).url(id)
    }

    /// Every running member's status, in id order.
    async fn statuses(&self) -> Vec<ClusterStatus> {
        let ids = lock(&self.cluster).live_members();
        let mut statuses = Vec::new();
        for id in ids {
            let url = self.url(id);
            let answer =
                self.http.get(format!("{url}/v1/cluster")).timeout(Duration::from_secs(2)).send().await;
            if let Ok(response) = answer {
                if let Ok(status) = response.json::<ClusterStatus>().await {
                    statuses.push(status);
                }
            }
        }
        statuses
    }

    /// The status of the node that says it leads, in the highest term.
    async fn leader_status(&self) -> Option<ClusterStatus> {
        self.statuses().await.into_iter().filter(|s| s.role == "leader").max_by_key(|s| s.term)
    }

    /// Resolves a target among the running members.
    async fn resolve(&self, target: Target) -> Option<u64> {
        let live = lock(&self.cluster).live_members();
        if live.is_empty() {
            return None;
        }
        match target {
            Target::Leader => {
                let leader = self.leader_status().await.map(|s| s.node_id);
                Some(leader.filter(|id| live.contains(id)).unwrap_or(live[0]))
            }
            Target::Any(pick) => Some(live[(pick % live.len() as u64) as usize]),
        }
    }

    /// Sends fault rules (or `None` to clear) to every running member;
    /// returns how many took them.
    async fn set_fault_rules(&self, rules: Option<&FaultRules>) -> usize {
        let ids = lock(&self.cluster).live_members();
        let mut applied = 0;
        for id in ids {
            let url = format!("{}/v1/dangerous/faults", self.url(id));
            let request = match rules {
                Some(rules) => self.http.post(url).json(rules),
                None => self.http.delete(url),
            };
            if request.timeout(Duration::from_secs(2)).send().await.is_ok_and(|r| r.status().is_success()) {
                applied += 1;
            }
        }
        applied
    }
}

/// Runs the whole thing and writes the report; returns the history and
/// the findings.
pub async fn run(options: RunOptions) -> Result<(HistoryFile, Findings), RunError> {
    let io = |what: String| move |source| RunError::Io { what, source };
    let _ = std::fs::remove_dir_all(&options.out);
    std::fs::create_dir_all(&options.out).map_err(io(format!("creating {}", options.out.display())))?;

    let firewall = if options.faults.contains(&FaultKind::Partition) {
        Some(Firewall::new(options.subnet)?)
    } else {
        None
    };
    let mut cluster = Cluster::new(ClusterSettings {
        binary: options.raft_node.clone(),
        directory: options.out.clone(),
        subnet: options.subnet,
        node_flags: options.node_flags.clone(),
    })?;
    let initial: Vec<u64> = (1..=options.nodes).collect();
    for id in &initial {
        cluster.spawn(*id, Plan::Bootstrap(initial.clone()))?;
    }
    println!(
        "raft-chaos: {} nodes on 127.{}.0.x (client port {CLIENT_PORT}, peer port {PEER_PORT}), seed {}, {:?}, faults: {}",
        options.nodes,
        options.subnet,
        options.seed,
        options.duration,
        options.faults.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
    );
    let started = Instant::now();
    let shared = Arc::new(Shared {
        cluster: Mutex::new(cluster),
        firewall,
        http: workload::http_client(ADMIN_TIMEOUT)?,
        started,
        faults: Mutex::new(Vec::new()),
        crashes: Mutex::new(Vec::new()),
        busy: Mutex::new(BTreeSet::new()),
        targets: Arc::new(RwLock::new(Vec::new())),
        initial_voters: options.nodes,
    });
    shared.refresh_targets();
    wait_ready(&shared).await?;
    println!("raft-chaos: the cluster is up after {:.1} s", started.elapsed().as_secs_f64());

    let (stop_sender, stop) = watch::channel(false);
    let recorder = Arc::new(Recorder::new(started));
    let client_http = workload::http_client(workload::CLIENT_TIMEOUT)?;
    let mut rng = Rng::new(options.seed);
    let mut clients = Vec::new();
    for id in 0..options.clients {
        clients.push(tokio::spawn(workload::client(
            id,
            rng.fork(),
            client_http.clone(),
            Arc::clone(&shared.targets),
            Arc::clone(&recorder),
            options.mix,
            stop.clone(),
        )));
    }
    let watchdog = tokio::spawn(watchdog(Arc::clone(&shared), stop.clone()));

    let plan = schedule::plan(options.seed, options.duration, &options.faults, Timing::default());
    let workload_started = Instant::now();
    let (administrative, disruptive): (Vec<PlannedFault>, Vec<PlannedFault>) =
        plan.into_iter().partition(|fault| fault.action.kind().is_administrative());
    let disruptive_task = tokio::spawn(play(Arc::clone(&shared), disruptive, workload_started, stop.clone()));
    let administrative_task =
        tokio::spawn(play(Arc::clone(&shared), administrative, workload_started, stop.clone()));

    let interrupted = tokio::select! {
        _ = tokio::time::sleep(options.duration) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        println!("raft-chaos: interrupted; healing and checking what was recorded");
    }
    let workload_us = shared.now_us();
    let _ = stop_sender.send(true);
    let _ = disruptive_task.await;
    let _ = administrative_task.await;
    heal(&shared).await;
    for client in clients {
        let _ = client.await;
    }
    println!(
        "raft-chaos: {} operations in {:.1} s; waiting for the replicas to converge",
        recorder.operations(),
        workload_us as f64 / 1e6
    );

    let (converged, replicas) = converge(&shared).await;
    let targets: Vec<(u64, String)> = {
        let cluster = lock(&shared.cluster);
        cluster.live_members().into_iter().map(|id| (id, cluster.url(id))).collect()
    };
    workload::final_reads(&client_http, &targets, &recorder, Instant::now() + SETTLE_TIMEOUT).await;
    let _ = watchdog.await;
    // Anything that exited during the end checks is a crash too.
    for (_, crash) in lock(&shared.cluster).reap() {
        lock(&shared.crashes).push(crash);
    }

    let mut faults = lock(&shared.faults).clone();
    faults.sort_by_key(|f| f.start_us);
    let history = HistoryFile {
        seed: options.seed,
        nodes: options.nodes,
        faults_enabled: options.faults.clone(),
        workload_us,
        total_us: shared.now_us(),
        records: recorder.records(),
        faults,
        replicas,
        converged,
        crashes: lock(&shared.crashes).clone(),
    };
    let findings = history::check(&history).map_err(|e| RunError::History(e.to_string()))?;
    write_outputs(&options.out, &history, &findings, &options.command)?;
    let passed = findings.passed(&history);
    {
        let mut cluster = lock(&shared.cluster);
        cluster.kill_all();
        if passed && !options.keep_data {
            cluster.remove_data();
        }
    }
    Ok((history, findings))
}

/// Writes `history.json`, `report.md` and `timeline.svg` into `out`.
pub fn write_outputs(
    out: &std::path::Path,
    history: &HistoryFile,
    findings: &Findings,
    command: &str,
) -> Result<(), RunError> {
    let io = |what: String| move |source| RunError::Io { what, source };
    let json = serde_json::to_vec(history).map_err(|e| RunError::History(e.to_string()))?;
    let path = out.join("history.json");
    std::fs::write(&path, json).map_err(io(format!("writing {}", path.display())))?;
    let failing_key = match &findings.verdict {
        raft_core::testing::linearizability::Verdict::NotLinearizable { key, .. } => Some(*key),
        _ => None,
    };
    let path = out.join("timeline.svg");
    std::fs::write(&path, crate::svg::timeline(history, failing_key))
        .map_err(io(format!("writing {}", path.display())))?;
    let path = out.join("report.md");
    std::fs::write(&path, crate::report::markdown(history, findings, command))
        .map_err(io(format!("writing {}", path.display())))?;
    Ok(())
}

/// Waits until every initial node is ready.
async fn wait_ready(shared: &Shared) -> Result<(), RunError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let ids = lock(&shared.cluster).members();
        let mut ready = 0;
        for id in &ids {
            let url = shared.url(*id);
            let answer =
                shared.http.get(format!("{url}/readyz")).timeout(Duration::from_secs(2)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                ready += 1;
            }
        }
        if ready == ids.len() {
            return Ok(());
        }
        let exited = lock(&shared.cluster).reap();
        if let Some((_, crash)) = exited.into_iter().next() {
            return Err(RunError::Start(crash));
        }
        if Instant::now() >= deadline {
            return Err(RunError::Start(format!(
                "{ready} of {} nodes ready after {SETTLE_TIMEOUT:?}",
                ids.len()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Restarts nodes that exited on their own, and records the crash.
async fn watchdog(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let exited = lock(&shared.cluster).reap();
        for (id, crash) in exited {
            let standing = lock(&shared.cluster).node(id).map(|n| n.standing);
            match standing {
                // A joining node that could not reach the cluster gives up;
                // that is a failed membership step, not a crash.
                Some(Standing::Joining) => {
                    lock(&shared.cluster).retire(id);
                    println!("raft-chaos: joining node {id} gave up");
                }
                Some(Standing::Member) => {
                    eprintln!("raft-chaos: CRASH: {crash}");
                    lock(&shared.crashes).push(crash);
                    let _ = lock(&shared.cluster).spawn(id, Plan::Restart);
                }
                _ => {}
            }
        }
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCHDOG_INTERVAL) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Plays a stream of planned faults, one after another, until it ends or
/// `stop` turns true.
async fn play(
    shared: Arc<Shared>,
    plan: Vec<PlannedFault>,
    origin: Instant,
    mut stop: watch::Receiver<bool>,
) {
    for fault in plan {
        let at = origin + Duration::from_millis(fault.start_ms);
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let hold = Duration::from_millis(fault.hold_ms);
        inject(&shared, fault.action, hold, &mut stop).await;
    }
}

/// Holds a fault for `hold`, or less if the run stops.
async fn hold_for(hold: Duration, stop: &mut watch::Receiver<bool>) {
    if *stop.borrow() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(hold) => {}
        _ = stop.changed() => {}
    }
}

async fn inject(shared: &Shared, action: Action, hold: Duration, stop: &mut watch::Receiver<bool>) {
    let start_us = shared.now_us();
    let kind = action.kind();
    match action {
        Action::Kill { target } | Action::Torn { target, .. } | Action::Unsynced { target } => {
            let Some(id) = shared.resolve(target).await else {
                return shared.record_fault(
                    kind,
                    format!("{kind}"),
                    start_us,
                    false,
                    "no running node".into(),
                );
            };
            lock(&shared.busy).insert(id);
            lock(&shared.cluster).kill(id);
            let mut detail = format!("kill -9 n{id}");
            if let Action::Torn { pick, .. } = action {
                match lock(&shared.cluster).tear_wal_tail(id, pick) {
                    Ok(done) => detail.push_str(&format!("; {done}")),
                    Err(error) => detail.push_str(&format!("; tearing failed: {error}")),
                }
            }
            if let Action::Unsynced { .. } = action {
                match lock(&shared.cluster).discard_unsynced(id) {
                    Ok(dropped) => {
                        detail.push_str(&format!("; {dropped} bytes of unflushed log records dropped"))
                    }
                    Err(error) => detail.push_str(&format!("; dropping unflushed writes failed: {error}")),
                }
            }
            hold_for(hold, stop).await;
            let restarted = {
                let mut cluster = lock(&shared.cluster);
                let member =
                    cluster.node(id).is_some_and(|n| n.standing == Standing::Member && !n.is_running());
                !member || cluster.spawn(id, Plan::Restart).is_ok()
            };
            lock(&shared.busy).remove(&id);
            detail.push_str(if restarted { "; restarted" } else { "; restart FAILED" });
            shared.record_fault(kind, format!("{kind} n{id}"), start_us, restarted, detail);
        }
        Action::Pause { target } => {
            let Some(id) = shared.resolve(target).await else {
                return shared.record_fault(kind, "pause".into(), start_us, false, "no running node".into());
            };
            lock(&shared.busy).insert(id);
            let paused = lock(&shared.cluster).pause(id);
            hold_for(hold, stop).await;
            lock(&shared.cluster).resume(id);
            lock(&shared.busy).remove(&id);
            shared.record_fault(
                kind,
                format!("pause n{id}"),
                start_us,
                paused,
                "SIGSTOP, then SIGCONT".into(),
            );
        }
        Action::Partition { shape } => {
            let Some(firewall) = &shared.firewall else { return };
            let members = lock(&shared.cluster).members();
            let leader = shared.leader_status().await.map(|s| s.node_id);
            let pairs = schedule::cut_pairs(shape, &members, leader);
            let addresses: Vec<_> = {
                let cluster = lock(&shared.cluster);
                pairs.iter().map(|(a, b)| (cluster.ip(*a), cluster.ip(*b))).collect()
            };
            let result = firewall.cut(&addresses);
            let shape_name = match shape {
                schedule::PartitionShape::MajorityMinority { .. } => "majority/minority".to_string(),
                schedule::PartitionShape::IsolatedLeader => {
                    format!("isolated leader n{}", leader.unwrap_or(0))
                }
                schedule::PartitionShape::Bridge { .. } => "bridge".to_string(),
            };
            let cut: Vec<String> = pairs.iter().map(|(a, b)| format!("{a}-{b}")).collect();
            hold_for(hold, stop).await;
            let healed = firewall.heal();
            let detail = match (&result, &healed) {
                (Ok(()), Ok(())) => format!("cut {}", cut.join(" ")),
                _ => format!("cut: {result:?}; heal: {healed:?}"),
            };
            shared.record_fault(kind, format!("partition {shape_name}"), start_us, result.is_ok(), detail);
        }
        Action::Delay { min_ms, max_ms } => {
            let rules = FaultRules { delay_min_ms: min_ms, delay_max_ms: max_ms, ..FaultRules::default() };
            let applied = shared.set_fault_rules(Some(&rules)).await;
            hold_for(hold, stop).await;
            shared.set_fault_rules(None).await;
            let detail = format!("peer messages delayed {min_ms}–{max_ms} ms on {applied} nodes");
            shared.record_fault(kind, format!("delay {min_ms}-{max_ms} ms"), start_us, applied > 0, detail);
        }
        Action::Drop { percent } => {
            let rules = FaultRules { drop_probability: percent as f64 / 100.0, ..FaultRules::default() };
            let applied = shared.set_fault_rules(Some(&rules)).await;
            hold_for(hold, stop).await;
            shared.set_fault_rules(None).await;
            let detail = format!("{percent}% of peer messages dropped on {applied} nodes");
            shared.record_fault(kind, format!("drop {percent}%"), start_us, applied > 0, detail);
        }
        Action::Transfer { pick } => transfer(shared, pick, start_us).await,
        Action::Membership { pick } => membership(shared, pick, start_us).await,
    }
}

async fn transfer(shared: &Shared, pick: u64, start_us: u64) {
    let kind = FaultKind::Transfer;
    let Some(leader) = shared.leader_status().await else {
        return shared.record_fault(kind, "transfer".into(), start_us, false, "no leader".into());
    };
    let others: Vec<u64> = leader.members.voters.iter().copied().filter(|id| *id != leader.node_id).collect();
    if others.is_empty() {
        return shared.record_fault(kind, "transfer".into(), start_us, false, "no other voter".into());
    }
    let target = others[(pick % others.len() as u64) as usize];
    let via = {
        let live = lock(&shared.cluster).live_members();
        live[(pick as usize / 7) % live.len().max(1)]
    };
    let answer = shared
        .http
        .post(format!("{}/v1/cluster/leader", shared.url(via)))
        .json(&raft_node::api::TransferRequest { target: Some(target) })
        .send()
        .await;
    let (succeeded, detail) = describe(answer).await;
    shared.record_fault(
        kind,
        format!("transfer n{}→n{target}", leader.node_id),
        start_us,
        succeeded,
        format!("via n{via}: {detail}"),
    );
}

/// Says how an administrative request went.
async fn describe(answer: Result<reqwest::Response, reqwest::Error>) -> (bool, String) {
    match answer {
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            (status.is_success(), format!("{} {body}", status.as_u16()))
        }
        Err(error) => (false, error.to_string()),
    }
}

/// One step of a replacement: retire nodes the configuration no longer
/// holds; then promote a learner if there is one; else remove a voter if
/// there are more than at the start; else add a new learner.
async fn membership(shared: &Shared, pick: u64, start_us: u64) {
    let kind = FaultKind::Membership;
    let Some(leader) = shared.leader_status().await else {
        return shared.record_fault(kind, "membership".into(), start_us, false, "no leader".into());
    };
    let in_config: BTreeSet<u64> = leader
        .members
        .voters
        .iter()
        .chain(&leader.members.learners)
        .chain(&leader.members.outgoing_voters)
        .copied()
        .collect();
    // Reconcile: members the configuration dropped (a removal that timed
    // out but went through) are retired; joining nodes it holds are members.
    {
        let mut cluster = lock(&shared.cluster);
        let known: Vec<(u64, Standing)> = cluster.nodes().map(|n| (n.id, n.standing)).collect();
        let busy = lock(&shared.busy).clone();
        for (id, standing) in known {
            match standing {
                Standing::Member if !in_config.contains(&id) && !busy.contains(&id) => cluster.retire(id),
                Standing::Joining if in_config.contains(&id) => cluster.admit(id),
                _ => {}
            }
        }
    }
    shared.refresh_targets();
    if leader.members.joint {
        return shared.record_fault(
            kind,
            "membership".into(),
            start_us,
            false,
            "a joint configuration is in force".into(),
        );
    }
    let via = {
        let live = lock(&shared.cluster).live_members();
        if live.is_empty() {
            return shared.record_fault(kind, "membership".into(), start_us, false, "no running node".into());
        }
        live[(pick as usize / 7) % live.len()]
    };
    let base = shared.url(via);
    if let Some(learner) = leader.members.learners.first().copied() {
        let answer = shared.http.post(format!("{base}/v1/cluster/members/{learner}/promote")).send().await;
        let (succeeded, detail) = describe(answer).await;
        return shared.record_fault(
            kind,
            format!("promote n{learner}"),
            start_us,
            succeeded,
            format!("via n{via}: {detail}"),
        );
    }
    if leader.members.voters.len() as u64 > shared.initial_voters {
        let busy = lock(&shared.busy).clone();
        let candidates: Vec<u64> =
            leader.members.voters.iter().copied().filter(|id| !busy.contains(id)).collect();
        if candidates.is_empty() {
            return shared.record_fault(
                kind,
                "remove".into(),
                start_us,
                false,
                "every voter is held by a fault".into(),
            );
        }
        let victim = candidates[(pick % candidates.len() as u64) as usize];
        let answer = shared.http.delete(format!("{base}/v1/cluster/members/{victim}")).send().await;
        let (succeeded, detail) = describe(answer).await;
        if succeeded {
            lock(&shared.cluster).retire(victim);
            shared.refresh_targets();
        }
        return shared.record_fault(
            kind,
            format!("remove n{victim}"),
            start_us,
            succeeded,
            format!("via n{via}: {detail}"),
        );
    }
    // Add a learner: a joining node that is not yet in the configuration is
    // reused, or a new one starts.
    let pending = lock(&shared.cluster)
        .nodes()
        .find(|n| n.standing == Standing::Joining && n.is_running())
        .map(|n| n.id);
    let id = match pending {
        Some(id) => id,
        None => {
            let mut cluster = lock(&shared.cluster);
            let id = cluster.highest_id() + 1;
            let join_url = cluster.url(via);
            if let Err(error) = cluster.spawn(id, Plan::Join(join_url)) {
                drop(cluster);
                return shared.record_fault(kind, format!("add n{id}"), start_us, false, error.to_string());
            }
            id
        }
    };
    let (ip, url) = {
        let cluster = lock(&shared.cluster);
        (cluster.ip(id), cluster.url(id))
    };
    let request = raft_node::api::AddMemberRequest {
        id,
        peer_address: format!("{ip}:{PEER_PORT}"),
        client_address: url,
        voter: false,
    };
    // The new node needs a moment to fetch the directory before it can
    // take appends; the leader retries until it can, so adding at once is
    // fine.
    let answer = shared.http.post(format!("{base}/v1/cluster/members")).json(&request).send().await;
    let (succeeded, detail) = describe(answer).await;
    if succeeded {
        lock(&shared.cluster).admit(id);
        shared.refresh_targets();
    }
    shared.record_fault(
        kind,
        format!("add learner n{id}"),
        start_us,
        succeeded,
        format!("via n{via}: {detail}"),
    );
}

/// Ends every fault: rules off, firewall open, paused nodes resumed, dead
/// members restarted.
async fn heal(shared: &Shared) {
    if let Some(firewall) = &shared.firewall {
        if let Err(error) = firewall.heal() {
            eprintln!("raft-chaos: healing the firewall failed: {error}");
        }
    }
    {
        let mut cluster = lock(&shared.cluster);
        let nodes: Vec<(u64, Standing, bool, bool)> =
            cluster.nodes().map(|n| (n.id, n.standing, n.is_running(), n.paused)).collect();
        for (id, standing, running, paused) in nodes {
            if paused {
                cluster.resume(id);
            }
            if standing == Standing::Member && !running {
                let _ = cluster.spawn(id, Plan::Restart);
            }
        }
    }
    shared.set_fault_rules(None).await;
}

/// Waits until every member runs, the leader's configuration matches the
/// runner's members, and every member reports the same digest at the same
/// applied index. Returns whether that happened, and the digests seen last.
async fn converge(shared: &Shared) -> (bool, Vec<ReplicaDigest>) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = Vec::new();
    loop {
        // Joining nodes never added are stopped; members the configuration
        // dropped are retired.
        if let Some(leader) = shared.leader_status().await {
            let in_config: BTreeSet<u64> =
                leader.members.voters.iter().chain(&leader.members.learners).copied().collect();
            let mut cluster = lock(&shared.cluster);
            let known: Vec<(u64, Standing)> = cluster.nodes().map(|n| (n.id, n.standing)).collect();
            for (id, standing) in known {
                match standing {
                    Standing::Joining if in_config.contains(&id) => cluster.admit(id),
                    Standing::Joining => cluster.retire(id),
                    Standing::Member if !in_config.contains(&id) => cluster.retire(id),
                    _ => {}
                }
            }
        }
        let members = lock(&shared.cluster).members();
        let mut digests = Vec::new();
        for id in &members {
            let url = shared.url(*id);
            let answer = shared
                .http
                .get(format!("{url}/v1/cluster/digest"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(response) = answer {
                if let Ok(digest) = response.json::<Digest>().await {
                    digests.push(ReplicaDigest {
                        node: *id,
                        applied_index: digest.applied_index,
                        keys: digest.keys,
                        hash: digest.hash,
                    });
                }
            }
        }
        let same = digests.len() == members.len()
            && !digests.is_empty()
            && digests
                .iter()
                .all(|d| d.applied_index == digests[0].applied_index && d.hash == digests[0].hash);
        last = if digests.is_empty() { last } else { digests };
        if same {
            return (true, last);
        }
        if Instant::now() >= deadline {
            return (false, last);
        }
        tokio::time::sleep(POLL).await;
    }
}
