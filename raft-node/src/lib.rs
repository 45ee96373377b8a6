//! A replicated, linearizable key-value node.

pub mod api;
pub mod config;
pub mod kv;
pub mod node;
