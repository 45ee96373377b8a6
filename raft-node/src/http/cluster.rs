//! `/v1/cluster`: status, membership, leadership transfer, snapshots.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use raft_core::protocol::MembershipChange;
use raft_core::runtime::{NodeStatus, ReadConsistency};
use raft_core::types::{Membership, NodeId, Role};

use super::error::ApiError;
use super::kv::{on_leader, read_body, Original, Routed};
use super::AppState;
use crate::api::{
    AddMemberRequest, ClusterStatus, Digest, Members, MembershipResult, NodeInfo, PeerProgress,
    SnapshotResult, TransferRequest, TransferResult,
};
use crate::kv::{KvAnswer, KvCommand, KvQuery, NodeAddresses};

/// The largest JSON body an administrative request may carry.
pub(super) const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;

/// The role's name in the API.
pub fn role_name(role: Option<Role>) -> &'static str {
    match role {
        None => "starting",
        Some(Role::Follower) => "follower",
        Some(Role::PreCandidate) => "pre_candidate",
        Some(Role::Candidate) => "candidate",
        Some(Role::Leader) => "leader",
    }
}

/// A configuration as the API shows it.
pub fn members(membership: &Membership) -> Members {
    Members {
        voters: membership.voters.iter().map(|id| id.get()).collect(),
        outgoing_voters: membership.outgoing_voters.iter().map(|id| id.get()).collect(),
        learners: membership.learners.iter().map(|id| id.get()).collect(),
        joint: !membership.outgoing_voters.is_empty(),
    }
}

/// `GET /v1/cluster`: this node's view.
pub async fn status(State(state): State<AppState>) -> Json<ClusterStatus> {
    let status = state.status();
    Json(cluster_status(&state, &status))
}

fn cluster_status(state: &AppState, status: &NodeStatus) -> ClusterStatus {
    let directory = state.directory.borrow().clone();
    let leader = (status.leader != NodeId::NONE).then(|| state.leader_hint(status.leader.get()));
    ClusterStatus {
        node_id: state.config.id,
        cluster_id: state.config.cluster_id.clone(),
        role: role_name(status.role).to_string(),
        term: status.term.get(),
        leader,
        commit_index: status.commit_index.get(),
        applied_index: status.applied_index.get(),
        last_index: status.last_index.get(),
        snapshot_index: status.snapshot_index.get(),
        members: members(&status.membership),
        nodes: directory
            .into_iter()
            .map(|(id, addresses)| {
                (
                    id.get(),
                    NodeInfo { peer_address: addresses.peer.to_string(), client_address: addresses.client },
                )
            })
            .collect(),
        peers: status
            .peers
            .iter()
            .map(|(id, match_index)| PeerProgress {
                id: id.get(),
                match_index: match_index.get(),
                lag: status.last_index.get().saturating_sub(match_index.get()),
            })
            .collect(),
        stopped: status.stopped.clone(),
    }
}

/// `GET /v1/cluster/digest?consistency=…` (default `stale`: it describes
/// this replica's own state, to compare replicas).
pub async fn digest(
    State(state): State<AppState>,
    original: Original,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let consistency = super::kv::consistency(&super::kv::query_map(query)?, ReadConsistency::Stale)?;
    match super::kv::read_query(&state, KvQuery::Digest, consistency, original).await? {
        Ok(KvAnswer::Digest { applied_index, keys, hash }) => {
            Ok(Json(Digest { applied_index, keys, hash: format!("{hash:016x}") }).into_response())
        }
        Ok(other) => Err(ApiError::internal(format!("unexpected answer to a digest: {other:?}"))),
        Err(forwarded) => Ok(forwarded),
    }
}

/// The body of an administrative request, once its token checks out.
async fn admin_body(state: &AppState, original: &Original, body: Body) -> Result<bytes::Bytes, ApiError> {
    authorize(state, &original.headers)?;
    read_body(body, MAX_ADMIN_BODY_BYTES, "request body").await
}

/// Checks `Authorization: Bearer <token>` when an admin token is set.
pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.config.admin_token.as_deref() else { return Ok(()) };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs the admin token: Authorization: Bearer <token>",
        ));
    };
    let given = value.to_str().unwrap_or("").strip_prefix("Bearer ").unwrap_or("").trim();
    // Compare in constant time so the token cannot be guessed byte by byte.
    let same = given.len() == expected.len()
        && given.bytes().zip(expected.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the admin token is wrong"))
    }
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request("bad_json", format!("the JSON body is invalid: {error}")))
}

fn member_id(path: Result<Path<String>, PathRejection>) -> Result<u64, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::bad_request("bad_node_id", e.to_string()))?;
    match text.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => {
            Err(ApiError::bad_request("bad_node_id", format!("node id {text:?} must be a positive integer")))
        }
    }
}

/// Waits until this node's status satisfies `done`, up to `limit`.
async fn wait_status(state: &AppState, limit: Duration, done: impl Fn(&NodeStatus) -> bool) -> bool {
    let mut status = state.raft.status();
    let reached = tokio::time::timeout(limit, status.wait_for(|s| done(s) || s.stopped.is_some())).await;
    let reached = matches!(reached, Ok(Ok(s)) if done(&s));
    reached
}

/// The configuration entry's position and the configuration in force once
/// it is committed. The status is published on a tick, so it may trail the
/// commit the caller just saw: wait (briefly) until it shows that index.
async fn membership_result(committed: &raft_core::runtime::Committed, state: &AppState) -> MembershipResult {
    let index = committed.index;
    wait_status(state, state.config.request_timeout, |s| s.commit_index >= index).await;
    MembershipResult {
        index: committed.index.get(),
        term: committed.term.get(),
        members: members(&state.status().membership),
    }
}

/// `POST /v1/cluster/members`: registers the node's addresses in the
/// replicated directory, adds it as a learner, and (with `voter: true`)
/// promotes it once it caught up.
pub async fn add_member(
    State(state): State<AppState>,
    original: Original,
    body: Body,
) -> Result<Response, ApiError> {
    let body = admin_body(&state, &original, body).await?;
    let request: AddMemberRequest = parse_json(&body)?;
    if request.id == 0 {
        return Err(ApiError::bad_request("bad_node_id", "node id 0 is reserved"));
    }
    let peer = request.peer_address.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_address",
            format!("peer_address {:?} is not ip:port", request.peer_address),
        )
    })?;
    let client = crate::config::check_url(&request.client_address)
        .map_err(|error| ApiError::bad_request("bad_address", format!("client_address: {error}")))?;
    let id = NodeId(request.id);
    let original = Original { body, ..original };
    if state.status().membership.contains(id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_member",
            format!("node {id} is already a member"),
        ));
    }
    // The directory entry first, so every node can reach (and accepts)
    // the newcomer before it is part of the configuration.
    let register = KvCommand::SetNode { id, addresses: NodeAddresses { peer, client } }.encode();
    match on_leader(&state, || state.raft.propose(register.clone(), None)).await? {
        Routed::Here(_) => {}
        Routed::Leader(leader, error) => return original.send_to(&state, leader, error).await,
    }
    let committed =
        match on_leader(&state, || state.raft.change_membership(MembershipChange::AddLearner(id))).await? {
            Routed::Here(committed) => committed,
            Routed::Leader(leader, error) => {
                return Err(error.with_leader(Some(leader)));
            }
        };
    if !request.voter {
        return Ok(Json(membership_result(&committed, &state).await).into_response());
    }
    promote(&state, id).await.map(|result| Json(result).into_response())
}

/// Promotes learner `id`, retrying while it catches up (within the
/// request timeout).
async fn promote(state: &AppState, id: NodeId) -> Result<MembershipResult, ApiError> {
    let deadline = Instant::now() + state.config.request_timeout;
    loop {
        match state.raft.change_membership(MembershipChange::PromoteLearner(id)).await {
            Ok(committed) => return Ok(membership_result(&committed, state).await),
            Err(raft_core::runtime::ClientError::Membership(
                raft_core::protocol::MembershipError::NotCaughtUp { .. },
            )) if Instant::now() < deadline => {
                // Wait for the learner's progress to move, or a tick.
                let _ =
                    tokio::time::timeout(state.config.tick_interval * 4, state.raft.status().changed()).await;
            }
            Err(error) => return Err(state.client_error(error)),
        }
    }
}

/// `POST /v1/cluster/members/{id}/promote`.
pub async fn promote_member(
    State(state): State<AppState>,
    original: Original,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &original.headers)?;
    let id = NodeId(member_id(path)?);
    if !state.is_leader() {
        return match on_leader(&state, || state.raft.change_membership(MembershipChange::PromoteLearner(id)))
            .await?
        {
            Routed::Here(committed) => Ok(Json(membership_result(&committed, &state).await).into_response()),
            Routed::Leader(leader, error) => original.send_to(&state, leader, error).await,
        };
    }
    promote(&state, id).await.map(|result| Json(result).into_response())
}

/// `DELETE /v1/cluster/members/{id}`: removes the node from the
/// configuration, then from the directory, so no node contacts it again.
pub async fn remove_member(
    State(state): State<AppState>,
    original: Original,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &original.headers)?;
    let id = NodeId(member_id(path)?);
    let committed =
        match on_leader(&state, || state.raft.change_membership(MembershipChange::Remove(id))).await? {
            Routed::Here(committed) => committed,
            Routed::Leader(leader, error) => return original.send_to(&state, leader, error).await,
        };
    let result = membership_result(&committed, &state).await;
    // A leader that removed itself hands over; the directory entry is then
    // dropped by the next leader's directory upkeep.
    let forget = KvCommand::RemoveNode { id }.encode();
    if let Err(error) = state.raft.propose(forget, None).await {
        tracing::info!(node = %id, %error, "the removed node's directory entry is left for the next leader");
    }
    Ok(Json(result).into_response())
}

/// `POST /v1/cluster/leader` with `{"target": id}` (or `{}` for the most
/// up-to-date voter): hands leadership over and waits until it moved.
pub async fn transfer_leader(
    State(state): State<AppState>,
    original: Original,
    body: Body,
) -> Result<Response, ApiError> {
    let body = admin_body(&state, &original, body).await?;
    let request: TransferRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TransferRequest::default()
    } else {
        parse_json(&body)?
    };
    let status = state.status();
    if status.role != Some(Role::Leader) {
        let original = Original { body, ..original };
        let leader = match state.current_leader() {
            Some(leader) => leader,
            None => state.wait_for_leader(Duration::from_secs(3)).await.ok_or_else(|| {
                ApiError::unavailable("no_leader", "no leader is known; retry once one is elected")
            })?,
        };
        let error = ApiError::unavailable("not_leader", "only the leader can hand leadership over")
            .with_leader(Some(leader.clone()));
        return original.send_to(&state, leader, error).await;
    }
    let target = match request.target {
        Some(0) => return Err(ApiError::bad_request("bad_node_id", "node id 0 is reserved")),
        Some(target) => NodeId(target),
        None => most_caught_up_voter(&status).ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "no_target", "there is no other voter to hand leadership to")
        })?,
    };
    state.raft.transfer_leadership(target).await.map_err(|error| state.client_error(error))?;
    if !wait_status(&state, state.config.request_timeout, |s| s.leader == target).await {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("node {target} did not take over in time; leadership may still move"),
        ));
    }
    Ok(Json(TransferResult { target: target.get() }).into_response())
}

/// The voter (other than this node) with the highest match index.
pub fn most_caught_up_voter(status: &NodeStatus) -> Option<NodeId> {
    status
        .peers
        .iter()
        .filter(|(id, _)| *id != status.id && status.membership.voters.contains(id))
        .max_by_key(|(id, match_index)| (*match_index, std::cmp::Reverse(*id)))
        .map(|(id, _)| *id)
}

/// `POST /v1/cluster/snapshot`: takes a snapshot on this node now.
pub async fn snapshot(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let meta = state.raft.trigger_snapshot().await.map_err(|error| state.client_error(error))?;
    Ok(Json(SnapshotResult { index: meta.last_index.get(), term: meta.last_term.get() }).into_response())
}
