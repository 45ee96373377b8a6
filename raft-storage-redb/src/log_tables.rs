//! The log store's tables and the transactions on them. Every function here
//! is one redb transaction; [`crate::RedbLogStore`] runs them off the async
//! executor and guards them against panics.

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableError,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use raft_core::protocol::RestoredState;
use raft_core::storage::StorageError;
use raft_core::types::{Entry, HardState, LogIndex, SnapshotMeta};

use crate::blocking::redb_error;
use crate::codec::{self, RecordKind};
use crate::pending::{Base, Layer};

/// Log entries: index → envelope of the postcard-encoded [`Entry`].
pub(crate) const LOG_ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("log_entries");
/// The hard state: one row under [`SINGLETON_KEY`].
pub(crate) const HARD_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("hard_state");
/// The current snapshot's metadata, membership included: one row under
/// [`SINGLETON_KEY`].
pub(crate) const SNAPSHOT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot_meta");
/// The format-version record under [`FORMAT_VERSION_KEY`].
pub(crate) const FORMAT: TableDefinition<&str, &[u8]> = TableDefinition::new("format");
/// The sequence number of the last WAL record applied to the tables: one
/// row under [`SINGLETON_KEY`], written in the checkpoint's transaction.
pub(crate) const WAL_CHECKPOINT: TableDefinition<&str, &[u8]> = TableDefinition::new("wal_checkpoint");
/// The key of the one row of the singleton tables.
pub(crate) const SINGLETON_KEY: &str = "current";
/// The key of the format-version record.
pub(crate) const FORMAT_VERSION_KEY: &str = "version";
/// Singleton records are checksummed as if stored under this index.
const SINGLETON_CHECKSUM_KEY: u64 = 0;

/// Creates every table, so that readers never meet a missing one.
pub(crate) fn create_all(transaction: &WriteTransaction) -> Result<(), StorageError> {
    let create = |error| redb_error("creating the tables", error);
    transaction.open_table(LOG_ENTRIES).map_err(create)?;
    transaction.open_table(HARD_STATE).map_err(create)?;
    transaction.open_table(SNAPSHOT_META).map_err(create)?;
    transaction.open_table(FORMAT).map_err(create)?;
    transaction.open_table(WAL_CHECKPOINT).map_err(create)?;
    write_singleton(transaction, WAL_CHECKPOINT, RecordKind::WalCheckpoint, &0u64)
}

fn begin_read(database: &Database) -> Result<ReadTransaction, StorageError> {
    database.begin_read().map_err(|error| redb_error("starting a read", error))
}

fn open_read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    transaction: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<redb::ReadOnlyTable<K, V>, StorageError> {
    transaction.open_table(table).map_err(|error| match error {
        TableError::TableDoesNotExist(name) => {
            StorageError::Corrupt(format!("the table {name} is missing from the database"))
        }
        other => redb_error("opening a table", other),
    })
}

/// Reads one singleton record, verifying its envelope.
fn read_singleton<T: DeserializeOwned>(
    transaction: &ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    kind: RecordKind,
) -> Result<Option<T>, StorageError> {
    let table = open_read_table(transaction, table)?;
    let Some(value) = table.get(SINGLETON_KEY).map_err(|error| redb_error("reading a record", error))? else {
        return Ok(None);
    };
    codec::decode(kind, SINGLETON_CHECKSUM_KEY, value.value())
        .map(Some)
        .map_err(|problem| StorageError::Corrupt(format!("the {kind:?} record: {problem}")))
}

fn write_singleton<T: Serialize>(
    transaction: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    kind: RecordKind,
    value: &T,
) -> Result<(), StorageError> {
    let mut buffer = Vec::new();
    codec::encode_into(kind, SINGLETON_CHECKSUM_KEY, value, &mut buffer)?;
    let mut table = transaction.open_table(table).map_err(|error| redb_error("opening a table", error))?;
    table.insert(SINGLETON_KEY, buffer.as_slice()).map_err(|error| redb_error("writing a record", error))?;
    Ok(())
}

/// The snapshot metadata as a write transaction sees it.
fn snapshot_in_write(transaction: &WriteTransaction) -> Result<Option<SnapshotMeta>, StorageError> {
    let table =
        transaction.open_table(SNAPSHOT_META).map_err(|error| redb_error("opening a table", error))?;
    let Some(value) = table.get(SINGLETON_KEY).map_err(|error| redb_error("reading a record", error))? else {
        return Ok(None);
    };
    codec::decode(RecordKind::SnapshotMeta, SINGLETON_CHECKSUM_KEY, value.value())
        .map(Some)
        .map_err(|problem| StorageError::Corrupt(format!("the snapshot metadata record: {problem}")))
}

fn decode_entry(key: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
    let entry: Entry = codec::decode(RecordKind::Entry, key, bytes)
        .map_err(|problem| StorageError::Corrupt(format!("log entry {key}: {problem}")))?;
    if entry.index.get() != key {
        return Err(StorageError::Corrupt(format!(
            "log entry {key} holds the entry of index {}",
            entry.index
        )));
    }
    Ok(entry)
}

/// Decodes the entries of `range`, which must be consecutive from `first`.
fn collect_entries(
    table: &impl ReadableTable<u64, &'static [u8]>,
    first: u64,
    last: u64,
) -> Result<Vec<Entry>, StorageError> {
    let mut entries = Vec::new();
    let mut expected = first;
    for row in table.range(first..=last).map_err(|error| redb_error("reading entries", error))? {
        let (key, value) = row.map_err(|error| redb_error("reading entries", error))?;
        let key = key.value();
        if key != expected {
            return Err(StorageError::Corrupt(format!("the log has a gap: entry {expected} is missing")));
        }
        entries.push(decode_entry(key, value.value())?);
        expected = key.saturating_add(1);
    }
    Ok(entries)
}

/// redb's hard state, snapshot and the entries after the snapshot that are
/// below `limit` (entries at or after it are replaced by the WAL).
pub(crate) fn read_state(database: &Database, limit: u64) -> Result<RestoredState, StorageError> {
    let transaction = begin_read(database)?;
    let hard_state: HardState =
        read_singleton(&transaction, HARD_STATE, RecordKind::HardState)?.unwrap_or_default();
    let snapshot: Option<SnapshotMeta> =
        read_singleton(&transaction, SNAPSHOT_META, RecordKind::SnapshotMeta)?;
    let after = snapshot.as_ref().map_or(0, |meta| meta.last_index.get());
    let entries = if limit > after.saturating_add(1) {
        let table = open_read_table(&transaction, LOG_ENTRIES)?;
        collect_entries(&table, after.saturating_add(1), limit - 1)?
    } else {
        Vec::new()
    };
    Ok(RestoredState { hard_state, snapshot, entries })
}

/// What redb holds of `from ..= to` below `limit`.
pub(crate) struct StoredRange {
    /// redb's first entry, if it is below `limit`.
    pub(crate) first: Option<u64>,
    /// redb's snapshot metadata.
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// The entries of the range that are below `limit`, consecutive.
    pub(crate) entries: Vec<Entry>,
}

/// The entries of `from ..= to` that redb holds below `limit`, with what
/// the caller needs to tell a compacted range.
pub(crate) fn entries(
    database: &Database,
    from: u64,
    to: u64,
    limit: u64,
) -> Result<StoredRange, StorageError> {
    let transaction = begin_read(database)?;
    let table = open_read_table(&transaction, LOG_ENTRIES)?;
    let snapshot: Option<SnapshotMeta> =
        read_singleton(&transaction, SNAPSHOT_META, RecordKind::SnapshotMeta)?;
    let first =
        table.first().map_err(|error| redb_error("reading entries", error))?.map(|(key, _)| key.value());
    let first = first.filter(|first| *first < limit);
    let entries = match first {
        Some(first) if from.max(first) <= to.min(limit - 1) => {
            collect_entries(&table, from.max(first), to.min(limit - 1))?
        }
        _ => Vec::new(),
    };
    Ok(StoredRange { first, snapshot, entries })
}

fn begin_write(
    database: &Database,
    durable: bool,
    two_phase: bool,
) -> Result<WriteTransaction, StorageError> {
    let mut transaction = database.begin_write().map_err(|error| redb_error("starting a write", error))?;
    let durability = if durable { Durability::Immediate } else { Durability::None };
    transaction.set_durability(durability).map_err(|error| redb_error("setting durability", error))?;
    transaction.set_two_phase_commit(two_phase);
    Ok(transaction)
}

fn commit(transaction: WriteTransaction) -> Result<(), StorageError> {
    transaction.commit().map_err(|error| redb_error("committing", error))
}

/// Applies a layer of logged writes to redb in one durable transaction and
/// records `layer.last_seq` as the WAL checkpoint in the same transaction:
/// install its snapshot (replacing the log), discard the entries it
/// replaces, insert its entries, record its hard state. Returns redb's last
/// entry afterwards.
pub(crate) fn checkpoint(
    database: &Database,
    layer: &Layer,
    two_phase: bool,
) -> Result<Option<u64>, StorageError> {
    let transaction = begin_write(database, true, two_phase)?;
    if let Some(meta) = &layer.install {
        // Dropping the table frees its pages in one sweep, cheaper than
        // deleting a long log row by row.
        transaction.delete_table(LOG_ENTRIES).map_err(|error| redb_error("clearing the log", error))?;
        write_singleton(&transaction, SNAPSHOT_META, RecordKind::SnapshotMeta, meta)?;
    }
    let last = {
        let mut table =
            transaction.open_table(LOG_ENTRIES).map_err(|error| redb_error("opening the log", error))?;
        if layer.install.is_none() && layer.base_limit != u64::MAX {
            let last = last_key(&table)?;
            if last.is_some_and(|last| last >= layer.base_limit) {
                table
                    .retain_in(layer.base_limit.., |_, _| false)
                    .map_err(|error| redb_error("truncating the log", error))?;
            }
        }
        let mut buffer = Vec::with_capacity(512);
        for entry in &layer.tail {
            codec::encode_into(RecordKind::Entry, entry.index.get(), entry, &mut buffer)?;
            table
                .insert(entry.index.get(), buffer.as_slice())
                .map_err(|error| redb_error("appending entries", error))?;
        }
        last_key(&table)?
    };
    if let Some(hard_state) = &layer.hard_state {
        write_singleton(&transaction, HARD_STATE, RecordKind::HardState, hard_state)?;
    }
    write_singleton(&transaction, WAL_CHECKPOINT, RecordKind::WalCheckpoint, &layer.last_seq)?;
    commit(transaction)?;
    Ok(last)
}

fn last_key(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<Option<u64>, StorageError> {
    Ok(table.last().map_err(|error| redb_error("reading the log", error))?.map(|(key, _)| key.value()))
}

/// What the store keeps in memory about redb, and the WAL checkpoint.
pub(crate) fn base(database: &Database) -> Result<(Base, u64), StorageError> {
    let transaction = begin_read(database)?;
    let snapshot: Option<SnapshotMeta> =
        read_singleton(&transaction, SNAPSHOT_META, RecordKind::SnapshotMeta)?;
    let checkpoint: u64 = read_singleton(&transaction, WAL_CHECKPOINT, RecordKind::WalCheckpoint)?
        .ok_or_else(|| {
            StorageError::Corrupt("the WAL checkpoint record is missing from the database".into())
        })?;
    let table = open_read_table(&transaction, LOG_ENTRIES)?;
    let base =
        Base { last: last_key(&table)?, snapshot_index: snapshot.map_or(0, |meta| meta.last_index.get()) };
    Ok((base, checkpoint))
}

/// Moves a format-1 database (no WAL) to format 2: the checkpoint record
/// (0: nothing logged yet) and the new format record, in one transaction.
pub(crate) fn migrate_from_v1(database: &Database, new_version: u32) -> Result<(), StorageError> {
    let transaction = begin_write(database, true, false)?;
    write_singleton(&transaction, WAL_CHECKPOINT, RecordKind::WalCheckpoint, &0u64)?;
    {
        let mut format = transaction.open_table(FORMAT).map_err(|error| redb_error("migrating", error))?;
        format
            .insert(FORMAT_VERSION_KEY, codec::encode_format_version(new_version).as_slice())
            .map_err(|error| redb_error("writing the format version", error))?;
    }
    commit(transaction)
}

/// Records a locally created snapshot if it is newer than the current one.
/// Durable on return: the snapshot store deletes older snapshot files right
/// after, and the log must never point at a deleted one.
pub(crate) fn set_snapshot(database: &Database, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let transaction = begin_write(database, true, false)?;
    let current = snapshot_in_write(&transaction)?;
    if current.is_some_and(|current| current.last_index >= meta.last_index) {
        return transaction.abort().map_err(|error| redb_error("aborting", error));
    }
    write_singleton(&transaction, SNAPSHOT_META, RecordKind::SnapshotMeta, meta)?;
    commit(transaction)
}

/// Deletes the entries up to `min(up_to, snapshot index)` in one durable
/// transaction (durable so that the pages it frees can be reused at once).
pub(crate) fn compact(database: &Database, up_to: LogIndex) -> Result<(), StorageError> {
    let transaction = begin_write(database, true, false)?;
    let snapshot_index = snapshot_in_write(&transaction)?.map_or(0, |meta| meta.last_index.get());
    let limit = up_to.get().min(snapshot_index);
    {
        let mut table =
            transaction.open_table(LOG_ENTRIES).map_err(|error| redb_error("opening the log", error))?;
        let first =
            table.first().map_err(|error| redb_error("reading the log", error))?.map(|(key, _)| key.value());
        if first.is_none_or(|first| first > limit) {
            drop(table);
            return transaction.abort().map_err(|error| redb_error("aborting", error));
        }
        let last =
            table.last().map_err(|error| redb_error("reading the log", error))?.map(|(key, _)| key.value());
        if last.is_none_or(|last| last > limit) {
            table
                .retain_in(..=limit, |_, _| false)
                .map_err(|error| redb_error("compacting the log", error))?;
            drop(table);
            return commit(transaction);
        }
    }
    // Everything goes: dropping the table frees its pages in one sweep
    // instead of deleting row by row.
    transaction.delete_table(LOG_ENTRIES).map_err(|error| redb_error("compacting the log", error))?;
    transaction.open_table(LOG_ENTRIES).map_err(|error| redb_error("compacting the log", error))?;
    commit(transaction)
}

/// Bytes of the file redb has allocated to pages (live or awaiting reuse).
/// This walks every page of the live trees, so it costs about one read of
/// the live log.
pub(crate) fn allocated_bytes(database: &Database) -> Result<u64, StorageError> {
    let transaction = database.begin_write().map_err(|error| redb_error("starting a write", error))?;
    let stats = transaction.stats().map_err(|error| redb_error("measuring the file", error))?;
    transaction.abort().map_err(|error| redb_error("aborting", error))?;
    Ok(stats.allocated_pages() * stats.page_size() as u64)
}
