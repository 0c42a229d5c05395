//! End-to-end chat behaviour over real QUIC on 127.0.0.1, with several shards: groups, fanout,
//! offline sync, multi-device, limits and shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{body, next_message, TestServer};
use courier_client::{ClientError, Event, MemoryPositions, Messenger, MessengerConfig, Update};
use courier_wire::frame::{
    ChatPosition, Direction, MessageKind, ReceiptKind, Send, SystemEvent, SystemEventKind,
};
use courier_wire::{ErrorCode, Frame};

/// Waits briefly and asserts that no message arrived.
async fn assert_quiet(events: &mut courier_client::Events) {
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
async fn a_group_message_reaches_every_member_once_in_order_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| c.shards = 4).await;
    let mut members = Vec::new();
    for i in 0..100 {
        members.push(server.connect(&format!("m{i}"), 1).await);
    }
    let busy = server
        .gateway
        .shard_connections()
        .iter()
        .filter(|&&n| n > 0)
        .count();
    assert!(
        busy >= 2,
        "connections landed on several shards: {:?}",
        server.gateway.shard_connections()
    );

    let names: Vec<String> = (1..100).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let owner = members[0].0.clone();
    let group = owner.create_group("all hands", &refs).await.unwrap();
    assert_eq!(group.members.len(), 100);
    let mut sends = Vec::new();
    for i in 0..20 {
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
            "member {i}"
        );
        for seq in 2..=21 {
            let m = next_message(events).await;
            assert_eq!(
                (m.chat_id, m.seq),
                (group.chat_id, seq),
                "member {i} gets each message once, in order"
            );
        }
    }
    assert_quiet(&mut members[1].1).await;
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_messages_and_removed_members_stop_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| c.shards = 2).await;
    let (alice, mut alice_ev) = server.connect("alice", 1).await;
    let (bob, mut bob_ev) = server.connect("bob", 1).await;
    let (carol, mut carol_ev) = server.connect("carol", 1).await;
    let (dave, _) = server.connect("dave", 1).await;
    let g = alice.create_group("trip", &["bob", "carol"]).await.unwrap();
    // Every member's devices get the creation, the creator's too: it is seq 1 of the chat.
    for ev in [&mut alice_ev, &mut bob_ev, &mut carol_ev] {
        let e = SystemEvent::from_body(&next_message(ev).await.body).unwrap();
        assert_eq!(
            (e.kind, e.actor.as_str()),
            (SystemEventKind::Created, "alice")
        );
    }

    let renamed = bob
        .update_group(g.chat_id, Some("road trip"), &[], &[])
        .await
        .unwrap();
    assert_eq!(renamed.name, "road trip");
    for ev in [&mut alice_ev, &mut bob_ev, &mut carol_ev] {
        let m = next_message(ev).await;
        let e = SystemEvent::from_body(&m.body).unwrap();
        assert_eq!(
            (m.seq, e.name.as_deref(), e.actor.as_str()),
            (2, Some("road trip"), "bob")
        );
    }
    // Only the owner removes others; strangers change nothing.
    let err = bob
        .update_group(g.chat_id, None, &[], &["alice"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FORBIDDEN));
    let err = dave
        .update_group(g.chat_id, None, &["dave"], &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FORBIDDEN));

    alice
        .update_group(g.chat_id, None, &[], &["carol"])
        .await
        .unwrap();
    let removal = next_message(&mut carol_ev).await;
    assert_eq!(
        SystemEvent::from_body(&removal.body).unwrap().removed,
        vec!["carol".to_string()],
        "the removed member learns of it"
    );
    assert_eq!(next_message(&mut bob_ev).await.seq, 3);
    alice
        .send(g.chat_id, Bytes::from_static(b"carol is gone"))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut bob_ev).await.body,
        Bytes::from_static(b"carol is gone")
    );
    assert_quiet(&mut carol_ev).await;
    let err = carol
        .history(g.chat_id, Direction::After, 0, 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FORBIDDEN));
    let err = carol
        .send(g.chat_id, Bytes::from_static(b"hello?"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FORBIDDEN));

    let too_many: Vec<String> = (0..100).map(|i| format!("x{i}")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert_eq!(
        alice.create_group("huge", &refs).await.unwrap_err().code(),
        Some(ErrorCode::TOO_LARGE)
    );

    let list = bob.list_chats(0, 10).await.unwrap();
    assert_eq!(list.chats.len(), 1);
    assert_eq!(
        (
            list.chats[0].name.as_str(),
            list.chats[0].last_seq,
            list.chats[0].unread
        ),
        ("road trip", 4, 4)
    );
    // Unread counts what the user has not read (on any device); receiving is not reading.
    bob.ack(g.chat_id, 4).await.unwrap();
    bob.receipt(g.chat_id, ReceiptKind::Delivered, 4)
        .await
        .unwrap();
    assert_eq!(bob.get_chat(g.chat_id).await.unwrap().unread, 4);
    bob.receipt(g.chat_id, ReceiptKind::Read, 3).await.unwrap();
    assert_eq!(bob.get_chat(g.chat_id).await.unwrap().unread, 1);
    assert_eq!(
        dave.get_chat(g.chat_id).await.unwrap_err().code(),
        Some(ErrorCode::FORBIDDEN)
    );
    server.gateway.shutdown().await;
}

fn messenger(
    server: &TestServer,
    user: &str,
    device: u32,
    positions: Arc<MemoryPositions>,
) -> (Messenger, tokio::sync::mpsc::Receiver<Update>) {
    let mut cfg = MessengerConfig::new(
        server.addr(),
        server.trust(),
        server.token(user, device),
        positions,
    );
    cfg.sync_page = 7;
    Messenger::start(cfg)
}

/// The next `n` messages from a messenger, and whether it reported `Synced` in between.
async fn messages(
    updates: &mut tokio::sync::mpsc::Receiver<Update>,
    n: usize,
) -> (Vec<(u64, u64, Bytes)>, bool) {
    let mut out = Vec::new();
    let mut synced = false;
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), updates.recv())
            .await
            .expect("updates within 10 s")
        {
            Some(Update::Message(m)) => out.push((m.chat_id, m.seq, m.body)),
            Some(Update::Synced) => synced = true,
            Some(_) => {}
            None => panic!("messenger stopped"),
        }
    }
    (out, synced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_syncs_what_it_missed_then_continues_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| c.shards = 2).await;
    let (alice, _) = server.connect("alice", 1).await;
    let direct = alice.create_direct_chat("bob").await.unwrap().chat_id;
    let group = alice.create_group("g", &["bob"]).await.unwrap().chat_id;
    for i in 0..30 {
        alice.send(direct, body(i)).await.unwrap();
        alice.send(group, body(100 + i)).await.unwrap();
    }

    // Bob's device comes online: 61 missed messages in pages of 7, each chat in order.
    let positions = Arc::new(MemoryPositions::default());
    let (bob, mut updates) = messenger(&server, "bob", 1, positions.clone());
    let (got, _) = messages(&mut updates, 61).await;
    let direct_seqs: Vec<u64> = got.iter().filter(|m| m.0 == direct).map(|m| m.1).collect();
    let group_seqs: Vec<u64> = got.iter().filter(|m| m.0 == group).map(|m| m.1).collect();
    assert_eq!(direct_seqs, (1..=30).collect::<Vec<_>>());
    assert_eq!(
        group_seqs,
        (1..=31).collect::<Vec<_>>(),
        "the group's creation is seq 1"
    );
    assert!(got.iter().any(|m| m.2 == body(29)));

    // Live messages continue with no gap and no duplicate.
    loop {
        match updates.recv().await.unwrap() {
            Update::Synced => break,
            Update::Message(m) => panic!("unexpected extra message {m:?}"),
            _ => {}
        }
    }
    for i in 0..5 {
        alice.send(direct, body(200 + i)).await.unwrap();
    }
    let (live, _) = messages(&mut updates, 5).await;
    assert_eq!(
        live.iter().map(|m| m.1).collect::<Vec<_>>(),
        (31..=35).collect::<Vec<_>>()
    );
    bob.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Restarted with its saved positions, it gets only what is new.
    alice
        .send(group, Bytes::from_static(b"while you were away"))
        .await
        .unwrap();
    let (_bob, mut updates) = messenger(&server, "bob", 1, positions.clone());
    let (got, _) = messages(&mut updates, 1).await;
    assert_eq!(
        (got[0].0, got[0].1, got[0].2.clone()),
        (group, 32, Bytes::from_static(b"while you were away"))
    );
    loop {
        match updates.recv().await.unwrap() {
            Update::Synced => break,
            Update::Message(m) => panic!("already held {m:?}"),
            _ => {}
        }
    }

    // At least once: a device that never acks gets the same messages again after reconnecting;
    // once it acks, they are not sent again.
    let (raw, mut ev) = server.connect("bob", 2).await;
    let end = raw.sync_page(vec![], 1000).await.unwrap();
    assert!(!end.more);
    let mut first = Vec::new();
    while let Ok(Event::Message(m)) = ev.try_recv() {
        first.push((m.chat_id, m.seq));
    }
    assert_eq!(first.len(), 67);
    raw.close();
    let (raw, mut ev) = server.connect("bob", 2).await;
    raw.sync_page(vec![], 1000).await.unwrap();
    let mut again = Vec::new();
    while let Ok(Event::Message(m)) = ev.try_recv() {
        again.push((m.chat_id, m.seq));
    }
    assert_eq!(again, first, "unacknowledged messages are delivered again");
    raw.ack(direct, 35).await.unwrap();
    raw.ack(group, 32).await.unwrap();
    raw.ping().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw.close();
    let (raw, mut ev) = server.connect("bob", 2).await;
    raw.sync_page(
        vec![ChatPosition {
            chat_id: direct,
            seq: 30,
        }],
        1000,
    )
    .await
    .unwrap();
    let mut rest = Vec::new();
    while let Ok(Event::Message(m)) = ev.try_recv() {
        rest.push(m.seq);
    }
    assert_eq!(
        rest,
        vec![31, 32, 33, 34, 35],
        "given positions win; acked chats stay quiet"
    );
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_sends_and_connections_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| {
        c.max_inflight = 4;
        c.max_connections = 3;
    })
    .await;
    let (alice, _) = server.connect("alice", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    // A raw client that ignores the announced limit: the excess is refused, nothing else breaks.
    let (mut raw, welcome) = server.raw_session("alice", 2).await;
    assert_eq!(welcome.max_inflight, 4);
    let mut burst = Vec::new();
    for i in 0..40u32 {
        let f = Frame::Send(Send {
            request_id: 10 + i,
            client_msg_id: [i as u8; 16],
            chat_id: chat,
            kind: MessageKind::Text,
            body: body(i as usize),
            attachments: vec![],
        });
        f.encode(&mut burst);
    }
    raw.write(&burst).await;
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..40 {
        match raw.read_frame().await.unwrap() {
            Frame::SendOk(_) => ok += 1,
            Frame::ErrorFrame(e) if e.code == ErrorCode::RATE_LIMITED => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        limited > 0 && ok >= 4 && ok + limited == 40,
        "ok={ok} limited={limited}"
    );
    // The SDK waits instead: 40 sends through it all succeed.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move { alice.send(chat, body(i)).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }

    // Three connections are open (alice, raw, and one more): a fourth is refused.
    let (_bob, _) = server.connect("bob", 1).await;
    let refused = server.try_connect(&server.token("carol", 1)).await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Connect {
                kind: courier_client::ConnectKind::Refused,
                ..
            })
        ),
        "fourth connection refused: {:?}",
        refused.as_ref().err()
    );
    drop(raw);
    let mut admitted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if server.try_connect(&server.token("carol", 1)).await.is_ok() {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "a freed slot admits a new connection");
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_disconnected_and_finds_its_messages_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| c.outbound_queue = 16).await;
    common::a_reader_that_never_reads_is_cut_off(&server).await;
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_goaway_keeps_what_was_acknowledged_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let shards: [&std::ffi::OsStr; 2] = ["--shards".as_ref(), "2".as_ref()];
    let (child, addr) = common::spawn_courier(dir.path(), &shards);
    let trust = courier_client::Trust::File(dir.path().join("tls/cert.pem"));
    let token = |u: &str| common::token_from(dir.path(), u);
    let (alice, mut events) =
        courier_client::Client::connect(addr, "localhost", &trust, &token("alice"))
            .await
            .unwrap();
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    let mut acked = 0;
    for i in 0..50 {
        alice.send(chat, body(i)).await.unwrap();
        acked += 1;
    }
    let exit = tokio::spawn(common::signal_and_wait(child, "-TERM"));
    let mut goaway = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        match ev {
            Event::GoAway(g) => goaway = g.code == ErrorCode::SHUTTING_DOWN,
            Event::Closed(_) => break,
            _ => {}
        }
    }
    assert!(goaway, "clients get GoAway");
    assert_eq!(exit.await.unwrap().code(), Some(0), "exits 0 after SIGTERM");

    let (child, addr) = common::spawn_courier(dir.path(), &shards);
    let (bob, _) = courier_client::Client::connect(addr, "localhost", &trust, &token("bob"))
        .await
        .unwrap();
    let page = bob.history(chat, Direction::After, 0, 100).await.unwrap();
    assert_eq!(
        page.messages.len(),
        acked,
        "everything acknowledged survived"
    );
    common::signal_and_wait(child, "-TERM").await;
}
