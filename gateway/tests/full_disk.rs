//! A full disk end to end: sends are refused with `RetryLater(UNAVAILABLE)` while the store's
//! disk is full and the Messenger delivers once space returns, without a restart; uploads are
//! refused before messages are, count against a per-user quota, and a failed one leaves no blob.
//!
//! The full-disk test mounts a small tmpfs (root only; elsewhere it says so and passes).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestServer;
use courier_client::{ClientError, MemoryPositions, Messenger, MessengerConfig, UploadState};
use courier_wire::ErrorCode;

// The store's full-disk tests mount their tmpfs with the same helper.
#[path = "../../store/tests/support/tmpfs.rs"]
mod tmpfs;

use tmpfs::{fill, Tmpfs};

fn expect_unavailable(e: &ClientError) -> Duration {
    assert_eq!(e.code(), Some(ErrorCode::UNAVAILABLE), "{e}");
    e.retry_after().expect("RetryLater carries the wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_for_now_and_the_messenger_delivers_after_space_returns() {
    let Some(fs) = Tmpfs::mount(48) else {
        return;
    };
    // No floors: the store's commits meet the full disk itself.
    let server = TestServer::start_with(fs.path(), |c| {
        c.store_min_free = 0;
        c.media.min_free = 0;
    })
    .await;
    let (alice, _ae) = server.connect("alice", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(alice.send(chat, common::body(i)).await.unwrap().seq);
    }

    fill(&fs.path().join("ballast"));
    let big = Bytes::from(vec![b'x'; 16 << 10]);
    let mut refused = None;
    for _ in 0..20_000 {
        match alice.send(chat, big.clone()).await {
            Ok(ok) => acked.push(ok.seq),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let wait = expect_unavailable(&refused.expect("a full disk refuses a send"));
    assert!(wait <= Duration::from_secs(10), "{wait:?}");
    // The session goes on: reads are served, further sends refused for now.
    assert!(common::all_history(&alice, chat, 500).await.len() >= acked.len());
    expect_unavailable(&alice.send(chat, big.clone()).await.unwrap_err());

    // A Messenger's send waits as told and lands once space is back.
    let cfg = MessengerConfig::new(
        server.addr(),
        server.trust(),
        server.token("alice", 2),
        Arc::new(MemoryPositions::default()),
    );
    let (messenger, _updates) = Messenger::start(cfg);
    let sending = tokio::spawn(async move {
        let r = messenger
            .send(chat, Bytes::from_static(b"after the disk filled"))
            .await;
        messenger.stop();
        r
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!sending.is_finished(), "refused while the disk is full");
    std::fs::remove_file(fs.path().join("ballast")).unwrap();
    let started = Instant::now();
    let ok = tokio::time::timeout(Duration::from_secs(30), sending)
        .await
        .expect("the messenger's send lands after space returns")
        .unwrap()
        .unwrap();
    eprintln!(
        "healed and delivered {:?} after space returned",
        started.elapsed()
    );
    acked.push(ok.seq);

    let history = common::all_history(&alice, chat, 500).await;
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "dense");
    for s in &acked {
        assert!(seqs.contains(s), "acknowledged seq {s} lost");
    }
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_before_messages_are() {
    let dir = tempfile::tempdir().unwrap();
    // An uploads' floor above any disk's free space; the store's floor is low.
    let server = TestServer::start_with(dir.path(), |c| c.media.min_free = u64::MAX / 2).await;
    let (alice, _ae) = server.connect("alice", 1).await;
    let e = alice
        .upload(
            Bytes::from(vec![7u8; 10_000]),
            Default::default(),
            &mut UploadState::default(),
        )
        .await
        .unwrap_err();
    expect_unavailable(&e);
    assert!(e.to_string().contains("nearly full"), "{e}");
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    alice.send(chat, common::body(1)).await.unwrap();
    server.gateway.shutdown().await;
}

/// Blob files under the media directory.
fn blobs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("media").join("blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_leaves_no_blob_behind() {
    let dir = tempfile::tempdir().unwrap();
    // The store refuses the media record (its floor is above any disk's free space) after
    // the blob was written.
    let server = TestServer::start_with(dir.path(), |c| {
        c.store_min_free = u64::MAX / 2;
        c.media.min_free = 0;
    })
    .await;
    let (alice, _ae) = server.connect("alice", 1).await;
    let e = alice
        .upload(
            Bytes::from(vec![9u8; 50_000]),
            Default::default(),
            &mut UploadState::default(),
        )
        .await
        .unwrap_err();
    expect_unavailable(&e);
    assert_eq!(blobs(dir.path()), Vec::<std::path::PathBuf>::new());
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_count_against_a_per_user_quota() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| c.media.user_quota = Some(100_000)).await;
    let (alice, _ae) = server.connect("alice", 1).await;
    let (bob, _be) = server.connect("bob", 1).await;
    let upload = |seed: u8| Bytes::from(vec![seed; 60_000]);
    alice
        .upload(upload(1), Default::default(), &mut UploadState::default())
        .await
        .unwrap();
    let e = alice
        .upload(upload(2), Default::default(), &mut UploadState::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TOO_LARGE), "{e}");
    assert!(e.to_string().contains("quota"), "{e}");
    // The quota is per user.
    bob.upload(upload(3), Default::default(), &mut UploadState::default())
        .await
        .unwrap();
    server.gateway.shutdown().await;
}
