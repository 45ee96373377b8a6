//! The clients: each sends one request at a time (a linearizable read, a
//! write, or a read followed by a compare-and-set through `If-Match`) on a
//! small set of keys, to a random node, and records what it learnt.
//!
//! Keys rotate: after `keys × ops_per_key` operations the clients move on
//! to fresh keys, so that no key's history grows past what the
//! linearizability checker decides quickly, however long the run.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use raft_core::testing::linearizability::{Op, Outcome};
use reqwest::header;
use tokio::sync::watch;

use crate::history::{classify, Answer, Record, Request, FINAL_CLIENT};
use crate::rng::Rng;

/// How long a client waits for an answer. Longer than a node's own
/// request timeout (5 s) plus a forward, so that a node's verdict (a 504,
/// say) usually arrives before the client gives up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a client waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A pause after a failed request, so that clients do not spin against a
/// dead node; it paces the load, it synchronises nothing.
const BACKOFF: Duration = Duration::from_millis(50);

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the HTTP client failed: {0}")]
pub struct HttpClientError(String);

/// An HTTP client for plain-HTTP node APIs.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, HttpClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpClientError(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(8)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| HttpClientError(e.to_string()))
}

/// Where the clients' records go; shared by every client.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    /// Every record; grows with the run (about 100 bytes per operation),
    /// which is the point: the whole history is the product.
    records: Mutex<Vec<Record>>,
    keys: Mutex<BTreeSet<u64>>,
    operations: AtomicU64,
    next_value: AtomicU64,
}

impl Recorder {
    /// A recorder whose clock starts at `started`.
    pub fn new(started: Instant) -> Recorder {
        Recorder {
            started,
            records: Mutex::new(Vec::new()),
            keys: Mutex::new(BTreeSet::new()),
            operations: AtomicU64::new(0),
            next_value: AtomicU64::new(1),
        }
    }

    /// Microseconds since the start of the run.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn push(&self, record: Record) {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).insert(record.key);
        self.records.lock().unwrap_or_else(PoisonError::into_inner).push(record);
    }

    /// A value no write has written yet.
    fn unique_value(&self) -> u64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    /// Every key touched so far.
    pub fn keys(&self) -> Vec<u64> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }

    /// The records, by value, sorted by invoke time.
    pub fn records(&self) -> Vec<Record> {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner).clone();
        records.sort_by_key(|r| r.invoke_us);
        records
    }

    /// Operations started so far.
    pub fn operations(&self) -> u64 {
        self.operations.load(Ordering::Relaxed)
    }
}

/// The workload's shape.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// Keys in use at a time.
    pub keys: u64,
    /// Operations per key before the clients move to fresh keys.
    pub ops_per_key: u64,
    /// Percent of operations that are reads (the rest split between
    /// writes and compare-and-sets).
    pub read_percent: u64,
    /// Percent that are compare-and-sets.
    pub cas_percent: u64,
}

/// The nodes clients may talk to: `(id, base URL)`, updated as members
/// come and go.
pub type Targets = Arc<RwLock<Vec<(u64, String)>>>;

/// One client's loop: runs until `stop` turns true.
pub async fn client(
    id: u64,
    mut rng: Rng,
    http: reqwest::Client,
    targets: Targets,
    recorder: Arc<Recorder>,
    mix: Mix,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let sequence = recorder.operations.fetch_add(1, Ordering::Relaxed);
        let generation = sequence / (mix.keys * mix.ops_per_key).max(1);
        let key = generation * mix.keys + rng.below(mix.keys);
        let Some((node, url)) = pick(&targets, &mut rng) else {
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        let roll = rng.below(100);
        let outcome = if roll < mix.read_percent {
            read(&http, &recorder, id, node, &url, key).await.0
        } else if roll < mix.read_percent + mix.cas_percent {
            let (outcome, version) = read(&http, &recorder, id, node, &url, key).await;
            match (outcome, version) {
                (Outcome::Read(expected), version) => {
                    let (node, url) = pick(&targets, &mut rng).unwrap_or((node, url));
                    let new = recorder.unique_value();
                    let precondition = match version {
                        Some(version) if expected.is_some() => (header::IF_MATCH, format!("\"{version}\"")),
                        _ => (header::IF_NONE_MATCH, "*".to_string()),
                    };
                    let op = Op::Cas { expected, new: Some(new) };
                    write(&http, &recorder, id, node, &url, key, op, Some(precondition)).await
                }
                (other, _) => other,
            }
        } else {
            let op = Op::Write(recorder.unique_value());
            write(&http, &recorder, id, node, &url, key, op, None).await
        };
        if !outcome.is_definite() {
            tokio::select! {
                _ = tokio::time::sleep(BACKOFF) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

fn pick(targets: &Targets, rng: &mut Rng) -> Option<(u64, String)> {
    let targets = targets.read().unwrap_or_else(PoisonError::into_inner);
    if targets.is_empty() {
        return None;
    }
    Some(targets[rng.below(targets.len() as u64) as usize].clone())
}

/// What a request's answer says, read off a reqwest result.
async fn answer(
    result: Result<reqwest::Response, reqwest::Error>,
) -> (Answer, Option<bytes::Bytes>, Option<u64>, String) {
    match result {
        Err(error) if error.is_connect() => (Answer::ConnectFailed, None, None, format!("connect: {error}")),
        Err(error) => (Answer::Lost, None, None, format!("{error}")),
        Ok(response) => {
            let status = response.status().as_u16();
            let version = response
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim_matches('"').parse::<u64>().ok());
            match response.bytes().await {
                Err(error) => (Answer::Lost, None, None, format!("{status}, body lost: {error}")),
                Ok(body) => {
                    let code = if (200..300).contains(&status) {
                        None
                    } else {
                        serde_json::from_slice::<raft_node::api::ErrorBody>(&body).ok().map(|e| e.error.code)
                    };
                    let detail = match &code {
                        Some(code) => format!("{status} {code}"),
                        None => status.to_string(),
                    };
                    (Answer::Status { status, code }, Some(body), version, detail)
                }
            }
        }
    }
}

/// A linearizable read; returns the outcome and the version (ETag) read.
pub async fn read(
    http: &reqwest::Client,
    recorder: &Recorder,
    client: u64,
    node: u64,
    url: &str,
    key: u64,
) -> (Outcome, Option<u64>) {
    let invoke_us = recorder.now_us();
    let result = http.get(format!("{url}/v1/kv/k{key}")).send().await;
    let (answer, body, version, detail) = answer(result).await;
    let complete_us = recorder.now_us();
    let outcome = match (&answer, body) {
        (Answer::Status { status: 200, .. }, Some(body)) => {
            // A value that is not a number was never written by any
            // client: it is recorded as one no write has, so the check
            // fails on it.
            let value = std::str::from_utf8(&body).ok().and_then(|text| text.parse::<u64>().ok());
            Outcome::Read(Some(value.unwrap_or(u64::MAX)))
        }
        (Answer::Status { status: 404, code: Some(code) }, _) if code == "key_not_found" => {
            classify(Request::Read, &answer, None)
        }
        _ => Outcome::Indeterminate,
    };
    recorder.push(Record {
        client,
        node,
        key,
        op: Op::Read,
        invoke_us,
        complete_us: Some(complete_us),
        outcome,
        detail,
    });
    (outcome, version)
}

#[allow(clippy::too_many_arguments)]
async fn write(
    http: &reqwest::Client,
    recorder: &Recorder,
    client: u64,
    node: u64,
    url: &str,
    key: u64,
    op: Op,
    precondition: Option<(header::HeaderName, String)>,
) -> Outcome {
    let value = match op {
        Op::Write(value) | Op::Cas { new: Some(value), .. } => value,
        _ => 0,
    };
    let mut request = http.put(format!("{url}/v1/kv/k{key}")).body(value.to_string());
    if let Some((name, text)) = &precondition {
        request = request.header(name, text);
    }
    let invoke_us = recorder.now_us();
    let result = request.send().await;
    let (answer, _, _, detail) = answer(result).await;
    let complete_us = recorder.now_us();
    let kind = if precondition.is_some() { Request::Cas } else { Request::Write };
    let outcome = classify(kind, &answer, None);
    recorder.push(Record {
        client,
        node,
        key,
        op,
        invoke_us,
        complete_us: Some(complete_us),
        outcome,
        detail,
    });
    outcome
}

/// After the faults: reads every key until a read succeeds (or `deadline`
/// passes), through the nodes in `targets` in turn. Every attempt is
/// recorded.
pub async fn final_reads(
    http: &reqwest::Client,
    targets: &[(u64, String)],
    recorder: &Recorder,
    deadline: Instant,
) {
    if targets.is_empty() {
        return;
    }
    let mut turn = 0usize;
    for key in recorder.keys() {
        loop {
            let (node, url) = &targets[turn % targets.len()];
            turn += 1;
            let (outcome, _) = read(http, recorder, FINAL_CLIENT, *node, url, key).await;
            if outcome.is_definite() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }
}
