//! A timer precise to a quarter of a millisecond for the open loop's schedule.
//!
//! Tokio's timer wheel ticks in whole milliseconds and rounds every deadline up to the next
//! tick, so a sender waking with `tokio::time::sleep_until` goes out 0–1 ms after its intended
//! time (measured: 0.75 ms median, 1.9 ms p99 at 20K msg/s). Latency is measured from the
//! intended time, so that error landed in every send->Deliver figure although the gateway
//! never saw it. The [`Pacer`] keeps every sleeping sender's deadline in one heap on its own
//! thread, which sleeps on a condition variable (a futex with a high-resolution timeout) until
//! the earliest and then wakes every sender that is due. Senders due close together are woken
//! in one pass, and the thread sleeps at least a [`QUANTUM`] between passes (a sender with a
//! new earliest deadline wakes it sooner; with thousands of senders that is rare).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The least time between two passes of the pacing thread. Senders due within one quantum go
/// out together, so the thread (and the runtime workers it wakes) wakes about 4,000 times a
/// second at most. Measured at 20K msg/s on two cores shared with the gateway: with no quantum (a pass
/// per sender, about 20,000 wake-ups a second) the pacer cost the load generator ~0.15 of a
/// core more and the wake-ups starved the gateway (p99 13–92 ms); 100 µs, 250 µs and 500 µs
/// cost about the same as tokio's timer and send 170, 260 and 420 µs late at the median.
const QUANTUM: Duration = Duration::from_micros(250);

/// The pacing thread; stopped and joined on drop.
pub(crate) struct Pacer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What senders hold to sleep on the pacer.
#[derive(Clone)]
pub(crate) struct PacerHandle(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    due: BinaryHeap<Reverse<Entry>>,
    stopped: bool,
}

struct Entry {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

impl Pacer {
    /// Starts the pacing thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("loadgen-pacer".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run()
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    pub(crate) fn handle(&self) -> PacerHandle {
        PacerHandle(self.shared.clone())
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.shared.state.lock().expect("pacer lock").stopped = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn run(&self) {
        let mut woken = Vec::new();
        let mut state = self.state.lock().expect("pacer lock");
        loop {
            if state.stopped {
                // Whoever still sleeps must not hang: wake them (they see their time passed
                // or, polled early, register again and find the pacer stopped).
                woken.extend(state.due.drain().map(|Reverse(e)| e.waker));
                drop(state);
                woken.drain(..).for_each(Waker::wake);
                return;
            }
            let now = Instant::now();
            while state.due.peek().is_some_and(|Reverse(e)| e.at <= now) {
                let Reverse(e) = state.due.pop().expect("peeked");
                woken.push(e.waker);
            }
            if !woken.is_empty() {
                drop(state);
                woken.drain(..).for_each(Waker::wake);
                state = self.state.lock().expect("pacer lock");
                continue;
            }
            state = match state.due.peek().map(|Reverse(e)| e.at.max(now + QUANTUM)) {
                Some(at) => {
                    self.wake
                        .wait_timeout(state, at.saturating_duration_since(now))
                        .expect("pacer lock")
                        .0
                }
                None => self.wake.wait(state).expect("pacer lock"),
            };
        }
    }
}

impl PacerHandle {
    /// Completes at `at` (up to a [`QUANTUM`] and the kernel's timer slack later), or at once
    /// if `at` has passed or the pacer has stopped.
    pub(crate) fn sleep_until(&self, at: Instant) -> Sleep {
        Sleep {
            shared: self.0.clone(),
            at,
        }
    }
}

/// The future of [`PacerHandle::sleep_until`].
pub(crate) struct Sleep {
    shared: Arc<Shared>,
    at: Instant,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        let mut state = self.shared.state.lock().expect("pacer lock");
        if state.stopped {
            return Poll::Ready(());
        }
        let earliest = state.due.peek().is_none_or(|Reverse(e)| self.at < e.at);
        state.due.push(Reverse(Entry {
            at: self.at,
            waker: cx.waker().clone(),
        }));
        drop(state);
        if earliest {
            self.shared.wake.notify_one();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleepers_wake_in_deadline_order_and_never_early() {
        let pacer = Pacer::start().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let mut tasks = Vec::new();
        // Registered latest-first, so the heap (not arrival order) decides.
        for i in (0..20u64).rev() {
            let (h, order) = (pacer.handle(), order.clone());
            let at = start + Duration::from_millis(5 + 2 * i);
            tasks.push(tokio::spawn(async move {
                h.sleep_until(at).await;
                assert!(Instant::now() >= at, "woke before its deadline");
                order.lock().unwrap().push(i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_past_deadline_is_ready_and_a_stopped_pacer_releases_sleepers() {
        let pacer = Pacer::start().unwrap();
        let h = pacer.handle();
        h.sleep_until(Instant::now()).await;
        let far = Instant::now() + Duration::from_secs(3600);
        let sleeper = tokio::spawn({
            let h = h.clone();
            async move { h.sleep_until(far).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(pacer);
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("released when the pacer stops")
            .unwrap();
        // And later sleeps on a stopped pacer do not hang either.
        tokio::time::timeout(Duration::from_secs(5), h.sleep_until(far))
            .await
            .expect("stopped pacer");
    }
}
