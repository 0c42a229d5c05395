//! Delivered and read receipts, engine-neutral.
//!
//! Each user has, per chat, two durable pointers (`E user chat`): the highest seq one of its
//! devices received and the highest it read (reading implies receiving). They only move
//! forward and never beyond the chat's last seq. Unread counts are the chat's last seq minus the
//! read pointer, so a read on one device clears unread on every device of the user.
//!
//! A receipt that moves a pointer says whom to tell: the senders of the messages it newly
//! covers (the most recent [`MAX_SENDERS_SCANNED`] of them), and, for groups, how many members'
//! pointers are at or beyond it ("read by 7").

use std::collections::HashMap;

use courier_wire::frame::{ChatKind, ReceiptKind};

use crate::error::Forbid;
use crate::kv::{KvError, Txn};
use crate::ops::{Attempt, OpResult};
use crate::reads::engine_err;
use crate::store::Store;
use crate::{keys, record, StoreError};

/// Messages a receipt looks at to find whom to tell.
pub const MAX_SENDERS_SCANNED: usize = 256;

/// A user's pointers in one chat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pointers {
    /// Highest seq received by one of the user's devices.
    pub delivered: u64,
    /// Highest seq read.
    pub read: u64,
}

impl Pointers {
    fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.delivered.to_be_bytes());
        out[8..].copy_from_slice(&self.read.to_be_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let raw: &[u8; 16] = raw.try_into().ok()?;
        Some(Self {
            delivered: u64::from_be_bytes(raw[..8].try_into().expect("8 bytes")),
            read: u64::from_be_bytes(raw[8..].try_into().expect("8 bytes")),
        })
    }

    fn get(self, kind: ReceiptKind) -> u64 {
        match kind {
            ReceiptKind::Delivered => self.delivered,
            ReceiptKind::Read => self.read,
        }
    }
}

fn read_pointers(t: &mut dyn Txn, user: &str, chat: u64) -> Result<Pointers, KvError> {
    match t.get(&keys::receipt(user, chat))? {
        None => Ok(Pointers::default()),
        Some(raw) => Pointers::decode(&raw)
            .ok_or_else(|| KvError::fatal(format!("corrupt receipt pointers of {user} in {chat}"))),
    }
}

/// What a receipt changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptOutcome {
    /// The chat.
    pub chat_id: u64,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// The user's pointer of that kind now.
    pub seq: u64,
    /// Whether the receipt moved it (else nobody needs telling).
    pub advanced: bool,
    /// Members whose pointer of that kind is at or beyond `seq` (the reader included).
    pub count: u32,
    /// Users whose messages the receipt newly covers (never the reader).
    pub notify: Vec<String>,
}

impl Attempt<'_, '_> {
    /// Moves `user`'s pointer of `kind` in `chat_id` to `seq` (clamped to the chat's last seq;
    /// never backwards; a read also moves the delivered pointer).
    pub(crate) fn receipt(
        &mut self,
        user: &str,
        chat_id: u64,
        kind: ReceiptKind,
        seq: u64,
    ) -> OpResult<ReceiptOutcome> {
        let Some(chat) = self.member_chat(user, chat_id)? else {
            return Ok(Err(StoreError::Forbidden(Forbid::NotMember)));
        };
        let seq = seq.min(self.last_seq_snapshot(chat_id)?);
        let before = read_pointers(&mut *self.t, user, chat_id)?;
        let mut after = before;
        match kind {
            ReceiptKind::Delivered => after.delivered = after.delivered.max(seq),
            ReceiptKind::Read => {
                after.read = after.read.max(seq);
                after.delivered = after.delivered.max(after.read);
            }
        }
        let (old, new) = (before.get(kind), after.get(kind));
        let mut outcome = ReceiptOutcome {
            chat_id,
            kind,
            seq: new,
            advanced: new > old,
            count: 0,
            notify: Vec::new(),
        };
        if !outcome.advanced {
            return Ok(Ok(outcome));
        }
        self.t.set(&keys::receipt(user, chat_id), &after.encode());
        // Whom to tell: the senders of the newly covered messages, newest first.
        let covered = self.t.scan(
            &keys::message(chat_id, old + 1),
            &keys::message(chat_id, new + 1),
            MAX_SENDERS_SCANNED,
            true,
        )?;
        for (_, raw) in covered {
            let m = record::decode_message(&raw)
                .map_err(|_| KvError::fatal(format!("corrupt message in chat {chat_id}")))?;
            if m.sender_user != user
                && m.kind != courier_wire::frame::MessageKind::System
                && !outcome.notify.contains(&m.sender_user)
            {
                outcome.notify.push(m.sender_user);
            }
        }
        outcome.count = match chat.kind {
            ChatKind::Direct => 1,
            ChatKind::Group => {
                let mut n = 0;
                for member in &chat.members {
                    let p = if member == user {
                        after
                    } else {
                        read_pointers(&mut *self.t, member, chat_id)?
                    };
                    if p.get(kind) >= new {
                        n += 1;
                    }
                }
                n
            }
        };
        Ok(Ok(outcome))
    }
}

impl Store {
    /// Records that `user` received (or read) chat `chat_id` up to `seq`; see [`ReceiptOutcome`].
    pub async fn receipt(
        &self,
        user: &str,
        chat_id: u64,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<ReceiptOutcome, StoreError> {
        let user = user.to_owned();
        self.call(|reply| crate::writer::Op::Receipt {
            user,
            chat_id,
            kind,
            seq,
            reply,
        })
        .await
    }

    /// A user's pointers in every chat where it has any.
    pub fn receipt_pointers(&self, user: &str) -> Result<HashMap<u64, Pointers>, StoreError> {
        let prefix = keys::receipt_prefix(user);
        self.read(|t| {
            let pairs = t
                .scan(&prefix, &keys::prefix_end(&prefix), usize::MAX, false)
                .map_err(engine_err)?;
            Ok(pairs
                .into_iter()
                .filter_map(|(k, v)| Some((keys::member_chat(&k)?, Pointers::decode(&v)?)))
                .collect())
        })
    }
}
