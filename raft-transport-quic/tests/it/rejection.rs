//! Every way a peer can be refused, each asserting the specific close code
//! the peer sees and the counted reason on the refusing node; malformed
//! frames close the connection with an error, never a panic.

use std::sync::Arc;
use std::time::Duration;

use raft_core::message::Message;
use raft_core::transport::Transport;
use raft_core::types::NodeId;
use raft_transport_quic::frame::{
    decode_frame, encode_hello, encode_messages, Frame, FrameHeader, FrameKind, Hello, HEADER_BYTES,
    PROTOCOL_VERSION,
};
use raft_transport_quic::{NodeIdentity, QuicTransport, RejectReason};

use crate::support::*;

/// Node 1 listening, with node 2 listed as a peer (so node 2 is authorized).
fn server(pki: &Pki) -> (QuicTransport, tokio::sync::mpsc::Receiver<Message>) {
    let (inbox, receiver) = raft_core::transport::Inbox::bounded(1024);
    let mut config = pki.config(1, loopback());
    config.hello_timeout = Duration::from_secs(2);
    let transport = QuicTransport::bind(config, inbox).unwrap();
    transport.set_peer(NodeId(2), "127.0.0.1:9".parse().unwrap());
    (transport, receiver)
}

fn hello(pki: &Pki, from: u64, to: u64) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: pki.cluster.as_str().to_string(),
        from: NodeId(from),
        to: NodeId(to),
        incarnation: 42,
    }
}

/// Connects to node 1 as `identity`, sends `first` on a new stream, and
/// returns the connection and the stream pair.
async fn connect_and_send(
    pki: &Pki,
    server: &QuicTransport,
    identity: &NodeIdentity,
    first: &[u8],
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let client = raw_client(identity);
    let name = pki.cluster.node_dns_name(NodeId(1));
    let connection = client.connect(server.local_address().unwrap(), &name).unwrap().await.unwrap();
    let (mut send, recv) = connection.open_bi().await.unwrap();
    send.write_all(first).await.unwrap();
    (connection, send, recv)
}

/// Expects node 1 to close the connection with `reason`'s code, and to have
/// counted it.
async fn expect_rejection(server: &QuicTransport, connection: &quinn::Connection, reason: RejectReason) {
    let (code, text) = close_of(connection).await;
    assert_eq!(code, reason.close_code(), "close code; reason text: {text}");
    assert!(text.starts_with(reason.name()), "reason text {text:?} names {}", reason.name());
    eventually("the rejection to be counted", || server.stats().rejections.get(reason) == 1).await;
    assert_eq!(server.stats().rejections.total(), 1, "{:?}", server.stats().rejections);
}

/// Completes a valid handshake as node 2 and reads node 1's Hello.
async fn handshake_as_node_2(
    pki: &Pki,
    server: &QuicTransport,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let (connection, send, mut recv) =
        connect_and_send(pki, server, &pki.identity(2), &encode_hello(&hello(pki, 2, 1)).unwrap()).await;
    let mut header = [0u8; HEADER_BYTES];
    recv.read_exact(&mut header).await.unwrap();
    let length = FrameHeader::parse(header, 1024).unwrap().body_bytes as usize;
    let mut frame = header.to_vec();
    frame.resize(HEADER_BYTES + length, 0);
    recv.read_exact(&mut frame[HEADER_BYTES..]).await.unwrap();
    let (reply, _) = decode_frame(&frame, 1024).unwrap();
    assert!(matches!(reply, Frame::Hello(h) if h.from == NodeId(1) && h.to == NodeId(2)));
    (connection, send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_fails_the_tls_handshake() {
    let pki = Pki::new("rej");
    let (server, _inbox) = server(&pki);
    // Trusts the right CA (so the client accepts the server) but presents a
    // certificate for node 2 issued by another CA of the same cluster name.
    let other = Pki::new("rej");
    let identity = NodeIdentity { ca_certificate: pki.identity(2).ca_certificate, ..other.identity(2) };
    let client = raw_client(&identity);
    let name = pki.cluster.node_dns_name(NodeId(1));
    // The TLS 1.3 trap: the client's side of the handshake usually
    // completes, and the refusal shows at the first read.
    let error = match client.connect(server.local_address().unwrap(), &name).unwrap().await {
        Ok(connection) => {
            if let Ok((mut send, mut recv)) = connection.open_bi().await {
                let _ = send.write_all(&encode_hello(&hello(&pki, 2, 1)).unwrap()).await;
                let mut byte = [0u8; 1];
                assert!(recv.read_exact(&mut byte).await.is_err());
            }
            connection.closed().await
        }
        Err(error) => error,
    };
    assert!(matches!(error, quinn::ConnectionError::ConnectionClosed(_)), "a TLS alert, got {error}");
    eventually("the TLS rejection to be counted", || {
        server.stats().rejections.get(RejectReason::TlsHandshake) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_fails_the_tls_handshake() {
    let pki = Pki::new("rej");
    let (server, _inbox) = server(&pki);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.identity(2).ca_certificate).unwrap();
    let mut tls =
        rustls::ClientConfig::builder_with_provider(raft_transport_quic::identity::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![raft_transport_quic::identity::ALPN.to_vec()];
    let client = raw_client_with(tls);
    let name = pki.cluster.node_dns_name(NodeId(1));
    // The refusal may reach the client before or after its side of the
    // handshake completes (the TLS 1.3 trap): either way it is a TLS alert.
    let error = match client.connect(server.local_address().unwrap(), &name).unwrap().await {
        Ok(connection) => {
            if let Ok((mut send, _recv)) = connection.open_bi().await {
                let _ = send.write_all(&encode_hello(&hello(&pki, 2, 1)).unwrap()).await;
            }
            connection.closed().await
        }
        Err(error) => error,
    };
    assert!(
        matches!(&error, quinn::ConnectionError::ConnectionClosed(close) if close.reason == b"peer sent no certificates"[..]),
        "got {error}"
    );
    eventually("the TLS rejection to be counted", || {
        server.stats().rejections.get(RejectReason::TlsHandshake) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_with_another_cas_certificate_cannot_join() {
    let pki = Pki::new("rej");
    let (server, _inbox) = server(&pki);
    let other = Pki::new("rej");
    let (inbox, _receiver) = raft_core::transport::Inbox::bounded(16);
    let intruder = QuicTransport::bind(other.config(2, loopback()), inbox).unwrap();
    intruder.set_peer(NodeId(1), server.local_address().unwrap());
    intruder.send(vec![heartbeat(2, 1, 1)]);
    // The intruder refuses the server's certificate (another CA), and the
    // server sees the handshake fail: counted on both sides.
    eventually("the intruder's dial to fail", || {
        let errors = &intruder.stats().peers[&NodeId(1)].errors;
        errors.dial_failures + errors.handshake_failures >= 1
    })
    .await;
    eventually("the server to count it", || server.stats().rejections.get(RejectReason::TlsHandshake) >= 1)
        .await;
    assert!(!server.stats().peers[&NodeId(2)].connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_another_node_than_claimed_is_refused() {
    let pki = Pki::new("rej");
    let (server, _inbox) = server(&pki);
    // A valid certificate for node 5, claiming to be node 2 (a member).
    let (connection, _send, _recv) =
        connect_and_send(&pki, &server, &pki.identity(5), &encode_hello(&hello(&pki, 2, 1)).unwrap()).await;
    expect_rejection(&server, &connection, RejectReason::IdentityMismatch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_cluster_is_refused() {
    let pki = Pki::new("rej");
    let (server, _inbox) = server(&pki);
    let wrong = Hello { cluster_id: "elsewhere".into(), ..hello(&pki, 2, 1) };
    let (connection, _send, _recv) =
        connect_and_send(&pki, &server, &pki.identity(2), &encode_hello(&wrong).unwrap()).await;
    expect_rejection(&server, &connection, RejectReason::ClusterMismatch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_for_another_node_is_refused() {
    let pki = Pki::new("rej");
    let (server, _inbox) = server(&pki);
    let (connection, _send, _recv) =
        connect_and_send(&pki, &server, &pki.identity(2), &encode_hello(&hello(&pki, 2, 3)).unwrap()).await;
    expect_rejection(&server, &connection, RejectReason::WrongDestination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_a_member_is_refused() {
    let pki = Pki::new("rej");
    let (server, _inbox) = server(&pki);
    let (connection, _send, _recv) =
        connect_and_send(&pki, &server, &pki.identity(7), &encode_hello(&hello(&pki, 7, 1)).unwrap()).await;
    expect_rejection(&server, &connection, RejectReason::NotAuthorized).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorizer_admits_a_learner_being_added() {
    let pki = Pki::new("rej");
    let (server, mut inbox) = server(&pki);
    server.set_authorizer(Some(Arc::new(|id: NodeId| id == NodeId(7))));
    let (_connection, mut send, _recv) =
        connect_and_send(&pki, &server, &pki.identity(7), &encode_hello(&hello(&pki, 7, 1)).unwrap()).await;
    send.write_all(&encode_messages(&[heartbeat(7, 1, 5)], 1 << 20).unwrap()).await.unwrap();
    assert_eq!(round_of(&receive(&mut inbox).await), Some(5));
    assert_eq!(server.stats().rejections.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_version_is_refused() {
    let pki = Pki::new("rej");
    let (server, _inbox) = server(&pki);
    let future = Hello { protocol_version: PROTOCOL_VERSION + 1, ..hello(&pki, 2, 1) };
    let (connection, _send, _recv) =
        connect_and_send(&pki, &server, &pki.identity(2), &encode_hello(&future).unwrap()).await;
    expect_rejection(&server, &connection, RejectReason::UnsupportedVersion).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_times_out() {
    let pki = Pki::new("rej");
    let (server, _inbox) = server(&pki);
    let client = raw_client(&pki.identity(2));
    let name = pki.cluster.node_dns_name(NodeId(1));
    let connection = client.connect(server.local_address().unwrap(), &name).unwrap().await.unwrap();
    expect_rejection(&server, &connection, RejectReason::HelloTimeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_over_udp_and_tcp_is_ignored_and_real_peers_still_connect() {
    let pki = Pki::new("rej");
    let (server, mut server_inbox) = bind(&pki, 1);
    let address = server.local_address().unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut state = 7u64;
    for length in [1usize, 5, 40, 1200, 1500] {
        for _ in 0..20 {
            let datagram: Vec<u8> = (0..length)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 33) as u8
                })
                .collect();
            socket.send_to(&datagram, address).unwrap();
        }
    }
    socket.send_to(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", address).unwrap();
    // Nothing listens on TCP: a plain TCP client is refused by the kernel.
    let tcp = tokio::net::TcpStream::connect(address).await;
    assert_eq!(tcp.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
    // No datagram made a connection, and a real peer still gets through.
    let (peer, _peer_inbox) = bind(&pki, 2);
    connect_all(&[&server, &peer]);
    peer.send(vec![heartbeat(2, 1, 9)]);
    assert_eq!(round_of(&receive(&mut server_inbox).await), Some(9));
    let stats = server.stats();
    assert_eq!(stats.rejections.total(), 0, "{:?}", stats.rejections);
    assert_eq!(stats.open_connections, 1);
}

/// Malformed frames after a valid handshake: each closes the connection
/// with its own code, counted, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_the_connection_with_an_error() {
    let oversized = FrameHeader { body_bytes: u32::MAX, kind: FrameKind::Messages }.to_bytes().to_vec();
    let unknown_kind = vec![0, 0, 0, 1, 0x7f, 0];
    let garbage_body = [&[0, 0, 0, 4, FrameKind::Messages.byte()][..], &[0xff, 0xff, 0xff, 0xff]].concat();
    let pki = Pki::new("rej");
    let second_hello = encode_hello(&hello(&pki, 2, 1)).unwrap();
    let cases = [
        (oversized, RejectReason::FrameTooLarge),
        (unknown_kind, RejectReason::UnknownFrameKind),
        (garbage_body, RejectReason::MalformedFrame),
        (second_hello, RejectReason::UnexpectedFrame),
    ];
    for (bytes, reason) in cases {
        let (server, _inbox) = server(&pki);
        let (connection, mut send, _recv) = handshake_as_node_2(&pki, &server).await;
        send.write_all(&bytes).await.unwrap();
        expect_rejection(&server, &connection, reason).await;
        assert_eq!(server.stats().peers[&NodeId(2)].errors.frame_errors, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_closes_the_connection() {
    let pki = Pki::new("rej");
    let (server, _inbox) = server(&pki);
    let (connection, mut send, _recv) = handshake_as_node_2(&pki, &server).await;
    let header = FrameHeader { body_bytes: 100, kind: FrameKind::Messages }.to_bytes();
    send.write_all(&header).await.unwrap();
    send.write_all(&[1; 10]).await.unwrap();
    send.finish().unwrap();
    expect_rejection(&server, &connection, RejectReason::TruncatedFrame).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_hellos_are_refused() {
    let pki = Pki::new("rej");
    let messages_first = encode_messages(&[heartbeat(2, 1, 1)], 1 << 20).unwrap();
    let garbage_hello = vec![0, 0, 0, 3, FrameKind::Hello.byte(), 1, 0xff, 0xff];
    let big_hello = FrameHeader { body_bytes: 1 << 20, kind: FrameKind::Hello }.to_bytes().to_vec();
    let cases = [
        (messages_first, RejectReason::UnexpectedFrame),
        (garbage_hello, RejectReason::MalformedFrame),
        (big_hello, RejectReason::FrameTooLarge),
    ];
    for (bytes, reason) in cases {
        let (server, _inbox) = server(&pki);
        let (connection, _send, _recv) = connect_and_send(&pki, &server, &pki.identity(2), &bytes).await;
        expect_rejection(&server, &connection, reason).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_claiming_another_sender_are_dropped() {
    let pki = Pki::new("rej");
    let (server, mut inbox) = server(&pki);
    let (_connection, mut send, _recv) = handshake_as_node_2(&pki, &server).await;
    let forged = [heartbeat(3, 1, 1), heartbeat(2, 4, 2), heartbeat(2, 1, 3)];
    send.write_all(&encode_messages(&forged, 1 << 20).unwrap()).await.unwrap();
    assert_eq!(round_of(&receive(&mut inbox).await), Some(3));
    eventually("two drops counted", || server.stats().peers[&NodeId(2)].errors.misaddressed_drops == 2).await;
}
