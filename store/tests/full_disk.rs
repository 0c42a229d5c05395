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
    refuses_then_heals(1).await;
}

/// The same on a store of three partitions, one database each on the one disk: the first to
/// commit into the full disk refuses, and afterwards every partition takes writes again (each
/// writer heals its own database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_heals_every_partition_without_a_restart() {
    refuses_then_heals(3).await;
}

async fn refuses_then_heals(partitions: usize) {
    let Some(fs) = Tmpfs::mount(48) else {
        return;
    };
    let dir = fs.path().join("store");
    let config = |min_free| {
        let mut c = config(dir.clone(), min_free);
        c.partitions = partitions;
        c
    };
    // No floor: the commit itself must meet ENOSPC.
    let store = Store::open(config(0)).unwrap();
    assert_eq!(store.partitions(), partitions);
    // A chat in every partition; sends go round them.
    let mut chats: Vec<u64> = Vec::new();
    for i in 0.. {
        let c = store
            .create_direct("alice", &format!("bob{i}"))
            .await
            .unwrap()
            .id;
        let p = courier_store::keys::chat_partition(c, partitions);
        if chats
            .iter()
            .all(|&o| courier_store::keys::chat_partition(o, partitions) != p)
        {
            chats.push(c);
        }
        if chats.len() == partitions {
            break;
        }
    }
    let chat_of = |n: u32| chats[n as usize % chats.len()];
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for n in 0..200 {
        let a = store.append(send(chat_of(n), n, 2000)).await.unwrap();
        acked.push((a.chat_id, a.seq));
    }

    fill(&fs.path().join("ballast"));
    let mut refused = None;
    for n in 200..20_000 {
        match store.append(send(chat_of(n), n, 2000)).await {
            Ok(a) => acked.push((a.chat_id, a.seq)),
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
        let e = store.append(send(chat_of(n), n, 2000)).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let stored: usize = chats.iter().map(|&c| all_seqs(&store, c).len()).sum();
    assert!(stored >= acked.len());

    std::fs::remove_file(fs.path().join("ballast")).unwrap();
    // Every partition takes writes again: the refused send first, then some more to each.
    let deadline = Instant::now() + Duration::from_secs(20);
    for m in (n..n + 50).chain(std::iter::once(n)) {
        let healed = loop {
            match store.append(send(chat_of(m), m, 2000)).await {
                Ok(a) => break a,
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::UNAVAILABLE, "{e}");
                    assert!(Instant::now() < deadline, "not healed: {e}");
                    tokio::time::sleep(e.retry_after().unwrap()).await;
                }
            }
        };
        // A refused send was never acknowledged; if its failed commit landed after all, the
        // retry finds it (duplicate) rather than storing it twice.
        acked.push((healed.chat_id, healed.seq));
    }
    let mut dense = Vec::new();
    for &c in &chats {
        let seqs = all_seqs(&store, c);
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, want, "seqs of chat {c} are dense");
        dense.push(want);
    }
    for (c, s) in &acked {
        let i = chats.iter().position(|x| x == c).unwrap();
        assert!(
            dense[i].contains(s),
            "acknowledged seq {s} of chat {c} lost"
        );
    }
    store.close().await;
    drop(store);

    // And the directory opens again with all of it.
    let store = Store::open(config(0)).unwrap();
    for (c, want) in chats.iter().zip(&dense) {
        assert_eq!(&all_seqs(&store, *c), want);
    }
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

/// Sends in flight from many tasks while the disk fills: batches are built while the one before
/// them commits, so a failed commit has a batch built on its writes behind it. Whatever the
/// writer remembered of seqs from them must go with them: after the heal every chat's seqs are
/// dense and hold every acknowledged send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_concurrent_sends_keeps_seqs_dense() {
    let Some(fs) = Tmpfs::mount(48) else {
        return;
    };
    let store = Store::open(config(fs.path().join("store"), 0)).unwrap();
    let mut chats = Vec::new();
    for i in 0..4 {
        chats.push(
            store
                .create_direct("alice", &format!("bob{i}"))
                .await
                .unwrap()
                .id,
        );
    }
    let ballast = fs.path().join("ballast");
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut next = 0u32;
    let mut refusals = 0;
    let mut filled = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Rounds of 64 sends at once: fill the disk after the first round, free it once sends are
    // refused, and stop after a round that was acknowledged whole following the heal.
    loop {
        assert!(Instant::now() < deadline, "not healed");
        let mut round = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (store, chat) = (store.clone(), chats[next as usize % chats.len()]);
            let n = next;
            next += 1;
            round.spawn(async move { store.append(send(chat, n, 2000)).await });
        }
        let mut refused = 0;
        while let Some(r) = round.join_next().await {
            match r.unwrap() {
                Ok(a) => acked.push((a.chat_id, a.seq)),
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::UNAVAILABLE, "{e}");
                    refused += 1;
                }
            }
        }
        refusals += refused;
        if !filled {
            fill(&ballast);
            filled = true;
        } else if refused > 0 && ballast.exists() {
            std::fs::remove_file(&ballast).unwrap();
        } else if refused == 0 && !ballast.exists() {
            break;
        } else if refused > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(refusals > 0, "the full disk refused no send");
    for &c in &chats {
        let seqs = all_seqs(&store, c);
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, want, "seqs of chat {c} are dense");
    }
    for (c, s) in &acked {
        assert!(
            all_seqs(&store, *c).contains(s),
            "acknowledged seq {s} of chat {c} lost"
        );
    }
    store.close().await;
}
