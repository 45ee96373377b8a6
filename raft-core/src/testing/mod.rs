//! Test support (the `testing` feature): a hand-driven cluster of engines,
//! the linearizability checker and the deterministic simulator.

pub mod client;
pub mod cluster;
pub mod linearizability;
pub mod map_state_machine;
pub mod messages;
pub mod sim;
pub mod storage_suite;
