//! The write-ahead log in front of redb: preallocated segment files, one
//! checksummed record per [`LogWrite`], recovery that tells a torn tail
//! from damage in the middle. The format and the reasons for it are in the
//! crate's `DESIGN.md`, "The write-ahead log".
//!
//! Segment file `<number, 20 digits>.seg`, created whole (zero-filled,
//! synced, renamed into place) before it is needed:
//!
//! ```text
//! bytes 0..8    magic "RAFTWAL\0"
//! bytes 8..12   WAL format version (u32, little-endian)
//! bytes 12..16  zero
//! bytes 16..24  the segment's number (u64), equal to the one in its name
//! bytes 24..32  the segment's capacity (u64): the file's exact length
//! bytes 32..36  CRC32C of bytes 0..32
//! bytes 36..64  zero
//! bytes 64..    records, each starting at a multiple of 8, then zeros
//! ```
//!
//! Record:
//!
//! ```text
//! bytes 0..4    body length (u32, > 0)
//! byte  4       kind (1 = one LogWrite)
//! bytes 5..8    zero
//! bytes 8..16   sequence number (u64), one more than the previous record's
//! bytes 16..20  CRC32C over bytes 0..16, then bytes 20..24, then the body
//! bytes 20..24  zero
//! bytes 24..    body: postcard of (install snapshot, entries, hard state)
//! then zeros up to the next multiple of 8
//! ```

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use raft_core::storage::{LogWrite, StorageError};
use raft_core::types::{Entry, HardState, SnapshotMeta};

use crate::log_store::sync_directory;

/// The WAL format this release writes and the newest it reads.
pub(crate) const WAL_FORMAT_VERSION: u32 = 1;
const SEGMENT_MAGIC: &[u8; 8] = b"RAFTWAL\0";
/// Bytes of a segment's header; the first record starts here.
pub(crate) const SEGMENT_HEADER_BYTES: u64 = 64;
const RECORD_HEADER_BYTES: usize = 24;
const RECORD_ALIGNMENT: usize = 8;
const KIND_LOG_WRITE: u8 = 1;
const SEGMENT_SUFFIX: &str = ".seg";
const CREATING_SUFFIX: &str = ".seg.creating";
/// The file (in the WAL directory) where the durable end of the log is
/// recorded when [`crate::LogStoreOptions::record_synced_position`] is on.
pub const SYNCED_MARKER_FILE_NAME: &str = "synced-position";
/// Zeros are written in pieces of this size when a segment is created, so
/// creating a 64 MiB segment needs only this much memory.
const ZERO_FILL_BYTES: usize = 1 << 20;

/// The body of a record, borrowed from the write being logged (same field
/// order as [`WalWriteOwned`], so postcard encodes both alike).
#[derive(Serialize)]
struct WalWriteRef<'a> {
    install_snapshot: &'a Option<SnapshotMeta>,
    entries: &'a [Entry],
    hard_state: &'a Option<HardState>,
}

/// A record's body as read back.
#[derive(Deserialize)]
pub(crate) struct WalWriteOwned {
    pub(crate) install_snapshot: Option<SnapshotMeta>,
    pub(crate) entries: Vec<Entry>,
    pub(crate) hard_state: Option<HardState>,
}

fn segment_name(number: u64) -> String {
    format!("{number:020}{SEGMENT_SUFFIX}")
}

fn corrupt(path: &Path, problem: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("write-ahead log {}: {problem}", path.display()))
}

fn encode_segment_header(number: u64, capacity: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&number.to_le_bytes());
    header[24..32].copy_from_slice(&capacity.to_le_bytes());
    let checksum = crc32c::crc32c(&header[..32]);
    header[32..36].copy_from_slice(&checksum.to_le_bytes());
    header
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buffer)
}

/// Checks a segment header; returns its capacity.
fn check_segment_header(path: &Path, number: u64, header: &[u8]) -> Result<u64, StorageError> {
    if header.len() < SEGMENT_HEADER_BYTES as usize {
        return Err(corrupt(path, "shorter than a segment header"));
    }
    if &header[..8] != SEGMENT_MAGIC {
        return Err(corrupt(path, "the segment header has no magic number"));
    }
    let stored = u32_at(header, 32);
    let computed = crc32c::crc32c(&header[..32]);
    if stored != computed {
        return Err(corrupt(
            path,
            format!("the segment header fails its checksum ({stored:08x} ≠ {computed:08x})"),
        ));
    }
    let version = u32_at(header, 8);
    if version > WAL_FORMAT_VERSION {
        return Err(StorageError::UnsupportedVersion { found: version, supported: WAL_FORMAT_VERSION });
    }
    if version == 0 || header[12..16] != [0; 4] || header[36..64].iter().any(|byte| *byte != 0) {
        return Err(corrupt(path, "the segment header has unknown fields"));
    }
    if u64_at(header, 16) != number {
        return Err(corrupt(path, format!("the header names segment {}", u64_at(header, 16))));
    }
    Ok(u64_at(header, 24))
}

fn record_checksum(header: &[u8], body: &[u8]) -> u32 {
    let checksum = crc32c::crc32c(&header[..16]);
    let checksum = crc32c::crc32c_append(checksum, &header[20..24]);
    crc32c::crc32c_append(checksum, body)
}

fn aligned(length: usize) -> usize {
    length.div_ceil(RECORD_ALIGNMENT) * RECORD_ALIGNMENT
}

/// Encodes `write` as one record with sequence number `seq` into `buffer`
/// (cleared first; padded to the record alignment).
pub(crate) fn encode_record(write: &LogWrite, seq: u64, buffer: &mut Vec<u8>) -> Result<(), StorageError> {
    let body = WalWriteRef {
        install_snapshot: &write.install_snapshot,
        entries: &write.entries,
        hard_state: &write.hard_state,
    };
    let mut out = std::mem::take(buffer);
    out.clear();
    out.resize(RECORD_HEADER_BYTES, 0);
    let mut out = postcard::to_extend(&body, out)
        .map_err(|error| StorageError::Backend(format!("encoding a WAL record failed: {error}")))?;
    let body_bytes = out.len() - RECORD_HEADER_BYTES;
    let length = u32::try_from(body_bytes)
        .map_err(|_| StorageError::InvalidWrite(format!("a write of {body_bytes} bytes is over 4 GiB")))?;
    out[..4].copy_from_slice(&length.to_le_bytes());
    out[4] = KIND_LOG_WRITE;
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    let checksum = record_checksum(&out[..RECORD_HEADER_BYTES], &out[RECORD_HEADER_BYTES..]);
    out[16..20].copy_from_slice(&checksum.to_le_bytes());
    out.resize(aligned(out.len()), 0);
    *buffer = out;
    Ok(())
}

/// A record found intact in a segment.
struct FoundRecord<'a> {
    seq: u64,
    body: &'a [u8],
    /// Where the next record starts.
    next: usize,
}

/// The record at `offset` if its header is sane and its checksum matches.
fn parse_record(segment: &[u8], offset: usize) -> Option<FoundRecord<'_>> {
    let header = segment.get(offset..offset.checked_add(RECORD_HEADER_BYTES)?)?;
    let length = u32_at(header, 0) as usize;
    if length == 0 || header[4] != KIND_LOG_WRITE || header[5..8] != [0; 3] || header[20..24] != [0; 4] {
        return None;
    }
    let body_start = offset + RECORD_HEADER_BYTES;
    let body = segment.get(body_start..body_start.checked_add(length)?)?;
    if u32_at(header, 16) != record_checksum(header, body) {
        return None;
    }
    Some(FoundRecord { seq: u64_at(header, 8), body, next: offset + aligned(RECORD_HEADER_BYTES + length) })
}

/// Decodes a record's body; damage here is corruption (the checksum held).
pub(crate) fn decode_body(body: &[u8]) -> Result<WalWriteOwned, String> {
    match postcard::take_from_bytes::<WalWriteOwned>(body) {
        Ok((write, [])) => Ok(write),
        Ok((_, rest)) => Err(format!("{} unexpected bytes after the record", rest.len())),
        Err(error) => Err(format!("the record does not decode: {error}")),
    }
}

/// A segment the writer can append to.
struct OpenSegment {
    number: u64,
    file: File,
    capacity: u64,
}

/// A segment the writer has left, kept until a checkpoint covers it.
struct ClosedSegment {
    number: u64,
    /// The last record's sequence number, if it holds any.
    last_seq: Option<u64>,
}

/// The WAL's files: creation of new segments (by the background thread
/// ahead of need, or by the writer when none is ready), spare segments and
/// the closed ones awaiting deletion.
pub(crate) struct WalFiles {
    directory: PathBuf,
    segment_bytes: u64,
    /// Held while a segment is created; guards the next segment number, so
    /// segments are numbered in the order they are handed to the writer.
    creation: Mutex<u64>,
    /// Created segments not yet used, in number order. At most one is made
    /// ahead of need; the writer may add an oversized one.
    spares: Mutex<VecDeque<OpenSegment>>,
    /// Segments the writer has left, in number order.
    closed: Mutex<Vec<ClosedSegment>>,
    /// Set by the writer once its segment is half full (or when it has
    /// none): only then is a spare made, so a store that writes little
    /// keeps one segment on disk, and a busy one finds the next ready.
    spare_wanted: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, StorageError> {
    mutex.lock().map_err(|_| StorageError::Backend("a write-ahead log lock is poisoned".into()))
}

impl WalFiles {
    /// The directory of the WAL.
    pub(crate) fn directory(&self) -> &Path {
        &self.directory
    }

    /// Creates one spare segment if none is waiting. Runs in the background
    /// so that the writer finds its next segment ready.
    pub(crate) fn ensure_spare(&self) -> Result<(), StorageError> {
        if !self.spare_wanted.load(Ordering::SeqCst) || !lock(&self.spares)?.is_empty() {
            return Ok(());
        }
        let mut next_number = lock(&self.creation)?;
        if !lock(&self.spares)?.is_empty() {
            return Ok(());
        }
        let segment = self.create_segment(*next_number, self.segment_bytes)?;
        *next_number += 1;
        lock(&self.spares)?.push_back(segment);
        Ok(())
    }

    /// A segment with room for `record_bytes`: the next spare, or a new
    /// one. A record larger than the standard capacity gets a segment of
    /// its own size, which takes the next spare's number (replacing that
    /// unused file) so the numbers stay in the order of use.
    fn take_segment(&self, record_bytes: u64) -> Result<OpenSegment, StorageError> {
        let needed = SEGMENT_HEADER_BYTES + record_bytes;
        let oversized = |segment: OpenSegment| {
            let capacity = needed.div_ceil(ZERO_FILL_BYTES as u64) * ZERO_FILL_BYTES as u64;
            self.create_segment(segment.number, capacity)
        };
        let spare = lock(&self.spares)?.pop_front();
        if let Some(segment) = spare {
            return if segment.capacity >= needed { Ok(segment) } else { oversized(segment) };
        }
        // None ready: wait for one being created, or create it here.
        let mut next_number = lock(&self.creation)?;
        let spare = lock(&self.spares)?.pop_front();
        let segment = match spare {
            Some(segment) => segment,
            None => {
                let segment = self.create_segment(*next_number, self.segment_bytes)?;
                *next_number += 1;
                segment
            }
        };
        drop(next_number);
        if segment.capacity >= needed {
            Ok(segment)
        } else {
            oversized(segment)
        }
    }

    /// Writes a whole zero-filled segment under a temporary name, syncs it
    /// and renames it into place: a file under a segment name is always a
    /// complete segment whose every block is allocated and written, so
    /// appending to it later changes no file metadata and `fdatasync` costs
    /// one data flush.
    fn create_segment(&self, number: u64, capacity: u64) -> Result<OpenSegment, StorageError> {
        let path = self.directory.join(segment_name(number));
        let creating = self.directory.join(format!("{number:020}{CREATING_SUFFIX}"));
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&creating)?;
        file.write_all(&encode_segment_header(number, capacity))?;
        let zeros = vec![0u8; ZERO_FILL_BYTES];
        let mut written = SEGMENT_HEADER_BYTES;
        while written < capacity {
            let piece = (capacity - written).min(ZERO_FILL_BYTES as u64) as usize;
            file.write_all(&zeros[..piece])?;
            written += piece as u64;
        }
        file.sync_all()?;
        fs::rename(&creating, &path)?;
        sync_directory(&self.directory)?;
        Ok(OpenSegment { number, file, capacity })
    }

    /// Deletes the closed segments whose records a checkpoint at
    /// `checkpoint_seq` covers. Their deletion need not be durable: a
    /// segment that reappears after a crash holds only covered records,
    /// which recovery skips.
    pub(crate) fn delete_covered(&self, checkpoint_seq: u64) -> Result<usize, StorageError> {
        let covered: Vec<u64> = {
            let mut closed = lock(&self.closed)?;
            let keep_from = closed
                .iter()
                .position(|segment| segment.last_seq.is_some_and(|last| last > checkpoint_seq))
                .unwrap_or(closed.len());
            closed.drain(..keep_from).map(|segment| segment.number).collect()
        };
        for number in &covered {
            match fs::remove_file(self.directory.join(segment_name(*number))) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
                _ => {}
            }
        }
        Ok(covered.len())
    }

    /// The segment files present, for tests and monitoring.
    pub(crate) fn segment_count(&self) -> Result<usize, StorageError> {
        Ok(list_segments(&self.directory)?.len())
    }
}

/// Appends records to the current segment.
pub(crate) struct WalWriter {
    current: Option<OpenSegment>,
    /// Where the next record goes in the current segment.
    offset: u64,
    /// The current segment's last record.
    current_last_seq: Option<u64>,
    next_seq: u64,
    /// Whether the current segment holds records not yet flushed.
    unsynced: bool,
    buffer: Vec<u8>,
    /// Where the durable end of the log is recorded after every flush, when
    /// [`crate::LogStoreOptions::record_synced_position`] asks for it.
    synced_marker: Option<File>,
}

/// The most memory the encode buffer keeps between writes; a larger write
/// gets a temporary allocation that is given back afterwards.
const KEPT_BUFFER_BYTES: usize = 4 << 20;

impl WalWriter {
    /// Appends `write` as one record and, when `write.sync`, flushes it.
    /// Returns the record's sequence number.
    pub(crate) fn append(&mut self, files: &WalFiles, write: &LogWrite) -> Result<u64, StorageError> {
        let seq = self.next_seq;
        let mut buffer = std::mem::take(&mut self.buffer);
        encode_record(write, seq, &mut buffer)?;
        let record_bytes = buffer.len() as u64;
        let fits =
            self.current.as_ref().is_some_and(|segment| self.offset + record_bytes <= segment.capacity);
        if !fits {
            self.rotate(files, record_bytes)?;
        }
        let segment = self.current.as_ref().expect("rotate leaves a current segment");
        segment.file.write_all_at(&buffer, self.offset)?;
        if write.sync {
            segment.file.sync_data()?;
        }
        self.unsynced = !write.sync;
        self.offset += record_bytes;
        if self.offset * 2 > segment.capacity {
            files.spare_wanted.store(true, Ordering::SeqCst);
        }
        self.current_last_seq = Some(seq);
        self.next_seq += 1;
        if write.sync {
            self.record_synced_position()?;
        }
        if buffer.capacity() <= KEPT_BUFFER_BYTES {
            self.buffer = buffer;
        }
        Ok(seq)
    }

    /// Flushes records appended without `sync`.
    pub(crate) fn sync(&mut self) -> Result<(), StorageError> {
        if self.unsynced {
            if let Some(segment) = &self.current {
                segment.file.sync_data()?;
            }
            self.unsynced = false;
            self.record_synced_position()?;
        }
        Ok(())
    }

    /// Starts recording the durable end of the log in `directory`'s
    /// [`SYNCED_MARKER_FILE_NAME`], beginning with the current position,
    /// which recovery has just made durable.
    pub(crate) fn attach_synced_marker(&mut self, directory: &Path) -> Result<(), StorageError> {
        let path = directory.join(SYNCED_MARKER_FILE_NAME);
        self.synced_marker = Some(OpenOptions::new().create(true).write(true).truncate(true).open(path)?);
        self.record_synced_position()
    }

    /// Overwrites the marker with the current segment and offset. The
    /// marker itself is not synced: it only has to survive the process
    /// (`kill -9`), not the machine, for a fault-injection tool to cut the
    /// log back to it. A segment of number 0 that does not exist yet means
    /// nothing is durable.
    fn record_synced_position(&self) -> Result<(), StorageError> {
        let Some(marker) = &self.synced_marker else { return Ok(()) };
        let number = self.current.as_ref().map_or(0, |segment| segment.number);
        let line = format!("{number:020} {:020}\n", self.offset);
        marker.write_all_at(line.as_bytes(), 0)?;
        Ok(())
    }

    fn rotate(&mut self, files: &WalFiles, record_bytes: u64) -> Result<(), StorageError> {
        // The old segment's unflushed records must be durable before any
        // later record is: recovery treats a damaged record followed by an
        // intact one as corruption, not as a torn tail.
        self.sync()?;
        let next = files.take_segment(record_bytes)?;
        files.spare_wanted.store(false, Ordering::SeqCst);
        if let Some(old) = self.current.replace(next) {
            lock(&files.closed)?.push(ClosedSegment { number: old.number, last_seq: self.current_last_seq });
        }
        self.offset = SEGMENT_HEADER_BYTES;
        self.current_last_seq = None;
        Ok(())
    }
}

/// Lists `(number, path)` of the segment files, in number order, removing
/// segments left half-created by a crash.
fn list_segments(directory: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut segments = Vec::new();
    for item in fs::read_dir(directory)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(CREATING_SUFFIX) {
            fs::remove_file(item.path())?;
        } else if let Some(number) = name.strip_suffix(SEGMENT_SUFFIX) {
            if let Ok(number) = number.parse::<u64>() {
                segments.push((number, item.path()));
            }
        }
    }
    segments.sort_unstable_by_key(|(number, _)| *number);
    Ok(segments)
}

/// What recovery hands back.
pub(crate) struct Recovered {
    pub(crate) files: WalFiles,
    pub(crate) writer: WalWriter,
    /// The last intact record's sequence number.
    pub(crate) last_seq: Option<u64>,
    /// Whether a torn tail was found (and zeroed).
    pub(crate) torn_tail: bool,
}

/// Reads the WAL in `directory`, calling `apply` for every record after
/// `checkpoint_seq` in order, and positions a writer after the last intact
/// record.
///
/// Reading stops at the first record that is damaged or out of sequence.
/// If everything after it (in its segment and in every later segment) is
/// zeros or holds no intact record, it was a torn write that was never
/// acknowledged: it is zeroed and writing continues there. An intact record
/// after it means an acknowledged record in the middle was damaged:
/// `Corrupt`, and nothing is truncated.
///
/// Memory: one segment's bytes at a time (its capacity, 64 MiB by default).
pub(crate) fn recover(
    directory: &Path,
    segment_bytes: u64,
    checkpoint_seq: u64,
    mut apply: impl FnMut(u64, &[u8]) -> Result<(), StorageError>,
) -> Result<Recovered, StorageError> {
    let segments = list_segments(directory)?;
    let mut expected: Option<u64> = None;
    let mut first_seq: Option<u64> = None;
    // (index in `segments`, offset after its last intact record, last seq).
    let mut position: Option<(usize, u64, Option<u64>)> = None;
    let mut closed: Vec<ClosedSegment> = Vec::new();
    // Where the first damaged record was found: (segment index, offset).
    let mut damaged: Option<(usize, usize)> = None;
    let mut to_zero: Vec<(usize, usize, usize)> = Vec::new();
    for (index, (number, path)) in segments.iter().enumerate() {
        let bytes = read_segment(path, *number)?;
        let mut offset = SEGMENT_HEADER_BYTES as usize;
        let mut segment_last: Option<u64> = None;
        if damaged.is_none() {
            while let Some(record) = parse_record(&bytes, offset) {
                if expected.is_some_and(|expected| record.seq != expected) {
                    break;
                }
                first_seq.get_or_insert(record.seq);
                if record.seq > checkpoint_seq {
                    apply(record.seq, record.body)?;
                }
                expected = Some(record.seq + 1);
                segment_last = Some(record.seq);
                offset = record.next;
            }
            if segment_last.is_some() || position.is_none() {
                if let Some((previous, _, previous_last)) = position {
                    closed.push(ClosedSegment { number: segments[previous].0, last_seq: previous_last });
                }
                position = Some((index, offset as u64, segment_last));
            }
        }
        let end = last_nonzero(&bytes[offset..]).map(|last| offset + last + 1);
        let Some(end) = end else { continue };
        // Non-zero bytes after the last intact record (or anywhere in a
        // segment after a damaged one): a torn write only if no intact
        // record with a later sequence number follows.
        let last_good = expected.map(|next| next.saturating_sub(1));
        if let Some(found) = later_record(&bytes, offset, last_good) {
            return Err(corrupt(
                path,
                format!(
                    "an intact record (sequence {found}) follows a damaged one at offset {offset}: \
                     acknowledged data in the middle of the log is damaged"
                ),
            ));
        }
        damaged.get_or_insert((index, offset));
        to_zero.push((index, offset, end));
    }
    if let (Some(first), Some(next)) = (first_seq, expected) {
        let last = next - 1;
        if first > checkpoint_seq.saturating_add(1) {
            return Err(corrupt(
                directory,
                format!(
                    "records {} to {} are missing (the checkpoint is at {checkpoint_seq})",
                    checkpoint_seq + 1,
                    first - 1
                ),
            ));
        }
        if last < checkpoint_seq {
            return Err(corrupt(
                directory,
                format!("the log ends at record {last}, before the checkpoint at {checkpoint_seq}"),
            ));
        }
    }
    // Zero the torn tail so that a later record written there is never
    // followed by leftovers of the torn one.
    for (index, from, to) in &to_zero {
        zero_range(&segments[*index].1, *from, *to)?;
    }
    let torn_tail = !to_zero.is_empty();
    let last_seq = expected.map(|next| next - 1);
    let next_seq = last_seq.unwrap_or(0).max(checkpoint_seq) + 1;
    let mut spares = VecDeque::new();
    let mut writer = WalWriter {
        current: None,
        offset: SEGMENT_HEADER_BYTES,
        current_last_seq: None,
        next_seq,
        unsynced: false,
        buffer: Vec::new(),
        synced_marker: None,
    };
    if let Some((index, offset, last)) = position {
        let (number, path) = &segments[index];
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        // The process that wrote the last records may have been killed
        // between writing one and flushing it: the record then sits in the
        // page cache, readable but not durable. It is about to be treated
        // as logged (and acknowledged to peers), so it is flushed first.
        // Earlier segments were flushed before the writer left them.
        file.sync_data()?;
        let capacity = file.metadata()?.len();
        writer.current = Some(OpenSegment { number: *number, file, capacity });
        writer.offset = offset;
        writer.current_last_seq = last;
        for (number, path) in &segments[index + 1..] {
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            let capacity = file.metadata()?.len();
            spares.push_back(OpenSegment { number: *number, file, capacity });
        }
    }
    let next_number = segments.last().map_or(0, |(number, _)| number + 1);
    let spare_wanted = spares.is_empty()
        && writer.current.as_ref().is_none_or(|segment| writer.offset * 2 > segment.capacity);
    let files = WalFiles {
        directory: directory.to_path_buf(),
        segment_bytes,
        creation: Mutex::new(next_number),
        spares: Mutex::new(spares),
        closed: Mutex::new(closed),
        spare_wanted: AtomicBool::new(spare_wanted),
    };
    Ok(Recovered { files, writer, last_seq, torn_tail })
}

/// Overwrites bytes `from..to` of the segment at `path` with zeros and
/// flushes them.
fn zero_range(path: &Path, from: usize, to: usize) -> Result<(), StorageError> {
    let file = OpenOptions::new().write(true).open(path)?;
    let zeros = vec![0u8; ZERO_FILL_BYTES.min(to.saturating_sub(from))];
    let mut at = from;
    while at < to {
        let piece = (to - at).min(zeros.len());
        file.write_all_at(&zeros[..piece], at as u64)?;
        at += piece;
    }
    file.sync_data()?;
    Ok(())
}

/// Fault injection: cuts the stopped store's write-ahead log in `directory`
/// back to the durable end its [`SYNCED_MARKER_FILE_NAME`] recorded, as if
/// the machine had lost power and every write not yet flushed with it.
/// Zeroes what follows the marked offset in the marked segment and every
/// record of later segments (segments are preallocated and zero-filled,
/// so zeros are what such a disk would hold). Returns how many bytes of
/// records were dropped.
pub(crate) fn discard_unsynced(directory: &Path) -> Result<u64, StorageError> {
    let marker_path = directory.join(SYNCED_MARKER_FILE_NAME);
    let marker = fs::read_to_string(&marker_path).map_err(|error| {
        StorageError::Backend(format!(
            "reading {}: {error} (the store must run with record_synced_position)",
            marker_path.display()
        ))
    })?;
    let malformed =
        || StorageError::Corrupt(format!("{}: malformed marker {marker:?}", marker_path.display()));
    let mut fields = marker.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(synced_segment)), Some(Ok(synced_offset)), None) =
        (fields.next(), fields.next(), fields.next())
    else {
        return Err(malformed());
    };
    if synced_offset < SEGMENT_HEADER_BYTES {
        return Err(malformed());
    }
    let mut dropped = 0u64;
    for (number, path) in list_segments(directory)? {
        let from = match number.cmp(&synced_segment) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Equal => synced_offset as usize,
            std::cmp::Ordering::Greater => SEGMENT_HEADER_BYTES as usize,
        };
        let bytes = read_segment(&path, number)?;
        if from >= bytes.len() {
            continue;
        }
        if let Some(last) = last_nonzero(&bytes[from..]) {
            dropped += last as u64 + 1;
            zero_range(&path, from, from + last + 1)?;
        }
    }
    Ok(dropped)
}

/// Reads a whole segment and checks its header and length. The buffer is
/// the segment's length, which its checksummed header must confirm.
fn read_segment(path: &Path, number: u64) -> Result<Vec<u8>, StorageError> {
    use std::io::Seek;
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    if length < SEGMENT_HEADER_BYTES {
        return Err(corrupt(path, format!("the segment is {length} bytes, shorter than its header")));
    }
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    file.read_exact(&mut header)?;
    let capacity = check_segment_header(path, number, &header)?;
    if capacity != length {
        return Err(corrupt(
            path,
            format!("the segment is {length} bytes but was created with {capacity} (truncated or extended)"),
        ));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(length as usize)
        .map_err(|error| StorageError::Backend(format!("reading a {length}-byte WAL segment: {error}")))?;
    file.seek(std::io::SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    // Eight bytes at a time: recovery reads whole zero-filled segments.
    let full = bytes.len() / 8 * 8;
    if let Some(position) = bytes[full..].iter().rposition(|byte| *byte != 0) {
        return Some(full + position);
    }
    for (index, chunk) in bytes[..full].chunks_exact(8).enumerate().rev() {
        if chunk != [0u8; 8] {
            return Some(index * 8 + chunk.iter().rposition(|byte| *byte != 0).unwrap_or(0));
        }
    }
    None
}

/// An intact record at or after `from` (at record alignment) whose sequence
/// number is later than `last_good`: proof that what stopped the reading
/// was not a torn tail.
fn later_record(segment: &[u8], from: usize, last_good: Option<u64>) -> Option<u64> {
    let mut offset = from;
    while offset + RECORD_HEADER_BYTES <= segment.len() {
        if let Some(record) = parse_record(segment, offset) {
            if last_good.is_none_or(|last| record.seq > last) {
                return Some(record.seq);
            }
        }
        offset += RECORD_ALIGNMENT;
    }
    None
}

/// Creates an empty WAL directory (used when a store is created).
pub(crate) fn create_directory(directory: &Path) -> Result<(), StorageError> {
    fs::create_dir_all(directory)?;
    if let Some(parent) = directory.parent() {
        sync_directory(parent)?;
    }
    Ok(())
}
