//! Message-log throughput on the embedded engine: durable appends in batches of 1, 64 and 1024
//! (each append complete: message, dedupe record, retention index, chat metadata), 1024 single
//! appends queued at once (group commit), the same on a store split into 1, 2 and 4 partitions
//! (`store_partitions`), sync reads, and the engine's floor (bare fjall writing the same
//! entries).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_store::{AppendRequest, Store, StoreConfig};
use courier_wire::frame::MessageKind;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::StreamExt;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Batches queued at a time in the batched append benches.
const IN_FLIGHT: usize = 3;

/// A request with a UUIDv7 client message id, as the SDK makes them (time plus randomness;
/// a hash of a counter stands in for the randomness).
fn request(chat: u64, sender: &str) -> AppendRequest {
    let n = u64::from(NEXT.fetch_add(1, Ordering::Relaxed)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&n.to_be_bytes());
    let ms = courier_wire::time::now_ms();
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

/// A runtime and a store in a fresh directory (kept alive by the returned guard), whose writer
/// puts at most `max_batch` appends in one transaction.
fn setup(max_batch: usize) -> (tokio::runtime::Runtime, tempfile::TempDir, Store) {
    setup_partitioned(max_batch, 1)
}

/// [`setup`] with the store split into `partitions`.
fn setup_partitioned(
    max_batch: usize,
    partitions: usize,
) -> (tokio::runtime::Runtime, tempfile::TempDir, Store) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.sweep_interval = None;
    cfg.max_batch = max_batch;
    cfg.partitions = partitions;
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.partitions(), partitions);
    (rt, dir, store)
}

/// 64 direct chats of one sender, so a batch spreads over several chats as real traffic does.
fn chats(rt: &tokio::runtime::Runtime, store: &Store) -> Vec<u64> {
    rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..64 {
            let chat = store.create_direct("sender", &format!("peer{i}")).await;
            v.push(chat.unwrap().id);
        }
        v
    })
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_append");
    g.measurement_time(Duration::from_secs(8));

    // A lone append, waited for: the latency of one transaction and its fsync.
    let (rt, _dir, store) = setup(4096);
    let chat = chats(&rt, &store)[0];
    g.throughput(Throughput::Elements(1));
    g.bench_function("batch_1", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    store.append(request(chat, "sender")).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    rt.block_on(store.close());

    // A steady stream of transactions of exactly `batch` appends (`append_batch` calls, with
    // IN_FLIGHT of them queued at a time as concurrent sessions queue them, so the writer builds
    // one while the previous one commits). Each iteration streams 8 transactions.
    for batch in [64usize, 1024] {
        let (rt, _dir, store) = setup(
            std::env::var("MB")
                .map(|v| v.parse().unwrap())
                .unwrap_or(batch),
        );
        let chats = chats(&rt, &store);
        g.throughput(Throughput::Elements(8 * batch as u64));
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        // The requests are made before the clock starts, as sessions decode
                        // them on their own cores: this measures the store.
                        let batches: Vec<Vec<AppendRequest>> = (0..8)
                            .map(|_| {
                                (0..batch)
                                    .map(|i| request(chats[i % chats.len()], "sender"))
                                    .collect()
                            })
                            .collect();
                        let start = Instant::now();
                        let calls = batches.into_iter().map(|b| store.append_batch(b));
                        let mut answers = futures::stream::iter(calls).buffer_unordered(IN_FLIGHT);
                        while let Some(answer) = answers.next().await {
                            answer.unwrap().into_iter().for_each(|a| {
                                a.unwrap();
                            });
                        }
                        elapsed += start.elapsed();
                    }
                    elapsed
                })
            })
        });
        rt.block_on(store.close());
    }

    // 1024 single sends queued at once, as sessions queue them: group commit batches them.
    let (rt, _dir, store) = setup(4096);
    let chats = chats(&rt, &store);
    g.throughput(Throughput::Elements(1024));
    g.bench_function("queued_1024", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let requests = (0..1024).map(|i| request(chats[i % chats.len()], "sender"));
                    append_all(&store, requests).await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    rt.block_on(store.close());
}

/// 4,096 single sends to 64 chats queued at once, on stores of 1, 2 and 4 partitions (a writer,
/// a commit thread and a database each).
fn partitions(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_partitions");
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(4096));
    for p in [1usize, 2, 4] {
        let (rt, _dir, store) = setup_partitioned(4096, p);
        let chats = chats(&rt, &store);
        g.bench_function(format!("queued_4096_p{p}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let requests = (0..4096).map(|i| request(chats[i % chats.len()], "sender"));
                        append_all(&store, requests).await;
                    }
                    start.elapsed()
                })
            })
        });
        rt.block_on(store.close());
    }
    g.finish();
}

fn sync(c: &mut Criterion) {
    let (rt, _dir, store) = setup(4096);
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

/// The engine's floor: bare fjall, no Courier code, writing the two entries every send needs
/// (a 17-byte message key with a 150-byte value, a 25-byte dedupe key with a 24-byte value)
/// for 1024 messages over 64 chats per batch, one fsync per batch, in fjall's own keyspaces.
/// `store_append/batch_1024` pays this, and Courier's own work on top.
fn floor(c: &mut Criterion) {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};
    let mut g = c.benchmark_group("engine_floor");
    g.measurement_time(Duration::from_secs(8));
    let dir = tempfile::tempdir().unwrap();
    let db = Database::builder(dir.path())
        .worker_threads(1)
        .open()
        .unwrap();
    let messages = db.keyspace("m", KeyspaceCreateOptions::default).unwrap();
    let dedupe = db.keyspace("d", KeyspaceCreateOptions::default).unwrap();
    let mut seqs = [0u64; 64];
    let mut n = 0u64;
    let value = [b'x'; 150];
    g.throughput(Throughput::Elements(1024));
    g.bench_function("fjall_batch_1024", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
                for i in 0..1024 {
                    let chat = i % seqs.len();
                    seqs[chat] += 1;
                    n += 1;
                    let mut key = vec![b'M'];
                    key.extend_from_slice(&(chat as u64).to_be_bytes());
                    key.extend_from_slice(&seqs[chat].to_be_bytes());
                    batch.insert(&messages, key, value.as_slice());
                    let mut key = vec![b'D', 1];
                    key.extend_from_slice(&n.to_be_bytes());
                    key.extend_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
                    key.extend_from_slice(b"\x06sender");
                    batch.insert(&dedupe, key, [7u8; 24].as_slice());
                }
                batch.commit().unwrap();
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, append, partitions, sync, floor);
criterion_main!(benches);
