//! quinn-proto's own cost at the server, per message and per datagram: the floor under the
//! gateway's transport, for issue [5/5]'s decision on driving quinn-proto from our own per-shard
//! endpoint loop.
//!
//! Two quinn-proto endpoints in memory (no sockets, no tasks, no channels, no timers but the
//! connections' own): `N` client connections to one server endpoint, with the gateway's TLS
//! (TLS 1.3, ring, ALPN `courier/1`) and its stream limits. Each round, every client writes one
//! 100-byte frame on its stream; the server takes each datagram (`Endpoint::handle`,
//! `Connection::handle_event`), reads the frame, writes a 40-byte answer on the same stream, and
//! polls its transmits one datagram at a time (no GSO, as to many different peers). Only the
//! server's side is timed (`iter_custom`); the clients' side runs untimed. Criterion's
//! throughput is messages per second at the server; the datagrams the server received and sent
//! per message are printed once, so µs per datagram follows, to set beside `loadgen run`'s
//! "µs of gateway CPU per datagram" (quinn's tasks, channels, timers and `sendmsg` on top).
//!
//! `cargo bench -p courier-benches --bench transport`; for instruction counts, see
//! `COURIER_TRANSPORT_ROUNDS` in [`transport`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, ServerConfig,
    StreamEvent, StreamId, TransportConfig,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A datagram on the in-memory wire: to, from, bytes.
type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

/// A connection, its stream once it has one, and the bytes read of a frame not yet whole.
type Peer = (quinn_proto::Connection, Option<StreamId>, usize);

/// One endpoint and its connections.
struct Side {
    addr: SocketAddr,
    endpoint: Endpoint,
    conns: HashMap<ConnectionHandle, Peer>,
    buf: Vec<u8>,
    /// Frames read, all connections together.
    read: usize,
    /// Datagrams handled and sent.
    received: u64,
    sent: u64,
}

/// Bytes of a client's frame and of the server's answer.
const FRAME: usize = 100;
const ANSWER: usize = 40;

impl Side {
    fn new(addr: SocketAddr, server: Option<Arc<ServerConfig>>) -> Self {
        Self {
            addr,
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), server, false, None),
            conns: HashMap::new(),
            buf: Vec::with_capacity(1500),
            read: 0,
            received: 0,
            sent: 0,
        }
    }

    /// Takes one datagram from the wire.
    fn receive(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Vec<Datagram>) {
        self.received += 1;
        self.buf.clear();
        let event =
            self.endpoint
                .handle(now, from, None, None, BytesMut::from(data), &mut self.buf);
        match event {
            Some(DatagramEvent::NewConnection(incoming)) => {
                match self.endpoint.accept(incoming, now, &mut self.buf, None) {
                    Ok((ch, conn)) => {
                        self.conns.insert(ch, (conn, None, 0));
                    }
                    Err(e) => {
                        if let Some(t) = e.response {
                            out.push((t.destination, self.addr, self.buf[..t.size].to_vec()));
                        }
                    }
                }
            }
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some((conn, ..)) = self.conns.get_mut(&ch) {
                    conn.handle_event(event);
                }
            }
            Some(DatagramEvent::Response(t)) => {
                out.push((t.destination, self.addr, self.buf[..t.size].to_vec()));
            }
            None => {}
        }
    }

    /// Runs every connection: endpoint events, due timers, application events (reading
    /// frames; the server answers each), then its transmits.
    fn drive(&mut self, now: Instant, answer: bool, out: &mut Vec<Datagram>) {
        for (&ch, (conn, stream, partial)) in &mut self.conns {
            while let Some(e) = conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(ch, e) {
                    conn.handle_event(back);
                }
            }
            if conn.poll_timeout().is_some_and(|t| t <= now) {
                conn.handle_timeout(now);
            }
            while let Some(event) = conn.poll() {
                match event {
                    Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                        if let Some(id) = conn.streams().accept(Dir::Bi) {
                            *stream = Some(id);
                        }
                    }
                    Event::ConnectionLost { reason } => panic!("connection lost: {reason}"),
                    _ => {}
                }
            }
            if let Some(id) = *stream {
                let mut bytes = *partial;
                let mut recv = conn.recv_stream(id);
                if let Ok(mut chunks) = recv.read(true) {
                    while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                        bytes += chunk.bytes.len();
                    }
                    let _ = chunks.finalize();
                }
                let size = if answer { FRAME } else { ANSWER };
                let frames = bytes / size;
                *partial = bytes % size;
                self.read += frames;
                if answer {
                    for _ in 0..frames {
                        let n = conn.send_stream(id).write(&[7u8; ANSWER]);
                        assert_eq!(n.ok(), Some(ANSWER), "answer written whole");
                    }
                }
            }
            loop {
                self.buf.clear();
                let Some(t) = conn.poll_transmit(now, 1, &mut self.buf) else {
                    break;
                };
                self.sent += 1;
                out.push((t.destination, self.addr, self.buf[..t.size].to_vec()));
            }
        }
    }
}

/// `n` client connections to a server, connected, each with its stream open.
fn pair(n: usize) -> (Side, Side) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (identity, _) =
        courier_gateway::tls::TlsIdentity::self_signed_in(dir.path()).expect("certificate");
    // The gateway's TLS sessions (they drop rustls's state after the handshake).
    let quic = courier_net::tls::LeanServerConfig::new(Arc::new(
        identity.rustls_config().expect("rustls config"),
    ))
    .expect("QUIC TLS config");
    let mut server_config = ServerConfig::with_crypto(Arc::new(quic));
    // As the gateway's: the control stream and media streams, no uni streams.
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("30 s fits")))
        .max_concurrent_bidi_streams(17u32.into())
        .max_concurrent_uni_streams(0u32.into());
    server_config.transport_config(Arc::new(transport));
    let client_config = courier_client::tls::client_config(&courier_client::Trust::File(
        dir.path().join("cert.pem"),
    ))
    .expect("client config");

    let mut server = Side::new(
        "127.0.0.1:4433".parse().expect("addr"),
        Some(Arc::new(server_config)),
    );
    let mut client = Side::new("127.0.0.1:5000".parse().expect("addr"), None);
    let now = Instant::now();
    for _ in 0..n {
        let (ch, conn) = client
            .endpoint
            .connect(now, client_config.clone(), server.addr, "localhost")
            .expect("connect");
        client.conns.insert(ch, (conn, None, 0));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.conns.values().any(|(c, ..)| c.is_handshaking()) {
        run(&mut client, &mut server, Instant::now());
        assert!(Instant::now() < deadline, "handshakes not done");
    }
    // A first frame from each client opens its stream at the server.
    for (conn, id, _) in client.conns.values_mut() {
        let opened = conn.streams().open(Dir::Bi).expect("a stream");
        conn.send_stream(opened)
            .write(&[1u8; FRAME])
            .expect("write");
        *id = Some(opened);
    }
    loop {
        run(&mut client, &mut server, Instant::now());
        let streams = server
            .conns
            .values()
            .filter(|(_, s, _)| s.is_some())
            .count();
        if streams == n && server.read == n && client.read == n {
            break;
        }
        assert!(Instant::now() < deadline, "not connected: {streams} of {n}");
    }
    (client, server)
}

/// Moves datagrams until the wire is quiet; returns the time spent in the server.
fn run(client: &mut Side, server: &mut Side, now: Instant) -> Duration {
    let mut in_server = Duration::ZERO;
    let mut wire = Vec::new();
    client.drive(now, false, &mut wire);
    while !wire.is_empty() {
        let mut back = Vec::new();
        let started = Instant::now();
        for (to, from, data) in wire.drain(..) {
            debug_assert_eq!(to, server.addr);
            server.receive(now, from, &data, &mut back);
        }
        server.drive(now, true, &mut back);
        in_server += started.elapsed();
        for (_, from, data) in back.drain(..) {
            client.receive(now, from, &data, &mut wire);
        }
        client.drive(now, false, &mut wire);
    }
    in_server
}

/// One round: every client sends one frame, and everything moves until the wire is quiet.
fn round(client: &mut Side, server: &mut Side) -> Duration {
    for (conn, id, _) in client.conns.values_mut() {
        let id = id.expect("opened");
        conn.send_stream(id).write(&[1u8; FRAME]).expect("write");
    }
    run(client, server, Instant::now())
}

fn transport(c: &mut Criterion) {
    let n = 200;
    let (mut client, mut server) = pair(n);
    // Datagrams at the server per message, over a few warm rounds.
    let (r0, s0, m0) = (server.received, server.sent, server.read);
    for _ in 0..50 {
        round(&mut client, &mut server);
    }
    let messages = (server.read - m0) as f64;
    eprintln!(
        "transport: {n} connections; per message at the server: {:.2} datagrams in, {:.2} out",
        (server.received - r0) as f64 / messages,
        (server.sent - s0) as f64 / messages,
    );
    // A fixed number of rounds and no measurement, for instruction counts that do not depend
    // on the machine's noise: `COURIER_TRANSPORT_ROUNDS=N valgrind --tool=callgrind <bench>`
    // at two values of N; the difference over (N2 - N1) * 200 messages is both sides' cost.
    if let Some(rounds) = std::env::var("COURIER_TRANSPORT_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        for _ in 0..rounds {
            round(&mut client, &mut server);
        }
        eprintln!("transport: {rounds} rounds of {n} messages");
        return;
    }
    let mut group = c.benchmark_group("transport");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("quinn_proto_server_per_round_of_200_messages", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| round(&mut client, &mut server))
                .sum::<Duration>()
        });
    });
    group.finish();
}

criterion_group!(benches, transport);
criterion_main!(benches);
