//! Errors returned by the store.

use courier_wire::ErrorCode;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The chat does not exist, or the caller is not a member (indistinguishable on purpose).
    #[error("no such chat, or not a member")]
    Forbidden,
    /// A field was well-formed but not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A group would exceed the member limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The store is shut down.
    #[error("store is closed")]
    Closed,
    /// The engine failed; the operation may not have been applied.
    #[error("storage engine: {0}")]
    Engine(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt record under key {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The wire error code a client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Forbidden => ErrorCode::FORBIDDEN,
            Self::Invalid(_) => ErrorCode::INVALID,
            Self::TooLarge(_) => ErrorCode::TOO_LARGE,
            Self::Closed => ErrorCode::SHUTTING_DOWN,
            Self::Engine(_) | Self::Corrupt(_) => ErrorCode::INTERNAL,
        }
    }
}
