//! `courier`: run the gateway, manage issuer keys and tokens, and chat from a terminal.

// `deny`, not `forbid`: one call into the allocator's C API is allowed, in
// `release_freed_memory` below.
#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use courier_auth::{Claims, IssuerKey, TokenVerifier};
use courier_gateway::media::BlobStoreConfig;
use courier_gateway::tls::TlsIdentity;
use courier_gateway::{Gateway, GatewayConfig};

#[cfg(feature = "chat")]
mod chat;
mod settings;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The store engine the flags name.
fn store_engine(args: &ServeArgs) -> anyhow::Result<courier_gateway::StoreEngine> {
    match args.store.as_str() {
        "embedded" => Ok(courier_gateway::StoreEngine::Embedded),
        #[cfg(feature = "fdb")]
        "fdb" => Ok(courier_gateway::StoreEngine::Fdb {
            cluster_file: args.fdb_cluster_file.clone(),
            prefix: args.fdb_prefix.clone().into_bytes(),
        }),
        #[cfg(not(feature = "fdb"))]
        "fdb" => bail!(
            "this courier was built without FoundationDB support: build it with \
             `cargo build --release -p courier-gateway --features fdb` (needs libclang and \
             libfdb_c; see docs/STORAGE.md)"
        ),
        other => bail!("--store is embedded, fdb or sim, not {other:?}"),
    }
}

/// Stops FoundationDB's network thread before the process exits (it must be, once booted).
fn stop_fdb_network(fdb: bool) {
    #[cfg(feature = "fdb")]
    if fdb {
        courier_store::engine::fdb::stop_network();
    }
    let _ = fdb;
}

/// FCM's settings from the flags: None when neither a service account nor a token file is
/// named.
fn fcm_config(args: &ServeArgs) -> anyhow::Result<Option<courier_gateway::push::fcm::FcmConfig>> {
    use courier_gateway::push::fcm::{FcmAuth, FcmConfig};
    use courier_gateway::push::oauth::ServiceAccount;
    let (auth, default_project) = match (&args.fcm_service_account, &args.fcm_token_file) {
        (Some(file), _) => {
            let json = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
            let account = ServiceAccount::from_json(&json).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a usable service-account key: {e}",
                    file.display()
                )
            })?;
            let project = account.project_id.clone();
            (FcmAuth::ServiceAccount(account), project)
        }
        (None, Some(file)) => (FcmAuth::AccessTokenFile(file.clone()), None),
        (None, None) => return Ok(None),
    };
    let Some(project_id) = args.fcm_project.clone().or(default_project) else {
        bail!("FCM needs a project: --fcm-project, or a project_id in the service-account key");
    };
    Ok(Some(FcmConfig {
        base_url: args.fcm_url.clone(),
        project_id,
        auth,
    }))
}

/// Hands the memory this thread and the others have freed back to the system now (mimalloc's
/// `mi_collect(force)`), instead of at a later allocation; run after each large image decode
/// (`MediaConfig::release_memory`).
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called on any thread at any time; it
    // only frees and purges memory that no live allocation uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[derive(Parser)]
#[command(name = "courier", version, about = "Courier messaging gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on the embedded store.
    Serve(Box<ServeArgs>),
    /// Create an issuer key pair (issuer.key, issuer.pub) for signing tokens.
    Keygen {
        /// Directory to write the key files into.
        #[arg(long, default_value = "./courier-data")]
        out: PathBuf,
    },
    /// Mint a token for a user's device.
    Token {
        /// The issuer's private key file.
        #[arg(long, default_value = "./courier-data/issuer.key")]
        key: PathBuf,
        /// User id.
        #[arg(long)]
        user: String,
        /// Device id.
        #[arg(long, default_value_t = 1)]
        device: u32,
        /// Lifetime, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Chat with another user from this terminal: lines typed are sent, messages are printed.
    #[cfg(feature = "chat")]
    Chat(chat::ChatArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Settings file (TOML): every flag of serve has a key, its name without the dashes
    /// (docs/courier.example.toml). Flags override it, and so do COURIER_* environment
    /// variables (COURIER_DATA_DIR for --data-dir); COURIER_CONFIG names the file too.
    #[arg(long)]
    config: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Data directory (store, TLS certificate, issuer key).
    #[arg(long, default_value = "./courier-data")]
    data_dir: PathBuf,
    /// Where the message log lives: `embedded` (fjall in <data-dir>/store), `fdb` (a
    /// FoundationDB cluster; a build with `--features fdb`), or `sim` (an in-memory
    /// simulation of FoundationDB in this process, kept only while it runs: to try a cluster
    /// on one machine with --nodes).
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "fdb", "sim"])]
    store: String,
    /// With `--store sim`: start this many cluster nodes in this process on the one simulated
    /// store, listening on consecutive ports from --listen's (any free ports for port 0), with
    /// their media under <data-dir>/node<i>.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// With `--store sim`: microseconds added to each simulated round trip (FoundationDB's are
    /// typically 500 to 1,000 within a data center).
    #[arg(long, default_value_t = 0)]
    sim_latency_us: u64,
    /// FoundationDB: the cluster file (default: FoundationDB's, /etc/foundationdb/fdb.cluster).
    #[arg(long)]
    fdb_cluster_file: Option<PathBuf>,
    /// FoundationDB: the key prefix this deployment's data lives under (nodes of one
    /// deployment share it).
    #[arg(long, default_value = "courier/")]
    fdb_prefix: String,
    /// PEM certificate chain; without it a self-signed certificate is created in the data dir.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The token issuer's public key; without it <data-dir>/issuer.pub is used, created with
    /// its private key on first start.
    #[arg(long)]
    issuer_pub: Option<PathBuf>,
    /// Largest frame accepted, bytes.
    #[arg(long, default_value_t = courier_wire::DEFAULT_MAX_FRAME)]
    max_frame: u32,
    /// Largest message body accepted, bytes.
    #[arg(long, default_value_t = 32 * 1024)]
    max_body: u32,
    /// Most unanswered sends per connection.
    #[arg(long, default_value_t = 64)]
    max_inflight: u32,
    /// Most connections held by this node.
    #[arg(long, default_value_t = 1_000_000)]
    max_connections: usize,
    /// Connections without Hello (node-wide) beyond which new, unvalidated addresses are asked
    /// to validate first (QUIC Retry).
    #[arg(long, default_value_t = 256)]
    handshake_retry_above: usize,
    /// Most connections without Hello from one source address (a load generator on one address
    /// needs its --parallel or more).
    #[arg(long, default_value_t = 1024)]
    handshakes_per_source: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Shards (threads with their own QUIC endpoint on the port); default: number of cores.
    #[arg(long)]
    shards: Option<usize>,
    /// Partitions of the store's append path, each with its own writer and commit thread
    /// and, on the embedded store, its own database and fsync; chats are spread over them by
    /// id. Default: one per shard from 4 shards on, else 1. An embedded store keeps the
    /// count it was created with.
    #[arg(long)]
    partitions: Option<usize>,
    /// Group commit: each partition's commits of more than one operation begin at least this
    /// many microseconds apart (the writer takes such a batch only once the interval since
    /// the last commit began is over), so that under concurrent load one fsync carries more
    /// messages (at up to this much more latency per message; a lone operation, or the first
    /// after a quiet spell, does not wait). 0: commit at once. At most 100000.
    #[arg(long, default_value_t = 1000)]
    commit_interval_us: u64,
    /// Wake-up pacing: a busy shard thread waits this many microseconds after a wake-up
    /// before it parks again, so that it handles what arrives meanwhile in one turn (fewer,
    /// fuller wake-ups under load, at up to this much more latency; a shard that is not
    /// busy parks at once). 0: park at once. At most 10000.
    #[arg(long, default_value_t = 500)]
    shard_wake_interval_us: u64,
    /// How long clients may hold their ACKs (milliseconds), asked of each client through the
    /// QUIC ACK-frequency extension: a client with a few messages a second then acknowledges
    /// on its next send instead of in a datagram of its own (fewer datagrams for both sides),
    /// and the gateway repairs a lost last packet that much later. 0: ask nothing (the
    /// client's own 25 ms). At most 1000.
    #[arg(long, default_value_t = 100)]
    client_ack_delay_ms: u64,
    /// Largest media upload, in bytes.
    #[arg(long, default_value_t = 100 << 20)]
    max_upload: u64,
    /// Directory for partial uploads and (with the local blob store) blobs; default:
    /// <data-dir>/media.
    #[arg(long)]
    media_dir: Option<PathBuf>,
    /// Where media blobs live: `local` (in the media directory), `file:/DIR` (a directory
    /// every node of a cluster mounts), or `s3://BUCKET` (needs a build with `--features s3`;
    /// credentials and region from the AWS_* environment variables). A cluster's nodes share
    /// one: a download may land on another node than its upload.
    #[arg(long, default_value = "local")]
    blob_store: String,
    /// Free space (MiB) below which the store refuses sends, new chats and media records with
    /// UNAVAILABLE (retry later) rather than letting a commit meet a full disk; 0: no floor.
    #[arg(long, default_value_t = 64)]
    store_min_free_mib: u64,
    /// Free space (MiB) an upload must leave on the uploads' disk, above the store's floor so
    /// uploads are refused before messages are; 0: no floor.
    #[arg(long, default_value_t = 1024)]
    upload_min_free_mib: u64,
    /// Most media one user may have stored (MiB, uploads and thumbnails until they expire with
    /// their messages); 0: no quota.
    #[arg(long, default_value_t = 4096)]
    upload_quota_mib: u64,
    /// Endpoint of an S3-compatible service (e.g. http://127.0.0.1:9000), for `s3://` blob stores.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// Push to offline devices through this webhook (JSON POST, HMAC-signed).
    #[arg(long)]
    push_webhook_url: Option<String>,
    /// File holding the webhook's HMAC-SHA256 secret.
    #[arg(long, requires = "push_webhook_url")]
    push_webhook_secret_file: Option<PathBuf>,
    /// Messages of one chat within this many milliseconds make one push.
    #[arg(long, default_value_t = 1000)]
    push_coalesce_ms: u64,
    /// First retry delay of a failed push, in milliseconds (doubling up to 10 minutes).
    #[arg(long, default_value_t = 1000)]
    push_retry_ms: u64,
    /// Failed attempts after which a push goes to the dead letters.
    #[arg(long, default_value_t = 10)]
    push_max_attempts: u32,
    /// Include the message text in pushes (off: only who, where and how many).
    #[arg(long)]
    push_include_content: bool,
    /// APNs: the developer team id (enables the APNs provider with the other --apns-* options).
    #[arg(long, requires_all = ["apns_key_id", "apns_key_file", "apns_topic"])]
    apns_team_id: Option<String>,
    /// APNs: the signing key's id.
    #[arg(long)]
    apns_key_id: Option<String>,
    /// APNs: the `.p8` signing key file.
    #[arg(long)]
    apns_key_file: Option<PathBuf>,
    /// APNs: the app's bundle id.
    #[arg(long)]
    apns_topic: Option<String>,
    /// APNs: the API's base URL.
    #[arg(long, default_value = "https://api.push.apple.com")]
    apns_url: String,
    /// FCM: the project's service-account key file (the JSON the Cloud console downloads);
    /// enables the FCM provider. Access tokens are exchanged for signed assertions and renewed
    /// before they expire.
    #[arg(long, conflicts_with = "fcm_token_file")]
    fcm_service_account: Option<PathBuf>,
    /// FCM: the Firebase project id (default: the service account's project).
    #[arg(long)]
    fcm_project: Option<String>,
    /// FCM, instead of --fcm-service-account: a file holding a current OAuth 2 access token
    /// that other tooling keeps fresh (re-read every minute); needs --fcm-project.
    #[arg(long, requires = "fcm_project")]
    fcm_token_file: Option<PathBuf>,
    /// FCM: the API's base URL.
    #[arg(long, default_value = "https://fcm.googleapis.com")]
    fcm_url: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit, e.g. 24h"))?;
    let secs = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let serve_flags = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
    let expanded = match settings::expand(std::env::args_os().collect(), &serve_flags, |k| {
        std::env::var(k).ok()
    }) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("courier: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = match Cli::try_parse_from(expanded.args) {
        Ok(c) => c,
        Err(e) => {
            let failed = e.exit_code() != 0;
            let _ = e.print();
            if failed {
                for (flag, from) in &expanded.sources {
                    eprintln!("note: {flag} was set by {from}");
                }
            }
            std::process::exit(e.exit_code());
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Keygen { out } => keygen(&out),
        Command::Token {
            key,
            user,
            device,
            ttl,
        } => token(&key, user, device, ttl),
        #[cfg(feature = "chat")]
        Command::Chat(args) => chat::chat(args).await,
    };
    if let Err(e) = result {
        eprintln!("courier: {e:#}");
        std::process::exit(1);
    }
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    IssuerKey::generate().write_files(out)?;
    println!(
        "wrote {0}/issuer.key (keep it secret) and {0}/issuer.pub",
        out.display()
    );
    Ok(())
}

fn token(key: &std::path::Path, user: String, device: u32, ttl: Duration) -> anyhow::Result<()> {
    if !courier_wire::valid_user_id(&user) {
        bail!("invalid user id {user:?}: use 1 to 64 ASCII letters, digits or -_.@+");
    }
    let key = IssuerKey::read_file(key)?;
    println!(
        "{}",
        key.mint(&Claims {
            user,
            device,
            expires_at: courier_wire::time::now_secs() + ttl.as_secs()
        })
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Ok(mode) = std::fs::read_to_string(courier_gateway::util::THP_MODE_FILE) {
        let allow = std::env::var("MIMALLOC_ALLOW_THP").ok();
        if let Some(w) = courier_gateway::util::huge_page_warning(&mode, allow.as_deref()) {
            tracing::warn!("{w}");
        }
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => TlsIdentity::from_pem_files(cert, key)?,
        _ => {
            let (id, created) = TlsIdentity::self_signed_in(&args.data_dir.join("tls"))?;
            println!(
                "{} self-signed certificate {}",
                if created { "created" } else { "using" },
                id.cert_path.display()
            );
            id
        }
    };
    println!("certificate SHA-256 fingerprint {}", tls.fingerprint());
    let pub_path = match &args.issuer_pub {
        Some(p) => p.clone(),
        None => {
            let p = args.data_dir.join("issuer.pub");
            if !p.exists() {
                IssuerKey::generate().write_files(&args.data_dir)?;
                println!(
                    "created issuer key pair {0}/issuer.key and {0}/issuer.pub",
                    args.data_dir.display()
                );
            }
            p
        }
    };
    let verifier_path = pub_path;
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if args.nodes > 1 && args.store != "sim" {
        bail!("--nodes starts several nodes on one simulated store (--store sim); on FoundationDB, start one courier per node");
    }
    if args.store == "sim" {
        return serve_simulated(&args, tls, &verifier_path).await;
    }
    let config = node_config(&args, tls, &verifier_path)?;
    let fdb = args.store == "fdb";
    let where_ = if fdb {
        format!(
            "FoundationDB {} under {:?}",
            args.fdb_cluster_file.as_ref().map_or_else(
                || "(default cluster file)".to_owned(),
                |p| p.display().to_string()
            ),
            args.fdb_prefix
        )
    } else {
        args.data_dir.join("store").display().to_string()
    };
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            stop_fdb_network(fdb);
            return Err(e);
        }
    };
    if let Some(m) = gateway.metrics_addr() {
        println!("metrics on http://{m}/metrics");
    }
    println!(
        "courier listening on {} (store {where_})",
        gateway.local_addr()
    );
    wait_for_stop().await?;
    println!("shutting down");
    gateway.shutdown().await;
    stop_fdb_network(fdb);
    println!("stopped");
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_stop() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// `--store sim`: `--nodes` cluster nodes in this process on one simulated FoundationDB.
async fn serve_simulated(
    args: &ServeArgs,
    tls: TlsIdentity,
    verifier_path: &std::path::Path,
) -> anyhow::Result<()> {
    use courier_store::engine::sim::{Sim, SimConfig};
    let sim = Sim::new(SimConfig {
        seed: courier_wire::time::now_ms(),
        latency: Duration::from_micros(args.sim_latency_us),
        ..SimConfig::default()
    });
    let mut gateways = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let tls = TlsIdentity {
            certs: tls.certs.clone(),
            key: tls.key.clone_key(),
            cert_path: tls.cert_path.clone(),
        };
        let mut config = node_config(args, tls, verifier_path)?;
        let node_dir = args.data_dir.join(format!("node{i}"));
        config.store_dir = node_dir.join("store");
        config.media.dir = Some(
            args.media_dir
                .clone()
                .unwrap_or_else(|| node_dir.join("media")),
        );
        config.store_engine =
            courier_gateway::StoreEngine::Custom(std::sync::Arc::new(sim.clone()));
        if args.listen.port() != 0 {
            let port = u16::try_from(usize::from(args.listen.port()) + i).map_err(|_| {
                anyhow::anyhow!(
                    "--nodes {} from port {} passes 65535",
                    args.nodes,
                    args.listen.port()
                )
            })?;
            config.listen.set_port(port);
        }
        if let Some(m) = &mut config.metrics {
            if m.port() != 0 {
                m.set_port(m.port().saturating_add(i as u16));
            }
        }
        let gateway = Gateway::start(config).await?;
        if let Some(m) = gateway.metrics_addr() {
            println!("metrics on http://{m}/metrics");
        }
        println!(
            "courier listening on {} (store sim, node {} of {}, in memory: gone when this process ends)",
            gateway.local_addr(),
            i + 1,
            args.nodes
        );
        gateways.push(gateway);
    }
    wait_for_stop().await?;
    println!("shutting down");
    for g in gateways {
        g.shutdown().await;
    }
    let st = sim.stats();
    println!(
        "simulation: {} transactions, {} commits, {} conflicts, {} round trips, largest transaction {} bytes",
        st.transactions, st.commits, st.conflicts, st.round_trips, st.largest_transaction
    );
    println!("stopped");
    Ok(())
}

/// The gateway's configuration from the flags (one node's).
fn node_config(
    args: &ServeArgs,
    tls: TlsIdentity,
    pub_path: &std::path::Path,
) -> anyhow::Result<GatewayConfig> {
    let verifier = TokenVerifier::read_file(pub_path)?;
    let mut config = GatewayConfig::new(args.listen, args.data_dir.join("store"), tls, verifier);
    config.max_frame = args.max_frame;
    config.max_body = args.max_body;
    config.max_inflight = args.max_inflight;
    config.max_connections = args.max_connections;
    config.handshakes = courier_gateway::handshakes::HandshakeLimits {
        retry_above: args.handshake_retry_above,
        per_source: args.handshakes_per_source,
    };
    config.metrics = args.metrics;
    config.media.max_upload = args.max_upload;
    config.media.release_memory = Some(release_freed_memory);
    config.store_min_free = args.store_min_free_mib << 20;
    config.media.min_free = args.upload_min_free_mib << 20;
    config.media.user_quota = Some(args.upload_quota_mib << 20).filter(|&q| q > 0);
    config.media.dir = Some(
        args.media_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("media")),
    );
    config.media.blobs = BlobStoreConfig::parse(&args.blob_store, args.s3_endpoint.clone())
        .map_err(anyhow::Error::msg)?;
    config.push.webhook_url = args.push_webhook_url.clone();
    if let Some(path) = &args.push_webhook_secret_file {
        config.push.webhook_secret = std::fs::read(path)
            .with_context(|| format!("read {}", path.display()))?
            .trim_ascii()
            .to_vec();
    }
    if args.push_max_attempts == 0 {
        bail!("--push-max-attempts must be at least 1");
    }
    config.push.coalesce = Duration::from_millis(args.push_coalesce_ms);
    config.push.retry_base = Duration::from_millis(args.push_retry_ms.max(1));
    config.push.max_attempts = args.push_max_attempts;
    config.push.include_content = args.push_include_content;
    if let (Some(team), Some(key_id), Some(key_file), Some(topic)) = (
        &args.apns_team_id,
        &args.apns_key_id,
        &args.apns_key_file,
        &args.apns_topic,
    ) {
        config.push.apns = Some(courier_gateway::push::apns::ApnsConfig {
            base_url: args.apns_url.clone(),
            team_id: team.clone(),
            key_id: key_id.clone(),
            key_pem: std::fs::read(key_file)
                .with_context(|| format!("read {}", key_file.display()))?,
            topic: topic.clone(),
        });
    }
    config.push.fcm = fcm_config(args)?;
    if let Some(n) = args.shards {
        if n == 0 {
            bail!("--shards must be at least 1");
        }
        config.shards = n;
    }
    if let Some(n) = args.partitions {
        if !(1..=courier_store::engine::partitioned::MAX_PARTITIONS).contains(&n) {
            bail!(
                "--partitions must be 1 to {}",
                courier_store::engine::partitioned::MAX_PARTITIONS
            );
        }
        config.store_partitions = Some(n);
    }
    // The store refuses an interval over its most (courier_store::MAX_COMMIT_INTERVAL).
    config.commit_interval = Duration::from_micros(args.commit_interval_us);
    // GatewayConfig::validate refuses an interval over courier_gateway::pacing's most.
    config.wake_interval = Duration::from_micros(args.shard_wake_interval_us);
    // GatewayConfig::validate refuses a delay over courier_gateway::config's most.
    config.client_ack_delay = Duration::from_millis(args.client_ack_delay_ms);
    // The simulation's one engine is shared by the nodes `serve_simulated` starts.
    if args.store != "sim" {
        config.store_engine = store_engine(args)?;
    }
    Ok(config)
}
