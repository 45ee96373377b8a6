//! Prometheus metrics for the Raft node: names and descriptions
//! ([`names`]), typed recording helpers ([`NodeMetrics`]) and the exporter
//! ([`install_prometheus`]).
//!
//! The `metrics` facade's recorder is process-global. The node installs the
//! Prometheus recorder once with [`install_prometheus`], keeps the returned
//! [`PrometheusHandle`] and serves `GET /metrics` with
//! [`PrometheusHandle::render`]; this crate never opens a listener. Tests
//! that must not touch the global recorder build one with
//! [`build_prometheus_recorder`] and record inside
//! [`metrics::with_local_recorder`]. Every series carries a `node` label, so
//! several nodes in one process stay apart.
//!
//! # How the node uses it
//!
//! ```
//! use std::time::{Duration, Instant};
//! use raft_core::types::NodeId;
//! use raft_metrics::{NodeMetrics, PeerTransportFigures, TransportFigures};
//!
//! # let recorder = raft_metrics::build_prometheus_recorder().unwrap();
//! # let handle = recorder.handle();
//! # metrics::with_local_recorder(&recorder, || {
//! // At start-up (in the node: `let handle = raft_metrics::install_prometheus()?;`).
//! raft_metrics::describe_all();
//! let metrics = NodeMetrics::new(NodeId(1));
//! // On every status change (`RaftNode::status()` watch) and every few
//! // seconds: `metrics.record_status(&status.borrow())`, plus
//! // `metrics.record_engine_stats(&stats)` with the engine's cumulative figures.
//! // Every few seconds, from the transport's stats:
//! metrics.record_transport(&TransportFigures {
//!     peers: vec![PeerTransportFigures {
//!         peer: NodeId(2),
//!         connected: true,
//!         round_trip_time: Some(Duration::from_micros(250)),
//!         bytes_sent: 4096,
//!         errors: vec![("dial_failure", 0)],
//!         ..PeerTransportFigures::default()
//!     }],
//!     ..TransportFigures::default()
//! });
//! // On the hot paths:
//! let started = Instant::now();
//! metrics.observe_storage_append(8, started.elapsed());
//! metrics.observe_propose_to_commit(started.elapsed());
//! # });
//! // `GET /metrics` answers `handle.render()` with content type
//! // `text/plain; version=0.0.4`.
//! assert!(handle.render().contains("raft_peer_reachable{node=\"1\",peer=\"2\"} 1"));
//! ```
//!
//! The crate ships a Grafana dashboard (`grafana/raft-dashboard.json`) and
//! Prometheus alert rules with their unit tests (`prometheus/alerts.yml`,
//! `prometheus/alerts_test.yml`).
#![deny(missing_docs)]

pub mod names;
mod node;
mod process;

pub use node::{NodeMetrics, PeerTransportFigures, TransportFigures};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
pub use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

use names::{MetricKind, ALL};

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Another recorder is already installed in this process.
    #[error("a metrics recorder is already installed in this process")]
    AlreadyInstalled,
    /// The exporter refused its configuration.
    #[error("the Prometheus exporter refused its configuration: {0}")]
    Exporter(String),
}

impl From<BuildError> for MetricsError {
    fn from(error: BuildError) -> Self {
        match error {
            BuildError::FailedToSetGlobalRecorder(_) => MetricsError::AlreadyInstalled,
            other => MetricsError::Exporter(other.to_string()),
        }
    }
}

/// Registers every metric's HELP text and unit with the current recorder
/// (the global one, or the local one inside
/// [`metrics::with_local_recorder`]).
pub fn describe_all() {
    for description in ALL {
        let name = description.name;
        let help = description.help;
        match (description.kind, description.unit) {
            (MetricKind::Counter, Some(unit)) => describe_counter!(name, unit, help),
            (MetricKind::Counter, None) => describe_counter!(name, help),
            (MetricKind::Gauge, Some(unit)) => describe_gauge!(name, unit, help),
            (MetricKind::Gauge, None) => describe_gauge!(name, help),
            (MetricKind::Histogram, Some(unit)) => describe_histogram!(name, unit, help),
            (MetricKind::Histogram, None) => describe_histogram!(name, help),
        }
    }
}

/// Histogram buckets, in the histogram's unit.
pub mod buckets {
    /// Fast disk and network operations: fsync, round trips (50 µs to 1 s).
    pub const FAST_SECONDS: &[f64] =
        &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
    /// Consensus round trips: propose to commit, ReadIndex, apply, HTTP
    /// (100 µs to 10 s).
    pub const REQUEST_SECONDS: &[f64] = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    /// Snapshots (10 ms to 10 min).
    pub const SNAPSHOT_SECONDS: &[f64] =
        &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
    /// Entries per append batch (1 to 4096, powers of two).
    pub const BATCH_ENTRIES: &[f64] =
        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

    /// The buckets for the histogram `name` (every histogram in
    /// [`crate::names::ALL`] has its own; others get [`REQUEST_SECONDS`]).
    pub fn for_metric(name: &str) -> &'static [f64] {
        use crate::names;
        match name {
            names::STORAGE_APPEND_SECONDS | names::PEER_RTT_SECONDS => FAST_SECONDS,
            names::STORAGE_APPEND_BATCH_ENTRIES => BATCH_ENTRIES,
            names::SNAPSHOT_DURATION_SECONDS => SNAPSHOT_SECONDS,
            _ => REQUEST_SECONDS,
        }
    }
}

/// A Prometheus builder without listener, with buckets for every histogram.
fn prometheus_builder() -> Result<PrometheusBuilder, MetricsError> {
    let mut builder = PrometheusBuilder::new();
    for description in ALL.iter().filter(|d| d.kind == MetricKind::Histogram) {
        builder = builder.set_buckets_for_metric(
            Matcher::Full(description.name.to_owned()),
            buckets::for_metric(description.name),
        )?;
    }
    Ok(builder)
}

/// Builds a Prometheus recorder configured for these metrics without
/// installing it: for tests, with [`metrics::with_local_recorder`].
pub fn build_prometheus_recorder() -> Result<PrometheusRecorder, MetricsError> {
    Ok(prometheus_builder()?.build_recorder())
}

/// Installs the Prometheus recorder as the process-global recorder,
/// and registers every description ([`describe_all`]).
///
/// No HTTP listener is opened: serve `handle.render()` on `/metrics`. Call
/// [`PrometheusHandle::run_upkeep`] every few seconds (or use
/// [`spawn_upkeep`]) so histograms do not grow between scrapes.
///
/// Fails with [`MetricsError::AlreadyInstalled`] if a recorder is already
/// installed in the process.
pub fn install_prometheus() -> Result<PrometheusHandle, MetricsError> {
    let handle = prometheus_builder()?.install_recorder()?;
    describe_all();
    Ok(handle)
}

/// Runs [`PrometheusHandle::run_upkeep`] every `interval` on a background
/// thread for the life of the process.
pub fn spawn_upkeep(
    handle: PrometheusHandle,
    interval: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(interval);
        handle.run_upkeep();
    })
}

/// Seconds since the Unix epoch, for `raft_process_start_time_seconds`.
pub(crate) fn unix_time_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs_f64()).unwrap_or(0.0)
}
