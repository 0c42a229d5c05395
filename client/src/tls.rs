//! Which server certificates a client trusts, and the QUIC client configuration.
//!
//! [`Trust::File`] reads a PEM file of certificates. A server whose certificate is one of them is
//! accepted as pinned (this is how a client trusts `courier serve`'s self-signed certificate);
//! otherwise the file's certificates are used as CA roots with full WebPKI validation. Accepting
//! any certificate exists only as [`Trust::InsecureAcceptAnyCertificate`], for throwaway tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::ClientError;

/// Which server certificates to accept.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates from a PEM file: pinned server certificates or CA roots.
    File(PathBuf),
    /// Certificates given in DER form: pinned server certificates or CA roots.
    Certificates(Vec<CertificateDer<'static>>),
    /// Accept any certificate. Offers no protection against an active attacker.
    InsecureAcceptAnyCertificate,
}

/// Reads every certificate in a PEM file.
pub fn read_pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = std::fs::read(path)
        .map_err(|e| ClientError::config(format!("read {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::config(format!("parse {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::config(format!(
            "{}: no certificate in file",
            path.display()
        )));
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How often a connection with nothing else to send sends a QUIC PING, so that the gateway
/// (which closes a connection silent for 30 s) and the NATs on the way keep it. 20 s leaves a
/// lost PING ~10 s of retransmissions before the idle timeout, and stays under the 30 s that
/// most middleboxes keep a UDP flow's state (RFC 9308, 3.2). Each PING costs the gateway a
/// datagram in and an ACK out: at 10 s, 10,000 idle connections took 33–36 ms of gateway CPU a
/// second, at 20 s 17–18 (docs/PERFORMANCE.md, "Keep-alives").
pub const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The QUIC client configuration for a trust choice: TLS 1.3 only, ALPN `courier/1`.
pub fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, ClientError> {
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::File(path) => Arc::new(PinnedOrCa::new(read_pem_certs(path)?)?),
        Trust::Certificates(certs) => Arc::new(PinnedOrCa::new(certs.clone())?),
        Trust::InsecureAcceptAnyCertificate => Arc::new(PinnedOrCa {
            pinned: Vec::new(),
            webpki: None,
            accept_any: true,
        }),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ClientError::config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![courier_wire::ALPN.to_vec()];
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(ClientError::config)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("30 s fits")));
    transport.mtu_discovery_config(Some(courier_net::transport::mtu_discovery()));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Accepts pinned certificates, then CA-validated ones (or, insecurely, any). The handshake
/// signature is always checked against the presented certificate's key.
#[derive(Debug)]
struct PinnedOrCa {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    accept_any: bool,
}

impl PinnedOrCa {
    fn new(certs: Vec<CertificateDer<'static>>) -> Result<Self, ClientError> {
        let mut roots = RootCertStore::empty();
        // Certificates that are not valid CA roots are still usable as pins.
        let _ = roots.add_parsable_certificates(certs.iter().cloned());
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(ClientError::config)?,
            )
        };
        Ok(Self {
            pinned: certs,
            webpki,
            accept_any: false,
        })
    }
}

impl ServerCertVerifier for PinnedOrCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.accept_any
            || self
                .pinned
                .iter()
                .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
