//! [`RedbCheckpointStore`]: named checkpoints, each a directory holding one
//! snapshot file (the format of `snapshot_file.rs`, checksummed per block)
//! and a small `info` file with the checkpoint's name, position, creation
//! time, size and checksum.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use raft_core::storage::{
    CheckpointInfo, CheckpointMeta, CheckpointStore, CheckpointWriter, SnapshotReader, SnapshotStore,
    SnapshotWriter, StorageError,
};

use crate::blocking::{guard_panics, run_blocking};
use crate::log_store::sync_directory;
use crate::snapshot_store::{create_directory, RedbSnapshotStore};

/// The checkpoint directory's name inside a node's data directory.
pub const CHECKPOINT_DIRECTORY_NAME: &str = "checkpoints";
/// A checkpoint being written lives in `<name>.partial-<n>` until finished.
const PARTIAL_MARKER: &str = ".partial-";
/// The file describing a finished checkpoint.
const INFO_FILE: &str = "info";
/// The `info` file's format version.
const INFO_FORMAT_VERSION: u8 = 1;

/// Finished checkpoints by name, each with the snapshot store of its
/// directory. Small: at most the runtime's `max_count` entries.
type Finished = BTreeMap<String, (CheckpointInfo, RedbSnapshotStore)>;

/// A [`CheckpointStore`] keeping each checkpoint in a directory of its own
/// under one directory (conventionally `checkpoints/` in the node's data
/// directory).
///
/// A checkpoint is written into a temporary directory, made durable and
/// renamed to its name, and the parent synced: a crash leaves the whole
/// checkpoint or nothing, and temporary directories are removed on open.
/// Every 64 KiB block of the data carries a CRC32C checked on every read;
/// the `info` file carries one too.
#[derive(Clone)]
pub struct RedbCheckpointStore {
    shared: Arc<Shared>,
}

struct Shared {
    directory: PathBuf,
    /// Finished checkpoints by name, with their snapshot stores.
    finished: Mutex<Finished>,
    next_partial: AtomicU64,
}

impl std::fmt::Debug for RedbCheckpointStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedbCheckpointStore")
            .field("directory", &self.shared.directory)
            .finish_non_exhaustive()
    }
}

impl RedbCheckpointStore {
    /// Opens (creating if needed) the checkpoint directory: removes the
    /// temporary directories of unfinished checkpoints and checks every
    /// finished one's `info` file and snapshot file. A damaged checkpoint
    /// fails the open with [`StorageError::Corrupt`] naming it.
    ///
    /// This blocks on disk I/O; from async code prefer [`Self::open_async`].
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, StorageError> {
        let directory = directory.as_ref().to_path_buf();
        guard_panics("opening the checkpoint store", || {
            let finished = scan_directory(&directory)?;
            Ok(RedbCheckpointStore {
                shared: Arc::new(Shared {
                    directory,
                    finished: Mutex::new(finished),
                    next_partial: AtomicU64::new(0),
                }),
            })
        })
    }

    /// [`Self::open`] on tokio's blocking pool.
    pub async fn open_async(directory: impl AsRef<Path>) -> Result<Self, StorageError> {
        let directory = directory.as_ref().to_path_buf();
        run_blocking("opening the checkpoint store", move || Self::open(directory)).await
    }

    /// Bytes of finished checkpoints.
    pub fn total_bytes(&self) -> Result<u64, StorageError> {
        Ok(self.shared.finished()?.values().map(|(info, _)| info.size_bytes).sum())
    }
}

impl Shared {
    fn finished(&self) -> Result<MutexGuard<'_, Finished>, StorageError> {
        self.finished
            .lock()
            .map_err(|_| StorageError::Backend("the checkpoint store's lock is poisoned".into()))
    }
}

fn scan_directory(directory: &Path) -> Result<Finished, StorageError> {
    create_directory(directory)?;
    let mut finished = BTreeMap::new();
    let mut removed = false;
    for item in fs::read_dir(directory)? {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        let path = item.path();
        if name.contains(PARTIAL_MARKER) {
            fs::remove_dir_all(&path)?;
            removed = true;
            continue;
        }
        if !item.file_type()?.is_dir() {
            continue;
        }
        let info = read_info(&path.join(INFO_FILE), &name)?;
        if info.meta.name != name {
            return Err(StorageError::Corrupt(format!(
                "checkpoint directory {name} describes a checkpoint named {:?}",
                info.meta.name
            )));
        }
        let snapshots = RedbSnapshotStore::open(&path)?;
        finished.insert(name, (info, snapshots));
    }
    if removed {
        sync_directory(directory)?;
    }
    Ok(finished)
}

/// The `info` file: a version byte, the postcard encoding of the
/// [`CheckpointInfo`], and the CRC32C of both.
fn encode_info(info: &CheckpointInfo) -> Result<Vec<u8>, StorageError> {
    let mut bytes = vec![INFO_FORMAT_VERSION];
    bytes.extend(postcard::to_allocvec(info).map_err(|e| StorageError::Backend(e.to_string()))?);
    let checksum = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    Ok(bytes)
}

fn read_info(path: &Path, name: &str) -> Result<CheckpointInfo, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("checkpoint {name}: its info file {what}"));
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(corrupt("is missing")),
        Err(error) => return Err(error.into()),
    };
    if bytes.len() < 5 {
        return Err(corrupt("is too short"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32c::crc32c(body) != stored {
        return Err(corrupt("fails its checksum"));
    }
    if body[0] != INFO_FORMAT_VERSION {
        return Err(StorageError::UnsupportedVersion {
            found: u32::from(body[0]),
            supported: u32::from(INFO_FORMAT_VERSION),
        });
    }
    postcard::from_bytes(&body[1..]).map_err(|error| corrupt(&format!("does not decode: {error}")))
}

/// Names that are safe as one directory name: the runtime allows
/// `A-Z a-z 0-9 . _ -`, not starting with a dot. Checked here again because
/// a name reaches the file system.
fn check_name(name: &str) -> Result<(), StorageError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 255 || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(StorageError::InvalidWrite(format!("{name:?} is not a valid checkpoint name")));
    }
    Ok(())
}

#[async_trait]
impl CheckpointStore for RedbCheckpointStore {
    async fn create(&self, meta: CheckpointMeta) -> Result<Box<dyn CheckpointWriter>, StorageError> {
        check_name(&meta.name)?;
        let number = self.shared.next_partial.fetch_add(1, Ordering::Relaxed);
        let partial = self.shared.directory.join(format!("{}{PARTIAL_MARKER}{number}", meta.name));
        let snapshots = RedbSnapshotStore::open_async(&partial).await?;
        let data = match snapshots.create(meta.snapshot.clone()).await {
            Ok(data) => data,
            Err(error) => {
                let _ = fs::remove_dir_all(&partial);
                return Err(error);
            }
        };
        Ok(Box::new(FileCheckpointWriter {
            shared: Arc::clone(&self.shared),
            meta,
            partial,
            data: Some(data),
        }))
    }

    async fn open(&self, name: &str) -> Result<Box<dyn SnapshotReader>, StorageError> {
        let found = self.shared.finished()?.get(name).cloned();
        let Some((info, snapshots)) = found else {
            return Err(StorageError::CheckpointNotFound(name.to_string()));
        };
        snapshots.open(info.meta.snapshot.last_index).await
    }

    async fn list(&self) -> Result<Vec<CheckpointInfo>, StorageError> {
        Ok(self.shared.finished()?.values().map(|(info, _)| info.clone()).collect())
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        let shared = Arc::clone(&self.shared);
        let name = name.to_string();
        run_blocking("deleting a checkpoint", move || {
            let mut finished = shared.finished()?;
            if finished.remove(&name).is_none() {
                return Ok(());
            }
            // Renamed first, so a crash mid-removal leaves a temporary
            // directory (removed on open) rather than half a checkpoint.
            let doomed = shared.directory.join(format!(
                "{name}{PARTIAL_MARKER}deleted-{}",
                shared.next_partial.fetch_add(1, Ordering::Relaxed)
            ));
            fs::rename(shared.directory.join(&name), &doomed)?;
            sync_directory(&shared.directory)?;
            fs::remove_dir_all(&doomed)?;
            Ok(())
        })
        .await
    }
}

struct FileCheckpointWriter {
    shared: Arc<Shared>,
    meta: CheckpointMeta,
    partial: PathBuf,
    /// `None` once finished or failed.
    data: Option<Box<dyn SnapshotWriter>>,
}

#[async_trait]
impl CheckpointWriter for FileCheckpointWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let data = self.data.as_mut().ok_or_else(|| {
            StorageError::Backend("the checkpoint writer failed earlier; start the checkpoint again".into())
        })?;
        data.write(chunk).await
    }

    async fn finish(mut self: Box<Self>, checksum: u32) -> Result<CheckpointInfo, StorageError> {
        let data = self.data.take().ok_or_else(|| {
            StorageError::Backend("the checkpoint writer failed earlier; start the checkpoint again".into())
        })?;
        let size_bytes = data.finish().await?;
        let info = CheckpointInfo { meta: self.meta.clone(), size_bytes, checksum };
        let encoded = encode_info(&info)?;
        let shared = Arc::clone(&self.shared);
        let partial = self.partial.clone();
        let returned = info.clone();
        run_blocking("finishing a checkpoint", move || {
            let mut file = File::create(partial.join(INFO_FILE))?;
            file.write_all(&encoded)?;
            file.sync_all()?;
            sync_directory(&partial)?;
            let name = info.meta.name.clone();
            let target = shared.directory.join(&name);
            let mut finished = shared.finished()?;
            if finished.remove(&name).is_some() || target.exists() {
                fs::remove_dir_all(&target)?;
            }
            fs::rename(&partial, &target)?;
            sync_directory(&shared.directory)?;
            let snapshots = RedbSnapshotStore::open(&target)?;
            finished.insert(name, (info, snapshots));
            Ok(())
        })
        .await?;
        Ok(returned)
    }
}

impl Drop for FileCheckpointWriter {
    /// An abandoned checkpoint leaves no trace; after `finish` the
    /// temporary directory no longer exists and this does nothing.
    fn drop(&mut self) {
        // The snapshot writer removes its own file first.
        self.data = None;
        match fs::remove_dir_all(&self.partial) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(directory = %self.partial.display(), %error, "could not remove an abandoned checkpoint");
            }
            _ => {}
        }
    }
}
