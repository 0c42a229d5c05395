//! [`Messenger`]: a client that stays connected and shows each message exactly once, in order.
//!
//! It connects (again and again, with exponential backoff), syncs what the device missed from
//! its saved positions page by page, then keeps taking live messages. Every message passes the
//! [`Inbox`]: duplicates (at-least-once delivery) are dropped, and a gap in a chat's seqs is
//! filled from history before the message after it is shown. Positions are saved through the
//! app's [`PositionStore`] and acknowledged to the server. [`Messenger::send`] keeps its client
//! message id across reconnects, so a send whose `SendOk` was lost is retried safely: the
//! server answers the retry with the original seq (`duplicate`), and recipients see it once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_wire::frame::{ChatPosition, Direction, Message, MessageKind, SendOk};
use courier_wire::ErrorCode;
use tokio::sync::{mpsc, watch};

use crate::connection::new_client_msg_id;
use crate::error::Closer;
use crate::inbox::{Inbox, Offer, PositionStore};
use crate::{Client, ClientError, Event, Events, Trust};

/// Longest wait the Messenger honours from a server's `RetryLater` before trying again (a
/// broken server cannot park a send for days).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How a [`Messenger`] reaches its gateway.
#[derive(Clone)]
pub struct MessengerConfig {
    /// Gateway address.
    pub addr: SocketAddr,
    /// Other gateways of the same cluster: after a connection to one fails or drops, the next
    /// attempt goes to the next address in turn (`addr` first, then these), so the device
    /// moves to a live node when its node dies, and syncs there.
    pub fallbacks: Vec<SocketAddr>,
    /// Name in the gateway's certificate.
    pub server_name: String,
    /// Which certificates to trust.
    pub trust: Trust,
    /// The device's token.
    pub token: String,
    /// Where positions are kept between runs.
    pub positions: Arc<dyn PositionStore>,
    /// Messages per sync page.
    pub sync_page: u32,
    /// Where a fresh token comes from when the server refuses the current one (the session's
    /// token expired: GoAway or a refused Hello with `UNAUTHENTICATED`). Without it the
    /// Messenger keeps retrying with `token`.
    pub refresh_token: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl MessengerConfig {
    /// Defaults: sync pages of 500, reconnect after 100 ms doubling up to 10 s.
    pub fn new(
        addr: SocketAddr,
        trust: Trust,
        token: String,
        positions: Arc<dyn PositionStore>,
    ) -> Self {
        Self {
            addr,
            fallbacks: Vec::new(),
            server_name: "localhost".into(),
            trust,
            token,
            positions,
            refresh_token: None,
            sync_page: 500,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// What the app is told.
#[derive(Debug, Clone)]
pub enum Update {
    /// The next message of a chat, shown once, in seq order.
    Message(Message),
    /// Messages of these chats expired before this device got them.
    Expired(Vec<u64>),
    /// Connected, and caught up with everything missed while away.
    Synced,
    /// The connection dropped; reconnecting.
    Disconnected(String),
}

/// A self-reconnecting client. Cheap to clone.
#[derive(Clone)]
pub struct Messenger {
    current: watch::Receiver<Option<Client>>,
    stop: Arc<watch::Sender<bool>>,
}

impl Messenger {
    /// Starts connecting in the background; updates arrive on the returned receiver.
    pub fn start(config: MessengerConfig) -> (Self, mpsc::Receiver<Update>) {
        let (updates_tx, updates) = mpsc::channel(8192);
        let (current_tx, current) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(run(config, current_tx, updates_tx, stop_rx));
        (
            Self {
                current,
                stop: Arc::new(stop_tx),
            },
            updates,
        )
    }

    /// The connection, once there is one.
    pub async fn client(&self) -> Result<Client, ClientError> {
        let mut current = self.current.clone();
        let got = current
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ClientError::closed(Closer::Client, "messenger stopped"))?;
        Ok(got.clone().expect("waited for Some"))
    }

    /// Sends a text message, retrying across reconnects with the same client message id until
    /// the server acknowledges it (or refuses it for good).
    pub async fn send(&self, chat_id: u64, body: impl Into<Bytes>) -> Result<SendOk, ClientError> {
        let (id, body) = (new_client_msg_id(), body.into());
        let mut delay = Duration::from_millis(50);
        loop {
            let client = self.client().await?;
            match client
                .send_message(chat_id, id, MessageKind::Text, body.clone(), Vec::new())
                .await
            {
                Ok(ok) => return Ok(ok),
                // The server said when: wait that long (Telegram's FLOOD_WAIT, Signal's
                // Retry-After), not the guessed backoff.
                Err(ClientError::Server {
                    retry_after: Some(wait),
                    ..
                }) => {
                    tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
                    continue;
                }
                Err(ClientError::Server { code, .. })
                    if [
                        ErrorCode::RATE_LIMITED,
                        ErrorCode::OVERLOADED,
                        ErrorCode::INTERNAL,
                        ErrorCode::SHUTTING_DOWN,
                        ErrorCode::UNAVAILABLE,
                    ]
                    .contains(&code) => {}
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Stops reconnecting and closes the connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(c) = self.current.borrow().as_ref() {
            c.close();
        }
    }
}

async fn run(
    config: MessengerConfig,
    current: watch::Sender<Option<Client>>,
    updates: mpsc::Sender<Update>,
    mut stop: watch::Receiver<bool>,
) {
    let mut inbox = Inbox::new(config.positions.load());
    let mut backoff = config.backoff_min;
    let mut token = config.token.clone();
    let addrs: Vec<SocketAddr> = std::iter::once(config.addr)
        .chain(config.fallbacks.iter().copied())
        .collect();
    let mut turn = 0;
    while !*stop.borrow() {
        let addr = addrs[turn % addrs.len()];
        turn += 1;
        let ended = match Client::connect(addr, &config.server_name, &config.trust, &token).await {
            Ok((client, events)) => {
                backoff = config.backoff_min;
                current.send_replace(Some(client.clone()));
                let r = tokio::select! {
                    r = session(&config, &client, events, &mut inbox, &updates) => r,
                    _ = stop.changed() => Ok(()),
                };
                current.send_replace(None);
                client.close();
                match r {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if let (true, Some(refresh)) = (ended.needs_new_token(), &config.refresh_token) {
            token = refresh();
        }
        if updates
            .send(Update::Disconnected(ended.to_string()))
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Shows `m` if it is next; fills a gap before it from history. Returns false when the app is gone.
async fn take(
    client: &Client,
    m: Message,
    inbox: &mut Inbox,
    config: &MessengerConfig,
    updates: &mpsc::Sender<Update>,
) -> Result<bool, ClientError> {
    let chat = m.chat_id;
    let (from, to) = match inbox.offer(chat, m.seq) {
        Offer::New => return Ok(show(m, config, updates).await),
        Offer::Duplicate => return Ok(true),
        Offer::Gap { from, to } => (from, to),
    };
    let mut anchor = from - 1;
    while anchor < to {
        let limit = (to - anchor).min(500) as u32;
        let page = match client.history(chat, Direction::After, anchor, limit).await {
            Ok(p) => p,
            // Refused (e.g. no longer a member): what cannot be fetched is skipped below.
            Err(ClientError::Server { .. }) => break,
            Err(e) => return Err(e),
        };
        let Some(first) = page.messages.first() else {
            break;
        };
        if first.seq > anchor + 1 {
            // The missing messages expired: move past them.
            inbox.skip_to(chat, first.seq - 1);
        }
        for h in page.messages.into_iter().filter(|h| h.seq <= to) {
            anchor = h.seq;
            if inbox.offer(chat, h.seq) == Offer::New && !show(h, config, updates).await {
                return Ok(false);
            }
        }
        if !page.more {
            break;
        }
    }
    // Whatever history could not supply (expired) is skipped.
    inbox.skip_to(chat, to);
    if inbox.offer(chat, m.seq) != Offer::New {
        return Ok(true);
    }
    Ok(show(m, config, updates).await)
}

async fn show(m: Message, config: &MessengerConfig, updates: &mpsc::Sender<Update>) -> bool {
    config.positions.save(m.chat_id, m.seq);
    updates.send(Update::Message(m)).await.is_ok()
}

async fn ack_all(
    client: &Client,
    inbox: &Inbox,
    acked: &mut std::collections::HashMap<u64, u64>,
) -> Result<(), ClientError> {
    for (chat, seq) in inbox.positions() {
        if acked.get(&chat) != Some(&seq) {
            client.ack(chat, seq).await?;
            acked.insert(chat, seq);
        }
    }
    Ok(())
}

/// One connection's life: sync every page, then live messages until the connection ends.
async fn session(
    config: &MessengerConfig,
    client: &Client,
    mut events: Events,
    inbox: &mut Inbox,
    updates: &mpsc::Sender<Update>,
) -> Result<(), ClientError> {
    let mut acked = std::collections::HashMap::new();
    // Sync: each page's messages are queued as events before its end is answered.
    loop {
        let positions = inbox
            .positions()
            .into_iter()
            .map(|(chat_id, seq)| ChatPosition { chat_id, seq })
            .collect();
        let end = client.sync_page(positions, config.sync_page).await?;
        while let Ok(ev) = events.try_recv() {
            if !handle(client, ev, inbox, config, updates).await? {
                return Ok(());
            }
        }
        if !end.expired.is_empty() && updates.send(Update::Expired(end.expired)).await.is_err() {
            return Ok(());
        }
        ack_all(client, inbox, &mut acked).await?;
        if !end.more {
            break;
        }
    }
    if updates.send(Update::Synced).await.is_err() {
        return Ok(());
    }
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return Err(ClientError::closed(Closer::Client, "event stream ended")) };
                if !handle(client, ev, inbox, config, updates).await? {
                    return Ok(());
                }
            }
            _ = tick.tick() => ack_all(client, inbox, &mut acked).await?,
        }
    }
}

async fn handle(
    client: &Client,
    ev: Event,
    inbox: &mut Inbox,
    config: &MessengerConfig,
    updates: &mpsc::Sender<Update>,
) -> Result<bool, ClientError> {
    match ev {
        Event::Message(m) => take(client, m, inbox, config, updates).await,
        Event::Closed(reason) => Err(ClientError::closed(Closer::Server, reason)),
        Event::GoAway(g) => Err(ClientError::GoAway {
            code: g.code,
            reason: g.reason,
        }),
        Event::Frame(_) => Ok(true),
    }
}
