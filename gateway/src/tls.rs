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

    /// The rustls server configuration: TLS 1.3 only, ALPN `courier/1`, ring provider, and the
    /// server's choice of cipher suite ([`SUITES`]).
    pub fn rustls_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = SUITES.to_vec();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .context("certificate and key do not match")?;
        cfg.alpn_protocols = vec![courier_wire::ALPN.to_vec()];
        cfg.max_early_data_size = 0;
        cfg.ignore_client_order = true;
        Ok(cfg)
    }
}

/// The TLS 1.3 cipher suites the gateway offers, in the order it picks them, whatever the client
/// prefers. AES-128-GCM-SHA256 first: every TLS 1.3 client implements it (QUIC's Initial packets
/// use it already), its key schedule runs on SHA-256, which x86 and ARMv8 hash in hardware, where
/// AES-256-GCM-SHA384 (rustls's and so quinn's first choice) runs SHA-384 in software on every
/// handshake, and its 10 AES rounds per block against 14 are cheaper on every packet.
/// ChaCha20-Poly1305 before AES-256 for clients without AES (its keys are also smaller).
const SUITES: [rustls::SupportedCipherSuite; 3] = [
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
];

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

    /// The server's order wins over a client that puts AES-256 first (rustls's and quinn's
    /// default order): the handshake settles on AES-128-GCM-SHA256.
    #[test]
    fn the_server_picks_aes_128_whatever_the_client_prefers() {
        use rustls::client::danger::{
            HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
        };
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        use rustls::{DigitallySignedStruct, SignatureScheme};

        #[derive(Debug)]
        struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
        impl ServerCertVerifier for AnyCert {
            fn verify_server_cert(
                &self,
                _: &CertificateDer<'_>,
                _: &[CertificateDer<'_>],
                _: &ServerName<'_>,
                _: &[u8],
                _: UnixTime,
            ) -> Result<ServerCertVerified, rustls::Error> {
                Ok(ServerCertVerified::assertion())
            }
            fn verify_tls12_signature(
                &self,
                _: &[u8],
                _: &CertificateDer<'_>,
                _: &DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                Err(rustls::Error::General("TLS 1.2".into()))
            }
            fn verify_tls13_signature(
                &self,
                message: &[u8],
                cert: &CertificateDer<'_>,
                dss: &DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                rustls::crypto::verify_tls13_signature(
                    message,
                    cert,
                    dss,
                    &self.0.signature_verification_algorithms,
                )
            }
            fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
                self.0.signature_verification_algorithms.supported_schemes()
            }
        }

        let dir = tempfile::tempdir().unwrap();
        let (id, _) = TlsIdentity::self_signed_in(dir.path()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        assert_eq!(
            provider.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            "the client below must prefer AES-256 for this test to mean anything"
        );
        let mut client_cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        client_cfg.alpn_protocols = vec![courier_wire::ALPN.to_vec()];
        let mut client = rustls::ClientConnection::new(
            Arc::new(client_cfg),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut server =
            rustls::ServerConnection::new(Arc::new(id.rustls_config().unwrap())).unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(
            client.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}
