//! The simulation engine: an in-memory cluster with FoundationDB's transaction semantics and
//! seeded fault injection, so that the FoundationDB path of the message log is exercised where
//! no fdbserver can run (FoundationDB itself is tested this way).
//!
//! What it models, as FoundationDB documents it:
//! - **MVCC**: a transaction reads at the read version it got when it began; every commit gets
//!   a new version; a transaction reads its own writes over its snapshot.
//! - **Optimistic conflicts**: each read records a read conflict range (a point read the key, a
//!   range read the range), each write a write conflict range; a commit fails with
//!   `not_committed` (1020, retryable) when a transaction committed after its read version wrote
//!   into one of its read ranges. Blind writes never conflict.
//! - **Limits**: keys up to 10,000 bytes (`key_too_large`, 2102), values up to 100,000
//!   (`value_too_large`, 2103), transactions up to 10,000,000 bytes of mutations and conflict
//!   ranges (`transaction_too_large`, 2101): these are not retryable. A transaction older than
//!   5 s fails with `transaction_too_old` (1007, retryable).
//! - **Faults**, drawn from the seed by commit number ([`Faults`]): conflicts, timeouts
//!   (1031) and `commit_unknown_result` (1021), each either having applied the commit or not:
//!   the last two are reported as [`KvErrorKind::MaybeCommitted`]. Reads fail now and then
//!   with `future_version` (1009) or `process_behind` (1037), drawn by transaction number. A latency per round trip
//!   (the read version, every read, the commit) can be added.
//!
//! A replay with the same seed injects the same faults at the same commit numbers (the order
//! in which threads reach the engine is the operating system's). [`Sim::stats`] counts round
//! trips, commits, conflicts and injected faults per kind, and the largest transaction.
//!
//! Clones of a [`Sim`] share one cluster, as gateway nodes share one FoundationDB.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::kv::{stamp_fits, Engine, KvError, KvErrorKind, Pairs, Txn, Watch, VERSIONSTAMP_LEN};

/// FoundationDB's largest key, in bytes.
pub const MAX_KEY: usize = 10_000;
/// FoundationDB's largest value, in bytes.
pub const MAX_VALUE: usize = 100_000;
/// FoundationDB's largest transaction (mutations and conflict ranges), in bytes.
pub const MAX_TRANSACTION: usize = 10_000_000;
/// The size past which the writer starts a new transaction (FoundationDB advises under 1 MB).
pub const TRANSACTION_TARGET: usize = 512 * 1024;
/// How long a read version stays valid.
pub const MAX_TRANSACTION_AGE: Duration = Duration::from_secs(5);

/// Most watches a cluster holds at once (FoundationDB's default `too_many_watches` limit).
pub const MAX_WATCHES: usize = 10_000;

/// How many commits of conflict history are kept; a transaction whose read version is older
/// than the oldest kept is too old.
const HISTORY: usize = 100_000;

/// Faults injected per commit, as probabilities in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// The commit fails with `not_committed` though nothing conflicted.
    pub conflict: f64,
    /// The commit times out (1031) before it is applied.
    pub timeout: f64,
    /// The commit is applied, then the client times out (1031) before it hears so.
    pub timeout_applied: f64,
    /// `commit_unknown_result` (1021), the commit not applied.
    pub unknown: f64,
    /// `commit_unknown_result` (1021), the commit applied.
    pub unknown_applied: f64,
    /// One of the transaction's first reads fails with `future_version` (1009) or
    /// `process_behind` (1037), both retryable (per transaction).
    pub read: f64,
}

impl Faults {
    /// No faults.
    pub const NONE: Self = Self {
        conflict: 0.0,
        timeout: 0.0,
        timeout_applied: 0.0,
        unknown: 0.0,
        unknown_applied: 0.0,
        read: 0.0,
    };

    /// Every kind of fault, each on about `p` of the commits.
    pub fn all(p: f64) -> Self {
        Self {
            conflict: p,
            timeout: p,
            timeout_applied: p,
            unknown: p,
            unknown_applied: p,
            read: p,
        }
    }
}

/// How a simulated cluster behaves.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Seeds the fault draws.
    pub seed: u64,
    /// Faults per commit.
    pub faults: Faults,
    /// Added to every round trip (read version, each read, commit).
    pub latency: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            faults: Faults::NONE,
            latency: Duration::ZERO,
        }
    }
}

/// What the cluster has seen (see [`Sim::stats`]); [`SimStats::add`] sums several.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Transactions begun.
    pub transactions: u64,
    /// Round trips: read versions, reads, commits.
    pub round_trips: u64,
    /// Commits applied.
    pub commits: u64,
    /// Commits refused for a real conflict.
    pub conflicts: u64,
    /// Injected `not_committed`.
    pub injected_conflicts: u64,
    /// Injected timeouts (applied or not).
    pub injected_timeouts: u64,
    /// Injected `commit_unknown_result` (applied or not).
    pub injected_unknown: u64,
    /// Of the injected timeouts and unknown results, those whose commit was applied.
    pub injected_applied: u64,
    /// Injected read failures.
    pub injected_read_errors: u64,
    /// Transactions refused as too old.
    pub too_old: u64,
    /// The largest transaction committed, in bytes (mutations and conflict ranges).
    pub largest_transaction: u64,
}

impl SimStats {
    /// Adds `other`'s counts to these (the largest transaction: the larger of the two).
    pub fn add(&mut self, other: &Self) {
        self.transactions += other.transactions;
        self.round_trips += other.round_trips;
        self.commits += other.commits;
        self.conflicts += other.conflicts;
        self.injected_conflicts += other.injected_conflicts;
        self.injected_timeouts += other.injected_timeouts;
        self.injected_unknown += other.injected_unknown;
        self.injected_applied += other.injected_applied;
        self.injected_read_errors += other.injected_read_errors;
        self.too_old += other.too_old;
        self.largest_transaction = self.largest_transaction.max(other.largest_transaction);
    }
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    round_trips: AtomicU64,
    commits: AtomicU64,
    conflicts: AtomicU64,
    injected_conflicts: AtomicU64,
    injected_timeouts: AtomicU64,
    injected_unknown: AtomicU64,
    injected_applied: AtomicU64,
    injected_read_errors: AtomicU64,
    reads: AtomicU64,
    too_old: AtomicU64,
    largest_transaction: AtomicU64,
}

/// A half-open key range `[start, end)`.
type Range = (Vec<u8>, Vec<u8>);

/// A key's versions, oldest first: `None` is a deletion.
type Versions = Vec<(u64, Option<Vec<u8>>)>;

/// What fires a watch.
type Fire = tokio::sync::oneshot::Sender<()>;

/// A watch a transaction asked for: the key, the value it saw, what fires it.
type PendingWatch = (Vec<u8>, Option<Vec<u8>>, Fire);

/// The watches on one key: the value each saw, and what fires it.
type KeyWatches = Vec<(Option<Vec<u8>>, Fire)>;

/// The cluster's data and conflict history.
#[derive(Default)]
struct State {
    /// The last committed version.
    version: u64,
    /// Every key's versions, oldest first: `None` is a deletion.
    data: BTreeMap<Vec<u8>, Versions>,
    /// The write ranges of recent commits, by version, oldest first.
    history: std::collections::VecDeque<(u64, Vec<Range>)>,
    /// Commits drawn for faults so far.
    commit_number: u64,
    /// Active watches by key: the value they saw, and what fires them.
    watches: BTreeMap<Vec<u8>, KeyWatches>,
}

impl State {
    /// The value of `key` as of `version`.
    fn read(&self, key: &[u8], version: u64) -> Option<&[u8]> {
        let versions = self.data.get(key)?;
        versions
            .iter()
            .rev()
            .find(|(v, _)| *v <= version)
            .and_then(|(_, value)| value.as_deref())
    }

    /// Whether a commit after `read_version` wrote into one of `reads`; `None` when the history
    /// no longer reaches back to `read_version`.
    fn conflicts(&self, read_version: u64, reads: &[Range]) -> Option<bool> {
        if let Some((oldest, _)) = self.history.front() {
            if *oldest > read_version + 1 && self.version > read_version {
                return None;
            }
        }
        Some(
            self.history
                .iter()
                .filter(|(v, _)| *v > read_version)
                .any(|(_, writes)| writes.iter().any(|w| reads.iter().any(|r| overlaps(r, w)))),
        )
    }

    fn apply(&mut self, mutations: &[Mutation], mut writes: Vec<Range>) -> u64 {
        self.version += 1;
        let v = self.version;
        let mut stamp = [0u8; VERSIONSTAMP_LEN];
        stamp[..8].copy_from_slice(&v.to_be_bytes());
        for m in mutations {
            match m {
                Mutation::StampKey(k, offset, value) => {
                    let mut k = k.clone();
                    k[*offset..*offset + VERSIONSTAMP_LEN].copy_from_slice(&stamp);
                    writes.push((k.clone(), key_after(&k)));
                    self.data
                        .entry(k)
                        .or_default()
                        .push((v, Some(value.clone())));
                }
                Mutation::StampValue(k, value, offset) => {
                    let mut value = value.clone();
                    value[*offset..*offset + VERSIONSTAMP_LEN].copy_from_slice(&stamp);
                    self.data
                        .entry(k.clone())
                        .or_default()
                        .push((v, Some(value)));
                }
                Mutation::Set(k, value) => {
                    self.data
                        .entry(k.clone())
                        .or_default()
                        .push((v, Some(value.clone())));
                }
                Mutation::Clear(k) => {
                    if let Some(versions) = self.data.get_mut(k) {
                        versions.push((v, None));
                    }
                }
                Mutation::ClearRange(s, e) => {
                    if s < e {
                        for (_, versions) in self.data.range_mut(s.clone()..e.clone()) {
                            versions.push((v, None));
                        }
                    }
                }
            }
        }
        self.fire_watches(&writes);
        self.history.push_back((v, writes));
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        v
    }

    /// Fires the watches on keys in `writes` whose value now differs from what they saw.
    fn fire_watches(&mut self, writes: &[Range]) {
        if self.watches.is_empty() {
            return;
        }
        let version = self.version;
        let touched: Vec<Vec<u8>> = writes
            .iter()
            .flat_map(|(s, e)| {
                self.watches
                    .range(s.clone()..e.clone())
                    .map(|(k, _)| k.clone())
            })
            .collect();
        for k in touched {
            let now = self.read(&k, version).map(<[u8]>::to_vec);
            if let Some(list) = self.watches.remove(&k) {
                let (fired, kept): (Vec<_>, Vec<_>) =
                    list.into_iter().partition(|(seen, _)| *seen != now);
                for (_, tx) in fired {
                    let _ = tx.send(());
                }
                if !kept.is_empty() {
                    self.watches.insert(k, kept);
                }
            }
        }
    }

    /// Watches in force, dropped ones (their receivers gone) not counted.
    fn live_watches(&mut self) -> usize {
        self.watches.retain(|_, list| {
            list.retain(|(_, tx)| !tx.is_closed());
            !list.is_empty()
        });
        self.watches.values().map(Vec::len).sum()
    }
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The smallest key after `key`.
fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// A draw in [0, 1) from the seed and a commit number (splitmix64).
fn draw(seed: u64, n: u64, salt: u64) -> f64 {
    let mut z = seed
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

struct Cluster {
    config: SimConfig,
    /// The latency per round trip now, in microseconds (starts as `config.latency`).
    latency_us: AtomicU64,
    state: Mutex<State>,
    counters: Counters,
}

/// An in-memory cluster with FoundationDB's semantics; clones share it.
#[derive(Clone)]
pub struct Sim {
    cluster: Arc<Cluster>,
}

impl Sim {
    /// An empty cluster.
    pub fn new(config: SimConfig) -> Self {
        Self {
            cluster: Arc::new(Cluster {
                config,
                latency_us: AtomicU64::new(config.latency.as_micros() as u64),
                state: Mutex::new(State::default()),
                counters: Counters::default(),
            }),
        }
    }

    /// The seed this cluster draws its faults from.
    pub fn seed(&self) -> u64 {
        self.cluster.config.seed
    }

    /// Sets the latency of every later round trip (a benchmark sets up its data without it).
    pub fn set_latency(&self, latency: Duration) {
        self.cluster
            .latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// What the cluster has seen so far.
    pub fn stats(&self) -> SimStats {
        let c = &self.cluster.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            transactions: get(&c.transactions),
            round_trips: get(&c.round_trips),
            commits: get(&c.commits),
            conflicts: get(&c.conflicts),
            injected_conflicts: get(&c.injected_conflicts),
            injected_timeouts: get(&c.injected_timeouts),
            injected_unknown: get(&c.injected_unknown),
            injected_applied: get(&c.injected_applied),
            injected_read_errors: get(&c.injected_read_errors),
            too_old: get(&c.too_old),
            largest_transaction: get(&c.largest_transaction),
        }
    }

    fn round_trip(&self) {
        self.cluster
            .counters
            .round_trips
            .fetch_add(1, Ordering::Relaxed);
        let latency = self.cluster.latency_us.load(Ordering::Relaxed);
        if latency > 0 {
            std::thread::sleep(Duration::from_micros(latency));
        }
    }

    /// Which read of a new transaction fails, as the seed says (`None`: none).
    fn failing_read(&self) -> Option<u32> {
        let n = self.cluster.counters.reads.fetch_add(1, Ordering::Relaxed);
        let config = self.cluster.config;
        (draw(config.seed, n, 6) < config.faults.read)
            .then(|| (draw(config.seed, n, 7) * 4.0) as u32)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held leaves the state as the last complete commit left it.
        self.cluster
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Engine for Sim {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn begin(&self) -> Result<Box<dyn Txn + '_>, KvError> {
        self.round_trip(); // the read version
        self.cluster
            .counters
            .transactions
            .fetch_add(1, Ordering::Relaxed);
        let read_version = self.state().version;
        Ok(Box::new(SimTxn {
            sim: self,
            read_version,
            began: Instant::now(),
            mutations: Vec::new(),
            overlay: BTreeMap::new(),
            cleared: Vec::new(),
            reads: Vec::new(),
            writes: Vec::new(),
            bytes: 0,
            refused: None,
            reads_done: 0,
            failing_read: self.failing_read(),
            watches: Vec::new(),
        }))
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn max_batch(&self) -> usize {
        1024
    }

    fn max_transaction_bytes(&self) -> usize {
        TRANSACTION_TARGET
    }

    fn sync(&self) -> Result<(), KvError> {
        Ok(())
    }
}

enum Mutation {
    Set(Vec<u8>, Vec<u8>),
    /// A key whose bytes at the offset become the versionstamp.
    StampKey(Vec<u8>, usize, Vec<u8>),
    /// A value whose bytes at the offset become the versionstamp.
    StampValue(Vec<u8>, Vec<u8>, usize),
    Clear(Vec<u8>),
    ClearRange(Vec<u8>, Vec<u8>),
}

struct SimTxn<'a> {
    sim: &'a Sim,
    read_version: u64,
    began: Instant,
    mutations: Vec<Mutation>,
    /// This transaction's own writes since its last covering range clear: `None` deletes.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Ranges this transaction cleared (keys in them read as absent unless set again).
    cleared: Vec<Range>,
    reads: Vec<Range>,
    writes: Vec<Range>,
    /// Bytes of mutations and conflict ranges, as FoundationDB counts a transaction's size.
    bytes: usize,
    /// A limit a write broke: the commit fails with it.
    refused: Option<KvError>,
    /// Reads that went to the cluster so far.
    reads_done: u32,
    /// The read that fails (an injected fault).
    failing_read: Option<u32>,
    /// Watches to start at commit: the key, the value this transaction saw, the sender.
    watches: Vec<PendingWatch>,
}

/// Starts a committed transaction's watches: each fires at once if its key already differs
/// from what the transaction saw.
fn start_watches(state: &mut State, watches: Vec<PendingWatch>) {
    let version = state.version;
    for (key, seen, tx) in watches {
        if state.read(&key, version).map(<[u8]>::to_vec) != seen {
            let _ = tx.send(());
        } else {
            state.watches.entry(key).or_default().push((seen, tx));
        }
    }
}

/// Refuses watches past the cluster's limit, before anything is applied.
fn watch_room(state: &mut State, more: usize) -> Result<(), KvError> {
    if more > 0 && state.live_watches() + more > MAX_WATCHES {
        return Err(fdb_error(1032, "too_many_watches", KvErrorKind::Fatal));
    }
    Ok(())
}

fn fdb_error(code: u32, name: &str, kind: KvErrorKind) -> KvError {
    KvError {
        kind,
        message: format!("sim: {name} ({code})"),
    }
}

impl SimTxn<'_> {
    fn check_age(&self) -> Result<(), KvError> {
        if self.began.elapsed() > MAX_TRANSACTION_AGE {
            self.sim
                .cluster
                .counters
                .too_old
                .fetch_add(1, Ordering::Relaxed);
            return Err(fdb_error(
                1007,
                "transaction_too_old",
                KvErrorKind::Retryable,
            ));
        }
        Ok(())
    }

    /// A read's round trip, failing if it is the one the seed chose.
    fn read_trip(&mut self) -> Result<(), KvError> {
        self.sim.round_trip();
        let n = self.reads_done;
        self.reads_done += 1;
        if self.failing_read == Some(n) {
            self.sim
                .cluster
                .counters
                .injected_read_errors
                .fetch_add(1, Ordering::Relaxed);
            let (code, name) = if n.is_multiple_of(2) {
                (1009, "future_version")
            } else {
                (1037, "process_behind")
            };
            return Err(fdb_error(code, name, KvErrorKind::Retryable));
        }
        Ok(())
    }

    /// A point read: this transaction's own write, or the cluster's value at the read version
    /// (with a read conflict range unless it is a snapshot read).
    fn read_key(&mut self, key: &[u8], conflict: bool) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        if self.in_cleared(key) {
            return Ok(None);
        }
        self.check_age()?;
        self.read_trip()?;
        if conflict {
            self.reads.push((key.to_vec(), key_after(key)));
            self.bytes += 2 * key.len() + 1;
        }
        Ok(self
            .sim
            .state()
            .read(key, self.read_version)
            .map(<[u8]>::to_vec))
    }

    /// A range read at the read version over this transaction's writes, with a read conflict
    /// range (the range actually read) unless `conflict` is false.
    fn scan_range(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        conflict: bool,
    ) -> Result<Pairs, KvError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        self.check_age()?;
        self.read_trip()?;
        // The committed pairs as of the read version, then this transaction's writes over them.
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = {
            let state = self.sim.state();
            let range = (
                Bound::Included(start.to_vec()),
                Bound::Excluded(end.to_vec()),
            );
            state
                .data
                .range(range)
                .filter(|(k, _)| !self.in_cleared(k))
                .filter_map(|(k, _)| {
                    state
                        .read(k, self.read_version)
                        .map(|v| (k.clone(), v.to_vec()))
                })
                .collect()
        };
        let own = (
            Bound::Included(start.to_vec()),
            Bound::Excluded(end.to_vec()),
        );
        for (k, v) in self.overlay.range(own) {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        let out: Pairs = if reverse {
            merged.into_iter().rev().take(limit).collect()
        } else {
            merged.into_iter().take(limit).collect()
        };
        // FoundationDB records the range actually read: up to the last key returned when the
        // limit cut the scan, else the whole range.
        let read = match (out.len() == limit, out.last()) {
            (true, Some((last, _))) if reverse => (last.clone(), end.to_vec()),
            (true, Some((last, _))) => (start.to_vec(), key_after(last)),
            _ => (start.to_vec(), end.to_vec()),
        };
        if conflict {
            self.bytes += read.0.len() + read.1.len();
            self.reads.push(read);
        }
        Ok(out)
    }

    fn in_cleared(&self, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(s, e)| s.as_slice() <= key && key < e.as_slice())
    }

    fn key_limit(&mut self, key: &[u8]) {
        if key.len() > MAX_KEY && self.refused.is_none() {
            self.refused = Some(fdb_error(2102, "key_too_large", KvErrorKind::Fatal));
        }
    }
}

impl Txn for SimTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.read_key(key, true)
    }

    fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.read_key(key, false)
    }

    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        // Issued together, as FoundationDB's futures are: one round trip for all.
        let remote = keys
            .iter()
            .any(|k| !self.overlay.contains_key(k) && !self.in_cleared(k));
        if remote {
            self.check_age()?;
            self.read_trip()?;
        }
        let state = self.sim.state();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(v) = self.overlay.get(key) {
                out.push(v.clone());
                continue;
            }
            if self.in_cleared(key) {
                out.push(None);
                continue;
            }
            self.reads.push((key.clone(), key_after(key)));
            self.bytes += 2 * key.len() + 1;
            out.push(state.read(key, self.read_version).map(<[u8]>::to_vec));
        }
        Ok(out)
    }

    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.scan_range(start, end, limit, reverse, true)
    }

    fn scan_snapshot(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.scan_range(start, end, limit, reverse, false)
    }

    fn read_version(&mut self) -> Result<Option<u64>, KvError> {
        Ok(Some(self.read_version))
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.key_limit(key);
        if value.len() > MAX_VALUE && self.refused.is_none() {
            self.refused = Some(fdb_error(2103, "value_too_large", KvErrorKind::Fatal));
        }
        self.bytes += 3 * key.len() + value.len() + 1;
        self.overlay.insert(key.to_vec(), Some(value.to_vec()));
        self.writes.push((key.to_vec(), key_after(key)));
        self.mutations
            .push(Mutation::Set(key.to_vec(), value.to_vec()));
    }

    fn set_versionstamped_key(
        &mut self,
        key: &[u8],
        offset: usize,
        value: &[u8],
    ) -> Result<(), KvError> {
        stamp_fits(key.len(), offset, "key")?;
        self.key_limit(key);
        if value.len() > MAX_VALUE && self.refused.is_none() {
            self.refused = Some(fdb_error(2103, "value_too_large", KvErrorKind::Fatal));
        }
        self.bytes += 3 * key.len() + value.len() + 1;
        self.mutations
            .push(Mutation::StampKey(key.to_vec(), offset, value.to_vec()));
        Ok(())
    }

    fn set_versionstamped_value(
        &mut self,
        key: &[u8],
        value: &[u8],
        offset: usize,
    ) -> Result<(), KvError> {
        stamp_fits(value.len(), offset, "value")?;
        self.key_limit(key);
        if value.len() > MAX_VALUE && self.refused.is_none() {
            self.refused = Some(fdb_error(2103, "value_too_large", KvErrorKind::Fatal));
        }
        self.bytes += 3 * key.len() + value.len() + 1;
        // Like a set: the key's old value is gone for this transaction (FoundationDB makes it
        // unreadable; here it reads as absent).
        self.overlay.insert(key.to_vec(), None);
        self.writes.push((key.to_vec(), key_after(key)));
        self.mutations
            .push(Mutation::StampValue(key.to_vec(), value.to_vec(), offset));
        Ok(())
    }

    fn watch(&mut self, key: &[u8]) -> Result<Watch, KvError> {
        self.key_limit(key);
        let seen = self.read_key(key, false)?;
        let (tx, watch) = Watch::new();
        self.watches.push((key.to_vec(), seen, tx));
        Ok(watch)
    }

    fn clear(&mut self, key: &[u8]) {
        self.key_limit(key);
        self.bytes += 3 * key.len() + 1;
        self.overlay.insert(key.to_vec(), None);
        self.writes.push((key.to_vec(), key_after(key)));
        self.mutations.push(Mutation::Clear(key.to_vec()));
    }

    fn size(&self) -> usize {
        self.bytes
    }

    fn clear_range(&mut self, start: &[u8], end: &[u8]) {
        if start >= end {
            return;
        }
        self.bytes += 2 * (start.len() + end.len());
        let inside: Vec<Vec<u8>> = self
            .overlay
            .range(start.to_vec()..end.to_vec())
            .map(|(k, _)| k.clone())
            .collect();
        for k in inside {
            self.overlay.remove(&k);
        }
        self.cleared.push((start.to_vec(), end.to_vec()));
        self.writes.push((start.to_vec(), end.to_vec()));
        self.mutations
            .push(Mutation::ClearRange(start.to_vec(), end.to_vec()));
    }

    fn commit(self: Box<Self>) -> Result<(), KvError> {
        let sim = self.sim;
        let counters = &sim.cluster.counters;
        if let Some(e) = self.refused {
            return Err(e);
        }
        if self.bytes > MAX_TRANSACTION {
            return Err(fdb_error(2101, "transaction_too_large", KvErrorKind::Fatal));
        }
        if self.mutations.is_empty() {
            // A read-only transaction commits without a round trip; its watches start now.
            let mut state = sim.state();
            watch_room(&mut state, self.watches.len())?;
            start_watches(&mut state, self.watches);
            return Ok(());
        }
        self.check_age()?;
        sim.round_trip();
        let config = sim.cluster.config;
        let f = config.faults;
        let mut state = sim.state();
        state.commit_number += 1;
        let n = state.commit_number;
        let d = |salt| draw(config.seed, n, salt);
        if d(1) < f.conflict {
            counters.injected_conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(fdb_error(1020, "not_committed", KvErrorKind::Retryable));
        }
        if d(2) < f.timeout {
            counters.injected_timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(fdb_error(
                1031,
                "transaction_timed_out",
                KvErrorKind::MaybeCommitted,
            ));
        }
        if d(3) < f.unknown {
            counters.injected_unknown.fetch_add(1, Ordering::Relaxed);
            return Err(fdb_error(
                1021,
                "commit_unknown_result",
                KvErrorKind::MaybeCommitted,
            ));
        }
        match state.conflicts(self.read_version, &self.reads) {
            None => {
                counters.too_old.fetch_add(1, Ordering::Relaxed);
                return Err(fdb_error(
                    1007,
                    "transaction_too_old",
                    KvErrorKind::Retryable,
                ));
            }
            Some(true) => {
                counters.conflicts.fetch_add(1, Ordering::Relaxed);
                return Err(fdb_error(1020, "not_committed", KvErrorKind::Retryable));
            }
            Some(false) => {}
        }
        watch_room(&mut state, self.watches.len())?;
        state.apply(&self.mutations, self.writes);
        start_watches(&mut state, self.watches);
        drop(state);
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters
            .largest_transaction
            .fetch_max(self.bytes as u64, Ordering::Relaxed);
        if d(4) < f.timeout_applied {
            counters.injected_timeouts.fetch_add(1, Ordering::Relaxed);
            counters.injected_applied.fetch_add(1, Ordering::Relaxed);
            return Err(fdb_error(
                1031,
                "transaction_timed_out",
                KvErrorKind::MaybeCommitted,
            ));
        }
        if d(5) < f.unknown_applied {
            counters.injected_unknown.fetch_add(1, Ordering::Relaxed);
            counters.injected_applied.fetch_add(1, Ordering::Relaxed);
            return Err(fdb_error(
                1021,
                "commit_unknown_result",
                KvErrorKind::MaybeCommitted,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Sim {
        Sim::new(SimConfig::default())
    }

    fn put(s: &Sim, k: &[u8], v: &[u8]) {
        let mut t = s.begin().unwrap();
        t.set(k, v);
        t.commit().unwrap();
    }

    #[test]
    fn reads_see_a_snapshot_and_their_own_writes() {
        let s = sim();
        put(&s, b"a", b"1");
        let mut t = s.begin().unwrap();
        put(&s, b"a", b"2"); // committed after t's read version
        assert_eq!(t.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        t.set(b"b", b"x");
        t.clear_range(b"a", b"c");
        t.set(b"bb", b"y");
        assert_eq!(t.get(b"a").unwrap(), None);
        assert_eq!(
            t.get(b"b").unwrap(),
            None,
            "the range clear came after the set"
        );
        let all = t.scan(b"", b"\xff", 10, false).unwrap();
        assert_eq!(all, vec![(b"bb".to_vec(), b"y".to_vec())]);
        assert_eq!(
            s.begin().unwrap().get(b"a").unwrap().as_deref(),
            Some(&b"2"[..])
        );
    }

    #[test]
    fn a_write_into_a_read_range_after_the_read_version_conflicts() {
        let s = sim();
        put(&s, b"k1", b"1");
        let mut t = s.begin().unwrap();
        let _ = t.scan(b"k", b"l", 10, false).unwrap();
        t.set(b"out", b"x");
        put(&s, b"k5", b"new");
        let e = t.commit().unwrap_err();
        assert!(e.is_retryable() && e.message.contains("1020"), "{e}");
        // A blind write and a read outside the range do not conflict.
        let mut t = s.begin().unwrap();
        let _ = t.get(b"z").unwrap();
        t.set(b"k1", b"blind");
        put(&s, b"k2", b"other");
        t.commit().unwrap();
        assert_eq!(s.stats().conflicts, 1);
    }

    #[test]
    fn a_scan_cut_by_its_limit_conflicts_only_on_what_it_read() {
        let s = sim();
        for k in [b"a1", b"a2", b"a3"] {
            put(&s, k, b"v");
        }
        let mut t = s.begin().unwrap();
        let first = t.scan(b"a", b"b", 1, false).unwrap();
        assert_eq!(first[0].0, b"a1");
        t.set(b"w", b"x");
        put(&s, b"a3", b"changed"); // beyond what was read
        t.commit().unwrap();
    }

    #[test]
    fn limits_are_foundationdbs() {
        let s = sim();
        let mut t = s.begin().unwrap();
        t.set(&vec![b'k'; MAX_KEY + 1], b"v");
        assert!(t.commit().unwrap_err().message.contains("2102"));
        let mut t = s.begin().unwrap();
        t.set(b"k", &vec![0; MAX_VALUE + 1]);
        assert!(t.commit().unwrap_err().message.contains("2103"));
        let mut t = s.begin().unwrap();
        for i in 0..110u32 {
            t.set(&i.to_be_bytes(), &vec![0; MAX_VALUE]);
        }
        let e = t.commit().unwrap_err();
        assert!(e.message.contains("2101") && !e.is_retryable(), "{e}");
    }

    #[test]
    fn faults_follow_the_seed_and_applied_ones_really_apply() {
        let config = SimConfig {
            seed: 7,
            faults: Faults {
                unknown_applied: 0.5,
                ..Faults::NONE
            },
            latency: Duration::ZERO,
        };
        let outcomes = |s: &Sim| -> Vec<bool> {
            (0..64u32)
                .map(|i| {
                    let mut t = s.begin().unwrap();
                    t.set(&i.to_be_bytes(), b"v");
                    t.commit().is_ok()
                })
                .collect()
        };
        let (a, b) = (Sim::new(config), Sim::new(config));
        let first = outcomes(&a);
        assert_eq!(first, outcomes(&b), "the same seed, the same faults");
        let failed = first.iter().filter(|ok| !**ok).count();
        assert!((16..48).contains(&failed), "{failed} of 64");
        // Every commit applied, whatever it was told.
        let mut t = a.begin().unwrap();
        assert_eq!(t.scan(b"", b"\xff", 100, false).unwrap().len(), 64);
        assert_eq!(a.stats().injected_applied, failed as u64);
        let other = Sim::new(SimConfig { seed: 8, ..config });
        assert_ne!(first, outcomes(&other));
    }

    #[test]
    fn prefetched_reads_take_one_round_trip_and_follow_later_writes() {
        let s = sim();
        put(&s, b"k1", b"1");
        put(&s, b"k2", b"2");
        let before = s.stats().round_trips;
        let t = s.begin().unwrap();
        let keys = vec![b"k1".to_vec(), b"k2".to_vec(), b"k9".to_vec()];
        let mut t = crate::kv::Prefetched::new(t, keys).unwrap();
        assert_eq!(
            s.stats().round_trips - before,
            2,
            "the read version and one read"
        );
        assert_eq!(t.get(b"k1").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(t.get(b"k9").unwrap(), None);
        assert_eq!(
            s.stats().round_trips - before,
            2,
            "answered from what was read"
        );
        t.set(b"k1", b"new");
        t.clear_range(b"k2", b"k3");
        assert_eq!(t.get(b"k1").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(t.get(b"k2").unwrap(), None);
        assert_eq!(
            t.get_many(&[b"k2".to_vec(), b"k3".to_vec()]).unwrap(),
            vec![None, None]
        );
        put(&s, b"k1", b"other"); // a conflict on a prefetched read
        assert!(Box::new(t).commit().unwrap_err().is_retryable());
    }

    #[test]
    fn versionstamps_sort_keys_in_commit_order() {
        let s = sim();
        let stamped = |tag: u8| {
            let mut t = s.begin().unwrap();
            let mut key = b"q/".to_vec();
            key.extend_from_slice(&[0; VERSIONSTAMP_LEN]);
            t.set_versionstamped_key(&key, 2, &[tag]).unwrap();
            let mut value = vec![tag];
            value.extend_from_slice(&[0; VERSIONSTAMP_LEN]);
            t.set_versionstamped_value(&[b'v', tag], &value, 1).unwrap();
            t.commit().unwrap();
        };
        for tag in [3, 1, 2] {
            stamped(tag);
        }
        let mut t = s.begin().unwrap();
        let queue = t.scan(b"q/", b"q0", 10, false).unwrap();
        let order: Vec<u8> = queue.iter().map(|(_, v)| v[0]).collect();
        assert_eq!(order, [3, 1, 2], "commit order, not value order");
        let stamp_of_3 = &queue[0].0[2..];
        assert_eq!(t.get(&[b'v', 3]).unwrap().unwrap()[1..], *stamp_of_3);
        let mut short = s.begin().unwrap();
        assert!(short.set_versionstamped_key(b"q/", 2, b"x").is_err());
    }

    #[tokio::test]
    async fn watches_fire_when_the_value_changes() {
        let s = sim();
        put(&s, b"wake", b"0");
        let watch = |s: &Sim| {
            let mut t = s.begin().unwrap();
            let w = t.watch(b"wake").unwrap();
            t.commit().unwrap();
            w
        };
        let (w1, w2) = (watch(&s), watch(&s));
        put(&s, b"wake", b"0"); // the same value: nothing changed
        put(&s, b"other", b"x");
        let mut w1 = Box::pin(w1.changed());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut w1)
                .await
                .is_err(),
            "no change yet"
        );
        put(&s, b"wake", b"1");
        w1.await.unwrap();
        w2.changed().await.unwrap();
        let w3 = watch(&s);
        let mut t = s.begin().unwrap();
        t.clear_range(b"w", b"x");
        t.commit().unwrap();
        w3.changed().await.unwrap();
        // A change between the watch's read and its commit fires at once.
        let mut t = s.begin().unwrap();
        let w4 = t.watch(b"wake").unwrap();
        put(&s, b"wake", b"2");
        t.commit().unwrap();
        w4.changed().await.unwrap();
    }
}
