//! Google's OAuth 2 service-account flow, for FCM: a JWT signed with the account's RSA key
//! (RS256) is exchanged at the account's `token_uri` for an access token
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, RFC 7523), which is reused until
//! shortly before it expires and then exchanged again.
//!
//! One exchange at a time (callers wait for it and share its token); a failed exchange is not
//! tried again for [`RETRY_EXCHANGE_AFTER`], so an unreachable token endpoint costs one request
//! per interval, not one per push; a token the API refuses (401) is dropped
//! ([`TokenSource::invalidate`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

/// The scope FCM's HTTP v1 API asks for.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Google's token endpoint, when the key file names none.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The lifetime asked for in the assertion (Google's maximum).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// A token is exchanged again this long before it expires (or at half its life, if shorter).
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// After a failed exchange, callers get its error for this long before the next try.
pub const RETRY_EXCHANGE_AFTER: Duration = Duration::from_secs(5);

/// The longest token-endpoint error text kept for the log.
const MAX_ERROR_TEXT: usize = 200; // characters

/// A Google service account, from the JSON key file the Cloud console downloads.
#[derive(Clone)]
pub struct ServiceAccount {
    /// The account's address (the assertion's issuer).
    pub client_email: String,
    /// The key's id (the assertion's `kid`).
    pub private_key_id: Option<String>,
    /// Where assertions are exchanged for access tokens.
    pub token_uri: String,
    /// The account's project (FCM's default project id).
    pub project_id: Option<String>,
    key: Arc<RsaKeyPair>,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads a service-account key file's JSON; the private key must be an RSA key in PKCS#8
    /// PEM (as Google issues them).
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let text = |name: &str| v[name].as_str().map(str::to_owned);
        if let Some(kind) = text("type") {
            if kind != "service_account" {
                return Err(format!("type is {kind:?}, not \"service_account\""));
            }
        }
        let client_email = text("client_email").ok_or("no client_email")?;
        let pem = text("private_key").ok_or("no private_key")?;
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .map_err(|e| format!("private_key: {e}"))?
            .ok_or("private_key holds no PEM private key")?;
        let key = RsaKeyPair::from_pkcs8(der.secret_der())
            .map_err(|e| format!("private_key is not an RSA PKCS#8 key: {e}"))?;
        Ok(Self {
            client_email,
            private_key_id: text("private_key_id"),
            token_uri: text("token_uri").unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned()),
            project_id: text("project_id"),
            key: Arc::new(key),
        })
    }

    /// The signed assertion (a JWT, RS256) asking for `scope`, issued at `iat` (Unix seconds).
    pub fn assertion(&self, scope: &str, iat: u64) -> Result<String, String> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": scope,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        super::jwt(&header, &claims, |input| {
            let mut sig = vec![0; self.key.public().modulus_len()];
            self.key
                .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input, &mut sig)
                .map(|()| sig)
                .map_err(|_| "RSA signing failed".to_owned())
        })
    }
}

/// What [`TokenSource`] holds between calls.
enum Held {
    None,
    Token { value: String, refresh_at: Instant },
    Failed { error: String, until: Instant },
}

/// Access tokens for one service account and scope, exchanged when needed.
pub(crate) struct TokenSource {
    account: ServiceAccount,
    scope: &'static str,
    held: tokio::sync::Mutex<Held>,
}

impl TokenSource {
    pub(crate) fn new(account: ServiceAccount, scope: &'static str) -> Self {
        Self {
            account,
            scope,
            held: tokio::sync::Mutex::new(Held::None),
        }
    }

    /// A current access token: the held one, or a fresh one from the token endpoint.
    pub(crate) async fn token(&self, http: &reqwest::Client) -> Result<String, String> {
        let mut held = self.held.lock().await;
        let now = Instant::now();
        match &*held {
            Held::Token { value, refresh_at } if now < *refresh_at => return Ok(value.clone()),
            Held::Failed { error, until } if now < *until => return Err(error.clone()),
            _ => {}
        }
        match self.exchange(http).await {
            Ok((value, lifetime)) => {
                let margin = REFRESH_MARGIN.min(lifetime / 2);
                *held = Held::Token {
                    value: value.clone(),
                    refresh_at: now + lifetime - margin,
                };
                Ok(value)
            }
            Err(error) => {
                *held = Held::Failed {
                    error: error.clone(),
                    until: now + RETRY_EXCHANGE_AFTER,
                };
                Err(error)
            }
        }
    }

    /// Drops the held token (the API refused it); the next call exchanges a new one.
    pub(crate) async fn invalidate(&self, refused: &str) {
        let mut held = self.held.lock().await;
        if matches!(&*held, Held::Token { value, .. } if value == refused) {
            *held = Held::None;
        }
    }

    /// One exchange: the token and how long it lives.
    async fn exchange(&self, http: &reqwest::Client) -> Result<(String, Duration), String> {
        let iat = courier_wire::time::now_secs();
        let assertion = self.account.assertion(self.scope, iat)?;
        // The assertion is base64url and dots: nothing in it needs form-encoding.
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let answer = http
            .post(&self.account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("OAuth token endpoint: {e}"))?;
        let status = answer.status();
        let bytes = answer
            .bytes()
            .await
            .map_err(|e| format!("OAuth token endpoint: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if !status.is_success() {
            let mut why = [&v["error"], &v["error_description"]]
                .iter()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(": ");
            if let Some((cut, _)) = why.char_indices().nth(MAX_ERROR_TEXT) {
                why.truncate(cut);
            }
            return Err(format!("OAuth token endpoint answered {status} {why}"));
        }
        let token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or("OAuth token endpoint: no access_token in the answer")?;
        let lifetime = v["expires_in"].as_u64().unwrap_or(3600).max(1);
        Ok((token.to_owned(), Duration::from_secs(lifetime)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test-only key (also used by the push end-to-end test).
    const KEY: &str = include_str!("../../tests/data/fcm-test-service-account.key.pem");

    fn account_json(extra: &str) -> String {
        format!(
            r#"{{"type": "service_account", "client_email": "courier@p.iam.gserviceaccount.com",
                "private_key": {key}, "private_key_id": "k1", "project_id": "p"{extra}}}"#,
            key = serde_json::Value::from(KEY)
        )
    }

    #[test]
    fn key_files_are_read_with_google_defaults() {
        let a = ServiceAccount::from_json(account_json("").as_bytes()).unwrap();
        assert_eq!(a.token_uri, GOOGLE_TOKEN_URI);
        assert_eq!(a.project_id.as_deref(), Some("p"));
        assert!(!format!("{a:?}").contains("PRIVATE"), "Debug hides the key");
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        let cases = [
            ("{", "not JSON"),
            (r#"{"type": "authorized_user"}"#, "not \"service_account\""),
            (r#"{"private_key": "x"}"#, "no client_email"),
            (r#"{"client_email": "a"}"#, "no private_key"),
            (
                r#"{"client_email": "a", "private_key": "nothing"}"#,
                "holds no PEM",
            ),
        ];
        for (json, says) in cases {
            let err = ServiceAccount::from_json(json.as_bytes()).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
        }
    }

    #[test]
    fn assertions_are_rs256_jwts_for_the_token_endpoint() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
        let a = ServiceAccount::from_json(
            account_json(r#", "token_uri": "http://127.0.0.1:9/token""#).as_bytes(),
        )
        .unwrap();
        let jwt = a.assertion(FCM_SCOPE, 1_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let part = |i: usize| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[i]).unwrap()).unwrap()
        };
        assert_eq!(
            part(0),
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "k1"})
        );
        assert_eq!(
            part(1),
            serde_json::json!({"iss": "courier@p.iam.gserviceaccount.com", "scope": FCM_SCOPE,
                "aud": "http://127.0.0.1:9/token", "iat": 1_000, "exp": 4_600})
        );
        let public = a.key.public().as_ref().to_vec();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public)
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .expect("signed with the account's key");
    }

    #[tokio::test]
    async fn a_failed_exchange_is_reported_and_not_repeated_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0; 8192];
                let _ = s.read(&mut buf).await;
                let body =
                    r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
                let reply = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let json = account_json(&format!(r#", "token_uri": "{url}""#));
        let source = TokenSource::new(
            ServiceAccount::from_json(json.as_bytes()).unwrap(),
            FCM_SCOPE,
        );
        let http = reqwest::Client::new();
        let err = source.token(&http).await.unwrap_err();
        assert!(
            err.contains("400") && err.contains("invalid_grant: Invalid JWT Signature."),
            "{err}"
        );
        assert_eq!(source.token(&http).await.unwrap_err(), err);
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "one request per retry interval"
        );
    }
}
