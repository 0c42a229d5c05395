//! End-to-end tests over real QUIC on 127.0.0.1: messaging, durability across restarts,
//! authentication, and hostile input.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{body, next_message, TestServer};
use courier_auth::{Claims, IssuerKey};
use courier_client::Event;
use courier_net::scrape::{http_get, sample};
use courier_wire::frame::{Direction, Hello, MessageKind, Ping, Send};
use courier_wire::{ErrorCode, Frame, Header};
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_messages_arrive_in_order_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _alice_events) = server.connect("alice", 1).await;
    let (bob, mut bob_events) = server.connect("bob", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap();
    assert_eq!(
        bob.create_direct_chat("alice").await.unwrap().chat_id,
        chat.chat_id,
        "one chat per pair"
    );

    // 200 sends with up to 32 in flight.
    let window = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let permit = window.clone().acquire_owned().await.unwrap();
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            let ok = alice.send(chat.chat_id, body(i)).await.unwrap();
            drop(permit);
            (ok.seq, i)
        }));
    }
    let mut body_of_seq = HashMap::new();
    for t in tasks {
        let (seq, i) = t.await.unwrap();
        assert!(
            body_of_seq.insert(seq, body(i)).is_none(),
            "seq {seq} acknowledged twice"
        );
    }
    let mut seqs: Vec<u64> = body_of_seq.keys().copied().collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<_>>(),
        "acknowledged seqs are 1..=200 without gaps"
    );

    for expected in 1..=200u64 {
        let m = next_message(&mut bob_events).await;
        assert_eq!(
            (m.chat_id, m.seq),
            (chat.chat_id, expected),
            "delivered in seq order"
        );
        assert_eq!(m.body, body_of_seq[&expected]);
        assert_eq!(m.sender_user, "alice");
    }

    // Restart on the same data directory: everything acknowledged is still there.
    server.gateway.shutdown().await;
    let mut saw_goaway = false;
    while let Some(ev) = bob_events.recv().await {
        match ev {
            Event::GoAway(g) => {
                assert_eq!(g.code, ErrorCode::SHUTTING_DOWN);
                saw_goaway = true;
            }
            Event::Closed(_) => break,
            _ => {}
        }
    }
    assert!(saw_goaway, "clients are told the server is going away");

    let server = TestServer::start(dir.path()).await;
    let (bob, _) = server.connect("bob", 1).await;
    let got = common::all_history(&bob, chat.chat_id, 64).await;
    assert_eq!(got.len(), 200);
    for m in got {
        assert_eq!(m.body, body_of_seq[&m.seq]);
    }
    let next = bob
        .send(chat.chat_id, Bytes::from_static(b"after restart"))
        .await
        .unwrap();
    assert_eq!(next.seq, 201, "numbering continues after restart");
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_versions_are_refused_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, mut alice_events) = server.connect("alice", 1).await;
    let (bob, _) = server.connect("bob", 7).await;
    let chat = alice.create_direct_chat("bob").await.unwrap();

    let forged = IssuerKey::generate().mint(&Claims {
        user: "bob".into(),
        device: 1,
        expires_at: common::now_secs() + 60,
    });
    let expired = server.issuer.mint(&Claims {
        user: "bob".into(),
        device: 1,
        expires_at: common::now_secs() - 1,
    });
    for (token, what) in [
        (forged.as_str(), "forged"),
        (expired.as_str(), "expired"),
        ("not-a-token", "garbage"),
    ] {
        let err = server
            .try_connect(token)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what} token accepted"));
        assert_eq!(
            err.code(),
            Some(ErrorCode::UNAUTHENTICATED),
            "{what} token: {err}"
        );
        // The well-behaved client keeps being served meanwhile.
        let ok = bob.send(chat.chat_id, Bytes::from(what)).await.unwrap();
        assert_eq!(next_message(&mut alice_events).await.seq, ok.seq);
    }

    let token = server.token("bob", 2);
    let err = courier_client::Client::connect_with_version(
        server.addr(),
        "localhost",
        &server.trust(),
        &token,
        99,
    )
    .await
    .err()
    .expect("version 99 refused");
    assert_eq!(err.code(), Some(ErrorCode::UNSUPPORTED_VERSION));

    // On the wire: the error frame echoes the request id, then the connection is closed with the
    // error code as the application close code.
    let mut raw = server.raw().await;
    raw.write_frame(Frame::Hello(Hello {
        request_id: 41,
        version: 1,
        token: Bytes::from(forged),
    }))
    .await;
    match raw.read_frame().await {
        Some(Frame::ErrorFrame(e)) => {
            assert_eq!((e.request_id, e.code), (41, ErrorCode::UNAUTHENTICATED))
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert_eq!(
        raw.close_code().await,
        u64::from(ErrorCode::UNAUTHENTICATED.0)
    );

    alice.ping().await.unwrap();
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_close_only_the_offending_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, mut alice_events) = server.connect("alice", 1).await;
    let (bob, _) = server.connect("bob", 1).await;
    let chat = bob.create_direct_chat("alice").await.unwrap();

    // An unknown frame kind is answered UNSUPPORTED with its request id, and the session goes on.
    let (mut raw, _) = server.raw_session("mallory", 1).await;
    raw.write(&Header::new(0x70, 6).to_bytes()).await;
    raw.write(&[0, 0, 0, 9, 1, 2]).await;
    match raw.read_frame().await {
        Some(Frame::ErrorFrame(e)) => {
            assert_eq!((e.request_id, e.code), (9, ErrorCode::UNSUPPORTED))
        }
        other => panic!("expected UNSUPPORTED, got {other:?}"),
    }
    raw.write_frame(Frame::Ping(Ping {
        request_id: 10,
        nonce: 5,
    }))
    .await;
    assert!(
        matches!(raw.read_frame().await, Some(Frame::Pong(p)) if p.request_id == 10 && p.nonce == 5)
    );

    // A known kind whose body does not decode: BAD_FRAME, then closed.
    raw.write(&Header::new(courier_wire::frame::kind::Send, 5).to_bytes())
        .await;
    raw.write(&[0xff; 5]).await;
    match raw.read_frame().await {
        Some(Frame::ErrorFrame(e)) => assert_eq!(e.code, ErrorCode::BAD_FRAME),
        other => panic!("expected BAD_FRAME, got {other:?}"),
    }
    assert_eq!(raw.close_code().await, u64::from(ErrorCode::BAD_FRAME.0));

    // A header declaring 1 GiB: TOO_LARGE straight from the header, then closed.
    let (mut raw, _) = server.raw_session("mallory", 1).await;
    raw.write(&Header::new(courier_wire::frame::kind::Send, 1 << 30).to_bytes())
        .await;
    match raw.read_frame().await {
        Some(Frame::ErrorFrame(e)) => assert_eq!(e.code, ErrorCode::TOO_LARGE),
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    assert_eq!(raw.close_code().await, u64::from(ErrorCode::TOO_LARGE.0));

    // Pure garbage before Hello.
    let mut raw = server.raw().await;
    raw.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let _ = raw.read_frame().await;
    assert!(raw.close_code().await > 0);

    // Bodies over the limit and foreign chats are refused per request, the session goes on.
    let big = |request_id| {
        Frame::Send(Send {
            request_id,
            client_msg_id: [1; 16],
            chat_id: chat.chat_id,
            kind: MessageKind::Text,
            body: Bytes::from(vec![b'x'; 40 * 1024]),
            attachments: vec![],
        })
    };
    let err = bob.request(big).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TOO_LARGE));
    let (mallory, _) = server.connect("mallory", 1).await;
    let err = mallory
        .send(chat.chat_id, Bytes::from_static(b"let me in"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FORBIDDEN));
    let err = mallory
        .history(chat.chat_id, Direction::After, 0, 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FORBIDDEN));
    let err = mallory
        .history(424242, Direction::After, 0, 10)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::FORBIDDEN),
        "a missing chat looks like a foreign one"
    );

    // Everyone else was unaffected throughout.
    let ok = bob
        .send(chat.chat_id, Bytes::from_static(b"still here"))
        .await
        .unwrap();
    assert_eq!(ok.seq, 1);
    let m = next_message(&mut alice_events).await;
    assert_eq!(m.body, Bytes::from_static(b"still here"));
    alice.ping().await.unwrap();
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_send_returns_the_original_ack_and_other_devices_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice1, _) = server.connect("alice", 1).await;
    let (_alice2, mut alice2_events) = server.connect("alice", 2).await;
    let (_bob, mut bob_events) = server.connect("bob", 1).await;
    let chat = alice1.create_direct_chat("bob").await.unwrap();
    let id = [7u8; 16];
    let first = alice1
        .send_message(
            chat.chat_id,
            id,
            MessageKind::Text,
            Bytes::from_static(b"once"),
            vec![],
        )
        .await
        .unwrap();
    let again = alice1
        .send_message(
            chat.chat_id,
            id,
            MessageKind::Text,
            Bytes::from_static(b"once"),
            vec![],
        )
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!((again.seq, again.server_ts), (first.seq, first.server_ts));
    let next = alice1
        .send(chat.chat_id, Bytes::from_static(b"twice"))
        .await
        .unwrap();
    assert_eq!(next.seq, first.seq + 1, "the retry took no sequence number");

    // Bob and Alice's second device each see every message once.
    for events in [&mut bob_events, &mut alice2_events] {
        assert_eq!(next_message(events).await.body, Bytes::from_static(b"once"));
        assert_eq!(
            next_message(events).await.body,
            Bytes::from_static(b"twice")
        );
    }
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_ack_was_lost_is_retried_on_a_new_connection_without_a_second_copy() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (bob, mut bob_events) = server.connect("bob", 1).await;
    let chat = bob.create_direct_chat("alice").await.unwrap();
    // Alice sends and drops the connection before reading the SendOk.
    let id = [42u8; 16];
    let send = |request_id| {
        Frame::Send(Send {
            request_id,
            client_msg_id: id,
            chat_id: chat.chat_id,
            kind: MessageKind::Text,
            body: Bytes::from_static(b"did this arrive?"),
            attachments: vec![],
        })
    };
    let (mut raw, _) = server.raw_session("alice", 1).await;
    raw.write_frame(send(2)).await;
    let first = next_message(&mut bob_events).await;
    raw.conn.close(0u32.into(), b"network gone");
    drop(raw);

    // Reconnected, Alice resends with the same client message id.
    let (alice, _) = server.connect("alice", 1).await;
    let again = match alice.request(send).await.unwrap() {
        Frame::SendOk(ok) => ok,
        other => panic!("expected SendOk, got {other:?}"),
    };
    assert!(again.duplicate, "the retry is recognised");
    assert_eq!(again.seq, first.seq, "with the original seq");
    alice
        .send(chat.chat_id, Bytes::from_static(b"next"))
        .await
        .unwrap();
    let next = next_message(&mut bob_events).await;
    assert_eq!(
        (next.seq, next.body),
        (first.seq + 1, Bytes::from_static(b"next")),
        "bob saw one copy"
    );
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| {
        c.metrics = Some("127.0.0.1:0".parse().unwrap());
        c.shards = 2;
    })
    .await;
    let addr = server.gateway.metrics_addr().expect("metrics served");
    let (alice, _) = server.connect("alice", 1).await;
    let (_bob, mut bob_events) = server.connect("bob", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap();
    for i in 0..10 {
        alice.send(chat.chat_id, body(i)).await.unwrap();
    }
    for _ in 0..10 {
        next_message(&mut bob_events).await;
    }
    assert!(server.try_connect("forged").await.is_err());
    // The refused connection's task may still be closing it: wait until only the two remain.
    server
        .until_connections(2, "the refused connection is released")
        .await;

    let response = http_get(addr, "/metrics").await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let text = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let get = |name: &str| sample(text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    assert_eq!(get("courier_messages_committed_total"), 10.0);
    assert_eq!(get("courier_deliveries_total"), 10.0);
    assert_eq!(get("courier_handshakes_total"), 2.0);
    assert_eq!(get("courier_refused_total"), 1.0);
    assert!(
        get("courier_frames_in_total") >= 11.0,
        "create and sends (Hello counts as a handshake)"
    );
    assert!(
        get("courier_frames_out_total") >= 21.0,
        "welcomes, chat info, acks, deliveries"
    );
    assert!(get("courier_commit_seconds_count") >= 1.0);
    assert!(get("courier_resident_memory_bytes") > 1e6);
    let open = get("courier_connections{shard=\"0\"}") + get("courier_connections{shard=\"1\"}");
    assert_eq!(open, 2.0, "open connections by shard");
    assert!(http_get(addr, "/other")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 404"));
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_read_whole_however_the_stream_cuts_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut raw, _) = server.raw_session("alice", 1).await;

    // Three frames in one write: three answers.
    let mut three = Vec::new();
    for id in 1..=3u32 {
        three.extend_from_slice(
            &Frame::Ping(Ping {
                request_id: id,
                nonce: u64::from(id) * 7,
            })
            .to_bytes(),
        );
    }
    raw.write(&three).await;
    for id in 1..=3u32 {
        assert!(
            matches!(raw.read_frame().await, Some(Frame::Pong(p)) if p.request_id == id && p.nonce == u64::from(id) * 7)
        );
    }

    // A 30 KB frame trickled in 997-byte pieces, each its own packet: read as one frame (the
    // chat does not exist, so the answer is FORBIDDEN for that request id).
    let big = Frame::Send(Send {
        request_id: 4,
        client_msg_id: courier_wire::uuid_v7(1, [4; 10]),
        chat_id: 424_242,
        kind: MessageKind::Text,
        body: Bytes::from(vec![b'y'; 30_000]),
        attachments: vec![],
    })
    .to_bytes();
    for piece in big.chunks(997) {
        raw.write(piece).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // And a frame split in the middle of its header.
    let ping = Frame::Ping(Ping {
        request_id: 5,
        nonce: 1,
    })
    .to_bytes();
    raw.write(&ping[..3]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    raw.write(&ping[3..]).await;
    match raw.read_frame().await {
        Some(Frame::ErrorFrame(e)) => {
            assert_eq!((e.request_id, e.code), (4, ErrorCode::FORBIDDEN))
        }
        other => panic!("expected FORBIDDEN for the big frame, got {other:?}"),
    }
    assert!(matches!(raw.read_frame().await, Some(Frame::Pong(p)) if p.request_id == 5));
    server.gateway.shutdown().await;
}

/// Datagrams `alice` sends for `n` messages sent 60 ms apart (each waiting for its `SendOk`),
/// on a gateway asking its clients for `ack_delay` (GatewayConfig::client_ack_delay).
async fn datagrams_for_spaced_sends(ack_delay: Duration, n: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| c.client_ack_delay = ack_delay).await;
    let (alice, _alice_events) = server.connect("alice", 1).await;
    let (_bob, mut bob_events) = server.connect("bob", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before = alice.datagrams().sent;
    for i in 0..n {
        alice.send(chat.chat_id, body(i as usize)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let sent = alice.datagrams().sent - before;
    for _ in 0..n {
        next_message(&mut bob_events).await;
    }
    server.gateway.shutdown().await;
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_within_the_asked_ack_delay_sends_no_datagrams_for_acks_alone() {
    // Asked to wait up to 200 ms, the client acknowledges each SendOk on its next send, 60 ms
    // later. Left at its own 25 ms, it acknowledges each in a datagram of its own first.
    let n = 20;
    let asked = datagrams_for_spaced_sends(Duration::from_millis(200), n).await;
    assert!(
        asked <= n + n / 4,
        "{asked} datagrams for {n} sends with the ACK delay asked"
    );
    let own = datagrams_for_spaced_sends(Duration::ZERO, n).await;
    assert!(
        own >= n + n / 2,
        "{own} datagrams for {n} sends with the client's own ACK delay"
    );
}
