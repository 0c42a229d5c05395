//! Message-log throughput on the embedded engine: durable appends at batch sizes 1, 64 and 1024
//! (each append complete: message, dedupe record, retention index, chat metadata), and sync reads.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_store::{AppendRequest, Store, StoreConfig};
use courier_wire::frame::MessageKind;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A request with a UUIDv7 client message id, as the SDK makes them (time plus randomness;
/// a hash of a counter stands in for the randomness).
fn request(chat: u64, sender: &str) -> AppendRequest {
    let n = u64::from(NEXT.fetch_add(1, Ordering::Relaxed)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&n.to_be_bytes());
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let id = courier_wire::uuid_v7(ms, random);
    AppendRequest {
        sender_user: sender.to_owned(),
        sender_device: 1,
        client_msg_id: id,
        chat_id: chat,
        kind: MessageKind::Text,
        body: Bytes::from(vec![b'x'; 100]),
        attachments: vec![],
    }
}

/// Queues every request (they share commits), then waits for all of them.
async fn append_all(store: &Store, requests: impl Iterator<Item = AppendRequest>) {
    let mut tickets = Vec::new();
    for r in requests {
        tickets.push(store.submit_append(r).await.unwrap());
    }
    for t in tickets {
        t.wait().await.unwrap();
    }
}

/// A runtime and a store in a fresh directory (kept alive by the returned guard).
fn setup() -> (tokio::runtime::Runtime, tempfile::TempDir, Store) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.sweep_interval = None;
    let store = Store::open(cfg).unwrap();
    (rt, dir, store)
}

fn append(c: &mut Criterion) {
    let (rt, _dir, store) = setup();
    // 64 chats, so a batch spreads over several chats as real traffic does.
    let chats: Vec<u64> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..64 {
            v.push(
                store
                    .create_direct("sender", &format!("peer{i}"))
                    .await
                    .unwrap()
                    .id,
            );
        }
        v
    });
    let mut g = c.benchmark_group("store_append");
    g.measurement_time(Duration::from_secs(8));
    for batch in [1usize, 64, 1024] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let requests =
                            (0..batch).map(|i| request(chats[i % chats.len()], "sender"));
                        append_all(&store, requests).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    rt.block_on(store.close());
}

fn sync(c: &mut Criterion) {
    let (rt, _dir, store) = setup();
    // A user in 100 chats with 100 messages each.
    rt.block_on(async {
        for i in 0..100 {
            let peer = format!("peer{i}");
            let chat = store.create_direct("reader", &peer).await.unwrap().id;
            append_all(&store, (0..100).map(|_| request(chat, &peer))).await;
        }
    });
    let mut g = c.benchmark_group("store_sync");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("sync_page_1000_of_10000", |b| {
        b.iter(|| {
            assert_eq!(
                store.sync("reader", 1, &[], 1000).unwrap().messages.len(),
                1000
            )
        })
    });
    g.finish();
    rt.block_on(store.close());
}

criterion_group!(benches, append, sync);
criterion_main!(benches);
