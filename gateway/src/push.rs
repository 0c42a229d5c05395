//! The push worker: delivers the store's push jobs (see `courier_store::push`) to the devices'
//! providers, with retries and backoff, dead letters after the last attempt, and removal of
//! tokens the provider reports invalid.
//!
//! Provider implemented: the webhook (an HTTPS or HTTP POST of JSON to the operator's URL, the
//! body signed with HMAC-SHA256 under a shared secret: header `X-Courier-Signature:
//! sha256=<hex>`), carrying an `Idempotency-Key` that stays the same when a job is delivered
//! again (delivery is at least once). No message content unless the operator enables it.

use std::sync::Arc;
use std::time::Duration;

use courier_store::{OnlineUsers, PushJob, PushResult, Store};
use courier_wire::frame::PushProvider;
use ring::hmac;
use tokio::sync::watch;

use crate::registry::Registry;

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
        }
    }
}

impl PushConfig {
    /// Whether `provider` can be delivered to.
    pub fn supports(&self, provider: PushProvider) -> bool {
        matches!(provider, PushProvider::Webhook) && self.webhook_url.is_some()
    }

    /// Whether any provider is configured (jobs are written only then).
    pub fn enabled(&self) -> bool {
        self.webhook_url.is_some()
    }
}

impl OnlineUsers for Registry {
    fn is_online(&self, user: &str) -> bool {
        Self::is_online(self, user)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// The signature header value of a webhook body.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex(hmac::sign(&key, body).as_ref()))
}

struct Worker {
    store: Store,
    config: PushConfig,
    http: reqwest::Client,
}

impl Worker {
    /// Delivers one job to every registered device of its user.
    async fn deliver(&self, job: &PushJob) -> PushResult {
        let tokens = match self.store.push_tokens(&job.user) {
            Ok(t) => t,
            Err(e) => return self.failed(job, format!("store: {e}")),
        };
        let mut failure = None;
        for (device, provider, token) in tokens {
            if !self.config.supports(provider) {
                continue;
            }
            let Some(url) = &self.config.webhook_url else {
                continue;
            };
            let body = webhook_body(job, device, &token, self.config.include_content);
            let sent = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", job.idempotency_key())
                .header(
                    "x-courier-signature",
                    sign(&self.config.webhook_secret, body.as_bytes()),
                )
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {}
                Ok(r) if matches!(r.status().as_u16(), 404 | 410) => {
                    // The provider says the token is no more: forget the registration.
                    let _ = self
                        .store
                        .register_push(&job.user, device, provider, bytes::Bytes::new())
                        .await;
                    tracing::info!(user = %job.user, device, "push token invalid; removed");
                }
                Ok(r) => failure = Some(format!("webhook answered {}", r.status())),
                Err(e) => failure = Some(format!("webhook: {e}")),
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

/// Runs the push worker until shutdown.
pub(crate) async fn worker(store: Store, config: PushConfig, mut shutdown: watch::Receiver<bool>) {
    let http = match reqwest::Client::builder()
        .timeout(config.request_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("push worker cannot start its HTTP client: {e}");
            return;
        }
    };
    let w = Arc::new(Worker {
        store,
        config,
        http,
    });
    loop {
        tokio::select! {
            () = tokio::time::sleep(w.config.poll) => {}
            _ = shutdown.changed() => return,
        }
        let jobs = match w.store.due_pushes(w.store.now_ms(), 256) {
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
}
