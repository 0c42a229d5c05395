//! Errors seen by SDK users.

use courier_wire::{DecodeError, ErrorCode};

/// Why a client operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be set up (address, TLS, handshake).
    #[error("connect: {0}")]
    Connect(String),
    /// The server answered with an error frame.
    #[error("server error {code}: {message}")]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's detail text.
        message: String,
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
}

impl ClientError {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}
