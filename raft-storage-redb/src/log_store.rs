//! [`RedbLogStore`]: the durable log, hard state and current snapshot
//! metadata in one redb database. The layout and commit protocol are in the
//! crate's `DESIGN.md`.

use std::fs;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, RepairSession, TableError};

use raft_core::protocol::RestoredState;
use raft_core::storage::{LogStore, LogWrite, StorageError};
use raft_core::types::{Entry, LogIndex, SnapshotMeta};

use crate::blocking::{guard_panics, panic_error, redb_error, run_blocking};
use crate::codec;
use crate::log_tables::{self, FORMAT, FORMAT_VERSION_KEY};

/// The newest log store format this release reads and the one it writes.
pub const LOG_FORMAT_VERSION: u32 = 1;

/// Settings of a [`RedbLogStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LogStoreOptions {
    /// The most memory redb may use to cache pages. redb's own default (1 GiB)
    /// would let the cache hold a long log in memory; the store bounds it.
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
    /// (see `DESIGN.md`, "Assumptions about the media").
    pub two_phase_commit: bool,
    /// Reclaim the file's free space with redb's `Database::compact` when a
    /// log compaction leaves at least this fraction of the file free (and
    /// the file is at least [`Self::file_compaction_min_bytes`]). `None`
    /// never does. See `DESIGN.md`, "File growth".
    pub file_compaction_free_fraction: Option<f64>,
    /// Files smaller than this are never compacted: the work would not pay.
    pub file_compaction_min_bytes: u64,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            cache_size_bytes: 64 << 20,
            verify_on_open: true,
            two_phase_commit: false,
            file_compaction_free_fraction: Some(0.5),
            file_compaction_min_bytes: 256 << 20,
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

/// A [`LogStore`] on one redb database file.
///
/// Opening creates the file (crash-safely: it is initialized under a
/// temporary name and renamed into place) or verifies an existing one. Each
/// [`LogStore::write`] is one redb write transaction; nothing of the log is
/// kept in memory beyond redb's bounded page cache. Only one handle may have
/// a file open at a time (redb locks it).
#[derive(Clone)]
pub struct RedbLogStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// Read-locked by every operation; write-locked only to compact the file,
    /// which needs the database to itself.
    database: RwLock<Database>,
    path: PathBuf,
    options: LogStoreOptions,
    /// Set when redb panicked: its in-memory state can no longer be trusted,
    /// so the store refuses further work until it is reopened.
    failed: AtomicBool,
}

impl std::fmt::Debug for RedbLogStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("RedbLogStore").field("path", &self.shared.path).finish_non_exhaustive()
    }
}

impl RedbLogStore {
    /// Opens the store at `path` (a file), creating it if it does not exist,
    /// with the default options.
    ///
    /// This blocks on disk I/O; from async code prefer [`Self::open_async`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(path, LogStoreOptions::default())
    }

    /// Opens the store at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: LogStoreOptions) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        guard_panics("opening the log store", || open_database(&path, &options)).map(|database| {
            RedbLogStore {
                shared: Arc::new(Shared {
                    database: RwLock::new(database),
                    path,
                    options,
                    failed: AtomicBool::new(false),
                }),
            }
        })
    }

    /// [`Self::open_with`] on tokio's blocking pool.
    pub async fn open_async(path: impl AsRef<Path>, options: LogStoreOptions) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        run_blocking("opening the log store", move || Self::open_with(path, options)).await
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The database file's current size in bytes.
    pub fn file_size_bytes(&self) -> Result<u64, StorageError> {
        Ok(fs::metadata(&self.shared.path)?.len())
    }

    /// How much of the database file redb has allocated. This walks the
    /// live trees (about one read of the live log): for monitoring, not for
    /// every request.
    pub async fn space_usage(&self) -> Result<SpaceUsage, StorageError> {
        let shared = Arc::clone(&self.shared);
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
        let shared = Arc::clone(&self.shared);
        run_blocking("compacting the database file", move || shared.compact_file()).await
    }
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
    check_format(&database, path)?;
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

fn check_format(database: &Database, path: &Path) -> Result<(), StorageError> {
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
    Ok(())
}

impl Shared {
    /// Runs `work` on the database under the shared lock, stopping the store
    /// for good if redb panics.
    fn with_database<T>(
        &self,
        what: &'static str,
        work: impl FnOnce(&Database) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(StorageError::Backend(format!("{what}: the store stopped after an earlier failure")));
        }
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
        if self.failed.load(Ordering::SeqCst) {
            return Err(StorageError::Backend(
                "compacting: the store stopped after an earlier failure".into(),
            ));
        }
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
}

#[async_trait]
impl LogStore for RedbLogStore {
    async fn read_state(&self) -> Result<RestoredState, StorageError> {
        let shared = Arc::clone(&self.shared);
        run_blocking("reading the log", move || {
            shared.with_database("reading the log", log_tables::read_state)
        })
        .await
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.shared);
        let two_phase = self.shared.options.two_phase_commit;
        run_blocking("writing to the log", move || {
            shared.with_database("writing to the log", |database| {
                log_tables::write(database, &write, two_phase)
            })
        })
        .await
    }

    async fn set_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.shared);
        run_blocking("recording a snapshot", move || {
            shared.with_database("recording a snapshot", |database| log_tables::set_snapshot(database, &meta))
        })
        .await
    }

    async fn compact(&self, up_to: LogIndex) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.shared);
        run_blocking("compacting the log", move || {
            shared.with_database("compacting the log", |database| log_tables::compact(database, up_to))?;
            // Giving file space back is an optimization: redb's compaction
            // is transactional, so a failure leaves the database as it was
            // and the log compaction above stands. Only a panic, which
            // leaves redb's state suspect, stops the store.
            match shared.compact_file_if_worth_it() {
                Err(error) if shared.failed.load(Ordering::SeqCst) => Err(error),
                Err(error) => {
                    tracing::warn!(%error, "compacting the database file failed; the log compaction stands");
                    Ok(())
                }
                Ok(()) => Ok(()),
            }
        })
        .await
    }

    async fn entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let shared = Arc::clone(&self.shared);
        run_blocking("reading entries", move || {
            shared.with_database("reading entries", |database| log_tables::entries(database, from, to))
        })
        .await
    }
}

impl Shared {
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
            let started = std::time::Instant::now();
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
