//! The embedded engine split into partitions: one fjall database (journal, fsync, memtables,
//! background worker) per partition, so that P writers append and commit side by side.
//!
//! Every key has one place ([`keys::place`]): with its chat (messages, seqs, chat records,
//! memberships, positions, receipts, push jobs, media references), with the writer that wrote
//! it (dedupe records, release candidates), by hash (pair records), or in partition 0 (users'
//! settings, push registrations, media records, quota). A writer's transaction
//! ([`Engine::begin_write_on`]) reads and writes its own partition as the embedded engine does
//! (its pipelined commits included) and reads the other partitions' durable data; a write to
//! a key placed elsewhere fails its commit (the store routes each operation to the writer of
//! its chat, so none does). Range reads that span partitions merge them in key order.
//!
//! A store keeps its partition count for good: it is written in the directory
//! ([`open_dir`]) when the store is created, and a store made before partitions existed is
//! one partition in the directory itself.

use std::path::{Path, PathBuf};

use crate::engine::embedded::Embedded;
use crate::keys::{self, Place};
use crate::kv::{Engine, KvError, Pairs, PendingCommit, Txn};

/// The file that holds a store's partition count.
const COUNT_FILE: &str = "PARTITIONS";

/// Most partitions a store may have.
pub const MAX_PARTITIONS: usize = 256;

/// Several embedded databases, one per partition, under one directory (`p0`, `p1`, ...).
pub struct Partitioned {
    parts: Vec<Embedded>,
}

/// Opens the store in `path` with the partition count it was created with (`wanted` for a new
/// store): one embedded database in `path` for one partition, else a [`Partitioned`]. A new
/// store's count is written once its partitions' databases exist, so a creation cut short
/// (only `p<i>` directories, no count) starts again; a store whose count names a partition
/// directory that is gone is refused rather than opened without that partition's chats.
pub fn open_dir(path: &Path, wanted: usize) -> Result<std::sync::Arc<dyn Engine>, KvError> {
    let count_file = path.join(COUNT_FILE);
    let count = match std::fs::read_to_string(&count_file) {
        Ok(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PARTITIONS).contains(n))
            .ok_or_else(|| {
                KvError::fatal(format!(
                    "{}: not a partition count (1 to {MAX_PARTITIONS}): {:?}",
                    count_file.display(),
                    s.trim()
                ))
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let entries: Vec<String> = match std::fs::read_dir(path) {
                Ok(d) => d
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(KvError::fatal(format!("read {}: {e}", path.display()))),
            };
            let partition_dir = |n: &String| {
                n.strip_prefix('p')
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            };
            let cut_short = !entries.is_empty() && entries.iter().all(partition_dir);
            if !cut_short && (!entries.is_empty() || wanted <= 1) {
                // A store made before partitions (or with one): the database is the directory.
                if !entries.is_empty() && wanted > 1 {
                    tracing::warn!(
                        "the store in {} was made with one partition; {wanted} asked for",
                        path.display()
                    );
                }
                return Ok(std::sync::Arc::new(Embedded::open(path)?));
            }
            let n = if wanted > 1 { wanted } else { entries.len() };
            let n = n.clamp(2, MAX_PARTITIONS);
            let engine = Partitioned::open(path, n)?;
            let tmp = path.join(format!("{COUNT_FILE}.new"));
            std::fs::write(&tmp, format!("{n}\n"))
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &count_file))
                .and_then(|()| std::fs::File::open(path)?.sync_all())
                .map_err(|e| KvError::fatal(format!("write {}: {e}", count_file.display())))?;
            return Ok(std::sync::Arc::new(engine));
        }
        Err(e) => {
            return Err(KvError::fatal(format!(
                "read {}: {e}",
                count_file.display()
            )))
        }
    };
    if count != wanted.max(1) {
        tracing::warn!(
            "the store in {} has {count} partition(s), set when it was created; {wanted} asked for",
            path.display()
        );
    }
    if count == 1 {
        return Ok(std::sync::Arc::new(Embedded::open(path)?));
    }
    if let Some(i) = (0..count).find(|&i| !Partitioned::dir(path, i).is_dir()) {
        return Err(KvError::fatal(format!(
            "the store in {} has {count} partitions but its partition directory p{i} is missing \
             (the chats of that partition would be gone): restore it from a backup",
            path.display()
        )));
    }
    Ok(std::sync::Arc::new(Partitioned::open(path, count)?))
}

impl Partitioned {
    /// Opens (or creates) `partitions` databases under `path`.
    pub fn open(path: &Path, partitions: usize) -> Result<Self, KvError> {
        let parts = (0..partitions.clamp(1, MAX_PARTITIONS))
            .map(|i| Embedded::open(&Self::dir(path, i)))
            .collect::<Result<_, _>>()?;
        Ok(Self { parts })
    }

    fn dir(path: &Path, i: usize) -> PathBuf {
        path.join(format!("p{i}"))
    }

    fn txn(&self, home: Option<usize>) -> Result<Box<dyn Txn + '_>, KvError> {
        let own = match home {
            Some(h) => Some(self.parts[h].begin_write()?),
            None => None,
        };
        Ok(Box::new(RouterTxn {
            engine: self,
            home,
            own,
            others: (0..self.parts.len()).map(|_| None).collect(),
            stray: None,
        }))
    }
}

impl Engine for Partitioned {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn begin(&self) -> Result<Box<dyn Txn + '_>, KvError> {
        self.txn(None)
    }

    fn begin_write(&self) -> Result<Box<dyn Txn + '_>, KvError> {
        self.txn(Some(0))
    }

    fn partitions(&self) -> usize {
        self.parts.len()
    }

    fn begin_write_on(&self, partition: usize) -> Result<Box<dyn Txn + '_>, KvError> {
        if partition >= self.parts.len() {
            return Err(KvError::fatal(format!("no partition {partition}")));
        }
        self.txn(Some(partition))
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn max_batch(&self) -> usize {
        self.parts[0].max_batch()
    }

    fn sync(&self) -> Result<(), KvError> {
        self.parts.iter().try_for_each(Engine::sync)
    }

    fn heal(&self) -> Result<(), KvError> {
        self.parts.iter().try_for_each(Engine::heal)
    }

    fn heal_on(&self, partition: usize) -> Result<(), KvError> {
        match self.parts.get(partition) {
            Some(p) => p.heal(),
            None => Err(KvError::fatal(format!("no partition {partition}"))),
        }
    }

    fn free_bytes(&self) -> Option<u64> {
        self.parts.iter().filter_map(Engine::free_bytes).min()
    }
}

/// A transaction over the partitions: the writer's own partition (`home`), if any, and
/// read-only transactions of the others, begun when first read.
struct RouterTxn<'a> {
    engine: &'a Partitioned,
    home: Option<usize>,
    own: Option<Box<dyn Txn + 'a>>,
    others: Vec<Option<Box<dyn Txn + 'a>>>,
    /// A write to a key that lives outside this transaction's partition: the commit fails.
    stray: Option<String>,
}

impl<'a> RouterTxn<'a> {
    fn part(&mut self, i: usize) -> Result<&mut (dyn Txn + 'a), KvError> {
        if Some(i) == self.home {
            return Ok(self.own.as_deref_mut().expect("a home has its transaction"));
        }
        let slot = &mut self.others[i];
        if slot.is_none() {
            *slot = Some(self.engine.parts[i].begin()?);
        }
        Ok(slot.as_deref_mut().expect("filled above"))
    }

    /// The partition a place means here: `Own` is the home; without one (a reader), `None`.
    fn resolve(&self, place: Place) -> Option<usize> {
        match place {
            Place::Part(i) => Some(i),
            Place::Own => self.home,
        }
    }

    /// The home transaction when `place` is in it, else notes the stray write.
    fn writable(&mut self, place: Option<Place>, what: &[u8]) -> Option<&mut (dyn Txn + 'a)> {
        let target = place.and_then(|p| self.resolve(p));
        if target.is_some() && target == self.home {
            return self.own.as_deref_mut();
        }
        if self.stray.is_none() {
            self.stray = Some(format!(
                "a write to {:?} outside the partition of this transaction ({:?})",
                String::from_utf8_lossy(&what[..what.len().min(24)]),
                self.home
            ));
        }
        None
    }

    fn merged(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        let mut all = Vec::new();
        for i in 0..self.engine.parts.len() {
            all.extend(self.part(i)?.scan(start, end, limit, reverse)?);
        }
        if reverse {
            all.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        } else {
            all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        all.truncate(limit);
        Ok(all)
    }
}

impl Txn for RouterTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let place = keys::place(key, self.engine.parts.len());
        if let Some(i) = self.resolve(place) {
            return self.part(i)?.get(key);
        }
        // A reader looking for a key placed with its writer: in whichever partition has it.
        for i in 0..self.engine.parts.len() {
            if let Some(v) = self.part(i)?.get(key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        match keys::place_range(start, end, self.engine.parts.len()).and_then(|p| self.resolve(p)) {
            Some(i) => self.part(i)?.scan(start, end, limit, reverse),
            None => self.merged(start, end, limit, reverse),
        }
    }

    fn scan_local(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        match self.home {
            Some(h) => self.part(h)?.scan(start, end, limit, reverse),
            None => self.scan(start, end, limit, reverse),
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        let place = keys::place(key, self.engine.parts.len());
        if let Some(t) = self.writable(Some(place), key) {
            t.set(key, value);
        }
    }

    fn clear(&mut self, key: &[u8]) {
        let place = keys::place(key, self.engine.parts.len());
        if let Some(t) = self.writable(Some(place), key) {
            t.clear(key);
        }
    }

    fn clear_range(&mut self, start: &[u8], end: &[u8]) {
        let place = keys::place_range(start, end, self.engine.parts.len());
        if let Some(t) = self.writable(place, start) {
            t.clear_range(start, end);
        }
    }

    fn size(&self) -> usize {
        self.own.as_ref().map_or(0, |t| t.size())
    }

    fn commit(self: Box<Self>) -> Result<(), KvError> {
        self.commit_pipelined()?.finish()
    }

    fn commit_pipelined(self: Box<Self>) -> Result<Box<dyn PendingCommit>, KvError> {
        if let Some(why) = self.stray {
            return Err(KvError::fatal(why));
        }
        match self.own {
            Some(own) => own.commit_pipelined(),
            // A reader: nothing to commit.
            None => Ok(Box::new(Nothing)),
        }
    }
}

/// The commit of a transaction that wrote nothing.
struct Nothing;

impl PendingCommit for Nothing {
    fn finish(self: Box<Self>) -> Result<(), KvError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_lives_in_one_partition_and_ranges_merge() {
        let dir = tempfile::tempdir().unwrap();
        let e = Partitioned::open(dir.path(), 3).unwrap();
        // Chats 3, 4 and 5 live in partitions 0, 1 and 2; each writer writes its own.
        for chat in [3u64, 4, 5] {
            let p = keys::chat_partition(chat, 3);
            let mut t = e.begin_write_on(p).unwrap();
            t.set(&keys::message(chat, 1), b"m");
            t.set(&keys::member("ann", chat), b"");
            t.set(&keys::dedupe("ann", &[chat as u8; 16]), b"d");
            t.commit().unwrap();
        }
        // A write outside the writer's partition fails its commit, and nothing of it lands.
        let mut t = e.begin_write_on(0).unwrap();
        t.set(&keys::message(3, 2), b"fine");
        t.set(&keys::message(4, 2), b"elsewhere");
        assert!(t.commit().is_err());
        let mut r = e.begin().unwrap();
        assert_eq!(r.get(&keys::message(3, 2)).unwrap(), None);
        // Readers see every partition: a user's chats merge in key order.
        let prefix = keys::member_prefix("ann");
        let chats: Vec<u64> = r
            .scan(&prefix, &keys::prefix_end(&prefix), 10, false)
            .unwrap()
            .iter()
            .filter_map(|(k, _)| keys::member_chat(k))
            .collect();
        assert_eq!(chats, [3, 4, 5]);
        let last_two = r
            .scan(&prefix, &keys::prefix_end(&prefix), 2, true)
            .unwrap();
        assert_eq!(keys::member_chat(&last_two[0].0), Some(5));
        assert_eq!(
            r.get(&keys::message(4, 1)).unwrap().as_deref(),
            Some(&b"m"[..])
        );
        // A dedupe record is where its writer put it; a reader finds it anyway.
        assert!(r.get(&keys::dedupe("ann", &[4; 16])).unwrap().is_some());
        let mut w = e.begin_write_on(2).unwrap();
        assert!(w.get(&keys::dedupe("ann", &[4; 16])).unwrap().is_none());
        assert!(w.get(&keys::dedupe("ann", &[5; 16])).unwrap().is_some());
        // A writer's local scan sees its partition only.
        let local = w
            .scan_local(&prefix, &keys::prefix_end(&prefix), 10, false)
            .unwrap();
        assert_eq!(local.len(), 1);
    }

    #[test]
    fn pairs_of_neighbouring_user_ids_spread_over_the_partitions() {
        // Users 2i and 2i+1 (a load generator's pairs) differ in their last digit only.
        for n in [2, 3, 4, 16] {
            let mut count = vec![0usize; n];
            for i in 0..4000 {
                count[keys::pair_partition(
                    &format!("lg{}", 2 * i),
                    &format!("lg{}", 2 * i + 1),
                    n,
                )] += 1;
            }
            let fair = 4000 / n;
            assert!(
                count
                    .iter()
                    .all(|&c| c > fair * 8 / 10 && c < fair * 12 / 10),
                "{n} partitions: {count:?}"
            );
        }
    }

    #[test]
    fn a_store_keeps_the_partition_count_it_was_made_with() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        assert_eq!(open_dir(&path, 4).unwrap().partitions(), 4);
        assert_eq!(open_dir(&path, 2).unwrap().partitions(), 4);
        // A store of one partition (or made before partitions) stays one.
        let one = dir.path().join("one");
        drop(open_dir(&one, 1).unwrap());
        assert_eq!(open_dir(&one, 8).unwrap().partitions(), 1);
        // A partition that went missing is refused, not opened empty.
        std::fs::remove_dir_all(path.join("p2")).unwrap();
        let err = open_dir(&path, 4).err().unwrap();
        assert!(err.to_string().contains("p2 is missing"), "{err}");
        std::fs::write(path.join(COUNT_FILE), "many").unwrap();
        let err = open_dir(&path, 4).err().unwrap();
        assert!(err.to_string().contains("not a partition count"), "{err}");
        // A creation cut short before its count was written starts again.
        let cut = dir.path().join("cut");
        std::fs::create_dir_all(cut.join("p0")).unwrap();
        std::fs::create_dir_all(cut.join("p1")).unwrap();
        assert_eq!(open_dir(&cut, 1).unwrap().partitions(), 2);
        assert_eq!(open_dir(&cut, 1).unwrap().partitions(), 2);
    }
}
