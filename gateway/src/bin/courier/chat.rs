//! `courier chat`: a terminal client over the SDK (the one part of the gateway package that
//! uses it; cargo feature `chat`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use courier_auth::{Claims, IssuerKey};
use courier_client::connection::new_client_msg_id;
use courier_client::{Client, Event, Trust, UploadOptions, UploadState};
use courier_gateway::util::hex;
use courier_wire::frame::{Attachment, Direction, Message, MessageKind};
use tokio::io::AsyncBufReadExt;

#[derive(clap::Args)]
pub(crate) struct ChatArgs {
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

/// A media id from its 32 hex digits.
fn parse_media_id(text: &str) -> anyhow::Result<[u8; 16]> {
    let text = text.trim();
    if text.len() != 32 {
        bail!("a media id is 32 hex digits, got {text:?}");
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("{text:?} is not hex"))?;
    }
    Ok(id)
}

fn describe(a: &Attachment) -> String {
    let dims = if a.width > 0 {
        format!(" {}x{}", a.width, a.height)
    } else {
        String::new()
    };
    let thumb = a
        .thumbnail_id
        .map(|t| format!(" thumbnail={}", hex(&t)))
        .unwrap_or_default();
    format!(
        "[file {} {} bytes{dims} id={}{thumb}]",
        a.content_type,
        a.size,
        hex(&a.media_id)
    )
}

fn print_message(m: &Message) {
    let text = String::from_utf8_lossy(&m.body);
    let kind = match m.kind {
        MessageKind::Text => "",
        MessageKind::Media => "[media] ",
        MessageKind::System => "[system] ",
    };
    let files: Vec<String> = m.attachments.iter().map(describe).collect();
    println!(
        "[chat {} #{}] {}: {kind}{text}{}{}",
        m.chat_id,
        m.seq,
        m.sender_user,
        if files.is_empty() { "" } else { " " },
        files.join(" ")
    );
}

/// `/send-file PATH [caption]`: uploads the file and sends it as a media message.
async fn send_file(client: &Client, chat: u64, rest: &str) -> anyhow::Result<()> {
    let (path, caption) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
    if path.is_empty() {
        bail!("usage: /send-file PATH [caption]");
    }
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("read {path}"))?;
    let mut state = UploadState::default();
    let media = client
        .upload(bytes.into(), UploadOptions::default(), &mut state)
        .await?;
    let ok = client
        .send_message(
            chat,
            new_client_msg_id(),
            MessageKind::Media,
            caption.as_bytes().to_vec().into(),
            vec![media.clone()],
        )
        .await?;
    println!(
        "[chat {} #{}] sent {path} {}",
        ok.chat_id,
        ok.seq,
        describe(&media)
    );
    Ok(())
}

/// `/download ID [PATH]`: downloads media into PATH (default: the id, in this directory).
async fn download(client: &Client, rest: &str) -> anyhow::Result<()> {
    let mut words = rest.split_whitespace();
    let id = parse_media_id(words.next().unwrap_or_default())?;
    let path = words.next().map_or_else(|| hex(&id), str::to_owned);
    let (media, bytes) = client.download(id, 0, 0).await?;
    tokio::fs::write(&path, &bytes)
        .await
        .with_context(|| format!("write {path}"))?;
    println!("saved {} to {path}", describe(&media));
    Ok(())
}

pub(crate) async fn chat(args: ChatArgs) -> anyhow::Result<()> {
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
                expires_at: courier_wire::time::now_secs() + 86_400,
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
        "connected as {me}; chat {} with {} (type a line and press enter; /send-file PATH [caption]; /download ID [PATH]; Ctrl-D quits)",
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
                Some(line) if line.starts_with("/send-file") => {
                    if let Err(e) = send_file(&client, chat.chat_id, &line["/send-file".len()..]).await {
                        eprintln!("send-file failed: {e:#}");
                    }
                }
                Some(line) if line.starts_with("/download") => {
                    if let Err(e) = download(&client, &line["/download".len()..]).await {
                        eprintln!("download failed: {e:#}");
                    }
                }
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
