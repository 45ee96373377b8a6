//! Side-by-side benchmark: a 3-node raft-node cluster and a 3-member etcd
//! cluster (Debian's `etcd-server`), started one after the other on this
//! machine and driven by the same HTTP load generator.
//!
//! Run through `cargo xtask bench` (which builds raft-node in release
//! first), or directly:
//!
//! ```text
//! cargo run --release -p raft-node --example bench_cluster -- \
//!     --raft-node target/release/raft-node --seconds 10 --failover-trials 200
//! ```
//!
//! It measures the machine's own floor first (4 KiB write + fdatasync, TCP
//! loopback round trip), then for each system: writes of 256-byte values
//! at 1, 16, 64 and 256 connections (throughput, p50, p99), linearizable
//! reads at 64 connections, and the leader's peak RSS after the
//! 256-connection writes. Each connection is one HTTP/1.1 keep-alive
//! connection with one request in flight, aimed at the leader. Then, on a
//! fresh cluster of each system with 150–300 ms election timeouts (15 ms
//! heartbeats, pre-vote on), the failover time after `kill -9` of the
//! leader over many trials (see `failover.rs`).
//!
//! The report is printed as Markdown with the ratios to etcd and written
//! with SVG plots (throughput against connections, latency CDFs at 64
//! connections, failover CDFs) into `--report-dir` (default
//! `target/bench`).

#[path = "bench_cluster/cluster.rs"]
mod cluster;
#[path = "bench_cluster/failover.rs"]
mod failover;
#[path = "bench_cluster/probes.rs"]
mod probes;
#[path = "bench_cluster/report.rs"]
mod report;
#[path = "../../raft-core/examples/support/svg.rs"]
mod svg;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use cluster::{Cluster, Timing};
use failover::FailoverResults;

/// The value size of every write.
const VALUE_BYTES: usize = 256;
/// Keys each connection cycles through (bounds the state's size).
const KEYS_PER_CONNECTION: u64 = 1_000;
/// The longest the fill (every key written once) may take.
const FILL_TIME_LIMIT: Duration = Duration::from_secs(600);
/// The failover phase's timing for both systems: 15 ms heartbeats and a
/// 150 ms minimum election timeout, randomised in [150, 300) ms by both
/// (raft-node's defaults).
const FAILOVER_TIMING: Timing = Timing { heartbeat_ms: 15, election_timeout_ms: 150 };

struct Options {
    raft_node: PathBuf,
    seconds: u64,
    connections: Vec<usize>,
    read_connections: usize,
    failover_trials: usize,
    skip_etcd: bool,
    skip_load: bool,
    work_dir: PathBuf,
    report_dir: PathBuf,
}

const USAGE: &str = "usage: bench_cluster [--raft-node PATH] [--seconds N] [--connections 1,16,64,256] \
                     [--read-connections 64] [--failover-trials 200] [--skip-load] [--skip-etcd] \
                     [--work-dir DIR] [--report-dir DIR]";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        raft_node: PathBuf::from("target/release/raft-node"),
        seconds: 10,
        connections: vec![1, 16, 64, 256],
        read_connections: 64,
        failover_trials: 200,
        skip_etcd: false,
        skip_load: false,
        work_dir: PathBuf::from("target/bench-cluster"),
        report_dir: PathBuf::from("target/bench"),
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let mut value = || arguments.next().ok_or_else(|| format!("{argument} needs a value"));
        match argument.as_str() {
            "--raft-node" => options.raft_node = PathBuf::from(value()?),
            "--seconds" => options.seconds = value()?.parse().map_err(|_| "--seconds takes a number")?,
            "--connections" => {
                options.connections = value()?
                    .split(',')
                    .map(|c| c.parse().map_err(|_| format!("bad connection count {c:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--read-connections" => {
                options.read_connections =
                    value()?.parse().map_err(|_| "--read-connections takes a number")?
            }
            "--failover-trials" => {
                options.failover_trials = value()?.parse().map_err(|_| "--failover-trials takes a number")?
            }
            "--work-dir" => options.work_dir = PathBuf::from(value()?),
            "--report-dir" => options.report_dir = PathBuf::from(value()?),
            "--skip-etcd" => options.skip_etcd = true,
            "--skip-load" => options.skip_load = true,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(options)
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(options)) {
        Ok(report) => println!("{report}"),
        Err(message) => {
            eprintln!("bench failed: {message}");
            std::process::exit(1);
        }
    }
}

/// One load run's figures.
#[derive(Clone, Debug, Default)]
struct Figures {
    operations: u64,
    errors: u64,
    seconds: f64,
    p50_micros: u64,
    p99_micros: u64,
    /// The latency distribution as (ms, percent) points, for plots.
    latency_cdf_ms: Vec<(f64, f64)>,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.operations as f64 / self.seconds
    }
}

/// One system's results.
#[derive(Default)]
struct SystemResults {
    writes: Vec<(usize, Figures)>,
    reads: Figures,
    leader_peak_rss_bytes: u64,
    /// Keys written once before the timed runs.
    filled_keys: u64,
    failover: Option<FailoverResults>,
}

/// The machine's own figures, measured before the systems run.
struct Machine {
    /// One writer's synced 4 KiB write.
    fsync: Figures,
    /// The same with three writers at once, as the three members of a
    /// cluster on this one disk persist an entry.
    fsync_three_writers: Figures,
    /// TCP loopback round trip (the HTTP client's).
    rtt: Figures,
    /// Round trip of an AppendEntries through raft-node's QUIC transport.
    transport_rtt: Figures,
    load_average: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    RaftNode,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::RaftNode => "raft-node",
            System::Etcd => "etcd",
        }
    }
}

async fn run(options: Options) -> Result<String, String> {
    if options.work_dir.exists() {
        std::fs::remove_dir_all(&options.work_dir).map_err(|e| format!("clearing the work dir: {e}"))?;
    }
    std::fs::create_dir_all(&options.work_dir).map_err(|e| format!("creating the work dir: {e}"))?;
    let load_before = load_average();
    let fsync = probes::fdatasync_latency(&options.work_dir, 1)?;
    let fsync_three_writers = probes::fdatasync_latency(&options.work_dir, 3)?;
    let rtt = probes::tcp_round_trip()?;
    let transport_rtt = probes::transport_round_trip().await?;
    eprintln!(
        "machine: fdatasync p50 {} µs (three writers at once {} µs), TCP loopback RTT p50 {} µs, \
         QUIC transport RTT p50 {} µs",
        fsync.p50_micros, fsync_three_writers.p50_micros, rtt.p50_micros, transport_rtt.p50_micros
    );

    let mut raft = SystemResults::default();
    let mut etcd = (!options.skip_etcd).then(SystemResults::default);
    if !options.skip_load {
        raft = measure_system(&options, System::RaftNode).await?;
        if let Some(etcd) = etcd.as_mut() {
            *etcd = measure_system(&options, System::Etcd).await?;
        }
    }
    if options.failover_trials > 0 {
        raft.failover = Some(measure_failover(&options, System::RaftNode).await?);
        if let Some(etcd) = etcd.as_mut() {
            etcd.failover = Some(measure_failover(&options, System::Etcd).await?);
        }
    }
    let machine = Machine {
        fsync,
        fsync_three_writers,
        rtt,
        transport_rtt,
        load_average: format!("{load_before} before, {} after", load_average()),
    };
    let markdown = report::markdown(&options, &machine, &raft, etcd.as_ref());
    report::write(&options, &markdown, &raft, etcd.as_ref())?;
    Ok(markdown)
}

/// Starts a fresh cluster of `system` with default settings and runs the
/// load phase on it.
async fn measure_system(options: &Options, system: System) -> Result<SystemResults, String> {
    let directory = options.work_dir.join(system.name());
    let cluster = match system {
        System::RaftNode => Cluster::raft_node(&options.raft_node, &directory, None)?,
        System::Etcd => Cluster::etcd(&directory, None)?,
    };
    let leader = cluster.agreed_leader(Duration::from_secs(30))?;
    let pid = cluster.pid(leader).ok_or("the leader is not running")?;
    measure(options, &cluster.client_urls[leader], system, pid).await
}

/// Starts a fresh cluster of `system` with the failover timing and runs
/// the kill-and-restart trials on it.
async fn measure_failover(options: &Options, system: System) -> Result<FailoverResults, String> {
    let directory = options.work_dir.join(format!("{}-failover", system.name()));
    let mut cluster = match system {
        System::RaftNode => Cluster::raft_node(&options.raft_node, &directory, Some(FAILOVER_TIMING))?,
        System::Etcd => Cluster::etcd(&directory, Some(FAILOVER_TIMING))?,
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(16);
    failover::failover(&mut cluster, options.failover_trials, seed).await
}

/// The 1-minute load average, as /proc/loadavg writes it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

async fn measure(
    options: &Options,
    target: &str,
    system: System,
    leader_pid: u32,
) -> Result<SystemResults, String> {
    let name = system.name();
    let mut results = SystemResults::default();
    let duration = Duration::from_secs(options.seconds);
    // Every key the runs use is written once first, so both systems hold
    // the same state whatever their throughput: without this, the faster
    // system reaches more of the key set in the timed runs and its RSS
    // grows with the data, not with its overhead.
    let fill_connections = options.connections.iter().copied().max().unwrap_or(1);
    let fill =
        load(target, system, Workload::Write, fill_connections, FILL_TIME_LIMIT, Some(KEYS_PER_CONNECTION))
            .await?;
    let keys = fill_connections as u64 * KEYS_PER_CONNECTION;
    if fill.operations != keys {
        return Err(format!(
            "{name}: the fill wrote {} of {keys} keys ({} errors)",
            fill.operations, fill.errors
        ));
    }
    eprintln!("{name}: filled {keys} keys in {:.1} s", fill.seconds);
    results.filled_keys = keys;
    // A short warm-up: connections, allocator, the leader's first snapshot.
    load(target, system, Workload::Write, 16, Duration::from_secs(2), None).await?;
    for &connections in &options.connections {
        let figures = load(target, system, Workload::Write, connections, duration, None).await?;
        eprintln!(
            "{name}: write  {connections:>4} connections: {:>9.0}/s p50 {:>6} µs p99 {:>6} µs ({} errors)",
            figures.per_second(),
            figures.p50_micros,
            figures.p99_micros,
            figures.errors
        );
        results.writes.push((connections, figures));
    }
    results.leader_peak_rss_bytes = peak_rss_bytes(leader_pid)?;
    let reads = load(target, system, Workload::Read, options.read_connections, duration, None).await?;
    eprintln!(
        "{name}: read   {:>4} connections: {:>9.0}/s p50 {:>6} µs p99 {:>6} µs ({} errors)",
        options.read_connections,
        reads.per_second(),
        reads.p50_micros,
        reads.p99_micros,
        reads.errors
    );
    results.reads = reads;
    Ok(results)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Write,
    Read,
}

/// One keep-alive HTTP/1.1 connection driven by hyper's low-level client:
/// the lightest load generator at hand, so the machine's two cores go to
/// the systems under test rather than to the generator.
async fn connect(target: &str) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let address = target.strip_prefix("http://").ok_or("the target must be an http:// URL")?;
    let stream =
        tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connecting to {address}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {address}: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Runs `connections` loops, each with one request in flight, for
/// `duration` or until each loop has answered `operations_per_connection`
/// requests, whichever comes first.
async fn load(
    target: &str,
    system: System,
    workload: Workload,
    connections: usize,
    duration: Duration,
    operations_per_connection: Option<u64>,
) -> Result<Figures, String> {
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let value_base64 = base64(&value);
    let authority = target.strip_prefix("http://").unwrap_or(target).to_string();
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let mut sender = connect(target).await?;
        let target = target.to_string();
        let value = value.clone();
        let value_base64 = value_base64.clone();
        let authority = authority.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            let mut sequence = 0u64;
            while Instant::now() < end && operations_per_connection.is_none_or(|limit| sequence < limit) {
                let key = format!("bench-{connection}-{}", sequence % KEYS_PER_CONNECTION);
                sequence += 1;
                let (method, path, body) = match (system, workload) {
                    (System::RaftNode, Workload::Write) => ("PUT", format!("/v1/kv/{key}"), value.clone()),
                    // Reads cycle over keys the write runs created.
                    (System::RaftNode, Workload::Read) => ("GET", format!("/v1/kv/{key}"), Bytes::new()),
                    (System::Etcd, Workload::Write) => (
                        "POST",
                        "/v3/kv/put".to_string(),
                        Bytes::from(format!(
                            "{{\"key\":\"{}\",\"value\":\"{value_base64}\"}}",
                            base64(key.as_bytes())
                        )),
                    ),
                    (System::Etcd, Workload::Read) => (
                        "POST",
                        "/v3/kv/range".to_string(),
                        Bytes::from(format!("{{\"key\":\"{}\"}}", base64(key.as_bytes()))),
                    ),
                };
                let request = hyper::Request::builder()
                    .method(method)
                    .uri(path)
                    .header(hyper::header::HOST, authority.as_str())
                    .body(Full::new(body))
                    .expect("a valid request");
                let sent = Instant::now();
                let failure = match sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        match response.into_body().collect().await {
                            Ok(_) if status.is_success() || status.as_u16() == 404 => None,
                            Ok(body) => {
                                Some(format!("{status}: {}", String::from_utf8_lossy(&body.to_bytes())))
                            }
                            Err(error) => Some(format!("reading the answer: {error}")),
                        }
                    }
                    Err(error) => Some(format!("sending: {error}")),
                };
                match failure {
                    None => latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Some(failure) => {
                        // The first failures of each connection tell what went wrong.
                        if errors < 2 {
                            eprintln!("request failed: {failure}");
                        }
                        errors += 1;
                        // A broken connection is replaced.
                        if sender.is_closed() {
                            match connect(&target).await {
                                Ok(fresh) => sender = fresh,
                                Err(_) => break,
                            }
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut part, part_errors) = task.await.map_err(|e| format!("a load task failed: {e}"))?;
        latencies.append(&mut part);
        errors += part_errors;
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(Figures {
        operations: latencies.len() as u64,
        errors,
        seconds,
        p50_micros: percentile(&latencies, 0.50),
        p99_micros: percentile(&latencies, 0.99),
        latency_cdf_ms: latency_cdf_ms(&latencies),
    })
}

/// The latency CDF in ms, thinned for a plot.
fn latency_cdf_ms(sorted_micros: &[u32]) -> Vec<(f64, f64)> {
    let step = sorted_micros.len().div_ceil(2_000).max(1);
    let thinned: Vec<f64> = sorted_micros.iter().step_by(step).map(|&us| f64::from(us) / 1000.0).collect();
    svg::cdf_points(&thinned, 300)
}

fn percentile(sorted: &[u32], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len());
    u64::from(sorted[rank - 1])
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The peak resident set (VmHWM) of a process, in bytes.
fn peak_rss_bytes(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("process {pid}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no VmHWM for process {pid}"))
}
