//! A replicated, linearizable key-value node.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod http;
mod instrument;
pub mod kv;
pub mod node;
