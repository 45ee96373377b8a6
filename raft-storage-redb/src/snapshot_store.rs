//! [`RedbSnapshotStore`]: snapshot files in a directory, written and read in
//! chunks, never whole in memory. The file format is in `snapshot_file.rs`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use raft_core::storage::{SnapshotReader, SnapshotStore, SnapshotWriter, StorageError};
use raft_core::types::{LogIndex, SnapshotMeta};

use crate::blocking::{guard_panics, run_blocking};
use crate::log_store::sync_directory;
use crate::snapshot_file::{self, BlockWriter, Layout};

/// Finished snapshots are named `<last index, 20 digits>.snapshot`.
const FINISHED_SUFFIX: &str = ".snapshot";
/// Snapshots being written are named `<last index>.snapshot.partial-<n>`.
const PARTIAL_MARKER: &str = ".snapshot.partial-";

/// A [`SnapshotStore`] keeping each snapshot as one file in a directory
/// (conventionally `snapshots/` next to the log store's database).
///
/// A snapshot is written to a temporary file, made durable, renamed to its
/// final name and the directory synced, so a crash leaves either the whole
/// snapshot or nothing; temporary files left by a crash are removed on open.
/// Every 64 KiB block carries a CRC32C checked on every read.
#[derive(Clone)]
pub struct RedbSnapshotStore {
    shared: Arc<Shared>,
}

struct Shared {
    directory: PathBuf,
    /// The finished snapshots, by last index. Small: a few entries.
    finished: Mutex<BTreeMap<LogIndex, SnapshotMeta>>,
    /// Numbers temporary files so concurrent writers of one index never
    /// share a file.
    next_partial: AtomicU64,
}

impl std::fmt::Debug for RedbSnapshotStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedbSnapshotStore")
            .field("directory", &self.shared.directory)
            .finish_non_exhaustive()
    }
}

fn finished_name(index: LogIndex) -> String {
    format!("{:020}{FINISHED_SUFFIX}", index.get())
}

fn parse_finished_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_suffix(FINISHED_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(LogIndex)
}

impl RedbSnapshotStore {
    /// Opens (creating if needed) the snapshot directory: removes the
    /// temporary files of unfinished snapshots and verifies the header and
    /// trailer of every finished one. A damaged snapshot file fails the open
    /// with [`StorageError::Corrupt`] naming it.
    ///
    /// This blocks on disk I/O; from async code prefer [`Self::open_async`].
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, StorageError> {
        let directory = directory.as_ref().to_path_buf();
        guard_panics("opening the snapshot store", || {
            let finished = scan_directory(&directory)?;
            Ok(RedbSnapshotStore {
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
        run_blocking("opening the snapshot store", move || Self::open(directory)).await
    }

    /// The directory holding the snapshot files.
    pub fn directory(&self) -> &Path {
        &self.shared.directory
    }
}

/// Creates a store's directory if it does not exist, durably (its parent
/// is synced, so the new directory survives a crash).
pub(crate) fn create_directory(directory: &Path) -> Result<(), StorageError> {
    if !directory.exists() {
        fs::create_dir_all(directory)?;
        if let Some(parent) = directory.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            sync_directory(parent)?;
        }
    }
    Ok(())
}

/// Cleans up after crashed writers and lists the finished snapshots.
fn scan_directory(directory: &Path) -> Result<BTreeMap<LogIndex, SnapshotMeta>, StorageError> {
    create_directory(directory)?;
    let mut finished = BTreeMap::new();
    let mut removed_partial = false;
    for item in fs::read_dir(directory)? {
        let item = item?;
        let Some(name) = item.file_name().to_str().map(str::to_owned) else {
            continue; // Not one of ours: our names are ASCII.
        };
        if name.contains(PARTIAL_MARKER) {
            fs::remove_file(item.path())?;
            removed_partial = true;
            tracing::debug!(file = %name, "removed an unfinished snapshot");
        } else if let Some(index) = parse_finished_name(&name) {
            let layout = snapshot_file::read_layout(&mut File::open(item.path())?, &name)?;
            if layout.meta.last_index != index {
                return Err(StorageError::Corrupt(format!(
                    "snapshot file {name} holds the snapshot of index {}",
                    layout.meta.last_index
                )));
            }
            finished.insert(index, layout.meta);
        }
    }
    if removed_partial {
        sync_directory(directory)?;
    }
    Ok(finished)
}

impl Shared {
    fn finished(&self) -> Result<MutexGuard<'_, BTreeMap<LogIndex, SnapshotMeta>>, StorageError> {
        self.finished
            .lock()
            .map_err(|_| StorageError::Backend("the snapshot store's lock is poisoned".into()))
    }

    fn open_reader(&self, index: LogIndex) -> Result<FileSnapshotReader, StorageError> {
        let Some(meta) = self.finished()?.get(&index).cloned() else {
            return Err(StorageError::SnapshotNotFound(index));
        };
        let name = finished_name(index);
        let mut file = match File::open(self.directory.join(&name)) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::SnapshotNotFound(index))
            }
            Err(error) => return Err(error.into()),
        };
        let layout = snapshot_file::read_layout(&mut file, &name)?;
        if layout.meta != meta {
            return Err(StorageError::Corrupt(format!(
                "snapshot file {name} changed since the store was opened"
            )));
        }
        Ok(FileSnapshotReader {
            meta,
            state: Some(ReaderState { file, layout, name, cached_block: None, block: Vec::new() }),
        })
    }

    fn retain(&self, keep_from: LogIndex) -> Result<(), StorageError> {
        let mut finished = self.finished()?;
        let older: Vec<LogIndex> = finished.range(..keep_from).map(|(index, _)| *index).collect();
        if older.is_empty() {
            return Ok(());
        }
        for index in older {
            match fs::remove_file(self.directory.join(finished_name(index))) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
                _ => {}
            }
            finished.remove(&index);
        }
        sync_directory(&self.directory)
    }
}

#[async_trait]
impl SnapshotStore for RedbSnapshotStore {
    async fn create(&self, meta: SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        let number = self.shared.next_partial.fetch_add(1, Ordering::Relaxed);
        let partial =
            self.shared.directory.join(format!("{:020}{PARTIAL_MARKER}{number}", meta.last_index.get()));
        let header = snapshot_file::encode_header(&meta)?;
        let path = partial.clone();
        let blocks = run_blocking("creating a snapshot", move || {
            let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
            BlockWriter::new(file, &header)
        })
        .await;
        let blocks = match blocks {
            Ok(blocks) => blocks,
            Err(error) => {
                let _ = fs::remove_file(&partial);
                return Err(error);
            }
        };
        Ok(Box::new(FileSnapshotWriter {
            shared: Arc::clone(&self.shared),
            meta,
            partial,
            blocks: Some(blocks),
        }))
    }

    async fn open(&self, index: LogIndex) -> Result<Box<dyn SnapshotReader>, StorageError> {
        let shared = Arc::clone(&self.shared);
        let reader = run_blocking("opening a snapshot", move || shared.open_reader(index)).await?;
        Ok(Box::new(reader))
    }

    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.shared.finished()?.values().next_back().cloned())
    }

    async fn retain(&self, keep_from: LogIndex) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.shared);
        run_blocking("deleting old snapshots", move || shared.retain(keep_from)).await
    }
}

/// Writes one snapshot to its temporary file.
struct FileSnapshotWriter {
    shared: Arc<Shared>,
    meta: SnapshotMeta,
    partial: PathBuf,
    /// `None` once a write failed (or was cancelled mid-way): the file's
    /// content is then unknown, so the writer refuses to go on.
    blocks: Option<BlockWriter>,
}

impl FileSnapshotWriter {
    fn take_blocks(&mut self) -> Result<BlockWriter, StorageError> {
        self.blocks.take().ok_or_else(|| {
            StorageError::Backend("the snapshot writer failed earlier; start the snapshot again".into())
        })
    }
}

#[async_trait]
impl SnapshotWriter for FileSnapshotWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let mut blocks = self.take_blocks()?;
        let blocks =
            run_blocking("writing a snapshot", move || blocks.write(&chunk).map(|()| blocks)).await?;
        self.blocks = Some(blocks);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
        let blocks = self.take_blocks()?;
        let shared = Arc::clone(&self.shared);
        let meta = self.meta.clone();
        let partial = self.partial.clone();
        run_blocking("finishing a snapshot", move || {
            let size = blocks.finish()?;
            let index = meta.last_index;
            fs::rename(&partial, shared.directory.join(finished_name(index)))?;
            sync_directory(&shared.directory)?;
            shared.finished()?.insert(index, meta);
            Ok(size)
        })
        .await
    }
}

impl Drop for FileSnapshotWriter {
    /// An abandoned snapshot leaves no trace. After a successful `finish`
    /// the temporary name no longer exists and this does nothing.
    fn drop(&mut self) {
        match fs::remove_file(&self.partial) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %self.partial.display(), %error, "could not remove an abandoned snapshot");
            }
            _ => {}
        }
    }
}

/// Reads one finished snapshot.
struct FileSnapshotReader {
    meta: SnapshotMeta,
    /// `None` while a read runs on the blocking pool, or after one failed.
    state: Option<ReaderState>,
}

struct ReaderState {
    file: File,
    layout: Layout,
    name: String,
    /// The number of the block held in `block`, verified.
    cached_block: Option<u64>,
    block: Vec<u8>,
}

impl ReaderState {
    /// Reads `offset .. offset + max_bytes` (clamped to the data), verifying
    /// every block it touches.
    fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), StorageError> {
        let size = self.layout.data_bytes;
        let start = offset.min(size);
        let end = start.saturating_add(max_bytes).min(size);
        let block_bytes = u64::from(self.layout.block_bytes);
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut position = start;
        while position < end {
            let number = position / block_bytes;
            if self.cached_block != Some(number) {
                self.cached_block = None;
                snapshot_file::read_block(&mut self.file, &self.layout, number, &self.name, &mut self.block)?;
                self.cached_block = Some(number);
            }
            let within = (position - number * block_bytes) as usize;
            let taken = ((end - position) as usize).min(self.block.len().saturating_sub(within));
            if taken == 0 {
                return Err(StorageError::Corrupt(format!(
                    "snapshot file {}: block {number} is short",
                    self.name
                )));
            }
            out.extend_from_slice(&self.block[within..within + taken]);
            position += taken as u64;
        }
        Ok((Bytes::from(out), end == size))
    }
}

#[async_trait]
impl SnapshotReader for FileSnapshotReader {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    async fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), StorageError> {
        let mut state = self.state.take().ok_or_else(|| {
            StorageError::Backend("the snapshot reader failed earlier; open it again".into())
        })?;
        let (state, result) = run_blocking("reading a snapshot", move || {
            let result = state.read_at(offset, max_bytes);
            Ok((state, result))
        })
        .await?;
        self.state = Some(state);
        result
    }
}
