//! `cargo xtask cluster`: a local cluster of raft-node processes on
//! loopback, with certificates from `raft-node certs`, for trying the API by
//! hand. Ctrl-C (or SIGTERM) sends SIGTERM to every node and waits for them.
//!
//! Layout under `<target>/xtask-cluster/`: `certs/` (cluster id `local`),
//! `node-<id>/` (data) and `node-<id>.log` (each node's output). The first
//! start bootstraps the nodes together; later starts restart them from their
//! data, so the cluster keeps its keys until `--fresh`. The nodes remember
//! each other's addresses, so a restart must use the same `--base-port`
//! (kept in `base-port` and checked).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::{run, workspace_root};

const CLUSTER_ID: &str = "local";
/// Peer ports sit this far below client ports: 8081 → 7081.
const PEER_PORT_OFFSET: u16 = 1000;
/// How long the nodes get to stop after SIGTERM before they are killed. A
/// leader first hands leadership over, which takes an election timeout or two.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// After this long without every node ready, say where the logs are.
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// The flags of `cluster`.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    nodes: u16,
    base_port: u16,
    fresh: bool,
    release: bool,
}

fn parse_options(arguments: &[String]) -> Result<Options, String> {
    let mut options = Options { nodes: 3, base_port: 8080, fresh: false, release: false };
    let mut arguments = arguments.iter();
    while let Some(argument) = arguments.next() {
        let mut number = |name: &str| -> Result<u16, String> {
            let text = arguments.next().ok_or_else(|| format!("{name} needs a number"))?;
            text.parse().map_err(|_| format!("{name} {text:?} is not a number from 0 to 65535"))
        };
        match argument.as_str() {
            "--nodes" => options.nodes = number("--nodes")?,
            "--base-port" => options.base_port = number("--base-port")?,
            "--fresh" => options.fresh = true,
            "--release" => options.release = true,
            other => return Err(format!("unknown argument to cluster: {other}")),
        }
    }
    if options.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if options.base_port <= PEER_PORT_OFFSET
        || u32::from(options.base_port) + u32::from(options.nodes) > 65_535
    {
        return Err(format!(
            "--base-port {} leaves no room: client ports are base+1..base+N and peer ports base-1000+1.., \
             all within 1..65535",
            options.base_port
        ));
    }
    Ok(options)
}

/// One node's addresses and files.
#[derive(Clone)]
struct Node {
    id: u16,
    client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    log: PathBuf,
}

impl Node {
    fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }
}

/// A started node.
struct Running {
    node: Node,
    child: Child,
    exited: bool,
}

pub fn cluster(arguments: &[String]) -> ExitCode {
    let options = match parse_options(arguments) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\n\n{}", crate::USAGE);
            return ExitCode::from(2);
        }
    };
    match start(&options) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("cluster: {message}");
            ExitCode::FAILURE
        }
    }
}

fn target_directory() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(directory) => PathBuf::from(directory),
        None => workspace_root().join("target"),
    }
}

fn start(options: &Options) -> Result<ExitCode, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(cargo);
    build.current_dir(workspace_root()).args(["build", "-p", "raft-node"]);
    if options.release {
        build.arg("--release");
    }
    let built = run(build);
    if built != ExitCode::SUCCESS {
        return Ok(built);
    }
    let target = target_directory();
    let binary = target.join(if options.release { "release" } else { "debug" }).join("raft-node");
    let home = target.join("xtask-cluster");
    let certs = home.join("certs");
    let nodes: Vec<Node> = (1..=options.nodes)
        .map(|id| Node {
            id,
            client: SocketAddr::from((Ipv4Addr::LOCALHOST, options.base_port + id)),
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, options.base_port - PEER_PORT_OFFSET + id)),
            data: home.join(format!("node-{id}")),
            log: home.join(format!("node-{id}.log")),
        })
        .collect();

    if options.fresh {
        wipe_data(&home)?;
    }
    let bootstrap = decide_bootstrap(&nodes)?;
    check_base_port(&home, options.base_port, bootstrap)?;
    check_ports_free(&nodes)?;
    make_certificates(&binary, &certs, &nodes)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the signal handler: {e}"))?;
    runtime.block_on(supervise(&binary, &certs, nodes, bootstrap))
}

/// Removes every node's data directory (`node-*`), also those of nodes
/// beyond `--nodes`, so that a later larger cluster starts clean too.
fn wipe_data(home: &Path) -> Result<(), String> {
    let entries = match std::fs::read_dir(home) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot list {}: {e}", home.display())),
    };
    for entry in entries.flatten() {
        let is_node_data = entry.file_name().to_string_lossy().starts_with("node-")
            && entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_node_data {
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Issues certificates for the nodes that have none, from the CA already
/// in `certs` if there is one (`raft-node certs` reuses it).
fn make_certificates(binary: &Path, certs: &Path, nodes: &[Node]) -> Result<(), String> {
    let missing: Vec<u16> = nodes
        .iter()
        .map(|node| node.id)
        .filter(|id| {
            !certs.join(format!("node-{id}.pem")).exists() || !certs.join(format!("node-{id}.key")).exists()
        })
        .collect();
    if missing.is_empty() {
        println!("reusing the certificates in {}", certs.display());
        return Ok(());
    }
    let mut command = Command::new(binary);
    command.args(["certs", "--cluster-id", CLUSTER_ID, "--address", "127.0.0.1", "--address", "localhost"]);
    command.arg("--out").arg(certs);
    for id in &missing {
        command.args(["--node", &id.to_string()]);
    }
    // Only nodes with a missing file are listed, so replacing their other
    // half (a certificate without its key) is what is wanted.
    command.arg("--force");
    if run(command) != ExitCode::SUCCESS {
        return Err("`raft-node certs` failed (see above)".into());
    }
    Ok(())
}

/// All nodes new: bootstrap them together. All with data: restart. A mix
/// cannot be started safely by this task.
fn decide_bootstrap(nodes: &[Node]) -> Result<bool, String> {
    let has_data =
        |node: &Node| std::fs::read_dir(&node.data).is_ok_and(|mut entries| entries.next().is_some());
    let with_data: Vec<u16> = nodes.iter().filter(|node| has_data(node)).map(|node| node.id).collect();
    if with_data.is_empty() {
        return Ok(true);
    }
    if with_data.len() == nodes.len() {
        return Ok(false);
    }
    Err(format!(
        "nodes {with_data:?} have data but the others do not (was --nodes changed?): start with --fresh to \
         wipe the data and bootstrap {} new nodes",
        nodes.len()
    ))
}

/// The nodes store each other's addresses in their log, so a restart must
/// use the ports of the bootstrap: they are remembered in `base-port`.
fn check_base_port(home: &Path, base_port: u16, bootstrap: bool) -> Result<(), String> {
    let file = home.join("base-port");
    if bootstrap {
        std::fs::create_dir_all(home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        return std::fs::write(&file, format!("{base_port}\n"))
            .map_err(|e| format!("cannot write {}: {e}", file.display()));
    }
    match std::fs::read_to_string(&file).ok().and_then(|text| text.trim().parse::<u16>().ok()) {
        Some(stored) if stored != base_port => Err(format!(
            "the cluster's data was bootstrapped with --base-port {stored} and the nodes remember those \
             addresses: pass --base-port {stored}, or --fresh to start over"
        )),
        _ => Ok(()),
    }
}

/// Fails early, with the port named, if another process holds a port.
fn check_ports_free(nodes: &[Node]) -> Result<(), String> {
    for node in nodes {
        TcpListener::bind(node.client).map_err(|e| {
            format!("client port {} of node {} is not free ({e}); try --base-port", node.client, node.id)
        })?;
        UdpSocket::bind(node.peer).map_err(|e| {
            format!("peer port {} of node {} is not free ({e}); try --base-port", node.peer, node.id)
        })?;
    }
    Ok(())
}

fn node_command(binary: &Path, certs: &Path, node: &Node, all: &[Node], bootstrap: bool) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("run")
        .args(["--id", &node.id.to_string(), "--cluster-id", CLUSTER_ID])
        .arg("--data-dir")
        .arg(&node.data)
        .args(["--listen-client", &node.client.to_string(), "--listen-peer", &node.peer.to_string()])
        .arg("--tls-ca")
        .arg(certs.join("ca.pem"))
        .arg("--tls-cert")
        .arg(certs.join(format!("node-{}.pem", node.id)))
        .arg("--tls-key")
        .arg(certs.join(format!("node-{}.key", node.id)));
    if bootstrap {
        command.arg("--bootstrap");
        for member in all {
            command.arg("--initial-member").arg(format!(
                "{}={}={}",
                member.id,
                member.peer,
                member.client_url()
            ));
        }
    }
    command
}

#[cfg(unix)]
async fn supervise(
    binary: &Path,
    certs: &Path,
    nodes: Vec<Node>,
    bootstrap: bool,
) -> Result<ExitCode, String> {
    use tokio::signal::unix::{signal, SignalKind};

    // Handlers first: from here on Ctrl-C no longer kills this process, so
    // no node can be left behind by a Ctrl-C during start-up.
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("cannot catch SIGINT: {e}"))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("cannot catch SIGTERM: {e}"))?;

    let mut running = Vec::new();
    let verb = if bootstrap { "bootstrapping" } else { "restarting" };
    for node in &nodes {
        match spawn_node(node_command(binary, certs, node, &nodes, bootstrap), &node.log) {
            Ok(child) => running.push(Running { node: node.clone(), child, exited: false }),
            Err(message) => {
                stop(&mut running, &mut interrupt).await;
                return Err(message);
            }
        }
    }
    println!("{verb} {} node(s) of cluster `{CLUSTER_ID}`; waiting until they are ready...", nodes.len());

    let started = Instant::now();
    let (mut ready, mut warned) = (false, false);
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        report_exits(&mut running);
        if running.iter().all(|r| r.exited) {
            eprintln!("every node has exited; see the logs above");
            return Ok(ExitCode::FAILURE);
        }
        if !ready && running.iter().filter(|r| !r.exited).all(|r| is_ready(r.node.client)) {
            ready = true;
            print_banner(binary, certs, &running);
        } else if !ready && !warned && started.elapsed() > READY_PATIENCE {
            warned = true;
            let logs: Vec<String> = running.iter().map(|r| r.node.log.display().to_string()).collect();
            eprintln!(
                "the nodes are not all ready after {} s; they keep running. Logs: {}",
                READY_PATIENCE.as_secs(),
                logs.join(", ")
            );
        }
    }
    println!("stopping the cluster...");
    stop(&mut running, &mut interrupt).await;
    Ok(ExitCode::SUCCESS)
}

/// Starts a node with its output in `log`, in its own process group: the
/// terminal's Ctrl-C then reaches only this task, which stops the nodes one
/// by one with SIGTERM.
#[cfg(unix)]
fn spawn_node(mut command: Command, log: &Path) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let output = std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let errors = output.try_clone().map_err(|e| format!("cannot share {}: {e}", log.display()))?;
    command.stdin(Stdio::null()).stdout(output).stderr(errors).process_group(0);
    command.spawn().map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))
}

#[cfg(not(unix))]
async fn supervise(_: &Path, _: &Path, _: Vec<Node>, _: bool) -> Result<ExitCode, String> {
    Err("cluster needs a Unix system (process groups and SIGTERM)".into())
}

/// Notes nodes that exited on their own, with the end of their log.
fn report_exits(running: &mut [Running]) {
    for entry in running.iter_mut().filter(|r| !r.exited) {
        if let Ok(Some(status)) = entry.child.try_wait() {
            entry.exited = true;
            eprintln!("node {} exited ({status}); the end of {}:", entry.node.id, entry.node.log.display());
            eprintln!("{}", log_tail(&entry.node.log, 15));
        }
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("  | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `GET /readyz` answered 200, over a plain socket (xtask has no HTTP client).
fn is_ready(address: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.set_write_timeout(Some(Duration::from_millis(500)))?;
        write!(stream, "GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    attempt().unwrap_or(false)
}

fn print_banner(binary: &Path, certs: &Path, running: &[Running]) {
    let first = &running[0].node;
    let last = &running[running.len() - 1].node;
    let mut text = format!("\ncluster `{CLUSTER_ID}` is ready:\n");
    for entry in running {
        let node = &entry.node;
        text.push_str(&format!(
            "  node {}  client {}  peer {}  data {}  log {}\n",
            node.id,
            node.client_url(),
            node.peer,
            node.data.display(),
            node.log.display()
        ));
    }
    text.push_str(&format!("certificates: {}\n\ntry:\n", certs.display()));
    text.push_str(&format!("  curl -X PUT --data-binary 'hello' {}/v1/kv/greeting\n", first.client_url()));
    text.push_str(&format!("  curl -i {}/v1/kv/greeting\n", last.client_url()));
    text.push_str(&format!("  curl -s {}/v1/cluster\n", first.client_url()));
    text.push_str(&format!("  {} status --endpoint {}\n", binary.display(), first.client_url()));
    text.push_str("\nCtrl-C stops every node.");
    println!("{text}");
}

/// Sends SIGTERM to every running node and waits up to [`STOP_GRACE`]; a
/// node still running then, or when Ctrl-C comes again, is killed.
#[cfg(unix)]
async fn stop(running: &mut [Running], interrupt: &mut tokio::signal::unix::Signal) {
    for entry in running.iter_mut().filter(|r| !r.exited) {
        let sent = Command::new("kill").args(["-TERM", &entry.child.id().to_string()]).status();
        if !sent.is_ok_and(|status| status.success()) {
            eprintln!("could not send SIGTERM to node {}; killing it", entry.node.id);
            let _ = entry.child.kill();
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    let mut kill_now = false;
    loop {
        for entry in running.iter_mut().filter(|r| !r.exited) {
            if let Ok(Some(status)) = entry.child.try_wait() {
                entry.exited = true;
                println!("node {} stopped ({status})", entry.node.id);
            }
        }
        if running.iter().all(|r| r.exited) {
            return;
        }
        if kill_now || Instant::now() >= deadline {
            for entry in running.iter_mut().filter(|r| !r.exited) {
                eprintln!("node {} is still running; killing it", entry.node.id);
                let _ = entry.child.kill();
                let _ = entry.child.wait();
                entry.exited = true;
            }
            return;
        }
        tokio::select! {
            _ = interrupt.recv() => kill_now = true,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<Options, String> {
        parse_options(&arguments.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_have_defaults_and_bounds() {
        assert_eq!(parse(&[]).unwrap(), Options { nodes: 3, base_port: 8080, fresh: false, release: false });
        let options = parse(&["--nodes", "5", "--base-port", "9000", "--fresh", "--release"]).unwrap();
        assert_eq!(options, Options { nodes: 5, base_port: 9000, fresh: true, release: true });
        for bad in
            [&["--nodes", "0"][..], &["--nodes"], &["--base-port", "900"], &["--base-port", "65535"], &["-x"]]
        {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
