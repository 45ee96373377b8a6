//! The Raft consensus protocol.
//!
//! - [`protocol`]: the engine, a deterministic state machine with no I/O.
//! - [`types`] and [`message`]: the plain data it consumes and produces.
#![deny(missing_docs)]

pub mod message;
pub mod protocol;
pub mod types;

pub use message::{Message, MessageBody};
pub use protocol::{Config, Engine, Ready};
pub use types::{ClientRequestId, Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, Role, SnapshotMeta, Term};
