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

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::keys;
use crate::kv::{KvError, PendingCommit};
use crate::lastseqs::{LastSeqs, SeqWrites};
use crate::logging::{limited_error, limited_warn, LogLimiter};
use crate::ops::{Attempt, GroupChange, SweepStats};
use crate::push::{PushJob, PushResult};
use crate::receipts::ReceiptOutcome;
use crate::record::{Chat, Media};
use crate::store::{AppendRequest, Appended, Committed, Shared};
use crate::StoreError;
use bytes::Bytes;
use courier_wire::frame::PushProvider;
use courier_wire::frame::ReceiptKind;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Where an append's answer goes: a [`crate::Ticket`] to wait on, or a function the commit
/// thread calls.
pub(crate) enum AppendReply {
    Ticket(Reply<Appended>),
    Then(crate::store::Then),
}

impl AppendReply {
    fn send(self, r: Result<Appended, StoreError>) {
        match self {
            Self::Ticket(tx) => drop(tx.send(r)),
            Self::Then(then) => then.call(r),
        }
    }
}

/// One queued write.
pub(crate) enum Op {
    Append(AppendRequest, AppendReply),
    /// Several appends answered together; they share one transaction.
    AppendBatch(Vec<AppendRequest>, Reply<Vec<Result<Appended, StoreError>>>),
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
    /// Positions of one device in several chats (coalesced by the caller), each moved forward.
    Ack {
        user: String,
        device: u32,
        acks: Vec<(u64, u64)>,
        reply: Reply<Vec<Result<u64, StoreError>>>,
    },
    Sweep {
        limit: usize,
        reply: Reply<SweepStats>,
    },
    /// Partition 0's part of a sweep on a store of several partitions: media no chat
    /// references any more, and uploads never attached ([`Attempt::release_media`]).
    ReleaseMedia {
        limit: usize,
        reply: Reply<SweepStats>,
    },
    /// Release candidates partition 0 dealt with, cleared where this partition holds them.
    ForgetReleased {
        done: Vec<([u8; 16], Vec<u8>)>,
        reply: Reply<()>,
    },
    PutMedia {
        records: Vec<Media>,
        quota: Option<u64>,
        reply: Reply<()>,
    },
    Receipt {
        user: String,
        chat_id: u64,
        kind: ReceiptKind,
        seq: u64,
        reply: Reply<ReceiptOutcome>,
    },
    SetPresence {
        user: String,
        visible: bool,
        reply: Reply<()>,
    },
    RegisterPush {
        user: String,
        device: u32,
        provider: PushProvider,
        token: Bytes,
        reply: Reply<()>,
    },
    PushDone {
        job: PushJob,
        result: PushResult,
        reply: Reply<()>,
    },
    /// This node's part of a user's route brought up to date (in a cluster); answered with
    /// the attempt's read version.
    Route {
        user: String,
        reply: Option<Reply<u64>>,
    },
    /// An event for other nodes' devices (in a cluster): written to their inboxes.
    Publish(crate::cluster::Event),
    /// This node's presence watch of a user brought up to date (in a cluster).
    Watch {
        user: String,
        reply: Option<Reply<()>>,
    },
    Shutdown,
}

impl Op {
    /// Appends only (and the cluster's routes and events, which touch neither the chat cache
    /// nor ranges): these may be pipelined.
    fn is_append(&self) -> bool {
        matches!(
            self,
            Self::Append(..)
                | Self::AppendBatch(..)
                | Self::Route { .. }
                | Self::Publish(_)
                | Self::Watch { .. }
        )
    }

    /// Whether this operation adds data (refused while the disk is under the free-space floor;
    /// the others overwrite small records or delete).
    fn grows(&self) -> bool {
        matches!(
            self,
            Self::Append(..)
                | Self::AppendBatch(..)
                | Self::CreateDirect { .. }
                | Self::CreateGroup { .. }
                | Self::UpdateGroup { .. }
                | Self::PutMedia { .. }
                | Self::RegisterPush { .. }
        )
    }

    /// Whether this operation attaches media (reads partition 0's media records and writes a
    /// reference in its own partition).
    fn attaches(&self) -> bool {
        match self {
            Self::Append(r, _) => !r.attachments.is_empty(),
            Self::AppendBatch(rs, _) => rs.iter().any(|r| !r.attachments.is_empty()),
            _ => false,
        }
    }

    /// How much of a batch this operation fills.
    fn weight(&self) -> usize {
        match self {
            Self::AppendBatch(reqs, _) => reqs.len().max(1),
            Self::Ack { acks, .. } => acks.len().max(1),
            _ => 1,
        }
    }
}

enum Answer {
    Appended(Result<Appended, StoreError>),
    Batch(Vec<Result<Appended, StoreError>>),
    Chat(Result<Arc<Chat>, StoreError>),
    Seqs(Vec<Result<u64, StoreError>>),
    Sweep(Result<SweepStats, StoreError>),
    Unit(Result<(), StoreError>),
    Receipt(Result<ReceiptOutcome, StoreError>),
    Version(Result<u64, StoreError>),
    None,
}

fn run_op(a: &mut Attempt<'_, '_>, op: &Op) -> Result<Answer, KvError> {
    Ok(match op {
        Op::Append(req, _) => Answer::Appended(a.append(req)?),
        Op::AppendBatch(reqs, _) => Answer::Batch(
            reqs.iter()
                .map(|r| a.append(r))
                .collect::<Result<Vec<_>, _>>()?,
        ),
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
            user, device, acks, ..
        } => Answer::Seqs(
            acks.iter()
                .map(|&(chat_id, seq)| a.ack(user, *device, chat_id, seq))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Op::Sweep { limit, .. } => Answer::Sweep(a.sweep(*limit)?),
        Op::ReleaseMedia { limit, .. } => Answer::Sweep(a.release_media(*limit)?),
        Op::ForgetReleased { done, .. } => {
            a.forget_released(done)?;
            Answer::Unit(Ok(()))
        }
        Op::PutMedia { records, quota, .. } => Answer::Unit(a.put_media(records, *quota)?),
        Op::Receipt {
            user,
            chat_id,
            kind,
            seq,
            ..
        } => Answer::Receipt(a.receipt(user, *chat_id, *kind, *seq)?),
        Op::SetPresence { user, visible, .. } => Answer::Unit(a.set_presence(user, *visible)?),
        Op::RegisterPush {
            user,
            device,
            provider,
            token,
            ..
        } => Answer::Unit(a.register_push(user, *device, *provider, token)?),
        Op::PushDone { job, result, .. } => Answer::Unit(a.push_done(job, result)?),
        Op::Route { user, .. } => Answer::Version(Ok(a.route(user)?)),
        Op::Publish(e) => {
            a.events.push(e.clone());
            Answer::None
        }
        Op::Watch { user, .. } => {
            a.watch_presence(user)?;
            Answer::Unit(Ok(()))
        }
        Op::Shutdown => Answer::None,
    })
}

/// Answers a caller. One that gave up waiting is no error: its request committed all the same.
fn answer(op: Op, answer: Answer) {
    match (op, answer) {
        (Op::Append(_, reply), Answer::Appended(r)) => reply.send(r),
        (Op::AppendBatch(_, tx), Answer::Batch(r)) => drop(tx.send(Ok(r))),
        (
            Op::CreateDirect { reply, .. }
            | Op::CreateGroup { reply, .. }
            | Op::UpdateGroup { reply, .. },
            Answer::Chat(r),
        ) => {
            drop(reply.send(r));
        }
        (Op::Ack { reply, .. }, Answer::Seqs(r)) => drop(reply.send(Ok(r))),
        (Op::Sweep { reply, .. } | Op::ReleaseMedia { reply, .. }, Answer::Sweep(r)) => {
            drop(reply.send(r));
        }
        (
            Op::PutMedia { reply, .. }
            | Op::SetPresence { reply, .. }
            | Op::RegisterPush { reply, .. }
            | Op::PushDone { reply, .. }
            | Op::ForgetReleased { reply, .. },
            Answer::Unit(r),
        ) => {
            drop(reply.send(r));
        }
        (Op::Receipt { reply, .. }, Answer::Receipt(r)) => drop(reply.send(r)),
        (Op::Route { reply, .. }, Answer::Version(r)) => {
            if let Some(reply) = reply {
                drop(reply.send(r));
            }
        }
        (Op::Watch { reply, .. }, Answer::Unit(r)) => {
            if let Some(reply) = reply {
                drop(reply.send(r));
            }
        }
        (Op::Shutdown | Op::Publish(_), Answer::None) => {}
        _ => unreachable!("answers are built from their own operation"),
    }
}

fn fail(op: Op, e: StoreError) {
    match op {
        Op::Append(_, reply) => reply.send(Err(e)),
        Op::AppendBatch(_, tx) => drop(tx.send(Err(e))),
        Op::CreateDirect { reply, .. }
        | Op::CreateGroup { reply, .. }
        | Op::UpdateGroup { reply, .. } => drop(reply.send(Err(e))),
        Op::Ack { reply, .. } => drop(reply.send(Err(e))),
        Op::Sweep { reply, .. } | Op::ReleaseMedia { reply, .. } => drop(reply.send(Err(e))),
        Op::PutMedia { reply, .. }
        | Op::SetPresence { reply, .. }
        | Op::RegisterPush { reply, .. }
        | Op::PushDone { reply, .. }
        | Op::ForgetReleased { reply, .. } => drop(reply.send(Err(e))),
        Op::Receipt { reply, .. } => drop(reply.send(Err(e))),
        Op::Route { reply, .. } => {
            if let Some(reply) = reply {
                drop(reply.send(Err(e)));
            }
        }
        Op::Watch { reply, .. } => {
            if let Some(reply) = reply {
                drop(reply.send(Err(e)));
            }
        }
        Op::Publish(_) | Op::Shutdown => {}
    }
}

/// Keeps partition 0's media release apart from the other writers' attachments: a batch that
/// attaches media holds a token from before it reads the media records until its commit is
/// over; the release waits for every token to go and holds new ones off until it committed.
#[derive(Default)]
pub(crate) struct Gate {
    state: std::sync::Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct GateState {
    tokens: usize,
    exclusive: bool,
    /// Releases waiting: new tokens wait behind them.
    waiting: usize,
}

/// A batch's hold on the [`Gate`].
pub(crate) struct GateToken(Arc<Gate>);

/// The release's hold on the [`Gate`].
pub(crate) struct Exclusive<'g>(&'g Gate);

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A token, once no release holds or waits for the gate.
    pub(crate) fn enter(self: &Arc<Self>) -> GateToken {
        let mut s = self.lock();
        while s.exclusive || s.waiting > 0 {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.tokens += 1;
        GateToken(self.clone())
    }

    /// The gate alone, once every token is gone.
    pub(crate) fn exclusive(&self) -> Exclusive<'_> {
        let mut s = self.lock();
        s.waiting += 1;
        while s.exclusive || s.tokens > 0 {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.waiting -= 1;
        s.exclusive = true;
        Exclusive(self)
    }
}

impl Drop for GateToken {
    fn drop(&mut self) {
        self.0.lock().tokens -= 1;
        self.0.changed.notify_all();
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.0.lock().exclusive = false;
        self.0.changed.notify_all();
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// The partition this writer owns (0 of 1 when the store has one writer).
    partition: usize,
}

/// Failed batches logged: one line per interval however many fail (a full disk fails them all).
static FAILED_BATCHES: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Logs a batch that failed; an unavailable engine is marked for healing (by this
/// partition's writer).
fn failed(shared: &Shared, partition: usize, e: &KvError, n: usize) {
    if e.is_unavailable() {
        shared.unhealthy[partition].store(true, Ordering::Release);
        limited_warn!(FAILED_BATCHES, "batch of {n} refused: {e}");
    } else {
        limited_error!(FAILED_BATCHES, "batch of {n} failed: {e}");
    }
}

/// Least time between two attempts to heal the engine.
const HEAL_EVERY: Duration = Duration::from_secs(1);

/// How long a free-space reading is trusted.
const FREE_SPACE_FRESH: Duration = Duration::from_millis(100);

/// What the writer knows of the engine's health and the disk's room, and the last batch's
/// commit marker (cleared by the next batch).
struct Health {
    /// When the engine may next be asked to heal.
    next_heal: Instant,
    /// The last free-space reading, and when it was taken.
    free: Option<(Instant, Option<u64>)>,
    /// The commit marker of the last batch that committed, if the engine needs markers.
    last_marker: Option<Vec<u8>>,
}

impl Health {
    fn new() -> Self {
        Self {
            next_heal: Instant::now(),
            free: None,
            last_marker: None,
        }
    }
}

/// What one attempt at a batch made: its answers and what they change, kept while its commit
/// may have been applied.
struct Built {
    answers: Vec<Answer>,
    changed: HashMap<u64, Arc<Chat>>,
    committed: Vec<Committed>,
    /// The chats' last seqs it wrote (for the writer's memory of them).
    seq_writes: SeqWrites,
}

/// One attempt's start: the batch's commit marker was found (naming the attempt that
/// committed), or the attempt built its transaction.
enum Attempted<'t> {
    Found(usize),
    Built(Box<dyn crate::kv::Txn + 't>, Built),
}

/// How long the writer waits before retry number `tries` (from 1) of a batch: the configured
/// first wait, doubled each time, at most the configured longest.
pub(crate) fn retry_wait(config: &crate::StoreConfig, tries: u32) -> Duration {
    config
        .retry_backoff
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(config.retry_backoff_max)
}

/// The keys a batch's operations read first, without which nothing else can be decided: each
/// send's dedupe record, and the record and last seq of each chat sent to.
fn prefetch_keys(ops: &[Op]) -> Vec<Vec<u8>> {
    let mut keys = std::collections::BTreeSet::new();
    let mut add = |r: &AppendRequest| {
        keys.insert(keys::dedupe(&r.sender_user, &r.client_msg_id));
        keys.insert(keys::chat(r.chat_id));
        keys.insert(keys::last_seq(r.chat_id));
    };
    for op in ops {
        match op {
            Op::Append(r, _) => add(r),
            Op::AppendBatch(rs, _) => rs.iter().for_each(&mut add),
            _ => {}
        }
    }
    keys.into_iter().collect()
}

/// The attempt number under a commit marker.
fn marker_attempt(v: &[u8]) -> Result<usize, KvError> {
    let n: [u8; 4] = v
        .try_into()
        .map_err(|_| KvError::fatal("corrupt commit marker"))?;
    Ok(u32::from_be_bytes(n) as usize)
}

/// The commit of an attempt that an earlier "maybe committed" turned out to have applied.
struct AlreadyCommitted;

impl PendingCommit for AlreadyCommitted {
    fn finish(self: Box<Self>) -> Result<(), KvError> {
        Ok(())
    }
}

/// A batch whose transaction is built and whose commit is under way.
struct Prepared {
    partition: usize,
    /// Held while the batch attaches media, until its commit is over ([`Gate`]).
    gate: Option<GateToken>,
    ops: Vec<Op>,
    answers: Vec<Answer>,
    pending: Box<dyn PendingCommit>,
    changed: HashMap<u64, Arc<Chat>>,
    committed: Vec<Committed>,
    started: Instant,
}

impl Prepared {
    /// Waits for the commit to be durable, then tells the listener and answers the callers; or
    /// fails every caller if it did not commit. Returns whether it committed.
    fn finish(self, shared: &Shared) -> bool {
        let Self {
            partition,
            gate,
            ops,
            answers,
            pending,
            changed,
            committed,
            started,
        } = self;
        let n = ops.len();
        let finished = pending.finish();
        drop(gate);
        if let Err(e) = finished {
            failed(shared, partition, &e, n);
            let err = StoreError::from(e);
            for op in ops {
                fail(op, err.clone());
            }
            return false;
        }
        if shared.engine.exclusive() {
            for (id, chat) in changed {
                shared.chats.insert(id, chat);
            }
        }
        // The listener hears a batch before its callers are answered: whoever holds an answer
        // knows the fanout (and any other listener work) for it has happened.
        if let Some(l) = &shared.config.listener {
            for a in &answers {
                if let Answer::Sweep(Ok(s)) = a {
                    if !s.released_blobs.is_empty() {
                        l.blobs_released(&s.released_blobs);
                    }
                }
            }
            l.batch_committed(n, started.elapsed());
            if !committed.is_empty() {
                l.committed(&committed);
            }
        }
        for (op, a) in ops.into_iter().zip(answers) {
            answer(op, a);
        }
        if let Some(l) = &shared.config.listener {
            l.batch_answered();
        }
        true
    }
}

/// Where prepared batches go: a commit thread, so the next batch is built while this one is
/// made durable (at most one in flight), or inline when no thread could be started.
enum Commits {
    Thread {
        batches: std_mpsc::SyncSender<Prepared>,
        /// Whether each batch committed, in order.
        done: std_mpsc::Receiver<bool>,
    },
    Inline,
}

/// Group commit ([`crate::StoreConfig::commit_interval`]): the writer takes a batch of more
/// than one operation only once the interval since the last commit began is over, so what
/// arrives meanwhile joins that batch, and the batch's commit then begins as soon as the one
/// before it is done (it is built while that one commits). Under concurrent load a commit (and
/// its fsync) so carries more messages, and a message waits for at most one interval before
/// its batch is taken. A lone operation (one caller waiting on each commit before its next)
/// says there is no such load: it is taken at once, as is the first after a quiet spell.
struct CommitSpacing {
    interval: Duration,
    last: Option<Instant>,
}

impl CommitSpacing {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
        }
    }

    /// How long a batch of `ops` operations ready at `now` waits before it is taken.
    fn delay(&self, ops: usize, now: Instant) -> Duration {
        match self.last.and_then(|t| t.checked_add(self.interval)) {
            Some(at) if ops > 1 => at.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// Waits until a batch of `ops` operations may be taken.
    fn wait(&self, ops: usize) {
        if self.interval.is_zero() {
            return;
        }
        let delay = self.delay(ops, Instant::now());
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }

    /// A commit begins now.
    fn started(&mut self) {
        if !self.interval.is_zero() {
            self.last = Some(Instant::now());
        }
    }
}

/// The writer's side of the commits: where they go, whether one is in flight, and what the
/// writer remembers of the last seqs they wrote (on exclusive engines).
struct Committer {
    commits: Commits,
    spacing: CommitSpacing,
    /// A commit is in flight (a batch built now reads its writes).
    outstanding: bool,
    seqs: LastSeqs,
}

impl Committer {
    /// Waits until no commit is in flight.
    fn idle(&mut self) {
        if !self.outstanding {
            return;
        }
        self.outstanding = false;
        // (An inline commit settles in `submit`, never outstanding.)
        if let Commits::Thread { done, .. } = &self.commits {
            // An error means the commit thread is gone: nothing is in flight then, and whether
            // the batch committed is unknown.
            let committed = done.recv().unwrap_or(false);
            self.seqs.settled(committed);
        }
    }

    /// Hands a batch to its commit, with nothing in flight. `seqs`: the last seqs it wrote;
    /// `read_in_flight`: it was built while the commit before it was in flight.
    fn submit(&mut self, p: Prepared, shared: &Shared, seqs: SeqWrites, read_in_flight: bool) {
        debug_assert!(!self.outstanding);
        self.seqs.submitted(seqs, read_in_flight);
        self.spacing.started();
        let committed = match &self.commits {
            Commits::Thread { batches, .. } => match batches.send(p) {
                Ok(()) => {
                    self.outstanding = true;
                    return;
                }
                Err(std_mpsc::SendError(p)) => p.finish(shared),
            },
            Commits::Inline => p.finish(shared),
        };
        self.seqs.settled(committed);
    }
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, partition: usize) -> Self {
        Self { shared, partition }
    }

    /// The name of this writer's thread (`commit`: of its commit thread): once per store,
    /// `courier-store-writer` / `-commit`; per partition, `courier-part-w<i>` / `-c<i>`.
    pub(crate) fn thread_name(&self, commit: bool) -> String {
        match (self.shared.writers, commit) {
            (1, false) => "courier-store-writer".into(),
            (1, true) => "courier-store-commit".into(),
            (_, false) => format!("courier-part-w{}", self.partition),
            (_, true) => format!("courier-part-c{}", self.partition),
        }
    }

    pub(crate) fn run(self, mut rx: mpsc::Receiver<Op>) {
        let shared = &*self.shared;
        let max_batch = shared
            .engine
            .max_batch()
            .min(shared.config.max_batch)
            .max(1);
        std::thread::scope(|scope| {
            let (batches, incoming) = std_mpsc::sync_channel::<Prepared>(0);
            let (done_tx, done) = std_mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name(self.thread_name(true))
                .spawn_scoped(scope, move || {
                    for p in incoming {
                        if done_tx.send(p.finish(shared)).is_err() {
                            break;
                        }
                    }
                });
            let commits = match spawned {
                Ok(_) => Commits::Thread { batches, done },
                Err(e) => {
                    tracing::warn!("no commit thread ({e}); committing on the writer thread");
                    Commits::Inline
                }
            };
            let mut committer = Committer {
                commits,
                spacing: CommitSpacing::new(shared.config.commit_interval),
                outstanding: false,
                seqs: LastSeqs::default(),
            };
            let mut ops = Vec::with_capacity(max_batch);
            let mut health = Health::new();
            while let Some(first) = rx.blocking_recv() {
                if !matches!(first, Op::Shutdown) {
                    // Under load, what arrives until the interval is over joins this batch.
                    committer.spacing.wait(1 + rx.len());
                }
                let mut shutdown = false;
                let mut weight = 0;
                for op in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                    if matches!(op, Op::Shutdown) {
                        shutdown = true;
                        break;
                    }
                    weight += op.weight();
                    ops.push(op);
                    if weight >= max_batch {
                        break;
                    }
                }
                let mut batch = std::mem::take(&mut ops);
                while !batch.is_empty() {
                    batch = self.apply(batch, &mut committer, &mut health);
                }
                if shutdown {
                    break;
                }
            }
            committer.idle();
            // Dropping the committer closes its channel; the scope joins the thread.
        });
        if self.partition == 0 {
            if let Err(e) = shared.engine.sync() {
                tracing::error!("final sync failed: {e}");
            }
        }
    }

    /// Builds one transaction from `ops` (retrying it on retryable engine errors) and hands it to
    /// the committer. Batches of appends only are pipelined: the next one is built while this one
    /// commits, reading its writes. Anything else (chat changes, acks, sweeps) waits for the
    /// commit in flight before it begins and for its own commit before the next batch begins, so
    /// the chat cache and range deletions never race a commit.
    ///
    /// Returns the operations left for the next transaction when this one reached the engine's
    /// size target ([`crate::kv::Engine::max_transaction_bytes`]).
    #[must_use]
    fn apply(&self, ops: Vec<Op>, committer: &mut Committer, health: &mut Health) -> Vec<Op> {
        let shared = &*self.shared;
        if shared.unhealthy[self.partition].load(Ordering::Acquire) {
            committer.idle();
            // The engine is reopened: read what it holds afresh.
            committer.seqs.forget();
            if let Err(e) = self.heal(health) {
                for op in ops {
                    fail(op, e.clone());
                }
                return Vec::new();
            }
        }
        let mut ops = self.refuse_below_floor(ops, health);
        if ops.is_empty() {
            return Vec::new();
        }
        let barrier = ops.iter().any(|op| !op.is_append());
        if barrier {
            committer.idle();
        }
        // On a store of several partitions, media is released by partition 0's writer while
        // no other writer is between reading a media record and committing a reference to it.
        let partitioned = shared.engine.partitions() > 1;
        let _exclusive = (partitioned
            && ops.iter().any(|op| matches!(op, Op::ReleaseMedia { .. })))
        .then(|| shared.gate.exclusive());
        let gate = (partitioned && _exclusive.is_none() && ops.iter().any(Op::attaches))
            .then(|| shared.gate.enter());
        // Engines that can answer "maybe committed" get a commit marker per batch: each attempt
        // first reads it (a conflict read) and then writes its own number under it. An
        // attempt that finds it learns which earlier attempt committed, and answers with that
        // attempt's answers instead of applying the batch twice; an earlier commit that lands
        // late makes the later attempt conflict on the marker, and its retry finds it.
        let marker = (!shared.engine.exclusive())
            .then(|| keys::commit_marker(shared.config.clock.now_ms(), rand::random::<u64>()));
        let mut maybe: Vec<Option<Built>> = Vec::new();
        let size_target = shared.engine.max_transaction_bytes();
        let mut tries = 0;
        // Operations moved out of this transaction after a conflict: they go, in order, to the
        // next one.
        let mut deferred: Vec<Op> = Vec::new();
        // Only this writer writes its partition of an exclusive engine: it may remember the last
        // seqs it wrote instead of reading them back.
        let remembers = shared.engine.exclusive();
        loop {
            let started = Instant::now();
            let now = shared.config.clock.now_ms();
            let read_in_flight = committer.outstanding;
            let built = shared.engine.begin_write_on(self.partition).and_then(|t| {
                // A remote engine reads what the batch's operations will read first all at
                // once (one round trip), and the commit marker with them.
                // (The engines that get a marker are the remote ones.)
                let mut t: Box<dyn crate::kv::Txn + '_> = match &marker {
                    None => t,
                    Some(m) => {
                        let mut keys = prefetch_keys(&ops);
                        keys.push(m.clone());
                        Box::new(crate::kv::Prefetched::new(t, keys)?)
                    }
                };
                if let Some(m) = &marker {
                    if let Some(v) = t.get(m)? {
                        return Ok(Attempted::Found(marker_attempt(&v)?));
                    }
                }
                let known = remembers.then_some(&committer.seqs);
                let mut a = Attempt::new(t, shared, now, self.partition, known);
                // Operations go in until the transaction reaches the engine's size target; the
                // rest of the batch goes to the next transaction.
                let mut answers = Vec::with_capacity(ops.len());
                for op in &ops {
                    answers.push(run_op(&mut a, op)?);
                    if a.t.size() >= size_target {
                        break;
                    }
                }
                a.finish();
                // In a cluster: the inboxes of the nodes that host a recipient.
                a.publish()?;
                let Attempt {
                    mut t,
                    changed,
                    committed,
                    seq_writes,
                    ..
                } = a;
                if let Some(m) = &marker {
                    t.set(m, &(maybe.len() as u32).to_be_bytes());
                    if let Some(prev) = &health.last_marker {
                        t.clear(prev);
                    }
                }
                Ok(Attempted::Built(
                    t,
                    Built {
                        answers,
                        changed,
                        committed,
                        seq_writes,
                    },
                ))
            });
            let outcome = match built {
                Ok(Attempted::Found(i)) => match maybe.get_mut(i).and_then(Option::take) {
                    Some(b) => {
                        committer.idle();
                        Ok((b, Box::new(AlreadyCommitted) as Box<dyn PendingCommit>))
                    }
                    None => Err(KvError::fatal(format!(
                        "commit marker names attempt {i}, which this batch did not make"
                    ))),
                },
                Ok(Attempted::Built(t, b)) => match t.commit_pipelined() {
                    Ok(pending) => {
                        // The batch was prepared (sorted, handed to the engine) while the
                        // previous one was still committing; only now does this wait for it.
                        committer.idle();
                        Ok((b, pending))
                    }
                    Err(e) => {
                        if e.is_maybe_committed() {
                            maybe.push(Some(b));
                        }
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok((b, pending)) => {
                    if let Some(m) = marker {
                        health.last_marker = Some(m);
                    }
                    let mut ops = ops;
                    let rest = ops.split_off(b.answers.len());
                    let p = Prepared {
                        partition: self.partition,
                        gate,
                        ops,
                        answers: b.answers,
                        pending,
                        changed: b.changed,
                        committed: b.committed,
                        started,
                    };
                    committer.submit(p, shared, b.seq_writes, read_in_flight);
                    if barrier {
                        committer.idle();
                    }
                    let mut rest = rest;
                    rest.append(&mut deferred);
                    return rest;
                }
                Err(e)
                    if (e.is_retryable() || e.is_maybe_committed())
                        && tries < shared.config.max_retries =>
                {
                    tries += 1;
                    tracing::debug!("retrying batch of {} after: {e}", ops.len());
                    // Writers of other nodes appending to the same chats conflict. A large
                    // batch touches many chats and loses again and again (while the queue
                    // behind it grows the next batch): from its second retryable failure on,
                    // the batch is halved each time, the second half left for the next
                    // transaction, so what does not collide commits. Not after a "maybe committed": the marker's attempts
                    // must all hold the same operations.
                    if tries >= 2 && maybe.is_empty() && ops.len() > 1 && e.is_retryable() {
                        let mut back = ops.split_off(ops.len() / 2);
                        back.append(&mut deferred);
                        deferred = back;
                    }
                    std::thread::sleep(retry_wait(&shared.config, tries));
                }
                Err(e) => {
                    failed(shared, self.partition, &e, ops.len());
                    let err = StoreError::from(e);
                    for op in ops {
                        fail(op, err.clone());
                    }
                    return deferred;
                }
            }
        }
    }

    /// Asks the engine to heal after a batch found it unavailable (at most once per
    /// [`HEAL_EVERY`]); with no commit in flight. Afterwards the chat cache is dropped: a batch
    /// whose commit failed may have landed after all.
    fn heal(&self, health: &mut Health) -> Result<(), StoreError> {
        let shared = &*self.shared;
        let now = Instant::now();
        if now < health.next_heal {
            return Err(StoreError::Unavailable {
                reason: "the storage engine is recovering from a failed write".into(),
                retry_after: health.next_heal - now,
            });
        }
        health.next_heal = now + HEAL_EVERY;
        match shared.engine.heal_on(self.partition) {
            Ok(()) => {
                shared.unhealthy[self.partition].store(false, Ordering::Release);
                // This partition's chats: the other writers' stay true.
                let (me, n) = (self.partition, shared.writers);
                shared
                    .chats
                    .retain(|&id, _| keys::chat_partition(id, n) != me);
                Ok(())
            }
            Err(e) => {
                limited_warn!(FAILED_BATCHES, "the storage engine is not healed yet: {e}");
                Err(StoreError::Unavailable {
                    reason: e.message,
                    retry_after: HEAL_EVERY,
                })
            }
        }
    }

    /// Fails the operations that add data while the engine's disk has less free space than
    /// the configured floor, and returns the others. The floor keeps a full disk from failing
    /// a commit (which forces a reopen) and leaves room for the deletions that free space.
    fn refuse_below_floor(&self, ops: Vec<Op>, health: &mut Health) -> Vec<Op> {
        let shared = &*self.shared;
        let floor = shared.config.min_free_bytes;
        if floor == 0 || !ops.iter().any(Op::grows) {
            return ops;
        }
        let now = Instant::now();
        let free = match health.free {
            Some((at, free)) if now.saturating_duration_since(at) < FREE_SPACE_FRESH => free,
            _ => {
                let free = shared.engine.free_bytes();
                health.free = Some((now, free));
                free
            }
        };
        let Some(free) = free.filter(|&f| f < floor) else {
            return ops;
        };
        limited_warn!(
            FAILED_BATCHES,
            "{free} bytes free on the store's disk, under the floor of {floor}: refusing writes that add data"
        );
        let err = StoreError::Unavailable {
            reason: format!(
                "the server's disk is nearly full ({} MiB free, floor {} MiB)",
                free >> 20,
                floor >> 20
            ),
            retry_after: crate::UNAVAILABLE_RETRY_AFTER,
        };
        let (refused, kept): (Vec<Op>, Vec<Op>) = ops.into_iter().partition(Op::grows);
        for op in refused {
            fail(op, err.clone());
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_waits_for_every_token_and_holds_new_ones_off() {
        let gate = Arc::new(Gate::default());
        let token = gate.enter();
        let (held_tx, held) = std_mpsc::channel();
        let (go_tx, go) = std_mpsc::channel::<()>();
        let g = gate.clone();
        let release = std::thread::spawn(move || {
            let exclusive = g.exclusive();
            held_tx.send(()).unwrap();
            go.recv().unwrap();
            drop(exclusive);
        });
        // The release waits while a batch holds its token...
        assert!(held.recv_timeout(Duration::from_millis(100)).is_err());
        drop(token);
        held.recv_timeout(Duration::from_secs(5)).unwrap();
        // ... and a batch that comes while it holds the gate waits until it lets go.
        let (entered_tx, entered) = std_mpsc::channel();
        let g = gate.clone();
        let batch = std::thread::spawn(move || {
            let t = g.enter();
            entered_tx.send(()).unwrap();
            drop(t);
        });
        assert!(entered.recv_timeout(Duration::from_millis(100)).is_err());
        go_tx.send(()).unwrap();
        entered.recv_timeout(Duration::from_secs(5)).unwrap();
        release.join().unwrap();
        batch.join().unwrap();
    }

    #[test]
    fn batches_of_several_operations_are_taken_at_least_the_interval_after_a_commit_began() {
        let ms = Duration::from_millis;
        let t = Instant::now();
        let mut spacing = CommitSpacing::new(ms(30));
        // The first batch, and any batch of one operation, waits for nothing.
        assert_eq!(spacing.delay(5, t), Duration::ZERO);
        spacing.last = Some(t);
        assert_eq!(spacing.delay(1, t + ms(1)), Duration::ZERO);
        // A batch waits out the rest of the interval since the last commit began...
        assert_eq!(spacing.delay(2, t + ms(10)), ms(20));
        // ... and not at all once it is over.
        assert_eq!(spacing.delay(2, t + ms(31)), Duration::ZERO);
        // `wait` sleeps that long after `started`.
        let mut spacing = CommitSpacing::new(ms(30));
        spacing.wait(4);
        spacing.started();
        let first = Instant::now();
        spacing.wait(4);
        assert!(first.elapsed() >= ms(30));
        // Without an interval nothing is tracked, so nothing is waited for.
        let mut none = CommitSpacing::new(Duration::ZERO);
        none.started();
        none.wait(4);
        assert!(none.last.is_none());
    }

    #[test]
    fn retries_wait_longer_each_time_up_to_the_longest() {
        let config = crate::StoreConfig::new("unused");
        let waits: Vec<u64> = (1..=9)
            .map(|n| retry_wait(&config, n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(retry_wait(&config, u32::MAX), Duration::from_secs(1));
    }
}
