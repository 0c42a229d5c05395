//! Ed25519 bearer tokens, below everything that mints or checks them: the gateway verifies,
//! the `courier token` command, loadgen and an operator's own auth service mint.
//!
//! An operator's issuer key pair signs tokens; the gateway holds only the public key. A token is
//! the URL-safe base64 (no padding) of:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, 1 |
//! | 1 | user id length `n` |
//! | n | user id (see `courier_wire::valid_user_id`) |
//! | 4 | device id, big-endian |
//! | 8 | expiry, Unix seconds, big-endian |
//! | 64 | Ed25519 signature over all bytes above |

#![forbid(unsafe_code)]

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

const VERSION: u8 = 1;
const SIG_LEN: usize = 64;

/// What a token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user.
    pub user: String,
    /// The user's device.
    pub device: u32,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a token of this format.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify with the issuer's public key.
    #[error("token signature does not verify")]
    BadSignature,
    /// The token has expired.
    #[error("token expired")]
    Expired,
}

/// Errors reading or writing key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold a key of the expected form.
    #[error("{0}: not a Courier issuer key file")]
    Invalid(String),
}

fn io_err(path: &Path, source: std::io::Error) -> KeyFileError {
    KeyFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The issuer's signing key.
pub struct IssuerKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl IssuerKey {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("system randomness")
            .as_ref()
            .to_vec();
        Self::from_pkcs8(&pkcs8).expect("freshly generated key parses")
    }

    /// A key from its PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Option<Self> {
        Ed25519KeyPair::from_pkcs8(pkcs8).ok().map(|pair| Self {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("ed25519 public keys are 32 bytes")
    }

    /// Signs a token for `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        assert!(
            courier_wire::valid_user_id(&claims.user),
            "invalid user id {:?}",
            claims.user
        );
        let mut raw = Vec::with_capacity(14 + claims.user.len() + SIG_LEN);
        raw.push(VERSION);
        raw.push(claims.user.len() as u8);
        raw.extend_from_slice(claims.user.as_bytes());
        raw.extend_from_slice(&claims.device.to_be_bytes());
        raw.extend_from_slice(&claims.expires_at.to_be_bytes());
        let sig = self.pair.sign(&raw);
        raw.extend_from_slice(sig.as_ref());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Writes `issuer.key` (private, mode 0600) and `issuer.pub` into `dir`, refusing to
    /// overwrite an existing key.
    pub fn write_files(&self, dir: &Path) -> Result<(), KeyFileError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let key_path = dir.join("issuer.key");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&key_path).map_err(|e| io_err(&key_path, e))?;
        std::io::Write::write_all(
            &mut f,
            format!("{}\n", URL_SAFE_NO_PAD.encode(&self.pkcs8)).as_bytes(),
        )
        .map_err(|e| io_err(&key_path, e))?;
        let pub_path = dir.join("issuer.pub");
        std::fs::write(
            &pub_path,
            format!("{}\n", URL_SAFE_NO_PAD.encode(self.public_key())),
        )
        .map_err(|e| io_err(&pub_path, e))?;
        Ok(())
    }

    /// Reads an `issuer.key` file.
    pub fn read_file(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()
            .and_then(|der| Self::from_pkcs8(&der))
            .ok_or_else(|| KeyFileError::Invalid(path.display().to_string()))
    }
}

/// Checks tokens against the issuer's public key.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    public_key: [u8; 32],
}

impl TokenVerifier {
    /// A verifier for the issuer with this public key.
    pub fn new(public_key: [u8; 32]) -> Self {
        Self { public_key }
    }

    /// Reads an `issuer.pub` file.
    pub fn read_file(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()
            .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
            .map(Self::new)
            .ok_or_else(|| KeyFileError::Invalid(path.display().to_string()))
    }

    /// The claims of a valid, unexpired token (`now` in Unix seconds).
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Claims, AuthError> {
        // Tokens are short; refuse absurd input before decoding it.
        if token.len() > 512 {
            return Err(AuthError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| AuthError::Malformed)?;
        let signed_len = raw.len().checked_sub(SIG_LEN).ok_or(AuthError::Malformed)?;
        let (signed, sig) = raw.split_at(signed_len);
        let [version, ulen, rest @ ..] = signed else {
            return Err(AuthError::Malformed);
        };
        if *version != VERSION || rest.len() != *ulen as usize + 12 {
            return Err(AuthError::Malformed);
        }
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(signed, sig)
            .map_err(|_| AuthError::BadSignature)?;
        let (user, tail) = rest.split_at(*ulen as usize);
        let user = std::str::from_utf8(user).map_err(|_| AuthError::Malformed)?;
        if !courier_wire::valid_user_id(user) {
            return Err(AuthError::Malformed);
        }
        let device = u32::from_be_bytes(tail[..4].try_into().expect("4 bytes"));
        let expires_at = u64::from_be_bytes(tail[4..12].try_into().expect("8 bytes"));
        if expires_at <= now {
            return Err(AuthError::Expired);
        }
        Ok(Claims {
            user: user.to_owned(),
            device,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            user: "alice".into(),
            device: 3,
            expires_at: exp,
        }
    }

    #[test]
    fn mint_and_verify() {
        let key = IssuerKey::generate();
        let v = TokenVerifier::new(key.public_key());
        let t = key.mint(&claims(1000));
        assert_eq!(v.verify(t.as_bytes(), 999), Ok(claims(1000)));
        assert_eq!(v.verify(t.as_bytes(), 1000), Err(AuthError::Expired));
    }

    #[test]
    fn forged_and_malformed_tokens_fail() {
        let key = IssuerKey::generate();
        let other = IssuerKey::generate();
        let v = TokenVerifier::new(key.public_key());
        let forged = other.mint(&claims(1000));
        assert_eq!(v.verify(forged.as_bytes(), 0), Err(AuthError::BadSignature));
        // Flip one byte of the signed part.
        let mut raw = URL_SAFE_NO_PAD.decode(key.mint(&claims(1000))).unwrap();
        raw[3] ^= 1;
        assert_eq!(
            v.verify(URL_SAFE_NO_PAD.encode(&raw).as_bytes(), 0),
            Err(AuthError::BadSignature)
        );
        for junk in [&b""[..], b"!!!", b"AAAA", &[b'A'; 600]] {
            assert_eq!(v.verify(junk, 0), Err(AuthError::Malformed));
        }
    }

    #[test]
    fn key_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let key = IssuerKey::generate();
        key.write_files(dir.path()).unwrap();
        assert!(
            key.write_files(dir.path()).is_err(),
            "never overwrites a key"
        );
        let back = IssuerKey::read_file(&dir.path().join("issuer.key")).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        let v = TokenVerifier::read_file(&dir.path().join("issuer.pub")).unwrap();
        assert!(v.verify(back.mint(&claims(10)).as_bytes(), 1).is_ok());
    }
}
