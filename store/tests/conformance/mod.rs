//! The conformance suite: every guarantee of the message log, run against any engine.
//!
//! Each engine's test file implements [`Harness`] and runs the whole list, [`every_test!`]:
//! a test added here is run on every engine, none can be left out.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use courier_store::kv::{Engine, KvError, Pairs, Txn};
use courier_store::record::{LastSeq, OPEN};
use courier_store::{
    keys, AppendRequest, Clock, CommitListener, Committed, GroupChange, Store, StoreConfig,
    StoreError,
};
use courier_wire::frame::{ChatKind, Direction, MessageKind, SystemEvent, SystemEventKind};

/// The suite, written once: `every_test!(m)` expands to `m!(name, name, ...)` with every test.
macro_rules! every_test {
    ($m:ident) => {
        $m!(
            concurrent_appends_are_dense_deduplicated_and_durable,
            history_pages_both_ways_for_members_only,
            groups_record_changes_in_their_own_sequence,
            chat_lists_page_by_id,
            sync_resumes_from_positions_and_pages,
            sync_reads_only_chats_with_news,
            retention_expires_messages_and_dedupe_and_says_so,
            retention_entries_open_and_close_per_hour,
            two_writers_stay_dense,
            every_committed_message_is_heard_once_on_every_writer,
            cluster_inboxes_get_each_message_once_in_seq_order,
            a_blob_is_deleted_only_when_no_node_is_storing_it,
            two_writers_creating_one_direct_chat_get_one,
            large_batches_are_split_under_the_transaction_limit,
            batches_keep_every_guarantee,
            answers_by_function_after_the_listener,
            media_attachments_and_access,
            media_expires_with_its_messages,
            media_usage_counts_against_the_quota,
            receipts_move_forward_and_say_whom_to_tell,
            push_jobs_are_durable_coalesced_and_retried,
        );
    };
}
pub(crate) use every_test;

/// One test per name that runs it on the test file's `local()` harness: for the engines in a
/// local directory, `conformance::every_test!(on_local)`.
#[allow(unused_macros)]
macro_rules! on_local {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            conformance::$name(&local()).await;
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use on_local;

/// Gives each test a fresh, isolated engine; the same name again reopens the same data.
pub trait Harness {
    fn engine(&self, name: &str) -> Arc<dyn Engine>;
}

/// A clock the test moves by hand.
#[derive(Debug, Default)]
pub struct ManualClock(pub AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(u64, u64)>>);

impl CommitListener for Recorder {
    fn committed(&self, batch: &[Committed]) {
        self.0
            .lock()
            .unwrap()
            .extend(batch.iter().map(|c| (c.chat.id, c.message.seq)));
    }
}

thread_local! {
    /// Writers a store of this test thread runs on a shared engine ([`with_writers`]).
    static WRITERS: std::cell::Cell<usize> = const { std::cell::Cell::new(1) };
}

/// Stores that this thread's tests open run `n` writers (partitions) on a shared engine (an
/// engine of partitions has one per partition whatever this says).
pub fn with_writers(n: usize) {
    WRITERS.with(|w| w.set(n));
}

pub fn config() -> StoreConfig {
    let mut c = StoreConfig::new("unused");
    c.sweep_interval = None;
    // The simulation injects a fault into one commit in seven: its retries do not wait, so a
    // hundred seeds run in a minute (the waits themselves are a unit test of the writer).
    c.retry_backoff = Duration::ZERO;
    c.partitions = WRITERS.with(std::cell::Cell::get);
    c
}

/// Reads the engine directly, in a fresh transaction again while it asks for a retry (the
/// simulation injects read faults), as the store's own reads do.
pub fn read_raw<T>(
    engine: &Arc<dyn Engine>,
    mut f: impl FnMut(&mut dyn Txn) -> Result<T, KvError>,
) -> T {
    for _ in 0..100 {
        match engine.begin().and_then(|mut t| f(&mut *t)) {
            Ok(v) => return v,
            Err(e) if e.is_retryable() => continue,
            Err(e) => panic!("engine read: {e}"),
        }
    }
    panic!("engine read: still asked to retry after 100 tries")
}

pub fn open(h: &dyn Harness, name: &str, config: StoreConfig) -> Store {
    Store::with_engine(h.engine(name), config).unwrap()
}

pub fn msg(sender: &str, chat: u64, n: u32) -> AppendRequest {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    let s = sender.as_bytes();
    id[4..4 + s.len().min(12)].copy_from_slice(&s[..s.len().min(12)]);
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

pub async fn concurrent_appends_are_dense_deduplicated_and_durable(h: &dyn Harness) {
    let recorder = Arc::new(Recorder::default());
    let mut cfg = config();
    cfg.listener = Some(recorder.clone());
    let store = open(h, "dense", cfg);
    let chat = store.create_direct("alice", "bob").await.unwrap();
    assert_eq!(chat.kind, ChatKind::Direct);
    assert_eq!(
        store.create_direct("bob", "alice").await.unwrap().id,
        chat.id,
        "one chat per pair"
    );

    let mut tasks = Vec::new();
    for n in 0..500u32 {
        let (store, id) = (store.clone(), chat.id);
        let sender = if n % 2 == 0 { "alice" } else { "bob" };
        tasks.push(tokio::spawn(async move {
            store.append(msg(sender, id, n)).await.unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert!(!a.duplicate);
        seqs.push(a.seq);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
    let heard: Vec<u64> = recorder.0.lock().unwrap().iter().map(|&(_, s)| s).collect();
    assert_eq!(
        heard,
        (1..=500).collect::<Vec<_>>(),
        "the listener hears commit order"
    );

    let again = store.append(msg("alice", chat.id, 10)).await.unwrap();
    assert!(again.duplicate, "a retry returns the original");
    assert_eq!(
        store.last_seq(chat.id).unwrap(),
        500,
        "a retry writes nothing"
    );
    store.close().await;
    drop(store);

    let store = open(h, "dense", config());
    assert_eq!(store.last_seq(chat.id).unwrap(), 500);
    assert!(
        store
            .append(msg("bob", chat.id, 11))
            .await
            .unwrap()
            .duplicate,
        "dedupe survives reopen"
    );
    assert_eq!(
        store.append(msg("bob", chat.id, 9999)).await.unwrap().seq,
        501
    );
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

pub async fn history_pages_both_ways_for_members_only(h: &dyn Harness) {
    let store = open(h, "history", config());
    let chat = store.create_direct("alice", "bob").await.unwrap();
    for n in 0..10 {
        store.append(msg("alice", chat.id, n)).await.unwrap();
    }
    let seqs = |v: &[courier_wire::frame::Message]| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    let (page, more) = store
        .history("bob", chat.id, Direction::Before, u64::MAX, 4)
        .unwrap();
    assert_eq!((seqs(&page), more), (vec![10, 9, 8, 7], true));
    let (page, more) = store
        .history("bob", chat.id, Direction::Before, 3, 4)
        .unwrap();
    assert_eq!((seqs(&page), more), (vec![2, 1], false));
    let (page, more) = store
        .history("bob", chat.id, Direction::After, 8, 4)
        .unwrap();
    assert_eq!((seqs(&page), more), (vec![9, 10], false));
    assert_eq!(page[0].body, Bytes::from("message 8"));

    assert!(matches!(
        store.history("mallory", chat.id, Direction::After, 0, 4),
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store.history("alice", 999, Direction::After, 0, 4),
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store.append(msg("mallory", chat.id, 1)).await,
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store.append(msg("alice", 999, 1)).await,
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store.create_direct("alice", "bad id").await,
        Err(StoreError::Invalid(_))
    ));
    // A time-ordered id claiming to be from two days ahead is refused; one from now is fine.
    let now = courier_wire::time::now_ms();
    let mut ahead = msg("alice", chat.id, 77);
    ahead.client_msg_id = courier_wire::uuid_v7(now + 2 * 86_400_000, [1; 10]);
    assert!(matches!(
        store.append(ahead).await,
        Err(StoreError::Invalid(_))
    ));
    let mut fine = msg("alice", chat.id, 78);
    fine.client_msg_id = courier_wire::uuid_v7(now, [2; 10]);
    let first = store.append(fine.clone()).await.unwrap();
    assert!(
        store.append(fine).await.unwrap().duplicate,
        "UUIDv7 ids deduplicate too"
    );
    assert_eq!(first.seq, 11);
    assert_eq!(
        store.last_seq(chat.id).unwrap(),
        11,
        "refused appends take no seq"
    );
    store.close().await;
}

fn system(m: &courier_wire::frame::Message) -> SystemEvent {
    assert_eq!(m.kind, MessageKind::System);
    SystemEvent::from_body(&m.body).unwrap()
}

pub async fn groups_record_changes_in_their_own_sequence(h: &dyn Harness) {
    let recorder = Arc::new(Recorder::default());
    let mut cfg = config();
    cfg.listener = Some(recorder.clone());
    let store = open(h, "groups", cfg);
    let members: Vec<String> = (0..99).map(|i| format!("u{i}")).collect();
    let g = store
        .create_group("owner", "team", members.clone())
        .await
        .unwrap();
    assert_eq!((g.members.len(), g.owner.as_str()), (100, "owner"));
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

    // Seq 1 records the creation.
    let (page, _) = store.history("u5", g.id, Direction::After, 0, 10).unwrap();
    let created = system(&page[0]);
    assert_eq!(
        (page[0].seq, created.kind, created.name.as_deref()),
        (1, SystemEventKind::Created, Some("team"))
    );
    assert_eq!(created.added.len(), 99);

    store.append(msg("u1", g.id, 1)).await.unwrap();
    // Full group: adding is refused; a member may rename; only the owner removes others.
    let add = GroupChange {
        add: vec!["new".into()],
        ..Default::default()
    };
    assert!(matches!(
        store.update_group("u1", g.id, add.clone()).await,
        Err(StoreError::TooLarge(_))
    ));
    let rm = GroupChange {
        remove: vec!["u2".into()],
        ..Default::default()
    };
    assert!(matches!(
        store.update_group("u1", g.id, rm.clone()).await,
        Err(StoreError::Forbidden(
            courier_store::error::Forbid::NotOwner
        ))
    ));
    assert!(matches!(
        store.update_group("stranger", g.id, add.clone()).await,
        Err(StoreError::Forbidden(_))
    ));
    let g2 = store.update_group("owner", g.id, rm).await.unwrap();
    assert!(!g2.is_member("u2"));
    let g3 = store
        .update_group(
            "u1",
            g.id,
            GroupChange {
                rename: Some("crew".into()),
                add: vec!["new".into()],
                remove: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!((g3.name.as_str(), g3.is_member("new")), ("crew", true));

    let (page, _) = store.history("new", g.id, Direction::After, 1, 10).unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(page[0].kind, MessageKind::Text);
    let removed = system(&page[1]);
    assert_eq!(
        (removed.actor.as_str(), removed.removed.clone()),
        ("owner", vec!["u2".to_string()])
    );
    let changed = system(&page[2]);
    assert_eq!(
        (changed.name.as_deref(), changed.added.clone()),
        (Some("crew"), vec!["new".to_string()])
    );

    // The removed member can no longer read or write.
    assert!(matches!(
        store.append(msg("u2", g.id, 9)).await,
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store.history("u2", g.id, Direction::After, 0, 10),
        Err(StoreError::Forbidden(_))
    ));
    // The owner leaves: ownership passes to the first remaining member.
    let g4 = store
        .update_group(
            "owner",
            g.id,
            GroupChange {
                remove: vec!["owner".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!g4.is_member("owner"));
    assert_eq!(g4.owner, g4.members[0]);
    let direct = store.create_direct("u1", "u3").await.unwrap();
    let rename = GroupChange {
        rename: Some("x".into()),
        ..Default::default()
    };
    assert!(matches!(
        store.update_group("u1", direct.id, rename).await,
        Err(StoreError::Invalid(_))
    ));
    let heard: Vec<u64> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, _)| *c == g.id)
        .map(|&(_, s)| s)
        .collect();
    assert_eq!(
        heard,
        vec![1, 2, 3, 4, 5],
        "system messages reach the listener in sequence"
    );
    store.close().await;
}

pub async fn chat_lists_page_by_id(h: &dyn Harness) {
    let store = open(h, "lists", config());
    let g = store
        .create_group("owner", "team", vec!["u1".into()])
        .await
        .unwrap();
    let d = store.create_direct("owner", "u5").await.unwrap();
    store.append(msg("u5", d.id, 1)).await.unwrap();
    let list = store.chats_of("owner", 0, 10).unwrap();
    // Chat ids are random: the list is in id order, not creation order.
    let mut want = vec![(g.id, 1), (d.id, 1)];
    want.sort();
    assert_eq!(
        list.iter().map(|(c, s)| (c.id, *s)).collect::<Vec<_>>(),
        want
    );
    assert_eq!(store.chats_of("owner", want[0].0, 10).unwrap().len(), 1);
    assert_eq!(store.chats_of("owner", 0, 1).unwrap().len(), 1);
    assert_eq!(store.chats_of("u1", 0, 10).unwrap().len(), 1);
    store.close().await;
}

pub async fn sync_resumes_from_positions_and_pages(h: &dyn Harness) {
    let store = open(h, "sync", config());
    let x = store.create_direct("bob", "alice").await.unwrap();
    let y = store.create_direct("bob", "carol").await.unwrap();
    // Sync goes chat by chat in id order; ids are random, so name them in that order.
    let ((a, sa), (b, sb)) = if x.id < y.id {
        ((x, "alice"), (y, "carol"))
    } else {
        ((y, "carol"), (x, "alice"))
    };
    for n in 0..5 {
        store.append(msg(sa, a.id, n)).await.unwrap();
        store.append(msg(sb, b.id, n)).await.unwrap();
    }
    let order = |p: &courier_store::SyncPage| {
        p.messages
            .iter()
            .map(|m| (m.chat_id, m.seq))
            .collect::<Vec<_>>()
    };
    let p = store.sync("bob", 1, &[], 100).unwrap();
    let mut want: Vec<(u64, u64)> = (1..=5).map(|s| (a.id, s)).collect();
    want.extend((1..=5).map(|s| (b.id, s)));
    assert_eq!(
        (order(&p), p.more, p.expired.clone()),
        (want, false, vec![])
    );

    // Acks move the device's positions (cumulative, never backwards, clamped to the last seq).
    assert_eq!(store.ack("bob", 1, a.id, 3).await.unwrap(), 3);
    assert_eq!(store.ack("bob", 1, a.id, 2).await.unwrap(), 3);
    assert_eq!(store.ack("bob", 1, b.id, 99).await.unwrap(), 5);
    assert_eq!(store.ack("bob", 9, a.id, 4).await.unwrap(), 4);
    let seen = store.user_positions("bob").unwrap();
    assert_eq!(
        (seen[&a.id], seen[&b.id]),
        (4, 5),
        "the furthest of the user's devices"
    );
    assert!(matches!(
        store.ack("mallory", 1, a.id, 1).await,
        Err(StoreError::Forbidden(_))
    ));
    let p = store.sync("bob", 1, &[], 100).unwrap();
    assert_eq!(order(&p), vec![(a.id, 4), (a.id, 5)]);
    // Another device of the same user has its own positions.
    assert_eq!(store.sync("bob", 2, &[], 100).unwrap().messages.len(), 10);
    // Positions the client gives win over stored ones.
    let p = store.sync("bob", 1, &[(a.id, 4), (b.id, 3)], 100).unwrap();
    assert_eq!(order(&p), vec![(a.id, 5), (b.id, 4), (b.id, 5)]);
    // Paging: the next page starts from the positions the last one reached.
    let p1 = store.sync("bob", 3, &[], 4).unwrap();
    assert_eq!(
        (order(&p1), p1.more),
        ((1..=4).map(|s| (a.id, s)).collect(), true)
    );
    let p2 = store.sync("bob", 3, &[(a.id, 4)], 4).unwrap();
    assert_eq!(
        (order(&p2), p2.more),
        (vec![(a.id, 5), (b.id, 1), (b.id, 2), (b.id, 3)], true)
    );
    let p3 = store.sync("bob", 3, &[(a.id, 5), (b.id, 3)], 4).unwrap();
    assert_eq!((order(&p3), p3.more), (vec![(b.id, 4), (b.id, 5)], false));
    store.close().await;
}

/// Counts which chats' messages a store read.
struct Counting {
    inner: Arc<dyn Engine>,
    message_reads: Arc<Mutex<BTreeSet<u64>>>,
}

struct CountingTxn<'a> {
    inner: Box<dyn Txn + 'a>,
    message_reads: Arc<Mutex<BTreeSet<u64>>>,
}

impl Engine for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn begin(&self) -> Result<Box<dyn Txn + '_>, KvError> {
        Ok(Box::new(CountingTxn {
            inner: self.inner.begin()?,
            message_reads: self.message_reads.clone(),
        }))
    }
    fn partitions(&self) -> usize {
        self.inner.partitions()
    }
    fn begin_write_on(&self, partition: usize) -> Result<Box<dyn Txn + '_>, KvError> {
        Ok(Box::new(CountingTxn {
            inner: self.inner.begin_write_on(partition)?,
            message_reads: self.message_reads.clone(),
        }))
    }
    fn exclusive(&self) -> bool {
        self.inner.exclusive()
    }
    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }
    fn sync(&self) -> Result<(), KvError> {
        self.inner.sync()
    }
}

impl CountingTxn<'_> {
    fn note(&self, key: &[u8]) {
        if key.first() == Some(&keys::tag::MESSAGE) && key.len() >= 9 {
            self.message_reads
                .lock()
                .unwrap()
                .insert(u64::from_be_bytes(key[1..9].try_into().unwrap()));
        }
    }
}

impl Txn for CountingTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.note(key);
        self.inner.get(key)
    }
    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.note(start);
        self.inner.scan(start, end, limit, reverse)
    }
    fn scan_local(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.note(start);
        self.inner.scan_local(start, end, limit, reverse)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.inner.set(key, value);
    }
    fn clear(&mut self, key: &[u8]) {
        self.inner.clear(key);
    }
    fn clear_range(&mut self, start: &[u8], end: &[u8]) {
        self.inner.clear_range(start, end);
    }
    fn commit(self: Box<Self>) -> Result<(), KvError> {
        self.inner.commit()
    }
}

pub async fn sync_reads_only_chats_with_news(h: &dyn Harness) {
    let reads = Arc::new(Mutex::new(BTreeSet::new()));
    let engine = Arc::new(Counting {
        inner: h.engine("fanout-on-read"),
        message_reads: reads.clone(),
    });
    let store = Store::with_engine(engine, config()).unwrap();
    let mut chats = Vec::new();
    for i in 0..1000 {
        let c = store
            .create_direct("busy", &format!("peer{i}"))
            .await
            .unwrap();
        store
            .append(msg(&format!("peer{i}"), c.id, 0))
            .await
            .unwrap();
        chats.push(c.id);
    }
    for &c in &chats {
        store.ack("busy", 1, c, 1).await.unwrap();
    }
    let mut news: Vec<u64> = chats.iter().step_by(100).copied().collect();
    assert_eq!(news.len(), 10);
    for (i, &c) in news.iter().enumerate() {
        store
            .append(msg(&format!("peer{}", i * 100), c, 1))
            .await
            .unwrap();
    }
    reads.lock().unwrap().clear();
    news.sort();
    let page = store.sync("busy", 1, &[], 1000).unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.chat_id).collect::<Vec<_>>(),
        news
    );
    let read: Vec<u64> = reads.lock().unwrap().iter().copied().collect();
    assert_eq!(
        read, news,
        "sync read messages of exactly the 10 chats with news, not the other 990"
    );
    store.close().await;
}

pub async fn retention_expires_messages_and_dedupe_and_says_so(h: &dyn Harness) {
    const DAY: u64 = 86_400_000;
    let clock = Arc::new(ManualClock(AtomicU64::new(1_000 * DAY)));
    let mut cfg = config();
    cfg.clock = clock.clone();
    cfg.sweep_limit = 3; // several bounded transactions
    let store = open(h, "retention", cfg);
    let a = store.create_direct("alice", "bob").await.unwrap();
    let b = store.create_direct("alice", "carol").await.unwrap();
    // Seven messages in one hour: more than one sweep transaction (limit 3) must expire them.
    let c = store.create_direct("alice", "dave").await.unwrap();
    for n in 0..7 {
        store.append(msg("dave", c.id, n)).await.unwrap();
    }
    for n in 0..5 {
        store.append(msg("bob", a.id, n)).await.unwrap();
        clock.0.fetch_add(3_600_000, Ordering::SeqCst); // one hour apart
    }
    store.append(msg("carol", b.id, 0)).await.unwrap();
    assert_eq!(
        store.sweep().await.unwrap().chat_hours,
        0,
        "nothing is old yet"
    );

    // 30 days after the third message: messages 1-3 and their dedupe records expire.
    clock.0.store(
        1_000 * DAY + 2 * 3_600_000 + 30 * DAY + 3_600_000,
        Ordering::SeqCst,
    );
    let swept = store.sweep().await.unwrap();
    assert_eq!(
        (swept.chat_hours, swept.messages, swept.dedupe_records),
        (4, 10, 10)
    );
    assert!(store
        .history("alice", c.id, Direction::After, 0, 10)
        .unwrap()
        .0
        .is_empty());
    assert!(
        !store.append(msg("dave", c.id, 6)).await.unwrap().duplicate,
        "its dedupe record expired too"
    );
    let (page, _) = store
        .history("alice", a.id, Direction::After, 0, 10)
        .unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5]);
    let p = store.sync("alice", 1, &[], 100).unwrap();
    let mut want = vec![a.id, c.id];
    want.sort();
    assert_eq!(
        p.expired, want,
        "the device is told it missed expired messages"
    );
    let mut want = vec![(a.id, 4), (a.id, 5), (b.id, 1), (c.id, 8)];
    want.sort();
    assert_eq!(
        p.messages
            .iter()
            .map(|m| (m.chat_id, m.seq))
            .collect::<Vec<_>>(),
        want
    );
    let p = store
        .sync("alice", 1, &[(a.id, 3), (c.id, 8)], 100)
        .unwrap();
    assert!(
        p.expired.is_empty(),
        "a device already past the expired part is not told"
    );
    // The expired dedupe record is gone; the live one still answers.
    let resent = store.append(msg("bob", a.id, 0)).await.unwrap();
    assert_eq!((resent.duplicate, resent.seq), (false, 6));
    assert!(store.append(msg("bob", a.id, 4)).await.unwrap().duplicate);

    // Much later everything has expired; numbering still goes on.
    clock.0.fetch_add(60 * DAY, Ordering::SeqCst);
    store.sweep().await.unwrap();
    assert!(store
        .history("alice", a.id, Direction::After, 0, 10)
        .unwrap()
        .0
        .is_empty());
    assert_eq!(store.append(msg("bob", a.id, 77)).await.unwrap().seq, 7);
    store.close().await;
}

/// The retention index costs two writes per chat and hour, not one per batch: a chat's first
/// message of an hour opens its `T` entry, its first message of a later hour closes it with
/// the exact last seq of the old hour; `S` carries the open entry's hour.
pub async fn retention_entries_open_and_close_per_hour(h: &dyn Harness) {
    const HOUR: u64 = 3_600_000;
    let clock = Arc::new(ManualClock(AtomicU64::new(500_000 * HOUR + 10)));
    let mut cfg = config();
    cfg.clock = clock.clone();
    let engine = h.engine("retention-index");
    let store = Store::with_engine(engine.clone(), cfg).unwrap();
    let chat = store.create_direct("alice", "bob").await.unwrap().id;
    for n in 0..3 {
        store.append(msg("alice", chat, n)).await.unwrap(); // three commits, one hour
    }
    let entries = |engine: &Arc<dyn Engine>| {
        let (pairs, s) = read_raw(engine, |t| {
            let pairs = t.scan(
                &keys::time_prefix(0),
                &keys::time_prefix(u32::MAX),
                100,
                false,
            )?;
            Ok((pairs, t.get(&keys::last_seq(chat))?.unwrap()))
        });
        let entries: Vec<(u32, u64)> = pairs
            .iter()
            .filter_map(|(k, v)| {
                let (hour, c) = keys::parse_time(k)?;
                (c == chat).then(|| (hour, u64::from_be_bytes(v[..].try_into().unwrap())))
            })
            .collect();
        (entries, LastSeq::decode(&s).unwrap())
    };
    let (e, s) = entries(&engine);
    assert_eq!(e, vec![(500_000, OPEN)], "one open entry for the hour");
    assert_eq!((s.seq, s.open_hour), (3, Some(500_000)));

    clock.0.fetch_add(2 * HOUR, Ordering::SeqCst);
    store.append(msg("alice", chat, 3)).await.unwrap();
    store.append(msg("alice", chat, 4)).await.unwrap();
    let (e, s) = entries(&engine);
    assert_eq!(
        e,
        vec![(500_000, 3), (500_002, OPEN)],
        "the old hour closed exactly"
    );
    assert_eq!((s.seq, s.open_hour), (5, Some(500_002)));
    store.close().await;
}

/// Two writers on one shared engine (FoundationDB): conflicts are retried, seqs stay dense.
pub async fn two_writers_stay_dense(h: &dyn Harness) {
    let first = open(h, "two-writers", config());
    if first.engine_exclusive() {
        first.close().await;
        return;
    }
    let second = open(h, "two-writers", config());
    let chat = first.create_direct("alice", "bob").await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..200u32 {
        let store = if n % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let id = chat.id;
        tasks.push(tokio::spawn(async move {
            store.append(msg("alice", id, n)).await.unwrap().seq
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    first.close().await;
    second.close().await;
}

/// Every acknowledged message is heard by its writer's listener exactly once, and nothing is
/// heard that was not acknowledged: also when a commit's outcome was unknown and the writer had
/// to find out whether it applied (engines that answer "maybe committed").
pub async fn every_committed_message_is_heard_once_on_every_writer(h: &dyn Harness) {
    let (heard_a, heard_b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let mut cfg = config();
    cfg.listener = Some(heard_a.clone());
    let first = open(h, "heard-once", cfg);
    let mut cfg = config();
    cfg.listener = Some(heard_b.clone());
    let second = if first.engine_exclusive() {
        None
    } else {
        Some(open(h, "heard-once", cfg))
    };
    let chats = [
        first.create_direct("alice", "bob").await.unwrap().id,
        first.create_direct("alice", "carol").await.unwrap().id,
        first
            .create_group("alice", "g", vec!["bob".into()])
            .await
            .unwrap()
            .id,
    ];
    // The group's creation is heard too (its system event): start counting after it.
    heard_a.0.lock().unwrap().clear();
    let mut tasks = Vec::new();
    for n in 0..300u32 {
        let store = match (&second, n % 2) {
            (Some(s), 1) => s.clone(),
            _ => first.clone(),
        };
        let chat = chats[n as usize % chats.len()];
        tasks.push(tokio::spawn(async move {
            let a = store.append(msg("alice", chat, n)).await.unwrap();
            assert!(!a.duplicate, "a first send is not a duplicate");
            (chat, a.seq)
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    acked.sort();
    let mut heard: Vec<(u64, u64)> = heard_a.0.lock().unwrap().clone();
    heard.extend(heard_b.0.lock().unwrap().iter().copied());
    heard.sort();
    assert_eq!(
        heard, acked,
        "each acknowledged message heard once, by its own writer"
    );
    first.close().await;
    if let Some(s) = second {
        s.close().await;
    }
}

/// 400 sends of 32 KiB in one `append_batch` (13 MB, past FoundationDB's 10 MB transaction
/// limit) all commit, dense and in order: the batch is cut at the engine's size target.
pub async fn large_batches_are_split_under_the_transaction_limit(h: &dyn Harness) {
    let store = open(h, "large-batches", config());
    let chat = store.create_direct("alice", "bob").await.unwrap().id;
    let requests = (0..400u32)
        .map(|n| {
            let mut m = msg("alice", chat, n);
            m.body = Bytes::from(vec![b'x'; 32 * 1024]);
            m
        })
        .collect();
    let seqs: Vec<u64> = store
        .append_batch(requests)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().seq)
        .collect();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>(), "dense, in order");
    let (page, _) = store
        .history("bob", chat, Direction::After, 0, 500)
        .unwrap();
    assert_eq!(page.len(), 400);
    assert!(page.iter().all(|m| m.body.len() == 32 * 1024));
    store.close().await;
}

/// Two writers (two gateway nodes) creating the same direct chat at once get one chat.
pub async fn two_writers_creating_one_direct_chat_get_one(h: &dyn Harness) {
    let first = open(h, "one-direct", config());
    let second = if first.engine_exclusive() {
        first.clone()
    } else {
        open(h, "one-direct", config())
    };
    let mut tasks = Vec::new();
    for n in 0..20 {
        let store = if n % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            store.create_direct("dave", "erin").await.unwrap().id
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "one chat: {ids:?}");
    let listed = first.chats_of("erin", 0, 10).unwrap();
    assert_eq!(listed.len(), 1);
    first.close().await;
    second.close().await;
}

/// Batched appends: one transaction per batch, each send answered on its own, retries across
/// batches that commit back to back (the second built while the first is still committing)
/// answered with the originals, and chat changes between batches taking effect in order.
pub async fn batches_keep_every_guarantee(h: &dyn Harness) {
    let recorder = Arc::new(Recorder::default());
    let mut cfg = config();
    cfg.listener = Some(recorder.clone());
    cfg.max_batch = 100;
    let store = open(h, "batches", cfg);
    let group = store
        .create_group("alice", "team", vec!["bob".into(), "carol".into()])
        .await
        .unwrap();
    let direct = store.create_direct("alice", "bob").await.unwrap();

    // Batch A, its retry B (queued before A is answered), and a batch mixing new sends with
    // retries and with sends that must fail alone.
    let a: Vec<AppendRequest> = (0..100).map(|n| msg("alice", group.id, n)).collect();
    let b = a.clone();
    let mut c: Vec<AppendRequest> = (100..150).map(|n| msg("bob", direct.id, n)).collect();
    c.push(msg("alice", group.id, 7)); // a retry of a message in A
    c.push(msg("mallory", group.id, 1)); // not a member
    let mut bad = msg("alice", direct.id, 9000);
    bad.client_msg_id = courier_wire::uuid_v7(u64::MAX >> 16, [0; 10]); // far in the future
    c.push(bad);
    let (ra, rb, rc) = tokio::join!(
        store.append_batch(a),
        store.append_batch(b),
        store.append_batch(c)
    );
    let (ra, rb, rc) = (ra.unwrap(), rb.unwrap(), rc.unwrap());
    let first_seq = store.last_seq(group.id).unwrap() - 99;
    for (i, (x, y)) in ra.iter().zip(&rb).enumerate() {
        let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
        assert!(!x.duplicate);
        assert_eq!(x.seq, first_seq + i as u64, "a batch keeps its order");
        assert!(y.duplicate, "the retry batch returns the originals");
        assert_eq!((y.seq, y.server_ts), (x.seq, x.server_ts));
    }
    assert_eq!(rc.len(), 53);
    for (i, r) in rc[..50].iter().enumerate() {
        assert_eq!(r.as_ref().unwrap().seq, i as u64 + 1);
    }
    let retry = rc[50].as_ref().unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.seq, ra[7].as_ref().unwrap().seq);
    assert!(matches!(rc[51], Err(StoreError::Forbidden(_))));
    assert!(matches!(rc[52], Err(StoreError::Invalid(_))));

    // A removal between two queued batches: the second batch's sends by the removed member fail.
    let before: Vec<AppendRequest> = (200..300).map(|n| msg("carol", group.id, n)).collect();
    let after: Vec<AppendRequest> = (300..400).map(|n| msg("carol", group.id, n)).collect();
    let removal = GroupChange {
        remove: vec!["carol".into()],
        ..Default::default()
    };
    let (r1, r2, r3) = tokio::join!(
        store.append_batch(before),
        store.update_group("alice", group.id, removal),
        store.append_batch(after)
    );
    assert!(r1.unwrap().iter().all(|r| r.is_ok()));
    r2.unwrap();
    assert!(r3
        .unwrap()
        .iter()
        .all(|r| matches!(r, Err(StoreError::Forbidden(_)))));

    // Dense, and the listener heard every message once, in commit order.
    let last = store.last_seq(group.id).unwrap();
    let (page, _) = store
        .history("alice", group.id, Direction::After, 0, 1000)
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    let heard: Vec<u64> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|&&(chat, _)| chat == group.id)
        .map(|&(_, s)| s)
        .collect();
    assert_eq!(heard, (1..=last).collect::<Vec<_>>());
    assert!(store.append_batch(Vec::new()).await.unwrap().is_empty());
    store.close().await;
}

fn media(id: u8, owner: &str, thumbnail_of: Option<[u8; 16]>) -> courier_store::Media {
    courier_store::Media {
        info: courier_wire::frame::Attachment {
            media_id: [id; 16],
            content_type: "image/png".into(),
            size: 1000 + u64::from(id),
            sha256: [id; 32],
            thumbnail_id: None,
            width: 64,
            height: 32,
        },
        owner: owner.into(),
        created_ts: 1,
        thumbnail_of,
    }
}

/// Media: only the uploader attaches its upload; the message carries the server's description,
/// not the client's claims; members of a chat with such a message (and the uploader) may read
/// it, a thumbnail follows its media, and a refused send leaves no access behind.
pub async fn media_attachments_and_access(h: &dyn Harness) {
    let store = open(h, "media", config());
    let mut photo = media(1, "alice", None);
    photo.info.thumbnail_id = Some([2; 16]);
    store
        .put_media(vec![photo.clone(), media(2, "alice", Some([1; 16]))], None)
        .await
        .unwrap();
    store
        .put_media(vec![media(3, "bob", None)], None)
        .await
        .unwrap();
    let chat = store.create_direct("alice", "bob").await.unwrap();

    // Before any message: only the uploader.
    assert_eq!(store.media_for("alice", &[1; 16]).unwrap(), photo);
    assert!(matches!(
        store.media_for("bob", &[1; 16]),
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store.media_for("alice", &[9; 16]),
        Err(StoreError::Forbidden(_))
    ));

    let claim = |id: u8| courier_wire::frame::Attachment {
        media_id: [id; 16],
        content_type: "text/lies".into(),
        size: 1,
        sha256: [0; 32],
        thumbnail_id: None,
        width: 1,
        height: 1,
    };
    let mut req = msg("alice", chat.id, 1);
    req.attachments = vec![claim(1), claim(3)]; // bob's upload: refused as a whole
    assert!(matches!(
        store.append(req).await,
        Err(StoreError::Forbidden(
            courier_store::error::Forbid::NotYourMedia
        ))
    ));
    assert!(
        matches!(
            store.media_for("bob", &[1; 16]),
            Err(StoreError::Forbidden(_))
        ),
        "a refused send grants nothing"
    );
    let mut req = msg("alice", chat.id, 2);
    req.attachments = vec![claim(2)];
    assert!(matches!(
        store.append(req).await,
        Err(StoreError::Invalid(_))
    ));
    let mut req = msg("alice", chat.id, 3);
    req.attachments = vec![claim(9)];
    assert!(matches!(
        store.append(req).await,
        Err(StoreError::Forbidden(_))
    ));

    let mut req = msg("alice", chat.id, 4);
    req.attachments = vec![claim(1)];
    let ok = store.append(req).await.unwrap();
    let (page, _) = store
        .history("bob", chat.id, Direction::After, ok.seq - 1, 1)
        .unwrap();
    assert_eq!(
        page[0].attachments,
        vec![photo.info.clone()],
        "the server's description"
    );
    assert_eq!(store.media_for("bob", &[1; 16]).unwrap(), photo);
    assert_eq!(
        store.media_for("bob", &[2; 16]).unwrap().thumbnail_of,
        Some([1; 16]),
        "the thumbnail follows its media"
    );
    assert!(matches!(
        store.media_for("carol", &[1; 16]),
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store.media_for("alice", &[3; 16]),
        Err(StoreError::Forbidden(_))
    ));
    store.close().await;
}

/// Media retention: an upload no message attaches within a day is deleted; attached media
/// lives as long as a message attaches it; a blob is released only when no record uses it.
pub async fn media_expires_with_its_messages(h: &dyn Harness) {
    const DAY: u64 = 86_400_000;
    let clock = Arc::new(ManualClock(AtomicU64::new(1_000 * DAY)));
    let released = Arc::new(Mutex::new(Vec::new()));
    struct Blobs(Arc<Mutex<Vec<[u8; 32]>>>);
    impl CommitListener for Blobs {
        fn committed(&self, _: &[Committed]) {}
        fn blobs_released(&self, sha256: &[[u8; 32]]) {
            self.0.lock().unwrap().extend_from_slice(sha256);
        }
    }
    let mut cfg = config();
    cfg.clock = clock.clone();
    cfg.listener = Some(Arc::new(Blobs(released.clone())));
    let store = open(h, "media-retention", cfg);
    let at = |id: u8, owner: &str, ts: u64| {
        let mut m = media(id, owner, None);
        m.created_ts = ts;
        m
    };
    // Photo 1 with thumbnail 2; stray upload 3; upload 4 with the same bytes as 1.
    let mut photo = at(1, "alice", 1_000 * DAY);
    photo.info.thumbnail_id = Some([2; 16]);
    let mut thumb = at(2, "alice", 1_000 * DAY);
    thumb.thumbnail_of = Some([1; 16]);
    store.put_media(vec![photo, thumb], None).await.unwrap();
    store
        .put_media(vec![at(3, "alice", 1_000 * DAY)], None)
        .await
        .unwrap();
    let chat = store.create_direct("alice", "bob").await.unwrap();
    let mut req = msg("alice", chat.id, 1);
    req.attachments = vec![media(1, "alice", None).info];
    store.append(req).await.unwrap();

    // A day and a bit later: the stray upload goes, with its blob; the photo stays.
    clock.0.store(1_001 * DAY + 3_600_000, Ordering::SeqCst);
    let s = store.sweep().await.unwrap();
    assert_eq!((s.media, s.released_blobs.clone()), (1, vec![[3; 32]]));
    assert_eq!(
        *released.lock().unwrap(),
        vec![[3; 32]],
        "the listener heard it"
    );
    assert!(store.media(&[3; 16]).unwrap().is_none());
    assert!(store.media(&[1; 16]).unwrap().is_some());
    assert!(store.blob_in_use(&[1; 32]).unwrap());
    assert!(!store.blob_in_use(&[3; 32]).unwrap());

    // Upload 4 shares photo 1's bytes, made just before the photo's message expires.
    let mut same = at(4, "alice", 1_030 * DAY);
    same.info.sha256 = [1; 32];
    store.put_media(vec![same], None).await.unwrap();
    clock.0.store(1_031 * DAY, Ordering::SeqCst);
    let s = store.sweep().await.unwrap();
    assert_eq!(s.messages, 1);
    assert_eq!(s.media, 2, "the photo and its thumbnail");
    assert_eq!(
        s.released_blobs,
        vec![[2; 32]],
        "the photo's bytes are still used by upload 4"
    );
    assert!(store.media(&[1; 16]).unwrap().is_none());
    assert!(store.media(&[2; 16]).unwrap().is_none());
    assert!(store.blob_in_use(&[1; 32]).unwrap());

    // And upload 4, never attached, a day later.
    clock.0.store(1_031 * DAY + DAY, Ordering::SeqCst);
    let s = store.sweep().await.unwrap();
    assert_eq!((s.media, s.released_blobs), (1, vec![[1; 32]]));
    store.close().await;
}

/// Media usage: an uploader's records count against the quota (a thumbnail too), a record
/// past it is refused whole, and media the sweeper deletes gives its bytes back.
pub async fn media_usage_counts_against_the_quota(h: &dyn Harness) {
    const DAY: u64 = 86_400_000;
    let clock = Arc::new(ManualClock(AtomicU64::new(1_000 * DAY)));
    let mut cfg = config();
    cfg.clock = clock.clone();
    let store = open(h, "media-quota", cfg);
    let sized = |id: u8, size: u64| {
        let mut m = media(id, "alice", None);
        m.info.size = size;
        m.created_ts = 1_000 * DAY;
        m
    };
    let mut photo = sized(1, 600);
    photo.info.thumbnail_id = Some([2; 16]);
    let mut thumb = sized(2, 100);
    thumb.thumbnail_of = Some([1; 16]);
    store
        .put_media(vec![photo, thumb], Some(1000))
        .await
        .unwrap();
    assert_eq!(store.media_usage("alice").unwrap(), 700);
    assert_eq!(store.media_usage("bob").unwrap(), 0);
    let e = store
        .put_media(vec![sized(3, 301)], Some(1000))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::TooLarge(_)), "{e}");
    assert!(store.media(&[3; 16]).unwrap().is_none(), "nothing stored");
    store
        .put_media(vec![sized(3, 300)], Some(1000))
        .await
        .unwrap();
    assert_eq!(store.media_usage("alice").unwrap(), 1000);
    // Nothing attached them: a day later they are deleted, and the quota is free again.
    clock.0.store(1_001 * DAY + 3_600_000, Ordering::SeqCst);
    assert_eq!(store.sweep().await.unwrap().media, 3);
    assert_eq!(store.media_usage("alice").unwrap(), 0);
    store.close().await;
}

/// Receipts: pointers move forward only and never past the chat's end; reading implies
/// receiving; a receipt names the senders it newly covers and counts group members at or
/// beyond it.
pub async fn receipts_move_forward_and_say_whom_to_tell(h: &dyn Harness) {
    use courier_wire::frame::ReceiptKind::{Delivered, Read};
    let store = open(h, "receipts", config());
    let g = store
        .create_group("alice", "team", vec!["bob".into(), "carol".into()])
        .await
        .unwrap();
    // seq 1 is the creation notice; alice sends 2..=4, bob sends 5.
    for n in 0..3 {
        store.append(msg("alice", g.id, n)).await.unwrap();
    }
    store.append(msg("bob", g.id, 9)).await.unwrap();

    let r = store.receipt("bob", g.id, Read, 99).await.unwrap();
    assert_eq!(
        (r.seq, r.advanced, r.count),
        (5, true, 1),
        "clamped to the last seq"
    );
    assert_eq!(
        r.notify,
        vec!["alice".to_owned()],
        "not bob himself, not the system"
    );
    let p = store.receipt_pointers("bob").unwrap()[&g.id];
    assert_eq!((p.delivered, p.read), (5, 5), "reading implies receiving");

    let r = store.receipt("carol", g.id, Delivered, 3).await.unwrap();
    assert_eq!((r.seq, r.count), (3, 2), "bob and carol have received 3");
    let r = store.receipt("carol", g.id, Read, 2).await.unwrap();
    assert_eq!(
        (r.seq, r.count, r.notify.clone()),
        (2, 2, vec!["alice".to_owned()])
    );
    let r = store.receipt("carol", g.id, Read, 1).await.unwrap();
    assert!(!r.advanced, "never backwards");
    assert_eq!(r.seq, 2);
    let r = store.receipt("alice", g.id, Read, 5).await.unwrap();
    assert_eq!((r.count, r.notify.clone()), (2, vec!["bob".to_owned()]));
    assert!(matches!(
        store.receipt("dave", g.id, Read, 1).await,
        Err(StoreError::Forbidden(_))
    ));
    store.close().await;
    drop(store);
    let store = open(h, "receipts", config());
    assert_eq!(
        store.receipt_pointers("carol").unwrap()[&g.id].read,
        2,
        "durable"
    );
    store.close().await;
}

/// The push outbox: offline members with a registration get one coalesced job per chat in the
/// message's own transaction; jobs are retried, dead-lettered, and completed without losing
/// messages merged meanwhile.
pub async fn push_jobs_are_durable_coalesced_and_retried(h: &dyn Harness) {
    use courier_store::{OnlineUsers, PushResult};
    use courier_wire::frame::PushProvider;
    struct Online(Mutex<Vec<String>>);
    impl OnlineUsers for Online {
        fn is_online(&self, user: &str) -> bool {
            self.0.lock().unwrap().iter().any(|u| u == user)
        }
    }
    let online = Arc::new(Online(Mutex::new(vec!["alice".into()])));
    let clock = Arc::new(ManualClock(AtomicU64::new(1_000_000)));
    let mut cfg = config();
    cfg.clock = clock.clone();
    cfg.online = Some(online.clone());
    cfg.push_coalesce = Some(Duration::from_millis(500));
    let store = open(h, "push", cfg);
    let chat = store.create_direct("alice", "bob").await.unwrap();
    store
        .register_push("bob", 1, PushProvider::Webhook, "tok-b".into())
        .await
        .unwrap();
    store
        .register_push("alice", 1, PushProvider::Webhook, "tok-a".into())
        .await
        .unwrap();
    for n in 0..3 {
        store.append(msg("alice", chat.id, n)).await.unwrap();
    }
    store.append(msg("bob", chat.id, 9)).await.unwrap(); // alice is online: no job for her
    assert!(
        store.due_pushes(1_000_000, 10).unwrap().is_empty(),
        "not due yet"
    );
    let jobs = store.due_pushes(1_000_500, 10).unwrap();
    assert_eq!(jobs.len(), 1, "one coalesced job: {jobs:?}");
    let j = jobs[0].clone();
    assert_eq!(
        (j.user.as_str(), j.first_seq, j.last_seq, j.count),
        ("bob", 1, 3, 3)
    );
    assert_eq!(j.idempotency_key(), format!("bob:{}:1-3", chat.id));

    // A failure reschedules; the last allowed failure dead-letters.
    let fail = |at: u64| PushResult::Failed {
        error: "503".into(),
        retry_at_ms: at,
        max_attempts: 2,
    };
    store.push_done(j.clone(), fail(1_002_000)).await.unwrap();
    assert!(store.due_pushes(1_001_000, 10).unwrap().is_empty());
    let j = store.due_pushes(1_002_000, 10).unwrap().remove(0);
    assert_eq!(j.attempts, 1);
    store.push_done(j, fail(1_003_000)).await.unwrap();
    assert!(store.due_pushes(u64::MAX - 1, 10).unwrap().is_empty());
    let dead = store
        .dead_push("bob", chat.id)
        .unwrap()
        .expect("dead letter");
    assert_eq!(
        (dead.attempts, dead.last_error.as_str(), dead.count),
        (2, "503", 3)
    );

    // Messages merged while a job is being delivered are delivered next time.
    clock.0.store(2_000_000, Ordering::SeqCst);
    store.append(msg("alice", chat.id, 5)).await.unwrap();
    let j = store.due_pushes(2_000_500, 10).unwrap().remove(0);
    store.append(msg("alice", chat.id, 6)).await.unwrap();
    store
        .push_done(j.clone(), PushResult::Delivered)
        .await
        .unwrap();
    let rest = store.due_pushes(2_000_500, 10).unwrap().remove(0);
    assert_eq!(
        (rest.first_seq, rest.last_seq),
        (j.last_seq + 1, j.last_seq + 1)
    );
    store.push_done(rest, PushResult::Delivered).await.unwrap();
    assert!(store.due_pushes(u64::MAX - 1, 10).unwrap().is_empty());

    // Online, or unregistered: no job.
    online.0.lock().unwrap().push("bob".into());
    store.append(msg("alice", chat.id, 7)).await.unwrap();
    online.0.lock().unwrap().clear();
    store
        .register_push("bob", 1, PushProvider::Webhook, Bytes::new())
        .await
        .unwrap();
    assert!(store.push_tokens("bob").unwrap().is_empty());
    store.append(msg("alice", chat.id, 8)).await.unwrap();
    assert!(store.due_pushes(u64::MAX - 1, 10).unwrap().is_empty());
    assert_eq!(store.push_tokens("alice").unwrap().len(), 1);
    store.close().await;
}

/// Runs the whole suite.
/// `submit_append_then`: the function gets each send's answer (new, duplicate or refused), after
/// the listener heard the batch; a send queued on a closed store is answered `Closed`.
pub async fn answers_by_function_after_the_listener(h: &dyn Harness) {
    let recorder = Arc::new(Recorder::default());
    let mut cfg = config();
    cfg.listener = Some(recorder.clone());
    let store = open(h, "then", cfg);
    let chat = store.create_direct("alice", "bob").await.unwrap().id;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut requests: Vec<AppendRequest> = (0..20).map(|n| msg("alice", chat, n)).collect();
    requests.push(msg("alice", chat, 3)); // a retry
    requests.push(msg("mallory", chat, 1)); // not a member
    for (i, r) in requests.into_iter().enumerate() {
        let (tx, recorder) = (tx.clone(), recorder.clone());
        store
            .submit_append_then(r, move |result| {
                let heard = result
                    .as_ref()
                    .is_ok_and(|a| recorder.0.lock().unwrap().contains(&(a.chat_id, a.seq)));
                tx.send((i, result, heard)).unwrap();
            })
            .await
            .unwrap();
    }
    let mut answers: Vec<_> = (0..22)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    answers.sort_by_key(|(i, _, _)| *i);
    for (i, result, heard) in &answers[..20] {
        let a = result.as_ref().unwrap();
        assert_eq!(a.seq, *i as u64 + 1, "queued order is seq order");
        assert!(!a.duplicate);
        assert!(heard, "the listener heard send {i} before its answer");
    }
    let retry = answers[20].1.as_ref().unwrap();
    assert!(retry.duplicate && retry.seq == 4, "{retry:?}");
    assert!(matches!(answers[21].1, Err(StoreError::Forbidden(_))));

    store.close().await;
    let (tx, rx) = std::sync::mpsc::channel();
    let queued = store
        .submit_append_then(msg("alice", chat, 99), move |r| tx.send(r).unwrap())
        .await;
    assert!(matches!(queued, Err(StoreError::Closed)));
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Err(StoreError::Closed)
    ));
}

/// Three nodes on one shared engine, each with users routed to it, append concurrently to
/// shared chats: every node's inbox delivers each message once, to exactly the users routed
/// there, in each chat's seq order; events go only to the nodes of their users. (An engine of
/// one process cannot hold a cluster: refused, and the test ends there.)
pub async fn cluster_inboxes_get_each_message_once_in_seq_order(h: &dyn Harness) {
    use courier_store::{ClusterConfig, Delivery, Event};
    let engine = h.engine("cluster");
    let node_cfg = |node: u64| {
        let mut c = config();
        c.cluster = Some(ClusterConfig {
            node,
            lease: Duration::from_secs(10),
        });
        c
    };
    if engine.exclusive() {
        assert!(Store::with_engine(engine, node_cfg(1)).is_err());
        return;
    }
    let nodes: Vec<Store> = (1..=3)
        .map(|n| Store::with_engine(h.engine("cluster"), node_cfg(n)).unwrap())
        .collect();
    // u0..u5: user i online on node i % 3; u1 also on node 0 (a second device).
    for i in 0..6 {
        nodes[i % 3].route_up(&format!("u{i}")).await.unwrap();
    }
    nodes[0].route_up("u1").await.unwrap();
    // Node 1 watches u0's presence (u0 is online on node 0).
    nodes[1].watch_presence("u0").await.unwrap();
    let all: Vec<String> = (1..6).map(|i| format!("u{i}")).collect();
    let group = nodes[0].create_group("u0", "g", all).await.unwrap().id;
    let direct = nodes[1].create_direct("u1", "u2").await.unwrap().id;
    let mut inboxes: Vec<_> = nodes.iter().map(|n| n.inbox().unwrap()).collect();
    let mut tasks = Vec::new();
    for n in 0..90u32 {
        let store = nodes[n as usize % 3].clone();
        let (sender, chat) = match n % 3 {
            0 => ("u0", group),
            1 => ("u1", direct),
            _ => ("u2", direct),
        };
        tasks.push(tokio::spawn(async move {
            store.append(msg(sender, chat, n)).await.unwrap()
        }));
    }
    for t in tasks {
        assert!(!t.await.unwrap().duplicate);
    }
    nodes[2].publish(Event {
        users: vec!["u1".into()],
        except: ("u2".into(), 1),
        frame: Bytes::from_static(b"typing"),
    });
    // What each node should see: per chat, every seq once, each to the users routed there.
    let group_last = nodes[0].last_seq(group).unwrap();
    let direct_last = nodes[0].last_seq(direct).unwrap();
    assert_eq!((group_last, direct_last), (31, 60));
    let routed = |node: usize, user: &str| {
        let i: usize = user[1..].parse().unwrap();
        i % 3 == node || (user == "u1" && node == 0)
    };
    for (node, inbox) in inboxes.iter_mut().enumerate() {
        let mut seqs: std::collections::HashMap<u64, Vec<u64>> = Default::default();
        let mut events = Vec::new();
        let want_group = if (0..6).any(|i| routed(node, &format!("u{i}"))) {
            group_last
        } else {
            0
        };
        let want_direct = if routed(node, "u1") || routed(node, "u2") {
            direct_last
        } else {
            0
        };
        let want_events = usize::from(routed(node, "u1"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seqs.get(&group).map_or(0, Vec::len) < want_group as usize
            || seqs.get(&direct).map_or(0, Vec::len) < want_direct as usize
            || events.len() < want_events
        {
            assert!(
                std::time::Instant::now() < deadline,
                "node {node}: {seqs:?}"
            );
            for d in inbox.next(Duration::from_millis(100)).await.unwrap() {
                match d {
                    Delivery::Message {
                        message,
                        users,
                        version,
                    } => {
                        assert!(version > 0, "an entry carries its commit's version");
                        let chat = message.chat_id;
                        for u in &users {
                            assert!(routed(node, u), "node {node} got {u}'s message");
                        }
                        let expected: Vec<&str> = if chat == group {
                            ["u0", "u1", "u2", "u3", "u4", "u5"]
                                .into_iter()
                                .filter(|u| routed(node, u))
                                .collect()
                        } else {
                            ["u1", "u2"]
                                .into_iter()
                                .filter(|u| routed(node, u))
                                .collect()
                        };
                        assert_eq!(users, expected, "node {node}, chat {chat}");
                        seqs.entry(chat).or_default().push(message.seq);
                    }
                    Delivery::Event(e) => {
                        assert_eq!(
                            (&e.frame[..], &e.users[..]),
                            (&b"typing"[..], &["u1".to_owned()][..])
                        );
                        events.push(e);
                    }
                    Delivery::Presence { user, .. } => {
                        panic!("node {node}: {user}'s presence did not change")
                    }
                }
            }
        }
        for (chat, got) in &seqs {
            let last = if *chat == group {
                group_last
            } else {
                direct_last
            };
            let expected: Vec<u64> = (1..=last).collect();
            assert_eq!(
                got, &expected,
                "node {node}, chat {chat}: each seq once, in order"
            );
        }
        assert_eq!(events.len(), want_events, "node {node}'s events");
        // Nothing more comes, and what was delivered is cleared.
        assert!(inbox
            .next(Duration::from_millis(20))
            .await
            .unwrap()
            .is_empty());
    }
    // u2 leaves node 2, its only node: a message between u1 and u2 now goes to u1's nodes
    // only, and node 2 gets nothing.
    nodes[2].route_down("u2");
    let a = nodes[2].append(msg("u1", direct, 1000)).await.unwrap();
    for (node, users) in [(0, vec!["u1"]), (1, vec!["u1"])] {
        let got = loop {
            let d = inboxes[node]
                .next(Duration::from_millis(100))
                .await
                .unwrap();
            if !d.is_empty() {
                break d;
            }
        };
        match &got[..] {
            [Delivery::Message {
                message, users: to, ..
            }] => {
                assert_eq!(
                    (message.seq, to.clone()),
                    (
                        a.seq,
                        users.iter().map(|u| u.to_string()).collect::<Vec<_>>()
                    )
                );
            }
            other => panic!("node {node}: {other:?}"),
        }
    }
    assert!(inboxes[2]
        .next(Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    // u0 leaves node 0, its only node: node 1, which watches u0, hears it went offline; then
    // online again. Nobody else hears of it.
    use courier_store::PresenceChange;
    for (change, up) in [
        (PresenceChange::Offline, false),
        (PresenceChange::Online, true),
    ] {
        if up {
            nodes[0].route_up("u0").await.unwrap();
        } else {
            nodes[0].route_down("u0");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let got = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "node 1 hears of {change:?}"
            );
            let d = inboxes[1].next(Duration::from_millis(100)).await.unwrap();
            if !d.is_empty() {
                break d;
            }
        };
        match &got[..] {
            [Delivery::Presence {
                user,
                change: c,
                last_seen_ms,
            }] => {
                assert_eq!((user.as_str(), *c), ("u0", change));
                assert!(*last_seen_ms > 0);
            }
            other => panic!("node 1: {other:?}"),
        }
    }
    assert!(inboxes[0]
        .next(Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    assert!(inboxes[2]
        .next(Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    for s in &nodes {
        s.close().await;
    }
}

/// Blobs on a cluster's shared blob store: a node deletes one only in a transaction that sees
/// no media record using it and no node storing it (an upload on the way), and records the
/// deletion, so an upload on another node waits until it is done. On an engine of one
/// process, only the records count (the gateway's own guard covers its uploads).
pub async fn a_blob_is_deleted_only_when_no_node_is_storing_it(h: &dyn Harness) {
    use courier_store::ClusterConfig;
    let sha = [9u8; 32];
    let engine = h.engine("blob-marks");
    if engine.exclusive() {
        let store = Store::with_engine(engine, config()).unwrap();
        assert_eq!(store.blob_storing(&sha).unwrap(), Some(0));
        assert_eq!(
            store.blob_deleting(&sha).unwrap(),
            Some(0),
            "no record uses it"
        );
        store
            .put_media(vec![media(9, "alice", None)], None)
            .await
            .unwrap();
        assert_eq!(store.blob_deleting(&sha).unwrap(), None, "a record uses it");
        store.close().await;
        return;
    }
    let node = |n: u64| {
        let mut c = config();
        c.cluster = Some(ClusterConfig {
            node: n,
            lease: Duration::from_secs(10),
        });
        Store::with_engine(h.engine("blob-marks"), c).unwrap()
    };
    let (a, b) = (node(1), node(2));
    // A stores it: B may not delete it.
    let token = a.blob_storing(&sha).unwrap().expect("nothing deletes it");
    assert_eq!(b.blob_deleting(&sha).unwrap(), None, "node 1 is storing it");
    a.blob_stored(&sha, token).unwrap();
    // Nobody stores it, no record uses it: B deletes it; meanwhile A's upload waits.
    let deleting = b.blob_deleting(&sha).unwrap().expect("free to delete");
    assert_eq!(
        a.blob_storing(&sha).unwrap(),
        None,
        "a deletion is under way"
    );
    assert_eq!(
        b.blob_deleting(&sha).unwrap(),
        None,
        "one deletion at a time"
    );
    b.blob_deleted(&sha, deleting).unwrap();
    let token = a.blob_storing(&sha).unwrap().expect("the deletion is over");
    // A record that uses it keeps it, whoever stores it.
    a.put_media(vec![media(9, "alice", None)], None)
        .await
        .unwrap();
    a.blob_stored(&sha, token).unwrap();
    assert_eq!(b.blob_deleting(&sha).unwrap(), None, "a record uses it");
    a.close().await;
    b.close().await;
}
