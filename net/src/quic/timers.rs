//! The deadlines of an endpoint's connections: a binary min-heap indexed by connection.
//!
//! quinn-proto moves a connection's deadline with nearly every packet (the idle timeout, the
//! loss-detection and ACK-delay timers), so the driver changes a deadline several times per
//! message. An ordered set pays a removal and an insertion, each a search of the set, for every
//! change; here a connection's entry stays in place in the heap and moves up or down by the
//! change, and it is found through an index by connection in constant time.

use std::time::Instant;

/// The index of a connection without an entry.
const ABSENT: usize = usize::MAX;

/// At most one deadline per connection (by quinn-proto's connection index), earliest first.
#[derive(Default)]
pub(super) struct Timers {
    heap: Vec<(Instant, usize)>,
    /// Where each connection's entry is in `heap`, by connection index ([`ABSENT`]: none).
    /// Indices are quinn-proto's slab indices, dense from 0, so this holds a word per
    /// connection the endpoint has held at once at most.
    slot: Vec<usize>,
}

impl Timers {
    /// Sets, moves or (`None`) removes the deadline of connection `conn`; the same deadline
    /// again costs nothing.
    pub(super) fn set(&mut self, conn: usize, at: Option<Instant>) {
        let i = self.slot.get(conn).copied().unwrap_or(ABSENT);
        match (at, i) {
            (None, ABSENT) => {}
            (None, i) => self.remove_at(i),
            (Some(at), ABSENT) => {
                if self.slot.len() <= conn {
                    self.slot.resize(conn + 1, ABSENT);
                }
                let i = self.heap.len();
                self.heap.push((at, conn));
                self.slot[conn] = i;
                self.up(i);
            }
            (Some(at), i) => {
                let old = std::mem::replace(&mut self.heap[i].0, at);
                if at < old {
                    self.up(i);
                } else if at > old {
                    self.down(i);
                }
            }
        }
    }

    /// The earliest deadline and its connection.
    pub(super) fn first(&self) -> Option<(Instant, usize)> {
        self.heap.first().copied()
    }

    /// Removes and returns the connection of the earliest deadline if it is at or before `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let &(at, c) = self.heap.first()?;
        if at > now {
            return None;
        }
        self.remove_at(0);
        Some(c)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }

    fn remove_at(&mut self, i: usize) {
        let last = self.heap.len() - 1;
        self.swap(i, last);
        let (_, c) = self.heap.pop().expect("an entry at i");
        self.slot[c] = ABSENT;
        if i < self.heap.len() {
            self.up(i);
            self.down(i);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.slot[self.heap[a].1] = a;
        self.slot[self.heap[b].1] = b;
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].0 <= self.heap[i].0 {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let left = 2 * i + 1;
            if left >= self.heap.len() {
                break;
            }
            let right = left + 1;
            let child = if right < self.heap.len() && self.heap[right].0 < self.heap[left].0 {
                right
            } else {
                left
            };
            if self.heap[i].0 <= self.heap[child].0 {
                break;
            }
            self.swap(i, child);
            i = child;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn agrees_with_an_ordered_map_under_random_changes() {
        let base = Instant::now();
        let mut timers = Timers::default();
        let mut model: BTreeMap<usize, Instant> = BTreeMap::new();
        // Seeded, so that a failure repeats.
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
        let mut now = base;
        for step in 0..20_000 {
            let conn = rng.random_range(0..200usize);
            match rng.random_range(0..10) {
                0..=5 => {
                    let at = now + Duration::from_micros(rng.random_range(0..50_000));
                    timers.set(conn, Some(at));
                    model.insert(conn, at);
                }
                6 => {
                    timers.set(conn, None);
                    model.remove(&conn);
                }
                _ => {
                    now += Duration::from_micros(rng.random_range(0..5_000));
                    while let Some(c) = timers.pop_due(now) {
                        let at = model
                            .remove(&c)
                            .expect("popped a connection with a deadline");
                        assert!(at <= now, "step {step}: popped a deadline not due");
                        let earliest = model.values().min();
                        assert!(
                            earliest.is_none_or(|&e| e >= at),
                            "step {step}: out of order"
                        );
                    }
                    assert!(
                        model.values().all(|&at| at > now),
                        "step {step}: a due one left"
                    );
                }
            }
            assert_eq!(timers.len(), model.len());
            let first = model.iter().min_by_key(|(_, at)| **at).map(|(_, at)| *at);
            assert_eq!(timers.first().map(|(at, _)| at), first, "step {step}");
        }
    }

    #[test]
    fn moves_a_deadline_later_and_earlier_in_place() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut timers = Timers::default();
        timers.set(3, Some(t + ms(30)));
        timers.set(7, Some(t + ms(10)));
        timers.set(1, Some(t + ms(20)));
        assert_eq!(timers.first(), Some((t + ms(10), 7)));
        // Later: connection 1 now comes first.
        timers.set(7, Some(t + ms(40)));
        assert_eq!(timers.first(), Some((t + ms(20), 1)));
        // Earlier than everything.
        timers.set(3, Some(t + ms(5)));
        assert_eq!(timers.first(), Some((t + ms(5), 3)));
        assert_eq!(timers.len(), 3);
        timers.set(3, None);
        timers.set(3, None);
        assert_eq!(timers.pop_due(t + ms(19)), None);
        assert_eq!(timers.pop_due(t + ms(50)), Some(1));
        assert_eq!(timers.pop_due(t + ms(50)), Some(7));
        assert_eq!(timers.pop_due(t + ms(50)), None);
        assert_eq!(timers.first(), None);
        // A connection index seen before gets an entry again.
        timers.set(7, Some(t));
        assert_eq!(timers.first(), Some((t, 7)));
    }
}
