//! Errors seen by SDK users.

use courier_wire::{DecodeError, ErrorCode};

/// Why a client operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be set up (address, TLS, handshake).
    #[error("connect: {0}")]
    Connect(String),
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
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(String),
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
