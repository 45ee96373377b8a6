//! raft-transport-quic's integration tests, in one binary (each test binary
//! costs link time and disk).

mod cluster;
mod exchange;
mod fuzz;
mod rejection;
mod support;
