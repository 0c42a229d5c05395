//! Courier's durable message log.
//!
//! The store assigns every message its dense per-chat sequence number, makes it durable before the
//! caller hears about it, remembers each `(sender, client_msg_id)` so a retried send returns the
//! original answer, keeps chats, members and each device's position, serves history and sync,
//! and deletes data older than the retention window. It is not a network service: the gateway
//! calls it in-process.
//!
//! The logic is written once, against a small ordered transactional key-value interface
//! ([`kv`]); engines only adapt that interface: fjall in a local directory (default) and
//! FoundationDB (cargo feature `fdb`). All writes go through a writer thread per partition
//! ([`writer`]; a chat's partition is its id modulo the count) that folds whatever is queued
//! into one transaction (group commit); on the embedded engine each partition is its own
//! database ([`engine::partitioned`]).
//!
//! # Layout
//! - [`kv`] — the engine interface ([`kv::Engine`], [`kv::Txn`]).
//! - [`engine`] — the adapters.
//! - [`keys`] — the one place where keys are built; the table is in `docs/STORAGE.md`.
//! - [`record`] — values stored under those keys, and the [`Chat`] type.
//! - [`ops`] — write operations (append, chats, groups, positions, retention sweep).
//! - `reads` — history, chat lists and sync.
//! - `media` — media records, attachment checks and who may download.
//! - `receipts` — delivered and read pointers, and whom a receipt tells.
//! - `presence` — presence settings and who shares a chat with whom.
//! - [`push`] — push registrations and the durable push outbox.
//! - [`writer`] — the group-commit writer thread.
//! - `lastseqs` — the writer's memory of its chats' last seqs between batches.
//! - [`cluster`] — nodes sharing one engine: leases, routes, inboxes, work owned once.
//! - [`error`] — [`StoreError`].
//! - [`logging`] — log lines that cannot flood ([`LogLimiter`]).

#![deny(unsafe_code)]

pub mod cluster;
pub mod engine;
pub mod error;
pub mod keys;
pub mod kv;
mod lastseqs;
pub mod logging;
mod media;
pub mod ops;
mod presence;
pub mod push;
mod reads;
mod receipts;
pub mod record;
mod store;
pub mod writer;

/// A hash map for the append path's per-batch and per-writer maps (a transaction's writes, the
/// last seqs read and remembered). std's SipHash cost ~1.9K instructions per message there
/// (`benches/scripts/gateway-instructions.sh`); foldhash is seeded per process like std's,
/// so keys a client chooses (its message ids, in dedupe keys) cannot be aimed at collisions
/// without the seed, and these maps are bounded by a batch or by [`lastseqs`]'s cap anyway.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use cluster::{ClusterConfig, Delivery, Event, Inbox, PresenceChange, Work};
pub use error::{Forbid, StoreError, BUSY_RETRY_AFTER, UNAVAILABLE_RETRY_AFTER};
pub use logging::LogLimiter;
pub use media::{quota_error, MAX_ATTACHMENTS, UNATTACHED_UPLOAD_TTL_MS};
pub use ops::{GroupChange, SweepStats, MAX_GROUP_NAME};
pub use push::{OnlineUsers, PushJob, PushResult};
pub use reads::SyncPage;
pub use receipts::{Pointers, ReceiptOutcome, MAX_SENDERS_SCANNED};
pub use record::{Chat, Media};
pub use store::{
    AppendRequest, Appended, Clock, CommitListener, Committed, Store, StoreConfig, SystemClock,
    Ticket, MAX_COMMIT_INTERVAL,
};
