//! The [`Store`] handle: writes through the writer thread of each operation's partition (its
//! chat's), reads straight from the engine.

use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use courier_wire::frame::{Attachment, Message, MessageKind};
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use crate::kv::{Engine, KvError, Txn};
use crate::ops::{read_chat, GroupChange, SweepStats};
use crate::record::Chat;
use crate::writer::{AppendReply, Op, Reply, Writer};
use crate::StoreError;

/// A source of wall-clock time, injectable for tests.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        courier_wire::time::now_ms()
    }
}

/// A committed message and who must hear of it.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The chat as of this message (members after a membership change).
    pub chat: Arc<Chat>,
    /// The message.
    pub message: Message,
    /// Users to notify besides the members (members just removed, who see their removal).
    pub also_notify: Vec<String>,
}

/// Receives every committed message, in commit order, from the store's commit thread.
///
/// Called after the batch is durable and before its callers are answered, so whoever holds an
/// answer knows the listener has seen the batch. It must not block for long: the next commit
/// waits for it.
pub trait CommitListener: Send + Sync + 'static {
    /// One committed batch.
    fn committed(&self, batch: &[Committed]);

    /// Every successful commit: how many operations it held and how long the transaction took
    /// (apply and durable commit). For metrics; the default does nothing.
    fn batch_committed(&self, _operations: usize, _elapsed: Duration) {}
    /// Blobs that no media record uses any more, after the sweep that released them committed:
    /// the owner of the blob store deletes them (checking again that nothing uses them).
    fn blobs_released(&self, _sha256: &[[u8; 32]]) {}
    /// After a committed batch's callers were answered, on the same thread: the end of the
    /// work a batch causes there ([`CommitListener::batch_committed`] is its start). A
    /// listener that kept wake-ups for the batch does them here. The default does nothing.
    fn batch_answered(&self) {}
}

/// The longest [`StoreConfig::commit_interval`]: longer would hold every message that long.
pub const MAX_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// How to open a [`Store`].
#[derive(Clone)]
pub struct StoreConfig {
    /// Directory of the embedded engine (unused with another engine).
    pub path: PathBuf,
    /// Most members a group may have, creator included.
    pub max_group_members: usize,
    /// Most operations the writer folds into one transaction (the engine may allow fewer).
    pub max_batch: usize,
    /// Group commit: a partition's writer takes a batch of more than one operation only once
    /// this long has passed since its last commit began (zero: at once), so that what arrives
    /// meanwhile joins the batch, whose commit then begins as soon as the one before it is
    /// done. Under concurrent load one commit and its fsync so carry more messages, at up to
    /// this much more latency per message. A lone operation (a caller waiting on each) or the
    /// first after a quiet spell does not wait. At most [`MAX_COMMIT_INTERVAL`].
    pub commit_interval: Duration,
    /// Depth of the writer's queue; callers wait (backpressure) when it is full.
    pub queue_depth: usize,
    /// How often a batch is retried after a retryable engine error (conflicts on FDB).
    pub max_retries: u32,
    /// The writer's wait before its first retry of a batch, doubled at each further retry up
    /// to `retry_backoff_max` (FoundationDB's own `on_error` backoff: 10 ms to 1 s), so that
    /// writers fighting over one chat spread out instead of colliding again at once.
    pub retry_backoff: Duration,
    /// The longest wait between two retries of a batch.
    pub retry_backoff_max: Duration,
    /// Messages and dedupe records older than this are deleted.
    pub retention: Duration,
    /// Writes that add data (sends, chats, media records) are refused with
    /// [`StoreError::Unavailable`] while the engine's disk has less free space than this, so a
    /// full disk does not fail commits; deletions, acks and receipts go on. 0: no floor. Only
    /// engines on a local disk have one.
    pub min_free_bytes: u64,
    /// How often the background sweeper deletes expired data (None: only [`Store::sweep`]).
    pub sweep_interval: Option<Duration>,
    /// Most expired entries one sweep transaction deletes.
    pub sweep_limit: usize,
    /// The clock used for timestamps and retention.
    pub clock: Arc<dyn Clock>,
    /// Called with every committed batch.
    pub listener: Option<Arc<dyn CommitListener>>,
    /// Who is online; with it (and `push_coalesce`) offline members get push jobs.
    pub online: Option<Arc<dyn crate::push::OnlineUsers>>,
    /// Messages of one chat for one offline user within this interval make one push (None:
    /// no push jobs are written).
    pub push_coalesce: Option<Duration>,
    /// Take part in a cluster of nodes on this (shared) engine: routes, inboxes, leases
    /// ([`crate::cluster`]). Needs an engine with versionstamps and watches (FoundationDB, the
    /// simulation). None: this process delivers only what it commits itself.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Into how many partitions the durable append path is split: each has its own writer
    /// and commit thread, and chats are assigned to partitions by id. On the embedded engine
    /// each partition is its own database (journal, fsync) and the count is fixed when the
    /// store is created ([`Store::open`]); on a shared engine (FoundationDB) it is the number
    /// of writer threads and may change between runs.
    pub partitions: usize,
}

impl StoreConfig {
    /// Refuses settings no store can run with (a readable [`StoreError::Invalid`]).
    fn check(&self) -> Result<(), StoreError> {
        if self.commit_interval > MAX_COMMIT_INTERVAL {
            return Err(StoreError::Invalid(format!(
                "commit interval {:?} is over the most, {MAX_COMMIT_INTERVAL:?}",
                self.commit_interval
            )));
        }
        Ok(())
    }

    /// Defaults for a store in `path`: groups of 100, 30-day retention swept every minute.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_group_members: 100,
            max_batch: 4096,
            commit_interval: Duration::ZERO,
            queue_depth: 65_536,
            max_retries: 20,
            retry_backoff: Duration::from_millis(10),
            retry_backoff_max: Duration::from_secs(1),
            retention: Duration::from_secs(30 * 86_400),
            min_free_bytes: 64 << 20,
            sweep_interval: Some(Duration::from_secs(60)),
            sweep_limit: 512,
            clock: Arc::new(SystemClock),
            listener: None,
            online: None,
            push_coalesce: None,
            cluster: None,
            partitions: 1,
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
    pub(crate) engine: Arc<dyn Engine>,
    /// Committed chat records; kept only when the engine is exclusive to this process.
    pub(crate) chats: DashMap<u64, Arc<Chat>>,
    /// Per partition: a batch found the engine unavailable, so the partition's writer heals
    /// it before its next batch.
    pub(crate) unhealthy: Vec<std::sync::atomic::AtomicBool>,
    /// How many writers (partitions) the store runs.
    pub(crate) writers: usize,
    /// Partition 0's media release against the other writers' attachments.
    pub(crate) gate: Arc<crate::writer::Gate>,
    pub(crate) config: StoreConfig,
    /// This node's view of the cluster, when it is in one.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Shared {
    /// The committed chat `id`, from the cache or through `t`. Readers only fill empty cache
    /// slots, so a chat the writer just changed is never replaced by an older copy.
    pub(crate) fn chat_in(&self, t: &mut dyn Txn, id: u64) -> Result<Option<Arc<Chat>>, KvError> {
        let exclusive = self.engine.exclusive();
        if exclusive {
            if let Some(c) = self.chats.get(&id) {
                return Ok(Some(c.clone()));
            }
        }
        let Some(chat) = read_chat(t, id)? else {
            return Ok(None);
        };
        let chat = Arc::new(chat);
        if exclusive {
            return Ok(Some(self.chats.entry(id).or_insert(chat).clone()));
        }
        Ok(Some(chat))
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

/// A function that takes an append's answer.
type AnswerFn = Box<dyn FnOnce(Result<Appended, StoreError>) + Send>;

/// An append's answer function; called with [`StoreError::Closed`] if dropped unanswered.
pub(crate) struct Then(Option<AnswerFn>);

impl Then {
    pub(crate) fn call(mut self, r: Result<Appended, StoreError>) {
        if let Some(f) = self.0.take() {
            f(r);
        }
    }
}

impl Drop for Then {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(StoreError::Closed));
        }
    }
}

struct Threads {
    writers: Vec<JoinHandle<()>>,
    sweeper: Option<(std_mpsc::Sender<()>, JoinHandle<()>)>,
    cluster: Option<(std_mpsc::Sender<()>, JoinHandle<()>)>,
}

/// A handle to the message log. Cheap to clone; all clones share the writer threads.
#[derive(Clone)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
    /// Each partition's writer queue.
    txs: Arc<[mpsc::Sender<Op>]>,
    threads: Arc<Mutex<Threads>>,
}

impl Store {
    /// Opens (or creates) the embedded store in `config.path`, split into
    /// `config.partitions` partitions when it is created (an existing store keeps its own
    /// count: a chat's data stays in the partition of its id).
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        // Before the directory is made: a refused configuration leaves nothing behind.
        config.check()?;
        let engine = crate::engine::partitioned::open_dir(&config.path, config.partitions)?;
        Self::with_engine(engine, config)
    }

    /// A store over any engine.
    pub fn with_engine(engine: Arc<dyn Engine>, config: StoreConfig) -> Result<Self, StoreError> {
        config.check()?;
        if config.cluster.is_some() && engine.exclusive() {
            return Err(StoreError::Engine(format!(
                "the {} engine belongs to one process: it cannot hold a cluster",
                engine.name()
            )));
        }
        // An engine of several databases has one writer for each; one local database, one
        // writer; a shared engine, as many writers as configured.
        let writers = if engine.partitions() > 1 {
            engine.partitions()
        } else if engine.exclusive() {
            1
        } else {
            config
                .partitions
                .clamp(1, crate::engine::partitioned::MAX_PARTITIONS)
        };
        let shared = Arc::new(Shared {
            engine,
            chats: DashMap::new(),
            unhealthy: (0..writers).map(|_| Default::default()).collect(),
            writers,
            gate: Default::default(),
            cluster: config
                .cluster
                .map(|c| Arc::new(crate::cluster::Cluster::new(c))),
            config,
        });
        let cluster = match &shared.cluster {
            None => None,
            Some(c) => {
                // The node's lease is in place before anything can name the node.
                crate::cluster::join(&shared, c)?;
                let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
                let s = shared.clone();
                let h = std::thread::Builder::new()
                    .name("courier-store-cluster".into())
                    .spawn(move || crate::cluster::run(s, stop_rx))
                    .map_err(|e| StoreError::Engine(format!("spawn cluster thread: {e}")))?;
                Some((stop_tx, h))
            }
        };
        // Each writer's queue holds its share of the configured depth.
        let depth = (shared.config.queue_depth / writers).max(1);
        let mut txs = Vec::with_capacity(writers);
        let mut handles = Vec::with_capacity(writers);
        for partition in 0..writers {
            let (tx, rx) = mpsc::channel(depth);
            let writer = Writer::new(shared.clone(), partition);
            let handle = std::thread::Builder::new()
                .name(writer.thread_name(false))
                .spawn(move || writer.run(rx))
                .map_err(|e| StoreError::Engine(format!("spawn writer: {e}")))?;
            txs.push(tx);
            handles.push(handle);
        }
        let threads = Threads {
            writers: handles,
            sweeper: None,
            cluster,
        };
        let store = Self {
            shared,
            txs: txs.into(),
            threads: Arc::new(Mutex::new(threads)),
        };
        if let Some(every) = store.shared.config.sweep_interval {
            let sweeper = spawn_sweeper(store.clone(), every)?;
            store.threads.lock().expect("threads lock").sweeper = Some(sweeper);
        }
        Ok(store)
    }

    /// How many writers (partitions) this store runs.
    pub fn partitions(&self) -> usize {
        self.shared.writers
    }

    /// The partition of chat `chat`.
    fn of_chat(&self, chat: u64) -> usize {
        crate::keys::chat_partition(chat, self.shared.writers)
    }

    /// The writer an operation goes to: the one of its chat; a new group's, at random; a
    /// user pair's, by the pair; a user's route and watch, by the user (so they apply in
    /// order); everything else (users' settings, media, sweeps' partition-0 part), the first.
    fn partition_of(&self, op: &Op) -> usize {
        let n = self.shared.writers;
        if n == 1 {
            return 0;
        }
        match op {
            Op::Append(r, _) => self.of_chat(r.chat_id),
            Op::AppendBatch(rs, _) => rs.first().map_or(0, |r| self.of_chat(r.chat_id)),
            Op::CreateDirect { a, b, .. } => crate::keys::pair_partition(a, b, n),
            Op::CreateGroup { .. } => rand::random_range(0..n),
            Op::UpdateGroup { chat_id, .. } | Op::Receipt { chat_id, .. } => self.of_chat(*chat_id),
            Op::Ack { acks, .. } => acks.first().map_or(0, |&(c, _)| self.of_chat(c)),
            Op::PushDone { job, .. } => self.of_chat(job.chat_id),
            Op::Route { user, .. } | Op::Watch { user, .. } => {
                crate::keys::chat_partition(crate::keys::stable_hash(user.as_bytes()), n)
            }
            _ => 0,
        }
    }

    /// The queue of the writer `op` goes to.
    fn tx_for(&self, op: &Op) -> &mpsc::Sender<Op> {
        &self.txs[self.partition_of(op)]
    }

    pub(crate) async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        let op = op(reply);
        self.tx_for(&op)
            .send(op)
            .await
            .map_err(|_| StoreError::Closed)?;
        Ticket(rx).wait().await
    }

    /// [`Store::call`] of partition `partition`'s writer.
    async fn call_on<T>(
        &self,
        partition: usize,
        op: impl FnOnce(Reply<T>) -> Op,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.txs[partition]
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
        self.txs[self.of_chat(req.chat_id)]
            .send(Op::Append(req, AppendReply::Ticket(reply)))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Ticket(rx))
    }

    /// Queues a message like [`Store::submit_append`], and has the store's commit thread call
    /// `then` with its result (after the [`CommitListener`] heard the batch) instead of waking
    /// a waiting task: for callers that only hand the answer on. `then` must be quick and must
    /// not block. If the store closes before answering, `then` gets [`StoreError::Closed`].
    pub async fn submit_append_then(
        &self,
        req: AppendRequest,
        then: impl FnOnce(Result<Appended, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let then = Then(Some(Box::new(then)));
        self.txs[self.of_chat(req.chat_id)]
            .send(Op::Append(req, AppendReply::Then(then)))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Appends several messages in one transaction (one commit, one fsync), in the order given;
    /// returns once all are durable, with each one's own answer (an invalid or forbidden send
    /// fails alone). A batch larger than the engine's transaction limit is split into
    /// consecutive transactions.
    pub async fn append_batch(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        // Each partition's share goes to its writer (one transaction there, or consecutive
        // ones); the answers come back in the order given.
        let n = requests.len();
        let mut pending = Vec::new();
        for share in self.split(requests, |r| r.chat_id) {
            let tickets = self.queue_batch(share.partition, share.items).await?;
            pending.push((share.at, tickets));
        }
        let mut answered = Vec::with_capacity(pending.len());
        for (at, tickets) in pending {
            let mut answers = Vec::with_capacity(at.len());
            for t in tickets {
                answers.extend(t.wait().await?);
            }
            answered.push((at, answers));
        }
        Ok(gather(n, answered))
    }

    /// `items` split by the partition of each one's chat, keeping their order and where each
    /// came from; partitions with nothing left out.
    fn split<T>(&self, items: Vec<T>, chat: impl Fn(&T) -> u64) -> Vec<Share<T>> {
        let mut shares: Vec<Share<T>> = (0..self.shared.writers)
            .map(|partition| Share {
                partition,
                at: Vec::new(),
                items: Vec::new(),
            })
            .collect();
        for (i, item) in items.into_iter().enumerate() {
            let share = &mut shares[self.of_chat(chat(&item))];
            share.at.push(i);
            share.items.push(item);
        }
        shares.retain(|s| !s.items.is_empty());
        shares
    }

    /// Queues `requests` (all of partition `partition`) to its writer in chunks that fit a
    /// transaction; a ticket per chunk.
    async fn queue_batch(
        &self,
        partition: usize,
        mut requests: Vec<AppendRequest>,
    ) -> Result<Vec<Ticket<Vec<Result<Appended, StoreError>>>>, StoreError> {
        let max = self
            .shared
            .engine
            .max_batch()
            .min(self.shared.config.max_batch)
            .max(1);
        // An estimate of each request's bytes in the transaction, so that a chunk stays near
        // the engine's size target (the writer cannot split inside one operation).
        let target = self.shared.engine.max_transaction_bytes();
        let mut tickets = Vec::new();
        while !requests.is_empty() {
            let mut bytes = 0usize;
            let fit = requests
                .iter()
                .take(max)
                .take_while(|r| {
                    let first = bytes == 0;
                    bytes = bytes.saturating_add(2 * r.body.len() + 256);
                    first || bytes <= target
                })
                .count();
            let rest = requests.split_off(fit.max(1));
            let chunk = std::mem::replace(&mut requests, rest);
            let (reply, rx) = oneshot::channel();
            self.txs[partition]
                .send(Op::AppendBatch(chunk, reply))
                .await
                .map_err(|_| StoreError::Closed)?;
            tickets.push(Ticket(rx));
        }
        Ok(tickets)
    }

    /// The direct chat of `a` and `b`, created if the pair has none.
    pub async fn create_direct(&self, a: &str, b: &str) -> Result<Arc<Chat>, StoreError> {
        let (a, b) = (a.to_owned(), b.to_owned());
        self.call(|reply| Op::CreateDirect { a, b, reply }).await
    }

    /// A new group named `name` with `creator` (its owner) and `members`; its first message is a
    /// system message recording the creation.
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

    /// Renames a group and/or changes its members, recorded as a system message in the chat.
    /// Any member may rename and add; only the owner may remove others; anyone may leave.
    pub async fn update_group(
        &self,
        actor: &str,
        chat_id: u64,
        change: GroupChange,
    ) -> Result<Arc<Chat>, StoreError> {
        let actor = actor.to_owned();
        self.call(|reply| Op::UpdateGroup {
            actor,
            chat_id,
            change,
            reply,
        })
        .await
    }

    /// Records that `device` of `user` holds chat `chat_id` up to `seq` (cumulative; positions
    /// only move forward). Returns the stored position.
    pub async fn ack(
        &self,
        user: &str,
        device: u32,
        chat_id: u64,
        seq: u64,
    ) -> Result<u64, StoreError> {
        self.ack_many(user, device, vec![(chat_id, seq)])
            .await?
            .pop()
            .unwrap_or(Err(StoreError::Closed))
    }

    /// [`Store::ack`] for several chats of one device in one write: `acks` holds (chat, seq)
    /// pairs; the answer has one result per pair, in order (a chat the user is not in fails
    /// alone with `Forbidden`).
    pub async fn ack_many(
        &self,
        user: &str,
        device: u32,
        acks: Vec<(u64, u64)>,
    ) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
        // Each partition's chats to its writer; the answers back in the order given.
        let n = acks.len();
        let mut answered = Vec::new();
        for share in self.split(acks, |a| a.0) {
            let user = user.to_owned();
            let acks = share.items;
            let answers = self
                .call_on(share.partition, |reply| Op::Ack {
                    user,
                    device,
                    acks,
                    reply,
                })
                .await?;
            answered.push((share.at, answers));
        }
        Ok(gather(n, answered))
    }

    /// Deletes expired data now, in bounded transactions, until nothing expired is left.
    pub async fn sweep(&self) -> Result<SweepStats, StoreError> {
        let limit = self.shared.config.sweep_limit.max(1);
        let mut total = SweepStats::default();
        let add = |total: &mut SweepStats, s: SweepStats| {
            total.chat_hours += s.chat_hours;
            total.messages += s.messages;
            total.dedupe_records += s.dedupe_records;
            total.media += s.media;
            total.released_blobs.extend(s.released_blobs);
            total.released_candidates.extend(s.released_candidates);
            s.more
        };
        // Each partition sweeps its own chats; on a shared engine (one key space), the first
        // writer sweeps them all.
        let partitioned = self.shared.engine.partitions() > 1;
        let sweepers = if partitioned { self.shared.writers } else { 1 };
        for p in 0..sweepers {
            loop {
                let s = self.call_on(p, |reply| Op::Sweep { limit, reply }).await?;
                if !add(&mut total, s) {
                    break;
                }
            }
        }
        if partitioned {
            // Then partition 0 releases the media no partition references any more, and the
            // other writers clear the candidates it dealt with.
            loop {
                let s = self
                    .call_on(0, |reply| Op::ReleaseMedia { limit, reply })
                    .await?;
                if !add(&mut total, s) {
                    break;
                }
            }
            let done = std::mem::take(&mut total.released_candidates);
            if !done.is_empty() {
                for p in 1..self.shared.writers {
                    let done = done.clone();
                    self.call_on(p, |reply| Op::ForgetReleased { done, reply })
                        .await?;
                }
            }
        }
        Ok(total)
    }

    /// The store's clock, milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.shared.config.clock.now_ms()
    }

    /// Operations waiting in the writers' queues.
    pub fn queue_depth(&self) -> usize {
        self.txs
            .iter()
            .map(|tx| tx.max_capacity() - tx.capacity())
            .sum()
    }

    /// Whether this process is the engine's only writer.
    pub fn engine_exclusive(&self) -> bool {
        self.shared.engine.exclusive()
    }

    /// Stops the sweeper, then the writer after the operations already queued, and waits.
    pub async fn close(&self) {
        let sweeper = self.threads.lock().expect("threads lock").sweeper.take();
        if let Some((stop, h)) = sweeper {
            drop(stop);
            let _ = h.join();
        }
        for tx in self.txs.iter() {
            let _ = tx.send(Op::Shutdown).await;
        }
        let writers = std::mem::take(&mut self.threads.lock().expect("threads lock").writers);
        for h in writers {
            let _ = h.join();
        }
        // The node leaves the cluster last: until its writer stopped, others may address it.
        let cluster = self.threads.lock().expect("threads lock").cluster.take();
        if let Some((stop, h)) = cluster {
            drop(stop);
            let _ = h.join();
        }
    }

    /// Queues `op` without waiting: at once when the queue has room, else from a task (or,
    /// outside a runtime, this thread) that waits for room.
    pub(crate) fn queue(&self, op: Op) {
        let tx = self.tx_for(&op);
        match tx.try_send(op) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(op)) => {
                let tx = tx.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(h) => {
                        h.spawn(async move {
                            let _ = tx.send(op).await;
                        });
                    }
                    Err(_) => {
                        let _ = tx.blocking_send(op);
                    }
                }
            }
        }
    }
}

/// One partition's part of a request that spans several, and where each item came from.
struct Share<T> {
    partition: usize,
    at: Vec<usize>,
    items: Vec<T>,
}

/// A share's answers, with where its items came from.
type Answered<A> = (Vec<usize>, Vec<Result<A, StoreError>>);

/// The answers of a request's shares back in the request's order; an item left unanswered
/// gets [`StoreError::Closed`].
fn gather<A>(n: usize, answered: Vec<Answered<A>>) -> Vec<Result<A, StoreError>> {
    let mut out: Vec<Option<Result<A, StoreError>>> = (0..n).map(|_| None).collect();
    for (at, answers) in answered {
        for (i, a) in at.into_iter().zip(answers) {
            out[i] = Some(a);
        }
    }
    out.into_iter()
        .map(|a| a.unwrap_or(Err(StoreError::Closed)))
        .collect()
}

/// The background sweeper: every `every`, [`Store::sweep`] (in a cluster, only on the node
/// holding the sweep's work lease), until the stop sender is dropped. It holds the writers'
/// queues but not the store's threads, so dropping every other handle stops it.
fn spawn_sweeper(
    store: Store,
    every: Duration,
) -> Result<(std_mpsc::Sender<()>, JoinHandle<()>), StoreError> {
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let store = Store {
        threads: Arc::new(Mutex::new(Threads {
            writers: Vec::new(),
            sweeper: None,
            cluster: None,
        })),
        ..store
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| StoreError::Engine(format!("sweeper runtime: {e}")))?;
    let handle = std::thread::Builder::new()
        .name("courier-store-sweeper".into())
        .spawn(move || {
            while let Err(std_mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every) {
                if let Some(c) = &store.shared.cluster {
                    if !c.owns(crate::cluster::Work::Sweep) {
                        continue;
                    }
                }
                match runtime.block_on(store.sweep()) {
                    Ok(_) => {}
                    Err(StoreError::Closed) => return,
                    Err(e) => tracing::warn!("retention sweep failed: {e}"),
                }
            }
        })
        .map_err(|e| StoreError::Engine(format!("spawn sweeper: {e}")))?;
    Ok((stop_tx, handle))
}
