//! A small string-map state machine for runtime tests of any crate: commands
//! are `key=value`, queries are `key`. An optional deterministic "ballast"
//! makes its snapshots as large as a test needs (for example 100 MiB to
//! exercise snapshot streaming) without holding them in memory.
//!
//! The snapshot format: the ballast length (8 bytes, little endian), the
//! length of the map's text (4 bytes), the map as `key=value\n` lines, then
//! the ballast in blocks of [`BALLAST_BLOCK_BYTES`]. Restoring checks every
//! ballast byte.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::state_machine::{SnapshotSource, StateMachine, StateMachineError};
use crate::storage::SnapshotReader;
use crate::types::{Entry, EntryPayload};

/// The size of one ballast block, and of each snapshot read while restoring.
pub const BALLAST_BLOCK_BYTES: u64 = 1 << 20;

/// A string map with an optional ballast in its snapshots.
#[derive(Debug, Default)]
pub struct MapStateMachine {
    map: BTreeMap<String, String>,
    ballast_bytes: u64,
}

impl MapStateMachine {
    /// An empty map whose snapshots carry `ballast_bytes` of extra data.
    pub fn with_ballast(ballast_bytes: u64) -> Self {
        MapStateMachine { map: BTreeMap::new(), ballast_bytes }
    }

    /// The value of `key`, if set.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }
}

/// The 1 MiB pattern ballast blocks are made from (xorshift bytes).
fn pattern_block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut state = 0x1234_5678_9abc_def0_u64;
        (0..BALLAST_BLOCK_BYTES)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    })
}

/// Ballast block `number`: the pattern, varied per block so that a block
/// delivered at the wrong place is noticed.
fn ballast_block(number: u64) -> Bytes {
    let key = number as u8;
    Bytes::from(pattern_block().iter().map(|b| b ^ key).collect::<Vec<u8>>())
}

fn malformed(what: &str) -> StateMachineError {
    StateMachineError::MalformedSnapshot(what.to_string())
}

#[async_trait]
impl StateMachine for MapStateMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut previous = None;
            if let EntryPayload::Command { data, .. } = &entry.payload {
                if let Some((key, value)) = String::from_utf8_lossy(data).split_once('=') {
                    previous = self.map.insert(key.to_string(), value.to_string());
                }
            }
            // The response is the value the write replaced.
            responses.push(previous.map(Bytes::from).unwrap_or_default());
        }
        Ok(responses)
    }

    async fn query(&mut self, query: Bytes) -> Result<Bytes, StateMachineError> {
        let key = String::from_utf8_lossy(&query);
        Ok(self.map.get(key.as_ref()).map(|v| Bytes::from(v.clone())).unwrap_or_default())
    }

    async fn begin_snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        let lines: String = self.map.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let lines_length = u32::try_from(lines.len()).map_err(|_| malformed("the map is over 4 GiB"))?;
        let mut head = BytesMut::new();
        head.extend_from_slice(&self.ballast_bytes.to_le_bytes());
        head.extend_from_slice(&lines_length.to_le_bytes());
        head.extend_from_slice(lines.as_bytes());
        Ok(Box::new(MapSnapshot {
            head: Some(head.freeze()),
            next_block: 0,
            ballast_bytes: self.ballast_bytes,
        }))
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), StateMachineError> {
        let mut reader = ChunkReader { snapshot, offset: 0, buffer: BytesMut::new(), done: false };
        let header = reader.read_exact(12).await?;
        let ballast_bytes = u64::from_le_bytes(header[..8].try_into().map_err(|_| malformed("header"))?);
        let lines_length = u32::from_le_bytes(header[8..12].try_into().map_err(|_| malformed("header"))?);
        let lines = reader.read_exact(lines_length as usize).await?;
        let mut map = BTreeMap::new();
        for line in String::from_utf8_lossy(&lines).lines() {
            let (key, value) = line.split_once('=').ok_or_else(|| malformed("a line without '='"))?;
            map.insert(key.to_string(), value.to_string());
        }
        for block in 0..ballast_bytes.div_ceil(BALLAST_BLOCK_BYTES) {
            let length = (ballast_bytes - block * BALLAST_BLOCK_BYTES).min(BALLAST_BLOCK_BYTES) as usize;
            let bytes = reader.read_exact(length).await?;
            if bytes[..] != ballast_block(block)[..length] {
                return Err(malformed(&format!("ballast block {block} differs")));
            }
        }
        self.map = map;
        self.ballast_bytes = ballast_bytes;
        Ok(())
    }
}

/// Streams a snapshot: the head (lengths and map), then ballast blocks.
struct MapSnapshot {
    head: Option<Bytes>,
    next_block: u64,
    ballast_bytes: u64,
}

#[async_trait]
impl SnapshotSource for MapSnapshot {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        if let Some(head) = self.head.take() {
            return Ok(Some(head));
        }
        let start = self.next_block * BALLAST_BLOCK_BYTES;
        if start >= self.ballast_bytes {
            return Ok(None);
        }
        let length = (self.ballast_bytes - start).min(BALLAST_BLOCK_BYTES) as usize;
        let block = ballast_block(self.next_block).slice(..length);
        self.next_block += 1;
        Ok(Some(block))
    }
}

/// Reads a snapshot in exact-length pieces, whatever its chunking.
struct ChunkReader<'a> {
    snapshot: &'a mut dyn SnapshotReader,
    offset: u64,
    buffer: BytesMut,
    done: bool,
}

impl ChunkReader<'_> {
    async fn read_exact(&mut self, length: usize) -> Result<Bytes, StateMachineError> {
        while self.buffer.len() < length {
            if self.done {
                return Err(malformed("the snapshot ended early"));
            }
            let (chunk, done) = self.snapshot.read_at(self.offset, BALLAST_BLOCK_BYTES).await?;
            self.offset += chunk.len() as u64;
            self.done = done;
            self.buffer.extend_from_slice(&chunk);
        }
        Ok(self.buffer.split_to(length).freeze())
    }
}
