//! Running blocking disk work from async trait methods, and turning redb's
//! errors and panics into [`StorageError`]s.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use raft_core::storage::StorageError;

/// Runs blocking disk work off the async executor.
///
/// Inside a tokio runtime the work goes to tokio's blocking pool, so an
/// fsync never stalls the tasks that send heartbeats. Outside one (a library
/// user with another executor, a plain test) it runs inline: spawning would
/// panic there. Either way a panic inside the work (redb may panic on a
/// damaged file) becomes an error instead of unwinding through the caller.
pub(crate) async fn run_blocking<T, F>(what: &'static str, work: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => match handle.spawn_blocking(move || guard_panics(what, work)).await {
            Ok(result) => result,
            Err(join_error) => {
                Err(StorageError::Backend(format!("{what}: the blocking task failed: {join_error}")))
            }
        },
        Err(_) => guard_panics(what, work),
    }
}

/// Runs `work`, turning a panic into [`StorageError::Corrupt`].
///
/// redb documents that a plain open of an altered file "may panic"; the only
/// panics seen in practice come from reading malformed pages, so they are
/// reported as corruption. Callers that keep state across calls must treat a
/// caught panic as fatal for that state (the log store stops serving).
pub(crate) fn guard_panics<T>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| Err(panic_error(what, payload.as_ref())))
}

/// The error that stands for a panic caught while doing `what`.
pub(crate) fn panic_error(what: &str, payload: &(dyn Any + Send)) -> StorageError {
    StorageError::Corrupt(format!(
        "{what}: redb panicked ({}); the database file is likely damaged",
        panic_message(payload)
    ))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "no message".to_owned()
    }
}

/// Maps any redb error to the storage error that describes it, with what we
/// were doing as context.
pub(crate) fn redb_error(what: &str, error: impl Into<redb::Error>) -> StorageError {
    match error.into() {
        redb::Error::Corrupted(message) => StorageError::Corrupt(format!("{what}: {message}")),
        redb::Error::Io(io) => StorageError::Io(std::io::Error::new(io.kind(), format!("{what}: {io}"))),
        redb::Error::DatabaseAlreadyOpen => StorageError::Backend(format!(
            "{what}: the database is already open (by this process or another one)"
        )),
        redb::Error::UpgradeRequired(version) => StorageError::Backend(format!(
            "{what}: the file uses redb file format {version}, which this build of redb cannot open"
        )),
        other => StorageError::Backend(format!("{what}: {other}")),
    }
}
