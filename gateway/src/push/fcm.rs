//! The FCM provider: Firebase Cloud Messaging's HTTP v1 API
//! (`POST /v1/projects/<project>/messages:send`) with an OAuth 2 bearer token, from the
//! project's service account ([`oauth`](super::oauth): a signed JWT exchanged for an access
//! token, exchanged again before it expires) or, where other tooling keeps a token fresh, from a
//! file (re-read every minute).

use std::path::PathBuf;
use std::time::Duration;

use courier_store::PushJob;

use super::oauth::{ServiceAccount, TokenSource, FCM_SCOPE};
use super::Outcome;
use crate::util::Cached;

/// FCM settings.
#[derive(Debug, Clone)]
pub struct FcmConfig {
    /// `https://fcm.googleapis.com`, or a test server.
    pub base_url: String,
    /// The Firebase project id.
    pub project_id: String,
    /// Where access tokens come from.
    pub auth: FcmAuth,
}

/// Where FCM's OAuth 2 access tokens come from.
#[derive(Debug, Clone)]
pub enum FcmAuth {
    /// The project's service account: tokens are exchanged for signed assertions.
    ServiceAccount(ServiceAccount),
    /// A file holding a current access token, kept fresh by other tooling.
    AccessTokenFile(PathBuf),
}

/// How long a token read from the file is used before reading the file again.
const TOKEN_REREAD: Duration = Duration::from_secs(60);

enum Tokens {
    Exchanged(TokenSource),
    File { path: PathBuf, cached: Cached },
}

pub(crate) struct Fcm {
    base_url: String,
    project_id: String,
    tokens: Tokens,
}

impl Fcm {
    pub(crate) fn new(config: FcmConfig) -> Self {
        let tokens = match config.auth {
            FcmAuth::ServiceAccount(a) => Tokens::Exchanged(TokenSource::new(a, FCM_SCOPE)),
            FcmAuth::AccessTokenFile(path) => Tokens::File {
                path,
                cached: Cached::new(TOKEN_REREAD),
            },
        };
        Self {
            base_url: config.base_url,
            project_id: config.project_id,
            tokens,
        }
    }

    async fn access_token(&self, http: &reqwest::Client) -> Result<String, String> {
        match &self.tokens {
            Tokens::Exchanged(source) => source.token(http).await,
            Tokens::File { path, cached } => cached.get(|| {
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| format!("FCM token file: {e}"))
            }),
        }
    }

    /// Sends `job` to one device.
    pub(crate) async fn send(
        &self,
        http: &reqwest::Client,
        job: &PushJob,
        device_token: &[u8],
        include_content: bool,
    ) -> Outcome {
        let token = match self.access_token(http).await {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e),
        };
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.base_url.trim_end_matches('/'),
            self.project_id
        );
        let text = super::alert_text(job, include_content);
        // FCM data values are strings.
        let body = serde_json::json!({
            "message": {
                "token": String::from_utf8_lossy(device_token),
                "notification": {"title": job.sender, "body": text},
                "data": {
                    "chat_id": job.chat_id.to_string(),
                    "first_seq": job.first_seq.to_string(),
                    "last_seq": job.last_seq.to_string(),
                    "count": job.count.to_string(),
                    "idempotency_key": job.idempotency_key(),
                },
                "android": {"collapse_key": format!("chat-{}", job.chat_id)},
            }
        });
        let sent = http
            .post(url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Sent,
            Ok(r) if r.status().as_u16() == 404 => Outcome::TokenInvalid, // UNREGISTERED
            Ok(r) if r.status().as_u16() == 401 => {
                // The access token was refused (revoked, or expired early): exchange a new
                // one for the retry.
                if let Tokens::Exchanged(source) = &self.tokens {
                    source.invalidate(&token).await;
                }
                Outcome::Failed("FCM refused the access token (401)".into())
            }
            Ok(r) => Outcome::Failed(format!("FCM answered {}", r.status())),
            Err(e) => Outcome::Failed(format!("FCM: {e}")),
        }
    }
}
