//! The format of one snapshot file:
//!
//! ```text
//! header   magic "RAFTSNAP" | format version u32 | block size u32 |
//!          metadata length u32 | metadata (postcard SnapshotMeta) |
//!          CRC32C u32 of everything before it
//! blocks   for each block of `block size` data bytes (the last may be
//!          shorter; none for an empty snapshot): the data, then a CRC32C u32
//!          of (block number as u64 ‖ data)
//! trailer  data size u64 | magic "SNAPDONE" | CRC32C u32 of the two
//! ```
//!
//! All integers are little-endian. A file is only ever complete: it is
//! written under a temporary name and renamed when finished, so the trailer
//! and the file length (which the header and trailer together predict) tell
//! a finished file from a damaged one. Every block carries its own checksum
//! so that any chunk read at any offset is verified before it is served; the
//! block number in the checksum catches blocks that moved.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use raft_core::storage::StorageError;
use raft_core::types::SnapshotMeta;

/// The snapshot file format this release writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// Data bytes per checksummed block.
pub(crate) const BLOCK_BYTES: u32 = 64 * 1024;

const HEADER_MAGIC: [u8; 8] = *b"RAFTSNAP";
const TRAILER_MAGIC: [u8; 8] = *b"SNAPDONE";
/// Bytes of the header before the metadata.
const HEADER_FIXED_BYTES: u64 = 8 + 4 + 4 + 4;
const CHECKSUM_BYTES: u64 = 4;
pub(crate) const TRAILER_BYTES: u64 = 8 + 8 + 4;
/// A bound on the metadata's size, so a damaged length never asks for a
/// huge allocation. Membership lists of any real cluster are far below.
const MAX_META_BYTES: u32 = 16 << 20;

/// The parsed header and trailer of a finished snapshot file.
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) meta: SnapshotMeta,
    pub(crate) block_bytes: u32,
    /// Where block 0 starts.
    pub(crate) data_start: u64,
    /// Snapshot data bytes, checksums excluded.
    pub(crate) data_bytes: u64,
}

/// The header for `meta`.
pub(crate) fn encode_header(meta: &SnapshotMeta) -> Result<Vec<u8>, StorageError> {
    let meta_bytes = postcard::to_stdvec(meta)
        .map_err(|error| StorageError::Backend(format!("encoding snapshot metadata failed: {error}")))?;
    let meta_length = u32::try_from(meta_bytes.len())
        .ok()
        .filter(|length| *length <= MAX_META_BYTES)
        .ok_or_else(|| StorageError::Backend("snapshot metadata too large".into()))?;
    let mut header = Vec::with_capacity(meta_bytes.len() + 24);
    header.extend_from_slice(&HEADER_MAGIC);
    header.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&BLOCK_BYTES.to_le_bytes());
    header.extend_from_slice(&meta_length.to_le_bytes());
    header.extend_from_slice(&meta_bytes);
    let checksum = crc32c::crc32c(&header);
    header.extend_from_slice(&checksum.to_le_bytes());
    Ok(header)
}

/// The checksum stored after block `number`.
pub(crate) fn block_checksum(number: u64, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&number.to_le_bytes()), data)
}

/// The trailer for `data_bytes` of data.
pub(crate) fn encode_trailer(data_bytes: u64) -> [u8; TRAILER_BYTES as usize] {
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    trailer[..8].copy_from_slice(&data_bytes.to_le_bytes());
    trailer[8..16].copy_from_slice(&TRAILER_MAGIC);
    let checksum = crc32c::crc32c(&trailer[..16]);
    trailer[16..].copy_from_slice(&checksum.to_le_bytes());
    trailer
}

/// Bytes of data plus block checksums for `data_bytes` of data.
fn body_bytes(data_bytes: u64, block_bytes: u32) -> Option<u64> {
    let blocks = data_bytes.div_ceil(u64::from(block_bytes));
    data_bytes.checked_add(blocks.checked_mul(CHECKSUM_BYTES)?)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Reads and verifies the header and trailer of `file`; `name` names it in
/// errors.
pub(crate) fn read_layout(file: &mut File, name: &str) -> Result<Layout, StorageError> {
    let corrupt = |problem: String| StorageError::Corrupt(format!("snapshot file {name}: {problem}"));
    let file_bytes = file.metadata()?.len();
    let minimum = HEADER_FIXED_BYTES + CHECKSUM_BYTES + TRAILER_BYTES;
    if file_bytes < minimum {
        return Err(corrupt(format!("{file_bytes} bytes is too short to be a snapshot (truncated?)")));
    }
    let mut fixed = [0u8; HEADER_FIXED_BYTES as usize];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut fixed)?;
    if fixed[..8] != HEADER_MAGIC {
        return Err(corrupt("no snapshot magic number at its start".into()));
    }
    let version = u32_at(&fixed, 8);
    let block_bytes = u32_at(&fixed, 12);
    let meta_length = u32_at(&fixed, 16);
    if meta_length > MAX_META_BYTES || u64::from(meta_length) + minimum > file_bytes {
        return Err(corrupt(format!("a metadata length of {meta_length} bytes does not fit the file")));
    }
    let mut rest = vec![0u8; meta_length as usize + CHECKSUM_BYTES as usize];
    file.read_exact(&mut rest)?;
    let (meta_bytes, stored) = rest.split_at(meta_length as usize);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&fixed), meta_bytes);
    if u32_at(stored, 0) != computed {
        return Err(corrupt("the header fails its checksum".into()));
    }
    // Only a header that verified may refuse the file as too new: a damaged
    // version field is damage, not a newer release.
    if version > SNAPSHOT_FORMAT_VERSION {
        return Err(StorageError::UnsupportedVersion { found: version, supported: SNAPSHOT_FORMAT_VERSION });
    }
    if version == 0 || block_bytes == 0 {
        return Err(corrupt(format!("version {version} with {block_bytes}-byte blocks was never written")));
    }
    let meta: SnapshotMeta = postcard::from_bytes(meta_bytes)
        .map_err(|error| corrupt(format!("the metadata does not decode: {error}")))?;
    let data_start = HEADER_FIXED_BYTES + u64::from(meta_length) + CHECKSUM_BYTES;
    let data_bytes = read_trailer(file, file_bytes, &corrupt)?;
    let expected =
        body_bytes(data_bytes, block_bytes).and_then(|body| body.checked_add(data_start + TRAILER_BYTES));
    if expected != Some(file_bytes) {
        return Err(corrupt(format!(
            "the file is {file_bytes} bytes but its header and trailer describe {} (truncated or extended?)",
            expected.map_or_else(|| "an impossible size".to_string(), |bytes| bytes.to_string())
        )));
    }
    Ok(Layout { meta, block_bytes, data_start, data_bytes })
}

fn read_trailer(
    file: &mut File,
    file_bytes: u64,
    corrupt: &impl Fn(String) -> StorageError,
) -> Result<u64, StorageError> {
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    file.seek(SeekFrom::Start(file_bytes - TRAILER_BYTES))?;
    file.read_exact(&mut trailer)?;
    if trailer[8..16] != TRAILER_MAGIC || u32_at(&trailer, 16) != crc32c::crc32c(&trailer[..16]) {
        return Err(corrupt("no valid trailer at its end (truncated or damaged)".into()));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&trailer[..8]);
    Ok(u64::from_le_bytes(size))
}

/// Reads block `number` of a file with `layout` into `into` and verifies it.
pub(crate) fn read_block(
    file: &mut File,
    layout: &Layout,
    number: u64,
    name: &str,
    into: &mut Vec<u8>,
) -> Result<(), StorageError> {
    let block_bytes = u64::from(layout.block_bytes);
    let start = number * block_bytes;
    let length = block_bytes.min(layout.data_bytes.saturating_sub(start));
    let offset = layout.data_start + number * (block_bytes + CHECKSUM_BYTES);
    into.resize(length as usize + CHECKSUM_BYTES as usize, 0);
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(into)?;
    let stored = u32_at(into, length as usize);
    into.truncate(length as usize);
    let computed = block_checksum(number, into);
    if stored != computed {
        return Err(StorageError::Corrupt(format!(
            "snapshot file {name}: block {number} (data bytes {start}..{}) fails its checksum",
            start + length
        )));
    }
    Ok(())
}

/// Writes whole blocks with their checksums, keeping at most one partial
/// block in memory.
pub(crate) struct BlockWriter {
    file: File,
    /// The current block's data, then its checksum when it is written.
    pending: Vec<u8>,
    next_block: u64,
    data_bytes: u64,
    /// Bytes written since the file was last synced.
    unsynced_bytes: u64,
}

/// A snapshot or checkpoint file is synced every this many bytes while it
/// is written. Left to the end, the kernel would hold up to the whole file
/// (a gigabyte or more) as dirty pages and write them in one burst when
/// the file is finished; the log's fsyncs would then queue behind that
/// burst, and client writes with them. Syncing as it goes keeps the burst
/// to this size.
const SYNC_EVERY_BYTES: u64 = 8 << 20;

impl BlockWriter {
    /// A writer positioned after the header, which is written here.
    pub(crate) fn new(mut file: File, header: &[u8]) -> Result<Self, StorageError> {
        file.write_all(header)?;
        Ok(BlockWriter {
            file,
            pending: Vec::with_capacity(BLOCK_BYTES as usize + CHECKSUM_BYTES as usize),
            next_block: 0,
            data_bytes: 0,
            unsynced_bytes: 0,
        })
    }

    /// Appends data, writing every block it completes.
    pub(crate) fn write(&mut self, mut data: &[u8]) -> Result<(), StorageError> {
        while !data.is_empty() {
            let room = BLOCK_BYTES as usize - self.pending.len();
            let taken = room.min(data.len());
            self.pending.extend_from_slice(&data[..taken]);
            self.data_bytes += taken as u64;
            data = &data[taken..];
            if self.pending.len() == BLOCK_BYTES as usize {
                self.write_block()?;
            }
        }
        Ok(())
    }

    fn write_block(&mut self) -> Result<(), StorageError> {
        let checksum = block_checksum(self.next_block, &self.pending);
        self.pending.extend_from_slice(&checksum.to_le_bytes());
        self.file.write_all(&self.pending)?;
        self.unsynced_bytes += self.pending.len() as u64;
        self.pending.clear();
        self.next_block += 1;
        if self.unsynced_bytes >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced_bytes = 0;
        }
        Ok(())
    }

    /// Writes the last partial block and the trailer, and makes the file
    /// durable. Returns the data size.
    pub(crate) fn finish(mut self) -> Result<u64, StorageError> {
        if !self.pending.is_empty() {
            self.write_block()?;
        }
        self.file.write_all(&encode_trailer(self.data_bytes))?;
        self.file.sync_all()?;
        Ok(self.data_bytes)
    }
}
