//! Durable storage for `raft-core` on [redb](https://docs.rs/redb): a
//! [`RedbLogStore`] (log entries, hard state and the current snapshot's
//! metadata: an append-only write-ahead log, checkpointed in the background
//! into one redb database) and a [`RedbSnapshotStore`] (snapshot data as
//! checksummed files in a directory next to it).
//!
//! Both implement the traits of `raft_core::storage` and pass its
//! conformance suite. The on-disk layout, the commit protocol, the format
//! version policy and the assumptions about the media are described in the
//! crate's `DESIGN.md`.
//!
//! ```
//! # async fn example() -> Result<(), raft_core::storage::StorageError> {
//! use raft_core::storage::{LogStore, LogWrite};
//!
//! let directory = std::env::temp_dir().join(format!("raft-doc-{}", std::process::id()));
//! let (log, snapshots) = raft_storage_redb::open_stores(&directory).await?;
//! log.write(LogWrite { sync: true, ..LogWrite::default() }).await?;
//! let state = log.read_state().await?;
//! assert!(state.entries.is_empty());
//! # drop((log, snapshots));
//! # std::fs::remove_dir_all(&directory).ok();
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(example()).unwrap();
//! ```
#![deny(missing_docs)]

mod blocking;
mod checkpoint_store;
mod codec;
mod log_store;
mod log_tables;
mod pending;
mod snapshot_file;
mod snapshot_store;
mod wal;

use std::path::Path;

use raft_core::storage::StorageError;

pub use checkpoint_store::{RedbCheckpointStore, CHECKPOINT_DIRECTORY_NAME};
pub use log_store::{LogStoreOptions, RedbLogStore, SpaceUsage, LOG_FORMAT_VERSION};
pub use snapshot_file::SNAPSHOT_FORMAT_VERSION;
pub use snapshot_store::RedbSnapshotStore;

/// Tools for fault-injection tests of a stopped store.
pub mod fault_injection {
    use std::path::Path;

    use raft_core::storage::StorageError;

    pub use crate::wal::SYNCED_MARKER_FILE_NAME;

    /// Cuts the write-ahead log of the stopped log store at `log_path` (a
    /// `log.redb`) back to the durable end recorded while it ran with
    /// [`crate::LogStoreOptions::record_synced_position`], as a power
    /// failure would: every record written but not yet flushed is zeroed.
    /// Returns how many bytes of records were dropped (0 if everything
    /// written had been flushed).
    pub fn discard_unsynced_writes(log_path: &Path) -> Result<u64, StorageError> {
        crate::wal::discard_unsynced(&crate::log_store::wal_directory(log_path))
    }
}

/// The log store's file name inside a node's data directory.
pub const LOG_FILE_NAME: &str = "log.redb";
/// The snapshot directory's name inside a node's data directory.
pub const SNAPSHOT_DIRECTORY_NAME: &str = "snapshots";

/// Opens (creating if needed) both stores of one node in `data_directory`:
/// the log in `log.redb` (with its write-ahead log in `log.redb.wal/`) and
/// the snapshots in `snapshots/`, with the default options.
pub async fn open_stores(
    data_directory: impl AsRef<Path>,
) -> Result<(RedbLogStore, RedbSnapshotStore), StorageError> {
    open_stores_with(data_directory, LogStoreOptions::default()).await
}

/// [`open_stores`] with the log store's options given.
pub async fn open_stores_with(
    data_directory: impl AsRef<Path>,
    log_options: LogStoreOptions,
) -> Result<(RedbLogStore, RedbSnapshotStore), StorageError> {
    let directory = data_directory.as_ref();
    let log = RedbLogStore::open_async(directory.join(LOG_FILE_NAME), log_options).await?;
    let snapshots = RedbSnapshotStore::open_async(directory.join(SNAPSHOT_DIRECTORY_NAME)).await?;
    Ok((log, snapshots))
}
