//! The FoundationDB engine (cargo feature `fdb`, API 7.3).
//!
//! A thin adapter: each [`Txn`] call maps to one FoundationDB transaction call, with every key
//! under a configurable prefix so several stores (or test runs) can share a cluster. The store's
//! writer thread is a plain thread, so the adapter waits on FoundationDB's futures with
//! `futures::executor::block_on`. Transactions carry a 5 s timeout; a retryable failure (a
//! conflict with another gateway writing the same chat, a too-old read version) goes through the
//! transaction's `on_error` (FoundationDB's backoff) and is reported retryable, so the writer
//! re-applies the whole batch in a fresh transaction, up to `StoreConfig::max_retries` times.
//!
//! The FoundationDB network thread is started once per process by [`FdbEngine::open`] and must be
//! stopped with [`stop_network`] before the process exits.

use std::sync::Mutex;

use foundationdb::api::NetworkAutoStop;
use foundationdb::options::{MutationType, StreamingMode, TransactionOption};
use foundationdb::{Database, FdbError, KeySelector, RangeOption, Transaction};
use futures::executor::block_on;
use futures::TryStreamExt;

use crate::kv::{stamp_fits, Engine, KvError, Pairs, Txn, Watch};

/// The network thread handle; `None` before the first open and after [`stop_network`].
static NETWORK: Mutex<Option<NetworkAutoStop>> = Mutex::new(None);
/// Whether the network was booted in this process (FoundationDB allows it once, even after a
/// stop), and how the boot went.
static BOOTED: Mutex<Option<Result<(), String>>> = Mutex::new(None);

/// Transaction timeout, milliseconds (FoundationDB's own limit is 5 s of read version age).
const TIMEOUT_MS: i32 = 5_000;

/// Selects the API version and starts the network thread, once per process; a failure is
/// returned (to every later caller too), not a panic.
fn boot_network() -> Result<(), KvError> {
    let mut booted = BOOTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let result = booted.get_or_insert_with(|| {
        let builder = foundationdb::api::FdbApiBuilder::default()
            .build()
            .map_err(|e| format!("FoundationDB client library: {e}"))?;
        // SAFETY: the network may be booted once per process (guarded by `BOOTED`), and its
        // handle must be dropped before the process exits: it is kept in `NETWORK` and dropped
        // by `stop_network`, which the gateway calls on shutdown.
        #[allow(unsafe_code)]
        let network =
            unsafe { builder.boot() }.map_err(|e| format!("FoundationDB network thread: {e}"))?;
        *NETWORK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(network);
        Ok(())
    });
    result.clone().map_err(KvError::fatal)
}

/// Stops the FoundationDB network thread. Call once, before exit, after every store is closed.
pub fn stop_network() {
    drop(
        NETWORK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(),
    );
}

fn kv_err(e: FdbError) -> KvError {
    if e.is_maybe_committed() {
        KvError {
            kind: crate::kv::KvErrorKind::MaybeCommitted,
            message: format!("fdb: {e}"),
        }
    } else if e.is_retryable() {
        KvError::retryable(format!("fdb: {e}"))
    } else {
        KvError::fatal(format!("fdb: {e}"))
    }
}

/// A FoundationDB cluster, with every key under `prefix`.
pub struct FdbEngine {
    db: Database,
    prefix: Vec<u8>,
}

impl FdbEngine {
    /// Connects with a cluster file (`None`: the default cluster file), keys under `prefix`.
    pub fn open(cluster_file: Option<&str>, prefix: &[u8]) -> Result<Self, KvError> {
        boot_network()?;
        let db = Database::new(cluster_file).map_err(|e| {
            KvError::fatal(format!(
                "FoundationDB cluster file {}: {e}",
                cluster_file.unwrap_or(foundationdb::default_config_path())
            ))
        })?;
        let engine = Self {
            db,
            prefix: prefix.to_vec(),
        };
        // A cluster that does not answer is found now, not at the first send: one read, within
        // the transaction timeout.
        engine.begin()?.get(b"").map_err(|e| {
            KvError::fatal(format!(
                "the FoundationDB cluster ({}) did not answer a read: {e}",
                cluster_file.unwrap_or(foundationdb::default_config_path())
            ))
        })?;
        Ok(engine)
    }
}

impl Engine for FdbEngine {
    fn name(&self) -> &'static str {
        "fdb"
    }

    fn begin(&self) -> Result<Box<dyn Txn + '_>, KvError> {
        let trx = self.db.create_trx().map_err(kv_err)?;
        trx.set_option(TransactionOption::Timeout(TIMEOUT_MS))
            .map_err(kv_err)?;
        Ok(Box::new(FdbTxn {
            trx,
            prefix: &self.prefix,
            bytes: 0,
        }))
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn max_batch(&self) -> usize {
        1024
    }

    fn max_transaction_bytes(&self) -> usize {
        // FoundationDB's limit is 10 MB and it advises under 1 MB; one operation more may go
        // in past this.
        512 * 1024
    }

    fn sync(&self) -> Result<(), KvError> {
        // Commits are durable on the cluster when they return.
        Ok(())
    }
}

struct FdbTxn<'a> {
    trx: Transaction,
    prefix: &'a [u8],
    /// Bytes of mutations and conflict ranges so far, counted as FoundationDB does.
    bytes: usize,
}

impl FdbTxn<'_> {
    /// A range read, a snapshot one (no conflict range) if `snapshot`.
    fn range(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        snapshot: bool,
    ) -> Result<Pairs, KvError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let (start, end) = (self.key(start), self.key(end));
        let opt = RangeOption {
            limit: Some(limit),
            reverse,
            mode: StreamingMode::WantAll,
            ..RangeOption::from((
                KeySelector::first_greater_or_equal(start),
                KeySelector::first_greater_or_equal(end),
            ))
        };
        let values: Vec<_> =
            block_on(self.trx.get_ranges_keyvalues(opt, snapshot).try_collect()).map_err(kv_err)?;
        let n = self.prefix.len();
        Ok(values
            .iter()
            .map(|kv| (kv.key()[n..].to_vec(), kv.value().to_vec()))
            .collect())
    }
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(self.prefix);
        k.extend_from_slice(key);
        k
    }
}

impl Txn for FdbTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.bytes += 2 * (self.prefix.len() + key.len()) + 1;
        let v = block_on(self.trx.get(&self.key(key), false)).map_err(kv_err)?;
        Ok(v.map(|s| s.to_vec()))
    }

    fn get_snapshot(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let v = block_on(self.trx.get(&self.key(key), true)).map_err(kv_err)?;
        Ok(v.map(|s| s.to_vec()))
    }

    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        // Every read issued before any is awaited: one round trip for all of them.
        let full: Vec<Vec<u8>> = keys.iter().map(|k| self.key(k)).collect();
        self.bytes += full.iter().map(|k| 2 * k.len() + 1).sum::<usize>();
        let reads = full.iter().map(|k| self.trx.get(k, false));
        let values = block_on(futures::future::try_join_all(reads)).map_err(kv_err)?;
        Ok(values.into_iter().map(|v| v.map(|s| s.to_vec())).collect())
    }

    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.bytes += 2 * self.prefix.len() + start.len() + end.len();
        self.range(start, end, limit, reverse, false)
    }

    fn scan_snapshot(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        self.range(start, end, limit, reverse, true)
    }

    fn read_version(&mut self) -> Result<Option<u64>, KvError> {
        // The transaction's read version is fixed by its first read; this answers from it.
        let v = block_on(self.trx.get_read_version()).map_err(kv_err)?;
        Ok(u64::try_from(v).ok())
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.bytes += 3 * (self.prefix.len() + key.len()) + value.len() + 1;
        self.trx.set(&self.key(key), value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.bytes += 3 * (self.prefix.len() + key.len()) + 1;
        self.trx.clear(&self.key(key));
    }

    fn size(&self) -> usize {
        self.bytes
    }

    fn set_versionstamped_key(
        &mut self,
        key: &[u8],
        offset: usize,
        value: &[u8],
    ) -> Result<(), KvError> {
        stamp_fits(key.len(), offset, "key")?;
        // API 520 and later: the stamp's offset, 4 bytes little-endian, follows the key.
        let mut k = self.key(key);
        let at = u32::try_from(self.prefix.len() + offset)
            .map_err(|_| KvError::fatal("versionstamp offset too large"))?;
        k.extend_from_slice(&at.to_le_bytes());
        self.bytes += 3 * k.len() + value.len() + 1;
        self.trx
            .atomic_op(&k, value, MutationType::SetVersionstampedKey);
        Ok(())
    }

    fn set_versionstamped_value(
        &mut self,
        key: &[u8],
        value: &[u8],
        offset: usize,
    ) -> Result<(), KvError> {
        stamp_fits(value.len(), offset, "value")?;
        let mut v = value.to_vec();
        let at =
            u32::try_from(offset).map_err(|_| KvError::fatal("versionstamp offset too large"))?;
        v.extend_from_slice(&at.to_le_bytes());
        let k = self.key(key);
        self.bytes += 3 * k.len() + v.len() + 1;
        self.trx
            .atomic_op(&k, &v, MutationType::SetVersionstampedValue);
        Ok(())
    }

    fn watch(&mut self, key: &[u8]) -> Result<Watch, KvError> {
        // FoundationDB's watch future outlives the transaction; a thread waits on it and
        // fires the engine-neutral watch (a node holds a handful, not thousands).
        let future = self.trx.watch(&self.key(key));
        let (tx, watch) = Watch::new();
        std::thread::Builder::new()
            .name("courier-fdb-watch".into())
            .spawn(move || {
                if block_on(future).is_ok() {
                    let _ = tx.send(());
                }
            })
            .map_err(|e| KvError::fatal(format!("watch thread: {e}")))?;
        Ok(watch)
    }

    fn clear_range(&mut self, start: &[u8], end: &[u8]) {
        if start < end {
            self.bytes += 2 * (2 * self.prefix.len() + start.len() + end.len());
            self.trx.clear_range(&self.key(start), &self.key(end));
        }
    }

    fn commit(self: Box<Self>) -> Result<(), KvError> {
        match block_on(self.trx.commit()) {
            Ok(_) => Ok(()),
            Err(e) if e.is_retryable() => {
                let msg = format!("fdb commit: {}", *e);
                // FoundationDB's backoff before the writer tries again.
                let _ = block_on(e.on_error());
                Err(KvError::retryable(msg))
            }
            Err(e) => Err(KvError::fatal(format!("fdb commit: {}", *e))),
        }
    }
}
