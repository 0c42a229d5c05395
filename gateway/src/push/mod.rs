//! The push worker: delivers the store's push jobs (see `courier_store::push`) to the devices'
//! providers, with retries and backoff, dead letters after the last attempt, and removal of
//! tokens the provider reports invalid.
//!
//! Providers: the webhook (a POST of JSON to the operator's URL, the body signed with
//! HMAC-SHA256 under a shared secret: header `X-Courier-Signature: sha256=<hex>`), [`apns`]
//! (Apple, HTTP/2 with an ES256 provider token) and [`fcm`] (Firebase HTTP v1). Each request
//! carries the job's idempotency key (webhook `Idempotency-Key`, APNs `apns-id`, FCM data), the
//! same when a job is delivered again (delivery is at least once). No message content unless
//! the operator enables it. Base URLs are configurable (tests point them at 127.0.0.1).

pub mod apns;
pub mod fcm;
pub mod oauth;

use std::time::Duration;

use courier_store::{OnlineUsers, PushJob, PushResult, Store};
use courier_wire::frame::PushProvider;
use ring::hmac;
use tokio::sync::watch;

use crate::registry::Registry;
use crate::util::hex;

/// Push settings.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Where webhook pushes are POSTed; None: no webhook provider (registrations refused, no
    /// jobs written).
    pub webhook_url: Option<String>,
    /// The HMAC-SHA256 key the webhook body is signed with.
    pub webhook_secret: Vec<u8>,
    /// Messages of one chat within this interval make one push.
    pub coalesce: Duration,
    /// First retry delay; doubled on each failure up to `retry_max`.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Failed attempts after which a job goes to the dead letters.
    pub max_attempts: u32,
    /// Put the message text (of the last coalesced message) in the push.
    pub include_content: bool,
    /// How often the worker looks for due jobs.
    pub poll: Duration,
    /// Timeout of one provider request.
    pub request_timeout: Duration,
    /// Apple Push Notification service; None: APNs registrations are refused.
    pub apns: Option<apns::ApnsConfig>,
    /// Firebase Cloud Messaging; None: FCM registrations are refused.
    pub fcm: Option<fcm::FcmConfig>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: Vec::new(),
            coalesce: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
            max_attempts: 10,
            include_content: false,
            poll: Duration::from_millis(100),
            request_timeout: Duration::from_secs(10),
            apns: None,
            fcm: None,
        }
    }
}

impl PushConfig {
    /// Whether `provider` can be delivered to.
    pub fn supports(&self, provider: PushProvider) -> bool {
        match provider {
            PushProvider::Webhook => self.webhook_url.is_some(),
            PushProvider::Apns => self.apns.is_some(),
            PushProvider::Fcm => self.fcm.is_some(),
        }
    }

    /// Whether any provider is configured (jobs are written only then).
    pub fn enabled(&self) -> bool {
        self.webhook_url.is_some() || self.apns.is_some() || self.fcm.is_some()
    }
}

/// How one provider request ended.
pub(crate) enum Outcome {
    /// Accepted.
    Sent,
    /// The provider says the token is no more: the registration is removed.
    TokenInvalid,
    /// Try again later.
    Failed(String),
}

/// The text of a push: the last message's when content is enabled, else how many.
pub(crate) fn alert_text(job: &PushJob, include_content: bool) -> String {
    if include_content {
        String::from_utf8_lossy(&job.body).into_owned()
    } else if job.count == 1 {
        "New message".to_owned()
    } else {
        format!("{} new messages", job.count)
    }
}

/// A UUID (8-4-4-4-12 hex) derived from `key`: the same key, the same id.
pub(crate) fn uuid_of(key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let h = hex(&d.as_ref()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl OnlineUsers for Registry {
    fn is_online(&self, user: &str) -> bool {
        Self::is_online(self, user)
    }
}

/// The webhook's JSON body for one device.
fn webhook_body(job: &PushJob, device: u32, token: &[u8], include_content: bool) -> String {
    let mut v = serde_json::json!({
        "idempotency_key": job.idempotency_key(),
        "user": job.user,
        "device": device,
        "token": String::from_utf8_lossy(token),
        "chat_id": job.chat_id,
        "first_seq": job.first_seq,
        "last_seq": job.last_seq,
        "count": job.count,
        "sender": job.sender,
    });
    if include_content {
        v["body"] = serde_json::Value::String(String::from_utf8_lossy(&job.body).into_owned());
    }
    v.to_string()
}

/// A signed JWT: `base64url(header).base64url(claims).base64url(sign(those two))`.
pub(crate) fn jwt(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// The signature header value of a webhook body.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex(hmac::sign(&key, body).as_ref()))
}

/// The push worker's state (see [`worker`]).
pub(crate) struct Worker {
    store: Store,
    config: PushConfig,
    http: reqwest::Client,
    apns: Option<apns::Apns>,
    fcm: Option<fcm::Fcm>,
}

impl Worker {
    async fn webhook(&self, url: &str, job: &PushJob, device: u32, token: &[u8]) -> Outcome {
        let body = webhook_body(job, device, token, self.config.include_content);
        let signature = sign(&self.config.webhook_secret, body.as_bytes());
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", job.idempotency_key())
            .header("x-courier-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Sent,
            Ok(r) if matches!(r.status().as_u16(), 404 | 410) => Outcome::TokenInvalid,
            Ok(r) => Outcome::Failed(format!("webhook answered {}", r.status())),
            Err(e) => Outcome::Failed(format!("webhook: {e}")),
        }
    }

    /// Delivers one job to every registered device of its user.
    async fn deliver(&self, job: &PushJob) -> PushResult {
        let user = job.user.clone();
        let tokens = match self.store.reading(move |s| s.push_tokens(&user)).await {
            Ok(t) => t,
            Err(e) => return self.failed(job, format!("store: {e}")),
        };
        let content = self.config.include_content;
        let mut failure = None;
        for (device, provider, token) in tokens {
            let outcome = match provider {
                PushProvider::Webhook => match &self.config.webhook_url {
                    Some(url) => self.webhook(url, job, device, &token).await,
                    None => continue,
                },
                PushProvider::Apns => match &self.apns {
                    Some(a) => a.send(&self.http, job, &token, content).await,
                    None => continue,
                },
                PushProvider::Fcm => match &self.fcm {
                    Some(f) => f.send(&self.http, job, &token, content).await,
                    None => continue,
                },
            };
            match outcome {
                Outcome::Sent => {}
                Outcome::TokenInvalid => {
                    let _ = self
                        .store
                        .register_push(&job.user, device, provider, bytes::Bytes::new())
                        .await;
                    tracing::info!(user = %job.user, device, "push token invalid; removed");
                }
                Outcome::Failed(e) => failure = Some(e),
            }
        }
        match failure {
            None => PushResult::Delivered,
            Some(error) => self.failed(job, error),
        }
    }

    fn failed(&self, job: &PushJob, error: String) -> PushResult {
        let factor = 1u32 << job.attempts.min(20);
        let delay = self
            .config
            .retry_base
            .saturating_mul(factor)
            .min(self.config.retry_max);
        PushResult::Failed {
            error,
            retry_at_ms: self.store.now_ms() + delay.as_millis() as u64,
            max_attempts: self.config.max_attempts,
        }
    }
}

/// Makes the push worker: its HTTP client and providers (a bad APNs key is an error here,
/// at start, not a worker that never runs).
pub(crate) fn worker(store: Store, config: PushConfig) -> anyhow::Result<Worker> {
    use anyhow::Context as _;
    let http = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .build()
        .context("push: HTTP client")?;
    let apns = config
        .apns
        .clone()
        .map(apns::Apns::new)
        .transpose()
        .context("push: APNs")?;
    let fcm = config.fcm.clone().map(fcm::Fcm::new);
    Ok(Worker {
        store,
        config,
        http,
        apns,
        fcm,
    })
}

/// Runs the push worker until shutdown.
pub(crate) async fn run(w: Worker, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(w.config.poll) => {}
            _ = shutdown.changed() => return,
        }
        // In a cluster, one node delivers pushes: the one holding the push work lease.
        if !w.store.owns(courier_store::Work::Push) {
            continue;
        }
        let now = w.store.now_ms();
        let jobs = match w.store.reading(move |s| s.due_pushes(now, 256)).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!("push queue: {e}");
                continue;
            }
        };
        for job in jobs {
            let result = w.deliver(&job).await;
            if let PushResult::Failed { error, .. } = &result {
                tracing::debug!(user = %job.user, chat = job.chat_id, "push failed: {error}");
            }
            if let Err(e) = w.store.push_done(job, result).await {
                tracing::warn!("push bookkeeping: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn a_bad_apns_key_stops_the_start_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(courier_store::StoreConfig::new(dir.path().join("s"))).unwrap();
        let config = PushConfig {
            apns: Some(apns::ApnsConfig {
                base_url: "http://127.0.0.1:9".into(),
                team_id: "T".into(),
                key_id: "K".into(),
                key_pem: b"not a key".to_vec(),
                topic: "t".into(),
            }),
            ..PushConfig::default()
        };
        let Err(err) = worker(store, config) else {
            panic!("a worker with an unusable key")
        };
        assert!(format!("{err:#}").contains("APNs"), "{err:#}");
    }
}
