//! The conformance suite on FoundationDB. Runs only with `--features fdb` and `FDB_CLUSTER_FILE`
//! set to a cluster file; otherwise it says it was skipped.

#![cfg(feature = "fdb")]

mod conformance;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conformance::Harness;
use courier_store::engine::fdb::{stop_network, FdbEngine};
use courier_store::kv::Engine;

struct Cluster {
    file: String,
    run: String,
}

impl Harness for Cluster {
    fn engine(&self, name: &str) -> Arc<dyn Engine> {
        let prefix = format!("courier-test/{}/{name}/", self.run);
        Arc::new(FdbEngine::open(Some(&self.file), prefix.as_bytes()).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_foundationdb() {
    let Ok(file) = std::env::var("FDB_CLUSTER_FILE") else {
        eprintln!("skipped: FDB_CLUSTER_FILE is not set, so the FoundationDB conformance suite did not run");
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let cluster = Cluster {
        file,
        run: format!("{nanos}-{}", std::process::id()),
    };
    macro_rules! run_all {
        ($($name:ident),* $(,)?) => {$(
            tokio::time::timeout(Duration::from_secs(120), conformance::$name(&cluster))
                .await
                .unwrap_or_else(|_| panic!("{} timed out", stringify!($name)));
        )*};
    }
    conformance::every_test!(run_all);
    stop_network();
}
