//! The replicated key-value state machine the simulated clients use.
//!
//! Keys and values are `u64`. Each key remembers its version: the index of
//! the entry that last wrote it. Commands carry an optional
//! [`ClientRequestId`]; the dedup table remembers each client's latest
//! request and its result, so a retried request returns the first result
//! instead of applying twice. The table is part of the snapshot, so the
//! deduplication survives snapshot transfer and restarts.
//!
//! Checkpoint entries ([`EntryPayload::Checkpoint`]) are carried out here
//! the way raft-core's runtime carries them out for any state machine (see
//! [`crate::runtime::checkpoints`]), so that the simulator checks them under
//! every fault: whether one succeeds is decided by the runtime's own
//! [`checkpoints::decide`] from the replicated catalog, with at most
//! [`MAX_CHECKPOINTS`] retained; a create keeps a copy of the keys at its
//! index, a rollback puts those keys back, a delete forgets the copy. Like
//! raft-node's state machine, a rollback restores the keys only: the dedup
//! table stays as it is, so a request takes effect at most once even across
//! a rollback (a retry of a request applied after the checkpoint gets its
//! first result; the rollback undid its effect). The runtime streams a
//! checkpoint to a store and restores it through the state machine's
//! snapshot; this model keeps the copy in memory, which is all the
//! simulator needs to check the replicated semantics. The catalog, with the
//! copies, is part of the snapshot, so a node that catches up by snapshot
//! has the checkpoints, and part of the digest, so replicas are compared on
//! it after every entry.
//!
//! Commands and snapshots use a tiny hand-written little-endian encoding:
//! the engine's types are codec-free and the simulator needs no codec crate.
//! Decoding never panics: a malformed command is applied as a no-op with the
//! result [`CommandResult::Invalid`], a malformed snapshot is an error.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::runtime::checkpoints::{self, CheckpointError, Decision};
use crate::testing::linearizability::CheckpointOutcome;
use crate::types::{CheckpointOp, ClientRequestId, Entry, EntryPayload, LogIndex};

/// The most checkpoints the simulated state machine retains (the runtime's
/// `max_count`), below the clients' pool of names so that creates also fail
/// for a full catalog.
pub const MAX_CHECKPOINTS: usize = 3;

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
    /// A checkpoint operation was carried out (or refused) like this.
    Checkpoint(CheckpointOutcome),
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
            CommandResult::Checkpoint(CheckpointOutcome::Done) => 7,
            CommandResult::Checkpoint(CheckpointOutcome::AlreadyExists) => 8,
            CommandResult::Checkpoint(CheckpointOutcome::NotFound) => 9,
            CommandResult::Checkpoint(CheckpointOutcome::TooMany) => 10,
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
            7 => CommandResult::Checkpoint(CheckpointOutcome::Done),
            8 => CommandResult::Checkpoint(CheckpointOutcome::AlreadyExists),
            9 => CommandResult::Checkpoint(CheckpointOutcome::NotFound),
            10 => CommandResult::Checkpoint(CheckpointOutcome::TooMany),
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

/// A retained checkpoint: the keys as they were at its index.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Checkpoint {
    index: LogIndex,
    data: BTreeMap<u64, Versioned>,
    /// The data's part of the digest, to restore it with the data.
    data_digest: u64,
}

/// Mistakes the simulated state machine can be told to make, to show that
/// the simulator's checks catch a state machine (or a runtime) that gets
/// checkpoints wrong. Every node makes the same ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KvBugs {
    /// A rollback reports success but leaves the keys as they are.
    pub rollback_keeps_data: bool,
    /// Snapshots leave the checkpoints out, so a node that installs one
    /// loses them.
    pub snapshot_drops_checkpoints: bool,
}

/// The key-value state machine of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    data: BTreeMap<u64, Versioned>,
    dedup: BTreeMap<u64, DedupRecord>,
    /// The retained checkpoints, by name.
    checkpoints: BTreeMap<String, Checkpoint>,
    applied: LogIndex,
    /// Order-independent hashes of `data`, `dedup` and `checkpoints`, kept
    /// up to date on every change, so replicas can be compared after every
    /// entry cheaply.
    data_digest: u64,
    dedup_digest: u64,
    catalog_digest: u64,
    /// Not part of the state: the same on every node.
    bugs: KvBugs,
}

/// Why snapshot data could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed key-value snapshot: {0}")]
pub struct SnapshotDecodeError(pub &'static str);

const SNAPSHOT_MAGIC: u8 = 0x5A;

impl KvStore {
    /// An empty store that makes the mistakes in `bugs`.
    pub fn new(bugs: KvBugs) -> Self {
        KvStore { bugs, ..KvStore::default() }
    }

    /// This store, made to make the mistakes in `bugs` from now on.
    pub fn with_bugs(self, bugs: KvBugs) -> Self {
        KvStore { bugs, ..self }
    }

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

    /// The digest of the whole state: keys, values, versions, the dedup
    /// table and the checkpoints.
    pub fn digest(&self) -> u64 {
        self.data_digest ^ self.dedup_digest ^ self.catalog_digest
    }

    /// The digest of the checkpoint catalog alone: each retained
    /// checkpoint's name, index and keys.
    pub fn catalog_digest(&self) -> u64 {
        self.catalog_digest
    }

    /// The names of the retained checkpoints and their indexes.
    pub fn checkpoints(&self) -> impl Iterator<Item = (&str, LogIndex)> {
        self.checkpoints.iter().map(|(name, checkpoint)| (name.as_str(), checkpoint.index))
    }

    /// The latest request of `client` that the store has applied.
    pub fn dedup_record(&self, client: u64) -> Option<DedupRecord> {
        self.dedup.get(&client).copied()
    }

    /// Applies one committed entry (which must follow the last applied one).
    /// Returns the result for its client, for command entries.
    pub fn apply(&mut self, entry: &Entry) -> Option<CommandResult> {
        self.applied = entry.index;
        let (client, data) = match &entry.payload {
            EntryPayload::Command { client, data } => (client, data),
            EntryPayload::Checkpoint(op) => {
                return Some(CommandResult::Checkpoint(self.apply_checkpoint(op, entry.index)));
            }
            EntryPayload::Blank | EntryPayload::Membership(_) => return None,
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

    /// Carries out a checkpoint operation as the runtime does: the
    /// runtime's decision on the replicated catalog, then its effect.
    fn apply_checkpoint(&mut self, op: &CheckpointOp, index: LogIndex) -> CheckpointOutcome {
        let name = op.name();
        let created_at = self.checkpoints.get(name).map(|checkpoint| checkpoint.index);
        match checkpoints::decide(op, index, created_at, self.checkpoints.len(), MAX_CHECKPOINTS) {
            Ok(Decision::Create) => {
                let checkpoint = Checkpoint { index, data: self.data.clone(), data_digest: self.data_digest };
                self.catalog_digest ^= checkpoint_hash(name, &checkpoint);
                self.checkpoints.insert(name.to_string(), checkpoint);
                CheckpointOutcome::Done
            }
            // Never here: a state machine restored from a snapshot applies
            // only entries after it, so no create applies twice.
            Ok(Decision::AlreadyCreated) => CheckpointOutcome::Done,
            Ok(Decision::Rollback) => {
                if let Some(checkpoint) = self.checkpoints.get(name) {
                    if !self.bugs.rollback_keeps_data {
                        self.data = checkpoint.data.clone();
                        self.data_digest = checkpoint.data_digest;
                    }
                }
                CheckpointOutcome::Done
            }
            Ok(Decision::Delete) => {
                if let Some(checkpoint) = self.checkpoints.remove(name) {
                    self.catalog_digest ^= checkpoint_hash(name, &checkpoint);
                }
                CheckpointOutcome::Done
            }
            Err(CheckpointError::AlreadyExists(_)) => CheckpointOutcome::AlreadyExists,
            Err(CheckpointError::NotFound(_)) => CheckpointOutcome::NotFound,
            Err(CheckpointError::TooMany { .. }) => CheckpointOutcome::TooMany,
            // Invalid names are refused before they are proposed, and the
            // other errors are not replicated decisions: none reaches here.
            Err(_) => CheckpointOutcome::NotFound,
        }
    }

    fn record_request(&mut self, request: ClientRequestId, result: CommandResult) {
        let record = DedupRecord { sequence: request.sequence, result };
        if let Some(old) = self.dedup.insert(request.client, record) {
            self.dedup_digest ^= dedup_hash(request.client, old);
        }
        self.dedup_digest ^= dedup_hash(request.client, record);
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
            self.data_digest ^= key_hash(key, old);
        }
        if let Some(value) = value {
            let new = Versioned { value, version: index };
            self.data.insert(key, new);
            self.data_digest ^= key_hash(key, new);
        }
    }

    /// Encodes the whole state, applied index and checkpoints included.
    pub fn encode_snapshot(&self) -> Bytes {
        let mut out = Vec::with_capacity(25 + 24 * self.data.len() + 17 * self.dedup.len());
        out.push(SNAPSHOT_MAGIC);
        out.extend_from_slice(&self.applied.0.to_le_bytes());
        encode_data(&mut out, &self.data);
        out.extend_from_slice(&(self.dedup.len() as u64).to_le_bytes());
        for (client, record) in &self.dedup {
            out.extend_from_slice(&client.to_le_bytes());
            out.extend_from_slice(&record.sequence.to_le_bytes());
            out.push(record.result.code());
        }
        let retained = if self.bugs.snapshot_drops_checkpoints { 0 } else { self.checkpoints.len() };
        out.extend_from_slice(&(retained as u64).to_le_bytes());
        for (name, checkpoint) in self.checkpoints.iter().take(retained) {
            out.extend_from_slice(&(name.len() as u64).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&checkpoint.index.0.to_le_bytes());
            encode_data(&mut out, &checkpoint.data);
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
        for (key, versioned) in decode_data(&mut reader)? {
            store.set(key, Some(versioned.value), versioned.version);
        }
        let clients = reader.u64().ok_or(truncated.clone())?;
        for _ in 0..clients {
            let client = reader.u64().ok_or(truncated.clone())?;
            let sequence = reader.u64().ok_or(truncated.clone())?;
            let result =
                reader.u8().and_then(CommandResult::from_code).ok_or(SnapshotDecodeError("bad result"))?;
            store.record_request(ClientRequestId { client, sequence }, result);
        }
        let retained = reader.u64().ok_or(truncated.clone())?;
        for _ in 0..retained {
            let length = reader.u64().ok_or(truncated.clone())?;
            let name = reader.bytes(length).ok_or(truncated.clone())?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| SnapshotDecodeError("bad name"))?;
            checkpoints::validate_name(&name).map_err(|_| SnapshotDecodeError("bad name"))?;
            let index = LogIndex(reader.u64().ok_or(truncated.clone())?);
            let data = decode_data(&mut reader)?;
            let data_digest =
                data.iter().fold(0, |digest, (key, versioned)| digest ^ key_hash(*key, *versioned));
            let checkpoint = Checkpoint { index, data, data_digest };
            store.catalog_digest ^= checkpoint_hash(&name, &checkpoint);
            if store.checkpoints.insert(name, checkpoint).is_some() {
                return Err(SnapshotDecodeError("a checkpoint name twice"));
            }
        }
        if !reader.is_empty() {
            return Err(SnapshotDecodeError("trailing bytes"));
        }
        Ok(store)
    }
}

/// Encodes keys with their values and versions, count first.
fn encode_data(out: &mut Vec<u8>, data: &BTreeMap<u64, Versioned>) {
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for (key, versioned) in data {
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&versioned.value.to_le_bytes());
        out.extend_from_slice(&versioned.version.0.to_le_bytes());
    }
}

/// Decodes what [`encode_data`] wrote.
fn decode_data(reader: &mut Reader<'_>) -> Result<BTreeMap<u64, Versioned>, SnapshotDecodeError> {
    let truncated = SnapshotDecodeError("truncated");
    let keys = reader.u64().ok_or(truncated.clone())?;
    let mut data = BTreeMap::new();
    for _ in 0..keys {
        let key = reader.u64().ok_or(truncated.clone())?;
        let value = reader.u64().ok_or(truncated.clone())?;
        let version = LogIndex(reader.u64().ok_or(truncated.clone())?);
        data.insert(key, Versioned { value, version });
    }
    Ok(data)
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

fn checkpoint_hash(name: &str, checkpoint: &Checkpoint) -> u64 {
    let name_hash = name.bytes().fold(HASH_START, |hash, byte| hash_word(hash, u64::from(byte)));
    hash_words(&[3, name_hash, checkpoint.index.0, checkpoint.data_digest])
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

    fn bytes(&mut self, length: u64) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(usize::try_from(length).ok()?)?;
        self.rest = rest;
        Some(head)
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

    fn checkpoint_entry(index: u64, op: CheckpointOp) -> Entry {
        Entry { term: Term(1), index: LogIndex(index), payload: EntryPayload::Checkpoint(op) }
    }

    fn create(name: &str) -> CheckpointOp {
        CheckpointOp::Create { name: name.to_string(), created_unix_ms: 0 }
    }

    fn rollback(name: &str) -> CheckpointOp {
        CheckpointOp::Rollback { name: name.to_string() }
    }

    fn forget(name: &str) -> CheckpointOp {
        CheckpointOp::Delete { name: name.to_string() }
    }

    fn outcome(result: Option<CommandResult>) -> CheckpointOutcome {
        match result {
            Some(CommandResult::Checkpoint(outcome)) => outcome,
            other => panic!("a checkpoint entry answered {other:?}"),
        }
    }

    #[test]
    fn checkpoints_follow_the_runtime_rules_and_a_rollback_restores_the_keys_only() {
        use CheckpointOutcome::{AlreadyExists, Done, NotFound, TooMany};
        let mut kv = KvStore::default();
        kv.apply(&command_entry(1, Some((1, 1)), Command::Put { key: 1, value: 10 }));
        let at_checkpoint = kv.data_digest;
        assert_eq!(outcome(kv.apply(&checkpoint_entry(2, create("a")))), Done);
        assert_eq!(outcome(kv.apply(&checkpoint_entry(3, create("a")))), AlreadyExists);
        kv.apply(&command_entry(4, Some((1, 2)), Command::Put { key: 1, value: 11 }));
        kv.apply(&command_entry(5, None, Command::Put { key: 2, value: 20 }));
        let dedup_before = kv.dedup.clone();
        assert_eq!(outcome(kv.apply(&checkpoint_entry(6, rollback("a")))), Done);
        assert_eq!(kv.get_versioned(1), Some(Versioned { value: 10, version: LogIndex(1) }));
        assert_eq!(kv.get(2), None);
        assert_eq!(kv.data_digest, at_checkpoint);
        assert_eq!(kv.applied_index(), LogIndex(6));
        // The dedup table is not rolled back: the retry of request 2, which
        // the rollback undid, gets its first result and is not applied again.
        assert_eq!(kv.dedup, dedup_before);
        let retry = kv.apply(&command_entry(7, Some((1, 2)), Command::Put { key: 1, value: 11 }));
        assert_eq!(retry, Some(CommandResult::Written));
        assert_eq!(kv.get(1), Some(10));
        // The bound, unknown names, and deletion.
        assert_eq!(outcome(kv.apply(&checkpoint_entry(8, create("b")))), Done);
        assert_eq!(outcome(kv.apply(&checkpoint_entry(9, create("c")))), Done);
        assert_eq!(outcome(kv.apply(&checkpoint_entry(10, create("d")))), TooMany);
        assert_eq!(outcome(kv.apply(&checkpoint_entry(11, rollback("d")))), NotFound);
        assert_eq!(outcome(kv.apply(&checkpoint_entry(12, forget("a")))), Done);
        assert_eq!(outcome(kv.apply(&checkpoint_entry(13, forget("a")))), NotFound);
        assert_eq!(outcome(kv.apply(&checkpoint_entry(14, rollback("a")))), NotFound);
        assert_eq!(outcome(kv.apply(&checkpoint_entry(15, create("d")))), Done);
        let names: Vec<(&str, LogIndex)> = kv.checkpoints().collect();
        assert_eq!(names, [("b", LogIndex(8)), ("c", LogIndex(9)), ("d", LogIndex(15))]);
    }

    #[test]
    fn checkpoints_travel_in_snapshots_and_count_in_the_digest() {
        let mut kv = KvStore::default();
        kv.apply(&command_entry(1, None, Command::Put { key: 1, value: 10 }));
        let without = kv.digest();
        kv.apply(&checkpoint_entry(2, create("a")));
        assert_ne!(kv.digest(), without, "the catalog is part of the digest");
        kv.apply(&command_entry(3, None, Command::Put { key: 1, value: 11 }));
        let restored = KvStore::decode_snapshot(&kv.encode_snapshot()).unwrap();
        assert_eq!(restored, kv);
        assert_eq!((restored.digest(), restored.catalog_digest()), (kv.digest(), kv.catalog_digest()));
        let mut restored = restored;
        assert_eq!(outcome(restored.apply(&checkpoint_entry(4, rollback("a")))), CheckpointOutcome::Done);
        assert_eq!(restored.get(1), Some(10));
        // Two replicas that hold the same keys but remember different ones
        // under a checkpoint differ in their catalog digests.
        let mut other = KvStore::default();
        other.apply(&command_entry(1, None, Command::Put { key: 1, value: 99 }));
        other.apply(&checkpoint_entry(2, create("a")));
        other.apply(&command_entry(3, None, Command::Put { key: 1, value: 11 }));
        assert_ne!(other.catalog_digest(), kv.catalog_digest());
        // The injected bug leaves the catalog out of the snapshot.
        let dropping = kv.clone().with_bugs(KvBugs { snapshot_drops_checkpoints: true, ..KvBugs::default() });
        let lost = KvStore::decode_snapshot(&dropping.encode_snapshot()).unwrap();
        assert_eq!(lost.checkpoints().count(), 0);
        assert_ne!(lost.digest(), kv.digest());
        // Every cut of a snapshot with checkpoints is refused.
        let bytes = kv.encode_snapshot();
        for cut in 0..bytes.len() {
            assert!(KvStore::decode_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
        }
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
