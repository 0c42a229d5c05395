//! The [`Store`] handle: asynchronous writes through the writer thread, direct reads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use courier_wire::frame::{Attachment, Direction, Message, MessageKind};
use dashmap::DashMap;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use tokio::sync::{mpsc, oneshot};

use crate::record::{self, Chat};
use crate::writer::{Op, Writer};
use crate::{keys, StoreError};

/// A source of wall-clock time, injectable for tests.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Receives every committed message, in commit order, from the writer thread.
///
/// Called after the batch is durable and after its callers were answered. It must not block for
/// long: the next batch waits for it.
pub trait CommitListener: Send + Sync + 'static {
    /// One committed batch: each message with the chat it belongs to.
    fn committed(&self, batch: &[(Arc<Chat>, Message)]);
}

/// How to open a [`Store`].
#[derive(Clone)]
pub struct StoreConfig {
    /// Directory of the embedded engine.
    pub path: PathBuf,
    /// Most members a group may have, creator included.
    pub max_group_members: usize,
    /// Most operations the writer folds into one commit.
    pub max_batch: usize,
    /// Depth of the writer's queue; callers wait (backpressure) when it is full.
    pub queue_depth: usize,
    /// The clock used for message timestamps.
    pub clock: Arc<dyn Clock>,
    /// Called with every committed batch.
    pub listener: Option<Arc<dyn CommitListener>>,
}

impl StoreConfig {
    /// Defaults for a store in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_group_members: 100,
            max_batch: 4096,
            queue_depth: 65_536,
            clock: Arc::new(SystemClock),
            listener: None,
        }
    }
}

/// A message to append.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// The sending user.
    pub sender_user: String,
    /// The sending device.
    pub sender_device: u32,
    /// The sender's id for this message; a retry reuses it.
    pub client_msg_id: [u8; 16],
    /// The chat.
    pub chat_id: u64,
    /// What the body holds.
    pub kind: MessageKind,
    /// The body.
    pub body: Bytes,
    /// Attachments.
    pub attachments: Vec<Attachment>,
}

/// Where an appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The chat.
    pub chat_id: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Commit time, milliseconds since the Unix epoch.
    pub server_ts: u64,
    /// True when the message had been stored before (a retry).
    pub duplicate: bool,
}

pub(crate) struct Shared {
    pub(crate) db: Database,
    pub(crate) ks: Keyspace,
    pub(crate) chats: DashMap<u64, Arc<Chat>>,
    pub(crate) config: StoreConfig,
}

impl Shared {
    /// The chat, from the cache or the engine. Readers only fill empty cache slots, so a chat
    /// the writer just changed is never replaced by an older copy read before the change.
    pub(crate) fn chat(&self, id: u64) -> Result<Option<Arc<Chat>>, StoreError> {
        if let Some(c) = self.chats.get(&id) {
            return Ok(Some(c.clone()));
        }
        let Some(raw) = self.ks.get(keys::chat(id))? else {
            return Ok(None);
        };
        let chat = Chat::decode(id, &raw).map_err(|_| StoreError::Corrupt(format!("chat {id}")))?;
        Ok(Some(
            self.chats
                .entry(id)
                .or_insert_with(|| Arc::new(chat))
                .clone(),
        ))
    }

    pub(crate) fn last_seq(&self, chat: u64) -> Result<u64, StoreError> {
        match self.ks.get(keys::last_seq(chat))? {
            None => Ok(0),
            Some(raw) => record::decode_u64(&raw)
                .map_err(|_| StoreError::Corrupt(format!("last seq of chat {chat}"))),
        }
    }
}

/// The pending result of a queued write.
#[derive(Debug)]
pub struct Ticket<T>(oneshot::Receiver<Result<T, StoreError>>);

impl<T> Ticket<T> {
    /// Waits for the write to commit (or fail).
    pub async fn wait(self) -> Result<T, StoreError> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

/// A handle to the message log. Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Store {
    /// Opens (or creates) the store and starts its writer thread.
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.path)
            .map_err(|e| StoreError::Engine(format!("create {}: {e}", config.path.display())))?;
        let db = Database::builder(&config.path).open()?;
        let ks = db.keyspace("log", KeyspaceCreateOptions::default)?;
        let shared = Arc::new(Shared {
            db,
            ks,
            chats: DashMap::new(),
            config,
        });
        let (tx, rx) = mpsc::channel(shared.config.queue_depth);
        let writer = Writer::new(shared.clone())?;
        let handle = std::thread::Builder::new()
            .name("courier-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Engine(format!("spawn writer: {e}")))?;
        Ok(Self {
            shared,
            tx,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ticket(rx).wait().await
    }

    /// Appends a message; returns once it is durable (or once the original is found, for a retry).
    pub async fn append(&self, req: AppendRequest) -> Result<Appended, StoreError> {
        self.submit_append(req).await?.wait().await
    }

    /// Queues a message and returns a [`Ticket`] for its result. Messages queued one after another
    /// from one task get sequence numbers in that order; waiting on tickets can be done elsewhere.
    pub async fn submit_append(&self, req: AppendRequest) -> Result<Ticket<Appended>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Append(req, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Ticket(rx))
    }

    /// The direct chat of `a` and `b`, created if the pair has none.
    pub async fn create_direct(&self, a: &str, b: &str) -> Result<Arc<Chat>, StoreError> {
        let (a, b) = (a.to_owned(), b.to_owned());
        self.call(|reply| Op::CreateDirect { a, b, reply }).await
    }

    /// A new group named `name` with `creator` and `members`.
    pub async fn create_group(
        &self,
        creator: &str,
        name: &str,
        members: Vec<String>,
    ) -> Result<Arc<Chat>, StoreError> {
        let (creator, name) = (creator.to_owned(), name.to_owned());
        self.call(|reply| Op::CreateGroup {
            creator,
            name,
            members,
            reply,
        })
        .await
    }

    /// The chat `id` if `user` is a member; [`StoreError::Forbidden`] otherwise, also when the
    /// chat does not exist.
    pub fn chat_for(&self, user: &str, id: u64) -> Result<Arc<Chat>, StoreError> {
        match self.shared.chat(id)? {
            Some(c) if c.is_member(user) => Ok(c),
            _ => Err(StoreError::Forbidden),
        }
    }

    /// The newest sequence number of a chat (0 when it has no messages).
    pub fn last_seq(&self, chat: u64) -> Result<u64, StoreError> {
        self.shared.last_seq(chat)
    }

    /// Up to `limit` messages of chat `chat_id` beyond `anchor` in `direction`, for member `user`;
    /// the flag says whether more lie beyond.
    pub fn history(
        &self,
        user: &str,
        chat_id: u64,
        direction: Direction,
        anchor: u64,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        self.chat_for(user, chat_id)?;
        let limit = limit.max(1);
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = match direction {
            Direction::Before => Box::new(
                self.shared
                    .ks
                    .range(keys::message(chat_id, 0)..keys::message(chat_id, anchor))
                    .rev(),
            ),
            Direction::After => {
                let Some(from) = anchor.checked_add(1) else {
                    return Ok((Vec::new(), false));
                };
                Box::new(
                    self.shared
                        .ks
                        .range(keys::message(chat_id, from)..=keys::message(chat_id, u64::MAX)),
                )
            }
        };
        let mut out = Vec::with_capacity(limit.min(256));
        for item in iter {
            let (key, value) = item.into_inner()?;
            if out.len() == limit {
                return Ok((out, true));
            }
            let m = record::decode_message(&value)
                .map_err(|_| StoreError::Corrupt(format!("{key:?}")))?;
            out.push(m);
        }
        Ok((out, false))
    }

    /// Up to `limit` chats of `user` with ids above `after`, each with its newest seq.
    pub fn chats_of(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(Arc<Chat>, u64)>, StoreError> {
        let prefix = keys::member_prefix(user);
        let start = keys::member(user, after.saturating_add(1));
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xff; 8]);
        let mut out = Vec::new();
        for item in self.shared.ks.range(start..=end) {
            if out.len() == limit {
                break;
            }
            let key = item.key()?;
            let Some(id) = keys::member_chat(&key) else {
                continue;
            };
            if let Some(chat) = self.shared.chat(id)? {
                out.push((chat, self.shared.last_seq(id)?));
            }
        }
        Ok(out)
    }

    /// Stops the writer after the operations already queued, and waits for it.
    pub async fn close(&self) {
        let _ = self.tx.send(Op::Shutdown).await;
        let handle = self.writer.lock().expect("writer handle lock").take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}
