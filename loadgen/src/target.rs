//! The gateway under test: where it is, how to trust it, how to mint tokens for it, and (with
//! `--spawn-gateway`) starting one on a temporary data dir for the run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use courier_auth::{Claims, IssuerKey};
use courier_client::{Client, Events, Trust};
use courier_net::scrape::{http_get, sample};

/// Where the gateway is and how to reach it.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct Target {
    /// Gateway address; several, comma-separated, for the nodes of a cluster: user i
    /// connects to the (i mod n)-th, so the two users of a 1:1 chat (and a group's members)
    /// are on different nodes and every check covers cross-node delivery.
    #[arg(long, default_value = "127.0.0.1:4433", value_delimiter = ',')]
    pub(crate) server: Vec<SocketAddr>,
    /// Certificate file to trust.
    #[arg(long, default_value = "./courier-data/tls/cert.pem")]
    pub(crate) ca: PathBuf,
    /// Accept any certificate (insecure).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Issuer private key used to mint the users' tokens.
    #[arg(long, default_value = "./courier-data/issuer.key")]
    pub(crate) issuer_key: PathBuf,
    /// The gateway's metrics address (host:port), to read its memory use.
    #[arg(long)]
    pub(crate) metrics: Option<SocketAddr>,
    /// UDP sockets the simulated users' connections are spread over.
    #[arg(long, default_value_t = 16)]
    pub(crate) sockets: usize,
    /// Prefix of user ids (runs with different prefixes do not share chats).
    #[arg(long, default_value = "lg")]
    pub(crate) prefix: String,
    /// Start `courier serve` on a temporary data dir for this run (then --server, --ca,
    /// --issuer-key and --metrics point at it).
    #[arg(long)]
    pub(crate) spawn_gateway: bool,
    /// The `courier` binary for --spawn-gateway (default: next to this one).
    #[arg(long)]
    pub(crate) courier: Option<PathBuf>,
    /// Shards of the spawned gateway.
    #[arg(long)]
    pub(crate) gateway_shards: Option<usize>,
    /// Store partitions of the spawned gateway (default: its own, one per shard).
    #[arg(long)]
    pub(crate) gateway_partitions: Option<usize>,
    /// The process id of a gateway on this machine, to report its CPU per thread and the
    /// serial bound (set by itself with --spawn-gateway).
    #[arg(long)]
    pub(crate) gateway_pid: Option<u32>,
}

/// A gateway this run started, stopped (SIGTERM) when dropped.
pub(crate) struct Spawned {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Connected users: one QUIC connection each, spread over a few UDP sockets.
pub(crate) struct Users {
    key: IssuerKey,
    endpoints: Vec<quinn::Endpoint>,
    servers: Vec<SocketAddr>,
    prefix: String,
    expires_at: u64,
}

impl Target {
    /// Starts the gateway if asked to; the returned guard stops it.
    pub(crate) fn prepare(&mut self) -> anyhow::Result<Option<Spawned>> {
        anyhow::ensure!(self.sockets >= 1, "--sockets must be at least 1");
        anyhow::ensure!(
            !(self.spawn_gateway && self.server.len() > 1),
            "--spawn-gateway starts one gateway: give at most one --server with it"
        );
        if !self.spawn_gateway {
            return Ok(None);
        }
        self.spawn().map(Some)
    }

    fn spawn(&mut self) -> anyhow::Result<Spawned> {
        use std::io::BufRead;
        let courier = match &self.courier {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("courier"),
        };
        let dir = tempfile::tempdir()?;
        let mut cmd = std::process::Command::new(&courier);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path());
        if let Some(n) = self.gateway_shards {
            cmd.args(["--shards", &n.to_string()]);
        }
        if let Some(n) = self.gateway_partitions {
            cmd.args(["--partitions", &n.to_string()]);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", courier.display()))?;
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                anyhow::bail!("{} exited before listening", courier.display());
            };
            let line = line?;
            if let Some(rest) = line.strip_prefix("metrics on http://") {
                self.metrics = Some(rest.trim_end_matches("/metrics").parse()?);
            }
            if let Some(rest) = line.strip_prefix("courier listening on ") {
                break rest.split(' ').next().unwrap_or_default().parse()?;
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        self.gateway_pid = Some(child.id());
        self.server = vec![addr];
        self.ca = dir.path().join("tls/cert.pem");
        self.issuer_key = dir.path().join("issuer.key");
        self.insecure = false;
        eprintln!("spawned {} on {addr}", courier.display());
        Ok(Spawned { child, _dir: dir })
    }

    /// Ready to connect users.
    pub(crate) fn users(&self) -> anyhow::Result<Users> {
        let trust = if self.insecure {
            Trust::InsecureAcceptAnyCertificate
        } else {
            Trust::File(self.ca.clone())
        };
        let endpoints = (0..self.sockets)
            .map(|_| courier_client::connection::client_endpoint(self.server[0], &trust))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Users {
            key: IssuerKey::read_file(&self.issuer_key)?,
            endpoints,
            servers: self.server.clone(),
            prefix: self.prefix.clone(),
            expires_at: courier_wire::time::now_secs() + 3600,
        })
    }

    /// The gateway's resident memory, from its metrics.
    pub(crate) async fn gateway_memory(&self) -> Option<u64> {
        let text = http_get(self.metrics?, "/metrics").await.ok()?;
        sample(&text, "courier_resident_memory_bytes").map(|v| v as u64)
    }
}

impl Users {
    /// The UDP endpoints the users' connections are spread over.
    pub(crate) fn endpoints(&self) -> &[quinn::Endpoint] {
        &self.endpoints
    }

    /// The id of user `i`.
    pub(crate) fn name(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    /// Where the gateways are, for messages.
    pub(crate) fn servers(&self) -> String {
        self.servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connects user `i` (on socket `i % sockets`, to server `i % servers`).
    pub(crate) async fn connect(&self, i: usize) -> anyhow::Result<(Client, Events)> {
        let token = self.key.mint(&Claims {
            user: self.name(i),
            device: 1,
            expires_at: self.expires_at,
        });
        let endpoint = &self.endpoints[i % self.endpoints.len()];
        Client::connect_via(
            endpoint,
            self.servers[i % self.servers.len()],
            "localhost",
            &token,
            courier_wire::PROTOCOL_VERSION,
        )
        .await
        .with_context(|| format!("connect user {i}"))
    }
}

/// Waits, up to `limit`, until `endpoints` have no connection left: every close has reached
/// the gateway (a process that exits first leaves the gateway holding its connections until
/// their idle timeout).
pub(crate) async fn wait_idle(endpoints: &[quinn::Endpoint], limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        for e in endpoints {
            e.wait_idle().await;
        }
    })
    .await;
}
