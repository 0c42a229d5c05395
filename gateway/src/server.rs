//! The QUIC side: endpoint, handshakes, the control stream of each connection, and shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use courier_net::io::{spawn_writer_with_handle, FrameReader, Outbound, ReadError, LAST_WORDS_END};
use courier_net::quic::{Connection, Endpoint, Incoming, RecvStream};
use courier_store::{Store, StoreConfig};
use courier_wire::frame::{GoAway, Welcome};
use courier_wire::{ErrorCode, Frame, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{GatewayConfig, StoreEngine};
use crate::fanout::Fanout;
use crate::handshakes::{Admission, Pending};
use crate::media::MediaService;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::registry::{Device, Registry};
use crate::session::{error_frame, Limits, PresenceLink, Session, Stop};
use courier_auth::TokenVerifier;
use courier_wire::time::now_ms;

struct Shared {
    store: Store,
    push: crate::push::PushConfig,
    media: Arc<MediaService>,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    verifier: TokenVerifier,
    limits: Limits,
    outbound_queue: usize,
    outbound_bytes: usize,
    max_connections: usize,
    handshake_timeout: Duration,
    /// Connections that have not sent Hello yet.
    handshakes: Arc<crate::handshakes::Handshakes>,
    shutdown_grace: Duration,
    shutdown: watch::Receiver<bool>,
    /// Each shard thread's wake-up pacing interval.
    wake_interval: Duration,
    connections: AtomicUsize,
    /// Open connections of each shard.
    shard_connections: Vec<AtomicUsize>,
    next_conn_id: AtomicU64,
    /// Connection IDs for every shard's endpoint: one key and one counter, so no two IDs of the
    /// node are equal (a Retry's ID never lands on a live connection).
    connection_ids: courier_net::cid::ConnectionIds,
}

/// A running gateway: `shards` threads, each with its own current-thread runtime and its own
/// QUIC endpoint on the same UDP port (`SO_REUSEPORT`: the kernel spreads connections across
/// them by address hash), sharing the store and the registry of online devices.
pub struct Gateway {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    shards: Vec<std::thread::JoinHandle<()>>,
    store: Store,
    shared: Arc<Shared>,
    metrics_addr: Option<SocketAddr>,
}

/// Kernel socket buffer asked for on each shard's UDP socket, so that a burst of handshakes is
/// not dropped before the shard reads it. Linux caps it at `net.core.rmem_max`/`wmem_max`;
/// raise those (e.g. `sysctl -w net.core.rmem_max=8388608`) for the full size.
const UDP_BUFFER: usize = 8 * 1024 * 1024;

fn bind_shard_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    // Best effort: the kernel may clamp these.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl Gateway {
    /// Opens the store and starts serving on `config.listen` with `config.shards` shards.
    pub async fn start(config: GatewayConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let registry = Arc::new(Registry::default());
        let metrics = Arc::new(Metrics::new());
        let mut store_cfg = StoreConfig::new(&config.store_dir);
        store_cfg.retention = config.retention;
        store_cfg.min_free_bytes = config.store_min_free;
        store_cfg.clock = config.clock.clone();
        store_cfg.commit_interval = config.commit_interval;
        store_cfg.partitions = config
            .store_partitions
            .unwrap_or_else(|| config.default_partitions())
            .max(1);
        let clustered = config.store_engine.shared();
        if clustered {
            store_cfg.cluster = Some(config.cluster);
        }
        if config.push.enabled() {
            store_cfg.online = Some(registry.clone());
            store_cfg.push_coalesce = Some(config.push.coalesce);
        }
        let (released_tx, released_rx) = tokio::sync::mpsc::unbounded_channel();
        store_cfg.listener = Some(Arc::new(Fanout {
            registry: registry.clone(),
            metrics: metrics.clone(),
            released: released_tx,
            // In a cluster every node delivers what its inbox holds, this one's commits too.
            deliver: !clustered,
        }));
        let store = match &config.store_engine {
            StoreEngine::Embedded => Store::open(store_cfg)
                .with_context(|| format!("open store in {}", config.store_dir.display()))?,
            #[cfg(feature = "fdb")]
            StoreEngine::Fdb {
                cluster_file,
                prefix,
            } => {
                let file = cluster_file
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned());
                let engine = courier_store::engine::fdb::FdbEngine::open(file.as_deref(), prefix)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Store::with_engine(Arc::new(engine), store_cfg).context("open the store")?
            }
            StoreEngine::Custom(engine) => {
                Store::with_engine(engine.clone(), store_cfg).context("open the store")?
            }
        };

        let tls = config.tls.rustls_config()?;
        // Sessions that drop rustls's connection state after the handshake (courier_net::tls).
        let quic =
            courier_net::tls::LeanServerConfig::new(Arc::new(tls)).context("QUIC TLS config")?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                config.idle_timeout.try_into().context("idle timeout")?,
            ))
            // The control stream, and media streams (docs/PROTOCOL.md, Media).
            .max_concurrent_bidi_streams((1 + config.media.max_streams).into())
            .max_concurrent_uni_streams(0u32.into())
            .mtu_discovery_config(Some(courier_net::transport::mtu_discovery()))
            // A client's keep-alive is acknowledged in the turn it arrives, not by a second
            // wake-up of the shard 25 ms later (vendor/quinn-proto/COURIER.md).
            .ack_ping_at_once(true);
        if !config.client_ack_delay.is_zero() {
            let mut acks = quinn::AckFrequencyConfig::default();
            // The ack-eliciting threshold stays quinn's 1: an ACK at least every second
            // packet, so a sender limited by a small congestion window never waits out the
            // delay for its ACKs.
            acks.max_ack_delay(Some(config.client_ack_delay))
                .max_ack_delay_above_rtt(true);
            transport.ack_frequency_config(Some(acks));
        }
        server.transport_config(Arc::new(transport));

        let shards = config.shards.max(1);
        let first = bind_shard_socket(config.listen)
            .with_context(|| format!("bind UDP {}", config.listen))?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..shards {
            sockets.push(
                bind_shard_socket(addr).with_context(|| format!("bind shard socket on {addr}"))?,
            );
        }

        let media_dir = config.media.dir.clone().unwrap_or_else(|| {
            config
                .store_dir
                .parent()
                .unwrap_or(&config.store_dir)
                .join("media")
        });
        let media = MediaService::open(store.clone(), media_dir.clone(), config.media.clone())
            .with_context(|| format!("open media in {}", media_dir.display()))?;
        let media = Arc::new(media);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        if config.push.enabled() {
            let worker = crate::push::worker(store.clone(), config.push.clone())?;
            tokio::spawn(crate::push::run(worker, shutdown_rx.clone()));
        }
        tokio::spawn(crate::media::janitor(
            media.clone(),
            released_rx,
            shutdown_rx.clone(),
        ));
        let presence = Arc::new(Presence::new(
            registry.clone(),
            store.clone(),
            config.presence_grace,
        ));
        if let Some(inbox) = store.inbox() {
            tokio::spawn(crate::fanout::inbox_loop(
                inbox,
                store.clone(),
                registry.clone(),
                presence.clone(),
                metrics.clone(),
                shutdown_rx.clone(),
            ));
        }
        let shared = Arc::new(Shared {
            store: store.clone(),
            push: config.push.clone(),
            media,
            presence,
            metrics,
            registry,
            verifier: config.verifier,
            limits: Limits {
                max_frame: config.max_frame,
                max_body: config.max_body,
                max_inflight: config.max_inflight,
                max_history_page: config.max_history_page,
            },
            outbound_queue: config.outbound_queue,
            outbound_bytes: config.outbound_bytes,
            max_connections: config.max_connections,
            handshake_timeout: config.handshake_timeout,
            handshakes: crate::handshakes::Handshakes::new(config.handshakes),
            shutdown_grace: config.shutdown_grace,
            shutdown: shutdown_rx,
            wake_interval: config.wake_interval,
            connections: AtomicUsize::new(0),
            shard_connections: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            next_conn_id: AtomicU64::new(1),
            connection_ids: courier_net::cid::ConnectionIds::new(),
        });
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(shards);
        let mut threads = Vec::with_capacity(shards);
        for (i, socket) in sockets.into_iter().enumerate() {
            let (shared, server, ready) = (shared.clone(), server.clone(), ready_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("courier-shard-{i}"))
                .spawn(move || run_shard(i, socket, server, shared, ready))
                .context("spawn shard thread")?;
            threads.push(thread);
        }
        drop(ready_tx);
        for _ in 0..shards {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    let _ = shutdown_tx.send(true);
                    return Err(e);
                }
                None => anyhow::bail!("a shard thread died while starting"),
            }
        }
        let metrics_addr = match config.metrics {
            Some(at) => {
                let s = shared.clone();
                let render = move || s.metrics.render(&shard_counts(&s), s.store.queue_depth());
                let bound = crate::metrics::serve(at, render, shutdown_tx.subscribe())
                    .await
                    .with_context(|| format!("bind metrics on {at}"))?;
                Some(bound)
            }
            None => None,
        };
        Ok(Self {
            addr,
            shutdown: shutdown_tx,
            shards: threads,
            store,
            shared,
            metrics_addr,
        })
    }

    /// The gateway's store (for operators' tools and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Open connections on each shard.
    pub fn shard_connections(&self) -> Vec<usize> {
        shard_counts(&self.shared)
    }

    /// Where metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops as a crash would, for tests of a node's death: every connection is closed at once
    /// with no GoAway, and in a cluster the node does not leave (its routes and lease stay
    /// until the others find the lease expired). What was acknowledged is durable all the
    /// same.
    pub async fn abort(self) {
        self.store.abandon();
        self.shared.registry.close_all(0u32.into(), b"");
        // With every connection closed, the sessions end at once: nothing waits for a grace.
        self.shutdown().await;
    }

    /// Graceful shutdown: stop accepting, let in-flight sends commit and be acknowledged (up to
    /// the grace period), send GoAway to every client and close, then sync and close the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let threads = self.shards;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        self.store.close().await;
    }
}

fn shard_counts(shared: &Shared) -> Vec<usize> {
    shared
        .shard_connections
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect()
}

fn run_shard(
    index: usize,
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
    shared: Arc<Shared>,
    ready: tokio::sync::mpsc::Sender<anyhow::Result<()>>,
) {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    crate::pacing::Pacing::new(shared.wake_interval).install(&mut builder);
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.blocking_send(Err(anyhow::anyhow!("shard {index} runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        // Wake-ups that the commit threads defer for this shard's writers are done from here.
        courier_net::outbound::Home::install();
        let config = shared.connection_ids.endpoint_config();
        let endpoint = match Endpoint::server(config, server, socket) {
            Ok(e) => e,
            Err(e) => {
                let _ = ready
                    .send(Err(anyhow::anyhow!("shard {index} endpoint: {e}")))
                    .await;
                return;
            }
        };
        let _ = ready.send(Ok(())).await;
        drop(ready);
        accept_loop(endpoint.clone(), shared, index).await;
        endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    });
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>, shard: usize) {
    let mut sessions = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let pending = match shared.handshakes.admit(
                    incoming.remote_address().ip(),
                    incoming.remote_address_validated(),
                    incoming.may_retry(),
                ) {
                    Admission::Accept(p) => p,
                    Admission::Retry => {
                        shared.metrics.handshake_retries.inc();
                        incoming.retry();
                        continue;
                    }
                    Admission::Refuse => {
                        shared.metrics.refused.inc();
                        incoming.refuse();
                        continue;
                    }
                };
                if shared.connections.fetch_add(1, Ordering::Relaxed) >= shared.max_connections {
                    shared.connections.fetch_sub(1, Ordering::Relaxed);
                    shared.metrics.refused.inc();
                    incoming.refuse();
                    continue;
                }
                shared.shard_connections[shard].fetch_add(1, Ordering::Relaxed);
                let slot = ConnectionSlot { shared: shared.clone(), shard };
                sessions.spawn(async move {
                    if let Err(e) = connection(incoming, pending, &slot.shared).await {
                        tracing::debug!("connection ended: {e:#}");
                    }
                    drop(slot);
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Refuse newcomers while the sessions wind down.
    endpoint.set_server_config(None);
    let grace = shared.shutdown_grace + Duration::from_secs(1);
    if tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        sessions.abort_all();
    }
}

/// A connection's place in the node's and its shard's counts, given back when the connection's
/// task ends, whichever way it ends (a panic unwinding through the task included).
struct ConnectionSlot {
    shared: Arc<Shared>,
    shard: usize,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.shard_connections[self.shard].fetch_sub(1, Ordering::Relaxed);
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open session's traces outside its task: the registry entry that fanout pushes to, the
/// presence it holds up, and the task serving its media streams. Dropped when the session ends,
/// on every exit path.
struct Online<'a> {
    shared: &'a Shared,
    user: String,
    conn_id: u64,
    media_streams: tokio::task::JoinHandle<()>,
}

impl Drop for Online<'_> {
    fn drop(&mut self) {
        self.media_streams.abort();
        self.shared.registry.unregister(&self.user, self.conn_id);
        self.shared.store.route_down(&self.user);
        self.shared.presence.disconnected(&self.user, self.conn_id);
    }
}

/// Sends `frame` as the last words on the control stream, waits (briefly) for the peer to get
/// it, then closes the connection with `code`.
async fn close_with(
    conn: &Connection,
    out: Outbound,
    writer: tokio::task::JoinHandle<()>,
    frame: Option<Bytes>,
    code: ErrorCode,
    reason: &str,
) {
    if let Some(frame) = frame {
        let _ = out.send(frame).await;
    }
    // Nothing queued after this (an ack writer's error, a late event) is written.
    let _ = out.send(LAST_WORDS_END).await;
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    conn.close(u32::from(code.0).into(), reason.as_bytes());
}

/// Why a connection is refused before its session opens: the last frame to send (if the
/// stream still works) and the close code.
struct Refusal {
    frame: Option<Bytes>,
    code: ErrorCode,
    reason: &'static str,
}

impl Refusal {
    fn new(
        request_id: u32,
        code: ErrorCode,
        message: impl AsRef<str>,
        reason: &'static str,
    ) -> Self {
        Self {
            frame: Some(error_frame(request_id, code, message)),
            code,
            reason,
        }
    }
}

/// Reads `Hello` and checks its version and token: the claims, the Hello's request id and the
/// protocol version the session speaks.
async fn authenticate(
    reader: &mut FrameReader<RecvStream>,
    deadline: tokio::time::Instant,
    verifier: &TokenVerifier,
) -> Result<(courier_auth::Claims, u32, u16), Refusal> {
    let hello = match tokio::time::timeout_at(deadline, reader.next()).await {
        Ok(Ok(Some(Frame::Hello(h)))) => h,
        Ok(Ok(Some(other))) => {
            let id = other.request_id().unwrap_or(0);
            return Err(Refusal::new(
                id,
                ErrorCode::UNAUTHENTICATED,
                "send Hello first",
                "no hello",
            ));
        }
        Ok(Err(ReadError::Decode(e))) => {
            return Err(Refusal::new(0, e.code(), e.to_string(), "bad frame"))
        }
        Ok(Ok(None) | Err(ReadError::Stream(_))) | Err(_) => {
            return Err(Refusal {
                frame: None,
                code: ErrorCode::UNAUTHENTICATED,
                reason: "no hello",
            });
        }
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
        let msg = format!(
            "protocol version {} is not supported; this server speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
            hello.version
        );
        return Err(Refusal::new(
            hello.request_id,
            ErrorCode::UNSUPPORTED_VERSION,
            msg,
            "version",
        ));
    }
    match verifier.verify(&hello.token, courier_wire::time::now_secs()) {
        Ok(claims) => Ok((claims, hello.request_id, hello.version)),
        Err(e) => Err(Refusal::new(
            hello.request_id,
            ErrorCode::UNAUTHENTICATED,
            e.to_string(),
            "unauthenticated",
        )),
    }
}

/// One connection, from its handshake to its close: the task every connection keeps for its
/// life, so its size counts per idle connection. The task is as large as its largest state,
/// and arguments and locals live across later awaits keep their room in every state: hence the
/// boxed `route_up` (a one-off 800 bytes) and the Welcome encoded at once (and `Incoming`
/// boxes quinn-proto's attempt; docs/PERFORMANCE.md, "Under 20 KB per idle connection").
async fn connection(incoming: Incoming, pending: Pending, shared: &Shared) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
    let conn = tokio::time::timeout_at(deadline, incoming.accept())
        .await
        .context("handshake timeout")??;
    let (send, recv) = tokio::time::timeout_at(deadline, conn.accept_bi())
        .await
        .context("no control stream")??;
    let (out, writer) =
        spawn_writer_with_handle(send, shared.outbound_queue, shared.outbound_bytes);
    let mut reader = FrameReader::from_clients(recv, shared.limits.max_frame);

    let (claims, hello_request_id, version) =
        match authenticate(&mut reader, deadline, &shared.verifier).await {
            Ok(c) => {
                drop(pending);
                c
            }
            Err(Refusal {
                frame,
                code,
                reason,
            }) => {
                shared.metrics.refused.inc();
                close_with(&conn, out, writer, frame, code, reason).await;
                return Ok(());
            }
        };

    // In a cluster, the user's route names this node before the session starts: every
    // message committed from here on reaches this node's inbox, and the client's sync covers
    // everything before (so the inbox need not deliver to this device what committed at or
    // before `since`).
    let since = match Box::pin(shared.store.route_up(&claims.user)).await {
        Ok(v) => v,
        Err(e) => {
            shared.store.route_down(&claims.user);
            tracing::warn!(user = %claims.user, "route: {e}");
            let frame =
                crate::session::store_error_frame(version, hello_request_id, &claims.user, &e);
            close_with(
                &conn,
                out,
                writer,
                Some(frame),
                ErrorCode::UNAVAILABLE,
                "route",
            )
            .await;
            return Ok(());
        }
    };
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let device = Device {
        conn_id,
        device: claims.device,
        out: out.clone(),
        conn: conn.clone(),
        since,
    };
    let session = Session::new(
        claims.user.clone(),
        claims.device,
        shared.store.clone(),
        out.clone(),
        shared.limits,
        shared.metrics.clone(),
        shared.registry.clone(),
    )
    .with_version(version)
    .with_push(shared.push.clone())
    .with_presence(PresenceLink {
        hub: shared.presence.clone(),
        conn_id,
        device: device.clone(),
    });
    let welcome = Frame::Welcome(Welcome {
        request_id: hello_request_id,
        version,
        user: claims.user.clone(),
        device: claims.device,
        server_time_ms: now_ms(),
        max_frame: shared.limits.max_frame,
        max_body: shared.limits.max_body,
        max_inflight: shared.limits.max_inflight,
    })
    .to_bytes();
    // Welcome goes out before registration makes the device visible to fanout, so it comes first.
    out.send(welcome).await.ok();
    shared.metrics.handshakes.inc();
    shared.registry.register(&claims.user, device);
    shared.presence.connected(&claims.user).await;
    tracing::debug!(user = %claims.user, device = claims.device, "session open");
    // Media streams: every further stream the client opens is an upload or a download.
    let media_streams = {
        let (conn, user, media) = (conn.clone(), claims.user.clone(), shared.media.clone());
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(crate::media::serve_stream(
                    send,
                    recv,
                    (user.clone(), version),
                    media.clone(),
                ));
            }
        })
    };

    let online = Online {
        shared,
        user: claims.user.clone(),
        conn_id,
        media_streams,
    };
    // The session lasts as long as its token: at expiry the client is told to come back with
    // a fresh one.
    let expires_in = claims
        .expires_at
        .saturating_mul(1000)
        .saturating_sub(now_ms());
    // Tokens valid for centuries are clamped to a decade (an Instant cannot be pushed that far).
    let expires_in = Duration::from_millis(expires_in.min(10 * 365 * 86_400_000));
    let expiry = tokio::time::Instant::now() + expires_in;
    let result = serve(&session, &mut reader, shared, expiry).await;
    drop(online);
    match result {
        Ended::Finished => {
            session.drain().await;
            close_with(&conn, out, writer, None, ErrorCode(0), "bye").await;
        }
        Ended::Refused(frame, code) => {
            session.drain().await;
            close_with(&conn, out, writer, Some(frame), code, "refused").await;
        }
        Ended::GoAway(code, reason) => {
            // Acknowledge what is committing, then say goodbye.
            let _ = tokio::time::timeout(shared.shutdown_grace, session.drain()).await;
            let goaway = Frame::GoAway(GoAway::new(code, reason)).to_bytes();
            close_with(&conn, out, writer, Some(goaway), code, reason).await;
        }
        Ended::Lost => {}
    }
    Ok(())
}

enum Ended {
    Finished,
    /// The client broke the protocol or ignored refusals: last words, then a close.
    Refused(Bytes, ErrorCode),
    /// The server is shutting down (`SHUTTING_DOWN`) or the session's token expired
    /// (`UNAUTHENTICATED`): GoAway with this code and reason, then a close.
    GoAway(ErrorCode, &'static str),
    Lost,
}

async fn serve(
    session: &Session,
    reader: &mut FrameReader<RecvStream>,
    shared: &Shared,
    expiry: tokio::time::Instant,
) -> Ended {
    let mut shutdown = shared.shutdown.clone();
    let expired = tokio::time::sleep_until(expiry);
    tokio::pin!(expired);
    loop {
        tokio::select! {
            () = &mut expired => {
                return Ended::GoAway(ErrorCode::UNAUTHENTICATED, "token expired: reconnect with a fresh token");
            }
            frame = reader.next() => match frame {
                Ok(Some(f)) => {
                    shared.metrics.frames_in.inc();
                    shared.metrics.bytes_in.inc_by(f.encoded_len() as u64);
                    // Boxed: handling one frame is the largest state of the connection's task,
                    // and an idle connection would hold its room all the time (1.8 KB).
                    match Box::pin(session.handle(f)).await {
                        Ok(()) => {}
                        Err(Stop::Disconnected) => return Ended::Lost,
                        Err(Stop::Close(frame, code)) => return Ended::Refused(frame, code),
                    }
                }
                Ok(None) => return Ended::Finished,
                Err(ReadError::Decode(e)) => return Ended::Refused(error_frame(0, e.code(), e.to_string()), e.code()),
                Err(ReadError::Stream(_)) => return Ended::Lost,
            },
            _ = shutdown.changed() => return Ended::GoAway(ErrorCode::SHUTTING_DOWN, "server shutting down"),
        }
    }
}
