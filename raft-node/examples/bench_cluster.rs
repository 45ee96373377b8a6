//! Side-by-side benchmark: a 3-node raft-node cluster and a 3-member etcd
//! cluster (Debian's `etcd-server`), started one after the other on this
//! machine and driven by the same HTTP load generator.
//!
//! Run through `cargo xtask bench` (which builds raft-node in release
//! first), or directly:
//!
//! ```text
//! cargo run --release -p raft-node --example bench_cluster -- \
//!     --raft-node target/release/raft-node --seconds 10
//! ```
//!
//! It measures the machine's own floor first (4 KiB write + fdatasync, TCP
//! loopback round trip), then for each system: writes of 256-byte values
//! at 1, 16, 64 and 256 connections (throughput, p50, p99), linearizable
//! reads at 64 connections, and the leader's peak RSS after the
//! 256-connection writes. Each connection is one HTTP/1.1 keep-alive
//! connection with one request in flight, aimed at the leader. The report
//! is printed as Markdown with the ratios to etcd.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use raft_core::types::NodeId;
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::ClusterId;

/// The value size of every write.
const VALUE_BYTES: usize = 256;
/// Keys each connection cycles through (bounds the state's size).
const KEYS_PER_CONNECTION: u64 = 1_000;

struct Options {
    raft_node: PathBuf,
    seconds: u64,
    connections: Vec<usize>,
    read_connections: usize,
    skip_etcd: bool,
    work_dir: PathBuf,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        raft_node: PathBuf::from("target/release/raft-node"),
        seconds: 10,
        connections: vec![1, 16, 64, 256],
        read_connections: 64,
        skip_etcd: false,
        work_dir: PathBuf::from("target/bench-cluster"),
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
            "--work-dir" => options.work_dir = PathBuf::from(value()?),
            "--skip-etcd" => options.skip_etcd = true,
            "--help" | "-h" => {
                return Err(
                    "usage: bench_cluster [--raft-node PATH] [--seconds N] [--connections 1,16,64,256] \
                            [--read-connections 64] [--work-dir DIR] [--skip-etcd]"
                        .into(),
                )
            }
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
}

async fn run(options: Options) -> Result<String, String> {
    if options.work_dir.exists() {
        std::fs::remove_dir_all(&options.work_dir).map_err(|e| format!("clearing the work dir: {e}"))?;
    }
    std::fs::create_dir_all(&options.work_dir).map_err(|e| format!("creating the work dir: {e}"))?;
    let fsync = fdatasync_latency(&options.work_dir.join("fsync-probe"))?;
    let rtt = tcp_round_trip()?;
    eprintln!("machine: fdatasync p50 {} µs, TCP loopback RTT p50 {} µs", fsync.p50_micros, rtt.p50_micros);

    let raft = {
        let cluster = RaftCluster::start(&options)?;
        let results = measure(&options, &cluster.target()?, System::RaftNode, cluster.leader_pid()?).await?;
        drop(cluster);
        results
    };
    let etcd = if options.skip_etcd {
        None
    } else {
        let cluster = EtcdCluster::start(&options)?;
        let target = cluster.target().await?;
        let pid = cluster.leader_pid(&target)?;
        let results = measure(&options, &target, System::Etcd, pid).await?;
        drop(cluster);
        Some(results)
    };
    Ok(report(&options, &fsync, &rtt, &raft, etcd.as_ref()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    RaftNode,
    Etcd,
}

async fn measure(
    options: &Options,
    target: &str,
    system: System,
    leader_pid: u32,
) -> Result<SystemResults, String> {
    let name = if system == System::RaftNode { "raft-node" } else { "etcd" };
    let mut results = SystemResults::default();
    let duration = Duration::from_secs(options.seconds);
    // A short warm-up: connections, allocator, the leader's first snapshot.
    load(target, system, Workload::Write, 16, Duration::from_secs(2)).await?;
    for &connections in &options.connections {
        let figures = load(target, system, Workload::Write, connections, duration).await?;
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
    let reads = load(target, system, Workload::Read, options.read_connections, duration).await?;
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

/// Runs `connections` loops, each with one request in flight, for `duration`.
async fn load(
    target: &str,
    system: System,
    workload: Workload,
    connections: usize,
    duration: Duration,
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
            while Instant::now() < end {
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
    })
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

/// p50 / p99 of a 4 KiB overwrite followed by fdatasync, 2,000 times.
fn fdatasync_latency(path: &Path) -> Result<Figures, String> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).map_err(|e| format!("fsync probe: {e}"))?;
    let block = vec![7u8; 4096];
    let mut latencies = Vec::new();
    for round in 0..2_000u64 {
        let started = Instant::now();
        file.write_all_at(&block, (round % 16) * 4096).map_err(|e| format!("fsync probe: {e}"))?;
        file.sync_data().map_err(|e| format!("fsync probe: {e}"))?;
        latencies.push(started.elapsed().as_micros() as u32);
    }
    latencies.sort_unstable();
    Ok(Figures {
        operations: latencies.len() as u64,
        p50_micros: percentile(&latencies, 0.5),
        p99_micros: percentile(&latencies, 0.99),
        ..Figures::default()
    })
}

/// p50 / p99 of a 64-byte TCP ping-pong on loopback, 10,000 times.
fn tcp_round_trip() -> Result<Figures, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_nodelay(true);
            let mut buffer = [0u8; 64];
            while stream.read_exact(&mut buffer).is_ok() {
                if stream.write_all(&buffer).is_err() {
                    break;
                }
            }
        }
    });
    let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buffer = [1u8; 64];
    let mut latencies = Vec::new();
    for _ in 0..10_000 {
        let started = Instant::now();
        stream.write_all(&buffer).map_err(|e| e.to_string())?;
        stream.read_exact(&mut buffer).map_err(|e| e.to_string())?;
        latencies.push(started.elapsed().as_micros() as u32);
    }
    drop(stream);
    let _ = echo.join();
    latencies.sort_unstable();
    Ok(Figures {
        operations: latencies.len() as u64,
        p50_micros: percentile(&latencies, 0.5),
        p99_micros: percentile(&latencies, 0.99),
        ..Figures::default()
    })
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

fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = tcp.local_addr().expect("a bound address").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Child processes killed when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct RaftCluster {
    processes: Processes,
    client_urls: Vec<String>,
}

impl RaftCluster {
    fn start(options: &Options) -> Result<RaftCluster, String> {
        let directory = options.work_dir.join("raft-node");
        let certs = directory.join("certs");
        let cluster = ClusterId::new("bench").map_err(|e| e.to_string())?;
        let ca = ClusterCa::generate(&cluster).map_err(|e| e.to_string())?;
        ca.write_pem_files(&certs).map_err(|e| e.to_string())?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let members: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| format!("{}=127.0.0.1:{peer}=http://127.0.0.1:{client}", i + 1))
            .collect();
        // Every certificate first: writing a node's files rewrites the
        // shared ca.pem, which a node already starting would read half-written.
        for id in 1..=ports.len() as u64 {
            ca.issue_node(NodeId(id), &["127.0.0.1".into()])
                .and_then(|node| node.write_pem_files(&certs))
                .map_err(|e| e.to_string())?;
        }
        let mut processes = Processes(Vec::new());
        for (i, (client, peer)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let log =
                std::fs::File::create(directory.join(format!("node-{id}.log"))).map_err(|e| e.to_string())?;
            let mut command = Command::new(&options.raft_node);
            command
                .arg("run")
                .args(["--id", &id.to_string(), "--cluster-id", "bench"])
                .arg("--data-dir")
                .arg(directory.join(format!("node-{id}")))
                .args(["--listen-client", &format!("127.0.0.1:{client}")])
                .args(["--listen-peer", &format!("127.0.0.1:{peer}")])
                .arg("--tls-ca")
                .arg(certs.join("ca.pem"))
                .arg("--tls-cert")
                .arg(certs.join(format!("node-{id}.pem")))
                .arg("--tls-key")
                .arg(certs.join(format!("node-{id}.key")))
                .arg("--bootstrap");
            for member in &members {
                command.args(["--initial-member", member]);
            }
            command.env("RAFT_LOG", "warn").stdout(Stdio::null()).stderr(log);
            processes
                .0
                .push(command.spawn().map_err(|e| format!("starting {}: {e}", options.raft_node.display()))?);
        }
        let client_urls = ports.iter().map(|(client, _)| format!("http://127.0.0.1:{client}")).collect();
        Ok(RaftCluster { processes, client_urls })
    }

    /// The leader's client URL, once all three agree on one.
    fn target(&self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let leaders: Vec<Option<u64>> = self.client_urls.iter().map(|url| raft_leader(url)).collect();
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader)) {
                    return Ok(self.client_urls[(*leader - 1) as usize].clone());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("the raft-node cluster elected no leader within 30 s".into())
    }

    fn leader_pid(&self) -> Result<u32, String> {
        let leader = raft_leader(&self.client_urls[0]).ok_or("no leader")?;
        Ok(self.processes.0[(leader - 1) as usize].id())
    }
}

/// The leader node 1..3 names, through a blocking HTTP GET of /v1/cluster.
fn raft_leader(url: &str) -> Option<u64> {
    let body = blocking_http(url, "GET", "/v1/cluster", "")?;
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    status["leader"]["id"].as_u64()
}

/// A minimal HTTP/1.1 request for setup probes (the load itself goes
/// through reqwest).
fn blocking_http(url: &str, method: &str, path: &str, body: &str) -> Option<String> {
    let address = url.strip_prefix("http://")?;
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

struct EtcdCluster {
    processes: Processes,
    client_urls: Vec<String>,
}

impl EtcdCluster {
    fn start(options: &Options) -> Result<EtcdCluster, String> {
        let directory = options.work_dir.join("etcd");
        std::fs::create_dir_all(&directory).map_err(|e| e.to_string())?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial_cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
            .collect();
        let mut processes = Processes(Vec::new());
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let log =
                std::fs::File::create(directory.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
            let child = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(directory.join(&name))
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial_cluster.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", "bench"])
                .args(["--log-level", "warn"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    format!("starting etcd: {e} (install it with apt-get install -y etcd-server, or pass --skip-etcd)")
                })?;
            processes.0.push(child);
        }
        let client_urls = ports.iter().map(|(client, _)| format!("http://127.0.0.1:{client}")).collect();
        Ok(EtcdCluster { processes, client_urls })
    }

    /// The leader's client URL, from each member's status.
    async fn target(&self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for url in &self.client_urls {
                let Some(body) = blocking_http(url, "POST", "/v3/maintenance/status", "{}") else { continue };
                let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
                let member = status["header"]["member_id"].as_str().unwrap_or("");
                let leader = status["leader"].as_str().unwrap_or("");
                if !leader.is_empty() && leader != "0" && member == leader {
                    return Ok(url.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the etcd cluster elected no leader within 30 s".into())
    }

    fn leader_pid(&self, target: &str) -> Result<u32, String> {
        let index = self.client_urls.iter().position(|url| url == target).ok_or("unknown etcd leader")?;
        Ok(self.processes.0[index].id())
    }
}

fn report(
    options: &Options,
    fsync: &Figures,
    rtt: &Figures,
    raft: &SystemResults,
    etcd: Option<&SystemResults>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {} cores; fdatasync (4 KiB) p50 {} µs, p99 {} µs; TCP loopback RTT p50 {} µs, p99 {} µs; \
         {} s per point, 256-byte values, one request in flight per connection, aimed at the leader.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        fsync.p50_micros,
        fsync.p99_micros,
        rtt.p50_micros,
        rtt.p99_micros,
        options.seconds
    );
    let _ = writeln!(
        out,
        "| workload | raft-node ops/s | p50 µs | p99 µs | etcd ops/s | p50 µs | p99 µs | throughput ratio |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let row = |out: &mut String, name: String, ours: &Figures, theirs: Option<&Figures>| {
        let (their_rate, their_p50, their_p99, ratio) = match theirs {
            Some(t) => (
                format!("{:.0}", t.per_second()),
                t.p50_micros.to_string(),
                t.p99_micros.to_string(),
                format!("{:.2}×", ours.per_second() / t.per_second().max(1e-9)),
            ),
            None => ("–".into(), "–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {} | {} | {their_rate} | {their_p50} | {their_p99} | {ratio} |",
            ours.per_second(),
            ours.p50_micros,
            ours.p99_micros
        );
    };
    for (connections, ours) in &raft.writes {
        let theirs = etcd.and_then(|e| e.writes.iter().find(|(c, _)| c == connections).map(|(_, f)| f));
        row(&mut out, format!("write, {connections} connections"), ours, theirs);
    }
    row(
        &mut out,
        format!("linearizable read, {} connections", options.read_connections),
        &raft.reads,
        etcd.map(|e| &e.reads),
    );
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let _ = writeln!(
        out,
        "\nLeader peak RSS after the write runs: raft-node {:.1} MiB{}.",
        mib(raft.leader_peak_rss_bytes),
        etcd.map(|e| format!(", etcd {:.1} MiB", mib(e.leader_peak_rss_bytes))).unwrap_or_default()
    );
    if let Some((_, single)) = raft.writes.iter().find(|(c, _)| *c == 1) {
        let floor = fsync.p50_micros + rtt.p50_micros;
        let _ = writeln!(
            out,
            "Single-connection write p50: {} µs = {:.2}× (fdatasync p50 + RTT p50 = {floor} µs).",
            single.p50_micros,
            single.p50_micros as f64 / floor.max(1) as f64
        );
    }
    out
}
