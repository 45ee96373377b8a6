//! The exported checkpoint file, and starting a new cluster from one.
//!
//! `GET /v1/checkpoints/{name}/export` streams a file that describes itself,
//! so that it can be checked before anything is restored from it:
//!
//! ```text
//! magic            "RAFTCKPT" (8 bytes)
//! format version   u32 little-endian (1)
//! header length    u32 little-endian (at most MAX_HEADER_BYTES)
//! header           JSON: name, index, term, created_unix_ms, size_bytes,
//!                  checksum (the CRC-32C of the snapshot bytes)
//! snapshot         size_bytes bytes: the key-value state machine's
//!                  snapshot at the checkpoint's index (kv/snapshot.rs)
//! ```
//!
//! Restoring ([`restore_into`]) prepares an empty data directory for
//! `raft-node run --bootstrap --restore-from FILE`: it checks the file
//! (magic, version, size, checksum, then the snapshot's own format), keeps
//! the keys, versions and deduplication table, replaces the node directory
//! with the new cluster's initial members (the old cluster's addresses mean
//! nothing there), and records the state as the snapshot at the
//! checkpoint's own index and term with the new membership. The new
//! cluster's log therefore starts after the checkpoint's index, so every
//! key's version (an index of the old log) stays below the indexes the new
//! cluster assigns, and compare-and-set on versions keeps its meaning.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use raft_core::storage::{CheckpointInfo, LogStore, LogWrite, SnapshotReader, SnapshotStore, StorageError};
use raft_core::types::{HardState, LogIndex, Membership, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::kv::{Directory, KvLimits};

/// The first bytes of an exported checkpoint file.
pub const FILE_MAGIC: [u8; 8] = *b"RAFTCKPT";
/// The file format this release writes (and the newest it reads).
pub const FILE_FORMAT_VERSION: u32 = 1;
/// The largest JSON header a reader accepts.
pub const MAX_HEADER_BYTES: u32 = 64 * 1024;
/// The most bytes read from the file at once.
const READ_BYTES: u64 = 1 << 20;

/// The JSON header of an exported checkpoint file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// The checkpoint's name in the cluster it came from.
    pub name: String,
    /// The index of the entry that created it.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The size of the snapshot that follows the header, in bytes.
    pub size_bytes: u64,
    /// The CRC-32C of the snapshot bytes.
    pub checksum: u32,
}

impl FileHeader {
    /// The header describing a checkpoint.
    pub fn of(info: &CheckpointInfo) -> FileHeader {
        FileHeader {
            name: info.meta.name.clone(),
            index: info.meta.snapshot.last_index.get(),
            term: info.meta.snapshot.last_term.get(),
            created_unix_ms: info.meta.created_unix_ms,
            size_bytes: info.size_bytes,
            checksum: info.checksum,
        }
    }

    /// The bytes that precede the snapshot in the file: magic, version,
    /// header length and header.
    pub fn encode(&self) -> Bytes {
        // A header of a few plain fields always serializes.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut bytes = BytesMut::with_capacity(16 + json.len());
        bytes.put_slice(&FILE_MAGIC);
        bytes.put_u32_le(FILE_FORMAT_VERSION);
        bytes.put_u32_le(json.len() as u32);
        bytes.put_slice(&json);
        bytes.freeze()
    }
}

/// Why a checkpoint file could not be restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The data directory already holds something.
    #[error(
        "refusing to restore into {}: the directory is not empty (restore only into a new, empty data \
         directory)",
        .0.display()
    )]
    NotEmpty(PathBuf),
    /// The file could not be read.
    #[error("cannot read the checkpoint file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not an exported checkpoint, or is damaged.
    #[error("{} is not a usable checkpoint file: {reason}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing the new data directory failed.
    #[error("writing the restored state into {} failed: {source}", .path.display())]
    Storage {
        /// The data directory.
        path: PathBuf,
        /// The store's error.
        source: StorageError,
    },
}

/// What [`restore_into`] restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The file's header.
    pub header: FileHeader,
    /// The keys in the restored state.
    pub keys: u64,
}

/// Reads and checks a file's header; returns it and the snapshot's offset.
pub async fn read_header(path: &Path) -> Result<(FileHeader, u64), RestoreError> {
    let read_error = |source| RestoreError::Read { path: path.to_path_buf(), source };
    let invalid = |reason: String| RestoreError::Invalid { path: path.to_path_buf(), reason };
    let mut file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let file_bytes = file.metadata().await.map_err(read_error)?.len();
    let mut fixed = [0u8; 16];
    file.read_exact(&mut fixed)
        .await
        .map_err(|_| invalid("it is shorter than the 16-byte file header".into()))?;
    if fixed[..8] != FILE_MAGIC {
        return Err(invalid(format!(
            "it does not start with {:?}; export one with `raft-node checkpoint export NAME`",
            String::from_utf8_lossy(&FILE_MAGIC)
        )));
    }
    let version = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    if version == 0 || version > FILE_FORMAT_VERSION {
        return Err(invalid(format!(
            "its format version {version} is not one this release reads (1 to {FILE_FORMAT_VERSION})"
        )));
    }
    let header_bytes = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
    if header_bytes > MAX_HEADER_BYTES {
        return Err(invalid(format!("its header claims {header_bytes} bytes, over {MAX_HEADER_BYTES}")));
    }
    let mut json = vec![0u8; header_bytes as usize];
    file.read_exact(&mut json).await.map_err(|_| invalid("its header is cut short".into()))?;
    let header: FileHeader =
        serde_json::from_slice(&json).map_err(|e| invalid(format!("its header is not valid: {e}")))?;
    let offset = 16 + u64::from(header_bytes);
    let expected = offset.saturating_add(header.size_bytes);
    if file_bytes != expected {
        return Err(invalid(format!(
            "it holds {file_bytes} bytes but its header promises {expected} (was the download cut short?)"
        )));
    }
    if header.index == 0 {
        return Err(invalid("its header names index 0, which no checkpoint has".into()));
    }
    Ok((header, offset))
}

/// Reads the snapshot part of the file and checks its CRC-32C against the
/// header's.
pub async fn verify(path: &Path, header: &FileHeader, offset: u64) -> Result<(), RestoreError> {
    let mut reader = FileSnapshotReader::open(path, header, offset).await?;
    let mut crc = 0u32;
    let mut position = 0u64;
    loop {
        let (chunk, end) = reader.read_at(position, READ_BYTES).await.map_err(|e| RestoreError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        crc = crc32c::crc32c_append(crc, &chunk);
        position += chunk.len() as u64;
        if end {
            break;
        }
    }
    if crc != header.checksum {
        return Err(RestoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "its checksum does not match (header {:08x}, computed {crc:08x})",
                header.checksum
            ),
        });
    }
    Ok(())
}

/// Prepares the empty data directory `data_dir` to start a node of a new
/// cluster with `membership` from the checkpoint in `file`, `directory`
/// naming the new cluster's nodes (see the module documentation).
pub async fn restore_into(
    data_dir: &Path,
    file: &Path,
    membership: Membership,
    directory: Directory,
) -> Result<Restored, RestoreError> {
    let (header, offset) = read_header(file).await?;
    verify(file, &header, offset).await?;
    let not_empty = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => return Err(RestoreError::Read { path: data_dir.to_path_buf(), source }),
    };
    if not_empty {
        return Err(RestoreError::NotEmpty(data_dir.to_path_buf()));
    }

    let mut reader = FileSnapshotReader::open(file, &header, offset).await?;
    let (mut source, keys) = crate::kv::rewrite_for_new_cluster(&mut reader, directory, &KvLimits::default())
        .await
        .map_err(|e| RestoreError::Invalid { path: file.to_path_buf(), reason: e.to_string() })?;

    std::fs::create_dir_all(data_dir)
        .map_err(|source| RestoreError::Read { path: data_dir.to_path_buf(), source })?;
    let storage = |source| RestoreError::Storage { path: data_dir.to_path_buf(), source };
    let (log_store, snapshot_store) = raft_storage_redb::open_stores(data_dir).await.map_err(storage)?;
    let meta = SnapshotMeta { last_index: LogIndex(header.index), last_term: Term(header.term), membership };
    let mut writer = snapshot_store.create(meta.clone()).await.map_err(storage)?;
    loop {
        let chunk = source.next_chunk().await.map_err(|e| storage(StorageError::Backend(e.to_string())))?;
        match chunk {
            Some(chunk) => writer.write(chunk).await.map_err(storage)?,
            None => break,
        }
    }
    writer.finish().await.map_err(storage)?;
    // The snapshot replaces the (empty) log; the hard state's term is the
    // snapshot's, so that no node votes in a term older than its log.
    log_store
        .write(LogWrite {
            install_snapshot: Some(meta),
            entries: Vec::new(),
            hard_state: Some(HardState {
                term: Term(header.term),
                vote: NodeId::NONE,
                commit: LogIndex(header.index),
            }),
            sync: true,
        })
        .await
        .map_err(storage)?;
    Ok(Restored { header, keys })
}

/// Reads the snapshot part of a checkpoint file as a [`SnapshotReader`].
struct FileSnapshotReader {
    file: tokio::fs::File,
    offset: u64,
    size_bytes: u64,
    meta: SnapshotMeta,
}

impl FileSnapshotReader {
    async fn open(path: &Path, header: &FileHeader, offset: u64) -> Result<Self, RestoreError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| RestoreError::Read { path: path.to_path_buf(), source })?;
        let meta = SnapshotMeta {
            last_index: LogIndex(header.index),
            last_term: Term(header.term),
            membership: Membership::default(),
        };
        Ok(FileSnapshotReader { file, offset, size_bytes: header.size_bytes, meta })
    }
}

#[async_trait]
impl SnapshotReader for FileSnapshotReader {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    async fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), StorageError> {
        let io = |e: std::io::Error| StorageError::Backend(e.to_string());
        let start = offset.min(self.size_bytes);
        let length = max_bytes.min(self.size_bytes - start);
        self.file.seek(std::io::SeekFrom::Start(self.offset + start)).await.map_err(io)?;
        let mut buffer = vec![0u8; length as usize];
        self.file.read_exact(&mut buffer).await.map_err(io)?;
        Ok((Bytes::from(buffer), start + length >= self.size_bytes))
    }
}
