//! Fanout: every committed message to every online device of every member.
//!
//! The store calls [`Fanout`] from its writer thread once per committed batch, in commit order,
//! so each device's queue receives a chat's messages in sequence order. The sending device is
//! skipped (it has its `SendOk`); the sender's other devices get the message like anyone else.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use courier_store::{CommitListener, Committed};
use courier_wire::frame::{kind, Message};
use courier_wire::{Codec, Header};

use crate::metrics::Metrics;
use crate::registry::{Pushed, Registry};

/// The store's commit listener for this gateway.
pub(crate) struct Fanout {
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    /// Blobs the retention sweep released, to the media janitor.
    pub(crate) released: tokio::sync::mpsc::UnboundedSender<[u8; 32]>,
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
    fn batch_committed(&self, operations: usize, elapsed: std::time::Duration) {
        self.metrics.commit(operations, elapsed);
    }

    fn blobs_released(&self, sha256: &[[u8; 32]]) {
        for s in sha256 {
            // The janitor is gone only when the gateway is: the blob is then left for a later run.
            let _ = self.released.send(*s);
        }
    }

    fn committed(&self, batch: &[Committed]) {
        self.metrics.messages_committed.inc_by(batch.len() as u64);
        for c in batch {
            let m = &c.message;
            let frame = deliver_frame(m);
            for member in c.chat.members.iter().chain(&c.also_notify) {
                let is_sender = *member == m.sender_user;
                self.registry.for_each_device(member, |d| {
                    if !(is_sender && d.device == m.sender_device) {
                        match d.push(frame.clone()) {
                            Pushed::Queued => {
                                self.metrics.deliveries.inc();
                                self.metrics.frame_out(frame.len());
                            }
                            Pushed::SlowReader => {
                                self.metrics.slow_readers.inc();
                            }
                            Pushed::Gone => {}
                        }
                    }
                });
            }
        }
    }
}
