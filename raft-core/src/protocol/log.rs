//! The engine's view of the log.
//!
//! The engine keeps every entry after the compaction point in memory, so it
//! never has to ask storage for entries (a synchronous pull from storage is
//! what stalled raft-rs users). The caller bounds the memory by taking
//! snapshots: after a snapshot at index `i`, entries up to
//! `i - snapshot_trailing_entries` are dropped here and in storage.

use std::collections::VecDeque;

use crate::types::{Entry, LogIndex, Term};

/// Entries `start_index + 1 ..= last_index()` in memory, plus the index and
/// term of the entry just before them (the compaction point).
#[derive(Debug, Clone, Default)]
pub(crate) struct RaftLog {
    /// Index of the last entry removed by compaction or covered by an
    /// installed snapshot; 0 for a log that was never compacted.
    start_index: LogIndex,
    /// Term of the entry at `start_index`.
    start_term: Term,
    /// Consecutive entries from `start_index + 1`.
    entries: VecDeque<Entry>,
    /// The first index not yet handed to storage. Entries from here on are
    /// "unstable": the next `Ready` carries them.
    unstable_from: LogIndex,
}

impl RaftLog {
    /// A log whose entries start after `start_index` (with `start_term`).
    pub(crate) fn new(start_index: LogIndex, start_term: Term) -> Self {
        RaftLog { start_index, start_term, entries: VecDeque::new(), unstable_from: start_index.next() }
    }

    pub(crate) fn start_index(&self) -> LogIndex {
        self.start_index
    }

    /// The first index held in memory (may be past `last_index` when empty).
    pub(crate) fn first_index(&self) -> LogIndex {
        self.start_index.next()
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        LogIndex(self.start_index.0 + self.entries.len() as u64)
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.back().map_or(self.start_term, |e| e.term)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The term of the entry at `index`, if it is known: 0 for index 0, the
    /// compaction point's term, or an entry's term.
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.start_index {
            return Some(self.start_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.start_index {
            return None;
        }
        self.entries.get((index.0 - self.start_index.0 - 1) as usize)
    }

    /// Whether the log holds an entry at `index` with `term` (or `index` is
    /// the compaction point with that term).
    pub(crate) fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Whether a candidate's log ending at (`last_index`, `last_term`) is at
    /// least as up to date as this one (§5.4.1).
    pub(crate) fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// Appends entries the caller guarantees follow the last one.
    pub(crate) fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index().next());
        debug_assert!(entry.term >= self.last_term());
        self.entries.push_back(entry);
    }

    /// Removes every entry at or after `index` (an uncommitted suffix the
    /// leader overwrote).
    pub(crate) fn truncate_from(&mut self, index: LogIndex) {
        debug_assert!(index > self.start_index);
        let keep = (index.0 - self.start_index.0 - 1) as usize;
        self.entries.truncate(keep);
        self.unstable_from = self.unstable_from.min(index);
    }

    /// Drops entries up to and including `index`, which must be in the log.
    pub(crate) fn compact_to(&mut self, index: LogIndex) {
        if index <= self.start_index {
            return;
        }
        let Some(term) = self.term(index) else {
            return;
        };
        let drop_count = (index.0 - self.start_index.0) as usize;
        self.entries.drain(..drop_count.min(self.entries.len()));
        self.start_index = index;
        self.start_term = term;
        self.unstable_from = self.unstable_from.max(index.next());
    }

    /// Replaces the log's prefix with a snapshot ending at (`index`, `term`):
    /// keeps the entries after it if the log holds that entry, otherwise
    /// discards everything.
    pub(crate) fn install_snapshot(&mut self, index: LogIndex, term: Term) {
        if self.matches(index, term) && index >= self.start_index {
            self.compact_to(index);
        } else {
            *self = RaftLog::new(index, term);
        }
    }

    /// Entries in `from ..= to`, cloned (payloads are reference-counted).
    pub(crate) fn slice(&self, from: LogIndex, to: LogIndex) -> Vec<Entry> {
        if from > to || from <= self.start_index {
            return Vec::new();
        }
        let begin = (from.0 - self.start_index.0 - 1) as usize;
        let end = ((to.0 - self.start_index.0) as usize).min(self.entries.len());
        self.entries.range(begin..end).cloned().collect()
    }

    /// Entries from `from` up to `to`, stopping after `max_entries` entries or
    /// once `max_bytes` is reached (at least one entry is always returned if
    /// any is in range), with their payload size.
    pub(crate) fn slice_bounded(
        &self,
        from: LogIndex,
        to: LogIndex,
        max_entries: usize,
        max_bytes: u64,
    ) -> (Vec<Entry>, u64) {
        let mut bytes = 0;
        if from > to || from <= self.start_index {
            return (Vec::new(), bytes);
        }
        let begin = (from.0 - self.start_index.0 - 1) as usize;
        let end = ((to.0 - self.start_index.0) as usize).min(self.entries.len());
        // Sized up front: growing the vector entry by entry reallocated it
        // several times per message.
        let mut out = Vec::with_capacity(end.saturating_sub(begin).min(max_entries.max(1)));
        for entry in self.entries.range(begin..end) {
            let size = entry.size_bytes();
            if !out.is_empty() && (out.len() >= max_entries || bytes + size > max_bytes) {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        (out, bytes)
    }

    /// Iterates over entries in `from ..= to`.
    pub(crate) fn iter_range(
        &self,
        from: LogIndex,
        to: LogIndex,
    ) -> impl DoubleEndedIterator<Item = &Entry> + '_ {
        let begin = from.0.max(self.start_index.0 + 1) - self.start_index.0 - 1;
        let end = (to.0.saturating_sub(self.start_index.0)).min(self.entries.len() as u64);
        let (begin, end) = (begin as usize, (end as usize).max(begin as usize));
        self.entries.range(begin..end)
    }

    /// The entries not yet handed to storage; marks them handed.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable_from.max(self.first_index());
        let out = self.slice(from, self.last_index());
        self.unstable_from = self.last_index().next();
        out
    }

    /// Marks every entry in memory as not yet handed to storage (after a
    /// snapshot install, which replaces the stored log).
    pub(crate) fn mark_all_unstable(&mut self) {
        self.unstable_from = self.first_index();
    }

    pub(crate) fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// The first index whose term equals the term at `index` (binary search:
    /// terms never decrease along the log). Used for the conflict hint.
    pub(crate) fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term(index) else {
            return index;
        };
        let first = self.entries.partition_point(|e| e.term < term);
        // When the term began before the compaction point, the first index we
        // can name is the first one in memory.
        LogIndex(self.start_index.0 + 1 + first as u64)
    }

    /// The last index at or before `index` whose entry has `term`, if any.
    pub(crate) fn last_index_of_term(&self, term: Term, index: LogIndex) -> Option<LogIndex> {
        let upto = index.min(self.last_index());
        if upto <= self.start_index {
            return None;
        }
        // Terms never decrease, so the entries with a term up to `term` form a prefix.
        let prefix_len = self.entries.partition_point(|e| e.term <= term);
        let count = prefix_len.min((upto.0 - self.start_index.0) as usize);
        if count == 0 {
            return None;
        }
        let candidate = LogIndex(self.start_index.0 + count as u64);
        (self.term(candidate) == Some(term)).then_some(candidate)
    }

    /// Checks the log's own invariants.
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut previous_term = self.start_term;
        for (offset, entry) in self.entries.iter().enumerate() {
            let expected = LogIndex(self.start_index.0 + 1 + offset as u64);
            if entry.index != expected {
                return Err(format!("entry at position {offset} has index {} not {expected}", entry.index));
            }
            if entry.term < previous_term {
                return Err(format!("entry {} has term {} below {previous_term}", entry.index, entry.term));
            }
            previous_term = entry.term;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn log_with_terms(terms: &[u64]) -> RaftLog {
        let mut log = RaftLog::new(LogIndex(0), Term(0));
        for (i, t) in terms.iter().enumerate() {
            log.append(Entry { term: Term(*t), index: LogIndex(i as u64 + 1), payload: EntryPayload::Blank });
        }
        log
    }

    #[test]
    fn term_lookup_and_matching() {
        let log = log_with_terms(&[1, 1, 2, 3]);
        assert_eq!(log.term(LogIndex(0)), Some(Term(0)));
        assert_eq!(log.term(LogIndex(3)), Some(Term(2)));
        assert_eq!(log.term(LogIndex(5)), None);
        assert!(log.matches(LogIndex(4), Term(3)));
        assert!(!log.matches(LogIndex(4), Term(2)));
    }

    #[test]
    fn conflict_hints_search_by_term() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 5, 5]);
        assert_eq!(log.first_index_of_term_at(LogIndex(5)), LogIndex(3));
        assert_eq!(log.first_index_of_term_at(LogIndex(2)), LogIndex(1));
        assert_eq!(log.last_index_of_term(Term(2), LogIndex(7)), Some(LogIndex(5)));
        assert_eq!(log.last_index_of_term(Term(2), LogIndex(4)), Some(LogIndex(4)));
        assert_eq!(log.last_index_of_term(Term(3), LogIndex(7)), None);
        assert_eq!(log.last_index_of_term(Term(5), LogIndex(7)), Some(LogIndex(7)));
    }

    #[test]
    fn compaction_keeps_the_boundary_term() {
        let mut log = log_with_terms(&[1, 1, 2, 3]);
        log.compact_to(LogIndex(2));
        assert_eq!(log.start_index(), LogIndex(2));
        assert_eq!(log.term(LogIndex(2)), Some(Term(1)));
        assert_eq!(log.term(LogIndex(1)), None);
        assert_eq!(log.last_index(), LogIndex(4));
        assert_eq!(log.first_index_of_term_at(LogIndex(2)), LogIndex(3));
        log.check().unwrap();
    }

    #[test]
    fn installing_a_snapshot_keeps_a_matching_suffix_only() {
        let mut log = log_with_terms(&[1, 1, 2, 3]);
        log.install_snapshot(LogIndex(3), Term(2));
        assert_eq!(log.last_index(), LogIndex(4));
        let mut log = log_with_terms(&[1, 1, 2, 3]);
        log.install_snapshot(LogIndex(3), Term(3));
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn bounded_slices_always_carry_one_entry() {
        let log = log_with_terms(&[1, 1, 1]);
        let (entries, _) = log.slice_bounded(LogIndex(1), LogIndex(3), 10, 1);
        assert_eq!(entries.len(), 1);
        let (entries, _) = log.slice_bounded(LogIndex(2), LogIndex(3), 10, 1 << 20);
        assert_eq!(entries.len(), 2);
    }
}
