//! Round trips and wall time of the message log's transactions on a FoundationDB-like cluster:
//! the simulation engine with a latency per round trip (1 ms by default, FoundationDB's usual
//! 0.5-1 ms), for a batch of 1,024 sends and for syncing a user in 1,000 chats of which 10
//! have news.
//!
//! `cargo run --release -p courier-benches --example sim_round_trips -- [latency_us]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_store::engine::sim::{Sim, SimConfig};
use courier_store::{AppendRequest, Store, StoreConfig};
use courier_wire::frame::MessageKind;

fn request(chat: u64, n: u32) -> AppendRequest {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[4..6].copy_from_slice(b"rt");
    AppendRequest {
        sender_user: "alice".into(),
        sender_device: 1,
        client_msg_id: id,
        chat_id: chat,
        kind: MessageKind::Text,
        body: Bytes::from(vec![b'x'; 100]),
        attachments: Vec::new(),
    }
}

/// Runs `f`, and says how many round trips and how long it took.
async fn measure<T>(sim: &Sim, what: &str, f: impl std::future::Future<Output = T>) -> T {
    let (before, started) = (sim.stats(), Instant::now());
    let out = f.await;
    let (after, took) = (sim.stats(), started.elapsed());
    println!(
        "{what}: {} round trips, {} transactions, {:.1} ms",
        after.round_trips - before.round_trips,
        after.transactions - before.transactions,
        took.as_secs_f64() * 1e3
    );
    out
}

#[tokio::main]
async fn main() {
    let latency_us: u64 = std::env::args()
        .nth(1)
        .map_or(1000, |a| a.parse().expect("latency in microseconds"));
    let sim = Sim::new(SimConfig::default());
    let mut config = StoreConfig::new("unused");
    config.sweep_interval = None;
    let store = Store::with_engine(std::sync::Arc::new(sim.clone()), config).unwrap();

    // A user in 1,000 chats, all read up to their last message.
    let mut chats = Vec::new();
    for i in 0..1000 {
        chats.push(
            store
                .create_direct("alice", &format!("u{i}"))
                .await
                .unwrap()
                .id,
        );
    }
    let mut n = 0;
    for &chat in &chats {
        store.append(request(chat, n)).await.unwrap();
        n += 1;
    }
    let acks = chats.iter().map(|&c| (c, 1)).collect();
    store.ack_many("alice", 1, acks).await.unwrap();
    sim.set_latency(Duration::from_micros(latency_us));
    println!("latency per round trip: {latency_us} us");

    let batch: Vec<AppendRequest> = (0..1024)
        .map(|i| {
            n += 1;
            request(chats[i % 64], n)
        })
        .collect();
    let answers = measure(
        &sim,
        "a batch of 1,024 sends (64 chats)",
        store.append_batch(batch),
    )
    .await
    .unwrap();
    assert!(answers.iter().all(Result::is_ok));

    sim.set_latency(Duration::ZERO);
    // News in 10 chats beyond the 64 above: everything else is acknowledged.
    let acks = chats
        .iter()
        .map(|&c| (c, store.last_seq(c).unwrap()))
        .collect();
    store.ack_many("alice", 1, acks).await.unwrap();
    for &chat in &chats[100..110] {
        n += 1;
        store.append(request(chat, n)).await.unwrap();
    }
    sim.set_latency(Duration::from_micros(latency_us));
    let page = measure(&sim, "sync of a user in 1,000 chats, 10 with news", async {
        store.sync("alice", 1, &[], 1000)
    })
    .await
    .unwrap();
    assert_eq!(page.messages.len(), 10);
    sim.set_latency(Duration::ZERO);
    store.close().await;
}
