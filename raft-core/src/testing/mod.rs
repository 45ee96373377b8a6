//! Test support (the `testing` feature): a hand-driven cluster of engines,
//! the linearizability checker and the deterministic simulator.

pub mod cluster;
pub mod storage_suite;
