//! The messages of the key-value state machine: the commands that travel in
//! log entries, their outcomes, the read-only queries and their answers, and
//! their encoding.
//!
//! Everything is encoded with postcard (compact serde). Decoding refuses
//! trailing bytes, so one byte string has at most one meaning, and never
//! allocates more than the input's length: postcard reads strings and byte
//! strings from the input itself, and serde caps what it reserves for a
//! sequence before its elements have arrived.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use raft_core::types::NodeId;
use serde::de::Deserialize;
use serde::{Deserialize as DeriveDeserialize, Serialize};

/// The longest key, in bytes, that a `Put` may write. Longer keys are
/// answered [`KvOutcome::Rejected`]. The bound exists so that a snapshot
/// reader can refuse an absurd key length before reading it; it is far above
/// anything an HTTP path carries.
pub const MAX_KEY_BYTES: usize = 64 << 10;

/// The largest value, in bytes, that a `Put` may write. Larger values are
/// answered [`KvOutcome::Rejected`]. It matches the engine's default bound on
/// uncommitted bytes (64 MiB): a larger entry could not commit with the
/// default settings anyway, and the snapshot reader needs a bound to refuse
/// a corrupt value length before allocating.
pub const MAX_VALUE_BYTES: usize = 64 << 20;

/// The longest client API URL, in bytes, that `SetNode` may record.
pub const MAX_CLIENT_URL_BYTES: usize = 4 << 10;

/// The most keys one `List` query returns, whatever limit it asks for, so
/// one answer stays bounded.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// The replicated node directory: where each member can be reached.
pub type Directory = BTreeMap<NodeId, NodeAddresses>;

/// Where one node can be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, DeriveDeserialize)]
pub struct NodeAddresses {
    /// The address of the node's peer (Raft) endpoint.
    pub peer: SocketAddr,
    /// The base URL of the node's client API, for example
    /// `https://10.0.0.7:8080`.
    pub client: String,
}

/// A condition a write checks against the key's current version before it
/// applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, DeriveDeserialize)]
pub enum Precondition {
    /// No condition.
    Always,
    /// The key exists and its version is this (HTTP `If-Match`).
    VersionIs(u64),
    /// The key does not exist (HTTP `If-None-Match: *`).
    Absent,
}

/// A command, carried in a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, DeriveDeserialize)]
pub enum KvCommand {
    /// Sets `key` to `value`; its version becomes the entry's index.
    Put {
        /// The key (at most [`MAX_KEY_BYTES`]).
        key: String,
        /// The value (at most [`MAX_VALUE_BYTES`]).
        value: Bytes,
        /// The condition the write checks first.
        precondition: Precondition,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
        /// The condition the delete checks first.
        precondition: Precondition,
    },
    /// Adds or updates a directory entry.
    SetNode {
        /// The node (never [`NodeId::NONE`]).
        id: NodeId,
        /// Where it can be reached.
        addresses: NodeAddresses,
    },
    /// Removes a directory entry (a no-op if there is none).
    RemoveNode {
        /// The node.
        id: NodeId,
    },
}

/// What applying one entry returned to its client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, DeriveDeserialize)]
pub enum KvOutcome {
    /// A `Put` applied; `version` is the entry's index.
    Written {
        /// The key's new version.
        version: u64,
    },
    /// A `Delete` applied. `existed` is false when the key was already
    /// absent, which is still a success.
    Deleted {
        /// Whether the key existed.
        existed: bool,
    },
    /// The precondition did not hold; nothing changed.
    PreconditionFailed {
        /// The key's current version, or `None` if it is absent.
        current: Option<u64>,
    },
    /// The command was not applied and the state is unchanged: its bytes did
    /// not decode, it broke a size bound, or its idempotency sequence is
    /// older than the latest one remembered for its client.
    Rejected {
        /// Why, for the client.
        reason: String,
    },
    /// `SetNode`, `RemoveNode`, blank and membership entries.
    Done,
}

/// What the state machine returns for one entry: the outcome and the log
/// position that produced it. For a deduplicated retry that is the
/// position of the *first* application, so a client that retries gets
/// exactly the answer the first attempt would have had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, DeriveDeserialize)]
pub struct KvResponse {
    /// The index of the entry that produced the outcome.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// The outcome.
    pub outcome: KvOutcome,
}

/// A read-only query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, DeriveDeserialize)]
pub enum KvQuery {
    /// One key's value and version.
    Get {
        /// The key.
        key: String,
    },
    /// Keys starting with `prefix`, in byte order, at most `limit` of them
    /// (and never more than [`MAX_LIST_LIMIT`]).
    List {
        /// The prefix.
        prefix: String,
        /// The most keys wanted.
        limit: usize,
    },
    /// The node directory.
    Directory,
    /// A fingerprint of the whole key space, to compare replicas.
    Digest,
}

/// A value and the version that wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, DeriveDeserialize)]
pub struct Versioned {
    /// The value.
    pub value: Bytes,
    /// The index of the entry that last put the key.
    pub version: u64,
}

/// The answer to a [`KvQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, DeriveDeserialize)]
pub enum KvAnswer {
    /// The answer to `Get`: the value, or `None` if the key is absent.
    Value(Option<Versioned>),
    /// The answer to `List`: keys with their versions, and whether more keys
    /// match after the last one listed.
    Keys {
        /// Keys and versions in byte order.
        keys: Vec<(String, u64)>,
        /// Whether more keys match the prefix.
        more: bool,
    },
    /// The answer to `Directory`.
    Directory(Directory),
    /// The answer to `Digest`. Replicas at the same applied index have the
    /// same digest; see the `kv` module documentation for how `hash` is
    /// computed.
    Digest {
        /// The index of the last applied entry.
        applied_index: u64,
        /// How many keys exist.
        keys: u64,
        /// FNV-1a-64 over every key, version and value in key order.
        hash: u64,
    },
}

/// Why bytes did not decode as a key-value message.
#[derive(Debug, thiserror::Error)]
pub enum KvCodecError {
    /// The bytes are not a valid encoding.
    #[error("{what} does not decode: {source}")]
    Malformed {
        /// The message expected (for example "a command").
        what: &'static str,
        /// The codec's description of the problem.
        source: postcard::Error,
    },
    /// A valid message was followed by more bytes.
    #[error("{what} is followed by {extra_bytes} unexpected bytes")]
    TrailingBytes {
        /// The message expected.
        what: &'static str,
        /// How many bytes followed it.
        extra_bytes: usize,
    },
}

/// Encodes a message. Serializing these types cannot fail: postcard fails
/// only on sequences of unknown length and on custom serializer errors, and
/// none of the types has either, so the `expect` below guards an
/// impossibility and never input from outside.
pub(crate) fn encode_message<T: Serialize>(message: &T) -> Bytes {
    // Sized first, so the buffer is exactly as long as the encoding: a
    // command lives on as a log entry until compaction, and a buffer grown
    // by doubling would carry up to twice its length in spare capacity.
    let length =
        postcard::experimental::serialized_size(message).expect("key-value messages always serialize");
    let encoded = postcard::to_extend(message, Vec::with_capacity(length))
        .expect("key-value messages always serialize");
    Bytes::from(encoded)
}

/// Decodes a message and refuses trailing bytes.
pub(crate) fn decode_message<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<T, KvCodecError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(KvCodecError::TrailingBytes { what, extra_bytes: rest.len() }),
        Err(source) => Err(KvCodecError::Malformed { what, source }),
    }
}

macro_rules! codec {
    ($type:ty, $what:literal) => {
        impl $type {
            /// Encodes the message (postcard).
            pub fn encode(&self) -> Bytes {
                encode_message(self)
            }

            /// Decodes a message written by `encode`; refuses anything else,
            /// including trailing bytes.
            pub fn decode(bytes: &[u8]) -> Result<$type, KvCodecError> {
                decode_message(bytes, $what)
            }
        }
    };
}

codec!(KvCommand, "a key-value command");
codec!(KvOutcome, "a key-value outcome");
codec!(KvResponse, "a key-value response");
codec!(KvQuery, "a key-value query");
codec!(KvAnswer, "a key-value answer");
