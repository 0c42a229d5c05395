//! The gateway's typed configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::TlsIdentity;
use courier_auth::TokenVerifier;

/// Which storage engine the gateway's store runs on.
#[derive(Clone, Default)]
pub enum StoreEngine {
    /// fjall in `store_dir` (the default; one node).
    #[default]
    Embedded,
    /// A FoundationDB cluster (cargo feature `fdb`), every key under `prefix`.
    #[cfg(feature = "fdb")]
    Fdb {
        /// The cluster file; None: FoundationDB's default (`/etc/foundationdb/fdb.cluster`).
        cluster_file: Option<PathBuf>,
        /// The key prefix this deployment's data lives under.
        prefix: Vec<u8>,
    },
    /// An engine built by the caller: tests run the gateway on the simulation engine
    /// (`courier_store::engine::sim`).
    Custom(std::sync::Arc<dyn courier_store::kv::Engine>),
}

impl std::fmt::Debug for StoreEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            #[cfg(feature = "fdb")]
            Self::Fdb {
                cluster_file,
                prefix,
            } => f
                .debug_struct("Fdb")
                .field("cluster_file", cluster_file)
                .field("prefix", &String::from_utf8_lossy(prefix))
                .finish(),
            Self::Custom(e) => write!(f, "Custom({})", e.name()),
        }
    }
}

/// Everything a gateway needs to start. CLI parsing lives in `main.rs`; tests build this directly.
#[derive(Debug)]
pub struct GatewayConfig {
    /// UDP address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Directory of the embedded store (and, on other engines, the default media directory's
    /// parent).
    pub store_dir: PathBuf,
    /// Which engine holds the message log.
    pub store_engine: StoreEngine,
    /// The TLS certificate and key.
    pub tls: TlsIdentity,
    /// Checks client tokens; holds only the issuer's public key.
    pub verifier: TokenVerifier,
    /// Largest frame accepted, header included. Each connection's read buffer can grow to this.
    pub max_frame: u32,
    /// Largest message body accepted. Must leave room for the Deliver framing inside `max_frame`.
    pub max_body: u32,
    /// Most unanswered `Send`s per connection; a further one is refused with `RATE_LIMITED`.
    pub max_inflight: u32,
    /// Where to serve Prometheus metrics (`GET /metrics`); None: not served.
    pub metrics: Option<SocketAddr>,
    /// Shards: threads, each with its own runtime and QUIC endpoint on the listen port.
    pub shards: usize,
    /// Partitions of the store's append path (a writer and commit thread each; on the
    /// embedded engine, a database each, fixed when the store is created); None:
    /// [`GatewayConfig::default_partitions`].
    pub store_partitions: Option<usize>,
    /// Group commit: each partition's commits of more than one operation begin at least this
    /// far apart, the writer taking each such batch only once the interval is over
    /// ([`courier_store::StoreConfig::commit_interval`]; zero: at once). Default 1 ms: at 20K
    /// msg/s on 2 cores, batches of ~20 instead of ~8, ~14% less CPU per message and a higher
    /// serial bound, at ~0.6 ms more median latency (docs/PERFORMANCE.md, "Group commit" and
    /// "Taking the batch late").
    pub commit_interval: Duration,
    /// Wake-up pacing: a busy shard thread waits out the rest of this interval after a
    /// wake-up before it parks, so that what arrives meanwhile is handled in one turn
    /// ([`crate::pacing`]; zero: park at once). At most
    /// [`crate::pacing::MAX_WAKE_INTERVAL`]. Default 500 µs: at 20K msg/s on 2 cores, two
    /// thirds fewer wake-ups and ~7% less CPU per message, at ~0.45 ms more median latency
    /// (docs/PERFORMANCE.md, "Wake-up pacing").
    pub wake_interval: Duration,
    /// How long a client may hold its ACKs: the gateway asks every client that supports the
    /// QUIC ACK-frequency extension (quinn's do) for this `max_ack_delay`; a second
    /// ack-eliciting packet is still acknowledged at once, as without it, so a bulk transfer
    /// (a download) is acknowledged as often as before, even with a small congestion window.
    /// At a few messages a second per connection, a client then acknowledges the gateway's
    /// packet on its next send instead of in an ACK-only datagram of its own. It is also how
    /// late the gateway learns of a lost last packet (the probe timeout grows by it), so it
    /// stays well under a second. Zero: ask nothing (the client's own 25 ms). At most
    /// [`MAX_CLIENT_ACK_DELAY`].
    pub client_ack_delay: Duration,
    /// Most connections this node holds; further handshakes are refused.
    pub max_connections: usize,
    /// Frames queued for one connection before it counts as a slow reader and is disconnected
    /// (its messages wait in the store). Bounds the count; `outbound_bytes` bounds the memory.
    pub outbound_queue: usize,
    /// Bytes queued for one connection before it counts as a slow reader and is disconnected;
    /// answers to its own requests wait for room instead (the session stops reading).
    /// Memory per connection, worst case: this, plus one frame (`max_frame`), plus
    /// `max_inflight` reserved answers of at most ~1 KB each: ~2.1 MiB at the defaults, however
    /// large the bodies (4,096 queued frames of 32 KB would be ~130 MB).
    pub outbound_bytes: usize,
    /// Most messages in one history page.
    pub max_history_page: u32,
    /// Time allowed for the TLS handshake plus `Hello`.
    pub handshake_timeout: Duration,
    /// Bounds on connections that have not sent `Hello` yet (handshake floods): address
    /// validation past a count, and a cap per source address. The per-source cap must exceed
    /// what one load generator opens at once (`loadgen connect --parallel`, 512 at most by
    /// default use).
    pub handshakes: crate::handshakes::HandshakeLimits,
    /// A connection silent this long is closed. The SDK's clients send a keep-alive PING
    /// every 20 s (`courier_client`'s `KEEP_ALIVE`), so below ~25 s idle SDK connections close.
    pub idle_timeout: Duration,
    /// On shutdown, how long in-flight sends may take to commit and be acknowledged.
    pub shutdown_grace: Duration,
    /// Uploads, downloads, blobs and thumbnails.
    pub media: crate::media::MediaConfig,
    /// How long messages are kept (and media their messages attach).
    pub retention: Duration,
    /// Sends, new chats and media records are refused with `UNAVAILABLE` (retry later) while
    /// the store's disk has less free space than this, so a full disk does not fail commits;
    /// acks, receipts and the retention sweep go on. 0: no floor.
    pub store_min_free: u64,
    /// How long a user's last device may be gone before its watchers see it offline (a
    /// reconnect within this shows nothing).
    pub presence_grace: Duration,
    /// Push notifications to offline devices.
    pub push: crate::push::PushConfig,
    /// The store's clock (timestamps, retention); tests move a manual one.
    pub clock: std::sync::Arc<dyn courier_store::Clock>,
    /// How this node takes part in a cluster, on an engine other processes share
    /// (FoundationDB): its id (random by default) and lease. Unused on the embedded engine.
    pub cluster: courier_store::ClusterConfig,
}

impl StoreEngine {
    /// Whether other processes may write to this engine too, so that this node is one of a
    /// cluster (FoundationDB, or a shared engine handed in).
    pub fn shared(&self) -> bool {
        match self {
            Self::Embedded => false,
            #[cfg(feature = "fdb")]
            Self::Fdb { .. } => true,
            Self::Custom(e) => !e.exclusive(),
        }
    }
}

/// From this many shards on, the store gets a partition per shard by default; below it, one.
/// On 2 cores a second partition measured slower (closed loop 105-108K against 111-126K msg/s,
/// 12.7-13.1 against 10.5-11.8 µs per message; docs/PERFORMANCE.md): with every core busy, the
/// extra writer, commit thread and journal only add per-batch work.
pub const PARTITION_PER_SHARD_FROM: usize = 4;

/// The longest [`GatewayConfig::client_ack_delay`].
pub const MAX_CLIENT_ACK_DELAY: Duration = Duration::from_secs(1);

impl GatewayConfig {
    /// The store's partitions unless set: one per shard from [`PARTITION_PER_SHARD_FROM`]
    /// shards on, else one.
    pub fn default_partitions(&self) -> usize {
        if self.shards >= PARTITION_PER_SHARD_FROM {
            self.shards
        } else {
            1
        }
    }

    /// Defaults for the given address, store directory, TLS identity and token verifier.
    pub fn new(
        listen: SocketAddr,
        store_dir: PathBuf,
        tls: TlsIdentity,
        verifier: TokenVerifier,
    ) -> Self {
        Self {
            listen,
            store_dir,
            store_engine: StoreEngine::Embedded,
            tls,
            verifier,
            max_frame: courier_wire::DEFAULT_MAX_FRAME,
            max_body: 32 * 1024,
            max_inflight: 64,
            metrics: None,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            store_partitions: None,
            commit_interval: Duration::from_millis(1),
            wake_interval: Duration::from_micros(500),
            client_ack_delay: Duration::from_millis(100),
            max_connections: 1_000_000,
            outbound_queue: 4096,
            outbound_bytes: 2 * 1024 * 1024,
            max_history_page: 500,
            handshake_timeout: Duration::from_secs(10),
            handshakes: crate::handshakes::HandshakeLimits::default(),
            idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            media: crate::media::MediaConfig::default(),
            retention: Duration::from_secs(30 * 86_400),
            store_min_free: 64 << 20,
            presence_grace: Duration::from_secs(5),
            push: crate::push::PushConfig::default(),
            clock: std::sync::Arc::new(courier_store::SystemClock),
            cluster: courier_store::ClusterConfig::new(),
        }
    }

    /// Checks that the limits fit together.
    pub fn validate(&self) -> Result<(), String> {
        // A Deliver frame carries the body plus up to ~300 bytes of header fields and ids.
        if u64::from(self.max_body) + 1024 > u64::from(self.max_frame) {
            return Err(format!(
                "max body ({}) must be at least 1024 bytes below max frame ({})",
                self.max_body, self.max_frame
            ));
        }
        if self.media.max_upload == 0 || self.media.max_pixels == 0 {
            return Err("max upload and max pixels must be positive".into());
        }
        if self.media.min_free > 0 && self.media.min_free <= self.store_min_free {
            return Err(format!(
                "the uploads' free-space floor ({}) must be above the store's ({}): uploads are refused before messages are",
                self.media.min_free, self.store_min_free
            ));
        }
        if self.max_inflight == 0
            || self.outbound_queue == 0
            || self.outbound_bytes == 0
            || self.max_history_page == 0
        {
            return Err("max inflight, outbound queue and history page must be positive".into());
        }
        if self.wake_interval > crate::pacing::MAX_WAKE_INTERVAL {
            return Err(format!(
                "shard wake interval {:?} is over the most, {:?}",
                self.wake_interval,
                crate::pacing::MAX_WAKE_INTERVAL
            ));
        }
        if self.client_ack_delay > MAX_CLIENT_ACK_DELAY {
            return Err(format!(
                "client ACK delay {:?} is over the most, {MAX_CLIENT_ACK_DELAY:?}",
                self.client_ack_delay
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> GatewayConfig {
        let (tls, _) = TlsIdentity::self_signed_in(&dir.join("tls")).unwrap();
        let verifier = TokenVerifier::new(courier_auth::IssuerKey::generate().public_key());
        GatewayConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.join("store"),
            tls,
            verifier,
        )
    }

    #[test]
    fn pacing_and_ack_delays_over_their_most_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.client_ack_delay, Duration::from_millis(100));

        c.client_ack_delay = MAX_CLIENT_ACK_DELAY;
        assert_eq!(c.validate(), Ok(()));
        c.client_ack_delay = MAX_CLIENT_ACK_DELAY + Duration::from_millis(1);
        let err = c.validate().unwrap_err();
        assert!(err.contains("client ACK delay"), "{err}");
        c.client_ack_delay = Duration::ZERO;
        assert_eq!(c.validate(), Ok(()));

        c.wake_interval = crate::pacing::MAX_WAKE_INTERVAL + Duration::from_micros(1);
        let err = c.validate().unwrap_err();
        assert!(err.contains("shard wake interval"), "{err}");
    }
}
