//! Elections: timers, pre-vote, votes, role changes and CheckQuorum.

use super::{Engine, LeaderState, PendingSelfVote, ReadError, StepError};
use crate::message::{Message, MessageBody, RequestVote, RequestVoteResponse, VoteKind};
use crate::protocol::progress::Progress;
use crate::types::{EntryPayload, NodeId, Role, Term};

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Poll {
    Won,
    Lost,
    Pending,
}

impl Engine {
    /// Whether this node may campaign: only voters of the configuration in
    /// force do, so learners and removed nodes never disturb the cluster.
    pub(super) fn promotable(&self) -> bool {
        self.membership.is_voter(self.config.id)
    }

    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            let kind = if self.config.pre_vote { VoteKind::PreVote } else { VoteKind::Vote };
            self.campaign(kind, false);
        }
    }

    /// Starts a campaign now (also used by tests and by a node asked to take
    /// over leadership). Does nothing on a node that may not campaign.
    pub fn campaign_now(&mut self) {
        if self.role != Role::Leader {
            let kind = if self.config.pre_vote { VoteKind::PreVote } else { VoteKind::Vote };
            self.campaign(kind, false);
        }
    }

    pub(super) fn campaign(&mut self, kind: VoteKind, leadership_transfer: bool) {
        if !self.promotable() {
            return;
        }
        let campaign_term = match kind {
            VoteKind::PreVote => {
                self.become_pre_candidate();
                self.stats.pre_votes_started += 1;
                // A pre-vote promises nothing, so this node's own counts at
                // once; a single voter goes straight on to the real vote.
                self.votes.insert(self.config.id, true);
                if self.poll() == Poll::Won {
                    return self.campaign(VoteKind::Vote, leadership_transfer);
                }
                self.term.next()
            }
            VoteKind::Vote => {
                self.become_candidate();
                self.stats.elections_started += 1;
                // The new term and the vote for itself go out in the next
                // `ready()`, which always issues a synced write for a new
                // term, under the next persist id. The vote counts only
                // once that write is durable: a node that crashed before
                // could restart without it and vote for another candidate
                // of this term, and then both votes would have counted.
                if self.bug(|b| b.count_self_vote_early) {
                    self.votes.insert(self.config.id, true);
                    if self.poll() == Poll::Won {
                        return self.become_leader();
                    }
                } else {
                    self.pending_self_vote =
                        Some(PendingSelfVote { term: self.term, persist_id: self.next_persist_id });
                }
                self.term
            }
        };
        let request = RequestVote {
            kind,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leadership_transfer,
        };
        let voters: Vec<NodeId> =
            self.membership.members().into_iter().filter(|id| self.membership.is_voter(*id)).collect();
        for voter in voters {
            if voter == self.config.id {
                continue;
            }
            // Vote requests leave at once, while this node's own write is
            // under way: a request promises nothing, and the votes that come
            // back are durable at their senders before they count.
            let body = MessageBody::RequestVote(request.clone());
            self.messages.push(Message { from: self.config.id, to: voter, term: campaign_term, body });
        }
    }

    /// Counts a candidate's own vote once the write carrying it is durable
    /// (called from `persisted`). A vote for a campaign this node has since
    /// left behind (it lost, or saw a higher term) is dropped.
    pub(super) fn count_durable_self_vote(&mut self) {
        let Some(pending) = self.pending_self_vote else {
            return;
        };
        if pending.persist_id > self.acked_persist_id {
            return;
        }
        self.pending_self_vote = None;
        if self.role == Role::Candidate && self.term == pending.term {
            self.votes.insert(self.config.id, true);
            self.tally(VoteKind::Vote);
        }
    }

    /// Whether this node's vote for itself in the current term still waits
    /// for the write that records it.
    pub(super) fn own_vote_pending(&self) -> bool {
        self.pending_self_vote.is_some_and(|p| p.term == self.term)
    }

    fn poll(&self) -> Poll {
        if self.membership.is_quorum(|id| self.votes.get(&id) == Some(&true)) {
            Poll::Won
        } else if self.membership.is_quorum(|id| self.votes.get(&id) == Some(&false)) {
            Poll::Lost
        } else {
            Poll::Pending
        }
    }

    /// Restarts the election timer with a fresh randomized timeout. Raft
    /// restarts it only when a server hears from the current leader, grants
    /// a vote, or starts an election of its own (§5.2, Figure 2); this
    /// engine also restarts it when its own campaign lost. `become_follower`
    /// says why a higher term alone must not.
    pub(super) fn restart_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.reset_randomized_election_timeout();
    }

    fn become_pre_candidate(&mut self) {
        self.end_leadership();
        self.role = Role::PreCandidate;
        self.leader = NodeId::NONE;
        self.votes.clear();
        // A pre-vote is the start of this server's own election attempt: if
        // it gets no answer, the next attempt waits a fresh timeout.
        self.restart_election_timer();
    }

    fn become_candidate(&mut self) {
        self.end_leadership();
        self.term = self.term.next();
        self.vote = self.config.id;
        self.role = Role::Candidate;
        self.leader = NodeId::NONE;
        self.votes.clear();
        // "On conversion to candidate, ... reset election timer" (Figure 2).
        self.restart_election_timer();
        self.fail_forwarded_reads(ReadError::LeadershipLost);
        self.incoming_snapshot = None;
    }

    /// Becomes a follower in `term` (which must not be older than the
    /// current one) of `leader` (or of no known leader).
    ///
    /// The election timer restarts only if `leader` is known (this server
    /// has just heard from the leader of `term`) or if this server was the
    /// leader. Otherwise (a higher term seen in a vote request or a vote
    /// answer) the timer keeps running: Figure 2 restarts it only on
    /// hearing from the current leader or on granting a vote, and a vote
    /// granted afterwards restarts it in `handle_request_vote`. Restarting
    /// it here would let a candidate whose log is too short to win (§5.4.1)
    /// hold every other server back by a full timeout, and would line up
    /// the timers of the servers that can win, so that they split the next
    /// vote. (A campaign that lost restarts the loser's own timer; see
    /// `handle_vote_response`.)
    ///
    /// A leader has no election timer of its own running (its
    /// `election_elapsed` counts CheckQuorum windows, and its randomized
    /// timeout dates from its campaign), so a deposed leader starts a fresh
    /// one, as LogCabin and etcd do; keeping the old values could make it
    /// campaign at once and disrupt the election that deposed it.
    pub(super) fn become_follower(&mut self, term: Term, leader: NodeId) {
        debug_assert!(term >= self.term);
        let restart_timer = self.role == Role::Leader || leader != NodeId::NONE;
        if term > self.term {
            self.term = term;
            self.vote = NodeId::NONE;
            self.incoming_snapshot = None;
        }
        if leader != self.leader {
            self.fail_forwarded_reads(ReadError::LeadershipLost);
        }
        self.end_leadership();
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        if restart_timer {
            self.restart_election_timer();
        }
    }

    pub(super) fn become_leader(&mut self) {
        debug_assert!(self.role == Role::Candidate || self.membership.voters.len() <= 1);
        self.role = Role::Leader;
        self.leader = self.config.id;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.stats.leadership_won += 1;
        self.fail_forwarded_reads(ReadError::LeadershipLost);
        let next = self.log.last_index().next();
        let mut state = LeaderState::default();
        for id in self.membership.members() {
            if id != self.config.id {
                let mut progress = Progress::new(next);
                // Give every peer one CheckQuorum window to answer.
                progress.recent_active = true;
                state.progress.insert(id, progress);
            }
        }
        self.leader_state = Some(Box::new(state));
        // The blank entry lets the leader commit entries of earlier terms
        // (§5.4.2) and learn its commit index for reads.
        self.append_as_leader(EntryPayload::Blank);
        self.maybe_commit();
    }

    /// Drops the leader's state, failing the reads it held.
    fn end_leadership(&mut self) {
        if let Some(state) = self.leader_state.take() {
            let reads = state
                .reads_awaiting_round
                .iter()
                .chain(state.pending_reads.iter())
                .map(|r| (r.id, r.from))
                .chain(state.reads_awaiting_commit.iter().map(|r| (r.0, r.1)));
            let reads: Vec<_> = reads.collect();
            for (id, from) in reads {
                self.answer_read(id, from, Err(ReadError::LeadershipLost));
            }
        }
    }

    /// Settles a term question before any role-specific handling. Returns
    /// whether the message should be processed further.
    pub(super) fn step_term(&mut self, message: &Message) -> Result<bool, StepError> {
        if message.term > self.term {
            if let MessageBody::RequestVote(request) = &message.body {
                let heard_from_leader = self.config.check_quorum
                    && self.leader != NodeId::NONE
                    && self.election_elapsed < self.config.election_timeout_ticks;
                if !request.leadership_transfer && (heard_from_leader || self.vote_embargo) {
                    // Ignore (do not even bump the term): a leader is alive,
                    // so this candidate is disruptive, e.g. a removed node.
                    self.stats.votes_ignored_in_lease += 1;
                    return Ok(false);
                }
            }
            match &message.body {
                MessageBody::RequestVote(r) if r.kind == VoteKind::PreVote => {}
                MessageBody::RequestVoteResponse(r) if r.kind == VoteKind::PreVote && r.granted => {}
                MessageBody::AppendEntries(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::InstallSnapshot(_) => self.become_follower(message.term, message.from),
                _ => self.become_follower(message.term, NodeId::NONE),
            }
            return Ok(true);
        }
        if message.term < self.term {
            self.stats.dropped_stale_term += 1;
            match &message.body {
                // Tell a stale leader about the newer term so it steps down;
                // with pre-vote or CheckQuorum it might otherwise never learn.
                MessageBody::AppendEntries(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::InstallSnapshot(_) => {
                    self.send(
                        message.from,
                        MessageBody::HeartbeatResponse(crate::message::HeartbeatResponse { read_round: 0 }),
                    );
                }
                MessageBody::RequestVote(r) if r.kind == VoteKind::PreVote => {
                    self.send(
                        message.from,
                        MessageBody::RequestVoteResponse(RequestVoteResponse {
                            kind: VoteKind::PreVote,
                            granted: false,
                        }),
                    );
                }
                _ => {}
            }
            return Err(StepError::StaleTerm { message_term: message.term, current_term: self.term });
        }
        Ok(true)
    }

    /// Answers a vote or pre-vote request in the current term (or, for a
    /// pre-vote, a future one).
    pub(super) fn handle_request_vote(&mut self, from: NodeId, message_term: Term, request: &RequestVote) {
        let can_vote = self.vote == from
            || (self.vote == NodeId::NONE && self.leader == NodeId::NONE)
            || (request.kind == VoteKind::PreVote && message_term > self.term);
        let log_ok = self.log.is_up_to_date(request.last_log_index, request.last_log_term)
            || self.bug(|b| b.vote_without_log_check);
        let granted = can_vote && log_ok;
        let term = if granted { message_term } else { self.term };
        if granted && request.kind == VoteKind::Vote {
            self.vote = from;
            // Granting a vote restarts the timer (Figure 2), with a fresh
            // random timeout as for any restart, so that this server gives
            // the candidate time to win before competing with it. A pre-vote
            // grant promises nothing and leaves the timer alone.
            self.restart_election_timer();
        }
        let body = MessageBody::RequestVoteResponse(RequestVoteResponse { kind: request.kind, granted });
        match request.kind {
            // The vote is durable before the answer leaves.
            VoteKind::Vote => self.send_after_persist(from, term, body),
            VoteKind::PreVote => self.messages.push(Message { from: self.config.id, to: from, term, body }),
        }
    }

    /// Counts a vote answer while campaigning.
    pub(super) fn handle_vote_response(&mut self, from: NodeId, response: &RequestVoteResponse) {
        let expected = match self.role {
            Role::PreCandidate => VoteKind::PreVote,
            Role::Candidate => VoteKind::Vote,
            _ => return,
        };
        if response.kind != expected || !self.membership.is_voter(from) {
            self.stats.dropped_irrelevant += 1;
            return;
        }
        self.votes.entry(from).or_insert(response.granted);
        self.tally(expected);
    }

    /// Acts on the votes counted so far in a campaign of `kind`.
    fn tally(&mut self, kind: VoteKind) {
        match self.poll() {
            Poll::Won if kind == VoteKind::PreVote => self.campaign(VoteKind::Vote, false),
            // Even when the others' votes alone make a majority, a
            // candidate takes office only once its own term and vote are
            // durable (`count_durable_self_vote` tallies again then). A
            // leader that crashed before that write would restart in the
            // previous term, could stand for this one again and be
            // re-elected by the same voters (they voted for it in this
            // term), and its second leadership would append entries under
            // the same term and indexes as its first, but different ones:
            // two entries with one index and term break Log Matching.
            Poll::Won if self.own_vote_pending() && !self.bug(|b| b.lead_before_own_write) => {}
            Poll::Won => self.become_leader(),
            Poll::Lost => {
                // A majority refused, because their logs are ahead of this
                // one (§5.4.1) or they voted for another candidate of this
                // term. Figure 2's candidate would wait out its timeout and
                // campaign again; this node gives up the term instead and
                // restarts its own timer (as etcd does), backing off from
                // the time it learned it lost. The back-off delays only the
                // loser: campaigning again at the old deadline could only
                // disrupt the candidate that is winning, and the delays of
                // the refusals spread the timers of servers that campaigned
                // together, so they do not split the next vote too.
                self.become_follower(self.term, NodeId::NONE);
                self.restart_election_timer();
            }
            Poll::Pending => {}
        }
    }

    pub(super) fn step_candidate(&mut self, message: Message) -> Result<(), StepError> {
        match &message.body {
            MessageBody::RequestVote(request) => {
                self.handle_request_vote(message.from, message.term, request)
            }
            MessageBody::RequestVoteResponse(response) => self.handle_vote_response(message.from, response),
            MessageBody::AppendEntries(_) | MessageBody::Heartbeat(_) | MessageBody::InstallSnapshot(_) => {
                // A leader of this term exists: follow it.
                self.become_follower(message.term, message.from);
                return self.step_follower(message);
            }
            MessageBody::ReadIndex(request) => {
                let id = request.id;
                self.answer_read(id, message.from, Err(ReadError::NoLeader));
            }
            _ => self.stats.dropped_irrelevant += 1,
        }
        Ok(())
    }

    /// CheckQuorum: a leader that has not heard from a quorum within an
    /// election timeout steps down, so clients stop waiting on it.
    pub(super) fn check_quorum_active(&mut self) -> bool {
        let id = self.config.id;
        let Some(state) = self.leader_state.as_mut() else {
            return true;
        };
        let active = self
            .membership
            .is_quorum(|peer| peer == id || state.progress.get(&peer).is_some_and(|p| p.recent_active));
        for progress in state.progress.values_mut() {
            progress.recent_active = false;
        }
        active
    }
}
