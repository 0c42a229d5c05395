//! Courier's durable message log.
//!
//! The store assigns every message its dense per-chat sequence number, makes it durable before the
//! caller hears about it, remembers each `(sender, client_msg_id)` so a retried send returns the
//! original answer, and keeps chats and their members. It is not a network service: the gateway
//! calls it in-process.
//!
//! All writes go through one writer thread ([`writer`]) that drains whatever requests are queued,
//! applies them as one atomic batch and syncs it to disk once (group commit). Sequence numbers are
//! assigned by that thread alone, so they are gap-free without locks. Reads go to the engine
//! directly from any thread.
//!
//! # Layout
//! - [`keys`] — the one place where keys are built; the layout table is in `docs/STORAGE.md`.
//! - [`record`] — values stored under those keys, and the [`Chat`] type.
//! - [`writer`] — the group-commit writer thread.
//! - [`error`] — [`StoreError`].

#![forbid(unsafe_code)]

pub mod error;
pub mod keys;
pub mod record;
mod store;
pub mod writer;

pub use error::StoreError;
pub use record::Chat;
pub use store::{
    AppendRequest, Appended, Clock, CommitListener, Store, StoreConfig, SystemClock, Ticket,
};
