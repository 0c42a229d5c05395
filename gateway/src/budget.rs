//! The request budget of one connection: how many frames other than sends it may send a second.
//!
//! Sends are bounded by the in-flight limit; every other request (acks, pings, syncs, chat
//! lookups, typing) draws from a token bucket. A request over the budget is answered
//! `RATE_LIMITED` with the time until the next token; a connection that keeps sending after
//! being told (more than [`MAX_REFUSED_PER_SECOND`] refusals within a second) is closed with
//! `RATE_LIMITED`. The bucket is a few numbers: nothing a client sends makes it grow.

use std::time::{Duration, Instant};

/// Requests (other than sends) a connection may make per second, sustained.
pub(crate) const REQUESTS_PER_SECOND: u32 = 1000;

/// Requests a connection may make at once after being quiet (a sync burst of acks fits).
pub(crate) const REQUEST_BURST: u32 = 2000;

/// Refusals within one second after which the connection is closed.
pub(crate) const MAX_REFUSED_PER_SECOND: u32 = 1000;

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Serve it.
    Allow,
    /// Refuse it with `RATE_LIMITED`; a token is available again after this long.
    Refuse { retry_after: Duration },
    /// The client ignores refusals: close the connection.
    Close,
}

/// A token bucket with a count of recent refusals.
#[derive(Debug)]
pub(crate) struct Budget {
    tokens: f64,
    refilled: Instant,
    window: Instant,
    refused: u32,
}

impl Budget {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            tokens: f64::from(REQUEST_BURST),
            refilled: now,
            window: now,
            refused: 0,
        }
    }

    /// Takes one token for a request arriving at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> Verdict {
        let rate = f64::from(REQUESTS_PER_SECOND);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(REQUEST_BURST));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.refused = 0;
        }
        self.refused += 1;
        if self.refused > MAX_REFUSED_PER_SECOND {
            return Verdict::Close;
        }
        let wait = (1.0 - self.tokens) / rate;
        Verdict::Refuse {
            retry_after: Duration::from_secs_f64(wait).max(Duration::from_millis(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_a_flood_is_refused_then_closed() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        for _ in 0..REQUEST_BURST {
            assert_eq!(b.take(t0), Verdict::Allow);
        }
        let Verdict::Refuse { retry_after } = b.take(t0) else {
            panic!("over the burst is refused")
        };
        assert_eq!(retry_after, Duration::from_millis(1));
        for _ in 1..MAX_REFUSED_PER_SECOND {
            assert!(matches!(b.take(t0), Verdict::Refuse { .. }));
        }
        assert_eq!(b.take(t0), Verdict::Close);
    }

    #[test]
    fn the_sustained_rate_is_never_refused() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        let step = Duration::from_secs(1) / REQUESTS_PER_SECOND;
        for i in 0..(10 * REQUESTS_PER_SECOND) {
            assert_eq!(b.take(t0 + step * i), Verdict::Allow);
        }
    }

    #[test]
    fn refusals_are_counted_per_second() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        for _ in 0..REQUEST_BURST {
            b.take(t0);
        }
        // 600 refusals, then a second later 600 more: never closed.
        for _ in 0..600 {
            assert!(matches!(b.take(t0), Verdict::Refuse { .. }));
        }
        let t1 = t0 + Duration::from_millis(1001);
        for _ in 0..1000 {
            b.take(t1);
        }
        for _ in 0..600 {
            assert!(matches!(b.take(t1), Verdict::Refuse { .. }));
        }
    }
}
