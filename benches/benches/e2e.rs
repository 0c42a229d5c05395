//! The whole path in one process: client -> gateway (QUIC on 127.0.0.1) -> store (durable commit)
//! -> fanout -> client. `e2e/one_message` is the latency of one message from `send` until the
//! recipient holds its `Deliver`; `e2e/window_256` streams 256 messages with all of them in flight
//! and counts until every one was acknowledged to the sender and delivered to the recipient.

use std::time::{Duration, Instant};

use courier_auth::{Claims, IssuerKey, TokenVerifier};
use courier_client::{Client, Event, Events, Trust};
use courier_gateway::tls::TlsIdentity;
use courier_gateway::{Gateway, GatewayConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Setup {
    _dir: tempfile::TempDir,
    gateway: Gateway,
    alice: Client,
    _alice_events: Events,
    _bob: Client,
    bob_events: Events,
    chat: u64,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let issuer = IssuerKey::generate();
    let (tls, _) = TlsIdentity::self_signed_in(&dir.path().join("tls")).unwrap();
    let trust = Trust::File(tls.cert_path.clone());
    let verifier = TokenVerifier::new(issuer.public_key());
    let mut config = GatewayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("store"),
        tls,
        verifier,
    );
    config.shards = 1;
    let gateway = Gateway::start(config).await.unwrap();
    let expires_at = courier_wire::time::now_secs() + 3600;
    let token = |user: &str| {
        issuer.mint(&Claims {
            user: user.into(),
            device: 1,
            expires_at,
        })
    };
    let addr = gateway.local_addr();
    let (alice, alice_events) = Client::connect(addr, "localhost", &trust, &token("alice"))
        .await
        .unwrap();
    let (bob, bob_events) = Client::connect(addr, "localhost", &trust, &token("bob"))
        .await
        .unwrap();
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    Setup {
        _dir: dir,
        gateway,
        alice,
        _alice_events: alice_events,
        _bob: bob,
        bob_events,
        chat,
    }
}

/// Waits for `n` messages to reach the recipient.
async fn delivered(events: &mut Events, n: usize) {
    let mut got = 0;
    while got < n {
        match events.recv().await {
            Some(Event::Message(_)) => got += 1,
            Some(_) => {}
            None => panic!("recipient's connection ended"),
        }
    }
}

fn e2e(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut s = rt.block_on(setup());
    let body = vec![b'x'; 100];
    let mut g = c.benchmark_group("e2e");
    g.measurement_time(Duration::from_secs(8));

    g.throughput(Throughput::Elements(1));
    g.bench_function("one_message", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    s.alice.send(s.chat, body.clone()).await.unwrap();
                    delivered(&mut s.bob_events, 1).await;
                }
                start.elapsed()
            })
        })
    });

    g.throughput(Throughput::Elements(256));
    g.bench_function("window_256", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let sends = (0..256).map(|_| s.alice.send(s.chat, body.clone()));
                    let (acks, ()) = tokio::join!(
                        futures::future::join_all(sends),
                        delivered(&mut s.bob_events, 256)
                    );
                    for a in acks {
                        a.unwrap();
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    rt.block_on(s.gateway.shutdown());
}

criterion_group!(benches, e2e);
criterion_main!(benches);
