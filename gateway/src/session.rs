//! One authenticated session: what each client frame does, and which frames go back.
//!
//! [`Session::handle`] is the whole per-frame logic. It talks to the world only through the store
//! and an outbound queue of encoded frames, so a unit test drives it with a channel and a
//! temporary store, no sockets. The QUIC plumbing around it is in [`crate::server`].
//!
//! Inputs: [`Session::handle`] (one decoded frame). Outputs: encoded frames on the outbound queue
//! (answers, errors), and sends queued in the store, whose commits reach other devices through
//! [`crate::fanout`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_net::io::Outbound;
use courier_store::logging::limited_error;
use courier_store::{AppendRequest, GroupChange, LogLimiter, Store, StoreError};
use courier_wire::frame::{
    ChatInfo, ChatList, ChatSpec, Deliver, Done, ErrorFrame, HistoryPage, MessageKind, Pong,
    Receipt, ReceiptEvent, RetryLater, SendOk, SyncEnd, Typing, TypingEvent,
};
use courier_wire::{Codec, ErrorCode, Frame, HEADER_LEN, PROTOCOL_VERSION};
use tokio::sync::Semaphore;

use crate::acks::{AckQueue, Offered, MAX_PENDING_CHATS};
use crate::budget::{Budget, Verdict, REQUESTS_PER_SECOND};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::registry::{Device, Registry, TYPING_PER_SECOND};

/// Most messages in one sync page.
const MAX_SYNC_PAGE: u32 = 1000;

/// Encodes an error answer; its message is bounded ([`ErrorFrame::new`]), so the frame fits
/// every peer's frame limit whatever the message quotes.
pub(crate) fn error_frame(request_id: u32, code: ErrorCode, message: impl AsRef<str>) -> Bytes {
    Frame::ErrorFrame(ErrorFrame::new(request_id, code, message.as_ref())).to_bytes()
}

/// Encodes a refusal that a wait cures: `RetryLater` on a version 2 session; on version 1
/// (which has no such frame) an `Error` whose message says the wait in words.
pub(crate) fn retry_frame(
    version: u16,
    request_id: u32,
    code: ErrorCode,
    retry_after: Duration,
    message: impl AsRef<str>,
) -> Bytes {
    let message = message.as_ref();
    if version >= 2 {
        Frame::RetryLater(RetryLater::new(request_id, code, retry_after, message)).to_bytes()
    } else {
        let ms = retry_after.as_millis();
        error_frame(request_id, code, format!("{message}; retry after {ms} ms"))
    }
}

/// Server faults from the store, logged: one line per interval however many requests fail.
static STORE_FAULTS: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Encodes a store failure for `user`'s request (a `RetryLater` when a wait cures it), and logs
/// it if it is the server's own fault, rate-limited.
pub(crate) fn store_error_frame(
    version: u16,
    request_id: u32,
    user: &str,
    e: &StoreError,
) -> Bytes {
    if e.is_server_fault() {
        limited_error!(STORE_FAULTS, %user, "store: {e}");
    }
    match e.retry_after() {
        Some(wait) => retry_frame(version, request_id, e.code(), wait, e.to_string()),
        None => error_frame(request_id, e.code(), e.to_string()),
    }
}

/// Messages to put in a page asked for with `limit`: 0 asks for the largest page (`max`), and
/// no page is larger than that.
fn page_limit(limit: u32, max: u32) -> usize {
    if limit == 0 {
        max as usize
    } else {
        limit.min(max) as usize
    }
}

/// Limits a session enforces (copied from the gateway config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_frame: u32,
    pub(crate) max_body: u32,
    pub(crate) max_inflight: u32,
    pub(crate) max_history_page: u32,
}

/// The outbound queue is gone: the connection is closing.
#[derive(Debug)]
pub(crate) struct Disconnected;

/// Why a session stops serving frames.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The outbound queue is gone: the connection is closing.
    Disconnected,
    /// Close the connection with `code`, after `frame` (the client ignored `RATE_LIMITED`).
    Close(Bytes, ErrorCode),
}

impl From<Disconnected> for Stop {
    fn from(_: Disconnected) -> Self {
        Self::Disconnected
    }
}

/// The state of one authenticated connection.
pub(crate) struct Session {
    pub(crate) user: String,
    pub(crate) device: u32,
    /// The protocol version of the session (from `Hello`).
    version: u16,
    store: Store,
    out: Outbound,
    limits: Limits,
    inflight: Arc<Semaphore>,
    /// One permit per send whose answer is not in the outbound queue yet: its in-flight place
    /// is given back just before the answer is queued, so [`Session::drain`] waits for both.
    unanswered: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    presence: Option<PresenceLink>,
    push: crate::push::PushConfig,
    budget: std::sync::Mutex<Budget>,
    acks: Arc<AckQueue>,
}

/// What a session needs for presence: the hub, and its own connection's handle.
pub(crate) struct PresenceLink {
    pub(crate) hub: Arc<Presence>,
    pub(crate) conn_id: u64,
    pub(crate) device: Device,
}

impl Session {
    /// Runs store reads for this session's user off the shard's thread when the engine is
    /// remote ([`Store::reading`]).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let user = self.user.clone();
        self.store.reading(move |s| f(s, &user)).await
    }

    pub(crate) fn new(
        user: String,
        device: u32,
        store: Store,
        out: Outbound,
        limits: Limits,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
    ) -> Self {
        let inflight = Arc::new(Semaphore::new(limits.max_inflight as usize));
        let unanswered = Arc::new(Semaphore::new(limits.max_inflight as usize));
        Self {
            user,
            device,
            version: PROTOCOL_VERSION,
            store,
            out,
            limits,
            inflight,
            unanswered,
            metrics,
            registry,
            presence: None,
            push: crate::push::PushConfig::default(),
            budget: std::sync::Mutex::new(Budget::new(Instant::now())),
            acks: Arc::default(),
        }
    }

    /// Speaks protocol `version` (the client's, from `Hello`).
    pub(crate) fn with_version(mut self, version: u16) -> Self {
        self.version = version;
        self
    }

    /// Accepts push registrations for the providers `push` configures.
    pub(crate) fn with_push(mut self, push: crate::push::PushConfig) -> Self {
        self.push = push;
        self
    }

    /// Serves presence through `link` (without one, presence frames are `UNSUPPORTED`).
    pub(crate) fn with_presence(mut self, link: PresenceLink) -> Self {
        self.presence = Some(link);
        self
    }

    async fn reply(&self, frame: Bytes) -> Result<(), Disconnected> {
        self.metrics.frame_out(frame.len());
        self.out.send(frame).await.map_err(|_| Disconnected)
    }

    async fn fail(
        &self,
        request_id: u32,
        code: ErrorCode,
        message: impl AsRef<str>,
    ) -> Result<(), Disconnected> {
        self.reply(error_frame(request_id, code, message)).await
    }

    async fn done(&self, request_id: u32) -> Result<(), Disconnected> {
        self.reply(Frame::Done(Done { request_id }).to_bytes())
            .await
    }

    async fn store_error(&self, request_id: u32, e: &StoreError) -> Result<(), Disconnected> {
        self.reply(store_error_frame(self.version, request_id, &self.user, e))
            .await
    }

    /// Refuses a request for now: the client may send it again after `retry_after`.
    async fn retry_later(
        &self,
        request_id: u32,
        code: ErrorCode,
        retry_after: Duration,
        message: impl AsRef<str>,
    ) -> Result<(), Disconnected> {
        self.reply(retry_frame(
            self.version,
            request_id,
            code,
            retry_after,
            message,
        ))
        .await
    }

    /// Handles one frame from the client. Frames other than sends draw from the connection's
    /// request budget ([`crate::budget`]): over it they are refused, and a client that keeps
    /// on is closed.
    pub(crate) async fn handle(&self, frame: Frame) -> Result<(), Stop> {
        if !matches!(frame, Frame::Send(_)) {
            let verdict = self
                .budget
                .lock()
                .expect("budget lock")
                .take(Instant::now());
            let request_id = frame.request_id().unwrap_or(0);
            match verdict {
                Verdict::Allow => {}
                Verdict::Refuse { retry_after } => {
                    let msg = format!("more than {REQUESTS_PER_SECOND} requests a second");
                    let code = ErrorCode::RATE_LIMITED;
                    return Ok(self.retry_later(request_id, code, retry_after, msg).await?);
                }
                Verdict::Close => {
                    let msg = "requests kept coming after RATE_LIMITED; closing";
                    let frame = error_frame(request_id, ErrorCode::RATE_LIMITED, msg);
                    return Err(Stop::Close(frame, ErrorCode::RATE_LIMITED));
                }
            }
        }
        Ok(self.dispatch(frame).await?)
    }

    async fn dispatch(&self, frame: Frame) -> Result<(), Disconnected> {
        let request_id = frame.request_id().unwrap_or(0);
        match frame {
            Frame::Send(f) => self.send(f).await,
            Frame::CreateChat(f) => {
                let r = match f.spec {
                    ChatSpec::Direct { peer } => self.store.create_direct(&self.user, &peer).await,
                    ChatSpec::Group { name, members } => {
                        self.store.create_group(&self.user, &name, members).await
                    }
                };
                match r {
                    Ok(chat) => self.chat_info(request_id, &chat).await,
                    Err(e) => self.store_error(request_id, &e).await,
                }
            }
            Frame::GetChat(f) => match self.read(move |s, u| s.chat_for(u, f.chat_id)).await {
                Ok(chat) => self.chat_info(request_id, &chat).await,
                Err(e) => self.store_error(request_id, &e).await,
            },
            Frame::ListChats(f) => self.list_chats(request_id, f.after_chat, f.limit).await,
            Frame::History(f) => self.history(f).await,
            Frame::Ping(p) => {
                self.reply(
                    Frame::Pong(Pong {
                        request_id,
                        nonce: p.nonce,
                    })
                    .to_bytes(),
                )
                .await
            }
            Frame::Hello(_) => {
                self.fail(request_id, ErrorCode::INVALID, "session is already open")
                    .await
            }
            Frame::Sync(f) => self.sync(f).await,
            Frame::Ack(f) => self.ack(f).await,
            Frame::UpdateChat(f) => {
                let change = GroupChange {
                    rename: f.rename,
                    add: f.add,
                    remove: f.remove,
                };
                match self.store.update_group(&self.user, f.chat_id, change).await {
                    Ok(chat) => self.chat_info(request_id, &chat).await,
                    Err(e) => self.store_error(request_id, &e).await,
                }
            }
            Frame::Receipt(f) => self.receipt(f).await,
            Frame::Typing(f) => self.typing(f).await,
            Frame::PresenceSubscribe(f) => match &self.presence {
                Some(p) => {
                    p.hub
                        .subscribe(&self.user, p.conn_id, &p.device, f.users)
                        .await;
                    self.done(f.request_id).await
                }
                None => {
                    self.fail(request_id, ErrorCode::UNSUPPORTED, "no presence here")
                        .await
                }
            },
            Frame::PresenceSetting(f) => {
                if let Err(e) = self.store.set_presence(&self.user, f.visible).await {
                    return self.store_error(f.request_id, &e).await;
                }
                if let Some(p) = &self.presence {
                    p.hub.setting_changed(&self.user, f.visible).await;
                }
                self.done(f.request_id).await
            }
            Frame::RegisterPush(f) => {
                if !self.push.supports(f.provider) {
                    let msg = format!("push provider {:?} is not configured here", f.provider);
                    return self.fail(f.request_id, ErrorCode::UNSUPPORTED, msg).await;
                }
                let r = self
                    .store
                    .register_push(&self.user, self.device, f.provider, f.token)
                    .await;
                match r {
                    Ok(()) => self.done(f.request_id).await,
                    Err(e) => self.store_error(f.request_id, &e).await,
                }
            }
            other => {
                let kind = other.kind();
                self.fail(
                    request_id,
                    ErrorCode::UNSUPPORTED,
                    format!("frame kind {kind:#04x} is not a client request"),
                )
                .await
            }
        }
    }

    async fn send(&self, f: courier_wire::frame::Send) -> Result<(), Disconnected> {
        let request_id = f.request_id;
        if f.body.len() > self.limits.max_body as usize {
            let msg = format!(
                "body of {} bytes exceeds the limit of {}",
                f.body.len(),
                self.limits.max_body
            );
            return self.fail(request_id, ErrorCode::TOO_LARGE, msg).await;
        }
        if f.kind == MessageKind::System {
            return self
                .fail(
                    request_id,
                    ErrorCode::INVALID,
                    "system messages are written by the server",
                )
                .await;
        }
        if f.attachments.is_empty() && f.kind == MessageKind::Media {
            return self
                .fail(
                    request_id,
                    ErrorCode::INVALID,
                    "a media message needs an attachment (upload it first)",
                )
                .await;
        }
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            let msg = format!("more than {} sends in flight", self.limits.max_inflight);
            return self.fail(request_id, ErrorCode::RATE_LIMITED, msg).await;
        };
        // As many of these as in-flight places: this waits only while an answer whose place
        // was just given back is being queued.
        let Ok(unanswered) = self.unanswered.clone().acquire_owned().await else {
            return Err(Disconnected);
        };
        let req = AppendRequest {
            sender_user: self.user.clone(),
            sender_device: self.device,
            client_msg_id: f.client_msg_id,
            chat_id: f.chat_id,
            kind: f.kind,
            body: f.body,
            attachments: f.attachments,
        };
        // A place in the outbound queue for the answer, taken now: the store's commit thread
        // puts the answer there itself, without waiting (no task or wake-up per send).
        let Ok(slot) = self.out.reserve().await else {
            return Err(Disconnected);
        };
        let metrics = self.metrics.clone();
        let (user, client_msg_id, version) = (self.user.clone(), f.client_msg_id, self.version);
        // Queued in arrival order here; answered when durable, so sends pipeline. If the store
        // is closed, the answer function is dropped unanswered and sends the error itself.
        let _ = self
            .store
            .submit_append_then(req, move |result| {
                let frame = match result {
                    Ok(a) => Frame::SendOk(SendOk {
                        request_id,
                        client_msg_id,
                        chat_id: a.chat_id,
                        seq: a.seq,
                        server_ts: a.server_ts,
                        duplicate: a.duplicate,
                    })
                    .to_bytes(),
                    Err(e) => store_error_frame(version, request_id, &user, &e),
                };
                // The send is over: its in-flight place is free before the client can read the
                // answer and send again (queueing it may wake the connection's writer at once).
                drop(permit);
                metrics.frame_out(frame.len());
                slot.send(frame);
                drop(unanswered);
            })
            .await;
        Ok(())
    }

    /// Moves the user's delivered/read pointer; tells the senders of the newly covered
    /// messages and the user's other devices (so they clear unread too); answers `Done`.
    async fn receipt(&self, f: Receipt) -> Result<(), Disconnected> {
        let outcome = match self
            .store
            .receipt(&self.user, f.chat_id, f.kind, f.seq)
            .await
        {
            Ok(o) => o,
            Err(e) => return self.store_error(f.request_id, &e).await,
        };
        if outcome.advanced {
            let event = Frame::ReceiptEvent(ReceiptEvent {
                chat_id: outcome.chat_id,
                user: self.user.clone(),
                device: self.device,
                kind: outcome.kind,
                seq: outcome.seq,
                count: outcome.count,
            })
            .to_bytes();
            self.broadcast(outcome.notify.iter().chain([&self.user]), event);
        }
        self.done(f.request_id).await
    }

    /// Relays a typing indicator to the chat's online members; never stored, rate-limited per
    /// user, answered only when refused.
    async fn typing(&self, f: Typing) -> Result<(), Disconnected> {
        if !self.registry.allow_typing(&self.user) {
            let msg = format!("at most {TYPING_PER_SECOND} typing events per second");
            return self.fail(f.request_id, ErrorCode::RATE_LIMITED, msg).await;
        }
        let chat_id = f.chat_id;
        let chat = match self.read(move |s, u| s.chat_for(u, chat_id)).await {
            Ok(c) => c,
            Err(e) => return self.store_error(f.request_id, &e).await,
        };
        let event = Frame::TypingEvent(TypingEvent {
            chat_id: f.chat_id,
            user: self.user.clone(),
            device: self.device,
            typing: f.typing,
        })
        .to_bytes();
        self.broadcast(&chat.members, event);
        Ok(())
    }

    /// Pushes an event frame to the online devices of `users` but this one: on this node
    /// directly, or in a cluster through every node's inbox (where this node's devices get it
    /// too).
    fn broadcast<'u>(&self, users: impl IntoIterator<Item = &'u String>, frame: Bytes) {
        if self.store.node().is_some() {
            self.store.publish(courier_store::Event {
                users: users.into_iter().cloned().collect(),
                except: (self.user.clone(), self.device),
                frame,
            });
        } else {
            self.registry
                .push_to(users, &frame, (&self.user, self.device));
        }
    }

    async fn chat_info(
        &self,
        request_id: u32,
        chat: &courier_store::Chat,
    ) -> Result<(), Disconnected> {
        let id = chat.id;
        let read = self
            .read(move |s, u| Ok((s.receipt_pointers(u)?, s.last_seq(id))))
            .await;
        let (read, last) = match read {
            Ok(p) => p,
            Err(e) => return self.store_error(request_id, &e).await,
        };
        match last {
            Ok(last) => {
                let unread = last.saturating_sub(read.get(&chat.id).map_or(0, |p| p.read));
                let chat = chat.summary(last, unread);
                self.reply(Frame::ChatInfo(ChatInfo { request_id, chat }).to_bytes())
                    .await
            }
            Err(e) => self.store_error(request_id, &e).await,
        }
    }

    async fn list_chats(
        &self,
        request_id: u32,
        after: u64,
        limit: u32,
    ) -> Result<(), Disconnected> {
        // A summary can hold up to 100 members of 64 bytes: keep pages well inside one frame.
        let limit = page_limit(limit, 50);
        let read = self
            .read(move |s, u| Ok((s.chats_of(u, after, limit + 1)?, s.receipt_pointers(u)?)))
            .await;
        let (chats, read) = match read {
            Ok(r) => r,
            Err(e) => return self.store_error(request_id, &e).await,
        };
        let mut more = chats.len() > limit;
        // 50 groups of 100 members with 64-byte ids would be ~340 KB: the page is cut to one
        // frame, and the client pages on from its last chat.
        let budget = self.limits.max_frame as usize - HEADER_LEN;
        let mut len = ChatList {
            request_id,
            chats: Vec::new(),
            next_after: Some(0),
        }
        .encoded_len();
        let mut page = Vec::with_capacity(chats.len().min(limit));
        for (c, last) in chats.into_iter().take(limit) {
            let unread = last.saturating_sub(read.get(&c.id).map_or(0, |p| p.read));
            let summary = c.summary(last, unread);
            len += summary.encoded_len();
            if len > budget && !page.is_empty() {
                more = true;
                break;
            }
            page.push(summary);
        }
        let chats = page;
        let next_after = if more {
            chats.last().map(|c| c.chat_id)
        } else {
            None
        };
        self.reply(
            Frame::ChatList(ChatList {
                request_id,
                chats,
                next_after,
            })
            .to_bytes(),
        )
        .await
    }

    async fn history(&self, f: courier_wire::frame::History) -> Result<(), Disconnected> {
        let limit = page_limit(f.limit, self.limits.max_history_page);
        let (chat_id, direction, anchor) = (f.chat_id, f.direction, f.seq);
        let (mut messages, mut more) = match self
            .read(move |s, u| s.history(u, chat_id, direction, anchor, limit))
            .await
        {
            Ok(r) => r,
            Err(e) => return self.store_error(f.request_id, &e).await,
        };
        // Trim the page to fit one frame; the client pages on from the last message it got.
        let mut page = HistoryPage {
            request_id: f.request_id,
            chat_id: f.chat_id,
            messages: Vec::new(),
            more,
        };
        let budget = self.limits.max_frame as usize - HEADER_LEN;
        let mut len = page.encoded_len();
        let mut keep = 0;
        for m in &messages {
            let l = m.encoded_len();
            if len + l > budget {
                more = true;
                break;
            }
            len += l;
            keep += 1;
        }
        messages.truncate(keep);
        page.messages = messages;
        page.more = more;
        self.reply(Frame::HistoryPage(page).to_bytes()).await
    }

    /// Sends what this device missed as `Deliver` frames, then `SyncEnd`.
    async fn sync(&self, f: courier_wire::frame::Sync) -> Result<(), Disconnected> {
        let limit = page_limit(f.limit, MAX_SYNC_PAGE);
        let positions: Vec<(u64, u64)> = f.positions.iter().map(|p| (p.chat_id, p.seq)).collect();
        let device = self.device;
        let page = match self
            .read(move |s, u| s.sync(u, device, &positions, limit))
            .await
        {
            Ok(p) => p,
            Err(e) => return self.store_error(f.request_id, &e).await,
        };
        for m in page.messages {
            self.reply(Frame::Deliver(Deliver { message: m }).to_bytes())
                .await?;
        }
        let end = SyncEnd {
            request_id: f.request_id,
            more: page.more,
            expired: page.expired,
        };
        self.reply(Frame::SyncEnd(end).to_bytes()).await
    }

    /// Queues the device's position, coalesced per chat, for the session's one ack writer
    /// ([`crate::acks`]); answers only on error.
    async fn ack(&self, f: courier_wire::frame::Ack) -> Result<(), Disconnected> {
        match self.acks.offer(f.chat_id, f.seq, f.request_id) {
            Offered::Queued => Ok(()),
            Offered::StartWriter => {
                tokio::spawn(crate::acks::write(
                    self.acks.clone(),
                    self.store.clone(),
                    (self.user.clone(), self.device, self.version),
                    self.out.clone(),
                ));
                Ok(())
            }
            Offered::Full => {
                let msg = format!("acks of more than {MAX_PENDING_CHATS} chats wait to be stored");
                let wait = Duration::from_millis(100);
                self.retry_later(f.request_id, ErrorCode::RATE_LIMITED, wait, msg)
                    .await
            }
        }
    }

    /// Waits until every send this session queued has its answer in the outbound queue.
    pub(crate) async fn drain(&self) {
        let _ = self.inflight.acquire_many(self.limits.max_inflight).await;
        let _ = self.unanswered.acquire_many(self.limits.max_inflight).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_net::io::Receiver;
    use courier_store::StoreConfig;
    use courier_wire::frame::{CreateChat, History, Send};
    use courier_wire::FrameDecoder;

    async fn next(rx: &mut Receiver) -> Frame {
        let bytes = rx.recv().await.expect("a frame");
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        FrameDecoder::new(u32::MAX)
            .decode(&mut buf)
            .unwrap()
            .unwrap()
    }

    /// A session of alice's device 1 on a store in `dir`, and its outbound queue.
    fn alice_session(dir: &std::path::Path) -> (Session, Store, Receiver) {
        let store = Store::open(StoreConfig::new(dir)).unwrap();
        let (tx, rx) = Outbound::channel(64);
        let s = Session::new(
            "alice".into(),
            1,
            store.clone(),
            tx,
            limits(),
            Arc::default(),
            Arc::default(),
        );
        (s, store, rx)
    }

    fn limits() -> Limits {
        Limits {
            max_frame: 64 * 1024,
            max_body: 1000,
            max_inflight: 2,
            max_history_page: 100,
        }
    }

    #[test]
    fn limit_zero_asks_for_the_largest_page() {
        assert_eq!(page_limit(0, 500), 500);
        assert_eq!(page_limit(1, 500), 1);
        assert_eq!(page_limit(9999, 500), 500);
    }

    /// History with `limit` 0 returns a full page (it used to return one message), and a chat
    /// list of big groups is cut to one frame.
    #[tokio::test]
    async fn limit_zero_pages_and_chat_lists_fit_one_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (s, store, mut rx) = alice_session(dir.path());
        let members: Vec<String> = (0..99).map(|i| format!("{i:0>64}")).collect();
        let mut last = 0;
        for g in 0..20 {
            let chat = store
                .create_group("alice", &format!("group {g}"), members.clone())
                .await
                .unwrap();
            last = chat.id;
        }
        for i in 0..3u8 {
            s.handle(Frame::Send(Send {
                request_id: 1,
                client_msg_id: [i; 16],
                chat_id: last,
                kind: MessageKind::Text,
                body: Bytes::from_static(b"hi"),
                attachments: vec![],
            }))
            .await
            .unwrap();
            assert!(matches!(next(&mut rx).await, Frame::SendOk(_)));
        }
        s.handle(Frame::History(History {
            request_id: 2,
            chat_id: last,
            direction: courier_wire::frame::Direction::After,
            seq: 1,
            limit: 0,
        }))
        .await
        .unwrap();
        let Frame::HistoryPage(p) = next(&mut rx).await else {
            panic!("expected HistoryPage")
        };
        assert_eq!(
            p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [2, 3, 4]
        );

        let mut seen = 0;
        let mut after = 0;
        loop {
            s.handle(Frame::ListChats(courier_wire::frame::ListChats {
                request_id: 3,
                after_chat: after,
                limit: 50,
            }))
            .await
            .unwrap();
            let bytes = rx.recv().await.unwrap();
            assert!(
                bytes.len() <= limits().max_frame as usize,
                "{} bytes",
                bytes.len()
            );
            let mut buf = bytes::BytesMut::from(&bytes[..]);
            let Some(Frame::ChatList(l)) = FrameDecoder::new(u32::MAX).decode(&mut buf).unwrap()
            else {
                panic!("expected ChatList")
            };
            seen += l.chats.len();
            match l.next_after {
                Some(a) => after = a,
                None => break,
            }
        }
        assert_eq!(seen, 20);
        store.close().await;
    }

    /// A request over the budget is refused with the wait: a `RetryLater` frame on a version 2
    /// session, the wait in words in an `Error` on version 1.
    #[tokio::test]
    async fn refusals_say_when_to_retry_in_the_sessions_version() {
        for version in [1, 2] {
            let dir = tempfile::tempdir().unwrap();
            let (s, store, mut rx) = alice_session(dir.path());
            let s = s.with_version(version);
            let ping = |request_id| {
                Frame::Ping(courier_wire::frame::Ping {
                    request_id,
                    nonce: 0,
                })
            };
            // The burst drains much faster than the bucket refills (1 a millisecond).
            let mut refusal = None;
            for i in 0..10 * crate::budget::REQUEST_BURST {
                s.handle(ping(i)).await.unwrap();
                match next(&mut rx).await {
                    Frame::Pong(_) => {}
                    other => {
                        refusal = Some((i, other));
                        break;
                    }
                }
            }
            let (id, refusal) = refusal.expect("the budget runs out");
            assert!(id >= crate::budget::REQUEST_BURST, "the burst passes");
            match (version, refusal) {
                (2, Frame::RetryLater(r)) => {
                    assert_eq!((r.request_id, r.code), (id, ErrorCode::RATE_LIMITED));
                    assert!((1..=1000).contains(&r.retry_after_ms), "{r:?}");
                }
                (1, Frame::ErrorFrame(e)) => {
                    assert_eq!((e.request_id, e.code), (id, ErrorCode::RATE_LIMITED));
                    assert!(e.message.contains("retry after"), "{e:?}");
                }
                (v, other) => panic!("version {v}: {other:?}"),
            }
            store.close().await;
        }
    }

    #[tokio::test]
    async fn frames_drive_the_store_without_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let (s, store, mut rx) = alice_session(dir.path());

        s.handle(Frame::CreateChat(CreateChat {
            request_id: 1,
            spec: ChatSpec::Direct { peer: "bob".into() },
        }))
        .await
        .unwrap();
        let Frame::ChatInfo(info) = next(&mut rx).await else {
            panic!("expected ChatInfo")
        };
        let chat = info.chat.chat_id;

        let send = |request_id, body: &'static [u8]| {
            Frame::Send(Send {
                request_id,
                client_msg_id: [request_id as u8; 16],
                chat_id: chat,
                kind: MessageKind::Text,
                body: Bytes::from_static(body),
                attachments: vec![],
            })
        };
        s.handle(send(2, b"hi")).await.unwrap();
        let Frame::SendOk(ok) = next(&mut rx).await else {
            panic!("expected SendOk")
        };
        assert_eq!((ok.request_id, ok.seq, ok.duplicate), (2, 1, false));

        s.handle(send(3, &[b'x'; 1001])).await.unwrap();
        let Frame::ErrorFrame(e) = next(&mut rx).await else {
            panic!("expected Error")
        };
        assert_eq!((e.request_id, e.code), (3, ErrorCode::TOO_LARGE));

        s.handle(Frame::History(History {
            request_id: 4,
            chat_id: 99,
            direction: courier_wire::frame::Direction::After,
            seq: 0,
            limit: 10,
        }))
        .await
        .unwrap();
        let Frame::ErrorFrame(e) = next(&mut rx).await else {
            panic!("expected Error")
        };
        assert_eq!((e.request_id, e.code), (4, ErrorCode::FORBIDDEN));

        s.handle(Frame::Unknown {
            kind: 0x70,
            body: Bytes::from_static(&[0, 0, 0, 5]),
        })
        .await
        .unwrap();
        let Frame::ErrorFrame(e) = next(&mut rx).await else {
            panic!("expected Error")
        };
        assert_eq!((e.request_id, e.code), (5, ErrorCode::UNSUPPORTED));
        store.close().await;
    }
}
