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
    let directory = data_directory.as_ref();
    let log = RedbLogStore::open_async(directory.join(LOG_FILE_NAME), LogStoreOptions::default()).await?;
    let snapshots = RedbSnapshotStore::open_async(directory.join(SNAPSHOT_DIRECTORY_NAME)).await?;
    Ok((log, snapshots))
}
