//! The cluster: several gateway nodes writing to one shared engine (FoundationDB), each
//! delivering to the devices connected to it.
//!
//! - **Nodes.** Each node has a random 64-bit id for its lifetime and a lease `L node` (until
//!   when it is alive) that its cluster thread renews every fifth of the lease. A node whose
//!   lease ran out is dead: writers stop addressing it, and after a grace any node clears what
//!   was left for it.
//! - **Routes.** `G user` lists the nodes where a device of the user is online. A node adds
//!   itself (an [`Op::Route`](crate::writer::Op) through its writer, so one node's route changes
//!   are serial) before the device's session starts and removes itself when its last device
//!   of the user leaves.
//! - **Inboxes.** A write transaction that commits messages (or carries events: receipts,
//!   typing) reads the routes of everyone who must hear of them (with conflict ranges) and
//!   writes, in that same transaction, one entry per addressed node under
//!   `I node <versionstamp> chunk`, then rewrites the node's wake key `Y node`. Each node
//!   watches its wake key, reads its inbox in commit order ([`Inbox`]), delivers to its own
//!   devices, and clears what it delivered. This is the pattern of Signal's FoundationDB
//!   message publisher.
//! - **Work owned once.** Background work that must run once cluster-wide (the retention
//!   sweep, the push outbox) runs on the node holding its work lease `o name`.
//!
//! Why it loses nothing: a device's session starts only after its route committed, and it
//! syncs from there; a send either read the route (and wrote the inbox entry) or was
//! serialized before the route was written — the route read is a conflict read — in which case
//! the device's sync sees it. Entries of one chat are in commit order, which is seq order (each
//! send reads and writes the chat's last seq), so every device gets a chat's messages in order.
//! A node that dies takes its inbox with it; its clients reconnect elsewhere and sync.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use courier_wire::frame::Message;

use crate::keys;
use crate::kv::{KvError, Txn, VERSIONSTAMP_LEN};
use crate::logging::{limited_warn, LogLimiter};
use crate::ops::Attempt;
use crate::record;
use crate::store::Shared;
use crate::StoreError;

/// How a node takes part in a cluster.
#[derive(Debug, Clone, Copy)]
pub struct ClusterConfig {
    /// This node's id: random, for this process's lifetime (never 0).
    pub node: u64,
    /// How long the node is taken for alive after its last renewal. It renews every fifth of
    /// it; a node that could not renew for a whole lease is dead to the others.
    pub lease: Duration,
}

impl ClusterConfig {
    /// A fresh node id, and a lease of 10 s.
    pub fn new() -> Self {
        Self {
            node: rand::random::<u64>().max(1),
            lease: Duration::from_secs(10),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Background work run by one node of the cluster at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    /// The retention sweep.
    Sweep,
    /// The push outbox.
    Push,
}

impl Work {
    const ALL: [Self; 2] = [Self::Sweep, Self::Push];

    fn key(self) -> Vec<u8> {
        let name: &[u8] = match self {
            Self::Sweep => b"sweep",
            Self::Push => b"push",
        };
        let mut k = vec![keys::tag::OWNER];
        k.extend_from_slice(name);
        k
    }
}

/// Bytes of one inbox entry at most (FoundationDB's values stop at 100 KB).
const CHUNK_BYTES: usize = 60_000;

/// Entries one inbox read takes at most.
const INBOX_PAGE: usize = 256;

/// Most nodes a cluster has (leases read at once).
const MAX_NODES: usize = 10_000;

/// How long after its lease ran out a dead node's inbox, lease and wake key are cleared.
const DEAD_GRACE_MS: u64 = 60_000;

/// The clock of leases: the system's wall clock, whatever clock the store's timestamps use
/// (leases are compared across nodes in real time; a test's clock moves by days).
fn lease_clock() -> u64 {
    courier_wire::time::now_ms()
}

/// What one node knows of the cluster.
pub(crate) struct Cluster {
    pub(crate) node: u64,
    lease: Duration,
    /// Every node's lease expiry (ms), as last read.
    leases: Mutex<HashMap<u64, u64>>,
    /// Nodes found without a lease: dead (ids are never reused).
    dead: Mutex<HashSet<u64>>,
    /// Devices online on this node, per user (what the node's routes say).
    local: Mutex<HashMap<String, u32>>,
    /// Connections of this node watching each user's presence (what its `w` keys say).
    watched: Mutex<HashMap<String, u32>>,
    /// Until when (ms) this node holds each work lease.
    owned: Mutex<HashMap<Work, u64>>,
    /// When this node last renewed its lease (ms; 0: never).
    renewed_ms: AtomicU64,
    /// Set by [`crate::Store::abandon`]: the node stops as a crashed one would, routes and
    /// lease left for the others to find expired.
    abandoned: std::sync::atomic::AtomicBool,
}

impl Cluster {
    pub(crate) fn new(config: ClusterConfig) -> Self {
        Self {
            node: config.node,
            lease: config.lease,
            leases: Mutex::default(),
            dead: Mutex::default(),
            local: Mutex::default(),
            watched: Mutex::default(),
            owned: Mutex::default(),
            renewed_ms: AtomicU64::new(0),
            abandoned: Default::default(),
        }
    }

    fn lease_ms(&self) -> u64 {
        self.lease.as_millis() as u64
    }

    /// Counts a device of `user` coming online here (`up`) or leaving.
    pub(crate) fn count(&self, user: &str, up: bool) {
        Self::count_in(&self.local, user, up);
    }

    fn count_in(map: &Mutex<HashMap<String, u32>>, user: &str, up: bool) {
        let mut local = map.lock().expect("cluster lock");
        if up {
            *local.entry(user.to_owned()).or_default() += 1;
        } else if let Some(n) = local.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                local.remove(user);
            }
        }
    }

    fn counted(map: &Mutex<HashMap<String, u32>>, user: &str) -> bool {
        map.lock()
            .expect("cluster lock")
            .get(user)
            .is_some_and(|&n| n > 0)
    }

    fn watching(&self, user: &str) -> bool {
        Self::counted(&self.watched, user)
    }

    fn here(&self, user: &str) -> bool {
        Self::counted(&self.local, user)
    }

    /// Whether `node` is alive as of `now`: this node is; a node with a lease until later is;
    /// a node this node has not heard of has its lease read (snapshot) in `t`: it wrote its
    /// lease before any route that names it, so a route read in `t` whose node has no lease
    /// names a dead node.
    pub(crate) fn alive(&self, t: &mut dyn Txn, node: u64) -> Result<bool, KvError> {
        let now = lease_clock();
        if node == self.node {
            return Ok(true);
        }
        if let Some(&until) = self.leases.lock().expect("cluster lock").get(&node) {
            return Ok(until > now);
        }
        if self.dead.lock().expect("cluster lock").contains(&node) {
            return Ok(false);
        }
        match t.get_snapshot(&keys::lease(node))? {
            Some(v) => {
                let until = record::decode_u64(&v).map_err(|_| KvError::fatal("corrupt lease"))?;
                self.leases
                    .lock()
                    .expect("cluster lock")
                    .insert(node, until);
                Ok(until > now)
            }
            None => {
                self.dead.lock().expect("cluster lock").insert(node);
                Ok(false)
            }
        }
    }

    /// Whether this node holds `work`'s lease now, with a fifth of the lease to spare (so two
    /// nodes never both think they hold it while clocks agree within that).
    pub(crate) fn owns(&self, work: Work) -> bool {
        let now = lease_clock();
        self.owned
            .lock()
            .expect("cluster lock")
            .get(&work)
            .is_some_and(|&until| until > now + self.lease_ms() / 5)
    }

    /// When this node last renewed its lease (ms since the epoch; 0: never).
    pub(crate) fn renewed_ms(&self) -> u64 {
        self.renewed_ms.load(Ordering::Relaxed)
    }
}

/// A route record: when the user was last seen online anywhere (ms; 0: not since the record
/// began), then the nodes it is online on.
fn encode_route(last_seen: u64, nodes: &[u64]) -> Vec<u8> {
    std::iter::once(last_seen)
        .chain(nodes.iter().copied())
        .flat_map(u64::to_be_bytes)
        .collect()
}

fn decode_route(v: &[u8]) -> Result<(u64, Vec<u64>), KvError> {
    if v.len() < 8 || !v.len().is_multiple_of(8) {
        return Err(KvError::fatal("corrupt route"));
    }
    let mut all = v
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")));
    let last_seen = all.next().expect("8 bytes at least");
    Ok((last_seen, all.collect()))
}

fn decode_nodes(v: &[u8]) -> Result<Vec<u64>, KvError> {
    decode_route(v).map(|(_, nodes)| nodes)
}

/// What a presence item says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    /// Online somewhere now (or shown again): watchers get its current state.
    Online,
    /// Its last node let it go: watchers see it offline after their grace period, unless it
    /// comes back.
    Offline,
    /// It hid its presence: watchers see it offline now, and nothing more until it shows it.
    Hidden,
}

impl PresenceChange {
    fn byte(self) -> u8 {
        match self {
            Self::Online => 1,
            Self::Offline => 0,
            Self::Hidden => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Online,
            0 => Self::Offline,
            2 => Self::Hidden,
            _ => return None,
        })
    }
}

/// A presence change for the nodes watching the user.
pub(crate) struct PresenceNote {
    user: String,
    change: PresenceChange,
    last_seen: u64,
    nodes: Vec<u64>,
}

/// An event for the online devices of some users, through their nodes' inboxes.
#[derive(Debug, Clone)]
pub struct Event {
    /// Whose devices get it.
    pub users: Vec<String>,
    /// The one device that does not (the one it came from).
    pub except: (String, u32),
    /// The encoded frame.
    pub frame: Bytes,
}

/// What a node's inbox asks it to deliver.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A committed message, for these users' devices on this node (but the sending device).
    Message {
        /// The message.
        message: Message,
        /// Its recipients with a device on this node.
        users: Vec<String>,
        /// The commit's version (from the entry's versionstamp): a device whose route was
        /// read at this version or later has the message from its sync already.
        version: u64,
    },
    /// An event frame for these users' devices on this node.
    Event(Event),
    /// A user's presence changed, for the connections of this node that watch it.
    Presence {
        /// Whose.
        user: String,
        /// How.
        change: PresenceChange,
        /// When it was last seen online (ms; 0 unknown).
        last_seen_ms: u64,
    },
}

const ITEM_MESSAGE: u8 = 1;
const ITEM_EVENT: u8 = 2;
const ITEM_PRESENCE: u8 = 3;

fn put_str(out: &mut Vec<u8>, s: &str) {
    // User ids are at most 64 bytes; one length byte holds them.
    out.push(s.len().min(255) as u8);
    out.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
}

fn put_users(out: &mut Vec<u8>, users: &[&str]) {
    out.put_u16(users.len().min(u16::MAX as usize) as u16);
    for u in users.iter().take(u16::MAX as usize) {
        put_str(out, u);
    }
}

/// An item of an inbox entry, before its message is read.
enum Item {
    Message {
        chat: u64,
        seq: u64,
        users: Vec<String>,
    },
    Event(Event),
    Presence(String, PresenceChange, u64),
}

fn corrupt() -> KvError {
    KvError::fatal("corrupt inbox entry")
}

fn get_str(b: &mut &[u8]) -> Result<String, KvError> {
    if b.is_empty() {
        return Err(corrupt());
    }
    let n = b.get_u8() as usize;
    if b.len() < n {
        return Err(corrupt());
    }
    let s = std::str::from_utf8(&b[..n])
        .map_err(|_| corrupt())?
        .to_owned();
    b.advance(n);
    Ok(s)
}

fn get_users(b: &mut &[u8]) -> Result<Vec<String>, KvError> {
    if b.len() < 2 {
        return Err(corrupt());
    }
    let n = b.get_u16() as usize;
    (0..n).map(|_| get_str(b)).collect()
}

fn decode_items(mut b: &[u8]) -> Result<Vec<Item>, KvError> {
    let mut items = Vec::new();
    while !b.is_empty() {
        match b.get_u8() {
            ITEM_MESSAGE => {
                if b.len() < 16 {
                    return Err(corrupt());
                }
                let (chat, seq) = (b.get_u64(), b.get_u64());
                let users = get_users(&mut b)?;
                items.push(Item::Message { chat, seq, users });
            }
            ITEM_EVENT => {
                let user = get_str(&mut b)?;
                if b.len() < 4 {
                    return Err(corrupt());
                }
                let device = b.get_u32();
                let users = get_users(&mut b)?;
                if b.len() < 4 {
                    return Err(corrupt());
                }
                let n = b.get_u32() as usize;
                if b.len() < n {
                    return Err(corrupt());
                }
                let frame = Bytes::copy_from_slice(&b[..n]);
                b.advance(n);
                items.push(Item::Event(Event {
                    users,
                    except: (user, device),
                    frame,
                }));
            }
            ITEM_PRESENCE => {
                let user = get_str(&mut b)?;
                if b.len() < 9 {
                    return Err(corrupt());
                }
                let change = PresenceChange::from_byte(b.get_u8()).ok_or_else(corrupt)?;
                items.push(Item::Presence(user, change, b.get_u64()));
            }
            _ => return Err(corrupt()),
        }
    }
    Ok(items)
}

/// One node's inbox entries being built: chunks of encoded items.
#[derive(Default)]
struct Outgoing {
    chunks: Vec<Vec<u8>>,
}

impl Outgoing {
    /// The chunk the next `len` bytes go in.
    fn room(&mut self, len: usize) -> &mut Vec<u8> {
        let full = self
            .chunks
            .last()
            .is_none_or(|c| !c.is_empty() && c.len() + len > CHUNK_BYTES);
        if full {
            self.chunks.push(Vec::new());
        }
        self.chunks.last_mut().expect("a chunk")
    }
}

impl Attempt<'_, '_> {
    /// The routes of `users` (read with conflict ranges, all at once, each user once per
    /// attempt).
    pub(crate) fn read_routes(&mut self, users: &[&str]) -> Result<(), KvError> {
        let missing: Vec<&str> = users
            .iter()
            .copied()
            .filter(|u| !self.routes.contains_key(*u))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = missing.iter().map(|u| keys::route(u)).collect();
        let values = self.t.get_many(&keys)?;
        for (u, v) in missing.into_iter().zip(values) {
            let nodes = match v {
                Some(v) => decode_nodes(&v)?,
                None => Vec::new(),
            };
            self.routes.insert(u.to_owned(), nodes);
        }
        Ok(())
    }

    /// Whether some device of `user` is online on a live node (routes read first).
    pub(crate) fn online_anywhere(&mut self, user: &str) -> Result<bool, KvError> {
        let Some(cluster) = self.shared.cluster.clone() else {
            return Ok(false);
        };
        self.read_routes(&[user])?;
        let nodes = self.routes.get(user).cloned().unwrap_or_default();
        for n in nodes {
            if cluster.alive(&mut *self.t, n)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Brings `user`'s route up to date with this node's devices of it: this node listed
    /// while it has one, and nodes known dead dropped. Returns the attempt's read version:
    /// every message committed after it finds this node in the route (0: unknown).
    pub(crate) fn route(&mut self, user: &str) -> Result<u64, KvError> {
        let Some(cluster) = self.shared.cluster.clone() else {
            return Ok(0);
        };
        let key = keys::route(user);
        let (last_seen, found) = match self.t.get(&key)? {
            Some(v) => decode_route(&v)?,
            None => (0, Vec::new()),
        };
        let mut nodes = Vec::with_capacity(found.len() + 1);
        let mut was_online = found.contains(&cluster.node);
        for &n in &found {
            if n != cluster.node && cluster.alive(&mut *self.t, n)? {
                nodes.push(n);
                was_online = true;
            }
        }
        if cluster.here(user) {
            nodes.push(cluster.node);
        }
        nodes.sort_unstable();
        let online = !nodes.is_empty();
        // Last seen: now, whenever the user is or just was online.
        let seen = if online || was_online {
            lease_clock()
        } else {
            last_seen
        };
        if nodes != found || seen != last_seen {
            self.t.set(&key, &encode_route(seen, &nodes));
        }
        if online != was_online {
            let change = if online {
                PresenceChange::Online
            } else {
                PresenceChange::Offline
            };
            self.note_presence(&cluster, user, change, seen)?;
        }
        self.routes.insert(user.to_owned(), nodes);
        Ok(self.t.read_version()?.unwrap_or(0))
    }

    /// Tells the nodes watching `user`'s presence (`w user node`) of a change, in this
    /// attempt's inbox entries.
    pub(crate) fn note_presence(
        &mut self,
        cluster: &Cluster,
        user: &str,
        change: PresenceChange,
        last_seen: u64,
    ) -> Result<(), KvError> {
        let start = keys::watchers(user);
        let pairs = self
            .t
            .scan_snapshot(&start, &keys::prefix_end(&start), MAX_NODES, false)?;
        let mut nodes = Vec::with_capacity(pairs.len());
        for (k, _) in pairs {
            if let Some(n) = keys::watcher_node(&k) {
                if cluster.alive(&mut *self.t, n)? {
                    nodes.push(n);
                }
            }
        }
        if !nodes.is_empty() {
            self.presence.push(PresenceNote {
                user: user.to_owned(),
                change,
                last_seen,
                nodes,
            });
        }
        Ok(())
    }

    /// Brings this node's `w user node` up to date with its connections watching `user`.
    pub(crate) fn watch_presence(&mut self, user: &str) -> Result<(), KvError> {
        let Some(cluster) = self.shared.cluster.clone() else {
            return Ok(());
        };
        let key = keys::watcher(user, cluster.node);
        if cluster.watching(user) {
            self.t.set(&key, &[]);
        } else {
            self.t.clear(&key);
        }
        Ok(())
    }

    /// Writes this attempt's messages and events into the inboxes of the live nodes that host
    /// a recipient, one entry (or a few, at [`CHUNK_BYTES`]) per node, and wakes those nodes.
    pub(crate) fn publish(&mut self) -> Result<(), KvError> {
        let Some(cluster) = self.shared.cluster.clone() else {
            return Ok(());
        };
        if self.committed.is_empty() && self.events.is_empty() && self.presence.is_empty() {
            return Ok(());
        }
        let committed = std::mem::take(&mut self.committed);
        let events = std::mem::take(&mut self.events);
        let result = self.publish_these(&cluster, &committed, &events);
        self.committed = committed;
        self.events = events;
        result
    }

    /// The live nodes that host some of `recipients` (routes read), each with those users.
    fn spread<'u>(
        &self,
        live: &HashMap<u64, bool>,
        recipients: &[&'u str],
    ) -> BTreeMap<u64, Vec<&'u str>> {
        let mut by_node: BTreeMap<u64, Vec<&'u str>> = BTreeMap::new();
        for &u in recipients {
            for n in self.routes.get(u).into_iter().flatten() {
                if live.get(n).copied().unwrap_or(false) {
                    let list = by_node.entry(*n).or_default();
                    if list.last() != Some(&u) {
                        list.push(u);
                    }
                }
            }
        }
        by_node
    }

    fn publish_these(
        &mut self,
        cluster: &Cluster,
        committed: &[crate::Committed],
        events: &[Event],
    ) -> Result<(), KvError> {
        let mut users: Vec<&str> = Vec::new();
        for c in committed {
            users.extend(
                c.chat
                    .members
                    .iter()
                    .chain(&c.also_notify)
                    .map(String::as_str),
            );
        }
        for e in events {
            users.extend(e.users.iter().map(String::as_str));
        }
        self.read_routes(&users)?;
        // Whether each node those routes name is alive, once per node.
        let named: BTreeSet<u64> = users
            .iter()
            .filter_map(|u| self.routes.get(*u))
            .flatten()
            .copied()
            .collect();
        let mut live: HashMap<u64, bool> = HashMap::with_capacity(named.len());
        for n in named {
            live.insert(n, cluster.alive(&mut *self.t, n)?);
        }
        // Per node, the users of each item who have a device there.
        let mut out: BTreeMap<u64, Outgoing> = BTreeMap::new();
        for c in committed {
            let recipients: Vec<&str> = c
                .chat
                .members
                .iter()
                .chain(&c.also_notify)
                .map(String::as_str)
                .collect();
            for (node, users) in self.spread(&live, &recipients) {
                let mut item = vec![ITEM_MESSAGE];
                item.put_u64(c.message.chat_id);
                item.put_u64(c.message.seq);
                put_users(&mut item, &users);
                out.entry(node)
                    .or_default()
                    .room(item.len())
                    .extend_from_slice(&item);
            }
        }
        for e in events {
            let recipients: Vec<&str> = e.users.iter().map(String::as_str).collect();
            for (node, users) in self.spread(&live, &recipients) {
                let mut item = vec![ITEM_EVENT];
                put_str(&mut item, &e.except.0);
                item.put_u32(e.except.1);
                put_users(&mut item, &users);
                item.put_u32(e.frame.len() as u32);
                item.extend_from_slice(&e.frame);
                out.entry(node)
                    .or_default()
                    .room(item.len())
                    .extend_from_slice(&item);
            }
        }
        for p in &self.presence {
            let mut item = vec![ITEM_PRESENCE];
            put_str(&mut item, &p.user);
            item.push(p.change.byte());
            item.put_u64(p.last_seen);
            for &node in &p.nodes {
                out.entry(node)
                    .or_default()
                    .room(item.len())
                    .extend_from_slice(&item);
            }
        }
        for (node, o) in out {
            for (i, chunk) in o.chunks.iter().enumerate() {
                let key = keys::inbox_entry(node, i.min(u16::MAX as usize) as u16);
                self.t
                    .set_versionstamped_key(&key, keys::INBOX_STAMP_OFFSET, chunk)?;
            }
            self.t
                .set_versionstamped_value(&keys::wake(node), &[0; VERSIONSTAMP_LEN], 0)?;
        }
        Ok(())
    }
}

/// A node's inbox: what commits anywhere in the cluster left for its devices, in commit
/// order. [`crate::Store::inbox`] makes it.
pub struct Inbox {
    store: crate::Store,
    node: u64,
    /// The first key not yet delivered.
    cursor: Vec<u8>,
    /// Whether entries before the cursor may still be stored (cleared by the next read).
    delivered: bool,
}

/// Inbox reads that failed, logged once per interval.
static INBOX_ERRORS: LogLimiter = LogLimiter::new(Duration::from_secs(10));

impl Inbox {
    pub(crate) fn new(store: crate::Store, node: u64) -> Self {
        Self {
            store,
            node,
            cursor: keys::inbox_prefix(node),
            delivered: false,
        }
    }

    /// The next deliveries, in commit order: waits (up to `wait`, then returns none) until
    /// there are some. Entries returned by one call are cleared from the store by the next.
    pub async fn next(&mut self, wait: Duration) -> Result<Vec<Delivery>, StoreError> {
        let (node, cursor, delivered) = (self.node, self.cursor.clone(), self.delivered);
        let (deliveries, next, watch) = self
            .store
            .reading(move |s| s.read_inbox(node, &cursor, delivered))
            .await?;
        self.delivered = false;
        if let Some(next) = next {
            self.cursor = next;
            self.delivered = true;
        }
        if let Some(w) = watch {
            // A dropped watch (an engine error) only ends the wait early.
            let _ = tokio::time::timeout(wait, w.changed()).await;
        }
        Ok(deliveries)
    }
}

type InboxRead = (Vec<Delivery>, Option<Vec<u8>>, Option<crate::kv::Watch>);

impl crate::Store {
    /// This node's inbox, on a store in a cluster ([`crate::StoreConfig::cluster`]).
    pub fn inbox(&self) -> Option<Inbox> {
        let node = self.shared.cluster.as_ref()?.node;
        Some(Inbox::new(self.clone(), node))
    }

    /// This node's id, on a store in a cluster.
    pub fn node(&self) -> Option<u64> {
        self.shared.cluster.as_ref().map(|c| c.node)
    }

    /// Whether this node holds `work`'s lease (always, outside a cluster).
    pub fn owns(&self, work: Work) -> bool {
        match &self.shared.cluster {
            None => true,
            Some(c) => c.owns(work),
        }
    }

    /// Whether this node's lease is current: false once it could not renew it for most of a
    /// lease, when the others may take it for dead and stop addressing it (its devices must
    /// then reconnect, to a node the others do address). Always true outside a cluster.
    pub fn lease_current(&self) -> bool {
        match &self.shared.cluster {
            None => true,
            Some(c) => {
                let renewed = c.renewed_ms();
                renewed == 0 || lease_clock() < renewed + c.lease_ms() * 4 / 5
            }
        }
    }

    /// Counts a device of `user` online on this node and makes sure its route names this node;
    /// returns once the route is committed, with the version its transaction read at: every
    /// message committed at or before it is in the device's sync (begun later), so deliveries
    /// of such versions can be skipped for the device; later ones reach this node's inbox or
    /// are in the sync as well. Outside a cluster it does nothing (0).
    pub async fn route_up(&self, user: &str) -> Result<u64, StoreError> {
        let Some(c) = &self.shared.cluster else {
            return Ok(0);
        };
        c.count(user, true);
        let user = user.to_owned();
        self.call(|reply| crate::writer::Op::Route {
            user,
            reply: Some(reply),
        })
        .await
    }

    /// A device of `user` left this node: when it was the last, the route drops this node
    /// (queued; nothing waits for it).
    pub fn route_down(&self, user: &str) {
        let Some(c) = &self.shared.cluster else {
            return;
        };
        c.count(user, false);
        if !c.here(user) && !c.abandoned.load(Ordering::Relaxed) {
            self.queue(crate::writer::Op::Route {
                user: user.to_owned(),
                reply: None,
            });
        }
    }

    /// Makes this node stop, from now on, as a crashed one would (for tests of a node's death):
    /// its routes are no longer withdrawn, and [`crate::Store::close`] leaves its lease to run
    /// out instead of leaving the cluster. Outside a cluster it does nothing.
    pub fn abandon(&self) {
        if let Some(c) = &self.shared.cluster {
            c.abandoned.store(true, Ordering::Relaxed);
        }
    }

    /// A connection of this node watches `user`'s presence: once the node is recorded as a
    /// watcher (`w user node`), every change of it reaches this node's inbox. Returns once that
    /// is committed. Outside a cluster it does nothing.
    pub async fn watch_presence(&self, user: &str) -> Result<(), StoreError> {
        let Some(c) = &self.shared.cluster else {
            return Ok(());
        };
        Cluster::count_in(&c.watched, user, true);
        let user = user.to_owned();
        self.call(|reply| crate::writer::Op::Watch {
            user,
            reply: Some(reply),
        })
        .await
    }

    /// A connection of this node stopped watching `user`'s presence (queued).
    pub fn unwatch_presence(&self, user: &str) {
        let Some(c) = &self.shared.cluster else {
            return;
        };
        Cluster::count_in(&c.watched, user, false);
        if !c.watching(user) && !c.abandoned.load(Ordering::Relaxed) {
            self.queue(crate::writer::Op::Watch {
                user: user.to_owned(),
                reply: None,
            });
        }
    }

    /// Whether `user` is online on some live node, and when it was last seen (ms; 0 unknown):
    /// from its route. Outside a cluster: `None` (the gateway knows).
    pub fn presence_of(&self, user: &str) -> Result<Option<(bool, u64)>, StoreError> {
        let Some(c) = self.shared.cluster.clone() else {
            return Ok(None);
        };
        self.read(|t| {
            let Some(v) = t
                .get_snapshot(&keys::route(user))
                .map_err(StoreError::from)?
            else {
                return Ok(Some((false, 0)));
            };
            let (last_seen, nodes) = decode_route(&v).map_err(StoreError::from)?;
            for n in nodes {
                if c.alive(t, n).map_err(StoreError::from)? {
                    return Ok(Some((true, lease_clock())));
                }
            }
            Ok(Some((false, last_seen)))
        })
    }

    /// Sends `event` to its users' online devices on every node (through the inboxes, in the
    /// next write batch). Queued; nothing waits for it.
    pub fn publish(&self, event: Event) {
        if self.shared.cluster.is_some() {
            self.queue(crate::writer::Op::Publish(event));
        }
    }

    /// One read of the inbox from `cursor` (clearing what came before it if `delivered`):
    /// the deliveries, the key after the last entry read, and when nothing was there, a
    /// watch of the wake key.
    fn read_inbox(
        &self,
        node: u64,
        cursor: &[u8],
        delivered: bool,
    ) -> Result<InboxRead, StoreError> {
        let start = keys::inbox_prefix(node);
        let end = keys::prefix_end(&start);
        transact(&self.shared, self.shared.config.max_retries, |t| {
            if delivered {
                t.clear_range(&start, cursor);
            }
            let pairs = t.scan_snapshot(cursor, &end, INBOX_PAGE, false)?;
            let watch = if pairs.is_empty() {
                Some(t.watch(&keys::wake(node))?)
            } else {
                None
            };
            let next = pairs.last().map(|(k, _)| {
                let mut k = k.clone();
                k.push(0);
                k
            });
            let mut items = Vec::new();
            let mut versions = Vec::new();
            for (k, v) in &pairs {
                let version = k
                    .get(keys::INBOX_STAMP_OFFSET..keys::INBOX_STAMP_OFFSET + 8)
                    .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                let got = decode_items(v)?;
                versions.extend(std::iter::repeat_n(version, got.len()));
                items.extend(got);
            }
            let wanted: Vec<Vec<u8>> = items
                .iter()
                .filter_map(|i| match i {
                    Item::Message { chat, seq, .. } => Some(keys::message(*chat, *seq)),
                    Item::Event(_) | Item::Presence(..) => None,
                })
                .collect();
            let mut found = t.get_many(&wanted)?.into_iter();
            let mut deliveries = Vec::with_capacity(items.len());
            for (item, version) in items.into_iter().zip(versions) {
                match item {
                    Item::Message { users, .. } => {
                        // A message the retention sweep deleted meanwhile is not delivered.
                        if let Some(v) = found.next().flatten() {
                            let message = record::decode_message(&v)
                                .map_err(|_| KvError::fatal("corrupt message"))?;
                            deliveries.push(Delivery::Message {
                                message,
                                users,
                                version,
                            });
                        }
                    }
                    Item::Event(e) => deliveries.push(Delivery::Event(e)),
                    Item::Presence(user, change, last_seen_ms) => {
                        deliveries.push(Delivery::Presence {
                            user,
                            change,
                            last_seen_ms,
                        });
                    }
                }
            }
            Ok((deliveries, next, watch))
        })
        .map_err(|e| {
            limited_warn!(INBOX_ERRORS, "inbox read failed: {e}");
            StoreError::from(e)
        })
    }
}

/// The cluster thread: renews this node's lease, reads the others', takes and renews work
/// leases, and clears what dead nodes left. Runs until `stop`'s sender is dropped; then the
/// node leaves (its lease, inbox and wake key cleared).
pub(crate) fn run(shared: Arc<Shared>, stop: std_mpsc::Receiver<()>) {
    let Some(cluster) = shared.cluster.clone() else {
        return;
    };
    let tick = (cluster.lease / 5).max(Duration::from_millis(10));
    let mut ticks: u64 = 0;
    loop {
        let now = lease_clock();
        if let Err(e) = tend(&shared, &cluster, now, ticks.is_multiple_of(25)) {
            limited_warn!(INBOX_ERRORS, "cluster lease renewal failed: {e}");
        }
        ticks += 1;
        if let Err(std_mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(tick) {
            break;
        }
    }
    if cluster.abandoned.load(Ordering::Relaxed) {
        return;
    }
    // Leaving: nobody should address this node any more.
    let _ = once(&shared, |t| {
        t.clear(&keys::lease(cluster.node));
        let start = keys::inbox_prefix(cluster.node);
        t.clear_range(&start, &keys::prefix_end(&start));
        t.clear(&keys::wake(cluster.node));
        for w in Work::ALL {
            if let Some(v) = t.get(&w.key())? {
                if v.get(..8) == Some(&cluster.node.to_be_bytes()[..]) {
                    t.clear(&w.key());
                }
            }
        }
        Ok(())
    });
}

/// How long a node's mark that it is storing a blob holds if it is never cleared (a crash).
const STORING_MARK_MS: u64 = 3_600_000;

/// How long a deletion's mark holds if it is never cleared.
const DELETING_MARK_MS: u64 = 300_000;

impl crate::Store {
    /// In a cluster, before an upload stores blob `sha256` (or finds it stored): records that
    /// this node is storing it, so that no node deletes it meanwhile. `Ok(None)`: a node is
    /// deleting it right now; wait and ask again. Outside a cluster: `Ok(Some(0))`, nothing
    /// recorded (the gateway's own guard is enough). Hand the token to
    /// [`crate::Store::blob_stored`] once the upload's records are committed (or it failed).
    pub fn blob_storing(&self, sha256: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let Some(c) = self.shared.cluster.clone() else {
            return Ok(Some(0));
        };
        let token = rand::random::<u64>().max(1);
        let now = lease_clock();
        let mut marked = false;
        once(&self.shared, |t| {
            marked = false;
            let start = keys::blob_marks(sha256);
            // A conflict read: a deletion beginning meanwhile makes one of the two retry.
            let marks = t.scan(&start, &keys::prefix_end(&start), 256, false)?;
            let mine = keys::blob_mark(sha256, c.node, token);
            let deleting = marks.iter().any(|(k, v)| {
                keys::blob_mark_node(k) == Some(0)
                    && record::decode_u64(v).is_ok_and(|until| until > now)
            });
            // An earlier attempt that "maybe committed" did.
            if marks.iter().any(|(k, _)| *k == mine) {
                marked = true;
            } else if !deleting {
                let until = now + STORING_MARK_MS;
                t.set(
                    &keys::blob_mark(sha256, c.node, token),
                    &until.to_be_bytes(),
                );
                marked = true;
            }
            Ok(())
        })
        .map_err(StoreError::from)?;
        Ok(marked.then_some(token))
    }

    /// The upload that [`crate::Store::blob_storing`] gave `token` is over.
    pub fn blob_stored(&self, sha256: &[u8; 32], token: u64) -> Result<(), StoreError> {
        let Some(c) = self.shared.cluster.clone() else {
            return Ok(());
        };
        once(&self.shared, |t| {
            t.clear(&keys::blob_mark(sha256, c.node, token));
            Ok(())
        })
        .map_err(StoreError::from)
    }

    /// In a cluster, before deleting blob `sha256`: in one transaction, checks that no media
    /// record uses it and no node is storing it, and records the deletion (so an upload that
    /// begins meanwhile waits for it). `Some(token)`: delete the blob, then call
    /// [`crate::Store::blob_deleted`]; `None`: keep it. Outside a cluster: whether no record
    /// uses it (`Some(0)`).
    pub fn blob_deleting(&self, sha256: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        if self.shared.cluster.is_none() {
            return Ok((!self.blob_in_use(sha256)?).then_some(0));
        }
        let token = rand::random::<u64>().max(1);
        let now = lease_clock();
        let mut deleting = false;
        once(&self.shared, |t| {
            deleting = false;
            let users = keys::blob_users(sha256);
            if !t
                .scan(&users, &keys::prefix_end(&users), 1, false)?
                .is_empty()
            {
                return Ok(());
            }
            let start = keys::blob_marks(sha256);
            let marks = t.scan(&start, &keys::prefix_end(&start), 256, false)?;
            let mine = keys::blob_mark(sha256, 0, token);
            if marks.iter().any(|(k, _)| *k == mine) {
                // An earlier attempt that "maybe committed" did.
                deleting = true;
                return Ok(());
            }
            let mut live = false;
            for (k, v) in &marks {
                if record::decode_u64(v).is_ok_and(|until| until > now) {
                    live = true;
                } else {
                    t.clear(k); // a crashed upload's or deletion's mark
                }
            }
            if !live {
                let until = now + DELETING_MARK_MS;
                t.set(&keys::blob_mark(sha256, 0, token), &until.to_be_bytes());
                deleting = true;
            }
            Ok(())
        })
        .map_err(StoreError::from)?;
        Ok(deleting.then_some(token))
    }

    /// The deletion [`crate::Store::blob_deleting`] gave `token` is done.
    pub fn blob_deleted(&self, sha256: &[u8; 32], token: u64) -> Result<(), StoreError> {
        if self.shared.cluster.is_none() {
            return Ok(());
        }
        once(&self.shared, |t| {
            t.clear(&keys::blob_mark(sha256, 0, token));
            Ok(())
        })
        .map_err(StoreError::from)
    }
}

/// Writes this node's first lease, before anything can name the node.
pub(crate) fn join(shared: &Shared, cluster: &Cluster) -> Result<(), StoreError> {
    let now = lease_clock();
    let until = now + cluster.lease_ms();
    once(shared, |t| {
        t.set(&keys::lease(cluster.node), &until.to_be_bytes());
        Ok(())
    })
    .map_err(StoreError::from)?;
    cluster.renewed_ms.store(now, Ordering::Relaxed);
    Ok(())
}

/// Runs `f` in a write transaction, retried while the engine says so.
fn once(
    shared: &Shared,
    f: impl FnMut(&mut dyn Txn) -> Result<(), KvError>,
) -> Result<(), KvError> {
    transact(shared, 5, f)
}

/// Runs `f` in a transaction and commits it, in a fresh one again (after the writer's wait)
/// while the engine says to retry, at most `retries` times more.
fn transact<T>(
    shared: &Shared,
    retries: u32,
    mut f: impl FnMut(&mut dyn Txn) -> Result<T, KvError>,
) -> Result<T, KvError> {
    let mut tries = 0;
    loop {
        let r = shared.engine.begin().and_then(|mut t| {
            let v = f(&mut *t)?;
            t.commit()?;
            Ok(v)
        });
        match r {
            Err(e) if (e.is_retryable() || e.is_maybe_committed()) && tries < retries => {
                tries += 1;
                std::thread::sleep(crate::writer::retry_wait(&shared.config, tries));
            }
            r => return r,
        }
    }
}

/// One round of the cluster thread; with `sweep`, dead nodes' leftovers are cleared too.
fn tend(shared: &Shared, cluster: &Cluster, now: u64, sweep: bool) -> Result<(), KvError> {
    let lease = cluster.lease_ms();
    let node = cluster.node;
    let until = now + lease;
    // Renew this node's lease and take or keep the work leases that are free.
    let mut taken = Vec::new();
    once(shared, |t| {
        taken.clear();
        t.set(&keys::lease(node), &until.to_be_bytes());
        for w in Work::ALL {
            let free = match t.get(&w.key())? {
                None => true,
                Some(v) if v.len() == 16 => {
                    let holder = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                    let held = u64::from_be_bytes(v[8..].try_into().expect("8 bytes"));
                    holder == node || held <= now
                }
                Some(_) => true,
            };
            if free {
                let mut v = node.to_be_bytes().to_vec();
                v.extend_from_slice(&until.to_be_bytes());
                t.set(&w.key(), &v);
                taken.push(w);
            }
        }
        Ok(())
    })?;
    cluster.renewed_ms.store(now, Ordering::Relaxed);
    {
        let mut owned = cluster.owned.lock().expect("cluster lock");
        owned.clear();
        for w in &taken {
            owned.insert(*w, until);
        }
    }
    // Everyone's leases, and (sweeping) which nodes have inboxes, at one read version.
    let mut t = shared.engine.begin()?;
    let start = vec![keys::tag::LEASE];
    let pairs = t.scan_snapshot(&start, &keys::prefix_end(&start), MAX_NODES, false)?;
    let mut leases = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if let (Some(n), Ok(until)) = (keys::node_of(&k), record::decode_u64(&v)) {
            leases.insert(n, until);
        }
    }
    let mut gone: Vec<u64> = leases
        .iter()
        .filter(|&(_, &until)| until + DEAD_GRACE_MS < now)
        .map(|(&n, _)| n)
        .collect();
    if sweep {
        // Inboxes of nodes with no lease at all (one read per such node).
        let mut from = vec![keys::tag::INBOX];
        let end = keys::prefix_end(&from);
        while let Some((k, _)) = t.scan_snapshot(&from, &end, 1, false)?.pop() {
            let Some(n) = keys::node_of(&k) else { break };
            if !leases.contains_key(&n) && n != node {
                gone.push(n);
            }
            from = keys::prefix_end(&keys::inbox_prefix(n));
        }
    }
    drop(t);
    {
        let mut dead = cluster.dead.lock().expect("cluster lock");
        dead.extend(gone.iter().copied());
        *cluster.leases.lock().expect("cluster lock") = leases;
    }
    if sweep && !gone.is_empty() {
        once(shared, |t| {
            for &n in &gone {
                t.clear(&keys::lease(n));
                let start = keys::inbox_prefix(n);
                t.clear_range(&start, &keys::prefix_end(&start));
                t.clear(&keys::wake(n));
            }
            Ok(())
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_items_round_trip_and_refuse_garbage() {
        let mut b = vec![ITEM_MESSAGE];
        b.put_u64(7);
        b.put_u64(9);
        put_users(&mut b, &["ann", "bob"]);
        b.push(ITEM_EVENT);
        put_str(&mut b, "ann");
        b.put_u32(3);
        put_users(&mut b, &["bob"]);
        b.put_u32(2);
        b.extend_from_slice(b"hi");
        let items = decode_items(&b).unwrap();
        assert!(
            matches!(&items[0], Item::Message { chat: 7, seq: 9, users } if users == &["ann", "bob"])
        );
        assert!(
            matches!(&items[1], Item::Event(e) if e.except == ("ann".into(), 3) && &e.frame[..] == b"hi" && e.users == ["bob"])
        );
        for cut in 0..b.len() {
            // Every prefix decodes to whole items or fails; none panics.
            let _ = decode_items(&b[..cut]);
        }
        assert!(decode_items(&[9]).is_err());
    }

    #[test]
    fn chunks_stay_under_the_value_limit() {
        let mut o = Outgoing::default();
        for _ in 0..100 {
            o.room(10_000).extend_from_slice(&[0; 10_000]);
        }
        assert!(o.chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        assert_eq!(o.chunks.iter().map(Vec::len).sum::<usize>(), 1_000_000);
        // One item bigger than a chunk gets a chunk of its own.
        let mut o = Outgoing::default();
        o.room(10).extend_from_slice(&[0; 10]);
        o.room(70_000).extend_from_slice(&[0; 70_000]);
        assert_eq!(o.chunks.len(), 2);
    }

    #[test]
    fn routes_round_trip() {
        let nodes = [1, 5, u64::MAX];
        assert_eq!(
            decode_route(&encode_route(77, &nodes)).unwrap(),
            (77, nodes.to_vec())
        );
        assert_eq!(decode_route(&encode_route(9, &[])).unwrap(), (9, vec![]));
        assert!(decode_route(&[1, 2, 3]).is_err());
        assert!(decode_route(&[]).is_err());
    }
}
