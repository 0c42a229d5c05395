//! Read operations of the message log, engine-neutral: history, chat lists, sync.
//!
//! Sync is fanout on read: a message is written once, whatever the size of its chat; a device
//! catching up reads its user's memberships (`U user *`), its own positions (`A user device *`)
//! and each chat's last seq (`S chat`), and reads messages only of chats where the last seq is
//! beyond its position. Cost: one range read each for memberships and positions, one point read
//! per chat the user is in, plus the messages actually missed.

use std::collections::HashMap;
use std::sync::Arc;

use courier_wire::frame::{Direction, Message};

use crate::error::Forbid;
use crate::kv::{KvError, Txn};
use crate::ops::{get_last_seq, get_u64};
use crate::record::{self, Chat};
use crate::store::Store;
use crate::{keys, StoreError};

/// One page of what a device missed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPage {
    /// Missed messages: chat by chat (ascending chat id), each chat in seq order.
    pub messages: Vec<Message>,
    /// True when more missed messages remain: sync again from the positions this page reached.
    pub more: bool,
    /// Chats where messages after the device's position had already expired.
    pub expired: Vec<u64>,
}

/// Most memberships one user may have that sync considers.
const MAX_MEMBERSHIPS: usize = 1_000_000;

pub(crate) fn engine_err(e: KvError) -> StoreError {
    StoreError::from(e)
}

fn decode_messages(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<Message>, StoreError> {
    pairs
        .into_iter()
        .map(|(k, v)| record::decode_message(&v).map_err(|_| StoreError::Corrupt(format!("{k:?}"))))
        .collect()
}

impl Store {
    /// Runs `f`, one or more of the store's reads, where it cannot stall the caller's async
    /// runtime: inline on an engine of this process alone (the embedded engine reads locally,
    /// in microseconds), on tokio's blocking pool on a remote engine (FoundationDB: every read
    /// is a network round trip, and a shard's single thread serves every connection on it).
    pub async fn reading<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Self) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        if self.shared.engine.exclusive() {
            return f(self);
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Engine(format!("read task: {e}")))?
    }

    /// Runs `f` in a read-only transaction, and again in a fresh one while the engine asks for
    /// a retry ([`StoreError::Busy`]: FoundationDB's too-old read versions, future versions,
    /// storage servers behind), up to `StoreConfig::max_retries` times, waiting as the writer
    /// does between retries.
    pub(crate) fn read<T>(
        &self,
        mut f: impl FnMut(&mut dyn Txn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tries = 0;
        loop {
            let result = self
                .shared
                .engine
                .begin()
                .map_err(engine_err)
                .and_then(|mut t| f(&mut *t));
            match result {
                Err(StoreError::Busy(_)) if tries < self.shared.config.max_retries => {
                    tries += 1;
                    // Only a remote engine asks for retries, and its reads run on the blocking
                    // pool (`reading`): a wait here stalls no shard.
                    std::thread::sleep(crate::writer::retry_wait(&self.shared.config, tries));
                }
                r => return r,
            }
        }
    }

    fn member_chat_in(
        &self,
        t: &mut dyn Txn,
        user: &str,
        id: u64,
    ) -> Result<Arc<Chat>, StoreError> {
        match self.shared.chat_in(t, id).map_err(engine_err)? {
            Some(c) if c.is_member(user) => Ok(c),
            _ => Err(StoreError::Forbidden(Forbid::NotMember)),
        }
    }

    /// The chat `id` if `user` is a member; [`StoreError::Forbidden`] otherwise, also when the
    /// chat does not exist.
    pub fn chat_for(&self, user: &str, id: u64) -> Result<Arc<Chat>, StoreError> {
        self.read(|t| self.member_chat_in(t, user, id))
    }

    /// The newest sequence number of a chat (0 when it has no messages).
    pub fn last_seq(&self, chat: u64) -> Result<u64, StoreError> {
        self.read(|t| Ok(get_last_seq(t, chat).map_err(engine_err)?.seq))
    }

    /// Per chat, the furthest position any device of `user` acknowledged: what the user has
    /// seen. (`unread` in chat summaries is the chat's last seq minus this.)
    pub fn user_positions(&self, user: &str) -> Result<HashMap<u64, u64>, StoreError> {
        let prefix = keys::position_user_prefix(user);
        let pairs = self.read(|t| {
            t.scan(&prefix, &keys::prefix_end(&prefix), MAX_MEMBERSHIPS, false)
                .map_err(engine_err)
        })?;
        let mut out: HashMap<u64, u64> = HashMap::new();
        for (k, v) in pairs {
            if let (Some(chat), Ok(seq)) = (keys::member_chat(&k), record::decode_u64(&v)) {
                let e = out.entry(chat).or_insert(0);
                *e = (*e).max(seq);
            }
        }
        Ok(out)
    }

    /// The position a device acknowledged in a chat (0 when none).
    pub fn position(&self, user: &str, device: u32, chat: u64) -> Result<u64, StoreError> {
        let key = keys::position(user, device, chat);
        self.read(|t| Ok(get_u64(t, &key).map_err(engine_err)?.unwrap_or(0)))
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
        let limit = limit.max(1);
        let (start, end, reverse) = match direction {
            Direction::Before => (
                keys::message(chat_id, 0),
                keys::message(chat_id, anchor),
                true,
            ),
            Direction::After => match anchor.checked_add(1) {
                Some(from) => (
                    keys::message(chat_id, from),
                    keys::prefix_end(&keys::message(chat_id, u64::MAX)),
                    false,
                ),
                None => return Ok((Vec::new(), false)),
            },
        };
        let mut pairs = self.read(|t| {
            self.member_chat_in(t, user, chat_id)?;
            t.scan(&start, &end, limit + 1, reverse).map_err(engine_err)
        })?;
        let more = pairs.len() > limit;
        pairs.truncate(limit);
        Ok((decode_messages(pairs)?, more))
    }

    /// Up to `limit` chats of `user` with ids above `after`, each with its newest seq.
    pub fn chats_of(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(Arc<Chat>, u64)>, StoreError> {
        let start = keys::member(user, after.saturating_add(1));
        let end = keys::prefix_end(&keys::member_prefix(user));
        self.read(|t| {
            let members = t.scan(&start, &end, limit, false).map_err(engine_err)?;
            let mut out = Vec::with_capacity(members.len());
            for (k, _) in members {
                let Some(id) = keys::member_chat(&k) else {
                    continue;
                };
                if let Some(chat) = self.shared.chat_in(t, id).map_err(engine_err)? {
                    let last = get_last_seq(t, id).map_err(engine_err)?.seq;
                    out.push((chat, last));
                }
            }
            Ok(out)
        })
    }

    /// Up to `limit` messages that `device` of `user` has not got, across all the user's chats.
    /// A chat's starting point is the position the client gives in `positions`, else the
    /// device's acknowledged position, else 0.
    pub fn sync(
        &self,
        user: &str,
        device: u32,
        positions: &[(u64, u64)],
        limit: usize,
    ) -> Result<SyncPage, StoreError> {
        let limit = limit.max(1);
        self.read(|t| {
            let member_prefix = keys::member_prefix(user);
            let chats = t
                .scan(
                    &member_prefix,
                    &keys::prefix_end(&member_prefix),
                    MAX_MEMBERSHIPS,
                    false,
                )
                .map_err(engine_err)?;
            let pos_prefix = keys::position_prefix(user, device);
            let stored: HashMap<u64, u64> = t
                .scan(
                    &pos_prefix,
                    &keys::prefix_end(&pos_prefix),
                    MAX_MEMBERSHIPS,
                    false,
                )
                .map_err(engine_err)?
                .into_iter()
                .filter_map(|(k, v)| Some((keys::member_chat(&k)?, record::decode_u64(&v).ok()?)))
                .collect();
            let given: HashMap<u64, u64> = positions.iter().copied().collect();

            // Every chat's last seq in one round trip, then the floors of those with news in
            // one more: a sync costs a constant number of round trips however many chats the
            // user is in, plus one range read per chat with news.
            let ids: Vec<u64> = chats
                .iter()
                .filter_map(|(k, _)| keys::member_chat(k))
                .collect();
            let lasts = t
                .get_many(&ids.iter().map(|&c| keys::last_seq(c)).collect::<Vec<_>>())
                .map_err(engine_err)?;
            let mut news = Vec::new();
            for (&chat, raw) in ids.iter().zip(lasts) {
                let last = match raw {
                    None => 0,
                    Some(raw) => {
                        record::LastSeq::decode(&raw)
                            .map_err(|_| StoreError::Corrupt(format!("last seq of chat {chat}")))?
                            .seq
                    }
                };
                let pos = given
                    .get(&chat)
                    .or_else(|| stored.get(&chat))
                    .copied()
                    .unwrap_or(0);
                if last > pos {
                    news.push((chat, pos, last));
                }
            }
            let floors = t
                .get_many(
                    &news
                        .iter()
                        .map(|&(c, _, _)| keys::floor(c))
                        .collect::<Vec<_>>(),
                )
                .map_err(engine_err)?;

            let mut page = SyncPage::default();
            for (&(chat, pos, last), floor) in news.iter().zip(floors) {
                let floor = match floor {
                    None => 1,
                    Some(raw) => record::decode_u64(&raw)
                        .map_err(|_| StoreError::Corrupt(format!("floor of chat {chat}")))?,
                };
                let mut from = pos + 1;
                if from < floor {
                    page.expired.push(chat);
                    from = floor;
                }
                if from > last {
                    continue;
                }
                let room = limit - page.messages.len();
                if room == 0 {
                    page.more = true;
                    break;
                }
                let got = t
                    .scan(
                        &keys::message(chat, from),
                        &keys::message(chat, last + 1),
                        room,
                        false,
                    )
                    .map_err(engine_err)?;
                let full = got.len() == room;
                page.messages.extend(decode_messages(got)?);
                if full && page.messages.last().is_some_and(|m| m.seq < last) {
                    page.more = true;
                    break;
                }
            }
            Ok(page)
        })
    }
}
