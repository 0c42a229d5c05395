//! Courier's QUIC gateway: sessions, fanout and the `courier` binary's building blocks.
//!
//! The gateway accepts QUIC connections (ALPN `courier/1`), authenticates each with an Ed25519
//! token, and serves the control stream's frames against the message store. Every committed
//! message is pushed to every online device of every member of its chat.
//!
//! It is not the store (that is `courier-store`), not the token format (`courier-auth`), not the
//! framed stream I/O it shares with the SDK (`courier-net`), and it does not use the SDK; only
//! the binary's `courier chat` (cargo feature `chat`, on by default) does.
//!
//! # Layout
//! - [`config`] — [`GatewayConfig`], every limit with its memory cost.
//! - [`tls`] — the TLS identity (self-signed or from PEM files).
//! - [`util`] — wall-clock milliseconds, hex, cached provider tokens.
//! - [`pacing`] — at most one wake-up per interval for a busy shard thread.
//! - [`server`] — the endpoint, handshakes, the control-stream loop and graceful shutdown.
//! - [`media`] — uploads and downloads on streams of their own, blobs, thumbnails.
//! - [`push`] — the push worker (webhook provider) over the store's durable outbox.
//! - `session`: what each frame does (no sockets; unit-tested with channels); `acks`: acks
//!   coalesced per chat and written in batches; `budget`: each connection's request rate.
//! - `registry`: online devices; `fanout`: committed messages to them; `presence`: online
//!   and last seen, coalesced, to subscribers who may see it.

#![forbid(unsafe_code)]

mod acks;
mod budget;
pub mod config;
mod fanout;
pub mod handshakes;
pub mod media;
pub mod metrics;
pub mod pacing;
mod presence;
pub mod push;
pub mod registry;
pub mod server;
mod session;
pub mod tls;
pub mod util;

pub use config::{GatewayConfig, StoreEngine};
pub use server::Gateway;
