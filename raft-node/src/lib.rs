//! A replicated, linearizable key-value node.

pub mod api;
pub mod kv;
