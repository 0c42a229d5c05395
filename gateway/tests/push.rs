//! Push notifications to offline devices, delivered to a webhook on 127.0.0.1 that records what
//! it gets: coalescing, signatures, retries with the same idempotency key, invalid tokens, and
//! jobs surviving a SIGKILL of the gateway.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestServer;
use courier_wire::frame::PushProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request the webhook got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    authorization: String,
    headers: Vec<(String, String)>,
    idempotency_key: String,
    signature: String,
    body: serde_json::Value,
    raw: Vec<u8>,
}

/// A webhook on 127.0.0.1: answers each request with the next scripted status (200 when the
/// script is used up) and body (empty when those are used up), and records it.
#[derive(Clone)]
struct Webhook {
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<Vec<u16>>>,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    async fn start_on(listener: tokio::net::TcpListener, script: Vec<u16>) -> Self {
        let hook = Self {
            hits: Arc::default(),
            script: Arc::new(Mutex::new(script)),
            bodies: Arc::default(),
        };
        let h = hook.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    loop {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        let head_end = loop {
                            let n = match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            buf.extend_from_slice(&chunk[..n]);
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                        let headers: Vec<(String, String)> = head
                            .lines()
                            .skip(1)
                            .filter_map(|l| l.split_once(": "))
                            .map(|(n, v)| (n.to_lowercase(), v.trim().to_owned()))
                            .collect();
                        let header = |name: &str| {
                            headers
                                .iter()
                                .find(|(n, _)| n == name)
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default()
                        };
                        let path = head
                            .lines()
                            .next()
                            .and_then(|l| l.split(' ').nth(1))
                            .unwrap_or_default()
                            .to_owned();
                        let len: usize = header("content-length").parse().unwrap_or(0);
                        while buf.len() < head_end + len {
                            let n = match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        let raw = buf[head_end..head_end + len].to_vec();
                        h.hits.lock().unwrap().push(Hit {
                            path,
                            authorization: header("authorization"),
                            headers: headers.clone(),
                            idempotency_key: header("idempotency-key"),
                            signature: header("x-courier-signature"),
                            body: serde_json::from_slice(&raw).unwrap_or_default(),
                            raw,
                        });
                        let status = {
                            let mut s = h.script.lock().unwrap();
                            if s.is_empty() {
                                200
                            } else {
                                s.remove(0)
                            }
                        };
                        let body = {
                            let mut b = h.bodies.lock().unwrap();
                            if b.is_empty() {
                                String::new()
                            } else {
                                b.remove(0)
                            }
                        };
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        hook
    }

    /// A server whose answers carry these bodies, in turn.
    async fn start_with_bodies(script: Vec<u16>, bodies: Vec<String>) -> (Self, String) {
        let (hook, url) = Self::start(script).await;
        *hook.bodies.lock().unwrap() = bodies;
        (hook, url)
    }

    async fn start(script: Vec<u16>) -> (Self, String) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/push", l.local_addr().unwrap());
        (Self::start_on(l, script).await, url)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= n || Instant::now() > deadline {
                return hits;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const SECRET: &[u8] = b"webhook secret";

async fn server_with(dir: &std::path::Path, url: &str) -> TestServer {
    let url = url.to_owned();
    TestServer::start_with(dir, move |c| {
        c.push.webhook_url = Some(url);
        c.push.webhook_secret = SECRET.to_vec();
        c.push.coalesce = Duration::from_millis(300);
        c.push.retry_base = Duration::from_millis(100);
        c.push.max_attempts = 3;
        c.push.poll = Duration::from_millis(20);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_get_one_signed_push_per_chat_and_repeats_share_a_key() {
    // The first delivery fails: the retry must carry the same idempotency key.
    let (hook, url) = Webhook::start(vec![503]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), &url).await;
    let (bob, _b) = server.connect("bob", 1).await;
    bob.register_push(PushProvider::Webhook, "bob-device-token")
        .await
        .unwrap();
    let err = bob
        .register_push(PushProvider::Apns, "x")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(courier_wire::ErrorCode::UNSUPPORTED),
        "not configured"
    );
    bob.close();
    server.until_connections(0, "bob is offline").await;

    let (alice, _a) = server.connect("alice", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    for i in 0..3 {
        alice.send(chat, format!("secret text {i}")).await.unwrap();
    }
    let hits = hook.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 2, "one failed delivery and its retry: {hits:?}");
    assert_eq!(hits[0].idempotency_key, hits[1].idempotency_key);
    let unique: HashSet<&str> = hits.iter().map(|h| h.idempotency_key.as_str()).collect();
    assert_eq!(unique.len(), 1, "the receiver drops the repeat by its key");
    let b = &hits[1].body;
    assert_eq!(b["user"], "bob");
    assert_eq!(b["chat_id"], chat);
    assert_eq!(b["count"], 3, "three messages, one push");
    assert_eq!(b["token"], "bob-device-token");
    assert!(b.get("body").is_none(), "no content unless enabled");
    assert!(!String::from_utf8_lossy(&hits[1].raw).contains("secret text"));
    assert_eq!(
        hits[1].signature,
        courier_gateway::push::sign(SECRET, &hits[1].raw),
        "signed with the shared secret"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.hits().len(), 2, "delivered, so no more");

    // Online users get no push.
    let (_bob, _b) = server.connect("bob", 1).await;
    alice.send(chat, "while online").await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hook.hits().len(), 2);
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_removed_and_failing_jobs_end_as_dead_letters() {
    let (hook, url) = Webhook::start(vec![410]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), &url).await;
    let (bob, _b) = server.connect("bob", 1).await;
    bob.register_push(PushProvider::Webhook, "stale")
        .await
        .unwrap();
    bob.close();
    server.until_connections(0, "bob is offline").await;
    let (alice, _a) = server.connect("alice", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    alice.send(chat, "hi").await.unwrap();
    hook.wait_for(1, Duration::from_secs(10)).await;
    until_no_tokens(&server, "bob", "a 410 removes the token").await;
    let store = server.gateway.store();

    // A webhook that keeps failing: three attempts, then a dead letter.
    let (_carol, _c) = server.connect("carol", 1).await;
    _carol
        .register_push(PushProvider::Webhook, "c")
        .await
        .unwrap();
    _carol.close();
    // Offline (only alice connected) before the message commits: else no push is due.
    server.until_connections(1, "carol is offline").await;
    *hook.script.lock().unwrap() = vec![500, 500, 500];
    let chat2 = alice.create_direct_chat("carol").await.unwrap().chat_id;
    alice.send(chat2, "hello carol").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        if let Some(d) = store.dead_push("carol", chat2).unwrap() {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "dead-lettered after the last attempt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.attempts, 3);
    assert!(dead.last_error.contains("500"), "{}", dead.last_error);
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_pushes_survive_a_sigkill_and_are_delivered_after_restart() {
    // Reserve a port for the webhook, closed until after the crash.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let url = format!("http://{hook_addr}/push");
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("push.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let args: Vec<&std::ffi::OsStr> = vec![
        "--push-webhook-url".as_ref(),
        url.as_ref(),
        "--push-coalesce-ms".as_ref(),
        "100".as_ref(),
        "--push-retry-ms".as_ref(),
        "100".as_ref(),
        "--push-webhook-secret-file".as_ref(),
        secret_file.as_os_str(),
    ];
    let (child, addr) = common::spawn_courier(dir.path(), &args);
    let trust = courier_client::Trust::File(dir.path().join("tls/cert.pem"));
    let connect = |u: &'static str| {
        let (trust, token) = (trust.clone(), common::token_from(dir.path(), u));
        async move {
            courier_client::Client::connect(addr, "localhost", &trust, &token)
                .await
                .unwrap()
        }
    };
    let (bob, _b) = connect("bob").await;
    bob.register_push(PushProvider::Webhook, "bob-token")
        .await
        .unwrap();
    bob.close();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (alice, _a) = connect("alice").await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    alice.send(chat, "one").await.unwrap();
    alice.send(chat, "two").await.unwrap();
    // The webhook is down: the job fails and waits for a retry. Now kill the gateway hard.
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::signal_and_wait(child, "-KILL").await;

    let listener = tokio::net::TcpListener::bind(hook_addr).await.unwrap();
    let hook = Webhook::start_on(listener, vec![]).await;
    let (child, _addr) = common::spawn_courier(dir.path(), &args);
    let hits = hook.wait_for(1, Duration::from_secs(15)).await;
    assert!(
        !hits.is_empty(),
        "the pending push was delivered after the restart"
    );
    let unique: HashSet<&str> = hits.iter().map(|h| h.idempotency_key.as_str()).collect();
    assert_eq!(unique.len(), 1);
    assert_eq!(hits[0].body["count"], 2, "both messages, one push");
    assert_eq!(hits[0].body["user"], "bob");
    common::signal_and_wait(child, "-TERM").await;
}

fn pem_of(pkcs8: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
    .into_bytes()
}

/// A gateway with the push provider `configure` sets up (coalescing 100 ms, retries from
/// 100 ms, polling every 20 ms), "bob" offline with `token` registered for `kind`, and "alice"
/// connected, in a direct chat with him.
async fn provider_setup(
    dir: &std::path::Path,
    kind: PushProvider,
    token: &str,
    configure: impl FnOnce(&mut courier_gateway::GatewayConfig),
) -> (
    TestServer,
    courier_client::Client,
    courier_client::Events,
    u64,
) {
    let server = TestServer::start_with(dir, move |c| {
        configure(c);
        c.push.coalesce = Duration::from_millis(100);
        c.push.retry_base = Duration::from_millis(100);
        c.push.poll = Duration::from_millis(20);
    })
    .await;
    offline_with_token(&server, "bob", kind, token).await;
    let (alice, events) = server.connect("alice", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;
    (server, alice, events, chat)
}

/// Waits (up to 5 s) until `user` has no push registration left.
async fn until_no_tokens(server: &TestServer, user: &str, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.gateway.store().push_tokens(user).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects `user`, registers its push token, and disconnects it (waiting until the gateway
/// has let the connection go: a member online when a message commits gets no push).
async fn offline_with_token(server: &TestServer, user: &str, provider: PushProvider, token: &str) {
    let before = server.connections();
    let (c, _e) = server.connect(user, 1).await;
    c.register_push(provider, token.to_owned()).await.unwrap();
    c.close();
    server
        .until_connections(before, "the user is offline")
        .await;
}

/// A JWT's header and claims, after checking its signature with `public` under `alg`.
fn verified_jwt(
    jwt: &str,
    alg: &'static dyn ring::signature::VerificationAlgorithm,
    public: &[u8],
) -> (serde_json::Value, serde_json::Value) {
    use base64::Engine as _;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "header, claims, signature: {jwt}");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let json = |part: &str| -> serde_json::Value {
        serde_json::from_slice(&b64.decode(part).unwrap()).unwrap()
    };
    ring::signature::UnparsedPublicKey::new(alg, public)
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64.decode(parts[2]).unwrap(),
        )
        .expect("signed with the expected key");
    (json(parts[0]), json(parts[1]))
}

fn header<'h>(hit: &'h Hit, name: &str) -> &'h str {
    hit.headers
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_requests_carry_a_valid_es256_provider_token_and_the_apple_format() {
    use ring::signature::{
        EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
    };
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let public = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let (hook, url) = Webhook::start(vec![200, 410]).await;
    let base = url.trim_end_matches("/push").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let key_pem = pem_of(pkcs8.as_ref());
    let (server, alice, _a, chat) =
        provider_setup(dir.path(), PushProvider::Apns, "a1b2c3", move |c| {
            c.push.apns = Some(courier_gateway::push::apns::ApnsConfig {
                base_url: base,
                team_id: "TEAM123".into(),
                key_id: "KEY456".into(),
                key_pem,
                topic: "com.example.courier".into(),
            });
        })
        .await;
    alice.send(chat, "hello").await.unwrap();
    let hits = hook.wait_for(1, Duration::from_secs(10)).await;
    let h = &hits[0];
    assert_eq!(h.path, "/3/device/a1b2c3");
    assert_eq!(header(h, "apns-topic"), "com.example.courier");
    assert_eq!(header(h, "apns-push-type"), "alert");
    assert_eq!(
        header(h, "apns-id").len(),
        36,
        "a UUID from the idempotency key"
    );
    assert_eq!(
        h.body["aps"]["alert"]["body"], "New message",
        "no content by default"
    );
    assert_eq!(h.body["courier"]["chat_id"], chat);
    let jwt = h
        .authorization
        .strip_prefix("bearer ")
        .expect("a bearer provider token");
    let (head, claims) = verified_jwt(jwt, &ECDSA_P256_SHA256_FIXED, &public);
    assert_eq!(
        (head["alg"].as_str(), head["kid"].as_str()),
        (Some("ES256"), Some("KEY456"))
    );
    assert_eq!(claims["iss"], "TEAM123");

    // Apple says the token is gone: the registration goes.
    alice.send(chat, "again").await.unwrap();
    hook.wait_for(2, Duration::from_secs(10)).await;
    until_no_tokens(&server, "bob", "410 removes the APNs token").await;
    server.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_requests_use_the_http_v1_format_and_a_bearer_token() {
    let (hook, url) = Webhook::start(vec![200, 404]).await;
    let base = url.trim_end_matches("/push").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("fcm.token");
    std::fs::write(&token_file, "ya29.test-token\n").unwrap();
    let (server, alice, _a, chat) = provider_setup(
        dir.path(),
        PushProvider::Fcm,
        "fcm-device-token",
        move |c| {
            c.push.fcm = Some(courier_gateway::push::fcm::FcmConfig {
                base_url: base,
                project_id: "courier-proj".into(),
                auth: courier_gateway::push::fcm::FcmAuth::AccessTokenFile(token_file),
            });
        },
    )
    .await;
    alice.send(chat, "one").await.unwrap();
    alice.send(chat, "two").await.unwrap();
    let hits = hook.wait_for(1, Duration::from_secs(10)).await;
    let h = &hits[0];
    assert_eq!(h.path, "/v1/projects/courier-proj/messages:send");
    assert_eq!(h.authorization, "Bearer ya29.test-token");
    let m = &h.body["message"];
    assert_eq!(m["token"], "fcm-device-token");
    assert_eq!(m["data"]["count"], "2", "FCM data values are strings");
    assert_eq!(m["notification"]["body"], "2 new messages");
    assert_eq!(m["android"]["collapse_key"], format!("chat-{chat}"));

    alice.send(chat, "three").await.unwrap();
    hook.wait_for(2, Duration::from_secs(10)).await;
    until_no_tokens(&server, "bob", "404 UNREGISTERED removes the FCM token").await;
    server.gateway.shutdown().await;
}

/// A test-only RSA key for a made-up service account.
const TEST_ACCOUNT_KEY: &str = include_str!("data/fcm-test-service-account.key.pem");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_access_tokens_are_exchanged_for_signed_assertions_and_renewed_before_they_expire() {
    use courier_gateway::push::fcm::{FcmAuth, FcmConfig};
    use courier_gateway::push::oauth::{ServiceAccount, FCM_SCOPE};
    use ring::signature::{RsaKeyPair, RSA_PKCS1_2048_8192_SHA256};

    let answer = |token: &str, expires_in: u64| {
        serde_json::json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"})
            .to_string()
    };
    // The first token lives 2 s (renewed after 1 s); FCM refuses the second (401): the third
    // is exchanged for the retry.
    let (oauth, token_url) = Webhook::start_with_bodies(
        vec![200, 200, 200],
        vec![
            answer("tok-1", 2),
            answer("tok-2", 3600),
            answer("tok-3", 3600),
        ],
    )
    .await;
    let (fcm, url) = Webhook::start(vec![200, 401, 200]).await;
    let base = url.trim_end_matches("/push").to_owned();
    let key_json = serde_json::json!({
        "type": "service_account",
        "project_id": "courier-proj",
        "private_key_id": "key-1",
        "private_key": TEST_ACCOUNT_KEY,
        "client_email": "push@courier-proj.iam.gserviceaccount.com",
        "token_uri": token_url,
    });
    let account = ServiceAccount::from_json(key_json.to_string().as_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, alice, _a, chat) = provider_setup(
        dir.path(),
        PushProvider::Fcm,
        "fcm-device-token",
        move |c| {
            c.push.fcm = Some(FcmConfig {
                base_url: base,
                project_id: "courier-proj".into(),
                auth: FcmAuth::ServiceAccount(account),
            });
        },
    )
    .await;

    alice.send(chat, "one").await.unwrap();
    let hits = fcm.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits[0].authorization, "Bearer tok-1");
    // The exchange: a form with the JWT-bearer grant and an RS256 assertion from the account.
    let exchanges = oauth.hits();
    assert_eq!(exchanges.len(), 1, "one exchange for the first push");
    let form = String::from_utf8(exchanges[0].raw.clone()).unwrap();
    let assertion = form
        .strip_prefix("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=")
        .expect("the JWT-bearer grant");
    let der = rustls_pemfile::private_key(&mut TEST_ACCOUNT_KEY.as_bytes())
        .unwrap()
        .unwrap();
    let public = RsaKeyPair::from_pkcs8(der.secret_der())
        .unwrap()
        .public()
        .as_ref()
        .to_vec();
    let (head, claims) = verified_jwt(assertion, &RSA_PKCS1_2048_8192_SHA256, &public);
    assert_eq!(
        (head["alg"].as_str(), head["kid"].as_str()),
        (Some("RS256"), Some("key-1"))
    );
    assert_eq!(claims["iss"], "push@courier-proj.iam.gserviceaccount.com");
    assert_eq!(claims["scope"], FCM_SCOPE);
    assert_eq!(claims["aud"], token_url.as_str());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );

    // Past half of the first token's life: a new one before the next push.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    alice.send(chat, "two").await.unwrap();
    let hits = fcm.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 3, "the refused push was retried");
    assert_eq!(
        hits[1].authorization, "Bearer tok-2",
        "renewed before it expired"
    );
    assert_eq!(
        hits[2].authorization, "Bearer tok-3",
        "a refused token is not used again"
    );
    assert_eq!(oauth.hits().len(), 3);
    server.gateway.shutdown().await;
}
