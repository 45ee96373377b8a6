//! [`RedbLogStore`]: the durable log, hard state and current snapshot
//! metadata: a write-ahead log in front of one redb database. The layout,
//! commit protocol and recovery are in the crate's `DESIGN.md`.

use std::fs;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, RepairSession, TableError};

use raft_core::protocol::RestoredState;
use raft_core::storage::{LogStore, LogWrite, StorageError};
use raft_core::types::{Entry, LogIndex, SnapshotMeta};

use crate::blocking::{guard_panics, panic_error, redb_error, run_blocking};
use crate::codec;
use crate::log_tables::{self, FORMAT, FORMAT_VERSION_KEY};
use crate::pending::{Base, Layer, Layers};
use crate::wal::{self, WalFiles, WalWriter};

/// The newest log store format this release reads and the one it writes.
/// Version 2 added the write-ahead log and its checkpoint record; version 1
/// databases are migrated when opened.
pub const LOG_FORMAT_VERSION: u32 = 2;

/// Settings of a [`RedbLogStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LogStoreOptions {
    /// The most memory redb may use to cache pages. redb's own default (1 GiB)
    /// would let the cache hold a long log in memory; the store bounds it.
    /// redb keeps every page a checkpoint wrote in this cache, but the log
    /// is rarely read back: the engine holds recent entries itself, and
    /// only a follower far behind or a restart reads older ones. So the
    /// default (16 MiB) is sized for the B-tree's upper pages and half of
    /// one checkpoint's writes, not for the log.
    pub cache_size_bytes: usize,
    /// Verify the checksum of every page of the database when opening it,
    /// not only after a crash. This reads the whole live log once per open
    /// (about what `read_state` reads anyway) and turns silent damage of a
    /// cleanly closed file into an error at open.
    pub verify_on_open: bool,
    /// Commit with two `fsync`s instead of one (redb's 2-phase commit). Off by
    /// default: the default one-`fsync` commit relies on checksums to tell a
    /// torn commit after a crash, which also means a commit damaged by the
    /// media *and* followed by a crash is rolled back instead of reported
    /// (see `DESIGN.md`, "Assumptions about the media"). Only checkpoints
    /// commit to redb; writes go to the write-ahead log.
    pub two_phase_commit: bool,
    /// Reclaim the file's free space with redb's `Database::compact` when a
    /// log compaction leaves at least this fraction of the file free (and
    /// the file is at least [`Self::file_compaction_min_bytes`]). `None`
    /// never does. See `DESIGN.md`, "File growth".
    pub file_compaction_free_fraction: Option<f64>,
    /// Files smaller than this are never compacted: the work would not pay.
    pub file_compaction_min_bytes: u64,
    /// The size of a write-ahead log segment file. A write larger than this
    /// gets a segment of its own size.
    pub wal_segment_bytes: u64,
    /// Checkpoint (move the logged writes into redb) once the writes not yet
    /// checkpointed hold this many bytes of entries...
    pub checkpoint_bytes: u64,
    /// ...or once the oldest of them is this old.
    pub checkpoint_interval: Duration,
    /// A write waits for the checkpointer while the writes not yet
    /// checkpointed hold this many bytes. With the batch being checkpointed,
    /// the store holds at most twice this (plus one write) in memory.
    pub max_pending_bytes: u64,
    /// A fault-injection aid, off by default: after every flush of the
    /// write-ahead log, record the durable end of the log in
    /// `log.redb.wal/synced-position` (one unflushed `pwrite` per flush),
    /// so that [`crate::fault_injection::discard_unsynced_writes`] can cut a
    /// stopped store back to what a power failure would have left.
    pub record_synced_position: bool,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            cache_size_bytes: 16 << 20,
            verify_on_open: true,
            two_phase_commit: false,
            file_compaction_free_fraction: Some(0.5),
            file_compaction_min_bytes: 256 << 20,
            wal_segment_bytes: 64 << 20,
            checkpoint_bytes: 16 << 20,
            checkpoint_interval: Duration::from_secs(1),
            max_pending_bytes: 64 << 20,
            record_synced_position: false,
        }
    }
}

/// How a database file's space is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpaceUsage {
    /// The file's size.
    pub file_bytes: u64,
    /// Bytes in pages redb has allocated: live data, plus pages freed by
    /// recent commits that are not reusable yet. The rest of the file is
    /// free and reused before the file grows.
    pub allocated_bytes: u64,
}

/// A [`LogStore`]: a write-ahead log of segment files in front of one redb
/// database file.
///
/// Each [`LogStore::write`] is one WAL record (one `pwrite`, and one
/// `fdatasync` when `sync`). A background thread moves logged writes into
/// redb in large transactions (checkpoints) and deletes the segments they
/// cover; until then the store keeps those writes in memory, bounded by
/// [`LogStoreOptions::max_pending_bytes`]. Opening replays the WAL after the
/// last checkpoint. Dropping the last clone checkpoints everything, so a
/// cleanly closed store has an empty WAL. Only one handle may have a file
/// open at a time (redb locks it; the WAL belongs to that file).
#[derive(Clone)]
pub struct RedbLogStore {
    handle: Arc<Handle>,
}

/// Owns the background thread: dropping the last handle stops it and
/// checkpoints what is left.
struct Handle {
    shared: Arc<Shared>,
    background: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    /// Read-locked by every operation; write-locked only to compact the file,
    /// which needs the database to itself.
    database: RwLock<Database>,
    path: PathBuf,
    options: LogStoreOptions,
    /// Set when redb panicked or the WAL or a checkpoint failed: the store's
    /// state can no longer be trusted, so it refuses further work until it
    /// is reopened.
    failed: AtomicBool,
    wal_files: WalFiles,
    /// Held by a write for its whole length, so records are logged in the
    /// order they are applied. Lock order: `checkpointing`, then `writer`,
    /// then `pending`.
    writer: Mutex<WalWriter>,
    /// Held by whoever checkpoints (the background thread, or an operation
    /// that needs everything in redb first).
    checkpointing: Mutex<()>,
    pending: Mutex<Pending>,
    /// Signalled when the pending writes grow past the checkpoint size,
    /// when a checkpoint finishes, and on stop.
    changed: Condvar,
    stop: AtomicBool,
}

/// The logged writes not yet in redb, and what the write path needs to know
/// about redb.
struct Pending {
    /// The layer a checkpoint is moving into redb.
    frozen: Option<Arc<Layer>>,
    /// Writes logged since.
    active: Layer,
    /// When the oldest write of `active` was logged.
    active_since: Option<Instant>,
    base: Base,
}

impl Pending {
    fn layers(&self) -> Layers<'_> {
        Layers { frozen: self.frozen.as_deref(), active: &self.active }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, StorageError> {
    mutex.lock().map_err(|_| StorageError::Backend("a log store lock is poisoned".into()))
}

impl std::fmt::Debug for RedbLogStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("RedbLogStore").field("path", &self.handle.shared.path).finish_non_exhaustive()
    }
}

impl RedbLogStore {
    /// Opens the store at `path` (a file), creating it if it does not exist,
    /// with the default options. The write-ahead log lives in the directory
    /// `<path>.wal` next to it.
    ///
    /// This blocks on disk I/O; from async code prefer [`Self::open_async`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(path, LogStoreOptions::default())
    }

    /// Opens the store at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: LogStoreOptions) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let shared = Arc::new(guard_panics("opening the log store", || Shared::open(path, options))?);
        let background = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("raft-log-checkpointer".into())
                .spawn(move || shared.run_background())?
        };
        Ok(RedbLogStore { handle: Arc::new(Handle { shared, background: Mutex::new(Some(background)) }) })
    }

    /// [`Self::open_with`] on tokio's blocking pool.
    pub async fn open_async(path: impl AsRef<Path>, options: LogStoreOptions) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        run_blocking("opening the log store", move || Self::open_with(path, options)).await
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.handle.shared.path
    }

    /// The write-ahead log's directory.
    pub fn wal_directory(&self) -> &Path {
        self.handle.shared.wal_files.directory()
    }

    /// The number of WAL segment files (the one being written, spares made
    /// ahead of need, and those a checkpoint has not covered yet).
    pub fn wal_segment_count(&self) -> Result<usize, StorageError> {
        self.handle.shared.wal_files.segment_count()
    }

    /// The database file's current size in bytes.
    pub fn file_size_bytes(&self) -> Result<u64, StorageError> {
        Ok(fs::metadata(&self.handle.shared.path)?.len())
    }

    /// How much of the database file redb has allocated. This walks the
    /// live trees (about one read of the live log): for monitoring, not for
    /// every request.
    pub async fn space_usage(&self) -> Result<SpaceUsage, StorageError> {
        let shared = Arc::clone(&self.handle.shared);
        run_blocking("measuring the file", move || {
            let allocated_bytes = shared.with_database("measuring the file", log_tables::allocated_bytes)?;
            Ok(SpaceUsage { file_bytes: fs::metadata(&shared.path)?.len(), allocated_bytes })
        })
        .await
    }

    /// Rewrites the database file to give back its free space
    /// (redb's `Database::compact`), waiting for running operations first.
    /// Returns whether the file changed. [`LogStore::compact`] calls this on
    /// its own when [`LogStoreOptions::file_compaction_free_fraction`] says so.
    pub async fn compact_file(&self) -> Result<bool, StorageError> {
        let shared = Arc::clone(&self.handle.shared);
        run_blocking("compacting the database file", move || shared.compact_file()).await
    }

    /// Moves every logged write into redb now and deletes the WAL segments
    /// that covers (the background thread does this on its own; this is for
    /// tests, benchmarks and a deliberate shutdown).
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.handle.shared);
        run_blocking("checkpointing", move || shared.checkpoint_all()).await
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        if let Some(thread) = self.background.get_mut().ok().and_then(Option::take) {
            let _ = thread.join();
        }
        if !self.shared.failed.load(Ordering::SeqCst) {
            // A clean close leaves everything in redb, so the next open has
            // nothing to replay. Nothing is lost if this fails: the WAL
            // still holds the writes.
            if let Err(error) = guard_panics("closing the log store", || self.shared.checkpoint_all()) {
                tracing::warn!(%error, "the last checkpoint before closing failed; the WAL keeps the writes");
            }
        }
    }
}

/// The WAL directory of the database at `path`: `<path>.wal`.
pub(crate) fn wal_directory(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(".wal");
    path.with_file_name(name)
}

/// Refuses a batch whose entries do not follow each other: storing it would
/// leave a log that `read_state` must report as damaged.
fn check_consecutive(entries: &[Entry]) -> Result<(), StorageError> {
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index.next() {
            return Err(StorageError::InvalidWrite(format!(
                "refusing a write whose entries are not consecutive ({} follows {})",
                pair[1].index, pair[0].index
            )));
        }
    }
    Ok(())
}

/// Opens or creates the database file and checks its format version.
fn open_database(path: &Path, options: &LogStoreOptions) -> Result<Database, StorageError> {
    remove_stale_initialization(path)?;
    if !path.exists() {
        initialize(path, options)?;
    }
    let cleanly_closed = check_redb_header(path)? != HeaderCheck::NeedsRecovery;
    let fell_back = Arc::new(AtomicBool::new(false));
    let database =
        builder(options, cleanly_closed, Arc::clone(&fell_back)).open(path).map_err(|error| match error {
            redb::DatabaseError::RepairAborted => StorageError::Corrupt(format!(
                "{}: the newest commit fails its checksums although the file was closed cleanly; \
                 refusing to fall back to the previous commit (that would lose acknowledged writes)",
                path.display()
            )),
            other => open_error(path, other),
        })?;
    if fell_back.load(Ordering::SeqCst) {
        tracing::warn!(path = %path.display(), "the last commit before a crash was torn; it was rolled back");
    }
    if check_format(&database, path)? == 1 {
        // A version-1 database predates the WAL: give it an empty one.
        wal::create_directory(&wal_directory(path))?;
        log_tables::migrate_from_v1(&database, LOG_FORMAT_VERSION)?;
        tracing::info!(path = %path.display(), "migrated the log store from format 1 to {LOG_FORMAT_VERSION}");
    }
    Ok(database)
}

/// The file at the store's path was always a complete database once (it is
/// renamed into place only after initialization), so what redb reports as
/// "not a database" or "an older file format" there is damage.
fn open_error(path: &Path, error: redb::DatabaseError) -> StorageError {
    const REDB_FILE_FORMAT: u8 = 3;
    let what = format!("opening {}", path.display());
    match error {
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) =>
        {
            StorageError::Corrupt(format!("{what}: {io} (truncated or damaged)"))
        }
        redb::DatabaseError::UpgradeRequired(version) if version < REDB_FILE_FORMAT => {
            StorageError::Corrupt(format!(
                "{what}: the header claims redb file format {version}, which this store never wrote; it is damaged"
            ))
        }
        other => redb_error(&what, other),
    }
}

fn builder(options: &LogStoreOptions, cleanly_closed: bool, fell_back: Arc<AtomicBool>) -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(options.cache_size_bytes);
    builder.set_check_integrity_on_open(options.verify_on_open);
    // redb calls back at progress 0.3 only when the newest commit fails its
    // checksums and it is about to fall back to the previous one. After a
    // crash that is a torn commit nobody was told about; after a clean close
    // it is damage, and falling back would silently drop a durable write.
    builder.set_repair_callback(move |session: &mut RepairSession| {
        if (session.progress() - 0.3).abs() < 0.01 {
            fell_back.store(true, Ordering::SeqCst);
            if cleanly_closed {
                session.abort();
            }
        }
    });
    builder
}

/// The path a new database is initialized under before it is renamed into
/// place, so that a file at the real path is always a complete database.
fn initialization_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(".initializing");
    path.with_file_name(name)
}

fn remove_stale_initialization(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(initialization_path(path)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// Creates an empty database with its format record under a temporary name,
/// makes it durable, and renames it into place.
fn initialize(path: &Path, options: &LogStoreOptions) -> Result<(), StorageError> {
    let directory = parent_directory(path);
    fs::create_dir_all(&directory)?;
    // A WAL without its database is left over from a store that was
    // removed: it must not be replayed into the new one.
    let wal_dir = wal_directory(path);
    if wal_dir.exists() {
        fs::remove_dir_all(&wal_dir)?;
    }
    wal::create_directory(&wal_dir)?;
    let temporary = initialization_path(path);
    let database = builder(options, true, Arc::new(AtomicBool::new(false)))
        .create(&temporary)
        .map_err(|error| redb_error("creating the database", error))?;
    let transaction =
        database.begin_write().map_err(|error| redb_error("initializing the database", error))?;
    log_tables::create_all(&transaction)?;
    {
        let mut format = transaction.open_table(FORMAT).map_err(|error| redb_error("initializing", error))?;
        format
            .insert(FORMAT_VERSION_KEY, codec::encode_format_version(LOG_FORMAT_VERSION).as_slice())
            .map_err(|error| redb_error("writing the format version", error))?;
    }
    transaction.commit().map_err(|error| redb_error("initializing the database", error))?;
    drop(database);
    fs::rename(&temporary, path)?;
    sync_directory(&directory)
}

fn parent_directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename or a new file in `directory` durable.
pub(crate) fn sync_directory(directory: &Path) -> Result<(), StorageError> {
    #[cfg(unix)]
    fs::File::open(directory)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = directory;
    Ok(())
}

/// What our own check of redb's file header found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderCheck {
    /// redb closed the file cleanly and the header is consistent.
    ClosedCleanly,
    /// redb did not close the file (a crash): redb will repair it.
    NeedsRecovery,
    /// Not a redb file format we know (too short, another magic number or
    /// version): left to redb to open or reject.
    Unknown,
}

/// Checks redb's file header (redb file format 3, documented in redb's
/// `design.md`): a 9-byte magic number, the "god byte" (bit 0 names the
/// primary commit slot, bit 1 says recovery is required), and two 128-byte
/// commit slots at offsets 64 and 192, each holding its format version at
/// byte 0 and its transaction id at bytes 104..112.
///
/// redb trusts the god byte's primary bit without a checksum: flipped, it
/// would silently serve the previous commit. A commit always goes to the
/// slot that then becomes primary, so after a clean close the primary slot
/// holds the newer transaction; if it holds the older one the header is
/// damaged and the open is refused.
pub(crate) fn check_redb_header(path: &Path) -> Result<HeaderCheck, StorageError> {
    const MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
    const HEADER_BYTES: usize = 320;
    const SLOT_OFFSETS: [usize; 2] = [64, 192];
    const KNOWN_FILE_FORMAT: u8 = 3;
    const TRANSACTION_ID_AT: usize = 104;
    let mut header = [0u8; HEADER_BYTES];
    match fs::File::open(path)?.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(HeaderCheck::Unknown),
        Err(error) => return Err(error.into()),
    }
    let primary = usize::from(header[9] & 0b1);
    let slot = |number: usize| &header[SLOT_OFFSETS[number]..SLOT_OFFSETS[number] + 128];
    if header[..9] != MAGIC || slot(0)[0] != KNOWN_FILE_FORMAT || slot(1)[0] != KNOWN_FILE_FORMAT {
        return Ok(HeaderCheck::Unknown);
    }
    if header[9] & 0b10 != 0 {
        return Ok(HeaderCheck::NeedsRecovery);
    }
    let transaction_id = |number: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&slot(number)[TRANSACTION_ID_AT..TRANSACTION_ID_AT + 8]);
        u64::from_le_bytes(bytes)
    };
    let (newest, older) = (transaction_id(primary), transaction_id(1 - primary));
    if newest < older {
        return Err(StorageError::Corrupt(format!(
            "{}: redb's header names commit slot {primary} (transaction {newest}) as the newest, but the other \
             slot holds transaction {older}; the header is damaged and opening would serve an older commit",
            path.display()
        )));
    }
    Ok(HeaderCheck::ClosedCleanly)
}

/// Checks the format record; returns the version found.
fn check_format(database: &Database, path: &Path) -> Result<u32, StorageError> {
    let what = |problem: &str| StorageError::Corrupt(format!("{}: {problem}", path.display()));
    let transaction = database.begin_read().map_err(|error| redb_error("checking the format", error))?;
    let table = match transaction.open_table(FORMAT) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => {
            return Err(what("no format-version record: not a raft-storage-redb log, or damaged"))
        }
        Err(error) => return Err(redb_error("checking the format", error)),
    };
    let record = table
        .get(FORMAT_VERSION_KEY)
        .map_err(|error| redb_error("reading the format version", error))?
        .ok_or_else(|| what("the format table has no version record"))?;
    let found = codec::decode_format_version(record.value())?;
    if found > LOG_FORMAT_VERSION {
        return Err(StorageError::UnsupportedVersion { found, supported: LOG_FORMAT_VERSION });
    }
    if found == 0 {
        return Err(what("format version 0 was never written by any release"));
    }
    Ok(found)
}

impl Shared {
    /// Opens redb, then replays the WAL after redb's checkpoint.
    fn open(path: PathBuf, options: LogStoreOptions) -> Result<Shared, StorageError> {
        let database = open_database(&path, &options)?;
        let wal_dir = wal_directory(&path);
        if !wal_dir.is_dir() {
            return Err(StorageError::Corrupt(format!(
                "the write-ahead log directory {} is missing: writes after the last checkpoint are lost",
                wal_dir.display()
            )));
        }
        let (mut base, checkpoint_seq) = log_tables::base(&database)?;
        let mut layer = Layer::default();
        let mut recovered =
            wal::recover(&wal_dir, options.wal_segment_bytes, checkpoint_seq, |seq, body| {
                let write = wal::decode_body(body).map_err(|problem| {
                    StorageError::Corrupt(format!("write-ahead log record {seq}: {problem}"))
                })?;
                check_consecutive(&write.entries).map_err(|error| {
                    StorageError::Corrupt(format!("write-ahead log record {seq}: {error}"))
                })?;
                layer.apply(seq, write.install_snapshot, write.entries, write.hard_state);
                if layer.bytes >= options.max_pending_bytes {
                    // A long WAL (written with other options) is checkpointed as
                    // it is replayed, so replay stays within the memory bound.
                    let replayed = std::mem::take(&mut layer);
                    base = apply_checkpoint(&database, &replayed, base, options.two_phase_commit)?;
                }
                Ok(())
            })?;
        if options.record_synced_position {
            recovered.writer.attach_synced_marker(&wal_dir)?;
        }
        if recovered.torn_tail {
            tracing::warn!(
                wal = %wal_dir.display(),
                last_record = ?recovered.last_seq,
                "the write-ahead log ended in a torn record (a write cut short by a crash, never acknowledged); it was cleared"
            );
        }
        let active_since = (!layer.is_empty()).then(Instant::now);
        Ok(Shared {
            database: RwLock::new(database),
            path,
            options,
            failed: AtomicBool::new(false),
            wal_files: recovered.files,
            writer: Mutex::new(recovered.writer),
            checkpointing: Mutex::new(()),
            pending: Mutex::new(Pending { frozen: None, active: layer, active_since, base }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        })
    }

    fn check_running(&self, what: &str) -> Result<(), StorageError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(StorageError::Backend(format!("{what}: the store stopped after an earlier failure")));
        }
        Ok(())
    }

    /// Stops the store for good: after a failed `fdatasync` the state of
    /// the file is unknown, and after a failed checkpoint the memory and
    /// redb may disagree. Reopening recovers from what is on disk.
    fn fail(&self, error: StorageError) -> StorageError {
        self.failed.store(true, Ordering::SeqCst);
        self.changed.notify_all();
        error
    }

    /// Runs `work` on the database under the shared lock, stopping the store
    /// for good if redb panics.
    fn with_database<T>(
        &self,
        what: &'static str,
        work: impl FnOnce(&Database) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.check_running(what)?;
        let database =
            self.database.read().map_err(|_| StorageError::Backend("the store's lock is poisoned".into()))?;
        self.stop_on_panic(what, || work(&database))
    }

    /// Runs `work`; a panic inside (from redb) becomes an error and stops
    /// the store for good, since redb's in-memory state is then suspect.
    fn stop_on_panic<T>(
        &self,
        what: &'static str,
        work: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| {
            self.failed.store(true, Ordering::SeqCst);
            Err(panic_error(what, payload.as_ref()))
        })
    }

    fn compact_file(&self) -> Result<bool, StorageError> {
        self.check_running("compacting")?;
        let mut database = self
            .database
            .write()
            .map_err(|_| StorageError::Backend("the store's lock is poisoned".into()))?;
        let mut compacted = false;
        // Each call moves what it can; a few rounds reach the fixed point.
        for _ in 0..8 {
            match self.stop_on_panic("compacting the database file", || {
                database.compact().map_err(|error| redb_error("compacting the database file", error))
            })? {
                true => compacted = true,
                false => break,
            }
        }
        Ok(compacted)
    }

    /// One write: checked against the log, logged as one WAL record, then
    /// applied to the pending layer (visible to reads from then on).
    fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        self.check_running("writing to the log")?;
        check_consecutive(&write.entries)?;
        self.wait_for_room()?;
        let mut writer = lock(&self.writer)?;
        {
            let pending = lock(&self.pending)?;
            let next = match &write.install_snapshot {
                Some(meta) => meta.last_index.get().saturating_add(1),
                None => pending.layers().next_index(&pending.base),
            };
            if let Some(first) = write.entries.first().map(|entry| entry.index.get()) {
                if first > next {
                    return Err(StorageError::InvalidWrite(format!(
                        "refusing to append entry {first}: the log ends at {}, so it would leave a gap",
                        next - 1
                    )));
                }
            }
        }
        if write.is_empty() {
            // Nothing to log; a synced empty write still makes earlier
            // unsynced ones durable.
            if write.sync {
                writer.sync().map_err(|error| self.fail(error))?;
            }
            return Ok(());
        }
        let seq = writer.append(&self.wal_files, &write).map_err(|error| self.fail(error))?;
        let mut pending = lock(&self.pending)?;
        pending.active.apply(seq, write.install_snapshot, write.entries, write.hard_state);
        pending.active_since.get_or_insert_with(Instant::now);
        if pending.active.bytes >= self.options.checkpoint_bytes {
            self.changed.notify_all();
        }
        Ok(())
    }

    /// Waits while the writes not yet checkpointed are at the memory bound.
    fn wait_for_room(&self) -> Result<(), StorageError> {
        let mut pending = lock(&self.pending)?;
        while pending.active.bytes >= self.options.max_pending_bytes {
            self.check_running("writing to the log")?;
            self.changed.notify_all();
            pending = self
                .changed
                .wait_timeout(pending, Duration::from_millis(100))
                .map_err(|_| StorageError::Backend("a log store lock is poisoned".into()))?
                .0;
        }
        Ok(())
    }

    /// The layer to checkpoint next: the one already frozen (a checkpoint
    /// of it failed or is being retried), else the active one, frozen now.
    /// The caller holds `checkpointing`.
    fn freeze(&self) -> Result<Option<Arc<Layer>>, StorageError> {
        let mut pending = lock(&self.pending)?;
        if let Some(frozen) = &pending.frozen {
            return Ok(Some(Arc::clone(frozen)));
        }
        if pending.active.is_empty() {
            return Ok(None);
        }
        let layer = Arc::new(std::mem::take(&mut pending.active));
        pending.active_since = None;
        pending.frozen = Some(Arc::clone(&layer));
        Ok(Some(layer))
    }

    /// Moves a frozen layer into redb (its WAL records are already durable)
    /// and deletes the segments the checkpoint covers. The caller holds
    /// `checkpointing`.
    fn commit_frozen(&self, layer: Arc<Layer>) -> Result<(), StorageError> {
        let base = lock(&self.pending)?.base;
        let base = self.with_database("checkpointing", |database| {
            apply_checkpoint(database, &layer, base, self.options.two_phase_commit)
        })?;
        {
            let mut pending = lock(&self.pending)?;
            pending.base = base;
            pending.frozen = None;
        }
        self.changed.notify_all();
        self.wal_files.delete_covered(layer.last_seq)?;
        Ok(())
    }

    /// Checkpoints every logged write; the caller holds `checkpointing` and
    /// the writer (so no write comes in between).
    fn checkpoint_all_locked(&self, writer: &mut WalWriter) -> Result<(), StorageError> {
        while let Some(layer) = self.freeze()? {
            writer.sync().map_err(|error| self.fail(error))?;
            self.commit_frozen(layer).map_err(|error| self.fail(error))?;
        }
        Ok(())
    }

    fn checkpoint_all(&self) -> Result<(), StorageError> {
        self.check_running("checkpointing")?;
        let _checkpointing = lock(&self.checkpointing)?;
        let mut writer = lock(&self.writer)?;
        self.checkpoint_all_locked(&mut writer)
    }

    /// The background thread: keeps a spare WAL segment ready and
    /// checkpoints when the pending writes are large or old enough.
    fn run_background(&self) {
        let poll = self.options.checkpoint_interval.min(Duration::from_millis(100));
        while !self.stop.load(Ordering::SeqCst) && !self.failed.load(Ordering::SeqCst) {
            if let Err(error) = self.wal_files.ensure_spare() {
                tracing::error!(%error, "creating a write-ahead log segment failed; the store stops");
                self.fail(error);
                return;
            }
            let due = match lock(&self.pending) {
                Ok(pending) => {
                    let due = pending.frozen.is_some()
                        || pending.active.bytes
                            >= self.options.checkpoint_bytes.min(self.options.max_pending_bytes)
                        || pending
                            .active_since
                            .is_some_and(|since| since.elapsed() >= self.options.checkpoint_interval);
                    if !due {
                        let _ = self.changed.wait_timeout(pending, poll);
                    }
                    due
                }
                Err(_) => return,
            };
            if due && !self.stop.load(Ordering::SeqCst) {
                if let Err(error) = self.background_checkpoint() {
                    tracing::error!(%error, "a checkpoint failed; the store stops (the WAL keeps the writes)");
                    self.fail(error);
                    return;
                }
            }
        }
    }

    fn background_checkpoint(&self) -> Result<(), StorageError> {
        let _checkpointing = lock(&self.checkpointing)?;
        if let Some(layer) = self.freeze()? {
            // The checkpoint must never get ahead of the durable WAL: a
            // record written without `sync` is flushed before redb says it
            // is checkpointed.
            lock(&self.writer)?.sync()?;
            self.commit_frozen(layer)?;
        }
        Ok(())
    }

    fn read_state(&self) -> Result<RestoredState, StorageError> {
        self.check_running("reading the log")?;
        // The layers are read before redb: a checkpoint that lands in
        // between only rewrites redb at and after the layers' limit, which
        // this read does not use.
        let (limit, install, hard_state, layer_entries) = {
            let pending = lock(&self.pending)?;
            let layers = pending.layers();
            (
                layers.redb_limit(),
                layers.install().cloned(),
                layers.hard_state(),
                layers.visible_entries(0, u64::MAX).1,
            )
        };
        let stored =
            self.with_database("reading the log", |database| log_tables::read_state(database, limit))?;
        let snapshot = install.or(stored.snapshot);
        let after = snapshot.as_ref().map_or(0, |meta| meta.last_index.get());
        let mut entries = stored.entries;
        entries.retain(|entry| entry.index.get() > after);
        entries.extend(layer_entries.into_iter().filter(|entry| entry.index.get() > after));
        check_joined(&entries, after.saturating_add(1))?;
        Ok(RestoredState { hard_state: hard_state.unwrap_or(stored.hard_state), snapshot, entries })
    }

    fn entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.check_running("reading entries")?;
        let (limit, install, (layer_first, layer_entries)) = {
            let pending = lock(&self.pending)?;
            let layers = pending.layers();
            (layers.redb_limit(), layers.install().cloned(), layers.visible_entries(from.get(), to.get()))
        };
        let stored = self.with_database("reading entries", |database| {
            log_tables::entries(database, from.get(), to.get(), limit)
        })?;
        let first = stored.first.or(layer_first);
        match first {
            Some(first) if from.get() > 0 && from.get() < first => {
                return Err(StorageError::Compacted { from, start: LogIndex(first - 1) });
            }
            Some(_) => {}
            None => {
                // Everything was compacted: what the snapshot covers is gone.
                let covered = install.or(stored.snapshot).map_or(LogIndex(0), |meta| meta.last_index);
                if from > LogIndex(0) && from <= covered {
                    return Err(StorageError::Compacted { from, start: covered });
                }
                return Ok(Vec::new());
            }
        }
        let mut entries = stored.entries;
        entries.extend(layer_entries);
        if let Some(first) = entries.first().map(|entry| entry.index.get()) {
            check_joined(&entries, first)?;
        }
        Ok(entries)
    }

    fn set_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.check_running("recording a snapshot")?;
        let _checkpointing = lock(&self.checkpointing)?;
        let mut writer = lock(&self.writer)?;
        // Recorded in redb, after every logged write: the snapshot must be
        // compared with (and may be compacted against) the whole log.
        self.checkpoint_all_locked(&mut writer)?;
        self.with_database("recording a snapshot", |database| log_tables::set_snapshot(database, &meta))?;
        let mut pending = lock(&self.pending)?;
        pending.base.snapshot_index = pending.base.snapshot_index.max(meta.last_index.get());
        Ok(())
    }

    fn compact(&self, up_to: LogIndex) -> Result<(), StorageError> {
        self.check_running("compacting the log")?;
        {
            let _checkpointing = lock(&self.checkpointing)?;
            let mut writer = lock(&self.writer)?;
            self.checkpoint_all_locked(&mut writer)?;
            self.with_database("compacting the log", |database| log_tables::compact(database, up_to))?;
            let (base, _) = self.with_database("compacting the log", log_tables::base)?;
            lock(&self.pending)?.base = base;
        }
        // Giving file space back is an optimization: redb's compaction
        // is transactional, so a failure leaves the database as it was
        // and the log compaction above stands. Only a panic, which
        // leaves redb's state suspect, stops the store.
        match self.compact_file_if_worth_it() {
            Err(error) if self.failed.load(Ordering::SeqCst) => Err(error),
            Err(error) => {
                tracing::warn!(%error, "compacting the database file failed; the log compaction stands");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Compacts the file when the free fraction passes the configured bar.
    fn compact_file_if_worth_it(&self) -> Result<(), StorageError> {
        let Some(free_fraction) = self.options.file_compaction_free_fraction else {
            return Ok(());
        };
        let file_bytes = fs::metadata(&self.path)?.len();
        if file_bytes < self.options.file_compaction_min_bytes {
            return Ok(());
        }
        let allocated_bytes = self.with_database("measuring the file", log_tables::allocated_bytes)?;
        let free = 1.0 - allocated_bytes as f64 / file_bytes as f64;
        if free >= free_fraction {
            let started = Instant::now();
            self.compact_file()?;
            let after = fs::metadata(&self.path)?.len();
            tracing::info!(
                before_bytes = file_bytes,
                after_bytes = after,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "compacted the log store's file"
            );
        }
        Ok(())
    }
}

/// Checkpoints `layer` into redb and returns what redb then holds.
fn apply_checkpoint(
    database: &Database,
    layer: &Layer,
    base: Base,
    two_phase: bool,
) -> Result<Base, StorageError> {
    let last = log_tables::checkpoint(database, layer, two_phase)?;
    let snapshot_index = layer.install.as_ref().map_or(base.snapshot_index, |meta| meta.last_index.get());
    Ok(Base { last, snapshot_index })
}

/// Checks that `entries` run consecutively from `first`: redb's part and
/// the WAL's part must join without a gap.
fn check_joined(entries: &[Entry], first: u64) -> Result<(), StorageError> {
    for (expected, entry) in (first..).zip(entries) {
        if entry.index.get() != expected {
            return Err(StorageError::Corrupt(format!(
                "the log has a gap: entry {expected} is missing (entry {} follows)",
                entry.index
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl LogStore for RedbLogStore {
    async fn read_state(&self) -> Result<RestoredState, StorageError> {
        let shared = Arc::clone(&self.handle.shared);
        run_blocking("reading the log", move || shared.read_state()).await
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.handle.shared);
        run_blocking("writing to the log", move || shared.write(write)).await
    }

    async fn set_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.handle.shared);
        run_blocking("recording a snapshot", move || shared.set_snapshot(meta)).await
    }

    async fn compact(&self, up_to: LogIndex) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.handle.shared);
        run_blocking("compacting the log", move || shared.compact(up_to)).await
    }

    async fn entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let shared = Arc::clone(&self.handle.shared);
        run_blocking("reading entries", move || shared.entries(from, to)).await
    }
}
