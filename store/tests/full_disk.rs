//! A full disk, for real: the store on a small tmpfs, filled with a ballast file until commits
//! fail with ENOSPC. The store must refuse writes with `Unavailable` (never acknowledge one it
//! did not make durable), heal by itself once space is freed, and keep everything acknowledged.
//!
//! Mounting needs root (CI runs as root); elsewhere the tests say so and pass without running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_store::{AppendRequest, Store, StoreConfig, StoreError};
use courier_wire::frame::{Direction, MessageKind};
use courier_wire::ErrorCode;

#[path = "support/tmpfs.rs"]
mod tmpfs;

use tmpfs::{fill, Tmpfs};

fn send(chat: u64, n: u32, body: usize) -> AppendRequest {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    AppendRequest {
        sender_user: "alice".into(),
        sender_device: 1,
        client_msg_id: id,
        chat_id: chat,
        kind: MessageKind::Text,
        body: Bytes::from(vec![b'x'; body]),
        attachments: vec![],
    }
}

fn config(dir: PathBuf, min_free_bytes: u64) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.sweep_interval = None;
    c.min_free_bytes = min_free_bytes;
    c
}

/// Every message of the chat, in order.
fn all_seqs(store: &Store, chat: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let after = seqs.last().copied().unwrap_or(0);
        let (page, more) = store
            .history("alice", chat, Direction::After, after, 500)
            .unwrap();
        seqs.extend(page.iter().map(|m| m.seq));
        if !more || page.is_empty() {
            return seqs;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_then_heals_without_a_restart() {
    let Some(fs) = Tmpfs::mount(48) else {
        return;
    };
    let dir = fs.path().join("store");
    // No floor: the commit itself must meet ENOSPC.
    let store = Store::open(config(dir.clone(), 0)).unwrap();
    let chat = store.create_direct("alice", "bob").await.unwrap().id;
    let mut acked = Vec::new();
    for n in 0..200 {
        acked.push(store.append(send(chat, n, 2000)).await.unwrap().seq);
    }

    fill(&fs.path().join("ballast"));
    let mut refused = None;
    for n in 200..20_000 {
        match store.append(send(chat, n, 2000)).await {
            Ok(a) => acked.push(a.seq),
            Err(e) => {
                refused = Some((n, e));
                break;
            }
        }
    }
    let (n, e) = refused.expect("a full disk refuses a send");
    assert_eq!(e.code(), ErrorCode::UNAVAILABLE, "{e}");
    assert!(e.retry_after().is_some(), "{e}");
    // It stays refused (not acknowledged) while the disk is full, and reads go on.
    for _ in 0..3 {
        let e = store.append(send(chat, n, 2000)).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(all_seqs(&store, chat).len() >= acked.len());

    std::fs::remove_file(fs.path().join("ballast")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let healed = loop {
        match store.append(send(chat, n, 2000)).await {
            Ok(a) => break a,
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::UNAVAILABLE, "{e}");
                assert!(Instant::now() < deadline, "not healed: {e}");
                tokio::time::sleep(e.retry_after().unwrap()).await;
            }
        }
    };
    // The refused send was never acknowledged; if its failed commit landed after all, the
    // retry finds it (duplicate) rather than storing it twice.
    acked.push(healed.seq);
    for m in n + 1..n + 50 {
        acked.push(store.append(send(chat, m, 2000)).await.unwrap().seq);
    }
    let seqs = all_seqs(&store, chat);
    let dense: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, dense, "seqs are dense");
    for s in &acked {
        assert!(seqs.contains(s), "acknowledged seq {s} lost");
    }
    store.close().await;
    drop(store);

    // And the directory opens again with all of it.
    let store = Store::open(config(dir, 0)).unwrap();
    assert_eq!(all_seqs(&store, chat), dense);
    store.close().await;
}

#[tokio::test]
async fn under_the_free_space_floor_sends_are_refused_and_acks_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // A floor above any disk's free space.
    let store = Store::open(config(dir.path().to_owned(), u64::MAX / 2)).unwrap();
    let e = store.create_direct("alice", "bob").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::UNAVAILABLE, "{e}");
    assert!(e.to_string().contains("disk is nearly full"), "{e}");
    store.close().await;
    drop(store);

    let store = Store::open(config(dir.path().to_owned(), 0)).unwrap();
    let chat = store.create_direct("alice", "bob").await.unwrap().id;
    store.append(send(chat, 1, 10)).await.unwrap();
    store.close().await;
    drop(store);

    let store = Store::open(config(dir.path().to_owned(), u64::MAX / 2)).unwrap();
    let e = store.append(send(chat, 2, 10)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::UNAVAILABLE, "{e}");
    assert_eq!(store.ack("bob", 1, chat, 1).await.unwrap(), 1);
    store.close().await;
}
