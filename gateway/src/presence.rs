//! Presence: who is online, and when users were last seen, told to the users who subscribed and
//! may see it (they share a chat, and the user does not hide its presence).
//!
//! Online means at least one connected device. Changes are coalesced: when a user's last device
//! goes, the offline event waits `grace`; a device that comes back within it cancels the event
//! (a reconnect or a network flap shows nothing). Subscriptions belong to a connection and end
//! with it. Last-seen times live in memory (a restarted gateway knows only what it saw since).

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
}

impl Presence {
    pub(crate) fn new(registry: Arc<Registry>, store: Store, grace: Duration) -> Self {
        Self {
            registry,
            store,
            grace,
            watchers: DashMap::new(),
            watching: DashMap::new(),
            last_seen: DashMap::new(),
            leaving: DashMap::new(),
            generation: AtomicU64::new(0),
        }
    }

    /// `user`'s state as an event: online now, or offline since it was last seen.
    fn event(&self, user: &str) -> Bytes {
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
        self.tell_watchers(user, &self.event(user));
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
            }
        }
        if self.registry.is_online(user) {
            return;
        }
        self.last_seen.insert(user.to_owned(), now_ms());
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.leaving.insert(user.to_owned(), generation);
        let (hub, user) = (self.clone(), user.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(hub.grace).await;
            let still_leaving = hub
                .leaving
                .remove_if(&user, |_, g| *g == generation)
                .is_some();
            if still_leaving && !hub.registry.is_online(&user) {
                hub.announce(&user).await;
            }
        });
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
            if !subs.iter().any(|(c, _)| *c == conn_id) {
                subs.push((conn_id, device.clone()));
                self.watching.entry(conn_id).or_default().push(u.clone());
            }
            drop(subs);
            device.push(self.event(u));
            n += 1;
        }
        n
    }
}
