//! Media end to end over real QUIC on 127.0.0.1: uploads and downloads on streams of their own.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{next_message, TestServer};
use courier_client::connection::new_client_msg_id;
use courier_client::{UploadOptions, UploadState};
use courier_wire::frame::{Attachment, MessageKind, Upload};
use courier_wire::{ErrorCode, Frame};

fn sha256(b: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .try_into()
        .unwrap()
}

/// The first frame of a new upload of `bytes`, with their hash.
fn new_upload(bytes: &[u8]) -> Frame {
    Frame::Upload(Upload {
        request_id: 1,
        size: bytes.len() as u64,
        content_type: String::new(),
        sha256: Some(sha256(bytes)),
        resume: 0,
        offset: 0,
    })
}

use common::noise as data;

use common::png;

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's shape).
fn bomb(width: u32, height: u32) -> Vec<u8> {
    let mut p = png(8, 8);
    // IHDR data starts at byte 16 (8 signature + 4 length + 4 type); its CRC follows 13 bytes.
    p[16..20].copy_from_slice(&width.to_be_bytes());
    p[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

fn options(content_type: &str) -> UploadOptions {
    UploadOptions {
        content_type: content_type.into(),
        ..UploadOptions::default()
    }
}

fn blob_count(server: &TestServer) -> usize {
    std::fs::read_dir(server.dir.join("media/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn code(e: &courier_client::ClientError) -> Option<ErrorCode> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_round_trip_ranges_and_one_blob_for_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _ev) = server.connect("alice", 1).await;
    let bytes = data(10 << 20, 1);
    let mut state = UploadState::default();
    let opts = UploadOptions {
        sha256: Some(sha256(&bytes)),
        ..options("application/x-whatever")
    };
    let media = alice.upload(bytes.clone(), opts, &mut state).await.unwrap();
    assert_eq!(media.size, 10 << 20);
    assert_eq!(media.sha256, sha256(&bytes));
    assert_eq!(
        media.content_type, "application/octet-stream",
        "detected, not claimed"
    );
    assert_eq!(state.confirmed, 10 << 20, "progress reached the end");

    let (info, back) = alice.download(media.media_id, 0, 0).await.unwrap();
    assert_eq!(info, media);
    assert_eq!(sha256(&back), media.sha256);
    let (_, part) = alice
        .download(media.media_id, 1_000_000, 5_000)
        .await
        .unwrap();
    assert_eq!(part, bytes.slice(1_000_000..1_005_000));
    let (_, tail) = alice
        .download(media.media_id, (10 << 20) - 10, 100)
        .await
        .unwrap();
    assert_eq!(tail, bytes.slice((10 << 20) - 10..));
    let err = alice
        .download(media.media_id, (10 << 20) + 1, 0)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::INVALID));

    let again = alice
        .upload(bytes.clone(), options(""), &mut UploadState::default())
        .await
        .unwrap();
    assert_ne!(again.media_id, media.media_id);
    assert_eq!(again.sha256, media.sha256);
    assert_eq!(blob_count(&server), 1, "the same bytes are stored once");
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_hashes_are_enforced_while_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| c.media.max_upload = 1 << 20).await;
    let (alice, _ev) = server.connect("alice", 1).await;

    // Declared over the limit: refused before any byte is stored.
    let err = alice
        .upload(data(2 << 20, 2), options(""), &mut UploadState::default())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TOO_LARGE), "{err}");

    // Declared under the limit, but more bytes arrive: refused as they arrive.
    let (raw, _) = server.raw_session("alice", 2).await;
    let (mut send, recv) = raw.conn.open_bi().await.unwrap();
    let first = Frame::Upload(Upload {
        request_id: 7,
        size: 100_000,
        content_type: String::new(),
        sha256: None,
        resume: 0,
        offset: 0,
    });
    send.write_all(&first.to_bytes()).await.unwrap();
    let flood = data(900_000, 3);
    let _ = send.write_all(&flood).await; // the server may stop the stream mid-way
    let mut reader = courier_net::io::FrameReader::new(recv, 1 << 16);
    let mut refused = None;
    while let Ok(Some(f)) = reader.next().await {
        if let Frame::ErrorFrame(e) = f {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("an error on the upload stream");
    assert_eq!((e.request_id, e.code), (7, ErrorCode::TOO_LARGE));

    // A wrong declared hash.
    let bytes = data(300_000, 4);
    let opts = UploadOptions {
        sha256: Some([0; 32]),
        ..options("")
    };
    let err = alice
        .upload(bytes, opts, &mut UploadState::default())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::INVALID), "{err}");
    assert_eq!(blob_count(&server), 0, "nothing refused was stored");

    // The connection is fine for chat after all that.
    let chat = alice.create_direct_chat("bob").await.unwrap();
    alice.send(chat.chat_id, "still here").await.unwrap();
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_from_the_confirmed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let bytes = data((3 << 20) + 12_345, 5);

    // Send 2.5 MiB, wait until the server confirmed at least 2 MiB, then drop the connection.
    let (raw, _) = server.raw_session("alice", 1).await;
    let (mut send, recv) = raw.conn.open_bi().await.unwrap();
    let first = new_upload(&bytes);
    send.write_all(&first.to_bytes()).await.unwrap();
    send.write_all(&bytes[..(5 << 19)]).await.unwrap();
    let mut reader = courier_net::io::FrameReader::new(recv, 1 << 16);
    let (mut upload, mut confirmed) = (0, 0);
    while confirmed < 2 << 20 {
        match tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .unwrap()
        {
            Ok(Some(Frame::UploadProgress(p))) => (upload, confirmed) = (p.upload, p.offset),
            other => panic!("expected progress, got {other:?}"),
        }
    }
    raw.conn.close(0u32.into(), b"gone");
    drop(raw);

    // Another connection resumes it.
    let (alice, _ev) = server.connect("alice", 1).await;
    let mut state = UploadState::default();
    let opts = UploadOptions {
        sha256: Some(sha256(&bytes)),
        resume: Some((upload, confirmed)),
        ..options("")
    };
    let media = alice
        .upload(bytes.clone(), opts.clone(), &mut state)
        .await
        .unwrap();
    assert_eq!(media.sha256, sha256(&bytes));
    let (_, back) = alice.download(media.media_id, 0, 0).await.unwrap();
    assert_eq!(back, bytes);
    // The part is gone once stored: the server refuses a resume of it with NOT_FOUND (as it
    // does a resume on a node of a cluster that never had the part) ...
    let (raw, _) = server.raw_session("alice", 1).await;
    let (mut send, recv) = raw.conn.open_bi().await.unwrap();
    let resume = match new_upload(&bytes) {
        Frame::Upload(u) => Frame::Upload(Upload {
            resume: upload,
            offset: confirmed,
            ..u
        }),
        _ => unreachable!(),
    };
    send.write_all(&resume.to_bytes()).await.unwrap();
    let mut reader = courier_net::io::FrameReader::new(recv, 1 << 16);
    match tokio::time::timeout(Duration::from_secs(10), reader.next())
        .await
        .unwrap()
    {
        Ok(Some(Frame::ErrorFrame(e))) => assert_eq!(e.code, ErrorCode::NOT_FOUND),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    // ... and the SDK, told so, starts the upload over.
    let mut again = UploadState::default();
    let media2 = alice.upload(bytes.clone(), opts, &mut again).await.unwrap();
    assert_eq!(media2.sha256, media.sha256);
    assert_ne!(media2.media_id, media.media_id);
    assert_ne!(again.upload, upload, "a new upload");
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_uploader_attaches_and_only_members_download() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _a) = server.connect("alice", 1).await;
    let (bob, mut bob_events) = server.connect("bob", 1).await;
    let (carol, _c) = server.connect("carol", 1).await;
    let media = alice
        .upload(data(50_000, 6), options(""), &mut UploadState::default())
        .await
        .unwrap();

    let err = bob.download(media.media_id, 0, 0).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::FORBIDDEN), "not shared yet");

    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    let lie = Attachment {
        content_type: "image/png".into(),
        size: 1,
        width: 4000,
        height: 3000,
        ..media.clone()
    };
    let err = bob
        .send_message(
            chat,
            new_client_msg_id(),
            MessageKind::Media,
            Bytes::new(),
            vec![lie.clone()],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::FORBIDDEN), "not bob's upload");

    alice
        .send_message(
            chat,
            new_client_msg_id(),
            MessageKind::Media,
            Bytes::from("look"),
            vec![lie],
        )
        .await
        .unwrap();
    let m = next_message(&mut bob_events).await;
    assert_eq!(
        m.attachments,
        vec![media.clone()],
        "the server's description, not the claim"
    );
    let (_, got) = bob.download(media.media_id, 0, 0).await.unwrap();
    assert_eq!(sha256(&got), media.sha256);
    let err = carol.download(media.media_id, 0, 0).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::FORBIDDEN));
    let err = carol.download([9; 16], 0, 0).await.unwrap_err();
    assert_eq!(
        code(&err),
        Some(ErrorCode::FORBIDDEN),
        "unknown looks the same"
    );
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_get_dimensions_and_thumbnails_and_bombs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _ev) = server.connect("alice", 1).await;
    let media = alice
        .upload(
            png(1000, 500).into(),
            options("application/octet-stream"),
            &mut UploadState::default(),
        )
        .await
        .unwrap();
    assert_eq!(media.content_type, "image/png");
    assert_eq!((media.width, media.height), (1000, 500));
    let thumb_id = media.thumbnail_id.expect("a thumbnail");
    let (thumb, bytes) = alice.download(thumb_id, 0, 0).await.unwrap();
    assert_eq!((thumb.width, thumb.height), (320, 160));
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 160));

    let err = alice
        .upload(
            bomb(100_000, 100_000).into(),
            options("image/png"),
            &mut UploadState::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TOO_LARGE), "{err}");
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_keeps_flowing_during_a_fifty_mib_upload_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _a) = server.connect("alice", 1).await;
    let (_bob, mut bob_events) = server.connect("bob", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;

    let uploader = alice.clone();
    let started = Instant::now();
    let upload = tokio::spawn(async move {
        let r = uploader
            .upload(data(50 << 20, 7), options(""), &mut UploadState::default())
            .await;
        (r, started.elapsed())
    });
    let mut latencies = Vec::new();
    let mut during = 0;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        alice.send(chat, format!("message {i}")).await.unwrap();
        next_message(&mut bob_events).await;
        latencies.push(t.elapsed());
        if !upload.is_finished() {
            during += 1;
        }
    }
    let (result, took) = upload.await.unwrap();
    let media = result.unwrap();
    assert_eq!(media.size, 50 << 20);
    latencies.sort();
    println!(
        "50 MiB upload took {took:?}; {during} of 40 messages sent while it ran; send->deliver p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(during >= 5, "chat messages completed while the upload ran");
    assert!(
        latencies[latencies.len() / 2] < Duration::from_millis(500),
        "chat did not wait behind the upload"
    );
    server.gateway.shutdown().await;
}

/// A clock the test moves by hand.
#[derive(Debug)]
struct ManualClock(std::sync::atomic::AtomicU64);

impl courier_store::Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_an_unattached_upload_and_its_blob() {
    let dir = tempfile::tempdir().unwrap();
    let start = courier_wire::time::now_ms();
    let clock = std::sync::Arc::new(ManualClock(start.into()));
    let server = {
        let clock = clock.clone();
        TestServer::start_with(dir.path(), move |c| c.clock = clock).await
    };
    let (alice, _ev) = server.connect("alice", 1).await;
    let kept = alice
        .upload(data(100_000, 8), options(""), &mut UploadState::default())
        .await
        .unwrap();
    let stray = alice
        .upload(
            png(400, 300).into(),
            options(""),
            &mut UploadState::default(),
        )
        .await
        .unwrap();
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    alice
        .send_message(
            chat,
            new_client_msg_id(),
            MessageKind::Media,
            Bytes::new(),
            vec![kept.clone()],
        )
        .await
        .unwrap();
    assert_eq!(blob_count(&server), 3, "two uploads and a thumbnail");

    clock
        .0
        .store(start + 25 * 3_600_000, std::sync::atomic::Ordering::SeqCst);
    let swept = server.gateway.store().sweep().await.unwrap();
    assert_eq!(swept.media, 2, "the stray image and its thumbnail");
    let deadline = Instant::now() + Duration::from_secs(10);
    while blob_count(&server) != 1 {
        assert!(
            Instant::now() < deadline,
            "the janitor deletes released blobs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = alice.download(stray.media_id, 0, 0).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::FORBIDDEN));
    let (_, back) = alice.download(kept.media_id, 0, 0).await.unwrap();
    assert_eq!(sha256(&back), kept.sha256, "attached media stays");
    server.gateway.shutdown().await;
}

/// An upload stream that stops sending is not held open forever: after the stall timeout it is
/// answered INVALID (with where to resume), and the bytes that arrived can be resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_stopped_and_can_be_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| {
        c.media.stall_timeout = Duration::from_millis(500);
    })
    .await;
    let bytes = data(100_000, 9);
    let (raw, _) = server.raw_session("alice", 1).await;
    let (mut send, recv) = raw.conn.open_bi().await.unwrap();
    let first = new_upload(&bytes);
    send.write_all(&first.to_bytes()).await.unwrap();
    send.write_all(&bytes[..40_000]).await.unwrap();
    // ... and then nothing more, without finishing the stream.
    let mut reader = courier_net::io::FrameReader::new(recv, 1 << 16);
    let mut upload = 0;
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("the server gives up on the stalled stream within 10 s")
        {
            Ok(Some(Frame::UploadProgress(p))) => upload = p.upload,
            Ok(Some(Frame::ErrorFrame(e))) => break e,
            other => panic!("expected progress or an error, got {other:?}"),
        }
    };
    assert_eq!(error.code, ErrorCode::INVALID);
    assert!(error.message.contains("resume upload"), "{}", error.message);
    drop(send);

    let (alice, _ev) = server.connect("alice", 1).await;
    let opts = UploadOptions {
        sha256: Some(sha256(&bytes)),
        resume: Some((upload, 0)),
        ..options("")
    };
    let media = alice
        .upload(bytes.clone(), opts, &mut UploadState::default())
        .await
        .unwrap();
    assert_eq!(media.sha256, sha256(&bytes));
    server.gateway.shutdown().await;
}
