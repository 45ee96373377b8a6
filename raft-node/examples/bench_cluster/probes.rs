//! The machine's own floor, measured before the systems run: what a
//! synced write and a round trip cost here, alone and as a replicated
//! write on this machine has to pay them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

use raft_core::message::Message;
use raft_core::testing::messages::one_entry_append;
use raft_core::transport::{Inbox, Transport};
use raft_core::types::NodeId;
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::{ClusterId, QuicTransport, TransportConfig};

use super::{percentile, Figures, VALUE_BYTES};

/// Rounds of each synced-write probe, per writer.
const FSYNC_ROUNDS: u64 = 2_000;
/// Round trips of each network probe (after a tenth as many to warm up).
const ROUND_TRIPS: usize = 10_000;

/// p50 / p99 of a 4 KiB overwrite followed by `fdatasync`, by `writers`
/// threads at once, each on its own file in `dir`. One writer is the
/// disk's own latency; three are what the three members of a cluster on
/// this one disk ask of it when each persists the same entry.
pub fn fdatasync_latency(dir: &Path, writers: usize) -> Result<Figures, String> {
    use std::os::unix::fs::FileExt;
    let files = (0..writers)
        .map(|writer| {
            std::fs::File::create(dir.join(format!("fsync-probe-{writer}")))
                .map_err(|e| format!("fsync probe: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let per_writer = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|file| {
                scope.spawn(move || -> Result<Vec<u32>, String> {
                    let block = vec![7u8; 4096];
                    let mut latencies = Vec::with_capacity(FSYNC_ROUNDS as usize);
                    for round in 0..FSYNC_ROUNDS {
                        let started = Instant::now();
                        file.write_all_at(&block, (round % 16) * 4096)
                            .map_err(|e| format!("fsync probe: {e}"))?;
                        file.sync_data().map_err(|e| format!("fsync probe: {e}"))?;
                        latencies.push(started.elapsed().as_micros() as u32);
                    }
                    Ok(latencies)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| Err("fsync probe: a writer panicked".into())))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(figures(per_writer.concat()))
}

/// p50 / p99 of a 64-byte TCP ping-pong on loopback.
pub fn tcp_round_trip() -> Result<Figures, String> {
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
    let mut latencies = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let started = Instant::now();
        stream.write_all(&buffer).map_err(|e| e.to_string())?;
        stream.read_exact(&mut buffer).map_err(|e| e.to_string())?;
        latencies.push(started.elapsed().as_micros() as u32);
    }
    drop(stream);
    let _ = echo.join();
    Ok(figures(latencies))
}

/// p50 / p99 of a round trip through raft-node's own transport (QUIC with
/// mutual TLS, raft-transport-quic): two transports in this process, an
/// AppendEntries carrying one `VALUE_BYTES` command sent from one to the
/// other and echoed back, as a leader's entry travels to a follower and
/// its acknowledgement returns.
pub async fn transport_round_trip() -> Result<Figures, String> {
    let cluster = ClusterId::new("probe").map_err(|e| e.to_string())?;
    let ca = ClusterCa::generate(&cluster).map_err(|e| e.to_string())?;
    let bind = |id: u64| -> Result<(QuicTransport, tokio::sync::mpsc::Receiver<Message>), String> {
        let issued = ca.issue_node(NodeId(id), &[]).map_err(|e| e.to_string())?;
        let identity = issued.identity().map_err(|e| e.to_string())?;
        let address = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let config = TransportConfig::new(cluster.clone(), NodeId(id), address, identity);
        let (inbox, receiver) = Inbox::bounded(64);
        Ok((QuicTransport::bind(config, inbox).map_err(|e| e.to_string())?, receiver))
    };
    let (one, mut one_inbox) = bind(1)?;
    let (two, mut two_inbox) = bind(2)?;
    one.set_peer(NodeId(2), two.local_address().map_err(|e| e.to_string())?);
    two.set_peer(NodeId(1), one.local_address().map_err(|e| e.to_string())?);
    let echo_transport = two.clone();
    let echo = tokio::spawn(async move {
        while let Some(mut message) = two_inbox.recv().await {
            message.to = message.from;
            message.from = NodeId(2);
            echo_transport.send(vec![message]);
        }
    });
    let warm_up = ROUND_TRIPS / 10;
    let mut latencies = Vec::with_capacity(ROUND_TRIPS);
    for round in 0..(warm_up + ROUND_TRIPS) as u64 {
        let started = Instant::now();
        one.send(vec![one_entry_append(1, 2, round, VALUE_BYTES)]);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), one_inbox.recv()).await;
        if !matches!(answer, Ok(Some(_))) {
            echo.abort();
            return Err("transport probe: no echo within 10 s".into());
        }
        if round >= warm_up as u64 {
            latencies.push(started.elapsed().as_micros() as u32);
        }
    }
    echo.abort();
    one.shutdown().await;
    two.shutdown().await;
    Ok(figures(latencies))
}

fn figures(mut latencies: Vec<u32>) -> Figures {
    latencies.sort_unstable();
    Figures {
        operations: latencies.len() as u64,
        p50_micros: percentile(&latencies, 0.5),
        p99_micros: percentile(&latencies, 0.99),
        ..Figures::default()
    }
}
