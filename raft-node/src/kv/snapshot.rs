//! The snapshot format of the key-value state machine: written lazily chunk
//! by chunk from a captured copy of the state, read back in bounded reads
//! and checked completely before it replaces anything.
//!
//! ```text
//! header   magic "RAFTKVSN" (8 bytes)
//!          format version       u32
//!          applied index        u64
//!          key count            u64
//!          dedup client count   u64
//!          directory node count u64
//! records  key count records of kind 1, then client records of kind 2,
//!          then node records of kind 3; each record is
//!          kind u8, body length u32, body
//!   kind 1 (key)    key length u32, key (UTF-8), version u64, value (the rest)
//!   kind 2 (client) client u64, sequence u64, last used index u64,
//!                   first application index u64, its term u64,
//!                   outcome (the rest; a postcard `KvOutcome`)
//!   kind 3 (node)   node id u64, addresses (the rest; a postcard `NodeAddresses`)
//! trailer  CRC32C of every byte before it, u32
//! ```
//!
//! Integers are little-endian. Records of each kind come in strictly
//! increasing order of their key (key bytes, client id, node id), so a
//! duplicate is refused. A reader refuses an unknown magic, a format version
//! newer than [`FORMAT_VERSION`], a record length above its kind's bound,
//! counts that do not match the records, bytes after the trailer and a
//! checksum mismatch.
//!
//! Version policy: a release reads every version up to its own and writes
//! only its own; a change to the layout bumps [`FORMAT_VERSION`].

use std::collections::{btree_map, BTreeMap, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use raft_core::state_machine::{SnapshotSource, StateMachineError};
use raft_core::storage::SnapshotReader;
use raft_core::types::NodeId;

use super::state::{DedupRecord, DedupTable, KvState};
use super::types::{
    decode_message, encode_message, Directory, KvOutcome, NodeAddresses, Versioned, MAX_CLIENT_URL_BYTES,
    MAX_KEY_BYTES, MAX_VALUE_BYTES,
};

/// The first bytes of every snapshot.
pub(crate) const MAGIC: [u8; 8] = *b"RAFTKVSN";
/// The format version this release writes (and the newest it reads).
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Bytes of the header: magic, version, applied index and three counts.
pub(crate) const HEADER_BYTES: usize = 8 + 4 + 8 + 3 * 8;
/// Bytes before each record's body: kind and body length.
const RECORD_HEAD_BYTES: usize = 1 + 4;
/// Bytes of the trailer.
const TRAILER_BYTES: usize = 4;

const KIND_KEY: u8 = 1;
const KIND_CLIENT: u8 = 2;
const KIND_NODE: u8 = 3;

/// The size a chunk of the written snapshot grows to before it is handed
/// out. A chunk may exceed it by one record of inline size (below
/// [`INLINE_VALUE_BYTES`] of value plus a key); larger values go out as
/// chunks of their own.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;
/// Values at least this large are handed out as their own chunk, without
/// being copied into a chunk buffer.
const INLINE_VALUE_BYTES: usize = 64 << 10;
/// The most bytes asked of the snapshot reader at once while restoring.
const READ_BYTES: usize = 1 << 20;

/// The largest body of a key record: the bound on what the restore buffer
/// holds at once (plus one read of [`READ_BYTES`]).
const MAX_KEY_RECORD_BYTES: usize = 4 + MAX_KEY_BYTES + 8 + MAX_VALUE_BYTES;
/// The largest remembered outcome. Remembered outcomes are a few bytes
/// (rejections are never remembered); the bound leaves room to grow.
const MAX_OUTCOME_BYTES: usize = 1 << 10;
const MAX_CLIENT_RECORD_BYTES: usize = 5 * 8 + MAX_OUTCOME_BYTES;
/// A node record: the id, the peer address (at most 19 bytes in postcard)
/// and the client URL with its length prefix.
const MAX_NODE_RECORD_BYTES: usize = 8 + 32 + 8 + MAX_CLIENT_URL_BYTES;

/// The state as of one applied index, captured for a snapshot.
pub(crate) struct Captured {
    pub(crate) applied_index: u64,
    /// Every key in order. A vector rather than a cloned `BTreeMap`: it is
    /// exactly as long as the state (72 bytes a key), where a cloned tree
    /// would allocate partly filled nodes, about half as much again, at the
    /// moment the snapshot starts.
    pub(crate) data: Vec<(Bytes, Versioned)>,
    pub(crate) clients: BTreeMap<u64, DedupRecord>,
    pub(crate) directory: Directory,
}

/// Produces a snapshot's bytes from a captured state, about a
/// [`CHUNK_BYTES`] at a time.
pub(crate) struct KvSnapshotSource {
    keys: std::vec::IntoIter<(Bytes, Versioned)>,
    clients: btree_map::IntoIter<u64, DedupRecord>,
    nodes: btree_map::IntoIter<NodeId, NodeAddresses>,
    /// The chunk being built.
    buffer: BytesMut,
    /// Finished chunks not yet handed out (at most a buffer and one value).
    ready: VecDeque<Bytes>,
    /// CRC32C of every byte moved to `ready` so far.
    crc: u32,
    finished: bool,
}

impl KvSnapshotSource {
    pub(crate) fn new(captured: Captured) -> Self {
        let mut buffer = BytesMut::with_capacity(CHUNK_BYTES);
        buffer.put_slice(&MAGIC);
        buffer.put_u32_le(FORMAT_VERSION);
        buffer.put_u64_le(captured.applied_index);
        buffer.put_u64_le(captured.data.len() as u64);
        buffer.put_u64_le(captured.clients.len() as u64);
        buffer.put_u64_le(captured.directory.len() as u64);
        KvSnapshotSource {
            keys: captured.data.into_iter(),
            clients: captured.clients.into_iter(),
            nodes: captured.directory.into_iter(),
            buffer,
            ready: VecDeque::new(),
            crc: 0,
            finished: false,
        }
    }

    /// Moves the chunk being built to `ready`.
    fn flush(&mut self) {
        if !self.buffer.is_empty() {
            let chunk = self.buffer.split().freeze();
            self.push(chunk);
        }
    }

    fn push(&mut self, chunk: Bytes) {
        self.crc = crc32c::crc32c_append(self.crc, &chunk);
        self.ready.push_back(chunk);
    }

    fn record_head(&mut self, kind: u8, body_bytes: usize) -> Result<(), StateMachineError> {
        // Every body is bounded far below 4 GiB by the checks on apply; the
        // conversion only turns a broken invariant into an error.
        let body_bytes = u32::try_from(body_bytes)
            .map_err(|_| StateMachineError::Other(format!("a snapshot record of {body_bytes} bytes")))?;
        self.buffer.put_u8(kind);
        self.buffer.put_u32_le(body_bytes);
        Ok(())
    }

    /// Adds records until the chunk is full or everything is written.
    fn fill(&mut self) -> Result<(), StateMachineError> {
        self.buffer.reserve(CHUNK_BYTES);
        while self.buffer.len() < CHUNK_BYTES {
            if let Some((key, versioned)) = self.keys.next() {
                self.record_head(KIND_KEY, 4 + key.len() + 8 + versioned.value.len())?;
                // The key fits in 32 bits: `record_head` checked the whole body does.
                self.buffer.put_u32_le(key.len() as u32);
                self.buffer.put_slice(&key);
                self.buffer.put_u64_le(versioned.version);
                if versioned.value.len() >= INLINE_VALUE_BYTES {
                    self.flush();
                    self.push(versioned.value);
                    return Ok(());
                }
                self.buffer.put_slice(&versioned.value);
            } else if let Some((client, record)) = self.clients.next() {
                let outcome = record.outcome.encode();
                self.record_head(KIND_CLIENT, 5 * 8 + outcome.len())?;
                self.buffer.put_u64_le(client);
                self.buffer.put_u64_le(record.sequence);
                self.buffer.put_u64_le(record.last_used_index);
                self.buffer.put_u64_le(record.index);
                self.buffer.put_u64_le(record.term);
                self.buffer.put_slice(&outcome);
            } else if let Some((id, addresses)) = self.nodes.next() {
                let addresses = encode_message(&addresses);
                self.record_head(KIND_NODE, 8 + addresses.len())?;
                self.buffer.put_u64_le(id.get());
                self.buffer.put_slice(&addresses);
            } else {
                let mut last = self.buffer.split();
                self.crc = crc32c::crc32c_append(self.crc, &last);
                last.put_u32_le(self.crc);
                self.ready.push_back(last.freeze());
                self.finished = true;
                return Ok(());
            }
        }
        self.flush();
        Ok(())
    }
}

#[async_trait::async_trait]
impl SnapshotSource for KvSnapshotSource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Ok(Some(chunk));
            }
            if self.finished {
                return Ok(None);
            }
            self.fill()?;
        }
    }
}

/// Reads a snapshot and builds the state it describes, without touching any
/// live state. A damaged or unknown snapshot is a
/// [`StateMachineError::MalformedSnapshot`]; a failing reader is passed on
/// as it failed.
///
/// Memory: besides the new state, one record and one read
/// ([`READ_BYTES`]) at most are buffered; a record's length is checked
/// against its kind's bound before its body is read.
pub(crate) async fn restore(
    reader: &mut dyn SnapshotReader,
    max_dedup_clients: usize,
) -> Result<KvState, StateMachineError> {
    let expected_index = reader.meta().last_index.get();
    let mut input = Input { reader, offset: 0, buffer: BytesMut::new(), reached_end: false, crc: 0 };

    let magic = input.take(MAGIC.len(), "the magic bytes").await?;
    if magic[..] != MAGIC[..] {
        return Err(malformed(format!(
            "it does not start with the key-value magic bytes (found {magic:02x?})"
        )));
    }
    let version = input.take(4, "the format version").await?.get_u32_le();
    if version > FORMAT_VERSION {
        return Err(malformed(format!(
            "its format version {version} is newer than this release reads ({FORMAT_VERSION}); \
             upgrade this node to a release that knows it"
        )));
    }
    if version == 0 {
        return Err(malformed("its format version is 0, which no release writes".to_string()));
    }
    let mut header = input.take(HEADER_BYTES - MAGIC.len() - 4, "the header").await?;
    let applied_index = header.get_u64_le();
    let key_count = header.get_u64_le();
    let client_count = header.get_u64_le();
    let node_count = header.get_u64_le();
    if applied_index != expected_index {
        return Err(malformed(format!(
            "it holds the state at index {applied_index} but is stored as the snapshot at index \
             {expected_index}"
        )));
    }

    let mut state = KvState { applied_index, ..KvState::default() };
    read_keys(&mut input, key_count, &mut state).await?;
    read_clients(&mut input, client_count, &mut state).await?;
    read_nodes(&mut input, node_count, &mut state).await?;

    let computed = input.crc;
    let stored = input.take(TRAILER_BYTES, "the trailer").await?.get_u32_le();
    if stored != computed {
        return Err(malformed(format!(
            "its checksum does not match (stored {stored:08x}, computed {computed:08x})"
        )));
    }
    input.expect_end().await?;

    let evicted = state.dedup.evict_down_to(max_dedup_clients);
    if evicted > 0 {
        // The table is only this large if the node that wrote the snapshot
        // had a higher limit: limits must be equal on every node.
        tracing::warn!(
            evicted,
            max_dedup_clients,
            "the restored snapshot remembers more clients than this node's limit; the least recently \
             used were forgotten (set the same max_dedup_clients on every node)"
        );
    }
    Ok(state)
}

async fn read_keys(input: &mut Input<'_>, count: u64, state: &mut KvState) -> Result<(), StateMachineError> {
    let mut previous: Option<Bytes> = None;
    for number in 0..count {
        let mut body = input.record(KIND_KEY, MAX_KEY_RECORD_BYTES, number).await?;
        let bad = |problem: String| malformed(format!("key record {number}: {problem}"));
        if body.len() < 4 + 8 {
            return Err(bad(format!("its body of {} bytes is too short", body.len())));
        }
        let key_bytes = body.get_u32_le() as usize;
        if key_bytes > MAX_KEY_BYTES || key_bytes > body.len() - 8 {
            return Err(bad(format!("a key length of {key_bytes} bytes does not fit")));
        }
        let key = body.split_to(key_bytes);
        if std::str::from_utf8(&key).is_err() {
            return Err(bad("the key is not UTF-8".to_string()));
        }
        let version = body.get_u64_le();
        if version == 0 || version > state.applied_index {
            return Err(bad(format!("version {version} is outside 1..={}", state.applied_index)));
        }
        if body.len() > MAX_VALUE_BYTES {
            return Err(bad(format!("a value of {} bytes is over the limit", body.len())));
        }
        // Copies give each key and value an allocation of its own, so that a
        // small value kept for long does not pin a whole read buffer.
        let key = Bytes::copy_from_slice(&key);
        if previous.as_ref().is_some_and(|previous| *previous >= key) {
            return Err(bad("keys are not in strictly increasing order".to_string()));
        }
        let value = Bytes::copy_from_slice(&body);
        state.value_bytes += value.len() as u64;
        state.data.insert(key.clone(), Versioned { value, version });
        previous = Some(key);
    }
    Ok(())
}

async fn read_clients(
    input: &mut Input<'_>,
    count: u64,
    state: &mut KvState,
) -> Result<(), StateMachineError> {
    let mut previous = None;
    let mut dedup = DedupTable::default();
    for number in 0..count {
        let mut body = input.record(KIND_CLIENT, MAX_CLIENT_RECORD_BYTES, number).await?;
        let bad = |problem: String| malformed(format!("client record {number}: {problem}"));
        if body.len() < 5 * 8 {
            return Err(bad(format!("its body of {} bytes is too short", body.len())));
        }
        let client = body.get_u64_le();
        let sequence = body.get_u64_le();
        let last_used_index = body.get_u64_le();
        let index = body.get_u64_le();
        let term = body.get_u64_le();
        if previous.is_some_and(|previous| previous >= client) {
            return Err(bad("clients are not in strictly increasing order".to_string()));
        }
        if last_used_index == 0 || last_used_index > state.applied_index {
            return Err(bad(format!(
                "last used index {last_used_index} is outside 1..={}",
                state.applied_index
            )));
        }
        let outcome: KvOutcome =
            decode_message(&body, "a remembered outcome").map_err(|error| bad(error.to_string()))?;
        if index == 0 || index > last_used_index {
            return Err(bad(format!("first application index {index} is outside 1..={last_used_index}")));
        }
        dedup.remember(client, DedupRecord { sequence, outcome, index, term, last_used_index }, usize::MAX);
        previous = Some(client);
    }
    state.dedup = dedup;
    Ok(())
}

async fn read_nodes(input: &mut Input<'_>, count: u64, state: &mut KvState) -> Result<(), StateMachineError> {
    let mut previous = None;
    for number in 0..count {
        let mut body = input.record(KIND_NODE, MAX_NODE_RECORD_BYTES, number).await?;
        let bad = |problem: String| malformed(format!("node record {number}: {problem}"));
        if body.len() < 8 {
            return Err(bad(format!("its body of {} bytes is too short", body.len())));
        }
        let id = NodeId(body.get_u64_le());
        if id == NodeId::NONE {
            return Err(bad("node id 0 is reserved".to_string()));
        }
        if previous.is_some_and(|previous| previous >= id) {
            return Err(bad("nodes are not in strictly increasing order".to_string()));
        }
        let addresses: NodeAddresses =
            decode_message(&body, "node addresses").map_err(|error| bad(error.to_string()))?;
        if addresses.client.len() > MAX_CLIENT_URL_BYTES {
            return Err(bad(format!("a client URL of {} bytes is over the limit", addresses.client.len())));
        }
        state.directory.insert(id, addresses);
        previous = Some(id);
    }
    Ok(())
}

fn malformed(problem: String) -> StateMachineError {
    StateMachineError::MalformedSnapshot(format!("key-value snapshot: {problem}"))
}

/// The snapshot being read: bounded reads into a buffer that holds at most
/// the piece being taken plus one read.
struct Input<'a> {
    reader: &'a mut dyn SnapshotReader,
    /// The offset of the next read.
    offset: u64,
    buffer: BytesMut,
    /// Whether the reader said the last read reached the end.
    reached_end: bool,
    /// CRC32C of every byte taken so far.
    crc: u32,
}

impl Input<'_> {
    /// The offset of the next byte to be taken.
    fn position(&self) -> u64 {
        self.offset - self.buffer.len() as u64
    }

    /// Takes the next `length` bytes; the caller bounded `length`.
    async fn take(&mut self, length: usize, what: &str) -> Result<BytesMut, StateMachineError> {
        while self.buffer.len() < length {
            if self.reached_end {
                return Err(malformed(format!(
                    "it ends at byte {} inside {what} ({length} bytes from byte {})",
                    self.offset,
                    self.position()
                )));
            }
            self.read().await?;
        }
        let taken = self.buffer.split_to(length);
        self.crc = crc32c::crc32c_append(self.crc, &taken);
        Ok(taken)
    }

    async fn read(&mut self) -> Result<(), StateMachineError> {
        let (chunk, reached_end) = self.reader.read_at(self.offset, READ_BYTES as u64).await?;
        if chunk.len() > READ_BYTES {
            return Err(StateMachineError::Other(format!(
                "the snapshot reader returned {} bytes when asked for at most {READ_BYTES}",
                chunk.len()
            )));
        }
        if chunk.is_empty() && !reached_end {
            return Err(StateMachineError::Other(format!(
                "the snapshot reader returned nothing at byte {} without reaching the end",
                self.offset
            )));
        }
        self.offset += chunk.len() as u64;
        self.reached_end = reached_end;
        self.buffer.extend_from_slice(&chunk);
        Ok(())
    }

    /// Takes one record of `kind` whose body is at most `max_body_bytes`.
    async fn record(
        &mut self,
        kind: u8,
        max_body_bytes: usize,
        number: u64,
    ) -> Result<BytesMut, StateMachineError> {
        let at = self.position();
        let mut head = self.take(RECORD_HEAD_BYTES, "a record header").await?;
        let found_kind = head.get_u8();
        let body_bytes = head.get_u32_le() as usize;
        if found_kind != kind {
            return Err(malformed(format!(
                "record {number} of kind {kind} expected at byte {at}, found kind {found_kind}"
            )));
        }
        if body_bytes > max_body_bytes {
            return Err(malformed(format!(
                "record {number} of kind {kind} at byte {at} claims {body_bytes} bytes, over the bound of \
                 {max_body_bytes}"
            )));
        }
        self.take(body_bytes, "a record").await
    }

    /// Checks that nothing follows the trailer.
    async fn expect_end(&mut self) -> Result<(), StateMachineError> {
        if self.buffer.is_empty() && !self.reached_end {
            self.read().await?;
        }
        if !self.buffer.is_empty() {
            return Err(malformed(format!(
                "unexpected bytes follow the trailer at byte {}",
                self.position()
            )));
        }
        Ok(())
    }
}
