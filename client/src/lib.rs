//! The Rust client SDK for Courier.
//!
//! [`Client::connect`] opens a QUIC connection, authenticates with a token and returns a
//! [`Client`] (requests: create chats, send, page history) and an [`Events`] receiver (messages
//! delivered to this device, server notices). Requests are pipelined on the connection's control
//! stream and matched to answers by request id; at most `Welcome::max_inflight` sends are
//! outstanding at once (the SDK waits, the server never has to buffer without bound).
//!
//! It is not a UI or a message cache: apps keep what they show.
//!
//! # Layout
//! - [`tls`] — which server certificates to trust ([`Trust`]) and the QUIC client configuration.
//! - [`connection`] — [`Client`], [`Events`] and the tasks that read and write the control stream.
//! - [`media`] — uploads and downloads on streams of their own.
//! - [`inbox`] — per-chat positions, duplicate removal, gap detection; [`PositionStore`].
//! - [`messenger`] — [`Messenger`]: reconnects, syncs, fills gaps, retries sends.
//! - [`error`] — [`ClientError`], with [`ConnectKind`] and [`Closer`] to branch on.

#![forbid(unsafe_code)]

pub mod connection;
pub mod error;
pub mod inbox;
pub mod media;
pub mod messenger;
pub mod tls;

pub use connection::{Client, Datagrams, Event, Events};
pub use error::{ClientError, Closer, ConnectKind};
pub use inbox::{Inbox, MemoryPositions, Offer, PositionStore};
pub use media::{UploadOptions, UploadState};
pub use messenger::{Messenger, MessengerConfig, Update};
pub use tls::Trust;
