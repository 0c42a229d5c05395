//! A connection's outbound queue of encoded frames, and wake-ups batched per shard.
//!
//! [`Outbound`] is a bounded multi-producer queue (in frames and in bytes) drained by one
//! [`Receiver`], the connection's writer task. It is ours rather than a tokio channel for one
//! reason: who wakes the writer, and when. A tokio channel wakes its receiver on every send,
//! and a wake-up from another thread schedules the task from outside its runtime, which
//! costs a lock and an `eventfd` write and pulls the shard's thread out of `epoll_wait`, once
//! per frame. The store's commit thread hands every committed message to the writers of its
//! recipients, so that cost was paid per message on the one thread a node's commits pass.
//!
//! Here a thread that hands out a batch of frames calls [`defer_wakes`] first and
//! [`flush_wakes`] after: in between, a writer's wake-up is kept instead of done, grouped by
//! the writer's [`Home`] (its shard), and the flush hands each home its writers' wakers under
//! one lock with one cross-thread wake-up, after which the home's own task wakes them from
//! inside the shard, where a wake-up is a push onto the local run queue. A writer woken
//! twice in one batch is woken once. Without a deferral, or for a writer with no home (the
//! SDK's), a wake-up is done at once, as a channel's would be.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

/// The queue is full (in frames or in bytes): the peer does not read fast enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// No room now.
    Full,
    /// The writer is gone: the connection is closing.
    Closed,
}

/// The writer is gone: the connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// What producers and the writer share.
struct Shared {
    state: Mutex<State>,
    /// Most frames queued, reserved places included.
    depth: usize,
    /// Most bytes queued (a frame larger than this goes once the queue is empty).
    max_bytes: usize,
    /// Room was made (frames written) or the queue closed: producers waiting try again.
    drained: Notify,
    /// The shard the writer runs on, whose task does its deferred wake-ups.
    home: Option<Arc<Home>>,
}

struct State {
    frames: VecDeque<Bytes>,
    /// Places held by [`Slot`]s, not yet filled.
    reserved: usize,
    /// Bytes queued and taken but not yet written.
    bytes: usize,
    /// Live [`Outbound`] handles; with no handle and no slot left, the writer ends.
    senders: usize,
    /// The writer closed the queue or is gone: nothing more is taken.
    closed: bool,
    /// The writer, when it waits for frames.
    waker: Option<Waker>,
}

impl State {
    /// Queues `frame` (room already checked); the writer's waker, if it waits.
    fn enqueue(&mut self, frame: Bytes) -> Option<Waker> {
        self.bytes += frame.len();
        self.frames.push_back(frame);
        self.waker.take()
    }

    /// Whether one more frame (or reserved place) fits the frame limit `depth`.
    fn has_place(&self, depth: usize) -> bool {
        self.frames.len() + self.reserved < depth
    }

    /// The writer's waker when the last handle or slot is gone (it then ends).
    fn waker_if_ended(&mut self) -> Option<Waker> {
        if self.senders == 0 && self.reserved == 0 {
            self.waker.take()
        } else {
            None
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue consistent (every update is a
        // single step), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the writer (at once, or at the thread's next [`flush_wakes`]).
    fn wake(&self, waker: Option<Waker>) {
        let Some(waker) = waker else { return };
        match &self.home {
            Some(home) => defer_or_wake(home, waker),
            None => waker.wake(),
        }
    }
}

/// A connection's outbound queue of encoded frames, bounded in frames and in bytes: a peer
/// that does not read holds at most the byte limit (plus one frame, and the small answers
/// reserved with [`Outbound::reserve`]), however large the frames. Cheap to clone.
pub struct Outbound {
    shared: Arc<Shared>,
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.shared.lock();
            s.senders -= 1;
            s.waker_if_ended()
        };
        self.shared.wake(waker);
    }
}

impl Outbound {
    /// A queue of at most `depth` frames and `max_bytes` bytes, and its receiving end, whose
    /// deferred wake-ups go through `home` (see the module docs).
    pub fn new(depth: usize, max_bytes: usize, home: Option<Arc<Home>>) -> (Self, Receiver) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                reserved: 0,
                bytes: 0,
                senders: 1,
                closed: false,
                waker: None,
            }),
            depth: depth.max(1),
            max_bytes,
            drained: Notify::new(),
            home,
        });
        (
            Self {
                shared: shared.clone(),
            },
            Receiver { shared },
        )
    }

    /// A queue of `depth` frames read by the caller instead of a writer task (session tests,
    /// in-process peers). Nothing credits bytes back, so it has no byte limit.
    pub fn channel(depth: usize) -> (Self, Receiver) {
        Self::new(depth, usize::MAX, None)
    }

    /// Queues `frame`, waiting while the queue is full (in frames or bytes). A frame larger
    /// than the byte limit goes once the queue is empty.
    pub async fn send(&self, frame: Bytes) -> Result<(), Closed> {
        let mut frame = Some(frame);
        loop {
            let drained = self.shared.drained.notified();
            match self.push(&mut frame) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed) => return Err(Closed),
                Err(PushError::Full) => drained.await,
            }
        }
    }

    /// Queues `frame` now, or says why not.
    pub fn try_send(&self, frame: Bytes) -> Result<(), PushError> {
        self.push(&mut Some(frame))
    }

    /// Queues the frame in `frame` (taking it) if there is room.
    fn push(&self, frame: &mut Option<Bytes>) -> Result<(), PushError> {
        let waker = {
            let mut s = self.shared.lock();
            if s.closed {
                return Err(PushError::Closed);
            }
            let len = frame.as_ref().map_or(0, Bytes::len);
            let over_bytes = s.bytes != 0 && s.bytes.saturating_add(len) > self.shared.max_bytes;
            if over_bytes || !s.has_place(self.shared.depth) {
                return Err(PushError::Full);
            }
            let Some(frame) = frame.take() else {
                return Ok(());
            };
            s.enqueue(frame)
        };
        self.shared.wake(waker);
        Ok(())
    }

    /// A place in the queue for one small answer (a `SendOk` or a bounded `Error`) that
    /// another thread fills later without waiting. It counts against the frame limit, not the
    /// byte limit.
    pub async fn reserve(&self) -> Result<Slot, Closed> {
        loop {
            let drained = self.shared.drained.notified();
            {
                let mut s = self.shared.lock();
                if s.closed {
                    return Err(Closed);
                }
                if s.has_place(self.shared.depth) {
                    s.reserved += 1;
                    return Ok(Slot {
                        shared: Some(self.shared.clone()),
                    });
                }
            }
            drained.await;
        }
    }
}

/// A reserved place in an [`Outbound`] queue; dropped unfilled, the place is given back.
pub struct Slot {
    /// `None` once filled.
    shared: Option<Arc<Shared>>,
}

impl Slot {
    /// Fills the place; never waits. Dropped if the writer is gone.
    pub fn send(mut self, frame: Bytes) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let waker = {
            let mut s = shared.lock();
            s.reserved -= 1;
            if s.closed {
                None
            } else {
                s.enqueue(frame)
            }
        };
        shared.wake(waker);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let waker = {
            let mut s = shared.lock();
            s.reserved -= 1;
            s.waker_if_ended()
        };
        shared.drained.notify_waiters();
        shared.wake(waker);
    }
}

/// The writer's end of an [`Outbound`] queue.
pub struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// Moves up to `limit` queued frames into `into`, waiting for one; 0 once the queue is
    /// closed, or every [`Outbound`] and [`Slot`] is gone, and nothing is left in it. Taken
    /// frames still count against the byte limit until [`Receiver::written`].
    pub async fn recv_many(&mut self, into: &mut Vec<Bytes>, limit: usize) -> usize {
        poll_fn(|cx| {
            let mut s = self.shared.lock();
            if !s.frames.is_empty() {
                let n = s.frames.len().min(limit.max(1));
                into.extend(s.frames.drain(..n));
                return Poll::Ready(n);
            }
            if s.closed || (s.senders == 0 && s.reserved == 0) {
                return Poll::Ready(0);
            }
            match &mut s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next frame, or `None` as [`Receiver::recv_many`] returns 0. Its bytes are
    /// credited back at once.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let mut one = Vec::with_capacity(1);
        if self.recv_many(&mut one, 1).await == 0 {
            return None;
        }
        let frame = one.pop();
        self.written(frame.as_ref().map_or(0, Bytes::len));
        frame
    }

    /// `bytes` of taken frames were written: their room is free again.
    pub fn written(&self, bytes: usize) {
        {
            let mut s = self.shared.lock();
            s.bytes = s.bytes.saturating_sub(bytes);
        }
        self.shared.drained.notify_waiters();
    }

    /// Takes nothing more: producers get [`Closed`] from now on, and what is queued is
    /// dropped.
    pub fn close(&mut self) {
        {
            let mut s = self.shared.lock();
            s.closed = true;
            s.frames.clear();
        }
        self.shared.drained.notify_waiters();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

/// A shard's task that does the wake-ups other threads deferred for its writers.
pub struct Home {
    wakers: Mutex<Vec<Waker>>,
    notify: Notify,
}

/// Wake-ups kept for each home during a deferral.
type Deferred = Vec<(Arc<Home>, Vec<Waker>)>;

thread_local! {
    /// The home of writers started on this thread ([`Home::install`]).
    static HOME: RefCell<Option<Arc<Home>>> = const { RefCell::new(None) };
    /// This thread's deferred wake-ups, by home, while a deferral is open.
    static DEFERRED: RefCell<Option<Deferred>> = const { RefCell::new(None) };
}

impl Home {
    /// Starts this runtime's home task and makes it the home of the writers started on this
    /// thread from now on. For a shard's thread, inside its current-thread runtime.
    pub fn install() -> Arc<Self> {
        let home = Arc::new(Self {
            wakers: Mutex::new(Vec::new()),
            notify: Notify::new(),
        });
        let task = home.clone();
        tokio::spawn(async move {
            let mut woken = Vec::new();
            loop {
                task.notify.notified().await;
                std::mem::swap(
                    &mut woken,
                    &mut *task.wakers.lock().unwrap_or_else(|e| e.into_inner()),
                );
                for w in woken.drain(..) {
                    w.wake();
                }
            }
        });
        HOME.with(|h| *h.borrow_mut() = Some(home.clone()));
        home
    }

    /// The home installed on this thread, if any.
    pub fn current() -> Option<Arc<Self>> {
        HOME.with(|h| h.borrow().clone())
    }

    /// Hands `wakers` to the home task: one lock, and one wake-up if it had none pending.
    fn hand(&self, wakers: &mut Vec<Waker>) {
        let first = {
            let mut pending = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
            let first = pending.is_empty();
            pending.append(wakers);
            first
        };
        if first {
            self.notify.notify_one();
        }
    }
}

/// Keeps `waker` for the thread's open deferral (to be handed to `home`), or wakes it now.
fn defer_or_wake(home: &Arc<Home>, waker: Waker) {
    let waker = DEFERRED.with(|d| match &mut *d.borrow_mut() {
        Some(groups) => {
            match groups.iter_mut().find(|(h, _)| Arc::ptr_eq(h, home)) {
                Some((_, ws)) => ws.push(waker),
                None => groups.push((home.clone(), vec![waker])),
            }
            None
        }
        None => Some(waker),
    });
    if let Some(w) = waker {
        w.wake();
    }
}

/// Opens a deferral on this thread: writers' wake-ups wait for [`flush_wakes`]. One already
/// open goes on.
pub fn defer_wakes() {
    DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(Vec::new());
        }
    });
}

/// Closes this thread's deferral, handing every kept wake-up to its home.
pub fn flush_wakes() {
    let groups = DEFERRED.with(|d| d.borrow_mut().take());
    for (home, mut wakers) in groups.into_iter().flatten() {
        home.hand(&mut wakers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[tokio::test]
    async fn bounded_in_frames_and_bytes() {
        let (out, mut rx) = Outbound::new(3, 100, None);
        out.try_send(frame(60)).unwrap();
        assert_eq!(out.try_send(frame(60)), Err(PushError::Full), "byte limit");
        out.try_send(frame(40)).unwrap();
        let mut got = Vec::new();
        assert_eq!(rx.recv_many(&mut got, 10).await, 2);
        // Taken but not written: still counted.
        assert_eq!(out.try_send(frame(1)), Err(PushError::Full));
        rx.written(100);
        out.try_send(frame(1)).unwrap();
        out.try_send(frame(1)).unwrap();
        let _slot = out.reserve().await.unwrap();
        assert_eq!(out.try_send(frame(1)), Err(PushError::Full), "frame limit");
    }

    #[tokio::test]
    async fn an_oversized_frame_goes_when_the_queue_is_empty() {
        let (out, mut rx) = Outbound::new(8, 10, None);
        out.try_send(frame(50)).unwrap();
        let sender = out.clone();
        let waiting = tokio::spawn(async move { sender.send(frame(50)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert_eq!(rx.recv().await.map(|f| f.len()), Some(50));
        waiting.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.map(|f| f.len()), Some(50));
    }

    #[tokio::test]
    async fn ends_when_every_sender_and_slot_is_gone() {
        let (out, mut rx) = Outbound::new(8, usize::MAX, None);
        let slot = out.reserve().await.unwrap();
        out.try_send(frame(1)).unwrap();
        drop(out);
        assert!(rx.recv().await.is_some());
        let filler = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            slot.send(frame(2));
        });
        assert_eq!(
            rx.recv().await.map(|f| f.len()),
            Some(2),
            "the slot's answer"
        );
        filler.await.unwrap();
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn an_unfilled_slot_gives_its_place_back() {
        let (out, _rx) = Outbound::new(1, usize::MAX, None);
        let slot = out.reserve().await.unwrap();
        assert_eq!(out.try_send(frame(1)), Err(PushError::Full));
        drop(slot);
        out.try_send(frame(1)).unwrap();
    }

    #[tokio::test]
    async fn closed_refuses_and_wakes_waiting_producers() {
        let (out, mut rx) = Outbound::new(1, usize::MAX, None);
        out.try_send(frame(1)).unwrap();
        let sender = out.clone();
        let waiting = tokio::spawn(async move { sender.send(frame(1)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        rx.close();
        assert_eq!(waiting.await.unwrap(), Err(Closed));
        assert_eq!(out.try_send(frame(1)), Err(PushError::Closed));
        assert!(matches!(out.reserve().await, Err(Closed)));
        assert_eq!(rx.recv().await, None);
    }

    /// Frames handed out from another thread inside a deferral reach the writer only after
    /// the flush, through the home task, and every one of them arrives.
    #[test]
    fn deferred_wakes_reach_writers_after_the_flush() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (outs, done) = rt.block_on(async {
            let _home = Home::install();
            let mut outs = Vec::new();
            let mut writers = Vec::new();
            for _ in 0..4 {
                let (out, mut rx) = Outbound::new(64, usize::MAX, Home::current());
                outs.push(out);
                writers.push(tokio::spawn(async move {
                    let mut n = 0;
                    while let Some(f) = rx.recv().await {
                        n += f.len();
                    }
                    n
                }));
            }
            (outs, writers)
        });
        let producer = std::thread::spawn(move || {
            for round in 0..50 {
                defer_wakes();
                for out in &outs {
                    out.try_send(frame(1)).unwrap();
                    out.try_send(frame(round % 3 + 1)).unwrap();
                }
                flush_wakes();
                std::thread::sleep(Duration::from_millis(1));
            }
            // Dropping the handles (outside a deferral) ends the writers.
        });
        let counts = rt.block_on(async {
            let mut counts = Vec::new();
            for w in done {
                counts.push(tokio::time::timeout(Duration::from_secs(10), w).await);
            }
            counts
        });
        producer.join().unwrap();
        let expected: usize = (0..50).map(|r| 1 + r % 3 + 1).sum();
        for c in counts {
            assert_eq!(c.expect("writer finished").unwrap(), expected);
        }
    }

    #[test]
    fn a_deferral_holds_the_wake_until_flushed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _home = Home::install();
            let (out, mut rx) = Outbound::new(8, usize::MAX, Home::current());
            let writer = tokio::spawn(async move { rx.recv().await });
            tokio::task::yield_now().await; // the writer waits
            defer_wakes();
            out.try_send(frame(3)).unwrap();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(!writer.is_finished(), "woken before the flush");
            flush_wakes();
            let got = tokio::time::timeout(Duration::from_secs(5), writer).await;
            assert_eq!(got.unwrap().unwrap().map(|f| f.len()), Some(3));
        });
    }
}
