//! What outside probes tried, as a hostile client or an unlucky operator would, over real QUIC
//! on 127.0.0.1: each test failed before its fix.

mod common;

use std::time::Duration;

use common::TestServer;
use courier_client::{ClientError, Event};
use courier_wire::ErrorCode;

/// A CreateChat naming a 60 KB peer id of control characters (whose Debug escaping is six
/// times longer) is answered INVALID with a bounded message; the connection goes on, and when
/// it ends its connection slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_60kb_id_gets_invalid_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| c.max_connections = 1).await;
    let (mallory, _events) = server.connect("mallory", 1).await;
    let hostile = "\u{1}".repeat(60_000);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        mallory.create_direct_chat(&hostile),
    )
    .await
    .expect("answered within 10 s");
    match answer {
        Err(ClientError::Server { code, message, .. }) => {
            assert_eq!(code, ErrorCode::INVALID);
            assert!(
                message.len() <= courier_wire::text::MAX_MESSAGE,
                "{} bytes",
                message.len()
            );
            assert!(message.starts_with("invalid: bad user id"), "{message}");
        }
        other => panic!("expected INVALID, got {other:?}"),
    }
    // The connection goes on.
    mallory.ping().await.unwrap();
    drop(mallory);
    drop(_events);

    // Its slot (max_connections = 1) is free again once the connection is gone.
    let mut admitted = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(c) = server.try_connect(&server.token("alice", 1)).await {
            admitted = Some(c);
            break;
        }
    }
    let (alice, _) = admitted.expect("the slot is free again");
    alice.ping().await.unwrap();
    drop(alice);
    server.gateway.shutdown().await;
}

/// A request made just after the server closed the connection ends with `Closed` instead of
/// waiting forever (its waiter used to be registered after the read loop had failed the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_the_server_closed_ends_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (client, mut events) = server.connect("alice", 1).await;
    // A header declaring a frame over the limit: the server answers TOO_LARGE and closes.
    client
        .send_raw(
            courier_wire::Header::new(0x02, 1 << 20)
                .to_bytes()
                .to_vec()
                .into(),
        )
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the server closes within 10 s")
        {
            Some(Event::Closed(_)) | None => break,
            Some(_) => {}
        }
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), client.ping())
        .await
        .expect("the request ends instead of hanging");
    assert!(
        matches!(
            answer,
            Err(ClientError::Closed {
                by: courier_client::Closer::Server,
                ..
            })
        ),
        "{answer:?}"
    );
    server.gateway.shutdown().await;
}

/// 200,000 Acks in one burst: answered `RATE_LIMITED` once over the request budget, then the
/// connection is closed with `RATE_LIMITED`; the acks that were taken are stored coalesced (the
/// device's position is the highest acked), and the server goes on serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_flood_is_refused_then_closed_and_the_acks_coalesce() {
    use courier_wire::frame::Ack;
    use courier_wire::{Frame, FrameDecoder};

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _a) = server.connect("alice", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    for i in 0..10 {
        alice.send(chat, common::body(i)).await.unwrap();
    }
    let (mut raw, _) = server.raw_session("alice", 2).await;
    let mut flood = Vec::with_capacity(200_000 * 28);
    for i in 0..200_000u64 {
        Frame::Ack(Ack {
            request_id: i as u32 + 10,
            chat_id: chat,
            seq: i % 10 + 1,
        })
        .encode(&mut flood);
    }
    let common::RawConn { send, recv, .. } = &mut raw;
    let write = async {
        let _ = send.write_all(&flood).await;
    };
    let read = async {
        let decoder = FrameDecoder::new(u32::MAX);
        let mut buf = bytes::BytesMut::new();
        let mut limited = 0u32;
        loop {
            while let Ok(Some(f)) = decoder.decode(&mut buf) {
                match f {
                    Frame::ErrorFrame(e) if e.code == ErrorCode::RATE_LIMITED => limited += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            match tokio::time::timeout(Duration::from_secs(20), recv.read_chunk(65536, true))
                .await
                .expect("the server answers within 20 s")
            {
                Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                _ => return limited,
            }
        }
    };
    let ((), limited) = tokio::join!(write, read);
    assert!(limited > 0, "refused with RATE_LIMITED before the close");
    assert_eq!(raw.close_code().await, u64::from(ErrorCode::RATE_LIMITED.0));

    // The acks that were taken are stored: device 2's position is the highest seq acked.
    let store = server.gateway.store();
    let mut position = 0;
    for _ in 0..50 {
        position = store.ack("alice", 2, chat, 0).await.unwrap();
        if position == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(position, 10);
    // Others are served.
    alice.send(chat, common::body(99)).await.unwrap();
    server.gateway.shutdown().await;
}

/// A session ends when its token expires: the client gets GoAway(UNAUTHENTICATED) and the
/// connection closes, so no send is acknowledged after expiry; the SDK's Messenger reconnects
/// with a fresh token from its `refresh_token` and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_token_expires_and_the_messenger_renews_it() {
    use std::sync::Arc;

    use courier_auth::Claims;
    use courier_client::{MemoryPositions, Messenger, MessengerConfig, Update};

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let short = |user: &str| {
        server.issuer.mint(&Claims {
            user: user.into(),
            device: 1,
            expires_at: common::now_secs() + 2,
        })
    };
    let (alice, mut events) = server.try_connect(&short("alice")).await.unwrap();
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    alice.send(chat, common::body(1)).await.unwrap();
    let goaway = loop {
        match tokio::time::timeout(Duration::from_secs(6), events.recv())
            .await
            .expect("GoAway within 6 s")
        {
            Some(Event::GoAway(g)) => break g,
            Some(Event::Closed(r)) => panic!("closed without GoAway: {r}"),
            Some(_) => {}
            None => panic!("events ended"),
        }
    };
    assert_eq!(goaway.code, ErrorCode::UNAUTHENTICATED);
    assert!(alice.send(chat, common::body(2)).await.is_err());

    // The Messenger asks for a fresh token and reconnects.
    let key_path = dir.path().join("issuer.key");
    let mut cfg = MessengerConfig::new(
        server.addr(),
        server.trust(),
        short("bob"),
        Arc::new(MemoryPositions::default()),
    );
    cfg.refresh_token = Some(Arc::new(move || {
        let issuer = courier_auth::IssuerKey::read_file(&key_path).unwrap();
        issuer.mint(&Claims {
            user: "bob".into(),
            device: 1,
            expires_at: common::now_secs() + 3600,
        })
    }));
    let (bob, mut updates) = Messenger::start(cfg);
    let mut disconnected = None;
    let mut synced_after = false;
    while !synced_after {
        match tokio::time::timeout(Duration::from_secs(10), updates.recv())
            .await
            .expect("updates within 10 s")
            .expect("messenger runs")
        {
            Update::Disconnected(r) => disconnected = Some(r),
            Update::Synced if disconnected.is_some() => synced_after = true,
            _ => {}
        }
    }
    assert!(disconnected.unwrap().contains("UNAUTHENTICATED"));
    // Past the first token's expiry, sends go through on the renewed session.
    tokio::time::sleep(Duration::from_millis(500)).await;
    bob.send(chat, common::body(3)).await.unwrap();
    bob.stop();
    server.gateway.shutdown().await;
}

/// Shutting down under load: a client that keeps a window of sends in flight gets every
/// `SendOk` before `GoAway`, and nothing after it (GoAway is the last frame a session writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_is_the_last_frame_under_load() {
    use courier_wire::frame::{MessageKind, Send};
    use courier_wire::Frame;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _a) = server.connect("alice", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    let (mut raw, welcome) = server.raw_session("alice", 2).await;
    let send = |i: u32| {
        Frame::Send(Send {
            request_id: i + 10,
            client_msg_id: courier_wire::uuid_v7(1_764_500_000_000, {
                let mut r = [0u8; 10];
                r[..4].copy_from_slice(&i.to_be_bytes());
                r
            }),
            chat_id: chat,
            kind: MessageKind::Text,
            body: common::body(i as usize),
            attachments: vec![],
        })
        .to_bytes()
    };
    let mut next = 0u32;
    for _ in 0..welcome.max_inflight {
        raw.write(&send(next)).await;
        next += 1;
    }
    let gateway = server.gateway;
    let shutdown = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gateway.shutdown().await;
    });
    let (mut acked, mut goaway) = (0u32, false);
    while let Some(f) = raw.read_frame().await {
        assert!(!goaway, "a frame after GoAway: {f:?}");
        match f {
            Frame::SendOk(_) => {
                acked += 1;
                let _ = raw.send.write_all(&send(next)).await;
                next += 1;
            }
            Frame::GoAway(g) => {
                assert_eq!(g.code, ErrorCode::SHUTTING_DOWN);
                goaway = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        goaway,
        "GoAway came (acked {acked}, close: {:?})",
        raw.conn.close_reason()
    );
    assert!(
        acked > welcome.max_inflight,
        "sends were in flight at shutdown ({acked})"
    );
    shutdown.await.unwrap();
}

/// A connection that never reads is bounded in bytes, not frames: with 30 KB bodies it is
/// disconnected as a slow reader once ~512 KiB wait for it, long before 4,096 frames (~120 MB)
/// would; its messages wait in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| {
        c.outbound_queue = 4096;
        c.outbound_bytes = 512 * 1024;
    })
    .await;
    common::a_reader_that_never_reads_is_cut_off(&server).await;
    server.gateway.shutdown().await;
}

/// A client that sends a server kind (0x81, with a body that is no Welcome) gets
/// `UNSUPPORTED` naming its request id, as for any unknown kind, and the connection goes on
/// (it used to be BAD_FRAME and a close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_kind_from_a_client_is_unsupported_and_the_connection_goes_on() {
    use courier_wire::frame::Ping;
    use courier_wire::{Frame, Header};

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut raw, _) = server.raw_session("alice", 1).await;
    let mut bytes = Header::new(0x81, 4).to_bytes().to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 7]);
    raw.write(&bytes).await;
    match raw.read_frame().await {
        Some(Frame::ErrorFrame(e)) => {
            assert_eq!((e.request_id, e.code), (7, ErrorCode::UNSUPPORTED));
        }
        other => panic!("expected UNSUPPORTED, got {other:?}"),
    }
    raw.write_frame(Frame::Ping(Ping {
        request_id: 8,
        nonce: 1,
    }))
    .await;
    assert!(matches!(raw.read_frame().await, Some(Frame::Pong(_))));
    server.gateway.shutdown().await;
}

/// Opens `n` QUIC connections from `local` that complete the handshake and never send Hello;
/// returns those the server accepted (kept open) and how many it refused.
async fn hello_less_flood(
    server: &TestServer,
    local: &str,
    n: usize,
) -> (quinn::Endpoint, Vec<quinn::Connection>, usize) {
    let cfg = courier_client::tls::client_config(&server.trust()).unwrap();
    let mut endpoint = quinn::Endpoint::client(local.parse().unwrap()).unwrap();
    endpoint.set_default_client_config(cfg);
    let tries = (0..n).map(|_| {
        let connecting = endpoint.connect(server.addr(), "localhost").unwrap();
        async move { tokio::time::timeout(Duration::from_secs(5), connecting).await }
    });
    let mut open = Vec::new();
    let mut refused = 0;
    for r in futures::future::join_all(tries).await {
        match r {
            Ok(Ok(c)) => open.push(c),
            _ => refused += 1,
        }
    }
    (endpoint, open, refused)
}

/// 300 handshakes that never send Hello, from one source, used to fill every connection slot
/// so fresh clients could not connect (9 of 11 failed). Now one source may hold only so many
/// connections without Hello, and past a node-wide count new addresses are asked to validate
/// (QUIC Retry): the flood is refused, other clients connect and are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_less_flood_from_one_source_locks_nobody_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| {
        c.max_connections = 64;
        c.handshakes.per_source = 16;
        c.handshakes.retry_above = 8;
    })
    .await;
    // Linux routes all of 127/8 to loopback: the flood comes from 127.0.0.2.
    let (_flood_endpoint, open, refused) = hello_less_flood(&server, "127.0.0.2:0", 300).await;
    // Retried handshakes complete (a real client answers a Retry), but only 16 hold a place.
    let alive = open.iter().filter(|c| c.close_reason().is_none()).count();
    eprintln!(
        "flood: {} handshakes completed, {refused} refused, {alive} still open",
        open.len()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alive = open.iter().filter(|c| c.close_reason().is_none()).count();
    assert!(
        alive <= 16,
        "{alive} Hello-less connections from one source held"
    );

    let mut served = 0;
    for i in 0..11 {
        let (c, _e) = server.connect(&format!("fresh{i}"), 1).await;
        c.ping().await.unwrap();
        served += 1;
    }
    assert_eq!(served, 11);
    drop(open);
    server.gateway.shutdown().await;
}
