//! Damaged database files: truncated, or with a bit flipped at many
//! offsets. Every attempt must end in a clear error or in exactly the data
//! that was written, never in a panic or different data.

use std::fs;
use std::path::{Path, PathBuf};

use raft_core::protocol::RestoredState;
use raft_core::storage::{LogStore, LogWrite, StorageError};
use raft_core::types::{Entry, HardState, LogIndex, NodeId, Term};
use raft_storage_redb::{LogStoreOptions, RedbLogStore};
use redb::ReadableTable;

use crate::support::{entry, meta, write};

const ENTRY_BYTES: usize = 200;
const LAST_INDEX: u64 = 3_000;
const SNAPSHOT_INDEX: u64 = 1_000;

/// What one attempt to use a damaged file ended in.
#[derive(Debug)]
enum Outcome {
    /// Everything read back exactly as written.
    Intact,
    /// The store refused, with this error.
    Refused(StorageError),
    /// Something read back differently: a failure of the store.
    WrongData(String),
    /// A panic escaped the store: a failure of the store.
    Panicked(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Intact => write!(formatter, "read back intact"),
            Outcome::Refused(error) => write!(formatter, "refused: {error}"),
            Outcome::WrongData(what) => write!(formatter, "WRONG DATA: {what}"),
            Outcome::Panicked(message) => write!(formatter, "PANICKED: {message}"),
        }
    }
}

/// A store with a realistic shape: many commits, a snapshot, a compacted
/// prefix, a hard state, an unsynced commit-index update; closed cleanly.
fn build_store(path: &Path) -> (RestoredState, Vec<Entry>) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let store = RedbLogStore::open(path).unwrap();
        for first in (1..=LAST_INDEX).step_by(100) {
            let batch =
                (first..first + 100).map(|index| entry(index, 1 + index / 1_000, ENTRY_BYTES)).collect();
            let hard_state =
                HardState { term: Term(1 + first / 1_000), vote: NodeId(2), commit: LogIndex(first) };
            store.write(write(batch, Some(hard_state))).await.unwrap();
        }
        store.set_snapshot(meta(SNAPSHOT_INDEX, 2)).await.unwrap();
        store.compact(LogIndex(SNAPSHOT_INDEX)).await.unwrap();
        let hard_state = HardState { term: Term(3), vote: NodeId(2), commit: LogIndex(LAST_INDEX) };
        store
            .write(LogWrite { hard_state: Some(hard_state), sync: false, ..LogWrite::default() })
            .await
            .unwrap();
        let state = store.read_state().await.unwrap();
        let all = store.entries(LogIndex(SNAPSHOT_INDEX + 1), LogIndex(LAST_INDEX)).await.unwrap();
        (state, all)
    })
}

/// Opens the (possibly damaged) store at `path` and reads everything back.
fn attempt(path: &Path, options: LogStoreOptions, expected: &(RestoredState, Vec<Entry>)) -> Outcome {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let store = RedbLogStore::open_async(path, options).await?;
            let state = store.read_state().await?;
            let entries = store.entries(LogIndex(SNAPSHOT_INDEX + 1), LogIndex(LAST_INDEX)).await?;
            Ok::<_, StorageError>((state, entries))
        })
    }));
    match result {
        Err(payload) => Outcome::Panicked(
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_default(),
        ),
        Ok(Err(error)) => Outcome::Refused(error),
        Ok(Ok((state, entries))) => {
            if state.hard_state != expected.0.hard_state || state.snapshot != expected.0.snapshot {
                Outcome::WrongData(format!(
                    "hard state {:?}, snapshot {:?}",
                    state.hard_state, state.snapshot
                ))
            } else if state.entries != expected.0.entries || entries != expected.1 {
                Outcome::WrongData(format!("{} entries read back differently", state.entries.len()))
            } else {
                Outcome::Intact
            }
        }
    }
}

/// Whether an error explains itself: damage is reported as `Corrupt`,
/// with a message.
fn is_clear(error: &StorageError) -> bool {
    matches!(error, StorageError::Corrupt(message) if !message.is_empty())
}

/// The WAL directory that belongs with the database at `path`.
fn wal_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap().to_os_string();
    name.push(".wal");
    path.with_file_name(name)
}

/// Copies the WAL of the database `from` next to the database `to`.
fn copy_wal(from: &Path, to: &Path) {
    let target = wal_of(to);
    fs::create_dir_all(&target).unwrap();
    for item in fs::read_dir(wal_of(from)).unwrap() {
        let item = item.unwrap();
        fs::copy(item.path(), target.join(item.file_name())).unwrap();
    }
}

struct Damage {
    original: PathBuf,
    expected: (RestoredState, Vec<Entry>),
    _directory: tempfile::TempDir,
}

impl Damage {
    fn new() -> Self {
        let directory = tempfile::tempdir().unwrap();
        let original = directory.path().join("original.redb");
        let expected = build_store(&original);
        Damage { original, expected, _directory: directory }
    }

    /// A copy of the original file damaged by `damage`.
    fn copy_with(&self, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
        let mut bytes = fs::read(&self.original).unwrap();
        damage(&mut bytes);
        let path = self.original.with_file_name(name);
        fs::write(&path, bytes).unwrap();
        copy_wal(&self.original, &path);
        path
    }
}

/// Offsets across redb's header (magic, god byte, page size, both commit
/// slots' roots and transaction ids) and spread over the whole file.
fn offsets_to_flip(file_bytes: usize) -> Vec<(usize, u8)> {
    let mut offsets = vec![(0, 0), (4, 3), (9, 0), (9, 1), (9, 2), (12, 1), (16, 0), (28, 0)];
    for slot in [64, 192] {
        offsets.extend([
            (slot, 1),
            (slot + 1, 0),
            (slot + 8, 2),
            (slot + 16, 5),
            (slot + 40, 1),
            (slot + 104, 0),
        ]);
    }
    let spread = 48;
    offsets.extend((1..spread).map(|step| (512 + (file_bytes - 512) * step / spread, (step % 8) as u8)));
    offsets
}

fn check_flips(options: LogStoreOptions) -> Vec<String> {
    let damage = Damage::new();
    let file_bytes = fs::metadata(&damage.original).unwrap().len() as usize;
    let mut failures = Vec::new();
    let mut refused = 0;
    for (offset, bit) in offsets_to_flip(file_bytes) {
        let path = damage.copy_with(&format!("flip-{offset}-{bit}.redb"), |bytes| bytes[offset] ^= 1 << bit);
        let outcome = attempt(&path, options.clone(), &damage.expected);
        eprintln!("bit {bit} at offset {offset}: {outcome}");
        match outcome {
            Outcome::Intact => {}
            Outcome::Refused(error) if is_clear(&error) => refused += 1,
            other => failures.push(format!("bit {bit} at offset {offset}: {other}")),
        }
        fs::remove_file(&path).unwrap();
    }
    assert!(refused > 0, "some flips land in live data and must be refused");
    failures
}

#[test]
fn flipped_bits_are_refused_or_harmless() {
    let failures = check_flips(LogStoreOptions::default());
    assert!(failures.is_empty(), "flips that were not refused clearly:\n{}", failures.join("\n"));
}

#[test]
fn flipped_bits_never_serve_wrong_data_even_without_verification_on_open() {
    // Without the page checksums at open, damage shows when read: through
    // our entry checksums, or as a (caught) redb panic or error.
    let mut options = LogStoreOptions::default();
    options.verify_on_open = false;
    let failures = check_flips(options);
    assert!(failures.is_empty(), "flips that were not refused clearly:\n{}", failures.join("\n"));
}

#[test]
fn a_truncated_file_is_refused() {
    let damage = Damage::new();
    let file_bytes = fs::metadata(&damage.original).unwrap().len() as usize;
    let mut failures = Vec::new();
    for length in [0, 5, 100, 320, 4_096, file_bytes / 3, file_bytes / 2, file_bytes - 4_096, file_bytes - 1]
    {
        let path = damage.copy_with(&format!("truncated-{length}.redb"), |bytes| bytes.truncate(length));
        match attempt(&path, LogStoreOptions::default(), &damage.expected) {
            Outcome::Refused(error) if is_clear(&error) => {}
            other => failures.push(format!("truncated to {length} bytes: {other}")),
        }
    }
    assert!(failures.is_empty(), "truncations not refused clearly:\n{}", failures.join("\n"));
}

#[test]
fn a_damaged_entry_is_reported_with_its_index_and_never_served() {
    // Rewrite one entry's value behind the store's back with a valid redb
    // commit, so only our own checksum can notice.
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log.redb");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let store = RedbLogStore::open(&path).unwrap();
        store.write(write((1..=10).map(|index| entry(index, 1, 50)).collect(), None)).await.unwrap();
    });
    {
        let database = redb::Database::open(&path).unwrap();
        let transaction = database.begin_write().unwrap();
        {
            let definition: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log_entries");
            let mut table = transaction.open_table(definition).unwrap();
            let mut value = table.get(7).unwrap().unwrap().value().to_vec();
            let last = value.len() - 1;
            value[last] ^= 0x20;
            table.insert(7, value.as_slice()).unwrap();
        }
        transaction.commit().unwrap();
    }
    runtime.block_on(async {
        let store = RedbLogStore::open(&path).unwrap();
        match store.read_state().await {
            Err(StorageError::Corrupt(message)) => assert!(message.contains("log entry 7"), "{message}"),
            other => panic!("a damaged entry must be reported, got {other:?}"),
        }
        let before = store.entries(LogIndex(1), LogIndex(6)).await.unwrap();
        assert_eq!(before.len(), 6, "entries before the damage still read");
        assert!(matches!(store.entries(LogIndex(5), LogIndex(9)).await, Err(StorageError::Corrupt(_))));
    });
}

#[test]
fn a_newer_format_version_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log.redb");
    drop(RedbLogStore::open(&path).unwrap());
    {
        let database = redb::Database::open(&path).unwrap();
        let transaction = database.begin_write().unwrap();
        {
            let definition: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("format");
            let mut table = transaction.open_table(definition).unwrap();
            let version = 3u32.to_le_bytes();
            let mut record = version.to_vec();
            record.extend_from_slice(&crc32c::crc32c(&version).to_le_bytes());
            table.insert("version", record.as_slice()).unwrap();
        }
        transaction.commit().unwrap();
    }
    match RedbLogStore::open(&path) {
        Err(StorageError::UnsupportedVersion { found: 3, supported: 2 }) => {}
        other => panic!("a newer format must be refused, got {other:?}"),
    }
}

#[test]
fn a_redb_file_of_another_application_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("other.redb");
    drop(redb::Database::create(&path).unwrap());
    match RedbLogStore::open(&path) {
        Err(StorageError::Corrupt(message)) => assert!(message.contains("format"), "{message}"),
        other => panic!("a foreign database must be refused, got {other:?}"),
    }
}
