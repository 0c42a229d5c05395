//! Presence: who is online, and when users were last seen, told to the users who subscribed and
//! may see it (they share a chat, and the user does not hide its presence).
//!
//! Online means at least one connected device. Changes are coalesced: when a user's last device
//! goes, the offline event waits `grace`; a device that comes back within it cancels the event
//! (a reconnect or a network flap shows nothing). Subscriptions belong to a connection and end
//! with it. On one node, last-seen times live in memory (a restarted gateway knows only what it
//! saw since).
//!
//! In a cluster a user's state is its route in the store (online on a live node, and when it
//! was last seen), and changes come from the inbox ([`Presence::remote`]): the write that
//! takes a user's last node away (or brings its first) tells every node recorded as watching
//! the user (`Store::watch_presence`, before a subscription's first state is read), and each
//! watching node applies the grace period itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_store::Store;
use courier_wire::frame::PresenceEvent;
use courier_wire::Frame;
use dashmap::DashMap;

use crate::registry::{Device, Registry};
use courier_wire::time::now_ms;

/// The presence hub of a gateway.
pub(crate) struct Presence {
    registry: Arc<Registry>,
    store: Store,
    grace: Duration,
    /// Watched user -> subscribed connections (connection id, its device handle).
    watchers: DashMap<String, Vec<(u64, Device)>>,
    /// Subscribing connection -> users it watches (to end its subscriptions).
    watching: DashMap<u64, Vec<String>>,
    /// When each user was last seen (its last device went away).
    last_seen: DashMap<String, u64>,
    /// Users whose offline event waits out the grace period, with the wait's generation.
    leaving: DashMap<String, u64>,
    generation: AtomicU64,
    /// In a cluster: state from the store, changes from the inbox.
    clustered: bool,
}

impl Presence {
    pub(crate) fn new(registry: Arc<Registry>, store: Store, grace: Duration) -> Self {
        Self {
            registry,
            grace,
            watchers: DashMap::new(),
            watching: DashMap::new(),
            last_seen: DashMap::new(),
            leaving: DashMap::new(),
            generation: AtomicU64::new(0),
            clustered: store.node().is_some(),
            store,
        }
    }

    /// `user`'s state as an event: online now, or offline since it was last seen.
    async fn event(&self, user: &str) -> Bytes {
        if self.clustered {
            let who = user.to_owned();
            let state = self.store.reading(move |s| s.presence_of(&who)).await;
            let (online, last_seen_ms) = state.ok().flatten().unwrap_or((false, 0));
            return Self::frame(user, online, last_seen_ms);
        }
        let online = self.registry.is_online(user);
        let last_seen_ms = if online {
            now_ms()
        } else {
            self.last_seen.get(user).map_or(0, |t| *t)
        };
        Self::frame(user, online, last_seen_ms)
    }

    fn frame(user: &str, online: bool, last_seen_ms: u64) -> Bytes {
        Frame::PresenceEvent(PresenceEvent {
            user: user.to_owned(),
            online,
            last_seen_ms,
        })
        .to_bytes()
    }

    /// Pushes `frame` to every connection watching `user`.
    fn tell_watchers(&self, user: &str, frame: &Bytes) {
        if let Some(w) = self.watchers.get(user) {
            for (_, d) in w.iter() {
                d.push(frame.clone());
            }
        }
    }

    /// Tells `user`'s watchers its current state, unless it hides it.
    pub(crate) async fn announce(&self, user: &str) {
        let who = user.to_owned();
        let visible = self.store.reading(move |s| s.presence_visible(&who)).await;
        if !visible.unwrap_or(false) {
            return;
        }
        let frame = self.event(user).await;
        self.tell_watchers(user, &frame);
    }

    /// `user` showed (`visible`) or hid its presence. In a cluster the store tells every
    /// watching node, this one too, through the inbox.
    pub(crate) async fn setting_changed(&self, user: &str, visible: bool) {
        if self.clustered {
            return;
        }
        if visible {
            self.announce(user).await;
        } else {
            self.hidden(user);
        }
    }

    /// A presence change from the inbox (in a cluster).
    pub(crate) fn remote(
        self: &Arc<Self>,
        user: String,
        change: courier_store::PresenceChange,
        last_seen_ms: u64,
    ) {
        use courier_store::PresenceChange;
        match change {
            PresenceChange::Online => {
                if self.leaving.remove(&user).is_some() {
                    return; // back within the grace period: nobody saw it leave
                }
                let hub = self.clone();
                tokio::spawn(async move { hub.announce(&user).await });
            }
            PresenceChange::Offline => self.leave_after_grace(user),
            PresenceChange::Hidden => {
                self.leaving.remove(&user);
                self.tell_watchers(&user, &Self::frame(&user, false, last_seen_ms));
            }
        }
    }

    /// Announces `user`'s state after the grace period, unless it comes back before.
    fn leave_after_grace(self: &Arc<Self>, user: String) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.leaving.insert(user.clone(), generation);
        let hub = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hub.grace).await;
            let still_leaving = hub
                .leaving
                .remove_if(&user, |_, g| *g == generation)
                .is_some();
            if still_leaving && (hub.clustered || !hub.registry.is_online(&user)) {
                hub.announce(&user).await;
            }
        });
    }

    /// `user` hid its presence: its watchers see it go offline, last seen now (or when its last
    /// device left), exactly as if it had; [`Presence::announce`] tells them nothing more
    /// until it shows its presence again.
    pub(crate) fn hidden(&self, user: &str) {
        let last_seen_ms = if self.registry.is_online(user) {
            let now = now_ms();
            self.last_seen.insert(user.to_owned(), now);
            now
        } else {
            self.last_seen.get(user).map_or(0, |t| *t)
        };
        self.leaving.remove(user);
        self.tell_watchers(user, &Self::frame(user, false, last_seen_ms));
    }

    /// A device of `user` connected (it is registered already).
    pub(crate) async fn connected(&self, user: &str) {
        if self.clustered {
            return; // the route's change comes through the inbox
        }
        if self.leaving.remove(user).is_some() {
            return; // back within the grace period: nobody saw it leave
        }
        if self.registry.device_count(user) == 1 {
            self.announce(user).await;
        }
    }

    /// A device of `user` disconnected (it is unregistered already); `conn_id`'s subscriptions
    /// end.
    pub(crate) fn disconnected(self: &Arc<Self>, user: &str, conn_id: u64) {
        if let Some((_, watched)) = self.watching.remove(&conn_id) {
            for w in watched {
                self.watchers.remove_if_mut(&w, |_, subs| {
                    subs.retain(|(c, _)| *c != conn_id);
                    subs.is_empty()
                });
                self.store.unwatch_presence(&w);
            }
        }
        if self.clustered || self.registry.is_online(user) {
            return;
        }
        self.last_seen.insert(user.to_owned(), now_ms());
        self.leave_after_grace(user.to_owned());
    }

    /// Subscribes connection `conn_id` (device `device`, of `subscriber`) to the presence of
    /// `users` it may see (who share a chat with it and show their presence), and sends their
    /// current state. Returns how many were subscribed.
    pub(crate) async fn subscribe(
        &self,
        subscriber: &str,
        conn_id: u64,
        device: &Device,
        users: Vec<String>,
    ) -> usize {
        let who = subscriber.to_owned();
        let allowed = self
            .store
            .reading(move |s| {
                Ok(users
                    .into_iter()
                    .filter(|u| {
                        *u != who
                            && s.share_a_chat(&who, u).unwrap_or(false)
                            && s.presence_visible(u).unwrap_or(false)
                    })
                    .collect::<Vec<_>>())
            })
            .await
            .unwrap_or_default();
        let mut n = 0;
        for u in &allowed {
            let mut subs = self.watchers.entry(u.clone()).or_default();
            let new = !subs.iter().any(|(c, _)| *c == conn_id);
            if new {
                subs.push((conn_id, device.clone()));
                self.watching.entry(conn_id).or_default().push(u.clone());
            }
            drop(subs);
            // In a cluster this node is recorded as a watcher before the state is read: any
            // change after the read reaches this node.
            if new && self.store.watch_presence(u).await.is_err() {
                continue;
            }
            device.push(self.event(u).await);
            n += 1;
        }
        n
    }
}
