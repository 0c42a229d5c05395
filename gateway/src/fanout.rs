//! Fanout: every committed message to every online device of every member.
//!
//! On one node, the store calls [`Fanout`] from its commit thread once per committed batch, in
//! commit order, so each device's queue receives a chat's messages in sequence order. In a
//! cluster every node delivers from its inbox instead ([`inbox_loop`]): what commits anywhere,
//! this node's own commits included, arrives there in commit order. Either way the sending
//! device is skipped (it has its `SendOk`); the sender's other devices get the message like
//! anyone else.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use courier_store::{CommitListener, Committed, Delivery, Inbox, Store};
use courier_wire::frame::{kind, Message};
use courier_wire::{Codec, ErrorCode, Header};

use crate::metrics::Metrics;
use crate::registry::{Pushed, Registry};

/// The store's commit listener for this gateway.
pub(crate) struct Fanout {
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    /// Blobs the retention sweep released, to the media janitor.
    pub(crate) released: tokio::sync::mpsc::UnboundedSender<[u8; 32]>,
    /// Whether committed messages are delivered from here (false in a cluster, where the
    /// inbox delivers them).
    pub(crate) deliver: bool,
}

/// A `Deliver` frame for `m`, encoded once and shared by every recipient.
fn deliver_frame(m: &Message) -> Bytes {
    let len = m.encoded_len();
    let mut buf = BytesMut::with_capacity(courier_wire::HEADER_LEN + len);
    buf.put_slice(&Header::new(kind::Deliver, len as u32).to_bytes());
    m.encode(&mut buf);
    buf.freeze()
}

impl CommitListener for Fanout {
    fn batch_committed(&self, operations: usize, elapsed: Duration) {
        // The batch's deliveries and answers wake their connections' writers once each, per
        // shard, at the end ([`courier_net::outbound`]).
        courier_net::outbound::defer_wakes();
        self.metrics.commit(operations, elapsed);
    }

    fn batch_answered(&self) {
        courier_net::outbound::flush_wakes();
    }

    fn blobs_released(&self, sha256: &[[u8; 32]]) {
        for s in sha256 {
            // The janitor is gone only when the gateway is: the blob is then left for a later run.
            let _ = self.released.send(*s);
        }
    }

    fn committed(&self, batch: &[Committed]) {
        self.metrics.messages_committed.inc_by(batch.len() as u64);
        if !self.deliver {
            return;
        }
        for c in batch {
            let users = c.chat.members.iter().chain(&c.also_notify);
            deliver(&self.registry, &self.metrics, &c.message, users, None);
        }
    }
}

/// Pushes `m` to the online devices (on this node) of `users`, but the sending device; with
/// the commit's `version` (from a cluster's inbox), not to devices whose sync has it already.
fn deliver<'u>(
    registry: &Registry,
    metrics: &Metrics,
    m: &Message,
    users: impl Iterator<Item = &'u String>,
    version: Option<u64>,
) {
    let frame = deliver_frame(m);
    for user in users {
        let is_sender = *user == m.sender_user;
        registry.for_each_device(user, |d| {
            let own = is_sender && d.device == m.sender_device;
            let synced = version.is_some_and(|v| v <= d.since);
            if !(own || synced) {
                match d.push(frame.clone()) {
                    Pushed::Queued => {
                        metrics.deliveries.inc();
                        metrics.frame_out(frame.len());
                    }
                    Pushed::SlowReader => {
                        metrics.slow_readers.inc();
                    }
                    Pushed::Gone => {}
                }
            }
        });
    }
}

/// Longest wait on the inbox's wake key before reading it again anyway.
const INBOX_WAIT: Duration = Duration::from_secs(1);

/// A cluster node's delivery: reads its inbox (waking on its wake key) and pushes each
/// delivery to this node's devices, until shutdown. When this node's lease is no longer
/// current (it could not renew it: the others may have stopped addressing it), its devices
/// are disconnected, to reconnect to a node that is addressed and sync.
pub(crate) async fn inbox_loop(
    mut inbox: Inbox,
    store: Store,
    registry: Arc<Registry>,
    presence: Arc<crate::presence::Presence>,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !store.lease_current() {
            registry.close_all(ErrorCode::UNAVAILABLE.0.into(), b"node lease lost");
        }
        let next = tokio::select! {
            r = inbox.next(INBOX_WAIT) => r,
            _ = shutdown.changed() => return,
        };
        match next {
            Ok(deliveries) => {
                failures = 0;
                // No await in between: the deferral stays on this thread.
                courier_net::outbound::defer_wakes();
                for d in deliveries {
                    match d {
                        Delivery::Message {
                            message,
                            users,
                            version,
                        } => {
                            deliver(&registry, &metrics, &message, users.iter(), Some(version));
                        }
                        Delivery::Event(e) => {
                            registry.push_to(&e.users, &e.frame, (&e.except.0, e.except.1));
                        }
                        Delivery::Presence {
                            user,
                            change,
                            last_seen_ms,
                        } => presence.remote(user, change, last_seen_ms),
                    }
                }
                courier_net::outbound::flush_wakes();
            }
            Err(_) => {
                // Logged by the store; back off and read again.
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis(10 << failures.min(7));
                tokio::time::sleep(wait).await;
            }
        }
    }
}
