//! An async client for the client HTTP API (DESIGN.md §7.2), used by the
//! CLI, the integration tests and the benchmark load generator.
//!
//! One [`Client`] holds one `reqwest::Client`, so connections are pooled and
//! reused across requests and across clones; [`Client::with_endpoint`] makes
//! a client for another node that shares the same pool and TLS settings.
//!
//! ```no_run
//! # async fn example() -> Result<(), raft_node::client::ClientError> {
//! use raft_node::api::Consistency;
//! use raft_node::client::{Client, ClientOptions, WriteOptions};
//!
//! let client = Client::new(ClientOptions::new("http://127.0.0.1:8080"))?;
//! let written = client.put("greeting", "hello".into(), WriteOptions::default()).await?;
//! let (value, version) = client.get("greeting", Consistency::Linearizable).await?.expect("just written");
//! assert_eq!((&value[..], version), (&b"hello"[..], written.index));
//! # Ok(())
//! # }
//! ```
//!
//! TLS uses rustls with the ring provider passed explicitly (never the
//! process default, see DEPENDENCIES.md). Only the CA named in
//! [`ClientOptions::ca`] is trusted: the nodes' certificates come from the
//! cluster CA, not from a public one.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use crate::api::{
    AddMemberRequest, CheckpointList, CheckpointOpResult, CheckpointSummary, ClusterStatus, Consistency,
    CreateCheckpointRequest, Digest, ErrorBody, KeyList, LeaderHint, MembershipResult, SnapshotResult,
    TransferRequest, TransferResult, WriteResult, IDEMPOTENCY_KEY_HEADER,
};

/// The default endpoint: the development node's client API.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";

/// The default time a request may take, end to end. Above the server's own
/// default request timeout (5 s) plus a forwarding hop, so that the server's
/// more precise error arrives before the client gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many `307`/`308` redirects (a follower pointing at the leader) one
/// request follows. One is the normal case; a few more cover a leadership
/// change in between.
const MAX_REDIRECTS: usize = 4;

/// How many bytes of an unexpected response body an error quotes.
const QUOTED_BODY_BYTES: usize = 200;

/// How to reach a node.
#[derive(Clone)]
pub struct ClientOptions {
    /// The node's client API base URL, `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// The CA certificate(s) (PEM) trusted for `https` endpoints: the cluster
    /// CA. Without it, no server certificate is trusted.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) for nodes that require one; needs
    /// [`ClientOptions::client_key`].
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
    /// The admin token, sent as `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// The time a request may take end to end (connecting, redirects, body).
    pub timeout: Duration,
    /// Follow `307`/`308` redirects from followers to the leader (nodes
    /// started with `--no-forward` answer writes that way).
    pub follow_redirects: bool,
}

impl ClientOptions {
    /// Options for `endpoint` with the defaults: no TLS files, no token,
    /// [`DEFAULT_TIMEOUT`], redirects followed.
    pub fn new(endpoint: impl Into<String>) -> ClientOptions {
        ClientOptions {
            endpoint: endpoint.into(),
            ca: None,
            client_cert: None,
            client_key: None,
            admin_token: None,
            timeout: DEFAULT_TIMEOUT,
            follow_redirects: true,
        }
    }
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions::new(DEFAULT_ENDPOINT)
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: say whether there is one, never what it is.
        f.debug_struct("ClientOptions")
            .field("endpoint", &self.endpoint)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("follow_redirects", &self.follow_redirects)
            .finish()
    }
}

/// Conditions and the idempotency key of a write (`PUT` or `DELETE`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Write only if the key exists at this version (`If-Match: "<version>"`).
    pub if_match: Option<u64>,
    /// Write only if the key does not exist (`If-None-Match: *`).
    pub if_none_match: bool,
    /// `<client>/<sequence>`: a retry with the same key returns the first
    /// result and is applied once.
    pub idempotency_key: Option<String>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node answered with an error status and the API's error body.
    #[error("{}", describe_api_error(*.status, .body))]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The server's code, message and leader hint.
        body: ErrorBody,
    },
    /// The node answered something that is not what the API promises (an
    /// error without the JSON body, or a success whose body does not parse).
    #[error("{url} answered {status} with an unexpected body: {detail} (is this a raft-node client API?)")]
    UnexpectedResponse {
        /// The request's URL.
        url: String,
        /// The HTTP status.
        status: StatusCode,
        /// What was wrong, with the start of the body.
        detail: String,
    },
    /// Nothing listens at the endpoint.
    #[error("connection refused: is a node running at {endpoint}?")]
    ConnectionRefused {
        /// The endpoint (scheme, host and port).
        endpoint: String,
    },
    /// Connecting failed for another reason (name resolution, routing).
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint (scheme, host and port).
        endpoint: String,
        /// The causes, outermost first.
        reason: String,
    },
    /// The TLS handshake or a TLS record failed.
    #[error("TLS with {endpoint} failed: {reason}; {hint}")]
    Tls {
        /// The endpoint (scheme, host and port).
        endpoint: String,
        /// rustls' reason.
        reason: String,
        /// What to check, about certificates.
        hint: String,
    },
    /// No complete answer within the timeout. A write may still take effect.
    #[error(
        "no answer from {endpoint} within {} ms (a write may still take effect; retry it with the same \
         idempotency key)",
        .timeout.as_millis()
    )]
    Timeout {
        /// The endpoint (scheme, host and port).
        endpoint: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The connection failed after it was established.
    #[error("request to {url} failed: {reason}")]
    Transport {
        /// The request's URL.
        url: String,
        /// The causes, outermost first, with a hint when one is known.
        reason: String,
    },
    /// A redirect could not be followed.
    #[error("{0}")]
    Redirect(String),
    /// A file named in the options could not be read.
    #[error("cannot read the {what} {}: {source}", .path.display())]
    ReadFile {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The options are not usable (bad endpoint, bad PEM, bad token).
    #[error("{0}")]
    Options(String),
    /// The request itself cannot be sent (for example an empty key).
    #[error("{0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// The HTTP status, when the node answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::UnexpectedResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's error code (for example `precondition_failed`).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.error.code),
            _ => None,
        }
    }

    /// The leader the answering node knows of, when it said.
    pub fn leader(&self) -> Option<&LeaderHint> {
        match self {
            ClientError::Api { body, .. } => body.error.leader.as_ref(),
            _ => None,
        }
    }

    /// Whether a write's precondition failed (`412`).
    pub fn is_precondition_failed(&self) -> bool {
        self.status() == Some(StatusCode::PRECONDITION_FAILED)
    }

    /// Whether the request may succeed if sent again later, perhaps to
    /// another node: no connection, a timeout, no leader or quorum (`503`),
    /// a server-side timeout (`408`, `504`). A write retried after a timeout
    /// may apply twice unless it carries an idempotency key.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::ConnectionRefused { .. }
            | ClientError::Connect { .. }
            | ClientError::Timeout { .. }
            | ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } | ClientError::UnexpectedResponse { status, .. } => matches!(
                *status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT
            ),
            _ => false,
        }
    }
}

/// `412 Precondition Failed (precondition_failed): <message>; the leader is node 2 at <url>`.
fn describe_api_error(status: StatusCode, body: &ErrorBody) -> String {
    let mut text = format!("{status} ({}): {}", body.error.code, body.error.message);
    if let Some(leader) = &body.error.leader {
        match &leader.client_address {
            Some(address) => text.push_str(&format!("; the leader is node {} at {address}", leader.id)),
            None => text.push_str(&format!("; the leader is node {}", leader.id)),
        }
    }
    text
}

/// A client of one node's API. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The endpoint without a trailing slash; paths are appended to it.
    base: Arc<str>,
    timeout: Duration,
    follow_redirects: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("endpoint", &self.base).field("timeout", &self.timeout).finish()
    }
}

/// One request, kept so that it can be sent again to a redirect's target.
struct Call {
    method: Method,
    /// Path and query, starting with `/`.
    path: String,
    headers: HeaderMap,
    body: Option<Bytes>,
}

impl Call {
    fn new(method: Method, path: String) -> Call {
        Call { method, path, headers: HeaderMap::new(), body: None }
    }

    fn json(mut self, value: &impl serde::Serialize) -> Result<Call, ClientError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| ClientError::InvalidRequest(format!("cannot encode the request body: {e}")))?;
        self.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.body = Some(Bytes::from(body));
        Ok(self)
    }
}

impl Client {
    /// Builds a client: reads the TLS files and checks the endpoint. No
    /// connection is made until the first request.
    pub fn new(options: ClientOptions) -> Result<Client, ClientError> {
        let base = check_endpoint(&options.endpoint)?;
        let tls = tls_config(&options)?;
        let mut default_headers = HeaderMap::new();
        if let Some(token) = &options.admin_token {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                ClientError::Options("the admin token holds characters an HTTP header cannot carry".into())
            })?;
            // Keeps the token out of reqwest's debug output.
            value.set_sensitive(true);
            default_headers.insert(header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .default_headers(default_headers)
            .user_agent(concat!("raft-node/", env!("CARGO_PKG_VERSION")))
            .timeout(options.timeout)
            // Redirects are followed by hand (see `send`): reqwest drops the
            // Authorization header when the host changes, and a redirect from
            // a follower to the leader always changes the port.
            .redirect(reqwest::redirect::Policy::none())
            // Nodes are addressed directly; a proxy from the environment
            // would only add a hop and surprising failures.
            .no_proxy()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| {
                ClientError::Options(format!("cannot build the HTTP client: {}", error_chain(&e)))
            })?;
        Ok(Client {
            http,
            base: base.into(),
            timeout: options.timeout,
            follow_redirects: options.follow_redirects,
        })
    }

    /// A client for another node with the same TLS settings, token and
    /// timeout, sharing this client's connection pool.
    pub fn with_endpoint(&self, endpoint: &str) -> Result<Client, ClientError> {
        let base = check_endpoint(endpoint)?;
        Ok(Client { base: base.into(), ..self.clone() })
    }

    /// The endpoint this client talks to, without a trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// `PUT /v1/kv/{key}`: sets `key` to `value` once committed and applied.
    /// The result's `index` is the key's new version.
    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        options: WriteOptions,
    ) -> Result<WriteResult, ClientError> {
        let mut call = Call::new(Method::PUT, key_path(key)?);
        write_headers(&mut call.headers, &options)?;
        call.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        call.body = Some(value);
        self.json_call(call).await
    }

    /// `GET /v1/kv/{key}`: the value and its version, or `None` if the key
    /// does not exist.
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<(Bytes, u64)>, ClientError> {
        let path = format!("{}?consistency={}", key_path(key)?, consistency.as_str());
        let response = self.send(Call::new(Method::GET, path)).await?;
        let status = response.status();
        let url = response.url().to_string();
        if status == StatusCode::NOT_FOUND {
            return match self.error_from(response).await {
                ClientError::Api { body, .. } if body.error.code == "key_not_found" => Ok(None),
                other => Err(other),
            };
        }
        if !status.is_success() {
            return Err(self.error_from(response).await);
        }
        let version = response.headers().get(header::ETAG).and_then(|tag| parse_etag(tag.to_str().ok()?));
        let Some(version) = version else {
            let tag = response
                .headers()
                .get(header::ETAG)
                .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned());
            return Err(ClientError::UnexpectedResponse {
                url,
                status,
                detail: format!("the ETag header should be a version in quotes, like \"42\"; got {tag:?}"),
            });
        };
        let value = response.bytes().await.map_err(|e| self.transport_error(&url, &e))?;
        Ok(Some((value, version)))
    }

    /// `DELETE /v1/kv/{key}`.
    pub async fn delete(&self, key: &str, options: WriteOptions) -> Result<WriteResult, ClientError> {
        let mut call = Call::new(Method::DELETE, key_path(key)?);
        write_headers(&mut call.headers, &options)?;
        self.json_call(call).await
    }

    /// `GET /v1/kv?prefix=P&limit=N`: keys starting with `prefix`, in byte
    /// order; without a limit the server's default applies.
    pub async fn list(&self, prefix: &str, limit: Option<usize>) -> Result<KeyList, ClientError> {
        let mut path = format!("/v1/kv?prefix={}", percent_encode(prefix));
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        self.json_call(Call::new(Method::GET, path)).await
    }

    /// `GET /v1/cluster`: the answering node's view of the cluster.
    pub async fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        self.json_call(Call::new(Method::GET, "/v1/cluster".into())).await
    }

    /// `GET /v1/cluster/digest`: a summary of the answering node's key space,
    /// to compare replicas.
    pub async fn digest(&self) -> Result<Digest, ClientError> {
        self.json_call(Call::new(Method::GET, "/v1/cluster/digest".into())).await
    }

    /// `POST /v1/cluster/members`: adds a learner (or a voter).
    pub async fn add_member(&self, request: &AddMemberRequest) -> Result<MembershipResult, ClientError> {
        self.json_call(Call::new(Method::POST, "/v1/cluster/members".into()).json(request)?).await
    }

    /// `POST /v1/cluster/members/{id}/promote`: makes a learner a voter.
    pub async fn promote(&self, id: u64) -> Result<MembershipResult, ClientError> {
        self.json_call(Call::new(Method::POST, format!("/v1/cluster/members/{id}/promote"))).await
    }

    /// `DELETE /v1/cluster/members/{id}`: removes a voter or a learner.
    pub async fn remove_member(&self, id: u64) -> Result<MembershipResult, ClientError> {
        self.json_call(Call::new(Method::DELETE, format!("/v1/cluster/members/{id}"))).await
    }

    /// `POST /v1/cluster/leader`: hands leadership to `target`, or to the
    /// most up-to-date voter.
    pub async fn transfer_leader(&self, target: Option<u64>) -> Result<TransferResult, ClientError> {
        let call = Call::new(Method::POST, "/v1/cluster/leader".into()).json(&TransferRequest { target })?;
        self.json_call(call).await
    }

    /// `POST /v1/cluster/snapshot`: takes a snapshot on the answering node now.
    pub async fn snapshot(&self) -> Result<SnapshotResult, ClientError> {
        self.json_call(Call::new(Method::POST, "/v1/cluster/snapshot".into())).await
    }

    /// `POST /v1/checkpoints`: creates a checkpoint of the whole cluster;
    /// returns once it is durable on the leader.
    pub async fn create_checkpoint(&self, name: &str) -> Result<CheckpointSummary, ClientError> {
        let request = CreateCheckpointRequest { name: name.to_string() };
        self.json_call(Call::new(Method::POST, "/v1/checkpoints".into()).json(&request)?).await
    }

    /// `GET /v1/checkpoints`: the checkpoints durable on the answering node.
    pub async fn checkpoints(&self) -> Result<CheckpointList, ClientError> {
        self.json_call(Call::new(Method::GET, "/v1/checkpoints".into())).await
    }

    /// `POST /v1/checkpoints/{name}/rollback`: rolls the cluster's state back
    /// to the checkpoint; returns the rollback entry's position.
    pub async fn rollback(&self, name: &str) -> Result<CheckpointOpResult, ClientError> {
        let path = format!("/v1/checkpoints/{}/rollback", checkpoint_segment(name)?);
        self.json_call(Call::new(Method::POST, path)).await
    }

    /// `DELETE /v1/checkpoints/{name}`.
    pub async fn delete_checkpoint(&self, name: &str) -> Result<CheckpointOpResult, ClientError> {
        let path = format!("/v1/checkpoints/{}", checkpoint_segment(name)?);
        self.json_call(Call::new(Method::DELETE, path)).await
    }

    /// `GET /v1/checkpoints/{name}/export`: writes the answering node's copy
    /// of the checkpoint, as a checkpoint file, to `output` chunk by chunk;
    /// returns the bytes written. The whole download must fit in the
    /// client's timeout.
    pub async fn export_checkpoint(
        &self,
        name: &str,
        output: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, ClientError> {
        let path = format!("/v1/checkpoints/{}/export", checkpoint_segment(name)?);
        let mut response = self.send(Call::new(Method::GET, path)).await?;
        if !response.status().is_success() {
            return Err(self.error_from(response).await);
        }
        let url = response.url().to_string();
        let expected = response.content_length();
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport_error(&url, &e))? {
            output.write_all(&chunk).map_err(|e| {
                ClientError::InvalidRequest(format!("cannot write the exported checkpoint: {e}"))
            })?;
            written += chunk.len() as u64;
        }
        if let Some(expected) = expected.filter(|expected| *expected != written) {
            return Err(ClientError::Transport {
                url,
                reason: format!("the download ended after {written} of {expected} bytes"),
            });
        }
        Ok(written)
    }

    /// `GET /healthz`: `Ok` while the node runs (its storage and state
    /// machine have not failed).
    pub async fn health(&self) -> Result<(), ClientError> {
        self.expect_success(Call::new(Method::GET, "/healthz".into())).await
    }

    /// `GET /readyz`: `Ok` once the node knows a leader and has applied what
    /// is committed; a `503` error otherwise.
    pub async fn ready(&self) -> Result<(), ClientError> {
        self.expect_success(Call::new(Method::GET, "/readyz".into())).await
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let response = self.send(Call::new(Method::GET, "/metrics".into())).await?;
        if !response.status().is_success() {
            return Err(self.error_from(response).await);
        }
        let url = response.url().to_string();
        response.text().await.map_err(|e| self.transport_error(&url, &e))
    }

    /// Sends a call and parses a JSON success body.
    async fn json_call<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let response = self.send(call).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.error_from(response).await);
        }
        let url = response.url().to_string();
        let body = response.bytes().await.map_err(|e| self.transport_error(&url, &e))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::UnexpectedResponse {
            url,
            status,
            detail: format!("{e} in {}", quote_body(&body)),
        })
    }

    async fn expect_success(&self, call: Call) -> Result<(), ClientError> {
        let response = self.send(call).await?;
        if !response.status().is_success() {
            return Err(self.error_from(response).await);
        }
        Ok(())
    }

    /// Sends a call, following redirects to the leader when enabled.
    async fn send(&self, call: Call) -> Result<reqwest::Response, ClientError> {
        let mut url = format!("{}{}", self.base, call.path);
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.http.request(call.method.clone(), &url).headers(call.headers.clone());
            if let Some(body) = &call.body {
                request = request.body(body.clone());
            }
            let response = request.send().await.map_err(|e| self.transport_error(&url, &e))?;
            let redirected =
                matches!(response.status(), StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT);
            if !redirected || !self.follow_redirects {
                return Ok(response);
            }
            url = redirect_target(response.url(), response.headers().get(header::LOCATION))?;
        }
        Err(ClientError::Redirect(format!(
            "more than {MAX_REDIRECTS} redirects for {} {}: leadership may be moving; retry",
            call.method, call.path
        )))
    }

    /// The error a non-success response stands for.
    async fn error_from(&self, response: reqwest::Response) -> ClientError {
        let status = response.status();
        let url = response.url().to_string();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => return self.transport_error(&url, &e),
        };
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(body) => ClientError::Api { status, body },
            Err(_) if status.is_redirection() => ClientError::Redirect(format!(
                "{url} answered {status} without a usable Location (redirects are not followed with these \
                 options)"
            )),
            Err(_) => ClientError::UnexpectedResponse {
                url,
                status,
                detail: format!("not the API's JSON error body: {}", quote_body(&body)),
            },
        }
    }

    /// Turns reqwest's error into one that says what to check.
    fn transport_error(&self, url: &str, error: &reqwest::Error) -> ClientError {
        classify_transport_error(url, error, self.timeout)
    }
}

/// A checkpoint name as a path segment.
fn checkpoint_segment(name: &str) -> Result<String, ClientError> {
    if name.is_empty() {
        return Err(ClientError::InvalidRequest("the checkpoint name is empty".into()));
    }
    Ok(percent_encode(name))
}

/// Checks an endpoint and returns it without trailing slashes.
fn check_endpoint(endpoint: &str) -> Result<String, ClientError> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    let bad = |why: &str| {
        ClientError::Options(format!(
            "the endpoint {endpoint:?} {why}: use a base URL like http://127.0.0.1:8080 or https://host:port"
        ))
    };
    let url = Url::parse(trimmed).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("is neither http:// nor https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("names no host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("has a path, query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("carries credentials; pass the admin token separately"));
    }
    Ok(trimmed.to_string())
}

/// The path of a key: `/v1/kv/` and the key as one percent-encoded segment,
/// so a `/` in the key travels as `%2F`.
pub fn key_path(key: &str) -> Result<String, ClientError> {
    if key.is_empty() {
        return Err(ClientError::InvalidRequest("the key is empty".into()));
    }
    // URL parsers resolve `.` and `..` segments (encoded or not) before the
    // request leaves, so these two keys cannot be addressed at all.
    if key == "." || key == ".." {
        return Err(ClientError::InvalidRequest(format!(
            "the key {key:?} cannot be sent: URLs treat it as a relative path segment"
        )));
    }
    Ok(format!("/v1/kv/{}", percent_encode(key)))
}

/// Percent-encodes every byte except the unreserved characters of RFC 3986
/// (`A-Z a-z 0-9 - . _ ~`), so the result is safe as one path segment and as
/// a query value.
pub fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    encoded
}

/// Parses `"<version>"` (a weak `W/` prefix is tolerated).
fn parse_etag(tag: &str) -> Option<u64> {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

fn write_headers(headers: &mut HeaderMap, options: &WriteOptions) -> Result<(), ClientError> {
    if options.if_match.is_some() && options.if_none_match {
        return Err(ClientError::InvalidRequest(
            "if-match and if-none-match exclude each other: a key cannot both exist at a version and be absent"
                .into(),
        ));
    }
    if let Some(version) = options.if_match {
        // An entity tag is the version in double quotes.
        let tag = HeaderValue::try_from(format!("\"{version}\"")).map_err(|_| {
            ClientError::InvalidRequest(format!("cannot send If-Match for version {version}"))
        })?;
        headers.insert(header::IF_MATCH, tag);
    }
    if options.if_none_match {
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
    }
    if let Some(key) = &options.idempotency_key {
        let value = HeaderValue::from_str(key).map_err(|_| {
            ClientError::InvalidRequest(format!(
                "the idempotency key {key:?} holds characters an HTTP header cannot carry"
            ))
        })?;
        headers.insert(IDEMPOTENCY_KEY_HEADER, value);
    }
    Ok(())
}

/// Where a redirect points, resolved against the URL that answered. A
/// redirect from HTTPS to plain HTTP is refused: it would send the admin
/// token and the data in the clear.
fn redirect_target(from: &Url, location: Option<&HeaderValue>) -> Result<String, ClientError> {
    let location = location.and_then(|value| value.to_str().ok()).ok_or_else(|| {
        ClientError::Redirect(format!("{from} answered a redirect without a usable Location header"))
    })?;
    let target = from.join(location).map_err(|e| {
        ClientError::Redirect(format!("{from} redirected to {location:?}, which is not a URL: {e}"))
    })?;
    if from.scheme() == "https" && target.scheme() != "https" {
        return Err(ClientError::Redirect(format!(
            "{from} redirected to {target}, which is not HTTPS; refusing to send the request in the clear \
             (the leader's advertised client address should be https://)"
        )));
    }
    Ok(target.into())
}

/// The TLS configuration: ring, the CA from the options as the only root,
/// and the client certificate if one is given.
fn tls_config(options: &ClientOptions) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Options(format!("TLS setup failed: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &options.ca {
        let pem = read_file(path, "CA certificate file")?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(path, "CA certificate", &e))?;
        if certificates.is_empty() {
            return Err(ClientError::Options(format!(
                "{} holds no PEM certificate: --ca wants the cluster CA's ca.pem",
                path.display()
            )));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|e| {
                ClientError::Options(format!("{}: the CA certificate is not usable: {e}", path.display()))
            })?;
        }
    }
    let builder = builder.with_root_certificates(roots);
    let mut config = match (&options.client_cert, &options.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_path), Some(key_path)) => {
            let pem = read_file(cert_path, "client certificate file")?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(cert_path, "client certificate", &e))?;
            if chain.is_empty() {
                return Err(ClientError::Options(format!(
                    "{} holds no PEM certificate",
                    cert_path.display()
                )));
            }
            let pem = read_file(key_path, "client key file")?;
            let key =
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| pem_error(key_path, "private key", &e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ClientError::Options(format!(
                    "the client certificate {} and key {} are not usable together: {e}",
                    cert_path.display(),
                    key_path.display()
                ))
            })?
        }
        _ => {
            return Err(ClientError::Options(
                "a client certificate and its key go together: give both or neither".into(),
            ))
        }
    };
    // The client API speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadFile { what, path: path.to_path_buf(), source })
}

fn pem_error(path: &Path, what: &str, error: &dyn fmt::Display) -> ClientError {
    ClientError::Options(format!("{}: cannot read the {what} as PEM: {error}", path.display()))
}

/// `"…"` with at most [`QUOTED_BODY_BYTES`] bytes of the body.
fn quote_body(body: &[u8]) -> String {
    if body.is_empty() {
        return "an empty body".into();
    }
    let shown = &body[..body.len().min(QUOTED_BODY_BYTES)];
    let more = if body.len() > shown.len() { "…" } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(shown))
}

/// `scheme://host:port` of a URL, for messages about connections.
fn origin_of(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => parsed.origin().ascii_serialization(),
        Err(_) => url.to_string(),
    }
}

/// Walks an error's causes, looking inside `io::Error`s too (their `source`
/// skips the error they wrap, which is where rustls puts its own).
fn find_cause<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(found) = cause.downcast_ref::<T>() {
            return Some(found);
        }
        current = match cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => cause.source(),
        };
    }
    None
}

/// The causes of an error, outermost first, without repeats.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(cause) = current {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        current = match cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => cause.source(),
        };
    }
    parts.join(": ")
}

fn classify_transport_error(url: &str, error: &reqwest::Error, timeout: Duration) -> ClientError {
    let endpoint = origin_of(url);
    if let Some(tls) = find_cause::<rustls::Error>(error) {
        return ClientError::Tls { endpoint, reason: tls.to_string(), hint: tls_hint(tls) };
    }
    if error.is_timeout() {
        return ClientError::Timeout { endpoint, timeout };
    }
    let refused = find_cause::<std::io::Error>(error)
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
    if refused {
        return ClientError::ConnectionRefused { endpoint };
    }
    if error.is_connect() {
        return ClientError::Connect { endpoint, reason: error_chain(error) };
    }
    let mut reason = error_chain(error);
    // A TLS server sends an alert, not HTTP, to a plain-HTTP client; the
    // client sees an unparsable or cut-off response.
    let garbled =
        find_cause::<hyper::Error>(error).is_some_and(|h| h.is_parse() || h.is_incomplete_message());
    if garbled && url.starts_with("http://") {
        reason.push_str(" (if the node serves HTTPS, use an https:// endpoint and --ca)");
    }
    ClientError::Transport { url: url.to_string(), reason }
}

/// What to check, for a TLS failure.
fn tls_hint(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError};
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the node's certificate is not signed by a CA this client trusts: pass the cluster CA \
             (ca.pem) with --ca"
                .into()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the node's certificate does not name the host in the endpoint URL: connect by a name or \
              address the certificate carries, or issue it with `raft-node certs --address <host>`"
            .into(),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "the node's certificate is expired or not valid yet: check the clocks, or issue new \
              certificates"
            .into(),
        rustls::Error::InvalidCertificate(_) => {
            "the node's certificate was refused: check that --ca is the CA that issued it".into()
        }
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::HandshakeFailure
            | AlertDescription::AccessDenied,
        ) => "the node refused this client's certificate (or the lack of one): pass --cert and --key \
              issued by the CA the node trusts for clients"
            .into(),
        rustls::Error::InvalidMessage(_) => {
            "the endpoint does not seem to speak TLS: if the node serves plain HTTP, use http://".into()
        }
        rustls::Error::NoCertificatesPresented => "the node presented no certificate".into(),
        _ => "check the certificates: --ca (the cluster CA) and, if the node requires client \
              certificates, --cert and --key"
            .into(),
    }
}

#[cfg(test)]
mod tests;
