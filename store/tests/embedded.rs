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

conformance!(
    concurrent_appends_are_dense_deduplicated_and_durable,
    history_pages_both_ways_for_members_only,
    groups_record_changes_in_their_own_sequence,
    chat_lists_page_by_id,
    sync_resumes_from_positions_and_pages,
    sync_reads_only_chats_with_news,
    retention_expires_messages_and_dedupe_and_says_so,
    retention_entries_open_and_close_per_hour,
    batches_keep_every_guarantee,
    answers_by_function_after_the_listener,
    media_attachments_and_access,
    media_expires_with_its_messages,
    receipts_move_forward_and_say_whom_to_tell,
    push_jobs_are_durable_coalesced_and_retried,
);
