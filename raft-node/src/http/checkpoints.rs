//! `/v1/checkpoints`: named checkpoints of the whole cluster (DESIGN.md §9).
//!
//! Creating, rolling back and deleting are committed entries: they go to
//! the leader like writes (forwarded, or `307` with forwarding off) and
//! need the admin token when one is set, like membership changes. Listing
//! and exporting answer from the node asked, from the checkpoints durable
//! on it: a checkpoint the leader just created appears on a follower once
//! the follower applied its entry and wrote its copy.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use raft_core::storage::{CheckpointInfo, SnapshotReader};
use tokio::sync::mpsc;

use super::cluster::{authorize, parse_json, MAX_ADMIN_BODY_BYTES};
use super::error::ApiError;
use super::kv::{on_leader, read_body, Original, Routed};
use super::AppState;
use crate::api::{
    CheckpointList, CheckpointOpResult, CheckpointSummary, CreateCheckpointRequest,
    CHECKPOINT_CHECKSUM_HEADER, CHECKPOINT_INDEX_HEADER, CHECKPOINT_TERM_HEADER,
};
use crate::checkpoint_file::FileHeader;

/// The most bytes an export reads from the checkpoint store at once.
const EXPORT_CHUNK_BYTES: u64 = 1 << 20;
/// Chunks read ahead of the client during an export: the export holds at
/// most this many chunks in memory, whatever the checkpoint's size.
const EXPORT_CHUNKS_AHEAD: usize = 4;

/// A checkpoint as the API shows it.
pub fn summary(info: &CheckpointInfo) -> CheckpointSummary {
    CheckpointSummary {
        name: info.meta.name.clone(),
        index: info.meta.snapshot.last_index.get(),
        term: info.meta.snapshot.last_term.get(),
        created_unix_ms: info.meta.created_unix_ms,
        size_bytes: info.size_bytes,
        checksum: format!("{:08x}", info.checksum),
    }
}

fn checkpoint_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::bad_request("bad_checkpoint_name", e.to_string()))?;
    raft_core::runtime::checkpoints::validate_name(&name)
        .map_err(|e| ApiError::bad_request("bad_checkpoint_name", e.to_string()))?;
    Ok(name)
}

/// `POST /v1/checkpoints` with `{"name": ...}`: commits a checkpoint entry;
/// answers `201` once the checkpoint is durable on the leader.
pub async fn create(
    State(state): State<AppState>,
    original: Original,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &original.headers)?;
    let body = read_body(body, MAX_ADMIN_BODY_BYTES, "request body").await?;
    let request: CreateCheckpointRequest = parse_json(&body)?;
    raft_core::runtime::checkpoints::validate_name(&request.name)
        .map_err(|e| ApiError::bad_request("bad_checkpoint_name", e.to_string()))?;
    let original = Original { body, ..original };
    match on_leader(&state, || state.raft.checkpoint(&request.name)).await? {
        Routed::Here(info) => Ok((StatusCode::CREATED, Json(summary(&info))).into_response()),
        Routed::Leader(leader, error) => original.send_to(&state, leader, error).await,
    }
}

/// `GET /v1/checkpoints`: the checkpoints durable on this node.
pub async fn list(State(state): State<AppState>) -> Json<CheckpointList> {
    let status = state.status();
    Json(CheckpointList {
        node_id: state.config.id,
        applied_index: status.applied_index.get(),
        last_rollback_index: state.raft.last_rollback_index().map(|index| index.get()),
        checkpoints: state.raft.list_checkpoints().iter().map(summary).collect(),
    })
}

/// `POST /v1/checkpoints/{name}/rollback`: commits a rollback entry;
/// answers once it is applied on the leader.
pub async fn rollback(
    State(state): State<AppState>,
    original: Original,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    commit_entry(state, original, path, EntryKind::Rollback).await
}

/// `DELETE /v1/checkpoints/{name}`: commits a delete entry.
pub async fn delete(
    State(state): State<AppState>,
    original: Original,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    commit_entry(state, original, path, EntryKind::Delete).await
}

/// The checkpoint operations answered with the entry that carried them.
#[derive(Clone, Copy)]
enum EntryKind {
    Rollback,
    Delete,
}

/// Commits a rollback or delete entry on the leader (from a follower:
/// forwarded, or 307) and answers with its index and term.
async fn commit_entry(
    state: AppState,
    original: Original,
    path: Result<Path<String>, PathRejection>,
    kind: EntryKind,
) -> Result<Response, ApiError> {
    authorize(&state, &original.headers)?;
    let name = checkpoint_name(path)?;
    let attempt = || async {
        match kind {
            EntryKind::Rollback => state.raft.rollback(&name).await,
            EntryKind::Delete => state.raft.delete_checkpoint(&name).await,
        }
    };
    match on_leader(&state, attempt).await? {
        Routed::Here(committed) => {
            Ok(Json(CheckpointOpResult { name, index: committed.index.get(), term: committed.term.get() })
                .into_response())
        }
        Routed::Leader(leader, error) => original.send_to(&state, leader, error).await,
    }
}

/// `GET /v1/checkpoints/{name}/export`: streams this node's copy of the
/// checkpoint as a self-describing file (see [`crate::checkpoint_file`]),
/// a bounded number of chunks ahead of the client.
pub async fn export(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = checkpoint_name(path)?;
    let info =
        state.raft.list_checkpoints().into_iter().find(|info| info.meta.name == name).ok_or_else(|| {
            ApiError::not_found(
                "checkpoint_not_found",
                format!("no checkpoint named {name:?} is durable on node {}", state.config.id),
            )
        })?;
    let reader = state.raft.open_checkpoint(&name).await.map_err(|error| state.client_error(error))?;
    let header = FileHeader::of(&info).encode();
    let content_length = header.len() as u64 + info.size_bytes;
    let (sender, receiver) = mpsc::channel(EXPORT_CHUNKS_AHEAD);
    tokio::spawn(stream_checkpoint(header, reader, info.size_bytes, sender));

    let mut response = Response::new(Body::new(ChunkBody { receiver }));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(content_length));
    // Names are restricted to `A-Z a-z 0-9 . _ -`, so they fit a header as is.
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.checkpoint\"")) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    headers.insert(CHECKPOINT_INDEX_HEADER, HeaderValue::from(info.meta.snapshot.last_index.get()));
    headers.insert(CHECKPOINT_TERM_HEADER, HeaderValue::from(info.meta.snapshot.last_term.get()));
    if let Ok(checksum) = HeaderValue::from_str(&format!("{:08x}", info.checksum)) {
        headers.insert(CHECKPOINT_CHECKSUM_HEADER, checksum);
    }
    Ok(response)
}

/// Sends the file header, then the checkpoint's bytes chunk by chunk; stops
/// when the client went away. A read error ends the body with an error, so
/// the client sees a cut-short download rather than a complete-looking one.
async fn stream_checkpoint(
    header: Bytes,
    mut reader: Box<dyn SnapshotReader>,
    size_bytes: u64,
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    if sender.send(Ok(header)).await.is_err() {
        return;
    }
    let mut offset = 0u64;
    while offset < size_bytes {
        let chunk = match reader.read_at(offset, EXPORT_CHUNK_BYTES).await {
            Ok((chunk, _)) if chunk.is_empty() => {
                Err(std::io::Error::other(format!("the checkpoint ended at {offset} of {size_bytes} bytes")))
            }
            Ok((chunk, _)) => Ok(chunk),
            Err(error) => Err(std::io::Error::other(error.to_string())),
        };
        let failed = chunk.is_err();
        if let Ok(chunk) = &chunk {
            offset += chunk.len() as u64;
        }
        if sender.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// A response body fed by a bounded channel of chunks.
struct ChunkBody {
    receiver: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.receiver.poll_recv(context).map(|chunk| chunk.map(|chunk| chunk.map(hyper::body::Frame::data)))
    }
}
