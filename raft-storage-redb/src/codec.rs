//! The on-disk encoding of every value the log store keeps in redb.
//!
//! Each value is a small envelope around a postcard body:
//!
//! ```text
//! byte 0      envelope version (1)
//! byte 1      record kind (1 = log entry, 2 = hard state, 3 = snapshot metadata,
//!             4 = WAL checkpoint)
//! bytes 2..6  CRC32C, little-endian, over: the record's key as 8 little-endian
//!             bytes, then bytes 0..2, then the body
//! bytes 6..   the record as postcard (serde)
//! ```
//!
//! The checksum covers the key so that a value that lands under the wrong key
//! (a misdirected write, a damaged branch page) fails verification instead
//! of being served as another index. The kind byte keeps a hard state from
//! ever decoding as an entry. The version byte lets a later release change a
//! body's encoding record by record.
//!
//! The format-version record is deliberately not an envelope: it must stay
//! readable by every future release, so it is eight fixed bytes (the version
//! as a little-endian `u32`, then a CRC32C of those four bytes).

use serde::de::DeserializeOwned;
use serde::Serialize;

use raft_core::storage::StorageError;

/// The envelope version this release writes and reads.
const ENVELOPE_VERSION: u8 = 1;
/// Bytes before the postcard body.
const HEADER_BYTES: usize = 6;
/// Bytes of the format-version record.
const FORMAT_RECORD_BYTES: usize = 8;

/// What a value holds; stored in the envelope and checked on read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecordKind {
    /// A log entry, keyed by its index.
    Entry = 1,
    /// The hard state (key 0).
    HardState = 2,
    /// The current snapshot's metadata (key 0).
    SnapshotMeta = 3,
    /// The sequence number of the last WAL record checkpointed into redb
    /// (key 0).
    WalCheckpoint = 4,
}

/// Encodes `value` as an envelope into `buffer` (cleared first), so a batch
/// of entries reuses one allocation.
pub(crate) fn encode_into<T: Serialize>(
    kind: RecordKind,
    key: u64,
    value: &T,
    buffer: &mut Vec<u8>,
) -> Result<(), StorageError> {
    let mut out = std::mem::take(buffer);
    out.clear();
    out.extend_from_slice(&[ENVELOPE_VERSION, kind as u8, 0, 0, 0, 0]);
    let mut out = postcard::to_extend(value, out)
        .map_err(|error| StorageError::Backend(format!("encoding a {kind:?} record failed: {error}")))?;
    let checksum = envelope_checksum(key, &out[..2], &out[HEADER_BYTES..]);
    out[2..HEADER_BYTES].copy_from_slice(&checksum.to_le_bytes());
    *buffer = out;
    Ok(())
}

/// Verifies and decodes an envelope. The error describes the damage; the
/// caller names the record.
pub(crate) fn decode<T: DeserializeOwned>(kind: RecordKind, key: u64, bytes: &[u8]) -> Result<T, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "the value is {} bytes, shorter than its {HEADER_BYTES}-byte header",
            bytes.len()
        ));
    }
    let (header, body) = bytes.split_at(HEADER_BYTES);
    if header[0] != ENVELOPE_VERSION {
        return Err(format!("unknown envelope version {}", header[0]));
    }
    if header[1] != kind as u8 {
        return Err(format!("record kind {} where {} ({kind:?}) belongs", header[1], kind as u8));
    }
    let stored = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
    let computed = envelope_checksum(key, &header[..2], body);
    if stored != computed {
        return Err(format!("checksum mismatch (stored {stored:08x}, computed {computed:08x})"));
    }
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} unexpected bytes after the record", rest.len())),
        Err(error) => Err(format!("the record does not decode: {error}")),
    }
}

fn envelope_checksum(key: u64, version_and_kind: &[u8], body: &[u8]) -> u32 {
    let checksum = crc32c::crc32c(&key.to_le_bytes());
    let checksum = crc32c::crc32c_append(checksum, version_and_kind);
    crc32c::crc32c_append(checksum, body)
}

/// Encodes the format-version record.
pub(crate) fn encode_format_version(version: u32) -> [u8; FORMAT_RECORD_BYTES] {
    let version_bytes = version.to_le_bytes();
    let checksum = crc32c::crc32c(&version_bytes);
    let mut record = [0; FORMAT_RECORD_BYTES];
    record[..4].copy_from_slice(&version_bytes);
    record[4..].copy_from_slice(&checksum.to_le_bytes());
    record
}

/// Decodes the format-version record.
pub(crate) fn decode_format_version(bytes: &[u8]) -> Result<u32, StorageError> {
    let damaged = |problem: String| StorageError::Corrupt(format!("the format-version record {problem}"));
    let record: [u8; FORMAT_RECORD_BYTES] = bytes
        .try_into()
        .map_err(|_| damaged(format!("is {} bytes, not {FORMAT_RECORD_BYTES}", bytes.len())))?;
    let version_bytes = [record[0], record[1], record[2], record[3]];
    let stored = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
    let computed = crc32c::crc32c(&version_bytes);
    if stored != computed {
        return Err(damaged(format!("fails its checksum (stored {stored:08x}, computed {computed:08x})")));
    }
    Ok(u32::from_le_bytes(version_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::types::{Entry, EntryPayload, LogIndex, Term};

    fn entry(index: u64) -> Entry {
        Entry {
            term: Term(3),
            index: LogIndex(index),
            payload: EntryPayload::Command { client: None, data: bytes::Bytes::from_static(b"payload") },
        }
    }

    #[test]
    fn an_entry_round_trips() {
        let mut buffer = Vec::new();
        encode_into(RecordKind::Entry, 7, &entry(7), &mut buffer).unwrap();
        assert_eq!(decode::<Entry>(RecordKind::Entry, 7, &buffer), Ok(entry(7)));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buffer = Vec::new();
        encode_into(RecordKind::Entry, 7, &entry(7), &mut buffer).unwrap();
        for bit in 0..buffer.len() * 8 {
            let mut damaged = buffer.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode::<Entry>(RecordKind::Entry, 7, &damaged).is_err(), "bit {bit} flipped unnoticed");
        }
    }

    #[test]
    fn a_value_under_another_key_or_kind_is_refused() {
        let mut buffer = Vec::new();
        encode_into(RecordKind::Entry, 7, &entry(7), &mut buffer).unwrap();
        assert!(decode::<Entry>(RecordKind::Entry, 8, &buffer).unwrap_err().contains("checksum"));
        assert!(decode::<Entry>(RecordKind::HardState, 7, &buffer).unwrap_err().contains("kind"));
        assert!(decode::<Entry>(RecordKind::Entry, 7, &buffer[..3]).unwrap_err().contains("shorter"));
    }

    #[test]
    fn the_format_record_round_trips_and_detects_damage() {
        let record = encode_format_version(1);
        assert_eq!(decode_format_version(&record).unwrap(), 1);
        let mut damaged = record;
        damaged[0] ^= 2;
        assert!(matches!(decode_format_version(&damaged), Err(StorageError::Corrupt(_))));
        assert!(matches!(decode_format_version(&record[..5]), Err(StorageError::Corrupt(_))));
    }
}
