//! The endpoint loop (`courier_net::quic`) against quinn clients over real UDP on 127.0.0.1:
//! streams both ways with flow control, stop and reset, closes with codes, dropped handles,
//! refusal and retry, idle timeouts, and many connections at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_net::quic::{Connection, Endpoint, Incoming};
use quinn::{ConnectionError, VarInt};
use tokio::time::timeout;

const ALPN: &[u8] = b"test";
const LIMIT: Duration = Duration::from_secs(20);

struct Pair {
    server: Endpoint,
    addr: SocketAddr,
    client: quinn::Endpoint,
}

fn pair(idle: Option<Duration>) -> Pair {
    pair_with(idle, false, None)
}

/// [`pair`] with the server acknowledging PING-only packets at once or not, and the client
/// sending keep-alives at `keep_alive`.
fn pair_with(idle: Option<Duration>, ack_ping_at_once: bool, keep_alive: Option<Duration>) -> Pair {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // The gateway's TLS sessions (they drop rustls's state after the handshake).
    let quic = courier_net::tls::LeanServerConfig::new(Arc::new(tls)).unwrap();
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(idle.map(|d| d.try_into().unwrap()));
    transport.max_concurrent_bidi_streams(8u32.into());
    transport.ack_ping_at_once(ack_ping_at_once);
    server.transport_config(Arc::new(transport));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoint = Endpoint::server(quinn::EndpointConfig::default(), server, socket).unwrap();
    let addr = endpoint.local_addr().unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()));
    transport.keep_alive_interval(keep_alive);
    client_cfg.transport_config(Arc::new(transport));
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_cfg);
    Pair {
        server: endpoint,
        addr,
        client,
    }
}

impl Pair {
    async fn connect(&self) -> quinn::Connection {
        self.client
            .connect(self.addr, "localhost")
            .unwrap()
            .await
            .unwrap()
    }

    async fn incoming(&self) -> Incoming {
        timeout(LIMIT, self.server.accept())
            .await
            .expect("an attempt in time")
            .expect("the endpoint is open")
    }

    async fn accept(&self) -> Connection {
        timeout(LIMIT, self.incoming().await.accept())
            .await
            .expect("a handshake in time")
            .expect("handshake")
    }
}

/// Reads a receive stream of the endpoint loop to its end.
async fn read_all(recv: &mut courier_net::quic::RecvStream) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.unwrap() {
        all.extend_from_slice(&chunk.bytes);
    }
    all
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn streams_carry_megabytes_both_ways_through_flow_control() {
    let p = pair(None);
    let (client, server) = tokio::join!(p.connect(), p.accept());
    // More than the default stream and connection windows in both directions.
    let up = pattern(3 << 20, 1);
    let down = pattern(5 << 20, 2);
    let client_side = {
        let (up, down) = (up.clone(), down.clone());
        async move {
            let (mut send, mut recv) = client.open_bi().await.unwrap();
            let writer = async {
                send.write_all(&up).await.unwrap();
                send.finish().unwrap();
            };
            let reader = async { recv.read_to_end(16 << 20).await.unwrap() };
            let ((), got) = tokio::join!(writer, reader);
            assert_eq!(got.len(), down.len());
            assert!(got == down, "the client got what the server wrote");
            client
        }
    };
    let server_side = async {
        let (mut send, mut recv) = timeout(LIMIT, server.accept_bi()).await.unwrap().unwrap();
        // Each half in its own task, so that only the stream's own wake-ups move it on.
        let writer = tokio::spawn(async move {
            // In chunks, without copies, as the gateway's writer does.
            let mut chunks: Vec<Bytes> = down.chunks(100_000).map(Bytes::copy_from_slice).collect();
            send.write_all_chunks(&mut chunks).await.unwrap();
            send.finish().unwrap();
            // Everything acknowledged by the peer.
            assert_eq!(send.stopped().await.unwrap(), None);
        });
        let reader = tokio::spawn(async move { read_all(&mut recv).await });
        writer.await.unwrap();
        let got = reader.await.unwrap();
        assert!(got == up, "the server got what the client wrote");
    };
    let (client, ()) = timeout(LIMIT, async { tokio::join!(client_side, server_side) })
        .await
        .expect("the transfers finish");
    drop(client);
}

/// The server's TLS session drops rustls after the handshake and keeps only the secrets for key
/// updates (`courier_net::tls`): updates the client starts are followed both ways.
#[tokio::test]
async fn key_updates_after_the_handshake_keep_the_connection_working() {
    let p = pair(None);
    let (client, server) = tokio::join!(p.connect(), p.accept());
    let echo = tokio::spawn(async move {
        for _ in 0..4 {
            let (mut send, mut recv) = timeout(LIMIT, server.accept_bi()).await.unwrap().unwrap();
            let got = read_all(&mut recv).await;
            send.write_all(&got).await.unwrap();
            send.finish().unwrap();
            assert_eq!(send.stopped().await.unwrap(), None);
        }
        server
    });
    for round in 0..4u8 {
        if round > 0 {
            client.force_key_update();
        }
        let data = pattern(50_000, round);
        let (mut send, mut recv) = client.open_bi().await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        let back = timeout(LIMIT, recv.read_to_end(1 << 20))
            .await
            .expect("the echo in time")
            .unwrap();
        assert!(back == data, "round {round}: the echo matches");
    }
    drop(timeout(LIMIT, echo).await.unwrap().unwrap());
}

#[tokio::test]
async fn stop_and_reset_reach_the_peer_with_their_codes() {
    let p = pair(None);
    let (client, server) = tokio::join!(p.connect(), p.accept());
    let (mut csend, mut crecv) = client.open_bi().await.unwrap();
    csend.write_all(b"hello").await.unwrap();
    let (mut send, mut recv) = timeout(LIMIT, server.accept_bi()).await.unwrap().unwrap();
    let first = recv.read_chunk(usize::MAX, true).await.unwrap().unwrap();
    assert_eq!(&first.bytes[..], b"hello");
    recv.stop(VarInt::from_u32(17)).unwrap();
    // The client learns of the stop when it writes again or asks.
    assert_eq!(
        timeout(LIMIT, csend.stopped()).await.unwrap().unwrap(),
        Some(VarInt::from_u32(17))
    );
    send.write_all(b"partial").await.unwrap();
    send.reset(VarInt::from_u32(23)).unwrap();
    let mut buf = Vec::new();
    let err = loop {
        match timeout(LIMIT, crecv.read_chunk(usize::MAX, true))
            .await
            .unwrap()
        {
            Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
            Ok(None) => panic!("a reset stream does not end cleanly"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, quinn::ReadError::Reset(VarInt::from_u32(23)));
    // And the other way: the client resets, the server's read says so.
    let (mut csend, _crecv) = client.open_bi().await.unwrap();
    csend.write_all(b"x").await.unwrap();
    let (_send, mut recv) = timeout(LIMIT, server.accept_bi()).await.unwrap().unwrap();
    csend.reset(VarInt::from_u32(5)).unwrap();
    let err = loop {
        match timeout(LIMIT, recv.read_chunk(usize::MAX, true))
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a reset stream does not end cleanly"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, quinn::ReadError::Reset(VarInt::from_u32(5)));
}

#[tokio::test]
async fn a_close_reaches_the_client_with_its_code_and_reason_and_fails_the_streams() {
    let p = pair(None);
    let (client, server) = tokio::join!(p.connect(), p.accept());
    let (mut csend, _crecv) = client.open_bi().await.unwrap();
    csend.write_all(b"hi").await.unwrap();
    let (mut send, mut recv) = timeout(LIMIT, server.accept_bi()).await.unwrap().unwrap();
    server.close(VarInt::from_u32(9), b"bye now");
    match timeout(LIMIT, client.closed()).await.unwrap() {
        ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, VarInt::from_u32(9));
            assert_eq!(&c.reason[..], b"bye now");
        }
        other => panic!("closed with {other:?}"),
    }
    assert_eq!(server.close_reason(), Some(ConnectionError::LocallyClosed));
    assert!(matches!(
        send.write_all(b"late").await,
        Err(quinn::WriteError::ConnectionLost(
            ConnectionError::LocallyClosed
        ))
    ));
    // What arrived before the close can still be read; then the read fails.
    let mut failed = false;
    for _ in 0..4 {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(quinn::ReadError::ConnectionLost(ConnectionError::LocallyClosed)) => {
                failed = true;
                break;
            }
            Err(e) => panic!("read failed with {e:?}"),
        }
    }
    assert!(failed, "reads fail once the connection is closed");
    assert!(matches!(
        server.accept_bi().await,
        Err(ConnectionError::LocallyClosed)
    ));
}

#[tokio::test]
async fn dropping_every_handle_closes_with_code_zero_and_frees_the_connection() {
    let p = pair(None);
    let (client, server) = tokio::join!(p.connect(), p.accept());
    let (mut csend, _crecv) = client.open_bi().await.unwrap();
    csend.write_all(b"hi").await.unwrap();
    let (send, recv) = timeout(LIMIT, server.accept_bi()).await.unwrap().unwrap();
    let second = server.clone();
    drop(server);
    drop(send);
    assert_eq!(
        p.server.open_connections(),
        1,
        "still held by a clone and a stream"
    );
    drop(second);
    drop(recv);
    match timeout(LIMIT, client.closed()).await.unwrap() {
        ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, VarInt::from_u32(0)),
        other => panic!("closed with {other:?}"),
    }
    timeout(LIMIT, p.server.wait_idle())
        .await
        .expect("the drained connection leaves the endpoint");
    assert_eq!(p.server.open_connections(), 0);
}

#[tokio::test]
async fn a_refused_attempt_fails_and_a_retried_one_comes_back_validated() {
    let p = pair(None);
    let refused = tokio::spawn({
        let c = p.client.clone();
        let addr = p.addr;
        async move { c.connect(addr, "localhost").unwrap().await }
    });
    let first = p.incoming().await;
    assert!(!first.remote_address_validated());
    first.refuse();
    assert!(matches!(
        timeout(LIMIT, refused).await.unwrap().unwrap(),
        Err(ConnectionError::ConnectionClosed(_))
    ));

    let retried = tokio::spawn({
        let c = p.client.clone();
        let addr = p.addr;
        async move { c.connect(addr, "localhost").unwrap().await }
    });
    let first = p.incoming().await;
    assert!(first.may_retry());
    first.retry();
    let again = p.incoming().await;
    assert!(again.remote_address_validated());
    assert!(!again.may_retry());
    let server = timeout(LIMIT, again.accept()).await.unwrap().unwrap();
    let client = timeout(LIMIT, retried).await.unwrap().unwrap().unwrap();
    assert_eq!(
        server.remote_address().port(),
        p.client.local_addr().unwrap().port()
    );
    drop(client);
    // An attempt dropped undecided is ignored: its client times out or retries, the
    // endpoint keeps nothing of it.
    let ignored = tokio::spawn({
        let c = p.client.clone();
        let addr = p.addr;
        async move { c.connect(addr, "localhost").unwrap().await }
    });
    drop(p.incoming().await);
    ignored.abort();
    assert_eq!(p.server.open_connections(), 1);
}

#[tokio::test]
async fn an_idle_connection_times_out_on_the_server() {
    let p = pair(Some(Duration::from_millis(300)));
    let (client, server) = tokio::join!(p.connect(), p.accept());
    let lost = timeout(LIMIT, server.accept_bi()).await.unwrap();
    assert!(matches!(lost, Err(ConnectionError::TimedOut)), "{lost:?}");
    drop(server);
    timeout(LIMIT, p.server.wait_idle()).await.unwrap();
    drop(client);
}

#[tokio::test]
async fn two_hundred_connections_echo_at_once_and_a_close_ends_them_all() {
    let p = Arc::new(pair(None));
    let n = 200;
    let server = tokio::spawn({
        let p = p.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..n {
                let incoming = p.incoming().await;
                tasks.spawn(async move {
                    let conn = incoming.accept().await.unwrap();
                    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                    let got = read_all(&mut recv).await;
                    send.write_all(&got).await.unwrap();
                    send.finish().unwrap();
                    let _ = send.stopped().await;
                    // Held open until the endpoint closes.
                    let _ = conn.accept_bi().await;
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        }
    });
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..n {
        let p = p.clone();
        clients.spawn(async move {
            let conn = p.connect().await;
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let msg = pattern(1000 + i, i as u8);
            send.write_all(&msg).await.unwrap();
            send.finish().unwrap();
            let got = recv.read_to_end(1 << 20).await.unwrap();
            assert_eq!(got, msg);
            conn
        });
    }
    let mut conns = Vec::new();
    while let Some(c) = timeout(LIMIT, clients.join_next()).await.unwrap() {
        conns.push(c.unwrap());
    }
    assert_eq!(p.server.open_connections(), n);
    p.server.close(VarInt::from_u32(3), b"shutdown");
    for c in &conns {
        match timeout(LIMIT, c.closed()).await.unwrap() {
            ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, VarInt::from_u32(3)),
            other => panic!("closed with {other:?}"),
        }
    }
    timeout(LIMIT, server).await.unwrap().unwrap();
    timeout(LIMIT, p.server.wait_idle()).await.unwrap();
    assert!(
        p.server.accept().await.is_none(),
        "a closed endpoint accepts nothing"
    );
}

/// The quickest a client's keep-alive PING was acknowledged, over `pings` of them: from the
/// moment the client's count of PINGs sent moves to the moment its count of ACKs received does.
async fn quickest_ack_of_a_ping(ack_ping_at_once: bool, pings: u64) -> Duration {
    let p = pair_with(None, ack_ping_at_once, Some(Duration::from_millis(150)));
    let (client, _server) = tokio::join!(p.connect(), p.accept());
    // Past the handshake's own packets and their ACKs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut quickest = Duration::MAX;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut seen = 0;
    while seen < pings && tokio::time::Instant::now() < deadline {
        let before = client.stats();
        while client.stats().frame_tx.ping == before.frame_tx.ping
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let sent = std::time::Instant::now();
        let acks = client.stats().frame_rx.acks;
        while client.stats().frame_rx.acks == acks && sent.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        quickest = quickest.min(sent.elapsed());
        seen += 1;
    }
    quickest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_is_acknowledged_at_once_when_the_server_asks_for_it() {
    // quinn holds the ACK of an ack-eliciting packet for its 25 ms max_ack_delay; with the
    // patch's ack_ping_at_once (vendor/quinn-proto) the endpoint loop sends it in the turn the
    // PING came in.
    let at_once = quickest_ack_of_a_ping(true, 5).await;
    assert!(at_once < Duration::from_millis(15), "{at_once:?} at once");
    let held = quickest_ack_of_a_ping(false, 3).await;
    assert!(held >= Duration::from_millis(20), "{held:?} held");
}
