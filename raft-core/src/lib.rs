//! The Raft consensus protocol.
//!
//! - [`protocol`]: the engine, a deterministic state machine with no I/O.
//! - [`types`] and [`message`]: the plain data it consumes and produces.
//! - `testing` (feature `testing`): a hand-driven cluster, the deterministic
//!   simulator and the linearizability checker.
#![deny(missing_docs)]

pub mod message;
pub mod protocol;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod types;

pub use message::{Message, MessageBody};
pub use protocol::{Config, Engine, Ready};
pub use types::{ClientRequestId, Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, Role, SnapshotMeta, Term};
