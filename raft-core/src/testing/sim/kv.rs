//! The replicated key-value state machine the simulated clients use.
//!
//! Keys and values are `u64`. Each key remembers its version: the index of
//! the entry that last wrote it. Commands carry an optional
//! [`ClientRequestId`]; the dedup table remembers each client's latest
//! request and its result, so a retried request returns the first result
//! instead of applying twice. The table is part of the snapshot, so the
//! deduplication survives snapshot transfer and restarts.
//!
//! Commands and snapshots use a tiny hand-written little-endian encoding:
//! the engine's types are codec-free and the simulator needs no codec crate.
//! Decoding never panics: a malformed command is applied as a no-op with the
//! result [`CommandResult::Invalid`], a malformed snapshot is an error.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::types::{ClientRequestId, Entry, EntryPayload, LogIndex};

/// A command of the key-value store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: u64,
        /// The new value.
        value: u64,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: u64,
    },
    /// If `key` holds `expected` (`None`: absent), set it to `new` (`None`:
    /// delete it).
    Cas {
        /// The key.
        key: u64,
        /// The value the key must hold.
        expected: Option<u64>,
        /// The value to set.
        new: Option<u64>,
    },
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_CAS: u8 = 3;

impl Command {
    /// The key the command touches.
    pub fn key(&self) -> u64 {
        match *self {
            Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => key,
        }
    }

    /// Encodes the command for an entry's payload.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(27);
        match *self {
            Command::Put { key, value } => {
                out.push(TAG_PUT);
                out.extend_from_slice(&key.to_le_bytes());
                out.extend_from_slice(&value.to_le_bytes());
            }
            Command::Delete { key } => {
                out.push(TAG_DELETE);
                out.extend_from_slice(&key.to_le_bytes());
            }
            Command::Cas { key, expected, new } => {
                out.push(TAG_CAS);
                out.extend_from_slice(&key.to_le_bytes());
                put_optional(&mut out, expected);
                put_optional(&mut out, new);
            }
        }
        Bytes::from(out)
    }

    /// Decodes a command written by [`Command::encode`]; `None` if malformed.
    pub fn decode(data: &[u8]) -> Option<Command> {
        let mut reader = Reader::new(data);
        let command = match reader.u8()? {
            TAG_PUT => Command::Put { key: reader.u64()?, value: reader.u64()? },
            TAG_DELETE => Command::Delete { key: reader.u64()? },
            TAG_CAS => {
                Command::Cas { key: reader.u64()?, expected: reader.optional()?, new: reader.optional()? }
            }
            _ => return None,
        };
        reader.is_empty().then_some(command)
    }
}

/// What applying a command returned to its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandResult {
    /// A put was applied.
    Written,
    /// A delete was applied.
    Deleted,
    /// A compare-and-set was applied; whether it matched.
    Cas(bool),
    /// The request was an old retry of a request the client has since moved
    /// past: nothing was applied and nobody waits for this answer.
    Stale,
    /// The command could not be decoded: nothing was applied.
    Invalid,
}

impl CommandResult {
    fn code(self) -> u8 {
        match self {
            CommandResult::Written => 1,
            CommandResult::Deleted => 2,
            CommandResult::Cas(false) => 3,
            CommandResult::Cas(true) => 4,
            CommandResult::Stale => 5,
            CommandResult::Invalid => 6,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => CommandResult::Written,
            2 => CommandResult::Deleted,
            3 => CommandResult::Cas(false),
            4 => CommandResult::Cas(true),
            5 => CommandResult::Stale,
            6 => CommandResult::Invalid,
            _ => return None,
        })
    }
}

/// One key's value and version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: u64,
    /// The index of the entry that last wrote it.
    pub version: LogIndex,
}

/// A client's latest request and its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupRecord {
    /// The request's sequence number.
    pub sequence: u64,
    /// What it returned.
    pub result: CommandResult,
}

/// The key-value state machine of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    data: BTreeMap<u64, Versioned>,
    dedup: BTreeMap<u64, DedupRecord>,
    applied: LogIndex,
    /// An order-independent hash of `data` and `dedup`, kept up to date on
    /// every change, so replicas can be compared after every entry cheaply.
    digest: u64,
}

/// Why snapshot data could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed key-value snapshot: {0}")]
pub struct SnapshotDecodeError(pub &'static str);

const SNAPSHOT_MAGIC: u8 = 0x5A;

impl KvStore {
    /// The value of `key`, if any.
    pub fn get(&self, key: u64) -> Option<u64> {
        self.data.get(&key).map(|v| v.value)
    }

    /// The value and version of `key`, if any.
    pub fn get_versioned(&self, key: u64) -> Option<Versioned> {
        self.data.get(&key).copied()
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// The digest of the state (keys, values, versions, dedup table).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The latest request of `client` that the store has applied.
    pub fn dedup_record(&self, client: u64) -> Option<DedupRecord> {
        self.dedup.get(&client).copied()
    }

    /// Applies one committed entry (which must follow the last applied one).
    /// Returns the result for its client, for command entries.
    pub fn apply(&mut self, entry: &Entry) -> Option<CommandResult> {
        self.applied = entry.index;
        let EntryPayload::Command { client, data } = &entry.payload else {
            return None;
        };
        let Some(command) = Command::decode(data) else {
            return Some(CommandResult::Invalid);
        };
        let Some(request) = client else {
            return Some(self.execute(command, entry.index));
        };
        if let Some(record) = self.dedup.get(&request.client).copied() {
            if request.sequence == record.sequence {
                return Some(record.result);
            }
            if request.sequence < record.sequence {
                return Some(CommandResult::Stale);
            }
        }
        let result = self.execute(command, entry.index);
        self.record_request(*request, result);
        Some(result)
    }

    fn record_request(&mut self, request: ClientRequestId, result: CommandResult) {
        let record = DedupRecord { sequence: request.sequence, result };
        if let Some(old) = self.dedup.insert(request.client, record) {
            self.digest ^= dedup_hash(request.client, old);
        }
        self.digest ^= dedup_hash(request.client, record);
    }

    fn execute(&mut self, command: Command, index: LogIndex) -> CommandResult {
        match command {
            Command::Put { key, value } => {
                self.set(key, Some(value), index);
                CommandResult::Written
            }
            Command::Delete { key } => {
                self.set(key, None, index);
                CommandResult::Deleted
            }
            Command::Cas { key, expected, new } => {
                let matched = self.get(key) == expected;
                if matched {
                    self.set(key, new, index);
                }
                CommandResult::Cas(matched)
            }
        }
    }

    fn set(&mut self, key: u64, value: Option<u64>, index: LogIndex) {
        if let Some(old) = self.data.remove(&key) {
            self.digest ^= key_hash(key, old);
        }
        if let Some(value) = value {
            let new = Versioned { value, version: index };
            self.data.insert(key, new);
            self.digest ^= key_hash(key, new);
        }
    }

    /// Encodes the whole state, applied index included.
    pub fn encode_snapshot(&self) -> Bytes {
        let mut out = Vec::with_capacity(17 + 24 * self.data.len() + 17 * self.dedup.len());
        out.push(SNAPSHOT_MAGIC);
        out.extend_from_slice(&self.applied.0.to_le_bytes());
        out.extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        for (key, versioned) in &self.data {
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&versioned.value.to_le_bytes());
            out.extend_from_slice(&versioned.version.0.to_le_bytes());
        }
        out.extend_from_slice(&(self.dedup.len() as u64).to_le_bytes());
        for (client, record) in &self.dedup {
            out.extend_from_slice(&client.to_le_bytes());
            out.extend_from_slice(&record.sequence.to_le_bytes());
            out.push(record.result.code());
        }
        Bytes::from(out)
    }

    /// Decodes a state written by [`KvStore::encode_snapshot`].
    pub fn decode_snapshot(data: &[u8]) -> Result<KvStore, SnapshotDecodeError> {
        let truncated = SnapshotDecodeError("truncated");
        let mut reader = Reader::new(data);
        if reader.u8() != Some(SNAPSHOT_MAGIC) {
            return Err(SnapshotDecodeError("bad magic byte"));
        }
        let mut store =
            KvStore { applied: LogIndex(reader.u64().ok_or(truncated.clone())?), ..KvStore::default() };
        let keys = reader.u64().ok_or(truncated.clone())?;
        for _ in 0..keys {
            let key = reader.u64().ok_or(truncated.clone())?;
            let value = reader.u64().ok_or(truncated.clone())?;
            let version = LogIndex(reader.u64().ok_or(truncated.clone())?);
            store.set(key, Some(value), version);
        }
        let clients = reader.u64().ok_or(truncated.clone())?;
        for _ in 0..clients {
            let client = reader.u64().ok_or(truncated.clone())?;
            let sequence = reader.u64().ok_or(truncated.clone())?;
            let result =
                reader.u8().and_then(CommandResult::from_code).ok_or(SnapshotDecodeError("bad result"))?;
            store.record_request(ClientRequestId { client, sequence }, result);
        }
        if !reader.is_empty() {
            return Err(SnapshotDecodeError("trailing bytes"));
        }
        Ok(store)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The starting value of [`hash_word`] chains.
pub(crate) const HASH_START: u64 = 0x243F_6A88_85A3_08D3;

/// Mixes one number into a running hash (not cryptographic; for digests).
pub(crate) fn hash_word(hash: u64, word: u64) -> u64 {
    mix(hash ^ word.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Hashes a sequence of numbers into one.
pub(crate) fn hash_words(words: &[u64]) -> u64 {
    words.iter().fold(HASH_START, |hash, word| hash_word(hash, *word))
}

fn key_hash(key: u64, versioned: Versioned) -> u64 {
    hash_words(&[1, key, versioned.value, versioned.version.0])
}

fn dedup_hash(client: u64, record: DedupRecord) -> u64 {
    hash_words(&[2, client, record.sequence, u64::from(record.result.code())])
}

fn put_optional(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(value) => {
            out.push(1);
            out.extend_from_slice(&value.to_le_bytes());
        }
        None => out.push(0),
    }
}

/// Reads little-endian fields from a byte slice, never panicking.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { rest: data }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(*first)
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.rest.split_at_checked(8)?;
        self.rest = rest;
        Some(u64::from_le_bytes(head.try_into().ok()?))
    }

    fn optional(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u64()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Term;

    fn command_entry(index: u64, client: Option<(u64, u64)>, command: Command) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Command {
                client: client.map(|(client, sequence)| ClientRequestId { client, sequence }),
                data: command.encode(),
            },
        }
    }

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        let commands = [
            Command::Put { key: 1, value: 2 },
            Command::Delete { key: 3 },
            Command::Cas { key: 4, expected: None, new: Some(5) },
            Command::Cas { key: 4, expected: Some(5), new: None },
        ];
        for command in commands {
            assert_eq!(Command::decode(&command.encode()), Some(command));
        }
        assert_eq!(Command::decode(&[]), None);
        assert_eq!(Command::decode(&[TAG_PUT, 1, 2]), None);
        assert_eq!(Command::decode(&[9; 17]), None);
    }

    #[test]
    fn retries_return_the_first_result() {
        let mut kv = KvStore::default();
        let cas = Command::Cas { key: 1, expected: None, new: Some(7) };
        assert_eq!(kv.apply(&command_entry(1, Some((1, 1)), cas)), Some(CommandResult::Cas(true)));
        // The retry would fail if applied again; dedup returns the first result.
        assert_eq!(kv.apply(&command_entry(2, Some((1, 1)), cas)), Some(CommandResult::Cas(true)));
        assert_eq!(kv.get_versioned(1), Some(Versioned { value: 7, version: LogIndex(1) }));
        let put = Command::Put { key: 1, value: 8 };
        assert_eq!(kv.apply(&command_entry(3, Some((1, 2)), put)), Some(CommandResult::Written));
        assert_eq!(kv.apply(&command_entry(4, Some((1, 1)), cas)), Some(CommandResult::Stale));
        assert_eq!(kv.get(1), Some(8));
    }

    #[test]
    fn snapshots_round_trip_with_the_same_digest() {
        let mut kv = KvStore::default();
        kv.apply(&command_entry(1, Some((1, 1)), Command::Put { key: 1, value: 10 }));
        kv.apply(&command_entry(2, None, Command::Put { key: 2, value: 20 }));
        kv.apply(&command_entry(3, Some((2, 1)), Command::Delete { key: 2 }));
        let restored = KvStore::decode_snapshot(&kv.encode_snapshot()).unwrap();
        assert_eq!(restored, kv);
        assert_eq!(restored.digest(), kv.digest());
        assert!(KvStore::decode_snapshot(&kv.encode_snapshot()[..10]).is_err());
        assert!(KvStore::decode_snapshot(&[]).is_err());
    }
}
