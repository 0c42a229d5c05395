//! The conformance suite on the embedded engine split into three partitions: three writers,
//! three databases, chats spread over them by id.

mod conformance;

use std::sync::Arc;

use conformance::Harness;
use courier_store::engine::partitioned::Partitioned;
use courier_store::kv::Engine;

struct Local(tempfile::TempDir);

impl Harness for Local {
    fn engine(&self, name: &str) -> Arc<dyn Engine> {
        Arc::new(Partitioned::open(&self.0.path().join(name), 3).unwrap())
    }
}

fn local() -> Local {
    Local(tempfile::tempdir().unwrap())
}

use conformance::on_local;

conformance::every_test!(on_local);

/// A store made with three partitions spreads its chats over three databases, keeps that
/// count when reopened with another, and finds every chat, message and position again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_spread_over_every_partition_and_a_reopen_finds_them() {
    use courier_store::{keys, Store, StoreConfig};
    use courier_wire::frame::Direction;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut config = StoreConfig::new(&path);
    config.sweep_interval = None;
    config.partitions = 3;
    let store = Store::open(config.clone()).unwrap();
    assert_eq!(store.partitions(), 3);
    let mut chats = Vec::new();
    for i in 0..30 {
        let c = store
            .create_direct("hub", &format!("peer{i}"))
            .await
            .unwrap();
        for n in 0..3 {
            store
                .append(conformance::msg("hub", c.id, i * 10 + n))
                .await
                .unwrap();
        }
        store.ack("hub", 1, c.id, 2).await.unwrap();
        chats.push(c.id);
    }
    let mut used: Vec<usize> = chats.iter().map(|&c| keys::chat_partition(c, 3)).collect();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used, [0, 1, 2], "30 chats in every partition");
    store.close().await;
    drop(store);
    for p in 0..3 {
        assert!(path.join(format!("p{p}")).is_dir());
    }

    config.partitions = 1;
    let store = Store::open(config).unwrap();
    assert_eq!(store.partitions(), 3, "the count it was made with");
    let listed = store.chats_of("hub", 0, 100).unwrap();
    assert_eq!(listed.len(), 30);
    for &c in &chats {
        let (page, _) = store.history("hub", c, Direction::After, 0, 10).unwrap();
        let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(store.position("hub", 1, c).unwrap(), 2);
    }
    // A direct chat is found again (by either member), not made twice.
    let peer = store.create_direct("peer7", "hub").await.unwrap();
    assert_eq!(peer.id, chats[7]);
    store.close().await;
}
