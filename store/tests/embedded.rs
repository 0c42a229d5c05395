//! The conformance suite on the embedded (fjall) engine, one test per guarantee.

mod conformance;

use std::sync::Arc;

use conformance::Harness;
use courier_store::engine::embedded::Embedded;
use courier_store::kv::Engine;

struct Local(tempfile::TempDir);

impl Harness for Local {
    fn engine(&self, name: &str) -> Arc<dyn Engine> {
        Arc::new(Embedded::open(&self.0.path().join(name)).unwrap())
    }
}

fn local() -> Local {
    Local(tempfile::tempdir().unwrap())
}

use conformance::on_local;

conformance::every_test!(on_local);

/// Counts the batches that committed appends.
#[derive(Default)]
struct Batches(std::sync::atomic::AtomicUsize);

impl courier_store::CommitListener for Batches {
    fn committed(&self, _batch: &[courier_store::Committed]) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Group commit: with a commit interval, appends arriving two every 2 ms share commits (a
/// commit of several every 40 ms at most), and every one is acknowledged, with dense seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_interval_makes_appends_share_commits() {
    use courier_store::{Store, StoreConfig};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let batches = Arc::new(Batches::default());
    let mut config = StoreConfig::new(dir.path().join("store"));
    config.sweep_interval = None;
    config.commit_interval = Duration::from_millis(40);
    config.listener = Some(batches.clone());
    let store = Store::open(config).unwrap();
    let chat = store.create_direct("ann", "bob").await.unwrap();
    let before = batches.0.load(std::sync::atomic::Ordering::Relaxed);
    let id = chat.id;
    let mut sends = Vec::new();
    for n in 0..80 {
        let store = store.clone();
        sends.push(tokio::spawn(async move {
            store.append(conformance::msg("ann", id, n)).await
        }));
        if n % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut seqs = Vec::new();
    for s in sends {
        seqs.push(s.await.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=80).collect::<Vec<u64>>(), "every one, dense");
    let commits = batches.0.load(std::sync::atomic::Ordering::Relaxed) - before;
    // 80 ms or more of sends, a commit at most every 40 ms: a few commits. Without the
    // interval each pair would commit as soon as it arrives (one fsync is well under 8 ms).
    assert!(commits <= 10, "{commits} commits for 80 appends");
    store.close().await;
}

/// A commit interval over the most is refused with a readable error, not clamped.
#[test]
fn a_commit_interval_over_the_most_is_refused() {
    use courier_store::{Store, StoreConfig, StoreError, MAX_COMMIT_INTERVAL};

    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path().join("store"));
    config.commit_interval = MAX_COMMIT_INTERVAL + std::time::Duration::from_millis(1);
    match Store::open(config) {
        Err(StoreError::Invalid(msg)) => assert!(msg.contains("commit interval"), "{msg}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an interval over the most was accepted"),
    }
}
