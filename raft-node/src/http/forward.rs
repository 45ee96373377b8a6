//! Forwarding a request to the leader, or redirecting the client there.
//!
//! A follower that receives a write (or anything only the leader can do)
//! either proxies it to the leader's client API once, marked with
//! [`FORWARDED_HEADER`] so the leader never forwards it again, or, with
//! forwarding off, answers `307 Temporary Redirect` to the same path on the
//! leader (clients that follow redirects resend method and body).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::error::ApiError;
use super::AppState;
use crate::api::{LeaderHint, FORWARDED_HEADER};

/// Request headers worth passing on to the leader.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 5] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    HeaderName::from_static(crate::api::IDEMPOTENCY_KEY_HEADER),
];

/// Response headers passed back from the leader.
const FORWARDED_RESPONSE_HEADERS: [HeaderName; 4] = [
    header::ETAG,
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    HeaderName::from_static(crate::api::NODE_HEADER),
];

/// Whether this request was already forwarded by another node.
pub fn was_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

/// Sends the request to `leader` (or redirects there), or fails with the
/// original error when the leader's address is unknown or the request was
/// already forwarded once.
pub async fn to_leader(
    state: &AppState,
    leader: &LeaderHint,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    original: ApiError,
) -> Result<Response, ApiError> {
    let Some(base) = leader.client_address.as_deref() else { return Err(original) };
    if was_forwarded(headers) {
        return Err(original);
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let target = format!("{base}{path}");
    if !state.config.forward_to_leader {
        let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
        let location = HeaderValue::from_str(&target).map_err(|_| {
            ApiError::internal(format!("the leader's address {target:?} is not a valid header"))
        })?;
        response.headers_mut().insert(header::LOCATION, location);
        return Ok(response);
    }
    let mut request = state
        .forwarder
        .request(method, &target)
        .header(FORWARDED_HEADER, state.config.id.to_string())
        .timeout(state.config.request_timeout + std::time::Duration::from_millis(500))
        .body(body);
    for name in FORWARDED_REQUEST_HEADERS.iter() {
        for value in headers.get_all(name) {
            request = request.header(name, value);
        }
    }
    let reply = request.send().await.map_err(|error| {
        let what = if error.is_timeout() { "timed out" } else { "failed" };
        ApiError::unavailable(
            "forward_failed",
            format!("forwarding to the leader (node {}) at {base} {what}: {error}", leader.id),
        )
        .with_leader(Some(leader.clone()))
    })?;
    let status = reply.status();
    let mut response_headers = HeaderMap::new();
    for name in FORWARDED_RESPONSE_HEADERS.iter() {
        if let Some(value) = reply.headers().get(name) {
            response_headers.insert(name, value.clone());
        }
    }
    let bytes = reply.bytes().await.map_err(|error| {
        ApiError::unavailable("forward_failed", format!("reading the leader's answer failed: {error}"))
    })?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().extend(response_headers);
    Ok(response)
}
