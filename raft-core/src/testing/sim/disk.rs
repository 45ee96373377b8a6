//! A simulated disk with a volatile write buffer.
//!
//! Everything a `Ready` asks to persist goes to a buffer first. A later
//! [`SimDisk::sync`] makes the buffered writes durable, in order, and only
//! then may the node acknowledge them with `Engine::persisted`. A crash
//! keeps a prefix of the buffered writes (writes can reach the media before
//! their sync returns) and loses the rest. Snapshots the node builds itself
//! are written durably at once, like a snapshot store that syncs its file
//! before reporting success.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::protocol::{PersistId, Ready, RestoredState, SnapshotChunkWrite};
use crate::types::{Entry, HardState, LogIndex, SnapshotMeta, Term};

/// One `Ready`'s durable part, waiting for a sync.
#[derive(Clone, Debug, Default)]
pub struct PendingWrite {
    /// Chunks of a snapshot being received.
    pub chunks: Vec<SnapshotChunkWrite>,
    /// A completely received snapshot to install.
    pub install: Option<SnapshotMeta>,
    /// Entries to append (replacing any stored suffix from the first one).
    pub entries: Vec<Entry>,
    /// Hard state to store.
    pub hard_state: Option<HardState>,
    /// Entries up to here may be dropped.
    pub compact_to: Option<LogIndex>,
    /// The id to acknowledge once durable.
    pub persist_id: Option<PersistId>,
}

impl PendingWrite {
    /// The durable part of `ready`, or `None` if it has none.
    pub fn from_ready(ready: &Ready) -> Option<PendingWrite> {
        let write = PendingWrite {
            chunks: ready.snapshot_chunks.clone(),
            install: ready.install_snapshot.clone(),
            entries: ready.entries.clone(),
            hard_state: ready.hard_state,
            compact_to: ready.compact_to,
            persist_id: ready.persist_id,
        };
        let empty = write.chunks.is_empty()
            && write.install.is_none()
            && write.entries.is_empty()
            && write.hard_state.is_none()
            && write.compact_to.is_none()
            && write.persist_id.is_none();
        (!empty).then_some(write)
    }
}

/// What survives a crash.
#[derive(Clone, Debug, Default)]
pub struct DurableState {
    /// The stored hard state.
    pub hard_state: HardState,
    /// Entries, consecutive, possibly overlapping the snapshot.
    pub entries: Vec<Entry>,
    /// The current snapshot and its bytes.
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
    /// A snapshot being received: its metadata and the bytes so far.
    pub receiving: Option<(SnapshotMeta, Vec<u8>)>,
}

/// What one sync made durable.
#[derive(Clone, Debug, Default)]
pub struct SyncOutcome {
    /// The newest persist id among the synced writes.
    pub persisted: Option<PersistId>,
    /// The newest snapshot installed by the synced writes.
    pub installed: Option<SnapshotMeta>,
    /// How many writes were synced.
    pub writes: usize,
}

/// One node's disk: durable state plus a buffer of unsynced writes.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    durable: DurableState,
    pending: VecDeque<PendingWrite>,
}

impl SimDisk {
    /// The durable state.
    pub fn durable(&self) -> &DurableState {
        &self.durable
    }

    /// Number of writes waiting for a sync.
    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }

    /// Buffers a write.
    pub fn write(&mut self, write: PendingWrite) {
        self.pending.push_back(write);
    }

    /// Makes every buffered write durable, in order. Fails if a write breaks
    /// the storage contract the engine documents on `Ready`.
    pub fn sync(&mut self) -> Result<SyncOutcome, String> {
        let mut outcome = SyncOutcome::default();
        while let Some(write) = self.pending.pop_front() {
            outcome.writes += 1;
            if let Some(id) = write.persist_id {
                outcome.persisted = Some(id);
            }
            if write.install.is_some() {
                outcome.installed.clone_from(&write.install);
            }
            self.apply(write)?;
        }
        Ok(outcome)
    }

    /// Crashes the disk: the first `survivors` buffered writes reach the media
    /// (without anyone being told), the rest are lost.
    pub fn crash(&mut self, survivors: usize) -> Result<(), String> {
        let lost = self.pending.split_off(survivors.min(self.pending.len()));
        drop(lost);
        while let Some(write) = self.pending.pop_front() {
            self.apply(write)?;
        }
        Ok(())
    }

    fn apply(&mut self, write: PendingWrite) -> Result<(), String> {
        for chunk in write.chunks {
            self.write_chunk(chunk)?;
        }
        if let Some(meta) = write.install {
            let data = match self.durable.receiving.take() {
                Some((received, bytes)) if received == meta => Bytes::from(bytes),
                _ => {
                    return Err(format!(
                        "install of snapshot at {} without its received bytes",
                        meta.last_index
                    ))
                }
            };
            self.durable.snapshot = Some((meta, data));
            self.durable.entries.clear();
        }
        if let Some(first) = write.entries.first() {
            let first_index = first.index;
            self.durable.entries.retain(|e| e.index < first_index);
            if let Some(last) = self.durable.entries.last() {
                if last.index.next() != first_index {
                    return Err(format!("append at {first_index} leaves a gap after {}", last.index));
                }
            }
            self.durable.entries.extend(write.entries);
        }
        if let Some(hard_state) = write.hard_state {
            self.durable.hard_state = hard_state;
        }
        if let Some(compact_to) = write.compact_to {
            let covered =
                self.durable.snapshot.as_ref().is_some_and(|(meta, _)| meta.last_index >= compact_to);
            if !covered {
                return Err(format!("compaction to {compact_to} not covered by a durable snapshot"));
            }
            self.durable.entries.retain(|e| e.index > compact_to);
        }
        Ok(())
    }

    fn write_chunk(&mut self, chunk: SnapshotChunkWrite) -> Result<(), String> {
        if chunk.offset == 0 {
            self.durable.receiving = Some((chunk.snapshot.clone(), Vec::new()));
        }
        let Some((meta, bytes)) = self.durable.receiving.as_mut() else {
            return Err(format!("snapshot chunk at offset {} with no snapshot being received", chunk.offset));
        };
        if *meta != chunk.snapshot || bytes.len() as u64 != chunk.offset {
            return Err(format!(
                "snapshot chunk at offset {} does not continue the {} bytes received",
                chunk.offset,
                bytes.len()
            ));
        }
        bytes.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// Stores a snapshot the node built itself, durably at once.
    pub fn store_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        self.durable.snapshot = Some((meta, data));
    }

    /// The current durable snapshot.
    pub fn snapshot(&self) -> Option<&(SnapshotMeta, Bytes)> {
        self.durable.snapshot.as_ref()
    }

    /// The state a restarted engine reads back.
    pub fn restored_state(&self) -> RestoredState {
        RestoredState {
            hard_state: self.durable.hard_state,
            snapshot: self.durable.snapshot.as_ref().map(|(meta, _)| meta.clone()),
            entries: self.durable.entries.clone(),
        }
    }

    /// Whether the durable state holds the entry at `index` with `term`, or
    /// a snapshot that covers `index`.
    pub fn durably_holds(&self, index: LogIndex, term: Term) -> bool {
        if let Some((meta, _)) = &self.durable.snapshot {
            if meta.last_index >= index {
                return true;
            }
        }
        if index == LogIndex(0) {
            return true;
        }
        let Some(first) = self.durable.entries.first() else {
            return false;
        };
        let Some(offset) = index.0.checked_sub(first.index.0) else {
            return false;
        };
        self.durable.entries.get(offset as usize).is_some_and(|e| e.term == term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Blank }
    }

    fn entries_write(entries: Vec<Entry>, id: u64) -> PendingWrite {
        PendingWrite { entries, persist_id: Some(PersistId(id)), ..PendingWrite::default() }
    }

    #[test]
    fn only_synced_writes_survive_a_crash() {
        let mut disk = SimDisk::default();
        disk.write(entries_write(vec![entry(1, 1), entry(2, 1)], 1));
        let outcome = disk.sync().unwrap();
        assert_eq!(outcome.persisted, Some(PersistId(1)));
        disk.write(entries_write(vec![entry(3, 1)], 2));
        disk.write(entries_write(vec![entry(2, 2)], 3));
        disk.crash(0).unwrap();
        assert_eq!(disk.durable().entries.len(), 2);
        assert!(disk.durably_holds(LogIndex(2), Term(1)));
        assert!(!disk.durably_holds(LogIndex(3), Term(1)));
    }

    #[test]
    fn a_crash_may_keep_a_prefix_and_appends_replace_suffixes() {
        let mut disk = SimDisk::default();
        disk.write(entries_write(vec![entry(1, 1), entry(2, 1), entry(3, 1)], 1));
        disk.write(entries_write(vec![entry(2, 2)], 2));
        disk.write(entries_write(vec![entry(3, 2)], 3));
        disk.crash(2).unwrap();
        let indexes: Vec<_> = disk.durable().entries.iter().map(|e| (e.index.0, e.term.0)).collect();
        assert_eq!(indexes, vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn snapshots_are_assembled_from_chunks() {
        let mut disk = SimDisk::default();
        let meta = SnapshotMeta { last_index: LogIndex(5), last_term: Term(1), ..SnapshotMeta::default() };
        let chunk = |offset: u64, data: &'static [u8], done| SnapshotChunkWrite {
            snapshot: meta.clone(),
            offset,
            data: Bytes::from_static(data),
            done,
        };
        disk.write(PendingWrite { chunks: vec![chunk(0, b"ab", false)], ..PendingWrite::default() });
        disk.write(PendingWrite {
            chunks: vec![chunk(2, b"c", true)],
            install: Some(meta.clone()),
            ..PendingWrite::default()
        });
        let outcome = disk.sync().unwrap();
        assert_eq!(outcome.installed.as_ref(), Some(&meta));
        assert_eq!(disk.snapshot().map(|(_, d)| d.clone()), Some(Bytes::from_static(b"abc")));
        let mut broken = SimDisk::default();
        broken.write(PendingWrite { chunks: vec![chunk(2, b"c", true)], ..PendingWrite::default() });
        assert!(broken.sync().is_err());
    }
}
