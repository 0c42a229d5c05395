//! The writer thread: group commit and sequence assignment.
//!
//! One thread owns every write. It blocks for the first queued operation, takes whatever else is
//! queued (up to `max_batch`), applies all of it to one atomic engine batch, syncs that batch to
//! disk once, and only then answers the callers and tells the [`CommitListener`]. A lone send
//! therefore waits for about one fsync; under load one fsync covers thousands of messages.
//!
//! Because this thread alone assigns sequence numbers (from its cache of each chat's last seq), a
//! chat's numbers are dense and in queue order without any lock. If a commit fails, nothing of the
//! batch was acknowledged and the caches are dropped, so the next batch re-reads the truth.
//!
//! [`CommitListener`]: crate::CommitListener

use std::collections::HashMap;
use std::sync::Arc;

use courier_wire::frame::{ChatKind, Message};
use courier_wire::valid_user_id;
use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot};

use crate::record::{self, Chat, DedupeRecord};
use crate::store::{AppendRequest, Appended, Shared};
use crate::{keys, StoreError};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued write.
pub(crate) enum Op {
    Append(AppendRequest, Reply<Appended>),
    CreateDirect {
        a: String,
        b: String,
        reply: Reply<Arc<Chat>>,
    },
    CreateGroup {
        creator: String,
        name: String,
        members: Vec<String>,
        reply: Reply<Arc<Chat>>,
    },
    Shutdown,
}

enum Answer {
    Append(Reply<Appended>, Result<Appended, StoreError>),
    Chat(Reply<Arc<Chat>>, Result<Arc<Chat>, StoreError>),
}

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 128;

pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// Last assigned seq of recently written chats (a cache of the `S` keys).
    last_seq: HashMap<u64, u64>,
    next_chat: u64,
}

/// What one batch has written so far, visible to later operations of the same batch.
#[derive(Default)]
struct Pending {
    seqs: HashMap<u64, u64>,
    dedupe: HashMap<Vec<u8>, Appended>,
    chats: HashMap<u64, Arc<Chat>>,
    pairs: HashMap<Vec<u8>, Arc<Chat>>,
    committed: Vec<(Arc<Chat>, Message)>,
    answers: Vec<Answer>,
    next_chat_changed: bool,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<Self, StoreError> {
        let next_chat = Self::read_next_chat(&shared)?;
        Ok(Self {
            shared,
            last_seq: HashMap::new(),
            next_chat,
        })
    }

    fn read_next_chat(shared: &Shared) -> Result<u64, StoreError> {
        match shared.ks.get(keys::next_chat())? {
            None => Ok(1),
            Some(raw) => {
                record::decode_u64(&raw).map_err(|_| StoreError::Corrupt("next chat id".into()))
            }
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let max_batch = self.shared.config.max_batch.max(1);
        let mut ops = Vec::with_capacity(max_batch);
        while let Some(first) = rx.blocking_recv() {
            let mut shutdown = false;
            for op in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                if matches!(op, Op::Shutdown) {
                    shutdown = true;
                    break;
                }
                ops.push(op);
                if ops.len() == max_batch {
                    break;
                }
            }
            if !ops.is_empty() {
                self.apply(ops.drain(..));
            }
            if shutdown {
                break;
            }
        }
        // Make sure everything, including unsynced engine state, reaches the disk before exit.
        if let Err(e) = self.shared.db.persist(PersistMode::SyncAll) {
            tracing::error!("final persist failed: {e}");
        }
    }

    fn apply(&mut self, ops: impl Iterator<Item = Op>) {
        let now = self.shared.config.clock.now_ms();
        let mut batch = self
            .shared
            .db
            .batch()
            .durability(Some(PersistMode::SyncAll));
        let mut p = Pending::default();
        for op in ops {
            match op {
                Op::Append(req, reply) => {
                    let r = self.append(&mut batch, &mut p, req, now);
                    p.answers.push(Answer::Append(reply, r));
                }
                Op::CreateDirect { a, b, reply } => {
                    let r = self.create_direct(&mut batch, &mut p, &a, &b, now);
                    p.answers.push(Answer::Chat(reply, r));
                }
                Op::CreateGroup {
                    creator,
                    name,
                    members,
                    reply,
                } => {
                    let r = self.create_group(&mut batch, &mut p, &creator, &name, members, now);
                    p.answers.push(Answer::Chat(reply, r));
                }
                Op::Shutdown => {}
            }
        }
        let ks = &self.shared.ks;
        for (&chat, &seq) in &p.seqs {
            batch.insert(ks, keys::last_seq(chat), seq.to_be_bytes().to_vec());
        }
        if p.next_chat_changed {
            batch.insert(ks, keys::next_chat(), self.next_chat.to_be_bytes().to_vec());
        }
        match batch.commit() {
            Ok(()) => {
                self.last_seq.extend(p.seqs.iter());
                for (id, chat) in p.chats {
                    self.shared.chats.insert(id, chat);
                }
                for a in p.answers {
                    a.send_ok();
                }
                if let (Some(l), false) = (&self.shared.config.listener, p.committed.is_empty()) {
                    l.committed(&p.committed);
                }
            }
            Err(e) => {
                tracing::error!("commit failed: {e}");
                let err = StoreError::from(e);
                for a in p.answers {
                    a.send_err(err.clone());
                }
                self.last_seq.clear();
                match Self::read_next_chat(&self.shared) {
                    Ok(n) => self.next_chat = n,
                    Err(e) => tracing::error!("re-reading next chat id: {e}"),
                }
            }
        }
    }

    fn chat(&self, p: &Pending, id: u64) -> Result<Option<Arc<Chat>>, StoreError> {
        match p.chats.get(&id) {
            Some(c) => Ok(Some(c.clone())),
            None => self.shared.chat(id),
        }
    }

    fn append(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        p: &mut Pending,
        req: AppendRequest,
        now: u64,
    ) -> Result<Appended, StoreError> {
        let chat = match self.chat(p, req.chat_id)? {
            Some(c) if c.is_member(&req.sender_user) => c,
            _ => return Err(StoreError::Forbidden),
        };
        let dedupe_key = keys::dedupe(&req.sender_user, &req.client_msg_id);
        if let Some(orig) = p.dedupe.get(&dedupe_key) {
            return Ok(Appended {
                duplicate: true,
                ..*orig
            });
        }
        if let Some(raw) = self.shared.ks.get(&dedupe_key)? {
            let d = DedupeRecord::decode(&raw)
                .map_err(|_| StoreError::Corrupt("dedupe record".into()))?;
            return Ok(Appended {
                chat_id: d.chat_id,
                seq: d.seq,
                server_ts: d.server_ts,
                duplicate: true,
            });
        }
        let last = match p.seqs.get(&req.chat_id) {
            Some(&s) => s,
            None => match self.last_seq.get(&req.chat_id) {
                Some(&s) => s,
                None => self.shared.last_seq(req.chat_id)?,
            },
        };
        let seq = last + 1;
        let message = Message {
            chat_id: req.chat_id,
            seq,
            sender_user: req.sender_user,
            sender_device: req.sender_device,
            server_ts: now,
            client_msg_id: req.client_msg_id,
            kind: req.kind,
            body: req.body,
            attachments: req.attachments,
        };
        let ks = &self.shared.ks;
        batch.insert(
            ks,
            keys::message(req.chat_id, seq),
            record::encode_message(&message),
        );
        let d = DedupeRecord {
            chat_id: req.chat_id,
            seq,
            server_ts: now,
        };
        batch.insert(ks, dedupe_key.clone(), d.encode().to_vec());
        p.seqs.insert(req.chat_id, seq);
        let appended = Appended {
            chat_id: req.chat_id,
            seq,
            server_ts: now,
            duplicate: false,
        };
        p.dedupe.insert(dedupe_key, appended);
        p.committed.push((chat, message));
        Ok(appended)
    }

    fn new_chat(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        p: &mut Pending,
        kind: ChatKind,
        name: String,
        members: Vec<String>,
        now: u64,
    ) -> Arc<Chat> {
        let id = self.next_chat;
        self.next_chat += 1;
        p.next_chat_changed = true;
        let chat = Arc::new(Chat {
            id,
            kind,
            name,
            members,
            created_ts: now,
        });
        let ks = &self.shared.ks;
        batch.insert(ks, keys::chat(id), chat.encode());
        for m in &chat.members {
            batch.insert(ks, keys::member(m, id), Vec::new());
        }
        p.chats.insert(id, chat.clone());
        chat
    }

    fn create_direct(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        p: &mut Pending,
        a: &str,
        b: &str,
        now: u64,
    ) -> Result<Arc<Chat>, StoreError> {
        for u in [a, b] {
            if !valid_user_id(u) {
                return Err(StoreError::Invalid(format!("bad user id {u:?}")));
            }
        }
        let pair = keys::pair(a, b);
        if let Some(c) = p.pairs.get(&pair) {
            return Ok(c.clone());
        }
        if let Some(raw) = self.shared.ks.get(&pair)? {
            let id =
                record::decode_u64(&raw).map_err(|_| StoreError::Corrupt("pair record".into()))?;
            return self
                .chat(p, id)?
                .ok_or_else(|| StoreError::Corrupt(format!("pair names missing chat {id}")));
        }
        let mut members = vec![a.to_owned(), b.to_owned()];
        members.sort();
        members.dedup();
        let chat = self.new_chat(batch, p, ChatKind::Direct, String::new(), members, now);
        batch.insert(
            &self.shared.ks,
            pair.clone(),
            chat.id.to_be_bytes().to_vec(),
        );
        p.pairs.insert(pair, chat.clone());
        Ok(chat)
    }

    fn create_group(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        p: &mut Pending,
        creator: &str,
        name: &str,
        mut members: Vec<String>,
        now: u64,
    ) -> Result<Arc<Chat>, StoreError> {
        if name.trim().is_empty() || name.len() > MAX_GROUP_NAME {
            return Err(StoreError::Invalid(format!(
                "group name must be 1 to {MAX_GROUP_NAME} bytes"
            )));
        }
        members.push(creator.to_owned());
        if let Some(bad) = members.iter().find(|m| !valid_user_id(m)) {
            return Err(StoreError::Invalid(format!("bad user id {bad:?}")));
        }
        members.sort();
        members.dedup();
        let max = self.shared.config.max_group_members;
        if members.len() > max {
            return Err(StoreError::TooLarge(format!(
                "a group has at most {max} members"
            )));
        }
        Ok(self.new_chat(batch, p, ChatKind::Group, name.to_owned(), members, now))
    }
}

impl Answer {
    fn send_ok(self) {
        // A caller that gave up waiting is no error: its request is committed all the same.
        match self {
            Self::Append(tx, r) => drop(tx.send(r)),
            Self::Chat(tx, r) => drop(tx.send(r)),
        }
    }

    fn send_err(self, err: StoreError) {
        match self {
            Self::Append(tx, r) => drop(tx.send(r.and(Err(err)))),
            Self::Chat(tx, r) => drop(tx.send(r.and(Err(err)))),
        }
    }
}
