//! The replicated state itself and the deterministic rules that change it:
//! keys with versions, the deduplication table and the node directory.
//!
//! Nothing here does I/O or reads a clock, and only ordered collections are
//! used, so every replica that applies the same entries reaches the same
//! state and gives the same answers.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use bytes::Bytes;
use raft_core::types::{ClientRequestId, Entry, EntryPayload, NodeId};

use super::types::{
    Directory, KvAnswer, KvCommand, KvOutcome, KvQuery, KvResponse, Precondition, Versioned,
    MAX_CLIENT_URL_BYTES, MAX_KEY_BYTES, MAX_LIST_LIMIT, MAX_VALUE_BYTES,
};

/// What the state remembers of one client's latest request (Raft
/// dissertation §6.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DedupRecord {
    /// The latest sequence number applied for the client.
    pub(crate) sequence: u64,
    /// What applying it returned; a retry gets exactly this.
    pub(crate) outcome: KvOutcome,
    /// The index of the entry that applied it.
    pub(crate) index: u64,
    /// That entry's term.
    pub(crate) term: u64,
    /// The index of the last entry that used the record (applied it or was
    /// answered from it): the eviction order.
    pub(crate) last_used_index: u64,
}

/// The deduplication table: client id -> latest request, with the
/// least-recently-used order kept beside it so eviction is O(log n).
///
/// The table is bounded by `KvLimits::max_dedup_clients`. Eviction depends
/// only on replicated data (the index each client last used), so every
/// replica with the same limit evicts the same client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DedupTable {
    clients: BTreeMap<u64, DedupRecord>,
    /// `(last_used_index, client)` for every client, oldest first.
    by_last_use: BTreeSet<(u64, u64)>,
}

impl DedupTable {
    pub(crate) fn len(&self) -> usize {
        self.clients.len()
    }

    pub(crate) fn get(&self, client: u64) -> Option<&DedupRecord> {
        self.clients.get(&client)
    }

    pub(crate) fn records(&self) -> &BTreeMap<u64, DedupRecord> {
        &self.clients
    }

    /// Records that `client` was used by the entry at `index`.
    fn touch(&mut self, client: u64, index: u64) {
        if let Some(record) = self.clients.get_mut(&client) {
            self.by_last_use.remove(&(record.last_used_index, client));
            record.last_used_index = index;
            self.by_last_use.insert((index, client));
        }
    }

    /// Inserts or replaces `client`'s record, evicting the least recently
    /// used clients first if the table is full. With `max_clients` zero the
    /// table remembers nothing.
    pub(crate) fn remember(&mut self, client: u64, record: DedupRecord, max_clients: usize) {
        if let Some(old) = self.clients.remove(&client) {
            self.by_last_use.remove(&(old.last_used_index, client));
        } else {
            self.evict_down_to(max_clients.saturating_sub(1));
            if max_clients == 0 {
                return;
            }
        }
        self.by_last_use.insert((record.last_used_index, client));
        self.clients.insert(client, record);
    }

    /// Evicts least recently used clients until at most `max_clients` remain;
    /// returns how many were evicted.
    pub(crate) fn evict_down_to(&mut self, max_clients: usize) -> usize {
        let mut evicted = 0;
        while self.clients.len() > max_clients {
            let Some((_, client)) = self.by_last_use.pop_first() else {
                break;
            };
            self.clients.remove(&client);
            evicted += 1;
        }
        evicted
    }
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KvState {
    /// The index of the last applied entry.
    pub(crate) applied_index: u64,
    /// Keys (UTF-8, held as `Bytes` so that cloning the map for a snapshot
    /// copies no key or value bytes) with their values and versions.
    pub(crate) data: BTreeMap<Bytes, Versioned>,
    pub(crate) dedup: DedupTable,
    pub(crate) directory: Directory,
    /// The sum of every value's length, kept as keys change.
    pub(crate) value_bytes: u64,
}

impl KvState {
    /// Applies one entry whose index the caller checked to follow
    /// `applied_index`; returns the outcome and whether the directory changed.
    pub(crate) fn apply_entry(&mut self, entry: &Entry, max_dedup_clients: usize) -> (KvResponse, bool) {
        let index = entry.index.get();
        let term = entry.term.get();
        self.applied_index = index;
        let here = |(outcome, changed)| (KvResponse { index, term, outcome }, changed);
        match &entry.payload {
            EntryPayload::Command { client, data } => match client {
                None => here(self.apply_bytes(data, index)),
                Some(request) => self.apply_deduplicated(*request, data, index, term, max_dedup_clients),
            },
            // Blank and membership entries change nothing here; the
            // configuration is the engine's business.
            _ => here((KvOutcome::Done, false)),
        }
    }

    fn apply_deduplicated(
        &mut self,
        request: ClientRequestId,
        data: &[u8],
        index: u64,
        term: u64,
        max_dedup_clients: usize,
    ) -> (KvResponse, bool) {
        let ClientRequestId { client, sequence } = request;
        if let Some(record) = self.dedup.get(client) {
            if sequence == record.sequence {
                let response =
                    KvResponse { index: record.index, term: record.term, outcome: record.outcome.clone() };
                self.dedup.touch(client, index);
                return (response, false);
            }
            if sequence < record.sequence {
                let reason = format!(
                    "request {sequence} of client {client} is older than its latest applied request \
                     {latest}; it was superseded and is not applied",
                    latest = record.sequence,
                );
                return (KvResponse { index, term, outcome: KvOutcome::Rejected { reason } }, false);
            }
        }
        let (outcome, directory_changed) = self.apply_bytes(data, index);
        // A rejected command changed nothing, so nothing is remembered either:
        // a retry is rejected again for the same reason.
        if !matches!(outcome, KvOutcome::Rejected { .. }) {
            let record =
                DedupRecord { sequence, outcome: outcome.clone(), index, term, last_used_index: index };
            self.dedup.remember(client, record, max_dedup_clients);
        }
        (KvResponse { index, term, outcome }, directory_changed)
    }

    fn apply_bytes(&mut self, data: &[u8], index: u64) -> (KvOutcome, bool) {
        match KvCommand::decode(data) {
            Ok(command) => self.apply_command(command, index),
            Err(error) => (KvOutcome::Rejected { reason: error.to_string() }, false),
        }
    }

    fn apply_command(&mut self, command: KvCommand, index: u64) -> (KvOutcome, bool) {
        match command {
            KvCommand::Put { key, value, precondition } => {
                (self.put(key, value, &precondition, index), false)
            }
            KvCommand::Delete { key, precondition } => (self.delete(&key, &precondition), false),
            KvCommand::SetNode { id, addresses } => {
                if id == NodeId::NONE {
                    let reason = "node id 0 is reserved and cannot be in the directory".to_string();
                    return (KvOutcome::Rejected { reason }, false);
                }
                if addresses.client.len() > MAX_CLIENT_URL_BYTES {
                    let reason = format!(
                        "the client URL is {} bytes, over the limit of {MAX_CLIENT_URL_BYTES}",
                        addresses.client.len()
                    );
                    return (KvOutcome::Rejected { reason }, false);
                }
                let changed = self.directory.get(&id) != Some(&addresses);
                self.directory.insert(id, addresses);
                (KvOutcome::Done, changed)
            }
            KvCommand::RemoveNode { id } => {
                let changed = self.directory.remove(&id).is_some();
                (KvOutcome::Done, changed)
            }
        }
    }

    fn current_version(&self, key: &[u8]) -> Option<u64> {
        self.data.get(key).map(|versioned| versioned.version)
    }

    fn put(&mut self, key: String, value: Bytes, precondition: &Precondition, index: u64) -> KvOutcome {
        if key.len() > MAX_KEY_BYTES {
            let reason = format!("the key is {} bytes, over the limit of {MAX_KEY_BYTES}", key.len());
            return KvOutcome::Rejected { reason };
        }
        if value.len() > MAX_VALUE_BYTES {
            let reason = format!("the value is {} bytes, over the limit of {MAX_VALUE_BYTES}", value.len());
            return KvOutcome::Rejected { reason };
        }
        let current = self.current_version(key.as_bytes());
        if !holds(precondition, current) {
            return KvOutcome::PreconditionFailed { current };
        }
        self.value_bytes += value.len() as u64;
        let key = Bytes::from(key.into_bytes());
        if let Some(old) = self.data.insert(key, Versioned { value, version: index }) {
            self.value_bytes -= old.value.len() as u64;
        }
        KvOutcome::Written { version: index }
    }

    fn delete(&mut self, key: &str, precondition: &Precondition) -> KvOutcome {
        let current = self.current_version(key.as_bytes());
        if !holds(precondition, current) {
            return KvOutcome::PreconditionFailed { current };
        }
        match self.data.remove(key.as_bytes()) {
            Some(old) => {
                self.value_bytes -= old.value.len() as u64;
                KvOutcome::Deleted { existed: true }
            }
            None => KvOutcome::Deleted { existed: false },
        }
    }

    /// Answers a query against the state as it is.
    pub(crate) fn answer(&self, query: KvQuery) -> KvAnswer {
        match query {
            KvQuery::Get { key } => KvAnswer::Value(self.data.get(key.as_bytes()).cloned()),
            KvQuery::List { prefix, limit } => self.list(&prefix, limit),
            KvQuery::Directory => KvAnswer::Directory(self.directory.clone()),
            KvQuery::Digest => KvAnswer::Digest {
                applied_index: self.applied_index,
                keys: self.data.len() as u64,
                hash: self.hash(),
            },
        }
    }

    fn list(&self, prefix: &str, limit: usize) -> KvAnswer {
        let limit = limit.min(MAX_LIST_LIMIT);
        let prefix = prefix.as_bytes();
        let mut matching = self
            .data
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix));
        let keys = matching
            .by_ref()
            .take(limit)
            // Keys entered as `String`s or were checked to be UTF-8 when a
            // snapshot was restored, so the lossy conversion never replaces
            // anything; it only avoids a panic path.
            .map(|(key, versioned)| (String::from_utf8_lossy(key).into_owned(), versioned.version))
            .collect();
        let more = matching.next().is_some();
        KvAnswer::Keys { keys, more }
    }

    /// FNV-1a-64 over every key in byte order, each as: the key's length (u64
    /// little-endian), the key, the version (u64 LE), the value's length
    /// (u64 LE), the value. The length prefixes keep `("ab", "c")` and
    /// `("a", "bc")` apart. It walks the whole key space, so it costs O(total
    /// bytes); it is meant for tests and operators comparing replicas.
    pub(crate) fn hash(&self) -> u64 {
        let mut hash = Fnv1a64::new();
        for (key, versioned) in &self.data {
            hash.write(&(key.len() as u64).to_le_bytes());
            hash.write(key);
            hash.write(&versioned.version.to_le_bytes());
            hash.write(&(versioned.value.len() as u64).to_le_bytes());
            hash.write(&versioned.value);
        }
        hash.finish()
    }
}

/// Whether `precondition` holds for a key whose current version is `current`.
fn holds(precondition: &Precondition, current: Option<u64>) -> bool {
    match precondition {
        Precondition::Always => true,
        Precondition::VersionIs(expected) => current == Some(*expected),
        Precondition::Absent => current.is_none(),
    }
}

/// The 64-bit FNV-1a hash: tiny, stable across releases and platforms, and
/// good enough to tell replicas apart (it is not meant to resist an attacker).
struct Fnv1a64(u64);

impl Fnv1a64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Fnv1a64(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Fnv1a64;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        let hash = |bytes: &[u8]| {
            let mut hash = Fnv1a64::new();
            hash.write(bytes);
            hash.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
