//! Receipts and typing end to end over real QUIC on 127.0.0.1.

mod common;

use std::time::Duration;

use common::{next_message, TestServer};
use courier_client::{Event, Events};
use courier_wire::frame::{Direction, PresenceEvent, ReceiptEvent, ReceiptKind, TypingEvent};
use courier_wire::{ErrorCode, Frame};

/// The next receipt event, skipping messages and other frames.
async fn next_receipt(events: &mut Events) -> ReceiptEvent {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("a receipt within 10 s")
        {
            Some(Event::Frame(Frame::ReceiptEvent(r))) => return r,
            Some(Event::Closed(r)) => panic!("closed: {r}"),
            None => panic!("events ended"),
            Some(_) => {}
        }
    }
}

/// The next typing event (or None within `wait`), skipping messages.
async fn next_typing(events: &mut Events, wait: Duration) -> Option<TypingEvent> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return None,
            Ok(Some(Event::Frame(Frame::TypingEvent(t)))) => return Some(t),
            Ok(None) => panic!("events ended"),
            Ok(Some(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_the_senders_devices_and_clear_unread_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice1, mut a1) = server.connect("alice", 1).await;
    let (_alice2, mut a2) = server.connect("alice", 2).await;
    let (bob1, mut b1) = server.connect("bob", 1).await;
    let (bob2, mut b2) = server.connect("bob", 2).await;
    let chat = alice1.create_direct_chat("bob").await.unwrap().chat_id;
    for i in 0..3 {
        alice1.send(chat, format!("m{i}")).await.unwrap();
    }
    for _ in 0..3 {
        next_message(&mut b1).await;
        next_message(&mut b2).await;
    }
    assert_eq!(bob2.get_chat(chat).await.unwrap().unread, 3);

    bob1.receipt(chat, ReceiptKind::Delivered, 3).await.unwrap();
    for events in [&mut a1, &mut a2] {
        let r = next_receipt(events).await;
        assert_eq!(
            (r.chat_id, r.user.as_str(), r.kind, r.seq, r.count),
            (chat, "bob", ReceiptKind::Delivered, 3, 1)
        );
    }
    let own = next_receipt(&mut b2).await;
    assert_eq!(
        (own.user.as_str(), own.device, own.kind),
        ("bob", 1, ReceiptKind::Delivered),
        "the user's other devices hear its receipts too"
    );
    bob1.receipt(chat, ReceiptKind::Read, 2).await.unwrap();
    for events in [&mut a1, &mut a2, &mut b2] {
        let r = next_receipt(events).await;
        assert_eq!(
            (r.user.as_str(), r.kind, r.seq),
            ("bob", ReceiptKind::Read, 2)
        );
    }
    // Read on device 1 clears unread on device 2.
    assert_eq!(bob2.get_chat(chat).await.unwrap().unread, 1);
    let list = bob2.list_chats(0, 10).await.unwrap();
    assert_eq!(list.chats[0].unread, 1);
    // A receipt that moves nothing tells nobody; one for a foreign chat is refused.
    bob2.receipt(chat, ReceiptKind::Read, 1).await.unwrap();
    let (carol, _c) = server.connect("carol", 1).await;
    let err = carol.receipt(chat, ReceiptKind::Read, 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FORBIDDEN));
    bob2.receipt(chat, ReceiptKind::Read, 3).await.unwrap();
    let r = next_receipt(&mut a1).await;
    assert_eq!(r.seq, 3, "the no-op receipt sent nothing before this one");
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_receipts_count_the_members_who_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, mut a) = server.connect("alice", 1).await;
    let (bob, _b) = server.connect("bob", 1).await;
    let (carol, _c) = server.connect("carol", 1).await;
    let g = alice.create_group("team", &["bob", "carol"]).await.unwrap();
    let ok = alice.send(g.chat_id, "hello team").await.unwrap();
    bob.receipt(g.chat_id, ReceiptKind::Read, ok.seq)
        .await
        .unwrap();
    assert_eq!(next_receipt(&mut a).await.count, 1);
    carol
        .receipt(g.chat_id, ReceiptKind::Read, ok.seq)
        .await
        .unwrap();
    let r = next_receipt(&mut a).await;
    assert_eq!((r.user.as_str(), r.count), ("carol", 2), "read by two");
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_online_members_only_is_not_stored_and_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, mut a) = server.connect("alice", 1).await;
    let (_bob, mut b) = server.connect("bob", 1).await;
    let (carol, mut c) = server.connect("carol", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;

    alice.typing(chat, true).await.unwrap();
    let t = next_typing(&mut b, Duration::from_secs(5))
        .await
        .expect("bob sees it");
    assert_eq!(
        (t.chat_id, t.user.as_str(), t.typing),
        (chat, "alice", true)
    );
    assert!(
        next_typing(&mut c, Duration::from_millis(300))
            .await
            .is_none(),
        "carol is not a member"
    );
    assert!(
        next_typing(&mut a, Duration::from_millis(100))
            .await
            .is_none(),
        "not echoed to the typist"
    );
    let (history, _) = {
        let p = alice.history(chat, Direction::After, 0, 100).await.unwrap();
        (p.messages, p.more)
    };
    assert!(history.is_empty(), "typing is never stored");
    assert_eq!(alice.get_chat(chat).await.unwrap().last_seq, 0);

    // Not a member: refused (the refusal comes as an event).
    carol.typing(chat, true).await.unwrap();
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(5), c.recv())
            .await
            .unwrap()
        {
            Some(Event::Frame(Frame::ErrorFrame(e))) => break e,
            Some(_) => {}
            None => panic!("events ended"),
        }
    };
    assert_eq!(refused.code, ErrorCode::FORBIDDEN);

    // A burst: at most 5 a second get through, the rest are refused.
    for _ in 0..12 {
        alice.typing(chat, true).await.unwrap();
    }
    let mut limited = 0;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), a.recv()).await {
        if let Event::Frame(Frame::ErrorFrame(e)) = ev {
            assert_eq!(e.code, ErrorCode::RATE_LIMITED);
            limited += 1;
        }
    }
    assert!(limited >= 6, "{limited} refused");
    let mut seen = 0;
    while next_typing(&mut b, Duration::from_millis(200))
        .await
        .is_some()
    {
        seen += 1;
    }
    assert!(seen <= 5, "{seen} typing events passed in one second");
    server.gateway.shutdown().await;
}

/// The next presence event within `wait`, skipping everything else.
async fn next_presence(events: &mut Events, wait: Duration) -> Option<PresenceEvent> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return None,
            Ok(Some(Event::Frame(Frame::PresenceEvent(p)))) => return Some(p),
            Ok(None) => panic!("events ended"),
            Ok(Some(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_coalesced_shown_to_chat_partners_only_and_can_be_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| {
        c.presence_grace = Duration::from_millis(300);
    })
    .await;
    let (alice, _a) = server.connect("alice", 1).await;
    let (bob, mut b) = server.connect("bob", 1).await;
    let (carol, _c) = server.connect("carol", 1).await;
    alice.create_direct_chat("bob").await.unwrap();

    bob.subscribe_presence(&["alice", "carol"]).await.unwrap();
    let p = next_presence(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!((p.user.as_str(), p.online), ("alice", true));
    assert!(
        next_presence(&mut b, Duration::from_millis(200))
            .await
            .is_none(),
        "carol shares no chat with bob"
    );

    // Offline after the grace period, with a last-seen time.
    alice.close();
    let p = next_presence(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!((p.user.as_str(), p.online), ("alice", false));
    assert!(p.last_seen_ms > 0);
    let (alice, _a) = server.connect("alice", 1).await;
    let p = next_presence(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!((p.user.as_str(), p.online), ("alice", true));

    // A flap (gone and back within the grace period) shows nothing.
    alice.close();
    let (alice, _a) = server.connect("alice", 1).await;
    assert!(
        next_presence(&mut b, Duration::from_millis(800))
            .await
            .is_none(),
        "a reconnect is not news"
    );
    carol.close();
    assert!(next_presence(&mut b, Duration::from_millis(600))
        .await
        .is_none());

    // Hiding looks to watchers exactly like going offline; then nothing more.
    alice.set_presence_visible(false).await.unwrap();
    let p = next_presence(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!((p.user.as_str(), p.online), ("alice", false));
    assert!(
        p.last_seen_ms > 0,
        "a hidden user was last seen when it hid"
    );
    alice.close();
    assert!(
        next_presence(&mut b, Duration::from_millis(800))
            .await
            .is_none(),
        "hidden presence is not shown"
    );
    let (_dave, _d) = server.connect("dave", 1).await;
    bob.subscribe_presence(&["alice"]).await.unwrap();
    assert!(next_presence(&mut b, Duration::from_millis(300))
        .await
        .is_none());
    server.gateway.shutdown().await;
}
