//! Network I/O that Courier's SDK, gateway and tools share, below all of them (the gateway
//! does not depend on the SDK, nor the SDK on the gateway).
//!
//! - [`cid`] — connection IDs that never repeat within a process (a Retry's included).
//! - [`io`] — framed reading and coalesced writing on a QUIC stream.
//! - [`outbound`] — a connection's bounded outbound queue, and wake-ups batched per shard.
//! - [`quic`] — a QUIC server endpoint driven by one loop per shard over quinn-proto.
//! - [`scrape`] — reading a node's Prometheus metrics over HTTP (loadgen, tests).
//! - [`tls`] — the server's TLS session for QUIC, which drops rustls's state after the
//!   handshake.
//! - [`transport`] — transport settings both sides use (path MTU discovery).

#![forbid(unsafe_code)]

pub mod cid;
pub mod io;
pub mod outbound;
pub mod quic;
pub mod scrape;
pub mod tls;
pub mod transport;
