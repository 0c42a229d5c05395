//! The ordered transactional key-value interface that every engine adapts.
//!
//! The message log ([`crate::log`]) is written once against [`Txn`]; engines
//! ([`crate::engine`]) only translate these calls. A transaction reads its own writes, and its
//! writes become visible to others all at once, durably, when [`Txn::commit`] returns `Ok`.

use std::fmt;

/// What kind of engine failure a [`KvError`] is: what the writer does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvErrorKind {
    /// A fresh transaction may not meet it (a conflict, a too-old read version): the writer
    /// re-applies the whole batch.
    Retryable,
    /// The engine cannot take writes for now (its disk is full; it is reopening after a failed
    /// write): callers are told to come back later, and the engine heals itself
    /// ([`Engine::heal`]) without a restart.
    Unavailable,
    /// The commit may or may not have been applied (FoundationDB's `commit_unknown_result`,
    /// a timeout during the commit): the writer finds out which in its next attempt, through
    /// the batch's commit marker, and never applies a batch twice.
    MaybeCommitted,
    /// Retrying will not fix it.
    Fatal,
}

/// An engine failure.
#[derive(Debug, Clone)]
pub struct KvError {
    /// What the writer does about it.
    pub kind: KvErrorKind,
    /// What happened.
    pub message: String,
}

impl KvError {
    /// A failure that retrying will not fix.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self {
            kind: KvErrorKind::Fatal,
            message: message.to_string(),
        }
    }

    /// A failure that a fresh transaction may not meet (conflict, timeout).
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self {
            kind: KvErrorKind::Retryable,
            message: message.to_string(),
        }
    }

    /// The engine cannot take writes for now (disk full, reopening).
    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self {
            kind: KvErrorKind::Unavailable,
            message: message.to_string(),
        }
    }

    /// Whether running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == KvErrorKind::Retryable
    }

    /// Whether the commit may have been applied (see [`KvErrorKind::MaybeCommitted`]).
    pub fn is_maybe_committed(&self) -> bool {
        self.kind == KvErrorKind::MaybeCommitted
    }

    /// Whether the engine is unavailable for now (see [`KvErrorKind::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        self.kind == KvErrorKind::Unavailable
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match self.kind {
            KvErrorKind::Retryable => f.write_str(" (retryable)"),
            KvErrorKind::Unavailable => f.write_str(" (unavailable for now)"),
            KvErrorKind::MaybeCommitted => f.write_str(" (may have committed)"),
            KvErrorKind::Fatal => Ok(()),
        }
    }
}

impl std::error::Error for KvError {}

/// Key-value pairs from a scan.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Bytes of a versionstamp: the commit's 8-byte version and 2-byte order within its batch,
/// big-endian, so that versionstamps sort in commit order.
pub const VERSIONSTAMP_LEN: usize = 10;

/// Fires once after the watched key's value changed (see [`Txn::watch`]).
#[derive(Debug)]
pub struct Watch(tokio::sync::oneshot::Receiver<()>);

impl Watch {
    /// A watch and the sender that fires it (for engines).
    pub fn new() -> (tokio::sync::oneshot::Sender<()>, Self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (tx, Self(rx))
    }

    /// Waits for the change. An error means the engine dropped the watch (it shut down, or
    /// the watch failed): read the key again and watch anew.
    pub async fn changed(self) -> Result<(), KvError> {
        self.0
            .await
            .map_err(|_| KvError::retryable("the watch was dropped"))
    }
}

/// Whether `len` bytes (a key or value) hold a versionstamp at `offset`; `what` names it in
/// the error.
pub fn stamp_fits(len: usize, offset: usize, what: &str) -> Result<(), KvError> {
    match offset.checked_add(VERSIONSTAMP_LEN) {
        Some(end) if end <= len => Ok(()),
        _ => Err(KvError::fatal(format!(
            "no room for the versionstamp in the {what}"
        ))),
    }
}

/// The error of an engine that lacks a call.
fn unsupported(what: &str) -> KvError {
    KvError::fatal(format!("this engine has no {what}"))
}

/// One transaction: reads see the transaction's own writes; nothing is visible to others until
/// [`Txn::commit`]. Dropping a transaction without committing discards its writes.
pub trait Txn {
    /// The value under `key`.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// The value under `key`, read without a conflict range (FoundationDB's snapshot read): a
    /// write by another transaction to `key` after this one began does not make this one
    /// fail. For reads whose staleness is harmless (an ack clamped to a chat's last seq).
    /// The default is [`Txn::get`].
    fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.get(key)
    }
    /// The values under `keys`, in order: a remote engine issues the reads concurrently (one
    /// round trip for all of them); the default reads them one after another.
    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Up to `limit` pairs with `start <= key < end`, ascending (or descending with `reverse`).
    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError>;
    /// [`Txn::scan`] without a read conflict range (a snapshot range read): for ranges that
    /// others append to while this transaction reads them (a node's inbox), where a write
    /// there must not make this transaction fail. The default is [`Txn::scan`].
    fn scan_snapshot(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.scan(start, end, limit, reverse)
    }
    /// The version this transaction reads at (FoundationDB's read version, in the same space
    /// as the commit version that begins a versionstamp), on engines that have one.
    fn read_version(&mut self) -> Result<Option<u64>, KvError> {
        Ok(None)
    }
    /// Writes `value` under `key`.
    fn set(&mut self, key: &[u8], value: &[u8]);
    /// Deletes `key`.
    fn clear(&mut self, key: &[u8]);
    /// Deletes every key with `start <= key < end`.
    fn clear_range(&mut self, start: &[u8], end: &[u8]);
    /// About how many bytes the transaction holds so far (mutations and conflict ranges, as
    /// FoundationDB counts a transaction's size); 0 for engines without a size limit.
    fn size(&self) -> usize {
        0
    }
    /// Writes `value` under `key` with the commit's versionstamp ([`VERSIONSTAMP_LEN`] bytes)
    /// written over `key[offset..offset + 10]` (FoundationDB's `SetVersionstampedKey`): keys that
    /// sort in commit order across every writer, with no counter to contend on. The key is
    /// not readable in this transaction. An error: the engine has no versionstamps, or the
    /// offset leaves no room for one.
    fn set_versionstamped_key(
        &mut self,
        key: &[u8],
        offset: usize,
        value: &[u8],
    ) -> Result<(), KvError> {
        let _ = (key, offset, value);
        Err(unsupported("versionstamps"))
    }
    /// Writes `value` under `key` with the commit's versionstamp written over
    /// `value[offset..offset + 10]` (FoundationDB's `SetVersionstampedValue`).
    fn set_versionstamped_value(
        &mut self,
        key: &[u8],
        value: &[u8],
        offset: usize,
    ) -> Result<(), KvError> {
        let _ = (key, value, offset);
        Err(unsupported("versionstamps"))
    }
    /// Watches `key`: once this transaction commits (a read-only one too), the watch fires
    /// when the key's value differs from the value this transaction read (FoundationDB's
    /// watches; at most 10,000 at once per database).
    fn watch(&mut self, key: &[u8]) -> Result<Watch, KvError> {
        let _ = key;
        Err(unsupported("watches"))
    }
    /// [`Txn::scan`] of this transaction's own partition only, on an engine split into
    /// partitions ([`Engine::partitions`]): the keys the writer of this partition owns. The
    /// default (one partition) is [`Txn::scan`].
    fn scan_local(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.scan(start, end, limit, reverse)
    }
    /// Makes every write durable and visible, atomically.
    fn commit(self: Box<Self>) -> Result<(), KvError>;
    /// Starts the commit and hands back the durable rest of it, to be finished on another
    /// thread, so the next transaction can be built meanwhile. From this call on, transactions
    /// begun on the engine read these writes as if committed. Several may be in flight; they
    /// must be [finished](PendingCommit::finish) in the order they were started.
    ///
    /// An engine that cannot split its commit commits here, and the handle has nothing left to
    /// do (the default).
    fn commit_pipelined(self: Box<Self>) -> Result<Box<dyn PendingCommit>, KvError> {
        self.commit()?;
        Ok(Box::new(Committed))
    }
}

/// A transaction whose reads of some keys were made ahead, together ([`Txn::get_many`]): a
/// later `get` of one of them is answered from what was read, as the inner transaction would
/// answer it (this transaction's own writes since then included).
pub struct Prefetched<'a> {
    inner: Box<dyn Txn + 'a>,
    read: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Prefetched<'a> {
    /// Reads `keys` in `inner` at once.
    pub fn new(mut inner: Box<dyn Txn + 'a>, keys: Vec<Vec<u8>>) -> Result<Self, KvError> {
        let values = if keys.is_empty() {
            Vec::new()
        } else {
            inner.get_many(&keys)?
        };
        Ok(Self {
            inner,
            read: keys.into_iter().zip(values).collect(),
        })
    }
}

impl Txn for Prefetched<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.read.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.inner.get(key),
        }
    }

    fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.read.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.inner.get_snapshot(key),
        }
    }

    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let missing: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| !self.read.contains_key(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let values = self.inner.get_many(&missing)?;
            self.read.extend(missing.into_iter().zip(values));
        }
        Ok(keys.iter().map(|k| self.read[k].clone()).collect())
    }

    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.inner.scan(start, end, limit, reverse)
    }

    fn scan_snapshot(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.inner.scan_snapshot(start, end, limit, reverse)
    }

    fn read_version(&mut self) -> Result<Option<u64>, KvError> {
        self.inner.read_version()
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        if let Some(v) = self.read.get_mut(key) {
            *v = Some(value.to_vec());
        }
        self.inner.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        if let Some(v) = self.read.get_mut(key) {
            *v = None;
        }
        self.inner.clear(key);
    }

    fn clear_range(&mut self, start: &[u8], end: &[u8]) {
        for (k, v) in &mut self.read {
            if start <= k.as_slice() && k.as_slice() < end {
                *v = None;
            }
        }
        self.inner.clear_range(start, end);
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn set_versionstamped_key(
        &mut self,
        key: &[u8],
        offset: usize,
        value: &[u8],
    ) -> Result<(), KvError> {
        self.inner.set_versionstamped_key(key, offset, value)
    }

    fn set_versionstamped_value(
        &mut self,
        key: &[u8],
        value: &[u8],
        offset: usize,
    ) -> Result<(), KvError> {
        self.inner.set_versionstamped_value(key, value, offset)
    }

    fn watch(&mut self, key: &[u8]) -> Result<Watch, KvError> {
        self.inner.watch(key)
    }

    fn scan_local(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.inner.scan_local(start, end, limit, reverse)
    }

    fn commit(self: Box<Self>) -> Result<(), KvError> {
        self.inner.commit()
    }

    fn commit_pipelined(self: Box<Self>) -> Result<Box<dyn PendingCommit>, KvError> {
        self.inner.commit_pipelined()
    }
}

/// The durable rest of a [`Txn::commit_pipelined`].
pub trait PendingCommit: Send {
    /// Waits until the writes are durable. An error means they are not, and that transactions
    /// that read them (begun since [`Txn::commit_pipelined`]) must not commit either: the engine
    /// refuses them.
    fn finish(self: Box<Self>) -> Result<(), KvError>;
}

/// A commit that already happened.
struct Committed;

impl PendingCommit for Committed {
    fn finish(self: Box<Self>) -> Result<(), KvError> {
        Ok(())
    }
}

/// A storage engine: a source of transactions.
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs ("embedded", "fdb").
    fn name(&self) -> &'static str;
    /// Starts a transaction that reads only durable data (the readers' transaction).
    fn begin(&self) -> Result<Box<dyn Txn + '_>, KvError>;
    /// Starts the writer's transaction: it also reads the writes of a pipelined commit still in
    /// flight ([`Txn::commit_pipelined`]). The default is [`Engine::begin`].
    fn begin_write(&self) -> Result<Box<dyn Txn + '_>, KvError> {
        self.begin()
    }
    /// Into how many partitions the engine's data is split, each with its own writer and
    /// commit (an engine of several local databases, [`crate::engine::partitioned`]); 1 for an
    /// engine that is one transactional key space (however many writers it has).
    fn partitions(&self) -> usize {
        1
    }
    /// The writer's transaction of `partition` (below [`Engine::partitions`]): it writes only
    /// that partition's keys, and reads the others' durable data. The default (one partition)
    /// is [`Engine::begin_write`].
    fn begin_write_on(&self, partition: usize) -> Result<Box<dyn Txn + '_>, KvError> {
        let _ = partition;
        self.begin_write()
    }
    /// [`Engine::heal`] of one partition, by its writer. The default is [`Engine::heal`].
    fn heal_on(&self, partition: usize) -> Result<(), KvError> {
        let _ = partition;
        self.heal()
    }
    /// True when this process is the engine's only writer, so caches of committed state stay
    /// true (the embedded engine); false when other processes write too (FoundationDB).
    fn exclusive(&self) -> bool;
    /// Most operations the writer should fold into one transaction.
    fn max_batch(&self) -> usize;
    /// The size ([`Txn::size`]) past which the writer stops adding operations to a
    /// transaction and leaves the rest of the batch to the next one. One operation more may
    /// still go in, so engines set it well under their hard limit (FoundationDB: 10 MB, and
    /// it advises staying under 1 MB).
    fn max_transaction_bytes(&self) -> usize {
        usize::MAX
    }
    /// Makes sure everything committed is on stable storage (called at shutdown).
    fn sync(&self) -> Result<(), KvError>;
    /// Recovers from an [`KvErrorKind::Unavailable`] failure if it can: called by the writer,
    /// with no commit in flight, before it builds a batch after such a failure. `Ok` means the
    /// engine takes writes again (an engine that needs nothing done returns `Ok`); an error
    /// means not yet (the writer refuses writes and calls again later).
    fn heal(&self) -> Result<(), KvError> {
        Ok(())
    }
    /// Bytes free for this engine's data on its disk, for engines that keep data on a local
    /// disk (`None`: not known, or not local).
    fn free_bytes(&self) -> Option<u64> {
        None
    }
}
