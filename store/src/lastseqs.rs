//! The writer's memory of its chats' last seqs from one batch to the next.
//!
//! Every append reads its chat's `S` entry (its last seq and open retention hour). On an
//! exclusive engine, where this writer is the only one that writes its partition, it can
//! remember what it wrote instead of reading it back: the entries of batches whose commit it saw
//! succeed, and over them those of the batch still committing (the next batch is built while
//! the previous one commits, and reads its writes). A chat it does not know is read from the
//! engine as before, so forgetting is always safe and the memory is bounded by clearing it.
//!
//! A failed commit forgets everything: the batch built while the failed one was in flight read
//! its writes, so the engine refuses it too ([`crate::kv::Txn::commit_pipelined`]), and nothing
//! it wrote is kept either; after a reopen the engine is read afresh.

use crate::record::LastSeq;
use crate::FastMap;

/// What a batch wrote to chats' `S` entries, in order: `Some` the new entry, `None` an entry
/// written in a way the writer does not follow (read it from the engine next time). Kept only
/// for a writer that remembers (see [`SeqWrites::new`]).
pub(crate) struct SeqWrites(Option<Vec<(u64, Option<LastSeq>)>>);

impl SeqWrites {
    /// Writes to note when the writer remembers last seqs, else none.
    pub(crate) fn new(remember: bool) -> Self {
        Self(remember.then(Vec::new))
    }

    /// Notes a write of the chat's `S` entry.
    pub(crate) fn note(&mut self, chat: u64, entry: Option<LastSeq>) {
        if let Some(w) = &mut self.0 {
            w.push((chat, entry));
        }
    }
}

/// Chats remembered at most; past it the memory starts over (a miss only costs a read).
const MAX_CHATS: usize = 1 << 18;

/// Committed last seqs, and those of the batch in flight.
#[derive(Default)]
pub(crate) struct LastSeqs {
    durable: FastMap<u64, LastSeq>,
    /// The batch in flight's writes (`None`: must be read).
    in_flight: FastMap<u64, Option<LastSeq>>,
    /// Whether the last batch that settled failed.
    last_failed: bool,
}

impl LastSeqs {
    /// The chat's `S` entry as the writer knows it, if it does.
    pub(crate) fn get(&self, chat: u64) -> Option<LastSeq> {
        match self.in_flight.get(&chat) {
            Some(e) => *e,
            None => self.durable.get(&chat).copied(),
        }
    }

    /// A batch was handed to the commit (the previous one has settled). `read_in_flight`: it
    /// was built while another batch was committing, and read that batch's writes.
    pub(crate) fn submitted(&mut self, writes: SeqWrites, read_in_flight: bool) {
        debug_assert!(self.in_flight.is_empty());
        if read_in_flight && self.last_failed {
            // Built on a failed batch's writes: the engine refuses it; remember nothing of it.
            return;
        }
        self.in_flight.extend(writes.0.into_iter().flatten());
    }

    /// The batch in flight settled: committed (its writes are durable) or not (forget all).
    pub(crate) fn settled(&mut self, committed: bool) {
        self.last_failed = !committed;
        if !committed {
            self.forget();
            return;
        }
        if self.durable.len() + self.in_flight.len() > MAX_CHATS {
            self.durable.clear();
        }
        for (chat, e) in self.in_flight.drain() {
            match e {
                Some(e) => self.durable.insert(chat, e),
                None => self.durable.remove(&chat),
            };
        }
    }

    /// Forgets every chat (after a failure, or when the engine was reopened).
    pub(crate) fn forget(&mut self) {
        self.durable.clear();
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl From<Vec<(u64, Option<LastSeq>)>> for SeqWrites {
        fn from(w: Vec<(u64, Option<LastSeq>)>) -> Self {
            Self(Some(w))
        }
    }

    fn at(seq: u64) -> Option<LastSeq> {
        Some(LastSeq {
            seq,
            open_hour: Some(7),
        })
    }

    #[test]
    fn in_flight_writes_are_seen_and_kept_once_committed() {
        let mut s = LastSeqs::default();
        s.submitted(vec![(1, at(5)), (2, at(9))].into(), false);
        assert_eq!(s.get(1), at(5));
        s.settled(true);
        assert_eq!(s.get(1), at(5));
        // The next batch overrides chat 1 and forgets chat 2 (a write not followed).
        s.submitted(vec![(1, at(6)), (2, None)].into(), true);
        assert_eq!(s.get(1), at(6));
        assert_eq!(s.get(2), None);
        s.settled(true);
        assert_eq!(s.get(1), at(6));
        assert_eq!(s.get(2), None);
        assert_eq!(s.get(3), None);
    }

    #[test]
    fn a_failed_commit_forgets_it_all_and_the_batch_built_on_it() {
        let mut s = LastSeqs::default();
        s.submitted(vec![(1, at(5))].into(), false);
        s.settled(true);
        s.submitted(vec![(1, at(6)), (2, at(1))].into(), true);
        // The next batch was built reading those writes; then the commit fails.
        s.settled(false);
        assert_eq!(s.get(1), None);
        assert_eq!(s.get(2), None);
        s.submitted(vec![(1, at(7))].into(), true);
        assert_eq!(s.get(1), None, "built on the failed batch");
        s.settled(false);
        // A batch built with nothing in flight read the engine: trusted again.
        s.submitted(vec![(1, at(6))].into(), false);
        s.settled(true);
        assert_eq!(s.get(1), at(6));
    }

    #[test]
    fn the_memory_is_bounded() {
        let mut s = LastSeqs::default();
        for round in 0..3u64 {
            let writes: Vec<_> = (0..MAX_CHATS as u64 / 2 + 1)
                .map(|i| (round * MAX_CHATS as u64 + i, at(1)))
                .collect();
            s.submitted(writes.into(), false);
            s.settled(true);
            assert!(s.durable.len() <= MAX_CHATS);
        }
    }
}
