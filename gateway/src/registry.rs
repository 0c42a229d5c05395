//! Who is online: user -> devices -> the connection's outbound queue.

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;

/// Application close code for a connection dropped because it did not read fast enough.
pub const CLOSE_SLOW_READER: u32 = 0x100;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued for the device.
    Queued,
    /// The queue was full: the device was disconnected as a slow reader.
    SlowReader,
    /// The connection is already closing.
    Gone,
}

/// One online device.
#[derive(Clone)]
pub(crate) struct Device {
    /// Distinguishes two connections of the same device (a reconnect racing the old one).
    pub(crate) conn_id: u64,
    pub(crate) device: u32,
    pub(crate) out: mpsc::Sender<Bytes>,
    pub(crate) conn: quinn::Connection,
}

impl Device {
    /// Queues an encoded frame. A full queue marks a slow reader: it is disconnected and will
    /// find its messages in the store when it syncs.
    pub(crate) fn push(&self, frame: Bytes) -> Pushed {
        match self.out.try_send(frame) {
            Ok(()) => Pushed::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.conn.close(CLOSE_SLOW_READER.into(), b"slow reader");
                Pushed::SlowReader
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Pushed::Gone,
        }
    }
}

/// The online devices of every connected user.
#[derive(Default)]
pub(crate) struct Registry {
    users: DashMap<String, Vec<Device>>,
}

impl Registry {
    pub(crate) fn register(&self, user: &str, device: Device) {
        self.users.entry(user.to_owned()).or_default().push(device);
    }

    pub(crate) fn unregister(&self, user: &str, conn_id: u64) {
        self.users.remove_if_mut(user, |_, devices| {
            devices.retain(|d| d.conn_id != conn_id);
            devices.is_empty()
        });
    }

    /// Calls `f` for each online device of `user`.
    pub(crate) fn for_each_device(&self, user: &str, mut f: impl FnMut(&Device)) {
        if let Some(devices) = self.users.get(user) {
            devices.iter().for_each(&mut f);
        }
    }
}
