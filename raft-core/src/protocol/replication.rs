//! Log replication: proposals, AppendEntries and heartbeats, fast back-off,
//! pipelining within the in-flight window, and the commit rule.

use super::{Engine, ProposeError, StepError};
use crate::message::{
    AppendEntries, AppendEntriesResponse, Heartbeat, HeartbeatResponse, Message, MessageBody,
};
use crate::protocol::progress::ProgressState;
use crate::types::{Entry, EntryPayload, LogIndex, Membership, NodeId, Role, Term};

/// What happened when the leader tried to send to one peer.
enum SendOutcome {
    Sent,
    Nothing,
    /// The entries the peer needs were compacted: stream a snapshot.
    NeedsSnapshot,
}

impl Engine {
    pub(super) fn propose_payload(
        &mut self,
        payload: EntryPayload,
    ) -> Result<(Term, LogIndex), ProposeError> {
        self.check_can_propose(&payload)?;
        Ok(self.append_as_leader(payload))
    }

    pub(super) fn check_can_propose(&mut self, payload: &EntryPayload) -> Result<(), ProposeError> {
        let result = self.proposal_refusal(payload);
        if result.is_err() {
            self.stats.proposals_refused += 1;
        }
        result
    }

    fn proposal_refusal(&self, payload: &EntryPayload) -> Result<(), ProposeError> {
        let Some(state) = self.leader_state.as_deref() else {
            return Err(ProposeError::NotLeader { leader: self.leader });
        };
        if let Some(transfer) = state.transfer {
            return Err(ProposeError::TransferInProgress { target: transfer.target });
        }
        if !self.membership.is_voter(self.config.id) {
            return Err(ProposeError::LeaderLeaving);
        }
        let size = match payload {
            EntryPayload::Command { data, .. } => data.len() as u64 + 24,
            EntryPayload::Checkpoint(op) => op.name().len() as u64 + 32,
            _ => 24,
        };
        let max = self.config.max_uncommitted_bytes;
        if state.uncommitted_bytes > 0 && state.uncommitted_bytes + size > max {
            return Err(ProposeError::Busy {
                uncommitted_bytes: state.uncommitted_bytes,
                max_uncommitted_bytes: max,
            });
        }
        Ok(())
    }

    /// Appends an entry of the current term to the leader's log.
    pub(super) fn append_as_leader(&mut self, payload: EntryPayload) -> (Term, LogIndex) {
        debug_assert_eq!(self.role, Role::Leader);
        let entry = Entry { term: self.term, index: self.log.last_index().next(), payload };
        let size = entry.size_bytes();
        let position = (entry.term, entry.index);
        if let Some(state) = self.leader_state.as_deref_mut() {
            state.uncommitted_bytes += size;
        }
        self.append_entry_to_log(entry);
        position
    }

    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.check_quorum_active() {
                self.become_follower(self.term, NodeId::NONE);
                return;
            }
        }
        self.tick_transfer();
        self.tick_snapshot_sends();
        self.tick_stalled_windows();
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Sends followers whose pipelined messages went unanswered for half an
    /// election timeout (lost on the way) back to probing, so the leader
    /// finds where their logs end instead of waiting forever.
    fn tick_stalled_windows(&mut self) {
        let stall_ticks = (self.config.election_timeout_ticks / 2).max(2);
        if let Some(state) = self.leader_state.as_deref_mut() {
            for progress in state.progress.values_mut() {
                if progress.tick_stalled(stall_ticks) {
                    progress.become_probe();
                }
            }
        }
    }

    /// Sends a heartbeat carrying a new read round to every peer, and lets
    /// probing peers send again.
    pub(super) fn broadcast_heartbeat(&mut self) {
        let now = self.ticks;
        let commit = self.commit;
        let Some(state) = self.leader_state.as_deref_mut() else {
            return;
        };
        state.read_round += 1;
        let round = state.read_round;
        state.round_ticks.push_back((round, now));
        if state.round_ticks.len() > super::MAX_TRACKED_ROUNDS {
            state.round_ticks.pop_front();
        }
        for mut read in state.reads_awaiting_round.drain(..) {
            read.round = round;
            state.pending_reads.push_back(read);
        }
        for (id, progress) in state.progress.iter_mut() {
            // A paused probe resumes when the follower answers this heartbeat,
            // not now: a dead follower must not get a full append every beat.
            self.messages.push(Message {
                from: self.config.id,
                to: *id,
                term: self.term,
                body: MessageBody::Heartbeat(Heartbeat {
                    commit: commit.min(progress.match_index),
                    read_round: round,
                }),
            });
        }
        // A lone voter confirms its own rounds.
        self.release_confirmed_reads();
    }

    /// Sends what each peer needs before a batch is handed out: entries within
    /// each in-flight window, a read round if reads wait, and, with
    /// `send_commit_updates`, an empty AppendEntries to each follower that
    /// has not heard the current commit index.
    ///
    /// Unless `Config::eager_commit_updates` asks for them, `ready()` sends
    /// no such updates: the commit index rides on the next AppendEntries or
    /// heartbeat. A message of its own after every commit doubles the
    /// messages of a lightly loaded cluster (each is answered, and each
    /// makes the follower record its commit index).
    pub(super) fn leader_prepare_ready(&mut self, send_commit_updates: bool) {
        let Some(state) = self.leader_state.as_deref() else {
            return;
        };
        let peers: Vec<NodeId> = state.progress.keys().copied().collect();
        let start_round = !state.reads_awaiting_round.is_empty();
        for peer in peers {
            let mut sent_any = false;
            loop {
                match self.send_append(peer, false) {
                    SendOutcome::Sent => sent_any = true,
                    SendOutcome::Nothing => break,
                    SendOutcome::NeedsSnapshot => {
                        self.start_snapshot_send(peer);
                        break;
                    }
                }
            }
            if send_commit_updates && !sent_any && self.peer_needs_commit_update(peer) {
                let _ = self.send_append(peer, true);
            }
        }
        if start_round {
            self.broadcast_heartbeat();
        }
    }

    /// Whether the leader has anything to send that `ready()` would produce.
    pub(super) fn leader_has_work(&self) -> bool {
        let Some(state) = self.leader_state.as_deref() else {
            return false;
        };
        if !state.reads_awaiting_round.is_empty() {
            return true;
        }
        let last = self.log.last_index();
        let (max_messages, max_bytes) = (self.config.max_inflight_messages, self.config.max_inflight_bytes);
        state.progress.iter().any(|(id, p)| {
            (p.next_index <= last && p.can_send(max_messages, max_bytes))
                || (self.config.eager_commit_updates && self.peer_needs_commit_update(*id))
        })
    }

    fn peer_needs_commit_update(&self, peer: NodeId) -> bool {
        let Some(progress) = self.leader_state.as_deref().and_then(|s| s.progress.get(&peer)) else {
            return false;
        };
        progress.sent_commit < self.commit
            && progress.match_index > progress.sent_commit
            && progress.can_send(self.config.max_inflight_messages, self.config.max_inflight_bytes)
    }

    /// Sends one AppendEntries to `to` if its progress allows.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> SendOutcome {
        let (max_messages, max_bytes) = (self.config.max_inflight_messages, self.config.max_inflight_bytes);
        let Some(state) = self.leader_state.as_deref_mut() else {
            return SendOutcome::Nothing;
        };
        let Some(progress) = state.progress.get_mut(&to) else {
            return SendOutcome::Nothing;
        };
        if !progress.can_send(max_messages, max_bytes) {
            return SendOutcome::Nothing;
        }
        let prev_log_index = progress.next_index.prev();
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            return SendOutcome::NeedsSnapshot;
        };
        let (entries, bytes) = self.log.slice_bounded(
            progress.next_index,
            self.log.last_index(),
            self.config.max_entries_per_message,
            self.config.max_bytes_per_message,
        );
        if entries.is_empty() && !allow_empty {
            return SendOutcome::Nothing;
        }
        let last_sent = LogIndex(prev_log_index.0 + entries.len() as u64);
        match &mut progress.state {
            ProgressState::Replicate => {
                if !entries.is_empty() {
                    progress.next_index = last_sent.next();
                    progress.inflights.add(last_sent, bytes);
                }
            }
            ProgressState::Probe { paused } => *paused = true,
            ProgressState::Snapshot(_) => return SendOutcome::Nothing,
        }
        progress.sent_commit = self.commit;
        self.messages.push(Message {
            from: self.config.id,
            to,
            term: self.term,
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit: self.commit,
            }),
        });
        SendOutcome::Sent
    }

    pub(super) fn step_leader(&mut self, message: Message) -> Result<(), StepError> {
        let from = message.from;
        let tracked = self.leader_state.as_deref().is_some_and(|s| s.progress.contains_key(&from));
        match message.body {
            MessageBody::RequestVote(request) => {
                self.handle_request_vote(from, message.term, &request);
            }
            // A leader's log only grows during its term, so no follower can
            // hold more of it than it has; such an ack would corrupt progress.
            MessageBody::AppendEntriesResponse(response)
                if tracked && response.success && response.index > self.log.last_index() =>
            {
                self.stats.protocol_violations += 1;
                return Err(StepError::ProtocolViolation {
                    from,
                    reason: "acknowledges entries past the leader's log",
                });
            }
            MessageBody::AppendEntriesResponse(response) if tracked => {
                self.handle_append_response(from, &response)
            }
            // Rounds only come from this leader's heartbeats; echoing a round
            // not yet started would confirm reads that arrive later.
            MessageBody::HeartbeatResponse(response)
                if tracked
                    && response.read_round > self.leader_state.as_deref().map_or(0, |s| s.read_round) =>
            {
                self.stats.protocol_violations += 1;
                return Err(StepError::ProtocolViolation {
                    from,
                    reason: "confirms a read round not yet started",
                });
            }
            MessageBody::HeartbeatResponse(response) if tracked => {
                self.handle_heartbeat_response(from, &response)
            }
            MessageBody::InstallSnapshotResponse(response) if tracked => {
                self.handle_snapshot_response(from, &response)
            }
            MessageBody::ReadIndex(request) => {
                if let Err(error) = self.leader_read(request.id, from, request.mode) {
                    self.answer_read(request.id, from, Err(error));
                }
            }
            MessageBody::AppendEntriesResponse(_)
            | MessageBody::HeartbeatResponse(_)
            | MessageBody::InstallSnapshotResponse(_) => {
                self.stats.dropped_unknown_peer += 1;
                return Err(StepError::UnknownPeer(from));
            }
            MessageBody::AppendEntries(_) | MessageBody::Heartbeat(_) | MessageBody::InstallSnapshot(_) => {
                self.stats.protocol_violations += 1;
                return Err(StepError::ProtocolViolation {
                    from,
                    reason: "a second leader in the same term",
                });
            }
            _ => self.stats.dropped_irrelevant += 1,
        }
        Ok(())
    }

    fn handle_append_response(&mut self, from: NodeId, response: &AppendEntriesResponse) {
        let last = self.log.last_index();
        let Some(state) = self.leader_state.as_deref_mut() else {
            return;
        };
        let Some(progress) = state.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.reported_last_index = response.last_log_index;
        if response.success {
            let advanced = progress.acknowledge(response.index);
            match &mut progress.state {
                ProgressState::Probe { paused } => {
                    if advanced || progress.match_index >= progress.next_index.prev() {
                        progress.become_replicate();
                    } else {
                        *paused = false;
                    }
                }
                ProgressState::Snapshot(send) if progress.match_index >= send.snapshot.last_index => {
                    progress.become_probe();
                }
                _ => {}
            }
            if advanced {
                self.maybe_commit();
                self.maybe_send_timeout_now(from);
            }
            return;
        }
        // A rejection: find where the logs agree, with the follower's hint.
        let rejected = response.index;
        match progress.state {
            ProgressState::Replicate if rejected <= progress.match_index => return,
            ProgressState::Probe { .. } if rejected != progress.next_index.prev() => return,
            ProgressState::Snapshot(_) => return,
            _ => {}
        }
        let hint = match response.conflict_term {
            Some(term) => {
                self.log.last_index_of_term(term, rejected).map_or(response.conflict_index, LogIndex::next)
            }
            None => response.conflict_index,
        };
        let next = hint.min(rejected).max(progress.match_index.next()).min(last.next());
        progress.become_probe();
        progress.next_index = next;
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, response: &HeartbeatResponse) {
        let last = self.log.last_index();
        let Some(state) = self.leader_state.as_deref_mut() else {
            return;
        };
        let Some(progress) = state.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        if response.read_round > progress.acked_read_round {
            progress.acked_read_round = response.read_round;
            if let Ok(position) = state.round_ticks.binary_search_by_key(&response.read_round, |(r, _)| *r) {
                let sent_tick = state.round_ticks[position].1;
                progress.lease_tick = Some(progress.lease_tick.map_or(sent_tick, |t| t.max(sent_tick)));
            }
        }
        if progress.match_index < last {
            if let ProgressState::Probe { paused } = &mut progress.state {
                *paused = false;
            }
        }
        self.release_confirmed_reads();
    }

    /// Advances the commit index to the highest index a quorum has durably,
    /// if that entry is of the current term (§5.4.2).
    pub(super) fn maybe_commit(&mut self) {
        let Some(state) = self.leader_state.as_deref() else {
            return;
        };
        let me = self.config.id;
        let persisted = self.persisted_index.get();
        let quorum_index = LogIndex(self.membership.quorum_value(|id| {
            if id == me {
                persisted
            } else {
                state.progress.get(&id).map_or(0, |p| p.match_index.get())
            }
        }));
        if quorum_index <= self.commit {
            return;
        }
        let current_term = self.log.term(quorum_index) == Some(self.term);
        if !current_term && !self.bug(|b| b.commit_previous_terms) {
            return;
        }
        let previous = self.commit;
        self.commit = quorum_index;
        self.on_leader_commit(previous);
    }

    fn on_leader_commit(&mut self, previous: LogIndex) {
        let term = self.term;
        let committed_bytes: u64 = self
            .log
            .iter_range(previous.next(), self.commit)
            .filter(|e| e.term == term)
            .map(Entry::size_bytes)
            .sum();
        let Some(state) = self.leader_state.as_deref_mut() else {
            return;
        };
        state.uncommitted_bytes = state.uncommitted_bytes.saturating_sub(committed_bytes);
        if !state.committed_in_term && self.log.term(self.commit) == Some(term) {
            state.committed_in_term = true;
            let waiting = std::mem::take(&mut state.reads_awaiting_commit);
            for (id, from, mode) in waiting {
                if let Err(error) = self.leader_read(id, from, mode) {
                    self.answer_read(id, from, Err(error));
                }
            }
        }
        if self.membership_index <= self.commit {
            if self.membership.is_joint() {
                // The joint configuration is committed: move to the new one.
                let next = Membership {
                    voters: self.membership.voters.clone(),
                    outgoing_voters: Default::default(),
                    learners: self.membership.learners.clone(),
                };
                self.append_as_leader(EntryPayload::Membership(next));
            } else if !self.membership.is_voter(self.config.id) {
                // This leader removed itself: tell the followers the final
                // commit index, hand over quickly, then step down.
                self.leader_prepare_ready(true);
                self.hand_over_before_leaving();
                self.become_follower(self.term, NodeId::NONE);
            }
        }
    }

    pub(super) fn step_follower(&mut self, message: Message) -> Result<(), StepError> {
        let from = message.from;
        match message.body {
            MessageBody::AppendEntries(append) => {
                self.follow(from);
                self.handle_append_entries(from, append)?;
            }
            MessageBody::Heartbeat(heartbeat) => {
                self.follow(from);
                self.handle_heartbeat(from, &heartbeat);
            }
            MessageBody::InstallSnapshot(chunk) => {
                self.follow(from);
                self.handle_install_snapshot(from, chunk);
            }
            MessageBody::RequestVote(request) => {
                self.handle_request_vote(from, message.term, &request);
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(from),
            MessageBody::ReadIndexResponse(response) => self.handle_read_index_response(from, &response),
            MessageBody::ReadIndex(request) => {
                // Reads are forwarded once, to the leader; a follower that
                // receives one was mistaken for the leader.
                self.answer_read(request.id, from, Err(super::ReadError::NoLeader));
            }
            _ => self.stats.dropped_irrelevant += 1,
        }
        Ok(())
    }

    /// Records that `leader` is the leader of the current term.
    fn follow(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        if self.leader != leader {
            self.fail_forwarded_reads(super::ReadError::LeadershipLost);
            self.leader = leader;
        }
    }

    fn handle_append_entries(&mut self, from: NodeId, append: AppendEntries) -> Result<(), StepError> {
        let mut append = append;
        if append.prev_log_index < self.commit {
            // Everything up to the commit index matches the leader already:
            // skip the entries it covers and go on from there, so a repeated
            // or reordered message still delivers what lies past it.
            let covered = (self.commit.0 - append.prev_log_index.0) as usize;
            if append.entries.len() <= covered {
                let index = self.commit;
                self.respond_append(from, true, index, LogIndex(0), None);
                return Ok(());
            }
            let at_commit = &append.entries[covered - 1];
            if Some(at_commit.term) != self.log.term(self.commit) || at_commit.index != self.commit {
                self.stats.protocol_violations += 1;
                return Err(StepError::ProtocolViolation { from, reason: "contradicts a committed entry" });
            }
            append.prev_log_index = self.commit;
            append.prev_log_term = at_commit.term;
            append.entries.drain(..covered);
        }
        let prev = append.prev_log_index;
        if !self.log.matches(prev, append.prev_log_term) {
            let (conflict_index, conflict_term) = match self.log.term(prev) {
                None => (self.log.last_index().next().min(prev), None),
                Some(term) => (self.log.first_index_of_term_at(prev), Some(term)),
            };
            self.respond_append(from, false, prev, conflict_index, conflict_term);
            return Ok(());
        }
        // Check the whole batch before touching the log: the matching loop
        // below stops at the first new entry, and appending a gap or a term
        // going backwards would corrupt the log.
        let mut previous_term = append.prev_log_term;
        for (position, entry) in append.entries.iter().enumerate() {
            if entry.index != LogIndex(prev.0 + 1 + position as u64) {
                self.stats.protocol_violations += 1;
                return Err(StepError::ProtocolViolation { from, reason: "entries are not consecutive" });
            }
            if entry.term < previous_term || entry.term > self.term {
                self.stats.protocol_violations += 1;
                return Err(StepError::ProtocolViolation { from, reason: "entry term out of order" });
            }
            previous_term = entry.term;
        }
        let mut first_new = append.entries.len();
        for (position, entry) in append.entries.iter().enumerate() {
            match self.log.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) if entry.index <= self.commit => {
                    self.stats.protocol_violations += 1;
                    return Err(StepError::ProtocolViolation {
                        from,
                        reason: "overwrites a committed entry",
                    });
                }
                _ => {
                    first_new = position;
                    break;
                }
            }
        }
        let last_new = LogIndex(prev.0 + append.entries.len() as u64);
        if first_new < append.entries.len() {
            let first_index = append.entries[first_new].index;
            if first_index <= self.log.last_index() {
                self.truncate_log_from(first_index);
            }
            for entry in append.entries.into_iter().skip(first_new) {
                if entry.term > self.term || entry.term < self.log.last_term() {
                    self.stats.protocol_violations += 1;
                    return Err(StepError::ProtocolViolation { from, reason: "entry term out of order" });
                }
                self.append_entry_to_log(entry);
            }
        }
        let new_commit = append.leader_commit.min(last_new);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        self.respond_append(from, true, last_new, LogIndex(0), None);
        Ok(())
    }

    fn respond_append(
        &mut self,
        to: NodeId,
        success: bool,
        index: LogIndex,
        conflict_index: LogIndex,
        conflict_term: Option<Term>,
    ) {
        let body = MessageBody::AppendEntriesResponse(AppendEntriesResponse {
            success,
            index,
            conflict_index,
            conflict_term,
            last_log_index: self.log.last_index(),
        });
        // The acknowledgement promises durability: it waits for the write.
        self.send_after_persist(to, self.term, body);
    }

    fn handle_heartbeat(&mut self, from: NodeId, heartbeat: &Heartbeat) {
        let commit = heartbeat.commit.min(self.log.last_index());
        if commit > self.commit {
            self.commit = commit;
        }
        self.send(
            from,
            MessageBody::HeartbeatResponse(HeartbeatResponse { read_round: heartbeat.read_round }),
        );
    }
}
