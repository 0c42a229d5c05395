//! Decode failures and the error codes carried by `Error` frames.

use std::fmt;

/// Why a frame could not be decoded. Small and `Copy`: decoding never allocates to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ended before a field was complete.
    #[error("frame body truncated")]
    Truncated,
    /// The body had bytes left over after the last field.
    #[error("trailing bytes after frame body")]
    TrailingBytes,
    /// A field held a value outside its domain (an enum tag, a boolean, a bad UTF-8 string).
    #[error("invalid field value")]
    InvalidValue,
    /// A header declared a frame larger than the receiver's limit.
    #[error("frame of {len} bytes exceeds limit of {max}")]
    TooLarge {
        /// Declared frame length (header plus body).
        len: u64,
        /// The receiver's limit.
        max: u32,
    },
}

impl DecodeError {
    /// The wire error code a peer is told for this failure.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::TOO_LARGE,
            _ => ErrorCode::BAD_FRAME,
        }
    }
}

/// A typed error code on the wire. Unknown codes from newer peers are kept, not rejected.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($(#[$m:meta])* $name:ident = $v:expr,)*) => {
        impl ErrorCode {
            $($(#[$m])* pub const $name: Self = Self($v);)*

            /// The code's name, or `None` for a code this version does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($v => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    /// The frame could not be decoded; the connection is closed.
    BAD_FRAME = 1,
    /// The frame kind (or an option in it) is not supported by this peer; the connection goes on.
    UNSUPPORTED = 2,
    /// The client's protocol version is not supported.
    UNSUPPORTED_VERSION = 3,
    /// The token is missing, forged or expired, or Hello has not been sent yet.
    UNAUTHENTICATED = 4,
    /// The user may not do this (not a member of the chat, not the uploader).
    FORBIDDEN = 5,
    /// The named chat or object does not exist.
    NOT_FOUND = 6,
    /// A frame, body or group exceeds a limit.
    TOO_LARGE = 7,
    /// Too many requests in flight or per second; retry later.
    RATE_LIMITED = 8,
    /// The server is shedding load; retry later, possibly elsewhere.
    OVERLOADED = 9,
    /// The server failed; the request may be retried.
    INTERNAL = 10,
    /// A field was well-formed but not acceptable (an empty name, a bad user id).
    INVALID = 11,
    /// The server is shutting down (in GoAway).
    SHUTTING_DOWN = 12,
    /// The server cannot store anything right now (its disk is full, its storage engine is
    /// recovering); retry after the wait it names. Nothing of the refused request was applied.
    UNAVAILABLE = 13,
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "ERROR_{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_unknown_codes() {
        assert_eq!(ErrorCode::FORBIDDEN.to_string(), "FORBIDDEN");
        assert_eq!(ErrorCode(999).to_string(), "ERROR_999");
        assert_eq!(
            DecodeError::TooLarge { len: 1, max: 0 }.code(),
            ErrorCode::TOO_LARGE
        );
        assert_eq!(DecodeError::Truncated.code(), ErrorCode::BAD_FRAME);
    }
}
