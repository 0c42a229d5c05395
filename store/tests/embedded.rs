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

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            conformance::$name(&local()).await;
        }
    )*};
}

conformance::every_test!(conformance);
