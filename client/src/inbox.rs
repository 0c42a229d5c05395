//! What a device holds: per-chat positions, duplicate removal and gap detection.
//!
//! The server delivers at least once (a message can come both live and in a sync page, or again
//! after a reconnect without an ack). [`Inbox`] keeps, per chat, the highest sequence number held
//! with everything before it, so the app sees each message exactly once and in order; a message
//! beyond the next expected seq reveals a gap that the caller fills from history.
//! [`PositionStore`] is how an app persists those positions across restarts.

use std::collections::HashMap;
use std::sync::Mutex;

/// Where an app keeps its per-chat positions between runs (a file, a database table, ...).
pub trait PositionStore: Send + Sync + 'static {
    /// Every chat's position, as saved.
    fn load(&self) -> Vec<(u64, u64)>;
    /// Saves a chat's position: the device holds every message of `chat` up to `seq`.
    fn save(&self, chat: u64, seq: u64);
}

/// Positions kept in memory (lost with the process).
#[derive(Debug, Default)]
pub struct MemoryPositions(Mutex<HashMap<u64, u64>>);

impl PositionStore for MemoryPositions {
    fn load(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = self
            .0
            .lock()
            .expect("positions lock")
            .iter()
            .map(|(&c, &s)| (c, s))
            .collect();
        v.sort_unstable();
        v
    }

    fn save(&self, chat: u64, seq: u64) {
        let mut map = self.0.lock().expect("positions lock");
        let e = map.entry(chat).or_insert(0);
        *e = (*e).max(seq);
    }
}

/// What [`Inbox::offer`] decided about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The next message of its chat: show it.
    New,
    /// Already held: drop it.
    Duplicate,
    /// Messages `from..=to` of the chat are missing before this one: fetch them first.
    Gap {
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
}

/// Per-chat positions with duplicate and gap detection.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    held: HashMap<u64, u64>,
}

impl Inbox {
    /// An inbox that already holds these positions.
    pub fn new(positions: impl IntoIterator<Item = (u64, u64)>) -> Self {
        Self {
            held: positions.into_iter().collect(),
        }
    }

    /// The highest seq held in `chat`, with everything before it (0: nothing).
    pub fn held(&self, chat: u64) -> u64 {
        self.held.get(&chat).copied().unwrap_or(0)
    }

    /// Every chat's position.
    pub fn positions(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = self.held.iter().map(|(&c, &s)| (c, s)).collect();
        v.sort_unstable();
        v
    }

    /// Classifies an arriving message; a `New` one moves the position.
    pub fn offer(&mut self, chat: u64, seq: u64) -> Offer {
        let held = self.held(chat);
        if seq <= held {
            Offer::Duplicate
        } else if seq == held + 1 {
            self.held.insert(chat, seq);
            Offer::New
        } else {
            Offer::Gap {
                from: held + 1,
                to: seq - 1,
            }
        }
    }

    /// Moves a chat's position forward over messages that can no longer be had (expired).
    pub fn skip_to(&mut self, chat: u64, seq: u64) {
        let e = self.held.entry(chat).or_insert(0);
        *e = (*e).max(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_gaps() {
        let mut inbox = Inbox::new([(7, 2)]);
        assert_eq!(inbox.offer(7, 2), Offer::Duplicate);
        assert_eq!(inbox.offer(7, 3), Offer::New);
        assert_eq!(inbox.offer(7, 6), Offer::Gap { from: 4, to: 5 });
        assert_eq!(inbox.held(7), 3, "a gap does not move the position");
        assert_eq!(inbox.offer(9, 1), Offer::New);
        inbox.skip_to(7, 5);
        assert_eq!(inbox.offer(7, 6), Offer::New);
        assert_eq!(inbox.positions(), vec![(7, 6), (9, 1)]);
    }

    #[test]
    fn memory_positions_only_move_forward() {
        let p = MemoryPositions::default();
        p.save(1, 5);
        p.save(1, 3);
        p.save(2, 1);
        assert_eq!(p.load(), vec![(1, 5), (2, 1)]);
    }
}
