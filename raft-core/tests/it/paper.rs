//! Paper tests: one test per claim of Figure 2 and §5 of the Raft paper
//! ("In Search of an Understandable Consensus Algorithm", Ongaro and
//! Ousterhout, 2014), written in our own words for this engine's API.
//!
//! Each test's doc comment states the rule it checks and where the paper
//! makes it. Rules about one node's reaction drive a single [`Engine`] by
//! hand with crafted messages; rules about several nodes use the in-memory
//! [`Cluster`], with a delivery filter where a scenario needs messages lost.
//! Unless a test says otherwise, engines run the paper's algorithm: no
//! pre-vote and no CheckQuorum (both extensions are tested where they change
//! the rule).
//!
//! Logs in these tests are written as the terms of their entries, from
//! index 1: `[1, 1, 2]` is a log of three entries whose last has term 2.
//! Index 1 always carries the cluster's configuration (a log without one has
//! no voters); the other entries carry a command naming their position
//! (`"3@2"`), so two entries with the same index and term are equal, as the
//! Log Matching Property says they must be.

mod all_servers;
mod append_entries;
mod candidates;
mod crashes;
mod followers;
mod leaders;
mod liveness;
mod log_matching;
mod persistence;
mod request_vote;
mod safety;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use raft_core::message::{
    AppendEntries, AppendEntriesResponse, Heartbeat, HeartbeatResponse, RequestVote, RequestVoteResponse,
    VoteKind,
};
use raft_core::protocol::{Config, Engine, InjectedBugs, RestoredState, StepError};
use raft_core::testing::cluster::{Cluster, MemoryDisk};
use raft_core::{
    Entry, EntryPayload, HardState, LogIndex, Membership, Message, MessageBody, NodeId, Role, Term,
};

/// The most delivery rounds a scenario may take before it is declared stuck.
const MAX_ROUNDS: usize = 10_000;

// -------------------------------------------------------------------------
// Configurations.

/// The paper's algorithm: no pre-vote, no CheckQuorum. Election timeout of
/// 10 ticks, heartbeats every tick (the engine's defaults).
fn paper_config(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.pre_vote = false;
    config.check_quorum = false;
    config
}

/// The engine's defaults: pre-vote and CheckQuorum on.
fn default_config(id: NodeId) -> Config {
    Config::new(id)
}

/// The minimum election timeout the configurations above use.
fn election_timeout_ticks() -> u64 {
    paper_config(NodeId(1)).election_timeout_ticks
}

// -------------------------------------------------------------------------
// Entries and logs.

/// A command entry at `index` in `term`, carrying `"index@term"`.
fn command_entry(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Command { client: None, data: Bytes::from(format!("{index}@{term}")) },
    }
}

/// The configuration of the given voters.
fn voters(ids: &[u64]) -> Membership {
    Membership::with_voters(ids.iter().map(|id| NodeId(*id)))
}

/// A log whose entries have `terms`, from index 1: the configuration of
/// `voter_ids` first, then commands.
fn log_with_terms(voter_ids: &[u64], terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(position, term)| {
            let index = position as u64 + 1;
            if index == 1 {
                Entry {
                    term: Term(*term),
                    index: LogIndex(1),
                    payload: EntryPayload::Membership(voters(voter_ids)),
                }
            } else {
                command_entry(index, *term)
            }
        })
        .collect()
}

/// The terms of every entry of `engine`'s log, from index 1.
fn log_terms(engine: &Engine) -> Vec<u64> {
    engine.entries(LogIndex(1), engine.last_index()).iter().map(|e| e.term.get()).collect()
}

// -------------------------------------------------------------------------
// Single engines.

/// What a node restarts from: a log (as terms), the current term, the vote
/// in that term (0 for none) and the commit index.
struct Stored<'a> {
    voter_ids: &'a [u64],
    log_terms: &'a [u64],
    term: u64,
    vote: u64,
    commit: u64,
}

impl Stored<'_> {
    fn restored_state(&self) -> RestoredState {
        RestoredState {
            hard_state: HardState {
                term: Term(self.term),
                vote: NodeId(self.vote),
                commit: LogIndex(self.commit),
            },
            snapshot: None,
            entries: log_with_terms(self.voter_ids, self.log_terms),
        }
    }

    /// An engine that restarts from this state.
    fn restore(&self, config: Config) -> Engine {
        let engine = Engine::restore(config, self.restored_state()).expect("a valid stored state");
        engine.check_invariants().expect("invariants hold after a restore");
        engine
    }
}

/// A member of a brand-new cluster of `voter_ids`, its first batch handled.
fn bootstrapped(config: Config, voter_ids: &[u64]) -> Engine {
    let mut engine = Engine::bootstrap(config, voters(voter_ids)).expect("a valid bootstrap");
    flush(&mut engine);
    engine
}

/// Handles every pending batch of `engine` as a well-behaved caller with an
/// instant disk would: persists each at once, acknowledges it and applies
/// committed entries. Returns every message the batches carried, in order.
fn flush(engine: &mut Engine) -> Vec<Message> {
    let mut sent = Vec::new();
    for _ in 0..MAX_ROUNDS {
        if !engine.has_ready() {
            break;
        }
        let ready = engine.ready();
        sent.extend(ready.messages);
        if let Some(persist_id) = ready.persist_id {
            engine.persisted(persist_id);
        }
        if let Some(last) = ready.committed_entries.last() {
            engine.applied(last.index);
        }
    }
    assert!(!engine.has_ready(), "node {} keeps reporting work", engine.id());
    engine.check_invariants().expect("engine invariants");
    sent
}

/// Steps `message` into `engine`, which must accept it.
fn step_ok(engine: &mut Engine, message: Message) {
    let kind = message.kind();
    if let Err(error) = engine.step(message) {
        panic!("node {} refused a {kind}: {error}", engine.id());
    }
    engine.check_invariants().expect("engine invariants");
}

/// Makes `engine` (pre-vote off) campaign in its next term and win with the
/// votes of `granting`. Returns the messages it sent once it won.
fn win_election(engine: &mut Engine, granting: &[u64]) -> Vec<Message> {
    assert!(!engine.config().pre_vote, "win_election drives a real election");
    engine.campaign_now();
    flush(engine);
    let term = engine.term().get();
    for voter in granting {
        step_ok(engine, vote_response(*voter, engine.id().get(), term, true));
    }
    assert_eq!(engine.role(), Role::Leader, "node {} won term {term}", engine.id());
    flush(engine)
}

/// Counts ticks until `engine` stops being a follower (it campaigns), up to
/// `limit`; `None` if it never does.
fn ticks_until_campaign(engine: &mut Engine, limit: u64) -> Option<u64> {
    (1..=limit).find(|_| {
        engine.tick();
        engine.role() != Role::Follower
    })
}

// -------------------------------------------------------------------------
// Messages, as the paper names them.

fn message(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

fn request_vote(from: u64, to: u64, term: u64, last_log_index: u64, last_log_term: u64) -> Message {
    let body = MessageBody::RequestVote(RequestVote {
        kind: VoteKind::Vote,
        last_log_index: LogIndex(last_log_index),
        last_log_term: Term(last_log_term),
        leadership_transfer: false,
    });
    message(from, to, term, body)
}

fn request_pre_vote(from: u64, to: u64, term: u64, last_log_index: u64, last_log_term: u64) -> Message {
    let body = MessageBody::RequestVote(RequestVote {
        kind: VoteKind::PreVote,
        last_log_index: LogIndex(last_log_index),
        last_log_term: Term(last_log_term),
        leadership_transfer: false,
    });
    message(from, to, term, body)
}

fn vote_response(from: u64, to: u64, term: u64, granted: bool) -> Message {
    let body = MessageBody::RequestVoteResponse(RequestVoteResponse { kind: VoteKind::Vote, granted });
    message(from, to, term, body)
}

fn pre_vote_response(from: u64, to: u64, term: u64, granted: bool) -> Message {
    let body = MessageBody::RequestVoteResponse(RequestVoteResponse { kind: VoteKind::PreVote, granted });
    message(from, to, term, body)
}

/// An AppendEntries carrying `entries` after (`prev_log_index`, `prev_log_term`).
fn append_entries(
    from: u64,
    to: u64,
    term: u64,
    (prev_log_index, prev_log_term): (u64, u64),
    entries: Vec<Entry>,
    leader_commit: u64,
) -> Message {
    let body = MessageBody::AppendEntries(AppendEntries {
        prev_log_index: LogIndex(prev_log_index),
        prev_log_term: Term(prev_log_term),
        entries,
        leader_commit: LogIndex(leader_commit),
    });
    message(from, to, term, body)
}

fn heartbeat(from: u64, to: u64, term: u64, commit: u64) -> Message {
    message(from, to, term, MessageBody::Heartbeat(Heartbeat { commit: LogIndex(commit), read_round: 0 }))
}

fn heartbeat_response(from: u64, to: u64, term: u64) -> Message {
    message(from, to, term, MessageBody::HeartbeatResponse(HeartbeatResponse { read_round: 0 }))
}

/// A follower's acknowledgement that its log matches the leader's up to `index`.
fn append_accepted(from: u64, to: u64, term: u64, index: u64) -> Message {
    let body = MessageBody::AppendEntriesResponse(AppendEntriesResponse {
        success: true,
        index: LogIndex(index),
        conflict_index: LogIndex(0),
        conflict_term: None,
        last_log_index: LogIndex(index),
    });
    message(from, to, term, body)
}

/// A follower's refusal of the AppendEntries whose previous index was
/// `rejected_index`, with its back-off hint.
fn append_rejected(
    from: u64,
    to: u64,
    term: u64,
    rejected_index: u64,
    (conflict_index, conflict_term): (u64, Option<u64>),
    last_log_index: u64,
) -> Message {
    let body = MessageBody::AppendEntriesResponse(AppendEntriesResponse {
        success: false,
        index: LogIndex(rejected_index),
        conflict_index: LogIndex(conflict_index),
        conflict_term: conflict_term.map(Term),
        last_log_index: LogIndex(last_log_index),
    });
    message(from, to, term, body)
}

// -------------------------------------------------------------------------
// Reading messages.

/// The messages addressed to `to`.
fn addressed_to(messages: &[Message], to: u64) -> Vec<&Message> {
    messages.iter().filter(|m| m.to == NodeId(to)).collect()
}

/// (receiver, kind) of each message, for compact assertions.
fn receivers_and_kinds(messages: &[Message]) -> Vec<(u64, &'static str)> {
    messages.iter().map(|m| (m.to.get(), m.kind())).collect()
}

/// The answer to a vote request, if `message` is one: (kind, granted).
fn vote_answer(message: &Message) -> Option<(VoteKind, bool)> {
    match &message.body {
        MessageBody::RequestVoteResponse(response) => Some((response.kind, response.granted)),
        _ => None,
    }
}

fn append_answer(message: &Message) -> Option<&AppendEntriesResponse> {
    match &message.body {
        MessageBody::AppendEntriesResponse(response) => Some(response),
        _ => None,
    }
}

fn append_request(message: &Message) -> Option<&AppendEntries> {
    match &message.body {
        MessageBody::AppendEntries(append) => Some(append),
        _ => None,
    }
}

/// The only message in `messages`, which must hold exactly one.
fn only(messages: &[Message]) -> &Message {
    assert_eq!(messages.len(), 1, "expected exactly one message, got {messages:#?}");
    &messages[0]
}

fn is_stale_term(result: &Result<(), StepError>) -> bool {
    matches!(result, Err(StepError::StaleTerm { .. }))
}

// -------------------------------------------------------------------------
// Clusters.

/// A cluster of `voter_ids` whose nodes restart from the given stored
/// states (same order as `voter_ids`), each with `make_config`.
fn cluster_from_storage(
    voter_ids: &[u64],
    stored: &[Stored<'_>],
    make_config: fn(NodeId) -> Config,
) -> Cluster {
    assert_eq!(voter_ids.len(), stored.len());
    let mut cluster = Cluster::bootstrap(voter_ids, make_config);
    for (id, stored) in voter_ids.iter().zip(stored) {
        let node = cluster.nodes.get_mut(&NodeId(*id)).expect("a bootstrapped node");
        node.disk = MemoryDisk::default();
        let state = stored.restored_state();
        node.disk.hard_state = state.hard_state;
        node.disk.entries = state.entries;
        node.engine = stored.restore(make_config(NodeId(*id)));
    }
    cluster
}

/// Restarts crashed node `id` from its disk, with `bugs` switched on again
/// (a restart builds a fresh engine).
fn restart(cluster: &mut Cluster, id: u64, bugs: InjectedBugs) {
    cluster.restart(id);
    cluster.engine_mut(id).inject_bugs(bugs);
}

/// Moves every in-flight message from `from` to `to` into `to`, in order,
/// leaving the others in flight.
fn deliver_between(cluster: &mut Cluster, from: u64, to: u64) {
    let (now, later): (Vec<Message>, Vec<Message>) = std::mem::take(&mut cluster.in_flight)
        .into_iter()
        .partition(|m| m.from == NodeId(from) && m.to == NodeId(to));
    cluster.in_flight = later;
    for message in now {
        let _ = cluster.engine_mut(to).step(message);
    }
    cluster.check_invariants().expect("engine invariants");
}

/// Never drops a message.
fn lose_nothing(_: &Cluster, _: &Message) -> bool {
    false
}

/// Runs one round: every live node handles its batch, then every message in
/// flight is delivered, except those `lose` picks. Then checks every live
/// engine's invariants and lets `observer` look at the cluster. Returns
/// whether anything happened.
fn run_round(
    cluster: &mut Cluster,
    observer: &mut SafetyObserver,
    lose: &impl Fn(&Cluster, &Message) -> bool,
) -> bool {
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    let mut busy = false;
    for id in ids {
        busy |= cluster.process_ready(id);
    }
    let in_flight = std::mem::take(&mut cluster.in_flight);
    let kept: Vec<Message> = in_flight.into_iter().filter(|m| !lose(cluster, m)).collect();
    cluster.in_flight = kept;
    busy |= cluster.deliver(None) > 0;
    cluster.check_invariants().expect("engine invariants");
    observer.observe(cluster);
    busy
}

/// Runs rounds until nothing moves (see [`run_round`]).
fn run_rounds(
    cluster: &mut Cluster,
    observer: &mut SafetyObserver,
    lose: impl Fn(&Cluster, &Message) -> bool,
) {
    for _ in 0..MAX_ROUNDS {
        if !run_round(cluster, observer, &lose) {
            return;
        }
    }
    panic!("the cluster did not settle in {MAX_ROUNDS} rounds");
}

/// Ticks every live node once, then runs the cluster until it settles.
fn tick_and_settle(cluster: &mut Cluster, observer: &mut SafetyObserver) {
    cluster.tick_all();
    run_rounds(cluster, observer, lose_nothing);
}

/// The live leaders, by id.
fn leaders(cluster: &Cluster) -> Vec<u64> {
    cluster
        .nodes
        .iter()
        .filter(|(_, node)| !node.down && node.engine.role() == Role::Leader)
        .map(|(id, _)| id.get())
        .collect()
}

/// An entry some node reported committed.
#[derive(Clone, Copy, Debug)]
struct CommittedEntry {
    term: Term,
    /// The lowest current term of a node seen holding it as committed: it
    /// was committed in this term or earlier.
    committed_by_term: Term,
}

/// Watches a cluster for the two safety properties of §5.4:
/// - State Machine Safety: no two nodes ever commit different entries at
///   the same index (including nodes that later crash);
/// - Leader Completeness: a leader of a term after the one in which an
///   entry was committed holds that entry.
///
/// It records violations rather than panicking, so a test can prove that an
/// injected bug produces one.
#[derive(Debug, Default)]
struct SafetyObserver {
    committed: BTreeMap<LogIndex, CommittedEntry>,
    violations: BTreeSet<String>,
}

impl SafetyObserver {
    fn observe(&mut self, cluster: &Cluster) {
        for node in cluster.nodes.values().filter(|n| !n.down) {
            let engine = &node.engine;
            for index in (1..=engine.commit_index().get()).map(LogIndex) {
                let Some(term) = engine.term_at(index) else {
                    continue;
                };
                let seen = self
                    .committed
                    .entry(index)
                    .or_insert(CommittedEntry { term, committed_by_term: engine.term() });
                if seen.term != term {
                    self.violations.insert(format!(
                        "State Machine Safety: index {index} committed with term {} and, on node {}, with term {term}",
                        seen.term,
                        engine.id()
                    ));
                } else {
                    seen.committed_by_term = seen.committed_by_term.min(engine.term());
                }
            }
        }
        for node in cluster.nodes.values().filter(|n| !n.down && n.engine.role() == Role::Leader) {
            let leader = &node.engine;
            for (index, entry) in &self.committed {
                if leader.term() > entry.committed_by_term && leader.term_at(*index) != Some(entry.term) {
                    self.violations.insert(format!(
                        "Leader Completeness: leader {} of term {} lacks entry {index} (term {}) committed by term {}",
                        leader.id(),
                        leader.term(),
                        entry.term,
                        entry.committed_by_term
                    ));
                }
            }
        }
    }

    /// The term of the entry committed at `index`, if any node committed one.
    fn committed_term(&self, index: u64) -> Option<u64> {
        self.committed.get(&LogIndex(index)).map(|e| e.term.get())
    }

    fn assert_safe(&self) {
        assert!(self.violations.is_empty(), "safety violated: {:#?}", self.violations);
    }
}
