//! `/v1/kv`: reads and writes of keys.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use raft_core::protocol::{ProposeError, ReadError};
use raft_core::runtime::{ClientError, ReadConsistency};
use raft_core::types::{ClientRequestId, NodeId};

use super::error::ApiError;
use super::{forward, AppState};
use crate::api::{Consistency, KeyList, KeyVersion, LeaderHint, WriteResult, IDEMPOTENCY_KEY_HEADER};
use crate::kv::{KvAnswer, KvCommand, KvOutcome, KvQuery, KvResponse, Precondition, MAX_LIST_LIMIT};

/// Keys listed when the request names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 1_000;
/// The longest client name of an `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_CLIENT_BYTES: usize = 128;

/// Where a request ends up: done here, or to be sent to the leader.
pub(super) enum Routed<T> {
    /// Done on this node.
    Here(T),
    /// Only the leader can do it: forward (or redirect) there; the error is
    /// what to answer if that is impossible.
    Leader(LeaderHint, ApiError),
}

fn is_leader_only_refusal(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::NotLeader { .. }
            | ClientError::Propose(ProposeError::NotLeader { .. })
            | ClientError::Membership(raft_core::protocol::MembershipError::Propose(
                ProposeError::NotLeader { .. }
            ))
            | ClientError::Transfer(raft_core::protocol::TransferError::NotLeader { .. })
            | ClientError::Read(ReadError::NoLeader)
    )
}

/// Runs `attempt` on this node; when it needs the leader, says where the
/// leader is. During an election it waits for a leader (within the request
/// timeout) instead of failing at once.
pub(super) async fn on_leader<T, F, Fut>(state: &AppState, attempt: F) -> Result<Routed<T>, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + state.config.request_timeout;
    // A bounded number of rounds: each waits for a leader to be known.
    for _ in 0..4 {
        let error = match attempt().await {
            Ok(value) => return Ok(Routed::Here(value)),
            Err(error) if is_leader_only_refusal(&error) => error,
            Err(error) => return Err(state.client_error(error)),
        };
        let me = NodeId(state.config.id);
        let known = error.leader_hint().or_else(|| {
            let leader = state.raft.status().borrow().leader;
            (leader != NodeId::NONE).then_some(leader)
        });
        match known {
            Some(leader) if leader != me => {
                let hint = state.leader_hint(leader.get());
                return Ok(Routed::Leader(hint.clone(), state.client_error(error).with_leader(Some(hint))));
            }
            _ => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero()
                    || state.wait_for_leader(remaining.min(Duration::from_secs(3))).await.is_none()
                {
                    return Err(state.client_error(error));
                }
                // Let the status settle on the new leader before retrying.
                tokio::task::yield_now().await;
            }
        }
    }
    Err(ApiError::unavailable("no_leader", "leadership kept moving; retry"))
}

/// The parts of a request needed to forward it; extracted from any
/// request (without its body, which handlers read with their own limit).
pub(super) struct Original {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Original {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Original {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            body: Bytes::new(),
        })
    }
}

impl Original {
    pub(super) async fn send_to(
        self,
        state: &AppState,
        leader: LeaderHint,
        error: ApiError,
    ) -> Result<Response, ApiError> {
        forward::to_leader(state, &leader, self.method, &self.uri, &self.headers, self.body, error).await
    }
}

/// Checks a key from the path: present, not too long, no control characters.
pub(super) fn checked_key(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|rejection| {
        ApiError::bad_request("bad_key", format!("the key is not valid percent-encoded UTF-8: {rejection}"))
    })?;
    if key.is_empty() {
        return Err(ApiError::bad_request("bad_key", "the key is empty"));
    }
    if key.len() > state.config.max_key_bytes {
        return Err(ApiError::too_large(
            "key_too_large",
            format!("the key is {} bytes; the limit is {} bytes", key.len(), state.config.max_key_bytes),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::bad_request("bad_key", "the key contains control characters"));
    }
    Ok(key)
}

/// Reads a body of at most `limit` bytes.
pub(super) async fn read_body(body: Body, limit: usize, what: &str) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let error = error.into_inner();
        if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ApiError::too_large("value_too_large", format!("the {what} exceeds the limit of {limit} bytes"))
        } else {
            ApiError::bad_request("bad_body", format!("reading the {what} failed: {error}"))
        }
    })
}

fn header_text<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value.to_str().map(|text| Some(text.trim())).map_err(|_| {
            ApiError::bad_request("bad_header", format!("the {name} header is not visible ASCII"))
        }),
    }
}

/// `If-Match: "<version>"` or `If-None-Match: *`.
fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let if_match = header_text(headers, &header::IF_MATCH)?;
    let if_none_match = header_text(headers, &header::IF_NONE_MATCH)?;
    match (if_match, if_none_match) {
        (Some(_), Some(_)) => {
            Err(ApiError::bad_request("bad_precondition", "If-Match and If-None-Match exclude each other"))
        }
        (Some(tag), None) => {
            let version = tag.trim_start_matches("W/").trim_matches('"');
            version.parse::<u64>().map(Precondition::VersionIs).map_err(|_| {
                ApiError::bad_request(
                    "bad_precondition",
                    format!("If-Match must be a version in quotes, like \"42\"; got {tag:?}"),
                )
            })
        }
        (None, Some("*")) => Ok(Precondition::Absent),
        (None, Some(other)) => Err(ApiError::bad_request(
            "bad_precondition",
            format!("only If-None-Match: * (create if absent) is supported; got {other:?}"),
        )),
        (None, None) => Ok(Precondition::Always),
    }
}

/// `Idempotency-Key: <client>/<sequence>` as a request id. The client name
/// is hashed to the 64-bit id the log carries (FNV-1a: stable across
/// versions and machines, which a replicated table needs).
fn idempotency(headers: &HeaderMap) -> Result<Option<ClientRequestId>, ApiError> {
    let name = header::HeaderName::from_static(IDEMPOTENCY_KEY_HEADER);
    let Some(text) = header_text(headers, &name)? else { return Ok(None) };
    let bad = || {
        ApiError::bad_request(
            "bad_idempotency_key",
            format!(
                "Idempotency-Key must be <client>/<sequence> with a client name of 1 to \
                 {MAX_IDEMPOTENCY_CLIENT_BYTES} bytes and a sequence number from 1; got {text:?}"
            ),
        )
    };
    let (client, sequence) = text.rsplit_once('/').ok_or_else(bad)?;
    if client.is_empty() || client.len() > MAX_IDEMPOTENCY_CLIENT_BYTES {
        return Err(bad());
    }
    let sequence = sequence.parse::<u64>().ok().filter(|s| *s > 0).ok_or_else(bad)?;
    Ok(Some(ClientRequestId { client: client_hash(client), sequence }))
}

/// FNV-1a, 64 bits.
pub(crate) fn client_hash(client: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    client.bytes().fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header")
}

/// The read consistency named by `?consistency=`.
pub(super) fn consistency(
    query: &BTreeMap<String, String>,
    default: ReadConsistency,
) -> Result<ReadConsistency, ApiError> {
    let Some(name) = query.get("consistency") else { return Ok(default) };
    Consistency::from_name(name).map(ReadConsistency::from).ok_or_else(|| {
        ApiError::bad_request(
            "bad_consistency",
            format!("consistency must be linearizable, lease or stale; got {name:?}"),
        )
    })
}

pub(super) fn query_map(
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<BTreeMap<String, String>, ApiError> {
    query.map(|Query(map)| map).map_err(|rejection| {
        ApiError::bad_request("bad_query", format!("the query string is malformed: {rejection}"))
    })
}

/// Runs a query with the given consistency, forwarding to the leader when
/// only the leader can serve it.
pub(super) async fn read_query(
    state: &AppState,
    query: KvQuery,
    consistency: ReadConsistency,
    original: Original,
) -> Result<Result<KvAnswer, Response>, ApiError> {
    let encoded = query.encode();
    state.metrics.record_read(consistency);
    let started = Instant::now();
    let routed = on_leader(state, || state.raft.read(encoded.clone(), consistency)).await?;
    match routed {
        Routed::Here(bytes) => {
            if consistency != ReadConsistency::Stale {
                state.metrics.observe_read_index(started.elapsed());
            }
            KvAnswer::decode(&bytes).map(Ok).map_err(|error| {
                ApiError::internal(format!("the state machine's answer is malformed: {error}"))
            })
        }
        Routed::Leader(leader, error) => Ok(Err(original.send_to(state, leader, error).await?)),
    }
}

/// `GET /v1/kv/{key}?consistency=…`
pub async fn get(
    State(state): State<AppState>,
    original: Original,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = checked_key(&state, path)?;
    let consistency = consistency(&query_map(query)?, ReadConsistency::Linearizable)?;
    let answer = match read_query(&state, KvQuery::Get { key: key.clone() }, consistency, original).await? {
        Ok(answer) => answer,
        Err(forwarded) => return Ok(forwarded),
    };
    match answer {
        KvAnswer::Value(Some(versioned)) => Ok((
            StatusCode::OK,
            [
                (header::ETAG, etag(versioned.version)),
                (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            ],
            versioned.value,
        )
            .into_response()),
        KvAnswer::Value(None) => {
            Err(ApiError::not_found("key_not_found", format!("key {key:?} does not exist")))
        }
        other => Err(ApiError::internal(format!("unexpected answer to a get: {other:?}"))),
    }
}

/// `GET /v1/kv?prefix=P&limit=N&consistency=…`
pub async fn list(
    State(state): State<AppState>,
    original: Original,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query_map(query)?;
    let consistency = consistency(&query, ReadConsistency::Linearizable)?;
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    let limit = match query.get("limit") {
        None => DEFAULT_LIST_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=MAX_LIST_LIMIT).contains(&limit) => limit,
            _ => {
                return Err(ApiError::bad_request(
                    "bad_limit",
                    format!("limit must be a number from 1 to {MAX_LIST_LIMIT}; got {text:?}"),
                ))
            }
        },
    };
    let answer = match read_query(&state, KvQuery::List { prefix, limit }, consistency, original).await? {
        Ok(answer) => answer,
        Err(forwarded) => return Ok(forwarded),
    };
    match answer {
        KvAnswer::Keys { keys, more } => Ok(Json(KeyList {
            keys: keys.into_iter().map(|(key, version)| KeyVersion { key, version }).collect(),
            more,
        })
        .into_response()),
        other => Err(ApiError::internal(format!("unexpected answer to a listing: {other:?}"))),
    }
}

/// `PUT /v1/kv/{key}` with the raw value as body.
pub async fn put(
    State(state): State<AppState>,
    original: Original,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let key = checked_key(&state, path)?;
    let value = read_body(body, state.config.max_value_bytes, "value").await?;
    let precondition = precondition(&original.headers)?;
    let client = idempotency(&original.headers)?;
    let command = KvCommand::Put { key: key.clone(), value: value.clone(), precondition };
    let original = Original { body: value, ..original };
    write(&state, &key, command, client, original).await
}

/// `DELETE /v1/kv/{key}`.
pub async fn delete(
    State(state): State<AppState>,
    original: Original,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = checked_key(&state, path)?;
    let precondition = precondition(&original.headers)?;
    let client = idempotency(&original.headers)?;
    let command = KvCommand::Delete { key: key.clone(), precondition };
    write(&state, &key, command, client, original).await
}

async fn write(
    state: &AppState,
    key: &str,
    command: KvCommand,
    client: Option<ClientRequestId>,
    original: Original,
) -> Result<Response, ApiError> {
    let data = command.encode();
    let started = Instant::now();
    let committed = match on_leader(state, || state.raft.propose(data.clone(), client)).await? {
        Routed::Here(committed) => committed,
        Routed::Leader(leader, error) => return original.send_to(state, leader, error).await,
    };
    state.metrics.observe_propose_to_commit(started.elapsed());
    let response = KvResponse::decode(&committed.response)
        .map_err(|error| ApiError::internal(format!("the state machine's answer is malformed: {error}")))?;
    // The position that produced the outcome: for a deduplicated retry,
    // the first attempt's, so the retry gets the first result.
    let result = WriteResult { index: response.index, term: response.term };
    match response.outcome {
        KvOutcome::Written { version } => {
            let mut response = Json(result).into_response();
            response.headers_mut().insert(header::ETAG, etag(version));
            Ok(response)
        }
        KvOutcome::Deleted { .. } => Ok(Json(result).into_response()),
        KvOutcome::PreconditionFailed { current } => {
            let message = match current {
                Some(version) => format!("the precondition failed: key {key:?} is at version {version}"),
                None => format!("the precondition failed: key {key:?} does not exist"),
            };
            let mut response = ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message)
                .into_response();
            if let Some(version) = current {
                response.headers_mut().insert(header::ETAG, etag(version));
            }
            Ok(response)
        }
        KvOutcome::Rejected { reason } => Err(ApiError::new(StatusCode::CONFLICT, "rejected", reason)),
        KvOutcome::Done => {
            Err(ApiError::internal("the state machine answered a key write as an administrative command"))
        }
    }
}
