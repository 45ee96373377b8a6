//! The clients waiting for their proposals to be applied, in log order.

use std::collections::VecDeque;

use super::Deadline;

use super::apply::Waiter;
use super::ClientError;
use crate::types::{Entry, LogIndex, Term};

/// Proposals waiting for the entry at their index to be committed.
///
/// A leader appends at increasing indexes, so waiters arrive in index order
/// and leave from the front as entries commit: a queue, with no search and no
/// allocation per proposal (the ordered map it replaces allocated tree nodes
/// and searched on every insert and removal). The queue holds at most one
/// waiter per entry appended and not yet handed out for applying, which the
/// engine's `max_uncommitted_bytes` bounds; the overtaken list holds waiters
/// of earlier leaderships, and every waiter leaves at its deadline
/// (`request_timeout`) at the latest.
#[derive(Debug, Default)]
pub(super) struct Proposals {
    /// Waiters by strictly increasing index.
    in_order: VecDeque<Pending>,
    /// Waiters overtaken by a later leadership of this node, which appended
    /// at or below their index (their entry was truncated here), or whose
    /// index a received snapshot covered. Another leader may still commit
    /// their entry, so their outcome is decided only when an entry at their
    /// index is applied here; until then they wait, in no order. Rare.
    overtaken: Vec<Pending>,
}

#[derive(Debug)]
struct Pending {
    index: LogIndex,
    term: Term,
    waiter: Waiter,
    deadline: Deadline,
}

impl Proposals {
    /// Records a client waiting for the entry appended at (`term`, `index`).
    pub(super) fn insert(&mut self, term: Term, index: LogIndex, waiter: Waiter, deadline: Deadline) {
        while self.in_order.back().is_some_and(|p| p.index >= index) {
            if let Some(pending) = self.in_order.pop_back() {
                self.overtaken.push(pending);
            }
        }
        self.in_order.push_back(Pending { index, term, waiter, deadline });
    }

    /// The number of waiters of the current leadership.
    pub(super) fn waiting(&self) -> usize {
        self.in_order.len()
    }

    /// Takes the waiters of `committed` (consecutive entries about to be
    /// applied) into `out`, with the index they wait for; answers those whose
    /// index now holds another term's entry with [`ClientError::Lost`].
    pub(super) fn take_committed(&mut self, committed: &[Entry], out: &mut Vec<(LogIndex, Waiter)>) {
        let (Some(first), Some(last)) = (committed.first(), committed.last()) else {
            return;
        };
        let (first_index, last_index) = (first.index, last.index);
        while self.in_order.front().is_some_and(|p| p.index <= last_index) {
            let Some(pending) = self.in_order.pop_front() else {
                break;
            };
            if pending.index < first_index {
                // Covered by a snapshot rather than handed out as an entry.
                self.overtaken.push(pending);
                continue;
            }
            Self::resolve(pending, committed, first_index, out);
        }
        if self.overtaken.is_empty() {
            return;
        }
        let mut still_waiting = Vec::new();
        for pending in self.overtaken.drain(..) {
            if pending.index >= first_index && pending.index <= last_index {
                Self::resolve(pending, committed, first_index, out);
            } else {
                still_waiting.push(pending);
            }
        }
        self.overtaken = still_waiting;
    }

    fn resolve(
        pending: Pending,
        committed: &[Entry],
        first_index: LogIndex,
        out: &mut Vec<(LogIndex, Waiter)>,
    ) {
        let position = (pending.index.get() - first_index.get()) as usize;
        if committed.get(position).is_some_and(|entry| entry.term == pending.term) {
            out.push((pending.index, pending.waiter));
        } else {
            let _ = pending.waiter.send(Err(ClientError::Lost));
        }
    }

    /// Answers [`ClientError::Timeout`] to the waiters whose deadline passed
    /// and forgets those whose client stopped waiting. Waiters arrive in
    /// deadline order, so the scan of the queue stops at the first one still
    /// in time.
    pub(super) fn expire(&mut self, now: Deadline) {
        while self.in_order.front().is_some_and(|p| p.deadline <= now || p.waiter.is_closed()) {
            if let Some(pending) = self.in_order.pop_front() {
                let _ = pending.waiter.send(Err(ClientError::Timeout));
            }
        }
        for pending in std::mem::take(&mut self.overtaken) {
            if pending.deadline <= now || pending.waiter.is_closed() {
                let _ = pending.waiter.send(Err(ClientError::Timeout));
            } else {
                self.overtaken.push(pending);
            }
        }
    }

    /// Answers every waiter with `error` (the node stops).
    pub(super) fn fail_all(&mut self, error: &ClientError) {
        for pending in self.in_order.drain(..).chain(self.overtaken.drain(..)) {
            let _ = pending.waiter.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::runtime::Committed;
    use crate::types::EntryPayload;

    type Receiver = oneshot::Receiver<Result<Committed, ClientError>>;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Blank }
    }

    fn wait(proposals: &mut Proposals, index: u64, term: u64) -> Receiver {
        let (waiter, receiver) = oneshot::channel();
        let deadline = 60_000;
        proposals.insert(Term(term), LogIndex(index), waiter, deadline);
        receiver
    }

    fn indexes(out: &[(LogIndex, Waiter)]) -> Vec<u64> {
        out.iter().map(|(index, _)| index.get()).collect()
    }

    #[test]
    fn waiters_leave_in_order_as_entries_commit() {
        let mut proposals = Proposals::default();
        let _receivers: Vec<_> = (1..=5).map(|i| wait(&mut proposals, i, 1)).collect();
        let mut out = Vec::new();
        proposals.take_committed(&[entry(1, 1), entry(2, 1), entry(3, 1)], &mut out);
        assert_eq!(indexes(&out), vec![1, 2, 3]);
        out.clear();
        proposals.take_committed(&[entry(4, 1), entry(5, 1)], &mut out);
        assert_eq!(indexes(&out), vec![4, 5]);
    }

    #[test]
    fn an_entry_of_another_term_answers_lost() {
        let mut proposals = Proposals::default();
        let mut lost = wait(&mut proposals, 1, 1);
        let mut out = Vec::new();
        proposals.take_committed(&[entry(1, 2)], &mut out);
        assert!(out.is_empty());
        assert_eq!(lost.try_recv().ok(), Some(Err(ClientError::Lost)));
    }

    #[test]
    fn an_overtaken_waiter_is_decided_by_the_term_applied_at_its_index() {
        let mut proposals = Proposals::default();
        // Proposed at 5 and 6 in term 1; leader again in term 3 with a log
        // truncated to 4, proposing at 5 again.
        let mut old_five = wait(&mut proposals, 5, 1);
        let mut old_six = wait(&mut proposals, 6, 1);
        let _new_five = wait(&mut proposals, 5, 3);
        let mut out = Vec::new();
        proposals.take_committed(&[entry(5, 3)], &mut out);
        assert_eq!(indexes(&out), vec![5]);
        assert_eq!(old_five.try_recv().ok(), Some(Err(ClientError::Lost)));
        assert!(old_six.try_recv().is_err(), "index 6 is not decided yet");
        out.clear();
        proposals.take_committed(&[entry(6, 1)], &mut out);
        assert_eq!(indexes(&out), vec![6], "another leader may still commit an overtaken entry");
    }

    #[test]
    fn waiters_past_their_deadline_time_out() {
        let mut proposals = Proposals::default();
        let mut first = wait(&mut proposals, 1, 1);
        let mut second = wait(&mut proposals, 2, 1);
        proposals.expire(59_999);
        assert!(first.try_recv().is_err() && second.try_recv().is_err(), "still in time");
        proposals.expire(60_000);
        assert_eq!(first.try_recv().ok(), Some(Err(ClientError::Timeout)));
        assert_eq!(second.try_recv().ok(), Some(Err(ClientError::Timeout)));
        let mut out = Vec::new();
        proposals.take_committed(&[entry(1, 1), entry(2, 1)], &mut out);
        assert!(out.is_empty(), "a timed-out waiter is forgotten");
    }

    #[test]
    fn waiters_below_the_committed_range_keep_waiting() {
        let mut proposals = Proposals::default();
        let mut covered = wait(&mut proposals, 2, 1);
        let _next = wait(&mut proposals, 9, 1);
        let mut out = Vec::new();
        proposals.take_committed(&[entry(9, 1)], &mut out);
        assert_eq!(indexes(&out), vec![9]);
        assert!(covered.try_recv().is_err(), "a snapshot covered index 2: the outcome is unknown here");
    }
}
