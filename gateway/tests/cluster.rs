//! A cluster: three gateway nodes on one simulated FoundationDB (with faults on), real QUIC
//! clients spread over them; on real FoundationDB instead when `FDB_CLUSTER_FILE` is set (a
//! build with `--features fdb`; each test's data under a fresh key prefix, left in place: use
//! a throwaway cluster). Messages, receipts and typing cross nodes exactly once and in
//! order; a node that dies loses nothing acknowledged, its devices move to another node and
//! sync; background work runs on one node.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{body, next_message, TestServer};
use courier_client::{Event, MemoryPositions, Messenger, MessengerConfig, Update};
use courier_store::engine::sim::{Faults, Sim, SimConfig};
use courier_wire::frame::{MessageKind, ReceiptKind};
use courier_wire::Frame;

/// The simulated cluster's seed (`COURIER_SIM_SEED`, default 1).
fn seed() -> u64 {
    std::env::var("COURIER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Whether the nodes run on real FoundationDB (`FDB_CLUSTER_FILE`, with `--features fdb`).
fn on_foundationdb() -> bool {
    cfg!(feature = "fdb") && std::env::var_os("FDB_CLUSTER_FILE").is_some()
}

/// The engine the nodes share: FoundationDB under a fresh prefix when
/// [`on_foundationdb`], else `sim`.
fn shared_engine(sim: &Sim) -> Arc<dyn courier_store::kv::Engine> {
    #[cfg(feature = "fdb")]
    if let Ok(file) = std::env::var("FDB_CLUSTER_FILE") {
        let prefix = format!("courier-cluster-test/{:016x}/", rand_prefix());
        let engine =
            courier_store::engine::fdb::FdbEngine::open(Some(&file), prefix.as_bytes()).unwrap();
        return Arc::new(engine);
    }
    Arc::new(sim.clone())
}

#[cfg(feature = "fdb")]
fn rand_prefix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// `n` nodes on one simulated cluster (or FoundationDB), each with its own store directory
/// (media and local state) under `dir`, sharing the TLS identity and the token issuer.
async fn cluster(dir: &Path, n: usize, sim: &Sim) -> Vec<TestServer> {
    let blobs = dir.join("shared-blobs");
    let shared = shared_engine(sim);
    let mut nodes = Vec::new();
    for i in 0..n {
        let engine = shared.clone();
        nodes.push(
            TestServer::start_with(dir, |c| {
                c.store_dir = dir.join(format!("node{i}")).join("store");
                c.store_engine = courier_gateway::StoreEngine::Custom(engine);
                c.shards = 1;
                c.cluster.lease = Duration::from_secs(2);
                c.presence_grace = Duration::from_millis(300);
                // One blob store for all (as S3 would be); partial uploads stay on each node.
                c.media.blobs = courier_gateway::media::BlobStoreConfig::Dir(blobs.clone());
            })
            .await,
        );
    }
    nodes
}

fn faulty_sim() -> Sim {
    Sim::new(SimConfig {
        seed: seed(),
        faults: Faults::all(0.02),
        ..SimConfig::default()
    })
}

/// Waits for the next frame event matching `pick`, skipping everything else.
async fn next_frame<T>(
    events: &mut courier_client::Events,
    mut pick: impl FnMut(&Frame) -> Option<T>,
) -> T {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
        {
            Some(Event::Frame(f)) => {
                if let Some(t) = pick(&f) {
                    return t;
                }
            }
            Some(Event::Closed(r)) => panic!("closed: {r}"),
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
}

/// Asserts that no message arrives for a while.
async fn assert_no_message(events: &mut courier_client::Events) {
    let deadline = tokio::time::sleep(Duration::from_millis(300));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = events.recv() => {
                if let Some(Event::Message(m)) = ev {
                    panic!("unexpected message {m:?}");
                }
            }
            _ = &mut deadline => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_receipts_and_typing_cross_nodes_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sim = faulty_sim();
    let nodes = cluster(dir.path(), 3, &sim).await;

    // A 100-member group, members spread over the three nodes.
    let mut members = Vec::new();
    for i in 0..100 {
        members.push(nodes[i % 3].connect(&format!("m{i}"), 1).await);
    }
    let names: Vec<String> = (1..100).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let owner = members[0].0.clone();
    let group = owner.create_group("everyone", &refs).await.unwrap();
    assert_eq!(group.members.len(), 100);
    let started = Instant::now();
    let mut sends = Vec::new();
    for i in 0..10 {
        let owner = owner.clone();
        sends.push(tokio::spawn(async move {
            owner.send(group.chat_id, body(i)).await.unwrap().seq
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    for (i, (_, events)) in members.iter_mut().enumerate().skip(1) {
        let created = next_message(events).await;
        assert_eq!(
            (created.seq, created.kind),
            (1, MessageKind::System),
            "m{i}"
        );
        for seq in 2..=11 {
            let m = next_message(events).await;
            assert_eq!(
                (m.chat_id, m.seq),
                (group.chat_id, seq),
                "m{i} (on node {}) gets each message once, in order",
                i % 3
            );
        }
    }
    println!(
        "100-member group, 10 messages to 99 members on 3 nodes: all delivered {:?} after the first send",
        started.elapsed()
    );
    assert_no_message(&mut members[1].1).await;
    assert_no_message(&mut members[2].1).await;

    // A direct chat between nodes 1 and 2, both ways, with the sender's second device on node 0.
    let (ann, mut ann_events) = nodes[1].connect("ann", 1).await;
    let (ann2, mut ann2_events) = nodes[0].connect("ann", 2).await;
    let (bob, mut bob_events) = nodes[2].connect("bob", 1).await;
    let chat = ann.create_direct_chat("bob").await.unwrap().chat_id;
    let mut latencies = Vec::new();
    for i in 0..20 {
        let sent = Instant::now();
        let (from, to) = if i % 2 == 0 {
            (&ann, &mut bob_events)
        } else {
            (&bob, &mut ann_events)
        };
        let ok = from.send(chat, body(i)).await.unwrap();
        let m = next_message(to).await;
        latencies.push(sent.elapsed());
        assert_eq!((m.chat_id, m.seq), (chat, ok.seq));
        // ann's other device sees both sides of the conversation, in order.
        let m2 = next_message(&mut ann2_events).await;
        assert_eq!(m2.seq, ok.seq);
    }
    latencies.sort();
    println!(
        "cross-node send -> Deliver on the simulation (no added latency, faults on): median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );

    // Receipts and typing reach the other node.
    ann.receipt(chat, ReceiptKind::Read, 20).await.unwrap();
    let (kind, seq) = next_frame(&mut bob_events, |f| match f {
        Frame::ReceiptEvent(r) if r.user == "ann" => Some((r.kind, r.seq)),
        _ => None,
    })
    .await;
    assert_eq!((kind, seq), (ReceiptKind::Read, 20));
    bob.typing(chat, true).await.unwrap();
    let typing = next_frame(&mut ann2_events, |f| match f {
        Frame::TypingEvent(t) if t.user == "bob" => Some(t.typing),
        _ => None,
    })
    .await;
    assert!(typing);
    drop(ann2);

    for n in nodes {
        n.gateway.shutdown().await;
    }
    if !on_foundationdb() {
        let stats = sim.stats();
        println!("simulation: {stats:?}");
        assert!(stats.injected_conflicts + stats.injected_unknown + stats.injected_timeouts > 0);
    }
}

/// The messenger of `user` on `node`, falling back to the other nodes in turn.
fn messenger(
    nodes: &[TestServer],
    node: usize,
    user: &str,
) -> (Messenger, tokio::sync::mpsc::Receiver<Update>) {
    let server = &nodes[node];
    let mut cfg = MessengerConfig::new(
        server.addr(),
        server.trust(),
        server.token(user, 1),
        Arc::new(MemoryPositions::default()),
    );
    cfg.fallbacks = (1..nodes.len())
        .map(|k| nodes[(node + k) % nodes.len()].addr())
        .collect();
    cfg.backoff_max = Duration::from_millis(500);
    Messenger::start(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_loses_nothing_acknowledged_and_its_devices_move() {
    let dir = tempfile::tempdir().unwrap();
    let sim = faulty_sim();
    let mut nodes = cluster(dir.path(), 3, &sim).await;

    // Senders on nodes 0 and 1, readers on every node; node 2 will die.
    let (s0, mut s0_updates) = messenger(&nodes, 0, "s0");
    let (s1, mut s1_updates) = messenger(&nodes, 1, "s1");
    let readers: Vec<_> = (0..6)
        .map(|i| messenger(&nodes, i % 3, &format!("r{i}")))
        .collect();
    let names: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.push("s1");
    let group = s0
        .client()
        .await
        .unwrap()
        .create_group("survivors", &all)
        .await
        .unwrap()
        .chat_id;
    let per_sender = 60;
    let send_all = |m: Messenger, tag: &'static str| {
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..per_sender {
                let ok = m.send(group, format!("{tag} {i}")).await.unwrap();
                acked.push(ok.seq);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };
    let t0 = send_all(s0.clone(), "s0");
    let t1 = send_all(s1.clone(), "s1");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let dead = nodes.pop().unwrap();
    dead.gateway.abort().await;
    let mut acked = t0.await.unwrap();
    acked.extend(t1.await.unwrap());
    assert_eq!(acked.len(), 2 * per_sender);
    let want = acked.len() + 1; // and the group's creation

    // Every reader, the dead node's too, ends with every message exactly once, in seq order.
    for (i, (_, mut updates)) in readers.into_iter().enumerate() {
        let mut seqs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seqs.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, updates.recv()).await {
                Ok(Some(Update::Message(m))) if m.chat_id == group => seqs.push(m.seq),
                Ok(Some(_)) => {}
                Ok(None) => panic!("r{i}'s messenger stopped"),
                Err(_) => panic!("r{i} got {} of {want} messages", seqs.len()),
            }
        }
        let expected: Vec<u64> = (1..=want as u64).collect();
        assert_eq!(
            seqs,
            expected,
            "r{i} (first on node {}): once each, in order",
            i % 3
        );
    }
    // The senders see each other's messages too.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (name, updates) in [("s0", &mut s0_updates), ("s1", &mut s1_updates)] {
        while seen.get(name).copied().unwrap_or(0) < per_sender {
            match tokio::time::timeout(Duration::from_secs(30), updates.recv())
                .await
                .expect("the other sender's messages")
            {
                Some(Update::Message(m))
                    if m.sender_user != name && m.kind == MessageKind::Text =>
                {
                    *seen.entry(name).or_default() += 1;
                }
                Some(_) => {}
                None => panic!("messenger stopped"),
            }
        }
    }
    for n in nodes {
        n.gateway.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_has_one_owner_and_moves_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(SimConfig {
        seed: seed(),
        ..SimConfig::default()
    });
    let mut nodes = cluster(dir.path(), 3, &sim).await;
    let owners = |nodes: &[TestServer]| -> Vec<usize> {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.gateway.store().owns(courier_store::Work::Sweep))
            .map(|(i, _)| i)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let o = owners(&nodes);
        assert!(o.len() <= 1, "one sweeper at most: {o:?}");
        if o.len() == 1 {
            break o[0];
        }
        assert!(Instant::now() < deadline, "someone takes the sweep");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Its owner dies without a word: another node takes the work once the lease runs out.
    nodes.remove(first).gateway.abort().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = owners(&nodes);
        assert!(o.len() <= 1, "one sweeper at most: {o:?}");
        if o.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the sweep moves to a live node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes {
        n.gateway.shutdown().await;
    }
}

/// The next presence event within `wait`, skipping everything else.
async fn next_presence(
    events: &mut courier_client::Events,
    wait: Duration,
) -> Option<courier_wire::frame::PresenceEvent> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Frame(Frame::PresenceEvent(p)))) => return Some(p),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes_and_moving_between_nodes_is_no_news() {
    let dir = tempfile::tempdir().unwrap();
    let sim = faulty_sim();
    let nodes = cluster(dir.path(), 3, &sim).await;
    let (alice, _a) = nodes[0].connect("alice", 1).await;
    let (bob, mut b) = nodes[1].connect("bob", 1).await;
    alice.create_direct_chat("bob").await.unwrap();

    bob.subscribe_presence(&["alice"]).await.unwrap();
    let p = next_presence(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (p.user.as_str(), p.online),
        ("alice", true),
        "online on another node"
    );

    // Gone from every node: offline after the grace period, with a last-seen time.
    alice.close();
    let p = next_presence(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!((p.user.as_str(), p.online), ("alice", false));
    assert!(p.last_seen_ms > 0);
    let (alice, _a) = nodes[2].connect("alice", 1).await;
    let p = next_presence(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (p.user.as_str(), p.online),
        ("alice", true),
        "back, on a third node"
    );

    // Moving from one node to another within the grace period shows nothing.
    alice.close();
    let (alice, _a) = nodes[0].connect("alice", 1).await;
    assert!(
        next_presence(&mut b, Duration::from_millis(800))
            .await
            .is_none(),
        "a move between nodes is not news"
    );

    // Hiding, on one node, is seen on another at once; then nothing more.
    alice.set_presence_visible(false).await.unwrap();
    let p = next_presence(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!((p.user.as_str(), p.online), ("alice", false));
    alice.close();
    assert!(next_presence(&mut b, Duration::from_millis(800))
        .await
        .is_none());
    drop(bob);
    for n in nodes {
        n.gateway.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_uploaded_on_one_node_downloads_on_another_and_a_resume_elsewhere_restarts() {
    use courier_client::{UploadOptions, UploadState};
    use courier_wire::frame::Upload;
    let dir = tempfile::tempdir().unwrap();
    let sim = faulty_sim();
    let nodes = cluster(dir.path(), 2, &sim).await;
    let (alice, _a) = nodes[0].connect("alice", 1).await;
    let (bob, mut b) = nodes[1].connect("bob", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    let bytes = common::noise(300_000, 1);
    let media = common::upload(&alice, bytes.clone()).await;
    common::send_attached(&alice, chat, vec![media.clone()]).await;
    let m = next_message(&mut b).await;
    assert_eq!(m.attachments.len(), 1);
    let (info, back) = bob.download(media.media_id, 0, 0).await.unwrap();
    assert_eq!(
        (info.sha256, back),
        (media.sha256, bytes),
        "downloaded on the other node"
    );

    // An upload cut short on node 0, resumed through node 1 (which never had its part):
    // refused there with NOT_FOUND, and the SDK starts it over.
    let big = common::noise((3 << 20) + 7, 2);
    let (raw, _) = nodes[0].raw_session("alice", 2).await;
    let (mut send, recv) = raw.conn.open_bi().await.unwrap();
    let first = Frame::Upload(Upload {
        request_id: 1,
        size: big.len() as u64,
        content_type: String::new(),
        sha256: None,
        resume: 0,
        offset: 0,
    });
    send.write_all(&first.to_bytes()).await.unwrap();
    send.write_all(&big[..(5 << 19)]).await.unwrap();
    let mut reader = courier_net::io::FrameReader::new(recv, 1 << 16);
    let (upload, confirmed) = loop {
        match tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .unwrap()
        {
            Ok(Some(Frame::UploadProgress(p))) if p.offset >= 1 << 20 => {
                break (p.upload, p.offset)
            }
            Ok(Some(Frame::UploadProgress(_))) => {}
            other => panic!("expected progress, got {other:?}"),
        }
    };
    raw.conn.close(0u32.into(), b"gone");
    let (alice_elsewhere, _e) = nodes[1].connect("alice", 2).await;
    let mut state = UploadState::default();
    let opts = UploadOptions {
        resume: Some((upload, confirmed)),
        ..UploadOptions::default()
    };
    let again = alice_elsewhere
        .upload(big.clone(), opts, &mut state)
        .await
        .unwrap();
    assert_eq!(again.size, big.len() as u64);
    let (_, back) = alice.download(again.media_id, 0, 0).await.unwrap();
    assert_eq!(back, big);
    drop((alice, bob, alice_elsewhere));
    for n in nodes {
        n.gateway.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_gets_no_live_copy_of_what_its_sync_has() {
    // Every round trip takes 5 ms, so the nodes' inboxes lag behind the acknowledgements.
    let sim = Sim::new(SimConfig {
        seed: seed(),
        latency: Duration::from_millis(5),
        ..SimConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 2, &sim).await;
    let (alice, _a) = nodes[0].connect("alice", 1).await;
    let (_bob, _b) = nodes[1].connect("bob", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    let mut sends = Vec::new();
    for i in 0..40 {
        let alice = alice.clone();
        sends.push(tokio::spawn(async move {
            alice.send(chat, body(i)).await.unwrap()
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    // Alice's second device connects while node 0's inbox still holds those messages: they
    // committed before its route was read, so its sync has them and the inbox does not
    // deliver them to it again.
    let (mut second, _) = nodes[0].raw_session("alice", 2).await;
    let quiet = tokio::time::timeout(Duration::from_secs(1), second.read_frame()).await;
    match quiet {
        Err(_) => {}
        Ok(f) => panic!("a live copy of what the device's sync has: {f:?}"),
    }
    // What comes after its connection is delivered.
    let ok = alice.send(chat, body(99)).await.unwrap();
    match second.read_frame().await {
        Some(Frame::Deliver(d)) => assert_eq!(d.message.seq, ok.seq),
        other => panic!("expected the new message, got {other:?}"),
    }
    for n in nodes {
        n.gateway.shutdown().await;
    }
}
