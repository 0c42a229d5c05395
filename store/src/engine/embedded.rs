//! The embedded engine: fjall in a local directory.
//!
//! A transaction reads a snapshot taken when it began, overlaid with its own writes; commit turns
//! the writes into one atomic fjall batch and fsyncs the journal before returning. Only the
//! store's writer thread commits, so transactions never conflict.
//!
//! Keys are spread over one fjall keyspace (LSM tree) per first byte, i.e. per subspace tag of
//! `crate::keys`: messages, dedupe records and metadata each get their own memtables, tables and
//! bloom filters, so a dedupe lookup does not search the message tree. A scan that crosses tags
//! walks the keyspaces in tag order, so the engine is still one ordered key space.
//!
//! A failed write (a full disk, an I/O error) poisons fjall: it refuses every later write, since
//! after a failed fsync the page cache cannot be trusted. The engine then reports itself
//! unavailable and [heals](Engine::heal) by reopening the directory, once every handle of the
//! poisoned database is gone: recovery replays the journal as it is on disk, so what was
//! committed before the failure is there, and a batch whose commit failed is either absent or
//! whole (its caller was told it failed; a retried send finds it by its client message id).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fjall::{
    Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch as WriteBatch, PersistMode,
    Readable, Slice, Snapshot,
};

use crate::kv::{Engine, KvError, Pairs, PendingCommit, Txn};

type Pair = (Vec<u8>, Vec<u8>);

/// A transaction's pending writes: `Some` sets, `None` deletes.
type Writes = crate::FastMap<Slice, Option<Slice>>;

/// The pipelined commits in flight.
type InFlight = Arc<Pipeline>;

/// How long [`Engine::heal`] waits for readers of the poisoned database to finish.
const HEAL_WAIT: Duration = Duration::from_secs(5);

/// Free bytes a reopen needs: with less, the poisoned database is kept (it still serves reads)
/// rather than closed for an open that would fail.
const HEAL_MIN_FREE: u64 = 4 << 20;

/// The writes of the pipelined commits in flight, oldest first: the writer's next transaction
/// reads them as committed. Pushed by [`Txn::commit_pipelined`], removed when its batch is
/// applied.
#[derive(Default)]
struct Pipeline {
    writes: Mutex<Vec<Arc<Writes>>>,
    /// Set when a pipelined commit failed: the commits started after it read its writes, so
    /// none of them may land. Cleared when the writer begins a transaction with nothing in
    /// flight (no transaction can have read the failed writes then).
    failed: AtomicBool,
}

/// One opened fjall database and its keyspaces. Every transaction holds it: a reopen waits
/// until none does.
struct Live {
    db: Database,
    /// The keyspace of each first key byte, created on first write.
    spaces: RwLock<Vec<Option<Keyspace>>>,
}

/// fjall in a directory.
pub struct Embedded {
    path: PathBuf,
    /// `None` while a reopen after a failed write has not succeeded yet.
    live: RwLock<Option<Arc<Live>>>,
    /// A write failed and fjall refuses writes until the database is reopened.
    broken: Arc<AtomicBool>,
    in_flight: InFlight,
}

fn space_name(tag: u8) -> String {
    format!("t{tag:02x}")
}

/// Whether an I/O error means the disk (or the user's quota on it) is full.
fn is_disk_full(e: &std::io::Error) -> bool {
    // ENOSPC and EDQUOT.
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}

/// The error of a failed write. fjall poisons itself on any failed journal write or flush, so
/// every write failure makes the engine unavailable until it is reopened.
fn write_failure(e: fjall::Error) -> KvError {
    match &e {
        fjall::Error::Io(io) if is_disk_full(io) => {
            KvError::unavailable(format!("the disk is full: {io}"))
        }
        fjall::Error::Poisoned => KvError::unavailable(
            "the storage engine refuses writes after a failed write; it is being reopened",
        ),
        _ => KvError::unavailable(format!(
            "a write failed ({e}); the engine is being reopened"
        )),
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

impl Live {
    fn open(path: &Path) -> Result<Self, KvError> {
        std::fs::create_dir_all(path).map_err(|e| {
            let msg = format!("create {}: {e}", path.display());
            if is_disk_full(&e) {
                KvError::unavailable(msg)
            } else {
                KvError::fatal(msg)
            }
        })?;
        // One background worker: fjall's second worker busy-waits for compaction work, which
        // costs more than it gains on small machines.
        let db = Database::builder(path)
            .worker_threads(1)
            .open()
            .map_err(|e| match &e {
                fjall::Error::Io(io) if is_disk_full(io) => {
                    KvError::unavailable(format!("open {}: the disk is full: {io}", path.display()))
                }
                _ => KvError::fatal(format!("open {}: {e}", path.display())),
            })?;
        let mut spaces = vec![None; 256];
        for tag in 0..=255u8 {
            if db.keyspace_exists(&space_name(tag)) {
                spaces[tag as usize] = Some(Self::create(&db, tag)?);
            }
        }
        Ok(Self {
            db,
            spaces: RwLock::new(spaces),
        })
    }

    fn create(db: &Database, tag: u8) -> Result<Keyspace, KvError> {
        db.keyspace(&space_name(tag), KeyspaceCreateOptions::default)
            .map_err(write_failure)
    }

    fn space(&self, tag: u8) -> Option<Keyspace> {
        self.spaces.read().expect("spaces lock")[tag as usize].clone()
    }

    fn space_or_create(&self, tag: u8) -> Result<Keyspace, KvError> {
        if let Some(ks) = self.space(tag) {
            return Ok(ks);
        }
        let ks = Self::create(&self.db, tag)?;
        self.spaces.write().expect("spaces lock")[tag as usize] = Some(ks.clone());
        Ok(ks)
    }
}

impl Embedded {
    /// Opens (or creates) the engine in `path`.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        let live = Live::open(path)?;
        Ok(Self {
            path: path.to_owned(),
            live: RwLock::new(Some(Arc::new(live))),
            broken: Arc::default(),
            in_flight: InFlight::default(),
        })
    }

    /// The open database, or why there is none.
    fn live(&self) -> Result<Arc<Live>, KvError> {
        self.live.read().expect("live lock").clone().ok_or_else(|| {
            KvError::unavailable(
                "the storage engine is reopening after a failed write (is the disk full?)",
            )
        })
    }

    /// Notes that a write failed: fjall takes no more writes until reopened.
    fn broke(&self, e: fjall::Error) -> KvError {
        self.broken.store(true, Ordering::Release);
        write_failure(e)
    }
}

impl Engine for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn begin(&self) -> Result<Box<dyn Txn + '_>, KvError> {
        let live = self.live()?;
        Ok(Box::new(EmbeddedTxn {
            engine: self,
            snapshot: live.db.snapshot(),
            live,
            in_flight: Vec::new(),
            writes: Writes::default(),
            cleared: Vec::new(),
        }))
    }

    fn begin_write(&self) -> Result<Box<dyn Txn + '_>, KvError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(KvError::unavailable(
                "the storage engine refuses writes after a failed write; it is being reopened",
            ));
        }
        let live = self.live()?;
        // The in-flight writes first, then the snapshot: a batch that lands in between is then
        // in both (same values), never in neither.
        let in_flight = {
            let writes = self.in_flight.writes.lock().expect("in-flight lock");
            if writes.is_empty() {
                // Only the writer thread begins write transactions and it builds one at a time,
                // so with nothing in flight no transaction holds writes of a failed commit.
                self.in_flight.failed.store(false, Ordering::Release);
            }
            writes.clone()
        };
        Ok(Box::new(EmbeddedTxn {
            engine: self,
            snapshot: live.db.snapshot(),
            live,
            in_flight,
            writes: Writes::default(),
            cleared: Vec::new(),
        }))
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn max_batch(&self) -> usize {
        4096
    }

    fn sync(&self) -> Result<(), KvError> {
        self.live()?
            .db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.broke(e))
    }

    fn free_bytes(&self) -> Option<u64> {
        free_bytes(&self.path)
    }

    fn heal(&self) -> Result<(), KvError> {
        if !self.broken.load(Ordering::Acquire) && self.live.read().expect("live lock").is_some() {
            return Ok(());
        }
        if let Some(free) = free_bytes(&self.path).filter(|&f| f < HEAL_MIN_FREE) {
            return Err(KvError::unavailable(format!(
                "the disk is still full ({free} bytes free)"
            )));
        }
        let mut live = self.live.write().expect("live lock");
        if let Some(old) = live.take() {
            // Readers still in a transaction hold the old database: wait for them (briefly),
            // then drop it, which stops its workers and releases its lock file.
            let deadline = Instant::now() + HEAL_WAIT;
            while Arc::strong_count(&old) > 1 {
                if Instant::now() >= deadline {
                    *live = Some(old);
                    return Err(KvError::unavailable(
                        "the storage engine is waiting for readers before it reopens",
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        let reopened = Live::open(&self.path)?;
        *live = Some(Arc::new(reopened));
        self.broken.store(false, Ordering::Release);
        tracing::warn!(
            "storage engine in {} reopened after a failed write; taking writes again",
            self.path.display()
        );
        Ok(())
    }
}

struct EmbeddedTxn<'a> {
    engine: &'a Embedded,
    snapshot: Snapshot,
    /// The database the snapshot is of (a reopen waits until no transaction holds it).
    live: Arc<Live>,
    /// The writes of the pipelined commits that were in flight when this transaction began,
    /// oldest first: read as committed (newer over older), under this transaction's own writes.
    in_flight: Vec<Arc<Writes>>,
    /// Pending writes. A hash map: the writer's hot path is point reads and writes; the rare
    /// scan sorts the entries in its range.
    writes: Writes,
    /// Pending range deletions, applied before `writes` (later writes in a range win).
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EmbeddedTxn<'_> {
    /// The snapshot's pairs in `start..end`, walking the keyspaces of the tags in between.
    fn snapshot_range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
    ) -> Box<dyn Iterator<Item = fjall::Guard> + '_> {
        let first = start.first().copied().unwrap_or(0);
        let last = end.first().copied().unwrap_or(0);
        let mut parts = Vec::new();
        for tag in first..=last {
            let Some(ks) = self.live.space(tag) else {
                continue;
            };
            let lo = if tag == first {
                start.to_vec()
            } else {
                vec![tag]
            };
            let range: (Bound<Vec<u8>>, Bound<Vec<u8>>) = if tag == last {
                (Bound::Included(lo), Bound::Excluded(end.to_vec()))
            } else {
                (Bound::Included(lo), Bound::Excluded(vec![tag + 1]))
            };
            parts.push(self.snapshot.range(&ks, range));
        }
        if reverse {
            Box::new(parts.into_iter().rev().flat_map(Iterator::rev))
        } else {
            Box::new(parts.into_iter().flatten())
        }
    }

    fn is_cleared(&self, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(s, e)| key >= s.as_slice() && key < e.as_slice())
    }
}

impl Txn for EmbeddedTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.as_ref().map(|v| v.to_vec()));
        }
        if self.is_cleared(key) {
            return Ok(None);
        }
        if let Some(w) = self.in_flight.iter().rev().find_map(|f| f.get(key)) {
            return Ok(w.as_ref().map(|v| v.to_vec()));
        }
        let Some(ks) = key.first().and_then(|&t| self.live.space(t)) else {
            return Ok(None);
        };
        Ok(self
            .snapshot
            .get(&ks, key)
            .map_err(KvError::fatal)?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        // Merge the snapshot's keys with the in-flight writes and this transaction's own;
        // own writes win over in-flight ones (newer over older), all over the snapshot.
        let in_range = |k: &Slice| &k[..] >= start && &k[..] < end;
        let mut mine: Vec<(&Slice, &Option<Slice>)> =
            self.writes.iter().filter(|(k, _)| in_range(k)).collect();
        for (i, f) in self.in_flight.iter().enumerate() {
            let newer = &self.in_flight[i + 1..];
            mine.extend(f.iter().filter(|(k, _)| {
                in_range(k)
                    && !self.writes.contains_key(*k)
                    && !newer.iter().any(|n| n.contains_key(*k))
                    && !self.is_cleared(k)
            }));
        }
        mine.sort_unstable_by(|a, b| if reverse { b.0.cmp(a.0) } else { a.0.cmp(b.0) });
        let mut mine = mine.into_iter().peekable();
        let mut theirs = self.snapshot_range(start, end, reverse);
        let mut next_theirs = || -> Result<Option<Pair>, KvError> {
            theirs
                .next()
                .map(|g| {
                    g.into_inner()
                        .map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .map_err(KvError::fatal)
                })
                .transpose()
        };
        let mut out = Vec::new();
        let mut t = next_theirs()?;
        while out.len() < limit {
            // Skip snapshot keys that this transaction deleted or overwrote.
            if let Some((k, _)) = &t {
                let in_flight = self.in_flight.iter().any(|f| f.contains_key(k.as_slice()));
                if in_flight || self.writes.contains_key(k.as_slice()) || self.is_cleared(k) {
                    t = next_theirs()?;
                    continue;
                }
            }
            let take_mine = match (mine.peek(), &t) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((mk, _)), Some((tk, _))) => (&mk[..] < tk.as_slice()) != reverse,
            };
            if take_mine {
                let (k, v) = mine.next().expect("peeked");
                if let Some(v) = v {
                    out.push((k.to_vec(), v.to_vec()));
                }
            } else {
                out.push(t.take().expect("matched Some"));
                t = next_theirs()?;
            }
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        // Copied once into the engine's own byte type: commit hands them over without copying.
        self.writes
            .insert(Slice::from(key), Some(Slice::from(value)));
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes.insert(Slice::from(key), None);
    }

    fn clear_range(&mut self, start: &[u8], end: &[u8]) {
        if start >= end {
            return;
        }
        self.writes.retain(|k, _| &k[..] < start || &k[..] >= end);
        self.cleared.push((start.to_vec(), end.to_vec()));
    }

    fn commit(self: Box<Self>) -> Result<(), KvError> {
        // The same path as a pipelined commit, finished at once (and refused, like one, after a
        // failed pipelined commit).
        self.commit_pipelined()?.finish()
    }

    fn commit_pipelined(self: Box<Self>) -> Result<Box<dyn PendingCommit>, KvError> {
        let mut batch = self.batch()?;
        let mut spaces = Spaces::new(&self.live);
        // The slices are shared, not copied: the batch and the in-flight map hold the same bytes.
        // In key order: consecutive memtable inserts then walk the same skiplist towers.
        let mut sorted: Vec<(&Slice, &Option<Slice>)> = self.writes.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in sorted {
            let ks = spaces.of(k)?;
            match v {
                Some(v) => batch.insert(ks, k.clone(), v.clone()),
                None => batch.remove(ks, k.clone()),
            }
        }
        let writes = Arc::new(self.writes);
        self.engine
            .in_flight
            .writes
            .lock()
            .expect("in-flight lock")
            .push(writes.clone());
        Ok(Box::new(EmbeddedPending {
            batch: Some(batch),
            writes,
            in_flight: self.engine.in_flight.clone(),
            broken: self.engine.broken.clone(),
        }))
    }
}

impl EmbeddedTxn<'_> {
    /// A durable batch holding this transaction's range deletions (fjall has no atomic range
    /// delete: the keys in a cleared range are deleted one by one, inside the same atomic
    /// batch; callers keep ranges bounded).
    fn batch(&self) -> Result<WriteBatch, KvError> {
        let mut batch = self.live.db.batch().durability(Some(PersistMode::SyncAll));
        for (start, end) in &self.cleared {
            for g in self.snapshot_range(start, end, false) {
                let key = g.key().map_err(KvError::fatal)?;
                if !self.writes.contains_key(key.as_ref()) {
                    let ks = self.live.space_or_create(key[0])?;
                    batch.remove(&ks, key);
                }
            }
        }
        Ok(batch)
    }
}

/// The keyspace of each tag, looked up once per commit. A commit touches a handful of tags, so
/// they are kept in a short list rather than a table of all 256 (which cost more to build and
/// drop than every lookup in a one-message batch).
struct Spaces<'a> {
    live: &'a Live,
    spaces: Vec<(u8, Keyspace)>,
}

impl<'a> Spaces<'a> {
    fn new(live: &'a Live) -> Self {
        Self {
            live,
            spaces: Vec::with_capacity(8),
        }
    }

    fn of(&mut self, key: &[u8]) -> Result<&Keyspace, KvError> {
        let tag = key.first().copied().unwrap_or(0);
        let i = match self.spaces.iter().position(|(t, _)| *t == tag) {
            Some(i) => i,
            None => {
                self.spaces.push((tag, self.live.space_or_create(tag)?));
                self.spaces.len() - 1
            }
        };
        Ok(&self.spaces[i].1)
    }
}

/// A pipelined commit: the batch to make durable, and the in-flight writes to retire after.
struct EmbeddedPending {
    /// `None` once finished.
    batch: Option<WriteBatch>,
    writes: Arc<Writes>,
    in_flight: InFlight,
    /// The engine's flag for a write that poisoned fjall.
    broken: Arc<AtomicBool>,
}

impl PendingCommit for EmbeddedPending {
    fn finish(mut self: Box<Self>) -> Result<(), KvError> {
        let batch = self.batch.take().expect("finished once");
        let result = if self.in_flight.failed.load(Ordering::Acquire) {
            Err(KvError::unavailable(
                "an earlier pipelined commit failed, and this one read its writes",
            ))
        } else {
            batch.commit().map_err(|e| {
                self.broken.store(true, Ordering::Release);
                write_failure(e)
            })
        };
        if result.is_err() {
            // Commits started after this one read its writes: none of them may land.
            self.in_flight.failed.store(true, Ordering::Release);
        }
        result
        // Dropping retires the in-flight writes.
    }
}

impl Drop for EmbeddedPending {
    fn drop(&mut self) {
        if self.batch.is_some() {
            // Never finished: its writes did not land, so those that read them must not either.
            self.in_flight.failed.store(true, Ordering::Release);
        }
        self.in_flight
            .writes
            .lock()
            .expect("in-flight lock")
            .retain(|w| !Arc::ptr_eq(w, &self.writes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(p: &Pairs) -> Vec<&[u8]> {
        p.iter().map(|(k, _)| k.as_slice()).collect()
    }

    #[test]
    fn reads_see_own_writes_and_commits_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = Embedded::open(dir.path()).unwrap();
            let mut t = e.begin().unwrap();
            for k in [b"a1", b"a3", b"a5", b"b1"] {
                t.set(k, b"old");
            }
            t.commit().unwrap();

            let mut t = e.begin().unwrap();
            t.set(b"a2", b"new");
            t.clear(b"a3");
            t.set(b"a5", b"new");
            assert_eq!(t.get(b"a5").unwrap().as_deref(), Some(&b"new"[..]));
            assert_eq!(t.get(b"a3").unwrap(), None);
            let all = t.scan(b"a", b"b", 10, false).unwrap();
            assert_eq!(keys(&all), vec![&b"a1"[..], b"a2", b"a5"]);
            assert_eq!(all[2].1, b"new");
            let rev = t.scan(b"a", b"b", 2, true).unwrap();
            assert_eq!(keys(&rev), vec![&b"a5"[..], b"a2"]);

            t.clear_range(b"a", b"a4");
            t.set(b"a0", b"after-clear");
            assert_eq!(t.get(b"a1").unwrap(), None);
            assert_eq!(
                keys(&t.scan(b"a", b"c", 10, false).unwrap()),
                vec![&b"a0"[..], b"a5", b"b1"]
            );
            t.commit().unwrap();
        }
        let e = Embedded::open(dir.path()).unwrap();
        let mut t = e.begin().unwrap();
        assert_eq!(
            keys(&t.scan(b"", b"\xff", 10, false).unwrap()),
            vec![&b"a0"[..], b"a5", b"b1"]
        );
    }

    #[test]
    fn pipelined_commits_are_read_by_the_writer_only_until_they_land() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embedded::open(dir.path()).unwrap();
        let mut t = e.begin_write().unwrap();
        t.set(b"a1", b"old");
        t.set(b"a2", b"old");
        t.commit().unwrap();

        let mut t = e.begin_write().unwrap();
        t.set(b"a2", b"new");
        t.clear(b"a1");
        t.set(b"a3", b"new");
        let pending = t.commit_pipelined().unwrap();

        // The next writer transaction reads the in-flight writes, under its own.
        let mut w = e.begin_write().unwrap();
        assert_eq!(w.get(b"a2").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(w.get(b"a1").unwrap(), None);
        w.set(b"a4", b"mine");
        w.set(b"a3", b"mine");
        let all = w.scan(b"a", b"b", 10, false).unwrap();
        assert_eq!(keys(&all), vec![&b"a2"[..], b"a3", b"a4"]);
        assert_eq!(all[1].1, b"mine");
        assert_eq!(
            keys(&w.scan(b"a", b"b", 2, true).unwrap()),
            vec![&b"a4"[..], b"a3"]
        );
        // Readers see only what is durable.
        assert_eq!(
            e.begin().unwrap().get(b"a2").unwrap().as_deref(),
            Some(&b"old"[..])
        );
        // A second commit may start while the first is in flight; the transaction after it
        // reads both, the newer over the older.
        let second = w.commit_pipelined().unwrap();
        let mut x = e.begin_write().unwrap();
        assert_eq!(x.get(b"a3").unwrap().as_deref(), Some(&b"mine"[..]));
        assert_eq!(x.get(b"a1").unwrap(), None);
        let all = x.scan(b"a", b"b", 10, false).unwrap();
        assert_eq!(keys(&all), vec![&b"a2"[..], b"a3", b"a4"]);
        assert_eq!(all[0].1, b"new");
        assert_eq!(all[1].1, b"mine");
        drop(x);

        pending.finish().unwrap();
        assert_eq!(
            e.begin().unwrap().get(b"a2").unwrap().as_deref(),
            Some(&b"new"[..])
        );
        assert_eq!(e.begin().unwrap().get(b"a4").unwrap(), None);
        second.finish().unwrap();
        let mut r = e.begin().unwrap();
        let all = r.scan(b"", b"\xff", 10, false).unwrap();
        assert_eq!(keys(&all), vec![&b"a2"[..], b"a3", b"a4"]);
        assert_eq!(all[1].1, b"mine");
        assert!(e.in_flight.writes.lock().unwrap().is_empty());
    }

    #[test]
    fn a_failed_pipelined_commit_fails_the_ones_started_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embedded::open(dir.path()).unwrap();
        let mut t = e.begin_write().unwrap();
        t.set(b"a1", b"first");
        let first = t.commit_pipelined().unwrap();
        let mut t = e.begin_write().unwrap();
        assert_eq!(t.get(b"a1").unwrap().as_deref(), Some(&b"first"[..]));
        t.set(b"a2", b"second, read the first");
        let second = t.commit_pipelined().unwrap();
        // The first commit never lands (as if its fsync had failed): the second must not.
        drop(first);
        assert!(second.finish().is_err());
        assert_eq!(e.begin().unwrap().get(b"a2").unwrap(), None);
        assert!(e.in_flight.writes.lock().unwrap().is_empty());
    }

    #[test]
    fn uncommitted_writes_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embedded::open(dir.path()).unwrap();
        let mut t = e.begin().unwrap();
        t.set(b"k", b"v");
        drop(t);
        assert_eq!(e.begin().unwrap().get(b"k").unwrap(), None);
    }
}
