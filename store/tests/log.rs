//! Message-log behaviour on the embedded engine: sequence numbers, dedupe, membership, history,
//! and what survives a reopen.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use courier_store::{AppendRequest, Chat, CommitListener, Store, StoreConfig, StoreError};
use courier_wire::frame::{ChatKind, Direction, Message, MessageKind};

fn req(sender: &str, chat: u64, n: u32) -> AppendRequest {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[4..4 + sender.len().min(12)].copy_from_slice(&sender.as_bytes()[..sender.len().min(12)]);
    AppendRequest {
        sender_user: sender.into(),
        sender_device: 1,
        client_msg_id: id,
        chat_id: chat,
        kind: MessageKind::Text,
        body: Bytes::from(format!("message {n}")),
        attachments: vec![],
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(u64, u64)>>);

impl CommitListener for Recorder {
    fn committed(&self, batch: &[(Arc<Chat>, Message)]) {
        self.0
            .lock()
            .unwrap()
            .extend(batch.iter().map(|(c, m)| (c.id, m.seq)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_dense_seqs_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder::default());
    let mut cfg = StoreConfig::new(dir.path());
    cfg.listener = Some(recorder.clone());
    let store = Store::open(cfg).unwrap();
    let chat = store.create_direct("alice", "bob").await.unwrap();
    assert_eq!(chat.kind, ChatKind::Direct);
    assert_eq!(
        store.create_direct("bob", "alice").await.unwrap().id,
        chat.id,
        "one chat per pair"
    );

    let mut tasks = Vec::new();
    for n in 0..500u32 {
        let store = store.clone();
        let sender = if n % 2 == 0 { "alice" } else { "bob" };
        let chat_id = chat.id;
        tasks.push(tokio::spawn(async move {
            store.append(req(sender, chat_id, n)).await.unwrap()
        }));
    }
    let mut seqs: Vec<u64> = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert!(!a.duplicate);
        seqs.push(a.seq);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
    let heard = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|&(_, s)| s)
        .collect::<Vec<_>>();
    assert_eq!(
        heard,
        (1..=500).collect::<Vec<_>>(),
        "listener hears commit order"
    );

    // A retry returns the original, writes nothing.
    let again = store.append(req("alice", chat.id, 10)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(store.last_seq(chat.id).unwrap(), 500);
    store.close().await;
    drop(store);

    let store = Store::open(StoreConfig::new(dir.path())).unwrap();
    assert_eq!(store.last_seq(chat.id).unwrap(), 500);
    let retry = store.append(req("bob", chat.id, 11)).await.unwrap();
    assert!(retry.duplicate, "dedupe survives reopen");
    let next = store.append(req("bob", chat.id, 9999)).await.unwrap();
    assert_eq!(next.seq, 501, "numbering continues after reopen");
    let (page, more) = store
        .history("alice", chat.id, Direction::After, 0, 1000)
        .unwrap();
    assert!(!more);
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=501).collect::<Vec<_>>()
    );
    let other = store.create_direct("alice", "carol").await.unwrap();
    assert_ne!(other.id, chat.id, "chat ids are not reused after reopen");
    store.close().await;
}

#[tokio::test]
async fn history_pages_both_ways_and_checks_membership() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).unwrap();
    let chat = store.create_direct("alice", "bob").await.unwrap();
    for n in 0..10 {
        store.append(req("alice", chat.id, n)).await.unwrap();
    }
    let (page, more) = store
        .history("bob", chat.id, Direction::Before, u64::MAX, 4)
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![10, 9, 8, 7]
    );
    assert!(more);
    let (page, more) = store
        .history("bob", chat.id, Direction::Before, 3, 4)
        .unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 1]);
    assert!(!more);
    let (page, more) = store
        .history("bob", chat.id, Direction::After, 8, 4)
        .unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![9, 10]);
    assert!(!more);
    assert_eq!(page[0].body, Bytes::from("message 8"));

    assert!(matches!(
        store.history("mallory", chat.id, Direction::After, 0, 4),
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        store.history("alice", 999, Direction::After, 0, 4),
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        store.append(req("mallory", chat.id, 1)).await,
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        store.append(req("alice", 999, 1)).await,
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        store.create_direct("alice", "bad id").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store.last_seq(chat.id).unwrap(),
        10,
        "refused appends take no seq"
    );
    store.close().await;
}

#[tokio::test]
async fn groups_and_chat_lists() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).unwrap();
    let members: Vec<String> = (0..99).map(|i| format!("u{i}")).collect();
    let g = store
        .create_group("owner", "team", members.clone())
        .await
        .unwrap();
    assert_eq!(g.members.len(), 100);
    let mut too_many = members.clone();
    too_many.push("u99".into());
    assert!(matches!(
        store.create_group("owner", "team", too_many).await,
        Err(StoreError::TooLarge(_))
    ));
    assert!(matches!(
        store.create_group("owner", " ", vec![]).await,
        Err(StoreError::Invalid(_))
    ));

    let d = store.create_direct("owner", "u5").await.unwrap();
    store.append(req("u5", d.id, 1)).await.unwrap();
    let list = store.chats_of("owner", 0, 10).unwrap();
    assert_eq!(
        list.iter().map(|(c, s)| (c.id, *s)).collect::<Vec<_>>(),
        vec![(g.id, 0), (d.id, 1)]
    );
    let list = store.chats_of("owner", g.id, 10).unwrap();
    assert_eq!(list.len(), 1);
    assert!(store.chats_of("u1", 0, 10).unwrap().len() == 1);
    store.close().await;
}
