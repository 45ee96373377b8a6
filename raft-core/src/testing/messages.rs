//! Message builders for transport tests and benchmarks in every crate,
//! where only a message's shape and size matter.

use bytes::Bytes;

use crate::message::{AppendEntries, Message, MessageBody};
use crate::types::{Entry, EntryPayload, LogIndex, NodeId, Term};

/// Leader `from`'s AppendEntries to `to` in term 1: one command of
/// `payload_bytes` bytes at index `index + 1`, after entry `index` of term
/// 1, with the leader's commit at `index`.
pub fn one_entry_append(from: u64, to: u64, index: u64, payload_bytes: usize) -> Message {
    let entry = Entry {
        term: Term(1),
        index: LogIndex(index + 1),
        payload: EntryPayload::Command { client: None, data: Bytes::from(vec![1u8; payload_bytes]) },
    };
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(index),
            prev_log_term: Term(1),
            entries: vec![entry],
            leader_commit: LogIndex(index),
        }),
    }
}
