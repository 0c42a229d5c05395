//! The server's TLS session for QUIC, letting go of rustls once the handshake is done.
//!
//! quinn-proto's own session (`quinn_proto::crypto::rustls::TlsSession`) keeps the whole
//! `rustls::quic::ServerConnection` for the connection's life: its record layer (a message
//! encrypter and decrypter that QUIC never uses), the handshake state rustls parks in after
//! the handshake, deframer and buffers. After the handshake quinn-proto asks its session for
//! nothing but the next 1-RTT keys of a key update, which come from the TLS traffic secrets
//! alone. [`LeanServerConfig`] starts sessions that do what quinn-proto's do until the
//! handshake's last message is written, then drop the rustls connection and keep only those
//! secrets (a few hundred bytes), the negotiated ALPN and server name, and the client's
//! certificates if it sent any.
//!
//! After the release:
//! - CRYPTO data from the client is a protocol error (`unexpected_message`, as rustls itself
//!   answers a handshake message after the handshake in QUIC);
//! - keying material can no longer be exported ([`crypto::Session::export_keying_material`]
//!   fails): Courier does not use it;
//! - `transport_parameters` answers `None`: quinn-proto reads the client's parameters once,
//!   during the handshake.

use std::any::Any;
use std::sync::Arc;

use quinn_proto::crypto::rustls::{HandshakeData, NoInitialCipherSuite, QuicServerConfig};
use quinn_proto::crypto::{
    self, ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey, UnsupportedVersion,
};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectionId, Side, TransportError, TransportErrorCode};
use rustls::pki_types::CertificateDer;
use rustls::quic::{Connection, KeyChange, Secrets, ServerConnection, Suite, Version};

/// TLS alert `unexpected_message`: the crypto error a post-handshake message gets.
const UNEXPECTED_MESSAGE: u8 = 10;

/// Why a rustls configuration cannot serve QUIC.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// QUIC's Initial packets use TLS 1.3 AES-128-GCM-SHA256; the provider lacks it.
    #[error("the TLS configuration has no TLS 1.3 AES-128-GCM-SHA256 suite: {0}")]
    NoInitialSuite(#[from] NoInitialCipherSuite),
    /// rustls refuses to start a QUIC session with it (TLS 1.3 missing, a bad early data size).
    #[error("the TLS configuration cannot serve QUIC: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A QUIC server's TLS configuration whose sessions drop rustls's connection state after the
/// handshake (see the module's docs). Initial keys and Retry tags are quinn-proto's own.
pub struct LeanServerConfig {
    tls: Arc<rustls::ServerConfig>,
    quic: QuicServerConfig,
    initial: Suite,
}

impl LeanServerConfig {
    /// Wraps a rustls server configuration (TLS 1.3, max early data 0 or `u32::MAX`, as
    /// quinn-proto requires); checked here, so that no session fails to start for it.
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Result<Self, TlsConfigError> {
        let quic = QuicServerConfig::try_from(tls.clone())?;
        // What quinn-proto checked above, as a value: the provider's AES-128-GCM suite.
        let initial = tls
            .crypto_provider()
            .cipher_suites
            .iter()
            .find_map(|cs| match (cs.suite(), cs.tls13()) {
                (rustls::CipherSuite::TLS13_AES_128_GCM_SHA256, Some(s)) => s.quic_suite(),
                _ => None,
            })
            .ok_or_else(|| rustls::Error::General("no QUIC initial suite".into()))?;
        ServerConnection::new(tls.clone(), Version::V1, Vec::new())?;
        Ok(Self { tls, quic, initial })
    }
}

impl crypto::ServerConfig for LeanServerConfig {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.quic.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.quic.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        let version = rustls_version(version);
        let mut encoded = Vec::new();
        params.write(&mut encoded);
        let state = match ServerConnection::new(self.tls.clone(), version, encoded) {
            Ok(conn) => State::Handshaking(Box::new(Connection::Server(conn))),
            // `new` checked the configuration with the same call: not expected.
            Err(e) => State::Failed(e.to_string()),
        };
        Box::new(LeanSession {
            version,
            initial: self.initial,
            state,
            handshake_data: None,
            next_secrets: None,
            peer_certs: None,
        })
    }
}

/// rustls's name of a QUIC version quinn-proto accepted (its `initial_keys` refuses the rest
/// before a session starts, so the fallback is never taken).
fn rustls_version(version: u32) -> Version {
    match version {
        0xff00_001d..=0xff00_0020 => Version::V1Draft,
        _ => Version::V1,
    }
}

enum State {
    /// The handshake runs, or its last messages are still to be written.
    Handshaking(Box<Connection>),
    /// The handshake is done and rustls's connection dropped.
    Released,
    /// rustls refused to start the session: every read fails, closing the connection.
    Failed(String),
}

/// One connection's TLS session (see the module's docs).
struct LeanSession {
    version: Version,
    initial: Suite,
    state: State,
    /// The negotiated ALPN and the client's server name, once the ClientHello is read.
    handshake_data: Option<(Option<Vec<u8>>, Option<String>)>,
    /// The traffic secrets that key updates derive from, once the 1-RTT keys are out.
    next_secrets: Option<Secrets>,
    /// The client's certificates, kept when rustls's connection goes.
    peer_certs: Option<Vec<CertificateDer<'static>>>,
}

fn error(code: TransportErrorCode, reason: impl Into<String>) -> TransportError {
    TransportError {
        code,
        frame: None,
        reason: reason.into(),
    }
}

fn keys_of(keys: rustls::quic::Keys) -> Keys {
    Keys {
        header: KeyPair {
            local: Box::new(keys.local.header) as Box<dyn HeaderKey>,
            remote: Box::new(keys.remote.header) as Box<dyn HeaderKey>,
        },
        packet: KeyPair {
            local: Box::new(keys.local.packet) as Box<dyn PacketKey>,
            remote: Box::new(keys.remote.packet) as Box<dyn PacketKey>,
        },
    }
}

impl LeanSession {
    /// Drops rustls's connection once nothing of the handshake is left to write.
    fn release(&mut self) {
        if let State::Handshaking(conn) = &self.state {
            self.peer_certs = conn.peer_certificates().map(|c| c.to_vec());
            self.state = State::Released;
        }
    }
}

impl crypto::Session for LeanSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        keys_of(self.initial.keys(dst_cid, side.into(), self.version))
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        let (protocol, server_name) = self.handshake_data.clone()?;
        Some(Box::new(HandshakeData {
            protocol,
            server_name,
        }))
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        let certs = match &self.state {
            State::Handshaking(conn) => conn.peer_certificates().map(|c| c.to_vec()),
            _ => self.peer_certs.clone(),
        }?;
        Some(Box::new(certs))
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        let State::Handshaking(conn) = &self.state else {
            return None;
        };
        let keys = conn.zero_rtt_keys()?;
        Some((Box::new(keys.header), Box::new(keys.packet)))
    }

    fn early_data_accepted(&self) -> Option<bool> {
        None // a client's question
    }

    fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Handshaking(conn) => conn.is_handshaking(),
            State::Released => false,
            State::Failed(_) => true,
        }
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let conn = match &mut self.state {
            State::Handshaking(conn) => conn,
            State::Released if buf.is_empty() => return Ok(false),
            State::Released => {
                return Err(error(
                    TransportErrorCode::crypto(UNEXPECTED_MESSAGE),
                    "TLS message after the handshake",
                ))
            }
            State::Failed(e) => return Err(error(TransportErrorCode::INTERNAL_ERROR, e.clone())),
        };
        conn.read_hs(buf).map_err(|e| match conn.alert() {
            Some(alert) => error(TransportErrorCode::crypto(alert.into()), e.to_string()),
            None => error(
                TransportErrorCode::PROTOCOL_VIOLATION,
                format!("TLS error: {e}"),
            ),
        })?;
        // As quinn-proto's session: the handshake data is ready once the ClientHello is read
        // (rustls has then chosen the ALPN and seen the server name).
        let server_name = match &**conn {
            Connection::Server(s) => s.server_name(),
            Connection::Client(_) => None,
        };
        if self.handshake_data.is_none()
            && (conn.alpn_protocol().is_some() || server_name.is_some() || !conn.is_handshaking())
        {
            self.handshake_data = Some((
                conn.alpn_protocol().map(<[u8]>::to_vec),
                server_name.map(str::to_owned),
            ));
            return Ok(true);
        }
        Ok(false)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        let State::Handshaking(conn) = &self.state else {
            return Ok(None);
        };
        match conn.quic_transport_parameters() {
            None => Ok(None),
            Some(mut buf) => Ok(Some(TransportParameters::read(Side::Server, &mut buf)?)),
        }
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let State::Handshaking(conn) = &mut self.state else {
            return None;
        };
        let before = buf.len();
        let change = conn.write_hs(buf);
        let done = !conn.is_handshaking();
        let keys = match change {
            Some(KeyChange::Handshake { keys }) => keys,
            Some(KeyChange::OneRtt { keys, next }) => {
                self.next_secrets = Some(next);
                keys
            }
            None => {
                // quinn-proto writes until a call gives nothing: after the client's Finished
                // (and the session tickets it prompts), that call is the last one.
                if done && buf.len() == before && self.next_secrets.is_some() {
                    self.release();
                }
                return None;
            }
        };
        Some(keys_of(keys))
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        let keys = self.next_secrets.as_mut()?.next_packet_keys();
        Some(KeyPair {
            local: Box::new(keys.local),
            remote: Box::new(keys.remote),
        })
    }

    fn is_valid_retry(&self, _: &ConnectionId, _: &[u8], _: &[u8]) -> bool {
        false // a server is never sent a Retry
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        let State::Handshaking(conn) = &self.state else {
            return Err(ExportKeyingMaterialError);
        };
        conn.export_keying_material(output, label, Some(context))
            .map(|_| ())
            .map_err(|_| ExportKeyingMaterialError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto::ServerConfig as _;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A TLS 1.3 server configuration with a fresh self-signed certificate for `localhost`,
    /// and that certificate.
    fn server_tls() -> (rustls::ServerConfig, CertificateDer<'static>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        (server, der)
    }

    fn configs() -> (Arc<LeanServerConfig>, Arc<rustls::ClientConfig>) {
        let (mut server, der) = server_tls();
        server.alpn_protocols = vec![b"test".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"test".to_vec()];
        let server = LeanServerConfig::new(Arc::new(server)).unwrap();
        (Arc::new(server), Arc::new(client))
    }

    /// The default parameters (quinn-proto has no public constructor: they are what an empty
    /// encoding means).
    fn params() -> TransportParameters {
        TransportParameters::read(Side::Server, &mut &b""[..]).unwrap()
    }

    /// Runs a handshake between a rustls QUIC client and a lean session, passing the CRYPTO
    /// bytes straight across, and writing the way quinn-proto does (until a call gives
    /// nothing). Returns the session and the client's secrets for key updates.
    fn handshake() -> (Box<dyn crypto::Session>, Secrets) {
        let (server_cfg, client_cfg) = configs();
        let mut encoded = Vec::new();
        params().write(&mut encoded);
        let mut client = rustls::quic::ClientConnection::new(
            client_cfg,
            Version::V1,
            "localhost".try_into().unwrap(),
            encoded,
        )
        .unwrap();
        let mut server = server_cfg.start_session(1, &params());
        let mut client_next = None;
        // Each write is one encryption level's bytes, and is read as one (as quinn-proto
        // reads each level's CRYPTO stream).
        for _ in 0..10 {
            let mut to_server = Vec::new();
            loop {
                let mut out = Vec::new();
                let change = client.write_hs(&mut out);
                let last = change.is_none();
                if let Some(KeyChange::OneRtt { next, .. }) = change {
                    client_next = Some(next);
                }
                if !out.is_empty() {
                    to_server.push(out);
                }
                if last {
                    break;
                }
            }
            for chunk in &to_server {
                server.read_handshake(chunk).unwrap();
            }
            let mut to_client = Vec::new();
            loop {
                let mut out = Vec::new();
                let changed = server.write_handshake(&mut out).is_some();
                let empty = out.is_empty();
                if !empty {
                    to_client.push(out);
                }
                if !changed && empty {
                    break;
                }
            }
            for chunk in &to_client {
                client.read_hs(chunk).unwrap();
            }
            if !client.is_handshaking() && !server.is_handshaking() && to_client.is_empty() {
                break;
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        (server, client_next.expect("client 1-RTT secrets"))
    }

    #[test]
    fn the_session_lets_go_of_rustls_after_the_handshake_and_still_updates_keys() {
        let (mut server, mut client_next) = handshake();
        // Released: keying material is gone, a late handshake message is refused.
        let mut out = [0u8; 16];
        assert!(server.export_keying_material(&mut out, b"l", b"c").is_err());
        let err = server.read_handshake(b"\x14\x00\x00\x00").unwrap_err();
        assert_eq!(err.code, TransportErrorCode::crypto(UNEXPECTED_MESSAGE));
        assert!(server.transport_parameters().unwrap().is_none());
        // What the connection learnt is kept.
        let data = server.handshake_data().unwrap();
        let data = data.downcast::<HandshakeData>().unwrap();
        assert_eq!(data.protocol.as_deref(), Some(&b"test"[..]));
        assert_eq!(data.server_name.as_deref(), Some("localhost"));
        assert!(server.peer_identity().is_none());
        // Three key updates in a row agree with the client's, both ways.
        let header = [0x40u8, 1, 2, 3];
        for generation in 0..3u64 {
            let s = server.next_1rtt_keys().unwrap();
            let c = client_next.next_packet_keys();
            let mut down = header.to_vec();
            down.extend_from_slice(b"down");
            down.resize(down.len() + s.local.tag_len(), 0);
            s.local.encrypt(generation, &mut down, header.len());
            let plain = c
                .remote
                .decrypt_in_place(generation, &header, &mut down[header.len()..])
                .unwrap();
            assert_eq!(plain, b"down");
            let mut up = b"up".to_vec();
            let tag = c
                .local
                .encrypt_in_place(generation, &header, &mut up)
                .unwrap();
            up.extend_from_slice(tag.as_ref());
            let mut up = bytes::BytesMut::from(&up[..]);
            s.remote.decrypt(generation, &header, &mut up).unwrap();
            assert_eq!(&up[..], b"up");
        }
    }

    #[test]
    fn a_session_is_not_released_before_the_handshake_ends() {
        let (server_cfg, _) = configs();
        let mut server = server_cfg.start_session(1, &params());
        // Nothing read yet: nothing to write, still handshaking, rustls still there.
        assert!(server.write_handshake(&mut Vec::new()).is_none());
        assert!(server.is_handshaking());
        assert!(server.next_1rtt_keys().is_none());
        // Garbage for a ClientHello is a TLS error, not a panic.
        assert!(server.read_handshake(b"\x01\x00\x00\x02\xff\xff").is_err());
    }

    #[test]
    fn a_configuration_quic_cannot_use_is_refused() {
        let (mut tls, _) = server_tls();
        // QUIC allows 0 or u32::MAX only.
        tls.max_early_data_size = 1024;
        let err = LeanServerConfig::new(Arc::new(tls)).err().unwrap();
        assert!(err.to_string().contains("max early data"), "{err}");
    }
}
