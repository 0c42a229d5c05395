//! The conformance suite on the simulation engine (FoundationDB's semantics, in memory), for
//! many seeds with faults on: conflicts, timeouts and `commit_unknown_result`, applied or not.
//!
//! Each test runs with one writer for `COURIER_SIM_SEEDS=N` seeds (default 100), and with three
//! writers (partitions of the append path, as on FoundationDB) for a fifth as many (module
//! `three_writers`); `COURIER_SIM_SEED=S` replays one seed. A failing seed is printed.

mod conformance;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use conformance::Harness;
use courier_store::engine::sim::{Faults, Sim, SimConfig, SimStats};
use courier_store::kv::Engine;

/// Faults on about this share of commits, per kind.
const FAULT_RATE: f64 = 0.03;

struct Cluster {
    config: SimConfig,
    /// The same name again is the same cluster (a reopen).
    sims: Mutex<HashMap<String, Sim>>,
}

impl Cluster {
    /// What every cluster of this run saw, summed (the largest transaction: the largest).
    fn stats(&self) -> SimStats {
        let mut sum = SimStats::default();
        for sim in self.sims.lock().unwrap().values() {
            sum.add(&sim.stats());
        }
        sum
    }
}

impl Harness for Cluster {
    fn engine(&self, name: &str) -> Arc<dyn Engine> {
        let mut sims = self.sims.lock().unwrap();
        Arc::new(
            sims.entry(name.to_owned())
                .or_insert_with(|| Sim::new(self.config))
                .clone(),
        )
    }
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("COURIER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("COURIER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    (1..=n).collect()
}

/// Prints the seed of a test that panics, for a replay.
struct SaySeedOnPanic(&'static str, u64);

impl Drop for SaySeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed with seed {} (replay: COURIER_SIM_SEED={})",
                self.0, self.1, self.1
            );
        }
    }
}

/// The tests `$name`, each over the seeds `$seeds` with `$writers` writers per store.
macro_rules! on_the_simulation {
    ($writers:expr, $seeds:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            conformance::with_writers($writers);
            assert_eq!(conformance::config().partitions, $writers);
            let seeds: Vec<u64> = $seeds;
            let mut total = SimStats::default();
            for &seed in &seeds {
                let cluster = Cluster {
                    config: SimConfig {
                        seed,
                        faults: Faults::all(FAULT_RATE),
                        ..SimConfig::default()
                    },
                    sims: Mutex::default(),
                };
                let said = SaySeedOnPanic(stringify!($name), seed);
                conformance::$name(&cluster).await;
                drop(said);
                total.add(&cluster.stats());
            }
            eprintln!(
                "{} ({} writers): seeds={} commits={} conflicts={} injected: conflicts={} timeouts={} \
                 unknown={} (applied {}) read_errors={} largest_transaction={} B",
                stringify!($name),
                $writers,
                seeds.len(),
                total.commits,
                total.conflicts,
                total.injected_conflicts,
                total.injected_timeouts,
                total.injected_unknown,
                total.injected_applied,
                total.injected_read_errors,
                total.largest_transaction,
            );
            if seeds.len() >= 50 {
                // Not a vacuous pass: the faults this suite is about were there.
                let injected = total.injected_conflicts
                    + total.injected_timeouts
                    + total.injected_unknown
                    + total.injected_read_errors;
                assert!(injected > 0 && total.injected_applied > 0, "no faults injected");
            }
        }
    )*};
}

/// One writer per store, every seed.
macro_rules! one_writer {
    ($($name:ident),* $(,)?) => {
        on_the_simulation!(1, seeds(); $($name),*);
    };
}

/// Three writers per store (chats spread over them by id), a fifth of the seeds.
macro_rules! three_writers {
    ($($name:ident),* $(,)?) => {
        mod three_writers {
            use super::*;
            on_the_simulation!(3, fifth(seeds()); $($name),*);
        }
    };
}

/// Every fifth seed (at least one).
fn fifth(seeds: Vec<u64>) -> Vec<u64> {
    if seeds.len() < 5 {
        return seeds;
    }
    seeds.into_iter().step_by(5).collect()
}

conformance::every_test!(one_writer);
conformance::every_test!(three_writers);

/// An engine whose writer transactions wait until the test opens the gate: the test can queue
/// everything before the writer takes its batch.
struct Gated {
    sim: Sim,
    open: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Engine for Gated {
    fn name(&self) -> &'static str {
        "gated sim"
    }
    fn begin(&self) -> Result<Box<dyn courier_store::kv::Txn + '_>, courier_store::kv::KvError> {
        self.sim.begin()
    }
    fn begin_write(
        &self,
    ) -> Result<Box<dyn courier_store::kv::Txn + '_>, courier_store::kv::KvError> {
        let (lock, cv) = &*self.open;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        drop(open);
        self.sim.begin()
    }
    fn exclusive(&self) -> bool {
        false
    }
    fn max_batch(&self) -> usize {
        self.sim.max_batch()
    }
    fn max_transaction_bytes(&self) -> usize {
        self.sim.max_transaction_bytes()
    }
    fn sync(&self) -> Result<(), courier_store::kv::KvError> {
        Ok(())
    }
}

/// 400 separate sends of 32 KiB queued while the writer waits (13 MB in one batch): the
/// writer cuts the batch at the engine's size target, so no transaction nears FoundationDB's
/// 10 MB limit, and every send commits, dense and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_batch_is_cut_at_the_size_target() {
    use courier_store::engine::sim::TRANSACTION_TARGET;
    let sim = Sim::new(SimConfig::default());
    let open = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
    let engine = Arc::new(Gated {
        sim: sim.clone(),
        open: open.clone(),
    });
    let mut cfg = conformance::config();
    cfg.queue_depth = 1_000;
    let store = courier_store::Store::with_engine(engine, cfg).unwrap();
    let chat = store.create_direct("alice", "bob").await.unwrap().id;
    *open.0.lock().unwrap() = false;
    let mut tickets = Vec::new();
    for n in 0..400u32 {
        let mut m = conformance::msg("alice", chat, n);
        m.body = bytes::Bytes::from(vec![b'x'; 32 * 1024]);
        tickets.push(store.submit_append(m).await.unwrap());
    }
    *open.0.lock().unwrap() = true;
    open.1.notify_all();
    let mut seqs = Vec::new();
    for t in tickets {
        seqs.push(t.wait().await.unwrap().seq);
    }
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    let largest = sim.stats().largest_transaction as usize;
    assert!(
        largest < TRANSACTION_TARGET + 64 * 1024,
        "largest transaction {largest} B (one send past the target at most)"
    );
    store.close().await;
}

/// Acks from one writer while another sends to the same chat: the ack reads the chat's last
/// seq without a conflict range (it only clamps to it), so no ack batch conflicts with a send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_do_not_conflict_with_sends_to_the_same_chat() {
    let sim = Sim::new(SimConfig::default());
    let (acker, sender) = (
        courier_store::Store::with_engine(Arc::new(sim.clone()), conformance::config()).unwrap(),
        courier_store::Store::with_engine(Arc::new(sim.clone()), conformance::config()).unwrap(),
    );
    let chat = sender.create_direct("alice", "bob").await.unwrap().id;
    sender
        .append(conformance::msg("alice", chat, 0))
        .await
        .unwrap();
    let sending = tokio::spawn(async move {
        for n in 1..300u32 {
            sender
                .append(conformance::msg("alice", chat, n))
                .await
                .unwrap();
        }
        sender
    });
    let mut acked = 0;
    while !sending.is_finished() {
        let seq = acker.last_seq(chat).unwrap();
        acked = acker.ack("bob", 1, chat, seq).await.unwrap().max(acked);
        tokio::task::yield_now().await;
    }
    let sender = sending.await.unwrap();
    assert!(acked > 0);
    assert_eq!(sim.stats().conflicts, 0, "{:?}", sim.stats());
    acker.close().await;
    sender.close().await;
}

/// The simulation, with the next `fail` commits of transactions of more than ten writes
/// refused as conflicts (`big` counts those that commit), and transactions held while `gate`
/// is closed (`held` says one waits).
struct FailsBigCommits {
    sim: Sim,
    fail: Arc<std::sync::atomic::AtomicU32>,
    big: Arc<std::sync::atomic::AtomicU32>,
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    held: Arc<std::sync::atomic::AtomicBool>,
}

struct Flaky<'a> {
    inner: Box<dyn courier_store::kv::Txn + 'a>,
    writes: usize,
    fail: Arc<std::sync::atomic::AtomicU32>,
    big: Arc<std::sync::atomic::AtomicU32>,
}

impl courier_store::kv::Txn for Flaky<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, courier_store::kv::KvError> {
        self.inner.get(key)
    }
    fn get_many(
        &mut self,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, courier_store::kv::KvError> {
        self.inner.get_many(keys)
    }
    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<courier_store::kv::Pairs, courier_store::kv::KvError> {
        self.inner.scan(start, end, limit, reverse)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes += 1;
        self.inner.set(key, value);
    }
    fn clear(&mut self, key: &[u8]) {
        self.inner.clear(key);
    }
    fn clear_range(&mut self, start: &[u8], end: &[u8]) {
        self.inner.clear_range(start, end);
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn commit(self: Box<Self>) -> Result<(), courier_store::kv::KvError> {
        use std::sync::atomic::Ordering;
        let refuse = self.writes > 10
            && self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if refuse {
            return Err(courier_store::kv::KvError::retryable("injected conflict"));
        }
        if self.writes > 10 {
            self.big.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.commit()
    }
}

impl Engine for FailsBigCommits {
    fn name(&self) -> &'static str {
        "sim failing big commits"
    }
    fn begin(&self) -> Result<Box<dyn courier_store::kv::Txn + '_>, courier_store::kv::KvError> {
        Ok(Box::new(Flaky {
            inner: self.sim.begin()?,
            writes: 0,
            fail: self.fail.clone(),
            big: self.big.clone(),
        }))
    }
    fn begin_write(
        &self,
    ) -> Result<Box<dyn courier_store::kv::Txn + '_>, courier_store::kv::KvError> {
        let (lock, cv) = &*self.gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            self.held.store(true, std::sync::atomic::Ordering::SeqCst);
            open = cv.wait(open).unwrap();
        }
        drop(open);
        self.begin()
    }
    fn exclusive(&self) -> bool {
        false
    }
    fn max_batch(&self) -> usize {
        self.sim.max_batch()
    }
    fn sync(&self) -> Result<(), courier_store::kv::KvError> {
        Ok(())
    }
}

/// A batch that keeps failing is halved from its second failure on, the rest left for the
/// next transaction: every send still commits, and one sender's sends keep their queue order
/// (seqs 1..=n in the order they were queued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_keeps_conflicting_is_split_and_keeps_its_order() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let sim = Sim::new(SimConfig::default());
    let (fail, big) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let gate = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
    let held = Arc::new(AtomicBool::new(false));
    let engine = Arc::new(FailsBigCommits {
        sim: sim.clone(),
        fail: fail.clone(),
        big: big.clone(),
        gate: gate.clone(),
        held: held.clone(),
    });
    let store = courier_store::Store::with_engine(engine, conformance::config()).unwrap();
    let chat = store.create_direct("alice", "bob").await.unwrap().id;
    // The writer is held on another operation while the 300 sends queue, so they make one
    // batch; the next three large commits fail: the batch fails, fails again (halved), and
    // again (halved again), then a quarter of it commits; the rest follows, in order.
    *gate.0.lock().unwrap() = false;
    let other = {
        let store = store.clone();
        tokio::spawn(async move { store.create_direct("carol", "dave").await })
    };
    while !held.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    fail.store(3, Ordering::SeqCst);
    let mut tickets = Vec::new();
    for n in 0..300u32 {
        tickets.push(
            store
                .submit_append(conformance::msg("alice", chat, n))
                .await
                .unwrap(),
        );
    }
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    other.await.unwrap().unwrap();
    let mut seqs = Vec::new();
    for t in tickets {
        seqs.push(t.wait().await.unwrap().seq);
    }
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    assert_eq!(fail.load(Ordering::SeqCst), 0, "three commits refused");
    assert_eq!(
        big.load(Ordering::SeqCst),
        2,
        "a quarter of the batch, then the rest (whole, the batch would be one commit)"
    );
    store.close().await;
}
