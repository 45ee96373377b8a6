//! Compact, stable text forms of entries, messages, batches and status for
//! the scenario files. Positions are written `term/index`, as etcd does.

use std::fmt::Write as _;

use raft_core::message::MessageBody;
use raft_core::protocol::{EngineStats, Ready, Status};
use raft_core::types::{CheckpointOp, ReadMode, Role};
use raft_core::{Entry, EntryPayload, Message};

/// Longer AppendEntries batches are abbreviated to their ends.
const MAX_LISTED_ENTRIES: usize = 3;

pub fn entry(e: &Entry) -> String {
    let position = format!("{}/{}", e.term, e.index);
    match &e.payload {
        EntryPayload::Blank => format!("{position} Blank"),
        EntryPayload::Command { client, data } => {
            let mut s = format!("{position} Command {:?}", String::from_utf8_lossy(data));
            if let Some(c) = client {
                let _ = write!(s, " client={}:{}", c.client, c.sequence);
            }
            s
        }
        EntryPayload::Membership(m) => format!("{position} Membership {m}"),
        EntryPayload::Checkpoint(op) => {
            let kind = match op {
                CheckpointOp::Create { .. } => "create",
                CheckpointOp::Rollback { .. } => "rollback",
                CheckpointOp::Delete { .. } => "delete",
                _ => "?",
            };
            format!("{position} Checkpoint {kind} {:?}", op.name())
        }
        other => format!("{position} {other:?}"),
    }
}

fn entry_list(entries: &[Entry]) -> String {
    if entries.len() <= MAX_LISTED_ENTRIES {
        let listed: Vec<String> = entries.iter().map(entry).collect();
        return format!("[{}]", listed.join(", "));
    }
    format!(
        "[{}, ... {}] ({} entries)",
        entry(&entries[0]),
        entry(&entries[entries.len() - 1]),
        entries.len()
    )
}

pub fn read_mode(mode: ReadMode) -> &'static str {
    match mode {
        ReadMode::ReadIndex => "read-index",
        ReadMode::Lease => "lease",
    }
}

pub fn message(m: &Message) -> String {
    let mut s = format!("{}->{} {} term={}", m.from, m.to, m.kind(), m.term);
    match &m.body {
        MessageBody::RequestVote(r) => {
            let _ = write!(s, " last={}/{}", r.last_log_term, r.last_log_index);
            if r.leadership_transfer {
                s.push_str(" transfer");
            }
        }
        MessageBody::RequestVoteResponse(r) => {
            s.push_str(if r.granted { " granted" } else { " rejected" });
        }
        MessageBody::AppendEntries(a) => {
            let _ = write!(s, " prev={}/{}", a.prev_log_term, a.prev_log_index);
            if !a.entries.is_empty() {
                let _ = write!(s, " entries={}", entry_list(&a.entries));
            }
            let _ = write!(s, " commit={}", a.leader_commit);
        }
        MessageBody::AppendEntriesResponse(r) => {
            if r.success {
                let _ = write!(s, " ok index={}", r.index);
            } else {
                let term = r.conflict_term.map_or("none".to_string(), |t| t.to_string());
                let _ = write!(
                    s,
                    " rejected index={} conflict=(term={term} index={})",
                    r.index, r.conflict_index
                );
            }
            let _ = write!(s, " last={}", r.last_log_index);
        }
        MessageBody::Heartbeat(h) => {
            let _ = write!(s, " commit={} round={}", h.commit, h.read_round);
        }
        MessageBody::HeartbeatResponse(h) => {
            let _ = write!(s, " round={}", h.read_round);
        }
        MessageBody::InstallSnapshot(c) => {
            let _ = write!(
                s,
                " snapshot={}/{} offset={} len={}",
                c.snapshot.last_term,
                c.snapshot.last_index,
                c.offset,
                c.data.len()
            );
            if c.done {
                let _ = write!(s, " done {}", c.snapshot.membership);
            }
        }
        MessageBody::InstallSnapshotResponse(r) => {
            let _ = write!(s, " snapshot={} next-offset={}", r.snapshot_index, r.next_offset);
            if r.done {
                let _ = write!(s, " done last={}", r.last_log_index);
            }
        }
        MessageBody::ReadIndex(r) => {
            let _ = write!(s, " id={} mode={}", r.id, read_mode(r.mode));
        }
        MessageBody::ReadIndexResponse(r) => match r.index {
            Some(index) => {
                let _ = write!(s, " id={} index={index}", r.id);
            }
            None => {
                let _ = write!(s, " id={} failed", r.id);
            }
        },
        MessageBody::TimeoutNow => {}
        other => {
            let _ = write!(s, " {other:?}");
        }
    }
    s
}

/// The name of an error's variant followed by its message, e.g.
/// `NotLeader: not the leader (leader: 1)`.
pub fn error<E: std::fmt::Debug + std::fmt::Display>(e: &E) -> String {
    let debug = format!("{e:?}");
    let name: String = debug.chars().take_while(char::is_ascii_alphanumeric).collect();
    format!("{name}: {e}")
}

/// A batch of work, one part per line, in the order the caller handles it.
/// `write` names the write: `None` for a batch with nothing to persist.
/// `fate` annotates a message that will not be delivered.
pub fn ready(out: &mut String, r: &Ready, write: &str, fate: impl Fn(&Message) -> Option<&'static str>) {
    let _ = writeln!(out, "  Ready{write}:");
    if let Some(soft) = &r.soft_state {
        let leader = if soft.leader.0 == 0 { "none".to_string() } else { soft.leader.to_string() };
        let _ = writeln!(out, "  SoftState {} term={} leader={leader}", soft.role, soft.term);
    }
    for chunk in &r.snapshot_chunks {
        let _ = writeln!(
            out,
            "  SnapshotChunk snapshot={}/{} offset={} len={}{}",
            chunk.snapshot.last_term,
            chunk.snapshot.last_index,
            chunk.offset,
            chunk.data.len(),
            if chunk.done { " done" } else { "" }
        );
    }
    if let Some(meta) = &r.install_snapshot {
        let _ = writeln!(out, "  InstallSnapshot {}/{} {}", meta.last_term, meta.last_index, meta.membership);
    }
    if let Some(h) = &r.hard_state {
        let _ = writeln!(out, "  HardState term={} vote={} commit={}", h.term, h.vote, h.commit);
    }
    section(out, "Entries", r.entries.iter().map(entry));
    section(out, "CommittedEntries", r.committed_entries.iter().map(entry));
    section(
        out,
        "Messages",
        r.messages.iter().map(|m| match fate(m) {
            Some(why) => format!("{} [dropped: {why}]", message(m)),
            None => message(m),
        }),
    );
    section(out, "Reads", r.reads.iter().map(|read| format!("id={} index={}", read.id, read.index)));
    section(out, "FailedReads", r.failed_reads.iter().map(|f| format!("id={} {}", f.id, error(&f.error))));
    section(
        out,
        "SnapshotReads",
        r.snapshot_reads.iter().map(|s| {
            format!(
                "to={} snapshot={}/{} offset={} max={}",
                s.to, s.snapshot.last_term, s.snapshot.last_index, s.offset, s.max_bytes
            )
        }),
    );
    if let Some(index) = r.compact_to {
        let _ = writeln!(out, "  CompactTo {index}");
    }
}

fn section(out: &mut String, title: &str, lines: impl Iterator<Item = String>) {
    let mut lines = lines.peekable();
    if lines.peek().is_none() {
        return;
    }
    let _ = writeln!(out, "  {title}:");
    for line in lines {
        let _ = writeln!(out, "  {line}");
    }
}

pub fn status(out: &mut String, s: &Status) {
    let leader = if s.leader.0 == 0 { "none".to_string() } else { s.leader.to_string() };
    let _ = writeln!(out, "{} {} term={} vote={} leader={leader}", s.id, s.role, s.term, s.vote);
    let _ = writeln!(
        out,
        "log: first={} last={}/{} persisted={} commit={} applied={} snapshot={}",
        s.first_index,
        s.last_term,
        s.last_index,
        s.persisted_index,
        s.commit_index,
        s.applied_index,
        s.snapshot_index
    );
    let _ = writeln!(out, "membership: {} (index {})", s.membership, s.membership_index);
    if s.role == Role::Leader {
        for p in &s.peers {
            let _ = writeln!(
                out,
                "  {}: {} match={} next={} {}{}{}",
                p.id,
                if p.voter { "voter" } else { "learner" },
                p.match_index,
                p.next_index,
                p.state,
                if p.inflight_messages > 0 {
                    format!(" inflight={}", p.inflight_messages)
                } else {
                    String::new()
                },
                if p.recent_active { " active" } else { "" },
            );
        }
        if let Some(target) = s.transfer_target {
            let _ = writeln!(out, "transfer to {target} in progress");
        }
    }
}

/// The non-zero counters, one per line.
pub fn stats(s: &EngineStats) -> String {
    let fields = [
        ("dropped_stale_term", s.dropped_stale_term),
        ("dropped_unknown_peer", s.dropped_unknown_peer),
        ("dropped_wrong_destination", s.dropped_wrong_destination),
        ("dropped_irrelevant", s.dropped_irrelevant),
        ("protocol_violations", s.protocol_violations),
        ("votes_ignored_in_lease", s.votes_ignored_in_lease),
        ("elections_started", s.elections_started),
        ("pre_votes_started", s.pre_votes_started),
        ("leadership_won", s.leadership_won),
        ("proposals_refused", s.proposals_refused),
        ("snapshot_chunks_sent", s.snapshot_chunks_sent),
        ("snapshot_rewinds", s.snapshot_rewinds),
        ("snapshots_installed", s.snapshots_installed),
    ];
    let mut out = String::new();
    for (name, value) in fields {
        if value > 0 {
            let _ = writeln!(out, "{name}={value}");
        }
    }
    if out.is_empty() {
        out.push_str("all counters zero\n");
    }
    out
}
