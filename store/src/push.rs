//! The push outbox, engine-neutral.
//!
//! A device registers a push token (`K user device`). When a message commits for a member none
//! of whose devices is online (the gateway tells the store who is, [`OnlineUsers`]) and who has
//! a registration, the same transaction writes or extends that member's job for the chat
//! (`J user chat`: first and last seq, count) and queues it (`W due user chat`), due a coalescing
//! interval after the first message: messages of one chat within the interval make one push.
//! The gateway's push worker takes due jobs, delivers them, and then completes them (deleting
//! what it delivered; messages merged meanwhile stay queued), reschedules them with backoff, or,
//! after the last attempt, moves them to the dead letters (`X user chat`). A job is deleted only
//! after its delivery, so a crash in between delivers it again: at least once, with the job's
//! idempotency key for the receiver to drop the repeat.

use bytes::Bytes;
use courier_wire::frame::PushProvider;
use courier_wire::{Codec, DecodeError};

use crate::kv::{KvError, Txn};
use crate::ops::{Attempt, OpResult};
use crate::reads::engine_err;
use crate::store::Store;
use crate::{keys, StoreError};

/// Who is online, as the gateway knows it.
pub trait OnlineUsers: Send + Sync + 'static {
    /// Whether some device of `user` is connected.
    fn is_online(&self, user: &str) -> bool;
}

/// Most push registrations per user.
pub const MAX_PUSH_DEVICES: usize = 32;

/// A pending push: a user's unread messages of one chat, coalesced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    /// The recipient.
    pub user: String,
    /// The chat.
    pub chat_id: u64,
    /// First seq the push covers.
    pub first_seq: u64,
    /// Last seq it covers.
    pub last_seq: u64,
    /// Messages it covers.
    pub count: u32,
    /// The sender of the last one.
    pub sender: String,
    /// The last message's body (only sent when the operator enables content in pushes).
    pub body: Bytes,
    /// When it is due, ms since the Unix epoch.
    pub due_ms: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The last failure.
    pub last_error: String,
}

impl PushJob {
    /// The key a receiver deduplicates on: the same job delivered again has the same key.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}:{}:{}-{}",
            self.user, self.chat_id, self.first_seq, self.last_seq
        )
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.first_seq.encode(&mut out);
        self.last_seq.encode(&mut out);
        self.count.encode(&mut out);
        self.sender.encode(&mut out);
        self.body.encode(&mut out);
        self.due_ms.encode(&mut out);
        self.attempts.encode(&mut out);
        self.last_error.encode(&mut out);
        out
    }

    fn decode(user: &str, chat_id: u64, mut b: &[u8]) -> Result<Self, DecodeError> {
        Ok(Self {
            user: user.to_owned(),
            chat_id,
            first_seq: u64::decode(&mut b)?,
            last_seq: u64::decode(&mut b)?,
            count: u32::decode(&mut b)?,
            sender: String::decode(&mut b)?,
            body: Bytes::decode(&mut b)?,
            due_ms: u64::decode(&mut b)?,
            attempts: u32::decode(&mut b)?,
            last_error: String::decode(&mut b)?,
        })
    }
}

fn read_job(t: &mut dyn Txn, user: &str, chat: u64) -> Result<Option<PushJob>, KvError> {
    match t.get(&keys::push_job(user, chat))? {
        None => Ok(None),
        Some(raw) => PushJob::decode(user, chat, &raw)
            .map(Some)
            .map_err(|_| KvError::fatal(format!("corrupt push job of {user} in {chat}"))),
    }
}

fn write_job(t: &mut dyn Txn, job: &PushJob) {
    t.set(&keys::push_job(&job.user, job.chat_id), &job.encode());
    t.set(&keys::push_due(job.due_ms, &job.user, job.chat_id), &[]);
}

fn has_registration(t: &mut dyn Txn, user: &str) -> Result<bool, KvError> {
    let p = keys::push_tokens(user);
    Ok(!t.scan(&p, &keys::prefix_end(&p), 1, false)?.is_empty())
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// Delivered (or nothing to deliver to): delete what was delivered.
    Delivered,
    /// Failed: try again at `retry_at_ms`, unless `attempts` failures reached `max_attempts`.
    Failed {
        /// Why.
        error: String,
        /// When to try again.
        retry_at_ms: u64,
        /// Attempts after which the job goes to the dead letters.
        max_attempts: u32,
    },
}

impl Attempt<'_, '_> {
    /// Registers (or, with an empty token, removes) a device's push token.
    pub(crate) fn register_push(
        &mut self,
        user: &str,
        device: u32,
        provider: PushProvider,
        token: &[u8],
    ) -> OpResult<()> {
        let key = keys::push_token(user, device);
        if token.is_empty() {
            self.t.clear(&key);
            return Ok(Ok(()));
        }
        if token.len() > 4096 {
            return Ok(Err(StoreError::TooLarge(
                "push token over 4096 bytes".into(),
            )));
        }
        let p = keys::push_tokens(user);
        let existing = self
            .t
            .scan(&p, &keys::prefix_end(&p), MAX_PUSH_DEVICES + 1, false)?;
        if existing.len() >= MAX_PUSH_DEVICES && !existing.iter().any(|(k, _)| *k == key) {
            return Ok(Err(StoreError::TooLarge(format!(
                "at most {MAX_PUSH_DEVICES} push registrations per user"
            ))));
        }
        let mut v = Vec::with_capacity(1 + token.len());
        provider.encode(&mut v);
        v.extend_from_slice(token);
        self.t.set(&key, &v);
        Ok(Ok(()))
    }

    /// Queues (or extends) the push of message `seq` of `chat` for each offline member with a
    /// registration. Called in the message's own transaction.
    pub(crate) fn queue_pushes(
        &mut self,
        members: &[String],
        sender: &str,
        chat: u64,
        seq: u64,
        body: &Bytes,
    ) -> Result<(), KvError> {
        let (Some(online), Some(coalesce)) = (
            self.shared.config.online.clone(),
            self.shared.config.push_coalesce,
        ) else {
            return Ok(());
        };
        let clustered = self.shared.cluster.is_some();
        if clustered {
            // "Online" is online on any node: every member's route, in one read.
            let users: Vec<&str> = members.iter().map(String::as_str).collect();
            self.read_routes(&users)?;
        }
        for m in members {
            if m == sender {
                continue;
            }
            let online = if clustered {
                self.online_anywhere(m)?
            } else {
                online.is_online(m)
            };
            if online || !has_registration(&mut *self.t, m)? {
                continue;
            }
            let job = match read_job(&mut *self.t, m, chat)? {
                Some(mut j) => {
                    j.last_seq = seq;
                    j.count = j.count.saturating_add(1);
                    j.sender = sender.to_owned();
                    j.body = body.clone();
                    j
                }
                None => PushJob {
                    user: m.clone(),
                    chat_id: chat,
                    first_seq: seq,
                    last_seq: seq,
                    count: 1,
                    sender: sender.to_owned(),
                    body: body.clone(),
                    due_ms: self.now + coalesce.as_millis() as u64,
                    attempts: 0,
                    last_error: String::new(),
                },
            };
            write_job(&mut *self.t, &job);
        }
        Ok(())
    }

    /// Records the outcome of delivering `job` (as the worker read it).
    pub(crate) fn push_done(&mut self, job: &PushJob, result: &PushResult) -> OpResult<()> {
        let Some(current) = read_job(&mut *self.t, &job.user, job.chat_id)? else {
            return Ok(Ok(()));
        };
        self.t
            .clear(&keys::push_due(current.due_ms, &job.user, job.chat_id));
        match result {
            PushResult::Delivered if current.last_seq <= job.last_seq => {
                self.t.clear(&keys::push_job(&job.user, job.chat_id));
            }
            PushResult::Delivered => {
                // Messages merged while it was being delivered: they go in the next push.
                let rest = PushJob {
                    first_seq: job.last_seq + 1,
                    count: current.count.saturating_sub(job.count).max(1),
                    due_ms: self.now,
                    attempts: 0,
                    last_error: String::new(),
                    ..current
                };
                write_job(&mut *self.t, &rest);
            }
            PushResult::Failed {
                error,
                retry_at_ms,
                max_attempts,
            } => {
                let mut next = current;
                next.attempts += 1;
                next.last_error.clone_from(error);
                if next.attempts >= *max_attempts {
                    self.t.clear(&keys::push_job(&job.user, job.chat_id));
                    self.t
                        .set(&keys::push_dead(&job.user, job.chat_id), &next.encode());
                } else {
                    next.due_ms = *retry_at_ms;
                    write_job(&mut *self.t, &next);
                }
            }
        }
        Ok(Ok(()))
    }
}

impl Store {
    /// Registers `device`'s push token (an empty token removes the registration).
    pub async fn register_push(
        &self,
        user: &str,
        device: u32,
        provider: PushProvider,
        token: Bytes,
    ) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.call(|reply| crate::writer::Op::RegisterPush {
            user,
            device,
            provider,
            token,
            reply,
        })
        .await
    }

    /// A user's push registrations: (device, provider, token).
    pub fn push_tokens(&self, user: &str) -> Result<Vec<(u32, PushProvider, Bytes)>, StoreError> {
        self.read(|t| {
            let p = keys::push_tokens(user);
            let pairs = t
                .scan(&p, &keys::prefix_end(&p), MAX_PUSH_DEVICES, false)
                .map_err(engine_err)?;
            let mut out = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                let mut b = &v[..];
                let (Some(device), Ok(provider)) =
                    (keys::push_token_device(&k), PushProvider::decode(&mut b))
                else {
                    return Err(StoreError::Corrupt(format!("{k:?}")));
                };
                out.push((device, provider, Bytes::copy_from_slice(b)));
            }
            Ok(out)
        })
    }

    /// Up to `limit` jobs due at `now_ms`, earliest first.
    pub fn due_pushes(&self, now_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError> {
        self.read(|t| {
            let due = t
                .scan(
                    &keys::push_due_prefix(0),
                    &keys::push_due_prefix(now_ms.saturating_add(1)),
                    limit,
                    false,
                )
                .map_err(engine_err)?;
            let mut out = Vec::with_capacity(due.len());
            for (k, _) in due {
                let Some((user, chat)) = keys::parse_push_due(&k) else {
                    continue;
                };
                if let Some(job) = read_job(t, &user, chat).map_err(engine_err)? {
                    out.push(job);
                }
            }
            Ok(out)
        })
    }

    /// Records how delivering `job` went (see [`PushResult`]).
    pub async fn push_done(&self, job: PushJob, result: PushResult) -> Result<(), StoreError> {
        self.call(|reply| crate::writer::Op::PushDone { job, result, reply })
            .await
    }

    /// A dead-lettered job of `user` in `chat`, if any.
    pub fn dead_push(&self, user: &str, chat: u64) -> Result<Option<PushJob>, StoreError> {
        self.read(
            |t| match t.get(&keys::push_dead(user, chat)).map_err(engine_err)? {
                None => Ok(None),
                Some(raw) => PushJob::decode(user, chat, &raw)
                    .map(Some)
                    .map_err(|_| StoreError::Corrupt("dead push job".into())),
            },
        )
    }
}
