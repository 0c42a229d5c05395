//! `loadgen run`: closed-loop messaging between pairs of users, with correctness checks.
//!
//! Users are paired into 1:1 chats; every user keeps `--window` sends outstanding to its partner
//! for the warm-up and the measured period, then deliveries drain and the run checks that every
//! acknowledged message was delivered exactly once, in seq order, with each chat's seqs dense.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use courier_client::{Client, Event, Events};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::target::Target;

/// Options of `loadgen run`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Number of users (an even number: they are paired into 1:1 chats).
    #[arg(long, default_value_t = 200)]
    pub(crate) users: usize,
    /// Unacknowledged sends each user keeps outstanding.
    #[arg(long, default_value_t = 32)]
    pub(crate) window: usize,
    /// Message body size in bytes (at least 16).
    #[arg(long, default_value_t = 100)]
    pub(crate) body: usize,
    /// Warm-up seconds (sent but not measured).
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    /// Seconds to wait for outstanding deliveries after sending stops.
    #[arg(long, default_value_t = 10)]
    pub(crate) drain: u64,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What every user task records.
struct Stats {
    measuring_from: Instant,
    measuring_until: Instant,
    acked: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    ack_latency: Mutex<Histogram<u64>>,
    e2e_latency: Mutex<Histogram<u64>>,
    /// Per chat: seqs acknowledged to senders.
    acked_seqs: Mutex<HashMap<u64, Vec<u64>>>,
    /// Per chat: seqs delivered to receivers.
    delivered_seqs: Mutex<HashMap<u64, Vec<u64>>>,
    out_of_order: AtomicU64,
}

impl Stats {
    fn measuring(&self, at: Instant) -> bool {
        at >= self.measuring_from && at < self.measuring_until
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

pub(crate) async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    let _gateway = args.target.prepare()?;
    anyhow::ensure!(
        args.users >= 2 && args.users.is_multiple_of(2),
        "--users must be an even number of at least 2"
    );
    anyhow::ensure!(args.body >= 16, "--body must be at least 16 bytes");
    anyhow::ensure!(args.window >= 1, "--window must be at least 1");
    let users = args.target.users()?;

    eprintln!(
        "connecting {} users to {} ...",
        args.users, args.target.server
    );
    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(args.users);
    for i in 0..args.users {
        clients.push(users.connect(i).await?);
    }
    let mut chats = Vec::with_capacity(args.users);
    for (i, (client, _)) in clients.iter().enumerate() {
        let peer = users.name(i ^ 1);
        chats.push(client.create_direct_chat(&peer).await?.chat_id);
    }
    eprintln!(
        "connected in {:.1} s; warming up {} s, measuring {} s",
        t0.elapsed().as_secs_f64(),
        args.warmup,
        args.duration
    );

    let start = Instant::now();
    let stats = Arc::new(Stats {
        measuring_from: start + Duration::from_secs(args.warmup),
        measuring_until: start + Duration::from_secs(args.warmup + args.duration),
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        ack_latency: Mutex::new(histogram()),
        e2e_latency: Mutex::new(histogram()),
        acked_seqs: Mutex::default(),
        delivered_seqs: Mutex::default(),
        out_of_order: AtomicU64::new(0),
    });
    let stop_at = stats.measuring_until;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for ((client, events), chat) in clients.into_iter().zip(chats) {
        receivers.push(tokio::spawn(receive(events, stats.clone())));
        senders.push(tokio::spawn(send_loop(
            client,
            chat,
            args.clone(),
            stats.clone(),
            stop_at,
        )));
    }
    let mut keep = Vec::new();
    for s in senders {
        keep.push(s.await?);
    }
    // Wait for deliveries to catch up with acknowledgements.
    let acked_total: u64 = stats
        .acked_seqs
        .lock()
        .unwrap()
        .values()
        .map(|v| v.len() as u64)
        .sum();
    let drain_until = Instant::now() + Duration::from_secs(args.drain);
    loop {
        let delivered: u64 = stats
            .delivered_seqs
            .lock()
            .unwrap()
            .values()
            .map(|v| v.len() as u64)
            .sum();
        if delivered >= acked_total || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in &keep {
        c.close();
    }
    for r in receivers {
        r.abort();
    }
    report(&args, &stats)?;
    Ok(())
}

async fn send_loop(
    client: Client,
    chat: u64,
    args: RunArgs,
    stats: Arc<Stats>,
    stop_at: Instant,
) -> Client {
    let window = Arc::new(Semaphore::new(args.window));
    let mut body = BytesMut::with_capacity(args.body);
    loop {
        let permit = window
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        if Instant::now() >= stop_at {
            break;
        }
        body.put_u64(now_us());
        body.put_bytes(b'x', args.body - 8);
        let payload: Bytes = body.split().freeze();
        let (client, stats) = (client.clone(), stats.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            match client.send(chat, payload).await {
                Ok(ok) => {
                    let done = Instant::now();
                    stats
                        .acked_seqs
                        .lock()
                        .unwrap()
                        .entry(ok.chat_id)
                        .or_default()
                        .push(ok.seq);
                    if stats.measuring(done) {
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                        let us = (done - sent).as_micros() as u64;
                        let _ = stats.ack_latency.lock().unwrap().record(us.max(1));
                    }
                }
                Err(e) => {
                    if stats.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("send error: {e}");
                    }
                }
            }
            drop(permit);
        });
    }
    // Wait for this user's outstanding sends.
    let _ = window.acquire_many(args.window as u32).await;
    client
}

async fn receive(mut events: Events, stats: Arc<Stats>) {
    let mut last: HashMap<u64, u64> = HashMap::new();
    while let Some(ev) = events.recv().await {
        let Event::Message(m) = ev else { continue };
        let now = Instant::now();
        let prev = last.insert(m.chat_id, m.seq).unwrap_or(0);
        if m.seq <= prev {
            stats.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        stats
            .delivered_seqs
            .lock()
            .unwrap()
            .entry(m.chat_id)
            .or_default()
            .push(m.seq);
        if stats.measuring(now) {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            if m.body.len() >= 8 {
                let sent = u64::from_be_bytes(m.body[..8].try_into().expect("8 bytes"));
                let _ = stats
                    .e2e_latency
                    .lock()
                    .unwrap()
                    .record(now_us().saturating_sub(sent).max(1));
            }
        }
    }
}

fn report(args: &RunArgs, stats: &Stats) -> anyhow::Result<()> {
    let secs = args.duration as f64;
    let acked = stats.acked.load(Ordering::Relaxed);
    let delivered = stats.delivered.load(Ordering::Relaxed);
    let acked_seqs = stats.acked_seqs.lock().unwrap();
    let delivered_seqs = stats.delivered_seqs.lock().unwrap();
    let (mut lost, mut dup, mut gaps) = (0u64, 0u64, 0u64);
    for (chat, acks) in acked_seqs.iter() {
        let mut acks = acks.clone();
        acks.sort_unstable();
        // Dense: the acknowledged seqs of a chat are exactly 1..=n.
        for (i, s) in acks.iter().enumerate() {
            if *s != i as u64 + 1 {
                gaps += 1;
                break;
            }
        }
        let mut got = delivered_seqs.get(chat).cloned().unwrap_or_default();
        got.sort_unstable();
        let before = got.len();
        got.dedup();
        dup += (before - got.len()) as u64;
        lost += acks
            .iter()
            .filter(|s| got.binary_search(s).is_err())
            .count() as u64;
    }
    let ack = stats.ack_latency.lock().unwrap();
    let e2e = stats.e2e_latency.lock().unwrap();
    let errors = stats.errors.load(Ordering::Relaxed);
    let ooo = stats.out_of_order.load(Ordering::Relaxed);
    println!();
    println!(
        "users {} ({} chats), window {}, body {} B, measured {} s",
        args.users,
        args.users / 2,
        args.window,
        args.body,
        args.duration
    );
    println!(
        "{:<22} {:>12}",
        "acknowledged msg/s",
        format!("{:.0}", acked as f64 / secs)
    );
    println!(
        "{:<22} {:>12}",
        "delivered msg/s",
        format!("{:.0}", delivered as f64 / secs)
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "latency (us)", "p50", "p99", "p99.9", "max"
    );
    for (name, h) in [("send -> SendOk", &*ack), ("send -> Deliver", &*e2e)] {
        println!(
            "{name:<22} {:>10} {:>10} {:>10} {:>10}",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
    println!("correctness: lost={lost} dup={dup} gaps={gaps} out_of_order={ooo} errors={errors}");
    println!(
        "loadgen run: conns={} acked_per_s={:.0} delivered_per_s={:.0} ack_p50_us={} ack_p99_us={} e2e_p50_us={} e2e_p99_us={} e2e_p999_us={} lost={lost} dup={dup} gaps={gaps} errors={errors}",
        args.users,
        acked as f64 / secs,
        delivered as f64 / secs,
        ack.value_at_quantile(0.5),
        ack.value_at_quantile(0.99),
        e2e.value_at_quantile(0.5),
        e2e.value_at_quantile(0.99),
        e2e.value_at_quantile(0.999),
    );
    if let Some(path) = &args.json {
        let hist = |h: &Histogram<u64>| {
            format!(
                "{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{},\"count\":{}}}",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                h.len()
            )
        };
        let json = format!(
            "{{\"mode\":\"run\",\"users\":{},\"chats\":{},\"window\":{},\"body_bytes\":{},\"warmup_s\":{},\"duration_s\":{},\"sockets\":{},\"acked\":{acked},\"delivered\":{delivered},\"acked_per_s\":{:.1},\"delivered_per_s\":{:.1},\"send_to_sendok_us\":{},\"send_to_deliver_us\":{},\"lost\":{lost},\"dup\":{dup},\"gaps\":{gaps},\"out_of_order\":{ooo},\"errors\":{errors}}}\n",
            args.users,
            args.users / 2,
            args.window,
            args.body,
            args.warmup,
            args.duration,
            args.target.sockets,
            acked as f64 / secs,
            delivered as f64 / secs,
            hist(&ack),
            hist(&e2e),
        );
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
