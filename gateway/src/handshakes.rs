//! Handshake floods: connections that have not said `Hello` yet are counted, node-wide and per
//! source address, so a flood of handshakes neither locks other clients out nor starves the
//! sessions already open.
//!
//! - Over [`HandshakeLimits::retry_above`] connections without Hello, a new connection whose
//!   address is not validated yet is answered with a QUIC Retry (`Incoming::retry`): stateless
//!   on the server, and a spoofed source never comes back. A validated one (it carries the
//!   Retry's token) goes on.
//! - One source address may have at most [`HandshakeLimits::per_source`] connections without
//!   Hello; more are refused at once (`Incoming::refuse`), before any TLS work.
//!
//! A [`Pending`] guard holds a connection's place in both counts until it authenticates or
//! ends, whichever way it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// How many connections may be waiting for their Hello.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// Connections without Hello (node-wide) beyond which unvalidated addresses get a Retry.
    pub retry_above: usize,
    /// Most connections without Hello from one source address.
    pub per_source: u32,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            retry_above: 256,
            per_source: 1024,
        }
    }
}

/// What to do with a new connection.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Go on with the handshake; the guard holds its place.
    Accept(Pending),
    /// Answer with a Retry (address validation).
    Retry,
    /// Refuse: its source has too many connections without Hello.
    Refuse,
}

/// The counts of connections without Hello.
#[derive(Debug)]
pub(crate) struct Handshakes {
    limits: HandshakeLimits,
    total: AtomicUsize,
    /// Connections without Hello per source; an entry exists only while its count is above 0,
    /// so the map holds at most as many entries as there are such connections.
    by_source: Mutex<HashMap<IpAddr, u32>>,
}

impl Handshakes {
    pub(crate) fn new(limits: HandshakeLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            total: AtomicUsize::new(0),
            by_source: Mutex::default(),
        })
    }

    /// Decides for a new connection from `source`; `validated` and `may_retry` are quinn's.
    pub(crate) fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        validated: bool,
        may_retry: bool,
    ) -> Admission {
        if !validated && may_retry && self.total.load(Ordering::Relaxed) >= self.limits.retry_above
        {
            return Admission::Retry;
        }
        let mut by = self.by_source.lock().expect("handshakes lock");
        let n = by.entry(source).or_default();
        if *n >= self.limits.per_source {
            if *n == 0 {
                by.remove(&source);
            }
            return Admission::Refuse;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Admission::Accept(Pending {
            hub: self.clone(),
            source,
        })
    }

    /// Connections without Hello now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// A connection's place among those without Hello, given back when it is dropped (after the
/// Hello is authenticated, or when the connection ends before).
#[derive(Debug)]
pub(crate) struct Pending {
    hub: Arc<Handshakes>,
    source: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.hub.total.fetch_sub(1, Ordering::Relaxed);
        let mut by = self.hub.by_source.lock().expect("handshakes lock");
        if let Some(n) = by.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floods_get_retries_then_refusals_and_places_come_back() {
        let h = Handshakes::new(HandshakeLimits {
            retry_above: 3,
            per_source: 2,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let Admission::Accept(a1) = h.admit(a, false, true) else {
            panic!()
        };
        let Admission::Accept(_a2) = h.admit(a, false, true) else {
            panic!()
        };
        assert!(
            matches!(h.admit(a, true, false), Admission::Refuse),
            "per source"
        );
        let Admission::Accept(_b1) = h.admit(b, false, true) else {
            panic!()
        };
        assert_eq!(h.waiting(), 3);
        assert!(
            matches!(h.admit(b, false, true), Admission::Retry),
            "busy: validate first"
        );
        let Admission::Accept(_b2) = h.admit(b, true, false) else {
            panic!("validated goes on")
        };
        drop(a1);
        assert_eq!(h.waiting(), 3);
        assert!(matches!(h.admit(a, true, false), Admission::Accept(_)));
        drop(h.admit(b, true, false));
        assert_eq!(h.by_source.lock().unwrap().get(&b), Some(&2));
    }
}
