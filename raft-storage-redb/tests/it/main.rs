//! The crate's integration tests, in one binary (see `DEPENDENCIES.md`:
//! each test binary costs a link of the whole stack).

mod checkpoints;
mod conformance;
mod corruption;
mod crash;
mod runtime;
mod snapshots;
mod support;
mod wal;
