//! The APNs provider: Apple's HTTP/2 API (`POST /3/device/<token>`) with an ES256 provider token
//! (a JWT signed with the team's `.p8` key, reused for 50 minutes as Apple asks).

use std::time::Duration;

use courier_store::PushJob;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::Outcome;
use crate::util::Cached;

/// APNs settings.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// `https://api.push.apple.com` (production), `https://api.sandbox.push.apple.com`, or a
    /// test server.
    pub base_url: String,
    /// The Apple developer team id (the token's issuer).
    pub team_id: String,
    /// The signing key's id.
    pub key_id: String,
    /// The `.p8` signing key (PEM, PKCS#8, P-256).
    pub key_pem: Vec<u8>,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
}

/// How long a provider token is reused.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

/// The APNs client state: the signing key and the current provider token.
pub(crate) struct Apns {
    config: ApnsConfig,
    key: EcdsaKeyPair,
    token: Cached,
}

impl Apns {
    pub(crate) fn new(config: ApnsConfig) -> anyhow::Result<Self> {
        let der = rustls_pemfile::private_key(&mut &config.key_pem[..])?
            .ok_or_else(|| anyhow::anyhow!("no private key in the APNs key file"))?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| anyhow::anyhow!("APNs key is not a P-256 PKCS#8 key: {e}"))?;
        Ok(Self {
            config,
            key,
            token: Cached::new(TOKEN_LIFETIME),
        })
    }

    /// The provider token (a fresh one every 50 minutes).
    pub(crate) fn provider_token(&self) -> Result<String, String> {
        self.token.get(|| {
            let iat = courier_wire::time::now_secs();
            let header = serde_json::json!({"alg": "ES256", "kid": self.config.key_id});
            let claims = serde_json::json!({"iss": self.config.team_id, "iat": iat});
            super::jwt(&header, &claims, |input| {
                self.key
                    .sign(&SystemRandom::new(), input)
                    .map(|sig| sig.as_ref().to_vec())
                    .map_err(|_| "APNs: ECDSA signing failed".to_owned())
            })
        })
    }

    /// Sends `job` to one device.
    pub(crate) async fn send(
        &self,
        http: &reqwest::Client,
        job: &PushJob,
        device_token: &[u8],
        include_content: bool,
    ) -> Outcome {
        let token = match self.provider_token() {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e),
        };
        let device = String::from_utf8_lossy(device_token);
        let url = format!(
            "{}/3/device/{device}",
            self.config.base_url.trim_end_matches('/')
        );
        let text = super::alert_text(job, include_content);
        let body = serde_json::json!({
            "aps": {
                "alert": {"title": job.sender, "body": text},
                "thread-id": format!("chat-{}", job.chat_id),
            },
            "courier": {
                "chat_id": job.chat_id,
                "first_seq": job.first_seq,
                "last_seq": job.last_seq,
                "count": job.count,
                "idempotency_key": job.idempotency_key(),
            },
        });
        let sent = http
            .post(url)
            .header("authorization", format!("bearer {token}"))
            .header("apns-topic", &self.config.topic)
            .header("apns-push-type", "alert")
            .header("apns-id", super::uuid_of(&job.idempotency_key()))
            .header("apns-collapse-id", format!("chat-{}", job.chat_id))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Sent,
            Ok(r) => {
                let status = r.status().as_u16();
                let reason = r
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["reason"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if status == 410 || matches!(reason.as_str(), "BadDeviceToken" | "Unregistered") {
                    Outcome::TokenInvalid
                } else {
                    Outcome::Failed(format!("APNs answered {status} {reason}"))
                }
            }
            Err(e) => Outcome::Failed(format!("APNs: {e}")),
        }
    }
}
