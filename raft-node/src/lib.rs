//! A replicated, linearizable key-value node.

pub mod api;
pub mod checkpoint_file;
pub mod cli;
pub mod client;
pub mod config;
pub mod fault;
pub mod http;
mod instrument;
pub mod kv;
pub mod node;

/// The examples in the workspace README compile and run as doctests here,
/// the one crate that depends on all the others.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
