//! The client HTTP API (DESIGN.md §7.2): keys, cluster administration,
//! checkpoints, metrics and health, over HTTP or HTTPS (optionally with client
//! certificates).

mod checkpoints;
mod cluster;
pub mod error;
mod forward;
mod kv;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use raft_core::runtime::{NodeStatus, RaftNode};
use raft_core::types::{NodeId, Role};
use raft_metrics::NodeMetrics;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::api::{LeaderHint, NODE_HEADER};
use crate::config::NodeConfig;
use crate::kv::Directory;
pub use cluster::most_caught_up_voter;
pub use error::ApiError;

/// What every handler shares. Cheap to clone (axum clones it for every
/// request): one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Wraps the shared parts.
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// The Raft runtime.
    pub raft: RaftNode,
    /// The node's settings.
    pub config: Arc<NodeConfig>,
    /// The directory of node addresses in force (see `node::directory`).
    pub directory: watch::Receiver<Directory>,
    /// Metrics of this node.
    pub metrics: Arc<NodeMetrics>,
    /// The Prometheus recorder's handle, rendering `/metrics`.
    pub prometheus: Option<PrometheusHandle>,
    /// The HTTP client used to forward requests to the leader.
    pub forwarder: reqwest::Client,
    /// Bounds the requests served at once ([`NodeConfig::max_concurrent_requests`]).
    pub limiter: Arc<Semaphore>,
    /// The peer transport's fault injector, only with
    /// `--dangerous-fault-injection` (see [`crate::fault`]).
    pub faults: Option<Arc<crate::fault::FaultInjector>>,
}

impl Shared {
    /// The node's current status.
    pub fn status(&self) -> NodeStatus {
        self.raft.status().borrow().clone()
    }

    /// A leader hint for node `id`, with its client address if known.
    pub fn leader_hint(&self, id: u64) -> LeaderHint {
        let client_address = self.directory.borrow().get(&NodeId(id)).map(|a| a.client.clone());
        LeaderHint { id, client_address }
    }

    /// The leader this node knows of, if any.
    pub fn current_leader(&self) -> Option<LeaderHint> {
        let leader = self.raft.status().borrow().leader;
        (leader != NodeId::NONE).then(|| self.leader_hint(leader.get()))
    }

    /// Maps a runtime error to an API error with the leader's address.
    pub fn client_error(&self, error: raft_core::runtime::ClientError) -> ApiError {
        ApiError::from_client_error(error, |id| self.leader_hint(id))
    }

    /// Waits (up to `limit`) until this node knows a leader; for requests
    /// that arrive during an election.
    pub async fn wait_for_leader(&self, limit: Duration) -> Option<LeaderHint> {
        let mut status = self.raft.status();
        let known =
            tokio::time::timeout(limit, status.wait_for(|s| s.leader != NodeId::NONE || s.stopped.is_some()))
                .await;
        match known {
            Ok(Ok(status)) if status.leader != NodeId::NONE => {
                let leader = status.leader.get();
                drop(status);
                Some(self.leader_hint(leader))
            }
            _ => None,
        }
    }

    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.raft.status().borrow().role == Some(Role::Leader)
    }
}

/// Builds the router with every route of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/kv", get(kv::list))
        .route("/v1/kv/", get(kv::list))
        .route("/v1/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/cluster/digest", get(cluster::digest))
        .route("/v1/cluster/members", post(cluster::add_member))
        .route("/v1/cluster/members/{id}/promote", post(cluster::promote_member))
        .route("/v1/cluster/members/{id}", delete(cluster::remove_member))
        .route("/v1/cluster/leader", post(cluster::transfer_leader))
        .route("/v1/cluster/snapshot", post(cluster::snapshot))
        .route("/v1/checkpoints", get(checkpoints::list).post(checkpoints::create))
        .route("/v1/checkpoints/{name}", delete(checkpoints::delete))
        .route("/v1/checkpoints/{name}/rollback", post(checkpoints::rollback))
        .route("/v1/checkpoints/{name}/export", get(checkpoints::export))
        .route(
            "/v1/dangerous/faults",
            get(crate::fault::show).post(crate::fault::set).delete(crate::fault::clear),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts and times every request, bounds concurrency, and names the node
/// that answered.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route =
        request.extensions().get::<MatchedPath>().map(|p| route_label(p.as_str())).unwrap_or("unmatched");
    let permit =
        match tokio::time::timeout(state.config.request_timeout, Arc::clone(&state.limiter).acquire_owned())
            .await
        {
            Ok(Ok(permit)) => Some(permit),
            _ => None,
        };
    let mut response = match permit {
        Some(_permit) => next.run(request).await,
        None => ApiError::unavailable(
            "overloaded",
            format!("more than {} requests in progress; retry later", state.config.max_concurrent_requests),
        )
        .into_response(),
    };
    if !response.headers().contains_key(NODE_HEADER) {
        response.headers_mut().insert(NODE_HEADER, HeaderValue::from(state.config.id));
    }
    state.metrics.observe_http_request(method.as_str(), route, response.status().as_u16(), started.elapsed());
    response
}

/// Route templates as static labels (the metric's label must never be the
/// raw path, or every key would make a new series).
fn route_label(template: &str) -> &'static str {
    const ROUTES: [&str; 18] = [
        "/v1/kv",
        "/v1/kv/",
        "/v1/kv/{*key}",
        "/v1/cluster",
        "/v1/cluster/digest",
        "/v1/cluster/members",
        "/v1/cluster/members/{id}/promote",
        "/v1/cluster/members/{id}",
        "/v1/cluster/leader",
        "/v1/cluster/snapshot",
        "/v1/checkpoints",
        "/v1/checkpoints/{name}",
        "/v1/checkpoints/{name}/rollback",
        "/v1/checkpoints/{name}/export",
        "/v1/dangerous/faults",
        "/metrics",
        "/healthz",
        "/readyz",
    ];
    ROUTES.iter().find(|route| **route == template).copied().unwrap_or("other")
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(
        "no_such_route",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn metrics(State(state): State<AppState>) -> Response {
    match &state.prometheus {
        Some(handle) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
            .into_response(),
        None => ApiError::not_found("metrics_disabled", "metrics are not exported by this process")
            .into_response(),
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    let status = state.status();
    match status.stopped {
        Some(reason) => {
            ApiError::unavailable("stopped", format!("the node stopped: {reason}")).into_response()
        }
        None => {
            (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ok", "node_id": state.config.id })))
                .into_response()
        }
    }
}

/// Ready: the node runs, knows a leader, and has applied what it knows to
/// be committed (give or take one batch), so it serves current data.
async fn readyz(State(state): State<AppState>) -> Response {
    let status = state.status();
    let reason = if let Some(reason) = &status.stopped {
        Some(format!("the node stopped: {reason}"))
    } else if status.leader == NodeId::NONE {
        Some("no leader is known".to_string())
    } else if status.applied_index.get() + 1_000 < status.commit_index.get() {
        Some(format!(
            "applying: applied index {} behind commit index {}",
            status.applied_index.get(),
            status.commit_index.get()
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => ApiError::unavailable("not_ready", reason).into_response(),
        None => {
            (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ready", "node_id": state.config.id })))
                .into_response()
        }
    }
}

/// Why the client API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen for clients on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A bound client API listener, ready to serve.
pub struct Listener {
    listener: TcpListener,
}

impl Listener {
    /// Binds `address`.
    pub async fn bind(address: SocketAddr) -> Result<Listener, ServeError> {
        let listener =
            TcpListener::bind(address).await.map_err(|source| ServeError::Bind { address, source })?;
        Ok(Listener { listener })
    }

    /// The bound address.
    pub fn local_address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `router` until `shutdown` turns true; over TLS when `tls` is
    /// given. In-flight requests finish first.
    pub async fn serve(
        self,
        router: Router,
        tls: Option<Arc<rustls::ServerConfig>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        match tls {
            None => {
                if let Err(error) = axum::serve(self.listener, router).with_graceful_shutdown(stop).await {
                    tracing::error!(%error, "the client API stopped");
                }
            }
            Some(tls) => serve_tls(self.listener, router, tls, stop).await,
        }
    }
}

/// HTTPS: a TLS handshake per connection, then hyper serves the router.
async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // The tasks serving open connections, so shutdown can wait for them.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Running out of file descriptors is transient: back off.
                    tracing::warn!(%error, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Reap finished connections so the set only holds open ones.
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        connections.spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::info!(%peer, %error, "a client's TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "a client's TLS handshake timed out");
                    return;
                }
            };
            if let Err(error) =
                Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(%peer, %error, "a client connection ended with an error");
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}
