//! raft-core's integration tests, in one binary (each test binary costs
//! link time and disk): scenario files, paper tests and the simulator.

mod interaction;
mod paper;
mod runtime;
mod simulation;
mod tidy;
