//! A QUIC server endpoint driven by one loop per shard.
//!
//! quinn runs a task per connection beside an endpoint task, a channel between them, a timer and
//! a transmit buffer per connection, and a lock per connection. Here one driver task per
//! endpoint owns quinn-proto's [`proto::Endpoint`] and every connection's
//! [`proto::Connection`]: it receives a batch of datagrams, hands each to its connection
//! directly, runs the timers of all connections from one heap indexed by connection, and
//! sends what the connections that changed have to send. The gateway's shard is one thread, so
//! the one lock over the endpoint's state is uncontended; a connection that a session writes
//! to is only marked, and the driver sends for all marked connections once per turn.
//!
//! The handles ([`Connection`], [`SendStream`], [`RecvStream`], [`Incoming`]) have the meaning
//! and errors of quinn's (they return quinn's error types), for the part of quinn's API the
//! gateway uses: accepting connections and bidirectional streams, reading chunks, writing,
//! finishing, resetting and stopping streams, and closing. As in quinn, a connection whose
//! handles and streams are all dropped is closed with code 0, a dropped send stream is
//! finished and a dropped receive stream is stopped.

mod stream;
mod timers;

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn::{ConnectionError, VarInt};
use quinn_proto::{self as proto, ConnectionHandle, DatagramEvent, EndpointEvent, StreamId};
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState, BATCH_SIZE};
use tokio::io::unix::AsyncFd;

pub use stream::{RecvStream, SendStream};

/// Datagrams received in one turn of the driver before it sends and yields.
const RECV_BOUND: usize = 256;
/// Datagrams one connection may send in one turn (then it waits for the next turn).
const SEND_BOUND: usize = 20;
/// Most datagrams in one segmented (GSO) send.
const MAX_SEGMENTS: usize = 10;

/// A server endpoint on one UDP socket, with its driver task on the current runtime.
pub struct Endpoint {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as quinn-proto's own
        // calls left it; keep serving rather than poisoning every connection of the shard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct State {
    proto: proto::Endpoint,
    socket: AsyncFd<std::net::UdpSocket>,
    udp: UdpSocketState,
    conns: Conns,
    /// Connections with something to handle or send, in the order they asked.
    dirty: Vec<ConnectionHandle>,
    /// Each connection's next timeout (at most one entry per connection).
    timers: timers::Timers,
    incoming: VecDeque<proto::Incoming>,
    /// Stateless answers (version negotiation, retry, refusal, stateless reset) not sent yet.
    responses: VecDeque<(proto::Transmit, Vec<u8>)>,
    /// A connection's datagram the socket refused for now (`WouldBlock`); sent first.
    blocked: Option<(proto::Transmit, Vec<u8>)>,
    accept_waker: Option<Waker>,
    idle_waker: Option<Waker>,
    driver: Option<Waker>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    sleep_at: Option<Instant>,
    /// [`Endpoint::close`] was called: no connection is accepted any more.
    closed: bool,
    /// Live [`Endpoint`] handles; the driver ends once there are none and no connections.
    handles: usize,
    send_buf: Vec<u8>,
    recv_buf: Box<[u8]>,
    /// What the socket said about each datagram of a receive batch (kept: `BATCH_SIZE` of
    /// them are ~1.5 KB to initialise for every receive).
    recv_meta: Vec<RecvMeta>,
    max_segments: usize,
}

/// A connection and what waits on it.
struct Conn {
    inner: proto::Connection,
    /// Handles of the application ([`Connection`]s, streams, a pending [`Connecting`]).
    refs: usize,
    dirty: bool,
    /// quinn-proto said the connection is drained; it leaves once no handle is left.
    drained: bool,
    connected: bool,
    error: Option<ConnectionError>,
    connect_waker: Option<Waker>,
    accept_waker: Option<Waker>,
    readers: Wakers,
    writers: Wakers,
    stopped: Wakers,
}

/// The tasks waiting on a connection's streams, by stream. A connection has a few streams
/// (the peer may open only as many as the transport allows), so a list beats a hash map.
#[derive(Default)]
pub(crate) struct Wakers(Vec<(StreamId, Waker)>);

impl Wakers {
    pub(crate) fn insert(&mut self, id: StreamId, cx: &Context<'_>) {
        match self.0.iter_mut().find(|(s, _)| *s == id) {
            Some((_, w)) if w.will_wake(cx.waker()) => {}
            Some((_, w)) => *w = cx.waker().clone(),
            None => self.0.push((id, cx.waker().clone())),
        }
    }

    pub(crate) fn remove(&mut self, id: StreamId) -> Option<Waker> {
        let at = self.0.iter().position(|(s, _)| *s == id)?;
        Some(self.0.swap_remove(at).1)
    }

    fn wake(&mut self, id: StreamId) {
        if let Some(w) = self.remove(id) {
            w.wake();
        }
    }

    fn wake_all(&mut self) {
        for (_, w) in self.0.drain(..) {
            w.wake();
        }
    }
}

/// How many connections one chunk of [`Conns`] holds: as many as fit in 1 MiB.
const CHUNK: usize = {
    let n = (1 << 20) / size_of::<Option<Conn>>();
    if n == 0 {
        1
    } else {
        n
    }
};

/// The connections, at the index quinn-proto gave each (its handles are slab indices, so the
/// table stays dense), in chunks of [`CHUNK`] slots held inline. Not one box per connection:
/// `quinn_proto::Connection` alone is 6,160 bytes, just over an allocator size class (mimalloc
/// rounds it up to 7,168), so a box per connection wasted ~800 bytes each; a 1 MiB chunk
/// wastes less than one slot. A chunk goes when its last connection does.
#[derive(Default)]
struct Conns {
    chunks: Vec<Option<Chunk>>,
    live: usize,
}

struct Chunk {
    slots: Box<[Option<Conn>]>,
    live: usize,
}

impl Conns {
    fn get_mut(&mut self, ch: ConnectionHandle) -> Option<&mut Conn> {
        let chunk = self.chunks.get_mut(ch.0 / CHUNK)?.as_mut()?;
        chunk.slots[ch.0 % CHUNK].as_mut()
    }

    fn insert(&mut self, ch: ConnectionHandle, conn: Conn) {
        let c = ch.0 / CHUNK;
        if self.chunks.len() <= c {
            self.chunks.resize_with(c + 1, || None);
        }
        let chunk = self.chunks[c].get_or_insert_with(|| Chunk {
            slots: (0..CHUNK).map(|_| None).collect(),
            live: 0,
        });
        if chunk.slots[ch.0 % CHUNK].replace(conn).is_none() {
            chunk.live += 1;
            self.live += 1;
        }
    }

    fn remove(&mut self, ch: ConnectionHandle) -> Option<Conn> {
        let c = ch.0 / CHUNK;
        let chunk = self.chunks.get_mut(c)?.as_mut()?;
        let conn = chunk.slots[ch.0 % CHUNK].take()?;
        chunk.live -= 1;
        self.live -= 1;
        if chunk.live == 0 {
            self.chunks[c] = None;
        }
        Some(conn)
    }

    fn handles(&self) -> Vec<ConnectionHandle> {
        let mut all = Vec::with_capacity(self.live);
        for (c, chunk) in self.chunks.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            for (i, slot) in chunk.slots.iter().enumerate() {
                if slot.is_some() {
                    all.push(ConnectionHandle(c * CHUNK + i));
                }
            }
        }
        all
    }

    fn len(&self) -> usize {
        self.live
    }

    fn is_empty(&self) -> bool {
        self.live == 0
    }
}

impl Conn {
    fn new(inner: proto::Connection) -> Self {
        Self {
            inner,
            refs: 0,
            dirty: false,
            drained: false,
            connected: false,
            error: None,
            connect_waker: None,
            accept_waker: None,
            readers: Wakers::default(),
            writers: Wakers::default(),
            stopped: Wakers::default(),
        }
    }

    /// The connection ended (`reason`): every waiter learns it.
    fn terminate(&mut self, reason: ConnectionError) {
        if self.error.is_none() {
            self.error = Some(reason);
        }
        wake(&mut self.connect_waker);
        wake(&mut self.accept_waker);
        self.readers.wake_all();
        self.writers.wake_all();
        self.stopped.wake_all();
    }

    fn close(&mut self, code: VarInt, reason: Bytes) {
        if self.error.is_none() {
            self.inner.close(Instant::now(), code, reason);
            self.terminate(ConnectionError::LocallyClosed);
        }
    }

    /// Hands the connection's endpoint events to the endpoint, and the endpoint's answers back
    /// to the connection; true if there was an answer (the connection has more to do). A
    /// drained connection is only noted: it leaves once no handle is left.
    fn forward_endpoint_events(
        &mut self,
        proto: &mut proto::Endpoint,
        ch: ConnectionHandle,
    ) -> bool {
        let mut answered = false;
        while let Some(event) = self.inner.poll_endpoint_events() {
            if event.is_drained() {
                self.drained = true;
            } else if let Some(back) = proto.handle_event(ch, event) {
                self.inner.handle_event(back);
                answered = true;
            }
        }
        answered
    }

    /// The application events quinn-proto has for this connection, turned into wake-ups.
    fn forward_events(&mut self) {
        use proto::{Dir, Event, StreamEvent};
        while let Some(event) = self.inner.poll() {
            match event {
                Event::Connected => {
                    self.connected = true;
                    wake(&mut self.connect_waker);
                }
                Event::ConnectionLost { reason } => self.terminate(reason),
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => wake(&mut self.accept_waker),
                Event::Stream(StreamEvent::Readable { id }) => self.readers.wake(id),
                Event::Stream(StreamEvent::Writable { id }) => self.writers.wake(id),
                Event::Stream(StreamEvent::Finished { id }) => self.stopped.wake(id),
                Event::Stream(StreamEvent::Stopped { id, .. }) => {
                    self.stopped.wake(id);
                    self.writers.wake(id);
                }
                // Unidirectional streams and datagrams are not offered to peers.
                Event::Stream(_)
                | Event::HandshakeDataReady
                | Event::DatagramReceived
                | Event::DatagramsUnblocked => {}
            }
        }
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

/// Keeps the waker of the task polling now, replacing an older one.
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl State {
    /// Marks a connection for the driver's next turn and wakes the driver (for the
    /// application's calls).
    fn touch(&mut self, ch: ConnectionHandle) {
        self.mark(ch);
        wake(&mut self.driver);
    }

    /// Marks a connection for the driver's turn (for the driver itself, which needs no wake-up:
    /// it flushes what it marked before it sleeps).
    fn mark(&mut self, ch: ConnectionHandle) {
        if let Some(conn) = self.conns.get_mut(ch) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(ch);
            }
        }
    }

    fn conn(&mut self, ch: ConnectionHandle) -> &mut Conn {
        // A handle keeps its connection in the map (`refs`), so it is always there.
        self.conns
            .get_mut(ch)
            .expect("a connection outlives its handles")
    }

    /// One turn of the driver. `Ready` once the endpoint has no handle and no connection left.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        register(&mut self.driver, cx);
        let mut turns = 0;
        loop {
            let now = Instant::now();
            self.send_pending(cx);
            let mut again = self.receive(cx, now);
            self.fire_timers(now);
            again |= self.flush(now, cx);
            // Stateless answers the datagrams of this turn asked for.
            self.send_pending(cx);
            if self.arm_timer(cx) {
                again = true;
            }
            if self.handles == 0 && self.conns.is_empty() {
                return Poll::Ready(());
            }
            if !again {
                return Poll::Pending;
            }
            turns += 1;
            if turns == 4 {
                // Let the sessions run before the next turn.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    /// Sends what an earlier turn could not, then the stateless answers, until the socket
    /// refuses (it wakes the driver when it drains).
    fn send_pending(&mut self, cx: &mut Context<'_>) {
        if let Some((t, buf)) = self.blocked.take() {
            if send(&self.socket, &self.udp, &t, &buf, cx).is_pending() {
                self.blocked = Some((t, buf));
                return;
            }
        }
        while let Some((t, buf)) = self.responses.pop_front() {
            if send(&self.socket, &self.udp, &t, &buf, cx).is_pending() {
                self.blocked = Some((t, buf));
                return;
            }
        }
    }

    /// Reads a bounded number of datagrams; true when more may be waiting.
    fn receive(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut received = 0;
        let mut recv_buf = std::mem::take(&mut self.recv_buf);
        let mut metas = std::mem::take(&mut self.recv_meta);
        let chunk = recv_buf.len() / BATCH_SIZE;
        let more = loop {
            let mut guard = match self.socket.poll_read_ready(cx) {
                Poll::Pending => break false,
                Poll::Ready(Err(e)) => {
                    tracing::warn!("udp receive readiness: {e}");
                    break false;
                }
                Poll::Ready(Ok(guard)) => guard,
            };
            let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] = {
                let mut bufs = recv_buf.chunks_mut(chunk).map(IoSliceMut::new);
                std::array::from_fn(|_| bufs.next().expect("BATCH_SIZE chunks"))
            };
            let udp = &self.udp;
            let n = match guard
                .try_io(|fd| udp.recv(UdpSockRef::from(fd.get_ref()), &mut iovs, &mut metas))
            {
                Ok(Ok(n)) => {
                    // A short batch emptied the socket's queue: the next read would only say
                    // so. (Readiness that arrives meanwhile is kept: tokio clears only the
                    // readiness this guard saw.) The next `poll_read_ready` then registers
                    // the driver for the next datagram without a system call.
                    if n < BATCH_SIZE {
                        guard.clear_ready();
                    }
                    n
                }
                // ICMP errors of earlier sends; meaningless in QUIC.
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => continue,
                Ok(Err(e)) => {
                    // Not a reason to stop reading: forget this readiness and wait for the
                    // next (breaking out with it set would leave no waker registered).
                    tracing::warn!("udp receive: {e}");
                    guard.clear_ready();
                    continue;
                }
                // Not readable after all (the guard cleared its readiness).
                Err(_) => continue,
            };
            drop(guard);
            for (meta, buf) in metas.iter().zip(iovs.iter()).take(n) {
                let mut data: BytesMut = buf[..meta.len].into();
                while !data.is_empty() {
                    let datagram = data.split_to(meta.stride.min(data.len()));
                    self.datagram(now, meta, datagram);
                    received += 1;
                }
            }
            if received >= RECV_BOUND {
                break true;
            }
        };
        self.recv_buf = recv_buf;
        self.recv_meta = metas;
        more
    }

    fn datagram(&mut self, now: Instant, meta: &RecvMeta, data: BytesMut) {
        let mut buf = Vec::new();
        let ecn = meta.ecn.map(proto_ecn);
        match self
            .proto
            .handle(now, meta.addr, meta.dst_ip, ecn, data, &mut buf)
        {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(conn) = self.conns.get_mut(ch) {
                    conn.inner.handle_event(event);
                    self.mark(ch);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.closed {
                    let t = self.proto.refuse(incoming, &mut buf);
                    self.responses.push_back((t, buf));
                } else {
                    self.incoming.push_back(incoming);
                    wake(&mut self.accept_waker);
                }
            }
            Some(DatagramEvent::Response(t)) => self.responses.push_back((t, buf)),
            None => {}
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(ch) = self.timers.pop_due(now) {
            let ch = ConnectionHandle(ch);
            if let Some(conn) = self.conns.get_mut(ch) {
                conn.inner.handle_timeout(now);
                self.mark(ch);
            }
        }
    }

    /// Handles every marked connection: its events, what it sends, its timer, its end.
    /// True when a connection has more to send than one turn allows.
    fn flush(&mut self, now: Instant, cx: &mut Context<'_>) -> bool {
        // Only the connections marked so far: one marked again here waits for the next turn.
        let marked = self.dirty.len();
        let mut again = false;
        let mut done = 0;
        while done < marked && self.blocked.is_none() {
            let ch = self.dirty[done];
            done += 1;
            again |= self.flush_one(ch, now, cx);
        }
        self.dirty.drain(..done);
        // A full socket wakes the driver when it drains; until then there is nothing to do.
        again && self.blocked.is_none()
    }

    fn flush_one(&mut self, ch: ConnectionHandle, now: Instant, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conns.get_mut(ch) else {
            return false;
        };
        conn.dirty = false;
        // Endpoint events first (new connection ids, a drained connection), then the
        // application's.
        conn.forward_endpoint_events(&mut self.proto, ch);
        conn.forward_events();
        let mut sent = 0;
        let mut more = false;
        while sent < SEND_BOUND {
            self.send_buf.clear();
            let Some(t) = conn.inner.poll_transmit(
                now,
                self.max_segments.min(MAX_SEGMENTS),
                &mut self.send_buf,
            ) else {
                break;
            };
            sent += t.segment_size.map_or(1, |s| t.size.div_ceil(s));
            let buf = &self.send_buf[..t.size];
            if send(&self.socket, &self.udp, &t, buf, cx).is_pending() {
                // This one goes first once the socket drains; the rest in a later turn.
                self.blocked = Some((t, buf.to_vec()));
                more = true;
                break;
            }
            if sent >= SEND_BOUND {
                more = true;
            }
        }
        // Sending may have produced endpoint events and changed the timeout.
        more |= conn.forward_endpoint_events(&mut self.proto, ch);
        self.timers.set(ch.0, conn.inner.poll_timeout());
        if conn.drained && conn.refs == 0 {
            self.release(ch);
            return false;
        }
        if more {
            self.mark(ch);
        }
        more
    }

    /// A drained connection without handles leaves the endpoint.
    fn release(&mut self, ch: ConnectionHandle) {
        if self.conns.remove(ch).is_some() {
            self.timers.set(ch.0, None);
            self.proto.handle_event(ch, EndpointEvent::drained());
        }
        if self.conns.is_empty() {
            wake(&mut self.idle_waker);
        }
    }

    /// Sets the driver's sleep to the earliest timeout; true if that is already due.
    fn arm_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((at, _)) = self.timers.first() else {
            self.sleep_at = None;
            return false;
        };
        if self.sleep_at != Some(at) {
            self.sleep.as_mut().reset(at.into());
            self.sleep_at = Some(at);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.sleep_at = None;
            return true;
        }
        false
    }

    /// A handle of `ch` was dropped.
    fn unref(&mut self, ch: ConnectionHandle) {
        let conn = self.conn(ch);
        conn.refs -= 1;
        if conn.refs == 0 {
            // As quinn does: a connection nobody holds is closed (code 0), then leaves once
            // drained.
            conn.close(0u32.into(), Bytes::new());
            self.touch(ch);
        }
    }
}

/// Sends one transmit; `Pending` when the socket is full (the driver is woken when it drains).
/// Other errors drop the datagram: QUIC recovers from the loss, and quinn-udp already logs them.
fn send(
    socket: &AsyncFd<std::net::UdpSocket>,
    udp: &UdpSocketState,
    t: &proto::Transmit,
    contents: &[u8],
    cx: &mut Context<'_>,
) -> Poll<()> {
    let transmit = quinn_udp::Transmit {
        destination: t.destination,
        ecn: t.ecn.map(udp_ecn),
        contents,
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    };
    loop {
        let mut guard = match socket.poll_write_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                tracing::warn!("udp send readiness: {e}");
                return Poll::Ready(());
            }
            Poll::Ready(Ok(guard)) => guard,
        };
        match guard.try_io(|fd| udp.send(UdpSockRef::from(fd.get_ref()), &transmit)) {
            Ok(Ok(())) => return Poll::Ready(()),
            Ok(Err(e)) => {
                tracing::debug!("udp send to {}: {e}", t.destination);
                return Poll::Ready(());
            }
            // Full after all: the guard cleared its readiness; wait for the next.
            Err(_) => continue,
        }
    }
}

fn udp_ecn(ecn: proto::EcnCodepoint) -> quinn_udp::EcnCodepoint {
    match ecn {
        proto::EcnCodepoint::Ect0 => quinn_udp::EcnCodepoint::Ect0,
        proto::EcnCodepoint::Ect1 => quinn_udp::EcnCodepoint::Ect1,
        proto::EcnCodepoint::Ce => quinn_udp::EcnCodepoint::Ce,
    }
}

fn proto_ecn(ecn: quinn_udp::EcnCodepoint) -> proto::EcnCodepoint {
    match ecn {
        quinn_udp::EcnCodepoint::Ect0 => proto::EcnCodepoint::Ect0,
        quinn_udp::EcnCodepoint::Ect1 => proto::EcnCodepoint::Ect1,
        quinn_udp::EcnCodepoint::Ce => proto::EcnCodepoint::Ce,
    }
}

impl Endpoint {
    /// Serves `server` on `socket` (bound, blocking or not). Starts the driver task on the
    /// current tokio runtime, so call it from within one.
    pub fn server(
        config: proto::EndpointConfig,
        server: quinn::ServerConfig,
        socket: std::net::UdpSocket,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let udp = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // Deprecated for types whose fd another owner may close; this one owns its socket,
        // and `register`, the replacement, is `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let socket = AsyncFd::new(socket)?;
        let payload = config.get_max_udp_payload_size().min(64 * 1024) as usize;
        let recv_buf = vec![0u8; payload * udp.gro_segments() * BATCH_SIZE].into_boxed_slice();
        let max_segments = udp.max_gso_segments();
        let proto = proto::Endpoint::new(
            Arc::new(config),
            Some(Arc::new(server)),
            !udp.may_fragment(),
            None,
        );
        let state = State {
            proto,
            socket,
            udp,
            conns: Conns::default(),
            dirty: Vec::new(),
            timers: timers::Timers::default(),
            incoming: VecDeque::new(),
            responses: VecDeque::new(),
            blocked: None,
            accept_waker: None,
            idle_waker: None,
            driver: None,
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            sleep_at: None,
            closed: false,
            handles: 1,
            send_buf: Vec::new(),
            recv_buf,
            recv_meta: vec![RecvMeta::default(); BATCH_SIZE],
            max_segments,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
        });
        let driver = shared.clone();
        tokio::spawn(async move { poll_fn(|cx| driver.lock().drive(cx)).await });
        Ok(Self { shared })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.lock().socket.get_ref().local_addr()
    }

    /// The next connection attempt; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Incoming> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(incoming) = state.incoming.pop_front() {
                return Poll::Ready(Some(Incoming {
                    shared: self.shared.clone(),
                    inner: Some(Box::new(incoming)),
                }));
            }
            if state.closed {
                return Poll::Ready(None);
            }
            register(&mut state.accept_waker, cx);
            Poll::Pending
        })
        .await
    }

    /// Replaces the server configuration for new connections; `None` refuses them.
    pub fn set_server_config(&self, server: Option<quinn::ServerConfig>) {
        self.shared
            .lock()
            .proto
            .set_server_config(server.map(Arc::new));
    }

    /// Closes every connection with `code` and `reason` and accepts no more.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        let mut state = self.shared.lock();
        state.closed = true;
        let reason = Bytes::copy_from_slice(reason);
        let handles = state.conns.handles();
        for ch in handles {
            state.conn(ch).close(code, reason.clone());
            state.touch(ch);
        }
        while let Some(incoming) = state.incoming.pop_front() {
            state.proto.ignore(incoming);
        }
        wake(&mut state.accept_waker);
        wake(&mut state.driver);
    }

    /// Waits until every connection has drained and been dropped.
    pub async fn wait_idle(&self) {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if state.conns.is_empty() {
                return Poll::Ready(());
            }
            register(&mut state.idle_waker, cx);
            Poll::Pending
        })
        .await
    }

    /// Open connections (handshaking, established or closing).
    pub fn open_connections(&self) -> usize {
        self.shared.lock().conns.len()
    }
}

impl Clone for Endpoint {
    fn clone(&self) -> Self {
        self.shared.lock().handles += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.handles -= 1;
        wake(&mut state.driver);
    }
}

/// A connection attempt, to accept, refuse, or ask to validate its address first.
pub struct Incoming {
    shared: Arc<Shared>,
    /// Taken by the decision; if none is made the attempt is ignored when this is dropped.
    /// Boxed (quinn-proto's is ~370 bytes): an `Incoming` handed to a task keeps its room in
    /// that task's future for the connection's life, even once the handshake has taken it.
    inner: Option<Box<proto::Incoming>>,
}

impl Incoming {
    fn proto(&self) -> &proto::Incoming {
        self.inner
            .as_ref()
            .expect("taken only by consuming methods")
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.proto().remote_address()
    }

    /// Whether the peer proved it owns its address (it came back with a retry token).
    pub fn remote_address_validated(&self) -> bool {
        self.proto().remote_address_validated()
    }

    /// Whether a retry may be asked for (not already after one).
    pub fn may_retry(&self) -> bool {
        self.proto().may_retry()
    }

    /// Asks the peer to come back with a token that validates its address. If it already
    /// came back once, the attempt is ignored instead.
    pub fn retry(mut self) {
        let incoming = self.inner.take().expect("taken once");
        let mut state = self.shared.lock();
        let mut buf = Vec::new();
        match state.proto.retry(*incoming, &mut buf) {
            Ok(t) => state.responses.push_back((t, buf)),
            Err(e) => state.proto.ignore(e.into_incoming()),
        }
        wake(&mut state.driver);
    }

    /// Refuses the attempt (the peer gets `CONNECTION_REFUSED`).
    pub fn refuse(mut self) {
        let incoming = self.inner.take().expect("taken once");
        let mut state = self.shared.lock();
        let mut buf = Vec::new();
        let t = state.proto.refuse(*incoming, &mut buf);
        state.responses.push_back((t, buf));
        wake(&mut state.driver);
    }

    /// Accepts the attempt: the handshake proceeds, and the future ends when it is done.
    pub fn accept(mut self) -> Connecting {
        let incoming = self.inner.take().expect("taken once");
        let shared = self.shared.clone();
        let mut state = shared.lock();
        let mut buf = Vec::new();
        let result = state
            .proto
            .accept(*incoming, Instant::now(), &mut buf, None);
        let conn = match result {
            Ok((ch, inner)) => {
                let mut conn = Conn::new(inner);
                conn.refs = 1;
                state.conns.insert(ch, conn);
                state.touch(ch);
                Ok(Connection {
                    shared: shared.clone(),
                    ch,
                })
            }
            Err(e) => {
                if let Some(t) = e.response {
                    state.responses.push_back((t, buf));
                    wake(&mut state.driver);
                }
                Err(e.cause)
            }
        };
        drop(state);
        Connecting { conn: Some(conn) }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(incoming) = self.inner.take() {
            self.shared.lock().proto.ignore(*incoming);
        }
    }
}

/// A connection being handshaken; resolves to the [`Connection`] once it is established.
pub struct Connecting {
    conn: Option<Result<Connection, ConnectionError>>,
}

impl Future for Connecting {
    type Output = Result<Connection, ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let conn = match self.conn.as_ref().expect("polled after completion") {
            Ok(c) => c,
            Err(_) => return Poll::Ready(self.conn.take().expect("present")),
        };
        {
            let mut state = conn.shared.lock();
            let c = state.conn(conn.ch);
            if !c.connected {
                if let Some(e) = &c.error {
                    return Poll::Ready(Err(e.clone()));
                }
                register(&mut c.connect_waker, cx);
                return Poll::Pending;
            }
        }
        Poll::Ready(self.conn.take().expect("present"))
    }
}

/// An established connection. Clones share it; when every handle and stream is dropped it is
/// closed with code 0.
pub struct Connection {
    shared: Arc<Shared>,
    ch: ConnectionHandle,
}

impl Connection {
    /// The next bidirectional stream the peer opens.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            let conn = state.conn(self.ch);
            // Streams already opened are handed out even after the connection failed.
            if let Some(id) = conn.inner.streams().accept(proto::Dir::Bi) {
                conn.refs += 2;
                // Accepting may give the peer more stream credit.
                state.touch(self.ch);
                return Poll::Ready(Ok((
                    SendStream::new(self.shared.clone(), self.ch, id),
                    RecvStream::new(self.shared.clone(), self.ch, id),
                )));
            }
            if let Some(e) = &conn.error {
                return Poll::Ready(Err(e.clone()));
            }
            register(&mut conn.accept_waker, cx);
            Poll::Pending
        })
        .await
    }

    /// Closes the connection at once with `code` and `reason` (what is not yet delivered of
    /// the streams may be lost: wait for a stream's `stopped()` first to avoid that).
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        let mut state = self.shared.lock();
        state
            .conn(self.ch)
            .close(code, Bytes::copy_from_slice(reason));
        state.touch(self.ch);
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.shared.lock().conn(self.ch).inner.remote_address()
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.shared.lock().conn(self.ch).error.clone()
    }
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        self.shared.lock().conn(self.ch).refs += 1;
        Self {
            shared: self.shared.clone(),
            ch: self.ch,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.lock().unref(self.ch);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("handle", &self.ch.0)
            .finish()
    }
}
