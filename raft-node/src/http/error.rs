//! Errors of the client API: every failure becomes the JSON body of
//! DESIGN.md §7.2 with a fitting status code.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use raft_core::protocol::{MembershipError, ProposeError, ReadError, TransferError};
use raft_core::runtime::{CheckpointError, ClientError};

use crate::api::{ErrorBody, ErrorDetail, LeaderHint};

/// A failed request: status, stable code, message, and where the leader is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake-case code.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
    /// The leader, when known and relevant.
    pub leader: Option<LeaderHint>,
    /// Seconds after which a retry is sensible (`Retry-After`).
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    /// An error without a leader hint.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), leader: None, retry_after_seconds: None }
    }

    /// 400 Bad Request.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 Not Found.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 503 Service Unavailable, worth retrying shortly.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_seconds: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 413 Payload Too Large.
    pub fn too_large(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    /// 500 Internal Server Error.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Adds the leader hint.
    pub fn with_leader(mut self, leader: Option<LeaderHint>) -> ApiError {
        self.leader = leader;
        self
    }

    /// Maps a runtime error. `leader` resolves a leader id to a hint with
    /// its client address.
    pub fn from_client_error(error: ClientError, leader: impl Fn(u64) -> LeaderHint) -> ApiError {
        let hint = error.leader_hint().map(|id| leader(id.get()));
        let message = error.to_string();
        let mapped = match &error {
            ClientError::NotLeader { .. }
            | ClientError::Propose(ProposeError::NotLeader { .. })
            | ClientError::Membership(MembershipError::Propose(ProposeError::NotLeader { .. }))
            | ClientError::Transfer(TransferError::NotLeader { .. }) => {
                if hint.is_some() {
                    ApiError::unavailable("not_leader", message)
                } else {
                    ApiError::unavailable("no_leader", format!("{message}; no leader is known yet"))
                }
            }
            ClientError::Propose(ProposeError::TransferInProgress { .. })
            | ClientError::Read(ReadError::TransferInProgress)
            | ClientError::Membership(MembershipError::Propose(ProposeError::TransferInProgress {
                ..
            })) => ApiError::unavailable("leadership_transfer", message),
            ClientError::Propose(ProposeError::Busy { .. })
            | ClientError::Read(ReadError::Busy(_))
            | ClientError::Membership(MembershipError::Propose(ProposeError::Busy { .. })) => {
                ApiError::unavailable("overloaded", message)
            }
            ClientError::Propose(ProposeError::LeaderLeaving)
            | ClientError::Membership(MembershipError::Propose(ProposeError::LeaderLeaving)) => {
                ApiError::unavailable("leader_leaving", message)
            }
            ClientError::Read(ReadError::NoLeader) => ApiError::unavailable("no_leader", message),
            ClientError::Read(ReadError::LeadershipLost) => ApiError::unavailable("leadership_lost", message),
            ClientError::Read(ReadError::Timeout) | ClientError::Timeout => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
            }
            ClientError::Read(ReadError::LeaseDisabled) => {
                ApiError::bad_request("lease_reads_disabled", message)
            }
            ClientError::Lost => ApiError::unavailable("not_applied", message),
            ClientError::Shutdown => ApiError::unavailable("shutting_down", message),
            ClientError::Membership(MembershipError::ChangePending { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "membership_change_pending", message)
            }
            ClientError::Membership(MembershipError::NotReady) => {
                ApiError::unavailable("leader_not_ready", message)
            }
            ClientError::Membership(MembershipError::AlreadyMember(_)) => {
                ApiError::new(StatusCode::CONFLICT, "already_member", message)
            }
            ClientError::Membership(MembershipError::UnknownNode(_)) => {
                ApiError::not_found("unknown_member", message)
            }
            ClientError::Membership(MembershipError::NotLearner(_)) => {
                ApiError::new(StatusCode::CONFLICT, "not_a_learner", message)
            }
            ClientError::Membership(MembershipError::NotCaughtUp { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "not_caught_up", message)
            }
            ClientError::Membership(MembershipError::NoVoters) => ApiError::bad_request("no_voters", message),
            ClientError::Membership(MembershipError::ZeroId) => ApiError::bad_request("bad_node_id", message),
            ClientError::Transfer(TransferError::NotVoter(_)) => {
                ApiError::bad_request("not_a_voter", message)
            }
            ClientError::Transfer(TransferError::AlreadyLeader(_)) => {
                ApiError::new(StatusCode::CONFLICT, "already_leader", message)
            }
            ClientError::Transfer(TransferError::InProgress(_)) => {
                ApiError::new(StatusCode::CONFLICT, "transfer_in_progress", message)
            }
            ClientError::Checkpoint(CheckpointError::InvalidName { .. }) => {
                ApiError::bad_request("bad_checkpoint_name", message)
            }
            ClientError::Checkpoint(CheckpointError::NotFound(_)) => {
                ApiError::not_found("checkpoint_not_found", message)
            }
            ClientError::Checkpoint(CheckpointError::AlreadyExists(_)) => {
                ApiError::new(StatusCode::CONFLICT, "checkpoint_exists", message)
            }
            // The retained checkpoints are full: the server cannot store
            // another one until one is deleted (the message names the bound).
            ClientError::Checkpoint(CheckpointError::TooMany { .. } | CheckpointError::TooLarge { .. }) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "checkpoint_limit", message)
            }
            ClientError::Checkpoint(CheckpointError::Storage(_)) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "checkpoint_storage", message)
            }
            ClientError::StateMachine(_) | ClientError::Storage(_) => ApiError::internal(message),
            _ => ApiError::internal(message),
        };
        mapped.with_leader(hint)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.to_string(), message: self.message, leader: self.leader },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
