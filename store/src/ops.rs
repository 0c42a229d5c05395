//! Write operations of the message log, engine-neutral: each runs inside one [`Txn`] attempt.
//!
//! Every function returns `Result<Result<T, StoreError>, KvError>`: the outer error aborts the
//! whole attempt (the writer retries the batch in a fresh transaction when it is retryable); the
//! inner result is the answer to that one request.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use courier_wire::frame::{ChatKind, Message, MessageKind, SystemEvent, SystemEventKind};
use courier_wire::valid_user_id;

use crate::error::Forbid;
use crate::kv::{KvError, Txn};
use crate::lastseqs::{LastSeqs, SeqWrites};
use crate::record::{self, Chat, DedupeRecord};
use crate::store::{AppendRequest, Appended, Committed, Shared};
use crate::{keys, FastMap, StoreError};

/// How far ahead of the server's clock a UUIDv7 client message id may be.
const MAX_ID_AHEAD_MS: u64 = 86_400_000;

/// How long a batch's commit marker is kept (see `writer`).
const MARKER_TTL_MS: u64 = 3_600_000;

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 128;

/// Answer of one request, or an engine failure that aborts the attempt.
pub(crate) type OpResult<T> = Result<Result<T, StoreError>, KvError>;

/// Reads a big-endian u64 value.
pub(crate) fn get_u64(t: &mut dyn Txn, key: &[u8]) -> Result<Option<u64>, KvError> {
    match t.get(key)? {
        None => Ok(None),
        Some(raw) => record::decode_u64(&raw)
            .map(Some)
            .map_err(|_| KvError::fatal(format!("corrupt u64 under {key:?}"))),
    }
}

/// Reads a chat's `S` entry (zero and no open hour when it has none).
pub(crate) fn get_last_seq(t: &mut dyn Txn, chat: u64) -> Result<record::LastSeq, KvError> {
    match t.get(&keys::last_seq(chat))? {
        None => Ok(record::LastSeq::default()),
        Some(raw) => record::LastSeq::decode(&raw)
            .map_err(|_| KvError::fatal(format!("corrupt last seq of chat {chat}"))),
    }
}

/// Reads a chat record.
pub(crate) fn read_chat(t: &mut dyn Txn, id: u64) -> Result<Option<Chat>, KvError> {
    match t.get(&keys::chat(id))? {
        None => Ok(None),
        Some(raw) => Chat::decode(id, &raw)
            .map(Some)
            .map_err(|_| KvError::fatal(format!("corrupt chat {id}"))),
    }
}

/// Changes to a group.
#[derive(Debug, Clone, Default)]
pub struct GroupChange {
    /// A new name.
    pub rename: Option<String>,
    /// Users to add.
    pub add: Vec<String>,
    /// Users to remove (a member may remove itself).
    pub remove: Vec<String>,
}

/// What one sweep transaction deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// (chat, hour) retention entries finished: each expired a run of a chat's messages.
    pub chat_hours: usize,
    /// Messages deleted.
    pub messages: usize,
    /// Dedupe records deleted (one per deleted message that a user sent).
    pub dedupe_records: usize,
    /// Media records deleted: uploads no message attached within a day, and media whose
    /// every attaching message expired (thumbnails count with their media).
    pub media: usize,
    /// Blobs that no media record uses any more: the gateway deletes them from the blob store.
    pub released_blobs: Vec<[u8; 32]>,
    /// Whether expired entries remain (another sweep transaction is needed).
    pub more: bool,
    /// Release candidates this sweep dealt with, as `(media, candidate value)`: the other
    /// partitions' writers clear those they hold (a store split into partitions).
    pub(crate) released_candidates: Vec<([u8; 16], Vec<u8>)>,
}

/// One transaction attempt of the writer.
pub(crate) struct Attempt<'a, 'k> {
    pub(crate) t: Box<dyn Txn + 'a>,
    pub(crate) shared: &'a Shared,
    pub(crate) now: u64,
    /// The partition whose writer runs this attempt (0 of 1 when the store has one writer).
    pub(crate) partition: usize,
    /// Chats created or changed in this attempt (the cache learns them only after commit).
    pub(crate) changed: HashMap<u64, Arc<Chat>>,
    pub(crate) committed: Vec<Committed>,
    /// Each chat this attempt read the last seq of: its `S` entry as found, and its last seq
    /// now (greater when the attempt appended to it); written once, by `finish`.
    last_seqs: FastMap<u64, (record::LastSeq, u64)>,
    /// The writer's memory of last seqs from earlier batches (exclusive engines only).
    known: Option<&'k LastSeqs>,
    /// The `S` entries this attempt wrote, for that memory.
    pub(crate) seq_writes: SeqWrites,
    /// Users' routes as read in this attempt (in a cluster).
    pub(crate) routes: HashMap<String, Vec<u64>>,
    /// Events for other nodes' devices, written to their inboxes with this attempt.
    pub(crate) events: Vec<crate::cluster::Event>,
    /// Presence changes for the nodes watching them (in a cluster).
    pub(crate) presence: Vec<crate::cluster::PresenceNote>,
}

fn invalid<T>(msg: impl Into<String>) -> OpResult<T> {
    Ok(Err(StoreError::Invalid(msg.into())))
}

fn check_users<'u>(users: impl IntoIterator<Item = &'u String>) -> Result<(), StoreError> {
    match users.into_iter().find(|u| !valid_user_id(u)) {
        Some(bad) => Err(StoreError::Invalid(format!(
            "bad user id {}",
            courier_wire::text::quote(bad)
        ))),
        None => Ok(()),
    }
}

impl<'a, 'k> Attempt<'a, 'k> {
    pub(crate) fn new(
        t: Box<dyn Txn + 'a>,
        shared: &'a Shared,
        now: u64,
        partition: usize,
        known: Option<&'k LastSeqs>,
    ) -> Self {
        Self {
            t,
            shared,
            now,
            partition,
            changed: HashMap::new(),
            committed: Vec::new(),
            last_seqs: FastMap::default(),
            known,
            seq_writes: SeqWrites::new(known.is_some()),
            routes: HashMap::new(),
            events: Vec::new(),
            presence: Vec::new(),
        }
    }

    /// A chat's last seq, as of this attempt: from the writer's memory when it has the chat,
    /// else read (as a conflict read on engines with other writers).
    pub(crate) fn last_seq(&mut self, chat: u64) -> Result<u64, KvError> {
        if let Some(&(_, s)) = self.last_seqs.get(&chat) {
            return Ok(s);
        }
        let found = match self.known.and_then(|k| k.get(chat)) {
            Some(found) => found,
            None => get_last_seq(&mut *self.t, chat)?,
        };
        self.last_seqs.insert(chat, (found, found.seq));
        Ok(found.seq)
    }

    /// The chat's last seq as this attempt knows it, or else read without a conflict range:
    /// for acks and receipts, which only clamp to it, so that sends to the chat from other
    /// writers do not make their batch conflict. Not cached: an append must read it for real.
    pub(crate) fn last_seq_snapshot(&mut self, chat: u64) -> Result<u64, KvError> {
        if let Some(&(_, s)) = self.last_seqs.get(&chat) {
            return Ok(s);
        }
        match self.t.get_snapshot(&keys::last_seq(chat))? {
            None => Ok(0),
            Some(raw) => record::LastSeq::decode(&raw)
                .map(|l| l.seq)
                .map_err(|_| KvError::fatal(format!("corrupt last seq of chat {chat}"))),
        }
    }

    /// Records `seq` (just assigned: the chat's last seq read first) as the chat's newest.
    fn appended(&mut self, chat: u64, seq: u64) {
        if let Some(e) = self.last_seqs.get_mut(&chat) {
            e.1 = seq;
        }
    }

    /// Writes each touched chat's last seq, once per chat rather than once per message, and
    /// keeps the retention index: a chat's first messages in a new hour close its open `T`
    /// entry with the exact last seq of the old hour and open one for this hour, so `T` is
    /// written twice per chat and hour, not once per batch. Call before committing.
    pub(crate) fn finish(&mut self) {
        let now = keys::hour_of(self.now);
        for (&chat, &(found, seq)) in &self.last_seqs {
            if seq == found.seq {
                continue; // read, not appended to
            }
            // A clock that stepped back keeps the open hour (those messages expire later).
            let hour = match found.open_hour {
                Some(h) if h >= now => h,
                open => {
                    if let Some(h) = open {
                        // Close the old hour with its exact last seq.
                        self.t.set(&keys::time(h, chat), &found.seq.to_be_bytes());
                    }
                    self.t
                        .set(&keys::time(now, chat), &record::OPEN.to_be_bytes());
                    now
                }
            };
            let value = record::LastSeq {
                seq,
                open_hour: Some(hour),
            };
            self.t.set(&keys::last_seq(chat), &value.encode());
            self.seq_writes.note(chat, Some(value));
        }
    }

    fn chat(&mut self, id: u64) -> Result<Option<Arc<Chat>>, KvError> {
        if let Some(c) = self.changed.get(&id) {
            return Ok(Some(c.clone()));
        }
        self.shared.chat_in(&mut *self.t, id)
    }

    pub(crate) fn member_chat(
        &mut self,
        user: &str,
        id: u64,
    ) -> Result<Option<Arc<Chat>>, KvError> {
        Ok(self.chat(id)?.filter(|c| c.is_member(user)))
    }

    /// Appends one message with the chat's next seq. `dedupe` names the sender's client message
    /// id to remember (None for system messages).
    #[allow(clippy::too_many_arguments)]
    fn append_message(
        &mut self,
        chat: Arc<Chat>,
        sender: String,
        device: u32,
        client_msg_id: [u8; 16],
        dedupe: bool,
        kind: MessageKind,
        body: Bytes,
        attachments: Vec<courier_wire::frame::Attachment>,
        also_notify: Vec<String>,
    ) -> Result<Appended, KvError> {
        let id = chat.id;
        let seq = self.last_seq(id)? + 1;
        if dedupe {
            let d = DedupeRecord {
                chat_id: id,
                seq,
                server_ts: self.now,
            };
            self.t
                .set(&keys::dedupe(&sender, &client_msg_id), &d.encode());
        }
        let message = Message {
            chat_id: id,
            seq,
            sender_user: sender,
            sender_device: device,
            server_ts: self.now,
            client_msg_id,
            kind,
            body,
            attachments,
        };
        self.t
            .set(&keys::message(id, seq), &record::encode_message(&message));
        if message.kind != MessageKind::System {
            self.queue_pushes(&chat.members, &message.sender_user, id, seq, &message.body)?;
        }
        self.appended(id, seq);
        self.committed.push(Committed {
            chat,
            message,
            also_notify,
        });
        Ok(Appended {
            chat_id: id,
            seq,
            server_ts: self.now,
            duplicate: false,
        })
    }

    pub(crate) fn append(&mut self, req: &AppendRequest) -> OpResult<Appended> {
        // A time-ordered id claiming a time far ahead would keep its dedupe record past retention.
        if courier_wire::uuid_v7_millis(&req.client_msg_id)
            .is_some_and(|ms| ms > self.now + MAX_ID_AHEAD_MS)
        {
            return invalid("client_msg_id is a UUIDv7 more than a day in the future");
        }
        let Some(chat) = self.member_chat(&req.sender_user, req.chat_id)? else {
            return Ok(Err(StoreError::Forbidden(Forbid::NotMember)));
        };
        if let Some(raw) = self
            .t
            .get(&keys::dedupe(&req.sender_user, &req.client_msg_id))?
        {
            let d =
                DedupeRecord::decode(&raw).map_err(|_| KvError::fatal("corrupt dedupe record"))?;
            return Ok(Ok(Appended {
                chat_id: d.chat_id,
                seq: d.seq,
                server_ts: d.server_ts,
                duplicate: true,
            }));
        }
        // Attachments are described by the server's records, never by the client's claims.
        let attachments = if req.attachments.is_empty() {
            Vec::new()
        } else {
            let seq = self.last_seq(chat.id)? + 1;
            match self.attach(&req.sender_user, chat.id, seq, &req.attachments)? {
                Ok(a) => a,
                Err(e) => return Ok(Err(e)),
            }
        };
        let r = self.append_message(
            chat,
            req.sender_user.clone(),
            req.sender_device,
            req.client_msg_id,
            true,
            req.kind,
            req.body.clone(),
            attachments,
            Vec::new(),
        )?;
        Ok(Ok(r))
    }

    /// A chat id drawn at random from 1 to 2^53 - 1, checked unused: ids say nothing about how
    /// many chats exist (so a `FORBIDDEN` for a guessed id reveals nothing), need no counter
    /// that every writer would contend on, and stay exact as JSON numbers (push payloads).
    /// With several writers, the id is one of this writer's partition, which then owns the
    /// chat.
    fn fresh_chat_id(&mut self) -> Result<u64, KvError> {
        let n = self.shared.writers as u64;
        for _ in 0..16 {
            let drawn = rand::random_range(n..1u64 << 53);
            let id = drawn - drawn % n + self.partition as u64;
            if id == 0 || id >= 1 << 53 {
                continue;
            }
            if !self.changed.contains_key(&id) && self.t.get(&keys::chat(id))?.is_none() {
                return Ok(id);
            }
        }
        Err(KvError::fatal("no unused chat id in 16 draws".to_owned()))
    }

    fn new_chat(
        &mut self,
        kind: ChatKind,
        name: String,
        members: Vec<String>,
        owner: String,
    ) -> Result<Arc<Chat>, KvError> {
        let id = self.fresh_chat_id()?;
        let chat = Arc::new(Chat {
            id,
            kind,
            name,
            members,
            created_ts: self.now,
            owner,
        });
        self.t.set(&keys::chat(id), &chat.encode());
        for m in &chat.members {
            self.t.set(&keys::member(m, id), &[]);
        }
        self.changed.insert(id, chat.clone());
        Ok(chat)
    }

    pub(crate) fn create_direct(&mut self, a: &str, b: &str) -> OpResult<Arc<Chat>> {
        for u in [a, b] {
            if !valid_user_id(u) {
                return invalid(format!("bad user id {}", courier_wire::text::quote(u)));
            }
        }
        let pair = keys::pair(a, b);
        if let Some(id) = get_u64(&mut *self.t, &pair)? {
            return match self.chat(id)? {
                Some(c) => Ok(Ok(c)),
                None => Err(KvError::fatal(format!(
                    "pair record names missing chat {id}"
                ))),
            };
        }
        let mut members = vec![a.to_owned(), b.to_owned()];
        members.sort();
        members.dedup();
        let chat = self.new_chat(ChatKind::Direct, String::new(), members, String::new())?;
        self.t.set(&pair, &chat.id.to_be_bytes());
        Ok(Ok(chat))
    }

    fn check_name(name: &str) -> Result<(), StoreError> {
        if name.trim().is_empty() || name.len() > MAX_GROUP_NAME {
            return Err(StoreError::Invalid(format!(
                "group name must be 1 to {MAX_GROUP_NAME} bytes"
            )));
        }
        Ok(())
    }

    pub(crate) fn create_group(
        &mut self,
        creator: &str,
        name: &str,
        members: &[String],
    ) -> OpResult<Arc<Chat>> {
        if let Err(e) = Self::check_name(name)
            .and_then(|()| check_users(members.iter().chain([&creator.to_owned()])))
        {
            return Ok(Err(e));
        }
        let mut all: Vec<String> = members
            .iter()
            .cloned()
            .chain([creator.to_owned()])
            .collect();
        all.sort();
        all.dedup();
        let max = self.shared.config.max_group_members;
        if all.len() > max {
            return Ok(Err(StoreError::TooLarge(format!(
                "a group has at most {max} members"
            ))));
        }
        let added: Vec<String> = all.iter().filter(|m| *m != creator).cloned().collect();
        let chat = self.new_chat(ChatKind::Group, name.to_owned(), all, creator.to_owned())?;
        let event = SystemEvent {
            kind: SystemEventKind::Created,
            actor: creator.to_owned(),
            name: Some(name.to_owned()),
            added,
            removed: vec![],
        };
        self.append_message(
            chat.clone(),
            creator.to_owned(),
            0,
            [0; 16],
            false,
            MessageKind::System,
            event.to_body(),
            vec![],
            vec![],
        )?;
        Ok(Ok(chat))
    }

    pub(crate) fn update_group(
        &mut self,
        actor: &str,
        chat_id: u64,
        change: &GroupChange,
    ) -> OpResult<Arc<Chat>> {
        let Some(chat) = self.member_chat(actor, chat_id)? else {
            return Ok(Err(StoreError::Forbidden(Forbid::NotMember)));
        };
        if chat.kind != ChatKind::Group {
            return invalid("a direct chat has no name or members to change");
        }
        if change.rename.is_none() && change.add.is_empty() && change.remove.is_empty() {
            return invalid("nothing to change");
        }
        if let Some(name) = &change.rename {
            if let Err(e) = Self::check_name(name) {
                return Ok(Err(e));
            }
        }
        if let Err(e) = check_users(change.add.iter().chain(&change.remove)) {
            return Ok(Err(e));
        }
        if change.remove.iter().any(|u| u != actor) && chat.owner != actor {
            return Ok(Err(StoreError::Forbidden(Forbid::NotOwner)));
        }
        let mut added: Vec<String> = change
            .add
            .iter()
            .filter(|u| !chat.is_member(u) && !change.remove.contains(u))
            .cloned()
            .collect();
        added.sort();
        added.dedup();
        let mut removed: Vec<String> = change
            .remove
            .iter()
            .filter(|u| chat.is_member(u))
            .cloned()
            .collect();
        removed.sort();
        removed.dedup();
        let mut members: Vec<String> = chat
            .members
            .iter()
            .filter(|m| !removed.contains(m))
            .cloned()
            .chain(added.iter().cloned())
            .collect();
        members.sort();
        let max = self.shared.config.max_group_members;
        if members.len() > max {
            return Ok(Err(StoreError::TooLarge(format!(
                "a group has at most {max} members"
            ))));
        }
        let rename = change.rename.clone().filter(|n| *n != chat.name);
        if added.is_empty() && removed.is_empty() && rename.is_none() {
            return Ok(Ok(chat));
        }
        let owner = if removed.contains(&chat.owner) {
            members.first().cloned().unwrap_or_default()
        } else {
            chat.owner.clone()
        };
        let name = rename.clone().unwrap_or_else(|| chat.name.clone());
        let new = Arc::new(Chat {
            id: chat.id,
            kind: chat.kind,
            name,
            members,
            created_ts: chat.created_ts,
            owner,
        });
        self.t.set(&keys::chat(new.id), &new.encode());
        for u in &added {
            self.t.set(&keys::member(u, new.id), &[]);
        }
        for u in &removed {
            self.t.clear(&keys::member(u, new.id));
        }
        self.changed.insert(new.id, new.clone());
        let event = SystemEvent {
            kind: SystemEventKind::Changed,
            actor: actor.to_owned(),
            name: rename,
            added,
            removed: removed.clone(),
        };
        self.append_message(
            new.clone(),
            actor.to_owned(),
            0,
            [0; 16],
            false,
            MessageKind::System,
            event.to_body(),
            vec![],
            removed,
        )?;
        Ok(Ok(new))
    }

    /// Records that `device` of `user` holds `chat` up to `seq` (clamped to the chat's last seq;
    /// positions only move forward). Returns the stored position.
    pub(crate) fn ack(&mut self, user: &str, device: u32, chat_id: u64, seq: u64) -> OpResult<u64> {
        if self.member_chat(user, chat_id)?.is_none() {
            return Ok(Err(StoreError::Forbidden(Forbid::NotMember)));
        }
        let last = self.last_seq_snapshot(chat_id)?;
        let key = keys::position(user, device, chat_id);
        let current = get_u64(&mut *self.t, &key)?.unwrap_or(0);
        let seq = seq.min(last);
        if seq > current {
            self.t.set(&key, &seq.to_be_bytes());
            return Ok(Ok(seq));
        }
        Ok(Ok(current))
    }

    /// Deletes expired messages, and the dedupe records of those messages, in one bounded
    /// transaction: at most about `limit` messages. Each chat's floor records where it now
    /// starts; the `T` entry of a (chat, hour) goes once all its messages are gone.
    pub(crate) fn sweep(&mut self, limit: usize) -> OpResult<SweepStats> {
        let retention = self.shared.config.retention.as_millis() as u64;
        let cutoff = keys::hour_of(self.now.saturating_sub(retention));
        let mut stats = SweepStats::default();
        let mut budget = limit.max(1);
        // Commit markers a batch left behind (its successor clears it, unless the node stopped
        // first) are of no use after an hour.
        self.t.clear_range(
            &keys::commit_markers_from(0),
            &keys::commit_markers_from(self.now.saturating_sub(MARKER_TTL_MS)),
        );
        // This partition's chats only (all of them on an engine of one partition).
        let runs = self.t.scan_local(
            &keys::time_prefix(0),
            &keys::time_prefix(cutoff),
            budget,
            false,
        )?;
        for (k, v) in &runs {
            let (Some((hour, chat)), Ok(last)) = (keys::parse_time(k), record::decode_u64(v))
            else {
                return Err(KvError::fatal(format!("corrupt retention entry {k:?}")));
            };
            // An open entry: the chat got nothing after that hour, so all it has expired.
            let open = if last == record::OPEN {
                Some(get_last_seq(&mut *self.t, chat)?)
            } else {
                None
            };
            let last = open.map_or(last, |s| s.seq);
            let floor = get_u64(&mut *self.t, &keys::floor(chat))?.unwrap_or(1);
            if floor <= last {
                let doomed = self.t.scan(
                    &keys::message(chat, floor),
                    &keys::message(chat, last + 1),
                    budget,
                    false,
                )?;
                let mut next_floor = last + 1;
                if doomed.len() == budget {
                    next_floor = keys::message_seq(&doomed[doomed.len() - 1].0)
                        .map_or(next_floor, |s| s + 1);
                }
                for (_, raw) in &doomed {
                    let m = record::decode_message(raw)
                        .map_err(|_| KvError::fatal(format!("corrupt message in chat {chat}")))?;
                    if m.kind != MessageKind::System {
                        self.t
                            .clear(&keys::dedupe(&m.sender_user, &m.client_msg_id));
                        stats.dedupe_records += 1;
                    }
                    for a in &m.attachments {
                        self.unreference(&a.media_id, chat, next_floor, &mut stats)?;
                    }
                }
                stats.messages += doomed.len();
                self.t.clear_range(
                    &keys::message(chat, floor),
                    &keys::message(chat, next_floor),
                );
                self.t.set(&keys::floor(chat), &next_floor.to_be_bytes());
                budget = budget.saturating_sub(doomed.len());
                if next_floor <= last {
                    stats.more = true;
                    break;
                }
            }
            self.t.clear(k);
            if let Some(s) = open {
                // The chat has no open entry now: its next message opens one.
                if s.open_hour == Some(hour) {
                    let closed = record::LastSeq {
                        open_hour: None,
                        ..s
                    };
                    self.t.set(&keys::last_seq(chat), &closed.encode());
                    self.seq_writes.note(chat, None);
                }
            }
            stats.chat_hours += 1;
            if budget == 0 {
                stats.more = true;
                break;
            }
        }
        if runs.len() == limit.max(1) {
            stats.more = true;
        }
        // Uploads live in partition 0; on a store of several partitions its writer expires
        // them with the release candidates (`release_media`).
        if budget > 0 && !stats.more && self.shared.engine.partitions() == 1 {
            self.expire_unattached_uploads(budget, &mut stats)?;
        }
        Ok(Ok(stats))
    }
}
