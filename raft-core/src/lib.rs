//! The Raft consensus protocol.
//!
//! - [`protocol`]: the engine, a deterministic state machine with no I/O.
//! - [`types`] and [`message`]: the plain data it consumes and produces.
//! - `testing` (feature `testing`): a hand-driven cluster, the deterministic
//!   simulator and the linearizability checker.
//!
//! # Driving the engine
//!
//! A three-node cluster in one thread: messages are handed over directly and
//! storage acknowledges at once. A real caller does the same work with a
//! network, a disk and a state machine (the runtime does it with tokio).
//!
//! ```
//! use bytes::Bytes;
//! use raft_core::protocol::{Config, Engine};
//! use raft_core::types::{Membership, NodeId, Role};
//!
//! let members = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
//! let mut engines: Vec<Engine> = (1..=3)
//!     .map(|id| Engine::bootstrap(Config::new(NodeId(id)), members.clone()).unwrap())
//!     .collect();
//!
//! // Hand every engine's work to whoever must do it, until nothing moves.
//! fn run(engines: &mut [Engine], applied: &mut Vec<Bytes>) {
//!     loop {
//!         let mut messages = Vec::new();
//!         for (position, engine) in engines.iter_mut().enumerate() {
//!             let ready = engine.ready();
//!             messages.extend(ready.messages); // send these now
//!             if let Some(id) = ready.persist_id {
//!                 engine.persisted(id); // ready.entries and ready.hard_state are durable
//!             }
//!             for entry in &ready.committed_entries {
//!                 if let (0, raft_core::EntryPayload::Command { data, .. }) = (position, &entry.payload) {
//!                     applied.push(data.clone()); // apply to the state machine
//!                 }
//!                 engine.applied(entry.index);
//!             }
//!         }
//!         if messages.is_empty() && engines.iter().all(|e| !e.has_ready()) {
//!             return;
//!         }
//!         for message in messages {
//!             let to = message.to.get() as usize - 1;
//!             engines[to].step(message).ok(); // a stale message is simply dropped
//!         }
//!     }
//! }
//!
//! let mut applied = Vec::new();
//! engines[0].campaign_now();
//! run(&mut engines, &mut applied);
//! assert_eq!(engines[0].role(), Role::Leader);
//!
//! engines[0].propose(Bytes::from_static(b"x=1"), None).unwrap();
//! run(&mut engines, &mut applied);
//! assert_eq!(applied, vec![Bytes::from_static(b"x=1")]);
//! ```
#![deny(missing_docs)]

pub mod local;
pub mod memory;
pub mod message;
pub mod protocol;
pub mod runtime;
pub mod state_machine;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
pub mod types;

pub use message::{Message, MessageBody};
pub use protocol::{Config, Engine, Ready};
pub use types::{
    CheckpointOp, ClientRequestId, Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, Role,
    SnapshotMeta, Term,
};
