//! The wire format: length-prefixed, typed frames with postcard bodies.
//!
//! ```text
//! frame  = header body
//! header = body_length: u32 big-endian | kind: u8          (5 bytes)
//! body   = body_length bytes
//!
//! kind 0x01 Hello     body = postcard(Hello); the first field, the protocol
//!                     version, is decoded on its own first so that a peer
//!                     speaking another version is told so, whatever the rest
//! kind 0x02 Messages  body = postcard(Vec<Message>): a varint count, then
//!                     each message (a batch written in one go)
//! ```
//!
//! The length is checked against the reader's limit before anything is
//! allocated, and every decoding failure is a typed [`FrameError`]: input
//! from the network never panics this module. The message encoding belongs
//! here and nowhere else (raft-core's types are codec-free).

use raft_core::message::Message;
use raft_core::types::NodeId;
use serde::{Deserialize, Serialize};

/// The protocol version this release speaks, carried in every [`Hello`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes in a frame header: the body length (u32, big-endian) and the kind.
pub const HEADER_BYTES: usize = 5;

/// The largest Hello body accepted. A Hello is tiny; a larger one is an
/// attack or a bug, so it is refused before allocating.
pub const MAX_HELLO_BYTES: u32 = 1024;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// The first frame on a connection, in each direction.
    Hello,
    /// A batch of Raft messages.
    Messages,
}

impl FrameKind {
    /// The kind's byte on the wire.
    pub const fn byte(self) -> u8 {
        match self {
            FrameKind::Hello => 0x01,
            FrameKind::Messages => 0x02,
        }
    }

    /// The kind for a byte, if it names one.
    pub const fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            0x01 => Some(FrameKind::Hello),
            0x02 => Some(FrameKind::Messages),
            _ => None,
        }
    }
}

/// The first frame each side sends on a connection: who it is, whom it
/// meant to reach, and in which cluster and protocol version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version. Must stay the first field.
    pub protocol_version: u16,
    /// The cluster the sender belongs to.
    pub cluster_id: String,
    /// The sender's node id; its certificate must name it.
    pub from: NodeId,
    /// The node the sender meant to reach.
    pub to: NodeId,
    /// A random number the sender picked when it started: a different value
    /// on a new connection means the peer restarted, so its older
    /// connection is dead whatever the tie-break says.
    pub incarnation: u64,
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// A [`Hello`].
    Hello(Hello),
    /// A batch of messages.
    Messages(Vec<Message>),
}

impl Frame {
    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Messages(_) => FrameKind::Messages,
        }
    }
}

/// Why bytes from the network were not a valid frame. Each one closes the
/// connection that carried it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header announced a body larger than the reader accepts.
    #[error("frame of {length_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The announced body length.
        length_bytes: u32,
        /// The reader's limit.
        limit_bytes: u32,
    },
    /// The kind byte names no known frame.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The input ended inside a frame.
    #[error("frame truncated: {needed_bytes} more bytes expected")]
    Truncated {
        /// How many more bytes the frame needed.
        needed_bytes: usize,
    },
    /// The body did not decode (postcard's reason, or trailing bytes).
    #[error("malformed {kind:?} frame: {reason}")]
    Malformed {
        /// The frame's kind.
        kind: FrameKind,
        /// What was wrong.
        reason: String,
    },
    /// A Hello from a protocol version this release does not speak.
    #[error("unsupported protocol version {found} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The peer's version.
        found: u16,
    },
}

/// The header of one frame, validated against a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The body's length in bytes.
    pub body_bytes: u32,
    /// The frame's kind.
    pub kind: FrameKind,
}

impl FrameHeader {
    /// Parses a header, refusing a length above `limit_bytes` (the check
    /// that keeps a hostile length from allocating) and unknown kinds.
    pub fn parse(header: [u8; HEADER_BYTES], limit_bytes: u32) -> Result<FrameHeader, FrameError> {
        let body_bytes = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = FrameKind::from_byte(header[4]).ok_or(FrameError::UnknownKind(header[4]))?;
        let limit_bytes = match kind {
            FrameKind::Hello => limit_bytes.min(MAX_HELLO_BYTES),
            FrameKind::Messages => limit_bytes,
        };
        if body_bytes > limit_bytes {
            return Err(FrameError::TooLarge { length_bytes: body_bytes, limit_bytes });
        }
        Ok(FrameHeader { body_bytes, kind })
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; HEADER_BYTES] {
        let length = self.body_bytes.to_be_bytes();
        [length[0], length[1], length[2], length[3], self.kind.byte()]
    }
}

/// Decodes a frame body of a known kind.
pub fn decode_body(kind: FrameKind, body: &[u8]) -> Result<Frame, FrameError> {
    let malformed = |reason: String| FrameError::Malformed { kind, reason };
    match kind {
        FrameKind::Hello => {
            // The version first, alone: a newer peer may have changed the rest.
            let (found, _) = postcard::take_from_bytes::<u16>(body).map_err(|e| malformed(e.to_string()))?;
            if found != PROTOCOL_VERSION {
                return Err(FrameError::UnsupportedVersion { found });
            }
            let (hello, rest) =
                postcard::take_from_bytes::<Hello>(body).map_err(|e| malformed(e.to_string()))?;
            if !rest.is_empty() {
                return Err(malformed(format!("{} trailing bytes", rest.len())));
            }
            Ok(Frame::Hello(hello))
        }
        FrameKind::Messages => {
            let (messages, rest) =
                postcard::take_from_bytes::<Vec<Message>>(body).map_err(|e| malformed(e.to_string()))?;
            if !rest.is_empty() {
                return Err(malformed(format!("{} trailing bytes", rest.len())));
            }
            Ok(Frame::Messages(messages))
        }
    }
}

/// Decodes one whole frame from the front of `input`; returns it and the
/// bytes after it. The same checks as the stream reader, for tests, the
/// fuzz target and callers holding bytes in memory.
pub fn decode_frame(input: &[u8], limit_bytes: u32) -> Result<(Frame, &[u8]), FrameError> {
    let Some(header) = input.first_chunk::<HEADER_BYTES>() else {
        return Err(FrameError::Truncated { needed_bytes: HEADER_BYTES - input.len() });
    };
    let header = FrameHeader::parse(*header, limit_bytes)?;
    let rest = &input[HEADER_BYTES..];
    let body_bytes = header.body_bytes as usize;
    if rest.len() < body_bytes {
        return Err(FrameError::Truncated { needed_bytes: body_bytes - rest.len() });
    }
    let (body, rest) = rest.split_at(body_bytes);
    Ok((decode_body(header.kind, body)?, rest))
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded body exceeds the frame limit; the message cannot be sent.
    #[error("encoded frame of {length_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The encoded body's length.
        length_bytes: usize,
        /// The limit.
        limit_bytes: u32,
    },
    /// postcard refused the value (it never does for these types).
    #[error("encoding failed: {0}")]
    Postcard(#[from] postcard::Error),
}

/// A postcard output that appends to a `Vec` a slice at a time (postcard's
/// own `Extend` output copies byte by byte, slow for snapshot chunks).
struct AppendToVec<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendToVec<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the postcard encoding of `value` to `out`.
pub(crate) fn append_postcard<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    postcard::serialize_with_flavor(value, AppendToVec(out))
}

/// Encodes a Hello frame.
pub fn encode_hello(hello: &Hello) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0; HEADER_BYTES];
    append_postcard(hello, &mut out)?;
    finish_frame(out, FrameKind::Hello, MAX_HELLO_BYTES)
}

/// Encodes messages as one Messages frame (tests and tools; the transport's
/// writer batches with [`MessageBatch`]).
pub fn encode_messages(messages: &[Message], limit_bytes: u32) -> Result<Vec<u8>, EncodeError> {
    let mut batch = MessageBatch::new();
    for message in messages {
        batch.push(message)?;
    }
    batch.finish(limit_bytes)
}

/// Writes the header in front of a body that follows `HEADER_BYTES` of room.
fn finish_frame(mut out: Vec<u8>, kind: FrameKind, limit_bytes: u32) -> Result<Vec<u8>, EncodeError> {
    let body_length = out.len() - HEADER_BYTES;
    let body_bytes = u32::try_from(body_length)
        .ok()
        .filter(|length| *length <= limit_bytes)
        .ok_or(EncodeError::TooLarge { length_bytes: body_length, limit_bytes })?;
    out[..HEADER_BYTES].copy_from_slice(&FrameHeader { body_bytes, kind }.to_bytes());
    Ok(out)
}

/// Builds one Messages frame from messages encoded one at a time, so the
/// writer can stop before the frame limit.
#[derive(Debug, Default)]
pub struct MessageBatch {
    /// The encoded messages, back to back.
    encoded: Vec<u8>,
    count: u64,
}

impl MessageBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes and appends a message.
    pub fn push(&mut self, message: &Message) -> Result<(), postcard::Error> {
        append_postcard(message, &mut self.encoded)?;
        self.count += 1;
        Ok(())
    }

    /// Removes the bytes appended after `length` (undoes a push that went
    /// over the limit).
    pub(crate) fn truncate(&mut self, length: usize, count: u64) {
        self.encoded.truncate(length);
        self.count = count;
    }

    /// Bytes and messages encoded so far.
    pub fn len(&self) -> (usize, u64) {
        (self.encoded.len(), self.count)
    }

    /// Whether no message was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The body length the frame will have.
    pub fn body_bytes(&self) -> usize {
        varint_length(self.count) + self.encoded.len()
    }

    /// The whole frame: header, count, messages. Postcard encodes a `Vec`
    /// as exactly this count and the elements, so the reader decodes the
    /// body as `Vec<Message>`.
    pub fn finish(self, limit_bytes: u32) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.body_bytes());
        out.resize(HEADER_BYTES, 0);
        append_postcard(&self.count, &mut out)?;
        out.extend_from_slice(&self.encoded);
        finish_frame(out, FrameKind::Messages, limit_bytes)
    }
}

/// Bytes of postcard's varint encoding of `value`.
fn varint_length(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::message::{Heartbeat, MessageBody};
    use raft_core::types::Term;

    fn heartbeat(round: u64) -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: MessageBody::Heartbeat(Heartbeat { commit: raft_core::LogIndex(7), read_round: round }),
        }
    }

    #[test]
    fn varint_lengths_match_postcard() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(varint_length(value), postcard::to_allocvec(&value).unwrap().len(), "{value}");
        }
    }

    #[test]
    fn messages_round_trip() {
        let messages: Vec<Message> = (0..300).map(heartbeat).collect();
        let frame = encode_messages(&messages, 1 << 20).unwrap();
        let (decoded, rest) = decode_frame(&frame, 1 << 20).unwrap();
        assert!(rest.is_empty());
        assert_eq!(decoded, Frame::Messages(messages));
    }

    #[test]
    fn hello_round_trips_and_other_versions_are_named() {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: "test".into(),
            from: NodeId(1),
            to: NodeId(2),
            incarnation: 99,
        };
        let frame = encode_hello(&hello).unwrap();
        assert_eq!(decode_frame(&frame, 1 << 20).unwrap().0, Frame::Hello(hello.clone()));
        let future = encode_hello(&Hello { protocol_version: 7, ..hello }).unwrap();
        assert_eq!(decode_frame(&future, 1 << 20).unwrap_err(), FrameError::UnsupportedVersion { found: 7 });
    }

    #[test]
    fn bad_headers_are_refused_before_reading_the_body() {
        let huge = FrameHeader { body_bytes: u32::MAX, kind: FrameKind::Messages }.to_bytes();
        assert!(matches!(decode_frame(&huge, 1 << 20), Err(FrameError::TooLarge { .. })));
        let big_hello = FrameHeader { body_bytes: MAX_HELLO_BYTES + 1, kind: FrameKind::Hello }.to_bytes();
        assert!(matches!(decode_frame(&big_hello, 1 << 20), Err(FrameError::TooLarge { .. })));
        assert_eq!(decode_frame(&[0, 0, 0, 1, 0x7f, 0], 1 << 20).unwrap_err(), FrameError::UnknownKind(0x7f));
        assert_eq!(decode_frame(&[0, 0], 1 << 20).unwrap_err(), FrameError::Truncated { needed_bytes: 3 });
    }

    #[test]
    fn trailing_and_truncated_bodies_are_malformed() {
        let mut frame = encode_messages(&[heartbeat(1)], 1 << 20).unwrap();
        let length = frame.len();
        assert!(matches!(decode_frame(&frame[..length - 1], 1 << 20), Err(FrameError::Truncated { .. })));
        frame.push(0);
        let body_bytes = (length - HEADER_BYTES + 1) as u32;
        frame[..4].copy_from_slice(&body_bytes.to_be_bytes());
        assert!(matches!(decode_frame(&frame, 1 << 20), Err(FrameError::Malformed { .. })));
    }
}
