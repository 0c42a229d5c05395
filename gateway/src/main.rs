//! `courier`: run the gateway, manage issuer keys and tokens, and chat from a terminal.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use courier_client::{Client, Event, Trust};
use courier_gateway::auth::{Claims, IssuerKey, TokenVerifier};
use courier_gateway::tls::TlsIdentity;
use courier_gateway::{Gateway, GatewayConfig};
use courier_wire::frame::{Direction, Message, MessageKind};
use tokio::io::AsyncBufReadExt;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "courier", version, about = "Courier messaging gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on the embedded store.
    Serve(ServeArgs),
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
    Chat(ChatArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Data directory (store, TLS certificate, issuer key).
    #[arg(long, default_value = "./courier-data")]
    data_dir: PathBuf,
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
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Shards (threads with their own QUIC endpoint on the port); default: number of cores.
    #[arg(long)]
    shards: Option<usize>,
}

#[derive(clap::Args)]
struct ChatArgs {
    /// The user to chat with.
    #[arg(long)]
    to: String,
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: SocketAddr,
    /// Name in the server's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Certificate file to trust (the server's own, or a CA).
    #[arg(long, default_value = "./courier-data/tls/cert.pem")]
    ca: PathBuf,
    /// Accept any server certificate (insecure: for throwaway tests only).
    #[arg(long)]
    insecure: bool,
    /// A token (from `courier token`).
    #[arg(long, conflicts_with = "as_user")]
    token: Option<String>,
    /// Mint a token for this user with the local issuer key (development convenience).
    #[arg(long = "as")]
    as_user: Option<String>,
    /// Device id when minting with --as.
    #[arg(long, default_value_t = 1)]
    device: u32,
    /// Issuer private key used with --as.
    #[arg(long, default_value = "./courier-data/issuer.key")]
    key: PathBuf,
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    let result = match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Keygen { out } => keygen(&out),
        Command::Token {
            key,
            user,
            device,
            ttl,
        } => token(&key, user, device, ttl),
        Command::Chat(args) => chat(args).await,
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
            expires_at: now_secs() + ttl.as_secs()
        })
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
    let verifier = TokenVerifier::read_file(&pub_path)?;
    let mut config = GatewayConfig::new(args.listen, args.data_dir.join("store"), tls, verifier);
    config.max_frame = args.max_frame;
    config.max_body = args.max_body;
    config.max_inflight = args.max_inflight;
    config.max_connections = args.max_connections;
    config.metrics = args.metrics;
    if let Some(n) = args.shards {
        if n == 0 {
            bail!("--shards must be at least 1");
        }
        config.shards = n;
    }
    let gateway = Gateway::start(config).await?;
    if let Some(m) = gateway.metrics_addr() {
        println!("metrics on http://{m}/metrics");
    }
    println!(
        "courier listening on {} (store {})",
        gateway.local_addr(),
        args.data_dir.join("store").display()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("shutting down");
    gateway.shutdown().await;
    println!("stopped");
    Ok(())
}

fn print_message(m: &Message) {
    let text = String::from_utf8_lossy(&m.body);
    let kind = match m.kind {
        MessageKind::Text => "",
        MessageKind::Media => "[media] ",
        MessageKind::System => "[system] ",
    };
    println!(
        "[chat {} #{}] {}: {kind}{text}",
        m.chat_id, m.seq, m.sender_user
    );
}

async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let token = match (&args.token, &args.as_user) {
        (Some(t), _) => t.clone(),
        (None, Some(user)) => {
            if !courier_wire::valid_user_id(user) {
                bail!("invalid user id {user:?}");
            }
            let key = IssuerKey::read_file(&args.key).context("--as needs the issuer key")?;
            key.mint(&Claims {
                user: user.clone(),
                device: args.device,
                expires_at: now_secs() + 86_400,
            })
        }
        (None, None) => {
            bail!("give --token TOKEN, or --as USER to mint one with the local issuer key")
        }
    };
    let trust = if args.insecure {
        Trust::InsecureAcceptAnyCertificate
    } else {
        Trust::File(args.ca.clone())
    };
    let (client, mut events) =
        Client::connect(args.server, &args.server_name, &trust, &token).await?;
    let me = client.welcome().user.clone();
    let chat = client.create_direct_chat(&args.to).await?;
    println!(
        "connected as {me}; chat {} with {} (type a line and press enter; Ctrl-D quits)",
        chat.chat_id, args.to
    );
    let recent = client
        .history(chat.chat_id, Direction::Before, u64::MAX, 20)
        .await?;
    for m in recent.messages.iter().rev() {
        print_message(m);
    }

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => match client.send(chat.chat_id, line.into_bytes()).await {
                    Ok(ok) => println!("[chat {} #{}] sent", ok.chat_id, ok.seq),
                    Err(e) => eprintln!("send failed: {e}"),
                },
                None => break,
            },
            event = events.recv() => match event {
                Some(Event::Message(m)) => print_message(&m),
                Some(Event::GoAway(g)) => { println!("server going away: {}", g.reason); }
                Some(Event::Closed(reason)) => bail!("connection closed: {reason}"),
                None => bail!("connection closed: {}", client.close_reason().unwrap_or_default()),
                Some(Event::Frame(_)) => {}
            },
        }
    }
    client.close();
    Ok(())
}
