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
