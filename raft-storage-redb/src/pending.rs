//! What the WAL holds beyond redb's checkpoint, in memory: the effect of
//! the logged writes not yet checkpointed, as a [`Layer`] over what redb
//! holds. Reads compose redb, the layer being checkpointed (if any) and the
//! active layer, in that order.

use std::collections::VecDeque;

use raft_core::types::{Entry, HardState, SnapshotMeta};

/// The effect of consecutive logged writes on the log below them.
///
/// Invariant: the entries of `tail` are consecutive, and when `tail` is not
/// empty its first index is at least `base_limit`.
#[derive(Debug)]
pub(crate) struct Layer {
    /// Entries below this layer (in redb or an older layer) at or after this
    /// index are discarded; `u64::MAX` when the layer discards nothing.
    pub(crate) base_limit: u64,
    /// A snapshot installed by one of the writes: it replaced the whole log.
    pub(crate) install: Option<SnapshotMeta>,
    /// The entries the writes appended, consecutive.
    pub(crate) tail: VecDeque<Entry>,
    /// The newest hard state written.
    pub(crate) hard_state: Option<HardState>,
    /// The sequence number of the last record applied (0: none).
    pub(crate) last_seq: u64,
    /// Records applied.
    pub(crate) records: u64,
    /// Approximate memory held by `tail` (`Entry::size_bytes` summed).
    pub(crate) bytes: u64,
}

impl Default for Layer {
    fn default() -> Self {
        Layer {
            base_limit: u64::MAX,
            install: None,
            tail: VecDeque::new(),
            hard_state: None,
            last_seq: 0,
            records: 0,
            bytes: 0,
        }
    }
}

impl Layer {
    /// Whether no write was applied.
    pub(crate) fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Applies one write (already checked to leave no gap) logged as `seq`.
    pub(crate) fn apply(
        &mut self,
        seq: u64,
        install: Option<SnapshotMeta>,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) {
        if let Some(meta) = install {
            self.install = Some(meta);
            self.base_limit = 0;
            self.tail.clear();
            self.bytes = 0;
        }
        if let Some(first) = entries.first().map(|entry| entry.index.get()) {
            match self.tail.front().map(|entry| entry.index.get()) {
                Some(front) if first >= front => {
                    let keep = (first - front) as usize;
                    for removed in self.tail.drain(keep.min(self.tail.len())..) {
                        self.bytes -= removed.size_bytes();
                    }
                }
                _ => {
                    self.tail.clear();
                    self.bytes = 0;
                    self.base_limit = self.base_limit.min(first);
                }
            }
            for entry in entries {
                self.bytes += entry.size_bytes();
                self.tail.push_back(entry);
            }
        }
        if hard_state.is_some() {
            self.hard_state = hard_state;
        }
        self.last_seq = seq;
        self.records += 1;
    }

    /// The last index of `tail` that a layer above with `limit` leaves
    /// visible.
    fn last_visible(&self, limit: u64) -> Option<u64> {
        let front = self.tail.front()?.index.get();
        let back = self.tail.back()?.index.get();
        (front < limit).then(|| back.min(limit - 1))
    }
}

/// What redb holds, as far as the write path needs it (kept in memory so
/// that a write never reads redb).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Base {
    /// redb's last stored entry.
    pub(crate) last: Option<u64>,
    /// redb's snapshot index (0: none).
    pub(crate) snapshot_index: u64,
}

/// The layers above redb, oldest first: the one being checkpointed, then
/// the active one.
pub(crate) struct Layers<'a> {
    pub(crate) frozen: Option<&'a Layer>,
    pub(crate) active: &'a Layer,
}

impl Layers<'_> {
    fn iter(&self) -> impl DoubleEndedIterator<Item = &Layer> {
        self.frozen.into_iter().chain(std::iter::once(self.active))
    }

    /// redb's entries at or after this index are hidden by a layer.
    pub(crate) fn redb_limit(&self) -> u64 {
        self.iter().map(|layer| layer.base_limit).min().unwrap_or(u64::MAX)
    }

    /// The newest installed snapshot among the layers.
    pub(crate) fn install(&self) -> Option<&SnapshotMeta> {
        self.iter().rev().find_map(|layer| layer.install.as_ref())
    }

    /// The newest hard state among the layers.
    pub(crate) fn hard_state(&self) -> Option<HardState> {
        self.iter().rev().find_map(|layer| layer.hard_state)
    }

    /// The index the next appended entry must not go beyond (the log's end
    /// plus one), given what redb holds.
    pub(crate) fn next_index(&self, base: &Base) -> u64 {
        let snapshot_index = self.install().map_or(base.snapshot_index, |meta| meta.last_index.get());
        let active_last = self.active.last_visible(u64::MAX);
        let frozen_last = self.frozen.and_then(|frozen| frozen.last_visible(self.active.base_limit));
        let redb_limit = self.redb_limit();
        let redb_last = base.last.filter(|last| *last < redb_limit);
        let last = active_last.or(frozen_last).or(redb_last).unwrap_or(0);
        last.max(snapshot_index).saturating_add(1)
    }

    /// The layers' visible entries in `from ..= to`, in order, and the
    /// first visible layer entry's index (whether or not it is in range).
    pub(crate) fn visible_entries(&self, from: u64, to: u64) -> (Option<u64>, Vec<Entry>) {
        let mut first = None;
        let mut out = Vec::new();
        let mut add = |layer: &Layer, limit: u64| {
            for entry in &layer.tail {
                let index = entry.index.get();
                if index >= limit {
                    break;
                }
                first.get_or_insert(index);
                if index >= from && index <= to {
                    out.push(entry.clone());
                }
            }
        };
        if let Some(frozen) = self.frozen {
            add(frozen, self.active.base_limit);
        }
        add(self.active, u64::MAX);
        (first, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::types::{EntryPayload, LogIndex, Term};

    fn entry(index: u64, term: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Blank }
    }

    fn indexes(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries.iter().map(|entry| (entry.index.get(), entry.term.0)).collect()
    }

    #[test]
    fn a_truncating_write_hides_the_entries_below_and_replaces_its_own() {
        let base = Base { last: Some(10), snapshot_index: 0 };
        let mut frozen = Layer::default();
        frozen.apply(1, None, (11..=15).map(|index| entry(index, 1)).collect(), None);
        let mut active = Layer::default();
        active.apply(2, None, vec![entry(13, 2), entry(14, 2)], None);
        active.apply(3, None, vec![entry(14, 3)], None);
        let layers = Layers { frozen: Some(&frozen), active: &active };
        assert_eq!(layers.next_index(&base), 15);
        assert_eq!(layers.redb_limit(), 11);
        let (first, visible) = layers.visible_entries(0, u64::MAX);
        assert_eq!(first, Some(11));
        assert_eq!(indexes(&visible), vec![(11, 1), (12, 1), (13, 2), (14, 3)]);
        active.apply(4, None, vec![entry(9, 4)], None);
        let layers = Layers { frozen: Some(&frozen), active: &active };
        assert_eq!(layers.redb_limit(), 9);
        assert_eq!(indexes(&layers.visible_entries(0, u64::MAX).1), vec![(9, 4)]);
        assert_eq!(layers.next_index(&base), 10);
    }
}
