//! Errors seen by SDK users, with kinds to branch on: the server's [`ErrorCode`], why a
//! connect failed ([`ConnectKind`]), who closed a connection ([`Closer`]).

use std::fmt;

use courier_wire::{DecodeError, ErrorCode};

/// Why a connection could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectKind {
    /// This client's own setup is unusable (trust file, TLS configuration, socket, server
    /// name): trying again does not help until it is fixed.
    Config,
    /// The server or its TLS refused the handshake (certificate not trusted, protocol
    /// mismatch, the server closed it, e.g. while overloaded): may pass later, or elsewhere.
    Refused,
    /// No answer, or the network failed: try again with backoff.
    Unreachable,
}

impl fmt::Display for ConnectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Config => "client setup",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
        })
    }
}

/// Which side ended a connection or stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// This client (`Client::close`, a dropped client, a stopped messenger).
    Client,
    /// The server (a close frame, a reset stream, the end of a stream).
    Server,
    /// Neither: the network or the transport (timeout, reset, protocol error).
    Lost,
}

impl fmt::Display for Closer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Client => "the client",
            Self::Server => "the server",
            Self::Lost => "the network",
        })
    }
}

/// Who ended a connection that failed with `e`.
pub(crate) fn closer_of(e: &quinn::ConnectionError) -> Closer {
    use quinn::ConnectionError as E;
    match e {
        E::LocallyClosed => Closer::Client,
        E::ApplicationClosed(_) | E::ConnectionClosed(_) => Closer::Server,
        E::VersionMismatch | E::TransportError(_) | E::Reset | E::TimedOut | E::CidsExhausted => {
            Closer::Lost
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be set up.
    #[error("connect ({kind}): {detail}")]
    Connect {
        /// Whether trying again can help.
        kind: ConnectKind,
        /// What failed.
        detail: String,
    },
    /// The server answered with an error frame (`Error`, or `RetryLater` with a wait).
    #[error("server error {code}: {message}")]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's detail text.
        message: String,
        /// When the server said the request may be sent again (`RetryLater`).
        retry_after: Option<std::time::Duration>,
    },
    /// The server sent bytes that do not decode.
    #[error("bad frame from server: {0}")]
    Decode(#[from] DecodeError),
    /// The server answered with a frame that does not fit the request.
    #[error("unexpected answer: frame kind {0:#04x}")]
    Unexpected(u8),
    /// A value exceeds a limit the server announced.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The connection (or the request's stream) is closed.
    #[error("connection closed by {by}: {detail}")]
    Closed {
        /// Which side ended it.
        by: Closer,
        /// quinn's or the SDK's reason.
        detail: String,
    },
    /// The server sent GoAway and is closing the connection: reconnect (with a fresh token
    /// when `code` is `UNAUTHENTICATED`).
    #[error("server going away ({code}): {reason}")]
    GoAway {
        /// Why: `SHUTTING_DOWN`, or `UNAUTHENTICATED` when the session's token expired.
        code: ErrorCode,
        /// The server's detail text.
        reason: String,
    },
}

impl ClientError {
    /// The client's own setup is unusable.
    pub(crate) fn config(detail: impl fmt::Display) -> Self {
        Self::Connect {
            kind: ConnectKind::Config,
            detail: detail.to_string(),
        }
    }

    /// A handshake that failed with `e`.
    pub(crate) fn handshake(e: &quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        let kind = match e {
            E::LocallyClosed => ConnectKind::Config,
            E::TimedOut | E::Reset | E::CidsExhausted => ConnectKind::Unreachable,
            E::VersionMismatch
            | E::TransportError(_)
            | E::ConnectionClosed(_)
            | E::ApplicationClosed(_) => ConnectKind::Refused,
        };
        Self::Connect {
            kind,
            detail: e.to_string(),
        }
    }

    /// Closed by `by`.
    pub(crate) fn closed(by: Closer, detail: impl fmt::Display) -> Self {
        Self::Closed {
            by,
            detail: detail.to_string(),
        }
    }

    /// The error of a request on `conn` that cannot go on: the connection's close reason
    /// (the server's, when it has not closed yet: it finished the stream).
    pub(crate) fn ended(conn: &quinn::Connection) -> Self {
        match conn.close_reason() {
            Some(e) => Self::closed(closer_of(&e), e),
            None => Self::closed(Closer::Server, "the server ended the stream"),
        }
    }

    /// A connection that failed with `e` while in use.
    pub(crate) fn connection(e: &quinn::ConnectionError) -> Self {
        Self::closed(closer_of(e), e)
    }

    /// A stream write that failed with `e`.
    pub(crate) fn write(e: &quinn::WriteError) -> Self {
        use quinn::WriteError as E;
        let by = match e {
            E::ConnectionLost(c) => closer_of(c),
            E::Stopped(_) => Closer::Server,
            E::ClosedStream => Closer::Client,
            E::ZeroRttRejected => Closer::Lost,
        };
        Self::closed(by, e)
    }

    /// A stream read that failed with `e`.
    pub(crate) fn stream(e: &quinn::ReadError) -> Self {
        use quinn::ReadError as E;
        let by = match e {
            E::ConnectionLost(c) => closer_of(c),
            E::Reset(_) => Closer::Server,
            E::ClosedStream => Closer::Client,
            E::IllegalOrderedRead | E::ZeroRttRejected => Closer::Lost,
        };
        Self::closed(by, e)
    }

    /// Whether the same request may succeed on a new connection: the connection failed or
    /// went away, and not because of this client's own setup or its own close.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { kind, .. } => *kind != ConnectKind::Config,
            Self::Closed { by, .. } => *by != Closer::Client,
            Self::GoAway { .. } => true,
            _ => false,
        }
    }

    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } | Self::GoAway { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// How long the server asked the client to wait before sending the request again.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error a server's refusal frame stands for, or `None` for any other frame.
    pub fn from_refusal(frame: &courier_wire::Frame) -> Option<Self> {
        use courier_wire::Frame;
        match frame {
            Frame::ErrorFrame(e) => Some(Self::Server {
                code: e.code,
                message: e.message.clone(),
                retry_after: None,
            }),
            Frame::RetryLater(r) => Some(Self::Server {
                code: r.code,
                message: r.message.clone(),
                retry_after: Some(r.retry_after()),
            }),
            _ => None,
        }
    }

    /// Whether the server refused the token (forged or expired): reconnecting needs a new one.
    pub fn needs_new_token(&self) -> bool {
        self.code() == Some(ErrorCode::UNAUTHENTICATED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_told_from_the_clients_own() {
        let transient = [
            ClientError::handshake(&quinn::ConnectionError::TimedOut),
            ClientError::handshake(&quinn::ConnectionError::Reset),
            ClientError::connection(&quinn::ConnectionError::TimedOut),
            ClientError::closed(Closer::Server, "bye"),
            ClientError::GoAway {
                code: ErrorCode::SHUTTING_DOWN,
                reason: "restart".into(),
            },
        ];
        for e in &transient {
            assert!(e.is_transient(), "{e}");
        }
        let own = [
            ClientError::config("no certificate in file"),
            ClientError::handshake(&quinn::ConnectionError::LocallyClosed),
            ClientError::connection(&quinn::ConnectionError::LocallyClosed),
            ClientError::Unexpected(0x81),
        ];
        for e in &own {
            assert!(!e.is_transient(), "{e}");
        }
        assert!(matches!(
            ClientError::handshake(&quinn::ConnectionError::TimedOut),
            ClientError::Connect {
                kind: ConnectKind::Unreachable,
                ..
            }
        ));
        assert_eq!(
            ClientError::closed(Closer::Lost, "idle timeout").to_string(),
            "connection closed by the network: idle timeout"
        );
    }
}
