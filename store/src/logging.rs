//! Log lines that cannot flood: a failure that repeats for every request (a full disk refuses
//! every send) is logged once, then at most once per interval with the count of the lines left
//! out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one line through per interval and counts the rest.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(LimiterState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written at `now`: `Some(n)` with the number of lines left out
    /// since the last one written, or `None` (and this one is counted).
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

/// Logs at `$level` (`error`, `warn`, ...) through `limiter`, saying how many like lines
/// were left out.
#[macro_export]
#[doc(hidden)]
macro_rules! __limited {
    ($level:ident, $limiter:expr, $($arg:tt)+) => {
        if let Some(left_out) = $limiter.allow(::std::time::Instant::now()) {
            if left_out > 0 {
                ::tracing::$level!(left_out, $($arg)+);
            } else {
                ::tracing::$level!($($arg)+);
            }
        }
    };
}

/// Logs at ERROR through a [`LogLimiter`].
#[macro_export]
#[doc(hidden)]
macro_rules! __limited_error {
    ($($arg:tt)+) => { $crate::__limited!(error, $($arg)+) };
}

/// Logs at WARN through a [`LogLimiter`].
#[macro_export]
#[doc(hidden)]
macro_rules! __limited_warn {
    ($($arg:tt)+) => { $crate::__limited!(warn, $($arg)+) };
}

pub use crate::__limited_error as limited_error;
pub use crate::__limited_warn as limited_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_a_count_of_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(l.allow(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(l.allow(t0 + Duration::from_secs(11)), None);
    }
}
