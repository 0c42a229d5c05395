//! Small helpers the gateway's modules share: wall-clock milliseconds, hex, and a cached
//! credential that is renewed after a while.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A value (a provider token) made or read once and reused for `lifetime`.
pub(crate) struct Cached {
    lifetime: Duration,
    slot: Mutex<Option<(String, Instant)>>,
}

impl Cached {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            slot: Mutex::new(None),
        }
    }

    /// The cached value, or a fresh one from `make` when there is none or it is too old.
    pub(crate) fn get<E>(&self, make: impl FnOnce() -> Result<String, E>) -> Result<String, E> {
        let mut slot = self.slot.lock().expect("cache lock");
        if let Some((v, at)) = &*slot {
            if at.elapsed() < self.lifetime {
                return Ok(v.clone());
            }
        }
        let v = make()?;
        *slot = Some((v.clone(), Instant::now()));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_values_are_reused_until_they_age() {
        let c = Cached::new(Duration::from_secs(60));
        assert_eq!(c.get(|| Ok::<_, ()>("a".into())), Ok("a".into()));
        assert_eq!(c.get(|| Ok::<_, ()>("b".into())), Ok("a".into()));
        let c = Cached::new(Duration::ZERO);
        c.get(|| Ok::<_, ()>("a".into())).unwrap();
        assert_eq!(c.get(|| Ok::<_, ()>("b".into())), Ok("b".into()));
        assert_eq!(hex(&[0, 0xab, 7]), "00ab07");
    }
}
