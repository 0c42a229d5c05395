//! The traffic: users in 1:1 pairs (or groups of `--group-size`), each with its own connection,
//! sending to its chat in a closed loop (a window of unacknowledged sends) or an open loop (a
//! fixed schedule), and what they record.
//!
//! A run is one or more phases (`loadgen peak` runs one per rate step) over the same fleet.
//! Each phase has a [`Meter`]: rates and latency histograms of the messages *intended* inside
//! its measured window. Latency is measured from the intended send time, so a sender that falls
//! behind its schedule, or waits for a window slot, counts the wait (no coordinated omission).
//! The [`Ledger`] spans the whole run and checks correctness: every acknowledged message
//! delivered exactly once to every other member of its chat, each chat's seqs dense and
//! delivered in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use courier_client::connection::new_client_msg_id;
use courier_client::{Client, Event, Events};
use courier_wire::frame::{Frame, MessageKind, Send, SendOk};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::pacer::{Pacer, PacerHandle};
use crate::target::{Target, Users};

/// How senders pace themselves.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pace {
    /// Each user keeps `window` unacknowledged sends outstanding.
    Closed { window: usize },
    /// `rate` messages per second in total, spread evenly over the users; each user has at most
    /// `max_outstanding` unacknowledged sends (beyond that it waits, and the wait is counted).
    Open { rate: f64, max_outstanding: usize },
}

/// Wall-clock microseconds anchored to one monotonic instant, so that intended send times can
/// travel in message bodies and be compared with arrival times in the same process.
#[derive(Clone, Copy)]
struct Clock {
    base: Instant,
    base_us: u64,
}

impl Clock {
    fn new() -> Self {
        let base_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Self {
            base: Instant::now(),
            base_us,
        }
    }

    fn us(&self, at: Instant) -> u64 {
        self.base_us + at.saturating_duration_since(self.base).as_micros() as u64
    }

    fn instant(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us.saturating_sub(self.base_us))
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// What one phase measured.
pub(crate) struct Meter {
    phase: u32,
    from: Instant,
    until: Instant,
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    ack: Mutex<Histogram<u64>>,
    e2e: Mutex<E2e>,
    /// Per timeline slot: the most a send went out after its intended time, microseconds
    /// (the load generator itself falling behind).
    late: Vec<AtomicU64>,
    /// How long after its intended time each send went out (the load generator's own pacing
    /// error, part of every send->Deliver figure), microseconds.
    late_hist: Mutex<Histogram<u64>>,
}

/// Width of one timeline slot.
const SLOT: Duration = Duration::from_millis(100);

/// The timeline slot of a message intended `offset` into the measured window.
fn slot_of(offset: Duration) -> usize {
    (offset.as_micros() / SLOT.as_micros()) as usize
}

/// send->Deliver latencies: the histogram, and a timeline by intended send time.
struct E2e {
    hist: Histogram<u64>,
    timeline: Vec<Slot>,
}

/// The messages intended within one [`SLOT`] of the measured window, as delivered.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Slot {
    /// Start of the slot, ms into the measured window.
    pub(crate) at_ms: u64,
    pub(crate) delivered: u64,
    /// Highest send->Deliver latency of the slot's messages, microseconds.
    pub(crate) max_us: u64,
    /// Most a send of the slot went out after its intended time, microseconds (open loop:
    /// how far the load generator itself fell behind).
    pub(crate) max_send_late_us: u64,
}

impl E2e {
    fn record(&mut self, offset: Duration, us: u64) {
        let _ = self.hist.record(us);
        if let Some(slot) = self.timeline.get_mut(slot_of(offset)) {
            slot.delivered += 1;
            slot.max_us = slot.max_us.max(us);
        }
    }
}

impl Meter {
    fn new(phase: u32, from: Instant, until: Instant) -> Self {
        let slots = until
            .duration_since(from)
            .as_micros()
            .div_ceil(SLOT.as_micros()) as usize;
        Self {
            phase,
            from,
            until,
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            ack: Mutex::new(histogram()),
            e2e: Mutex::new(E2e {
                hist: histogram(),
                timeline: (0..slots)
                    .map(|i| Slot {
                        at_ms: i as u64 * SLOT.as_millis() as u64,
                        ..Slot::default()
                    })
                    .collect(),
            }),
            late: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            late_hist: Mutex::new(histogram()),
        }
    }

    fn measuring(&self, intended: Instant) -> bool {
        intended >= self.from && intended < self.until
    }

    /// Notes that a send intended at `intended` (in the window) went out `late`.
    fn sent_late(&self, intended: Instant, late: Duration) {
        let us = late.as_micros() as u64;
        let _ = self
            .late_hist
            .lock()
            .expect("histogram lock")
            .record(us.max(1));
        if let Some(slot) = self
            .late
            .get(slot_of(intended.saturating_duration_since(self.from)))
        {
            slot.fetch_max(us, Ordering::Relaxed);
        }
    }

    /// Counters so far: (sent, acked, delivered, errors) of messages intended in the window.
    pub(crate) fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// The measured window.
    pub(crate) fn window(&self) -> (Instant, Instant) {
        (self.from, self.until)
    }

    /// Whether the measured window has begun, and how far into it we are.
    pub(crate) fn progress(&self) -> Option<Duration> {
        Instant::now().checked_duration_since(self.from)
    }

    /// The p99 of send->Deliver so far, in microseconds.
    pub(crate) fn e2e_p99(&self) -> u64 {
        self.e2e
            .lock()
            .expect("histogram lock")
            .hist
            .value_at_quantile(0.99)
    }

    /// The phase's figures.
    pub(crate) fn result(&self, label: String, pace: Pace) -> PhaseResult {
        let secs = self.until.duration_since(self.from).as_secs_f64().max(1e-9);
        let (sent, acked, delivered, errors) = self.counts();
        let e2e = self.e2e.lock().expect("histogram lock");
        let (window, target_rate) = match pace {
            Pace::Closed { window } => (Some(window), None),
            Pace::Open { rate, .. } => (None, Some(rate)),
        };
        PhaseResult {
            label,
            window,
            target_rate,
            seconds: secs,
            sent,
            acked,
            delivered,
            errors,
            sent_per_s: sent as f64 / secs,
            acked_per_s: acked as f64 / secs,
            delivered_per_s: delivered as f64 / secs,
            send_to_sendok_us: Percentiles::of(&self.ack.lock().expect("histogram lock")),
            send_to_deliver_us: Percentiles::of(&e2e.hist),
            send_late_us: Percentiles::of(&self.late_hist.lock().expect("histogram lock")),
            timeline: e2e
                .timeline
                .iter()
                .zip(&self.late)
                .map(|(s, late)| Slot {
                    max_send_late_us: late.load(Ordering::Relaxed),
                    ..*s
                })
                .collect(),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) count: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        }
    }
}

/// The figures of one phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseResult {
    pub(crate) label: String,
    pub(crate) window: Option<usize>,
    pub(crate) target_rate: Option<f64>,
    pub(crate) seconds: f64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    pub(crate) errors: u64,
    pub(crate) sent_per_s: f64,
    pub(crate) acked_per_s: f64,
    pub(crate) delivered_per_s: f64,
    pub(crate) send_to_sendok_us: Percentiles,
    pub(crate) send_to_deliver_us: Percentiles,
    /// How late after its intended time each send went out: the load generator's own pacing
    /// error (open loop: timer resolution and waiting for a CPU), included in both figures
    /// above.
    pub(crate) send_late_us: Percentiles,
    /// send->Deliver by intended send time, per 100 ms of the measured window (in the JSON
    /// report: where in the run a tail came from).
    pub(crate) timeline: Vec<Slot>,
}

/// Correctness over the whole run.
#[derive(Default)]
struct Ledger {
    /// Per chat: its members (user indexes) and the seqs before the run's first message (1
    /// for a group: its creation).
    chats: HashMap<u64, (Vec<usize>, u64)>,
    /// Per chat: seqs acknowledged to senders, and who sent each.
    acked: Mutex<HashMap<u64, Vec<(u64, usize)>>>,
    /// Per chat and receiving user: seqs delivered.
    delivered: Mutex<HashMap<(u64, usize), Vec<u64>>>,
    /// Deliveries the acknowledged messages call for (one per other member).
    expected_total: AtomicU64,
    acked_total: AtomicU64,
    delivered_total: AtomicU64,
    out_of_order: AtomicU64,
    errors: AtomicU64,
}

impl Ledger {
    /// Records an acknowledged send.
    fn acked(&self, o: &Outstanding, ok: &SendOk) {
        let us = Instant::now().duration_since(o.intended).as_micros() as u64;
        self.acked
            .lock()
            .expect("ledger lock")
            .entry(ok.chat_id)
            .or_default()
            .push((ok.seq, o.sender));
        self.acked_total.fetch_add(1, Ordering::Relaxed);
        let others = self
            .chats
            .get(&ok.chat_id)
            .map_or(1, |(m, _)| m.len().saturating_sub(1));
        self.expected_total
            .fetch_add(others as u64, Ordering::Relaxed);
        if o.measured {
            o.meter.acked.fetch_add(1, Ordering::Relaxed);
            let _ = o
                .meter
                .ack
                .lock()
                .expect("histogram lock")
                .record(us.max(1));
        }
    }

    /// Records a failed send (the first few are printed).
    fn error(&self, meter: &Meter, measured: bool, why: &str) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("send error: {why}");
        }
        if measured {
            meter.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the ledger found.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Correctness {
    /// Acknowledged messages never delivered.
    pub(crate) lost: u64,
    /// Messages delivered more than once.
    pub(crate) dup: u64,
    /// Chats whose acknowledged seqs are not exactly 1..=n.
    pub(crate) gaps: u64,
    /// Deliveries whose seq was not above the previous one of the chat.
    pub(crate) out_of_order: u64,
    /// Failed sends.
    pub(crate) errors: u64,
}

impl Correctness {
    pub(crate) fn clean(&self) -> bool {
        self.lost == 0 && self.dup == 0 && self.gaps == 0 && self.out_of_order == 0
    }
}

impl Ledger {
    fn check(&self) -> Correctness {
        let acked = self.acked.lock().expect("ledger lock");
        let delivered = self.delivered.lock().expect("ledger lock");
        let mut c = Correctness {
            out_of_order: self.out_of_order.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            ..Correctness::default()
        };
        for (chat, acks) in acked.iter() {
            let mut acks = acks.clone();
            acks.sort_unstable();
            let (members, base) = self.chats.get(chat).cloned().unwrap_or_default();
            if acks
                .iter()
                .enumerate()
                .any(|(i, &(s, _))| s != base + i as u64 + 1)
            {
                c.gaps += 1;
            }
            for member in members {
                let mut got = delivered.get(&(*chat, member)).cloned().unwrap_or_default();
                got.sort_unstable();
                let before = got.len();
                got.dedup();
                c.dup += (before - got.len()) as u64;
                c.lost += acks
                    .iter()
                    .filter(|&&(s, sender)| sender != member && got.binary_search(&s).is_err())
                    .count() as u64;
            }
        }
        c
    }
}

struct Member {
    client: Client,
    chat: u64,
    flight: Flight,
}

/// A send on the wire awaiting its answer: what the receiver needs to record it.
struct Outstanding {
    /// The sending user.
    sender: usize,
    intended: Instant,
    measured: bool,
    meter: Arc<Meter>,
    /// The phase's window: the answer gives its place back.
    slots: Arc<Semaphore>,
}

/// One user's sends awaiting answers, by request id: filled by the phase's sender, emptied by
/// the user's receiver (which sees the `SendOk`s on the event stream). Once the connection is
/// closed, nothing more is added and everything left counts as an error.
#[derive(Default)]
struct Flights {
    closed: bool,
    sends: HashMap<u32, Outstanding>,
}

type Flight = Arc<Mutex<Flights>>;

/// Takes the send answered under `request_id` out of `flight` (None if already failed).
fn answered(flight: &Flight, request_id: u32) -> Option<Outstanding> {
    flight
        .lock()
        .expect("flight lock")
        .sends
        .remove(&request_id)
}

impl Outstanding {
    /// Records the send as acknowledged and gives its place in the window back.
    fn acked(self, ledger: &Ledger, ok: &SendOk) {
        ledger.acked(&self, ok);
        self.slots.add_permits(1);
    }

    /// Records the send as failed and gives its place in the window back.
    fn failed(self, ledger: &Ledger, why: &str) {
        ledger.error(&self.meter, self.measured, why);
        self.slots.add_permits(1);
    }
}

/// Connected users, their chats, and the receivers recording what arrives.
pub(crate) struct Fleet {
    members: Vec<Member>,
    ledger: Arc<Ledger>,
    current: Arc<RwLock<Arc<Meter>>>,
    receivers: Vec<JoinHandle<()>>,
    /// The UDP endpoints the connections share (to let their closes reach the gateway).
    endpoints: Vec<quinn::Endpoint>,
    clock: Clock,
    body: usize,
    phases: u32,
    /// Wakes open-loop senders at their intended times.
    pacer: Pacer,
}

impl Fleet {
    /// Connects `count` users (a multiple of `group`), puts them in chats of `group` (1:1
    /// chats for 2, groups beyond), and starts receiving.
    pub(crate) async fn connect(
        target: &Target,
        count: usize,
        group: usize,
        body: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (2..=100).contains(&group),
            "--group-size must be from 2 (1:1 chats) to 100"
        );
        anyhow::ensure!(
            count >= group && count.is_multiple_of(group),
            "--users must be a multiple of the group size ({group}), at least one group"
        );
        anyhow::ensure!(body >= 16, "--body must be at least 16 bytes");
        let users: Users = target.users()?;
        eprintln!("connecting {count} users to {} ...", users.servers());
        let t0 = Instant::now();
        let mut connected = Vec::with_capacity(count);
        for i in 0..count {
            connected.push(users.connect(i).await?);
        }
        let clock = Clock::new();
        // Each chat: a 1:1 chat of a pair, or a group its first member creates.
        let mut chat_of = Vec::with_capacity(count);
        let mut chats = HashMap::new();
        for g in 0..count / group {
            let first = g * group;
            let others: Vec<String> = (first + 1..first + group).map(|i| users.name(i)).collect();
            let client = &connected[first].0;
            let (chat, base) = if group == 2 {
                (client.create_direct_chat(&others[0]).await?.chat_id, 0)
            } else {
                let refs: Vec<&str> = others.iter().map(String::as_str).collect();
                let name = format!("loadgen {g}");
                (client.create_group(&name, &refs).await?.chat_id, 1)
            };
            chat_of.extend(std::iter::repeat_n(chat, group));
            chats.insert(chat, ((first..first + group).collect::<Vec<_>>(), base));
        }
        let ledger = Arc::new(Ledger {
            chats,
            ..Ledger::default()
        });
        let idle = Arc::new(Meter::new(0, clock.base, clock.base));
        let current = Arc::new(RwLock::new(idle));
        let mut members = Vec::with_capacity(count);
        let mut receivers = Vec::with_capacity(count);
        for (i, (client, events)) in connected.into_iter().enumerate() {
            let chat = chat_of[i];
            let flight = Flight::default();
            receivers.push(tokio::spawn(receive(
                i,
                events,
                flight.clone(),
                ledger.clone(),
                current.clone(),
                clock,
            )));
            members.push(Member {
                client,
                chat,
                flight,
            });
        }
        eprintln!(
            "connected {count} users ({} chats of {group}) in {:.1} s",
            count / group,
            t0.elapsed().as_secs_f64()
        );
        Ok(Self {
            members,
            ledger,
            current,
            receivers,
            endpoints: users.endpoints().to_vec(),
            clock,
            body,
            phases: 0,
            pacer: Pacer::start().context("start the pacing thread")?,
        })
    }

    /// Number of connected users.
    pub(crate) fn users(&self) -> usize {
        self.members.len()
    }

    /// Every user's connection (clones share them), to sample their datagram counts.
    pub(crate) fn clients(&self) -> Vec<Client> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// Starts a phase: `warmup` unmeasured, then `duration` measured. Returns its meter at once;
    /// [`Phase::finish`] waits for its senders and then (up to `drain`) for its deliveries.
    pub(crate) fn start(&mut self, pace: Pace, warmup: Duration, duration: Duration) -> Phase {
        self.phases += 1;
        let start = Instant::now();
        let from = start + warmup;
        let meter = Arc::new(Meter::new(self.phases, from, from + duration));
        *self.current.write().expect("meter lock") = meter.clone();
        let n = self.members.len();
        let senders = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = Sender {
                    me: i,
                    client: m.client.clone(),
                    chat: m.chat,
                    flight: m.flight.clone(),
                    meter: meter.clone(),
                    ledger: self.ledger.clone(),
                    clock: self.clock,
                    body: self.body,
                };
                match pace {
                    Pace::Closed { window } => tokio::spawn(s.closed(window)),
                    Pace::Open {
                        rate,
                        max_outstanding,
                    } => {
                        let per_user = rate / n as f64;
                        // Users start at evenly spread offsets within one interval.
                        let offset = Duration::from_secs_f64(i as f64 / n as f64 / per_user);
                        tokio::spawn(s.open(
                            per_user,
                            start + offset,
                            max_outstanding,
                            self.pacer.handle(),
                        ))
                    }
                }
            })
            .collect();
        Phase {
            meter,
            senders,
            ledger: self.ledger.clone(),
        }
    }

    /// Checks every chat after all phases; call after the last phase finished.
    pub(crate) fn check(&self) -> Correctness {
        self.ledger.check()
    }

    /// Closes every connection, and waits (up to two seconds) until the gateway has heard of
    /// it: a process that exits first leaves the gateway holding them until its idle timeout.
    pub(crate) async fn close(self) {
        for m in &self.members {
            m.client.close();
        }
        for r in self.receivers {
            r.abort();
        }
        crate::target::wait_idle(&self.endpoints, Duration::from_secs(2)).await;
    }
}

/// A running phase.
pub(crate) struct Phase {
    meter: Arc<Meter>,
    senders: Vec<JoinHandle<()>>,
    ledger: Arc<Ledger>,
}

impl Phase {
    pub(crate) fn meter(&self) -> Arc<Meter> {
        self.meter.clone()
    }

    /// Waits for the senders (and their outstanding sends), then up to `drain` for every
    /// acknowledged message to be delivered.
    pub(crate) async fn finish(self, drain: Duration) -> Arc<Meter> {
        for s in self.senders {
            let _ = s.await;
        }
        let until = Instant::now() + drain;
        while Instant::now() < until
            && self.ledger.delivered_total.load(Ordering::Relaxed)
                < self.ledger.expected_total.load(Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.meter
    }
}

/// One user's sending side in one phase.
struct Sender {
    /// The user's index.
    me: usize,
    client: Client,
    chat: u64,
    flight: Flight,
    meter: Arc<Meter>,
    ledger: Arc<Ledger>,
    clock: Clock,
    body: usize,
}

/// The load generator writes `Send` frames itself and reads the answers on the user's event
/// stream (the SDK's `send` would add a waiting future, a oneshot and a pending-map entry per
/// message: the load generator shares the machine with the gateway, so it keeps its own cost
/// per message small).
impl Sender {
    /// Keeps `window` sends outstanding until the phase ends (at most what the server allows).
    async fn closed(self, window: usize) {
        let window = self.window(window);
        let slots = Arc::new(Semaphore::new(window));
        let mut buf = BytesMut::new();
        loop {
            slots.acquire().await.expect("semaphore open").forget();
            let now = Instant::now();
            if now >= self.meter.until {
                slots.add_permits(1);
                break;
            }
            if !self.send(&mut buf, now, false, &slots).await {
                break;
            }
        }
        let _ = slots.acquire_many(window as u32).await;
    }

    /// Sends on a schedule of `per_user` messages per second from `first`, until the phase ends.
    /// Beyond `max_outstanding` unanswered sends it waits for answers (late sends keep their
    /// intended times, so the wait is counted).
    async fn open(self, per_user: f64, first: Instant, max_outstanding: usize, pacer: PacerHandle) {
        let window = self.window(max_outstanding);
        let interval = Duration::from_secs_f64(1.0 / per_user.max(1e-6));
        let slots = Arc::new(Semaphore::new(window));
        let mut buf = BytesMut::new();
        let mut next = first;
        'schedule: while next < self.meter.until {
            pacer.sleep_until(next).await;
            let now = Instant::now();
            // Everything due by now goes out, each stamped with its own intended time.
            while next <= now && next < self.meter.until {
                slots.acquire().await.expect("semaphore open").forget();
                if !self.send(&mut buf, next, true, &slots).await {
                    break 'schedule;
                }
                next += interval;
            }
        }
        let _ = slots.acquire_many(window as u32).await;
    }

    /// Unanswered sends allowed: `asked`, but no more than the server accepts.
    fn window(&self, asked: usize) -> usize {
        asked
            .min(self.client.welcome().max_inflight as usize)
            .max(1)
    }

    /// Puts one `Send` on the wire, in a window place the caller took; false when the
    /// connection is gone (counted as an error, the place given back). A `scheduled` send
    /// (open loop) records how late it went out.
    async fn send(
        &self,
        buf: &mut BytesMut,
        intended: Instant,
        scheduled: bool,
        slots: &Arc<Semaphore>,
    ) -> bool {
        buf.put_u64(self.clock.us(intended));
        buf.put_u32(self.meter.phase);
        buf.put_bytes(b'x', self.body - 12);
        let body: Bytes = buf.split().freeze();
        let measured = self.meter.measuring(intended);
        let request_id = self.client.next_request_id();
        let frame = Frame::Send(Send {
            request_id,
            client_msg_id: new_client_msg_id(),
            chat_id: self.chat,
            kind: MessageKind::Text,
            body,
            attachments: Vec::new(),
        });
        {
            let mut f = self.flight.lock().expect("flight lock");
            if f.closed {
                drop(f);
                self.ledger
                    .error(&self.meter, measured, "connection closed");
                slots.add_permits(1);
                return false;
            }
            f.sends.insert(
                request_id,
                Outstanding {
                    sender: self.me,
                    intended,
                    measured,
                    meter: self.meter.clone(),
                    slots: slots.clone(),
                },
            );
        }
        if measured {
            self.meter.sent.fetch_add(1, Ordering::Relaxed);
            if scheduled {
                self.meter
                    .sent_late(intended, Instant::now().saturating_duration_since(intended));
            }
        }
        if let Err(e) = self.client.send_raw(frame.to_bytes()).await {
            // Unless the receiver, seeing the connection close, already failed it.
            if let Some(o) = answered(&self.flight, request_id) {
                o.failed(&self.ledger, &e.to_string());
            }
            return false;
        }
        true
    }
}

/// One user's receiving side, for the whole run: deliveries, and the answers to its sends.
async fn receive(
    me: usize,
    mut events: Events,
    flight: Flight,
    ledger: Arc<Ledger>,
    current: Arc<RwLock<Arc<Meter>>>,
    clock: Clock,
) {
    let mut last: HashMap<u64, u64> = HashMap::new();
    while let Some(ev) = events.recv().await {
        let m = match ev {
            Event::Message(m) => m,
            Event::Frame(Frame::SendOk(ok)) => {
                if let Some(o) = answered(&flight, ok.request_id) {
                    o.acked(&ledger, &ok);
                }
                continue;
            }
            Event::Frame(Frame::ErrorFrame(e)) => {
                if let Some(o) = answered(&flight, e.request_id) {
                    o.failed(&ledger, &e.message);
                }
                continue;
            }
            Event::Frame(Frame::RetryLater(e)) => {
                if let Some(o) = answered(&flight, e.request_id) {
                    o.failed(&ledger, &e.message);
                }
                continue;
            }
            Event::Closed(reason) => {
                // Nothing will answer the sends still out: each is an error.
                let left: Vec<Outstanding> = {
                    let mut f = flight.lock().expect("flight lock");
                    f.closed = true;
                    f.sends.drain().map(|(_, o)| o).collect()
                };
                for o in left {
                    o.failed(&ledger, &reason);
                }
                continue;
            }
            _ => continue,
        };
        if m.kind == MessageKind::System {
            continue; // a group's creation
        }
        let now = Instant::now();
        let prev = last.insert(m.chat_id, m.seq).unwrap_or(0);
        if m.seq <= prev {
            ledger.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        ledger
            .delivered
            .lock()
            .expect("ledger lock")
            .entry((m.chat_id, me))
            .or_default()
            .push(m.seq);
        ledger.delivered_total.fetch_add(1, Ordering::Relaxed);
        if m.body.len() < 12 {
            continue;
        }
        let intended_us = u64::from_be_bytes(m.body[..8].try_into().expect("8 bytes"));
        let phase = u32::from_be_bytes(m.body[8..12].try_into().expect("4 bytes"));
        let meter = current.read().expect("meter lock").clone();
        let intended = clock.instant(intended_us);
        if phase == meter.phase && meter.measuring(intended) {
            meter.delivered.fetch_add(1, Ordering::Relaxed);
            let us = clock.us(now).saturating_sub(intended_us).max(1);
            meter
                .e2e
                .lock()
                .expect("histogram lock")
                .record(intended.saturating_duration_since(meter.from), us);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_expects_each_message_once_at_every_other_member() {
        let ledger = Ledger {
            chats: HashMap::from([(7, (vec![0, 1, 2], 1)), (8, (vec![3, 4], 0))]),
            ..Ledger::default()
        };
        // Group 7 (its creation is seq 1): user 0 sent 2, user 1 sent 3. Direct chat 8: 1, 2.
        ledger
            .acked
            .lock()
            .unwrap()
            .extend([(7, vec![(2, 0), (3, 1)]), (8, vec![(1, 3), (2, 4)])]);
        let deliver = |chat: u64, to: usize, seqs: &[u64]| {
            ledger
                .delivered
                .lock()
                .unwrap()
                .entry((chat, to))
                .or_default()
                .extend_from_slice(seqs);
        };
        deliver(7, 0, &[3]);
        deliver(7, 1, &[2]);
        deliver(7, 2, &[2, 3, 3]);
        deliver(8, 4, &[1]);
        deliver(8, 3, &[2]);
        let c = ledger.check();
        assert_eq!((c.lost, c.dup, c.gaps), (0, 1, 0), "{c:?}");
        // A member missing one: lost, even though others got it.
        ledger.delivered.lock().unwrap().remove(&(7, 1));
        assert_eq!(ledger.check().lost, 1);
        // A hole in a chat's acknowledged seqs (after the group's creation) is a gap.
        ledger
            .acked
            .lock()
            .unwrap()
            .get_mut(&7)
            .unwrap()
            .push((5, 2));
        assert_eq!(ledger.check().gaps, 1);
    }

    #[test]
    fn the_timeline_keeps_count_and_worst_latency_per_slot_of_intended_time() {
        let from = Instant::now();
        let meter = Meter::new(1, from, from + Duration::from_millis(1_050));
        let mut e2e = meter.e2e.lock().unwrap();
        assert_eq!(e2e.timeline.len(), 11, "1.05 s in 100 ms slots");
        assert_eq!(e2e.timeline[10].at_ms, 1_000);
        e2e.record(Duration::from_millis(5), 900);
        e2e.record(Duration::from_millis(99), 4_000);
        e2e.record(Duration::from_millis(100), 300);
        e2e.record(Duration::from_millis(1_049), 70_000);
        // Past the window (cannot happen for measured messages): counted in the histogram only.
        e2e.record(Duration::from_millis(1_100), 1);
        let slots: Vec<(u64, u64)> = e2e
            .timeline
            .iter()
            .map(|s| (s.delivered, s.max_us))
            .collect();
        assert_eq!(slots[0], (2, 4_000));
        assert_eq!(slots[1], (1, 300));
        assert_eq!(slots[10], (1, 70_000));
        assert!(slots[2..10].iter().all(|&s| s == (0, 0)));
        assert_eq!(e2e.hist.len(), 5);
        drop(e2e);
        meter.sent_late(from + Duration::from_millis(150), Duration::from_micros(40));
        meter.sent_late(from + Duration::from_millis(160), Duration::from_micros(7));
        meter.sent_late(from + Duration::from_secs(5), Duration::from_micros(9)); // outside
        let r = meter.result(String::new(), Pace::Closed { window: 1 });
        assert_eq!(r.timeline[1].max_send_late_us, 40);
        assert_eq!(r.timeline[1].max_us, 300);
        assert!(r.timeline.iter().filter(|s| s.max_send_late_us > 0).count() == 1);
        // Every late send is in the histogram, whichever slot it fell in.
        assert_eq!(r.send_late_us.count, 3);
        assert_eq!(r.send_late_us.max, 40);
        assert_eq!(r.send_late_us.p50, 9);
    }
}
