//! [`Client`]: one authenticated connection to a gateway.
//!
//! A reader task decodes frames from the control stream: answers (frames that carry a request
//! id) complete the matching request; everything else (delivered messages, GoAway, events) goes
//! to [`Events`]. Writes go through a coalescing writer task ([`courier_net::io::spawn_writer`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use courier_wire::frame::{
    Ack, Attachment, ChatList, ChatPosition, ChatSpec, ChatSummary, CreateChat, Direction, GetChat,
    Hello, History, HistoryPage, ListChats, Message, MessageKind, Ping, PresenceSetting,
    PresenceSubscribe, PushProvider, Receipt, ReceiptKind, RegisterPush, Send, SendOk, Sync,
    SyncEnd, Typing, UpdateChat, Welcome,
};
use courier_wire::{Frame, DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::Closer;
use crate::tls::{client_config, Trust};
use crate::ClientError;
use courier_net::io::{spawn_writer, FrameReader, ReadError};

/// Something the server sent that is not the answer to a request.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message for this device.
    Message(Message),
    /// The server is going away; reconnect later.
    GoAway(courier_wire::frame::GoAway),
    /// Another unsolicited frame (receipts, typing, presence, sync ends).
    Frame(Frame),
    /// The connection ended; no more events follow.
    Closed(String),
}

/// The stream of [`Event`]s of one connection.
pub type Events = mpsc::Receiver<Event>;

/// Requests waiting for their answers. Once the read loop has ended it is closed: a request
/// registered after that would wait for an answer nobody reads, so it fails at once instead.
#[derive(Default)]
struct Waiters {
    by_id: HashMap<u32, oneshot::Sender<Frame>>,
    closed: bool,
}

type Pending = Arc<Mutex<Waiters>>;

/// How many events may wait unread before the SDK gives up on the connection (see `read_loop`).
const EVENT_QUEUE: usize = 8192;

/// One authenticated connection. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    pub(crate) conn: quinn::Connection,
    out: courier_net::io::Outbound,
    pending: Pending,
    next_id: Arc<AtomicU32>,
    inflight: Arc<Semaphore>,
    welcome: Arc<Welcome>,
    _endpoint: quinn::Endpoint,
}

/// UDP datagrams a connection has sent and received so far (QUIC's own count: every packet,
/// acknowledgements and retransmissions included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Datagrams {
    /// Sent to the server.
    pub sent: u64,
    /// Received from the server.
    pub received: u64,
}

impl Client {
    /// The datagrams this connection has sent and received so far: against the server's
    /// message count, what each message costs on the wire.
    pub fn datagrams(&self) -> Datagrams {
        let s = self.conn.stats();
        Datagrams {
            sent: s.udp_tx.datagrams,
            received: s.udp_rx.datagrams,
        }
    }

    /// Connects to `addr`, trusting certificates as `trust` says, and authenticates with `token`.
    /// `server_name` is the name in the server's certificate (`localhost` for `courier serve`'s own).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        trust: &Trust,
        token: &str,
    ) -> Result<(Self, Events), ClientError> {
        Self::connect_with_version(addr, server_name, trust, token, PROTOCOL_VERSION).await
    }

    /// [`Client::connect`] announcing another protocol version (for testing servers).
    pub async fn connect_with_version(
        addr: SocketAddr,
        server_name: &str,
        trust: &Trust,
        token: &str,
        version: u16,
    ) -> Result<(Self, Events), ClientError> {
        let endpoint = client_endpoint(addr, trust)?;
        Self::connect_via(&endpoint, addr, server_name, token, version).await
    }

    /// Connects through an existing endpoint (one UDP socket), so that many connections can
    /// share a socket: a load generator holds 100K connections on a few sockets this way.
    pub async fn connect_via(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        server_name: &str,
        token: &str,
        version: u16,
    ) -> Result<(Self, Events), ClientError> {
        let endpoint = endpoint.clone();
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(ClientError::config)?
            .await
            .map_err(|e| ClientError::handshake(&e))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::handshake(&e))?;
        let out = spawn_writer(send, 1024);
        let hello = Frame::Hello(Hello {
            request_id: 0,
            version,
            token: Bytes::copy_from_slice(token.as_bytes()),
        });
        out.send(hello.to_bytes())
            .await
            .map_err(|_| ClientError::ended(&conn))?;

        // The server's limits are not known before Welcome: read it with the protocol's default.
        let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME);
        let welcome = match reader.next().await {
            Ok(Some(Frame::Welcome(w))) => w,
            Ok(Some(f @ (Frame::ErrorFrame(_) | Frame::RetryLater(_)))) => {
                return Err(ClientError::from_refusal(&f).expect("a refusal"));
            }
            Ok(Some(other)) => return Err(ClientError::Unexpected(other.kind())),
            Ok(None) => return Err(ClientError::ended(&conn)),
            Err(ReadError::Decode(e)) => return Err(e.into()),
            Err(ReadError::Stream(e)) => return Err(ClientError::stream(&e)),
        };
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let pending: Pending = Arc::default();
        tokio::spawn(read_loop(reader, conn.clone(), pending.clone(), events_tx));
        let client = Self {
            conn,
            out,
            pending,
            next_id: Arc::new(AtomicU32::new(1)),
            inflight: Arc::new(Semaphore::new(welcome.max_inflight.max(1) as usize)),
            welcome: Arc::new(welcome),
            _endpoint: endpoint,
        };
        Ok((client, events))
    }

    /// What the server said when the session opened: who we are and its limits.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// A fresh request id (never 0, which names no request). A frame sent with
    /// [`Client::send_raw`] under such an id gets its answer as an [`Event::Frame`].
    pub fn next_request_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed).max(1)
    }

    /// Sends a request built around a fresh request id and waits for its answer. Error frames
    /// become [`ClientError::Server`].
    pub async fn request(&self, build: impl FnOnce(u32) -> Frame) -> Result<Frame, ClientError> {
        let id = self.next_request_id();
        let frame = build(id);
        if frame.encoded_len() > self.welcome.max_frame as usize {
            return Err(ClientError::TooLarge(format!(
                "frame of {} bytes exceeds the server's limit of {}",
                frame.encoded_len(),
                self.welcome.max_frame
            )));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("pending lock");
            if pending.closed {
                return Err(ClientError::ended(&self.conn));
            }
            pending.by_id.insert(id, tx);
        }
        if self.out.send(frame.to_bytes()).await.is_err() {
            self.pending.lock().expect("pending lock").by_id.remove(&id);
            return Err(ClientError::ended(&self.conn));
        }
        match rx.await {
            Ok(f) => match ClientError::from_refusal(&f) {
                Some(e) => Err(e),
                None => Ok(f),
            },
            Err(_) => Err(ClientError::ended(&self.conn)),
        }
    }

    /// Sends a frame that expects no answer (acks, typing, receipts).
    pub async fn post(&self, frame: Frame) -> Result<(), ClientError> {
        self.out
            .send(frame.to_bytes())
            .await
            .map_err(|_| ClientError::ended(&self.conn))
    }

    /// Sends raw bytes on the control stream, exactly as given (for protocol tests).
    pub async fn send_raw(&self, bytes: Bytes) -> Result<(), ClientError> {
        self.out
            .send(bytes)
            .await
            .map_err(|_| ClientError::ended(&self.conn))
    }

    /// The 1:1 chat with `peer` (created on first use).
    pub async fn create_direct_chat(&self, peer: &str) -> Result<ChatSummary, ClientError> {
        self.create_chat(ChatSpec::Direct {
            peer: peer.to_owned(),
        })
        .await
    }

    /// A new group with the caller and `members`.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[&str],
    ) -> Result<ChatSummary, ClientError> {
        let members = members.iter().map(|m| (*m).to_owned()).collect();
        self.create_chat(ChatSpec::Group {
            name: name.to_owned(),
            members,
        })
        .await
    }

    async fn create_chat(&self, spec: ChatSpec) -> Result<ChatSummary, ClientError> {
        match self
            .request(|request_id| Frame::CreateChat(CreateChat { request_id, spec }))
            .await?
        {
            Frame::ChatInfo(info) => Ok(info.chat),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// One chat, if the caller is a member.
    pub async fn get_chat(&self, chat_id: u64) -> Result<ChatSummary, ClientError> {
        match self
            .request(|request_id| {
                Frame::GetChat(GetChat {
                    request_id,
                    chat_id,
                })
            })
            .await?
        {
            Frame::ChatInfo(info) => Ok(info.chat),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// A page of the caller's chats with ids above `after_chat`.
    pub async fn list_chats(&self, after_chat: u64, limit: u32) -> Result<ChatList, ClientError> {
        match self
            .request(|request_id| {
                Frame::ListChats(ListChats {
                    request_id,
                    after_chat,
                    limit,
                })
            })
            .await?
        {
            Frame::ChatList(list) => Ok(list),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Sends a text message with a fresh client message id; returns once it is durable.
    pub async fn send(&self, chat_id: u64, body: impl Into<Bytes>) -> Result<SendOk, ClientError> {
        self.send_message(
            chat_id,
            new_client_msg_id(),
            MessageKind::Text,
            body.into(),
            Vec::new(),
        )
        .await
    }

    /// Sends a message with a caller-chosen client message id (reuse it to retry safely). Waits
    /// while the connection already has `Welcome::max_inflight` sends outstanding.
    pub async fn send_message(
        &self,
        chat_id: u64,
        client_msg_id: [u8; 16],
        kind: MessageKind,
        body: Bytes,
        attachments: Vec<Attachment>,
    ) -> Result<SendOk, ClientError> {
        if body.len() > self.welcome.max_body as usize {
            return Err(ClientError::TooLarge(format!(
                "body of {} bytes exceeds the server's limit of {}",
                body.len(),
                self.welcome.max_body
            )));
        }
        let _permit = self
            .inflight
            .acquire()
            .await
            .map_err(|_| ClientError::closed(Closer::Client, "client closed"))?;
        let frame = |request_id| {
            Frame::Send(Send {
                request_id,
                client_msg_id,
                chat_id,
                kind,
                body,
                attachments,
            })
        };
        match self.request(frame).await? {
            Frame::SendOk(ok) => Ok(ok),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// A page of a chat's history beyond `anchor` in `direction`.
    pub async fn history(
        &self,
        chat_id: u64,
        direction: Direction,
        anchor: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let frame = |request_id| {
            Frame::History(History {
                request_id,
                chat_id,
                direction,
                seq: anchor,
                limit,
            })
        };
        match self.request(frame).await? {
            Frame::HistoryPage(page) => Ok(page),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Asks for one page of what this device missed: the messages arrive as
    /// [`Event::Message`]s before this returns the page's end.
    pub async fn sync_page(
        &self,
        positions: Vec<ChatPosition>,
        limit: u32,
    ) -> Result<SyncEnd, ClientError> {
        match self
            .request(|request_id| {
                Frame::Sync(Sync {
                    request_id,
                    limit,
                    positions,
                })
            })
            .await?
        {
            Frame::SyncEnd(end) => Ok(end),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Tells the server this device holds `chat_id` up to `seq` (cumulative).
    pub async fn ack(&self, chat_id: u64, seq: u64) -> Result<(), ClientError> {
        self.post(Frame::Ack(Ack {
            request_id: 0,
            chat_id,
            seq,
        }))
        .await
    }

    /// Tells the server this user received (or read) the chat up to `seq`; answered once the
    /// pointer is stored. The senders of the covered messages and this user's other devices get
    /// a `ReceiptEvent` (as [`Event::Frame`]).
    pub async fn receipt(
        &self,
        chat_id: u64,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<(), ClientError> {
        match self
            .request(|request_id| {
                Frame::Receipt(Receipt {
                    request_id,
                    chat_id,
                    kind,
                    seq,
                })
            })
            .await?
        {
            Frame::Done(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Shows (or stops showing) this user as typing in the chat to its online members. Not
    /// answered unless refused (not a member, or rate-limited): the refusal arrives as
    /// [`Event::Frame`] with an `ErrorFrame`.
    pub async fn typing(&self, chat_id: u64, typing: bool) -> Result<(), ClientError> {
        let request_id = self.next_request_id();
        self.post(Frame::Typing(Typing {
            request_id,
            chat_id,
            typing,
        }))
        .await
    }

    /// Subscribes this connection to the presence of `users` (those that share a chat with
    /// this user and show their presence); their current state and every change arrive as
    /// `PresenceEvent`s ([`Event::Frame`]) until the connection ends.
    pub async fn subscribe_presence(&self, users: &[&str]) -> Result<(), ClientError> {
        let users = users.iter().map(|u| (*u).to_owned()).collect();
        match self
            .request(|request_id| Frame::PresenceSubscribe(PresenceSubscribe { request_id, users }))
            .await?
        {
            Frame::Done(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Shows (true, the default) or hides this user's presence from everyone.
    pub async fn set_presence_visible(&self, visible: bool) -> Result<(), ClientError> {
        match self
            .request(|request_id| {
                Frame::PresenceSetting(PresenceSetting {
                    request_id,
                    visible,
                })
            })
            .await?
        {
            Frame::Done(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Registers this device for push notifications while it is offline (an empty token
    /// removes the registration).
    pub async fn register_push(
        &self,
        provider: PushProvider,
        token: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let token = token.into();
        match self
            .request(|request_id| {
                Frame::RegisterPush(RegisterPush {
                    request_id,
                    provider,
                    token,
                })
            })
            .await?
        {
            Frame::Done(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Renames a group and/or changes its members.
    pub async fn update_group(
        &self,
        chat_id: u64,
        rename: Option<&str>,
        add: &[&str],
        remove: &[&str],
    ) -> Result<ChatSummary, ClientError> {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (rename, add, remove) = (rename.map(str::to_owned), owned(add), owned(remove));
        let frame = |request_id| {
            Frame::UpdateChat(UpdateChat {
                request_id,
                chat_id,
                rename,
                add,
                remove,
            })
        };
        match self.request(frame).await? {
            Frame::ChatInfo(info) => Ok(info.chat),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Round trip to the server.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self
            .request(|request_id| {
                Frame::Ping(Ping {
                    request_id,
                    nonce: 7,
                })
            })
            .await?
        {
            Frame::Pong(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Whether the connection is closed, and why.
    pub fn close_reason(&self) -> Option<String> {
        self.conn.close_reason().map(|r| r.to_string())
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}

/// A client endpoint (one UDP socket) for servers of `addr`'s address family, trusting `trust`.
pub fn client_endpoint(addr: SocketAddr, trust: &Trust) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal address");
    // quinn::Endpoint::client with the process's connection IDs (courier_net::cid) instead of
    // quinn's default 24-bit-random ones.
    let socket = std::net::UdpSocket::bind(bind).map_err(ClientError::config)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ClientError::config("no async runtime to run the QUIC endpoint on"))?;
    let config = courier_net::cid::ConnectionIds::process().endpoint_config();
    let mut endpoint =
        quinn::Endpoint::new(config, None, socket, runtime).map_err(ClientError::config)?;
    endpoint.set_default_client_config(client_config(trust)?);
    Ok(endpoint)
}

/// A fresh client message id: a UUIDv7 (time-ordered, 74 random bits), which the store can
/// file as an append.
pub fn new_client_msg_id() -> [u8; 16] {
    // The thread's ChaCha generator (seeded from the OS): no system call per message.
    let random: [u8; 10] = rand::random();
    courier_wire::uuid_v7(courier_wire::time::now_ms(), random)
}

fn close_reason(conn: &quinn::Connection) -> String {
    conn.close_reason()
        .map_or_else(|| "connection lost".into(), |r| r.to_string())
}

async fn read_loop(
    mut reader: FrameReader,
    conn: quinn::Connection,
    pending: Pending,
    events: mpsc::Sender<Event>,
) {
    let reason = loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break "server finished the stream".to_owned(),
            Err(e) => break format!("{e}; {}", close_reason(&conn)),
        };
        let event = match frame {
            Frame::Deliver(d) => Event::Message(d.message),
            Frame::GoAway(g) => Event::GoAway(g),
            f => match answer_id(&f) {
                Some(id) => {
                    let waiter = pending.lock().expect("pending lock").by_id.remove(&id);
                    match waiter {
                        Some(w) => {
                            let _ = w.send(f);
                            continue;
                        }
                        None => Event::Frame(f),
                    }
                }
                None => Event::Frame(f),
            },
        };
        // Never wait for the app here: answers to requests arrive on this same stream, and an
        // app that waits for an answer before reading events would deadlock. An app that lets
        // EVENT_QUEUE events pile up is cut off instead, like a slow reader on the server: the
        // messages are in the store and come back with the next sync.
        match events.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                conn.close(0x101u32.into(), b"client event queue full");
                break "the app did not read events: event queue full".to_owned();
            }
        }
    };
    // Fail whatever still waits for an answer, and every request made from now on.
    {
        let mut pending = pending.lock().expect("pending lock");
        pending.closed = true;
        pending.by_id.clear();
    }
    let _ = events.send(Event::Closed(reason)).await;
}

/// The request id a server frame answers, if it is an answer.
fn answer_id(f: &Frame) -> Option<u32> {
    match f {
        Frame::SendOk(x) => Some(x.request_id),
        Frame::HistoryPage(x) => Some(x.request_id),
        Frame::ChatInfo(x) => Some(x.request_id),
        Frame::ChatList(x) => Some(x.request_id),
        Frame::ErrorFrame(x) if x.request_id != 0 => Some(x.request_id),
        Frame::RetryLater(x) if x.request_id != 0 => Some(x.request_id),
        Frame::Pong(x) => Some(x.request_id),
        Frame::Done(x) => Some(x.request_id),
        Frame::SyncEnd(x) => Some(x.request_id),
        Frame::Welcome(x) => Some(x.request_id),
        _ => None,
    }
}
