//! The FCM provider: Firebase Cloud Messaging's HTTP v1 API
//! (`POST /v1/projects/<project>/messages:send`) with an OAuth 2 bearer token, read from a file
//! that the operator's credential tooling keeps fresh (re-read every minute).

use std::path::PathBuf;
use std::time::Duration;

use courier_store::PushJob;

use super::Outcome;
use crate::util::Cached;

/// FCM settings.
#[derive(Debug, Clone)]
pub struct FcmConfig {
    /// `https://fcm.googleapis.com`, or a test server.
    pub base_url: String,
    /// The Firebase project id.
    pub project_id: String,
    /// A file holding a current OAuth 2 access token for the project's service account.
    pub access_token_file: PathBuf,
}

/// How long a token read from the file is used before reading the file again.
const TOKEN_REREAD: Duration = Duration::from_secs(60);

pub(crate) struct Fcm {
    config: FcmConfig,
    token: Cached,
}

impl Fcm {
    pub(crate) fn new(config: FcmConfig) -> Self {
        Self {
            config,
            token: Cached::new(TOKEN_REREAD),
        }
    }

    fn access_token(&self) -> Result<String, String> {
        self.token.get(|| {
            std::fs::read_to_string(&self.config.access_token_file)
                .map(|t| t.trim().to_owned())
                .map_err(|e| format!("FCM token file: {e}"))
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
        let token = match self.access_token() {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e),
        };
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.config.base_url.trim_end_matches('/'),
            self.config.project_id
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
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Sent,
            Ok(r) if r.status().as_u16() == 404 => Outcome::TokenInvalid, // UNREGISTERED
            Ok(r) => Outcome::Failed(format!("FCM answered {}", r.status())),
            Err(e) => Outcome::Failed(format!("FCM: {e}")),
        }
    }
}
