//! Small helpers the gateway's modules share: hex, a cached
//! credential that is renewed after a while, and the transparent-huge-page check.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The kernel's transparent-huge-page mode file.
pub const THP_MODE_FILE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// A warning for the operator when the kernel backs every large anonymous mapping with huge
/// pages (`[always]` in `mode`, the contents of [`THP_MODE_FILE`]) and `allow_thp`, the value
/// of `MIMALLOC_ALLOW_THP`, does not opt this process out.
///
/// The binaries are built with mimalloc's `no_thp` feature, so under the `madvise` and `never`
/// modes the heap is never backed by huge pages. Under `always` the kernel does it anyway, and
/// a page fault then zeroes 2 MiB: measured on the 2-core machine, open-loop p99 send->Deliver
/// went from 4.3 ms to 10-59 ms (docs/PERFORMANCE.md, "Huge pages").
pub fn huge_page_warning(mode: &str, allow_thp: Option<&str>) -> Option<String> {
    let always = mode.split_whitespace().any(|m| m == "[always]");
    if !always || allow_thp.map(str::trim) == Some("0") {
        return None;
    }
    Some(format!(
        "transparent huge pages are set to `always` ({THP_MODE_FILE}): page faults that \
         zero 2 MiB add tens of milliseconds to tail latency; start courier with \
         MIMALLOC_ALLOW_THP=0 or set the mode to madvise"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_warn_only_when_always_and_not_opted_out() {
        let always = "[always] madvise never\n";
        assert!(huge_page_warning(always, None).is_some());
        assert!(huge_page_warning(always, Some("1")).is_some());
        assert!(huge_page_warning(always, Some("0")).is_none());
        assert!(huge_page_warning("always [madvise] never\n", None).is_none());
        assert!(huge_page_warning("always madvise [never]", None).is_none());
        assert!(huge_page_warning("", None).is_none());
    }

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
