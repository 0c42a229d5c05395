//! Who is online: user -> devices -> the connection's outbound queue.

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_net::io::{Outbound, PushError};
use dashmap::DashMap;

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
    pub(crate) out: Outbound,
    pub(crate) conn: courier_net::quic::Connection,
    /// In a cluster: messages committed at or before this version are in the device's sync;
    /// the inbox does not deliver them to it again (0: deliver everything).
    pub(crate) since: u64,
}

impl Device {
    /// Queues an encoded frame. A full queue (in frames or bytes) marks a slow reader: it is disconnected and will
    /// find its messages in the store when it syncs.
    pub(crate) fn push(&self, frame: Bytes) -> Pushed {
        match self.out.try_send(frame) {
            Ok(()) => Pushed::Queued,
            Err(PushError::Full) => {
                self.conn.close(CLOSE_SLOW_READER.into(), b"slow reader");
                Pushed::SlowReader
            }
            Err(PushError::Closed) => Pushed::Gone,
        }
    }
}

/// Typing events one user may send per second (over all its devices).
pub const TYPING_PER_SECOND: u32 = 5;

/// The hash of the registry's maps. Fanout looks up every member of a committed message's chat
/// on the store's commit thread, the one thread every message of a node passes: std's SipHash
/// cost ~270 instructions a lookup there, foldhash a fraction of it. foldhash is seeded per
/// process like std's, and the keys are user ids from tokens the issuer signed.
type UserHash = foldhash::fast::RandomState;

/// The online devices of every connected user.
#[derive(Default)]
pub(crate) struct Registry {
    users: DashMap<String, Vec<Device>, UserHash>,
    /// Per online user: the second its typing events are counted in, and how many so far.
    typing: DashMap<String, (Instant, u32), UserHash>,
}

impl Registry {
    pub(crate) fn register(&self, user: &str, device: Device) {
        self.users.entry(user.to_owned()).or_default().push(device);
    }

    pub(crate) fn unregister(&self, user: &str, conn_id: u64) {
        let gone = self
            .users
            .remove_if_mut(user, |_, devices| {
                devices.retain(|d| d.conn_id != conn_id);
                devices.is_empty()
            })
            .is_some();
        if gone {
            self.typing.remove(user);
        }
    }

    /// Whether `user` may send another typing event now ([`TYPING_PER_SECOND`]).
    pub(crate) fn allow_typing(&self, user: &str) -> bool {
        let now = Instant::now();
        let mut w = self.typing.entry(user.to_owned()).or_insert((now, 0));
        if now.duration_since(w.0) >= Duration::from_secs(1) {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 <= TYPING_PER_SECOND
    }

    /// Pushes `frame` to every online device of `users`, except device `skip` of user `except`.
    pub(crate) fn push_to<'u>(
        &self,
        users: impl IntoIterator<Item = &'u String>,
        frame: &Bytes,
        except: (&str, u32),
    ) {
        for u in users {
            self.for_each_device(u, |d| {
                if !(u == except.0 && d.device == except.1) {
                    d.push(frame.clone());
                }
            });
        }
    }

    /// Whether `user` has a connected device.
    pub(crate) fn is_online(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// How many devices of `user` are connected.
    pub(crate) fn device_count(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |d| d.len())
    }

    /// Closes every connection of every online device.
    pub(crate) fn close_all(&self, code: quinn::VarInt, reason: &[u8]) {
        for entry in self.users.iter() {
            for d in entry.value() {
                d.conn.close(code, reason);
            }
        }
    }

    /// Calls `f` for each online device of `user`.
    pub(crate) fn for_each_device(&self, user: &str, mut f: impl FnMut(&Device)) {
        if let Some(devices) = self.users.get(user) {
            devices.iter().for_each(&mut f);
        }
    }
}
