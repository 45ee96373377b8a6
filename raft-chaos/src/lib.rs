//! Chaos testing of real `raft-node` processes (`cargo xtask chaos`).
//!
//! A run starts a cluster on distinct loopback addresses, drives it with
//! concurrent clients doing reads, writes and compare-and-sets, and injects
//! faults on a seeded schedule: `kill -9` and restart, SIGSTOP/SIGCONT,
//! partitions with nftables, in-process delay and drop in the peer
//! transport, torn write-ahead log tails, membership changes and leader
//! transfers. It then heals everything, waits for the replicas to converge,
//! reads every key, and checks the recorded history: linearizable per key,
//! no acknowledged write lost, every replica identical. The run's
//! directory holds `report.md`, `timeline.svg`, `history.json` (re-checked
//! by `raft-chaos check`) and every node's log.
//!
//! The parts that decide verdicts ([`history`]), plan faults
//! ([`schedule`]) and draw ([`svg`], [`report`]) are pure and tested here;
//! [`run`] drives processes and is exercised by the chaos pass itself.
#![deny(missing_docs)]

pub mod cluster;
pub mod history;
pub mod network;
pub mod report;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod svg;
pub mod workload;
