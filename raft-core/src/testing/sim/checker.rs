//! Cluster-wide safety checks, run after every simulator step.
//!
//! The checker keeps its own records of what the cluster has done, so that a
//! property can be checked against the past and not only the present:
//! - **Election Safety**: the leader of every term ever seen.
//! - **Log Matching**: every entry ever written, by (index, term), with its
//!   payload and its predecessor's term; plus a periodic direct comparison of
//!   the logs of every pair of running nodes.
//! - **Leader Completeness**: every committed entry and the term in which its
//!   commit was first seen; each leader of a later term must hold it.
//! - **State Machine Safety**: every applied entry and the state machine's
//!   digest right after it, and separately the digest of its checkpoint
//!   catalog (names, indexes, the keys each remembers); every replica must
//!   agree on both, including one that got there by installing a snapshot.
//! - **Monotonicity**: per node, term, vote within a term and commit index
//!   never go back while the node runs; its durable hard state never goes
//!   back at all, across crashes.
//! - **Durability**: a vote or an append acknowledgement never leaves a
//!   node before the state it promises is durable, and a node becomes
//!   leader only with a quorum of durable votes (the grants it was sent,
//!   and its own vote only if its term and vote are on its disk) and never
//!   before its own term and vote are on its disk.

use std::collections::{BTreeMap, BTreeSet};

use super::disk::SimDisk;
use super::kv::{hash_word, HASH_START};
use super::{Property, Violation};
use crate::message::{Message, MessageBody, VoteKind};
use crate::protocol::Engine;
use crate::types::{CheckpointOp, Entry, EntryPayload, HardState, LogIndex, NodeId, Role, Term};

/// A committed entry as first seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CommittedEntry {
    term: Term,
    payload: u64,
    /// The observer's term when the commit was first seen: the entry was
    /// committed in this term or earlier, so every leader of a later term
    /// must hold it.
    seen_in_term: Term,
}

/// An applied entry as first applied, with the state machine's digests
/// after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AppliedEntry {
    node: NodeId,
    term: Term,
    payload: u64,
    /// The whole state's digest.
    digest: u64,
    /// The checkpoint catalog's digest (also part of `digest`; compared on
    /// its own to say which part differs).
    catalog: u64,
}

/// A state machine's digests after some index: the whole state's, and its
/// checkpoint catalog's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateDigest {
    /// The whole state.
    pub state: u64,
    /// The checkpoint catalog alone.
    pub catalog: u64,
}

impl StateDigest {
    /// The digests of a simulated key-value store.
    pub fn of(kv: &super::kv::KvStore) -> Self {
        StateDigest { state: kv.digest(), catalog: kv.catalog_digest() }
    }
}

/// What the checker remembers of one running node (reset on restart).
#[derive(Clone, Copy, Debug, Default)]
struct RunningNode {
    term: Term,
    commit: LogIndex,
    /// The vote emitted in `vote_term`.
    vote: NodeId,
    vote_term: Term,
    /// Commit indexes up to here were recorded as committed.
    recorded_commit: LogIndex,
}

/// The cluster-wide checker.
#[derive(Clone, Debug, Default)]
pub struct SafetyChecker {
    /// When off, every check passes (to show what the end-to-end checks
    /// catch on their own).
    disabled: bool,
    leaders_by_term: BTreeMap<Term, NodeId>,
    written: BTreeMap<(LogIndex, Term), (u64, Option<Term>)>,
    committed: BTreeMap<LogIndex, CommittedEntry>,
    applied: BTreeMap<LogIndex, AppliedEntry>,
    running: BTreeMap<NodeId, RunningNode>,
    durable: BTreeMap<NodeId, HardState>,
    vote_promises: BTreeMap<(NodeId, Term), NodeId>,
    /// Committed entries first seen in the current step.
    fresh_commits: Vec<(LogIndex, CommittedEntry)>,
    step: u64,
}

/// A stable hash of an entry's payload.
pub fn payload_hash(payload: &EntryPayload) -> u64 {
    match payload {
        EntryPayload::Blank => hash_word(HASH_START, 10),
        EntryPayload::Command { client, data } => {
            let mut hash = hash_word(HASH_START, 11);
            hash = hash_word(hash, client.map_or(0, |c| c.client));
            hash = hash_word(hash, client.map_or(0, |c| c.sequence));
            for chunk in data.chunks(8) {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                hash = hash_word(hash, u64::from_le_bytes(word));
            }
            hash_word(hash, data.len() as u64)
        }
        EntryPayload::Membership(m) => {
            let mut hash = hash_word(HASH_START, 12);
            for set in [&m.voters, &m.outgoing_voters, &m.learners] {
                hash = set.iter().fold(hash, |hash, id| hash_word(hash, id.0));
                hash = hash_word(hash, u64::MAX);
            }
            hash
        }
        EntryPayload::Checkpoint(op) => {
            let (kind, name) = match op {
                CheckpointOp::Create { name, created_unix_ms } => (13 ^ created_unix_ms.rotate_left(8), name),
                CheckpointOp::Rollback { name } => (14, name),
                CheckpointOp::Delete { name } => (15, name),
            };
            let hash = hash_word(HASH_START, kind);
            name.bytes().fold(hash, |hash, byte| hash_word(hash, u64::from(byte)))
        }
    }
}

impl SafetyChecker {
    /// A checker that checks (`enabled`) or lets everything pass.
    pub fn new(enabled: bool) -> Self {
        SafetyChecker { disabled: !enabled, ..SafetyChecker::default() }
    }

    /// Sets the step that violations will name.
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    fn violation(&self, property: Property, details: String) -> Violation {
        Violation { step: self.step, property, details }
    }

    /// Forgets what a node did while it ran (it crashed or left).
    pub fn node_stopped(&mut self, node: NodeId) {
        self.running.remove(&node);
    }

    /// Starts following a node that (re)started with this engine.
    pub fn node_started(&mut self, engine: &Engine) {
        let status = engine.status();
        let record = RunningNode {
            term: status.term,
            commit: status.commit_index,
            vote: status.vote,
            vote_term: status.term,
            recorded_commit: status.snapshot_index,
        };
        self.running.insert(engine.id(), record);
    }

    /// Checks one running engine after a step: its own invariants,
    /// monotonicity, Election Safety, and records newly committed entries.
    pub fn check_engine(&mut self, engine: &Engine) -> Result<(), Violation> {
        if self.disabled {
            return Ok(());
        }
        let id = engine.id();
        if let Err(error) = engine.check_invariants() {
            return Err(self.violation(Property::EngineInvariant, error.to_string()));
        }
        let mut record = self.running.get(&id).copied().unwrap_or_default();
        let (term, commit) = (engine.term(), engine.commit_index());
        if term < record.term {
            return Err(self.violation(
                Property::Monotonicity,
                format!("node {id}: term went from {} back to {term}", record.term),
            ));
        }
        if commit < record.commit {
            return Err(self.violation(
                Property::Monotonicity,
                format!("node {id}: commit index went from {} back to {commit}", record.commit),
            ));
        }
        record.term = term;
        record.commit = commit;
        if engine.role() == Role::Leader {
            self.check_leader(engine)?;
        }
        if commit > record.recorded_commit {
            self.record_committed(engine, record.recorded_commit, commit)?;
            record.recorded_commit = commit;
        }
        self.running.insert(id, record);
        Ok(())
    }

    /// Election Safety, and Leader Completeness for a leader seen first.
    fn check_leader(&mut self, engine: &Engine) -> Result<(), Violation> {
        let (id, term) = (engine.id(), engine.term());
        match self.leaders_by_term.get(&term) {
            Some(&leader) if leader != id => {
                return Err(self.violation(
                    Property::ElectionSafety,
                    format!("nodes {leader} and {id} were both leader in term {term}"),
                ));
            }
            Some(_) => return Ok(()),
            None => {
                self.check_votes_durable(engine)?;
                self.leaders_by_term.insert(term, id);
            }
        }
        let first = engine.snapshot().last_index.max(LogIndex(1));
        let committed: Vec<(LogIndex, CommittedEntry)> =
            self.committed.range(first..).map(|(i, c)| (*i, *c)).collect();
        for (index, entry) in committed {
            self.check_leader_holds(engine, index, entry)?;
        }
        Ok(())
    }

    /// Durability of an election: every vote a new leader counted is
    /// durable, so that no voter can forget it in a crash and vote again in
    /// the same term. Grants from others are durable when they leave
    /// (`check_sent`); the leader's own vote is durable if its disk holds
    /// its term and vote. Those must make a quorum of the configuration the
    /// leader won in, and the leader's own must be among them: a leader
    /// whose term is not durable could crash, restart in the term before,
    /// win this term again from the same voters and append other entries
    /// under the indexes of its first leadership.
    fn check_votes_durable(&self, engine: &Engine) -> Result<(), Violation> {
        let (id, term) = (engine.id(), engine.term());
        let own_durable = self.durable.get(&id).is_some_and(|h| h.term == term && h.vote == id);
        if !own_durable {
            return Err(self.violation(
                Property::Durability,
                format!("node {id} became leader of term {term} before its own term and vote were durable"),
            ));
        }
        let voted_durably =
            |voter: NodeId| voter == id || self.vote_promises.get(&(voter, term)) == Some(&id);
        if engine.membership().is_quorum(voted_durably) {
            return Ok(());
        }
        Err(self.violation(
            Property::Durability,
            format!("node {id} became leader of term {term} without a quorum of durable votes"),
        ))
    }

    fn check_leader_holds(
        &self,
        engine: &Engine,
        index: LogIndex,
        entry: CommittedEntry,
    ) -> Result<(), Violation> {
        if entry.seen_in_term >= engine.term() {
            return Ok(());
        }
        let held = engine.term_at(index);
        if held.is_none() && index <= engine.snapshot().last_index {
            // Inside the leader's snapshot; the state machine digests cover it.
            return Ok(());
        }
        if held != Some(entry.term) {
            return Err(self.violation(
                Property::LeaderCompleteness,
                format!(
                    "leader {} of term {} lacks entry {index} (term {}) committed by term {}; it holds {:?}",
                    engine.id(),
                    engine.term(),
                    entry.term,
                    entry.seen_in_term,
                    held
                ),
            ));
        }
        Ok(())
    }

    fn record_committed(&mut self, engine: &Engine, from: LogIndex, to: LogIndex) -> Result<(), Violation> {
        for entry in engine.entries(from.next(), to) {
            let payload = payload_hash(&entry.payload);
            let committed = CommittedEntry { term: entry.term, payload, seen_in_term: engine.term() };
            match self.committed.get(&entry.index) {
                Some(known) if (known.term, known.payload) != (entry.term, payload) => {
                    return Err(self.violation(
                        Property::StateMachineSafety,
                        format!(
                            "node {} committed entry {} of term {}, but an entry of term {} was committed there before",
                            engine.id(),
                            entry.index,
                            entry.term,
                            known.term
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    self.committed.insert(entry.index, committed);
                    self.fresh_commits.push((entry.index, committed));
                }
            }
        }
        Ok(())
    }

    /// Leader Completeness of the running leaders against the entries whose
    /// commit was first seen in this step (older ones were checked when each
    /// leader was first seen).
    pub fn check_leaders_against_fresh_commits(&mut self, leaders: &[&Engine]) -> Result<(), Violation> {
        if self.disabled {
            return Ok(());
        }
        let fresh = std::mem::take(&mut self.fresh_commits);
        for (index, entry) in fresh {
            for leader in leaders {
                self.check_leader_holds(leader, index, entry)?;
            }
        }
        Ok(())
    }

    /// Log Matching, incrementally: entries handed to storage by `engine`
    /// (which already holds them). Two entries with the same index and term
    /// must carry the same payload and follow an entry of the same term.
    pub fn check_written_entries(&mut self, engine: &Engine, entries: &[Entry]) -> Result<(), Violation> {
        if self.disabled {
            return Ok(());
        }
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut previous_term = engine.term_at(first.index.prev());
        for entry in entries {
            let record = (payload_hash(&entry.payload), previous_term);
            let known = *self.written.entry((entry.index, entry.term)).or_insert(record);
            let predecessors_differ = matches!((known.1, record.1), (Some(a), Some(b)) if a != b);
            if known.0 != record.0 || predecessors_differ {
                return Err(self.violation(
                    Property::LogMatching,
                    format!(
                        "node {} wrote entry {} of term {} that differs from another node's entry with that index and term \
                         (payload or predecessor term {:?} vs {:?})",
                        engine.id(),
                        entry.index,
                        entry.term,
                        record.1,
                        known.1
                    ),
                ));
            }
            previous_term = Some(entry.term);
        }
        Ok(())
    }

    /// Log Matching, directly: for every pair of engines, if their logs hold
    /// an entry with the same index and term, every entry before it that both
    /// hold is identical.
    pub fn check_log_matching(&self, engines: &[&Engine]) -> Result<(), Violation> {
        if self.disabled {
            return Ok(());
        }
        let logs: Vec<(NodeId, Vec<Entry>)> = engines
            .iter()
            .map(|e| (e.id(), e.entries(e.snapshot().last_index.next(), e.last_index())))
            .collect();
        for (position, (a_id, a)) in logs.iter().enumerate() {
            for (b_id, b) in &logs[position + 1..] {
                if let Some(reason) = compare_logs(a, b) {
                    return Err(
                        self.violation(Property::LogMatching, format!("nodes {a_id} and {b_id}: {reason}"))
                    );
                }
            }
        }
        Ok(())
    }

    /// State Machine Safety: no two nodes apply different entries at an
    /// index, and the state and the checkpoint catalog after an index are
    /// the same everywhere.
    pub fn check_applied(
        &mut self,
        node: NodeId,
        entry: &Entry,
        digest: StateDigest,
    ) -> Result<(), Violation> {
        if self.disabled {
            return Ok(());
        }
        let applied = AppliedEntry {
            node,
            term: entry.term,
            payload: payload_hash(&entry.payload),
            digest: digest.state,
            catalog: digest.catalog,
        };
        let known = *self.applied.entry(entry.index).or_insert(applied);
        if (known.term, known.payload) != (applied.term, applied.payload) {
            return Err(self.violation(
                Property::StateMachineSafety,
                format!(
                    "node {node} applied entry {} of term {}, node {} applied one of term {} there",
                    entry.index, entry.term, known.node, known.term
                ),
            ));
        }
        if known.catalog != digest.catalog {
            return Err(self.violation(
                Property::StateMachineSafety,
                format!(
                    "the checkpoint catalogs of nodes {node} and {} differ after entry {} ({:?})",
                    known.node, entry.index, entry.payload
                ),
            ));
        }
        if known.digest != digest.state {
            return Err(self.violation(
                Property::StateMachineSafety,
                format!(
                    "state machines of nodes {node} and {} differ after entry {} ({:?})",
                    known.node, entry.index, entry.payload
                ),
            ));
        }
        Ok(())
    }

    /// State Machine Safety for a state machine restored from a snapshot:
    /// its state and its checkpoint catalog are those every replica had at
    /// the snapshot's index.
    pub fn check_restored(
        &self,
        node: NodeId,
        index: LogIndex,
        digest: StateDigest,
    ) -> Result<(), Violation> {
        if self.disabled {
            return Ok(());
        }
        let Some(known) = self.applied.get(&index) else {
            return Ok(());
        };
        let differs = |what: &str| {
            Err(self.violation(
                Property::StateMachineSafety,
                format!(
                    "node {node} restored a snapshot at {index} whose {what} differs from node {}'s there",
                    known.node
                ),
            ))
        };
        if known.catalog != digest.catalog {
            return differs("checkpoint catalog");
        }
        if known.digest != digest.state {
            return differs("state");
        }
        Ok(())
    }

    /// The digest of the state machine after `index`, as first applied.
    pub fn digest_at(&self, index: LogIndex) -> Option<u64> {
        self.applied.get(&index).map(|a| a.digest)
    }

    /// Monotonicity of a hard state the engine emitted while running: the
    /// vote does not change within a term.
    pub fn check_emitted_hard_state(&mut self, node: NodeId, hard_state: HardState) -> Result<(), Violation> {
        if self.disabled {
            return Ok(());
        }
        let Some(record) = self.running.get_mut(&node) else {
            return Ok(());
        };
        if hard_state.term == record.vote_term
            && record.vote != NodeId::NONE
            && hard_state.vote != record.vote
        {
            let details = format!(
                "node {node} changed its vote in term {} from {} to {}",
                hard_state.term, record.vote, hard_state.vote
            );
            return Err(self.violation(Property::Monotonicity, details));
        }
        if hard_state.term < record.vote_term {
            let details =
                format!("node {node} emitted term {} after term {}", hard_state.term, record.vote_term);
            return Err(self.violation(Property::Monotonicity, details));
        }
        record.vote_term = hard_state.term;
        record.vote = hard_state.vote;
        Ok(())
    }

    /// Monotonicity of the durable hard state, across crashes.
    pub fn check_durable(&mut self, node: NodeId, disk: &SimDisk) -> Result<(), Violation> {
        if self.disabled {
            return Ok(());
        }
        let now = disk.durable().hard_state;
        let before = self.durable.insert(node, now).unwrap_or_default();
        let vote_changed = now.term == before.term && before.vote != NodeId::NONE && now.vote != before.vote;
        if now.term < before.term || vote_changed || now.commit < before.commit {
            return Err(self.violation(
                Property::Monotonicity,
                format!("node {node}: durable hard state went from {before:?} to {now:?}"),
            ));
        }
        Ok(())
    }

    /// Durability and vote uniqueness of a message leaving `engine`'s node.
    pub fn check_sent(
        &mut self,
        engine: &Engine,
        disk: &SimDisk,
        message: &Message,
    ) -> Result<(), Violation> {
        if self.disabled {
            return Ok(());
        }
        let durable = disk.durable().hard_state;
        let (from, term) = (message.from, message.term);
        // Whether the durable hard state has voted for `candidate` in `term`
        // (or moved past it).
        let voted_durably =
            |candidate: NodeId| durable.term > term || (durable.term == term && durable.vote == candidate);
        let problem = match &message.body {
            MessageBody::RequestVoteResponse(r) if r.kind == VoteKind::Vote && r.granted => {
                let candidate = message.to;
                let promised = *self.vote_promises.entry((from, term)).or_insert(candidate);
                if promised != candidate {
                    return Err(self.violation(
                        Property::ElectionSafety,
                        format!("node {from} voted for both {promised} and {candidate} in term {term}"),
                    ));
                }
                (!voted_durably(candidate)).then(|| {
                    format!(
                        "node {from} granted its vote in term {term} to {candidate} before it was durable"
                    )
                })
            }
            // An acknowledgement of an earlier term may leave after the node
            // replaced the entry in a later term (it was durable when made,
            // and now travels like a delayed message): only the current
            // term's log says what the acknowledgement is about.
            MessageBody::AppendEntriesResponse(r) if r.success && term == engine.term() => {
                let durable_entry = engine.term_at(r.index).is_none_or(|t| disk.durably_holds(r.index, t));
                (!durable_entry).then(|| {
                    format!("node {from} acknowledged entries up to {} before they were durable", r.index)
                })
            }
            _ => None,
        };
        match problem {
            Some(problem) => {
                Err(self.violation(Property::Durability, format!("{problem} (durable: {durable:?})")))
            }
            None => Ok(()),
        }
    }

    /// Number of terms that had a leader.
    pub fn terms_with_leader(&self) -> usize {
        self.leaders_by_term.len()
    }

    /// The nodes that were ever leader.
    pub fn leaders(&self) -> BTreeSet<NodeId> {
        self.leaders_by_term.values().copied().collect()
    }
}

/// Compares two logs; describes the first disagreement that Log Matching
/// forbids.
fn compare_logs(a: &[Entry], b: &[Entry]) -> Option<String> {
    let (Some(a_first), Some(b_first)) = (a.first(), b.first()) else {
        return None;
    };
    let start = a_first.index.max(b_first.index);
    fn at(log: &[Entry], first: LogIndex, index: LogIndex) -> Option<&Entry> {
        log.get(index.0.checked_sub(first.0)? as usize)
    }
    let end = LogIndex(a.last().map_or(0, |e| e.index.0).min(b.last().map_or(0, |e| e.index.0)));
    // The highest common index where the terms agree: everything before it
    // must be identical.
    let mut index = end;
    while index >= start {
        let (Some(x), Some(y)) = (at(a, a_first.index, index), at(b, b_first.index, index)) else {
            return None;
        };
        if x.term == y.term {
            break;
        }
        index = index.prev();
    }
    let mut check = start;
    while check <= index && index >= start {
        let (Some(x), Some(y)) = (at(a, a_first.index, check), at(b, b_first.index, check)) else {
            return None;
        };
        if x != y {
            return Some(format!(
                "both hold an entry of term {} at {index}, but their entries at {check} differ (terms {} and {})",
                at(a, a_first.index, index).map_or(Term(0), |e| e.term),
                x.term,
                y.term
            ));
        }
        check = check.next();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Command { client: None, data: Bytes::from_static(data) },
        }
    }

    #[test]
    fn logs_that_agree_at_a_point_must_agree_before_it() {
        let a = vec![entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 2, b"c")];
        let same_prefix = vec![entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 3, b"x")];
        assert_eq!(compare_logs(&a, &same_prefix), None);
        let forked = vec![entry(1, 1, b"a"), entry(2, 1, b"z"), entry(3, 2, b"c")];
        assert!(compare_logs(&a, &forked).is_some());
        let disjoint = vec![entry(5, 4, b"q")];
        assert_eq!(compare_logs(&a, &disjoint), None);
    }
}
