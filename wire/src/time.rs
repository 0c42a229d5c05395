//! Wall-clock time as the protocol and the tokens carry it: milliseconds (message timestamps,
//! `server_time_ms`, UUIDv7 ids) and seconds (token expiry) since the Unix epoch.
//!
//! The codec reads no clock; this is the one place the crates above it (store, gateway, SDK,
//! tools, tests) read the wall clock for such values. A clock before 1970 reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

#[cfg(test)]
mod tests {
    #[test]
    fn seconds_and_milliseconds_agree() {
        let (ms, s) = (super::now_ms(), super::now_secs());
        assert!(ms > 1_700_000_000_000, "after 2023");
        assert!(s.abs_diff(ms / 1000) <= 1);
    }
}
