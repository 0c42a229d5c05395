//! Operator metrics in the Prometheus text format, served on `--metrics ADDR` at `/metrics`.
//!
//! One registry per gateway (no process-wide state), built with the `prometheus-client` crate.
//! Counters are bumped where things happen; gauges that are cheap to read on demand (connections
//! per shard, store queue depth, resident memory) are read when scraped.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Labels of a per-shard series.
type ShardLabels = Vec<(String, String)>;

/// Every metric a gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Sessions opened (token accepted, Welcome sent).
    pub handshakes: Counter,
    /// Connections refused before a session opened (bad token, version, frame, limit).
    pub refused: Counter,
    /// New connections answered with a QUIC Retry (address validation under a handshake flood).
    pub handshake_retries: Counter,
    /// Frames received from clients.
    pub frames_in: Counter,
    /// Bytes of frames received from clients.
    pub bytes_in: Counter,
    /// Frames queued to clients.
    pub frames_out: Counter,
    /// Bytes of frames queued to clients.
    pub bytes_out: Counter,
    /// Messages committed (sends and system messages).
    pub messages_committed: Counter,
    /// Deliver frames queued to devices.
    pub deliveries: Counter,
    /// Devices disconnected for not reading.
    pub slow_readers: Counter,
    /// Operations per store commit.
    pub commit_batch: Histogram,
    /// Seconds per store commit (apply and fsync).
    pub commit_seconds: Histogram,
    connections: Family<ShardLabels, Gauge>,
    store_queue: Gauge,
    resident_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("courier");
        let m = Self {
            handshakes: Counter::default(),
            refused: Counter::default(),
            handshake_retries: Counter::default(),
            frames_in: Counter::default(),
            bytes_in: Counter::default(),
            frames_out: Counter::default(),
            bytes_out: Counter::default(),
            messages_committed: Counter::default(),
            deliveries: Counter::default(),
            slow_readers: Counter::default(),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            connections: Family::default(),
            store_queue: Gauge::default(),
            resident_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("handshakes", "Sessions opened", m.handshakes.clone());
        registry.register(
            "refused",
            "Connections refused before a session opened",
            m.refused.clone(),
        );
        registry.register(
            "handshake_retries",
            "New connections asked to validate their address (QUIC Retry) under a handshake flood",
            m.handshake_retries.clone(),
        );
        registry.register("frames_in", "Frames received", m.frames_in.clone());
        registry.register("bytes_in", "Bytes of frames received", m.bytes_in.clone());
        registry.register(
            "frames_out",
            "Frames queued to clients",
            m.frames_out.clone(),
        );
        registry.register(
            "bytes_out",
            "Bytes of frames queued to clients",
            m.bytes_out.clone(),
        );
        registry.register(
            "messages_committed",
            "Messages committed",
            m.messages_committed.clone(),
        );
        registry.register(
            "deliveries",
            "Deliver frames queued to devices",
            m.deliveries.clone(),
        );
        registry.register(
            "slow_reader_disconnects",
            "Devices disconnected for not reading",
            m.slow_readers.clone(),
        );
        registry.register(
            "commit_batch_operations",
            "Operations per store commit",
            m.commit_batch.clone(),
        );
        registry.register(
            "commit_seconds",
            "Seconds per store commit, fsync included",
            m.commit_seconds.clone(),
        );
        registry.register(
            "connections",
            "Open connections per shard",
            m.connections.clone(),
        );
        registry.register(
            "store_queue_depth",
            "Operations waiting for the store writer",
            m.store_queue.clone(),
        );
        registry.register(
            "resident_memory_bytes",
            "Resident memory of the process",
            m.resident_bytes.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one frame of `len` bytes queued to a client.
    pub fn frame_out(&self, len: usize) {
        self.frames_out.inc();
        self.bytes_out.inc_by(len as u64);
    }

    /// Records one store commit.
    pub fn commit(&self, operations: usize, elapsed: Duration) {
        self.commit_batch.observe(operations as f64);
        self.commit_seconds.observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with the on-demand gauges read now.
    pub fn render(&self, shard_connections: &[usize], store_queue: usize) -> String {
        for (i, n) in shard_connections.iter().enumerate() {
            self.connections
                .get_or_create(&vec![("shard".to_owned(), i.to_string())])
                .set(*n as i64);
        }
        self.store_queue.set(store_queue as i64);
        self.resident_bytes
            .set(resident_bytes().unwrap_or(0) as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Resident set size from `/proc/self/statm` (Linux), in bytes.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Serves `GET /metrics` on `addr` until `shutdown` turns true. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    render: impl Fn() -> String + Send + Sync + 'static,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let render = std::sync::Arc::new(render);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                _ = shutdown.changed() => return,
            };
            let render = render.clone();
            tokio::spawn(async move {
                // Read the request head (bounded), answer, close.
                let mut head = Vec::with_capacity(512);
                let mut buf = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let (status, body) =
                    if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") {
                        ("200 OK", render())
                    } else {
                        ("404 Not Found", "try /metrics\n".to_owned())
                    };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(bound)
}
