//! The environment the scenario commands run against: a [`Cluster`] driven
//! by hand, with every batch, message and role change printed.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use raft_core::message::{
    AppendEntries, AppendEntriesResponse, Heartbeat, HeartbeatResponse, InstallSnapshot,
    InstallSnapshotResponse, MessageBody, ReadIndexRequest, ReadIndexResponse, RequestVote,
    RequestVoteResponse, VoteKind,
};
use raft_core::protocol::{Config, MembershipChange, PersistId, ReadState, Ready, SnapshotRead};
use raft_core::testing::cluster::{Cluster, RecordingStateMachine};
use raft_core::types::{CheckpointOp, ClientRequestId, ReadId, ReadMode, Role};
use raft_core::{Engine, Entry, EntryPayload, LogIndex, Membership, Message, NodeId, SnapshotMeta, Term};

use super::datadriven::{parse_list, parse_u64, Command};
use super::format;

type CommandResult = Result<String, String>;

/// A write handed to the "disk" of a node with asynchronous storage and not
/// yet acknowledged: the durable parts of one batch.
struct PendingWrite {
    ready: Ready,
}

/// What the environment keeps per node besides the cluster's state.
struct NodeExtra {
    config: Config,
    /// Writes wait for an explicit `persist` (or `stabilize`) instead of
    /// completing inside `process-ready`.
    async_storage: bool,
    pending_writes: VecDeque<PendingWrite>,
    /// Role, term and leader last printed, to report changes.
    observed: (Role, Term, NodeId),
    /// The deduplication table a real state machine keeps: each client's
    /// highest applied sequence number and the index it was applied at.
    /// Rebuilt by re-applying the log after a restart (the recording state
    /// machine's snapshots do not carry it).
    sessions: BTreeMap<u64, (u64, LogIndex)>,
}

pub struct Env {
    cluster: Cluster,
    extra: BTreeMap<NodeId, NodeExtra>,
    /// The leader seen in each term (Election Safety).
    leaders: BTreeMap<Term, NodeId>,
    /// Every entry any node applied, by index (State Machine Safety).
    applied: BTreeMap<LogIndex, Entry>,
    /// Cluster-wide safety violations seen while handling batches.
    violations: Vec<String>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            cluster: Cluster::empty(Config::new),
            extra: BTreeMap::new(),
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    /// Runs one command, then checks every invariant.
    pub fn handle(&mut self, cmd: &mut Command) -> CommandResult {
        let mut out = String::new();
        let handled = self.handle_input(cmd, &mut out)?
            || self.handle_work(cmd, &mut out)?
            || self.handle_other(cmd, &mut out)?;
        if !handled {
            return Err(format!("unknown command {}", cmd.name));
        }
        self.report_changes(&mut out, "");
        self.check()?;
        Ok(out)
    }

    /// Commands that feed an input to one engine.
    fn handle_input(&mut self, cmd: &mut Command, out: &mut String) -> Result<bool, String> {
        match cmd.name.as_str() {
            "campaign" => self.engine_mut(node_arg(cmd, 0)?)?.campaign_now(),
            "tick" => self.tick(cmd, out)?,
            "tick-heartbeat" => {
                let id = node_arg(cmd, 0)?;
                for _ in 0..self.extra_of(id)?.config.heartbeat_interval_ticks {
                    self.engine_mut(id)?.tick();
                }
            }
            "tick-election" => self.tick_election(cmd, out)?,
            "propose" | "propose-client" => {
                let id = node_arg(cmd, 0)?;
                let (client, data) = if cmd.name == "propose" {
                    (None, cmd.arg(1)?)
                } else {
                    (
                        Some(ClientRequestId { client: cmd.arg_u64(1)?, sequence: cmd.arg_u64(2)? }),
                        cmd.arg(3)?,
                    )
                };
                let result = self.engine_mut(id)?.propose(Bytes::from(data), client);
                out.push_str(&result_line(result.map(|(t, i)| format!("{t}/{i}"))));
            }
            "read-index" => {
                let id = node_arg(cmd, 0)?;
                let read = ReadId(cmd.take_u64("id")?.ok_or("id= is required")?);
                let mode = parse_mode(cmd.take("mode").as_deref())?;
                let result = self.engine_mut(id)?.read_index(read, mode);
                out.push_str(&result_line(result.map(|()| String::new())));
            }
            "propose-checkpoint" => {
                let id = node_arg(cmd, 0)?;
                let name = cmd.arg(2)?;
                let op = match cmd.arg(1)?.as_str() {
                    "create" => CheckpointOp::Create { name, created_unix_ms: 0 },
                    "rollback" => CheckpointOp::Rollback { name },
                    "delete" => CheckpointOp::Delete { name },
                    other => return Err(format!("unknown checkpoint operation {other}")),
                };
                let result = self.engine_mut(id)?.propose_checkpoint(op);
                out.push_str(&result_line(result.map(|(t, i)| format!("{t}/{i}"))));
            }
            "propose-conf-change" => self.propose_conf_change(cmd, out)?,
            "transfer-leader" => {
                let target = node_arg(cmd, 1)?;
                let result = self.engine_mut(node_arg(cmd, 0)?)?.transfer_leadership(target);
                out.push_str(&result_line(result.map(|()| String::new())));
            }
            "snapshot" => match self.cluster.take_snapshot(node_arg(cmd, 0)?.0) {
                Ok(meta) => {
                    let _ = writeln!(
                        out,
                        "snapshot at {}/{} {}",
                        meta.last_term, meta.last_index, meta.membership
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "error {}", format::error(&e));
                }
            },
            "inject" => self.inject(cmd, out)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Commands that hand out and complete the engines' work.
    fn handle_work(&mut self, cmd: &mut Command, out: &mut String) -> Result<bool, String> {
        match cmd.name.as_str() {
            "process-ready" => {
                for id in node_list(cmd, 0)? {
                    self.process_ready(id, out);
                }
            }
            "deliver-msgs" => {
                let drop = cmd.take_bool("drop")?.unwrap_or(false);
                let kind = cmd.take("type");
                let count = cmd.take_u64("count")?.map_or(usize::MAX, |c| c as usize);
                for id in node_list(cmd, 0)? {
                    self.deliver(id, drop, kind.as_deref(), count, out);
                }
            }
            "stabilize" => {
                let ids = node_list(cmd, 0)?;
                let ids = if ids.is_empty() { self.cluster.nodes.keys().copied().collect() } else { ids };
                let quiet = cmd.take_bool("quiet")?.unwrap_or(false);
                let mut log = String::new();
                self.stabilize(&ids, &mut log)?;
                if !quiet {
                    out.push_str(&log);
                }
            }
            "persist" => {
                let id = node_arg(cmd, 0)?;
                let count = match cmd.opt_arg(1).as_deref() {
                    None => 1,
                    Some("all") => usize::MAX,
                    Some(n) => parse_u64(n)? as usize,
                };
                self.persist(id, count, out);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Nodes, the network and inspection.
    fn handle_other(&mut self, cmd: &mut Command, out: &mut String) -> Result<bool, String> {
        match cmd.name.as_str() {
            "add-nodes" => self.add_nodes(cmd, out)?,
            "crash" => self.crash(node_arg(cmd, 0)?, out)?,
            "restart" => self.restart(node_arg(cmd, 0)?, out)?,
            "isolate" => self.cluster.isolate(node_arg(cmd, 0)?.0),
            "heal" => self.cluster.heal(),
            "cut" => {
                let (from, to) = (node_arg(cmd, 0)?, node_arg(cmd, 1)?);
                self.cluster.cut_links.insert((from, to));
                if cmd.take_bool("both")?.unwrap_or(false) {
                    self.cluster.cut_links.insert((to, from));
                }
            }
            "status" => {
                for id in node_list(cmd, 0)? {
                    format::status(out, &self.engine(id)?.status());
                }
            }
            "raft-log" => self.raft_log(node_arg(cmd, 0)?, out)?,
            "stats" => out.push_str(&format::stats(&self.engine(node_arg(cmd, 0)?)?.stats())),
            "election-timer" => {
                for id in node_list(cmd, 0)? {
                    let timer = self.engine(id)?.election_timer();
                    let _ = writeln!(
                        out,
                        "{id}: elapsed={} timeout={}",
                        timer.elapsed_ticks, timer.timeout_ticks
                    );
                }
            }
            "applied" => self.print_applied(cmd, out)?,
            "check-invariants" => match self.check() {
                Ok(()) => out.push_str("ok\n"),
                Err(e) => {
                    let _ = writeln!(out, "{e}");
                }
            },
            _ => return Ok(false),
        }
        Ok(true)
    }

    // -----------------------------------------------------------------
    // Checks.

    /// Each engine's own invariants, plus two cluster-wide ones: one leader
    /// per term, and every node applies the same entry at each index.
    /// Each engine's own invariants, plus two cluster-wide ones: one leader
    /// per term (Election Safety), and every node applies the same entry at
    /// each index (State Machine Safety).
    fn check(&mut self) -> Result<(), String> {
        self.cluster.check_invariants().map_err(|e| format!("invariant violated: {e}"))?;
        if let Some(violation) = self.violations.first() {
            return Err(violation.clone());
        }
        for (id, node) in &self.cluster.nodes {
            if node.down || node.engine.role() != Role::Leader {
                continue;
            }
            let term = node.engine.term();
            let leader = *self.leaders.entry(term).or_insert(*id);
            if leader != *id {
                return Err(format!("election safety: {leader} and {id} both lead term {term}"));
            }
        }
        Ok(())
    }

    fn record_applied(&mut self, id: NodeId, entry: &Entry) -> Result<(), String> {
        match self.applied.get(&entry.index) {
            Some(first) if first != entry => Err(format!(
                "state machine safety: node {id} applied {} where another node applied {}",
                format::entry(entry),
                format::entry(first)
            )),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(entry.index, entry.clone());
                Ok(())
            }
        }
    }

    // -----------------------------------------------------------------
    // Accessors.

    fn engine(&self, id: NodeId) -> Result<&Engine, String> {
        self.cluster.nodes.get(&id).map(|n| &n.engine).ok_or_else(|| format!("no node {id}"))
    }

    fn engine_mut(&mut self, id: NodeId) -> Result<&mut Engine, String> {
        let node = self.cluster.nodes.get_mut(&id).ok_or_else(|| format!("no node {id}"))?;
        if node.down {
            return Err(format!("node {id} is down"));
        }
        Ok(&mut node.engine)
    }

    fn extra_of(&self, id: NodeId) -> Result<&NodeExtra, String> {
        self.extra.get(&id).ok_or_else(|| format!("no node {id}"))
    }

    /// Prints role, term and leader changes since they were last printed.
    fn report_changes(&mut self, out: &mut String, indent: &str) {
        for (id, node) in &self.cluster.nodes {
            let Some(extra) = self.extra.get_mut(id) else {
                continue;
            };
            if node.down {
                continue;
            }
            let now = (node.engine.role(), node.engine.term(), node.engine.leader());
            if now == extra.observed {
                continue;
            }
            let leader = if now.2 == NodeId::NONE { "none".to_string() } else { now.2.to_string() };
            if now.0 != extra.observed.0 || now.1 != extra.observed.1 {
                let _ =
                    writeln!(out, "{indent}INFO {id} became {} at term {} (leader {leader})", now.0, now.1);
            } else {
                let _ = writeln!(out, "{indent}INFO {id} learned leader {leader} at term {}", now.1);
            }
            extra.observed = now;
        }
    }

    // -----------------------------------------------------------------
    // Nodes.

    fn add_nodes(&mut self, cmd: &mut Command, out: &mut String) -> Result<(), String> {
        let count = cmd.arg_u64(0)?;
        let voters = cmd.take_list("voters")?;
        let learners = cmd.take_list("learners")?.unwrap_or_default();
        let async_storage = cmd.take_bool("async-storage")?.unwrap_or(false);
        let template = config_options(cmd)?;
        let first_id = self.cluster.nodes.keys().next_back().map_or(1, |id| id.0 + 1);
        let bootstrap = self.cluster.nodes.is_empty();
        let membership = bootstrap.then(|| Membership {
            voters: voters.clone().unwrap_or_else(|| (1..=count).collect()).into_iter().map(NodeId).collect(),
            outgoing_voters: Default::default(),
            learners: learners.iter().copied().map(NodeId).collect(),
        });
        if !bootstrap && voters.is_some() {
            return Err("voters= only applies to the first add-nodes (bootstrap)".into());
        }
        for id in (first_id..first_id + count).map(NodeId) {
            let mut config = template.clone();
            config.id = id;
            config.random_seed = template.random_seed.wrapping_add(id.0);
            let engine = match &membership {
                Some(membership) => Engine::bootstrap(config.clone(), membership.clone()),
                None => Engine::new(config.clone()),
            }
            .map_err(|e| format!("node {id}: {e}"))?;
            let observed = (engine.role(), engine.term(), engine.leader());
            self.cluster.add_node(id, engine);
            self.extra.insert(
                id,
                NodeExtra {
                    config,
                    async_storage,
                    pending_writes: VecDeque::new(),
                    observed,
                    sessions: BTreeMap::new(),
                },
            );
            let status = self.engine(id)?.status();
            let _ = writeln!(
                out,
                "{id}: {} term={} last={}/{} {}{}",
                if bootstrap { "bootstrapped" } else { "empty (joining)" },
                status.term,
                status.last_term,
                status.last_index,
                status.membership,
                if async_storage { " async-storage" } else { "" }
            );
        }
        Ok(())
    }

    fn crash(&mut self, id: NodeId, out: &mut String) -> Result<(), String> {
        self.engine(id)?;
        let extra = self.extra.get_mut(&id).ok_or("no such node")?;
        let lost = extra.pending_writes.len();
        extra.pending_writes.clear();
        let in_flight = self.cluster.in_flight.iter().filter(|m| m.to == id).count();
        self.cluster.crash(id.0);
        let _ = writeln!(out, "{id} crashed: {lost} unsynced writes lost, {in_flight} messages to it lost");
        Ok(())
    }

    fn restart(&mut self, id: NodeId, out: &mut String) -> Result<(), String> {
        let config = self.extra_of(id)?.config.clone();
        self.cluster.restart_with_config(id, config).map_err(|e| format!("restart {id}: {e}"))?;
        let engine = self.engine(id)?;
        let observed = (engine.role(), engine.term(), engine.leader());
        let s = engine.status();
        let _ = writeln!(
            out,
            "{id} restarted: term={} vote={} commit={} last={}/{} snapshot={} {}",
            s.term, s.vote, s.commit_index, s.last_term, s.last_index, s.snapshot_index, s.membership
        );
        if let Some(extra) = self.extra.get_mut(&id) {
            extra.observed = observed;
            extra.sessions.clear();
        }
        Ok(())
    }

    // -----------------------------------------------------------------
    // Time.

    fn tick(&mut self, cmd: &mut Command, out: &mut String) -> Result<(), String> {
        let target = cmd.arg(0)?;
        let count = cmd.opt_arg(1).map(|c| parse_u64(&c)).transpose()?.unwrap_or(1);
        let ids: Vec<NodeId> = if target == "all" {
            self.cluster.nodes.iter().filter(|(_, n)| !n.down).map(|(id, _)| *id).collect()
        } else {
            parse_list(&target)?.into_iter().map(NodeId).collect()
        };
        for _ in 0..count {
            for id in &ids {
                self.engine_mut(*id)?.tick();
            }
            self.report_changes(out, "");
        }
        Ok(())
    }

    /// Ticks a follower until its election timer fires.
    fn tick_election(&mut self, cmd: &mut Command, out: &mut String) -> Result<(), String> {
        let id = node_arg(cmd, 0)?;
        let limit = 2 * self.extra_of(id)?.config.election_timeout_ticks + 1;
        let campaigns =
            |e: &Engine| (e.role(), e.term(), e.stats().pre_votes_started + e.stats().elections_started);
        let before = campaigns(self.engine(id)?);
        for ticks in 1..=limit {
            let engine = self.engine_mut(id)?;
            engine.tick();
            if campaigns(engine) != before {
                let _ = writeln!(out, "{ticks} ticks");
                return Ok(());
            }
        }
        let _ = writeln!(out, "nothing happened in {limit} ticks");
        Ok(())
    }

    // -----------------------------------------------------------------
    // Proposals.

    fn propose_conf_change(&mut self, cmd: &mut Command, out: &mut String) -> Result<(), String> {
        let id = node_arg(cmd, 0)?;
        let kind = cmd.arg(1)?;
        let change = match kind.as_str() {
            "add-learner" => MembershipChange::AddLearner(node_arg(cmd, 2)?),
            "promote" => MembershipChange::PromoteLearner(node_arg(cmd, 2)?),
            "remove" => MembershipChange::Remove(node_arg(cmd, 2)?),
            "replace" => MembershipChange::Replace {
                voters: cmd.take_list("voters")?.unwrap_or_default().into_iter().map(NodeId).collect(),
                learners: cmd.take_list("learners")?.unwrap_or_default().into_iter().map(NodeId).collect(),
            },
            other => return Err(format!("unknown change {other}")),
        };
        let result = self.engine_mut(id)?.change_membership(change);
        out.push_str(&result_line(result.map(|(t, i)| format!("{t}/{i}"))));
        Ok(())
    }

    // -----------------------------------------------------------------
    // Batches of work.

    /// Handles node `id`'s pending batch, printing it, in the order `Ready`
    /// documents. Returns whether there was one.
    fn process_ready(&mut self, id: NodeId, out: &mut String) -> bool {
        let Some(node) = self.cluster.nodes.get_mut(&id) else {
            return false;
        };
        if node.down || !node.engine.has_ready() {
            return false;
        }
        let mut ready = node.engine.ready();
        let async_storage = self.extra.get(&id).is_some_and(|e| e.async_storage);
        let _ = writeln!(out, "> {id} handling Ready");
        let header = match ready.persist_id {
            Some(PersistId(n)) if async_storage => format!(" (write #{n} queued)"),
            Some(_) => " (persisted)".to_string(),
            None => String::new(),
        };
        let cluster = &self.cluster;
        format::ready(out, &ready, &header, |m| undeliverable(cluster, m));
        // 1. Messages leave at once (those over a cut link or to a node
        // that is down are lost).
        for message in ready.messages.drain(..) {
            if undeliverable(&self.cluster, &message).is_none() {
                self.cluster.in_flight.push(message);
            }
        }
        // 2. The durable part: now, or when the node's disk gets to it.
        let write = Ready {
            snapshot_chunks: std::mem::take(&mut ready.snapshot_chunks),
            install_snapshot: ready.install_snapshot.take(),
            entries: std::mem::take(&mut ready.entries),
            hard_state: ready.hard_state.take(),
            persist_id: ready.persist_id.take(),
            compact_to: ready.compact_to.take(),
            ..Ready::default()
        };
        self.store(id, write);
        // 3. Apply what is committed (always durable already).
        self.apply_committed(id, std::mem::take(&mut ready.committed_entries), out);
        // 4. Reads wait for the state machine.
        self.serve_reads(id, std::mem::take(&mut ready.reads), out);
        if let Some(node) = self.cluster.nodes.get_mut(&id) {
            node.failed_reads.append(&mut ready.failed_reads);
        }
        // 5. Chunks of the local snapshot for followers.
        self.read_snapshot_chunks(id, std::mem::take(&mut ready.snapshot_reads));
        self.report_changes(out, "  ");
        true
    }

    /// Writes the durable part of a batch, or queues it on a node with
    /// asynchronous storage.
    fn store(&mut self, id: NodeId, write: Ready) {
        let has_write =
            write.persist_id.is_some() || write.hard_state.is_some() || write.compact_to.is_some();
        let Some(extra) = self.extra.get_mut(&id) else {
            return;
        };
        if !has_write {
            return;
        }
        if !extra.async_storage {
            return self.write_to_disk(id, write);
        }
        match extra.pending_writes.back_mut() {
            // A write that need not be synced (a commit index, a
            // compaction) rides with the last queued one: compaction must
            // not run before the entries it removes are written.
            Some(last) if write.persist_id.is_none() => {
                last.ready.hard_state = write.hard_state.or(last.ready.hard_state);
                last.ready.compact_to = write.compact_to.max(last.ready.compact_to);
            }
            _ if write.persist_id.is_none() => self.write_to_disk(id, write),
            _ => extra.pending_writes.push_back(PendingWrite { ready: write }),
        }
    }

    /// Applies committed entries to the node's state machine, skipping
    /// retries of client requests already applied, and checks that every
    /// node applies the same entry at each index.
    fn apply_committed(&mut self, id: NodeId, committed: Vec<Entry>, out: &mut String) {
        for entry in &committed {
            if let Err(failure) = self.record_applied(id, entry) {
                let _ = writeln!(out, "  VIOLATION {failure}");
                self.violations.push(failure);
            }
        }
        let (Some(node), Some(extra)) = (self.cluster.nodes.get_mut(&id), self.extra.get_mut(&id)) else {
            return;
        };
        for entry in &committed {
            if let EntryPayload::Command { client: Some(c), .. } = &entry.payload {
                match extra.sessions.get(&c.client) {
                    Some(&(sequence, index)) if c.sequence <= sequence => {
                        let _ = writeln!(
                            out,
                            "  {}: duplicate of client {} request {} (last applied: {sequence} at index {index}), skipped",
                            entry.index, c.client, c.sequence
                        );
                        node.state_machine.apply(&Entry { payload: EntryPayload::Blank, ..entry.clone() });
                        continue;
                    }
                    _ => {
                        extra.sessions.insert(c.client, (c.sequence, entry.index));
                    }
                }
            }
            node.state_machine.apply(entry);
        }
        if let Some(last) = committed.last() {
            node.engine.applied(last.index);
        }
    }

    /// Hands the engine the chunks of the local snapshot it asked for; a
    /// read of a snapshot the store no longer has fails.
    fn read_snapshot_chunks(&mut self, id: NodeId, reads: Vec<SnapshotRead>) {
        let Some(node) = self.cluster.nodes.get_mut(&id) else {
            return;
        };
        for read in reads {
            match node.disk.snapshot.clone() {
                Some((meta, data)) if meta.last_index == read.snapshot.last_index => {
                    let start = (read.offset as usize).min(data.len());
                    let end = (start + read.max_bytes as usize).min(data.len());
                    let chunk = data.slice(start..end);
                    node.engine.snapshot_chunk_read(
                        read.to,
                        meta.last_index,
                        read.offset,
                        chunk,
                        end == data.len(),
                    );
                }
                _ => node.engine.snapshot_read_failed(read.to),
            }
        }
    }

    /// Writes a batch's durable part to the node's disk and acknowledges it.
    fn write_to_disk(&mut self, id: NodeId, write: Ready) {
        let Some(node) = self.cluster.nodes.get_mut(&id) else {
            return;
        };
        node.disk.write(&write);
        if let Some(meta) = &write.install_snapshot {
            let data = node.disk.snapshot.as_ref().map(|(_, d)| d.clone()).unwrap_or_default();
            node.state_machine = RecordingStateMachine::restore(&data, meta.last_index);
        }
        if let Some(persist_id) = write.persist_id {
            node.engine.persisted(persist_id);
        }
        if write.install_snapshot.is_some() {
            node.engine.applied(node.state_machine.applied_index);
        }
    }

    /// Queues confirmed reads and serves those the state machine has reached.
    fn serve_reads(&mut self, id: NodeId, new: Vec<ReadState>, out: &mut String) {
        let node = self.cluster.nodes.get_mut(&id).expect("known node");
        let had_waiting = node.waiting_reads.len();
        node.waiting_reads.extend(new);
        let applied = node.state_machine.applied_index;
        let mut still_waiting = Vec::new();
        for (position, read) in node.waiting_reads.drain(..).enumerate() {
            if read.index <= applied {
                if position < had_waiting {
                    let _ = writeln!(
                        out,
                        "  served read id={} (index {}, applied {applied})",
                        read.id, read.index
                    );
                }
                node.reads.push(read);
            } else {
                if position >= had_waiting {
                    let _ =
                        writeln!(out, "  read id={} waits for apply ({applied} < {})", read.id, read.index);
                }
                still_waiting.push(read);
            }
        }
        node.waiting_reads = still_waiting;
    }

    /// Completes up to `count` queued writes of a node with asynchronous storage.
    fn persist(&mut self, id: NodeId, count: usize, out: &mut String) -> usize {
        let mut done = 0;
        while done < count {
            let Some(extra) = self.extra.get_mut(&id) else {
                break;
            };
            let Some(write) = extra.pending_writes.pop_front() else {
                break;
            };
            let mut parts = Vec::new();
            if !write.ready.snapshot_chunks.is_empty() {
                parts.push(format!("{} snapshot chunks", write.ready.snapshot_chunks.len()));
            }
            if let Some(meta) = &write.ready.install_snapshot {
                parts.push(format!("snapshot {}/{}", meta.last_term, meta.last_index));
            }
            if let (Some(first), Some(last)) = (write.ready.entries.first(), write.ready.entries.last()) {
                parts.push(format!("entries {}/{}..{}/{}", first.term, first.index, last.term, last.index));
            }
            if let Some(h) = &write.ready.hard_state {
                parts.push(format!("hard state term={} vote={} commit={}", h.term, h.vote, h.commit));
            }
            let n = write.ready.persist_id.map_or(0, |p| p.0);
            let _ = writeln!(out, "> {id} persisted write #{n}: {}", parts.join(", "));
            self.write_to_disk(id, write.ready);
            done += 1;
        }
        if done == 0 && count != usize::MAX {
            let _ = writeln!(out, "{id} has no pending writes");
        }
        self.report_changes(out, "  ");
        done
    }

    // -----------------------------------------------------------------
    // The network.

    /// Delivers (or drops) the first `count` in-flight messages addressed
    /// to `id`, only those of one kind if `kind` is given; the others stay
    /// in flight, in order. Returns how many there were.
    fn deliver(
        &mut self,
        id: NodeId,
        drop: bool,
        kind: Option<&str>,
        count: usize,
        out: &mut String,
    ) -> usize {
        let mut now = Vec::new();
        let mut later = Vec::new();
        for message in std::mem::take(&mut self.cluster.in_flight) {
            if now.len() < count && message.to == id && kind.is_none_or(|k| message.kind() == k) {
                now.push(message);
            } else {
                later.push(message);
            }
        }
        self.cluster.in_flight = later;
        if now.is_empty() {
            return 0;
        }
        let _ = writeln!(out, "> {id} {} messages", if drop { "dropping" } else { "receiving" });
        let count = now.len();
        for message in now {
            let line = format::message(&message);
            if drop {
                let _ = writeln!(out, "  {line} [dropped]");
                continue;
            }
            if let Some(why) = undeliverable(&self.cluster, &message) {
                let _ = writeln!(out, "  {line} [dropped: {why}]");
                continue;
            }
            let Some(node) = self.cluster.nodes.get_mut(&message.to) else {
                continue;
            };
            let _ = writeln!(out, "  {line}");
            if let Err(e) = node.engine.step(message) {
                let _ = writeln!(out, "  error {}", format::error(&e));
            }
            self.report_changes(out, "  ");
        }
        count
    }

    /// Handles batches and delivers messages among `ids` until nothing
    /// moves; nodes with asynchronous storage complete their writes after
    /// each round's messages are delivered.
    fn stabilize(&mut self, ids: &[NodeId], out: &mut String) -> Result<(), String> {
        for _ in 0..1000 {
            let mut busy = false;
            for id in ids {
                busy |= self.process_ready(*id, out);
            }
            for id in ids {
                busy |= self.deliver(*id, false, None, usize::MAX, out) > 0;
            }
            for id in ids {
                if self.extra.get(id).is_some_and(|e| !e.pending_writes.is_empty()) {
                    busy |= self.persist(*id, usize::MAX, out) > 0;
                }
            }
            if !busy {
                return Ok(());
            }
        }
        Err("the cluster did not stabilize in 1000 rounds".into())
    }

    // -----------------------------------------------------------------
    // Inspection.

    fn raft_log(&self, id: NodeId, out: &mut String) -> Result<(), String> {
        let engine = self.engine(id)?;
        let status = engine.status();
        if status.first_index > LogIndex(1) {
            let start = status.first_index.prev();
            let term = engine.term_at(start).map_or("?".to_string(), |t| t.to_string());
            let _ = writeln!(out, "compacted through {term}/{start} (snapshot {})", status.snapshot_index);
        }
        let entries = engine.entries(status.first_index, status.last_index);
        if entries.is_empty() {
            out.push_str("log is empty\n");
        }
        for e in entries {
            let _ = writeln!(out, "{}", format::entry(&e));
        }
        Ok(())
    }

    /// The commands a node's state machine applied, and reads it served.
    fn print_applied(&self, cmd: &mut Command, out: &mut String) -> Result<(), String> {
        for id in node_list(cmd, 0)? {
            let node = self.cluster.nodes.get(&id).ok_or_else(|| format!("no node {id}"))?;
            let commands: Vec<String> =
                node.state_machine.commands.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
            let _ = writeln!(
                out,
                "{id}: applied={} commands=[{}]",
                node.state_machine.applied_index,
                commands.join(" ")
            );
            let machine = &node.state_machine;
            if !machine.checkpoints.is_empty() || !machine.checkpoint_log.is_empty() {
                let retained: Vec<String> = machine
                    .checkpoints
                    .iter()
                    .map(|(name, (index, commands))| {
                        let commands: Vec<String> =
                            commands.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
                        format!("{name}@{index}=[{}]", commands.join(" "))
                    })
                    .collect();
                let _ = writeln!(out, "   checkpoints: {}", retained.join(" "));
                for line in &machine.checkpoint_log {
                    let _ = writeln!(out, "   applied {line}");
                }
            }
            if !node.reads.is_empty() {
                let reads: Vec<String> = node.reads.iter().map(|r| format!("{}@{}", r.id, r.index)).collect();
                let _ = writeln!(out, "   served reads: {}", reads.join(" "));
            }
            if !node.failed_reads.is_empty() {
                let reads: Vec<String> = node.failed_reads.iter().map(|r| format!("{}", r.id)).collect();
                let _ = writeln!(out, "   failed reads: {}", reads.join(" "));
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------
    // Raw messages.

    /// `inject FROM TO Kind [fields]`: steps a hand-made message into node
    /// TO (or, with `via=network`, queues it for delivery).
    fn inject(&mut self, cmd: &mut Command, out: &mut String) -> Result<(), String> {
        let from = node_arg(cmd, 0)?;
        let to = node_arg(cmd, 1)?;
        let kind = cmd.arg(2)?;
        let term = match cmd.take_u64("term")? {
            Some(t) => Term(t),
            None => self.engine(to).map(Engine::term).unwrap_or_default(),
        };
        let body = message_body(&kind, cmd)?;
        let message = Message { from, to, term, body };
        let _ = writeln!(out, "{}", format::message(&message));
        if cmd.take("via").as_deref() == Some("network") {
            self.cluster.in_flight.push(message);
            out.push_str("queued\n");
            return Ok(());
        }
        // `at=N` hands the message to node N whatever its addressee.
        let receiver = cmd.take_u64("at")?.map_or(to, NodeId);
        match self.engine_mut(receiver)?.step(message) {
            Ok(()) => out.push_str("ok\n"),
            Err(e) => {
                let _ = writeln!(out, "error {}", format::error(&e));
            }
        }
        Ok(())
    }
}

/// Why a message cannot reach its destination now, if it cannot.
fn undeliverable(cluster: &Cluster, message: &Message) -> Option<&'static str> {
    if cluster.cut_links.contains(&(message.from, message.to)) {
        return Some("link cut");
    }
    match cluster.nodes.get(&message.to) {
        None => Some("no such node"),
        Some(node) if node.down => Some("node down"),
        Some(_) => None,
    }
}

/// Builds a message body from `inject` arguments.
fn message_body(kind: &str, cmd: &mut Command) -> Result<MessageBody, String> {
    let u = |cmd: &mut Command, key: &str| cmd.take_u64(key).map(|v| v.unwrap_or(0));
    let b = |cmd: &mut Command, key: &str| cmd.take_bool(key).map(|v| v.unwrap_or(false));
    let body = match kind {
        "RequestVote" | "RequestPreVote" => {
            let (last_log_term, last_log_index) = position(cmd.take("last").as_deref().unwrap_or("0/0"))?;
            MessageBody::RequestVote(RequestVote {
                kind: if kind == "RequestVote" { VoteKind::Vote } else { VoteKind::PreVote },
                last_log_index,
                last_log_term,
                leadership_transfer: b(cmd, "transfer")?,
            })
        }
        "RequestVoteResponse" | "RequestPreVoteResponse" => {
            MessageBody::RequestVoteResponse(RequestVoteResponse {
                kind: if kind == "RequestVoteResponse" { VoteKind::Vote } else { VoteKind::PreVote },
                granted: b(cmd, "granted")?,
            })
        }
        "AppendEntries" => {
            let (prev_log_term, prev_log_index) = position(cmd.take("prev").as_deref().unwrap_or("0/0"))?;
            let mut entries = Vec::new();
            if let Some(list) = cmd.take("entries") {
                let inner = list.trim_start_matches('(').trim_end_matches(')');
                for item in inner.split_whitespace() {
                    let (pos, data) = item.split_once(':').map_or((item, None), |(p, d)| (p, Some(d)));
                    let (term, index) = position(pos)?;
                    let payload = match data {
                        None => EntryPayload::Blank,
                        Some(d) => EntryPayload::Command { client: None, data: Bytes::from(d.to_string()) },
                    };
                    entries.push(Entry { term, index, payload });
                }
            }
            MessageBody::AppendEntries(AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit: LogIndex(u(cmd, "commit")?),
            })
        }
        "AppendEntriesResponse" => {
            let conflict_term = cmd.take_u64("conflict-term")?.map(Term);
            MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                success: b(cmd, "ok")?,
                index: LogIndex(u(cmd, "index")?),
                conflict_index: LogIndex(u(cmd, "conflict-index")?),
                conflict_term,
                last_log_index: LogIndex(u(cmd, "last")?),
            })
        }
        "Heartbeat" => MessageBody::Heartbeat(Heartbeat {
            commit: LogIndex(u(cmd, "commit")?),
            read_round: u(cmd, "round")?,
        }),
        "HeartbeatResponse" => {
            MessageBody::HeartbeatResponse(HeartbeatResponse { read_round: u(cmd, "round")? })
        }
        "InstallSnapshot" => {
            let (last_term, last_index) = position(cmd.take("snapshot").as_deref().unwrap_or("0/0"))?;
            let voters = cmd.take_list("voters")?.unwrap_or_default();
            MessageBody::InstallSnapshot(InstallSnapshot {
                snapshot: SnapshotMeta {
                    last_index,
                    last_term,
                    membership: Membership::with_voters(voters.into_iter().map(NodeId)),
                },
                offset: u(cmd, "offset")?,
                data: Bytes::from(cmd.take("data").unwrap_or_default()),
                done: b(cmd, "done")?,
            })
        }
        "InstallSnapshotResponse" => MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
            snapshot_index: LogIndex(u(cmd, "snapshot")?),
            next_offset: u(cmd, "next-offset")?,
            done: b(cmd, "done")?,
            last_log_index: LogIndex(u(cmd, "last")?),
        }),
        "ReadIndex" => MessageBody::ReadIndex(ReadIndexRequest {
            id: ReadId(u(cmd, "id")?),
            mode: parse_mode(cmd.take("mode").as_deref())?,
        }),
        "ReadIndexResponse" => MessageBody::ReadIndexResponse(ReadIndexResponse {
            id: ReadId(u(cmd, "id")?),
            index: cmd.take_u64("index")?.map(LogIndex),
        }),
        "TimeoutNow" => MessageBody::TimeoutNow,
        other => return Err(format!("unknown message kind {other}")),
    };
    Ok(body)
}

/// Parses `term/index`.
fn position(text: &str) -> Result<(Term, LogIndex), String> {
    let (term, index) = text.split_once('/').ok_or_else(|| format!("expected term/index, got {text:?}"))?;
    Ok((Term(parse_u64(term)?), LogIndex(parse_u64(index)?)))
}

fn parse_mode(mode: Option<&str>) -> Result<ReadMode, String> {
    match mode {
        None | Some("read-index") => Ok(ReadMode::ReadIndex),
        Some("lease") => Ok(ReadMode::Lease),
        Some(other) => Err(format!("unknown read mode {other}")),
    }
}

fn node_arg(cmd: &mut Command, index: usize) -> Result<NodeId, String> {
    cmd.arg_u64(index).map(NodeId)
}

fn node_list(cmd: &mut Command, from: usize) -> Result<Vec<NodeId>, String> {
    cmd.rest(from).iter().map(|s| parse_u64(s).map(NodeId)).collect()
}

fn result_line<E: std::fmt::Debug + std::fmt::Display>(result: Result<String, E>) -> String {
    match result {
        Ok(s) if s.is_empty() => "ok\n".to_string(),
        Ok(s) => format!("ok {s}\n"),
        Err(e) => format!("error {}\n", format::error(&e)),
    }
}

/// Engine settings from `add-nodes` arguments, on top of the defaults.
fn config_options(cmd: &mut Command) -> Result<Config, String> {
    let mut c = Config::new(NodeId(1));
    c.random_seed = 0;
    // Scenarios show a commit reaching the followers in the same exchange
    // (`eager-commit=false` shows the engine's default, where it waits for
    // the next AppendEntries or heartbeat).
    c.eager_commit_updates = true;
    if let Some(v) = cmd.take_bool("eager-commit")? {
        c.eager_commit_updates = v;
    }
    if let Some(v) = cmd.take_bool("prevote")? {
        c.pre_vote = v;
    }
    if let Some(v) = cmd.take_bool("checkquorum")? {
        c.check_quorum = v;
    }
    if let Some(v) = cmd.take_bool("lease")? {
        c.lease_reads = v;
    }
    let numbers: [(&str, &mut u64); 11] = [
        ("election", &mut c.election_timeout_ticks),
        ("heartbeat", &mut c.heartbeat_interval_ticks),
        ("drift", &mut c.lease_drift_margin_ticks),
        ("max-bytes", &mut c.max_bytes_per_message),
        ("max-inflight-bytes", &mut c.max_inflight_bytes),
        ("max-uncommitted", &mut c.max_uncommitted_bytes),
        ("max-apply", &mut c.max_apply_backlog_entries),
        ("chunk", &mut c.snapshot_chunk_bytes),
        ("trailing", &mut c.snapshot_trailing_entries),
        ("promotion-lag", &mut c.promotion_max_lag_entries),
        ("seed", &mut c.random_seed),
    ];
    for (key, field) in numbers {
        if let Some(v) = cmd.take_u64(key)? {
            *field = v;
        }
    }
    let sizes: [(&str, &mut usize); 4] = [
        ("max-inflight", &mut c.max_inflight_messages),
        ("chunks-in-flight", &mut c.snapshot_chunks_in_flight),
        ("max-entries", &mut c.max_entries_per_message),
        ("max-pending-reads", &mut c.max_pending_reads),
    ];
    for (key, field) in sizes {
        if let Some(v) = cmd.take_u64(key)? {
            *field = v as usize;
        }
    }
    Ok(c)
}
