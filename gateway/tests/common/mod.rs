//! Test kit for end-to-end tests: a gateway on 127.0.0.1 port 0 with its own temporary data
//! directory, issuer key and self-signed certificate, and clients for it.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use courier_auth::{Claims, IssuerKey, TokenVerifier};
use courier_client::{Client, ClientError, Event, Events, Trust};
use courier_gateway::tls::TlsIdentity;
use courier_gateway::{Gateway, GatewayConfig};
use courier_wire::frame::{Hello, Welcome};
use courier_wire::{Frame, FrameDecoder};

/// A running gateway and what a client needs to reach it.
pub struct TestServer {
    pub gateway: Gateway,
    pub issuer: IssuerKey,
    pub cert: PathBuf,
    pub dir: PathBuf,
}

pub use courier_wire::time::now_secs;

/// With `COURIER_TEST_STORE=sim`, the gateway's store runs on the simulation engine with
/// FoundationDB's semantics and faults on every commit kind (`COURIER_SIM_SEED`, default 1): one
/// simulated cluster per store directory, so a gateway restarted on the same directory finds
/// its data, as on a real cluster. Otherwise `None` (the embedded store).
pub fn simulated_store(dir: &Path) -> Option<std::sync::Arc<dyn courier_store::kv::Engine>> {
    use courier_store::engine::sim::{Faults, Sim, SimConfig};
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::{Mutex, OnceLock};
    if std::env::var("COURIER_TEST_STORE").ok()? != "sim" {
        return None;
    }
    static CLUSTERS: OnceLock<Mutex<HashMap<PathBuf, Sim>>> = OnceLock::new();
    let seed = std::env::var("COURIER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut clusters = CLUSTERS.get_or_init(Mutex::default).lock().unwrap();
    let sim = clusters.entry(dir.to_owned()).or_insert_with(|| {
        Sim::new(SimConfig {
            seed,
            faults: Faults::all(0.02),
            ..SimConfig::default()
        })
    });
    Some(std::sync::Arc::new(sim.clone()))
}

impl TestServer {
    /// Starts a gateway whose data (store, certificate, issuer key) lives in `dir`; a second start
    /// on the same `dir` reuses all three, like a restarted server.
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, |_| {}).await
    }

    /// [`TestServer::start`] with the config adjusted by `tweak`.
    pub async fn start_with(dir: &Path, tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        let key_path = dir.join("issuer.key");
        if !key_path.exists() {
            IssuerKey::generate().write_files(dir).unwrap();
        }
        let issuer = IssuerKey::read_file(&key_path).unwrap();
        let (tls, _) = TlsIdentity::self_signed_in(&dir.join("tls")).unwrap();
        let cert = tls.cert_path.clone();
        let verifier = TokenVerifier::new(issuer.public_key());
        let mut config = GatewayConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.join("store"),
            tls,
            verifier,
        );
        config.shutdown_grace = Duration::from_secs(3);
        // Three partitions: every end-to-end test runs on three writers (and, on the embedded
        // engine, three databases).
        config.store_partitions = Some(3);
        let simulated = simulated_store(&dir.join("store"));
        if let Some(sim) = &simulated {
            config.store_engine = courier_gateway::StoreEngine::Custom(sim.clone());
        }
        tweak(&mut config);
        let shared = config.store_engine.shared();
        assert!(shared || simulated.is_none());
        let gateway = Gateway::start(config).await.unwrap();
        assert_eq!(
            gateway.store().engine_exclusive(),
            !shared,
            "the store runs on the engine asked for"
        );
        assert_eq!(
            gateway.store().node().is_some(),
            shared,
            "a gateway on a shared engine is a cluster node"
        );
        Self {
            gateway,
            issuer,
            cert,
            dir: dir.to_owned(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }

    /// The gateway's open connections.
    pub fn connections(&self) -> usize {
        self.gateway.shard_connections().iter().sum()
    }

    /// Waits (up to 10 s) until the gateway holds `n` connections: the sessions of closed or
    /// refused connections have ended (a closed client's user is offline); `why` says what
    /// the wait is for if it times out.
    pub async fn until_connections(&self, n: usize, why: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.connections() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "{why}: {} connections, {n} expected",
                self.connections()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn token(&self, user: &str, device: u32) -> String {
        self.issuer.mint(&Claims {
            user: user.into(),
            device,
            expires_at: now_secs() + 3600,
        })
    }

    pub fn trust(&self) -> Trust {
        Trust::File(self.cert.clone())
    }

    pub async fn connect(&self, user: &str, device: u32) -> (Client, Events) {
        self.try_connect(&self.token(user, device)).await.unwrap()
    }

    pub async fn try_connect(&self, token: &str) -> Result<(Client, Events), ClientError> {
        Client::connect(self.addr(), "localhost", &self.trust(), token).await
    }

    /// A bare QUIC connection on which `user`'s device has said Hello and got Welcome.
    pub async fn raw_session(&self, user: &str, device: u32) -> (RawConn, Welcome) {
        let mut raw = self.raw().await;
        let token = Bytes::from(self.token(user, device));
        raw.write_frame(Frame::Hello(Hello {
            request_id: 1,
            version: 1,
            token,
        }))
        .await;
        match raw.read_frame().await {
            Some(Frame::Welcome(w)) => (raw, w),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// A bare QUIC connection with its control stream open and nothing sent.
    pub async fn raw(&self) -> RawConn {
        let cfg = courier_client::tls::client_config(&self.trust()).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(cfg);
        let conn = endpoint
            .connect(self.addr(), "localhost")
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        RawConn {
            _endpoint: endpoint,
            conn,
            send,
            recv,
            buf: BytesMut::new(),
        }
    }
}

/// A QUIC connection driven byte by byte.
pub struct RawConn {
    _endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    buf: BytesMut,
}

impl RawConn {
    pub async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    pub async fn write_frame(&mut self, f: Frame) {
        self.write(&f.to_bytes()).await;
    }

    /// The next frame from the server, or None when the stream ended.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        let decoder = FrameDecoder::new(u32::MAX);
        loop {
            if let Some(f) = decoder.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let chunk =
                tokio::time::timeout(Duration::from_secs(10), self.recv.read_chunk(65536, true))
                    .await
                    .expect("server answers within 10 s");
            match chunk {
                Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                _ => return None,
            }
        }
    }

    /// The application close code the server closed the connection with.
    pub async fn close_code(&self) -> u64 {
        match tokio::time::timeout(Duration::from_secs(10), self.conn.closed())
            .await
            .expect("server closes")
        {
            quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
            other => panic!("expected an application close, got {other}"),
        }
    }
}

/// Waits for the next delivered message, skipping other events.
pub async fn next_message(events: &mut Events) -> courier_wire::frame::Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("a message within 10 s")
        {
            Some(Event::Message(m)) => return m,
            Some(Event::Closed(r)) => panic!("connection closed: {r}"),
            Some(_) => {}
            None => panic!("event stream ended"),
        }
    }
}

/// Starts `courier serve` as a child process on 127.0.0.1 port 0 with data in `data` and the
/// extra arguments `args`; returns it and the address it listens on.
pub fn spawn_courier(data: &Path, args: &[&std::ffi::OsStr]) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("serve prints its address").unwrap();
        if let Some(rest) = line.strip_prefix("courier listening on ") {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// Sends `signal` (e.g. "-TERM", "-KILL") to a child and waits for it to exit.
pub async fn signal_and_wait(
    mut child: std::process::Child,
    signal: &str,
) -> std::process::ExitStatus {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

/// A token for `user`'s device 1, signed with the issuer key in `dir`.
pub fn token_from(dir: &Path, user: &str) -> String {
    IssuerKey::read_file(&dir.join("issuer.key"))
        .unwrap()
        .mint(&Claims {
            user: user.into(),
            device: 1,
            expires_at: now_secs() + 600,
        })
}

/// Every message of a chat, paging History forward `page` at a time.
pub async fn all_history(
    client: &Client,
    chat: u64,
    page: u32,
) -> Vec<courier_wire::frame::Message> {
    let mut out: Vec<courier_wire::frame::Message> = Vec::new();
    loop {
        let anchor = out.last().map_or(0, |m| m.seq);
        let p = client
            .history(chat, courier_wire::frame::Direction::After, anchor, page)
            .await
            .unwrap();
        out.extend(p.messages);
        if !p.more {
            return out;
        }
    }
}

/// Deterministic bytes that do not compress or repeat.
/// Uploads `bytes` with the default options, whole, and returns what a message attaches.
pub async fn upload(client: &Client, bytes: Bytes) -> courier_wire::frame::Attachment {
    client
        .upload(
            bytes,
            courier_client::UploadOptions::default(),
            &mut courier_client::UploadState::default(),
        )
        .await
        .unwrap()
}

/// Sends a text message with `attachments` to `chat`.
pub async fn send_attached(
    client: &Client,
    chat: u64,
    attachments: Vec<courier_wire::frame::Attachment>,
) {
    client
        .send_message(
            chat,
            courier_client::connection::new_client_msg_id(),
            courier_wire::frame::MessageKind::Text,
            body(0),
            attachments,
        )
        .await
        .unwrap();
}

pub fn noise(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A PNG of `width` x `height` pixels.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, 7])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn body(i: usize) -> Bytes {
    Bytes::from(format!("message number {i}"))
}

/// Bob authenticates and never reads while alice sends him 160 messages of 30 KB (4.8 MB: well
/// past his stream's flow-control window plus the 2 MiB outbound bound): the server
/// disconnects him as a slow reader (CLOSE_SLOW_READER; the close packet itself can be lost
/// when his socket buffer is full, and he then learns of it from a stateless reset), and every
/// message waits in the store for his next connection.
pub async fn a_reader_that_never_reads_is_cut_off(server: &TestServer) {
    const MESSAGES: usize = 160;
    let (alice, _a) = server.connect("alice", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    let (raw, _) = server.raw_session("bob", 1).await;
    let big = Bytes::from(vec![b'x'; 30_000]);
    let mut tasks = Vec::new();
    for _ in 0..MESSAGES {
        let (alice, big) = (alice.clone(), big.clone());
        tasks.push(tokio::spawn(
            async move { alice.send(chat, big).await.unwrap() },
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A lost close packet leaves bob to learn of it from a stateless reset or, at worst, from
    // the 30 s idle timeout.
    let closed = tokio::time::timeout(Duration::from_secs(40), raw.conn.closed())
        .await
        .expect("disconnected as a slow reader");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(
            c.error_code.into_inner(),
            u64::from(courier_gateway::registry::CLOSE_SLOW_READER)
        ),
        quinn::ConnectionError::Reset => {}
        other => panic!("unexpected close: {other}"),
    }
    // In a cluster the node's inbox may still hold the messages (4.8 MB) when bob's new
    // connection registers: it does not deliver them to it again (they committed before its
    // route, so its sync has them), so the burst cannot cut the new connection.
    let (bob, _b) = server.connect("bob", 1).await;
    assert_eq!(all_history(&bob, chat, 500).await.len(), MESSAGES);
}
