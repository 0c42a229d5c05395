//! Presence settings and who may see whose presence, engine-neutral.
//!
//! A user's presence (online, last seen) is visible to the users who share a chat with it,
//! unless it hides it (`V user`, absent: visible). Online state itself is the gateway's: it
//! lives in memory, where connections are.

use crate::kv::Txn;
use crate::ops::{Attempt, OpResult};
use crate::reads::engine_err;
use crate::store::Store;
use crate::{keys, StoreError};

/// Most chats of a user looked at to decide whether it shares one with another user.
const MAX_CHATS_CHECKED: usize = 100_000;

impl Attempt<'_, '_> {
    /// Stores whether `user` shows its presence.
    pub(crate) fn set_presence(&mut self, user: &str, visible: bool) -> OpResult<()> {
        if !courier_wire::valid_user_id(user) {
            return Ok(Err(StoreError::Invalid(format!(
                "bad user id {}",
                courier_wire::text::quote(user)
            ))));
        }
        self.t.set(&keys::presence(user), &[u8::from(visible)]);
        // In a cluster the nodes watching the user hear of it (shown: its state now; hidden:
        // offline, as if it had left).
        if let Some(cluster) = self.shared.cluster.clone() {
            let change = if visible {
                crate::cluster::PresenceChange::Online
            } else {
                crate::cluster::PresenceChange::Hidden
            };
            self.note_presence(&cluster, user, change, courier_wire::time::now_ms())?;
        }
        Ok(Ok(()))
    }
}

impl Store {
    /// Shows (true) or hides `user`'s presence.
    pub async fn set_presence(&self, user: &str, visible: bool) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.call(|reply| crate::writer::Op::SetPresence {
            user,
            visible,
            reply,
        })
        .await
    }

    /// Whether `user` shows its presence (the default).
    pub fn presence_visible(&self, user: &str) -> Result<bool, StoreError> {
        self.read(|t| {
            let v = t.get(&keys::presence(user)).map_err(engine_err)?;
            Ok(v.is_none_or(|v| v.first() != Some(&0)))
        })
    }

    /// Whether `a` and `b` are both members of some chat.
    pub fn share_a_chat(&self, a: &str, b: &str) -> Result<bool, StoreError> {
        if a == b {
            return Ok(true);
        }
        self.read(|t| {
            if t.get(&keys::pair(a, b)).map_err(engine_err)?.is_some() {
                return Ok(true);
            }
            let prefix = keys::member_prefix(a);
            let chats = t
                .scan(
                    &prefix,
                    &keys::prefix_end(&prefix),
                    MAX_CHATS_CHECKED,
                    false,
                )
                .map_err(engine_err)?;
            for (k, _) in chats {
                let Some(id) = keys::member_chat(&k) else {
                    continue;
                };
                if let Some(c) = self
                    .shared
                    .chat_in(t as &mut dyn Txn, id)
                    .map_err(engine_err)?
                {
                    if c.is_member(b) {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        })
    }
}
