//! The gateway's TLS identity and QUIC server configuration.
//!
//! With no certificate given, `courier serve` creates a self-signed certificate for `localhost`
//! and `127.0.0.1` in `<data-dir>/tls/` on first start and reuses it afterwards; clients trust it
//! by pinning that file (`courier_client::Trust::File`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Where the leaf certificate's PEM file is.
    pub cert_path: PathBuf,
}

impl TlsIdentity {
    /// Reads PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let certs = rustls_pemfile::certs(
            &mut std::fs::read(cert)
                .with_context(|| format!("read {}", cert.display()))?
                .as_slice(),
        )
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse {}", cert.display()))?;
        if certs.is_empty() {
            bail!("{}: no certificate in file", cert.display());
        }
        let key = rustls_pemfile::private_key(
            &mut std::fs::read(key)
                .with_context(|| format!("read {}", key.display()))?
                .as_slice(),
        )
        .with_context(|| format!("parse {}", key.display()))?
        .with_context(|| format!("{}: no private key in file", key.display()))?;
        Ok(Self {
            certs,
            key,
            cert_path: cert.to_owned(),
        })
    }

    /// Loads `<dir>/cert.pem` and `<dir>/key.pem`, creating a self-signed pair first if absent.
    pub fn self_signed_in(dir: &Path) -> anyhow::Result<(Self, bool)> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let created = !cert.exists();
        if created {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            let ck = rcgen::generate_simple_self_signed(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ])
            .context("generate certificate")?;
            write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
            std::fs::write(&cert, ck.cert.pem())
                .with_context(|| format!("write {}", cert.display()))?;
        }
        Ok((Self::from_pem_files(&cert, &key)?, created))
    }

    /// SHA-256 of the leaf certificate, as colon-separated hex.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.certs[0]);
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The rustls server configuration: TLS 1.3 only, ALPN `courier/1`, ring provider.
    pub fn rustls_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .context("certificate and key do not match")?;
        cfg.alpn_protocols = vec![courier_wire::ALPN.to_vec()];
        cfg.max_early_data_size = 0;
        Ok(cfg)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    std::io::Write::write_all(&mut f, bytes).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = TlsIdentity::self_signed_in(dir.path()).unwrap();
        assert!(created);
        let (b, created) = TlsIdentity::self_signed_in(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 32 * 3 - 1);
        a.rustls_config().unwrap();
    }
}
