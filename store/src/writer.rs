//! The writer thread: group commit, with the whole batch retried on retryable engine errors.
//!
//! One thread per store owns every write. It blocks for the first queued operation, takes
//! whatever else is queued (up to the engine's batch size), applies all of it in one
//! transaction ([`crate::ops`]), commits — the engine makes the commit durable before it
//! returns — and only then answers the callers and tells the [`CommitListener`]. A lone send
//! therefore waits for about one fsync; under load one fsync covers thousands of messages.
//!
//! Sequence numbers are read and written inside the same transaction as the messages: on the
//! embedded engine this thread is the only writer; on FoundationDB, concurrent writers to one
//! chat conflict, and the loser's batch is re-applied from scratch, so seqs stay dense. A batch
//! that fails for good answers every caller with the error; nothing of it was acknowledged.
//!
//! [`CommitListener`]: crate::CommitListener

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::ops::{Attempt, GroupChange, SweepStats};
use crate::record::Chat;
use crate::store::{AppendRequest, Appended, Shared};
use crate::StoreError;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

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
    UpdateGroup {
        actor: String,
        chat_id: u64,
        change: GroupChange,
        reply: Reply<Arc<Chat>>,
    },
    Ack {
        user: String,
        device: u32,
        chat_id: u64,
        seq: u64,
        reply: Reply<u64>,
    },
    Sweep {
        limit: usize,
        reply: Reply<SweepStats>,
    },
    Shutdown,
}

enum Answer {
    Appended(Result<Appended, StoreError>),
    Chat(Result<Arc<Chat>, StoreError>),
    Seq(Result<u64, StoreError>),
    Sweep(Result<SweepStats, StoreError>),
    None,
}

fn run_op(a: &mut Attempt<'_>, op: &Op) -> Result<Answer, crate::kv::KvError> {
    Ok(match op {
        Op::Append(req, _) => Answer::Appended(a.append(req)?),
        Op::CreateDirect { a: x, b, .. } => Answer::Chat(a.create_direct(x, b)?),
        Op::CreateGroup {
            creator,
            name,
            members,
            ..
        } => Answer::Chat(a.create_group(creator, name, members)?),
        Op::UpdateGroup {
            actor,
            chat_id,
            change,
            ..
        } => Answer::Chat(a.update_group(actor, *chat_id, change)?),
        Op::Ack {
            user,
            device,
            chat_id,
            seq,
            ..
        } => Answer::Seq(a.ack(user, *device, *chat_id, *seq)?),
        Op::Sweep { limit, .. } => Answer::Sweep(a.sweep(*limit)?),
        Op::Shutdown => Answer::None,
    })
}

/// Answers a caller. One that gave up waiting is no error: its request committed all the same.
fn answer(op: Op, answer: Answer) {
    match (op, answer) {
        (Op::Append(_, tx), Answer::Appended(r)) => drop(tx.send(r)),
        (
            Op::CreateDirect { reply, .. }
            | Op::CreateGroup { reply, .. }
            | Op::UpdateGroup { reply, .. },
            Answer::Chat(r),
        ) => {
            drop(reply.send(r));
        }
        (Op::Ack { reply, .. }, Answer::Seq(r)) => drop(reply.send(r)),
        (Op::Sweep { reply, .. }, Answer::Sweep(r)) => drop(reply.send(r)),
        (Op::Shutdown, Answer::None) => {}
        _ => unreachable!("answers are built from their own operation"),
    }
}

fn fail(op: Op, e: StoreError) {
    match op {
        Op::Append(_, tx) => drop(tx.send(Err(e))),
        Op::CreateDirect { reply, .. }
        | Op::CreateGroup { reply, .. }
        | Op::UpdateGroup { reply, .. } => drop(reply.send(Err(e))),
        Op::Ack { reply, .. } => drop(reply.send(Err(e))),
        Op::Sweep { reply, .. } => drop(reply.send(Err(e))),
        Op::Shutdown => {}
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub(crate) fn run(self, mut rx: mpsc::Receiver<Op>) {
        let max_batch = self
            .shared
            .engine
            .max_batch()
            .min(self.shared.config.max_batch)
            .max(1);
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
                self.apply(std::mem::take(&mut ops));
            }
            if shutdown {
                break;
            }
        }
        if let Err(e) = self.shared.engine.sync() {
            tracing::error!("final sync failed: {e}");
        }
    }

    fn apply(&self, ops: Vec<Op>) {
        let shared = &*self.shared;
        let mut tries = 0;
        loop {
            let (started, n) = (std::time::Instant::now(), ops.len());
            let now = shared.config.clock.now_ms();
            let result = shared.engine.begin().and_then(|t| {
                let mut a = Attempt::new(t, shared, now);
                let answers = ops
                    .iter()
                    .map(|op| run_op(&mut a, op))
                    .collect::<Result<Vec<_>, _>>()?;
                a.finish();
                let Attempt {
                    t,
                    changed,
                    committed,
                    ..
                } = a;
                t.commit()?;
                Ok((answers, changed, committed))
            });
            match result {
                Ok((answers, changed, committed)) => {
                    if shared.engine.exclusive() {
                        for (id, chat) in changed {
                            shared.chats.insert(id, chat);
                        }
                    }
                    for (op, a) in ops.into_iter().zip(answers) {
                        answer(op, a);
                    }
                    if let Some(l) = &shared.config.listener {
                        l.batch_committed(n, started.elapsed());
                        if !committed.is_empty() {
                            l.committed(&committed);
                        }
                    }
                    return;
                }
                Err(e) if e.retryable && tries < shared.config.max_retries => {
                    tries += 1;
                    tracing::debug!("retrying batch of {} after: {e}", ops.len());
                }
                Err(e) => {
                    tracing::error!("batch of {} failed: {e}", ops.len());
                    let err = StoreError::Engine(e.to_string());
                    for op in ops {
                        fail(op, err.clone());
                    }
                    return;
                }
            }
        }
    }
}
