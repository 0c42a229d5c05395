//! Acks of one session, coalesced per chat (latest wins) and written by at most one task in
//! bounded batches.
//!
//! An `Ack` used to cost a task and a store write each: a flood of them grew memory without
//! bound and stalled other users' writes. Now an ack only updates this session's pending map
//! (one entry per chat, at most [`MAX_PENDING_CHATS`]); a single writer task per session takes
//! up to [`ACK_BATCH`] entries at a time and stores them in one write, so a million acks of one
//! chat cost a handful of writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use courier_net::io::Outbound;
use courier_store::Store;

use crate::session::store_error_frame;

/// Most chats with an ack waiting to be written, per session; an ack for a further chat is
/// refused with `RATE_LIMITED`. Memory: about 24 bytes per entry, ~24 KB per connection at most.
pub(crate) const MAX_PENDING_CHATS: usize = 1024;

/// Most acks stored in one write.
pub(crate) const ACK_BATCH: usize = 256;

/// What [`AckQueue::offer`] did with an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Queued; no writer was running, so the caller starts one ([`write`]).
    StartWriter,
    /// Queued (or merged into a queued ack of the same chat); the running writer takes it.
    Queued,
    /// Too many chats wait already.
    Full,
}

#[derive(Default)]
struct Inner {
    /// chat -> (highest seq acked, the request id that acked it).
    pending: HashMap<u64, (u64, u32)>,
    writing: bool,
}

/// One session's acks that are not stored yet.
#[derive(Default)]
pub(crate) struct AckQueue {
    inner: Mutex<Inner>,
}

impl AckQueue {
    /// Queues "this device holds `chat` up to `seq`"; a later, higher ack of the same chat
    /// replaces it.
    pub(crate) fn offer(&self, chat: u64, seq: u64, request_id: u32) -> Offered {
        let mut inner = self.inner.lock().expect("ack queue lock");
        let full = inner.pending.len() >= MAX_PENDING_CHATS;
        match inner.pending.get_mut(&chat) {
            Some(e) => {
                if seq >= e.0 {
                    *e = (seq, request_id);
                }
            }
            None if full => return Offered::Full,
            None => {
                inner.pending.insert(chat, (seq, request_id));
            }
        }
        if inner.writing {
            Offered::Queued
        } else {
            inner.writing = true;
            Offered::StartWriter
        }
    }

    /// Up to `max` pending acks, taken out; none (and the writer marked stopped) when empty.
    fn take(&self, max: usize) -> Vec<(u64, u64, u32)> {
        let mut inner = self.inner.lock().expect("ack queue lock");
        if inner.pending.is_empty() {
            inner.writing = false;
            inner.pending = HashMap::new(); // give the capacity back
            return Vec::new();
        }
        let chats: Vec<u64> = inner.pending.keys().take(max).copied().collect();
        chats
            .into_iter()
            .filter_map(|c| inner.pending.remove(&c).map(|(s, r)| (c, s, r)))
            .collect()
    }
}

/// The writer task: stores the queue's acks in batches until it is empty. Failures are told
/// to the client under the request id of the ack that was written. The tuple is the session's
/// user, device and protocol version.
pub(crate) async fn write(
    queue: Arc<AckQueue>,
    store: Store,
    (user, device, version): (String, u32, u16),
    out: Outbound,
) {
    loop {
        let batch = queue.take(ACK_BATCH);
        if batch.is_empty() {
            return;
        }
        let acks = batch.iter().map(|&(c, s, _)| (c, s)).collect();
        let results = match store.ack_many(&user, device, acks).await {
            Ok(r) => r,
            Err(e) => vec![Err(e); batch.len()],
        };
        for ((_, _, request_id), r) in batch.iter().zip(results) {
            if let Err(e) = r {
                if out
                    .send(store_error_frame(version, *request_id, &user, &e))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_coalesce_per_chat_latest_wins_and_are_bounded() {
        let q = AckQueue::default();
        assert_eq!(q.offer(1, 5, 10), Offered::StartWriter);
        assert_eq!(q.offer(1, 9, 11), Offered::Queued);
        assert_eq!(
            q.offer(1, 7, 12),
            Offered::Queued,
            "an older ack changes nothing"
        );
        assert_eq!(q.take(10), vec![(1, 9, 11)]);
        for c in 0..MAX_PENDING_CHATS as u64 {
            q.offer(100 + c, 1, 1);
        }
        assert_eq!(q.offer(5, 1, 1), Offered::Full);
        assert_eq!(
            q.offer(100, 2, 2),
            Offered::Queued,
            "a queued chat still merges"
        );
        let mut taken = 0;
        loop {
            let b = q.take(ACK_BATCH);
            assert!(b.len() <= ACK_BATCH);
            if b.is_empty() {
                break;
            }
            taken += b.len();
        }
        assert_eq!(taken, MAX_PENDING_CHATS);
        assert_eq!(
            q.offer(1, 1, 1),
            Offered::StartWriter,
            "an empty queue stopped its writer"
        );
    }
}
