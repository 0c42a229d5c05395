//! Wake-up pacing for a shard's thread: at most one wake-up per interval while it is busy.
//!
//! A shard thread parks (in `epoll_wait`) whenever its runtime has nothing to run, and every
//! datagram or commit that arrives while it is parked wakes it again. At 20K msg/s on two
//! cores that was ~4,700 wake-ups a second per shard, each handling ~4 datagrams, and the
//! parking alone took ~11% of the gateway's CPU (docs/PERFORMANCE.md, "Wake-up pacing").
//!
//! So a busy shard waits out the rest of an interval before it parks: whatever arrives
//! meanwhile is handled in one turn after the wait, since the runtime then finds it ready and
//! does not block. This is interrupt moderation, as network cards do it: a thread woken less
//! often does more per wake-up. It costs at most one interval of latency for what arrives
//! during the wait, and only under load: a thread whose last two wake-ups came more than two
//! intervals apart parks at once, so a lone message is not delayed.
//!
//! The hooks run on the runtime's own thread ([`tokio::runtime::Builder::on_thread_park`] and
//! `on_thread_unpark`); [`Pacing::install`] adds them to a builder.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most a shard may wait before it parks: beyond this the wait is latency nobody wants.
pub const MAX_WAKE_INTERVAL: Duration = Duration::from_millis(10);

/// One shard thread's wake-up pacing.
#[derive(Debug)]
pub struct Pacing {
    interval: Duration,
    wakes: Mutex<Wakes>,
}

/// When the thread last woke, and the time before.
#[derive(Debug, Default, Clone, Copy)]
struct Wakes {
    last: Option<Instant>,
    before: Option<Instant>,
    /// Wake-ups so far.
    count: u64,
}

impl Wakes {
    /// How long a thread about to park at `now` waits first.
    fn delay(&self, interval: Duration, now: Instant) -> Duration {
        let (Some(last), Some(before)) = (self.last, self.before) else {
            return Duration::ZERO;
        };
        // Busy: the last two wake-ups came within two intervals (a paced thread wakes about
        // one interval apart, so it stays paced while work keeps coming).
        if last.saturating_duration_since(before) >= interval.saturating_mul(2) {
            return Duration::ZERO;
        }
        (last + interval).saturating_duration_since(now)
    }

    fn woke(&mut self, now: Instant) {
        self.before = self.last;
        self.last = Some(now);
        self.count += 1;
    }
}

impl Pacing {
    /// Pacing at `interval` (zero: none).
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            interval,
            wakes: Mutex::new(Wakes::default()),
        })
    }

    /// Adds the hooks to a runtime builder (none with a zero interval).
    pub fn install(self: &Arc<Self>, builder: &mut tokio::runtime::Builder) {
        if self.interval.is_zero() {
            return;
        }
        let park = self.clone();
        let unpark = self.clone();
        builder
            .on_thread_park(move || park.before_park())
            .on_thread_unpark(move || unpark.woke());
    }

    /// Waits out the rest of the interval if the thread is busy.
    fn before_park(&self) {
        let delay = self.lock().delay(self.interval, Instant::now());
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }

    fn woke(&self) {
        self.lock().woke(Instant::now());
    }

    /// How many times the thread woke from parking so far.
    pub fn wake_ups(&self) -> u64 {
        self.lock().count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wakes> {
        // Two instants: nothing a panic could leave half-written.
        self.wakes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: fn(u64) -> Duration = Duration::from_micros;

    #[test]
    fn a_busy_thread_waits_out_the_interval_and_an_idle_one_does_not() {
        let t = Instant::now();
        let iv = US(500);
        let mut w = Wakes::default();
        // No wake-up yet, then only one: nothing to go by.
        assert_eq!(w.delay(iv, t), Duration::ZERO);
        w.woke(t);
        assert_eq!(w.delay(iv, t + US(50)), Duration::ZERO);
        // Woken again 100 µs later: busy, so it parks only 500 µs after that wake-up.
        w.woke(t + US(100));
        assert_eq!(w.delay(iv, t + US(150)), US(450));
        // Work that took longer than the interval: no wait.
        assert_eq!(w.delay(iv, t + US(700)), Duration::ZERO);
        // A paced thread wakes ~one interval apart and stays paced.
        w.woke(t + US(600));
        assert_eq!(w.delay(iv, t + US(620)), US(480));
        // Two wake-ups two intervals apart or more: idle, no wait.
        w.woke(t + US(1600));
        assert_eq!(w.delay(iv, t + US(1610)), Duration::ZERO);
    }

    #[test]
    fn a_paced_runtime_wakes_at_most_once_per_interval_under_load() {
        // A task woken every 100 µs from another thread for 600 rounds: unpaced the runtime
        // parks and wakes for nearly every one; paced at 5 ms it wakes about once per 5 ms,
        // handling what came meanwhile in one turn.
        fn wake_ups(interval: Duration) -> (u64, Duration) {
            let pacing = Pacing::new(interval);
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all();
            if interval.is_zero() {
                // No pacing installs no hooks: count the wake-ups the same way by hand.
                let counting = pacing.clone();
                builder.on_thread_unpark(move || counting.woke());
            } else {
                pacing.install(&mut builder);
            }
            let rt = builder.build().expect("runtime");
            let notify = Arc::new(tokio::sync::Notify::new());
            let n = notify.clone();
            let started = Instant::now();
            let sender = std::thread::spawn(move || {
                for _ in 0..600 {
                    n.notify_one();
                    std::thread::sleep(US(100));
                }
            });
            rt.block_on(async {
                while !sender.is_finished() {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(20), notify.notified()).await;
                }
            });
            (pacing.wake_ups(), started.elapsed())
        }
        let (unpaced, _) = wake_ups(Duration::ZERO);
        let (paced, took) = wake_ups(Duration::from_millis(5));
        // At most one wake-up per 5 ms of the run, plus the idle ones at its ends.
        let most = took.as_millis() as u64 / 5 + 4;
        assert!(paced <= most, "paced: {paced} wake-ups in {took:?}");
        // And far fewer than without pacing (which wakes for most of the 600).
        assert!(
            paced * 3 < unpaced,
            "paced {paced} wake-ups, unpaced {unpaced}"
        );
    }
}
