//! Sample frames for fuzzing: every message kind with pseudo-random fields,
//! and byte-level mutations. Shared (by `#[path]`) by the proptest fuzz
//! tests and the long-running `fuzz_frames` example.

use bytes::Bytes;
use raft_core::message::{
    AppendEntries, AppendEntriesResponse, Heartbeat, HeartbeatResponse, InstallSnapshot,
    InstallSnapshotResponse, Message, MessageBody, ReadIndexRequest, ReadIndexResponse, RequestVote,
    RequestVoteResponse, VoteKind,
};
use raft_core::types::{
    ClientRequestId, Entry, EntryPayload, LogIndex, Membership, NodeId, ReadId, ReadMode, SnapshotMeta, Term,
};
use raft_transport_quic::frame::{encode_hello, encode_messages, Hello, PROTOCOL_VERSION};

/// SplitMix64: deterministic for a seed, cheap.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next() % bound
        }
    }

    /// Mostly small numbers, sometimes huge ones (varint edge cases).
    fn number(&mut self) -> u64 {
        match self.below(4) {
            0 => self.below(4),
            1 => self.below(1 << 14),
            2 => self.next(),
            _ => u64::MAX - self.below(3),
        }
    }

    fn bytes(&mut self, max: u64) -> Bytes {
        let length = self.below(max + 1);
        Bytes::from((0..length).map(|_| self.next() as u8).collect::<Vec<u8>>())
    }
}

fn membership(rng: &mut Rng) -> Membership {
    let set = |rng: &mut Rng| (0..rng.below(4)).map(|_| NodeId(rng.number())).collect();
    Membership { voters: set(rng), outgoing_voters: set(rng), learners: set(rng) }
}

fn entry(rng: &mut Rng) -> Entry {
    let payload = match rng.below(3) {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Command {
            client: (rng.below(2) == 0)
                .then(|| ClientRequestId { client: rng.number(), sequence: rng.number() }),
            data: rng.bytes(64),
        },
        _ => EntryPayload::Membership(membership(rng)),
    };
    Entry { term: Term(rng.number()), index: LogIndex(rng.number()), payload }
}

fn body(rng: &mut Rng) -> MessageBody {
    let vote_kind = if rng.below(2) == 0 { VoteKind::PreVote } else { VoteKind::Vote };
    match rng.below(11) {
        0 => MessageBody::RequestVote(RequestVote {
            kind: vote_kind,
            last_log_index: LogIndex(rng.number()),
            last_log_term: Term(rng.number()),
            leadership_transfer: rng.below(2) == 0,
        }),
        1 => MessageBody::RequestVoteResponse(RequestVoteResponse {
            kind: vote_kind,
            granted: rng.below(2) == 0,
        }),
        2 => MessageBody::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(rng.number()),
            prev_log_term: Term(rng.number()),
            entries: (0..rng.below(4)).map(|_| entry(rng)).collect(),
            leader_commit: LogIndex(rng.number()),
        }),
        3 => MessageBody::AppendEntriesResponse(AppendEntriesResponse {
            success: rng.below(2) == 0,
            index: LogIndex(rng.number()),
            conflict_index: LogIndex(rng.number()),
            conflict_term: (rng.below(2) == 0).then(|| Term(rng.number())),
            last_log_index: LogIndex(rng.number()),
        }),
        4 => MessageBody::Heartbeat(Heartbeat { commit: LogIndex(rng.number()), read_round: rng.number() }),
        5 => MessageBody::HeartbeatResponse(HeartbeatResponse { read_round: rng.number() }),
        6 => MessageBody::InstallSnapshot(InstallSnapshot {
            snapshot: SnapshotMeta {
                last_index: LogIndex(rng.number()),
                last_term: Term(rng.number()),
                membership: membership(rng),
            },
            offset: rng.number(),
            data: rng.bytes(256),
            done: rng.below(2) == 0,
        }),
        7 => MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
            snapshot_index: LogIndex(rng.number()),
            next_offset: rng.number(),
            done: rng.below(2) == 0,
            last_log_index: LogIndex(rng.number()),
        }),
        8 => MessageBody::ReadIndex(ReadIndexRequest {
            id: ReadId(rng.number()),
            mode: if rng.below(2) == 0 { ReadMode::ReadIndex } else { ReadMode::Lease },
        }),
        9 => MessageBody::ReadIndexResponse(ReadIndexResponse {
            id: ReadId(rng.number()),
            index: (rng.below(2) == 0).then(|| LogIndex(rng.number())),
        }),
        _ => MessageBody::TimeoutNow,
    }
}

pub fn message(rng: &mut Rng) -> Message {
    Message {
        from: NodeId(rng.number()),
        to: NodeId(rng.number()),
        term: Term(rng.number()),
        body: body(rng),
    }
}

/// One valid frame: a Hello or a batch of messages.
pub fn valid_frame(rng: &mut Rng) -> Vec<u8> {
    if rng.below(8) == 0 {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: String::from_utf8_lossy(&rng.bytes(20)).into_owned(),
            from: NodeId(rng.number()),
            to: NodeId(rng.number()),
            incarnation: rng.next(),
        };
        return encode_hello(&hello).unwrap_or_default();
    }
    let messages: Vec<Message> = (0..rng.below(6)).map(|_| message(rng)).collect();
    encode_messages(&messages, 1 << 20).unwrap_or_default()
}

/// Applies one to four random byte-level mutations.
pub fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        let position = rng.below(bytes.len() as u64 + 1) as usize;
        match rng.below(6) {
            0 if position < bytes.len() => bytes[position] ^= 1 << rng.below(8),
            1 if position < bytes.len() => bytes[position] = rng.next() as u8,
            2 => bytes.truncate(position),
            3 => bytes.insert(position, rng.next() as u8),
            4 if position < bytes.len() => {
                bytes.remove(position);
            }
            _ => {
                let extra = rng.bytes(16);
                bytes.splice(position..position, extra.iter().copied());
            }
        }
    }
    bytes
}
