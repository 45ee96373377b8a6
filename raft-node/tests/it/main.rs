//! raft-node's integration tests: nodes started in this process through
//! the library, and real `raft-node` processes on loopback.

mod in_process;
mod in_process_checkpoints;
mod process;
mod process_checkpoints;
mod process_faults;
mod process_membership;
mod process_prometheus;
mod process_serving;
mod support;
