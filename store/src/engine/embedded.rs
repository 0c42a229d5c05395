//! The embedded engine: fjall in a local directory.
//!
//! A transaction reads a snapshot taken when it began, overlaid with its own writes; commit turns
//! the writes into one atomic fjall batch and fsyncs the journal before returning. Only the
//! store's writer thread commits, so transactions never conflict.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};

use crate::kv::{Engine, KvError, Pairs, Txn};

type Pair = (Vec<u8>, Vec<u8>);

/// fjall in a directory.
pub struct Embedded {
    db: Database,
    ks: Keyspace,
}

impl Embedded {
    /// Opens (or creates) the engine in `path`.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        std::fs::create_dir_all(path)
            .map_err(|e| KvError::fatal(format!("create {}: {e}", path.display())))?;
        let db = Database::builder(path).open().map_err(KvError::fatal)?;
        let ks = db
            .keyspace("log", KeyspaceCreateOptions::default)
            .map_err(KvError::fatal)?;
        Ok(Self { db, ks })
    }
}

impl Engine for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn begin(&self) -> Result<Box<dyn Txn + '_>, KvError> {
        Ok(Box::new(EmbeddedTxn {
            engine: self,
            snapshot: self.db.snapshot(),
            writes: BTreeMap::new(),
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
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(KvError::fatal)
    }
}

struct EmbeddedTxn<'a> {
    engine: &'a Embedded,
    snapshot: Snapshot,
    /// Pending writes: `Some` sets, `None` deletes.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Pending range deletions, applied before `writes` (later writes in a range win).
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EmbeddedTxn<'_> {
    fn is_cleared(&self, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(s, e)| key >= s.as_slice() && key < e.as_slice())
    }
}

fn bounds<'k>(start: &'k [u8], end: &'k [u8]) -> (Bound<&'k [u8]>, Bound<&'k [u8]>) {
    (Bound::Included(start), Bound::Excluded(end))
}

impl Txn for EmbeddedTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        if self.is_cleared(key) {
            return Ok(None);
        }
        Ok(self
            .snapshot
            .get(&self.engine.ks, key)
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
        // Merge the snapshot's keys with this transaction's writes; writes win.
        let mut mine: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
            self.writes.range::<[u8], _>(bounds(start, end)).collect();
        if reverse {
            mine.reverse();
        }
        let mut mine = mine.into_iter().peekable();
        let iter = self.snapshot.range(&self.engine.ks, start..end);
        let mut theirs: Box<dyn Iterator<Item = fjall::Guard>> = if reverse {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
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
                if self.writes.contains_key(k) || self.is_cleared(k) {
                    t = next_theirs()?;
                    continue;
                }
            }
            let take_mine = match (mine.peek(), &t) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((mk, _)), Some((tk, _))) => (mk.as_slice() < tk.as_slice()) != reverse,
            };
            if take_mine {
                let (k, v) = mine.next().expect("peeked");
                if let Some(v) = v {
                    out.push((k.clone(), v.clone()));
                }
            } else {
                out.push(t.take().expect("matched Some"));
                t = next_theirs()?;
            }
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }

    fn clear_range(&mut self, start: &[u8], end: &[u8]) {
        if start >= end {
            return;
        }
        let doomed: Vec<Vec<u8>> = self
            .writes
            .range::<[u8], _>(bounds(start, end))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.writes.remove(&k);
        }
        self.cleared.push((start.to_vec(), end.to_vec()));
    }

    fn commit(self: Box<Self>) -> Result<(), KvError> {
        let ks = &self.engine.ks;
        let mut batch = self
            .engine
            .db
            .batch()
            .durability(Some(PersistMode::SyncAll));
        // fjall has no atomic range delete: the keys in a cleared range are deleted one by one,
        // inside the same atomic batch. Callers keep ranges bounded.
        for (start, end) in &self.cleared {
            for g in self.snapshot.range(ks, start.as_slice()..end.as_slice()) {
                let key = g.key().map_err(KvError::fatal)?;
                if !self.writes.contains_key(key.as_ref()) {
                    batch.remove(ks, key);
                }
            }
        }
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(ks, k, v),
                None => batch.remove(ks, k),
            }
        }
        batch.commit().map_err(KvError::fatal)
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
    fn uncommitted_writes_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embedded::open(dir.path()).unwrap();
        let mut t = e.begin().unwrap();
        t.set(b"k", b"v");
        drop(t);
        assert_eq!(e.begin().unwrap().get(b"k").unwrap(), None);
    }
}
