//! The client's URL building and error handling, against small in-process
//! stub servers (the real server is exercised by the integration tests).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use raft_core::types::NodeId;
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::ClusterId;

use super::*;
use crate::api::{ErrorDetail, LeaderHint};

#[test]
fn keys_are_one_percent_encoded_path_segment() {
    assert_eq!(key_path("plain-key_1.txt~").unwrap(), "/v1/kv/plain-key_1.txt~");
    assert_eq!(key_path("a/b").unwrap(), "/v1/kv/a%2Fb");
    assert_eq!(key_path("with space?&#%").unwrap(), "/v1/kv/with%20space%3F%26%23%25");
    assert_eq!(key_path("é").unwrap(), "/v1/kv/%C3%A9");
    assert_eq!(key_path("a/../b").unwrap(), "/v1/kv/a%2F..%2Fb");
    for bad in ["", ".", ".."] {
        let error = key_path(bad).unwrap_err();
        assert!(matches!(error, ClientError::InvalidRequest(_)), "{bad:?}: {error}");
    }
}

#[test]
fn encoded_keys_survive_url_parsing_unchanged() {
    // The URL parser must neither decode %2F nor resolve anything inside the
    // segment, or the server would see another key.
    for key in ["a/b", "a/../b", "./x", "%2F", "?x=1#y", "..."] {
        let url = Url::parse(&format!("http://127.0.0.1:1{}", key_path(key).unwrap())).unwrap();
        let segment = url.path().strip_prefix("/v1/kv/").unwrap();
        assert_eq!(segment, percent_encode(key), "{key:?}");
        assert!(!segment.contains('/'), "{key:?}");
    }
}

#[test]
fn endpoints_are_checked_and_trimmed() {
    assert_eq!(check_endpoint("http://127.0.0.1:8080/").unwrap(), "http://127.0.0.1:8080");
    assert_eq!(check_endpoint(" https://node-1.prod:8443 ").unwrap(), "https://node-1.prod:8443");
    for (bad, expected) in [
        ("127.0.0.1:8080", "is not a URL"),
        ("ftp://x:1", "neither http"),
        ("http://x:1/v1", "has a path"),
        ("http://user:secret@x:1", "credentials"),
    ] {
        let error = check_endpoint(bad).unwrap_err().to_string();
        assert!(error.contains(expected), "{bad}: {error}");
        assert!(error.contains("http://127.0.0.1:8080"), "the message shows a valid example: {error}");
    }
}

#[test]
fn etags_are_versions_in_quotes() {
    assert_eq!(parse_etag("\"42\""), Some(42));
    assert_eq!(parse_etag("W/\"7\""), Some(7));
    assert_eq!(parse_etag("42"), None);
    assert_eq!(parse_etag("\"x\""), None);
}

#[test]
fn write_options_become_headers() {
    let mut headers = HeaderMap::new();
    let options =
        WriteOptions { if_match: Some(9), if_none_match: false, idempotency_key: Some("c/1".into()) };
    write_headers(&mut headers, &options).unwrap();
    assert_eq!(headers[header::IF_MATCH], "\"9\"");
    assert_eq!(headers[IDEMPOTENCY_KEY_HEADER], "c/1");
    let both = WriteOptions { if_match: Some(1), if_none_match: true, idempotency_key: None };
    assert!(matches!(write_headers(&mut HeaderMap::new(), &both), Err(ClientError::InvalidRequest(_))));
}

#[test]
fn api_errors_read_well() {
    let body = ErrorBody {
        error: ErrorDetail {
            code: "no_leader".into(),
            message: "no leader is known".into(),
            leader: Some(LeaderHint { id: 2, client_address: Some("http://127.0.0.1:8082".into()) }),
        },
    };
    let error = ClientError::Api { status: StatusCode::SERVICE_UNAVAILABLE, body };
    assert_eq!(
        error.to_string(),
        "503 Service Unavailable (no_leader): no leader is known; the leader is node 2 at http://127.0.0.1:8082"
    );
    assert!(error.is_retryable());
    assert_eq!(error.code(), Some("no_leader"));
    assert_eq!(error.leader().map(|l| l.id), Some(2));
    let refused = ClientError::ConnectionRefused { endpoint: "http://127.0.0.1:8080".into() };
    assert_eq!(refused.to_string(), "connection refused: is a node running at http://127.0.0.1:8080?");
}

#[test]
fn redirects_resolve_and_never_downgrade() {
    let from = Url::parse("http://127.0.0.1:8081/v1/kv/a").unwrap();
    let to = HeaderValue::from_static("http://127.0.0.1:8082/v1/kv/a");
    assert_eq!(redirect_target(&from, Some(&to)).unwrap(), "http://127.0.0.1:8082/v1/kv/a");
    let relative = HeaderValue::from_static("/v1/kv/b");
    assert_eq!(redirect_target(&from, Some(&relative)).unwrap(), "http://127.0.0.1:8081/v1/kv/b");
    let secure = Url::parse("https://127.0.0.1:8081/v1/kv/a").unwrap();
    let error = redirect_target(&secure, Some(&to)).unwrap_err().to_string();
    assert!(error.contains("not HTTPS"), "{error}");
    assert!(redirect_target(&from, None).is_err());
}

#[test]
fn options_debug_hides_the_token() {
    let options =
        ClientOptions { admin_token: Some("s3cret-token-value".into()), ..ClientOptions::default() };
    let text = format!("{options:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("redacted"), "{text}");
}

#[test]
fn unreadable_tls_files_are_named() {
    let options = ClientOptions { ca: Some("/nonexistent/ca.pem".into()), ..ClientOptions::default() };
    let error = Client::new(options).unwrap_err().to_string();
    assert!(error.contains("CA certificate file /nonexistent/ca.pem"), "{error}");
    let only_cert = ClientOptions { client_cert: Some("cert.pem".into()), ..ClientOptions::default() };
    let error = Client::new(only_cert).unwrap_err().to_string();
    assert!(error.contains("go together"), "{error}");
}

/// What the stub saw of each request.
#[derive(Clone, Debug)]
struct Seen {
    path_and_query: String,
    headers: HeaderMap,
}

#[derive(Clone, Default)]
struct Stub {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Where `POST /v1/cluster/leader` redirects to.
    redirect_to: Option<String>,
}

impl Stub {
    fn record(&self, uri: &Uri, headers: &HeaderMap) {
        let path_and_query = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(Seen { path_and_query, headers: headers.clone() });
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|seen| seen.clone()).unwrap_or_default()
    }
}

fn api_error(status: StatusCode, code: &str, leader: Option<LeaderHint>) -> Response {
    let body =
        ErrorBody { error: ErrorDetail { code: code.into(), message: format!("stub says {code}"), leader } };
    (status, Json(body)).into_response()
}

fn stub_router(stub: Stub) -> Router {
    async fn put_key(State(stub): State<Stub>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        stub.record(&uri, &headers);
        if headers.get(header::IF_MATCH).is_some_and(|tag| tag != "\"5\"") {
            return api_error(StatusCode::PRECONDITION_FAILED, "precondition_failed", None);
        }
        Json(WriteResult { index: body.len() as u64, term: 1 }).into_response()
    }
    async fn get_key(State(stub): State<Stub>, uri: Uri, headers: HeaderMap) -> Response {
        stub.record(&uri, &headers);
        match uri.path() {
            "/v1/kv/missing" => api_error(StatusCode::NOT_FOUND, "key_not_found", None),
            "/v1/kv/no-etag" => (StatusCode::OK, "value").into_response(),
            _ => (StatusCode::OK, [(header::ETAG, "\"7\"")], "value").into_response(),
        }
    }
    async fn cluster() -> Response {
        let leader = LeaderHint { id: 3, client_address: Some("http://127.0.0.1:8083".into()) };
        api_error(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", Some(leader))
    }
    async fn digest() -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
    }
    async fn snapshot() -> Response {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Json(SnapshotResult { index: 1, term: 1 }).into_response()
    }
    async fn leader(State(stub): State<Stub>, uri: Uri, headers: HeaderMap) -> Response {
        stub.record(&uri, &headers);
        match &stub.redirect_to {
            Some(target) => {
                (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target.clone())]).into_response()
            }
            None => Json(TransferResult { target: 2 }).into_response(),
        }
    }
    async fn list(State(stub): State<Stub>, uri: Uri, headers: HeaderMap) -> Response {
        stub.record(&uri, &headers);
        Json(KeyList { keys: Vec::new(), more: false }).into_response()
    }
    Router::new()
        .route("/v1/kv", get(list))
        .route("/v1/kv/{*key}", put(put_key).get(get_key))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/digest", get(digest))
        .route("/v1/cluster/snapshot", post(snapshot))
        .route("/v1/cluster/leader", post(leader))
        .with_state(stub)
}

/// Serves the stub on a loopback port and returns its base URL.
async fn serve(stub: Stub) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, stub_router(stub)).await });
    format!("http://{address}")
}

#[tokio::test]
async fn keys_values_and_preconditions_travel_as_the_api_says() {
    let stub = Stub::default();
    let client = Client::new(ClientOptions::new(serve(stub.clone()).await)).unwrap();

    let options =
        WriteOptions { if_match: Some(5), if_none_match: false, idempotency_key: Some("me/3".into()) };
    let written = client.put("dir/a b", Bytes::from_static(b"four"), options).await.unwrap();
    assert_eq!(written, WriteResult { index: 4, term: 1 });
    let seen = stub.seen();
    assert_eq!(seen[0].path_and_query, "/v1/kv/dir%2Fa%20b");
    assert_eq!(seen[0].headers[header::IF_MATCH], "\"5\"");
    assert_eq!(seen[0].headers[IDEMPOTENCY_KEY_HEADER], "me/3");

    let stale = WriteOptions { if_match: Some(6), ..WriteOptions::default() };
    let error = client.put("k", Bytes::new(), stale).await.unwrap_err();
    assert!(error.is_precondition_failed(), "{error}");

    let found = client.get("k", Consistency::Stale).await.unwrap();
    assert_eq!(found, Some((Bytes::from_static(b"value"), 7)));
    assert_eq!(stub.seen().last().unwrap().path_and_query, "/v1/kv/k?consistency=stale");
    assert_eq!(client.get("missing", Consistency::Linearizable).await.unwrap(), None);
    let error = client.get("no-etag", Consistency::Linearizable).await.unwrap_err().to_string();
    assert!(error.contains("ETag"), "{error}");

    client.list("a/b c", Some(10)).await.unwrap();
    assert_eq!(stub.seen().last().unwrap().path_and_query, "/v1/kv?prefix=a%2Fb%20c&limit=10");
}

#[tokio::test]
async fn error_bodies_become_api_errors_and_other_bodies_are_quoted() {
    let client = Client::new(ClientOptions::new(serve(Stub::default()).await)).unwrap();
    let error = client.cluster().await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(error.leader().and_then(|l| l.client_address.as_deref()), Some("http://127.0.0.1:8083"));
    assert!(error.to_string().contains("the leader is node 3"), "{error}");

    let error = client.digest().await.unwrap_err();
    assert!(matches!(error, ClientError::UnexpectedResponse { .. }), "{error:?}");
    assert!(error.to_string().contains("\"boom\""), "{error}");

    // An unknown route on the stub is a 404 without the JSON body: not "absent".
    let error = client.metrics_text().await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));
}

#[tokio::test]
async fn timeouts_and_refused_connections_say_what_happened() {
    let base = serve(Stub::default()).await;
    let options = ClientOptions { timeout: Duration::from_millis(200), ..ClientOptions::new(base.clone()) };
    let error = Client::new(options).unwrap().snapshot().await.unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
    assert!(error.to_string().contains("within 200 ms"), "{error}");

    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::new(ClientOptions::new(format!("http://{address}"))).unwrap();
    let error = client.health().await.unwrap_err();
    assert_eq!(error.to_string(), format!("connection refused: is a node running at http://{address}?"));
    assert!(error.is_retryable());
}

#[tokio::test]
async fn redirects_to_the_leader_are_followed_with_the_token() {
    let leader = Stub::default();
    let leader_base = serve(leader.clone()).await;
    let follower = Stub { redirect_to: Some(format!("{leader_base}/v1/cluster/leader")), ..Stub::default() };
    let follower_base = serve(follower.clone()).await;
    let options = ClientOptions {
        admin_token: Some("0123456789abcdef".into()),
        ..ClientOptions::new(follower_base.clone())
    };
    let client = Client::new(options.clone()).unwrap();
    assert_eq!(client.transfer_leader(Some(2)).await.unwrap(), TransferResult { target: 2 });
    assert_eq!(leader.seen()[0].headers[header::AUTHORIZATION], "Bearer 0123456789abcdef");
    assert_eq!(follower.seen().len(), 1);

    let not_following = Client::new(ClientOptions { follow_redirects: false, ..options }).unwrap();
    let error = not_following.transfer_leader(None).await.unwrap_err();
    assert!(matches!(error, ClientError::Redirect(_)), "{error:?}");

    // The same pool serves another node.
    let other = client.with_endpoint(&leader_base).unwrap();
    assert_eq!(other.endpoint(), leader_base);
    other.transfer_leader(None).await.unwrap();
}

/// Certificates of a test cluster, written to a directory.
struct TestPki {
    directory: tempfile::TempDir,
    ca: ClusterCa,
}

impl TestPki {
    fn new() -> TestPki {
        let directory = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(&ClusterId::new("clienttest").unwrap()).unwrap();
        ca.write_pem_files(directory.path()).unwrap();
        // Node 1 serves; node 2 is the client's certificate.
        for node in [1, 2] {
            ca.issue_node(NodeId(node), &["127.0.0.1".into()])
                .unwrap()
                .write_pem_files(directory.path())
                .unwrap();
        }
        TestPki { directory, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    /// Serves the stub over HTTPS with node 1's certificate, requiring a
    /// client certificate from the CA when asked.
    async fn serve_https(&self, require_client_certificate: bool) -> String {
        use rustls::server::WebPkiClientVerifier;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain =
            CertificateDer::pem_file_iter(self.path("node-1.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(self.path("node-1.key")).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_certificate {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(self.ca.certificate_pem().as_bytes()).unwrap()).unwrap();
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = stub_router(Stub::default());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        format!("https://{address}")
    }
}

#[tokio::test]
async fn https_needs_the_cluster_ca_and_explains_why() {
    let pki = TestPki::new();
    let base = pki.serve_https(false).await;

    let error = Client::new(ClientOptions::new(base.clone())).unwrap().list("", None).await.unwrap_err();
    assert!(matches!(error, ClientError::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("--ca"), "{error}");

    let trusted = ClientOptions { ca: Some(pki.path("ca.pem")), ..ClientOptions::new(base.clone()) };
    Client::new(trusted).unwrap().list("", None).await.unwrap();

    // Plain HTTP to an HTTPS node: the hint says so.
    let plain = base.replace("https://", "http://");
    let error = Client::new(ClientOptions::new(plain)).unwrap().list("", None).await.unwrap_err();
    assert!(error.to_string().contains("https://"), "{error}");
}

#[tokio::test]
async fn client_certificates_are_presented_and_their_absence_explained() {
    let pki = TestPki::new();
    let base = pki.serve_https(true).await;
    let trusted = ClientOptions { ca: Some(pki.path("ca.pem")), ..ClientOptions::new(base) };

    let error = Client::new(trusted.clone()).unwrap().list("", None).await.unwrap_err();
    assert!(matches!(error, ClientError::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("--cert and --key"), "{error}");

    let with_certificate = ClientOptions {
        client_cert: Some(pki.path("node-2.pem")),
        client_key: Some(pki.path("node-2.key")),
        ..trusted
    };
    Client::new(with_certificate).unwrap().list("", None).await.unwrap();
}
